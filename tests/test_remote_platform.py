"""SshPlatform against a loopback host: emulated keys mirrored from the controller, run_many,
host facts in every transcript, a dropped host."""

from __future__ import annotations

import os
import sys

import pytest
from sshd_fixture import job_servers, wait_for

from snplab.platform import default_payload_path, kvm_problem
from snplab.remote.errors import HostUnreachable
from snplab.remote.inventory import HostEntry
from snplab.remote.loopback import free_port
from snplab.remote.platform import SshPlatform
from snplab.remote.transport import SshOptions
from snplab.scenario import Scenario, Step, pages_for


def kvm_usable() -> bool:
    return kvm_problem() is None


pytestmark = [pytest.mark.kvm, pytest.mark.skipif(not kvm_usable(), reason="/dev/kvm unusable")]
FAST = SshOptions(connect_timeout=5.0)


def platform(sshd, tmp_path, capacity=2, extra=()) -> SshPlatform:
    hosts = [HostEntry(endpoint=sshd.endpoint(), capacity=capacity, workdir=str(tmp_path / "work"),
                       labels={"kernel": "base"}, python=sys.executable)]
    return SshPlatform(hosts + list(extra), "emulated", payload=default_payload_path(), options=FAST)


def test_host_signs_with_the_controllers_emulated_keys(sshd, tmp_path, monkeypatch):
    """With a fresh key cache on the controller, the host serves exactly the controller's blob
    and its report verifies against the controller's roots (the keys were shipped)."""
    monkeypatch.setenv("SNPLAB_CACHE", str(tmp_path / "controller-cache"))
    from snplab import checks

    with platform(sshd, tmp_path) as p:
        blob = p.cert_blob("genoa", "vcek")
        t = p.run(Scenario.single("req-certs", "genoa", Step.ext(pages_for(len(blob)))))
        assert t.status == "ok", t.summary()
        assert t.cert_blob == blob
        checks.assert_step_verified(t, 0, 0, p.trust("genoa"))
    shipped = list((tmp_path / "work" / "keys").glob("*/emu-keys/v*-roots-genoa.json"))
    assert len(shipped) == 1
    assert shipped[0].read_bytes() == (tmp_path / "controller-cache" / "emu-keys" / shipped[0].name).read_bytes()


def test_run_many_and_host_facts(sshd, tmp_path):
    """run_many runs each guest as its own job; every transcript names host, kernel and slot."""
    with platform(sshd, tmp_path) as p:
        need = pages_for(len(p.cert_blob("milan", "vcek")))
        ts = p.run_many([Scenario.single("req-certs", "milan", Step.ext(need), name=f"m{i}") for i in range(2)])
    assert [t.scenario.name for t in ts] == ["m0", "m1"]
    for t in ts:
        assert t.status == "ok", t.summary()
        h = t.host
        assert (h["inventory_name"], h["kernel"], h["transport"]) == ("lab0", os.uname().release, "ssh")
        assert h["labels"] == {"kernel": "base"} and h["slot"] in (0, 1)
        assert h["wall_start"] <= h["wall_end"] and t.timings["ssh_total_s"] > 0


def test_down_host_is_dropped_and_others_used(sshd, tmp_path):
    """A host that is down is dropped with its error recorded; guests go to the one that works."""
    down = HostEntry(endpoint=sshd.endpoint(name="down", port=free_port()), capacity=4)
    with platform(sshd, tmp_path, extra=[down]) as p:
        need = pages_for(len(p.cert_blob("milan", "vcek")))
        t = p.run(Scenario.single("req-certs", "milan", Step.ext(need)))
        assert t.status == "ok" and t.host["inventory_name"] == "lab0"
        assert isinstance(p.host_errors["down"], HostUnreachable)


def test_one_job_server_serves_every_guest_and_close_leaves_nothing(sshd, tmp_path):
    """Sequential guests all run in the one job server started at preflight; run_many adds a
    second server for the second concurrent guest; close() leaves no process on the host."""
    with platform(sshd, tmp_path) as p:
        need = pages_for(len(p.cert_blob("milan", "vcek")))
        sc = Scenario.single("req-certs", "milan", Step.ext(need))
        pids = {p.run(sc).host["job_pid"] for _ in range(4)}
        assert len(pids) == 1 and job_servers(str(tmp_path / "work")) == list(pids)
        ts = p.run_many([sc, sc])
        assert all(t.status == "ok" for t in ts) and len({t.host["job_pid"] for t in ts}) == 2
        assert pids < {t.host["job_pid"] for t in ts}
    assert job_servers(str(tmp_path / "work")) == []


