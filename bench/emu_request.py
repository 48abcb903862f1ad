#!/usr/bin/env python3
"""Time per emulated extended guest request, and where it goes.

    python3 bench/emu_request.py [--requests 1000] [--abi req-certs] [--profile] [--json]

Each request is what the guest payload does once it is set up: seal a MSG_REPORT_REQ (the
reference guest's AES-GCM), fill the GHCB, write the GHCB MSR, ring the VMGEXIT doorbell; then the
emulated KVM reads the GHCB, exits to the VMM's certificate responder (which writes the blob
under its file lock), calls the emulated PSP (decrypt, build and sign the report with ECDSA P-384,
encrypt the response), copies the response back, and the guest decrypts it. Measured per request
from the guest's side (tests/emu_refguest.py), no KVM involved. With --profile, cProfile's top
entries by own time over the same number of requests.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from emu_refguest import RefGuest, RefHost


def setup(abi: str, tmp: Path) -> RefGuest:
    host = RefHost(tmp, abi=abi)
    guest = RefGuest(host)
    guest.setup()
    guest.request()  # warm caches (AES key schedules, imports)
    return guest


def run(guest: RefGuest, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = guest.request(npages=16)
        times.append(time.perf_counter() - t0)
        if r.outcome != "ok":
            raise SystemExit(f"request failed: {r.outcome} {r.attempts[-1]}")
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--abi", default="req-certs", choices=("req-certs", "vmgexit-v15", "stub"))
    ap.add_argument("--profile", action="store_true", help="also print cProfile's top entries")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.requests <= 0:
        print("emu_request: --requests must be positive", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="snplab-bench-") as d:
        guest = setup(args.abi, Path(d))
        times = run(guest, args.requests)
        times.sort()
        out = {"abi": args.abi, "requests": args.requests,
               "median_ms": round(statistics.median(times) * 1e3, 4),
               "p95_ms": round(times[int(len(times) * 0.95) - 1] * 1e3, 4),
               "min_ms": round(times[0] * 1e3, 4)}
        profile_text = ""
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            run(guest, args.requests)
            prof.disable()
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(args.top)
            profile_text = buf.getvalue()
            stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
            total = sum(v[2] for v in stats.values())
            by_area: dict[str, float] = {}
            for (filename, _line, func), v in stats.items():
                area = ("snplab.emu" if "/snplab/emu/" in filename else "snplab.vmm" if "/snplab/vmm/" in filename
                        else "snplab.abi" if "/snplab/abi/" in filename else "reference guest" if "emu_refguest" in filename
                        else "cryptography" if "cryptography" in filename or func.startswith(("<method 'sign'", "<method 'encrypt'", "<method 'decrypt'"))
                        else "other")
                by_area[area] = by_area.get(area, 0.0) + v[2]
            out["own_time_share"] = {k: round(v / total, 3) for k, v in sorted(by_area.items(), key=lambda kv: -kv[1])}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.requests} emulated extended requests ({args.abi}): median {out['median_ms']} ms, "
              f"p95 {out['p95_ms']} ms, min {out['min_ms']} ms")
        if profile_text:
            print("own time by area:", out["own_time_share"])
            print(profile_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
