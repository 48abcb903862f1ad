"""SNP ATTESTATION_REPORT (versions 2–5): 0x4A0 bytes, all integers little-endian.

Source: SNP firmware ABI 56860 "ATTESTATION_REPORT Structure", as transcribed by go-sev-guest
``abi/abi.go`` (ReportToProto) and virtee/sev ``firmware/guest/types/snp.rs``; offsets in
shared/reference/verify.md §0 and errata.md table A (confirmed on real reports v2, v3, v5).

Version differences: v3 adds CPUID_FAM_ID/MOD_ID/STEP at 0x188 (reserved in v2); v4 has the v3
layout; v5 adds LAUNCH_MIT_VECTOR/CURRENT_MIT_VECTOR at 0x1F8/0x200 (reserved before).
Every byte, reserved ones included, is kept so that ``unpack(b).pack() == b``.

The signature (0x2A0) is ECDSA P-384 / SHA-384 over bytes [0, SIGNED_LENGTH): R and S are 72-byte
little-endian integers at 0x2A0 and 0x2E8, then 368 reserved zero bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from snplab.abi.policy import GuestPolicy, PlatformInfo

REPORT_SIZE = 0x4A0
SIGNED_LENGTH = 0x2A0
SUPPORTED_VERSIONS = (2, 3, 4, 5)

# field offsets
VERSION_OFFSET = 0x000
GUEST_SVN_OFFSET = 0x004
POLICY_OFFSET = 0x008
FAMILY_ID_OFFSET = 0x010
IMAGE_ID_OFFSET = 0x020
VMPL_OFFSET = 0x030
SIGNATURE_ALGO_OFFSET = 0x034
CURRENT_TCB_OFFSET = 0x038
PLATFORM_INFO_OFFSET = 0x040
SIGNER_INFO_OFFSET = 0x048
RESERVED0_OFFSET = 0x04C
REPORT_DATA_OFFSET = 0x050
MEASUREMENT_OFFSET = 0x090
HOST_DATA_OFFSET = 0x0C0
ID_KEY_DIGEST_OFFSET = 0x0E0
AUTHOR_KEY_DIGEST_OFFSET = 0x110
REPORT_ID_OFFSET = 0x140
REPORT_ID_MA_OFFSET = 0x160
REPORTED_TCB_OFFSET = 0x180
CPUID_FAM_ID_OFFSET = 0x188  # v3+
CPUID_MOD_ID_OFFSET = 0x189  # v3+
CPUID_STEP_OFFSET = 0x18A  # v3+
RESERVED1_OFFSET = 0x18B
CHIP_ID_OFFSET = 0x1A0
COMMITTED_TCB_OFFSET = 0x1E0
CURRENT_BUILD_OFFSET = 0x1E8
CURRENT_MINOR_OFFSET = 0x1E9
CURRENT_MAJOR_OFFSET = 0x1EA
RESERVED2_OFFSET = 0x1EB
COMMITTED_BUILD_OFFSET = 0x1EC
COMMITTED_MINOR_OFFSET = 0x1ED
COMMITTED_MAJOR_OFFSET = 0x1EE
RESERVED3_OFFSET = 0x1EF
LAUNCH_TCB_OFFSET = 0x1F0
LAUNCH_MIT_VECTOR_OFFSET = 0x1F8  # v5+
CURRENT_MIT_VECTOR_OFFSET = 0x200  # v5+
RESERVED4_OFFSET = 0x208
SIGNATURE_OFFSET = 0x2A0
SIGNATURE_R_OFFSET = 0x2A0
SIGNATURE_S_OFFSET = 0x2E8
SIGNATURE_RESERVED_OFFSET = 0x330

SIGNATURE_COMPONENT_SIZE = 72  # R and S each, little-endian, zero-extended
CHIP_ID_SIZE = 64
REPORT_DATA_SIZE = 64
MEASUREMENT_SIZE = 48

SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1

# SIGNER_INFO (0x048) bits, go-sev-guest ParseSignerInfo
SIGNER_INFO_AUTHOR_KEY_EN = 1 << 0
SIGNER_INFO_MASK_CHIP_KEY = 1 << 1
SIGNER_INFO_SIGNING_KEY_SHIFT = 2
SIGNER_INFO_SIGNING_KEY_MASK = 0x7 << 2
SIGNER_INFO_RESERVED_MASK = 0xFFFF_FFE0
SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1
SIGNING_KEY_NONE = 7

# (field name, offset, size, is_integer) in offset order; covers every byte of the report
_LAYOUT: tuple[tuple[str, int, int, bool], ...] = (
    ("version", VERSION_OFFSET, 4, True),
    ("guest_svn", GUEST_SVN_OFFSET, 4, True),
    ("policy", POLICY_OFFSET, 8, True),
    ("family_id", FAMILY_ID_OFFSET, 16, False),
    ("image_id", IMAGE_ID_OFFSET, 16, False),
    ("vmpl", VMPL_OFFSET, 4, True),
    ("signature_algo", SIGNATURE_ALGO_OFFSET, 4, True),
    ("current_tcb", CURRENT_TCB_OFFSET, 8, True),
    ("platform_info", PLATFORM_INFO_OFFSET, 8, True),
    ("signer_info", SIGNER_INFO_OFFSET, 4, True),
    ("reserved0", RESERVED0_OFFSET, 4, False),
    ("report_data", REPORT_DATA_OFFSET, 64, False),
    ("measurement", MEASUREMENT_OFFSET, 48, False),
    ("host_data", HOST_DATA_OFFSET, 32, False),
    ("id_key_digest", ID_KEY_DIGEST_OFFSET, 48, False),
    ("author_key_digest", AUTHOR_KEY_DIGEST_OFFSET, 48, False),
    ("report_id", REPORT_ID_OFFSET, 32, False),
    ("report_id_ma", REPORT_ID_MA_OFFSET, 32, False),
    ("reported_tcb", REPORTED_TCB_OFFSET, 8, True),
    ("cpuid_fam_id", CPUID_FAM_ID_OFFSET, 1, True),
    ("cpuid_mod_id", CPUID_MOD_ID_OFFSET, 1, True),
    ("cpuid_step", CPUID_STEP_OFFSET, 1, True),
    ("reserved1", RESERVED1_OFFSET, 21, False),
    ("chip_id", CHIP_ID_OFFSET, 64, False),
    ("committed_tcb", COMMITTED_TCB_OFFSET, 8, True),
    ("current_build", CURRENT_BUILD_OFFSET, 1, True),
    ("current_minor", CURRENT_MINOR_OFFSET, 1, True),
    ("current_major", CURRENT_MAJOR_OFFSET, 1, True),
    ("reserved2", RESERVED2_OFFSET, 1, False),
    ("committed_build", COMMITTED_BUILD_OFFSET, 1, True),
    ("committed_minor", COMMITTED_MINOR_OFFSET, 1, True),
    ("committed_major", COMMITTED_MAJOR_OFFSET, 1, True),
    ("reserved3", RESERVED3_OFFSET, 1, False),
    ("launch_tcb", LAUNCH_TCB_OFFSET, 8, True),
    ("launch_mit_vector", LAUNCH_MIT_VECTOR_OFFSET, 8, True),
    ("current_mit_vector", CURRENT_MIT_VECTOR_OFFSET, 8, True),
    ("reserved4", RESERVED4_OFFSET, 152, False),
    ("signature_r", SIGNATURE_R_OFFSET, 72, False),
    ("signature_s", SIGNATURE_S_OFFSET, 72, False),
    ("signature_reserved", SIGNATURE_RESERVED_OFFSET, 368, False),
)


def _check_layout() -> None:
    pos = 0
    for name, off, size, _ in _LAYOUT:
        assert off == pos, (name, hex(off), hex(pos))
        pos += size
    assert pos == REPORT_SIZE


_check_layout()


class ReportFormatError(ValueError):
    """The bytes are not an attestation report this module can parse."""


@dataclass(frozen=True)
class SignerInfo:
    author_key_en: bool
    mask_chip_key: bool
    signing_key: int  # SIGNING_KEY_VCEK / _VLEK / _NONE (2..6 reserved)
    reserved: int  # bits 31:5, must be zero

    @classmethod
    def unpack(cls, value: int) -> "SignerInfo":
        return cls(
            author_key_en=bool(value & SIGNER_INFO_AUTHOR_KEY_EN),
            mask_chip_key=bool(value & SIGNER_INFO_MASK_CHIP_KEY),
            signing_key=(value & SIGNER_INFO_SIGNING_KEY_MASK) >> SIGNER_INFO_SIGNING_KEY_SHIFT,
            reserved=value & SIGNER_INFO_RESERVED_MASK,
        )

    def pack(self) -> int:
        return (
            (SIGNER_INFO_AUTHOR_KEY_EN if self.author_key_en else 0)
            | (SIGNER_INFO_MASK_CHIP_KEY if self.mask_chip_key else 0)
            | ((self.signing_key & 7) << SIGNER_INFO_SIGNING_KEY_SHIFT)
            | (self.reserved & SIGNER_INFO_RESERVED_MASK)
        )

    @property
    def signing_key_name(self) -> str:
        return {SIGNING_KEY_VCEK: "vcek", SIGNING_KEY_VLEK: "vlek", SIGNING_KEY_NONE: "none"}.get(
            self.signing_key, f"reserved({self.signing_key})"
        )


@dataclass(frozen=True)
class AttestationReport:
    version: int = 5
    guest_svn: int = 0
    policy: int = 0x30000
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    vmpl: int = 0
    signature_algo: int = SIGNATURE_ALGO_ECDSA_P384_SHA384
    current_tcb: int = 0
    platform_info: int = 0
    signer_info: int = 0
    reserved0: bytes = bytes(4)
    report_data: bytes = bytes(64)
    measurement: bytes = bytes(48)
    host_data: bytes = bytes(32)
    id_key_digest: bytes = bytes(48)
    author_key_digest: bytes = bytes(48)
    report_id: bytes = bytes(32)
    report_id_ma: bytes = b"\xff" * 32
    reported_tcb: int = 0
    cpuid_fam_id: int = 0
    cpuid_mod_id: int = 0
    cpuid_step: int = 0
    reserved1: bytes = bytes(21)
    chip_id: bytes = bytes(64)
    committed_tcb: int = 0
    current_build: int = 0
    current_minor: int = 0
    current_major: int = 0
    reserved2: bytes = bytes(1)
    committed_build: int = 0
    committed_minor: int = 0
    committed_major: int = 0
    reserved3: bytes = bytes(1)
    launch_tcb: int = 0
    launch_mit_vector: int = 0
    current_mit_vector: int = 0
    reserved4: bytes = bytes(152)
    signature_r: bytes = bytes(72)
    signature_s: bytes = bytes(72)
    signature_reserved: bytes = bytes(368)

    def __post_init__(self) -> None:
        for name, _off, size, is_int in _LAYOUT:
            v = getattr(self, name)
            if is_int:
                if not isinstance(v, int) or not 0 <= v < 1 << (8 * size):
                    raise ValueError(f"report field {name}={v!r} does not fit in {size} bytes")
            elif not isinstance(v, (bytes, bytearray)) or len(v) != size:
                raise ValueError(f"report field {name} must be {size} bytes")

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview) -> "AttestationReport":
        data = bytes(buf)
        if len(data) != REPORT_SIZE:
            raise ReportFormatError(
                f"attestation report must be {REPORT_SIZE:#x} ({REPORT_SIZE}) bytes, got {len(data)}"
            )
        values = {}
        for name, off, size, is_int in _LAYOUT:
            raw = data[off : off + size]
            values[name] = int.from_bytes(raw, "little") if is_int else raw
        if values["version"] not in SUPPORTED_VERSIONS:
            raise ReportFormatError(
                f"unsupported attestation report version {values['version']} "
                f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))})"
            )
        return cls(**values)

    def pack(self) -> bytes:
        out = bytearray(REPORT_SIZE)
        for name, off, size, is_int in _LAYOUT:
            v = getattr(self, name)
            out[off : off + size] = v.to_bytes(size, "little") if is_int else bytes(v)
        return bytes(out)

    def signed_bytes(self) -> bytes:
        return self.pack()[:SIGNED_LENGTH]

    def with_signature(self, r: int, s: int) -> "AttestationReport":
        """Copy with R and S placed as 72-byte little-endian integers (as the PSP writes them)."""
        return replace(
            self,
            signature_r=r.to_bytes(SIGNATURE_COMPONENT_SIZE, "little"),
            signature_s=s.to_bytes(SIGNATURE_COMPONENT_SIZE, "little"),
            signature_reserved=bytes(368),
        )

    # --- decoded views -------------------------------------------------------------------

    @property
    def signer(self) -> SignerInfo:
        return SignerInfo.unpack(self.signer_info)

    @property
    def guest_policy(self) -> GuestPolicy:
        return GuestPolicy.unpack(self.policy)

    @property
    def platform(self) -> PlatformInfo:
        return PlatformInfo.unpack(self.platform_info)

    @property
    def has_cpuid(self) -> bool:
        return self.version >= 3

    @property
    def has_mitigation_vectors(self) -> bool:
        return self.version >= 5

    @property
    def r(self) -> int:
        return int.from_bytes(self.signature_r, "little")

    @property
    def s(self) -> int:
        return int.from_bytes(self.signature_s, "little")

    @property
    def chip_id_masked(self) -> bool:
        return not any(self.chip_id)

    def reserved_nonzero(self) -> tuple[str, ...]:
        """Names of the reserved ranges (for this version) that hold non-zero bytes."""
        bad = [n for n in ("reserved0", "reserved1", "reserved2", "reserved3", "reserved4",
                           "signature_reserved") if any(getattr(self, n))]
        if not self.has_cpuid and (self.cpuid_fam_id or self.cpuid_mod_id or self.cpuid_step):
            bad.append("cpuid (reserved in v2)")
        if not self.has_mitigation_vectors and (self.launch_mit_vector or self.current_mit_vector):
            bad.append("mitigation vectors (reserved before v5)")
        if any(self.signature_r[48:]) or any(self.signature_s[48:]):
            bad.append("signature R/S bytes 48..71")
        if self.signer_info & SIGNER_INFO_RESERVED_MASK:
            bad.append("signer_info bits 31:5")
        return tuple(bad)

    def as_dict(self) -> dict[str, int | bytes]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def field_layout() -> tuple[tuple[str, int, int, bool], ...]:
    """(name, offset, size, is_integer) for every field, in offset order."""
    return _LAYOUT

