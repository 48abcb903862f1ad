"""One guest job: ``python3 -m snplab.vmm.job --platform {emulated,snp}``.

Reads one scenario as a single line of JSON on stdin, runs it on this machine's platform, writes
the transcript JSON on stdout; logs go to stderr. This is what the SSH runner starts on a lab
host for every guest (docs/remote.md), and it works the same by hand::

    python3 -m snplab.vmm.job --platform emulated < scenario.json > transcript.json

The job never outlives whoever started it: it asks the kernel for SIGKILL when its parent dies
(``PR_SET_PDEATHSIG``), and when stdin is a pipe or socket it keeps reading it after the scenario
and exits the moment it closes (the SSH channel, hence the controller, is gone). A watchdog ends it
after ``--max-seconds`` whatever happens. With ``--slots-dir`` it first takes a guest slot on this
host (``snplab.remote.host_slots``) and exits 75 if none frees up within ``--slot-wait``.

Exit status: 0 transcript written (whatever the guest did), 2 unreadable scenario, 75 no free
slot, 124 watchdog, 1 anything else; every non-zero exit prints one line on stderr.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

from snplab.remote import host_facts, host_slots

log = logging.getLogger("snplab.vmm.job")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
EXIT_BAD_INPUT = 2
EXIT_NO_SLOT = 75  # EX_TEMPFAIL (<sysexits.h>)
EXIT_WATCHDOG = 124  # as timeout(1)
EXIT_ORPHANED = 129
MAX_SCENARIO_BYTES = 64 << 20
_DYING = threading.Lock()


def die(status: int, message: str) -> NoReturn:
    """Print one line on stderr and end the process now (from any thread; the first caller wins)."""
    if not _DYING.acquire(blocking=False):
        threading.Event().wait()  # another thread is already ending the process
    try:
        os.write(2, f"snplab.vmm.job: {' '.join(message.split())}\n".encode())
        if status != 0 and os.getpgrp() == os.getpid():
            # We lead our process group (as under sshd): take anything we started with us.
            kill_group_members()
    finally:
        os._exit(status)


def kill_group_members(sig: int = signal.SIGKILL) -> None:
    """Send sig to every other process of our process group (not to ourselves)."""
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat_line = f.read()
            # fields after the ")" that ends comm: state ppid pgrp ...
            pgrp = int(stat_line.rsplit(b")", 1)[1].split()[2])
            if pgrp == me:
                os.kill(int(entry.name), sig)
        except (OSError, ValueError, IndexError):
            continue


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` when our parent exits; exit now if it already has."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != parent:  # the parent died before the prctl took effect
        die(EXIT_ORPHANED, "parent exited before the job started")


def stdin_is_stream() -> bool:
    """stdin is a pipe or socket (so EOF means the sender went away), not a file or tty."""
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def read_scenario_line(fd: int = 0) -> bytes:
    """Bytes up to the first newline (or EOF) on fd, without reading past it."""
    chunks: list[bytes] = []
    total = 0
    while True:
        b = os.read(fd, 1 << 16) if not chunks or b"\n" not in chunks[-1] else b""
        if not b:
            break
        chunks.append(b)
        total += len(b)
        if total > MAX_SCENARIO_BYTES:
            die(EXIT_BAD_INPUT, f"scenario larger than {MAX_SCENARIO_BYTES} bytes")
    data = b"".join(chunks)
    return data.split(b"\n", 1)[0] if b"\n" in data else data


def watch_stdin(fd: int = 0) -> threading.Thread:
    """Daemon thread: end the job when fd reaches EOF (anything read after the scenario is ignored)."""

    def run() -> None:
        while True:
            try:
                b = os.read(fd, 4096)
            except OSError:
                b = b""
            if not b:
                die(EXIT_ORPHANED, "stdin closed: controller gone, job killed")

    t = threading.Thread(target=run, name="stdin-watch", daemon=True)
    t.start()
    return t


def start_watchdog(seconds: float) -> threading.Timer:
    t = threading.Timer(seconds, die, (EXIT_WATCHDOG, f"watchdog: job ran longer than {seconds:g} s, killed"))
    t.daemon = True
    t.start()
    return t


def make_platform(args: argparse.Namespace) -> Any:
    """The local platform object (``snplab.platform.get_platform``) the options ask for."""
    from snplab.platform import get_platform

    opts = {k: v for k, v in (("payload", args.payload), ("certs_blob", args.certs_blob),
                              ("abi", args.abi)) if v is not None}
    return get_platform(args.platform, **opts)


def snp_facts() -> dict[str, Any]:
    """What an SNP host's kernel plays (ABI profile) and its CPU product, for preflight."""
    try:
        from snplab.vmm import snp
    except ImportError as e:
        return {"snp_unavailable": f"{type(e).__name__}: {e}"}
    out: dict[str, Any] = {"snp_unavailable": snp.unavailable_reason()}
    if out["snp_unavailable"] is None:
        out["host_abi"] = snp.detect_abi()
    out["host_product"] = snp.host_product()
    return out


