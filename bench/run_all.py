#!/usr/bin/env python3
"""Every benchmark of bench/ in one run, and one table: each figure, its goal, met or not met.

    python3 bench/run_all.py [--quick] [--json]      (make bench)

Runs, each as its own script with ``--json`` (a fresh process, as a user would):
boot.py (VMM vs the C floor and the Python floor), guest_run.py (whole guests, set-up exits),
emu_request.py (one emulated extended request without KVM), payload_instructions.sh
(callgrind; skipped without valgrind), suite.py (the emulated suite with -n 1 and -n 2) and
ssh_overhead.py (loopback sshd; skipped when there is no sshd). A script that fails or is skipped
gets one row saying why; the others still run. Goals are the project's (issue 14 and the README);
a figure without a goal is reported with "-". ``--quick`` runs fewer iterations (a smoke run,
not a measurement). Exit status 0 when every script ran, 1 when one failed (a goal not met is
reported, not an error).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SSHD_PATHS = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


@dataclass(frozen=True)
class Row:
    bench: str
    figure: str
    value: str
    goal: str = "-"
    met: bool | None = None  # None: no goal, or not measured

    @property
    def verdict(self) -> str:
        return "-" if self.met is None else ("met" if self.met else "NOT MET")


@dataclass
class Bench:
    name: str
    command: list[str]
    rows: Callable[[Any], list[Row]]
    timeout_s: float
    skip_reason: Callable[[], str | None] = field(default=lambda: None)
    parse: str = "json"  # "json": the output or its last JSON line; "lines": "name value" lines


def _ms(v: float) -> str:
    return f"{v:.2f} ms"


def _at_most(bench: str, figure: str, value: float, goal: float, unit: str = "ms",
             fmt: str = "{:.2f}") -> Row:
    return Row(bench, figure, f"{fmt.format(value)} {unit}".strip(),
               f"<= {fmt.format(goal)} {unit}".strip(), value <= goal)


def boot_rows(d: dict[str, Any]) -> list[Row]:
    return [
        Row("boot", "VMM boot->halt, median", _ms(d["vmm_median_ms"])),
        Row("boot", "C floor boot->halt, median", _ms(d["c_floor_median_ms"])),
        Row("boot", "Python floor boot->halt, median", _ms(d["floor_median_ms"])),
        _at_most("boot", "VMM / C floor, median", d["ratio_c_median"], 1.5, "x"),
        Row("boot", "VMM / C floor, p95", f"{d['ratio_c_p95']:.2f} x"),
        Row("boot", "VMM / Python floor, median", f"{d['ratio_median']:.2f} x"),
    ]


def guest_rows(d: dict[str, Any]) -> list[Row]:
    rows = []
    by_steps = {r["steps"]: r for r in d["rows"]}
    one = by_steps[min(by_steps)]
    rows.append(_at_most("guest_run", f"guest wall, {one['steps']} request, median",
                         one["wall_median_ms"], 8.0))
    rows.append(Row("guest_run", f"guest run (KVM_RUN), {one['steps']} request, median",
                    _ms(one["run_median_ms"])))
    if "setup_exits" in d:
        rows.append(_at_most("guest_run", "set-up exits (guest that only sets up)",
                             d["setup_exits"], 50, "", "{:d}"))
    if "per_request_ms" in d:
        rows.append(Row("guest_run", "per request (slope)", _ms(d["per_request_ms"])))
        rows.append(Row("guest_run", "guest set-up (intercept)", _ms(d["setup_ms"])))
    return rows


def emu_rows(d: dict[str, Any]) -> list[Row]:
    return [Row("emu_request", "emulated extended request, median", _ms(d["median_ms"])),
            Row("emu_request", "emulated extended request, p95", _ms(d["p95_ms"]))]


def instr_rows(d: dict[str, str]) -> list[Row]:
    names = {"seal_instructions_per_block": "AES-GCM seal, instructions per block",
             "open_instructions_per_block": "AES-GCM open, instructions per block",
             "key_setup_instructions": "AES-GCM key setup, instructions",
             "report_exchange_instructions": "report exchange, instructions",
             "guest_elf_bytes": "guest ELF size, bytes"}
    return [Row("payload_instructions", names.get(k, k), v) for k, v in d.items()]


def suite_rows(d: list[dict[str, Any]]) -> list[Row]:
    rows = []
    for r in d:
        n = r["jobs"]
        rows.append(Row("suite", f"suite wall, -n {n}", f"{r['wall_s']:.1f} s"))
        rows.append(Row("suite", f"suite outcome, -n {n}",
                        ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items())),
                        "all passed", r["rc"] == 0))
        if r.get("guest_wall_median_s") == r.get("guest_wall_median_s"):  # not NaN
            rows.append(_at_most("suite", f"guest wall in the suite, -n {n}, median",
                                 r["guest_wall_median_s"] * 1e3, 8.0))
    return rows


def _first(d: dict[str, Any], *keys: str) -> float | None:
    for k in keys:
        if isinstance(d.get(k), (int, float)):
            return float(d[k])
    return None


def ssh_rows(d: dict[str, Any]) -> list[Row]:
    """Tolerant of the script's key names (bench/ssh_overhead.py is being reworked)."""
    rows = []
    over = _first(d, "overhead_median_s", "ssh_overhead_median_s", "overhead_per_guest_s")
    if over is None and _first(d, "overhead_median_ms", "overhead_per_guest_ms") is not None:
        over = _first(d, "overhead_median_ms", "overhead_per_guest_ms") / 1e3  # type: ignore[operator]
    first = _first(d, "first_ssh_guest_s", "first_guest_s", "first_guest_fresh_host_s")
    if over is not None:
        rows.append(_at_most("ssh_overhead", "SSH overhead per guest, median", over * 1e3, 20.0))
    if first is not None:
        rows.append(_at_most("ssh_overhead", "first guest on a fresh host", first, 1.0, "s"))
    local = _first(d, "local_median_s")
    if local is not None:
        rows.append(Row("ssh_overhead", "local guest, median", _ms(local * 1e3)))
    if not rows:
        rows.append(Row("ssh_overhead", "raw", json.dumps(d)[:120]))
    return rows


