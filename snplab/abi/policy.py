"""Guest POLICY (report 0x008, SNP_LAUNCH_START) and PLATFORM_INFO (report 0x040) bit fields.

Source: SNP firmware ABI 56860 "Guest Policy" / "PLATFORM_INFO", as in go-sev-guest
``abi/abi.go`` ParseSnpPolicy / ParseSnpPlatformInfo (shared/reference/verify.md §0).
"""

from __future__ import annotations

from dataclasses import dataclass

# POLICY bits
POLICY_ABI_MINOR_SHIFT = 0
POLICY_ABI_MAJOR_SHIFT = 8
POLICY_SMT = 1 << 16
POLICY_RESERVED_MBO = 1 << 17  # reserved, must be one
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
POLICY_SINGLE_SOCKET = 1 << 20
POLICY_CXL_ALLOW = 1 << 21
POLICY_MEM_AES_256_XTS = 1 << 22
POLICY_RAPL_DIS = 1 << 23
POLICY_CIPHERTEXT_HIDING_DRAM = 1 << 24
POLICY_PAGE_SWAP_DISABLE = 1 << 25
POLICY_MBZ_MASK = ~((1 << 26) - 1) & 0xFFFF_FFFF_FFFF_FFFF  # bits 63:26 must be zero

_POLICY_FLAGS = (
    ("smt", POLICY_SMT),
    ("migrate_ma", POLICY_MIGRATE_MA),
    ("debug", POLICY_DEBUG),
    ("single_socket", POLICY_SINGLE_SOCKET),
    ("cxl_allow", POLICY_CXL_ALLOW),
    ("mem_aes_256_xts", POLICY_MEM_AES_256_XTS),
    ("rapl_dis", POLICY_RAPL_DIS),
    ("ciphertext_hiding_dram", POLICY_CIPHERTEXT_HIDING_DRAM),
    ("page_swap_disable", POLICY_PAGE_SWAP_DISABLE),
)

# PLATFORM_INFO bits
PLATFORM_INFO_SMT_EN = 1 << 0
PLATFORM_INFO_TSME_EN = 1 << 1
PLATFORM_INFO_ECC_EN = 1 << 2
PLATFORM_INFO_RAPL_DIS = 1 << 3
PLATFORM_INFO_CIPHERTEXT_HIDING_DRAM_EN = 1 << 4
PLATFORM_INFO_ALIAS_CHECK_COMPLETE = 1 << 5
PLATFORM_INFO_TIO_EN = 1 << 7

_PLATFORM_FLAGS = (
    ("smt_en", PLATFORM_INFO_SMT_EN),
    ("tsme_en", PLATFORM_INFO_TSME_EN),
    ("ecc_en", PLATFORM_INFO_ECC_EN),
    ("rapl_dis", PLATFORM_INFO_RAPL_DIS),
    ("ciphertext_hiding_dram_en", PLATFORM_INFO_CIPHERTEXT_HIDING_DRAM_EN),
    ("alias_check_complete", PLATFORM_INFO_ALIAS_CHECK_COMPLETE),
    ("tio_en", PLATFORM_INFO_TIO_EN),
)
_PLATFORM_KNOWN = sum(bit for _, bit in _PLATFORM_FLAGS)


@dataclass(frozen=True)
class GuestPolicy:
    abi_minor: int = 0
    abi_major: int = 0
    smt: bool = True
    reserved_mbo: bool = True
    migrate_ma: bool = False
    debug: bool = False
    single_socket: bool = False
    cxl_allow: bool = False
    mem_aes_256_xts: bool = False
    rapl_dis: bool = False
    ciphertext_hiding_dram: bool = False
    page_swap_disable: bool = False
    mbz: int = 0  # bits 63:26 as found (must be zero)

    @classmethod
    def unpack(cls, value: int) -> "GuestPolicy":
        return cls(
            abi_minor=value & 0xFF,
            abi_major=(value >> POLICY_ABI_MAJOR_SHIFT) & 0xFF,
            reserved_mbo=bool(value & POLICY_RESERVED_MBO),
            mbz=value & POLICY_MBZ_MASK,
            **{name: bool(value & bit) for name, bit in _POLICY_FLAGS},
        )

    def pack(self) -> int:
        v = (self.abi_minor & 0xFF) | ((self.abi_major & 0xFF) << POLICY_ABI_MAJOR_SHIFT)
        v |= POLICY_RESERVED_MBO if self.reserved_mbo else 0
        for name, bit in _POLICY_FLAGS:
            if getattr(self, name):
                v |= bit
        return v | (self.mbz & POLICY_MBZ_MASK)

    def problems(self) -> tuple[str, ...]:
        out = []
        if not self.reserved_mbo:
            out.append("policy bit 17 (reserved, must be one) is zero")
        if self.mbz:
            out.append(f"policy bits 63:26 must be zero, got {self.mbz:#x}")
        return tuple(out)

    def flags(self) -> tuple[str, ...]:
        return tuple(name for name, _ in _POLICY_FLAGS if getattr(self, name))


@dataclass(frozen=True)
class PlatformInfo:
    smt_en: bool = False
    tsme_en: bool = False
    ecc_en: bool = False
    rapl_dis: bool = False
    ciphertext_hiding_dram_en: bool = False
    alias_check_complete: bool = False
    tio_en: bool = False
    unknown: int = 0  # any other bits as found

    @classmethod
    def unpack(cls, value: int) -> "PlatformInfo":
        return cls(unknown=value & ~_PLATFORM_KNOWN, **{n: bool(value & b) for n, b in _PLATFORM_FLAGS})

    def pack(self) -> int:
        v = self.unknown & ~_PLATFORM_KNOWN
        for name, bit in _PLATFORM_FLAGS:
            if getattr(self, name):
                v |= bit
        return v

    def flags(self) -> tuple[str, ...]:
        return tuple(name for name, _ in _PLATFORM_FLAGS if getattr(self, name))
