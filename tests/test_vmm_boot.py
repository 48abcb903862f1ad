"""The VMM on the real KVM of this machine: boot the test guest, results found by symbol and
decoded via DWARF, launch order, exit events and their answers, MSR filter, doorbells with
nested events, unhandled exits."""

from __future__ import annotations

import errno
import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "guests"))
from guest_build import build_guest, kvm_usable  # noqa: E402

from snplab.vmm import memory_map as mm  # noqa: E402
from snplab.vmm.certs import CertResponder  # noqa: E402
from snplab.vmm.errors import ElfError, GuestSetupError  # noqa: E402
from snplab.vmm.events import (  # noqa: E402
    CertsAnswer,
    Doorbell,
    Hlt,
    Io,
    KvmRunError,
    MsrRead,
    MsrWrite,
    ReqCerts,
)
from snplab.vmm.guest import Guest, GuestConfig, PlainBackend, RunResult  # noqa: E402
from snplab.vmm.launch import PageType  # noqa: E402
from snplab.vmm.msr_filter import GHCB_MSR, SEV_STATUS_MSR, enable_user_msr  # noqa: E402

pytestmark = [pytest.mark.kvm, pytest.mark.skipif(not kvm_usable(), reason="/dev/kvm unusable")]

MODES = {"halt": 0, "spin": 1, "fault": 2, "io": 3, "msr": 4, "doorbell": 5, "mmio": 6,
         "spin_vcpu1": 7, "fault_vcpu1": 8}


@pytest.fixture(scope="module")
def elf() -> Path:
    return build_guest()


def boot(elf: Path, mode: str, nvcpus: int = 1, backend: Any = None, timeout: float = 5.0,
         setup: Callable[[Guest], None] | None = None) -> tuple[Guest, RunResult]:
    g = Guest(GuestConfig(elf=elf, nvcpus=nvcpus, timeout_s=timeout,
                          results_struct="test_results"), backend)
    g.prepare()
    assert g.memory is not None
    g.memory.write_u32(g.elf.symbol("test_mode").addr, MODES[mode])
    if setup is not None:
        setup(g)
    r = g.run()
    return g, r


@pytest.mark.parametrize("nvcpus", [1, 3])
def test_boot_results_by_symbol_and_transcript(elf: Path, nvcpus: int) -> None:
    """Each vCPU starts in long mode with RDI=index, RSI=params GPA, RSP=its stack; params
    written before launch are seen by the guest; the results object (found by symbol) is
    decoded via DWARF into the JSON transcript."""
    g, r = boot(elf, "halt", nvcpus)
    with g:
        assert r.status == "ok", r.error
        assert [v["status"] for v in r.vcpus] == ["halted"] * nvcpus
        doc = json.loads(json.dumps(r.to_json()))
        res = doc["results"]
        assert res["magic"] == 0x54455354 and res["arrived"] == nvcpus
        assert res["text"] == "hello, vmm" and res["tag"] == "a0a1a2a3a4a5a6a7"
        magic = g.elf.dwarf.constant("SNPLAB_PARAMS_MAGIC")
        params_gpa = g.elf.symbol("snplab_params").addr
        for i in range(nvcpus):
            v = res["vcpu"][i]
            assert v["rdi"] == i and v["rsi"] == params_gpa and v["done"] == 1
            assert mm.stack_top(i) - mm.STACK_SIZE < v["rsp"] < mm.stack_top(i)
            assert v["params_magic"] == magic and v["params_nvcpus"] == nvcpus
            assert v["ghcb_gpa"] == mm.SHARED_GPA + i * mm.SHARED_VCPU_STRIDE
        assert res["vcpu"][nvcpus:] == [dict.fromkeys(res["vcpu"][0], 0)] * (4 - nvcpus) or \
            all(x["done"] == 0 for x in res["vcpu"][nvcpus:])
        assert doc["params"]["magic"] == magic and doc["params"]["nvcpus"] == nvcpus
        assert [e["kind"] for e in doc["events"]] == ["Hlt"] * nvcpus
        assert doc["timings"]["run_s"] > 0 and doc["timings"]["total_s"] >= doc["timings"]["run_s"]
        assert g.results("test_results") == res
        assert g.vm is not None and g.vm.closed  # KVM torn down after the run


