"""Certificate buffer sizes: what the host answers for every interesting buffer size.

A buffer smaller than the blob gets INVALID_LEN with the pages needed in RBX; an exact or larger
one gets the table; blob sizes on and off a page boundary; a misaligned certificate GPA is
malformed input (GHCB error, no exit, no firmware call).
"""

from __future__ import annotations

import uuid

import pytest

from snplab import checks
from snplab.abi.cert_table import (ARK_GUID, ASK_GUID, VCEK_GUID, VLEK_GUID, build_table,
                                   parse_table)
from snplab.scenario import Scenario, Step, pages_for

LARGE = 64  # pages: well above any chain, below the guest's 128-page certificate area


def npages_for(case: str, need: int) -> int:
    return {"0": 0, "1": 1, "need-1": need - 1, "need": need, "need+1": need + 1,
            "large": LARGE}[case]


@pytest.mark.abi("req-certs", "vmgexit-v15")
@pytest.mark.parametrize("case", ["0", "1", "need-1", "need", "need+1", "large"])
def test_buffer_size(run_scenario, abi, product, cert_blob, trust, report_data, case):
    """npages below the blob's size gets INVALID_LEN + RBX = need and nothing written; at or above
    it the table equals the served blob and the report verifies against it."""
    need = pages_for(len(cert_blob))
    npages = npages_for(case, need)
    t = run_scenario(Scenario.single(abi, product, Step.ext(npages, report_data=report_data)))
    checks.assert_run_completed(t)
    checks.assert_invariants(t)
    if npages < need:
        checks.assert_invalid_len(t, 0, 0, pages=need)
        checks.assert_invalid_len_no_write(t)
    else:
        checks.assert_step_verified(t, 0, 0, trust)


def padded_blob(blob: bytes, length: int) -> bytes:
    """The same table and certificates, zero-padded to ``length`` bytes (hosts pad blobs)."""
    assert length >= len(blob)
    return blob + bytes(length - len(blob))


@pytest.mark.abi("req-certs", "vmgexit-v15")
@pytest.mark.parametrize("shape", ["page-multiple", "multiple+1", "multiple-1"])
def test_blob_size(run_scenario, abi, product, cert_blob, trust, report_data, shape):
    """A blob of exactly N pages needs N pages, one byte more needs N+1: the guest offering
    need-1 pages is told need, then gets the table with need pages."""
    base = (pages_for(len(cert_blob)) + 1) * 4096
    length = {"page-multiple": base, "multiple+1": base + 1, "multiple-1": base - 1}[shape]
    blob = padded_blob(cert_blob, length)
    need = pages_for(length)
    # the same message twice: after INVALID_LEN, seqno 1 is still unused (a different message
    # under it would be IV reuse, which the invariants would rightly report)
    t = run_scenario(Scenario.single(abi, product, Step.ext(need - 1, report_data=report_data),
                                     Step.ext(need, report_data=report_data), cert_blob=blob))
    checks.assert_run_completed(t)
    checks.assert_invariants(t)
    checks.assert_invalid_len(t, 0, 0, pages=need)
    checks.assert_step_verified(t, 0, 1, trust)


@pytest.mark.abi("req-certs", "vmgexit-v15")
def test_blob_with_extra_entries(run_scenario, abi, product, cert_blob, trust, report_data):
    """A table with an entry the guest does not know (and a VLEK next to the VCEK) is passed
    through byte for byte; the report still verifies."""
    table = parse_table(cert_blob)
    entries = [(g, table.get(g)) for g in (VCEK_GUID, VLEK_GUID, ASK_GUID, ARK_GUID)
               if table.get(g) is not None]
    entries.append((uuid.UUID("5a8b0000-0000-4000-8000-0000000000aa"), b"opaque host data"))
    blob = build_table(entries)
    t = run_scenario(Scenario.single(abi, product, Step.ext(pages_for(len(blob)),
                                                            report_data=report_data),
                                     cert_blob=blob))
    checks.assert_run_completed(t)
    checks.assert_invariants(t)
    checks.assert_step_verified(t, 0, 0, trust)


@pytest.mark.parametrize("offset", [8, 0x800])
def test_misaligned_certificate_gpa(run_scenario, abi, product, cert_blob, offset):
    """A certificate GPA that is not 4 KiB aligned is refused before any certificate exit or
    firmware call (registry row certs-gpa-unaligned: SW_EXITINFO1 = 2, SW_EXITINFO2 =
    INVALID_INPUT 5; v15: EXITINFO1 = 0 and GENERIC), so the next request still uses sequence
    number 1 and succeeds."""
    need = pages_for(len(cert_blob))
    t = run_scenario(Scenario.single(abi, product, Step.ext(need, certs_gpa_offset=offset),
                                     Step.ext(need)))
    checks.assert_run_completed(t)
    checks.assert_invariants(t)
    # v15 checks RAX alignment in snp_begin_ext_guest_req, not in sev_es_validate_vmgexit:
    # GENERIC with EXITINFO1 = 0 there (fidelity-review D2); the registry row says which
    checks.assert_kernel_answer(t, 0, 0)
    checks.assert_success(t, 0, 1)
    assert t.attempts(0, 1)[0].seqno == 1, "the rejected request consumed a sequence number"
