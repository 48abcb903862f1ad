"""Builds the VMM's test guests with gcc (cached; rebuilt when a source is newer than the ELF)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BUILD = HERE / "build"
INCLUDE = ROOT / "guest-payloads" / "include"

CFLAGS = ["-O2", "-g", "-ffreestanding", "-nostdlib", "-static", "-fno-pic", "-no-pie",
          "-mno-red-zone", "-mgeneral-regs-only", "-fno-stack-protector",
          "-fno-asynchronous-unwind-tables", "-fno-eliminate-unused-debug-types",
          "-Wl,--build-id=none", "-Wl,-z,noexecstack"]


def kvm_usable() -> bool:
    """True if /dev/kvm can be opened and answers KVM_GET_API_VERSION with 12."""
    import fcntl

    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, 0xAE00) == 12
    except OSError:
        return False
    finally:
        os.close(fd)


class GuestBuildError(RuntimeError):
    """gcc failed to build a test guest."""


def build_guest(name: str = "testguest") -> Path:
    """Path to tests/guests/build/<name>.elf, compiled from <name>.c if missing or stale."""
    src = HERE / f"{name}.c"
    ld = HERE / "guest.ld"
    out = BUILD / f"{name}.elf"
    deps = [src, ld, INCLUDE / "snplab_abi.h", Path(__file__)]
    if out.exists() and all(out.stat().st_mtime_ns >= d.stat().st_mtime_ns for d in deps):
        return out
    BUILD.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=BUILD, suffix=".elf.tmp")
    os.close(fd)
    cmd = ["gcc", *CFLAGS, f"-I{INCLUDE}", "-T", str(ld), "-o", tmp, str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        os.unlink(tmp)
        raise GuestBuildError(f"{' '.join(cmd)}\n{r.stderr}")
    os.replace(tmp, out)  # atomic: safe when pytest-xdist workers build concurrently
    return out


if __name__ == "__main__":
    print(build_guest())
