"""The host's kernel headers: constants we must take from them and a C probe of our layouts.

``snplab.vmm.uapi`` declares the KVM structs in ctypes (and ``snplab.host.sev_device`` the /dev/sev
ones) from the reference figures because the headers on a build machine may be older than the
kernel under test. On a lab host the installed headers are the authority where they know a
struct: ``probe_layouts`` compiles a small C program against them that prints ``sizeof`` and
``offsetof`` of every named field and the value of every constant we use, and compares.
Members or constants the headers do not know (newer than the headers) are listed as absent,
not as mismatches. ``read_define`` reads one ``#define`` (e.g. ``KVM_EXIT_SNP_REQ_CERTS``, whose
number changed between the v7 patch and the merged kernel) without compiling anything.
"""

from __future__ import annotations

import ctypes as C
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from snplab.host import sev_device
from snplab.vmm import uapi

# (C struct name, ctypes declaration)
PROBED_STRUCTS: tuple[tuple[str, Any], ...] = (
    ("kvm_regs", uapi.kvm_regs), ("kvm_segment", uapi.kvm_segment), ("kvm_dtable", uapi.kvm_dtable),
    ("kvm_sregs", uapi.kvm_sregs), ("kvm_userspace_memory_region", uapi.kvm_userspace_memory_region),
    ("kvm_enable_cap", uapi.kvm_enable_cap), ("kvm_cpuid_entry2", uapi.kvm_cpuid_entry2),
    ("kvm_xcrs", uapi.kvm_xcrs), ("kvm_device_attr", uapi.kvm_device_attr),
    ("kvm_sev_cmd", uapi.kvm_sev_cmd), ("kvm_run", uapi.kvm_run),
    ("kvm_exit_snp_req_certs", uapi.kvm_exit_snp_req_certs),
    ("kvm_userspace_memory_region2", uapi.kvm_userspace_memory_region2),
    ("kvm_create_guest_memfd", uapi.kvm_create_guest_memfd),
    ("kvm_memory_attributes", uapi.kvm_memory_attributes), ("kvm_sev_init", uapi.kvm_sev_init),
    ("kvm_sev_snp_launch_start", uapi.kvm_sev_snp_launch_start),
    ("kvm_sev_snp_launch_update", uapi.kvm_sev_snp_launch_update),
    ("kvm_sev_snp_launch_finish", uapi.kvm_sev_snp_launch_finish),
    ("sev_issue_cmd", sev_device.sev_issue_cmd),
    ("sev_user_data_get_id2", sev_device.sev_user_data_get_id2),
    ("sev_user_data_snp_status", sev_device.sev_user_data_snp_status),
)

# Constants of ours that are not C names.
_NOT_C = {"KVM_EXIT_VMGEXIT_V15", "KVM_RUN_EXIT_OFFSET", "KVM_MAX_CPUID_ENTRIES", "KVMIO"}
# Constants whose header value wins at run time (the backend reads it): a difference is a note.
HEADER_WINS = {"KVM_EXIT_SNP_REQ_CERTS"}


def probed_constants() -> dict[str, int]:
    out = {name: value for name, value in vars(uapi).items()
           if re.fullmatch(r"KVM_[A-Z0-9_]+", name) and isinstance(value, int) and name not in _NOT_C}
    out["SEV_ISSUE_CMD"] = sev_device.SEV_ISSUE_CMD
    out["SNP_PLATFORM_STATUS"] = sev_device.SNP_PLATFORM_STATUS
    out["SEV_GET_ID2"] = sev_device.SEV_GET_ID2
    return out


# ---- header discovery and #define reading ----------------------------------------------------


def kvm_header_candidates(root: Path, release: str | None) -> list[Path]:
    """kvm.h files for the running kernel first (its build tree), then the installed uapi headers."""
    paths = []
    if release:
        paths += [root / "lib/modules" / release / "build/include/uapi/linux/kvm.h",
                  root / "usr/src" / f"linux-headers-{release}" / "include/uapi/linux/kvm.h"]
    paths.append(root / "usr/include/linux/kvm.h")
    return [p for p in paths if p.is_file()]


def read_define(paths: list[Path], name: str) -> tuple[int, Path] | None:
    """The integer value of ``#define name N`` in the first file that defines it."""
    pattern = re.compile(rf"^\s*#\s*define\s+{re.escape(name)}\s+\(?\s*(0[xX][0-9a-fA-F]+|\d+)\s*\)?\s*(?:/[*/].*)?$", re.M)
    for p in paths:
        try:
            text = p.read_text(errors="replace")
        except OSError:
            continue
        m = pattern.search(text)
        if m:
            return int(m.group(1), 0), p
    return None


def req_certs_exit_number(root: Path | str = "/", release: str | None = None) -> int | None:
    """KVM_EXIT_SNP_REQ_CERTS from the host's headers, or None if they predate it."""
    root = Path(root)
    if release is None:
        try:
            release = (root / "proc/sys/kernel/osrelease").read_text().strip()
        except OSError:
            release = None
    found = read_define(kvm_header_candidates(root, release), "KVM_EXIT_SNP_REQ_CERTS")
    return None if found is None else found[0]


# ---- the C probe ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    what: str  # "sizeof(struct x)", "offsetof(struct x, a.b)", "KVM_FOO"
    ours: int
    headers: int

    def __str__(self) -> str:
        return f"{self.what}: ours {self.ours:#x}, headers {self.headers:#x}"


