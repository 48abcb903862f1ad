"""The wire between the controller and a lab host's job server: frames, and the start-up step
that ships files. Standard library only.

A frame is a 5-byte header, a big-endian u32 length and a kind byte (``J``: a UTF-8 JSON object,
``B``: raw bytes, e.g. a file being shipped), then that many bytes. A frame longer than
``MAX_FRAME`` or of an unknown kind, JSON that is not an object, or a stream that ends inside a
frame is a ``FrameError`` with a one-line reason; nothing waits for bytes that will not come (the
readers take deadlines).

Start-up (``bootstrap_main``) runs on the host *before* the snplab package is there: the
controller starts ``python3 -c STUB`` (``snplab.remote.job_client``), which reads this module's source
from stdin and runs it. It answers with a ``need`` frame listing which of the shipments it was
told about are missing from the host's cache, stores each one the controller then sends
(``store_shipment``: atomic, a zip unpacked into a directory marked complete), puts the package
on ``sys.path`` and hands the same stdin/stdout to ``snplab.remote.job_server``. So a fresh host
costs one SSH channel and one Python start, like a warm one.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import struct
import sys
import time
import zipfile
from typing import Any

HEADER = struct.Struct(">IB")
KIND_JSON = ord("J")
KIND_BYTES = ord("B")
MAX_FRAME = 64 << 20  # a transcript with its certificate blobs, or the package zip, fits easily
PROTOCOL_VERSION = 1
STALL_S = 60.0  # once a frame has started, the rest must arrive within this long
KEEP_VERSIONS, PRUNE_AGE_S = 8, 86400  # package versions kept beyond, and age before pruning


class FrameError(Exception):
    """The peer sent something that is not a well-formed frame (one-line message)."""


def encode(obj: dict[str, Any]) -> bytes:
    """A JSON frame holding obj."""
    body = json.dumps(obj, separators=(",", ":")).encode()
    return _frame(KIND_JSON, body)


def encode_bytes(data: bytes) -> bytes:
    """A raw-bytes frame."""
    return _frame(KIND_BYTES, data)


def _frame(kind: int, body: bytes) -> bytes:
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return HEADER.pack(len(body), kind) + body


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes as they arrive, ``next`` gives complete frames."""

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self.limit = limit
        self._buf = bytearray()

    @property
    def partial(self) -> bool:
        """Some bytes of an unfinished frame are buffered."""
        return bool(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= HEADER.size:
            self._check_header()

    def _check_header(self) -> tuple[int, int]:
        length, kind = HEADER.unpack_from(self._buf)
        if kind not in (KIND_JSON, KIND_BYTES):
            raise FrameError(f"bad frame kind 0x{kind:02x} (not a snplab job frame; "
                             f"first bytes {bytes(self._buf[:16])!r})")
        if length > self.limit:
            raise FrameError(f"frame of {length} bytes exceeds the {self.limit}-byte limit")
        return length, kind

    def next(self) -> tuple[int, bytes] | None:
        """(kind, body) of the next complete frame, or None until more bytes arrive."""
        if len(self._buf) < HEADER.size:
            return None
        length, kind = self._check_header()
        end = HEADER.size + length
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[HEADER.size:end])
        del self._buf[:end]
        return kind, body


