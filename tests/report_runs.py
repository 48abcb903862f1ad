"""Small suite runs in a subprocess for the report tests, and a synthetic suite that can be
interrupted or lose a worker at a known point.

``suite_run`` runs a slice of the real suite on the emulated platform (a few dozen guests:
passes, skips with reasons, and failures when a fault is injected); ``synthetic_suite`` writes a
``suites/`` directory of plain tests (one fails, one can sleep or kill its own worker) that the
snplab plugin reports like the real suite.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# req-certs only: the stub cases are skipped with a reason, the invalid_len ones run (and fail
# with rbx-unchanged-on-invalid-len); milan only keeps it to a dozen guests.
SLICE = ("suites/test_invalid_len.py", "suites/test_stub.py", "-k", "milan", "--abi",
         "req-certs")


def suite_run(reports: Path, *extra: str, workers: int = 0) -> Path:
    """Run the slice into ``reports`` and return its run directory."""
    xdist = ["-n", str(workers)] if workers else ["-p", "no:xdist"]
    r = subprocess.run([sys.executable, "-m", "pytest", *SLICE, "-q", "-p", "no:cacheprovider",
                        "-p", "no:randomly", *xdist, "--reports", str(reports), *extra],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    runs = [p for p in reports.iterdir() if p.is_dir()] if reports.is_dir() else []
    assert len(runs) == 1, f"expected one run directory in {reports}: {r.stdout[-2000:]}" \
                           f"{r.stderr[-2000:]}"
    return runs[0]


SYNTHETIC_TESTS = '''
import os, signal, time
import pytest

@pytest.mark.parametrize("k", range(6))
def test_fast(k):
    assert k != 3, "synthetic failure"

def test_zz_last():
    """Sleeps (SYN_MODE=sleep) until interrupted, or kills its own worker (SYN_MODE=crash)."""
    if os.environ.get("SYN_MODE") == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("SYN_MODE") == "sleep":
        time.sleep(120)
'''


def synthetic_suite(root: Path) -> Path:
    """``root/suites/test_synthetic.py`` with the snplab plugin loaded; returns ``root``."""
    (root / "suites").mkdir(parents=True, exist_ok=True)
    (root / "pytest.ini").write_text("[pytest]\n")  # rootdir here: ids start with suites/
    (root / "conftest.py").write_text('pytest_plugins = ["snplab.pytest_plugin"]\n')
    (root / "suites" / "test_synthetic.py").write_text(SYNTHETIC_TESTS)
    return root