@dataclass(frozen=True)
class ProbeResult:
    include_dir: str
    compared: int = 0
    mismatches: tuple[Mismatch, ...] = ()
    notes: tuple[Mismatch, ...] = ()  # differences where the header value is used at run time
    absent: tuple[str, ...] = ()  # structs/members/constants the headers do not know
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.mismatches


def _fields(cls: Any, prefix: str = "", base: int = 0) -> Iterator[tuple[str, int]]:
    """(C member path, offset) for every named member, descending into structs and unions."""
    anonymous = set(getattr(cls, "_anonymous_", ()))
    for spec in cls._fields_:
        name, ctype = spec[0], spec[1]
        off = base + getattr(cls, name).offset
        if name in anonymous:
            yield from _fields(ctype, prefix, off)
            continue
        if name.startswith("_"):
            continue
        path = f"{prefix}{name}"
        yield path, off
        if isinstance(ctype, type) and issubclass(ctype, (C.Structure, C.Union)):
            yield from _fields(ctype, path + ".", off)


@dataclass
class _Program:
    lines: list[str] = field(default_factory=list)
    checks: dict[int, tuple[str, int, str]] = field(default_factory=dict)  # line → (kind+what, ours, label)

    def add(self, tag: str, expr: str, ours: int, label: str) -> None:
        self.lines.append(f'  printf("{tag}\\t%lld\\n", (long long)({expr}));')
        self.checks[len(self.lines)] = (tag, ours, label)


def _build(structs: tuple[tuple[str, Any], ...], constants: dict[str, int], dropped: set[str]) -> tuple[str, dict[int, tuple[str, int, str]]]:
    prog = _Program()
    for cname, cls in structs:
        tag = f"S:{cname}"
        if tag not in dropped:
            prog.add(tag, f"sizeof(struct {cname})", C.sizeof(cls), f"sizeof(struct {cname})")
        for path, off in _fields(cls):
            t = f"O:{cname}:{path}"
            if t not in dropped and f"S:{cname}" not in dropped:
                prog.add(t, f"__builtin_offsetof(struct {cname}, {path})", off, f"offsetof(struct {cname}, {path})")
    for name, value in sorted(constants.items()):
        t = f"K:{name}"
        if t not in dropped:
            prog.add(t, name, value, name)
    head = ["#include <stdio.h>", "#include <linux/kvm.h>", "#include <linux/psp-sev.h>",
            "int main(void) {"]
    body = head + prog.lines + ["  return 0;", "}"]
    checks = {line + len(head): v for line, v in prog.checks.items()}
    return "\n".join(body) + "\n", checks


_ERR = re.compile(r"^[^:\n]*probe\.c:(\d+):\d+: error:", re.M)


def probe_layouts(include_dir: Path | str = "/usr/include", cc: str | None = None, timeout: float = 60.0,
                  structs: tuple[tuple[str, Any], ...] = PROBED_STRUCTS,
                  constants: dict[str, int] | None = None) -> ProbeResult:
    """Compile and run the probe against ``include_dir``; compare with our declarations."""
    include_dir = str(include_dir)
    constants = probed_constants() if constants is None else constants
    cc = cc or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return ProbeResult(include_dir, error="no C compiler (cc/gcc) found")
    dropped: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="snplab-probe-") as tmp:
        src, exe = Path(tmp) / "probe.c", Path(tmp) / "probe"
        for _attempt in range(6):
            text, checks = _build(structs, constants, dropped)
            src.write_text(text)
            try:
                r = subprocess.run([cc, "-w", "-I", include_dir, "-o", str(exe), str(src)],
                                   capture_output=True, text=True, timeout=timeout)
            except (OSError, subprocess.TimeoutExpired) as e:
                return ProbeResult(include_dir, error=f"cannot run {cc}: {e}")
            if r.returncode == 0:
                break
            bad = {int(n) for n in _ERR.findall(r.stderr)}
            newly = {checks[n][0] for n in bad if n in checks}
            if not newly:
                first = next((ln for ln in r.stderr.splitlines() if "error" in ln), r.stderr.strip()[:200])
                return ProbeResult(include_dir, error=f"probe does not compile: {first}")
            dropped |= newly
        else:
            return ProbeResult(include_dir, error="probe still does not compile after dropping unknown names")
        try:
            out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=timeout, check=True).stdout
        except (OSError, subprocess.SubprocessError) as e:
            return ProbeResult(include_dir, error=f"probe did not run: {e}")
    got = {}
    for line in out.splitlines():
        tag, _, value = line.partition("\t")
        got[tag] = int(value)
    labels = {tag: (ours, label) for tag, ours, label in checks.values()}
    mismatches, notes = [], []
    for tag, value in got.items():
        ours, label = labels[tag]
        if tag.startswith("K:"):
            value &= (1 << 64) - 1 if ours >= 0 else -1
        if value != ours:
            (notes if tag[2:] in HEADER_WINS else mismatches).append(Mismatch(label, ours, value))
    gone_structs = {t[2:] for t in dropped if t.startswith("S:")}
    absent = sorted(t.split(":", 1)[1] for t in dropped
                    if not (t.startswith("O:") and t.split(":")[1] in gone_structs))
    return ProbeResult(include_dir, compared=len(got), mismatches=tuple(mismatches), notes=tuple(notes),
                       absent=tuple(absent))
