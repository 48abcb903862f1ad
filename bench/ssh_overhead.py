#!/usr/bin/env python3
"""Per-guest overhead of the SSH path (``--platform ssh``) against the local emulated platform.

    python3 bench/ssh_overhead.py [--guests 15] [--json]

Starts a private OpenSSH server on loopback (snplab.remote.loopback; installs openssh-server
when missing and root), then runs the same one-request scenario N times locally
(``get_platform("emulated").run``, platform object reused as the suite does) and N times through
``SshPlatform.run`` (one long-lived job server on the host, ``snplab.remote.job_server``),
interleaved so machine noise hits both alike. Reports medians and their difference, the SSH
overhead per guest, and a bare frame round trip to the job server (``ping``).

First guest: a new ``SshPlatform`` on a fresh work directory (nothing cached on the host: the
package and payload are shipped, the server's Python compiles the package) times its first
``run`` (connect, ship, start the server, one guest); then the same on the now warm host (new
connection, package cached). Neither is in the medians.
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
    local.run(sc)  # warm the local caches as the suite's first guest does
    with tempfile.TemporaryDirectory(prefix="snplab-bench-ssh-") as tmp, \
            LoopbackSshd(Path(tmp) / "sshd", name="loopback") as sshd:
        def platform() -> SshPlatform:
            entry = HostEntry(endpoint=sshd.endpoint(), capacity=1, workdir=str(Path(tmp) / "work"),
                              python=sys.executable)
            return SshPlatform([entry], "emulated", payload=default_payload_path(),
                               options=SshOptions(connect_timeout=10))

        ssh = platform()
        first_s, t = timed(lambda: ssh.run(sc))
        assert t.status == "ok", t.summary()
        ssh.close()
        ssh = platform()
        warm_first_s, t = timed(lambda: ssh.run(sc))
        assert t.status == "ok", t.summary()
        loc, rem, ping, servers = [], [], [], set()
        host = ssh.hosts[0]
        for _ in range(args.guests):
            dt, t = timed(lambda: local.run(sc))
            assert t.status == "ok", t.summary()
            loc.append(dt)
            dt, t = timed(lambda: ssh.run(sc))
            assert t.status == "ok", t.summary()
            rem.append(dt)
            servers.add(t.host["job_pid"])
            conn = host._checkout()
            ping.append(timed(lambda: conn.request({"type": "ping"}, "pong", 10.0, "ping"))[0])
            host._checkin(conn)
        ssh.close()
    local.close()
    med = statistics.median
    res = {
        "guests": args.guests,
        "local_median_s": med(loc),
        "ssh_median_s": med(rem),
        "overhead_median_s": med(rem) - med(loc),
        "frame_roundtrip_median_s": med(ping),
        "first_guest_fresh_host_s": first_s,
        "first_guest_warm_host_s": warm_first_s,
        "job_servers": len(servers),  # distinct server pids over the measured guests (1)
    }
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"guests per path                   {args.guests}")
    print(f"local emulated, median            {res['local_median_s'] * 1e3:8.1f} ms")
    print(f"ssh (loopback), median            {res['ssh_median_s'] * 1e3:8.1f} ms")
    print(f"SSH overhead per guest, median    {res['overhead_median_s'] * 1e3:8.1f} ms   (goal <= 20 ms)")
    print(f"  frame round trip (ping)         {res['frame_roundtrip_median_s'] * 1e3:8.1f} ms")
    print(f"  job servers used                {len(servers):8d}")
    print(f"first guest, fresh host           {first_s * 1e3:8.1f} ms   (goal <= 1000 ms; ships package + payload)")
    print(f"first guest, warm host            {warm_first_s * 1e3:8.1f} ms   (new connection, package cached)")
    return 0

if __name__ == "__main__":
    sys.exit(main())
