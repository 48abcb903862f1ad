"""Concurrency: several vCPUs of one guest, and several guests, requesting at once. Every report
verifies and carries its requester's REPORT_DATA; sequence numbers never cross vCPUs or VMPCKs."""

from __future__ import annotations

import hashlib

import pytest

from snplab import checks
from snplab.abi.cert_table import VCEK_GUID, parse_table
from snplab.scenario import Scenario, Step, pages_for


def rd(tag: str) -> bytes:
    return hashlib.sha512(tag.encode()).digest()


def verify_all(t, abi: str, cert_blob: bytes, trust) -> None:
    """Every step of every vCPU completed and its report verifies (stub: with the host's VEK)."""
    for v in range(t.nvcpus):
        for s in t.steps(v):
            checks.assert_success(t, v, s.index)
            checks.assert_report_data_roundtrip(t, v, s.index)
            if abi == "stub":
                vek = parse_table(cert_blob).get(VCEK_GUID)
                checks.assert_report_verifies_with(t, v, s.index, vek, trust=trust)
            else:
                checks.assert_step_verified(t, v, s.index, trust)


@pytest.mark.parametrize("nvcpus", [2, 4])
def test_vcpus_with_own_vmpck(run_scenario, abi, product, cert_blob, trust, nvcpus):
    """``nvcpus`` vCPUs, vCPU v using VMPCK v (asking for a VMPL-v report), two Linux-policy
    requests each, all at once."""
    need = pages_for(len(cert_blob))
    # VMPCKn belongs to VMPLn: a report requested with it asks for VMPL n (MSG_REPORT_REQ.VMPL)
    scripts = [[Step.ext(need - 1 if abi != "stub" else need, policy="linux", vmpck=v, vmpl=v,
                         report_data=rd(f"v{v}s0")),
                Step.ext(need, policy="linux", vmpck=v, vmpl=v, report_data=rd(f"v{v}s1"))]
               for v in range(nvcpus)]
    t = run_scenario(Scenario.multi(abi, product, scripts))
    checks.assert_run_completed(t)
    checks.assert_invariants(t)
    verify_all(t, abi, cert_blob, trust)
    for v in range(nvcpus):
        assert {a.vmpck for s in t.steps(v) for a in s.attempts} == {v}


def test_two_guests_at_once(run_scenario, abi, product, cert_blob, trust):
    """Two guests, two vCPUs each, sharing the host's certificate file: each guest's reports
    verify and carry that guest's REPORT_DATA."""
    need = pages_for(len(cert_blob))
    guests = [Scenario.multi(abi, product,
                             [[Step.ext(need, policy="linux", vmpck=v, vmpl=v,
                                        report_data=rd(f"g{g}v{v}"))]
                              for v in range(2)], name=f"guest{g}")
              for g in range(2)]
    ts = run_scenario.many(guests)
    assert len(ts) == 2
    for t in ts:
        checks.assert_run_completed(t)
        checks.assert_invariants(t)
        verify_all(t, abi, cert_blob, trust)
    assert ts[0].report(0, 0) != ts[1].report(0, 0)
