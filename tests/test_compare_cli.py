"""``snplab compare``: a base run against a run with an injected kernel bug shows the regression."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from snplab.platform import kvm_problem

ROOT = Path(__file__).resolve().parents[1]
SELECT = "test_encoding_and_rbx and req-certs and milan"

pytestmark = pytest.mark.kvm


def _kvm_usable() -> bool:
    return kvm_problem() is None


def _suite_run(reports: Path, *extra: str) -> Path:
    subprocess.run([sys.executable, "-m", "pytest", "suites/test_invalid_len.py", "-q", "-p",
                    "no:cacheprovider", "-p", "no:xdist", "-k", SELECT, "--reports", str(reports),
                    *extra], cwd=ROOT, capture_output=True, text=True, timeout=300)
    runs = [p for p in reports.iterdir() if p.is_dir()]
    assert len(runs) == 1, f"expected one run directory in {reports}, got {runs}"
    return runs[0]


def _compare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "snplab.cli", "compare", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(not _kvm_usable(), reason="/dev/kvm is not usable")
def test_regression_from_injected_bug_is_reported(tmp_path: Path) -> None:
    base = _suite_run(tmp_path / "base")
    patched = _suite_run(tmp_path / "patched", "--fault", "rbx-unchanged-on-invalid-len")
    same = _compare(str(base), str(base))
    assert same.returncode == 0, same.stdout + same.stderr
    assert "0 regressions" in same.stdout
    r = _compare(str(base), str(patched))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "REGRESSION suites/test_invalid_len.py::test_encoding_and_rbx[req-certs-milan]" in r.stdout
    assert "violated: invalid_len" in r.stdout
    j = _compare(str(base), str(patched), "--json")
    data = json.loads(j.stdout)
    assert data["regressions"] == 1 and data["facts"]["b"]["faults"] == ["rbx-unchanged-on-invalid-len"]
    back = _compare(str(patched), str(base))
    assert back.returncode == 0 and "1 fixes" in back.stdout
    page = tmp_path / "ab.html"
    h = _compare(str(base), str(patched), "--html", str(page))
    assert h.returncode == 1 and "1 regressions" in h.stdout  # the text output stays
    html = page.read_text()
    assert "data-change='REGRESSION' data-nodeid='suites/test_invalid_len.py::" \
           "test_encoding_and_rbx[req-certs-milan]'" in html
    assert "violated property (B): <span class='prop'>invalid_len_rbx</span>" in html
    assert "RBX 1→1" in html and "RBX 1→2" in html  # both transcripts' differing step
    assert "Timing deltas" in html and "<script" not in html


def test_html_output_path_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    from snplab.report.run_dir import RunPaths
    from snplab.report.run_record import write_test_report

    run = RunPaths(tmp_path / "run")
    write_test_report(run, {"nodeid": "suites/test_x.py::test_a", "outcome": "passed"})
    deep = tmp_path / "new" / "dir" / "x.html"
    r = _compare(str(run.root), str(run.root), "--html", str(deep))
    assert r.returncode == 0 and deep.is_file()  # missing directories are made
    r = _compare(str(run.root), str(run.root), "--html", str(tmp_path))  # a directory
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot write" in r.stderr


def test_unreadable_run_dir_is_one_line_exit_2(tmp_path: Path) -> None:
    r = _compare(str(tmp_path / "nope"), str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "not a snplab run directory" in r.stderr