def parse_json(kind: int, body: bytes) -> dict[str, Any]:
    """The object of a JSON frame; FrameError for a bytes frame or JSON that is not an object."""
    if kind != KIND_JSON:
        raise FrameError(f"expected a JSON frame, got a {len(body)}-byte bytes frame")
    try:
        obj = json.loads(body)
    except ValueError as e:
        raise FrameError(f"frame is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise FrameError(f"frame holds a JSON {type(obj).__name__}, not an object")
    return obj


class FdFrames:
    """Frames from a file descriptor (the job server's stdin), read without read-ahead."""

    def __init__(self, fd: int = 0, limit: int = MAX_FRAME) -> None:
        self.fd = fd
        self.decoder = FrameDecoder(limit)

    def read(self, timeout: float | None = None) -> tuple[int, bytes] | None:
        """The next frame; None at a clean EOF (between frames). ``timeout`` bounds the wait for
        a frame to start; once one has started the rest must come within ``STALL_S``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            got = self.decoder.next()
            if got is not None:
                return got
            if self.decoder.partial:
                deadline = min(deadline or float("inf"), time.monotonic() + STALL_S)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                    if self.decoder.partial:
                        raise FrameError(f"frame stalled: no bytes for {STALL_S:g} s mid-frame")
                    raise TimeoutError("no frame arrived in time")
            data = os.read(self.fd, 1 << 16)
            if not data:
                if self.decoder.partial:
                    raise FrameError("stream ended inside a frame")
                return None
            self.decoder.feed(data)

    def read_json(self, timeout: float | None = None) -> dict[str, Any] | None:
        got = self.read(timeout)
        return None if got is None else parse_json(*got)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# -- shipments: files in the host's cache, named by content hash -------------------------------


def shipment_marker(remote: str, unpack: bool) -> str:
    """The path whose existence means the shipment is complete on the host."""
    return f"{remote}/.complete" if unpack else remote


def store_shipment(workdir: str, remote: str, unpack: bool, data: bytes) -> None:
    """Write a shipment under workdir atomically: a file, or a zip unpacked into a directory."""
    final = os.path.join(workdir, remote)
    if os.path.normpath(final) != final or not final.startswith(workdir.rstrip("/") + "/"):
        raise FrameError(f"shipment path {remote!r} leaves the work directory")
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = f"{final}.tmp.{os.getpid()}"
    if not unpack:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, final)
        return
    zpath = tmp + ".zip"
    with open(zpath, "wb") as f:
        f.write(data)
    try:
        zipfile.ZipFile(zpath).extractall(tmp)
    finally:
        os.unlink(zpath)
    open(os.path.join(tmp, ".complete"), "w").close()
    try:
        os.rename(tmp, final)
    except OSError:  # another worker unpacked the same version first
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.exists(os.path.join(final, ".complete")):
            raise
    _prune(os.path.dirname(final))


def _prune(directory: str) -> None:
    """Drop versions untouched for a day beyond the newest KEEP_VERSIONS."""
    entries = sorted((os.path.getmtime(os.path.join(directory, n)), n) for n in os.listdir(directory))
    for mtime, n in entries[:-KEEP_VERSIONS]:
        if time.time() - mtime > PRUNE_AGE_S and ".tmp." not in n:
            path = os.path.join(directory, n)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)


# -- start-up ------------------------------------------------------------------------------------

# Reads exactly argv[1] bytes of Python source from stdin (no read-ahead: the frames that follow
# stay in the pipe) and runs it as __main__.
STUB = ("import os,sys\nn=int(sys.argv[1]);b=b''\n"
        "while len(b)<n:\n c=os.read(0,n-len(b))\n if not c:sys.exit(129)\n b+=c\n"
        "exec(compile(b,'<snplab-bootstrap>','exec'),{'__name__':'__snplab_bootstrap__'})")


def bootstrap_source() -> bytes:
    """What the stub runs: this module's source, then a call of bootstrap_main."""
    with open(__file__, "rb") as f:
        return f.read() + b"\nbootstrap_main()\n"


def bootstrap_main() -> None:
    """On the host: ``python3 -c STUB N SPEC`` with SPEC = {"ships": [[remote, unpack], ...],
    "package": remote of the package tree, "argv": job server arguments}."""
    spec = json.loads(sys.argv[2])
    workdir = os.getcwd()
    ships = {remote: bool(unpack) for remote, unpack in spec["ships"]}
    missing = [r for r, u in ships.items() if not os.path.exists(shipment_marker(r, u))]
    write_all(1, encode({"type": "need", "workdir": workdir, "missing": missing,
                         "python": list(sys.version_info[:3]), "protocol": PROTOCOL_VERSION}))
    frames = FdFrames(0)
    try:
        for _ in missing:
            head = frames.read_json(timeout=STALL_S)
            got = frames.read(timeout=STALL_S)
            if head is None or got is None or got[0] != KIND_BYTES or head.get("remote") not in ships:
                raise FrameError("expected a shipped file (a JSON header, then its bytes)")
            store_shipment(workdir, head["remote"], ships[head["remote"]], got[1])
    except (FrameError, TimeoutError, OSError, zipfile.BadZipFile) as e:
        write_all(2, f"snplab bootstrap: {type(e).__name__}: {e}\n".encode())
        sys.exit(2)
    sys.path.insert(0, os.path.join(workdir, spec["package"]))
    from snplab.remote import job_server

    sys.exit(job_server.main(spec["argv"]))
