"""KVM's SEV-SNP #VMGEXIT handling, emulated: the GHCB MSR protocol, GHCB page calls, page-state
changes, guest requests and extended guest requests in three ABI profiles.

Modelled on ``arch/x86/kvm/svm/sev.c`` (facts in shared/reference/kvm-host-abi.md §1–§2,
guest-protocol.md §1–§2 and errata.md, which wins). Profiles:

- ``stub`` (Linux 6.11–6.19): an extended MSG_REPORT_REQ with RBX ≠ 0 gets 24 zero bytes at RAX
  (an empty certificate table); never INVALID_LEN or BUSY, never a userspace exit;
- ``req-certs`` (Linux ≥ 7.0 after KVM_SEV_SNP_ENABLE_REQ_CERTS): a ``ReqCerts(gpa, npages)`` exit;
  ret 0 → firmware call, ENOSPC → SW_EXITINFO2 = 1<<32 and RBX = the VMM's npages, EAGAIN → 2<<32,
  EIO → 0xFFFFFFFF<<32, anything else → KVM_RUN fails with EINVAL (``KvmRunError``); enabling it
  once a vCPU exists fails with EINVAL; not enabled → stub behaviour;
- ``vmgexit-v15`` (the May 2024 v15 patch): every extended request exits with
  ``VmgexitReqCerts``; ``ret`` (u32) is taken verbatim as the VMM error in SW_EXITINFO2[63:32]
  (1 INVALID_LEN with RBX = data_npages, 2 BUSY, 1<<31 GENERIC); RAX/RBX must be valid
  (MISSING_INPUT otherwise). Where the v15 text is silent (RAX alignment, req/resp alignment) the
  7.0 checks are applied.

Error codes follow the **newest** KVM by default (``kernel="newest"``): misaligned or identical
request/response GPAs → EXITINFO1 = 2, EXITINFO2 = 5 (INVALID_INPUT); an unregistered GHCB → 2/1
(NOT_REGISTERED) and the guest resumes; a PSC scratch area outside the GHCB → INVALID_SCRATCH_AREA,
its length is sizeof(struct psc_hdr) (SW_EXITINFO2 ignored); MapGpaRange answers other than
0/EINVAL/EAGAIN → KVM_RUN EINVAL. ``kernel="7.0"`` plays the older code: 2/4 (MISSING_INPUT) for bad
request pages, KVM_RUN −EINVAL for an unregistered GHCB, any non-zero MapGpaRange answer → PSC error,
PSC scratch length = exit_info_2 (outside the GHCB allowed). ``abi="vmgexit-v15"`` always plays the
7.0 code (2024-era patch). In both, the GHCB is synced (registers read, valid bitmap cleared) before
the registration check, and NAE termination zeroes SW_EXITINFO1/2 before the SevTerm exit, whose
raw value is the GHCB GPA and whose reason is unknown (-1/-1), as a VMM decodes it on hardware.

Guest pages are read and written "through the shared mapping" (``rmp.HostView``): a page the RMP
holds as private reads as zeros and swallows writes. A request page left private therefore reaches
the firmware as a zero page — algo 0 — and the guest gets EXITINFO1 = 0, EXITINFO2 = 0x16
(INVALID_PARAM) with its sequence number not consumed; certificates the VMM writes into a private
buffer are undone after its handler returns (they went to the shared backing, which the guest
cannot see). ``message_log`` records every guest request/extended request VMGEXIT on a registered GHCB
with the request page as the host sees it, also when KVM rejects the call (docs/contract.md §5).

Not emulated (answered as documented): GHCB CPUID/IOIO/MSR NAE events and AP creation get
INVALID_EVENT; the MSR-protocol CPUID request is answered only when a ``cpuid`` callback is given;
AP reset hold keeps the MSR unchanged.
"""

from __future__ import annotations

import errno
import hashlib
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from snplab.abi import ghcb as G
from snplab.abi import guest_msg as gm
from snplab.emu.faults import FaultSet
from snplab.emu.psp import EmulatedPsp
from snplab.emu.rmp import PAGE_SIZE, HostView, Memory, Rmp
from snplab.vmm.errors import IoctlError
from snplab.vmm.events import (
    CertsAnswer,
    Doorbell,
    KvmRunError,
    MapGpaRange,
    MsrRead,
    MsrWrite,
    ReqCerts,
    SevTerm,
    VmgexitReqCerts,
)
from snplab.vmm.exits import sev_term_event
from snplab.vmm.memory import GpaOutOfRange

PROFILES = ("stub", "req-certs", "vmgexit-v15")
KERNELS = ("newest", "7.0")

DOORBELL_PORT = 0xE0  # snplab_abi.h SNPLAB_DOORBELL_PORT
PVALIDATE_PORT = 0xE4  # SNPLAB_PVALIDATE_PORT
PVALIDATE_RANGE_PORT = 0xE8  # SNPLAB_PVALIDATE_RANGE_PORT
PVAL_2M = 1 << 0
PVAL_VALIDATE = 1 << 1
PVAL_RANGE_VALIDATE = 1 << 0  # enum snplab_pvalidate_range
PVAL_RANGE_COUNT_SHIFT = 1
PVAL_RANGE_MAX_PAGES = 2048
PVAL_RANGE_INDEX_SHIFT = 12

