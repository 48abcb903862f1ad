"""Run reports: index.html (also rendered in real headless Chromium), results.tap through a TAP
parser, kcidb.json against the KCIDB schema, the compare page, the progress line, and runs cut
short by SIGINT or a dead xdist worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from report_runs import ROOT, suite_run, synthetic_suite
from snplab.platform import kvm_problem
from snplab.report import index_html, kcidb, tap
from snplab.report.compare_html import write_compare_html
from snplab.report.run_dir import RunPaths
from snplab.report.run_record import write_test_report
from snplab.report.run_reports import write_run_reports
from snplab.report.run_view import load_run

FAULT = "rbx-unchanged-on-invalid-len"
needs_kvm = pytest.mark.skipif(kvm_problem() is not None, reason=f"{kvm_problem()}")


# --------------------------------------------------------------------------------------------
# synthetic records (no guests)


def _synthetic_run(tmp_path: Path, summary: bool = True) -> Path:
    paths = RunPaths(tmp_path / "run1")
    write_test_report(paths, {"nodeid": "suites/test_sizes.py::test_a[stub-milan]",
                              "family": "sizes", "outcome": "passed", "duration_s": 0.5,
                              "params": {"abi": "stub", "product": "milan"}})
    write_test_report(paths, {"nodeid": "suites/test_sizes.py::test_b[req-certs-milan-x]",
                              "family": "sizes", "outcome": "failed", "duration_s": 0.25,
                              "params": {"abi": "req-certs", "product": "milan", "case": "x"},
                              "failed_property": "invalid_len_rbx <b>",
                              "message": "AssertionError: x"})
    write_test_report(paths, {"nodeid": "suites/test_busy.py::test_c[stub-genoa]",
                              "family": "busy", "outcome": "skipped", "duration_s": 0.0,
                              "params": {"abi": "stub", "product": "genoa"},
                              "message": "stub never answers BUSY"})
    if summary:
        (paths.root / "summary.json").write_text(json.dumps(
            {"run_id": "run1", "platform": "emulated", "faults": [FAULT], "complete": True,
             "host": {"kernel": "6.18.0-test", "hostname": "labhost", "kernel_generation": "7.0"},
             "wall_s": 1.5}))
    return paths.root


def test_index_shows_header_matrix_and_failed_case(tmp_path: Path) -> None:
    run = _synthetic_run(tmp_path)
    page = index_html.write_index(run).read_text()
    assert "6.18.0-test" in page and FAULT in page and "kernel_generation" in page
    assert "not hardware" in page and "INCOMPLETE" not in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    # one matrix cell per case, coloured by outcome, the failed one linking to its section
    assert page.count("<a class='cell o-") == 3
    assert "href='#case-sizes.test_b_req-certs-milan-x_'" in page
    assert "href='tests/sizes.test_a_stub-milan_.json'" in page
    section = page.split("id='case-sizes.test_b_req-certs-milan-x_'")[1]
    assert "invalid_len_rbx &lt;b&gt;" in section and "<b>\"" not in section
    assert "<code>test_b[x]</code>" in page  # case name without the abi/product dimensions


def test_run_without_summary_is_incomplete(tmp_path: Path) -> None:
    run = _synthetic_run(tmp_path, summary=False)
    write_run_reports(run)
    assert "INCOMPLETE RUN" in (run / "index.html").read_text()
    assert "Bail out! incomplete run" in (run / "results.tap").read_text()
    assert json.loads((run / "kcidb.json").read_text())["checkouts"][0]["misc"]["complete"] is False


def test_cli_rejects_a_non_run_directory(tmp_path: Path, capsys) -> None:
    assert index_html.main([str(tmp_path)]) == 2
    assert "not a snplab run directory" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# real suite runs: one clean, one with an injected kernel bug


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if kvm_problem() is not None:
        pytest.skip(str(kvm_problem()))
    base = tmp_path_factory.mktemp("reports")
    return {"clean": suite_run(base / "clean"),
            "fault": suite_run(base / "fault", "--fault", FAULT)}


def test_tap_passes_the_tap_parser(runs: dict[str, Path]) -> None:
    from tap.parser import Parser

    run = load_run(runs["fault"])
    text = (runs["fault"] / "results.tap").read_text()
    lines = list(Parser().parse_text(text))
    assert [ln.category for ln in lines[:2]] == ["version", "plan"]
    assert lines[1].expected_tests == len(run.cases)
    assert not [ln for ln in lines if ln.category == "unknown"], "lines the parser cannot read"
    results = [ln for ln in lines if ln.category == "test"]
    assert [r.number for r in results] == list(range(1, len(run.cases) + 1))
    failed = [r for r in results if not r.ok]
    skipped = [r for r in results if r.directive.skip]
    counts = run.counts()
    assert len(failed) == counts["failed"] > 0
    assert len(skipped) == counts["skipped"] > 0
    assert all("not selected" in r.directive.reason or "stub" in r.directive.reason
               for r in skipped)
    assert all(r.yaml_block and r.yaml_block["property"] == "invalid_len_rbx" for r in failed)
    assert "Bail out!" not in text


def test_kcidb_json_passes_the_kcidb_schema(runs: dict[str, Path]) -> None:
    import jsonschema
    import kcidb_io

    data = json.loads((runs["fault"] / "kcidb.json").read_text())
    kcidb_io.schema.V5_3.validate(data)
    run = load_run(runs["fault"])
    statuses = {t["misc"]["nodeid"]: t["status"] for t in data["tests"]}
    assert statuses == {c.nodeid: kcidb.STATUS[c.outcome] for c in run.cases}
    assert {"PASS", "FAIL", "SKIP"} <= set(statuses.values())
    assert all(t["path"].startswith("snplab.invalid_len.") or t["path"].startswith("snplab.stub.")
               for t in data["tests"])
    assert data["checkouts"][0]["id"] == "snplab:" + run.host["kernel"]
    assert "not hardware" in data["tests"][0]["environment"]["comment"]
    # the schema check can fail: a status KCIDB does not know is rejected
    data["tests"][0]["status"] = "BROKEN"
    with pytest.raises(jsonschema.ValidationError):
        kcidb_io.schema.V5_3.validate(data)


# --------------------------------------------------------------------------------------------
# the pages in a real browser


@pytest.fixture(scope="module")
def browser():
    from headless_chromium import Browser, BrowserUnavailable, ensure_chromium

    try:
        binary = ensure_chromium()
    except BrowserUnavailable as e:
        pytest.skip(f"headless Chromium unavailable: {e}")
    with Browser(binary) as b:
        yield b


def _links_resolve(browser, page: Path) -> list[str]:
    """Every link of the rendered page that points nowhere (missing file or anchor)."""
    hrefs = browser.eval("[...document.querySelectorAll('a[href]')].map(a => a.href)")
    assert hrefs
    broken = []
    for h in hrefs:
        u = urlparse(h)
        target = Path(unquote(u.path))
        if u.scheme != "file" or not target.exists():
            broken.append(h)
        elif u.fragment and target == page and not browser.eval(
                f"document.getElementById({json.dumps(unquote(u.fragment))}) !== null"):
            broken.append(h)
    return broken


def test_index_in_chromium(runs: dict[str, Path], browser) -> None:
    run_dir = runs["fault"]
    run = load_run(run_dir)
    page = run_dir / "index.html"
    browser.open(page.as_uri())
    assert browser.eval("document.title") == f"snplab run {run.run_id}"
    assert "not hardware" in browser.eval("document.getElementById('emulated-banner').innerText")
    cells = browser.eval("Object.fromEntries(['passed','failed','skipped','error'].map(o => "
                         "[o, document.querySelectorAll('a.cell[data-outcome=' + o + ']').length]))")
    counts = run.counts()
    assert cells == {o: counts.get(o, 0) for o in ("passed", "failed", "skipped", "error")}
    first_bad = next(c for c in run.cases if c.bad)
    section = browser.eval(f"document.getElementById({json.dumps(first_bad.anchor)}).innerText")
    assert "violated property: invalid_len_rbx" in section
    assert "SW_EXITINFO2" in section and "INVALID_LEN" in section
    assert browser.eval("document.querySelectorAll('#buffer-sizes td[data-kind=broken]')"
                        ".length") > 0
    assert browser.eval("document.querySelectorAll('#timings svg').length") == 3
    assert _links_resolve(browser, page) == []
    shot = browser.screenshot(run_dir / "artifacts" / "index.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_clean_index_in_chromium(runs: dict[str, Path], browser) -> None:
    page = runs["clean"] / "index.html"
    browser.open(page.as_uri())
    assert browser.eval("document.querySelectorAll('a.cell[data-outcome=failed]').length") == 0
    assert "No case failed." in browser.eval("document.getElementById('cases').innerText")
    assert browser.eval("document.querySelectorAll('#buffer-sizes td[data-kind=broken]')"
                        ".length") == 0
    assert _links_resolve(browser, page) == []


def test_compare_page_in_chromium(runs: dict[str, Path], browser, tmp_path: Path) -> None:
    a, b = load_run(runs["clean"]), load_run(runs["fault"])
    out = write_compare_html(tmp_path / "compare.html", a, b, str(runs["clean"]),
                             str(runs["fault"]))
    browser.open(out.as_uri())
    changes = browser.eval("[...document.querySelectorAll('.change')].map(e => "
                           "[e.dataset.change, e.dataset.nodeid, e.innerText])")
    bad_b = {c.nodeid for c in b.cases if c.bad}
    assert {n for _, n, _ in changes} == bad_b
    assert all(label == "REGRESSION" for label, _, _ in changes)
    assert all("violated property (B): invalid_len_rbx" in text for _, _, text in changes)
    # the side-by-side shows the RBX the guest got in each run
    first = changes[0][2]
    assert "RBX 1→1" in first and "RBX 1→2" in first
    assert browser.eval("document.getElementById('timing-deltas') !== null")
    shot = browser.screenshot(runs["fault"] / "artifacts" / "compare.png")
    assert shot.stat().st_size > 20_000


# --------------------------------------------------------------------------------------------
# the run as it goes, and runs cut short


def _pytest(root: Path, *args: str, env: dict[str, str] | None = None,
            **kw) -> subprocess.Popen[str]:
    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "pytest", "suites", "-p", "no:cacheprovider",
                             "-p", "no:randomly", "-n", "2", *args], cwd=root, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@needs_kvm
def test_interrupted_run_keeps_finished_cases(tmp_path: Path) -> None:
    root = synthetic_suite(tmp_path / "syn")
    reports = tmp_path / "r"
    p = _pytest(root, "--reports", str(reports), env={"SYN_MODE": "sleep"})
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        done = list(reports.glob("*/tests/*.json"))
        if len(done) >= 6:
            break
        time.sleep(0.1)
    assert len(done) >= 6, "the fast cases did not finish"
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=120)
    run_dir = next(reports.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["incomplete"] is True and "interrupted" in summary["incomplete_reason"], out
    run = load_run(run_dir)
    assert {c.nodeid.rpartition("::")[2] for c in run.cases} == {f"test_fast[{k}]"
                                                                 for k in range(6)}
    assert "INCOMPLETE RUN" in (run_dir / "index.html").read_text()
    tap_text = (run_dir / "results.tap").read_text()
    assert tap_text.splitlines()[1] == "1..7" and "Bail out! incomplete run" in tap_text
    assert "INCOMPLETE run" in out


@needs_kvm
def test_dead_worker_run_is_marked_incomplete_progress_shown(tmp_path: Path) -> None:
    root = synthetic_suite(tmp_path / "syn")
    reports = tmp_path / "r"
    p = _pytest(root, "--reports", str(reports), "--snplab-progress", "0.000001",
                env={"SYN_MODE": "crash"})
    out, _ = p.communicate(timeout=300)
    # the progress line on the xdist controller: cases done / total, failures so far
    lines = [ln for ln in out.splitlines() if ln.startswith("snplab progress:")]
    done = [int(ln.split()[2].split("/")[0]) for ln in lines]
    assert lines and all(ln.split()[2].endswith("/7") for ln in lines), out
    assert done == sorted(done) and done[-1] == 7, out
    assert lines[-1].split(",")[1].strip().startswith("2 failed"), out
    assert "2 failed, 5 passed" in out  # pytest's own summary line is intact
    run_dir = next(reports.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["incomplete"] is True and "crashed worker" in summary["incomplete_reason"], out
    cases = load_run(run_dir).by_nodeid()
    assert len(cases) == 7  # the six that ran and the one lost with its worker
    lost = cases["suites/test_synthetic.py::test_zz_last"]
    assert lost.outcome == "error" and "crashed" in (lost.message or "")
    assert cases["suites/test_synthetic.py::test_fast[3]"].failed_property is None
    assert cases["suites/test_synthetic.py::test_fast[3]"].outcome == "failed"
    page = (run_dir / "index.html").read_text()
    assert "INCOMPLETE RUN" in page and "data-outcome='error'" in page


def test_tap_and_kcidb_of_a_synthetic_run(tmp_path: Path) -> None:
    run = _synthetic_run(tmp_path)
    text = tap.write_tap(run).read_text()
    assert "ok 1 suites/test_busy.py::test_c[stub-genoa] # SKIP stub never answers BUSY" in text
    assert 'property: "invalid_len_rbx <b>"' in text
    data = json.loads(kcidb.write_kcidb(run).read_text())
    paths = sorted(t["path"] for t in data["tests"])
    assert paths == ["snplab.busy.test_c.stub-genoa", "snplab.sizes.test_a.stub-milan",
                     "snplab.sizes.test_b.req-certs-milan-x"]
