"""kvm_run exits → typed events → handler → answer written back into kvm_run.

`default_decoders()` returns {exit_reason: decoder}; a Guest keeps its own copy
(`guest.exit_decoders`) so a backend can renumber or add exits (e.g. a host whose
KVM_EXIT_SNP_REQ_CERTS is not 43). A decoder is `fn(vcpu, run)`.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from snplab.vmm import uapi
from snplab.vmm.events import (
    CertsAnswer,
    Doorbell,
    FailEntry,
    Hlt,
    InternalError,
    Io,
    KvmRunError,
    MapGpaRange,
    MemoryFault,
    MsrRead,
    MsrWrite,
    ReqCerts,
    SevTerm,
    Shutdown,
    SystemEvent,
    VmgexitReqCerts,
)
from snplab.vmm.status import (
    FAIL_ENTRY,
    HALTED,
    INTERNAL_ERROR,
    SHUTDOWN,
    SYSTEM_EVENT,
    TERMINATED,
    UNHANDLED_EXIT,
)
from snplab.vmm.vcpu import Vcpu

Decoder = Callable[[Vcpu, uapi.kvm_run], None]

# GHCB MSR protocol termination request (guest-protocol: TERM 0x100, set [15:12], code [23:16]).
GHCB_MSR_TERM_REQ = 0x100
U64 = (1 << 64) - 1


def _io(vcpu: Vcpu, run: uapi.kvm_run) -> None:
    io = run.io
    size, count, port, direction = io.size, io.count, io.port, io.direction
    n = size * count
    off = io.data_offset
    mm = vcpu.fd.run_mmap
    if off + n > len(mm):
        raise KvmRunError(errno.EFAULT, f"io data_offset {off:#x}+{n} outside kvm_run")
    if port in vcpu.guest.doorbell_ports and count == 1:
        if direction == uapi.KVM_EXIT_IO_OUT:
            value = int.from_bytes(mm[off:off + size], "little")
            vcpu.dispatch(Doorbell(port, value, "out", size))
        else:
            ans = vcpu.dispatch(Doorbell(port, 0, "in", size))
            mm[off:off + size] = (int(ans or 0) & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        return
    if direction == uapi.KVM_EXIT_IO_OUT:
        vcpu.dispatch(Io(port, size, "out", count, mm[off:off + n]))
    else:
        ans = vcpu.dispatch(Io(port, size, "in", count, b""))
        data = bytes(ans or b"")
        if len(data) != n:
            data = (data + b"\xff" * n)[:n]
        mm[off:off + n] = data


def _terminal(status: str, make: Callable[[uapi.kvm_run], Any]) -> Decoder:
    def decode(vcpu: Vcpu, run: uapi.kvm_run) -> None:
        ev = make(run)
        vcpu.exit_reason = uapi.EXIT_REASON_NAMES.get(run.exit_reason)
        vcpu.dispatch(ev)
        vcpu.stop(status, _describe(ev))
    return decode


def _describe(ev: Any) -> str:
    fields = ev.to_json()
    kind = fields.pop("kind")
    inner = ", ".join(f"{k}={v:#x}" if isinstance(v, int) else f"{k}={v}"
                      for k, v in fields.items())
    return f"{kind}({inner})"


def _system_event(vcpu: Vcpu, run: uapi.kvm_run) -> None:
    se = run.system_event
    ndata = min(se.ndata, 16)
    data = tuple(se.data[i] for i in range(ndata))
    vcpu.exit_reason = "SYSTEM_EVENT"
    if se.type == uapi.KVM_SYSTEM_EVENT_SEV_TERM:
        ev = sev_term_event(data[0] if data else 0)
        vcpu.dispatch(ev)
        vcpu.stop(TERMINATED, _describe(ev))
        return
    ev2 = SystemEvent(se.type, data)
    vcpu.dispatch(ev2)
    vcpu.stop(SYSTEM_EVENT, _describe(ev2))


def sev_term_event(raw: int) -> SevTerm:
    """SevTerm from KVM's SEV_TERM data[0]: the GHCB MSR value (MSR protocol) or the GHCB GPA
    (NAE 0x8000FFFE). For the GHCB form the reason is unknown (reason_set = reason_code = -1):
    KVM's svm_vmgexit_success(svm, 0) zeroes SW_EXITINFO1/2 in the GHCB before it exits
    (arch/x86/kvm/svm/sev.c; kvm-host-abi.md §1(c),(d) — errata B11 is wrong on this point)."""
    if raw & 0xFFF == GHCB_MSR_TERM_REQ:
        return SevTerm((raw >> 12) & 0xF, (raw >> 16) & 0xFF, raw)
    return SevTerm(-1, -1, raw)


def _rdmsr(vcpu: Vcpu, run: uapi.kvm_run) -> None:
    m = run.msr
    ans = vcpu.dispatch(MsrRead(m.index))
    if ans is None:
        m.error = 1
    else:
        m.data = int(ans) & U64
        m.error = 0


def _wrmsr(vcpu: Vcpu, run: uapi.kvm_run) -> None:
    m = run.msr
    ans = vcpu.dispatch(MsrWrite(m.index, m.data))
    m.error = 0 if ans else 1


def _hypercall(vcpu: Vcpu, run: uapi.kvm_run) -> None:
    hc = run.hypercall
    if hc.nr != uapi.KVM_HC_MAP_GPA_RANGE:
        vcpu.exit_reason = "HYPERCALL"
        vcpu.stop(UNHANDLED_EXIT, f"unhandled hypercall nr={hc.nr}")
        return
    ans = vcpu.dispatch(MapGpaRange(hc.args[0], hc.args[1], hc.args[2]))
    hc.ret = int(ans or 0) & U64


def _memory_fault(vcpu: Vcpu, run: uapi.kvm_run) -> None:
    mf = run.memory_fault
    ans = vcpu.dispatch(MemoryFault(mf.flags, mf.gpa, mf.size))
    if not ans:
        raise KvmRunError(errno.EFAULT, f"memory fault at gpa={mf.gpa:#x} not resolved")


def _req_certs(vcpu: Vcpu, run: uapi.kvm_run) -> None:
    rc = run.snp_req_certs
    ans = vcpu.dispatch(ReqCerts(rc.gpa, rc.npages))
    if not isinstance(ans, CertsAnswer):
        raise TypeError(f"ReqCerts handler returned {ans!r}, want CertsAnswer")
    rc.ret = ans.ret & U64
    if ans.ret == errno.ENOSPC:
        rc.npages = ans.npages & U64
    # Keep the responder's lock until firmware has the request: KVM_RUN with immediate_exit
    # completes the request, then returns EINTR (kvm-host-abi.md §1(d)).
    vcpu.await_completion(immediate_exit=True)


def _vmgexit_v15(vcpu: Vcpu, run: uapi.kvm_run) -> None:
    vg = run.vmgexit
    if vg.type != uapi.KVM_USER_VMGEXIT_REQ_CERTS:
        vcpu.exit_reason = "VMGEXIT"
        vcpu.stop(UNHANDLED_EXIT, f"unhandled KVM_EXIT_VMGEXIT type {vg.type}")
        return
    if vg.status == uapi.KVM_USER_VMGEXIT_REQ_CERTS_STATUS_DONE:
        vcpu.request_complete()
        return
    ans = vcpu.dispatch(VmgexitReqCerts(vg.type, vg.data_gpa, vg.data_npages, vg.flags))
    if not isinstance(ans, CertsAnswer):
        raise TypeError(f"VmgexitReqCerts handler returned {ans!r}, want CertsAnswer")
    vg.ret = ans.ret & 0xFFFFFFFF
    if ans.ret == 1:
        vg.data_npages = ans.npages & U64
    if ans.ret == 0:
        vg.flags |= uapi.KVM_USER_VMGEXIT_REQ_CERTS_FLAGS_NOTIFY_DONE
        vcpu.await_completion(immediate_exit=False)
    else:
        vcpu.request_complete()


def default_decoders() -> dict[int, Decoder]:
    return {
        uapi.KVM_EXIT_IO: _io,
        uapi.KVM_EXIT_HLT: _terminal(HALTED, lambda run: Hlt()),
        uapi.KVM_EXIT_SHUTDOWN: _terminal(SHUTDOWN, lambda run: Shutdown()),
        uapi.KVM_EXIT_FAIL_ENTRY: _terminal(FAIL_ENTRY, lambda run: FailEntry(
            run.fail_entry.hardware_entry_failure_reason, run.fail_entry.cpu)),
        uapi.KVM_EXIT_INTERNAL_ERROR: _terminal(INTERNAL_ERROR, lambda run: InternalError(
            run.internal.suberror,
            tuple(run.internal.data[i] for i in range(min(run.internal.ndata, 16))))),
        uapi.KVM_EXIT_SYSTEM_EVENT: _system_event,
        uapi.KVM_EXIT_X86_RDMSR: _rdmsr,
        uapi.KVM_EXIT_X86_WRMSR: _wrmsr,
        uapi.KVM_EXIT_HYPERCALL: _hypercall,
        uapi.KVM_EXIT_MEMORY_FAULT: _memory_fault,
        uapi.KVM_EXIT_SNP_REQ_CERTS: _req_certs,
        uapi.KVM_EXIT_VMGEXIT_V15: _vmgexit_v15,
    }
