"""Guest slots on a host: flock-based leases, capacity, release when the holder dies."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

from snplab.remote import host_slots

HOLDER = """
import sys, time
from pathlib import Path
from snplab.remote import host_slots
lease = host_slots.try_acquire(Path(sys.argv[1]), int(sys.argv[2]), "child")
print(lease.index if lease else -1, flush=True)
time.sleep(60)
"""


def test_capacity_is_never_exceeded(tmp_path):
    """capacity leases succeed, the next one gets None, a release frees exactly one slot."""
    leases = [host_slots.try_acquire(tmp_path, 3, f"t{i}") for i in range(3)]
    assert [lease.index for lease in leases if lease] == [0, 1, 2]
    assert host_slots.try_acquire(tmp_path, 3, "extra") is None
    assert sorted(host_slots.holders(tmp_path, 3)) == [0, 1, 2]
    leases[1].release()
    again = host_slots.try_acquire(tmp_path, 3, "again")
    assert again is not None and again.index == 1
    info = json.loads(host_slots.slot_path(tmp_path, 1).read_text())
    assert info["owner"] == "again"
    for lease in leases + [again]:
        lease.release()
    assert host_slots.holders(tmp_path, 3) == []


def test_slot_of_killed_holder_is_free_at_once(tmp_path):
    """A holder killed with SIGKILL leaves its lock file behind, but the slot is free."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), "1"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "0"
        assert host_slots.try_acquire(tmp_path, 1, "me") is None
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert host_slots.slot_path(tmp_path, 0).exists()
    lease = host_slots.try_acquire(tmp_path, 1, "me")
    assert lease is not None and lease.index == 0
    lease.release()


def test_acquire_waits_for_a_slot(tmp_path):
    """acquire(wait_s) gives up after wait_s, and gets a slot as soon as one is released."""
    held = host_slots.try_acquire(tmp_path, 1, "first")
    assert held is not None
    t0 = time.monotonic()
    assert host_slots.acquire(tmp_path, 1, "second", wait_s=0.3) is None
    assert 0.25 <= time.monotonic() - t0 < 2
    threading.Timer(0.3, held.release).start()
    t0 = time.monotonic()
    lease = host_slots.acquire(tmp_path, 1, "third", wait_s=10.0)
    assert lease is not None and 0.25 <= time.monotonic() - t0 < 5
    lease.release()
