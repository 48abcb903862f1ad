#!/usr/bin/env python3
"""Boot→halt time of the VMM's test guest, next to the bare ioctl sequence in C and in Python.

    python3 bench/boot.py [--boots 200] [--json]

VMM: `Guest(GuestConfig(elf)).build(); run(); close()` — ELF/DWARF cached after the first boot,
params filled from DWARF, launch log, one thread per vCPU, watchdog, event log, result snapshot.
Floor: the same guest image written with raw `fcntl.ioctl` calls and no VMM logic: open
/dev/kvm, KVM_CREATE_VM, mmap + SET_USER_MEMORY_REGION, copy the pre-built image, CREATE_VCPU,
mmap kvm_run, SET_CPUID2 (cached), SET_SREGS, SET_REGS, KVM_RUN until HLT, close. Both are
interleaved boot by boot so that machine noise hits them alike.

C floor: the same image, registers and ioctl sequence in C (bench/floor_boot.c, built here with
gcc into a temporary directory that is removed afterwards). It times each boot itself
(CLOCK_MONOTONIC around open … close) and boots once per line on its stdin, so C, Python-floor
and VMM boots alternate. The figure that matters is VMM / C floor (goal ≤ 1.5×).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import mmap
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "guests"))

from guest_build import build_guest  # noqa: E402  (tests/guests/guest_build.py)

from snplab.vmm import memory_map as mm  # noqa: E402
from snplab.vmm import uapi  # noqa: E402
from snplab.vmm.guest import Guest, GuestConfig, _sregs_template  # noqa: E402
from snplab.vmm.kvm import Kvm  # noqa: E402


class Floor:
    """The bare ioctl sequence, with everything that can be precomputed precomputed."""

    def __init__(self, elf: Path) -> None:
        g = Guest(GuestConfig(elf=elf))
        g.prepare()
        assert g.memory is not None
        g.memory.write(mm.PML4_GPA, mm.page_tables(0))
        g.memory.write(mm.GDT_GPA, mm.gdt_page())
        # The image: every non-zero page the VMM would have written.
        self.image = []
        for gpa in range(0, mm.PAYLOAD_END, 4096):
            page = g.memory.read(gpa, 4096)
            if any(page):
                self.image.append((gpa, page))
        self.entry = g.elf.entry
        self.params_gpa = g.params.gpa if g.params is not None else 0
        g.close()
        with Kvm() as kvm:
            self.cpuid = kvm.supported_cpuid()
            self.run_size = kvm.vcpu_mmap_size()
        self.sregs = uapi.kvm_sregs.from_buffer_copy(_sregs_template())
        self.sregs.apic_base = mm.APIC_BASE_DEFAULT | mm.APIC_BASE_ENABLE | mm.APIC_BASE_BSP
        self.regs = uapi.kvm_regs(rip=self.entry, rsp=mm.stack_top(0), rdi=0,
                                  rsi=self.params_gpa, rflags=2)
        self.ram = mm.DEFAULT_RAM_SIZE

    def boot(self) -> None:
        import ctypes as C

        kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        vm = fcntl.ioctl(kvm, uapi.KVM_CREATE_VM, 0)
        mem = mmap.mmap(-1, self.ram, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        obj = C.c_char.from_buffer(mem)
        region = uapi.kvm_userspace_memory_region(0, 0, 0, self.ram, C.addressof(obj))
        del obj
        fcntl.ioctl(vm, uapi.KVM_SET_USER_MEMORY_REGION, region)
        for gpa, page in self.image:
            mem[gpa:gpa + 4096] = page
        vcpu = fcntl.ioctl(vm, uapi.KVM_CREATE_VCPU, 0)
        runmap = mmap.mmap(vcpu, self.run_size, mmap.MAP_SHARED,
                           mmap.PROT_READ | mmap.PROT_WRITE)
        fcntl.ioctl(vcpu, uapi.KVM_SET_CPUID2, self.cpuid, True)
        fcntl.ioctl(vcpu, uapi.KVM_SET_SREGS, self.sregs, True)
        fcntl.ioctl(vcpu, uapi.KVM_SET_REGS, self.regs, True)
        while True:
            fcntl.ioctl(vcpu, uapi.KVM_RUN, 0)
            reason = int.from_bytes(runmap[8:12], "little")
            if reason == uapi.KVM_EXIT_HLT:
                break
            raise RuntimeError(f"floor: unexpected exit {reason}")
        runmap.close()
        os.close(vcpu)
        os.close(vm)
        mem.close()
        os.close(kvm)


class CFloor:
    """bench/floor_boot.c, built with gcc in ``build_dir`` and fed the Floor's image."""

    SOURCE = Path(__file__).resolve().parent / "floor_boot.c"

    def __init__(self, floor: Floor, build_dir: Path) -> None:
        gcc = shutil.which("gcc") or shutil.which("cc")
        if gcc is None:
            raise RuntimeError("no C compiler (gcc) for the C floor")
        exe = build_dir / "floor_boot"
        subprocess.run([gcc, "-O2", "-Wall", "-Wextra", "-o", str(exe), str(self.SOURCE)],
                       check=True, capture_output=True, text=True)
        image = build_dir / "image.bin"
        sregs, regs = bytes(floor.sregs), bytes(floor.regs)
        with open(image, "wb") as f:
            f.write(struct.pack("<4Q", floor.ram, len(floor.image), len(sregs), len(regs)))
            f.write(sregs + regs)
            for gpa, page in floor.image:
                f.write(struct.pack("<Q", gpa) + page)
        self.proc = subprocess.Popen([str(exe), str(image)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     bufsize=1)

    def boot(self) -> float:
        """One boot; its own time in seconds."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("b\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"C floor failed: {err.strip() or 'no output'}")
        return int(line) / 1e9

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


def vmm_boot(elf: Path) -> None:
    with Guest(GuestConfig(elf=elf)) as g:
        g.build()
        r = g.run()
        if r.status != "ok":
            raise RuntimeError(f"vmm: {r.status}: {r.error}")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boots", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("boot.py: /dev/kvm is not usable", file=sys.stderr)
        return 2
    elf = build_guest()
    floor = Floor(elf)
    with tempfile.TemporaryDirectory(prefix="snplab-bench-boot-") as build:
        cfloor = CFloor(floor, Path(build))
        try:
            for _ in range(10):  # warm-up: ELF/DWARF caches, CPUID, page cache
                vmm_boot(elf)
                floor.boot()
                cfloor.boot()
            t_vmm: list[float] = []
            t_floor: list[float] = []
            t_c: list[float] = []
            for _ in range(args.boots):  # C, Python floor, VMM, C, ...: drift hits all alike
                t_c.append(cfloor.boot())
                t = time.perf_counter()
                floor.boot()
                t_floor.append(time.perf_counter() - t)
                t = time.perf_counter()
                vmm_boot(elf)
                t_vmm.append(time.perf_counter() - t)
        finally:
            cfloor.close()
    out = {
        "boots": args.boots,
        "vmm_median_ms": statistics.median(t_vmm) * 1e3, "vmm_p95_ms": pct(t_vmm, 95) * 1e3,
        "c_floor_median_ms": statistics.median(t_c) * 1e3, "c_floor_p95_ms": pct(t_c, 95) * 1e3,
        "floor_median_ms": statistics.median(t_floor) * 1e3,
        "floor_p95_ms": pct(t_floor, 95) * 1e3,
    }
    out["ratio_c_median"] = out["vmm_median_ms"] / out["c_floor_median_ms"]
    out["ratio_c_p95"] = out["vmm_p95_ms"] / out["c_floor_p95_ms"]
    out["ratio_median"] = out["vmm_median_ms"] / out["floor_median_ms"]
    out["ratio_p95"] = out["vmm_p95_ms"] / out["floor_p95_ms"]
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"boot->halt over {args.boots} boots (test guest, 1 vCPU, 16 MiB)")
        print(f"  VMM          median {out['vmm_median_ms']:.3f} ms   p95 {out['vmm_p95_ms']:.3f} ms")
        print(f"  C floor      median {out['c_floor_median_ms']:.3f} ms   p95 {out['c_floor_p95_ms']:.3f} ms")
        print(f"  Python floor median {out['floor_median_ms']:.3f} ms   p95 {out['floor_p95_ms']:.3f} ms")
        print(f"  VMM/C floor  median {out['ratio_c_median']:.2f}x   p95 {out['ratio_c_p95']:.2f}x"
              "   (goal <= 1.5x)")
        print(f"  VMM/Python floor median {out['ratio_median']:.2f}x   p95 {out['ratio_p95']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
