"""The Linux 6.11–6.19 stub: no exit to the VMM, an empty certificate table (24 zero bytes) when
RBX != 0, never INVALID_LEN or BUSY; the report still verifies with certificates the user
fetches elsewhere (as from AMD's KDS)."""

from __future__ import annotations

import pytest

from snplab import checks
from snplab.abi.cert_table import VCEK_GUID, VLEK_GUID, parse_table
from snplab.scenario import Scenario, Step, pages_for

pytestmark = pytest.mark.abi("stub")


@pytest.mark.parametrize("case", ["1", "need", "large"])
def test_empty_table(run_scenario, abi, product, cert_blob, case):
    """Whatever the buffer size, the stub answers success with an empty table, no exit."""
    need = pages_for(len(cert_blob))
    npages = {"1": 1, "need": need, "large": 64}[case]
    t = run_scenario(Scenario.single(abi, product, Step.ext(npages)))
    checks.assert_run_completed(t)
    checks.assert_success(t, 0, 0)
    checks.assert_stub_no_vmm_errors(t)
    checks.assert_stub_empty_table(t, 0, 0)
    assert t.events_of("ReqCerts") == [] and t.events_of("VmgexitReqCerts") == []
    checks.assert_invariants(t)


def test_zero_pages(run_scenario, abi, product, cert_blob):
    """RBX = 0: nothing is written at all, and the request succeeds."""
    t = run_scenario(Scenario.single(abi, product, Step.ext(0)))
    checks.assert_run_completed(t)
    checks.assert_success(t, 0, 0)
    checks.assert_stub_no_vmm_errors(t)
    checks.assert_stub_empty_table(t, 0, 0)  # with RBX = 0: the buffer stays untouched
    checks.assert_invariants(t)


@pytest.mark.parametrize("signer", ["vcek", "vlek"])
def test_report_verifies_with_fetched_certificates(run_scenario, abi, product, signer, cert_blob,
                                                   trust, report_data):
    """The report from an extended request on the stub verifies with the VEK the test supplies
    (the host's certificate file stands in for AMD's KDS)."""
    t = run_scenario(Scenario.single(abi, product, Step.ext(pages_for(len(cert_blob)),
                                                            report_data=report_data),
                                     signer=signer))
    checks.assert_run_completed(t)
    checks.assert_success(t, 0, 0)
    vek = parse_table(cert_blob).get(VLEK_GUID if signer == "vlek" else VCEK_GUID)
    assert vek is not None
    checks.assert_report_verifies_with(t, 0, 0, vek, trust=trust)
    checks.assert_report_data_roundtrip(t, 0, 0)
    checks.assert_invariants(t)


def test_scripted_answers_are_never_used(run_scenario, abi, product, cert_blob):
    """Answers the VMM would give (EAGAIN, ENOSPC) are never asked for: the stub has no exit."""
    t = run_scenario(Scenario.single(abi, product, Step.ext(1), Step.ext(1),
                                     cert_answers=("EAGAIN", "ENOSPC")))
    checks.assert_run_completed(t)
    checks.assert_success(t, 0, 0)
    checks.assert_success(t, 0, 1)
    assert [a.seqno for s in t.steps(0) for a in s.attempts] == [1, 3]
    checks.assert_invariants(t)
