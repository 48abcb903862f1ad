"""Loopback OpenSSH servers for the remote-runner tests (imported by tests/test_remote_*.py).

``sshd`` is a private sshd on 127.0.0.1 (installed with apt-get if missing, as root), with its
own host key, user key and authorized_keys; ``sshd_pair`` is two of them (two "lab hosts").
Both are module-scoped and stopped afterwards. Tests skip with the reason only if sshd cannot be
installed or started here.
"""

from __future__ import annotations

import getpass
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snplab.remote.loopback import LoopbackSshd, LoopbackUnavailable


def start_sshd(root: Path, name: str) -> LoopbackSshd:
    try:
        return LoopbackSshd(root, name=name).start()
    except LoopbackUnavailable as e:
        pytest.skip(f"no loopback OpenSSH server: {e}")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackSshd]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"), "lab0")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sshd_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopbackSshd, LoopbackSshd]]:
    a = start_sshd(tmp_path_factory.mktemp("sshd-a"), "lab-a")
    b = start_sshd(tmp_path_factory.mktemp("sshd-b"), "lab-b")
    yield a, b
    a.stop()
    b.stop()


def inventory_toml(servers: list[LoopbackSshd], workdir: Path, capacity: int | None = 1,
                   **extra: str) -> str:
    """An inventory for loopback servers; each host gets its own work directory under workdir."""
    out = []
    for s in servers:
        lines = [
            "[[host]]",
            f'name = "{s.name}"',
            'host = "127.0.0.1"',
            f"port = {s.port}",
            f'user = "{getpass.getuser()}"',
            f'key_file = "{s.user_key}"',
            f'known_hosts = "{s.known_hosts}"',
            f'workdir = "{workdir / s.name}"',
            f'labels = {{ kernel = "{s.name}" }}',
            # the "remote" host is this machine: its python is ours (with our dependencies)
            f'python = "{sys.executable}"',
        ]
        if capacity is not None:
            lines.append(f"capacity = {capacity}")
        lines += [f'{k} = "{v}"' for k, v in extra.items()]
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def snplab_processes(marker: str) -> list[tuple[int, str]]:
    """(pid, cmdline) of live processes whose command line or working directory contains marker."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            try:
                cwd = os.readlink(d / "cwd")
            except OSError:
                cwd = ""
            state = next((ln for ln in (d / "status").read_text().splitlines() if ln.startswith("State:")), "")
        except OSError:
            continue
        if (marker in cmd or marker in cwd) and "\tZ" not in state:
            found.append((int(d.name), cmd.strip()))
    return found


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll predicate until it holds or timeout seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def job_servers(marker: str) -> list[int]:
    """Pids of live job servers whose command line or working directory contains marker."""
    return [pid for pid, c in snplab_processes(marker) if "snplab-bootstrap" in c]
