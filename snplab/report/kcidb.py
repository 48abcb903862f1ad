"""``reports/<run-id>/kcidb.json``: the run in KernelCI's KCIDB I/O format (schema v5.3).

One checkout (the kernel release the run tested), one build of it (the host's architecture),
one test per suite case with path ``snplab.<family>.<case>.<parameters>`` and status PASS, FAIL,
SKIP or ERROR; the host's facts are the tests' environment.  Emulated runs say so in the
environment comment and ``misc``: they are not hardware results.  The schema is the
``kcidb-io`` package's (github.com/kernelci/kcidb-io, ``kcidb_io.schema.V5_3``); ids are
``<origin>:<local id>`` with the origin ``snplab``, as the schema requires.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from snplab.report.run_dir import atomic_write
from snplab.report.run_view import CaseView, RunView, load_run, path_part

KCIDB_NAME = "kcidb.json"
ORIGIN = "snplab"
SCHEMA_VERSION = {"major": 5, "minor": 3}
STATUS = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP", "error": "ERROR"}
LOG_EXCERPT_MAX = 16384  # the schema's maxLength of test.log_excerpt


def test_path(c: CaseView) -> str:
    """``snplab.<family>.<test function>[.<parameters>]``, each part [A-Za-z0-9_-]."""
    tail = c.nodeid.rpartition("::")[2]
    func, _, params = tail.partition("[")
    parts = ["snplab", path_part(c.family), path_part(func)]
    if params:
        parts.append(path_part(params.rstrip("]")))
    return ".".join(parts)


def _environment(run: RunView) -> dict[str, Any]:
    host = run.host
    comment = f"host {host.get('hostname', '?')} kernel {host.get('kernel', '?')}, platform " \
              f"{run.platform}" + (" (emulated: SNP modelled in Python, not hardware)"
                                   if run.emulated else "")
    misc = {"host": host, "platform": run.platform, "emulated": run.emulated,
            "guest_platform": run.platform_facts(), "faults": run.faults}
    return {"comment": comment, "misc": misc}


def render(run: RunView) -> dict[str, Any]:
    host = run.host
    release = str(host.get("kernel") or "unknown")
    checkout_id = f"{ORIGIN}:{release}"
    build_id = f"{ORIGIN}:{release}:{host.get('machine', 'unknown')}"
    env = _environment(run)
    tests = []
    for c in run.cases:
        t: dict[str, Any] = {
            "id": f"{ORIGIN}:{run.run_id}:{c.safe}", "build_id": build_id, "origin": ORIGIN,
            "path": test_path(c), "status": STATUS.get(c.outcome, "ERROR"),
            "duration": round(c.duration_s, 6), "environment": env,
            "misc": {"nodeid": c.nodeid, "outcome": c.outcome, "abi": c.abi,
                     "product": c.product, "failed_property": c.failed_property,
                     "record": c.json_href, "run_id": run.run_id}}
        if c.message:
            t["log_excerpt"] = str(c.message).replace("\0", "")[:LOG_EXCERPT_MAX]
        if c.failed_property:
            t["comment"] = f"violated: {c.failed_property}"
        tests.append(t)
    misc = {"run_id": run.run_id, "complete": run.complete}
    if not run.complete:
        misc["incomplete_reason"] = run.incomplete_reason
    return {"version": SCHEMA_VERSION,
            "checkouts": [{"id": checkout_id, "origin": ORIGIN, "valid": True,
                           "comment": f"kernel {release}", "misc": misc}],
            "builds": [{"id": build_id, "checkout_id": checkout_id, "origin": ORIGIN,
                        "architecture": str(host.get("machine") or "unknown"),
                        "status": "PASS", "misc": {"kernel_release": release}}],
            "tests": tests}


def write_kcidb(run_dir: str | Path, run: RunView | None = None) -> Path:
    run = run if run is not None else load_run(run_dir)
    path = Path(run_dir) / KCIDB_NAME
    atomic_write(path, json.dumps(render(run), indent=1, default=str))
    return path
