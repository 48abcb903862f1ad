"""The controller's end of one job server on a lab host (``snplab.remote.job_server``).

``JobServerConn.start`` opens one SSH exec channel running the bootstrap (``python3 -c STUB``),
sends the bootstrap its source, ships what the host's cache is missing, and waits for the
server's ``hello``. ``request`` then sends frames and waits, with a deadline, for the answer.
Any answer that is not a well-formed frame, an ``error`` answer, or the channel ending ends the
connection with a one-line ``RemoteError``; on a deadline the server's process group is killed.
A connection is used by one thread at a time (``RemoteHost`` keeps a pool).
"""

from __future__ import annotations

import json
import select
import shlex
import time
from collections.abc import Sequence
from typing import Any

import paramiko

from snplab.remote import protocol
from snplab.remote.artifact import Shipment
from snplab.remote.errors import CommandTimeout, ConnectionLost, RemoteJobFailed
from snplab.remote.transport import PID_MARK, SshTransport, last_line, parse_pid

STDERR_TAIL = 8192  # bytes of the server's stderr kept for error messages
CLOSE_WAIT_S = 5.0  # how long close() waits for the server to exit after EOF


class JobServerConn:
    """One running job server, reached over one SSH channel."""

    def __init__(self, transport: SshTransport, chan: paramiko.Channel, label: str) -> None:
        self.transport = transport
        self.chan = chan
        self.label = label
        self.decoder = protocol.FrameDecoder()
        self.stderr = bytearray()  # its tail, without the shell's pid line
        self._shell_pid: int | None = None
        self.hello: dict[str, Any] = {}
        self.workdir = ""
        self.shipped: list[str] = []  # what start() shipped (remotes)

    @property
    def pid(self) -> int | None:
        """The server's pid (= its process group): from hello, else the shell's first line."""
        return self.hello.get("pid") or self._shell_pid

    @classmethod
    def start(cls, transport: SshTransport, workdir: str, python: str, ships: Sequence[Shipment],
              package: Shipment, argv: Sequence[str], timeout: float) -> JobServerConn:
        """Start a job server in workdir (created if needed), shipping what is missing first."""
        q = shlex.quote
        source = protocol.bootstrap_source()
        spec = json.dumps({"ships": [[s.remote, s.unpack] for s in ships], "package": package.remote,
                           "argv": list(argv)})
        # the shell's pid first (stderr): exec keeps it, so a start that hangs can be killed too
        cmd = (f"echo {PID_MARK.decode()}$$ >&2; mkdir -p {q(workdir)} && cd {q(workdir)} && "
               f"exec {q(python)} -c {q(protocol.STUB)} {len(source)} {q(spec)}")
        conn = cls(transport, transport.open_channel(cmd), "job server start")
        deadline = time.monotonic() + timeout
        try:
            conn._send(source, deadline)
            need = conn._recv(deadline, "need")
            conn.workdir = str(need.get("workdir") or workdir)
            by_remote = {s.remote: s for s in ships}
            for remote in need.get("missing") or ():
                s = by_remote[remote]
                conn._send(protocol.encode({"type": "file", "remote": s.remote})
                           + protocol.encode_bytes(s.artifact.data), deadline)
                conn.shipped.append(s.remote)
            conn.hello = conn._recv(deadline, "hello")
        except CommandTimeout:
            pid = conn.pid
            conn.kill()
            raise CommandTimeout(f"{transport.where}: job server start timed out after {timeout:g} s"
                                 + (f", remote process group {pid} killed" if pid else "")) from None
        except BaseException:
            conn.close(wait=False)
            raise
        conn.label = f"job server {conn.pid}"
        return conn

    # -- frames ----------------------------------------------------------------------------------

    def _send(self, data: bytes, deadline: float) -> None:
        """Send bytes, bounded by deadline (a server that stops reading cannot block us)."""
        try:
            self.chan.settimeout(max(0.1, deadline - time.monotonic()))
            self.chan.sendall(data)
            self.chan.settimeout(None)
        except TimeoutError:
            raise CommandTimeout(f"{self.transport.where}: {self.label}: not reading its input") from None
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise ConnectionLost(f"{self.transport.where}: {self.label}: channel closed while "
                                 f"sending ({e or type(e).__name__}){self._why()}") from e

    def _recv(self, deadline: float, want: str) -> dict[str, Any]:
        """The next JSON answer, which must be of type ``want``; bounded by deadline."""
        while True:
            try:
                got = self.decoder.next()
                if got is not None:
                    ans = protocol.parse_json(*got)
                    break
                if self._pump(deadline):
                    continue
            except protocol.FrameError as e:
                self.close(wait=False)
                raise RemoteJobFailed(f"{self.transport.where}: {self.label} sent a bad frame: {e}") from None
            if self.chan.eof_received and not self.chan.recv_ready():
                status = self._exit_status(1.0)
                self.close(wait=False)
                raise RemoteJobFailed(f"{self.transport.where}: {self.label} exited "
                                      f"{status if status is not None else '(no status)'} before "
                                      f"answering {want!r}{self._why()}")
            if time.monotonic() >= deadline:
                raise CommandTimeout(f"{self.transport.where}: {self.label}: no {want!r} answer in time")
            t = self.chan.get_transport()
            if t is None or not t.is_active():
                self.close(wait=False)
                raise ConnectionLost(f"{self.transport.where}: connection lost waiting for {want!r}")
        if ans.get("type") == "error":
            self.close(wait=False)
            raise RemoteJobFailed(f"{self.transport.where}: {self.label} refused the request: "
                                  f"{ans.get('error')}")
        if ans.get("type") != want:
            self.close(wait=False)
            raise RemoteJobFailed(f"{self.transport.where}: {self.label} answered "
                                  f"{ans.get('type')!r}, expected {want!r}")
        return ans

    def _pump(self, deadline: float) -> bool:
        """Wait (at most until deadline) for bytes; True if any stdout bytes were fed."""
        left = max(0.0, min(deadline - time.monotonic(), 0.5))
        if not self.chan.recv_ready():
            select.select([self.chan], [], [], left)
        self._drain_stderr()
        fed = False
        while self.chan.recv_ready():
            data = self.chan.recv(1 << 16)
            if not data:
                break
            self.decoder.feed(data)
            fed = True
        return fed

    def _exit_status(self, wait_s: float) -> int | None:
        end = time.monotonic() + wait_s
        while not self.chan.exit_status_ready() and time.monotonic() < end:
            time.sleep(0.01)
        return self.chan.recv_exit_status() if self.chan.exit_status_ready() else None

    def _drain_stderr(self) -> None:
        while self.chan.recv_stderr_ready():
            self.stderr += self.chan.recv_stderr(1 << 16)
            if self._shell_pid is None:
                pid, rest = parse_pid(self.stderr)
                if pid is not None:
                    self._shell_pid, self.stderr = pid, bytearray(rest)
            if self._shell_pid is not None:
                del self.stderr[:-STDERR_TAIL]

    def _why(self) -> str:
        self._drain_stderr()
        return f": {last_line(bytes(self.stderr))}" if self.stderr.strip() else ""

    # -- requests --------------------------------------------------------------------------------

    def request(self, obj: dict[str, Any], want: str, timeout: float, label: str,
                data: bytes | None = None) -> dict[str, Any]:
        """Send a request (and a bytes frame after it) and wait up to timeout for its answer;
        on timeout the server's process group is killed and CommandTimeout raised."""
        deadline = time.monotonic() + timeout
        try:
            self._send(protocol.encode(obj) + (protocol.encode_bytes(data) if data is not None else b""),
                       deadline)
            return self._recv(deadline, want)
        except CommandTimeout:
            pid = self.pid
            self.kill()
            raise CommandTimeout(f"{self.transport.where}: {label} timed out after {timeout:g} s, "
                                 f"remote process group {pid} killed") from None

    def ship(self, s: Shipment, timeout: float) -> None:
        self.request({"type": "ship", "remote": s.remote, "unpack": s.unpack}, "shipped", timeout,
                     f"shipping {s.remote}", data=s.artifact.data)

    @property
    def alive(self) -> bool:
        return not (self.chan.closed or self.chan.eof_received or self.chan.exit_status_ready())

    def kill(self) -> None:
        """SIGKILL the server's process group (over another channel) and close."""
        self._drain_stderr()  # the shell's pid line may be all we have
        if self.pid is not None:
            self.transport.kill_group(int(self.pid))
        self.close(wait=False)

    def close(self, wait: bool = True) -> None:
        """Send EOF (the server exits on it) and, with ``wait``, wait briefly for it to go."""
        try:
            if not self.chan.closed:
                self.chan.shutdown_write()
                if wait:
                    self._exit_status(CLOSE_WAIT_S)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            self.chan.close()

