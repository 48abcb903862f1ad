"""Certificate responder: answers `ReqCerts` (Linux 7.0 KVM_EXIT_SNP_REQ_CERTS) and
`VmgexitReqCerts` (v15 draft) from a certificate blob file and a script of answers
(docs/contract.md §3, §5; kvm-host-abi.md §1(a), §1(d)).

The blob file holds the certificate table exactly as the guest should receive it; the responder
writes those bytes, nothing else, at the guest's GPA, and only if they fit in `npages` pages.

Lock convention (amd-memory-encryption.rst §21): from the exit until the request reached firmware
the responder holds a shared `F_OFD_SETLK` read lock on the blob file, so a TCB/VLEK updater
holding the exclusive lock cannot swap the certificates under a guest request. If the lock is
held exclusively by someone else the answer is EAGAIN (the guest sees BUSY and retries).

``faults`` names injected VMM bugs (``snplab.emu.faults``, layer "vmm"; emulated runs only), each
checked at the decision it perturbs.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import struct
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snplab.vmm.events import CertsAnswer, ReqCerts, VmgexitReqCerts
from snplab.vmm.memory import GpaOutOfRange, GuestMemory

PAGE_SIZE = 4096
# fcntl.h (Linux): open-file-description locks.
F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
# struct flock (x86-64): short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid.
_FLOCK = struct.Struct("hhxxxxqqixxxx")

# v15 kvm_user_vmgexit ret values (kvm-host-abi.md §1(a)).
V15_INVALID_LEN = 1
V15_BUSY = 2
V15_GENERIC = 1 << 31

ANSWER_WORDS = ("auto", "ENOSPC", "EAGAIN", "EIO")


class AnswerScriptError(ValueError):
    """An answer string is not one of auto, ENOSPC, EAGAIN, EIO, ret:<int>, enospc-npages:<int>."""


def parse_answer(s: str) -> tuple[str, int | None]:
    """('auto'|'ENOSPC'|'EAGAIN'|'EIO'|'ret'|'enospc-npages', argument)."""
    if s in ANSWER_WORDS:
        return s, None
    for prefix in ("ret:", "enospc-npages:"):
        if s.startswith(prefix):
            try:
                n = int(s[len(prefix):], 0)
            except ValueError:
                break
            if n < 0 or n >= 1 << 64:
                break
            return prefix[:-1], n
    raise AnswerScriptError(f"bad certificate answer {s!r}: want one of auto, ENOSPC, EAGAIN, "
                            "EIO, ret:<int>, enospc-npages:<int>")


def lock_shared(fd: int) -> bool:
    """Take a shared OFD lock on the whole file; False if a conflicting lock is held."""
    try:
        fcntl.fcntl(fd, F_OFD_SETLK, _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0))
        return True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def lock_exclusive(fd: int) -> bool:
    """Take an exclusive OFD lock on the whole file (what a certificate updater does)."""
    try:
        fcntl.fcntl(fd, F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        return True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


@dataclass(frozen=True)
class CertExitRecord:
    """What the responder did for one certificate exit."""

    vcpu: int
    abi: str                 # "req-certs" or "vmgexit-v15"
    gpa: int
    npages: int
    script: str              # the scripted answer used ("auto" when the script ran out)
    ret: int
    npages_out: int
    written_gpa: int | None
    written_len: int
    sha256: str | None       # of the bytes written
    locked: bool             # the shared lock is held until complete()
    reason: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class CertResponder:
    """Answers certificate exits for one or more guests from `blob_path` and `answers`."""

    def __init__(self, blob_path: str | os.PathLike[str], answers: Sequence[str] = (),
                 faults: Collection[str] = frozenset()) -> None:
        self.blob_path = Path(blob_path)
        self.faults = frozenset(faults)
        self._first_blob: bytes | None = None  # fault vmm-stale-blob: the copy served forever
        self.answers = tuple(answers)
        self._script = [parse_answer(a) for a in self.answers]
        self._next = 0
        self._lock = threading.Lock()
        self._held: dict[int, int] = {}   # id(vcpu) → fd holding the shared lock
        self.records: list[CertExitRecord] = []

    # --- wiring --------------------------------------------------------------------------------
    def attach(self, guest: Any) -> None:
        """Register as the guest's ReqCerts / VmgexitReqCerts handler and completion hook."""
        guest.handlers.register(ReqCerts, self.on_req_certs)
        guest.handlers.register(VmgexitReqCerts, self.on_vmgexit_req_certs)
        guest.handlers.on_request_complete(self.complete)

    def on_req_certs(self, vcpu: Any, ev: ReqCerts) -> CertsAnswer:
        return self.answer(vcpu, vcpu.guest.memory, ev.gpa, ev.npages, "req-certs")

    def on_vmgexit_req_certs(self, vcpu: Any, ev: VmgexitReqCerts) -> CertsAnswer:
        return self.answer(vcpu, vcpu.guest.memory, ev.data_gpa, ev.data_npages, "vmgexit-v15")

    def complete(self, vcpu: Any) -> None:
        """The request reached firmware (or was abandoned): drop this vCPU's lock."""
        with self._lock:
            fd = self._held.pop(id(vcpu), None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            fds, self._held = list(self._held.values()), {}
        for fd in fds:
            os.close(fd)

    @property
    def locks_held(self) -> int:
        return len(self._held)

    # --- the answer ----------------------------------------------------------------------------
    def _take_script(self) -> tuple[str, str, int | None]:
        with self._lock:
            i = self._next
            self._next += 1
        if i < len(self._script):
            word, arg = self._script[i]
            return self.answers[i], word, arg
        return "auto", "auto", None

    def answer(self, vcpu: Any, memory: GuestMemory, gpa: int, npages: int,
               abi: str = "req-certs") -> CertsAnswer:
        """Answer one certificate exit for `vcpu` whose buffer is `npages` pages at `gpa`."""
        self.complete(vcpu)  # a previous request of this vCPU never completed: release it
        script, word, arg = self._take_script()
        v15 = abi == "vmgexit-v15"
        index = getattr(vcpu, "index", -1)

        def done(ret: int, npages_out: int = 0, reason: str = "", written: bytes | None = None,
                 wgpa: int | None = None, fd: int | None = None) -> CertsAnswer:
            locked = False
            if fd is not None:
                if ret == 0:
                    with self._lock:
                        self._held[id(vcpu)] = fd
                    locked = True
                else:
                    os.close(fd)
            self.records.append(CertExitRecord(
                index, abi, gpa, npages, script, ret, npages_out, wgpa,
                len(written) if written is not None else 0,
                hashlib.sha256(written).hexdigest() if written is not None else None,
                locked, reason))
            return CertsAnswer(ret, npages_out)

        enospc = V15_INVALID_LEN if v15 else errno.ENOSPC
        if word == "EAGAIN":
            return done(V15_BUSY if v15 else errno.EAGAIN, reason="scripted")
        if word == "EIO":
            return done(V15_GENERIC if v15 else errno.EIO, reason="scripted")
        if word == "ret":
            assert arg is not None
            return done(arg, reason="scripted raw ret")
        if word == "enospc-npages":
            assert arg is not None
            return done(enospc, arg, reason="scripted npages")

        # auto / ENOSPC: read the blob under the shared lock.
        try:
            fd = self._open_locked()
        except OSError as e:
            return done(V15_GENERIC if v15 else errno.EIO,
                        reason=f"cannot open blob {self.blob_path}: {e.strerror}")
        if fd is None:
            return done(V15_BUSY if v15 else errno.EAGAIN,
                        reason="blob locked exclusively by another process, or being replaced")
        try:
            blob = _read_all(fd)
        except OSError as e:
            os.close(fd)
            return done(V15_GENERIC if v15 else errno.EIO, reason=f"cannot read blob: {e}")
        if "vmm-stale-blob" in self.faults:
            blob = self._first_blob = self._first_blob if self._first_blob is not None else blob
        need = self._pages_needed(blob)
        if word == "ENOSPC":
            return done(enospc, need, reason="scripted", fd=fd)
        if self._too_small(blob, need, npages):
            written = None
            if "vmm-partial-table-on-enospc" in self.faults:
                written = _table_head(blob)[:npages * PAGE_SIZE]
                self._write(memory, gpa, written)
            return done(enospc, need, reason=f"blob needs {need} pages, guest gave {npages}",
                        written=written, wgpa=gpa if written else None, fd=fd)
        data, at = blob, gpa
        if "vmm-certs-page-short" in self.faults:
            data = blob[:(need - 1) * PAGE_SIZE] if need > 1 else blob[:len(blob) // 2]
        if "vmm-certs-at-offset" in self.faults:
            at = gpa + 32
        try:
            self._write(memory, at, data)
        except GpaOutOfRange as e:
            return done(V15_GENERIC if v15 else errno.EIO, reason=str(e), fd=fd)
        return done(0, 0, reason="blob written", written=data, wgpa=at, fd=fd)

    def _pages_needed(self, blob: bytes) -> int:
        """Pages the blob needs (what ENOSPC puts in npages): rounded up."""
        if "vmm-npages-in-bytes" in self.faults:
            return len(blob)
        if "vmm-npages-floor" in self.faults:
            return len(blob) // PAGE_SIZE
        return (len(blob) + PAGE_SIZE - 1) // PAGE_SIZE

    def _too_small(self, blob: bytes, need: int, npages: int) -> bool:
        """The guest's ``npages`` pages cannot hold the blob (→ ENOSPC)."""
        if "vmm-ignores-npages" in self.faults:
            return False
        if "vmm-enospc-when-exact" in self.faults:
            return need >= npages
        return len(blob) > npages * PAGE_SIZE

    @staticmethod
    def _write(memory: GuestMemory, gpa: int, data: bytes) -> None:
        if not data:
            return
        view = memory.view(gpa, len(data))
        view[:] = data
        view.release()

    def _open_locked(self, tries: int = 3) -> int | None:
        """An fd of the blob holding a shared OFD lock, or None if it is locked exclusively.

        An updater may replace the file by rename instead of rewriting it under the lock: then
        the lock we got is on the old inode and its bytes are stale, so the path is checked
        again after locking (bounded retries; None → the guest is told BUSY)."""
        for _ in range(tries):
            fd = os.open(self.blob_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if not lock_shared(fd):
                    os.close(fd)
                    return None
                held, now = os.fstat(fd), os.stat(self.blob_path)
            except OSError:
                os.close(fd)
                raise
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                return fd
            os.close(fd)  # replaced between open and lock: try the new file
        return None

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.records]


def _table_head(blob: bytes) -> bytes:
    """The table's entries up to and including the all-zero terminator (no certificates)."""
    for off in range(0, len(blob) - 23, 24):
        if not any(blob[off:off + 24]):
            return blob[:off + 24]
    return blob


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)
