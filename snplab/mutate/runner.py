"""Run the suite once per fault: one pytest process each (``--fault NAME``), several at once.

Each fault's run is restricted to the ABI profiles where the fault can change anything
(``Fault.profiles``) and to one product (default milan; faults do not depend on the product),
by a ``-k`` expression over the test ids (``[<abi>-<product>-...]``).  Its per-test JSON goes to
``<run>/faults/<fault>/<pytest-run>/tests/``; a control run (the same suite, no fault) goes to
``<run>/control/``.  The processes run without xdist: the parallelism is across faults.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snplab.emu.faults import FAULTS, Fault
from snplab.mutate.matrix import (MutateReport, classify, control_outcome, read_records)

ROOT = Path(__file__).resolve().parent.parent.parent
ALL_PROFILES = ("stub", "req-certs", "vmgexit-v15")


@dataclass(frozen=True)
class MutateOptions:
    reports: Path
    faults: tuple[str, ...] = ()          # empty: the whole catalog
    jobs: int = 0                         # 0: one per CPU
    product: str = "milan"                # "auto": every product
    early_stop: bool = False              # pytest -x per fault
    control: bool = True
    timeout_s: float = 900.0              # per fault run
    suites: tuple[str, ...] = ("suites",)
    pytest_args: tuple[str, ...] = ()

    @property
    def workers(self) -> int:
        return self.jobs if self.jobs > 0 else max(1, os.cpu_count() or 1)


def selection(profiles: Sequence[str], product: str) -> str:
    """The ``-k`` expression selecting ``profiles`` × ``product`` ("" = everything)."""
    parts = [] if product == "auto" else [product]
    if set(profiles) != set(ALL_PROFILES):
        parts.append("(" + " or ".join(profiles) + ")")
    return " and ".join(parts)


def pytest_command(opts: MutateOptions, out: Path, fault: str | None,
                   profiles: Sequence[str]) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", *opts.suites, "-q", "--no-header", "-rN", "--tb=no",
           "-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:xdist", "-o", "addopts=",
           "--reports", str(out)]
    if opts.product != "auto":
        cmd += ["--product", opts.product]
    expr = selection(profiles, opts.product)
    if expr:
        cmd += ["-k", expr]
    if fault is not None:
        cmd += ["--fault", fault]
    if opts.early_stop and fault is not None:
        cmd.append("-x")
    return cmd + list(opts.pytest_args)


@dataclass(frozen=True)
class _Run:
    records: list[dict[str, Any]]
    wall_s: float
    returncode: int | None
    error: str | None


def _run_pytest(cmd: list[str], out: Path, timeout_s: float) -> _Run:
    from snplab.pytest_plugin import LEAN_REPORTS_ENV

    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", LEAN_REPORTS_ENV: "1"}
    env.pop("SNPLAB_FAULTS", None)  # only the fault on the command line
    env.pop("PYTEST_XDIST_WORKER", None)
    t0 = time.monotonic()
    error = None
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                              env=env)
        rc: int | None = proc.returncode
        (out / "pytest.log").write_text(proc.stdout + proc.stderr)
        if rc not in (0, 1):
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
            error = f"pytest exited {rc}: {tail[0][:300]}"
    except subprocess.TimeoutExpired:
        rc, error = None, f"the suite run did not finish within {timeout_s:.0f} s"
    return _Run(read_records(out), time.monotonic() - t0, rc, error)


def catalog(names: Sequence[str]) -> list[Fault]:
    """The faults to run (all when ``names`` is empty); unknown names raise ValueError."""
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        raise ValueError(f"unknown fault(s): {', '.join(unknown)}")
    return [FAULTS[n] for n in (names or sorted(FAULTS))]


def run_mutate(opts: MutateOptions, run_id: str,
               progress: Callable[[str], None] = lambda line: None) -> MutateReport:
    """Run the control and every fault; return the report (files are written by the caller)."""
    faults = catalog(opts.faults)
    root = opts.reports / run_id
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load0 = list(os.getloadavg())
    t0 = time.monotonic()
    union = sorted({p for f in faults for p in f.profiles})
    jobs = [("control", None, union)] if opts.control else []
    jobs += [(f.name, f, list(f.profiles)) for f in faults]
    results: dict[str, _Run] = {}
    with ThreadPoolExecutor(max_workers=opts.workers, thread_name_prefix="snplab-mutate") as ex:
        futs = {}
        for key, fault, profiles in jobs:
            out = root / ("control" if fault is None else f"faults/{key}")
            cmd = pytest_command(opts, out, None if fault is None else fault.name, profiles)
            futs[ex.submit(_run_pytest, cmd, out, opts.timeout_s)] = key
        for n, fut in enumerate(as_completed(futs), 1):
            key = futs[fut]
            run = results[key] = fut.result()
            failed = sum(1 for r in run.records if r.get("outcome") in ("failed", "error"))
            progress(f"[{n}/{len(jobs)}] {key}: {len(run.records)} tests, {failed} failed "
                     f"({run.wall_s:.1f} s){' — ' + run.error if run.error else ''}")
    control = None
    ignore: tuple[str, ...] = ()
    if opts.control:
        c = results["control"]
        control = control_outcome(c.records, c.wall_s)
        ignore = control.failed
    outcomes = tuple(classify(f, results[f.name].records, ignore=ignore,
                              wall_s=results[f.name].wall_s,
                              returncode=results[f.name].returncode, error=results[f.name].error)
                     for f in faults)
    seen = sorted({str(r["nodeid"]) for f in faults for r in results[f.name].records
                   if r.get("outcome") not in ("skipped", None)} - set(ignore))
    host = {"cpu_count": os.cpu_count() or 0, "loadavg_start": load0,
            "loadavg_end": list(os.getloadavg()), "kernel": os.uname().release}
    return MutateReport(run_id=run_id, started=started, wall_s=time.monotonic() - t0,
                        jobs=opts.workers, product=opts.product, early_stop=opts.early_stop,
                        host=host, control=control, outcomes=outcomes, tests_seen=tuple(seen))
