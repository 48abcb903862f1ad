"""The run loop's handling of real-KVM-only exits, through a fake IoctlLayer that answers like
KVM: KVM_EXIT_SNP_REQ_CERTS with the responder's lock held until the completing KVM_RUN returns
EINTR (immediate_exit), ENOSPC's npages written back, an invalid ret → KVM_RUN EINVAL, the v15
KVM_EXIT_VMGEXIT with NOTIFY_DONE, MAP_GPA_RANGE hypercalls, memory faults and SEV_TERM."""

from __future__ import annotations

import errno
import mmap
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "guests"))
from guest_build import build_guest  # noqa: E402

from snplab.vmm import uapi  # noqa: E402
from snplab.vmm.certs import CertResponder, lock_exclusive  # noqa: E402
from snplab.vmm.events import MapGpaRange, MemoryFault, SevTerm  # noqa: E402
from snplab.vmm.guest import Guest, GuestConfig  # noqa: E402
from snplab.vmm.kvm import IoctlLayer  # noqa: E402
from snplab.vmm.memory import map_gpa_range_handler, memory_fault_handler  # noqa: E402

Step = Callable[[uapi.kvm_run], Any]  # fills kvm_run; returns None or raises OSError


class FakeKvm(IoctlLayer):
    """Records every call; KVM_RUN plays `steps` in order (one per call)."""

    def __init__(self, steps: list[Step]) -> None:
        super().__init__()
        self.steps = list(steps)
        self.calls: list[tuple[str, int, Any]] = []
        self.runs: dict[int, mmap.mmap] = {}
        self._fd = 1000

    def _new_fd(self) -> int:
        self._fd += 1
        return self._fd

    def open(self, path: str, flags: int) -> int:
        self.calls.append(("open", 0, path))
        return self._new_fd()

    def close(self, fd: int) -> None:
        self.calls.append(("close", fd, None))

    def mmap(self, fd: int, length: int) -> mmap.mmap:
        m = mmap.mmap(-1, length)
        self.runs[fd] = m
        return m

    def ioctl(self, fd: int, request: int, arg: Any = 0) -> int:
        self.calls.append(("ioctl", request, arg if isinstance(arg, int) else bytes(arg)))
        if request in (uapi.KVM_CREATE_VM, uapi.KVM_CREATE_VCPU):
            return self._new_fd()
        if request == uapi.KVM_GET_VCPU_MMAP_SIZE:
            return 3 * 4096
        if request == uapi.KVM_GET_SUPPORTED_CPUID:
            arg.nent = 1
            return 0
        if request == uapi.KVM_CHECK_EXTENSION:
            return 0
        if request == uapi.KVM_GET_REGS:
            arg.rip = 0x100010
            return 0
        if request == uapi.KVM_RUN:
            run = uapi.kvm_run.from_buffer(self.runs[fd])
            try:
                self.steps.pop(0)(run)
            finally:
                del run
            return 0
        return 0


def req_certs(gpa: int, npages: int) -> Step:
    def step(run: uapi.kvm_run) -> None:
        run.exit_reason = uapi.KVM_EXIT_SNP_REQ_CERTS
        run.snp_req_certs.gpa, run.snp_req_certs.npages, run.snp_req_certs.ret = gpa, npages, 0
    return step


def sev_term(code: int) -> Step:
    def step(run: uapi.kvm_run) -> None:
        run.exit_reason = uapi.KVM_EXIT_SYSTEM_EVENT
        run.system_event.type = uapi.KVM_SYSTEM_EVENT_SEV_TERM
        run.system_event.ndata = 1
        run.system_event.data[0] = 0x100 | (3 << 12) | (code << 16)
    return step


def boot(steps: list[Step], setup: Callable[[Guest], None]) -> tuple[Guest, Any, FakeKvm]:
    fake = FakeKvm(steps)
    g = Guest(GuestConfig(elf=build_guest()), io=fake)
    g.prepare()
    setup(g)
    r = g.run()
    return g, r, fake