def test_launch_sequence_and_initial_state(elf: Path) -> None:
    """Launch updates come in increasing GPA order with the contract's page types; measured
    pages hold what the guest will see (params included); vCPU init state is recorded."""
    g = Guest(GuestConfig(elf=elf, nvcpus=2))
    with g:
        g.prepare()
        assert g.params is not None
        g.params["vcpu"][1]["nsteps"] = 7
        g.launch()
        log = g.launch_log
        assert g.launcher is not None and g.launcher.log == log  # type: ignore[attr-defined]
        gpas = [r.gpa for r in log]
        assert gpas == sorted(gpas)
        for a, b in zip(log, log[1:], strict=False):
            assert a.gpa + len(a.data) <= b.gpa
        kinds = [(r.gpa, r.npages, r.page_type) for r in log]
        assert kinds[:3] == [(0x1000, 4, PageType.NORMAL), (0x5000, 1, PageType.SECRETS),
                             (0x6000, 1, PageType.CPUID)]
        assert kinds[-2:] == [(0x30_0000, 8, PageType.ZERO), (0x38_0000, 2, PageType.ZERO)]
        bss = g.elf.symbol("big_bss")
        assert (bss.addr, 3, PageType.ZERO) in kinds
        params = g.elf.symbol("snplab_params").addr
        rec = next(r for r in log if r.gpa <= params < r.gpa + len(r.data))
        assert rec.page_type == PageType.NORMAL
        off = params - rec.gpa + g.params.layout.offsetof("vcpu[1].nsteps")
        assert struct.unpack_from("<I", rec.data, off)[0] == 7
        assert rec.to_json()["sha384"][0] != rec.to_json()["sha384"][-1] or rec.npages == 1
        s1 = g.vcpu_states[1]
        assert s1.regs["rip"] == g.elf.entry and s1.regs["rdi"] == 1
        assert s1.regs["rsi"] == params and s1.regs["rsp"] == mm.stack_top(1)
        assert s1.sregs["cr3"] == 0x1000 and s1.sregs["cs"]["l"] == 1
        assert s1.sregs["efer"] & 0x500 == 0x500 and s1.sregs["cr0"] & (1 << 31)
        r = g.run()
        assert r.status == "ok"


def test_page_tables_c_bit() -> None:
    """Every entry carries the C-bit except the PD entries of the shared window; every entry is
    present, writable and user-accessible (the payload computes at CPL3)."""
    c = 1 << 51
    pt = mm.page_tables(c)
    pml4, pdpt = struct.unpack_from("<Q", pt, 0)[0], struct.unpack_from("<Q", pt, 0x1000)[0]
    assert pml4 == 0x2000 | c | 7 and pdpt == 0x3000 | c | 7
    pd = struct.unpack_from("<512Q", pt, 0x2000)
    for i, e in enumerate(pd):
        assert e & ~c == (i << 21) | 0x87
        assert bool(e & c) == (i not in (2, 3, 4)), i
    assert mm.page_tables(0) != pt
    with pytest.raises(GuestSetupError):
        mm.page_tables(3 << 40)


def test_io_events_and_answers(elf: Path) -> None:
    """OUT/IN/rep-OUTS become Io events; the IN answer reaches the guest."""
    def setup(g: Guest) -> None:
        def on_io(vcpu: Any, ev: Io) -> bytes | None:
            return b"\x5a" if ev.direction == "in" else None
        g.handlers.register(Io, on_io)

    g, r = boot(elf, "io", setup=setup)
    with g:
        assert r.status == "ok", r.error
        ios = [e.event for e in r.events.of_kind(Io)]
        assert ios[0] == Io(0x80, 1, "out", 1, b"\x40")
        assert ios[1] == Io(0x81, 1, "in", 1, b"")
        assert ios[2].port == 0x82 and b"".join(i.data for i in ios[2:]) == b"hell"
        assert r.events.records[1].answer == b"\x5a"
        assert r.results["vcpu"][0]["io_in"] == 0x5A
        assert r.to_json()["events"][1]["answer"] == "5a"


def test_unhandled_io_and_mmio_stop_with_reason(elf: Path) -> None:
    g, r = boot(elf, "io")
    with g:
        assert r.status == "unhandled-exit"
        assert "no handler for Io(port=0x80" in (r.error or "")
        assert r.vcpus[0]["symbol"].startswith("guest_main")
    g, r = boot(elf, "mmio")
    with g:
        assert r.status == "unhandled-exit"
        assert "MMIO write gpa=0x20000000" in (r.error or "")


class MsrBackend(PlainBackend):
    """Routes the GHCB MSR and SEV_STATUS to userspace, like the emulated platform."""

    name = "msr-test"

    def setup_vm(self, guest: Guest) -> None:
        assert guest.vm is not None
        enable_user_msr(guest.vm, [GHCB_MSR, SEV_STATUS_MSR])

    def register_handlers(self, guest: Guest) -> None:
        def rd(vcpu: Any, ev: MsrRead) -> int | None:
            return vcpu.ghcb_msr if ev.index == GHCB_MSR else 1 << 2

        def wr(vcpu: Any, ev: MsrWrite) -> bool:
            vcpu.ghcb_msr = ev.value
            return True
        guest.handlers.register(MsrRead, rd)
        guest.handlers.register(MsrWrite, wr)