# include/uapi/linux/kvm_para.h / kvm.h
KVM_MAP_GPA_RANGE_ENCRYPTED = 1 << 4
KVM_MAP_GPA_RANGE_PAGE_SZ_4K = 0
KVM_MAP_GPA_RANGE_PAGE_SZ_2M = 1
KVM_USER_VMGEXIT_REQ_CERTS = 1  # v15 kvm_user_vmgexit.type
GHCB_SCRATCH_AREA_LIMIT = 16 * PAGE_SIZE
CERT_TABLE_TERMINATOR = bytes(24)
SEV_STATUS_VALUE = G.MSR_AMD64_SEV_ENABLED | G.MSR_AMD64_SEV_ES_ENABLED | G.MSR_AMD64_SEV_SNP_ENABLED
SNP_CBIT_POSITION = 51  # CPUID 0x8000001F EBX[5:0] on Milan/Genoa/Turin
U64 = (1 << 64) - 1

# struct psc_entry as a raw u64 (the fields of G.PscEntry): cur_page [11:0], gfn [51:12],
# operation [55:52], pagesize [56]
_U64 = struct.Struct("<Q")
_PSC_CUR_PAGE = 0xFFF
_PSC_2M = 1 << 56


def _psc_gfn(e: int) -> int:
    return (e >> 12) & ((1 << 40) - 1)


def _psc_op(e: int) -> int:
    return (e >> 52) & 0xF


_REGS = ("rax", "rbx", "rcx", "rdx")
_REG_OFF = {"rax": G.GHCB_RAX_OFFSET, "rbx": G.GHCB_RBX_OFFSET, "rcx": G.GHCB_RCX_OFFSET,
            "rdx": G.GHCB_RDX_OFFSET}


class _Bad(Exception):
    """svm_vmgexit_bad_input(reason): answered with EXITINFO1 = 2, EXITINFO2 = reason."""

    def __init__(self, reason: int) -> None:
        self.reason = reason


@dataclass
class VcpuSnpState:
    """KVM's per-vCPU SEV-ES state that the emulation needs."""

    registered_gpa: int | None = None  # ghcb_registered_gpa
    regs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_REGS, 0))  # vcpu->arch.regs
    pvalidate_result: int = 0


