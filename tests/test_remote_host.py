"""Shipping the package and payload to a host (cached by content hash) and preflight."""

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


def test_prepare_ships_once_then_hits_cache(sshd, tmp_path):
    """First prepare uploads package + payload; a new connection finds them cached by hash."""
    work = tmp_path / "work"
    payload = b"\x7fELF not really, only cached" + os.urandom(8)
    uploads: list[str] = []
    h1 = make_host(sshd, work, payload)
    real_put = h1.transport.put
    h1.transport.put = lambda data, path, timeout=None: (uploads.append(path), real_put(data, path, timeout))
    h1.prepare()
    h1.close()
    pkg = artifact.snplab_package()
    assert (work / "pkg" / pkg.digest / ".complete").exists()
    assert (work / "pkg" / pkg.digest / "snplab" / "vmm" / "job.py").exists()
    assert (work / "payload" / f"{artifact.Artifact.of(payload).digest}.elf").read_bytes() == payload
    assert len(uploads) == 2 and not list((work / "pkg").glob("*.zip"))

    h2 = make_host(sshd, work, payload)
    h2.transport.put = lambda *a, **k: (_ for _ in ()).throw(AssertionError("uploaded again"))
    h2.prepare()
    h2.close()
    assert h2.workdir == str(work)
    assert h2.facts["kernel"] == os.uname().release and h2.facts["hostname"] == os.uname().nodename


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