def test_msr_filter_routes_ghcb_msr(elf: Path) -> None:
    """wrmsr/rdmsr of 0xC0010130 and rdmsr of 0xC0010131 exit to userspace as events."""
    g, r = boot(elf, "msr", backend=MsrBackend())
    with g:
        assert r.status == "ok", r.error
        kinds = [(type(e.event).__name__, e.event.index) for e in r.events.records[:3]]
        assert kinds == [("MsrWrite", GHCB_MSR), ("MsrRead", GHCB_MSR),
                         ("MsrRead", SEV_STATUS_MSR)]
        assert r.events.records[0].event.value == 0x1234012
        v = r.results["vcpu"][0]
        assert v["msr_read"] == 0x1234012 and v["sev_status"] == 4


def test_msr_read_none_injects_gp(elf: Path) -> None:
    """Answering None to MsrRead injects #GP: with no IDT the guest triple-faults."""
    def setup(g: Guest) -> None:
        g.handlers.register(MsrRead, lambda vcpu, ev: None)
    g, r = boot(elf, "msr", backend=MsrBackend(), setup=setup)
    with g:
        assert r.status == "crash" and r.vcpus[0]["status"] == "shutdown"
        assert r.vcpus[0]["symbol"].startswith("guest_main")


def test_doorbell_nested_req_certs(elf: Path, tmp_path: Path) -> None:
    """A doorbell handler (as the emulated KVM does) raises a nested ReqCerts that the VMM's
    certificate responder answers; both are logged, the nested one with its parent; the IN on
    the pvalidate port returns the handler's int."""
    blob = tmp_path / "certs.bin"
    blob.write_bytes(b"C" * 5000)
    responder = CertResponder(blob)

    def setup(g: Guest) -> None:
        g.doorbell_ports |= {0xE0, 0xE4}
        responder.attach(g)

        def on_doorbell(vcpu: Any, ev: Doorbell) -> int | None:
            if ev.port == 0xE0:
                ans = vcpu.dispatch(ReqCerts(mm.certs_gpa(vcpu.index), 2))
                assert ans == CertsAnswer(0, 0)
                vcpu.request_complete()
                return None
            return 0x101 if ev.direction == "in" else None
        g.handlers.register(Doorbell, on_doorbell)

    g, r = boot(elf, "doorbell", setup=setup)
    with g:
        assert r.status == "ok", r.error
        doc = r.to_json()["events"]
        assert [e["kind"] for e in doc] == ["Doorbell", "ReqCerts", "Doorbell", "Doorbell", "Hlt"]
        assert doc[0]["value"] == 0xD00D0000 and doc[1]["parent"] == 0
        assert doc[1]["answer"] == {"ret": 0, "npages": 0} and doc[1]["gpa"] == 0x41_0000
        assert doc[3]["direction"] == "in" and doc[3]["answer"] == 0x101
        assert r.results["vcpu"][0]["pval_result"] == 0x101
        assert g.memory is not None and g.memory.read(0x41_0000, 5001) == b"C" * 5000 + b"\0"
        assert responder.locks_held == 0 and responder.records[0].written_len == 5000


def test_handler_errors_end_the_vcpu(elf: Path) -> None:
    """KvmRunError from a handler → kvm-run-error with errno; any other exception → error."""
    def kvm_err(g: Guest) -> None:
        def h(vcpu: Any, ev: Io) -> None:
            raise KvmRunError(errno.EINVAL, "invalid ret")
        g.handlers.register(Io, h)
    g, r = boot(elf, "io", setup=kvm_err)
    with g:
        assert r.status == "kvm-run-error" and r.vcpus[0]["errno"] == errno.EINVAL
        assert r.events.records[0].error is not None

    def bug(g: Guest) -> None:
        g.handlers.register(Io, lambda vcpu, ev: 1 / 0)
    g, r = boot(elf, "io", setup=bug)
    with g:
        assert r.status == "error" and "ZeroDivisionError" in (r.error or "")

    def stop(g: Guest) -> None:
        def h(vcpu: Any, ev: Io) -> None:
            vcpu.stop("halted", "handler says done")
        g.handlers.register(Io, h)
    g, r = boot(elf, "io", setup=stop)
    with g:
        assert r.status == "ok" and len(r.events.of_kind(Io)) == 1
        assert not r.events.of_kind(Hlt)


def test_bad_configs(elf: Path, tmp_path: Path) -> None:
    with pytest.raises(GuestSetupError):
        Guest(GuestConfig(elf=elf, nvcpus=5))
    with pytest.raises(GuestSetupError):
        Guest(GuestConfig(elf=elf, ram_size=4 << 20))
    with pytest.raises(ElfError):
        Guest(GuestConfig(elf=tmp_path / "none.elf"))
    g = Guest(GuestConfig(elf=elf))
    g.close()
    g.close()  # idempotent
    with pytest.raises(GuestSetupError):
        g.run()
