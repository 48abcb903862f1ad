"""The guest payload build: ``ensure_built()`` returns the payload ELF, running
``make -C guest-payloads`` first when any of its sources is newer than the ELF.

Safe when several processes (pytest-xdist workers, parallel scenario runs) call it at once: the
check-and-build runs under an exclusive ``flock`` on ``guest-payloads/build/.build.lock``, and the
Makefile links to a temporary name, so no caller ever sees a half-written ELF.

Also builds and drives the host-side harness (``snplab-host-harness``), which compiles the
payload's portable C files (AES-GCM, guest messages, certificate table walker, step interpreter)
for the host with ASan/UBSan, for the project's own tests.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

PAYLOAD_DIR = Path(__file__).resolve().parent.parent / "guest-payloads"

GUEST_ELF = "snplab-guest"
HOST_HARNESS = "snplab-host-harness"
GCM_BENCH = "gcm-bench"

_GUEST_SOURCES = ("Makefile", "link.ld", "include/*.h", "src/*.c", "src/*.h", "src/*.S",
                  "tools/*.c")
_PORTABLE_SOURCES = ("Makefile", "include/*.h", "src/*.h", "src/steps.c", "src/msg.c",
                     "src/certs.c", "src/aes_gcm.c", "tools/*.c")


@dataclass(frozen=True)
class BuildTarget:
    make_target: str
    output: str  # relative to guest-payloads/build
    sources: tuple[str, ...]  # globs relative to guest-payloads


TARGETS: dict[str, BuildTarget] = {
    GUEST_ELF: BuildTarget("all", "snplab-guest.elf", _GUEST_SOURCES),
    HOST_HARNESS: BuildTarget("host", "host/snplab-host-harness",
                              _PORTABLE_SOURCES + ("host/harness.c", "host/fake_hv.c",
                                                   "host/harness.h")),
    GCM_BENCH: BuildTarget("bench", "host/gcm-bench",
                           ("Makefile", "src/aes_gcm.c", "src/aes_gcm.h", "tools/*.c",
                            "host/gcm_bench.c")),
}

_MAKE_TIMEOUT_S = 300
_ERROR_TAIL_LINES = 15


class PayloadBuildError(RuntimeError):
    """The payload could not be built (unknown target, make/gcc missing or failing)."""


def source_files(name: str = GUEST_ELF, payload_dir: Path | None = None) -> list[Path]:
    """The files whose modification makes target `name` stale."""
    root = payload_dir or PAYLOAD_DIR
    target = _target(name)
    return sorted({p for pattern in target.sources for p in root.glob(pattern) if p.is_file()})


def output_path(name: str = GUEST_ELF, payload_dir: Path | None = None) -> Path:
    return (payload_dir or PAYLOAD_DIR) / "build" / _target(name).output


def is_stale(name: str = GUEST_ELF, payload_dir: Path | None = None) -> bool:
    out = output_path(name, payload_dir)
    try:
        built = out.stat().st_mtime_ns
    except FileNotFoundError:
        return True
    return any(src.stat().st_mtime_ns > built for src in source_files(name, payload_dir))


def ensure_built(name: str = GUEST_ELF, payload_dir: Path | None = None) -> Path:
    """Path of the built target `name` (default: the guest ELF), building it if stale."""
    root = payload_dir or PAYLOAD_DIR
    target = _target(name)
    out = output_path(name, root)
    if not is_stale(name, root):
        return out
    build_dir = root / "build"
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".build.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if is_stale(name, root):  # another process may have built it meanwhile
                _run_make(root, target.make_target)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if not out.is_file():
        raise PayloadBuildError(f"make -C {root} {target.make_target} succeeded but {out} "
                                "is missing")
    return out


def run_harness(commands: list[str] | str, payload_dir: Path | None = None,
                timeout: float = 120.0) -> list[str]:
    """Feed command lines to the host harness (see guest-payloads/host/harness.c) and return its
    output lines. Raises PayloadBuildError if it cannot be built, RuntimeError if it fails (an
    ASan/UBSan report, for instance)."""
    exe = ensure_built(HOST_HARNESS, payload_dir)
    text = commands if isinstance(commands, str) else "\n".join(commands) + "\n"
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    proc = subprocess.run([str(exe)], input=text, capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-30:])
        raise RuntimeError(f"host harness exited with {proc.returncode}:\n{tail}")
    return proc.stdout.splitlines()


def _target(name: str) -> BuildTarget:
    try:
        return TARGETS[name]
    except KeyError:
        raise PayloadBuildError(f"unknown payload target {name!r} "
                                f"(known: {', '.join(sorted(TARGETS))})") from None


def _run_make(root: Path, make_target: str) -> None:
    cmd = ["make", "-C", str(root), make_target]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_MAKE_TIMEOUT_S,
                              check=False)
    except FileNotFoundError:
        raise PayloadBuildError("cannot build the guest payload: 'make' not found "
                                "(install make and gcc)") from None
    except subprocess.TimeoutExpired:
        raise PayloadBuildError(f"{' '.join(cmd)} timed out after {_MAKE_TIMEOUT_S}s") from None
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        tail = "\n".join(lines[-_ERROR_TAIL_LINES:])
        raise PayloadBuildError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