def run_job(args: argparse.Namespace) -> int:
    if args.probe:
        facts = host_facts.probe(args.platform)
        if args.platform == "snp":
            facts.update(snp_facts())
        print(json.dumps(facts))
        return 0
    line = read_scenario_line()
    from snplab.scenario import Scenario, ScenarioError

    try:
        scenario = Scenario.from_json(json.loads(line))
    except (ValueError, TypeError, KeyError, ScenarioError) as e:
        die(EXIT_BAD_INPUT, f"unreadable scenario on stdin: {type(e).__name__}: {e}")
    if args.watch_stdin and stdin_is_stream():
        watch_stdin()
    lease = None
    if args.slots_dir is not None:
        lease = host_slots.acquire(args.slots_dir, args.capacity, args.owner, wait_s=args.slot_wait)
        if lease is None:
            die(EXIT_NO_SLOT, f"no free guest slot of {args.capacity} in {args.slots_dir}")
    platform = make_platform(args)
    try:
        wall_start = time.time()
        transcript = platform.run(scenario)
        wall_end = time.time()
    finally:
        platform.close()
    doc = transcript.to_json()
    host = dict(doc.get("host") or {})
    for k, v in host_facts.host_facts().items():
        host.setdefault(k, v)
    host.update(job_pid=os.getpid(), wall_start=wall_start, wall_end=wall_end,
                slot=lease.index if lease else None, owner=args.owner or None)
    doc["host"] = host
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()
    if lease is not None:
        lease.release()
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m snplab.vmm.job", description=__doc__.split("\n")[0])
    p.add_argument("--platform", choices=("emulated", "snp"), required=True)
    p.add_argument("--payload", type=Path, help="guest payload ELF (default: the platform's own)")
    p.add_argument("--certs-blob", type=Path, help="certificate blob file the VMM serves (snp: required)")
    p.add_argument("--abi", help="force the host ABI profile (snp; default: detect)")
    p.add_argument("--probe", action="store_true", help="print host facts and derived capacity as JSON, run nothing")
    p.add_argument("--slots-dir", type=Path, help="take a guest slot (flock) in this directory first")
    p.add_argument("--capacity", type=int, default=1, help="number of slots in --slots-dir")
    p.add_argument("--slot-wait", type=float, default=0.0, help="seconds to wait for a free slot")
    p.add_argument("--owner", default="", help="who leases the slot (recorded in the lock and transcript)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="watchdog: kill the job after this long")
    p.add_argument("--no-watch-stdin", dest="watch_stdin", action="store_false",
                   help="do not exit when stdin closes after the scenario")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.capacity < 1:
        p.error("--capacity must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    set_parent_death_signal()
    start_watchdog(args.max_seconds)
    try:
        return run_job(args)
    except Exception as e:  # CLI boundary: one line, no traceback
        log.debug("job failed", exc_info=True)
        die(1, f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    sys.exit(main())
