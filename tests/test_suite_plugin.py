"""The suite's pytest plugin, driven with pytester against a fake platform: parametrisation over
ABI profiles and products, skips with reasons, per-test JSON reports with the violated property,
artifacts of failing tests, JUnit XML and one summary line per family."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from snplab.platform import kvm_problem

pytest_plugins = ["pytester"]

FAKE_CONFTEST = textwrap.dedent('''
    import sys
    sys.path.insert(0, {tests_dir!r})
    import snplab.platform as plat
    from snplab.abi.cert_table import ARK_GUID, ASK_GUID, VCEK_GUID, build_table
    from snplab_synthetic import attempt, cert_exit, log_entry, step, transcript, vcpu

    BLOB = build_table([(VCEK_GUID, b"V" * 1400), (ASK_GUID, b"S" * 1700), (ARK_GUID, b"A" * 1700)])

    class FakePlatform:
        """Answers every scenario with one completed extended request (or INVALID_LEN when the
        scenario offers fewer pages than the blob needs)."""
        name = "emulated"
        host_abi = None
        host_product = None
        def __init__(self, **opts):
            self.opts = opts
        def cert_blob(self, product, signer):
            return BLOB
        def trust(self, product):
            return None
        def run(self, sc):
            n = sc.steps[0][0].certs_npages
            if n < 2:
                s = step([attempt(1, 1 << 32, rbx_in=n, rbx_out=2)], outcome=2)
                return transcript(sc, [vcpu([s], seqno_next=[1, 1, 1, 1])],
                                  events=[cert_exit(n, 28, 2)], blob=BLOB,
                                  message_log=[log_entry(1, reached=False)])
            s = step([attempt(1, 0, rbx_in=n)], certs=(0, len(BLOB)))
            return transcript(sc, [vcpu([s], seqno_next=[3, 1, 1, 1], cert_store=BLOB)],
                              events=[cert_exit(n, 0, 0)], blob=BLOB,
                              message_log=[log_entry(1, reached=True)])
        def run_many(self, scs):
            return [self.run(s) for s in scs]
        def close(self):
            pass

    plat.PLATFORMS["emulated"] = FakePlatform
''')

SUITE = textwrap.dedent('''
    import pytest
    from snplab import checks
    from snplab.scenario import Scenario, Step

    @pytest.mark.abi("req-certs", "vmgexit-v15")
    def test_ok(run_scenario, abi, product):
        """A request with enough room completes."""
        t = run_scenario(Scenario.single(abi, product, Step.ext(2)))
        checks.assert_success(t, 0, 0)
        checks.assert_invariants(t)

    @pytest.mark.abi("req-certs")
    def test_wrong_expectation(run_scenario, abi, product):
        """Expects RBX = 5 where the host says 2: fails naming invalid_len_rbx."""
        t = run_scenario(Scenario.single(abi, product, Step.ext(1)))
        checks.assert_invalid_len(t, 0, 0, pages=5)

    @pytest.mark.hw_only
    def test_hardware(run_scenario):
        """Needs a real host."""
''')


@pytest.fixture
def suite_dir(pytester: pytest.Pytester) -> pytest.Pytester:
    tests_dir = str(Path(__file__).resolve().parent)
    pytester.makeconftest('pytest_plugins = ["snplab.pytest_plugin"]\n'
                          + FAKE_CONFTEST.format(tests_dir=tests_dir))
    suites = pytester.mkdir("suites")
    (suites / "test_alpha.py").write_text(SUITE)
    return pytester


def _kvm_usable() -> bool:
    return kvm_problem() is None


pytestmark = pytest.mark.skipif(not _kvm_usable(), reason="suite tests need a usable /dev/kvm")


def test_parametrisation_skips_and_reports(suite_dir: pytest.Pytester, tmp_path: Path):
    rep = tmp_path / "rep"
    res = suite_dir.runpytest("suites", "--reports", str(rep), "-p", "no:cacheprovider",
                              "-p", "no:randomly")
    # 2 ABIs × 3 products ok, 3 products failing, 1 hw_only skipped
    res.assert_outcomes(passed=6, failed=3, skipped=1)
    res.stdout.fnmatch_lines(["*snplab summary*", "snplab[[]emulated[]] alpha*6 passed*3 failed*1 "
                              "skipped*invalid_len_rbx*"])
    (run,) = list(rep.iterdir())
    assert (run / "junit.xml").is_file()
    records = {json.loads(p.read_text())["nodeid"]: json.loads(p.read_text())
               for p in (run / "tests").glob("*.json")}
    assert len(records) == 10
    bad = records["suites/test_alpha.py::test_wrong_expectation[req-certs-genoa]"]
    assert bad["outcome"] == "failed" and bad["failed_property"] == "invalid_len_rbx"
    assert bad["runs"][0]["scenario"]["product"] == "genoa"
    assert bad["doc"].startswith("Expects RBX = 5")
    good = records["suites/test_alpha.py::test_ok[vmgexit-v15-turin]"]
    assert good["outcome"] == "passed" and {v["name"] for v in good["verdicts"]} >= {"no_iv_reuse"}
    hw = records["suites/test_alpha.py::test_hardware"]
    assert hw["outcome"] == "skipped" and "real SNP host" in hw["message"]
    arts = list((run / "artifacts").iterdir())
    assert len(arts) == 3 and all(any(a.glob("run0.transcript.json")) for a in arts)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["families"]["alpha"]["failed"] == 3


def test_abi_and_product_selection_skip_with_reason(suite_dir: pytest.Pytester, tmp_path: Path):
    res = suite_dir.runpytest("suites", "--reports", str(tmp_path), "--abi", "vmgexit-v15",
                              "--product", "milan", "-k", "test_ok", "-rs",
                              "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1, skipped=5)
    res.stdout.fnmatch_lines(["*ABI req-certs not selected (--abi vmgexit-v15)*",
                              "*product genoa not selected (--product milan)*"])


def test_xdist_workers_write_one_run(suite_dir: pytest.Pytester, tmp_path: Path):
    res = suite_dir.runpytest_subprocess("suites", "-n", "2", "--reports", str(tmp_path),
                                         "-p", "no:cacheprovider")
    res.assert_outcomes(passed=6, failed=3, skipped=1)
    (run,) = list(tmp_path.iterdir())
    workers = {json.loads(p.read_text())["worker"] for p in (run / "tests").glob("*.json")}
    assert workers <= {"gw0", "gw1"} and len(list((run / "tests").glob("*.json"))) == 10
    assert (run / "junit.xml").is_file() and (run / "summary.json").is_file()
    res.stdout.fnmatch_lines(["snplab[[]emulated[]] alpha*6 passed*3 failed*"])


def test_fault_option_needs_emulated(suite_dir: pytest.Pytester, tmp_path: Path):
    res = suite_dir.runpytest("suites", "--platform", "snp", "--fault", "x",
                              "-p", "no:cacheprovider")
    assert res.ret != 0
    res.stderr.fnmatch_lines(["*--fault needs the emulated platform*"])


def test_kernel_behaviour_option(suite_dir: pytest.Pytester, tmp_path: Path):
    """--kernel-behaviour GEN: unknown names are a one-line usage error; a known one goes into
    every scenario, skips the profiles it cannot play (with the reason) and heads the run."""
    res = suite_dir.runpytest("suites", "--kernel-behaviour", "6.12", "-p", "no:cacheprovider")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["ERROR: --kernel-behaviour 6.12: unknown kernel behaviour (known: v15, "
                              "6.11-stub, 7.0, newest)"])
    rep = tmp_path / "rep"
    res = suite_dir.runpytest("suites", "--kernel-behaviour", "7.0", "--reports", str(rep), "-k",
                              "test_ok", "-rs", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=3, skipped=3)
    res.stdout.fnmatch_lines(["snplab: kernel behaviour: 7.0 (forced by --kernel-behaviour)",
                              "*kernel behaviour 7.0 cannot play ABI vmgexit-v15*"])
    (run,) = list(rep.iterdir())
    records = [json.loads(p.read_text()) for p in (run / "tests").glob("*.json")]
    rec = next(r for r in records if r["nodeid"].endswith("test_ok[req-certs-milan]"))
    assert rec["runs"][0]["scenario"]["kernel"] == "7.0"
    assert "kernel_behaviour_detected" in rec["host"]
    assert json.loads((run / "summary.json").read_text())["kernel_behaviour"].startswith("7.0")