def test_req_certs_lock_held_until_eintr(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"X" * 6000)
    responder = CertResponder(blob)
    seen: dict[str, Any] = {}

    def completing_run(run: uapi.kvm_run) -> None:
        # KVM gets the answer on the next KVM_RUN, completes the request (firmware call), and
        # returns EINTR because immediate_exit is set. The lock must still be held here.
        seen["ret"], seen["npages"] = run.snp_req_certs.ret, run.snp_req_certs.npages
        seen["immediate_exit"] = run.immediate_exit
        seen["locks_during_fw"] = responder.locks_held
        fd = __import__("os").open(blob, __import__("os").O_RDWR)
        seen["updater_could_lock"] = lock_exclusive(fd)
        __import__("os").close(fd)
        raise InterruptedError(errno.EINTR, "immediate_exit")

    def after(run: uapi.kvm_run) -> None:
        seen["immediate_exit_after"] = run.immediate_exit
        seen["locks_after"] = responder.locks_held
        sev_term(0)(run)

    g, r, fake = boot([req_certs(0x41_0000, 2), completing_run, after], responder.attach)
    with g:
        assert r.status == "ok", r.error
        assert seen == {"ret": 0, "npages": 2, "immediate_exit": 1, "locks_during_fw": 1,
                        "updater_could_lock": False, "immediate_exit_after": 0,
                        "locks_after": 0}
        assert g.memory is not None and g.memory.read(0x41_0000, 6000) == b"X" * 6000
        kinds = [e["kind"] for e in r.to_json()["events"]]
        assert kinds == ["ReqCerts", "SevTerm"]
        term = r.events.records[-1].event
        assert term == SevTerm(3, 0, 0x3100)
        assert r.vcpus[0]["status"] == "terminated" and r.vcpus[0]["symbol"] is not None
        # Build order seen by "KVM": regs/sregs/cpuid before the first KVM_RUN.
        reqs = [c[1] for c in fake.calls if c[0] == "ioctl"]
        assert reqs.index(uapi.KVM_SET_CPUID2) < reqs.index(uapi.KVM_SET_SREGS) < \
            reqs.index(uapi.KVM_SET_REGS) < reqs.index(uapi.KVM_RUN)
        regs = uapi.kvm_regs.from_buffer_copy(
            next(c[2] for c in fake.calls if c[1] == uapi.KVM_SET_REGS))
        assert regs.rip == g.elf.entry and regs.rsi == g.elf.symbol("snplab_params").addr


def test_req_certs_enospc_and_invalid_ret(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"Y" * 9000)
    seen: dict[str, int] = {}

    def check(run: uapi.kvm_run) -> None:
        seen["ret"], seen["npages"] = run.snp_req_certs.ret, run.snp_req_certs.npages
        raise InterruptedError(errno.EINTR, "")

    def invalid_ret(run: uapi.kvm_run) -> None:
        # Real KVM: any ret other than 0/ENOSPC/EAGAIN/EIO fails KVM_RUN with EINVAL.
        assert run.snp_req_certs.ret == 77
        raise OSError(errno.EINVAL, "Invalid argument")

    responder = CertResponder(blob, ["auto", "ret:77"])
    g, r, _ = boot([req_certs(0x41_0000, 1), check, req_certs(0x41_0000, 3), invalid_ret],
                   responder.attach)
    with g:
        assert seen == {"ret": errno.ENOSPC, "npages": 3}
        assert r.status == "kvm-run-error" and r.vcpus[0]["errno"] == errno.EINVAL
        assert g.memory is not None and g.memory.read(0x41_0000, 16) == bytes(16)
        assert responder.locks_held == 0


