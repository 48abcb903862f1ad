#!/usr/bin/env python3
"""Guest run time on the emulated platform: the payload ELF end to end, per guest and per request.

    python3 bench/guest_run.py [--runs 7] [--steps 1 6] [--vcpus 1] [--json]

For each step count N it runs a scenario of N extended requests (16 certificate pages, so no
INVALID_LEN round trip) ``--runs`` times on one emulated platform and prints the median of
``timings.run_s`` (KVM_RUN from first entry to the last vCPU's termination) and of ``wall_s``
(the whole ``platform.run``), plus the guest's exits by kind from the last transcript. The
per-request figure is the slope between the smallest and the largest N; the intercept is the
guest's setup. ``setup_exits``: the exits (KVM_RUN returns) of a guest that only sets up and
terminates, read from the transcript's per-vCPU exit count. No thresholds: it measures, it does
not judge.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from snplab.platform import get_platform  # noqa: E402
from snplab.scenario import Scenario, Step  # noqa: E402


def scenario(nsteps: int, nvcpus: int) -> Scenario:
    steps = tuple(Step(op="ext_req", certs_npages=16, report_data=bytes([i + 1]) * 64)
                  for i in range(nsteps))
    return Scenario(name=f"bench-{nsteps}", steps=(steps,) * nvcpus)


def setup_exits(platform: object) -> int:
    """KVM_RUN exits of a guest whose script is only a termination (its set-up and the exit)."""
    t = platform.run(Scenario(name="bench-setup", steps=((Step.terminate(0),),)))  # type: ignore[attr-defined]
    if t.status != "ok":
        raise SystemExit(f"guest_run: set-up-only run failed: {t.status} {t.error}")
    return int(t.vcpus[0]["nexits"])


def measure(platform: object, nsteps: int, nvcpus: int, runs: int) -> dict:
    run_s, wall_s, t = [], [], None
    for _ in range(runs):
        t = platform.run(scenario(nsteps, nvcpus))  # type: ignore[attr-defined]
        if t.status != "ok":
            raise SystemExit(f"guest_run: {nsteps}-step run failed: {t.status} {t.error}")
        run_s.append(t.timings["run_s"])
        wall_s.append(t.timings["wall_s"])
    kinds = Counter(e["kind"] for e in t.to_json()["events"])
    return {"steps": nsteps, "vcpus": nvcpus, "run_median_ms": round(statistics.median(run_s) * 1e3, 2),
            "wall_median_ms": round(statistics.median(wall_s) * 1e3, 2), "events": dict(kinds)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 6])
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.runs <= 0 or any(n <= 0 for n in args.steps) or not 1 <= args.vcpus <= 4:
        print("guest_run: --runs and --steps must be positive, --vcpus 1..4", file=sys.stderr)
        return 2
    platform = get_platform("emulated")
    try:
        platform.run(scenario(1, 1))  # warm caches (keys, ELF, DWARF)
        rows = [measure(platform, n, args.vcpus, args.runs) for n in sorted(set(args.steps))]
        exits = setup_exits(platform)
    finally:
        platform.close()
    out: dict = {"rows": rows, "setup_exits": exits}
    lo, hi = rows[0], rows[-1]
    if hi["steps"] > lo["steps"]:
        per = (hi["run_median_ms"] - lo["run_median_ms"]) / (hi["steps"] - lo["steps"])
        out["per_request_ms"] = round(per, 2)
        out["setup_ms"] = round(lo["run_median_ms"] - per * lo["steps"], 2)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for r in rows:
        print(f"steps={r['steps']} vcpus={r['vcpus']} run_median_ms={r['run_median_ms']} "
              f"wall_median_ms={r['wall_median_ms']} events={r['events']}")
    if "per_request_ms" in out:
        print(f"per_request_ms {out['per_request_ms']}  setup_ms {out['setup_ms']}")
    print(f"setup_exits {exits}  (exits of a guest that only sets up and terminates)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
