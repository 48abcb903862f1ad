"""GHCB: the guest–hypervisor communication block, its MSR protocol and NAE exit codes.

Constants and layouts only (no behaviour beyond pack/unpack). Names as in Linux
``arch/x86/include/asm/sev-common.h`` / ``svm.h`` / ``uapi/asm/svm.h`` and the GHCB spec (AMD 56421);
values checked in shared/reference/guest-protocol.md §1–§2, kvm-host-abi.md §1–§2 and errata.md
(table A, B1–B3, B12).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PAGE_SIZE = 4096

# MSRs (arch/x86/include/asm/msr-index.h)
MSR_AMD64_SEV_ES_GHCB = 0xC001_0130
MSR_AMD64_SEV = 0xC001_0131
MSR_AMD64_SEV_ENABLED = 1 << 0
MSR_AMD64_SEV_ES_ENABLED = 1 << 1
MSR_AMD64_SEV_SNP_ENABLED = 1 << 2

# ---- MSR protocol (sev-common.h) ----------------------------------------------------------------
GHCB_MSR_INFO_POS = 0
GHCB_DATA_LOW = 12
GHCB_MSR_INFO_MASK = (1 << GHCB_DATA_LOW) - 1

GHCB_MSR_SEV_INFO_RESP = 0x001
GHCB_MSR_SEV_INFO_REQ = 0x002
GHCB_MSR_CPUID_REQ = 0x004
GHCB_MSR_CPUID_RESP = 0x005
GHCB_MSR_AP_RESET_HOLD_REQ = 0x006
GHCB_MSR_AP_RESET_HOLD_RESP = 0x007
GHCB_MSR_PREF_GPA_REQ = 0x010
GHCB_MSR_PREF_GPA_RESP = 0x011
GHCB_MSR_REG_GPA_REQ = 0x012
GHCB_MSR_REG_GPA_RESP = 0x013
GHCB_MSR_PSC_REQ = 0x014
GHCB_MSR_PSC_RESP = 0x015
GHCB_MSR_VMPL_REQ = 0x016
GHCB_MSR_VMPL_RESP = 0x017
GHCB_MSR_HV_FT_REQ = 0x080
GHCB_MSR_HV_FT_RESP = 0x081
GHCB_MSR_TERM_REQ = 0x100

GHCB_MSR_PREF_GPA_NONE = 0xF_FFFF_FFFF_FFFF  # 52-bit GFN "no preference"
GHCB_MSR_PSC_RESP_ERROR = (1 << 63) | GHCB_MSR_PSC_RESP  # KVM's generic PSC MSR error
SNP_PAGE_STATE_PRIVATE = 1
SNP_PAGE_STATE_SHARED = 2

GHCB_VERSION_MIN = 1
GHCB_VERSION_MAX = 2  # KVM_SEV_INIT2 default ghcb_version for SNP

# Hypervisor features (MSR 0x080/0x081 data, NAE 0x8000FFFD in SW_EXITINFO2)
GHCB_HV_FT_SNP = 1 << 0
GHCB_HV_FT_SNP_AP_CREATION = 1 << 1
GHCB_HV_FT_SNP_MULTI_VMPL = 1 << 5
GHCB_HV_FT_SUPPORTED = GHCB_HV_FT_SNP | GHCB_HV_FT_SNP_AP_CREATION  # what upstream KVM advertises

# Termination reason sets/codes (set 0 = GHCB-general)
SEV_TERM_SET_GEN = 0
GHCB_SEV_ES_GEN_REQ = 0
GHCB_SEV_ES_PROT_UNSUPPORTED = 1
GHCB_SNP_UNSUPPORTED = 2


def msr_info(value: int) -> int:
    return value & GHCB_MSR_INFO_MASK


def msr_data(value: int) -> int:
    return value >> GHCB_DATA_LOW


def sev_info_resp(max_version: int, min_version: int, cbit: int) -> int:
    """GHCB_MSR_SEV_INFO: [63:48] max, [47:32] min, [31:24] C-bit position, [11:0] 0x001."""
    return (((max_version & 0xFFFF) << 48) | ((min_version & 0xFFFF) << 32) | ((cbit & 0xFF) << 24)
            | GHCB_MSR_SEV_INFO_RESP)


def reg_gpa_req(gfn: int) -> int:
    return ((gfn & ((1 << 52) - 1)) << GHCB_DATA_LOW) | GHCB_MSR_REG_GPA_REQ


def psc_req(gfn: int, op: int) -> int:
    """MSR PSC request: GFN [51:12] (40 bits), op [55:52]."""
    return ((op & 0xF) << 52) | ((gfn & ((1 << 40) - 1)) << 12) | GHCB_MSR_PSC_REQ


def psc_req_gfn(value: int) -> int:
    return (value >> 12) & ((1 << 40) - 1)


def psc_req_op(value: int) -> int:
    return (value >> 52) & 0xF


def term_req(reason_set: int, reason_code: int) -> int:
    """MSR termination: set [15:12], code [23:16]."""
    return ((reason_code & 0xFF) << 16) | ((reason_set & 0xF) << 12) | GHCB_MSR_TERM_REQ


def term_reason(value: int) -> tuple[int, int]:
    return (value >> 12) & 0xF, (value >> 16) & 0xFF


# ---- GHCB page (struct ghcb, arch/x86/include/asm/svm.h) ----------------------------------------
GHCB_CPL_OFFSET = 0x0CB
GHCB_XSS_OFFSET = 0x140
GHCB_DR7_OFFSET = 0x160
GHCB_RAX_OFFSET = 0x1F8
GHCB_RCX_OFFSET = 0x308
GHCB_RDX_OFFSET = 0x310
GHCB_RBX_OFFSET = 0x318
GHCB_SW_EXIT_CODE_OFFSET = 0x390
GHCB_SW_EXIT_INFO_1_OFFSET = 0x398
GHCB_SW_EXIT_INFO_2_OFFSET = 0x3A0
GHCB_SW_SCRATCH_OFFSET = 0x3A8
GHCB_XCR0_OFFSET = 0x3E8
GHCB_VALID_BITMAP_OFFSET = 0x3F0
GHCB_VALID_BITMAP_SIZE = 16
GHCB_SAVE_AREA_END = 0x408
GHCB_SHARED_BUF_OFFSET = 0x800
GHCB_SHARED_BUF_SIZE = 0x7F0
GHCB_RESERVED_0xFF0_OFFSET = 0xFF0
GHCB_PROTOCOL_VERSION_OFFSET = 0xFFA
GHCB_USAGE_OFFSET = 0xFFC
GHCB_DEFAULT_USAGE = 0


def ghcb_bitmap_idx(offset: int) -> int:
    """GHCB_BITMAP_IDX: a save-area field's valid bit = its offset / 8."""
    return offset // 8