class _Ghcb:
    """A copy of the GHCB page; KVM's changes are tracked and written back at unmap."""

    __slots__ = ("dirty", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = bytearray(raw)
        self.dirty: list[tuple[int, int]] = []

    def u64(self, off: int) -> int:
        return int.from_bytes(self.raw[off:off + 8], "little")

    def valid(self, off: int, bitmap: int) -> bool:
        return bool(bitmap >> G.ghcb_bitmap_idx(off) & 1)

    @property
    def bitmap(self) -> int:
        return int.from_bytes(self.raw[G.GHCB_VALID_BITMAP_OFFSET:G.GHCB_VALID_BITMAP_OFFSET + 16], "little")

    def set_bitmap(self, value: int) -> None:
        self.raw[G.GHCB_VALID_BITMAP_OFFSET:G.GHCB_VALID_BITMAP_OFFSET + 16] = value.to_bytes(16, "little")
        self.dirty.append((G.GHCB_VALID_BITMAP_OFFSET, 16))

    def set_field(self, off: int, value: int) -> None:
        """ghcb_set_<field>: store and mark valid."""
        struct.pack_into("<Q", self.raw, off, value & U64)
        self.dirty.append((off, 8))
        self.set_bitmap(self.bitmap | 1 << G.ghcb_bitmap_idx(off))

    def set_exit_info(self, info1: int, info2: int) -> None:
        self.set_field(G.GHCB_SW_EXIT_INFO_1_OFFSET, info1)
        self.set_field(G.GHCB_SW_EXIT_INFO_2_OFFSET, info2)

    def touch(self, off: int, length: int) -> None:
        self.dirty.append((off, length))


@dataclass
class GuestMessageRecord:
    """One guest message KVM saw at a VMGEXIT (docs/contract.md §5 ``message_log``)."""

    vcpu: int
    exit_code: int
    req_gpa: int
    vmpck: int | None = None
    seqno: int | None = None
    msg_type: int | None = None
    ct_sha256: str | None = None
    tag: str | None = None
    reached_firmware: bool = False
    fw_status: int | None = None
    sw_exit_info_1: int | None = None
    sw_exit_info_2: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class EmulatedKvm:
    """The SEV-SNP half of KVM for one VM, driven by the VMM's exit events."""

    def __init__(self, psp: EmulatedPsp, rmp: Rmp, memory: Memory, *, abi: str = "req-certs",
                 kernel: str = "newest", faults: Iterable[str] = (),
                 cert_blob: Callable[[], bytes] | None = None,
                 cpuid: Callable[[int, int], tuple[int, int, int, int] | None] | None = None,
                 ghcb_version: int = G.GHCB_VERSION_MAX) -> None:
        if abi not in PROFILES:
            raise ValueError(f"unknown ABI profile {abi!r} (want one of {', '.join(PROFILES)})")
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel behaviour {kernel!r} (want one of {', '.join(KERNELS)})")
        self.psp = psp
        self.rmp = rmp
        self.host = HostView(memory, rmp)
        self.abi = abi
        # The v15 patch is 2024-era code: its version-dependent answers are the ≤7.0 ones
        # (errata B1/B2), whatever kernel behaviour was asked for.
        self.kernel = "7.0" if abi == "vmgexit-v15" else kernel
        self.faults = faults if isinstance(faults, FaultSet) else FaultSet(faults)
        self.cert_blob = cert_blob
        self.cpuid = cpuid
        self.ghcb_version = ghcb_version
        self.req_certs_enabled = False
        self.created_vcpus = 0
        self.message_log: list[GuestMessageRecord] = []
        self.stats: Counter[str] = Counter()
        self._vcpus: dict[int, VcpuSnpState] = {}
        self._vm_lock = threading.Lock()  # RMP, logs
        self._guest_req_mutex = threading.Lock()  # kvm_sev_info.guest_req_mutex
        self._resp_bounce = bytearray(PAGE_SIZE)  # per-VM firmware response page (never cleared)

    # ---- VM-level commands ---------------------------------------------------------------------

    def vcpu_created(self, index: int) -> None:
        self.created_vcpus += 1
        self._vcpus.setdefault(index, VcpuSnpState())

    def enable_req_certs(self) -> None:
        """KVM_SEV_SNP_ENABLE_REQ_CERTS (command 103). Raises IoctlError(EINVAL) as KVM would."""
        if self.abi != "req-certs":
            raise IoctlError("KVM_SEV_SNP_ENABLE_REQ_CERTS", errno.EINVAL,
                             f"the {self.abi} kernel has no such command")
        if self.created_vcpus and "late-enable-req-certs" not in self.faults:
            raise IoctlError("KVM_SEV_SNP_ENABLE_REQ_CERTS", errno.EINVAL,
                             f"{self.created_vcpus} vCPU(s) already created")
        self.req_certs_enabled = True

    def state(self, index: int) -> VcpuSnpState:
        st = self._vcpus.get(index)
        if st is None:
            st = self._vcpus[index] = VcpuSnpState()
        return st

    # ---- VMM event handlers ----------------------------------------------------------------------

    def on_msr_read(self, vcpu: Any, ev: MsrRead) -> int | None:
        if ev.index == G.MSR_AMD64_SEV_ES_GHCB:
            return vcpu.ghcb_msr
        if ev.index == G.MSR_AMD64_SEV:
            return SEV_STATUS_VALUE
        return None

    def on_msr_write(self, vcpu: Any, ev: MsrWrite) -> bool:
        if ev.index == G.MSR_AMD64_SEV_ES_GHCB:
            vcpu.ghcb_msr = ev.value & U64
            return True
        return False  # SEV_STATUS is read-only: #GP

    def on_doorbell(self, vcpu: Any, ev: Doorbell) -> int | None:
        if ev.port == DOORBELL_PORT and ev.direction == "out":
            self.vmgexit(vcpu)
            return None
        if ev.port in (PVALIDATE_PORT, PVALIDATE_RANGE_PORT):
            st = self.state(vcpu.index)
            if ev.direction == "out":
                run = self.pvalidate if ev.port == PVALIDATE_PORT else self.pvalidate_range
                st.pvalidate_result = run(ev.value)
                return None
            return st.pvalidate_result
        return None

    def pvalidate(self, arg: int) -> int:
        """Emulated PVALIDATE: ``arg`` = GPA[31:12] | SNPLAB_PVAL_*; result rc | CF << 8."""
        gpa = arg & ~0xFFF & 0xFFFF_FFFF
        with self._vm_lock:
            rc, cf = self.rmp.pvalidate(gpa, bool(arg & PVAL_2M), bool(arg & PVAL_VALIDATE))
        self.stats["pvalidate"] += 1
        return rc | (int(cf) << 8)

    def pvalidate_range(self, arg: int) -> int:
        """The range doorbell (snplab_abi.h ``snplab_pvalidate_range``), the emulated stand-in for
        the guest's loop of 4K PVALIDATE instructions: ``arg`` = GPA[31:12] | (npages − 1) << 1 |
        VALIDATE; each page gets exactly a single PVALIDATE's RMP checks, in order, up to the first
        rc ≠ 0. Result 0, or rc | CF << 8 | the failing page's index << 12."""
        gpa = arg & ~0xFFF & 0xFFFF_FFFF
        npages = ((arg >> PVAL_RANGE_COUNT_SHIFT) & (PVAL_RANGE_MAX_PAGES - 1)) + 1
        with self._vm_lock:
            failed = self.rmp.pvalidate_run(gpa, npages, bool(arg & PVAL_RANGE_VALIDATE))
        self.stats["pvalidate_range"] += 1
        self.stats["pvalidate"] += npages if failed is None else failed[0] + 1
        if failed is None:
            return 0
        index, rc, cf = failed
        return rc | (int(cf) << 8) | index << PVAL_RANGE_INDEX_SHIFT

    # ---- #VMGEXIT ------------------------------------------------------------------------------

    def vmgexit(self, vcpu: Any) -> None:
        """sev_handle_vmgexit: the vCPU executed VMGEXIT with its current GHCB MSR value."""
        st = self.state(vcpu.index)
        msr = vcpu.ghcb_msr
        self.stats["vmgexit"] += 1
        if msr & G.GHCB_MSR_INFO_MASK:
            self._msr_protocol(vcpu, st, msr)
            return
        if msr == 0:
            self.stats["vmgexit-no-ghcb"] += 1  # "GHCB gpa is not set": resume the guest
            return
        gpa = msr
        try:
            ghcb = _Ghcb(self.host.read(gpa, PAGE_SIZE))
        except GpaOutOfRange:
            self.stats["vmgexit-unmappable-ghcb"] += 1  # kvm_vcpu_map failed: resume the guest
            return
        bitmap = ghcb.bitmap
        # sev_es_sync_from_ghcb, before the registration check: registers (0 if not valid), exit
        # code/infos (raw), scratch; the valid bitmap is cleared in the page
        st.regs = {r: ghcb.u64(_REG_OFF[r]) if ghcb.valid(_REG_OFF[r], bitmap) else 0 for r in _REGS}
        exit_code = ghcb.u64(G.GHCB_SW_EXIT_CODE_OFFSET)
        info1 = ghcb.u64(G.GHCB_SW_EXIT_INFO_1_OFFSET)
        info2 = ghcb.u64(G.GHCB_SW_EXIT_INFO_2_OFFSET)
        scratch = ghcb.u64(G.GHCB_SW_SCRATCH_OFFSET) if ghcb.valid(G.GHCB_SW_SCRATCH_OFFSET, bitmap) else 0
        usage = int.from_bytes(ghcb.raw[G.GHCB_USAGE_OFFSET:G.GHCB_USAGE_OFFSET + 4], "little")
        ghcb.set_bitmap(0)
        if st.registered_gpa != gpa:
            if self.kernel == "7.0":
                self._flush(ghcb, gpa)  # the bitmap was cleared in the mapped page
                raise KvmRunError(errno.EINVAL, f"vmgexit: GHCB GPA {gpa:#x} is not registered")
            ghcb.set_exit_info(G.GHCB_HV_RESP_MALFORMED_INPUT, G.GHCB_ERR_NOT_REGISTERED)
            self._unmap(st, ghcb, gpa)
            return
        self.stats[f"nae-{exit_code:#x}"] += 1
        rec = (self._record(vcpu.index, exit_code, info1)
               if exit_code in (G.SVM_VMGEXIT_GUEST_REQUEST, G.SVM_VMGEXIT_EXT_GUEST_REQUEST) else None)
        try:
            self._validate(exit_code, info1, info2, usage, bitmap, ghcb)
            ghcb.set_exit_info(0, 0)
            self._handle(vcpu, st, ghcb, gpa, exit_code, info1, info2, scratch, bitmap, rec)
        except _Bad as bad:
            ghcb.set_exit_info(G.GHCB_HV_RESP_MALFORMED_INPUT, bad.reason)
        finally:
            if rec is not None:
                rec.sw_exit_info_1 = ghcb.u64(G.GHCB_SW_EXIT_INFO_1_OFFSET)
                rec.sw_exit_info_2 = ghcb.u64(G.GHCB_SW_EXIT_INFO_2_OFFSET)
                with self._vm_lock:
                    self.message_log.append(rec)
        self._unmap(st, ghcb, gpa)

    def _unmap(self, st: VcpuSnpState, ghcb: _Ghcb, gpa: int) -> None:
        """sev_es_unmap_ghcb → sev_es_sync_to_ghcb: RAX/RBX/RCX/RDX back (marked valid), then the
        touched bytes of the page go back to guest memory."""
        for r in _REGS:
            ghcb.set_field(_REG_OFF[r], st.regs[r])
        self._flush(ghcb, gpa)

    def _flush(self, ghcb: _Ghcb, gpa: int) -> None:
        """KVM writes the mapped page directly: the touched bytes go back to guest memory (each
        run of overlapping or adjacent touched ranges in one write)."""
        spans: list[list[int]] = []
        for off, length in sorted(ghcb.dirty):
            if spans and off <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], off + length)
            else:
                spans.append([off, off + length])
        for lo, hi in spans:
            self.host.write(gpa + lo, ghcb.raw[lo:hi])

    def _validate(self, exit_code: int, info1: int, info2: int, usage: int, bitmap: int, ghcb: _Ghcb) -> None:
        if usage != G.GHCB_DEFAULT_USAGE:
            raise _Bad(G.GHCB_ERR_INVALID_USAGE)
        for off in (G.GHCB_SW_EXIT_CODE_OFFSET, G.GHCB_SW_EXIT_INFO_1_OFFSET, G.GHCB_SW_EXIT_INFO_2_OFFSET):
            if not ghcb.valid(off, bitmap):
                raise _Bad(G.GHCB_ERR_MISSING_INPUT)
        if exit_code == G.SVM_VMGEXIT_PSC:
            if not ghcb.valid(G.GHCB_SW_SCRATCH_OFFSET, bitmap):
                raise _Bad(G.GHCB_ERR_MISSING_INPUT)
        elif exit_code in (G.SVM_VMGEXIT_GUEST_REQUEST, G.SVM_VMGEXIT_EXT_GUEST_REQUEST):
            if self.abi == "vmgexit-v15" and exit_code == G.SVM_VMGEXIT_EXT_GUEST_REQUEST and not (
                    ghcb.valid(G.GHCB_RAX_OFFSET, bitmap) and ghcb.valid(G.GHCB_RBX_OFFSET, bitmap)):
                raise _Bad(G.GHCB_ERR_MISSING_INPUT)
            if info1 % PAGE_SIZE or info2 % PAGE_SIZE or info1 == info2:
                raise _Bad(G.GHCB_ERR_MISSING_INPUT if self.kernel == "7.0" else G.GHCB_ERR_INVALID_INPUT)
        elif exit_code not in (G.SVM_VMGEXIT_TERM_REQUEST, G.SVM_VMGEXIT_HV_FEATURES,
                               G.SVM_VMGEXIT_UNSUPPORTED_EVENT):
            raise _Bad(G.GHCB_ERR_INVALID_EVENT)

    def _handle(self, vcpu: Any, st: VcpuSnpState, ghcb: _Ghcb, gpa: int, exit_code: int, info1: int,
                info2: int, scratch: int, bitmap: int, rec: GuestMessageRecord | None) -> None:
        if exit_code == G.SVM_VMGEXIT_PSC:
            self._psc_nae(vcpu, ghcb, gpa, scratch, info2)
        elif exit_code == G.SVM_VMGEXIT_GUEST_REQUEST:
            assert rec is not None
            self._guest_request(ghcb, info1, info2, rec)
        elif exit_code == G.SVM_VMGEXIT_EXT_GUEST_REQUEST:
            assert rec is not None
            self._ext_guest_request(vcpu, st, ghcb, info1, info2, bitmap, rec)
        elif exit_code == G.SVM_VMGEXIT_HV_FEATURES:
            ghcb.set_exit_info(0, G.GHCB_HV_FT_SUPPORTED)
        elif exit_code == G.SVM_VMGEXIT_TERM_REQUEST:
            # svm_vmgexit_success(svm, 0) ran before the switch: SW_EXITINFO1/2 are already 0 in
            # the page when KVM exits with SEV_TERM, data[0] = GHCB GPA; the reason is lost.
            self._flush(ghcb, gpa)
            self._terminate(vcpu, sev_term_event(gpa))
        elif exit_code == G.SVM_VMGEXIT_UNSUPPORTED_EVENT:
            raise KvmRunError(errno.EINVAL, f"guest reported an unsupported event: info1={info1:#x}")

    def _terminate(self, vcpu: Any, ev: SevTerm) -> None:
        vcpu.dispatch(ev)
        stop = getattr(vcpu, "stop", None)
        if stop is not None:
            stop("terminated", f"SevTerm(reason_set={ev.reason_set:#x}, reason_code={ev.reason_code:#x}, "
                               f"raw={ev.raw:#x})")

    # ---- MSR protocol --------------------------------------------------------------------------

    def _msr_protocol(self, vcpu: Any, st: VcpuSnpState, msr: int) -> None:
        info = G.msr_info(msr)
        self.stats[f"msr-{info:#x}"] += 1
        if info == G.GHCB_MSR_SEV_INFO_REQ:
            vcpu.ghcb_msr = G.sev_info_resp(self.ghcb_version, G.GHCB_VERSION_MIN, SNP_CBIT_POSITION)
        elif info == G.GHCB_MSR_HV_FT_REQ:
            vcpu.ghcb_msr = (G.GHCB_HV_FT_SUPPORTED << G.GHCB_DATA_LOW) | G.GHCB_MSR_HV_FT_RESP
        elif info == G.GHCB_MSR_PREF_GPA_REQ:
            vcpu.ghcb_msr = (G.GHCB_MSR_PREF_GPA_NONE << G.GHCB_DATA_LOW) | G.GHCB_MSR_PREF_GPA_RESP
        elif info == G.GHCB_MSR_REG_GPA_REQ:
            gfn = G.msr_data(msr) & ((1 << 52) - 1)
            st.registered_gpa = gfn << 12
            vcpu.ghcb_msr = (gfn << G.GHCB_DATA_LOW) | G.GHCB_MSR_REG_GPA_RESP
        elif info == G.GHCB_MSR_PSC_REQ:
            op = G.psc_req_op(msr)
            if op not in (G.SNP_PAGE_STATE_PRIVATE, G.SNP_PAGE_STATE_SHARED):
                vcpu.ghcb_msr = G.GHCB_MSR_PSC_RESP_ERROR
                return
            gpa = G.psc_req_gfn(msr) << 12
            private = op == G.SNP_PAGE_STATE_PRIVATE
            attrs = (KVM_MAP_GPA_RANGE_ENCRYPTED if private else 0) | KVM_MAP_GPA_RANGE_PAGE_SZ_4K
            ret = self._map_gpa_range(vcpu, gpa, 1, attrs)
            vcpu.ghcb_msr = G.GHCB_MSR_PSC_RESP_ERROR if ret else G.GHCB_MSR_PSC_RESP
        elif info == G.GHCB_MSR_CPUID_REQ:
            values = self.cpuid(msr >> 32, 0) if self.cpuid is not None else None
            if values is None:
                return  # error: keep the MSR value as-is
            reg = (msr >> 30) & 3
            vcpu.ghcb_msr = ((values[reg] & 0xFFFF_FFFF) << 32) | G.GHCB_MSR_CPUID_RESP
        elif info == G.GHCB_MSR_TERM_REQ:
            reason_set, reason_code = G.term_reason(msr)
            self._terminate(vcpu, SevTerm(reason_set, reason_code, msr))
        # anything else (AP reset hold, VMPL requests, unknown codes): MSR left as-is

    # ---- page-state changes --------------------------------------------------------------------

    def _map_gpa_range(self, vcpu: Any, gpa: int, npages: int, attrs: int) -> int:
        """KVM_HC_MAP_GPA_RANGE exit to the VMM, then the RMP update on success. Returns ret."""
        ret = vcpu.dispatch(MapGpaRange(gpa, npages, attrs))
        ret = int(ret or 0)
        if self.kernel == "newest" and ret not in (0, errno.EINVAL, errno.EAGAIN):
            raise KvmRunError(errno.EINVAL, f"KVM_HC_MAP_GPA_RANGE ret {ret} is not 0, EINVAL or EAGAIN")
        if ret == 0:
            end = min(gpa + npages * PAGE_SIZE, self.rmp.npages * PAGE_SIZE)
            if gpa < end:
                with self._vm_lock:
                    if attrs & KVM_MAP_GPA_RANGE_ENCRYPTED:
                        self.rmp.set_private(gpa, (end - gpa) // PAGE_SIZE)
                    else:
                        self.rmp.set_shared(gpa, (end - gpa) // PAGE_SIZE)
        return ret

    def _psc_nae(self, vcpu: Any, ghcb: _Ghcb, ghcb_gpa: int, scratch: int, length: int) -> None:
        """setup_vmgexit_scratch + snp_begin_psc / snp_complete_one_psc, one MapGpaRange per run of
        adjacent entries with the same operation and page size."""
        area_beg = ghcb_gpa + G.GHCB_SHARED_BUF_OFFSET
        area_end = ghcb_gpa + G.GHCB_RESERVED_0xFF0_OFFSET
        outside: bytearray | None = None
        if self.kernel == "newest":
            length = G.PSC_HDR_SIZE  # sizeof(struct psc_hdr); SW_EXITINFO2 is ignored (errata B12)
        if scratch == 0 or scratch + length > U64:
            raise _Bad(G.GHCB_ERR_INVALID_SCRATCH_AREA)
        if scratch & ~0xFFF == ghcb_gpa:
            if scratch < area_beg or scratch + length > area_end:
                raise _Bad(G.GHCB_ERR_INVALID_SCRATCH_AREA)
            base, limit = scratch - ghcb_gpa, G.GHCB_RESERVED_0xFF0_OFFSET
            buf = ghcb.raw
        else:
            if self.kernel == "newest" or length > GHCB_SCRATCH_AREA_LIMIT:
                raise _Bad(G.GHCB_ERR_INVALID_SCRATCH_AREA)
            try:
                outside = bytearray(self.host.read(scratch, length))
            except GpaOutOfRange:
                raise KvmRunError(errno.EFAULT, f"PSC scratch {scratch:#x}+{length:#x} unreadable") from None
            base, limit, buf = 0, length, outside

        # Entries are handled as raw u64s (layout: G.PscEntry) — this loop runs for every page
        # the guest converts, and building an object per look would dominate its cost.
        def entry(i: int) -> int:
            off = base + G.PSC_HDR_SIZE + G.PSC_ENTRY_SIZE * i
            return _U64.unpack_from(buf, off)[0] if off + 8 <= limit else 0  # past the area: zeros

        def put_entry(i: int, value: int) -> None:
            off = base + G.PSC_HDR_SIZE + G.PSC_ENTRY_SIZE * i
            if off + 8 <= limit:
                _U64.pack_into(buf, off, value)
                if outside is None:
                    ghcb.touch(off, 8)

        def set_cur(value: int) -> None:
            buf[base:base + 2] = (value & 0xFFFF).to_bytes(2, "little")
            if outside is None:
                ghcb.touch(base, 2)

        def complete(ret: int) -> None:
            ghcb.set_exit_info(0, ret)
            if outside is not None:
                self.host.write(scratch, outside)  # ghcb_sa_sync

        while True:
            hdr = G.PscHdr.unpack(bytes(buf[base:base + G.PSC_HDR_SIZE]))
            idx_start, idx_end = hdr.cur_entry, hdr.end_entry
            fits = (limit - base - G.PSC_HDR_SIZE) // G.PSC_ENTRY_SIZE
            if idx_end >= G.VMGEXIT_PSC_MAX_ENTRY or (self.kernel == "newest" and idx_end >= fits):
                return complete(G.VMGEXIT_PSC_ERROR_INVALID_HDR)
            idx, cur = idx_start, idx_start
            start = entry(idx)
            npages, gfn, huge = 0, 0, False
            while idx <= idx_end:
                start = entry(idx)
                start_cur, gfn, huge = start & _PSC_CUR_PAGE, _psc_gfn(start), bool(start & _PSC_2M)
                npages = 512 if huge else 1
                if start_cur > npages or gfn % npages:
                    return complete(G.VMGEXIT_PSC_ERROR_INVALID_ENTRY)
                if start_cur:
                    npages -= start_cur
                    gfn += start_cur
                    huge = False
                if npages:
                    break
                idx += 1
                cur += 1
                set_cur(cur)
            if idx > idx_end:
                return complete(0)
            op, start_2m, start_gfn = _psc_op(start), bool(start & _PSC_2M), _psc_gfn(start)
            psc_idx, inflight = idx, 1
            j = idx + 1
            while j <= idx_end:
                e = entry(j)
                if (_psc_op(e) != op or _psc_gfn(e) != start_gfn + npages or e & _PSC_CUR_PAGE
                        or bool(e & _PSC_2M) != huge):
                    break
                inflight += 1
                npages += 512 if huge else 1
                j += 1
            if op in (G.VMGEXIT_PSC_OP_PRIVATE, G.VMGEXIT_PSC_OP_SHARED):
                attrs = KVM_MAP_GPA_RANGE_ENCRYPTED if op == G.VMGEXIT_PSC_OP_PRIVATE else 0
                attrs |= KVM_MAP_GPA_RANGE_PAGE_SZ_2M if start_2m else KVM_MAP_GPA_RANGE_PAGE_SZ_4K
                if self._map_gpa_range(vcpu, gfn << 12, npages, attrs):
                    return complete(G.VMGEXIT_PSC_ERROR_GENERIC)
            for k in range(psc_idx, psc_idx + inflight):  # __snp_complete_one_psc: cur_page = all
                e = entry(k)
                put_entry(k, (e & ~_PSC_CUR_PAGE) | (512 if e & _PSC_2M else 1))
            set_cur(psc_idx + inflight)

    # ---- guest requests ------------------------------------------------------------------------

    def _record(self, vcpu: int, exit_code: int, req_gpa: int) -> GuestMessageRecord:
        rec = GuestMessageRecord(vcpu=vcpu, exit_code=exit_code, req_gpa=req_gpa)
        try:
            page = self.host.read(req_gpa, PAGE_SIZE)
        except GpaOutOfRange:
            return rec
        hdr = gm.MsgHeader.unpack(page)
        ct = page[gm.PAYLOAD_OFFSET:gm.PAYLOAD_OFFSET + min(hdr.msg_sz, gm.MAX_PAYLOAD_SIZE)]
        rec.vmpck, rec.seqno, rec.msg_type = hdr.msg_vmpck, hdr.msg_seqno, hdr.msg_type
        rec.ct_sha256, rec.tag = hashlib.sha256(ct).hexdigest(), hdr.tag.hex()
        return rec

    def _guest_request(self, ghcb: _Ghcb, req_gpa: int, resp_gpa: int, rec: GuestMessageRecord) -> None:
        """snp_handle_guest_req: bounce the request page to firmware, copy the response page back
        (even on a firmware error), firmware status in SW_EXITINFO2[31:0]."""
        with self._guest_req_mutex:
            try:
                req = self.host.read(req_gpa, PAGE_SIZE)
            except GpaOutOfRange:
                raise KvmRunError(errno.EIO, f"guest request page {req_gpa:#x} unreadable") from None
            status = self.psp.guest_request(req, self._resp_bounce)
            rec.reached_firmware, rec.fw_status = True, status
            try:
                self.host.write(resp_gpa, self._resp_bounce)
            except GpaOutOfRange:
                raise KvmRunError(errno.EIO, f"guest response page {resp_gpa:#x} unwritable") from None
        self.stats["firmware-calls"] += 1
        ghcb.set_exit_info(0, G.snp_guest_err(0, status))

    def _ext_guest_request(self, vcpu: Any, st: VcpuSnpState, ghcb: _Ghcb, req_gpa: int, resp_gpa: int,
                           bitmap: int, rec: GuestMessageRecord) -> None:
        if self.abi == "vmgexit-v15":
            return self._ext_v15(vcpu, st, ghcb, req_gpa, resp_gpa, rec)
        try:
            msg_type = self.host.read(req_gpa + gm.MSG_TYPE_OFFSET, 1)[0]
        except GpaOutOfRange:
            raise KvmRunError(errno.EIO, f"msg_type of {req_gpa:#x} unreadable") from None
        certs_exit = self.abi == "req-certs" and self.req_certs_enabled
        if msg_type == gm.MSG_REPORT_REQ or (certs_exit and "certs-exit-any-msg-type" in self.faults):
            if not (ghcb.valid(G.GHCB_RAX_OFFSET, bitmap) and ghcb.valid(G.GHCB_RBX_OFFSET, bitmap)):
                raise _Bad(G.GHCB_ERR_INVALID_INPUT)
            data_gpa, data_npages = st.regs["rax"], st.regs["rbx"]
            if data_gpa % PAGE_SIZE:
                raise _Bad(G.GHCB_ERR_INVALID_INPUT)
            if certs_exit:
                return self._req_certs(vcpu, st, ghcb, req_gpa, resp_gpa, data_gpa, data_npages, rec)
            if data_npages and "stub-no-terminator" not in self.faults:
                try:
                    self.host.write(data_gpa, CERT_TABLE_TERMINATOR)  # kvm_clear_guest(data_gpa, 24)
                except GpaOutOfRange:
                    raise KvmRunError(errno.EIO, f"certificate buffer {data_gpa:#x} unwritable") from None
        self._guest_request(ghcb, req_gpa, resp_gpa, rec)

    def _vmm_cert_exit(self, vcpu: Any, event: Any, data_gpa: int, data_npages: int) -> CertsAnswer:
        """Dispatch a certificate exit; whatever the VMM wrote into private pages is undone."""
        protect = self.host.snapshot_private(data_gpa, data_npages * PAGE_SIZE)
        try:
            answer = vcpu.dispatch(event)
        finally:
            if protect:
                with self._vm_lock:
                    self.host.restore(protect)
        if not isinstance(answer, CertsAnswer):
            raise TypeError(f"{event.kind} handler returned {answer!r}, want CertsAnswer")
        self.stats[f"cert-exit-ret-{answer.ret}"] += 1
        return answer

    def _write_certs_anyway(self, data_gpa: int, data_npages: int) -> None:
        """Fault certs-written-on-enospc: the part of the blob that fits is written."""
        blob = self.cert_blob() if self.cert_blob is not None else b""
        n = min(len(blob), data_npages * PAGE_SIZE)
        if n:
            try:
                self.host.write(data_gpa, blob[:n])
            except GpaOutOfRange:
                pass

    def _req_certs(self, vcpu: Any, st: VcpuSnpState, ghcb: _Ghcb, req_gpa: int, resp_gpa: int,
                   data_gpa: int, data_npages: int, rec: GuestMessageRecord) -> None:
        """KVM_EXIT_SNP_REQ_CERTS and snp_complete_req_certs (Linux ≥ 7.0)."""
        answer = self._vmm_cert_exit(vcpu, ReqCerts(data_gpa, data_npages), data_gpa, data_npages)
        try:
            ret = answer.ret
            if ret == 0:
                self._guest_request(ghcb, req_gpa, resp_gpa, rec)
            elif ret == errno.ENOSPC:
                if "rbx-unchanged-on-invalid-len" not in self.faults:
                    st.regs["rbx"] = answer.npages & U64
                if "certs-written-on-enospc" in self.faults:
                    self._write_certs_anyway(data_gpa, data_npages)
                ghcb.set_exit_info(0, 1 if "invalid-len-in-low-bits" in self.faults
                                   else G.snp_guest_err(G.SNP_GUEST_VMM_ERR_INVALID_LEN, 0))
            elif ret == errno.EAGAIN:
                if "firmware-called-before-busy" in self.faults:
                    self._guest_request(ghcb, req_gpa, resp_gpa, rec)
                ghcb.set_exit_info(0, G.snp_guest_err(G.SNP_GUEST_VMM_ERR_BUSY, 0))
            elif ret == errno.EIO or "invalid-ret-as-generic" in self.faults:
                generic = (G.SNP_GUEST_VMM_ERR_GENERIC_V15 if "generic-as-bit31" in self.faults
                           else G.SNP_GUEST_VMM_ERR_GENERIC)
                ghcb.set_exit_info(0, G.snp_guest_err(generic, 0))
            else:
                raise KvmRunError(errno.EINVAL, f"KVM_EXIT_SNP_REQ_CERTS ret {ret} is not 0, ENOSPC, "
                                                "EAGAIN or EIO")
        finally:
            vcpu.request_complete()

    def _ext_v15(self, vcpu: Any, st: VcpuSnpState, ghcb: _Ghcb, req_gpa: int, resp_gpa: int,
                 rec: GuestMessageRecord) -> None:
        """v15 19/20: every extended request exits with KVM_EXIT_VMGEXIT (type REQ_CERTS)."""
        data_gpa, data_npages = st.regs["rax"], st.regs["rbx"]
        if data_gpa % PAGE_SIZE:
            raise _Bad(G.GHCB_ERR_INVALID_INPUT)
        event = VmgexitReqCerts(KVM_USER_VMGEXIT_REQ_CERTS, data_gpa, data_npages, 0)
        answer = self._vmm_cert_exit(vcpu, event, data_gpa, data_npages)
        try:
            ret = answer.ret & 0xFFFF_FFFF
            if ret == 0:
                self._guest_request(ghcb, req_gpa, resp_gpa, rec)
                return
            if ret == G.SNP_GUEST_VMM_ERR_INVALID_LEN:
                if "rbx-unchanged-on-invalid-len" not in self.faults:
                    st.regs["rbx"] = answer.npages & U64
                if "certs-written-on-enospc" in self.faults:
                    self._write_certs_anyway(data_gpa, data_npages)
                if "invalid-len-in-low-bits" in self.faults:
                    ghcb.set_exit_info(0, 1)
                    return
            elif ret == G.SNP_GUEST_VMM_ERR_BUSY and "firmware-called-before-busy" in self.faults:
                self._guest_request(ghcb, req_gpa, resp_gpa, rec)
            ghcb.set_exit_info(0, G.snp_guest_err(ret, 0))
        finally:
            vcpu.request_complete()
