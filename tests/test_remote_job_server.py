"""The job server (python3 -m snplab.remote.job_server) run locally over pipes: the frame
protocol and its bad input, guests that crash without taking the server down, slots, and never
outliving its controller (stdin EOF, parent death, a guest past its deadline)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from snplab.platform import default_payload_path, kvm_problem
from snplab.remote import host_slots, protocol
from snplab.scenario import Scenario, Step

needs_kvm = pytest.mark.skipif(kvm_problem() is not None, reason="/dev/kvm unusable")
GOOD = Scenario.single("req-certs", "milan", Step.ext(8), name="good").to_json()
# 4 vCPUs x 16 extended requests: longer than a 1 ms guest watchdog
SLOW = Scenario.multi("req-certs", "milan", [[Step.ext(8)] * 16] * 4, name="slow").to_json()


class Server:
    """A job server subprocess in its own session (as under sshd), driven over pipes."""

    def __init__(self, workdir: Path, *args: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "snplab.remote.job_server", "--platform", "emulated", *args],
            cwd=workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
        self.frames = protocol.FdFrames(self.proc.stdout.fileno())
        self.hello = self.recv(timeout=120)

    def send_raw(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, obj: dict[str, Any]) -> None:
        self.send_raw(protocol.encode(obj))

    def recv(self, timeout: float = 60) -> dict[str, Any] | None:
        return self.frames.read_json(timeout=timeout)

    def run(self, scenario: dict[str, Any], **kw: Any) -> dict[str, Any]:
        req = {"type": "run", "id": scenario["name"], "scenario": scenario,
               "payload": str(default_payload_path()), "capacity": 1, "owner": "test", **kw}
        self.send(req)
        ans = self.recv(timeout=120)
        assert ans is not None and ans["type"] == "result" and ans["id"] == scenario["name"], ans
        return ans

    def wait(self, timeout: float = 20) -> tuple[int, str]:
        status = self.proc.wait(timeout=timeout)
        return status, self.proc.stderr.read().decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "work")
    yield s
    s.close()


def gone(pid: int, timeout: float) -> bool:
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


# -- frames ------------------------------------------------------------------------------------


def test_frames_round_trip_and_split_anywhere():
    """Frames decode the same however the bytes are split; bytes frames carry data exactly."""
    data = protocol.encode({"type": "ping", "n": 1}) + protocol.encode_bytes(b"\0\xff" * 100)
    for cut in (1, 3, 5, 7, len(data) - 1):
        d = protocol.FrameDecoder()
        d.feed(data[:cut])
        first = d.next()
        d.feed(data[cut:])
        got = [first] if first else []
        while (f := d.next()) is not None:
            got.append(f)
        assert protocol.parse_json(*got[0]) == {"type": "ping", "n": 1}
        assert got[1] == (protocol.KIND_BYTES, b"\0\xff" * 100) and not d.partial


def test_frame_errors_are_one_line():
    """Oversized, unknown kind, not JSON, not an object, bytes where JSON is due: FrameError."""
    d = protocol.FrameDecoder(limit=1000)
    with pytest.raises(protocol.FrameError, match="1001 bytes exceeds the 1000-byte limit"):
        d.feed(struct.pack(">IB", 1001, ord("J")))
    with pytest.raises(protocol.FrameError, match="bad frame kind"):
        protocol.FrameDecoder().feed(b"GET / HTTP/1.1\r\n")
    for body, msg in ((b"{nope", "not JSON"), (b"[1]", "JSON list, not an object")):
        with pytest.raises(protocol.FrameError, match=msg):
            protocol.parse_json(protocol.KIND_JSON, body)
    with pytest.raises(protocol.FrameError, match="expected a JSON frame"):
        protocol.parse_json(protocol.KIND_BYTES, b"x")


def test_stream_ending_inside_a_frame_is_an_error():
    r, w = os.pipe()
    os.write(w, protocol.encode({"type": "ping"})[:-2])
    os.close(w)
    with pytest.raises(protocol.FrameError, match="ended inside a frame"):
        protocol.FdFrames(r).read(timeout=5)
    os.close(r)


def test_shipment_cannot_leave_the_workdir(tmp_path):
    with pytest.raises(protocol.FrameError, match="leaves the work directory"):
        protocol.store_shipment(str(tmp_path), "../evil", False, b"x")
    protocol.store_shipment(str(tmp_path), "payload/a.elf", False, b"elf")
    assert (tmp_path / "payload" / "a.elf").read_bytes() == b"elf"


# -- the server ------------------------------------------------------------------------------


def test_probe_reports_kernel_host_and_capacity():
    """--probe prints this machine's kernel and hostname and a capacity of at least 1."""
    import json

    out = subprocess.run([sys.executable, "-m", "snplab.remote.job_server", "--platform", "emulated", "--probe"],
                         capture_output=True, check=True, timeout=60)
    facts = json.loads(out.stdout)
    assert facts["kernel"] == os.uname().release and facts["hostname"] == os.uname().nodename
    assert facts["capacity"] >= 1 and facts["mem_available"] > 0