GHCB_FIELD_OFFSETS: dict[str, int] = {
    "cpl": GHCB_CPL_OFFSET, "xss": GHCB_XSS_OFFSET, "dr7": GHCB_DR7_OFFSET,
    "rax": GHCB_RAX_OFFSET, "rcx": GHCB_RCX_OFFSET, "rdx": GHCB_RDX_OFFSET, "rbx": GHCB_RBX_OFFSET,
    "sw_exit_code": GHCB_SW_EXIT_CODE_OFFSET, "sw_exit_info_1": GHCB_SW_EXIT_INFO_1_OFFSET,
    "sw_exit_info_2": GHCB_SW_EXIT_INFO_2_OFFSET, "sw_scratch": GHCB_SW_SCRATCH_OFFSET,
    "xcr0": GHCB_XCR0_OFFSET,
}

# ---- NAE exit codes (uapi/asm/svm.h) -------------------------------------------------------------
SVM_EXIT_CPUID = 0x072
SVM_EXIT_MSR = 0x07C
SVM_EXIT_IOIO = 0x07B
SVM_VMGEXIT_MMIO_READ = 0x8000_0001
SVM_VMGEXIT_MMIO_WRITE = 0x8000_0002
SVM_VMGEXIT_NMI_COMPLETE = 0x8000_0003
SVM_VMGEXIT_AP_HLT_LOOP = 0x8000_0004
SVM_VMGEXIT_AP_JUMP_TABLE = 0x8000_0005
SVM_VMGEXIT_PSC = 0x8000_0010
SVM_VMGEXIT_GUEST_REQUEST = 0x8000_0011
SVM_VMGEXIT_EXT_GUEST_REQUEST = 0x8000_0012
SVM_VMGEXIT_AP_CREATION = 0x8000_0013
SVM_VMGEXIT_HV_FEATURES = 0x8000_FFFD
SVM_VMGEXIT_TERM_REQUEST = 0x8000_FFFE
SVM_VMGEXIT_UNSUPPORTED_EVENT = 0x8000_FFFF
SVM_EXIT_VMGEXIT = 0x403

# NAE termination: SW_EXITINFO1[3:0] reason set, [11:4] reason code
def nae_term_reason(exit_info_1: int) -> tuple[int, int]:
    return exit_info_1 & 0xF, (exit_info_1 >> 4) & 0xFF


