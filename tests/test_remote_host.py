"""Shipping the package and payload to a host (cached by content hash, over the job server's
start-up channel) and preflight."""

from __future__ import annotations

import io
import os
import sys
import zipfile

from snplab.remote import artifact
from snplab.remote.host import RemoteHost
from snplab.remote.inventory import HostEntry
from snplab.remote.transport import SshOptions

FAST = SshOptions(connect_timeout=5.0)


def test_package_zip_is_deterministic(tmp_path):
    """Same sources give the same bytes (so the host cache hits); any change gives a new hash."""
    pkg = tmp_path / "pkg"
    (pkg / "sub" / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")
    (pkg / "sub" / "m.py").write_text("y = 2\n")
    (pkg / "sub" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"junk")
    a = artifact.Artifact.of(artifact.package_zip(pkg))
    os.utime(pkg / "sub" / "m.py", (0, 0))  # mtimes do not matter
    assert artifact.Artifact.of(artifact.package_zip(pkg)) == a
    assert zipfile.ZipFile(io.BytesIO(a.data)).namelist() == ["pkg/__init__.py", "pkg/sub/m.py"]
    (pkg / "sub" / "m.py").write_text("y = 3\n")
    assert artifact.Artifact.of(artifact.package_zip(pkg)).digest != a.digest


def make_host(sshd, workdir, payload: bytes | None, capacity: int | None = 2) -> RemoteHost:
    entry = HostEntry(endpoint=sshd.endpoint(), capacity=capacity, workdir=str(workdir), python=sys.executable)
    return RemoteHost(entry, FAST, "emulated", artifact.snplab_package(),
                      artifact.Artifact.of(payload) if payload is not None else None)


def shipped_at_start(host: RemoteHost) -> list[str]:
    """What the first job server of host was sent at start-up (prepare must have run)."""
    return [r for conn in host._idle for r in conn.shipped]


def test_prepare_ships_once_then_hits_cache(sshd, tmp_path):
    """First prepare ships package + payload over the server's channel; a new connection finds
    them cached by hash and ships nothing."""
    work = tmp_path / "work"
    payload = b"\x7fELF not really, only cached" + os.urandom(8)
    h1 = make_host(sshd, work, payload)
    h1.prepare()
    pkg = artifact.snplab_package()
    pl = artifact.Artifact.of(payload)
    assert sorted(shipped_at_start(h1)) == sorted([f"pkg/{pkg.digest}", f"payload/{pl.digest}.elf"])
    h1.close()
    assert (work / "pkg" / pkg.digest / ".complete").exists()
    assert (work / "pkg" / pkg.digest / "snplab" / "remote" / "job_server.py").exists()
    assert (work / "payload" / f"{pl.digest}.elf").read_bytes() == payload
    assert not [p.name for p in (work / "pkg").iterdir() if ".tmp." in p.name]

    h2 = make_host(sshd, work, payload)
    h2.prepare()
    assert shipped_at_start(h2) == []
    h2.close()
    assert h2.workdir == str(work)
    assert h2.facts["kernel"] == os.uname().release and h2.facts["hostname"] == os.uname().nodename


def test_bad_frame_from_the_host_is_a_clear_error(sshd, tmp_path):
    """Something on the host answers with junk, or announces an oversized frame: a one-line
    RemoteJobFailed at once, no hang."""
    import time

    import pytest

    from snplab.remote.errors import RemoteJobFailed
    from snplab.remote.job_client import JobServerConn
    from snplab.remote.transport import SshTransport

    with SshTransport(sshd.endpoint(), FAST) as t:
        for junk, phrase in ((r"printf 'HTTP/1.1 200 OK\r\n'; sleep 30", "bad frame kind"),
                             (r"printf '\377\377\377\377J'; sleep 30", "exceeds the")):
            conn = JobServerConn(t, t.open_channel(junk), "fake server")
            t0 = time.monotonic()
            with pytest.raises(RemoteJobFailed, match=phrase) as ei:
                conn._recv(time.monotonic() + 20, "hello")
            assert time.monotonic() - t0 < 5 and "\n" not in str(ei.value)
        conn = JobServerConn(t, t.open_channel("echo no python here >&2; exit 127"), "fake server")
        with pytest.raises(RemoteJobFailed, match="exited 127 before answering 'hello': no python here"):
            conn._recv(time.monotonic() + 20, "hello")


def test_capacity_is_inventory_bounded_by_host(sshd, tmp_path):
    """Capacity = the inventory's, capped by what the host can take; derived when omitted."""
    h = make_host(sshd, tmp_path / "w", None, capacity=2)
    h.prepare()
    h.close()
    assert h.capacity == min(2, h.facts["capacity"])
    h = make_host(sshd, tmp_path / "w", None, capacity=None)
    h.prepare()
    h.close()
    assert h.capacity == h.facts["capacity"] >= 1


def test_server_start_that_hangs_is_killed(sshd, tmp_path):
    """A host "python" that never answers: start gives up at its deadline with CommandTimeout and
    kills what it started (the pid comes from the shell, before Python could say anything)."""
    import time

    import pytest
    from sshd_fixture import snplab_processes, wait_for

    from snplab.remote.artifact import Shipment
    from snplab.remote.errors import CommandTimeout
    from snplab.remote.job_client import JobServerConn
    from snplab.remote.transport import SshTransport

    hang = tmp_path / "hanging-python"
    hang.write_text("#!/bin/sh\nexec sleep 300\n")
    hang.chmod(0o755)
    work = tmp_path / "work"
    pkg = Shipment.package(artifact.snplab_package())
    with SshTransport(sshd.endpoint(), FAST) as t:
        t0 = time.monotonic()
        with pytest.raises(CommandTimeout, match=r"start timed out after 1 s, remote process group \d+ killed"):
            JobServerConn.start(t, str(work), str(hang), [pkg], pkg, [], timeout=1.0)
        assert time.monotonic() - t0 < 8
        assert wait_for(lambda: snplab_processes(str(work)) == [], 10), snplab_processes(str(work))


def test_missing_python_on_the_host_is_one_line(sshd, tmp_path):
    """The inventory's python does not exist on the host: RemoteJobFailed naming the shell's
    complaint, no traceback."""
    import pytest

    from snplab.remote.errors import RemoteJobFailed

    entry = HostEntry(endpoint=sshd.endpoint(), capacity=1, workdir=str(tmp_path / "w"),
                      python="/nonexistent/python3")
    h = RemoteHost(entry, FAST, "emulated", artifact.snplab_package(), None)
    with pytest.raises(RemoteJobFailed, match="exited 127 before answering 'need': .*nonexistent/python3") as ei:
        h.prepare()
    h.close()
    assert "\n" not in str(ei.value)
