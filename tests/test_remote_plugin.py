"""--platform ssh from the outside: an inner pytest run against loopback sshd hosts.

Each refusal (unknown host key, changed host key, wrong user key, host down, command timeout, no
free slot) must make the guest test an ERROR with a one-line reason, and the run must go on.
Killing the controller mid-job must leave no snplab process behind on the "remote" host.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sshd_fixture import inventory_toml, job_servers, snplab_processes, wait_for

from snplab.remote import host_slots
from snplab.remote.loopback import free_port, public_line, write_ed25519_key

ROOT = Path(__file__).resolve().parents[1]

INNER_TESTS = """
from snplab.scenario import Scenario, Step

def test_guest(ssh_platform):
    ssh_platform.run(Scenario.single("req-certs", "milan", Step.ext(1), guest_timeout={guest_timeout}))

def test_after_guest():
    assert sorted([3, 1, 2]) == [1, 2, 3]
"""


# The job server answers a 1-page guest in a few ms, faster than any deadline a test could race
# against it; so the guest test first runs one guest (which starts the long-lived job server), then
# stops that server with SIGSTOP: the next request then gets no answer at all, on any machine.
STALLED_SERVER_TESTS = """
import os, signal
from sshd_fixture import job_servers
from snplab.scenario import Scenario, Step

def test_guest(ssh_platform):
    ssh_platform.run(Scenario.single("req-certs", "milan", Step.ext(1), guest_timeout=10.0))
    pids = job_servers({work!r})
    assert pids, "no job server after the first guest"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    ssh_platform.run(Scenario.single("req-certs", "milan", Step.ext(1), guest_timeout={guest_timeout}))

def test_after_guest():
    assert sorted([3, 1, 2]) == [1, 2, 3]
