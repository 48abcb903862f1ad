"""The initial VMSA page KVM hands the firmware at SNP_LAUNCH_FINISH, built from the state the VMM
set with KVM_SET_REGS / KVM_SET_SREGS / KVM_SET_XCRS (``snplab.vmm.launch.VcpuInitState``).

Layout: ``struct sev_es_save_area`` (arch/x86/include/asm/svm.h; offsets in
shared/reference/verify.md §e.4). Contents: KVM ``sev_es_sync_vmsa`` copies the VMCB save area and
then the GPRs, RIP, XCR0, PKRU, XSS, DR6, the VM's SEV features and, for VM types other than the
default one, the x87/SSE state. The VMCB save area was filled by:

- ``svm_set_segment``: selector, limit, base, and the kvm_segment flags packed into the 12-bit SVM
  attribute (type[3:0] S[4] DPL[6:5] P[7] AVL[8] L[9] DB[10] G[11]; P cleared for unusable
  segments); the SS DPL becomes the VMCB CPL;
- ``svm_set_gdt``/``svm_set_idt``: limit and base only (selector and attribute stay 0);
- ``svm_set_efer``: EFER | EFER.SVME;  ``svm_set_cr0``: CR0 without CD/NW (default quirk
  KVM_X86_QUIRK_CD_NW_CLEARED);  ``svm_set_cr4``: CR4 | the host's CR4.MCE;
  ``svm_post_set_cr3``: CR3 (SEV-ES/SNP guests only);
- ``init_vmcb``/``kvm_vcpu_reset``: G_PAT = 0x0007040600070406, DR7 = 0x400, DR6 = 0xFFFF0FF0;
- ``__set_regs``: RFLAGS | 0x2 (the fixed bit).
FPU reset state: MXCSR 0x1F80, FCW 0x37F, everything else zero.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

PAGE_SIZE = 4096

# struct sev_es_save_area offsets
_SEGMENTS = {"es": 0x00, "cs": 0x10, "ss": 0x20, "ds": 0x30, "fs": 0x40, "gs": 0x50,
             "gdtr": 0x60, "ldtr": 0x70, "idtr": 0x80, "tr": 0x90}
VMSA_CPL = 0x0CB
VMSA_EFER = 0x0D0
VMSA_XSS = 0x140
VMSA_CR4 = 0x148
VMSA_CR3 = 0x150
VMSA_CR0 = 0x158
VMSA_DR7 = 0x160
VMSA_DR6 = 0x168
VMSA_RFLAGS = 0x170
VMSA_RIP = 0x178
VMSA_G_PAT = 0x268
VMSA_PKRU = 0x2E8
VMSA_SEV_FEATURES = 0x3B0
VMSA_XCR0 = 0x3E8
VMSA_MXCSR = 0x408
VMSA_X87_FCW = 0x410
VMSA_GPRS = {"rax": 0x1F8, "rsp": 0x1D8, "rcx": 0x308, "rdx": 0x310, "rbx": 0x318, "rbp": 0x328,
             "rsi": 0x330, "rdi": 0x338, "r8": 0x340, "r9": 0x348, "r10": 0x350, "r11": 0x358,
             "r12": 0x360, "r13": 0x368, "r14": 0x370, "r15": 0x378}

EFER_SVME = 1 << 12
X86_CR0_NW = 1 << 29
X86_CR0_CD = 1 << 30
X86_CR4_MCE = 1 << 6
X86_EFLAGS_FIXED = 1 << 1
MSR_IA32_CR_PAT_DEFAULT = 0x0007_0406_0007_0406
DR6_ACTIVE_LOW = 0xFFFF_0FF0
DR7_FIXED_1 = 0x400
MXCSR_DEFAULT = 0x1F80
FPU_CWD_DEFAULT = 0x37F
SVM_SEV_FEAT_SNP_ACTIVE = 1 << 0

_SEG = struct.Struct("<HHIQ")


def _field(obj: Any, name: str, default: Any = 0) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def svm_segment_attrib(seg: Any) -> int:
    """kvm_segment flags → VMCB attribute (svm_set_segment)."""
    f = lambda n: int(_field(seg, n, 0))
    present = f("present") & 1 and not f("unusable")
    return ((f("type") & 0xF) | (f("s") & 1) << 4 | (f("dpl") & 3) << 5 | int(bool(present)) << 7
            | (f("avl") & 1) << 8 | (f("l") & 1) << 9 | (f("db") & 1) << 10 | (f("g") & 1) << 11)


def build_vmsa(regs: Any, sregs: Any, xcr0: int = 1, *, sev_features: int = SVM_SEV_FEAT_SNP_ACTIVE,
               host_cr4_mce: bool = True) -> bytes:
    """The 4 KiB VMSA for one vCPU (``regs``/``sregs`` as kvm_regs/kvm_sregs fields, dicts or objects)."""
    page = bytearray(PAGE_SIZE)
    for name, off in _SEGMENTS.items():
        if name in ("gdtr", "idtr"):
            table = _field(sregs, name[:3])
            _SEG.pack_into(page, off, 0, 0, int(_field(table, "limit")), int(_field(table, "base")))
            continue
        seg = _field(sregs, "ldt" if name == "ldtr" else name)
        _SEG.pack_into(page, off, int(_field(seg, "selector")), svm_segment_attrib(seg),
                       int(_field(seg, "limit")), int(_field(seg, "base")))
    page[VMSA_CPL] = int(_field(_field(sregs, "ss"), "dpl")) & 3

    def put64(off: int, value: int) -> None:
        struct.pack_into("<Q", page, off, value & 0xFFFF_FFFF_FFFF_FFFF)

    put64(VMSA_EFER, int(_field(sregs, "efer")) | EFER_SVME)
    put64(VMSA_CR0, int(_field(sregs, "cr0")) & ~(X86_CR0_CD | X86_CR0_NW))
    put64(VMSA_CR3, int(_field(sregs, "cr3")))
    put64(VMSA_CR4, int(_field(sregs, "cr4")) | (X86_CR4_MCE if host_cr4_mce else 0))
    put64(VMSA_DR7, DR7_FIXED_1)
    put64(VMSA_DR6, DR6_ACTIVE_LOW)
    put64(VMSA_RFLAGS, int(_field(regs, "rflags", X86_EFLAGS_FIXED)) | X86_EFLAGS_FIXED)
    put64(VMSA_RIP, int(_field(regs, "rip")))
    for name, off in VMSA_GPRS.items():
        put64(off, int(_field(regs, name)))
    put64(VMSA_G_PAT, MSR_IA32_CR_PAT_DEFAULT)
    put64(VMSA_XCR0, xcr0)
    put64(VMSA_XSS, 0)
    struct.pack_into("<I", page, VMSA_PKRU, 0)
    put64(VMSA_SEV_FEATURES, sev_features)
    struct.pack_into("<I", page, VMSA_MXCSR, MXCSR_DEFAULT)
    struct.pack_into("<H", page, VMSA_X87_FCW, FPU_CWD_DEFAULT)
    return bytes(page)


def build_vmsa_for(state: Any, *, sev_features: int = SVM_SEV_FEAT_SNP_ACTIVE,
                   host_cr4_mce: bool = True) -> bytes:
    """VMSA from a ``VcpuInitState`` (``.regs``, ``.sregs``, ``.xcr0``)."""
    return build_vmsa(state.regs, state.sregs, int(getattr(state, "xcr0", 1)), sev_features=sev_features,
                      host_cr4_mce=host_cr4_mce)
