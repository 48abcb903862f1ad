"""The per-run HTML summary is built from the JSON records and shows what did not pass."""

from __future__ import annotations

import json
from pathlib import Path

from snplab.report import summary_html as html_report
from snplab.report.run_dir import RunPaths
from snplab.report.run_record import write_test_report


def _run(tmp_path: Path) -> Path:
    paths = RunPaths(tmp_path / "run1")
    write_test_report(paths, {"nodeid": "suites/test_sizes.py::test_a[stub-milan]",
                              "family": "sizes", "outcome": "passed", "duration_s": 0.5})
    write_test_report(paths, {"nodeid": "suites/test_sizes.py::test_b[req-certs-milan]",
                              "family": "sizes", "outcome": "failed", "duration_s": 0.25,
                              "failed_property": "invalid_len_rbx <b>",
                              "message": "AssertionError: x"})
    write_test_report(paths, {"nodeid": "suites/test_busy.py::test_c[stub-genoa]",
                              "family": "busy", "outcome": "skipped", "duration_s": 0.0,
                              "message": "stub never answers BUSY\nmore"})
    (paths.root / "summary.json").write_text(json.dumps(
        {"run_id": "run1", "platform": "emulated", "faults": ["rbx-unchanged-on-invalid-len"],
         "host": {"kernel": "6.18.0-test", "hostname": "labhost"}, "wall_s": 1.5}))
    return paths.root


def test_summary_lists_families_and_failures(tmp_path: Path) -> None:
    run = _run(tmp_path)
    page = html_report.write_html_summary(run).read_text()
    assert "6.18.0-test" in page and "rbx-unchanged-on-invalid-len" in page
    assert "not hardware results" in page
    # sizes: 1 passed, 1 failed; busy: 1 skipped
    assert "<td>sizes</td><td>1</td><td>1</td><td>0</td>" in page
    assert "<td>busy</td><td>0</td><td>0</td><td>1</td>" in page
    assert "Cases not passed (2)" in page
    failures = page.split("Cases not passed")[1]
    assert "invalid_len_rbx &lt;b&gt;" in failures and "<b>" not in failures
    assert "tests/sizes.test_b_req-certs-milan_.json" in page
    assert "stub never answers BUSY" in page and "more" not in page.split("stub never answers BUSY")[1][:20]


def test_cli_rejects_a_non_run_directory(tmp_path: Path, capsys) -> None:
    assert html_report.main([str(tmp_path)]) == 2
    assert "usage" in capsys.readouterr().err