def test_job_server_dies_with_its_channel(sshd, tmp_path):
    """Closing the server's SSH channel (no kill, connection kept) ends the server on the host."""
    with platform(sshd, tmp_path) as p:
        host = p.hosts[0]
        host.prepare()
        conn = host._checkout()
        assert job_servers(str(tmp_path / "work")) == [conn.pid]
        conn.chan.close()
        assert wait_for(lambda: job_servers(str(tmp_path / "work")) == [], 10), job_servers(str(tmp_path / "work"))
        # the next guest notices the dead server and starts another
        need = pages_for(len(p.cert_blob("milan", "vcek")))
        t = p.run(Scenario.single("req-certs", "milan", Step.ext(need)))
        assert t.status == "ok" and t.host["job_pid"] != conn.pid


def test_crashed_guest_is_its_own_failure_over_ssh(sshd, tmp_path):
    """A guest that fails in the VMM (unknown fault) is an error transcript, a request the server
    refuses (unreadable scenario) is RemoteJobFailed for that guest only; the same job server
    runs the next guest."""
    from snplab.remote.errors import RemoteJobFailed

    with platform(sshd, tmp_path) as p:
        need = pages_for(len(p.cert_blob("milan", "vcek")))
        good = Scenario.single("req-certs", "milan", Step.ext(need))
        pid = p.run(good).host["job_pid"]
        bad = p.run(good.with_(faults=("no-such-fault",)))
        assert bad.status == "error" and "no-such-fault" in bad.error and bad.host["job_pid"] == pid
        with pytest.raises(RemoteJobFailed, match="guest job 'x' failed: .*abi"):
            p.hosts[0].run_guest(dict(good.to_json(), abi="nope"), timeout=30, slot_wait=0,
                                 owner="test", label="guest job 'x'")
        t = p.run(good)
        assert t.status == "ok" and t.host["job_pid"] == pid


def test_server_killed_mid_request_fails_that_guest_only(sshd, tmp_path):
    """The job server dies (SIGKILL, as an OOM kill or a crash in the VMM would) while a guest
    request is in it: that guest is RemoteJobFailed at once, and the next guest gets a new server."""
    import signal
    import threading

    from snplab.remote import host_slots
    from snplab.remote.errors import RemoteJobFailed

    with platform(sshd, tmp_path, capacity=1) as p:
        need = pages_for(len(p.cert_blob("milan", "vcek")))
        good = Scenario.single("req-certs", "milan", Step.ext(need))
        pid = p.run(good).host["job_pid"]
        held = host_slots.try_acquire(tmp_path / "work" / "slots", 1, "the test")
        errors: list[BaseException] = []

        def request() -> None:
            try:
                p.hosts[0].run_guest(good.to_json(), timeout=60, slot_wait=60, owner="t", label="guest job 'k'")
            except BaseException as e:  # noqa: BLE001 - handed to the test thread
                errors.append(e)

        th = threading.Thread(target=request)
        th.start()
        try:
            assert not wait_for(lambda: not th.is_alive(), 0.5), "the request should wait for the slot"
            os.kill(pid, signal.SIGKILL)
            th.join(10)
        finally:
            held.release()
        assert not th.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], RemoteJobFailed), errors
        assert "before answering 'result'" in str(errors[0])
        t = p.run(good)
        assert t.status == "ok" and t.host["job_pid"] != pid


def test_new_keys_reach_the_host(sshd, tmp_path, monkeypatch):
    """Keys made on the controller after the first guest (a second product) are shipped in a new
    tree before the guest that needs them: both products' reports verify against the
    controller's roots."""
    monkeypatch.setenv("SNPLAB_CACHE", str(tmp_path / "controller-cache"))
    from snplab import checks

    with platform(sshd, tmp_path) as p:
        for product in ("milan", "genoa"):
            blob = p.cert_blob(product, "vcek")
            t = p.run(Scenario.single("req-certs", product, Step.ext(pages_for(len(blob)))))
            assert t.status == "ok" and t.cert_blob == blob, t.summary()
            checks.assert_step_verified(t, 0, 0, p.trust(product))
    assert len(list((tmp_path / "work" / "keys").glob("*/.complete"))) == 2
