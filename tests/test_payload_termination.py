"""The payload's two termination forms on the emulated platform: the GHCB MSR protocol (reason
set and code in the MSR value) and the GHCB page (NAE 0x8000FFFE; KVM zeroes SW_EXITINFO1/2 and
reports data[0] = the GHCB GPA, so the reason is unknown to the VMM)."""

from __future__ import annotations

import pytest

from snplab import checks
from snplab.scenario import Scenario, Step
from snplab.vmm import memory_map as mm


@pytest.fixture(scope="module")
def emulated_platform(emulated_platform_factory):
    yield from emulated_platform_factory()


@pytest.mark.parametrize("ghcb", [False, True], ids=["msr", "ghcb"])
def test_scripted_termination_forms(emulated_platform, ghcb):
    t = emulated_platform.run(Scenario.multi("req-certs", "milan", [[Step.req(), Step.terminate(7, ghcb=ghcb)]] * 2))
    checks.assert_run_completed(t)
    for v in range(2):
        (ev,) = [e for e in t.events if e["kind"] == "SevTerm" and e["vcpu"] == v]
        if ghcb:
            assert (ev["raw"], ev["reason_set"], ev["reason_code"]) == (mm.ghcb_gpa(v), -1, -1)
        else:
            assert (ev["reason_set"], ev["reason_code"]) == (3, 7) and ev["raw"] & 0xFFF == 0x100
        checks.assert_success(t, v, 0)
        assert t.results["vcpu"][v]["nsteps"] == 2  # the terminate step ran, nothing after it


def test_term_ghcb_round_trips_in_scenario_json():
    s = Step.terminate(3, ghcb=True)
    assert s.term_ghcb and Step.from_json(s.to_json()) == s and not Step.terminate().term_ghcb