"""


def run_inner(tmp_path: Path, inventory: str, *args: str, guest_timeout: float = 10.0,
              timeout: float = 120, tests: str = INNER_TESTS) -> subprocess.CompletedProcess[str]:
    (tmp_path / "hosts.toml").write_text(inventory)
    (tmp_path / "test_inner.py").write_text(
        tests.format(guest_timeout=guest_timeout, work=str(tmp_path / "work")))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
               COLUMNS="1000")  # short summary lines untruncated
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "snplab.remote.pytest_remote", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-q", "-rA", "--inventory", str(tmp_path / "hosts.toml"),
         "--ssh-connect-timeout", "5", str(tmp_path / "test_inner.py"), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def assert_error_then_pass(res: subprocess.CompletedProcess[str], error_type: str, phrase: str) -> str:
    out = res.stdout
    assert res.returncode == 1, out + res.stderr
    assert re.search(r"\b1 passed, 1 error\b", out), out
    assert "PASSED test_inner.py::test_after_guest" in out, out
    m = re.search(rf"^ERROR test_inner\.py::test_guest - ({error_type}: .*)$", out, re.MULTILINE)
    assert m, out
    assert phrase in m.group(1), m.group(1)
    assert "Traceback" not in out and "paramiko" not in out.split("short test summary")[0], out
    return m.group(1)


def test_unknown_host_key_is_an_error(sshd, tmp_path):
    """No entry for the host in known_hosts: ERROR 'host key unknown', next test still runs."""
    kh = tmp_path / "empty_known_hosts"
    kh.write_text("")
    inv = inventory_toml([sshd], tmp_path / "work").replace(str(sshd.known_hosts), str(kh))
    assert_error_then_pass(run_inner(tmp_path, inv), "HostKeyUnknown", "host key unknown")


def test_changed_host_key_is_an_error(sshd, tmp_path):
    other = write_ed25519_key(tmp_path / "impostor")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {public_line(other)}\n")
    inv = inventory_toml([sshd], tmp_path / "work").replace(str(sshd.known_hosts), str(kh))
    assert_error_then_pass(run_inner(tmp_path, inv, "--ssh-tofu"), "HostKeyChanged", "host key CHANGED")


def test_wrong_user_key_is_an_error(sshd, tmp_path):
    write_ed25519_key(tmp_path / "stranger")
    inv = inventory_toml([sshd], tmp_path / "work").replace(str(sshd.user_key), str(tmp_path / "stranger"))
    assert_error_then_pass(run_inner(tmp_path, inv), "AuthFailed", "authentication failed")


def test_host_down_is_an_error(sshd, tmp_path):
    inv = inventory_toml([sshd], tmp_path / "work").replace(f"port = {sshd.port}", f"port = {free_port()}")
    assert_error_then_pass(run_inner(tmp_path, inv), "HostUnreachable", "Connection refused")


def test_command_timeout_is_an_error(sshd, tmp_path):
    """A job server that gives no answer within guest_timeout + --ssh-job-timeout is killed (its
    whole process group, stopped or not) and the guest test is an ERROR; the next test runs."""
    inv = inventory_toml([sshd], tmp_path / "work")
    res = run_inner(tmp_path, inv, "--ssh-job-timeout", "0.5", guest_timeout=0.25,
                    tests=STALLED_SERVER_TESTS)
    reason = assert_error_then_pass(res, "CommandTimeout", "timed out after 0.75 s")
    assert "remote process group" in reason and "killed" in reason, reason
    assert wait_for(lambda: snplab_processes(str(tmp_path / "work")) == [], 5.0), \
        snplab_processes(str(tmp_path / "work"))


def test_no_free_slot_is_an_error(sshd, tmp_path):
    """Every slot held on the host for longer than --ssh-lease-timeout: ERROR LeaseTimeout."""
    work = tmp_path / "work"
    inv = inventory_toml([sshd], work, capacity=1)
    lease = host_slots.try_acquire(work / sshd.name / "slots", 1, "someone else")
    try:
        res = run_inner(tmp_path, inv, "--ssh-lease-timeout", "1")
    finally:
        lease.release()
    assert_error_then_pass(res, "LeaseTimeout", "no free guest slot on lab0 within 1 s")


CONTROLLER = """
import sys
from snplab.platform import default_payload_path
from snplab.remote.inventory import Inventory
from snplab.remote.platform import SshPlatform
from snplab.scenario import Scenario, Step
p = SshPlatform(Inventory.load(sys.argv[1]).hosts, payload=default_payload_path(), lease_timeout=300)
print("ready", flush=True)
# 4 vCPUs x 16 extended requests: a guest run of several seconds on the emulated platform
p.run(Scenario.multi("req-certs", "milan", [[Step.ext(8)] * 16] * 4, guest_timeout=120))
print("finished", flush=True)
"""


def threads_of(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def test_killed_controller_leaves_no_waiting_job(sshd, tmp_path):
    """SIGKILL the controller while its job server waits for a slot (held by the test) for its
    guest: within seconds no process of that server is left on the host."""
    work = tmp_path / "work"
    (tmp_path / "hosts.toml").write_text(inventory_toml([sshd], work, capacity=1))
    lease = host_slots.try_acquire(work / sshd.name / "slots", 1, "the test")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ctl = subprocess.Popen([sys.executable, "-c", CONTROLLER, str(tmp_path / "hosts.toml"), "10"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert ctl.stdout.readline().strip() == "ready"
        # the job server is up once a process in our work dir runs the bootstrap; its run
        # request then waits for the slot the test holds
        assert wait_for(lambda: job_servers(str(work)) != [], 60), \
            ctl.stderr.read() if ctl.poll() is not None else "no job server started"
        time.sleep(0.5)
        assert ctl.poll() is None, ctl.stderr.read()
        os.kill(ctl.pid, signal.SIGKILL)
        ctl.wait()
        assert wait_for(lambda: snplab_processes(str(work)) == [], 15), snplab_processes(str(work))
    finally:
        lease.release()
        if ctl.poll() is None:
            ctl.kill()
            ctl.wait()


@pytest.mark.kvm
def test_killed_controller_mid_guest_leaves_nothing(sshd, tmp_path):
    """SIGKILL the controller while its guest runs on the host (vCPU threads in KVM_RUN): the
    job server and its VM are gone within seconds, and its slot is free again."""
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError as e:
        pytest.skip(f"/dev/kvm unusable: {e.strerror}")
    work = tmp_path / "work"
    (tmp_path / "hosts.toml").write_text(inventory_toml([sshd], work, capacity=1))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ctl = subprocess.Popen([sys.executable, "-c", CONTROLLER, str(tmp_path / "hosts.toml")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    slots = work / sshd.name / "slots"
    try:
        assert ctl.stdout.readline().strip() == "ready"

        def guest_running() -> bool:
            jobs = job_servers(str(work))
            # main + request reader + deadline timer, plus one thread per vCPU once the guest runs
            return bool(jobs) and threads_of(jobs[0]) >= 3 + 4

        assert wait_for(guest_running, 90), \
            ctl.stderr.read() if ctl.poll() is not None else "guest never started"
        assert host_slots.holders(slots, 1) == [0]
        os.kill(ctl.pid, signal.SIGKILL)
        ctl.wait()
        assert wait_for(lambda: snplab_processes(str(work)) == [], 15), snplab_processes(str(work))
        # the slot lock goes when the last vCPU thread has left KVM_RUN and the fds are closed
        assert wait_for(lambda: host_slots.holders(slots, 1) == [], 15)
    finally:
        if ctl.poll() is None:
            ctl.kill()
            ctl.wait()


def test_platform_ssh_without_inventory_is_a_usage_error(tmp_path):
    """--platform ssh without --inventory stops the run before any test, in one line."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PYTEST_XDIST_WORKER", None)
    res = subprocess.run([sys.executable, "-m", "pytest", "suites/test_stub.py", "--platform", "ssh",
                          "-p", "no:cacheprovider", "--reports", str(tmp_path), "-q"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 4, res.stdout + res.stderr
    assert "ERROR: --platform ssh needs --inventory HOSTS.TOML" in res.stderr
    assert "Traceback" not in res.stderr
