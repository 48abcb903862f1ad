"""500 boots in a row leave no fd, mapping or thread behind."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "guests"))
from guest_build import build_guest, kvm_usable  # noqa: E402

from snplab.vmm.guest import Guest, GuestConfig  # noqa: E402

pytestmark = [pytest.mark.kvm, pytest.mark.skipif(not kvm_usable(), reason="/dev/kvm unusable")]

RAM = 16 << 20


def _census() -> dict[str, int]:
    maps = Path("/proc/self/maps").read_text().splitlines()
    guest_ram = 0
    for line in maps:
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if hi - lo == RAM:
            guest_ram += 1
    return {"fds": len(os.listdir("/proc/self/fd")),
            "tasks": len(os.listdir("/proc/self/task")),
            "threads": threading.active_count(),
            "kvm_maps": sum("kvm" in line for line in maps),
            "guest_ram_maps": guest_ram,
            "maps": len(maps)}


def _boot(elf: Path, i: int) -> str:
    with Guest(GuestConfig(elf=elf, nvcpus=1 + i % 2, timeout_s=5.0)) as g:
        g.prepare()
        if i % 50 == 7:  # now and then an error path: unhandled MMIO exit
            assert g.memory is not None
            g.memory.write_u32(g.elf.symbol("test_mode").addr, 6)
        return g.run().status


def test_500_boots_leave_nothing_behind() -> None:
    elf = build_guest()
    # Warm-up with every variant: ELF/DWARF/CPUID caches, the kick handler, and glibc's
    # per-thread malloc arena and cached thread stacks for the 2-vCPU boots.
    for i in range(20):
        _boot(elf, i)
    before = _census()
    statuses = [_boot(elf, i) for i in range(500)]
    after = _census()
    assert statuses.count("ok") == 490 and statuses.count("unhandled-exit") == 10
    assert after["fds"] == before["fds"], (before, after)
    assert after["tasks"] == before["tasks"] and after["threads"] == before["threads"]
    assert after["kvm_maps"] == before["kvm_maps"] == 0, (before, after)
    assert after["guest_ram_maps"] == before["guest_ram_maps"], (before, after)
    assert after["maps"] <= before["maps"] + 2, (before, after)  # heap/arena may split
