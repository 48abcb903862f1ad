"""``reports/<run-id>/results.tap``: the run as kselftest-style TAP 13 for lab CI.

One test point per suite case, numbered in a stable order (family, case, ABI profile, product):
``ok N <test id>``, ``not ok N <test id>`` followed by a YAML block with the violated property,
the one-line message and the case's JSON record, ``ok N <test id> # SKIP <reason>`` for a case
that could not run where it ran.  Header comments name the run, platform (emulated runs: not
hardware) and injected faults.  A run killed half-way ends with ``Bail out!`` and a plan of the
cases collected, so a consumer sees the missing ones.  Format: TAP 13 (testanything.org/tap-
version-13-specification.html) as the kernel's kselftest harness prints it
(Documentation/dev-tools/ktap.rst: "# SKIP" directive, YAML diagnostics indented two spaces).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from snplab.report.run_dir import atomic_write
from snplab.report.run_view import CaseView, RunView, load_run

TAP_NAME = "results.tap"


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _description(c: CaseView) -> str:
    # '#' starts a directive in TAP; a test id never needs one
    return c.nodeid.replace("#", "_")


def _yaml_block(c: CaseView) -> list[str]:
    fields: dict[str, Any] = {"outcome": c.outcome, "property": c.failed_property,
                              "message": _one_line(c.message) if c.message else None,
                              "duration_ms": round(c.duration_s * 1e3, 3),
                              "record": c.json_href}
    lines = ["  ---"]
    # JSON strings and numbers are valid YAML flow scalars
    lines += [f"  {k}: {json.dumps(v, ensure_ascii=False)}" for k, v in fields.items()
              if v is not None]
    lines.append("  ...")
    return lines


def render(run: RunView) -> str:
    cases = run.cases
    collected = int(run.summary.get("collected_suite") or 0)
    plan = max(len(cases), collected) if not run.complete else len(cases)
    out = ["TAP version 13", f"1..{plan}",
           f"# snplab run {run.run_id} platform={run.platform}"
           + (" (emulated: SNP modelled in Python, not a hardware result)" if run.emulated else ""),
           f"# faults injected: {', '.join(run.faults) or 'none'}"]
    for n, c in enumerate(cases, 1):
        desc = _description(c)
        if c.outcome == "skipped":
            out.append(f"ok {n} {desc} # SKIP {_one_line(c.message or 'skipped')}")
        elif c.outcome == "passed":
            out.append(f"ok {n} {desc}")
        else:
            out.append(f"not ok {n} {desc}")
            out += _yaml_block(c)
    counts = run.counts()
    out.append("# totals: " + " ".join(f"{k}:{v}" for k, v in sorted(counts.items())))
    if not run.complete:
        out.append(f"Bail out! incomplete run: {_one_line(run.incomplete_reason)}")
    return "\n".join(out) + "\n"


def write_tap(run_dir: str | Path, run: RunView | None = None) -> Path:
    run = run if run is not None else load_run(run_dir)
    path = Path(run_dir) / TAP_NAME
    atomic_write(path, render(run))
    return path
