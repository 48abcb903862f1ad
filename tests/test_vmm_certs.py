"""Certificate responder (snplab.vmm.certs): answers, exact bytes written, the OFD lock."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from snplab.vmm.certs import (
    V15_BUSY,
    V15_GENERIC,
    V15_INVALID_LEN,
    AnswerScriptError,
    CertResponder,
    lock_exclusive,
    parse_answer,
)
from snplab.vmm.events import CertsAnswer
from snplab.vmm.memory import GuestMemory

RAM = 16 << 20
GPA = 0x41_0000  # vCPU 0's certificate area
CANARY = 0xCC
SIZES = [0, 1, 4095, 4096, 4097, 65536]


def _npages_cases(size: int) -> list[int]:
    exact = (size + 4095) // 4096
    return sorted({0, 1, max(0, exact - 1), exact, exact + 1, 2**32 - 1})


def _blob(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = bytes((i * 7 + 3) % 251 for i in range(size))  # no all-canary runs
    p = tmp_path / f"blob{size}"
    p.write_bytes(data)
    return p, data


@pytest.fixture(scope="module")
def memory():  # type: ignore[no-untyped-def]
    m = GuestMemory(RAM)
    yield m
    m.close()


def _assert_memory(memory: GuestMemory, written_at: int | None, data: bytes) -> None:
    """All of guest RAM is canary except exactly `data` at `written_at`."""
    full = memory.read(0, RAM)
    if written_at is None or not data:
        assert full.count(CANARY) == RAM, "responder wrote guest memory"
        return
    end = written_at + len(data)
    assert full[:written_at].count(CANARY) == written_at, "bytes changed below the buffer"
    assert full[written_at:end] == data
    assert full[end:].count(CANARY) == RAM - end, "bytes changed beyond the blob"


@pytest.mark.parametrize("size", SIZES)
def test_matrix_req_certs(tmp_path: Path, memory: GuestMemory, size: int) -> None:
    """7.0 ABI: ret 0 and exactly the blob written iff it fits in npages, else ENOSPC with the
    pages needed and nothing written — for every npages edge case."""
    path, data = _blob(tmp_path, size)
    exact = (size + 4095) // 4096
    vcpu = SimpleNamespace(index=0)
    for npages in _npages_cases(size):
        memory.fill(0, RAM, CANARY)
        r = CertResponder(path)
        ans = r.answer(vcpu, memory, GPA, npages)
        rec = r.records[-1]
        if size <= npages * 4096:
            assert ans == CertsAnswer(0, 0), (size, npages)
            _assert_memory(memory, GPA, data)
            assert rec.written_len == size and rec.written_gpa == GPA
            assert r.locks_held == 1  # held until the request completes
            r.complete(vcpu)
        else:
            assert ans == CertsAnswer(errno.ENOSPC, exact), (size, npages)
            _assert_memory(memory, None, b"")
            assert rec.written_len == 0 and rec.sha256 is None
        assert r.locks_held == 0


@pytest.mark.parametrize("size", [0, 4097, 65536])
def test_matrix_vmgexit_v15(tmp_path: Path, memory: GuestMemory, size: int) -> None:
    """v15 ABI: 0 / INVALID_LEN (1) with data_npages, same bytes rule."""
    path, data = _blob(tmp_path, size)
    exact = (size + 4095) // 4096
    for npages in _npages_cases(size):
        memory.fill(0, RAM, CANARY)
        r = CertResponder(path)
        ans = r.answer(SimpleNamespace(index=1), memory, GPA, npages, abi="vmgexit-v15")
        if size <= npages * 4096:
            assert ans.ret == 0
            _assert_memory(memory, GPA, data)
        else:
            assert ans == CertsAnswer(V15_INVALID_LEN, exact)
            _assert_memory(memory, None, b"")
        r.close()


def test_script_of_answers(tmp_path: Path, memory: GuestMemory) -> None:
    """Scripted answers are used in exit order, then auto; scripted ones write nothing."""
    path, data = _blob(tmp_path, 5000)
    r = CertResponder(path, ["EAGAIN", "EIO", "ret:7", "enospc-npages:9", "ENOSPC"])
    v = SimpleNamespace(index=0)
    memory.fill(0, RAM, CANARY)
    got = [r.answer(v, memory, GPA, 64) for _ in range(7)]
    assert got[:5] == [CertsAnswer(errno.EAGAIN), CertsAnswer(errno.EIO), CertsAnswer(7),
                       CertsAnswer(errno.ENOSPC, 9), CertsAnswer(errno.ENOSPC, 2)]
    assert got[5] == got[6] == CertsAnswer(0)
    assert [x.script for x in r.records] == ["EAGAIN", "EIO", "ret:7", "enospc-npages:9",
                                             "ENOSPC", "auto", "auto"]
    _assert_memory(memory, GPA, data)
    r.close()
    v15 = CertResponder(path, ["EAGAIN", "EIO", "ENOSPC"])
    got = [v15.answer(v, memory, GPA, 64, abi="vmgexit-v15") for _ in range(3)]
    assert [a.ret for a in got] == [V15_BUSY, V15_GENERIC, V15_INVALID_LEN]
    assert parse_answer("ret:0x10") == ("ret", 16)
    for bad in ("EBUSY", "ret:", "ret:-1", "enospc-npages:x", ""):
        with pytest.raises(AnswerScriptError):
            parse_answer(bad)


def test_gpa_outside_ram_and_missing_blob(tmp_path: Path, memory: GuestMemory) -> None:
    """A blob that would land outside RAM → EIO, nothing written; unreadable blob → EIO."""
    path, _ = _blob(tmp_path, 100)
    v = SimpleNamespace(index=0)
    for gpa in (RAM - 50, RAM, 2**64 - 4096):
        memory.fill(0, RAM, CANARY)
        r = CertResponder(path)
        assert r.answer(v, memory, gpa, 2**32 - 1) == CertsAnswer(errno.EIO)
        assert "outside guest RAM" in r.records[-1].reason
        assert r.locks_held == 0
        _assert_memory(memory, None, b"")
    r = CertResponder(tmp_path / "missing")
    assert r.answer(v, memory, GPA, 4).ret == errno.EIO
    assert "cannot open blob" in r.records[-1].reason


def test_shared_lock_held_until_complete(tmp_path: Path, memory: GuestMemory) -> None:
    """From a successful answer until complete(), an exclusive locker (a certificate updater)
    is refused; afterwards it gets the lock."""
    path, _ = _blob(tmp_path, 3000)
    r = CertResponder(path)
    v0, v1 = SimpleNamespace(index=0), SimpleNamespace(index=1)
    assert r.answer(v0, memory, GPA, 1).ret == 0
    assert r.answer(v1, memory, GPA + 0x100000, 1).ret == 0  # shared: both vCPUs hold it
    fd = os.open(path, os.O_RDWR)
    try:
        assert not lock_exclusive(fd)
        r.complete(v0)
        assert not lock_exclusive(fd)
        r.complete(v1)
        assert lock_exclusive(fd)
    finally:
        os.close(fd)


HOLDER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[2])
    from snplab.vmm.certs import lock_exclusive
    fd = os.open(sys.argv[1], os.O_RDWR)
    assert lock_exclusive(fd)
    print("locked", flush=True)
    sys.stdin.read()
""")