def test_hello_ping_and_eof_ends_server(server):
    """hello carries pid and facts; ping answers; EOF on stdin ends the server (status 0)."""
    assert server.hello["type"] == "hello" and server.hello["pid"] == server.proc.pid
    assert server.hello["pgid"] == server.proc.pid and server.hello["facts"]["kernel"] == os.uname().release
    server.send({"type": "ping"})
    assert server.recv() == {"type": "pong"}
    server.proc.stdin.close()
    status, err = server.wait()
    assert status == 0 and err == ""


@pytest.mark.parametrize("junk, phrase", [
    (b"GET / HTTP/1.1\r\n\r\n", "bad frame kind"),
    (struct.pack(">IB", protocol.MAX_FRAME + 1, ord("J")), "exceeds the"),
    (struct.pack(">IB", 5, ord("J")) + b"{nope", "not JSON"),
    (protocol.encode_bytes(b"raw"), "expected a JSON frame"),
])
def test_bad_frame_answered_then_exit_2(server, junk, phrase):
    """A malformed or oversized frame: an error answer, exit 2, one line on stderr, no hang."""
    server.send_raw(junk)
    ans = server.recv(timeout=10)
    assert ans["type"] == "error" and phrase in ans["error"], ans
    status, err = server.wait(timeout=10)
    assert status == 2 and err.count("\n") == 1 and "bad request stream" in err, err


def test_unknown_or_bad_request_is_answered_and_server_goes_on(server):
    server.send({"type": "dance"})
    assert "unknown request type 'dance'" in server.recv()["error"]
    server.send({"type": "ship", "remote": "../x", "unpack": False})
    server.send_raw(protocol.encode_bytes(b"x"))
    assert "leaves the work directory" in server.recv()["error"]
    server.send({"type": "ping"})
    assert server.recv() == {"type": "pong"}


@pytest.mark.kvm
@needs_kvm
def test_crashed_guests_do_not_kill_the_server(server):
    """A guest stopped by its watchdog, a guest whose run raises (missing payload, unknown fault),
    an unreadable scenario: each is that guest's own answer; the same server then runs a good
    guest."""
    pid = server.hello["pid"]
    ans = server.run(dict(SLOW, guest_timeout=0.001))
    assert ans["outcome"] == "ok" and ans["transcript"]["status"] == "timeout", ans.get("error")
    ans = server.run(GOOD, payload="/nonexistent/payload.elf")
    assert ans["outcome"] == "ok" and ans["transcript"]["status"] == "error"
    assert "payload.elf" in ans["transcript"]["error"]
    ans = server.run(dict(GOOD, faults=["no-such-fault"]))
    assert ans["transcript"]["status"] == "error" and "no-such-fault" in ans["transcript"]["error"]
    ans = server.run(dict(GOOD, abi="nope"))
    assert ans["outcome"] == "failed" and "abi" in ans["error"] and "\n" not in ans["error"]
    ans = server.run(GOOD)
    t = ans["transcript"]
    assert ans["outcome"] == "ok" and t["status"] == "ok", t.get("error")
    assert t["host"]["job_pid"] == pid and t["host"]["slot"] == 0 and t["host"]["owner"] == "test"
    assert server.proc.poll() is None


