"""BUSY: the VMM answers EAGAIN, the guest sees SW_EXITINFO2 = 2 << 32, re-sends the identical
message, and no sequence number is consumed until the request really reaches the firmware."""

from __future__ import annotations

import pytest

from snplab import checks
from snplab.scenario import Scenario, Step, pages_for

pytestmark = pytest.mark.abi("req-certs", "vmgexit-v15")


@pytest.mark.parametrize("nbusy", [1, 3])
def test_busy_then_success(run_scenario, abi, product, cert_blob, trust, report_data, nbusy):
    """``nbusy`` BUSY answers, each followed by the byte-identical message, then success: every
    attempt used sequence number 1 and the report verifies."""
    need = pages_for(len(cert_blob))
    t = run_scenario(Scenario.single(
        abi, product, Step.ext(need, policy="linux", report_data=report_data),
        cert_answers=("EAGAIN",) * nbusy))
    checks.assert_run_completed(t)
    checks.assert_invariants(t)
    for k in range(nbusy):
        checks.assert_exit(t, 0, 0, checks.BUSY, attempt=k, name="busy_encoding")
    checks.assert_busy_resent_identical(t)
    checks.assert_host_error_no_seqno(t)
    assert [a.seqno for a in t.attempts(0, 0)] == [1] * (nbusy + 1), t.summary()
    checks.assert_step_verified(t, 0, 0, trust)
    checks.assert_invariants(t)


def test_busy_retries_exhausted(run_scenario, abi, product, cert_blob):
    """More BUSY answers than the guest's retry budget: the step ends BUSY, no sequence number
    was used, and the next request (under seqno 1) succeeds."""
    need = pages_for(len(cert_blob))
    t = run_scenario(Scenario.single(
        abi, product, Step.ext(need, policy="linux", max_busy_retries=2), Step.ext(need),
        cert_answers=("EAGAIN",) * 3))
    checks.assert_run_completed(t)
    checks.assert_invariants(t)
    for k in range(3):
        checks.assert_exit(t, 0, 0, checks.BUSY, attempt=k, name="busy_encoding")
    assert len(t.attempts(0, 0)) == 3, t.summary()
    checks.assert_success(t, 0, 1)
    assert t.attempts(0, 1)[0].seqno == 1, "BUSY consumed a sequence number"
    checks.assert_invariants(t)


def test_busy_after_invalid_len(run_scenario, abi, product, cert_blob, trust, report_data):
    """INVALID_LEN, then BUSY on the grown request: the Linux policy still ends verified with
    seqnos 1 (plain resend), 3, 3."""
    need = pages_for(len(cert_blob))
    if need < 2:
        pytest.skip("the blob fits in one page")
    t = run_scenario(Scenario.single(
        abi, product, Step.ext(1, policy="linux", report_data=report_data),
        cert_answers=("auto", "EAGAIN")))
    checks.assert_run_completed(t)
    checks.assert_invalid_len(t, 0, 0, pages=need, attempt=0)
    assert [a.seqno for a in t.attempts(0, 0)] == [1, 1, 3, 3], t.summary()
    checks.assert_step_verified(t, 0, 0, trust)
    checks.assert_invariants(t)
