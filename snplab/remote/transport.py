"""SSH transport to one lab host (paramiko): verified host keys, bounded timeouts, killable commands.

Host keys are checked against a known_hosts file (OpenSSH format, ``[host]:port`` entries for
non-22 ports). An unknown key is refused unless trust-on-first-use was asked for explicitly; a
changed key is always refused. Every command has a deadline; when it passes, or the caller gives
up, the command's remote process group is killed (OpenSSH's session child calls ``setsid()``
before it execs the login shell, so the shell's pid is the group id of everything it starts).
"""

from __future__ import annotations

import logging
import select
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from snplab.remote.errors import (
    AuthFailed,
    CommandTimeout,
    ConnectionLost,
    HostKeyChanged,
    HostKeyUnknown,
    HostUnreachable,
    RemoteError,
)
from snplab.remote.inventory import Endpoint

log = logging.getLogger(__name__)

PID_MARK = b"__snplab_pid="  # first stderr line of every command: the remote shell's pid


@dataclass(frozen=True)
class SshOptions:
    """Connection policy shared by all hosts of a run."""

    connect_timeout: float = 10.0  # TCP connect, banner, key exchange and auth, each
    command_timeout: float = 120.0  # default deadline of one command
    keepalive_s: int = 5  # SSH keep-alive interval (also TCP keep-alive idle time)
    tofu: bool = False  # trust and record unknown host keys (never changed ones)
    known_hosts: Path | None = None  # overrides every endpoint's known_hosts


