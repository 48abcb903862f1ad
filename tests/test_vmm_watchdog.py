"""Watchdog and crash reporting: a spinning guest is stopped within its limit + 0.5 s with the
last RIP and the nearest ELF symbol; a triple fault reports RIP and symbol; one failing vCPU
stops the others at once."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "guests"))
from guest_build import build_guest, kvm_usable  # noqa: E402

from snplab.vmm.guest import Guest, GuestConfig, RunResult  # noqa: E402

pytestmark = [pytest.mark.kvm, pytest.mark.skipif(not kvm_usable(), reason="/dev/kvm unusable")]

MODES = {"halt": 0, "spin": 1, "fault": 2, "spin_vcpu1": 7, "fault_vcpu1": 8}


@pytest.fixture(scope="module")
def elf() -> Path:
    return build_guest()


def run_mode(elf: Path, mode: str, nvcpus: int, limit: float) -> tuple[Guest, RunResult, float]:
    g = Guest(GuestConfig(elf=elf, nvcpus=nvcpus, timeout_s=limit))
    g.prepare()
    assert g.memory is not None
    g.memory.write_u32(g.elf.symbol("test_mode").addr, MODES[mode])
    g.launch()
    t = time.perf_counter()
    r = g.run()
    return g, r, time.perf_counter() - t


@pytest.mark.parametrize("limit", [0.3, 1.0])
def test_spinning_guest_stopped_within_limit(elf: Path, limit: float) -> None:
    g, r, elapsed = run_mode(elf, "spin", 1, limit)
    with g:
        assert limit <= elapsed < limit + 0.5, elapsed
        assert r.status == "timeout"
        v = r.vcpus[0]
        assert v["status"] == "timeout" and v["symbol"].startswith("spin_forever")
        assert g.elf.symbol("spin_forever").addr <= v["rip"] < g.elf.symbol("do_fault").addr
        assert "spin_forever" in (r.error or "") and f"{v['rip']:#x}" in (r.error or "")
        assert g.vm is not None and g.vm.closed and all(x.fd.closed for x in g.vcpus)
        assert g.results("test_results")["vcpu"][0]["rdi"] == 0  # memory still readable


def test_one_vcpu_spins_the_others_halt(elf: Path) -> None:
    g, r, elapsed = run_mode(elf, "spin_vcpu1", 3, 0.4)
    with g:
        assert elapsed < 0.9
        assert r.status == "timeout"
        assert [v["status"] for v in r.vcpus] == ["halted", "timeout", "halted"]
        assert r.vcpus[1]["symbol"].startswith("spin_forever")
        assert r.error is not None and r.error.startswith("vcpu1: timeout")


def test_triple_fault_reports_rip_and_symbol(elf: Path) -> None:
    g, r, _ = run_mode(elf, "fault", 1, 5.0)
    with g:
        assert r.status == "crash"
        v = r.vcpus[0]
        assert v["status"] == "shutdown" and v["exit_reason"] == "SHUTDOWN"
        assert v["rip"] == g.elf.symbol("do_fault").addr and v["symbol"] == "do_fault"
        assert "do_fault" in (r.error or "")


def test_failing_vcpu_stops_the_others(elf: Path) -> None:
    """vCPU 1 triple-faults while vCPU 0 spins: the run ends at once (not at the limit)."""
    g, r, elapsed = run_mode(elf, "fault_vcpu1", 2, 10.0)
    with g:
        assert elapsed < 2.0
        assert r.status == "crash"
        assert r.vcpus[1]["status"] == "shutdown" and r.vcpus[1]["symbol"] == "do_fault"
        assert r.vcpus[0]["status"] == "stopped"
        assert "vcpu1 ended with shutdown" in r.vcpus[0]["reason"]
        assert r.error is not None and r.error.startswith("vcpu1: shutdown")


def test_guests_run_from_worker_threads(elf: Path) -> None:
    """Guest.run() on pool threads (as platform.run_many does): the spinning guest is stopped at
    its limit, the others finish normally, each with its own result."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as ex:
        futs = [ex.submit(run_mode, elf, m, n, limit)
                for m, n, limit in (("spin", 1, 0.3), ("halt", 2, 5.0), ("fault", 1, 5.0))]
        out = [f.result(timeout=10) for f in futs]
    try:
        (_, spin, t_spin), (_, halt, _), (_, fault, _) = out
        assert spin.status == "timeout" and t_spin < 0.8
        assert spin.vcpus[0]["symbol"].startswith("spin_forever")
        assert halt.status == "ok" and [v["status"] for v in halt.vcpus] == ["halted"] * 2
        assert fault.status == "crash" and fault.vcpus[0]["symbol"] == "do_fault"
    finally:
        for g, _, _ in out:
            g.close()
