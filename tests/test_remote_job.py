"""The remote guest job entry (python3 -m snplab.vmm.job) run locally: input errors, slots, and
never outliving its controller (stdin EOF, parent death, watchdog)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from snplab.remote import host_slots
from snplab.scenario import Scenario, Step

SCENARIO = json.dumps(Scenario.single("req-certs", "milan", Step.ext(1)).to_json()).encode() + b"\n"


def job(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "snplab.vmm.job", "--platform", "emulated", *args],
                            stdin=kw.pop("stdin", subprocess.PIPE), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, **kw)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as f:
                if any(ln.startswith("State:") and "Z" in ln for ln in f):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_probe_reports_kernel_host_and_capacity():
    """--probe prints this machine's kernel and hostname and a capacity of at least 1."""
    out = subprocess.run([sys.executable, "-m", "snplab.vmm.job", "--platform", "emulated", "--probe"],
                         capture_output=True, check=True, timeout=60)
    facts = json.loads(out.stdout)
    assert facts["kernel"] == os.uname().release
    assert facts["hostname"] == os.uname().nodename
    assert facts["capacity"] >= 1 and facts["mem_available"] > 0


def test_unreadable_scenario_exit_2_one_line():
    """Not JSON, or not a scenario: exit 2 with one line on stderr, no traceback."""
    for bad in (b"{not json\n", b'{"name": "x", "steps": [], "abi": "nope"}\n', b"\n"):
        p = subprocess.run([sys.executable, "-m", "snplab.vmm.job", "--platform", "emulated"],
                           input=bad, capture_output=True, timeout=60)
        err = p.stderr.decode().strip()
        assert p.returncode == 2, (bad, err)
        assert err.startswith("snplab.vmm.job: unreadable scenario") and "\n" not in err, err


def test_no_free_slot_exit_75(tmp_path):
    """All slots held on the host: the job exits 75 at once (the controller tries elsewhere)."""
    held = [host_slots.try_acquire(tmp_path, 2, "test") for _ in range(2)]
    p = job("--slots-dir", str(tmp_path), "--capacity", "2")
    p.stdin.write(SCENARIO)
    p.stdin.flush()  # stdin stays open, as under SSH
    assert p.wait(timeout=60) == 75
    assert b"no free guest slot of 2" in p.stderr.read()
    p.stdin.close()
    for lease in held:
        lease.release()


def test_stdin_closing_kills_job(tmp_path):
    """A job waiting for a slot dies as soon as its stdin closes (the controller went away)."""
    held = host_slots.try_acquire(tmp_path, 1, "test")
    p = job("--slots-dir", str(tmp_path), "--slot-wait", "120")
    p.stdin.write(SCENARIO)
    p.stdin.flush()
    time.sleep(0.5)
    assert p.poll() is None, "job should be waiting for the slot"
    t0 = time.monotonic()
    p.stdin.close()
    assert p.wait(timeout=20) == 129
    assert time.monotonic() - t0 < 10
    assert b"stdin closed" in p.stderr.read()
    held.release()


def test_parent_death_kills_job(tmp_path):
    """PR_SET_PDEATHSIG: the job dies with its parent even while its stdin stays open."""
    held = host_slots.try_acquire(tmp_path, 1, "test")
    r, w = os.pipe()  # the job's stdin; we keep the write end, so only the parent's death can end it
    parent_code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-m', 'snplab.vmm.job', '--platform', 'emulated',"
        f" '--slots-dir', {str(tmp_path)!r}, '--slot-wait', '120', '--no-watch-stdin'], stdin={r})\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, pass_fds=(r,))
    os.close(r)
    try:
        os.write(w, SCENARIO)
        child = int(parent.stdout.readline())
        time.sleep(1.0)
        assert not wait_gone(child, 0), "job should be alive while its parent is"
        parent.kill()
        parent.wait()
        assert wait_gone(child, 10), "job outlived its parent"
    finally:
        os.close(w)
        held.release()


def test_watchdog_ends_job(tmp_path):
    """--max-seconds bounds a job whatever it is doing (here: waiting for a slot)."""
    held = host_slots.try_acquire(tmp_path, 1, "test")
    p = job("--slots-dir", str(tmp_path), "--slot-wait", "120", "--max-seconds", "1")
    t0 = time.monotonic()
    p.stdin.write(SCENARIO)
    p.stdin.flush()
    assert p.wait(timeout=30) == 124
    assert time.monotonic() - t0 < 20
    assert b"watchdog" in p.stderr.read()
    p.stdin.close()
    held.release()
