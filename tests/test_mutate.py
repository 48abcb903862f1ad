"""snplab.mutate without guests: classification of per-test records, the report document against
its JSON Schema, the HTML page, the exit code and the CLI's argument errors."""

from __future__ import annotations

import jsonschema
import pytest

from snplab.cli import main
from snplab.emu.faults import FAULTS
from snplab.mutate.html import render
from snplab.mutate.matrix import (MutateReport, classify, control_outcome, failed_property,
                                  validate)
from snplab.mutate.runner import MutateOptions, pytest_command, selection

F = FAULTS["rbx-off-by-one"]  # breaks invalid_len_rbx


def rec(nodeid: str, outcome: str, prop: str | None = None, message: str = "") -> dict:
    return {"nodeid": nodeid, "family": nodeid.split("::")[0][len("suites/test_"):-3],
            "outcome": outcome, "failed_property": prop, "message": message}


def test_property_from_record_or_message():
    assert failed_property(rec("a", "failed", "seqno_advance")) == "seqno_advance"
    assert failed_property(rec("a", "failed", None, "host_error_no_seqno violated: x")) == \
        "host_error_no_seqno"
    assert failed_property(rec("a", "failed", None, "AssertionError: [1] != [1, 1]")) is None


@pytest.mark.parametrize("records,status", [
    ([rec("suites/test_sizes.py::a", "failed", "invalid_len_rbx")], "killed"),
    ([rec("suites/test_sizes.py::a", "failed", "run_completed")], "weakly-killed"),
    ([rec("suites/test_sizes.py::a", "failed", None, "boom")], "weakly-killed"),
    ([rec("suites/test_sizes.py::a", "passed"), rec("suites/test_sizes.py::b", "skipped")],
     "survived"),
    ([], "error"),
])
def test_classify(records, status):
    assert classify(F, records).status == status


def test_control_failures_are_not_kills():
    records = [rec("suites/test_sizes.py::flaky", "failed", "invalid_len_rbx")]
    assert classify(F, records, ignore=["suites/test_sizes.py::flaky"]).status == "survived"


def _report(outcomes, seen=()) -> MutateReport:
    return MutateReport(run_id="r", started="2026-12-04T00:00:00Z", wall_s=1.0, jobs=2,
                        product="milan", early_stop=False,
                        host={"cpu_count": 2, "loadavg_start": [0.1, 0.2, 0.3],
                              "loadavg_end": [0.1, 0.2, 0.3]},
                        control=control_outcome([rec("suites/test_sizes.py::a", "passed")], 0.5),
                        outcomes=tuple(outcomes), tests_seen=tuple(seen))


def test_report_document_validates_and_renders():
    killed = classify(F, [rec("suites/test_sizes.py::a", "failed", "invalid_len_rbx"),
                          rec("suites/test_retry.py::b", "failed", "run_completed"),
                          rec("suites/test_certs.py::c", "passed")])
    survived = classify(FAULTS["vmm-stale-blob"], [rec("suites/test_sizes.py::a", "passed")])
    r = _report([killed, survived], seen=["suites/test_sizes.py::a", "suites/test_retry.py::b",
                                          "suites/test_certs.py::c"])
    doc = r.to_json()
    validate(doc)
    assert r.exit_code == 1 and doc["survivors"] == ["vmm-stale-blob"]
    assert doc["summary"]["kill_rate"] == 0.5
    assert doc["tests_killing_nothing"] == ["suites/test_certs.py::c"]
    fam = doc["faults"][0]["families"]
    assert fam["sizes"]["first_property"] == "invalid_len_rbx" and fam["sizes"]["specific"]
    assert fam["retry"]["specific"] is False
    html = render(doc)
    assert "<script" not in html and "vmm-stale-blob" in html and "survived" in html
    assert _report([killed]).exit_code == 0


def test_schema_rejects_a_broken_document():
    doc = _report([classify(F, [])]).to_json()
    doc["faults"][0]["status"] = "maybe"
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


def test_selection_and_command():
    assert selection(("stub", "req-certs", "vmgexit-v15"), "milan") == "milan"
    assert selection(("req-certs", "vmgexit-v15"), "milan") == "milan and (req-certs or vmgexit-v15)"
    assert selection(("stub",), "auto") == "(stub)"
    opts = MutateOptions(reports=__import__("pathlib").Path("/tmp/x"), early_stop=True)
    cmd = pytest_command(opts, opts.reports, "rbx-off-by-one", ("req-certs",))
    assert cmd[cmd.index("--fault") + 1] == "rbx-off-by-one" and "-x" in cmd
    assert "-x" not in pytest_command(opts, opts.reports, None, ("req-certs",))


def test_cli_refuses_an_unknown_fault(capsys):
    assert main(["mutate", "no-such-fault"]) == 2
    assert "unknown fault" in capsys.readouterr().err


def test_cli_lists_the_catalog(capsys):
    assert main(["mutate", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in FAULTS)
