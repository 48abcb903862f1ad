#!/usr/bin/env python3
"""Per-guest overhead of the SSH path (``--platform ssh``) against the local emulated platform.

    python3 bench/ssh_overhead.py [--guests 15] [--json]

Starts a private OpenSSH server on loopback (snplab.remote.loopback; installs openssh-server
when missing and root), then runs the same one-request scenario N times locally
(``get_platform("emulated").run``, platform object reused as the suite does) and N times through
``SshPlatform.run`` (one ``python3 -m snplab.vmm.job`` per guest, connection reused), interleaved
so machine noise hits both alike. Reports medians and their difference, the overhead per guest,
split into its parts: an SSH exec round trip (``true``), a job that starts Python and imports
snplab but runs no guest (``--probe``), and the platform set-up inside the job (transcript
``timings.platform_s``: keys, ELF/DWARF, per fresh process). The first SSH guest (which ships
the package and payload) is reported apart and not in the median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from snplab.platform import default_payload_path, get_platform
from snplab.remote.inventory import HostEntry
from snplab.remote.loopback import LoopbackSshd
from snplab.remote.platform import SshPlatform
from snplab.remote.transport import SshOptions
from snplab.scenario import Scenario, Step, pages_for


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--guests", type=int, default=15, help="guests per path (15)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()

    local = get_platform("emulated")
    blob = local.cert_blob("milan", "vcek")
    sc = Scenario.single("req-certs", "milan", Step.ext(pages_for(len(blob))), name="bench-ssh")
    with tempfile.TemporaryDirectory(prefix="snplab-bench-ssh-") as tmp, \
            LoopbackSshd(Path(tmp) / "sshd", name="loopback") as sshd:
        entry = HostEntry(endpoint=sshd.endpoint(), capacity=1, workdir=str(Path(tmp) / "work"),
                          python=sys.executable)
        ssh = SshPlatform([entry], "emulated", payload=default_payload_path(),
                          options=SshOptions(connect_timeout=10))
        first_s, t = timed(lambda: ssh.run(sc))
        assert t.status == "ok", t.summary()
        local.run(sc)  # warm the local caches as the suite's first guest does
        loc, rem, plat_s, rtt, probe = [], [], [], [], []
        host = ssh.hosts[0]
        for _ in range(args.guests):
            dt, t = timed(lambda: local.run(sc))
            assert t.status == "ok", t.summary()
            loc.append(dt)
            dt, t = timed(lambda: ssh.run(sc))
            assert t.status == "ok", t.summary()
            rem.append(dt)
            plat_s.append(t.timings.get("platform_s", 0.0))
            rtt.append(timed(lambda: host.transport.run("true"))[0])
            probe.append(timed(lambda: host.transport.run(
                f"cd {host.workdir} && " + host._python("--probe")))[0])
        ssh.close()
    local.close()
    med = statistics.median
    res = {
        "guests": args.guests,
        "local_median_s": med(loc),
        "ssh_median_s": med(rem),
        "overhead_median_s": med(rem) - med(loc),
        "ssh_exec_roundtrip_median_s": med(rtt),
        "job_start_no_guest_median_s": med(probe),
        "job_platform_setup_median_s": med(plat_s),
        "first_ssh_guest_s": first_s,
    }
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"guests per path               {args.guests}")
    print(f"local emulated, median        {res['local_median_s'] * 1e3:8.1f} ms")
    print(f"ssh (loopback), median        {res['ssh_median_s'] * 1e3:8.1f} ms")
    print(f"overhead per guest, median    {res['overhead_median_s'] * 1e3:8.1f} ms")
    print(f"  ssh exec round trip         {res['ssh_exec_roundtrip_median_s'] * 1e3:8.1f} ms")
    print(f"  job start, no guest         {res['job_start_no_guest_median_s'] * 1e3:8.1f} ms  (includes the round trip)")
    print(f"  platform set-up in the job  {res['job_platform_setup_median_s'] * 1e3:8.1f} ms  (fresh process: keys, ELF)")
    print(f"first ssh guest (ships pkg)   {first_s * 1e3:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
