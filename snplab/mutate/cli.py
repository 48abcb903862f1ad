"""``snplab mutate``: run the suite once per fault of the catalog, write ``mutate.json`` and
``mutate.html`` under ``<reports>/<run-id>/``, print the kill rate; exit 1 if a fault survived
(or could not be run), 2 on bad arguments."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from snplab.mutate.html import render
from snplab.mutate.matrix import validate
from snplab.mutate.runner import ROOT, MutateOptions, catalog, run_mutate


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mutate", help="run the suite once per injected fault (kill matrix)",
                       description=__doc__)
    p.add_argument("faults", nargs="*", metavar="FAULT",
                   help="faults to run (default: the whole catalog of snplab.emu.faults)")
    p.add_argument("-j", "--jobs", type=int, default=0,
                   help="fault runs at once (default: one per CPU)")
    p.add_argument("-x", "--first-failure", action="store_true",
                   help="stop each fault's suite run at its first failing test")
    p.add_argument("--product", default="milan", choices=("milan", "genoa", "turin", "auto"),
                   help="product the suite runs for (default milan; auto: all three)")
    p.add_argument("--reports", type=Path, default=ROOT / "reports",
                   help="directory for <run-id>/ (default: reports/)")
    p.add_argument("--run-id", default=None, help="name of the run directory (default: time-pid)")
    p.add_argument("--no-control", action="store_true",
                   help="skip the fault-free control run (failures there are not counted as kills)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds per fault's suite run (default 900)")
    p.add_argument("--list", action="store_true", help="list the catalog and exit")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        faults = catalog(args.faults)
    except ValueError as e:
        print(f"snplab mutate: {e}", file=sys.stderr)
        return 2
    if args.list:
        for f in faults:
            print(f"{f.name:36} {f.layer:8} {','.join(f.profiles):30} {f.description}")
        return 0
    if args.jobs < 0:
        print("snplab mutate: --jobs must be >= 0", file=sys.stderr)
        return 2
    from snplab.report.run_dir import new_run_id

    run_id = args.run_id or new_run_id()
    opts = MutateOptions(reports=args.reports, faults=tuple(f.name for f in faults),
                         jobs=args.jobs, product=args.product, early_stop=args.first_failure,
                         control=not args.no_control, timeout_s=args.timeout)
    report = run_mutate(opts, run_id, progress=lambda line: print(line, flush=True))
    doc = report.to_json()
    validate(doc)
    root = args.reports / run_id
    root.mkdir(parents=True, exist_ok=True)
    (root / "mutate.json").write_text(json.dumps(doc, indent=1))
    (root / "mutate.html").write_text(render(doc))
    if report.control is not None and report.control.failed:
        print(f"snplab mutate: {len(report.control.failed)} test(s) fail without any fault "
              f"(not counted): {', '.join(report.control.failed[:5])}")
    for o in report.outcomes:
        if o.status != "killed":
            print(f"  {o.status:13} {o.name}: {o.description}"
                  + (f" ({o.error})" if o.error else ""))
    print(report.summary_line())
    print(f"snplab mutate: {root / 'mutate.json'}, {root / 'mutate.html'}")
    return report.exit_code
