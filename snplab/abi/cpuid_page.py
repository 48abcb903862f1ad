"""The SNP CPUID page (page type 6 of SNP_LAUNCH_UPDATE) and the CPUID values firmware refuses.

Layout (SNP firmware ABI "CPUID_FUNCTION"; errata.md table A: 0x10 + 64 × 48 = 0xC10 bytes)::

    header {u32 count, u32 reserved, u64 reserved}
    entry  {u32 eax_in, ecx_in; u64 xcr0_in, xss_in; u32 eax, ebx, ecx, edx; u64 reserved}

Feature bits the firmware's CPUID check rejects, as QEMU clears them before the first
LAUNCH_UPDATE (qemu target/i386/sev.c ``sev_snp_mask_cpuid_features``, bit numbers from
target/i386/cpu.h): TSC_DEADLINE_TIMER = 1.ECX[24]; TSC_ADJUST = 7.0.EBX[1]; SPEC_CTRL,
STIBP, FLUSH_L1D, ARCH_CAPABILITIES, CORE_CAPABILITY, SPEC_CTRL_SSBD = 7.0.EDX[26..31];
VIRT_SSBD = 0x8000_0008.EBX[25]. Leaves 0xD.0/0xD.1 carry EBX = 0x240 (the legacy XSAVE area
plus header for XCR0 = x87 only) with xcr0_in = 1, xss_in = 0 (``sev_snp_cpuid_info_fill``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

CPUID_PAGE_SIZE = 4096
SNP_CPUID_MAX_ENTRIES = 64
_HDR = struct.Struct("<IIQ")
_FN = struct.Struct("<IIQQIIIIQ")
assert _HDR.size + SNP_CPUID_MAX_ENTRIES * _FN.size == 0xC10

CPUID_EXT_TSC_DEADLINE_TIMER = 1 << 24
CPUID_7_0_EBX_TSC_ADJUST = 1 << 1
CPUID_7_0_EDX_SPEC_CTRL = 1 << 26
CPUID_7_0_EDX_STIBP = 1 << 27
CPUID_7_0_EDX_FLUSH_L1D = 1 << 28
CPUID_7_0_EDX_ARCH_CAPABILITIES = 1 << 29
CPUID_7_0_EDX_CORE_CAPABILITY = 1 << 30
CPUID_7_0_EDX_SPEC_CTRL_SSBD = 1 << 31
CPUID_8000_0008_EBX_VIRT_SSBD = 1 << 25

# (function, index or None for every index, register) → bits the firmware refuses
FIRMWARE_MASKED_FEATURES: dict[tuple[int, int | None, str], int] = {
    (0x1, None, "ecx"): CPUID_EXT_TSC_DEADLINE_TIMER,
    (0x7, 0, "ebx"): CPUID_7_0_EBX_TSC_ADJUST,
    (0x7, 0, "edx"): (CPUID_7_0_EDX_SPEC_CTRL | CPUID_7_0_EDX_STIBP | CPUID_7_0_EDX_FLUSH_L1D
                      | CPUID_7_0_EDX_ARCH_CAPABILITIES | CPUID_7_0_EDX_CORE_CAPABILITY
                      | CPUID_7_0_EDX_SPEC_CTRL_SSBD),
    (0x8000_0008, None, "ebx"): CPUID_8000_0008_EBX_VIRT_SSBD,
}
XSAVE_LEAF = 0xD
XSAVE_LEGACY_SIZE = 0x240  # 512-byte legacy area + 64-byte XSAVE header (XCR0 = 1)
XCR0_X87 = 1


@dataclass(frozen=True)
class CpuidEntry:
    eax_in: int
    ecx_in: int
    xcr0_in: int
    xss_in: int
    eax: int
    ebx: int
    ecx: int
    edx: int

    @property
    def key(self) -> tuple[int, int]:
        return self.eax_in, self.ecx_in

    @property
    def values(self) -> tuple[int, int, int, int]:
        return self.eax, self.ebx, self.ecx, self.edx


def pack_page(entries: list[CpuidEntry] | tuple[CpuidEntry, ...]) -> bytes:
    """The 4 KiB page holding the first 64 ``entries``."""
    entries = list(entries)[:SNP_CPUID_MAX_ENTRIES]
    page = bytearray(CPUID_PAGE_SIZE)
    _HDR.pack_into(page, 0, len(entries), 0, 0)
    for i, e in enumerate(entries):
        _FN.pack_into(page, _HDR.size + i * _FN.size, e.eax_in, e.ecx_in, e.xcr0_in, e.xss_in,
                      e.eax, e.ebx, e.ecx, e.edx, 0)
    return bytes(page)


def parse_page(page: bytes) -> tuple[CpuidEntry, ...]:
    """The entries of a CPUID page (count clamped to 64)."""
    count = min(_HDR.unpack_from(page)[0], SNP_CPUID_MAX_ENTRIES)
    out = []
    for i in range(count):
        a_in, c_in, x0, xs, a, b, c, d, _r = _FN.unpack_from(page, _HDR.size + i * _FN.size)
        out.append(CpuidEntry(a_in, c_in, x0, xs, a, b, c, d))
    return tuple(out)


def masked_bits(e: CpuidEntry) -> dict[str, int]:
    """Register → firmware-refused feature bits set in ``e`` (empty if none)."""
    out = {}
    for (fn, idx, reg), mask in FIRMWARE_MASKED_FEATURES.items():
        if e.eax_in == fn and (idx is None or e.ecx_in == idx) and getattr(e, reg) & mask:
            out[reg] = getattr(e, reg) & mask
    return out


def without_masked(e: CpuidEntry) -> CpuidEntry:
    """``e`` with the firmware-refused feature bits cleared."""
    bits = masked_bits(e)
    return replace(e, **{reg: getattr(e, reg) & ~b for reg, b in bits.items()}) if bits else e


def is_legacy_xsave_leaf(e: CpuidEntry) -> bool:
    """0xD.0 / 0xD.1 asked for XCR0 = x87 only and no XSS: EBX must be 0x240."""
    return e.eax_in == XSAVE_LEAF and e.ecx_in in (0, 1) and e.xcr0_in == XCR0_X87 and e.xss_in == 0


__all__ = ["CpuidEntry", "pack_page", "parse_page", "masked_bits", "without_masked",
           "is_legacy_xsave_leaf", "FIRMWARE_MASKED_FEATURES", "XSAVE_LEGACY_SIZE", "XCR0_X87",
           "SNP_CPUID_MAX_ENTRIES", "CPUID_PAGE_SIZE"]
