"""Guest slots on a lab host: at most ``capacity`` guests at once, enforced on the host itself.

Runs on the lab host (inside the job server, ``python3 -m snplab.remote.job_server``), standard
library only. Slot ``i`` is the file ``<dir>/slot-<i>.lock``; a guest owns the slot while its job
server holds an exclusive ``flock`` on it, taken for each guest and dropped when the guest ends.
The kernel also drops the lock when the server exits for any reason (crash, SIGKILL, the SSH
connection dropping), so a lease never outlives its holder and needs no cleanup step; a guest
that hangs is bounded by the request's deadline (the server exits), which is the lease's stale
timeout. The file's content (owner, pid, start time) is informational only: a leftover file that
nobody has locked is free. Because the lock lives on the host, the limit also holds across
several controllers (two CI runs sharing a lab) and across xdist workers.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class SlotLease:
    """A held slot; keep the object alive (it owns the locked fd) until the guest is done."""

    index: int
    path: Path
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # drops the flock
            self.fd = -1


def slot_path(directory: Path, index: int) -> Path:
    return directory / f"slot-{index}.lock"


def try_acquire(directory: Path, capacity: int, owner: str) -> SlotLease | None:
    """Take the first free slot of ``capacity`` without blocking; None if all are held."""
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(capacity):
        path = slot_path(directory, index)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        info = json.dumps({"owner": owner, "pid": os.getpid(), "since": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info + b"\n", 0)
        return SlotLease(index, path, fd)
    return None


def acquire(directory: Path, capacity: int, owner: str, wait_s: float = 0.0,
            poll_s: float = 0.02) -> SlotLease | None:
    """Take a free slot, polling up to ``wait_s`` seconds; None if none freed up in time."""
    deadline = time.monotonic() + wait_s
    while True:
        lease = try_acquire(directory, capacity, owner)
        if lease is not None or time.monotonic() >= deadline:
            return lease
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def holders(directory: Path, capacity: int) -> list[int]:
    """Indices of slots currently held by some process (probes each lock)."""
    held = []
    for index in range(capacity):
        path = slot_path(directory, index)
        if not path.exists():
            continue
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(index)
        finally:
            os.close(fd)
    return held
