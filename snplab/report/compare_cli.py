"""``snplab compare RUN_A RUN_B``: the test-by-test difference between two suite runs.

The typical use is a base kernel (A) against a patched kernel (B), each run with
``--reports DIR``.  A test that passed in A and fails (or errors) in B is a regression and makes
the command exit 1; 0 means no regression; 2 means a run directory could not be read (or the
``--html`` page could not be written).  ``--html OUT`` also writes the A/B page
(``snplab.report.compare_html``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from snplab.report.compare import compare_runs
from snplab.report.run_record import load_test_reports

_BAD = frozenset({"failed", "error"})


def _run_facts(run_dir: Path) -> dict[str, Any]:
    """Platform and host facts of a run, from summary.json (or any per-test record)."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            data = json.loads(summary.read_text())
            return {"platform": data.get("platform"), "host": data.get("host", {}),
                    "faults": data.get("faults", [])}
        except ValueError:
            pass
    for rec in load_test_reports(run_dir).values():
        return {"platform": rec.get("platform"), "host": rec.get("host", {}),
                "faults": rec.get("faults", [])}
    return {"platform": None, "host": {}, "faults": []}


def _check_run_dir(path: str) -> Path:
    p = Path(path)
    if not (p / "tests").is_dir():
        raise ValueError(f"{path}: not a snplab run directory (no tests/ inside)")
    return p


def compare(args: argparse.Namespace) -> int:
    try:
        a, b = _check_run_dir(args.run_a), _check_run_dir(args.run_b)
    except ValueError as exc:
        print(f"snplab compare: {exc}", file=sys.stderr)
        return 2
    diff = compare_runs(a, b)
    if args.html:
        from snplab.report.compare_html import write_compare_html
        from snplab.report.run_view import load_run

        try:
            write_compare_html(args.html, load_run(a), load_run(b), args.run_a, args.run_b)
        except (OSError, ValueError) as exc:
            print(f"snplab compare: cannot write {args.html}: {exc}", file=sys.stderr)
            return 2
    recs_b = load_test_reports(b)
    regressions = [(t, oa, ob) for t, oa, ob in diff.changed if oa == "passed" and ob in _BAD]
    fixes = [(t, oa, ob) for t, oa, ob in diff.changed if oa in _BAD and ob == "passed"]
    facts = {"a": _run_facts(a), "b": _run_facts(b)}
    if args.json:
        print(json.dumps({
            "a": str(a), "b": str(b), "facts": facts, "same": diff.same,
            "changed": [{"test": t, "a": oa, "b": ob,
                         "failed_property_b": recs_b.get(t, {}).get("failed_property")}
                        for t, oa, ob in diff.changed],
            "regressions": len(regressions), "fixes": len(fixes),
            "only_a": list(diff.only_a), "only_b": list(diff.only_b)}, indent=1))
    else:
        for side in ("a", "b"):
            host = facts[side]["host"]
            print(f"{side.upper()}: {args.run_a if side == 'a' else args.run_b}  "
                  f"platform={facts[side]['platform']} kernel={host.get('kernel')} "
                  f"host={host.get('hostname')} faults={','.join(facts[side]['faults']) or '-'}")
        for line in diff.lines():
            print(line)
        for t, _, _ in regressions:
            prop = recs_b.get(t, {}).get("failed_property")
            print(f"REGRESSION {t}" + (f" (violated: {prop})" if prop else ""))
        print(f"{len(regressions)} regressions, {len(fixes)} fixes")
    return 1 if regressions else 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("compare", help="compare two suite runs (e.g. base vs patched kernel)",
                              description=__doc__)
    p.add_argument("run_a", help="reports/<run-id> of the base run")
    p.add_argument("run_b", help="reports/<run-id> of the run to compare against the base")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--html", metavar="OUT", default=None,
                   help="also write the A/B page (regressions first, differing steps side by "
                        "side, timing deltas) to OUT")
    p.set_defaults(func=compare)
