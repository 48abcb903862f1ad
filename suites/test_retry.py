"""Retries after INVALID_LEN: the Linux driver's policy ends verified without IV reuse; the
naive policy (re-encrypting under the same sequence number) is caught by the oracle."""

from __future__ import annotations

import pytest

from snplab import checks
from snplab.abi.ghcb import SVM_VMGEXIT_EXT_GUEST_REQUEST, SVM_VMGEXIT_GUEST_REQUEST
from snplab.scenario import Scenario, Step, pages_for

pytestmark = pytest.mark.abi("req-certs", "vmgexit-v15")


@pytest.mark.parametrize("first", [0, 1])
def test_linux_policy(run_scenario, abi, product, cert_blob, trust, report_data, first):
    """INVALID_LEN → the identical bytes re-sent as a plain request (consuming seqno 1) → a new
    extended request under seqno 3 with RBX pages: the report verifies, seqnos go 1, 1, 3."""
    need = pages_for(len(cert_blob))
    if first >= need:
        pytest.skip(f"the {len(cert_blob)}-byte blob fits in {first} page(s)")
    t = run_scenario(Scenario.single(abi, product, Step.ext(first, policy="linux",
                                                            report_data=report_data)))
    checks.assert_run_completed(t)
    checks.assert_invariants(t)
    atts = t.attempts(0, 0)
    assert [(a.exit_code, a.seqno, a.resent) for a in atts] == [
        (SVM_VMGEXIT_EXT_GUEST_REQUEST, 1, False), (SVM_VMGEXIT_GUEST_REQUEST, 1, True),
        (SVM_VMGEXIT_EXT_GUEST_REQUEST, 3, False)], t.summary()
    assert atts[2].rbx_in == need
    checks.assert_step_verified(t, 0, 0, trust)


def test_linux_policy_twice(run_scenario, abi, product, cert_blob, trust, report_data):
    """Two Linux-style requests in a row: sequence numbers 1, 3 then 5, 7, each report
    verifies and carries its own REPORT_DATA."""
    if pages_for(len(cert_blob)) < 2:
        pytest.skip(f"the {len(cert_blob)}-byte blob fits in one page: no INVALID_LEN to retry")
    rd2 = bytes(reversed(report_data))
    t = run_scenario(Scenario.single(abi, product,
                                     Step.ext(1, policy="linux", report_data=report_data),
                                     Step.ext(1, policy="linux", report_data=rd2)))
    checks.assert_run_completed(t)
    checks.assert_invariants(t)
    assert [a.seqno for s in t.steps(0) for a in s.attempts] == [1, 1, 3, 5, 5, 7], t.summary()
    checks.assert_step_verified(t, 0, 0, trust)
    checks.assert_step_verified(t, 0, 1, trust)


def test_naive_policy_is_detected(run_scenario, abi, product, cert_blob):
    """Re-encrypting a changed request under the same sequence number after INVALID_LEN is IV
    reuse: the oracle must report it (this test passes only if the oracle catches it)."""
    if pages_for(len(cert_blob)) < 2:
        pytest.skip(f"the {len(cert_blob)}-byte blob fits in one page: no INVALID_LEN to retry")
    t = run_scenario(Scenario.single(abi, product, Step.ext(1, policy="naive")))
    checks.assert_run_completed(t)
    r = checks.no_iv_reuse(t)
    assert r.ok is False, f"IV reuse by the naive policy went unnoticed: {r.message}"
    assert "seqno 1" in r.detail


def test_linux_policy_large_table(run_scenario, abi, product, cert_blob, trust, report_data):
    """A table larger than 16 KiB (5 pages: certificates plus host padding) still reaches the
    guest through the Linux policy's retry (no cap on the buffer the guest grows to)."""
    blob = cert_blob + bytes(4 * 4096 + 1 - len(cert_blob)) if len(cert_blob) <= 4 * 4096 \
        else cert_blob
    need = pages_for(len(blob))
    t = run_scenario(Scenario.single(abi, product, Step.ext(1, policy="linux",
                                                            report_data=report_data),
                                     cert_blob=blob))
    checks.assert_run_completed(t)
    checks.assert_invariants(t)
    assert t.attempts(0, 0)[-1].rbx_in == need, t.summary()
    checks.assert_step_verified(t, 0, 0, trust)


@pytest.mark.parametrize("signer", ["vlek"])
def test_linux_policy_vlek(run_scenario, abi, product, signer, cert_blob, trust, report_data):
    """The same retry against a host whose reports are signed with a VLEK: the final table
    carries the VLEK and the report verifies through the ASVK."""
    t = run_scenario(Scenario.single(abi, product, Step.ext(1, policy="linux",
                                                            report_data=report_data),
                                     signer=signer))
    checks.assert_run_completed(t)
    checks.assert_invariants(t)
    checks.assert_step_verified(t, 0, 0, trust)