def _no_valgrind() -> str | None:
    return None if shutil.which("valgrind") else "valgrind not installed (apt-get install valgrind)"


def _no_sshd() -> str | None:
    if any(os.access(p, os.X_OK) for p in SSHD_PATHS) or shutil.which("sshd"):
        return None
    return "sshd not installed (bench/ssh_overhead.py installs openssh-server when run as root)"


def _no_kvm() -> str | None:
    return None if os.access("/dev/kvm", os.R_OK | os.W_OK) else "/dev/kvm is not usable"


def benches(quick: bool) -> list[Bench]:
    py = sys.executable
    n = (lambda full, small: str(small if quick else full))
    return [
        Bench("boot", [py, str(BENCH / "boot.py"), "--json", "--boots", n(300, 20)], boot_rows,
              600, _no_kvm),
        Bench("guest_run", [py, str(BENCH / "guest_run.py"), "--json", "--runs", n(21, 3)],
              guest_rows, 600, _no_kvm),
        Bench("emu_request", [py, str(BENCH / "emu_request.py"), "--json", "--requests",
                              n(1000, 50)], emu_rows, 600),
        Bench("payload_instructions", ["sh", str(BENCH / "payload_instructions.sh")], instr_rows,
              600, _no_valgrind, parse="lines"),
        Bench("suite", [py, str(BENCH / "suite.py"), *(["--jobs", "2"] if quick else [])],
              suite_rows, 1800, _no_kvm),
        Bench("ssh_overhead", [py, str(BENCH / "ssh_overhead.py"), "--json",
                               *(["--guests", "3"] if quick else [])], ssh_rows, 900,
              lambda: _no_kvm() or _no_sshd()),
    ]


def _parse(b: Bench, stdout: str) -> Any:
    if b.parse == "lines":
        out = {}
        for line in stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                out[parts[0]] = parts[1]
        if not out:
            raise ValueError("no 'name value' lines in its output")
        return out
    try:
        return json.loads(stdout)  # the whole output is one (possibly indented) JSON document
    except ValueError:
        pass
    for line in reversed(stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    raise ValueError("no JSON in its output")


def run_bench(b: Bench) -> tuple[list[Row], bool]:
    """Its rows and whether it ran (a skip counts as ran)."""
    why = b.skip_reason()
    if why:
        return [Row(b.name, "skipped", why)], True
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(b.command, cwd=ROOT, capture_output=True, text=True,
                              timeout=b.timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return [Row(b.name, "FAILED", f"timed out after {b.timeout_s:.0f} s")], False
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["?"])[-1]
        return [Row(b.name, "FAILED", f"exit {proc.returncode}: {tail[:100]}")], False
    try:
        rows = b.rows(_parse(b, proc.stdout))
    except (ValueError, KeyError, TypeError) as e:
        return [Row(b.name, "FAILED", f"unreadable output: {e}")], False
    return rows + [Row(b.name, "(script time)", f"{took:.1f} s")], True


def table(rows: list[Row]) -> str:
    head = ("benchmark", "figure", "value", "goal", "verdict")
    cells = [head] + [(r.bench, r.figure, r.value, r.goal, r.verdict) for r in rows]
    width = [max(len(c[i]) for c in cells) for i in range(5)]
    line = lambda c: "  ".join(s.ljust(w) for s, w in zip(c, width)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(tuple("-" * w for w in width))] + [line(c) for c in cells[1:]])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few iterations: a smoke run")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON as well")
    args = ap.parse_args(argv)
    selected = [b for b in benches(args.quick) if not args.only or b.name in args.only]
    if args.only and len(selected) != len(set(args.only)):
        known = ", ".join(b.name for b in benches(False))
        print(f"run_all: unknown benchmark in {args.only} (known: {known})", file=sys.stderr)
        return 2
    rows: list[Row] = []
    ok = True
    for b in selected:
        print(f"run_all: {b.name} ...", file=sys.stderr, flush=True)
        r, ran = run_bench(b)
        rows += r
        ok = ok and ran
    print(table(rows))
    goals = [r for r in rows if r.met is not None]
    print(f"\n{sum(r.met for r in goals)}/{len(goals)} goals met"
          + ("" if ok else "; some benchmarks FAILED (see their rows)"))
    if args.json:
        print(json.dumps([r.__dict__ for r in rows]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
