"""A private OpenSSH server on 127.0.0.1, for CI and benchmarks of the SSH path.

It plays a lab host on this machine: own generated host key, own user key and authorized_keys,
public-key authentication only, no PAM, its own config (``sshd -D -e -f config``) on a free port.
Nothing here is used on a real lab run.
"""

from __future__ import annotations

import fcntl
import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from snplab.remote.inventory import Endpoint

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")


class LoopbackUnavailable(Exception):
    """OpenSSH's sshd is not installed and cannot be installed here (reason in the message)."""


def find_sshd() -> str | None:
    """Absolute path of sshd (it must be started by absolute path to re-exec itself)."""
    for p in SSHD_CANDIDATES:
        if os.access(p, os.X_OK):
            return p
    found = shutil.which("sshd")
    return os.path.abspath(found) if found else None


# xdist workers install one at a time: they flock a directory that already exists (dpkg's
# database directory, else this package's), so no lock file is left behind anywhere.
INSTALL_LOCK_DIRS = (Path("/var/lib/dpkg"), Path(__file__).resolve().parent)


def ensure_sshd(install: bool = True, timeout: float = 600.0) -> str:
    """Return sshd's path, installing Debian's openssh-server with apt-get first if missing."""
    sshd = find_sshd()
    if sshd:
        return sshd
    lock_dir = next(d for d in INSTALL_LOCK_DIRS if d.is_dir() or d == INSTALL_LOCK_DIRS[-1])
    fd = os.open(lock_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return find_sshd() or _install_sshd(install, timeout)
    finally:
        os.close(fd)


def _install_sshd(install: bool, timeout: float) -> str:
    if not install:
        raise LoopbackUnavailable("sshd not installed (openssh-server) and installing was not allowed")
    if os.geteuid() != 0:
        raise LoopbackUnavailable("sshd not installed and not root: cannot apt-get install openssh-server")
    if shutil.which("apt-get") is None:
        raise LoopbackUnavailable("sshd not installed and no apt-get to install openssh-server")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Keep the package's maintainer scripts from starting a system-wide sshd on port 22.
    policy = Path("/usr/sbin/policy-rc.d")
    placed_policy = not policy.exists()
    try:
        if placed_policy:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "openssh-server"]):
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
            if r.returncode != 0:
                tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
                raise LoopbackUnavailable(f"{' '.join(cmd)} failed ({r.returncode}): {tail[0]}")
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LoopbackUnavailable(f"installing openssh-server failed: {e}") from e
    finally:
        if placed_policy:
            policy.unlink(missing_ok=True)
    sshd = find_sshd()
    if not sshd:
        raise LoopbackUnavailable("openssh-server installed but no sshd binary found")
    return sshd


def write_ed25519_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """Generate an ed25519 key; write the private key (OpenSSH format, 0600) and ``path.pub``."""
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    path.chmod(0o600)
    path.with_name(path.name + ".pub").write_text(public_line(key) + "\n")
    return key


def public_line(key: ed25519.Ed25519PrivateKey) -> str:
    """``ssh-ed25519 AAAA...`` for authorized_keys / known_hosts."""
    return key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LoopbackSshd:
    """One sshd on 127.0.0.1 with its own keys, all files under ``root``.

    ``start()`` writes ``host_key``, ``user_key``, ``authorized_keys``, ``known_hosts`` (with the
    host key recorded, so connections verify normally) and ``sshd_config``; ``stop()`` kills it.
    """

    root: Path
    name: str = "loopback"
    port: int = 0
    sshd_path: str = ""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host_key(self) -> Path:
        return self.root / "ssh_host_ed25519_key"

    @property
    def user_key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def log_path(self) -> Path:
        return self.root / "sshd.log"

    def endpoint(self, **overrides: object) -> Endpoint:
        """How to reach this server (override e.g. key_file/known_hosts to test refusals)."""
        fields: dict[str, object] = dict(name=self.name, host="127.0.0.1", port=self.port,
                                         user=getpass.getuser(), key_file=self.user_key,
                                         known_hosts=self.known_hosts)
        fields.update(overrides)
        return Endpoint(**fields)  # type: ignore[arg-type]

    def host_public_line(self) -> str:
        return self.host_key.with_name(self.host_key.name + ".pub").read_text().strip()

    def start(self, timeout: float = 10.0) -> LoopbackSshd:
        self.root.mkdir(parents=True, exist_ok=True)
        self.sshd_path = self.sshd_path or ensure_sshd()
        if not self.host_key.exists():
            write_ed25519_key(self.host_key)
        if not self.user_key.exists():
            write_ed25519_key(self.user_key)
        (self.root / "authorized_keys").write_text(
            self.user_key.with_name(self.user_key.name + ".pub").read_text())
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # privilege separation dir
        for attempt in range(5):
            self.port = self.port or free_port()
            self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {self.host_public_line()}\n")
            config = self.root / "sshd_config"
            config.write_text(_CONFIG.format(port=self.port, root=self.root))
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen([self.sshd_path, "-D", "-e", "-f", str(config)],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            if self._wait_ready(timeout):
                return self
            self.stop()
            self.port = 0
        raise LoopbackUnavailable(f"sshd did not start on loopback: {self.log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                    if s.recv(8).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"

    def stop(self) -> None:
        """Kill the listener; sessions it forked end when their clients disconnect."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> LoopbackSshd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {root}/ssh_host_ed25519_key
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
MaxStartups 64:30:128
MaxSessions 64
ClientAliveInterval 5
ClientAliveCountMax 3
LogLevel ERROR
Subsystem sftp internal-sftp
"""