def test_request_past_its_deadline_is_answered_then_server_exits(server, tmp_path):
    """A request still going at deadline_s (here: waiting for a slot someone holds): answered
    failed, then the server exits 124 with one line (a guest still running then could not be
    trusted; the controller starts a new server)."""
    held = host_slots.try_acquire(tmp_path / "work" / "slots", 1, "someone")
    try:
        ans = server.run(GOOD, slot_wait=60, deadline_s=0.5)
    finally:
        held.release()
    assert ans["outcome"] == "failed" and "overran its deadline" in ans["error"]
    status, err = server.wait()
    assert status == 124 and "overran its deadline" in err


def test_no_free_slot_is_busy_and_slot_is_per_guest(server, tmp_path):
    """All slots held: the answer is busy (the controller tries elsewhere), the server lives."""
    slots = tmp_path / "work" / "slots"
    held = host_slots.try_acquire(slots, 1, "someone")
    try:
        t0 = time.monotonic()
        assert server.run(GOOD, slot_wait=0.3)["outcome"] == "busy"
        assert time.monotonic() - t0 >= 0.3
    finally:
        held.release()
    server.send({"type": "ping"})
    assert server.recv() == {"type": "pong"}
    assert host_slots.holders(slots, 1) == []


def test_stdin_closing_kills_server_waiting_for_a_slot(server, tmp_path):
    """Waiting for a slot when the channel closes: the server is gone within seconds."""
    held = host_slots.try_acquire(tmp_path / "work" / "slots", 1, "someone")
    try:
        server.send({"type": "run", "id": "w", "scenario": GOOD, "slot_wait": 120, "capacity": 1})
        time.sleep(0.5)
        assert server.proc.poll() is None, "server should be waiting for the slot"
        server.proc.stdin.close()
        assert server.wait(timeout=10)[0] == 0
    finally:
        held.release()


def test_parent_death_kills_server(tmp_path):
    """PR_SET_PDEATHSIG: the server dies with its parent even while its stdin stays open."""
    r, w = os.pipe()  # the server's stdin; we keep the write end, so only the parent's death ends it
    parent_code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-m', 'snplab.remote.job_server', '--platform', 'emulated'],"
        f" stdin={r}, stdout=subprocess.DEVNULL, cwd={str(tmp_path)!r})\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, pass_fds=(r,))
    os.close(r)
    try:
        child = int(parent.stdout.readline())
        time.sleep(1.0)
        assert not gone(child, 0), "server should be alive while its parent is"
        parent.kill()
        parent.wait()
        assert gone(child, 10), "server outlived its parent"
    finally:
        os.close(w)
        parent.stdout.close()


def test_idle_server_exits(tmp_path):
    s = Server(tmp_path / "work", "--max-idle", "0.5")
    try:
        status, err = s.wait(timeout=20)
        assert status == 0 and "no request for 0.5 s" in err
    finally:
        s.close()


@pytest.mark.kvm
@needs_kvm
def test_scratch_stays_in_the_work_dir_and_is_swept(tmp_path):
    """The blob files of a job server's guests live under <work>/scratch/job-<pid>, never in the
    system temp dir; a server ending (here: past its deadline, os._exit) removes its own, and one
    SIGKILLed — which cannot — has its scratch removed by the next server on that work dir."""
    work, systmp = tmp_path / "work", tmp_path / "systmp"
    systmp.mkdir()
    os.environ["TMPDIR"], old = str(systmp), os.environ.get("TMPDIR")
    try:
        killed = Server(work)
        assert killed.run(GOOD)["transcript"]["status"] == "ok"
        mine = work / "scratch" / f"job-{killed.hello['pid']}"
        assert any(mine.glob("snplab-blobs-*")), sorted(p.name for p in work.rglob("*"))
        os.killpg(killed.proc.pid, 9)
        killed.wait()
        killed.close()
        assert mine.is_dir()  # nobody could clean up
        nxt = Server(work)
        try:
            assert not mine.exists(), "the next server did not sweep the killed one's scratch"
            held = host_slots.try_acquire(work / "slots", 1, "someone")
            try:
                nxt.run(GOOD, slot_wait=60, deadline_s=0.3)
            finally:
                held.release()
            assert nxt.wait()[0] == 124
            assert not (work / "scratch" / f"job-{nxt.hello['pid']}").exists()
        finally:
            nxt.close()
    finally:
        if old is None:
            os.environ.pop("TMPDIR")
        else:
            os.environ["TMPDIR"] = old
    assert [p.name for p in systmp.iterdir()] == []