# ---- SW_EXITINFO1 / SW_EXITINFO2 results (sev-common.h) ------------------------------------------
GHCB_HV_RESP_NO_ACTION = 0
GHCB_HV_RESP_ISSUE_EXCEPTION = 1
GHCB_HV_RESP_MALFORMED_INPUT = 2

GHCB_ERR_NOT_REGISTERED = 1
GHCB_ERR_INVALID_USAGE = 2
GHCB_ERR_INVALID_SCRATCH_AREA = 3
GHCB_ERR_MISSING_INPUT = 4
GHCB_ERR_INVALID_INPUT = 5
GHCB_ERR_INVALID_EVENT = 6

# Guest-request SW_EXITINFO2 = (vmm_error << 32) | firmware status (uapi linux/sev-guest.h)
SNP_GUEST_VMM_ERR_SHIFT = 32
SNP_GUEST_FW_ERR_MASK = 0xFFFF_FFFF
SNP_GUEST_VMM_ERR_INVALID_LEN = 1
SNP_GUEST_VMM_ERR_BUSY = 2
SNP_GUEST_VMM_ERR_GENERIC = 0xFFFF_FFFF  # ~0U, private to KVM sev.c (Linux ≥ 7.0), errata B3
SNP_GUEST_VMM_ERR_GENERIC_V15 = 1 << 31  # the v15 draft's BIT(31)


def snp_guest_err(vmm_error: int, fw_error: int) -> int:
    """SNP_GUEST_ERR(vmm, fw)."""
    return ((vmm_error & 0xFFFF_FFFF) << SNP_GUEST_VMM_ERR_SHIFT) | (fw_error & SNP_GUEST_FW_ERR_MASK)


def vmm_error(exit_info_2: int) -> int:
    return exit_info_2 >> SNP_GUEST_VMM_ERR_SHIFT


def fw_error(exit_info_2: int) -> int:
    return exit_info_2 & SNP_GUEST_FW_ERR_MASK


# ---- Page State Change NAE buffer (struct psc_buffer, sev-common.h) -----------------------------
VMGEXIT_PSC_MAX_ENTRY = 253  # VMGEXIT_PSC_MAX_COUNT
PSC_HDR_SIZE = 8
PSC_ENTRY_SIZE = 8
VMGEXIT_PSC_OP_PRIVATE = 1
VMGEXIT_PSC_OP_SHARED = 2
VMGEXIT_PSC_OP_PSMASH = 3
VMGEXIT_PSC_OP_UNSMASH = 4
VMGEXIT_PSC_ERROR_GENERIC = 0x100 << 32
VMGEXIT_PSC_ERROR_INVALID_HDR = (1 << 32) | 1
VMGEXIT_PSC_ERROR_INVALID_ENTRY = (1 << 32) | 2

_PSC_HDR = struct.Struct("<HHI")


@dataclass(frozen=True)
class PscHdr:
    cur_entry: int
    end_entry: int
    reserved: int = 0

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview) -> PscHdr:
        return cls(*_PSC_HDR.unpack(bytes(buf[:PSC_HDR_SIZE])))

    def pack(self) -> bytes:
        return _PSC_HDR.pack(self.cur_entry, self.end_entry, self.reserved)


@dataclass(frozen=True)
class PscEntry:
    """u64: cur_page [11:0], gfn [51:12], operation [55:52], pagesize [56], reserved [63:57]."""

    cur_page: int
    gfn: int
    operation: int
    pagesize: int
    reserved: int = 0

    @classmethod
    def from_u64(cls, v: int) -> PscEntry:
        return cls(cur_page=v & 0xFFF, gfn=(v >> 12) & ((1 << 40) - 1), operation=(v >> 52) & 0xF,
                   pagesize=(v >> 56) & 1, reserved=v >> 57)

    def to_u64(self) -> int:
        return ((self.cur_page & 0xFFF) | ((self.gfn & ((1 << 40) - 1)) << 12)
                | ((self.operation & 0xF) << 52) | ((self.pagesize & 1) << 56) | ((self.reserved & 0x7F) << 57))


# ---- PVALIDATE results (arch/x86/include/asm/sev.h) ---------------------------------------------
PVALIDATE_SUCCESS = 0
PVALIDATE_FAIL_INPUT = 1
PVALIDATE_FAIL_SIZEMISMATCH = 6
RMP_PG_SIZE_4K = 0
RMP_PG_SIZE_2M = 1
