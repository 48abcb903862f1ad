"""Wall time of the full emulated suite with -n 1 and -n 2, and the median time per case.

    python3 bench/suite.py [--jobs 1 2] [-- extra pytest args]

Runs ``pytest suites`` once per worker count on the emulated platform, each into its own report
directory, and prints for each: wall time, number of cases by outcome, and the median / p95 of
per-case call time and of the guest's own run time (``timings.run_s`` of every transcript), both
read from the per-test JSON reports.  No thresholds: it measures, it does not judge.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def run(jobs: int, extra: list[str], reports: Path) -> dict:
    cmd = [sys.executable, "-m", "pytest", "suites", "-q", "-p", "no:cacheprovider",
           "--reports", str(reports), "-n", str(jobs), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (run_dir,) = [p for p in reports.iterdir() if p.is_dir()]
    recs = [json.loads(p.read_text()) for p in (run_dir / "tests").glob("*.json")]
    outcomes = Counter(r["outcome"] for r in recs)
    case_s = [r["duration_s"] for r in recs if r["outcome"] != "skipped" and r.get("duration_s")]
    guest_run_s = [run["transcript"]["timings"].get("run_s") for r in recs
                   for run in r.get("runs", ()) if run["transcript"].get("timings", {}).get("run_s")]
    guest_wall_s = [run["transcript"]["timings"].get("wall_s") for r in recs
                    for run in r.get("runs", ()) if run["transcript"].get("timings", {}).get("wall_s")]
    return {"jobs": jobs, "rc": proc.returncode, "wall_s": wall, "outcomes": dict(outcomes),
            "case_median_s": statistics.median(case_s) if case_s else float("nan"),
            "case_p95_s": pct(case_s, 0.95),
            "guest_run_median_s": statistics.median(guest_run_s) if guest_run_s else float("nan"),
            "guest_wall_median_s": statistics.median(guest_wall_s) if guest_wall_s else float("nan"),
            "guests": len(guest_run_s), "tail": proc.stdout.strip().splitlines()[-12:]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("extra", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args(argv)
    results = []
    for jobs in args.jobs:
        with tempfile.TemporaryDirectory(prefix="snplab-bench-") as d:
            r = run(jobs, args.extra, Path(d))
        results.append(r)
        print(f"-n {jobs}: wall {r['wall_s']:.1f} s, {r['outcomes']}, per case median "
              f"{r['case_median_s'] * 1000:.0f} ms (p95 {r['case_p95_s'] * 1000:.0f} ms), guest "
              f"run median {r['guest_run_median_s'] * 1000:.1f} ms, guest wall (setup+run) median "
              f"{r['guest_wall_median_s'] * 1000:.1f} ms over {r['guests']} guests (rc {r['rc']})",
              flush=True)
        for line in r["tail"][-4:]:
            print(f"    {line}")
    print(json.dumps([{k: v for k, v in r.items() if k != "tail"} for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
