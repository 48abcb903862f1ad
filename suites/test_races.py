"""Races: the host's certificate file is replaced (a TCB update with a new VCEK) while guests
request. With the lock convention of the kernel documentation (the VMM holds a shared lock from
the certificate exit until the request reached the firmware; the updater takes it exclusively)
every guest gets a table consistent with its report — BUSY allowed, a mismatch never."""

from __future__ import annotations

import pytest

from snplab import checks
from snplab.abi.report import REPORTED_TCB_OFFSET
from snplab.scenario import Scenario, Step, pages_for

pytestmark = [pytest.mark.abi("req-certs", "vmgexit-v15"), pytest.mark.emulated_only]


def consistent(t, trust) -> int:
    """Assert every completed step's report verifies with the table it got; returns how many."""
    n = 0
    for v in range(t.nvcpus):
        for s in t.steps(v):
            if s.last is not None and s.last.completed and s.certs:
                checks.assert_cert_table_parses(t, v, s.index)
                checks.assert_report_verifies(t, v, s.index, trust)
                n += 1
    return n


@pytest.mark.parametrize("updates", [1, 3])
def test_tcb_update_while_requesting(run_scenario, abi, product, cert_blob, trust, updates):
    """Two vCPUs keep requesting while the host updates the TCB ``updates`` times: each report
    verifies with the VCEK in its own table (REPORTED_TCB = the VCEK's TCB)."""
    need = pages_for(len(cert_blob))
    script = [Step.ext(need, policy="linux", max_busy_retries=6, vmpck=v, vmpl=v)
              for v in range(2)]
    scripts = [[script[v]] * 4 for v in range(2)]
    t = run_scenario(Scenario.multi(abi, product, scripts, tcb_updates=updates))
    checks.assert_run_completed(t)
    checks.assert_invariants(t)
    n = consistent(t, trust)
    assert n >= 1, f"no request completed: {t.summary()}"
    assert len(t.served_blobs()) == updates + 1, "the certificate file was not replaced"
    tcbs = {t.report(v, s.index)[REPORTED_TCB_OFFSET:REPORTED_TCB_OFFSET + 8]
            for v in range(t.nvcpus) for s in t.steps(v) if s.has_report}
    assert len(tcbs) >= 2, "every report has the same TCB: the update did not race the requests"
