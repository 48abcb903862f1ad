"""host-setup/*.sh: syntax, the dry run of enable-snp.sh, and the preflight wrapper's exit code."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / "host-setup"
SCRIPTS = sorted(SETUP.glob("*.sh"))


def test_scripts_present():
    assert {p.name for p in SCRIPTS} == {"check-host.sh", "enable-snp.sh", "provision-certs.sh"}


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_bash_syntax(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_enable_snp_dry_run_changes_nothing():
    r = subprocess.run(["bash", str(SETUP / "enable-snp.sh")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    assert "would run: modprobe kvm_amd sev=1 sev_es=1 sev_snp=1" in r.stdout
    assert "+ " not in r.stdout  # nothing executed without --apply


@pytest.mark.skipif(Path("/dev/sev").exists(), reason="this machine has /dev/sev")
def test_check_host_fails_here():
    r = subprocess.run(["bash", str(SETUP / "check-host.sh"), "--no-probe"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "CANNOT run the snp platform" in r.stdout
