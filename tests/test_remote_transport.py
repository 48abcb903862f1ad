"""SSH transport against a real OpenSSH server on loopback: host-key checks, auth, timeouts."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest
from sshd_fixture import snplab_processes

from snplab.remote.errors import (
    AuthFailed,
    CommandTimeout,
    HostKeyChanged,
    HostKeyUnknown,
    HostUnreachable,
)
from snplab.remote.inventory import Endpoint
from snplab.remote.loopback import free_port, public_line, write_ed25519_key
from snplab.remote.transport import SshOptions, SshTransport, known_hosts_name

FAST = SshOptions(connect_timeout=5.0, command_timeout=20.0)


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def test_run_reports_status_output_and_remote_pid(sshd):
    """A command's exit status, stdout and stderr come back separately; the pid line is stripped."""
    with SshTransport(sshd.endpoint(), FAST) as t:
        r = t.run("echo out; echo err >&2; exit 7")
        big = t.run("cat", stdin=b"x" * 300_000)
    assert (r.exit_status, r.stdout, r.stderr) == (7, b"out\n", b"err\n")
    assert isinstance(r.remote_pid, int) and r.remote_pid > 1
    assert big.exit_status == 0 and big.stdout == b"x" * 300_000


def test_unknown_host_key_refused(sshd, tmp_path):
    """A host whose key is not in known_hosts is refused by default, with its fingerprint."""
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyUnknown) as ei:
        SshTransport(sshd.endpoint(known_hosts=empty), FAST).connect()
    msg = one_line(ei.value)
    assert "host key unknown" in msg and "SHA256:" in msg and str(empty) in msg
    assert empty.read_text() == "", "a refused key must not be recorded"


def test_tofu_records_key_then_verifies(sshd, tmp_path):
    """With --ssh-tofu an unknown key is recorded; later connections verify against it."""
    kh = tmp_path / "kh" / "known_hosts"
    with SshTransport(sshd.endpoint(known_hosts=kh), SshOptions(connect_timeout=5, tofu=True)) as t:
        assert t.run("true").exit_status == 0
    recorded = kh.read_text().split()
    assert recorded[0] == known_hosts_name(sshd.endpoint())
    assert " ".join(recorded[1:]) == sshd.host_public_line()
    with SshTransport(sshd.endpoint(known_hosts=kh), FAST) as t:  # no TOFU now
        assert t.run("echo ok").stdout == b"ok\n"


@pytest.mark.parametrize("tofu", [False, True], ids=["strict", "tofu"])
def test_changed_host_key_refused(sshd, tmp_path, tofu):
    """A host key different from the recorded one is refused, even with TOFU."""
    other = write_ed25519_key(tmp_path / "other_host_key")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"{known_hosts_name(sshd.endpoint())} {public_line(other)}\n")
    with pytest.raises(HostKeyChanged) as ei:
        SshTransport(sshd.endpoint(known_hosts=kh), SshOptions(connect_timeout=5, tofu=tofu)).connect()
    msg = one_line(ei.value)
    assert "CHANGED" in msg and msg.count("SHA256:") == 2
    assert kh.read_text().count("\n") == 1, "the recorded key must stay as it was"


def test_wrong_user_key_refused(sshd, tmp_path):
    """A user key that is not in authorized_keys fails authentication with a one-line error."""
    write_ed25519_key(tmp_path / "stranger")
    with pytest.raises(AuthFailed) as ei:
        SshTransport(sshd.endpoint(key_file=tmp_path / "stranger"), FAST).connect()
    assert "authentication failed" in one_line(ei.value)
    with pytest.raises(AuthFailed, match="does not exist"):
        SshTransport(sshd.endpoint(key_file=tmp_path / "missing"), FAST).connect()


def test_host_down_is_unreachable():
    """Nothing listening: HostUnreachable at once, naming the address."""
    ep = Endpoint(name="down", host="127.0.0.1", port=free_port(), key_file=None)
    t0 = time.monotonic()
    with pytest.raises(HostUnreachable) as ei:
        SshTransport(ep, FAST).connect()
    assert time.monotonic() - t0 < 5
    assert f"127.0.0.1:{ep.port}" in one_line(ei.value)


def test_connect_timeout_is_bounded(tmp_path):
    """A listener that never speaks SSH: the handshake gives up after connect_timeout."""
    import socket

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        ep = Endpoint(name="mute", host="127.0.0.1", port=srv.getsockname()[1])
        t0 = time.monotonic()
        with pytest.raises(HostUnreachable) as ei:
            SshTransport(ep, SshOptions(connect_timeout=1.0)).connect()
        elapsed = time.monotonic() - t0
    assert elapsed < 10, elapsed
    one_line(ei.value)


def test_command_timeout_kills_remote_process_group(sshd):
    """On timeout the command's whole remote process group dies, background children included."""
    marker = f"snplab-test-{uuid.uuid4().hex}"
    cmd = (f"{sys.executable} -c 'import time; time.sleep(300)' {marker} & "
           f"{sys.executable} -c 'import time; time.sleep(300)' {marker}")
    with SshTransport(sshd.endpoint(), FAST) as t:
        t0 = time.monotonic()
        with pytest.raises(CommandTimeout) as ei:
            t.run(cmd, timeout=1.5)
        assert time.monotonic() - t0 < 8
        assert "timed out after 1.5 s" in one_line(ei.value)
        deadline = time.monotonic() + 5
        while snplab_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert snplab_processes(marker) == []
        assert t.run("echo still-usable").stdout == b"still-usable\n"


def test_jump_host(sshd):
    """A host reached through a jump host (direct-tcpip), verified like a direct one."""
    with SshTransport(sshd.endpoint(), FAST, jump=sshd.endpoint(name="bastion")) as t:
        r = t.run("echo via-jump")
        assert r.stdout == b"via-jump\n"
        assert t._jump_client is not None  # the connection really went through the jump
