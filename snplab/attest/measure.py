"""Prediction of the SEV-SNP launch digest (the report's MEASUREMENT).

This module is the *independent* oracle for the measurement: it never imports ``snplab.emu`` or
``snplab.vmm``.  It rebuilds the digest from the launch sequence the VMM recorded in the
transcript (``launch_log``, docs/contract.md §4) and from the vCPU register state, modelling what
KVM writes into each VMSA page at ``KVM_SEV_SNP_LAUNCH_FINISH``.

Digest chain (SNP firmware ABI 56860 "PAGE_INFO"; shared/reference/verify.md §e.1, errata.md B7):
every measured 4 KiB page extends the launch digest ``LD = SHA-384(PAGE_INFO)`` where PAGE_INFO is
0x70 bytes::

    0x00 DIGEST_CUR[48]   current LD (48 zero bytes at LAUNCH_START)
    0x30 CONTENTS[48]     SHA-384 of the page for NORMAL and VMSA pages, zeros otherwise
    0x60 LENGTH u16       0x70
    0x62 PAGE_TYPE u8
    0x63 IMI_PAGE u8      bit 0
    0x64 reserved u8, VMPL1_PERMS u8, VMPL2_PERMS u8, VMPL3_PERMS u8  (always 0 under KVM)
    0x68 GPA u64          the page's GPA; INITIAL_VMSA_GPA for VMSA pages

VMSA page (``struct sev_es_save_area``, arch/x86/include/asm/svm.h; KVM ``sev_es_sync_vmsa``,
arch/x86/kvm/svm/sev.c): KVM copies the VMCB save area that KVM_SET_SREGS / KVM_SET_REGS built,
then the GPRs, RIP, XCR0, PKRU, XSS, DR6, SEV features and (for SNP VM types) the x87/SSE state.
The translation from KVM's register ABI to VMCB fields follows ``svm_set_segment``,
``svm_set_efer`` (EFER.SVME forced on), ``svm_set_cr0`` (CD/NW cleared by the default
KVM_X86_QUIRK_CD_NW_CLEARED), ``svm_set_cr4`` (the host's CR4.MCE ORed in), ``svm_post_set_cr3``
(CR3 written for SEV-ES/SNP guests), ``init_vmcb`` (G_PAT = the PAT MSR reset value) and
``kvm_vcpu_reset`` (DR7 = 0x400, DR6 = 0xFFFF0FF0, XCR0 = 1).  The same model reproduces the
sev-snp-measure test values for QEMU/OVMF launches (tests/test_measure_ovmf.py).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, replace
from typing import Any, Mapping

PAGE_SIZE = 4096
DIGEST_SIZE = 48  # SHA-384
PAGE_INFO_SIZE = 0x70

# Page types (SNP firmware ABI; Linux uapi KVM_SEV_SNP_PAGE_TYPE_*; VMSA = 2 is firmware-internal).
PAGE_TYPE_NORMAL = 0x1
PAGE_TYPE_VMSA = 0x2
PAGE_TYPE_ZERO = 0x3
PAGE_TYPE_UNMEASURED = 0x4
PAGE_TYPE_SECRETS = 0x5
PAGE_TYPE_CPUID = 0x6

PAGE_TYPE_NAMES: dict[int, str] = {
    PAGE_TYPE_NORMAL: "NORMAL",
    PAGE_TYPE_VMSA: "VMSA",
    PAGE_TYPE_ZERO: "ZERO",
    PAGE_TYPE_UNMEASURED: "UNMEASURED",
    PAGE_TYPE_SECRETS: "SECRETS",
    PAGE_TYPE_CPUID: "CPUID",
}
_PAGE_TYPE_BY_NAME = {name: value for value, name in PAGE_TYPE_NAMES.items()}
# Page types whose CONTENTS field is the SHA-384 of the page.
_MEASURED_CONTENTS = (PAGE_TYPE_NORMAL, PAGE_TYPE_VMSA)

# KVM arch/x86/kvm/svm/sev.c: GPA the firmware records for every initial VMSA page.
INITIAL_VMSA_GPA = 0xFFFF_FFFF_F000

# VMSA SEV_FEATURES bits (arch/x86/include/asm/svm.h SVM_SEV_FEAT_*).
SEV_FEAT_SNP_ACTIVE = 1 << 0
SEV_FEAT_DEBUG_SWAP = 1 << 5

# Control-register / EFER bits used by KVM's translation.
X86_CR0_NW = 1 << 29
X86_CR0_CD = 1 << 30
X86_CR4_MCE = 1 << 6
EFER_SVME = 1 << 12

# Reset values (arch/x86/include/asm/msr-index.h MSR_IA32_CR_PAT_DEFAULT, DR6_ACTIVE_LOW,
# DR7_FIXED_1; x86 FPU init state fcw 0x37F, MXCSR_DEFAULT 0x1F80).
PAT_RESET = 0x0007_0406_0007_0406
DR6_RESET = 0xFFFF_0FF0
DR7_RESET = 0x400
FCW_RESET = 0x37F
MXCSR_RESET = 0x1F80

_PAGE_INFO = struct.Struct("<48s48sHBBBBBBQ")
assert _PAGE_INFO.size == PAGE_INFO_SIZE

# struct sev_es_save_area offsets (arch/x86/include/asm/svm.h; BUILD_BUG checks there).
_VMSA_SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs", "gdtr", "ldtr", "idtr", "tr")  # 16 B each @0
VMSA_OFFSETS: dict[str, int] = {
    "vmpl": 0x0CA,
    "cpl": 0x0CB,
    "efer": 0x0D0,
    "xss": 0x140,
    "cr4": 0x148,
    "cr3": 0x150,
    "cr0": 0x158,
    "dr7": 0x160,
    "dr6": 0x168,
    "rflags": 0x170,
    "rip": 0x178,
    "rsp": 0x1D8,
    "rax": 0x1F8,
    "g_pat": 0x268,
    "pkru": 0x2E8,
    "rcx": 0x308,
    "rdx": 0x310,
    "rbx": 0x318,
    "rbp": 0x328,
    "rsi": 0x330,
    "rdi": 0x338,
    "r8": 0x340,
    "r9": 0x348,
    "r10": 0x350,
    "r11": 0x358,
    "r12": 0x360,
    "r13": 0x368,
    "r14": 0x370,
    "r15": 0x378,
    "sev_features": 0x3B0,
    "xcr0": 0x3E8,
    "mxcsr": 0x408,
    "x87_ftw": 0x40C,
    "x87_fsw": 0x40E,
    "x87_fcw": 0x410,
}
_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")

# SVM segment attribute bits (arch/x86/include/asm/svm.h SVM_SELECTOR_*_SHIFT).
_SVM_TYPE_MASK = 0xF
_SVM_S_SHIFT, _SVM_DPL_SHIFT, _SVM_P_SHIFT = 4, 5, 7
_SVM_AVL_SHIFT, _SVM_L_SHIFT, _SVM_DB_SHIFT, _SVM_G_SHIFT = 8, 9, 10, 11

_U64 = (1 << 64) - 1


class MeasureError(ValueError):
    """A launch log or vCPU state that cannot be measured as given."""


# --------------------------------------------------------------------------------------------
# The digest chain


def page_info(
    digest_cur: bytes,
    contents: bytes,
    page_type: int,
    gpa: int,
    *,
    imi: bool = False,
    vmpl_perms: tuple[int, int, int] = (0, 0, 0),
) -> bytes:
    """The 0x70-byte PAGE_INFO structure hashed for one page.

    ``vmpl_perms`` = (VMPL1, VMPL2, VMPL3) permission bytes at 0x65..0x67, byte 0x64 reserved
    (AMD sev-tool ``snp_launch_update_page_info`` order; errata.md B7).  KVM never sets them.
    """
    if len(digest_cur) != DIGEST_SIZE or len(contents) != DIGEST_SIZE:
        raise MeasureError("PAGE_INFO digests must be 48 bytes")
    if page_type not in PAGE_TYPE_NAMES:
        raise MeasureError(f"unknown page type {page_type!r}")
    if gpa % PAGE_SIZE or not 0 <= gpa <= _U64:
        raise MeasureError(f"PAGE_INFO GPA {gpa:#x} is not a page-aligned u64")
    v1, v2, v3 = vmpl_perms
    return _PAGE_INFO.pack(digest_cur, contents, PAGE_INFO_SIZE, page_type, int(imi), 0, v1, v2, v3, gpa)


class LaunchDigest:
    """Running launch digest: LAUNCH_START gives 48 zero bytes (or a precomputed seed)."""

    def __init__(self, seed: bytes = bytes(DIGEST_SIZE)) -> None:
        if len(seed) != DIGEST_SIZE:
            raise MeasureError(f"launch digest seed must be {DIGEST_SIZE} bytes, got {len(seed)}")
        self._ld = bytes(seed)
        self.pages = 0

    @property
    def digest(self) -> bytes:
        return self._ld

    def add_page(self, gpa: int, page_type: int, page_sha384: bytes | None = None) -> bytes:
        """Extend by one page. ``page_sha384`` is required for NORMAL/VMSA and ignored otherwise."""
        if page_type in _MEASURED_CONTENTS:
            if page_sha384 is None or len(page_sha384) != DIGEST_SIZE:
                raise MeasureError(f"{PAGE_TYPE_NAMES[page_type]} page at {gpa:#x} needs its SHA-384")
            contents = page_sha384
        else:
            contents = bytes(DIGEST_SIZE)
        self._ld = hashlib.sha384(page_info(self._ld, contents, page_type, gpa)).digest()
        self.pages += 1
        return self._ld

    def add_range(self, gpa: int, page_type: int, data: bytes | None = None, *, length: int | None = None) -> bytes:
        """Extend by a page-aligned range, one 4 KiB page at a time with the GPA advancing.

        NORMAL ranges need ``data``; other types take ``data`` (only its length is used) or
        ``length``.
        """
        if length is None:
            if data is None:
                raise MeasureError(f"range at {gpa:#x}: give data or length")
            length = len(data)
        elif data is not None and len(data) != length:
            raise MeasureError(f"range at {gpa:#x}: data is {len(data)} bytes, length says {length}")
        if length <= 0 or length % PAGE_SIZE or gpa % PAGE_SIZE:
            raise MeasureError(f"range {gpa:#x}+{length:#x} is not page aligned and non-empty")
        if page_type in _MEASURED_CONTENTS and data is None:
            raise MeasureError(f"{PAGE_TYPE_NAMES.get(page_type, page_type)} range at {gpa:#x} needs its bytes")
        for off in range(0, length, PAGE_SIZE):
            digest = hashlib.sha384(data[off:off + PAGE_SIZE]).digest() if data is not None else None
            self.add_page(gpa + off, page_type, digest)
        return self._ld

    def add_vmsa(self, vmsa: bytes) -> bytes:
        if len(vmsa) != PAGE_SIZE:
            raise MeasureError(f"a VMSA page is {PAGE_SIZE} bytes, got {len(vmsa)}")
        return self.add_page(INITIAL_VMSA_GPA, PAGE_TYPE_VMSA, hashlib.sha384(vmsa).digest())


# --------------------------------------------------------------------------------------------
# vCPU state → VMSA page, as KVM writes it


@dataclass(frozen=True)
class Segment:
    """A ``struct kvm_segment`` as given to KVM_SET_SREGS."""

    base: int = 0
    limit: int = 0
    selector: int = 0
    type: int = 0
    present: int = 0
    dpl: int = 0
    db: int = 0
    s: int = 0
    l: int = 0  # noqa: E741 - the kernel's field name
    g: int = 0
    avl: int = 0
    unusable: int = 0

    def vmcb_attrib(self) -> int:
        """KVM ``svm_set_segment``: kvm_segment flags → 12-bit VMCB attribute."""
        attrib = self.type & _SVM_TYPE_MASK
        attrib |= (self.s & 1) << _SVM_S_SHIFT
        attrib |= (self.dpl & 3) << _SVM_DPL_SHIFT
        attrib |= int(bool(self.present & 1) and not self.unusable) << _SVM_P_SHIFT
        attrib |= (self.avl & 1) << _SVM_AVL_SHIFT
        attrib |= (self.l & 1) << _SVM_L_SHIFT
        attrib |= (self.db & 1) << _SVM_DB_SHIFT
        attrib |= (self.g & 1) << _SVM_G_SHIFT
        return attrib


@dataclass(frozen=True)
class DescriptorTable:
    """A ``struct kvm_dtable`` (GDTR/IDTR)."""

    base: int = 0
    limit: int = 0


@dataclass(frozen=True)
class VcpuInit:
    """The initial state the VMM gives one vCPU before LAUNCH_FINISH.

    ``regs`` holds ``struct kvm_regs`` fields (rax..r15, rip, rflags); missing ones are 0.
    ``mxcsr``/``fcw`` of None mean KVM's FPU reset state (the VMM did not call KVM_SET_XSAVE);
    ``pat`` of None means the PAT reset value (no KVM_SET_MSRS of IA32_PAT).
    """

    regs: Mapping[str, int]
    cs: Segment
    ds: Segment
    es: Segment
    fs: Segment
    gs: Segment
    ss: Segment
    tr: Segment
    ldt: Segment
    gdt: DescriptorTable
    idt: DescriptorTable
    cr0: int
    cr3: int
    cr4: int
    efer: int
    xcr0: int = 1
    pat: int | None = None
    mxcsr: int | None = None
    fcw: int | None = None
    pkru: int = 0
    xss: int = 0


@dataclass(frozen=True)
class KvmHost:
    """Facts about the host KVM that shape the VMSA beyond the vCPU state.

    ``host_cr4_mce``: svm_set_cr4 ORs in the host's CR4.MCE (set on every x86-64 Linux host).
    ``snp_vm_type``: VM types other than KVM_X86_DEFAULT_VM also copy the x87/SSE state.
    ``cd_nw_quirk``: KVM_X86_QUIRK_CD_NW_CLEARED (default on) clears CR0.CD/NW in the VMCB.
    """

    host_cr4_mce: bool = True
    snp_vm_type: bool = True
    cd_nw_quirk: bool = True


KVM_HOST = KvmHost()


def _put(page: bytearray, name: str, value: int) -> None:
    off = VMSA_OFFSETS[name]
    size = {"vmpl": 1, "cpl": 1, "pkru": 4, "mxcsr": 4, "x87_ftw": 2, "x87_fsw": 2, "x87_fcw": 2}.get(name, 8)
    if not 0 <= value < 1 << (8 * size):
        raise MeasureError(f"VMSA field {name}={value:#x} does not fit in {size} bytes")
    page[off:off + size] = value.to_bytes(size, "little")


def _put_segment(page: bytearray, index: int, selector: int, attrib: int, limit: int, base: int) -> None:
    if not (0 <= selector <= 0xFFFF and 0 <= limit <= 0xFFFF_FFFF and 0 <= base <= _U64):
        raise MeasureError(f"segment {_VMSA_SEGMENTS[index]} has out-of-range fields")
    struct.pack_into("<HHIQ", page, 16 * index, selector, attrib, limit, base)


def vmsa_page(vcpu: VcpuInit, sev_features: int, host: KvmHost = KVM_HOST) -> bytes:
    """The 4 KiB VMSA KVM measures for ``vcpu`` (``sev_es_sync_vmsa`` on an SNP VM)."""
    page = bytearray(PAGE_SIZE)
    for name in ("es", "cs", "ss", "ds", "fs", "gs"):
        seg: Segment = getattr(vcpu, name)
        _put_segment(page, _VMSA_SEGMENTS.index(name), seg.selector, seg.vmcb_attrib(), seg.limit, seg.base)
    for name, seg in (("ldtr", vcpu.ldt), ("tr", vcpu.tr)):
        _put_segment(page, _VMSA_SEGMENTS.index(name), seg.selector, seg.vmcb_attrib(), seg.limit, seg.base)
    # svm_set_gdt/svm_set_idt touch only limit and base; init_vmcb left selector/attrib 0.
    _put_segment(page, _VMSA_SEGMENTS.index("gdtr"), 0, 0, vcpu.gdt.limit, vcpu.gdt.base)
    _put_segment(page, _VMSA_SEGMENTS.index("idtr"), 0, 0, vcpu.idt.limit, vcpu.idt.base)

    _put(page, "cpl", vcpu.ss.dpl & 3)
    _put(page, "efer", vcpu.efer | EFER_SVME)
    cr0 = vcpu.cr0 & ~(X86_CR0_CD | X86_CR0_NW) if host.cd_nw_quirk else vcpu.cr0
    _put(page, "cr0", cr0)
    _put(page, "cr3", vcpu.cr3)
    _put(page, "cr4", vcpu.cr4 | (X86_CR4_MCE if host.host_cr4_mce else 0))
    _put(page, "dr7", DR7_RESET)
    _put(page, "dr6", DR6_RESET)
    _put(page, "g_pat", PAT_RESET if vcpu.pat is None else vcpu.pat)
    # RFLAGS bit 1 is forced on by KVM_SET_REGS (X86_EFLAGS_FIXED).
    _put(page, "rflags", vcpu.regs.get("rflags", 2) | 0x2)
    _put(page, "rip", vcpu.regs.get("rip", 0))
    for reg in _GPRS:
        _put(page, reg, vcpu.regs.get(reg, 0))
    _put(page, "xcr0", vcpu.xcr0)
    _put(page, "pkru", vcpu.pkru)
    _put(page, "xss", vcpu.xss)
    _put(page, "sev_features", sev_features)
    if host.snp_vm_type:
        _put(page, "mxcsr", MXCSR_RESET if vcpu.mxcsr is None else vcpu.mxcsr)
        _put(page, "x87_fcw", FCW_RESET if vcpu.fcw is None else vcpu.fcw)
    return bytes(page)


# --------------------------------------------------------------------------------------------
# The launch log recorded in the transcript


@dataclass(frozen=True)
class LaunchUpdate:
    """One ``Launcher.update`` call: a page-aligned range and how each page was measured.

    ``page_sha384`` holds one SHA-384 per page for NORMAL ranges (empty for other types).
    """

    gpa: int
    page_type: int
    npages: int
    page_sha384: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if self.page_type not in PAGE_TYPE_NAMES or self.page_type == PAGE_TYPE_VMSA:
            raise MeasureError(f"launch update at {self.gpa:#x}: page type {self.page_type!r} cannot be launched")
        if self.gpa % PAGE_SIZE or not 0 <= self.gpa <= _U64 - PAGE_SIZE:
            raise MeasureError(f"launch update GPA {self.gpa:#x} is not page aligned")
        if self.npages <= 0 or self.gpa + self.npages * PAGE_SIZE > INITIAL_VMSA_GPA:
            raise MeasureError(f"launch update at {self.gpa:#x}: bad page count {self.npages}")
        if self.page_type in _MEASURED_CONTENTS:
            if len(self.page_sha384) != self.npages or any(len(d) != DIGEST_SIZE for d in self.page_sha384):
                raise MeasureError(f"NORMAL update at {self.gpa:#x} needs one SHA-384 per page")

    @classmethod
    def from_bytes(cls, gpa: int, page_type: int, data: bytes) -> "LaunchUpdate":
        if not data or len(data) % PAGE_SIZE:
            raise MeasureError(f"launch update at {gpa:#x}: {len(data)} bytes is not a page multiple")
        n = len(data) // PAGE_SIZE
        digests: tuple[bytes, ...] = ()
        if page_type in _MEASURED_CONTENTS:
            digests = tuple(hashlib.sha384(data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]).digest() for i in range(n))
        return cls(gpa, page_type, n, digests)


@dataclass(frozen=True)
class LaunchLog:
    updates: tuple[LaunchUpdate, ...]
    vcpus: tuple[VcpuInit, ...]
    sev_features: int = SEV_FEAT_SNP_ACTIVE

    def check(self) -> None:
        """The firmware refuses to measure a page twice (its RMP entry must be unassigned)."""
        seen: set[int] = set()
        for u in self.updates:
            for i in range(u.npages):
                gpa = u.gpa + i * PAGE_SIZE
                if gpa in seen:
                    raise MeasureError(f"page {gpa:#x} is launched twice")
                seen.add(gpa)
        if not self.vcpus:
            raise MeasureError("the launch has no vCPU")
        if not self.sev_features & SEV_FEAT_SNP_ACTIVE:
            raise MeasureError("SEV_FEATURES of an SNP guest must have SNP_ACTIVE (bit 0)")


def predict_measurement(log: LaunchLog, host: KvmHost = KVM_HOST, seed: bytes = bytes(DIGEST_SIZE)) -> bytes:
    """The MEASUREMENT the PSP reports after our launch sequence."""
    log.check()
    ld = LaunchDigest(seed)
    for u in log.updates:
        for i in range(u.npages):
            ld.add_page(u.gpa + i * PAGE_SIZE, u.page_type, u.page_sha384[i] if u.page_sha384 else None)
    for vcpu in log.vcpus:  # kvm_for_each_vcpu order: vCPU 0 first
        ld.add_vmsa(vmsa_page(vcpu, log.sev_features, host))
    return ld.digest


# ---- JSON form (transcript "launch_log") ----------------------------------------------------


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise MeasureError(f"{what}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            pass
    raise MeasureError(f"{what}: expected an integer, got {value!r}")


def _hex(value: Any, what: str) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    raise MeasureError(f"{what}: expected hex bytes, got {str(value)[:40]!r}")


def parse_page_type(value: Any) -> int:
    """1..6, or a name such as "NORMAL" / "PageType.ZERO" (case-insensitive)."""
    if isinstance(value, str):
        try:
            value = int(value, 0)
        except ValueError:
            name = value.rsplit(".", 1)[-1].upper()
            if name not in _PAGE_TYPE_BY_NAME:
                raise MeasureError(f"unknown page type {value!r}") from None
            return _PAGE_TYPE_BY_NAME[name]
    pt = _int(value, "page_type")
    if pt not in PAGE_TYPE_NAMES:
        raise MeasureError(f"unknown page type {value!r}")
    return pt


def update_from_json(entry: Mapping[str, Any]) -> LaunchUpdate:
    """One update: {"gpa", "page_type", and "data" (hex) | "sha384" (hex or list, one per page)
    | "len"/"length"/"npages" for unmeasured types}."""
    if not isinstance(entry, Mapping):
        raise MeasureError(f"launch update must be an object, got {type(entry).__name__}")
    gpa = _int(entry.get("gpa"), "gpa")
    pt = parse_page_type(entry.get("page_type", entry.get("type")))
    if "data" in entry and entry["data"] is not None:
        return LaunchUpdate.from_bytes(gpa, pt, _hex(entry["data"], "data"))
    npages: int | None = None
    if "npages" in entry:
        npages = _int(entry["npages"], "npages")
    else:
        for key in ("len", "length", "size"):
            if key in entry:
                length = _int(entry[key], key)
                if length <= 0 or length % PAGE_SIZE:
                    raise MeasureError(f"launch update at {gpa:#x}: length {length:#x} is not a page multiple")
                npages = length // PAGE_SIZE
                break
    raw = entry.get("sha384", entry.get("page_sha384"))
    digests: tuple[bytes, ...] = ()
    if raw is not None:
        items = raw if isinstance(raw, (list, tuple)) else [raw]
        digests = tuple(_hex(d, "sha384") for d in items)
        if npages is None:
            npages = len(digests)
    if npages is None:
        raise MeasureError(f"launch update at {gpa:#x} gives neither data, sha384 nor a length")
    if pt not in _MEASURED_CONTENTS:
        digests = ()
    return LaunchUpdate(gpa, pt, npages, digests)


def _segment(raw: Any, what: str) -> Segment:
    if not isinstance(raw, Mapping):
        raise MeasureError(f"{what}: expected a kvm_segment object")
    fields = {f: _int(raw.get(f, 0), f"{what}.{f}") for f in Segment.__dataclass_fields__}
    return Segment(**fields)


def _dtable(raw: Any, what: str) -> DescriptorTable:
    if not isinstance(raw, Mapping):
        raise MeasureError(f"{what}: expected a kvm_dtable object")
    return DescriptorTable(base=_int(raw.get("base", 0), f"{what}.base"), limit=_int(raw.get("limit", 0), f"{what}.limit"))


def vcpu_from_json(raw: Mapping[str, Any]) -> VcpuInit:
    """{"regs": {kvm_regs fields}, "sregs": {kvm_sregs fields}, "xcr0", optional "pat", "mxcsr", "fcw"}."""
    if not isinstance(raw, Mapping):
        raise MeasureError("vCPU state must be an object")
    regs_raw = raw.get("regs")
    sregs = raw.get("sregs")
    if not isinstance(regs_raw, Mapping) or not isinstance(sregs, Mapping):
        raise MeasureError("vCPU state needs 'regs' and 'sregs' objects")
    regs = {k: _int(v, f"regs.{k}") for k, v in regs_raw.items() if k in _GPRS or k in ("rip", "rflags")}
    optional = {}
    for key in ("pat", "mxcsr", "fcw"):
        if raw.get(key) is not None:
            optional[key] = _int(raw[key], key)
    return VcpuInit(
        regs=regs,
        cs=_segment(sregs.get("cs"), "cs"), ds=_segment(sregs.get("ds"), "ds"),
        es=_segment(sregs.get("es"), "es"), fs=_segment(sregs.get("fs"), "fs"),
        gs=_segment(sregs.get("gs"), "gs"), ss=_segment(sregs.get("ss"), "ss"),
        tr=_segment(sregs.get("tr"), "tr"), ldt=_segment(sregs.get("ldt"), "ldt"),
        gdt=_dtable(sregs.get("gdt"), "gdt"), idt=_dtable(sregs.get("idt"), "idt"),
        cr0=_int(sregs.get("cr0", 0), "cr0"), cr3=_int(sregs.get("cr3", 0), "cr3"),
        cr4=_int(sregs.get("cr4", 0), "cr4"), efer=_int(sregs.get("efer", 0), "efer"),
        xcr0=_int(raw.get("xcr0", 1), "xcr0"),
        pkru=_int(raw.get("pkru", 0), "pkru"), xss=_int(raw.get("xss", 0), "xss"),
        **optional,
    )


def launch_log_from_json(raw: Any) -> LaunchLog:
    """Parse the transcript's ``launch_log``.

    Accepted shapes: ``{"updates": [...], "vcpus": [...], "sev_features": int}`` or a list of
    entries in call order, where update entries carry gpa/page_type and a ``finish`` entry
    (``{"op": "finish", "vcpus": [...]}``) carries the vCPU states.
    """
    sev_features = SEV_FEAT_SNP_ACTIVE
    updates_raw: list[Any] = []
    vcpus_raw: list[Any] = []
    if isinstance(raw, Mapping):
        updates_raw = list(raw.get("updates", raw.get("pages", [])))
        vcpus_raw = list(raw.get("vcpus", []))
        if raw.get("sev_features", raw.get("vmsa_features")) is not None:
            sev_features = _int(raw.get("sev_features", raw.get("vmsa_features")), "sev_features") | SEV_FEAT_SNP_ACTIVE
    elif isinstance(raw, (list, tuple)):
        for entry in raw:
            if not isinstance(entry, Mapping):
                raise MeasureError("launch_log entries must be objects")
            op = entry.get("op", "update")
            if op == "finish" or "vcpus" in entry:
                vcpus_raw.extend(entry.get("vcpus", []))
                if entry.get("sev_features") is not None:
                    sev_features = _int(entry["sev_features"], "sev_features") | SEV_FEAT_SNP_ACTIVE
            elif op == "start":
                if entry.get("sev_features") is not None:
                    sev_features = _int(entry["sev_features"], "sev_features") | SEV_FEAT_SNP_ACTIVE
            elif op == "update":
                updates_raw.append(entry)
            else:
                raise MeasureError(f"unknown launch_log op {op!r}")
    else:
        raise MeasureError("launch_log must be an object or a list")
    return LaunchLog(
        updates=tuple(update_from_json(e) for e in updates_raw),
        vcpus=tuple(vcpu_from_json(v) for v in vcpus_raw),
        sev_features=sev_features,
    )


def predict_from_transcript(transcript: Mapping[str, Any], host: KvmHost = KVM_HOST) -> bytes:
    """MEASUREMENT predicted from a transcript's ``launch_log`` (vCPU states inside it, or in a
    top-level ``vcpu_init`` list as ``Guest.to_json()`` writes them)."""
    if "launch_log" not in transcript:
        raise MeasureError("transcript has no launch_log")
    log = launch_log_from_json(transcript["launch_log"])
    if not log.vcpus and transcript.get("vcpu_init"):
        log = replace(log, vcpus=tuple(vcpu_from_json(v) for v in transcript["vcpu_init"]))
    return predict_measurement(log, host)


__all__ = [
    "DescriptorTable", "INITIAL_VMSA_GPA", "KVM_HOST", "KvmHost", "LaunchDigest", "LaunchLog",
    "LaunchUpdate", "MeasureError", "PAGE_TYPE_CPUID", "PAGE_TYPE_NORMAL", "PAGE_TYPE_SECRETS",
    "PAGE_TYPE_UNMEASURED", "PAGE_TYPE_VMSA", "PAGE_TYPE_ZERO", "Segment", "VcpuInit",
    "launch_log_from_json", "page_info", "predict_from_transcript", "predict_measurement",
    "vmsa_page",
]
