"""The integration suite through SSH (--platform ssh --remote-platform emulated) gives the same
per-test results as the local emulated platform.

By default a cross-section of the suite runs (one product, every family that has emulated-only
or multi-guest tests); ``SNPLAB_SSH_SUITE=all`` runs the whole suite both ways (CI's long job).
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from sshd_fixture import inventory_toml, snplab_processes

from snplab.platform import kvm_problem

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ["suites/test_stub.py", "suites/test_certs.py", "suites/test_races.py",
          "suites/test_concurrency.py", "-k", "milan"]


def kvm_usable() -> bool:
    return kvm_problem() is None


pytestmark = [pytest.mark.kvm, pytest.mark.slow,
              pytest.mark.skipif(not kvm_usable(), reason="/dev/kvm unusable")]


def outcomes(junit: Path) -> dict[str, str]:
    """{test id: passed|failed|error|skipped} from a JUnit XML file."""
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        out[f"{case.get('classname')}::{case.get('name')}"] = (
            {"failure": "failed", "error": "error", "skipped": "skipped"}[kinds[0]] if kinds else "passed")
    return out


def run_suite(tmp_path: Path, tag: str, *extra: str) -> dict[str, str]:
    junit = tmp_path / f"{tag}.xml"
    selection = [] if os.environ.get("SNPLAB_SSH_SUITE") == "all" else SUBSET
    args = ["suites"] if not selection else selection
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PYTEST_XDIST_WORKER", None)
    res = subprocess.run(
        [sys.executable, "-m", "pytest", *args, "-p", "no:randomly", "-p", "no:cacheprovider", "-q",
         "-n", "2", f"--junitxml={junit}", "--reports", str(tmp_path / f"reports-{tag}"), *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert junit.exists(), res.stdout[-3000:] + res.stderr[-3000:]
    return outcomes(junit)


def test_suite_same_results_through_ssh(sshd_pair, tmp_path):
    """Every selected suite test has the same outcome locally and through two loopback hosts."""
    work = tmp_path / "work"
    (tmp_path / "hosts.toml").write_text(inventory_toml(list(sshd_pair), work, capacity=2))
    local = run_suite(tmp_path, "local")
    remote = run_suite(tmp_path, "ssh", "--platform", "ssh", "--remote-platform", "emulated",
                       "--inventory", str(tmp_path / "hosts.toml"))
    assert local and sum(v == "passed" for v in local.values()) > len(local) // 2, local
    differ = {k: (local.get(k), remote.get(k)) for k in local.keys() | remote.keys()
              if local.get(k) != remote.get(k)}
    assert not differ, differ
    assert snplab_processes(str(work)) == []
