"""INVALID_LEN: the exact encoding, RBX, no write into the guest's buffer, no firmware call."""

from __future__ import annotations

import pytest

from snplab import checks
from snplab.scenario import Scenario, Step, pages_for

pytestmark = pytest.mark.abi("req-certs", "vmgexit-v15")


def test_encoding_and_rbx(run_scenario, abi, product, cert_blob):
    """A one-page buffer for a multi-page blob: SW_EXITINFO1 = 0, SW_EXITINFO2 = 1 << 32
    exactly (no firmware status bits), RBX = ceil(blob / 4096)."""
    need = pages_for(len(cert_blob))
    if need < 2:
        pytest.skip(f"the {len(cert_blob)}-byte blob fits in one page")
    t = run_scenario(Scenario.single(abi, product, Step.ext(1)))
    checks.assert_run_completed(t)
    checks.assert_invalid_len(t, 0, 0, pages=need)
    checks.assert_invalid_len_encoding(t)
    checks.assert_invalid_len_rbx(t)


def test_nothing_written_and_no_firmware_call(run_scenario, abi, product, cert_blob):
    """INVALID_LEN leaves the guest's buffer untouched and never reaches the firmware: the
    sequence number is not consumed, so the next request uses 1 again and succeeds."""
    need = pages_for(len(cert_blob))
    t = run_scenario(Scenario.single(abi, product, Step.ext(need - 1), Step.ext(need)))
    checks.assert_run_completed(t)
    checks.assert_invalid_len_no_write(t)
    checks.assert_host_error_no_seqno(t)
    checks.assert_success(t, 0, 1)
    assert [a.seqno for s in t.steps(0) for a in s.attempts] == [1, 1], \
        "host_error_no_seqno violated: INVALID_LEN consumed a sequence number"
    checks.assert_invariants(t)


def test_zero_pages(run_scenario, abi, product, cert_blob):
    """RBX = 0 (a guest asking how much room it needs) still exits to the VMM and gets
    INVALID_LEN with the pages needed."""
    need = pages_for(len(cert_blob))
    t = run_scenario(Scenario.single(abi, product, Step.ext(0)))
    checks.assert_run_completed(t)
    checks.assert_invalid_len(t, 0, 0, pages=need)
    checks.assert_invariants(t)


def test_vmm_scripted_page_count(run_scenario, abi, product, cert_blob):
    """KVM must copy the page count the VMM wrote back into RBX verbatim (userspace cannot set
    guest registers of a protected guest)."""
    t = run_scenario(Scenario.single(abi, product, Step.ext(1),
                                     cert_answers=("enospc-npages:7",)))
    checks.assert_run_completed(t)
    checks.assert_invalid_len(t, 0, 0, pages=7)
    checks.assert_invariants(t)


@pytest.mark.parametrize("npages", [(1 << 32) - 1, (1 << 32) + 1], ids=["2^32-1", "2^32+1"])
def test_hostile_page_count(run_scenario, abi, product, cert_blob, trust, npages):
    """RBX = 2^32 - 1 or 2^32 + 1 pages is forwarded as is (no 32-bit truncation on the way to
    the VMM): the VMM writes only the blob (never past it) and the request succeeds, or the
    guest is told INVALID_LEN; never a crash or hang."""
    t = run_scenario(Scenario.single(abi, product, Step.ext(npages)))
    checks.assert_run_completed(t)
    checks.assert_cert_exit_args(t)
    checks.assert_invariants(t)
    a = t.attempts(0, 0)[0]
    assert a.rbx_in == npages
    if a.completed:
        checks.assert_cert_table_matches_blob(t, 0, 0)


def test_repeated_invalid_len_same_answer(run_scenario, abi, product, cert_blob):
    """Asking twice with too small a buffer gets the same answer twice, and neither uses a
    sequence number."""
    need = pages_for(len(cert_blob))
    t = run_scenario(Scenario.single(abi, product, Step.ext(need - 1), Step.ext(0),
                                     Step.ext(need)))
    checks.assert_run_completed(t)
    checks.assert_invalid_len(t, 0, 0, pages=need)
    checks.assert_invalid_len(t, 0, 1, pages=need)
    checks.assert_success(t, 0, 2)
    assert t.attempts(0, 2)[0].seqno == 1
    checks.assert_invariants(t)