@dataclass(frozen=True)
class CommandResult:
    """What one remote command produced."""

    exit_status: int
    stdout: bytes
    stderr: bytes  # without the pid line
    remote_pid: int | None
    elapsed_s: float


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint of a public key."""
    return key.fingerprint


def known_hosts_name(endpoint: Endpoint) -> str:
    """The name OpenSSH records the host under: ``host`` for port 22, else ``[host]:port``."""
    return endpoint.host if endpoint.port == 22 else f"[{endpoint.host}]:{endpoint.port}"


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    def __init__(self, endpoint: Endpoint, known_hosts: Path) -> None:
        self.endpoint = endpoint
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyUnknown(
            f"ssh {self.endpoint.name} ({self.endpoint.address}): host key unknown: "
            f"{key.get_name()} {fingerprint(key)} is not in {self.known_hosts}; "
            f"refusing (verify it, add it with ssh-keyscan, or pass --ssh-tofu to trust on first use)"
        )


class _TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Records an unknown host's key in known_hosts (only ever reached for unknown hosts)."""

    def __init__(self, endpoint: Endpoint, known_hosts: Path) -> None:
        self.endpoint = endpoint
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _KNOWN_HOSTS_LOCK, open(self.known_hosts, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        log.warning("ssh %s: TOFU: trusted and recorded %s %s in %s",
                    self.endpoint.name, key.get_name(), fingerprint(key), self.known_hosts)


_KNOWN_HOSTS_LOCK = threading.Lock()


def _tcp_socket(endpoint: Endpoint, timeout: float, keepalive_s: int) -> socket.socket:
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    except TimeoutError as e:
        raise HostUnreachable(f"ssh {endpoint.name} ({endpoint.address}): connect timed out after {timeout:g} s") from e
    except OSError as e:
        raise HostUnreachable(
            f"ssh {endpoint.name} ({endpoint.address}): cannot connect: {e.strerror or e}"
        ) from e
    # TCP keep-alive too, so a silently dead peer is noticed even between SSH keep-alives.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, val in (("TCP_KEEPIDLE", keepalive_s), ("TCP_KEEPINTVL", keepalive_s), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), max(1, val))
    return sock


def open_client(endpoint: Endpoint, options: SshOptions, sock: socket.socket | paramiko.Channel | None = None) -> paramiko.SSHClient:
    """Connect and authenticate to endpoint; raises a RemoteError subclass with a one-line reason."""
    known_hosts = options.known_hosts or endpoint.known_hosts or Path("~/.ssh/known_hosts").expanduser()
    where = f"ssh {endpoint.name} ({endpoint.address})"
    if endpoint.key_file is not None and not endpoint.key_file.is_file():
        raise AuthFailed(f"{where}: user key file {endpoint.key_file} does not exist")
    client = paramiko.SSHClient()
    if known_hosts.is_file():
        try:
            client.load_host_keys(str(known_hosts))
        except (OSError, paramiko.SSHException) as e:
            raise HostKeyUnknown(f"{where}: cannot read known_hosts {known_hosts}: {e}") from e
    policy_cls = _TrustOnFirstUse if options.tofu else _RefuseUnknown
    client.set_missing_host_key_policy(policy_cls(endpoint, known_hosts))
    if sock is None:
        sock = _tcp_socket(endpoint, options.connect_timeout, options.keepalive_s)
    try:
        client.connect(
            endpoint.host,
            port=endpoint.port,
            username=endpoint.user,
            key_filename=str(endpoint.key_file) if endpoint.key_file else None,
            look_for_keys=endpoint.key_file is None,
            allow_agent=endpoint.key_file is None,
            sock=sock,
            timeout=options.connect_timeout,
            banner_timeout=options.connect_timeout,
            auth_timeout=options.connect_timeout,
            channel_timeout=options.connect_timeout,
        )
    except RemoteError:
        client.close()
        raise
    except paramiko.BadHostKeyException as e:
        client.close()
        raise HostKeyChanged(
            f"{where}: host key CHANGED: {known_hosts} has {e.expected_key.get_name()} "
            f"{fingerprint(e.expected_key)}, host sent {e.key.get_name()} {fingerprint(e.key)}; "
            f"refusing (reinstalled host or man-in-the-middle: fix known_hosts by hand)"
        ) from e
    except paramiko.AuthenticationException as e:
        client.close()
        key = endpoint.key_file or "the default keys/agent"
        raise AuthFailed(f"{where}: authentication failed: user {endpoint.user!r} with key {key} "
                         f"refused by the host ({e})") from e
    except (paramiko.SSHException, OSError, EOFError) as e:
        client.close()
        raise HostUnreachable(f"{where}: SSH handshake failed: {e or type(e).__name__}") from e
    transport = client.get_transport()
    assert transport is not None
    transport.set_keepalive(options.keepalive_s)
    return client


class SshTransport:
    """One authenticated SSH connection to a lab host (optionally through a jump host).

    Thread-safe: paramiko multiplexes channels; ``run`` may be called from several threads.
    """

    def __init__(self, endpoint: Endpoint, options: SshOptions = SshOptions(), jump: Endpoint | None = None) -> None:
        self.endpoint = endpoint
        self.options = options
        self.jump = jump
        self._client: paramiko.SSHClient | None = None
        self._jump_client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        return f"ssh {self.endpoint.name} ({self.endpoint.address})"

    def connect(self) -> None:
        """Open the connection now (``run`` also connects lazily)."""
        self._transport()

    def _transport(self) -> paramiko.Transport:
        with self._lock:
            if self._client is not None:
                t = self._client.get_transport()
                if t is not None and t.is_active():
                    return t
                self._close_locked()
            sock = None
            if self.jump is not None:
                self._jump_client = open_client(self.jump, self.options)
                jt = self._jump_client.get_transport()
                assert jt is not None
                try:
                    sock = jt.open_channel(
                        "direct-tcpip", (self.endpoint.host, self.endpoint.port), ("127.0.0.1", 0),
                        timeout=self.options.connect_timeout,
                    )
                except (paramiko.SSHException, OSError) as e:
                    self._close_locked()
                    raise HostUnreachable(
                        f"{self.where}: jump host {self.jump.name} cannot reach it: {e or type(e).__name__}"
                    ) from e
            try:
                self._client = open_client(self.endpoint, self.options, sock=sock)
            except RemoteError:
                self._close_locked()
                raise
            t = self._client.get_transport()
            assert t is not None
            return t

    def run(self, command: str, stdin: bytes = b"", timeout: float | None = None,
            keep_stdin_open: bool = False, label: str | None = None) -> CommandResult:
        """Run a shell command on the host; returns its exit status and output.

        ``keep_stdin_open``: do not send EOF after stdin, so a job that watches its stdin lives
        exactly as long as this call. On timeout the remote process group is killed and
        CommandTimeout raised; on a dropped connection ConnectionLost is raised. ``label`` names
        the command in error messages (default: the command itself, shortened).
        """
        label = label or _short(command)
        timeout = self.options.command_timeout if timeout is None else timeout
        t = self._transport()
        start = time.monotonic()
        deadline = start + timeout
        try:
            chan = t.open_session(timeout=self.options.connect_timeout)
            chan.exec_command(f"echo {PID_MARK.decode()}$$ >&2; {command}")
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise ConnectionLost(f"{self.where}: cannot open a session: {e or type(e).__name__}") from e
        out, err = bytearray(), bytearray()
        pid: int | None = None
        try:
            if stdin:
                chan.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    chan.sendall(stdin)
                except TimeoutError as e:
                    raise self._timed_out(chan, label, timeout, pid, err) from e
                chan.settimeout(None)
            if not keep_stdin_open:
                chan.shutdown_write()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timed_out(chan, label, timeout, pid, err)
                readable, _, _ = select.select([chan], [], [], min(remaining, 0.5))
                got = len(out) + len(err)
                while chan.recv_ready():
                    out += chan.recv(1 << 16)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(1 << 16)
                if readable and len(out) + len(err) == got:
                    time.sleep(0.005)  # EOF seen, exit status not yet: do not spin
                if pid is None:
                    pid = parse_pid(err)[0]
                if chan.exit_status_ready() and chan.eof_received:
                    while chan.recv_ready():
                        out += chan.recv(1 << 16)
                    while chan.recv_stderr_ready():
                        err += chan.recv_stderr(1 << 16)
                    break
                if not t.is_active() or chan.closed and not chan.exit_status_ready():
                    raise ConnectionLost(
                        f"{self.where}: connection lost after {time.monotonic() - start:.1f} s running {label}"
                    )
            status = chan.recv_exit_status()
        finally:
            chan.close()
        pid, stderr = parse_pid(err)
        return CommandResult(status, bytes(out), stderr, pid, time.monotonic() - start)

    def open_channel(self, command: str) -> paramiko.Channel:
        """Start a long-lived command on the host; the caller owns the channel (its stdin,
        stdout and stderr are the command's)."""
        t = self._transport()
        try:
            chan = t.open_session(timeout=self.options.connect_timeout)
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise ConnectionLost(f"{self.where}: cannot open a session: {e or type(e).__name__}") from e
        return chan

    def _timed_out(self, chan: paramiko.Channel, label: str, timeout: float, pid: int | None,
                   err: bytearray) -> CommandTimeout:
        # The pid line is the command's first output; give a late starter a moment to send it.
        grace = time.monotonic() + min(2.0, self.options.connect_timeout)
        while pid is None and time.monotonic() < grace and not chan.closed:
            select.select([chan], [], [], 0.1)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(1 << 16)
            while chan.recv_ready():
                chan.recv(1 << 16)
            pid = parse_pid(err)[0]
        if pid is not None:
            self.kill_group(pid)
        chan.close()  # a guest job also sees EOF on its stdin and exits by itself
        what = f"remote process group {pid} killed" if pid is not None else "channel closed"
        return CommandTimeout(f"{self.where}: {label} timed out after {timeout:g} s, {what}")

    def kill_group(self, pid: int) -> None:
        """Best effort: SIGKILL the remote process group led by pid."""
        try:
            t = self._transport()
            chan = t.open_session(timeout=self.options.connect_timeout)
            chan.settimeout(self.options.connect_timeout)
            chan.exec_command(f"kill -KILL -- -{pid} 2>/dev/null; kill -KILL {pid} 2>/dev/null; true")
            deadline = time.monotonic() + self.options.connect_timeout
            while not chan.exit_status_ready() and time.monotonic() < deadline:
                time.sleep(0.01)
            chan.close()
        except (RemoteError, paramiko.SSHException, OSError, EOFError) as e:
            log.warning("%s: could not kill remote process group %d: %s", self.where, pid, e)

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        for c in (self._client, self._jump_client):
            if c is not None:
                c.close()
        self._client = self._jump_client = None

    def __enter__(self) -> SshTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_pid(err: bytes | bytearray) -> tuple[int | None, bytes]:
    """Split the pid line off stderr; (None, err) while it has not arrived."""
    if not err.startswith(PID_MARK):
        return None, bytes(err)
    line, nl, rest = bytes(err).partition(b"\n")
    if not nl:
        return None, bytes(err)
    try:
        return int(line[len(PID_MARK):]), rest
    except ValueError:
        return None, bytes(err)


def _short(command: str, limit: int = 80) -> str:
    return command if len(command) <= limit else command[: limit - 3] + "..."


def last_line(data: bytes) -> str:
    lines = [ln for ln in data.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "(no output)"
