"""KVM's SEV-SNP #VMGEXIT handling, emulated: the GHCB MSR protocol, GHCB page calls, page-state
changes, guest requests and extended guest requests in three ABI profiles.

Modelled on ``arch/x86/kvm/svm/sev.c`` (facts in shared/reference/kvm-host-abi.md §1–§2,
guest-protocol.md §1–§2 and errata.md, which wins; fidelity-review.md wins where it cites source).
Profiles:

- ``stub`` (Linux 6.11–6.19): an extended MSG_REPORT_REQ with RBX ≠ 0 gets 24 zero bytes at RAX
  (an empty certificate table); never INVALID_LEN or BUSY, never a userspace exit;
- ``req-certs`` (Linux ≥ 7.0 after KVM_SEV_SNP_ENABLE_REQ_CERTS): a ``ReqCerts(gpa, npages)`` exit;
  ret 0 → firmware call, ENOSPC → SW_EXITINFO2 = 1<<32 and RBX = the VMM's npages, EAGAIN → 2<<32,
  EIO → 0xFFFFFFFF<<32, anything else → KVM_RUN fails with EINVAL (``KvmRunError``); enabling it
  once a vCPU exists fails with EINVAL; not enabled → stub behaviour;
- ``vmgexit-v15`` (the May 2024 v15 patch): every extended request exits with
  ``VmgexitReqCerts``; ``ret`` (u32) is taken verbatim as the VMM error in SW_EXITINFO2[63:32]
  (1 INVALID_LEN with RBX = data_npages, 2 BUSY, 1<<31 GENERIC).

**Kernel generations.** Everything that differs between kernels is a row of the registry in
``snplab.abi.kernel_behaviour`` (generations ``v15``, ``6.11-stub``, ``7.0``, ``newest``), read at
each decision (``_rule``/``_play_at``), never hard-coded here: the reason a misaligned or identical
request/response page gets and at which stage (newest: 2/5 at validation; ≤ 7.0: 2/4; v15: not
at validation — after the certificate exit snp_setup_guest_buf fails → GENERIC, req == resp never
checked), RAX/RBX valid bits (v15: MISSING_INPUT at validation; merged code: INVALID_INPUT for
MSG_REPORT_REQ), an unaligned RAX (merged: 2/5; v15: EXITINFO1 = 0, GENERIC, no exit), an
unregistered GHCB (newest: 2/1, guest resumes; older: KVM_RUN −EINVAL), firmware errors (v15:
GENERIC | status), the VMM's certificate-exit answers, the PSC scratch rules (newest:
sizeof(struct psc_hdr), inside the GHCB only; older: length = SW_EXITINFO2, outside allowed) and
MapGpaRange answers (newest: only 0/EINVAL/EAGAIN, else KVM_RUN EINVAL). The default generation is
the profile's (``kb.DEFAULT_GENERATION``: newest for stub and req-certs, v15 for vmgexit-v15).
In all of them the GHCB is synced (registers read, valid bitmap cleared) before the registration
check, and NAE termination zeroes SW_EXITINFO1/2 before the SevTerm exit, whose raw value is the
GHCB GPA and whose reason is unknown (-1/-1), as a VMM decodes it on hardware.

Guest pages are read and written "through the shared mapping" (``rmp.HostView``, like
``kvm_read_guest``/``kvm_write_guest``): a page the RMP holds as private is read from and written
to its shared backing (zeros until the host writes it), never the guest's view. A request page
left private therefore reaches the firmware as a zero page — algo 0 — and the guest gets
EXITINFO1 = 0, EXITINFO2 = 0x16 (INVALID_PARAM) with its sequence number not consumed;
certificates the VMM writes into a private buffer go to that backing after its handler returns
(the guest sees them only if it converts the page to shared). What the shared backing of a
NORMAL-launched page holds on hardware (the pre-launch plaintext) is not modelled (rmp.py). ``message_log`` records every guest request/extended request VMGEXIT on a registered GHCB
with the request page as the host sees it, also when KVM rejects the call (docs/contract.md §5).

Not emulated (fidelity-review D7; answered as documented): the GHCB NAE events CPUID (0x72),
IOIO (0x7B), MSR (0x7C), MMIO read/write (0x8000_0001/2), NMI_COMPLETE (0x8000_0003),
AP_HLT_LOOP (0x8000_0004), AP_JUMP_TABLE (0x8000_0005) and AP_CREATION (0x8000_0013) all get
EXITINFO1 = 2, EXITINFO2 = INVALID_EVENT (6). Real KVM handles every one of them ([OLD]
sev_handle_vmgexit → svm_invoke_exit_handler for the SVM exit codes, explicit cases for the
0x8000_xxxx ones; [NEW] explicit cases) and answers INVALID_EVENT only for unknown codes or
SNP-only codes on a non-SNP VM, so a payload using one would behave differently on hardware
(snplab's payload uses none: it reads CPUID from the CPUID page and never does port or MSR I/O on
SNP). The MSR-protocol CPUID request is answered only when a ``cpuid`` callback is given; AP reset
hold keeps the MSR unchanged. v15's uninitialised ``fw_err`` on an unaligned RAX is
emulated as 0, and v15 leaving the guest's response page firmware-owned after a firmware error
(the next request RMP-faults, AMDESE/AMDSEV#220) is not modelled.
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
from snplab.abi import kernel_behaviour as kb
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
KERNELS = tuple(kb.GENERATIONS)  # kernel generations the emulated KVM can play

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


def _errno(name: str) -> int:
    return int(getattr(errno, name))


def _page_shape(req_gpa: int, resp_gpa: int) -> str | None:
    """The bad-input shape of a guest request's page pair, if any (registry SHAPES)."""
    if req_gpa % PAGE_SIZE or resp_gpa % PAGE_SIZE:
        return "pages-misaligned"
    if req_gpa == resp_gpa:
        return "pages-identical"
    return None


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
    hdr_sz: int | None = None
    msg_sz: int | None = None
    reached_firmware: bool = False
    fw_status: int | None = None
    sw_exit_info_1: int | None = None
    sw_exit_info_2: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class EmulatedKvm:
    """The SEV-SNP half of KVM for one VM, driven by the VMM's exit events."""

    def __init__(self, psp: EmulatedPsp, rmp: Rmp, memory: Memory, *, abi: str = "req-certs",
                 kernel: str | None = None, faults: Iterable[str] = (),
                 cert_blob: Callable[[], bytes] | None = None,
                 cpuid: Callable[[int, int], tuple[int, int, int, int] | None] | None = None,
                 ghcb_version: int = G.GHCB_VERSION_MAX) -> None:
        if abi not in PROFILES:
            raise ValueError(f"unknown ABI profile {abi!r} (want one of {', '.join(PROFILES)})")
        gen = kb.default_generation(abi) if kernel is None else kernel
        if not kb.allows(gen, abi):  # raises UnknownGeneration (a ValueError) for unknown names
            raise ValueError(f"kernel behaviour {gen} cannot play ABI profile {abi} (it plays "
                             f"{', '.join(kb.profiles_of(gen))})")
        self.psp = psp
        self.rmp = rmp
        self.host = HostView(memory, rmp)
        self.abi = abi
        self.generation = gen  # the kernel generation whose registry rows this KVM plays
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
            r = self._rule("enable-req-certs-after-vcpu")
            raise IoctlError("KVM_SEV_SNP_ENABLE_REQ_CERTS", _errno(r.errno_name),
                             f"{self.created_vcpus} vCPU(s) already created ({r.source})")
        self.req_certs_enabled = True

    @property
    def kernel(self) -> str:
        """The kernel generation played (older spelling of ``generation``)."""
        return self.generation

    def _rule(self, shape: str) -> kb.Rule:
        """This generation's registry row for ``shape``, read at each decision."""
        return kb.rule(self.generation, shape)

    @property
    def certs_exit_on(self) -> bool:
        """Whether an extended report request exits to the VMM for certificates."""
        return self.abi == "vmgexit-v15" or (self.abi == "req-certs" and self.req_certs_enabled)

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
            r = self._rule("ghcb-unregistered")
            if r.outcome == kb.KVM_RUN_ERROR:
                self._flush(ghcb, gpa)  # the bitmap was cleared in the mapped page
                raise KvmRunError(_errno(r.errno_name), f"vmgexit: GHCB GPA {gpa:#x} is not registered")
            ghcb.set_exit_info(G.GHCB_HV_RESP_MALFORMED_INPUT, r.reason)
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
            if exit_code == G.SVM_VMGEXIT_EXT_GUEST_REQUEST and not _regs_valid(ghcb, bitmap):
                self._play_at(kb.VALIDATION, "regs-not-valid", ghcb)
            shape = _page_shape(info1, info2)
            if shape is not None:
                self._play_at(kb.VALIDATION, shape, ghcb)
        elif exit_code not in (G.SVM_VMGEXIT_TERM_REQUEST, G.SVM_VMGEXIT_HV_FEATURES,
                               G.SVM_VMGEXIT_UNSUPPORTED_EVENT):
            raise _Bad(G.GHCB_ERR_INVALID_EVENT)

    def _play_at(self, stage: str, shape: str, ghcb: _Ghcb) -> bool:
        """Play the row for ``shape`` if this generation decides it at ``stage``: a GHCB error
        raises _Bad, a KVM_RUN error raises KvmRunError, a VMM error is written to the GHCB.
        Returns True when the call is answered (the caller stops), False to go on."""
        r = self._rule(shape)
        if r.stage != stage:
            return False
        if r.outcome == kb.GHCB_ERROR:
            assert r.reason is not None
            raise _Bad(r.reason)
        if r.outcome == kb.KVM_RUN_ERROR:
            raise KvmRunError(_errno(r.errno_name), f"{shape}: {r.source}")
        if r.outcome == kb.VMM_ERROR:
            assert r.vmm_error is not None
            ghcb.set_exit_info(0, G.snp_guest_err(r.vmm_error, 0))
            self.stats[f"vmm-error-{shape}"] += 1
            return True
        return False  # accepted / handed to the firmware: the caller goes on

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
        if ret not in (0, errno.EINVAL, errno.EAGAIN):
            r = self._rule("map-gpa-range-bad-ret")
            if r.outcome == kb.KVM_RUN_ERROR:
                raise KvmRunError(_errno(r.errno_name),
                                  f"KVM_HC_MAP_GPA_RANGE ret {ret} is not 0, EINVAL or EAGAIN")
        if ret == 0:
            end = min(gpa + npages * PAGE_SIZE, self.rmp.npages * PAGE_SIZE)
            if gpa < end:
                n = (end - gpa) // PAGE_SIZE
                with self._vm_lock:
                    if attrs & KVM_MAP_GPA_RANGE_ENCRYPTED:
                        self.host.to_private(gpa, n)
                        self.rmp.set_private(gpa, n)
                    else:
                        self.host.to_shared(gpa, n)
                        self.rmp.set_shared(gpa, n)
        return ret

    def _psc_nae(self, vcpu: Any, ghcb: _Ghcb, ghcb_gpa: int, scratch: int, length: int) -> None:
        """setup_vmgexit_scratch + snp_begin_psc / snp_complete_one_psc, one MapGpaRange per run of
        adjacent entries with the same operation and page size."""
        area_beg = ghcb_gpa + G.GHCB_SHARED_BUF_OFFSET
        area_end = ghcb_gpa + G.GHCB_RESERVED_0xFF0_OFFSET
        outside: bytearray | None = None
        # newest: min_len = sizeof(struct psc_hdr), SW_EXITINFO2 ignored (errata B12) and
        # end_entry bounded by the GHCB buffer; older: length = SW_EXITINFO2
        hdr_len_only = self._rule("psc-exitinfo2-past-ghcb").outcome == kb.ACCEPTED
        if hdr_len_only:
            length = G.PSC_HDR_SIZE
        if scratch == 0 or scratch + length > U64:
            raise _Bad(G.GHCB_ERR_INVALID_SCRATCH_AREA)
        if scratch & ~0xFFF == ghcb_gpa:
            if scratch < area_beg or scratch + length > area_end:
                raise _Bad(G.GHCB_ERR_INVALID_SCRATCH_AREA)
            base, limit = scratch - ghcb_gpa, G.GHCB_RESERVED_0xFF0_OFFSET
            buf = ghcb.raw
        else:
            if (self._rule("psc-scratch-outside-ghcb").outcome == kb.GHCB_ERROR
                    or length > GHCB_SCRATCH_AREA_LIMIT):
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
            if idx_end >= G.VMGEXIT_PSC_MAX_ENTRY or (hdr_len_only and idx_end >= fits):
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
        rec.hdr_sz, rec.msg_sz = hdr.hdr_sz, hdr.msg_sz
        rec.ct_sha256, rec.tag = hashlib.sha256(ct).hexdigest(), hdr.tag.hex()
        return rec

    def _guest_request(self, ghcb: _Ghcb, req_gpa: int, resp_gpa: int, rec: GuestMessageRecord) -> None:
        """snp_handle_guest_req: bounce the request page to firmware, copy the response page back
        (even on a firmware error), firmware status in SW_EXITINFO2[31:0] and the generation's
        VMM error for a firmware error (v15: GENERIC) in [63:32]. Page checks a generation makes
        here (v15 snp_setup_guest_buf) come first."""
        shape = _page_shape(req_gpa, resp_gpa)
        if shape is not None and self._play_at(kb.FIRMWARE_SETUP, shape, ghcb):
            return
        with self._guest_req_mutex:
            try:
                req = self.host.read(req_gpa, PAGE_SIZE)
            except GpaOutOfRange:
                raise KvmRunError(errno.EIO, f"guest request page {req_gpa:#x} unreadable") from None
            status = self.psp.guest_request(req, self._resp_bounce)
            if "firmware-called-twice" in self.faults:
                self.psp.guest_request(req, bytearray(PAGE_SIZE))  # the replay; its status is lost
            rec.reached_firmware, rec.fw_status = True, status
            try:
                self.host.write(resp_gpa, self._resp_bounce)
            except GpaOutOfRange:
                raise KvmRunError(errno.EIO, f"guest response page {resp_gpa:#x} unwritable") from None
        self.stats["firmware-calls"] += 1
        vmm = 0
        if status:
            r = self._rule("firmware-error")
            vmm = r.vmm_error or 0
        ghcb.set_exit_info(0, G.snp_guest_err(vmm, status))

    def _ext_guest_request(self, vcpu: Any, st: VcpuSnpState, ghcb: _Ghcb, req_gpa: int, resp_gpa: int,
                           bitmap: int, rec: GuestMessageRecord) -> None:
        """snp_handle_ext_guest_req ([OLD]/[NEW]) or snp_begin_ext_guest_req ([V15]), as the
        generation's rows say: which requests exit, which checks run before the exit."""
        certs_exit = self.certs_exit_on
        if self._rule("other-msg-type").cert_exit:
            is_report = True  # v15: no msg_type filter (the header is never read)
        else:
            try:
                msg_type = self.host.read(req_gpa + gm.MSG_TYPE_OFFSET, 1)[0]
            except GpaOutOfRange:
                raise KvmRunError(errno.EIO, f"msg_type of {req_gpa:#x} unreadable") from None
            is_report = msg_type == gm.MSG_REPORT_REQ or (certs_exit and "certs-exit-any-msg-type" in self.faults)
        if is_report:
            if not _regs_valid(ghcb, bitmap):
                self._play_at(kb.REQUEST, "regs-not-valid", ghcb)
            data_gpa, data_npages = st.regs["rax"], st.regs["rbx"]
            if data_gpa % PAGE_SIZE and "misaligned-certs-gpa-accepted" not in self.faults \
                    and self._play_at(kb.REQUEST, "certs-gpa-unaligned", ghcb):
                return
            if certs_exit:
                return self._certs_exit(vcpu, st, ghcb, req_gpa, resp_gpa, data_gpa, data_npages, rec)
            zeroes = self._rule("report-request-no-certs-exit").zeroes
            if (data_npages or "stub-writes-when-rbx-zero" in self.faults) and zeroes \
                    and "stub-no-terminator" not in self.faults:
                try:
                    self.host.write(data_gpa, bytes(zeroes))  # kvm_clear_guest(data_gpa, 24)
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

    def _certs_exit(self, vcpu: Any, st: VcpuSnpState, ghcb: _Ghcb, req_gpa: int, resp_gpa: int,
                    data_gpa: int, data_npages: int, rec: GuestMessageRecord) -> None:
        """The certificate exit and its completion: KVM_EXIT_SNP_REQ_CERTS + snp_complete_req_certs
        (7.0+) or KVM_EXIT_VMGEXIT + snp_complete_ext_guest_req (v15); ret 0 → the firmware
        call, any other ret → the generation's vmm-* row."""
        v15 = self.abi == "vmgexit-v15"
        exit_npages = data_npages & 0xFFFF_FFFF if "npages-truncated-32" in self.faults else data_npages
        event: Any = (VmgexitReqCerts(KVM_USER_VMGEXIT_REQ_CERTS, data_gpa, exit_npages, 0) if v15
                      else ReqCerts(data_gpa, exit_npages))
        answer = self._vmm_cert_exit(vcpu, event, data_gpa, data_npages)
        try:
            ret = answer.ret & 0xFFFF_FFFF if v15 else answer.ret  # v15: u32 ret
            if ret == 0:
                self._guest_request(ghcb, req_gpa, resp_gpa, rec)
                return
            shape = self._answer_shape(kb.certs_answer_shape(self.generation, ret))
            r = self._rule(shape)
            if r.outcome == kb.KVM_RUN_ERROR:
                raise KvmRunError(_errno(r.errno_name), f"certificate exit ret {ret} is not 0, ENOSPC, "
                                                        f"EAGAIN or EIO ({r.source})")
            vmm = r.vmm_error if r.vmm_error is not None else ret  # None: ret verbatim (v15)
            if "response-written-on-host-error" in self.faults:
                self._copy_response(resp_gpa)
            info1 = 1 if "invalid-len-in-exitinfo1" in self.faults and shape == "vmm-enospc" else 0
            if shape == "vmm-enospc":
                if "firmware-called-on-enospc" in self.faults:
                    self._guest_request(ghcb, req_gpa, resp_gpa, rec)
                if "rbx-unchanged-on-invalid-len" not in self.faults:
                    st.regs["rbx"] = self._rbx_pages(answer.npages) & U64
                if "certs-written-on-enospc" in self.faults:
                    self._write_certs_anyway(data_gpa, data_npages)
                if "invalid-len-in-low-bits" in self.faults:
                    ghcb.set_exit_info(0, 1)
                    return
            elif shape == "vmm-eagain":
                if "firmware-called-before-busy" in self.faults:
                    self._guest_request(ghcb, req_gpa, resp_gpa, rec)
                if "busy-in-low-bits" in self.faults:
                    ghcb.set_exit_info(0, vmm)
                    return
            elif shape == "vmm-eio":
                if "firmware-called-on-eio" in self.faults:
                    self._guest_request(ghcb, req_gpa, resp_gpa, rec)
                if "generic-as-bit31" in self.faults:
                    vmm = G.SNP_GUEST_VMM_ERR_GENERIC_V15
            ghcb.set_exit_info(info1, G.snp_guest_err(vmm, 0))
        finally:
            vcpu.request_complete()

    def _answer_shape(self, shape: str) -> str:
        """The registry row a certificate-exit answer is mapped to (faults remap ret values)."""
        remap = {"invalid-ret-as-generic": ("vmm-bad-ret", "vmm-eio"),
                 "eagain-as-generic": ("vmm-eagain", "vmm-eio"),
                 "eio-as-busy": ("vmm-eio", "vmm-eagain")}
        for fault, (was, now) in remap.items():
            if shape == was and fault in self.faults:
                return now
        return shape

    def _rbx_pages(self, npages: int) -> int:
        """RBX after INVALID_LEN: the VMM's npages (faults: off by one, in bytes)."""
        if "rbx-off-by-one" in self.faults:
            return npages + 1
        if "rbx-in-bytes" in self.faults:
            return npages * PAGE_SIZE
        return npages

    def _copy_response(self, resp_gpa: int) -> None:
        """Fault response-written-on-host-error: the (stale) bounce page goes to the guest."""
        try:
            self.host.write(resp_gpa, self._resp_bounce)
        except GpaOutOfRange:
            pass


def _regs_valid(ghcb: _Ghcb, bitmap: int) -> bool:
    """RAX and RBX are marked valid in the GHCB (the extended request's certificate buffer)."""
    return ghcb.valid(G.GHCB_RAX_OFFSET, bitmap) and ghcb.valid(G.GHCB_RBX_OFFSET, bitmap)