def test_exclusive_lock_in_other_process_gives_eagain(tmp_path: Path, memory: GuestMemory) -> None:
    """While another process holds the exclusive lock the answer is EAGAIN and nothing is
    written; once it lets go, the blob is served."""
    path, data = _blob(tmp_path, 6000)
    root = str(Path(__file__).resolve().parent.parent)
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), root],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "locked"
        memory.fill(0, RAM, CANARY)
        r = CertResponder(path)
        v = SimpleNamespace(index=0)
        assert r.answer(v, memory, GPA, 8) == CertsAnswer(errno.EAGAIN)
        assert "locked" in r.records[-1].reason
        v15 = r.answer(v, memory, GPA, 8, abi="vmgexit-v15")
        assert v15 == CertsAnswer(V15_BUSY)
        _assert_memory(memory, None, b"")
    finally:
        assert p.stdin is not None
        p.stdin.close()
        p.wait(10)
    assert r.answer(v, memory, GPA, 8) == CertsAnswer(0)
    _assert_memory(memory, GPA, data)
    r.close()


def test_blob_replaced_by_rename_while_locking_serves_the_new_file(
        tmp_path: Path, memory: GuestMemory, monkeypatch: pytest.MonkeyPatch) -> None:
    """An updater that renames a new blob into place between our open() and our lock leaves
    us locking the old inode: the responder notices and serves the file now at the path."""
    import snplab.vmm.certs as certs

    path, _old = _blob(tmp_path, 5000)
    new = bytes(reversed(_blob(tmp_path, 7000)[1]))
    real_lock, calls = certs.lock_shared, []

    def lock_then_replace(fd: int) -> bool:
        calls.append(fd)
        if len(calls) == 1:  # the updater wins the race once
            (tmp_path / "next").write_bytes(new)
            os.replace(tmp_path / "next", path)
        return real_lock(fd)

    monkeypatch.setattr(certs, "lock_shared", lock_then_replace)
    memory.fill(0, RAM, CANARY)
    r = CertResponder(path)
    v = SimpleNamespace(index=0)
    assert r.answer(v, memory, GPA, 2) == CertsAnswer(0)
    assert len(calls) == 2
    _assert_memory(memory, GPA, new)
    r.complete(v)
    r.close()


def test_blob_replaced_on_every_try_gives_busy(
        tmp_path: Path, memory: GuestMemory, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the file keeps being replaced, the guest is told BUSY (EAGAIN), never stale bytes."""
    import snplab.vmm.certs as certs

    path, data = _blob(tmp_path, 5000)
    real_lock = certs.lock_shared

    def always_replace(fd: int) -> bool:
        (tmp_path / "next").write_bytes(data)
        os.replace(tmp_path / "next", path)
        return real_lock(fd)

    monkeypatch.setattr(certs, "lock_shared", always_replace)
    memory.fill(0, RAM, CANARY)
    r = CertResponder(path)
    assert r.answer(SimpleNamespace(index=0), memory, GPA, 2) == CertsAnswer(errno.EAGAIN)
    assert "replaced" in r.records[-1].reason
    _assert_memory(memory, None, b"")
    r.close()