def test_vmgexit_v15_notify_done(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"Z" * 100)
    responder = CertResponder(blob)
    seen: dict[str, int] = {}

    def exit40(run: uapi.kvm_run) -> None:
        run.exit_reason = uapi.KVM_EXIT_VMGEXIT_V15
        run.vmgexit.type = uapi.KVM_USER_VMGEXIT_REQ_CERTS
        run.vmgexit.data_gpa, run.vmgexit.data_npages = 0x41_0000, 1
        run.vmgexit.status = uapi.KVM_USER_VMGEXIT_REQ_CERTS_STATUS_PENDING

    def done(run: uapi.kvm_run) -> None:
        seen["ret"], seen["flags"] = run.vmgexit.ret, run.vmgexit.flags
        seen["locks"] = responder.locks_held
        run.vmgexit.status = uapi.KVM_USER_VMGEXIT_REQ_CERTS_STATUS_DONE

    def after(run: uapi.kvm_run) -> None:
        seen["locks_after"] = responder.locks_held
        sev_term(4)(run)

    g, r, _ = boot([exit40, done, after], responder.attach)
    with g:
        assert r.status == "ok", r.error
        assert seen == {"ret": 0, "flags": 1, "locks": 1, "locks_after": 0}
        assert [e.event.kind for e in r.events.records] == ["VmgexitReqCerts", "SevTerm"]
        assert r.events.records[-1].event.reason_code == 4


def test_map_gpa_range_and_memory_fault() -> None:
    out: dict[str, int] = {}

    def hypercall(run: uapi.kvm_run) -> None:
        run.exit_reason = uapi.KVM_EXIT_HYPERCALL
        run.hypercall.nr = uapi.KVM_HC_MAP_GPA_RANGE
        run.hypercall.args[0], run.hypercall.args[1] = 0x40_0000, 16
        run.hypercall.args[2] = uapi.KVM_MAP_GPA_RANGE_ENCRYPTED

    def bad_range(run: uapi.kvm_run) -> None:
        out["ret1"] = run.hypercall.ret
        hypercall(run)
        run.hypercall.args[0] = 0x2000_0000

    def fault(run: uapi.kvm_run) -> None:
        out["ret2"] = run.hypercall.ret
        run.exit_reason = uapi.KVM_EXIT_MEMORY_FAULT
        run.memory_fault.flags, run.memory_fault.gpa, run.memory_fault.size = 0, 0x40_3000, 4096
        raise OSError(errno.EFAULT, "Bad address")  # KVM_RUN -EFAULT with exit_reason 39

    def setup(g: Guest) -> None:
        assert g.memory is not None
        g.handlers.register(MapGpaRange, map_gpa_range_handler(g.memory))
        g.handlers.register(MemoryFault, memory_fault_handler(g.memory))

    g, r, _ = boot([hypercall, bad_range, fault, sev_term(0)], setup)
    with g:
        assert r.status == "ok", r.error
        assert out == {"ret1": 0, "ret2": errno.EINVAL}
        assert g.memory is not None
        assert g.memory.is_private(0x40_0000) and g.memory.is_private(0x40_F000)
        assert not g.memory.is_private(0x40_3000)  # the fault flipped it to shared
        assert [e.event.kind for e in r.events.records] == \
            ["MapGpaRange", "MapGpaRange", "MemoryFault", "SevTerm"]


def test_unknown_exit_reason() -> None:
    def weird(run: uapi.kvm_run) -> None:
        run.exit_reason = 200

    g, r, _ = boot([weird], lambda g: None)
    with g:
        assert r.status == "unhandled-exit" and "exit reason 200" in (r.error or "")


@pytest.mark.parametrize("errno_", [errno.EINVAL, errno.EIO])
def test_kvm_run_failure(errno_: int) -> None:
    def fail(run: uapi.kvm_run) -> None:
        raise OSError(errno_, "x")

    g, r, _ = boot([fail], lambda g: None)
    with g:
        assert r.status == "kvm-run-error" and r.vcpus[0]["errno"] == errno_
