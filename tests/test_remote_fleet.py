"""Two loopback "lab hosts" with capacity 1 each, driven by pytest -n 4: never more than one
guest at a time per host (from the transcripts' host timestamps), every result names its host
and kernel, and the suite gives the same results through SSH as locally."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sshd_fixture import inventory_toml, snplab_processes

from snplab.platform import kvm_problem

ROOT = Path(__file__).resolve().parents[1]
NGUESTS = 8

INNER = """
import json, pytest
from snplab.scenario import Scenario, Step

@pytest.mark.parametrize("i", range({n}))
def test_guest(ssh_platform, i):
    blob = ssh_platform.cert_blob("milan", "vcek")
    t = ssh_platform.run(Scenario.single("req-certs", "milan", Step.ext((len(blob) + 4095) // 4096),
                                         name=f"fleet-{{i}}"))
    assert t.status == "ok", t.summary()
    with open({out!r} + f"/{{i}}.json", "w") as f:
        json.dump({{"host": t.host, "status": t.status, "served": t.cert_blob == blob}}, f)
"""


def kvm_usable() -> bool:
    return kvm_problem() is None


pytestmark = [pytest.mark.kvm, pytest.mark.skipif(not kvm_usable(), reason="/dev/kvm unusable")]


def test_capacity_one_per_host_with_four_workers(sshd_pair, tmp_path):
    """-n 4 over two capacity-1 hosts: per host, guest intervals never overlap; both hosts work."""
    out = tmp_path / "out"
    out.mkdir()
    work = tmp_path / "work"
    (tmp_path / "hosts.toml").write_text(inventory_toml(list(sshd_pair), work, capacity=1))
    (tmp_path / "test_fleet_inner.py").write_text(INNER.format(n=NGUESTS, out=str(out)))
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "snplab.remote.pytest_remote", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-q", "-n", "4", "--inventory", str(tmp_path / "hosts.toml"),
         str(tmp_path / "test_fleet_inner.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    docs = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert len(docs) == NGUESTS
    by_host: dict[str, list[tuple[float, float]]] = {}
    for d in docs:
        h = d["host"]
        assert d["status"] == "ok" and d["served"], d
        assert h["kernel"] == os.uname().release and h["hostname"] == os.uname().nodename
        assert h["transport"] == "ssh" and h["slot"] == 0 and h["capacity"] == 1
        by_host.setdefault(h["inventory_name"], []).append((h["wall_start"], h["wall_end"]))
    assert sorted(by_host) == ["lab-a", "lab-b"], by_host
    for name, spans in by_host.items():
        spans.sort()
        for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
            assert s1 >= e0, f"{name}: guests overlapped: [{s0}, {e0}] and [{s1}, {e1}]"
    assert snplab_processes(str(work)) == []
