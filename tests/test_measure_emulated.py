"""Cross-check: snplab.attest.measure predicts, from a real emulated run's transcript alone, the
launch digest the emulated PSP (snplab.emu.psp, an independent implementation) computed and put in
the guest's attestation report. Emulated results: this is agreement of two models, not hardware."""

from __future__ import annotations

import pytest

from snplab.abi.report import MEASUREMENT_OFFSET, MEASUREMENT_SIZE
from snplab.attest import measure
from snplab.scenario import Scenario, Step

pytestmark = pytest.mark.kvm


@pytest.fixture(scope="module")
def platform(emulated_platform_factory):
    yield from emulated_platform_factory()


@pytest.mark.parametrize("steps,host_data", [
    (((Step(op="ext_req", certs_npages=4),),), bytes(32)),
    (((Step(op="req"),), (Step(op="ext_req", certs_npages=8),)), bytes(range(32))),
])
def test_prediction_equals_emulated_psp(platform, steps, host_data):
    t = platform.run(Scenario(name="measure", steps=steps, abi="req-certs", host_data=host_data))
    assert t.status == "ok", t.error
    predicted = measure.predict_from_transcript({"launch_log": t.launch_log})
    assert t.measurement == predicted.hex()
    reports = [s.report for s in t.all_steps() if s.has_report]
    assert reports and all(r[MEASUREMENT_OFFSET:MEASUREMENT_OFFSET + MEASUREMENT_SIZE] == predicted for r in reports)
    # the prediction really depends on the vCPU state recorded in the transcript
    vcpus = t.launch_log["vcpus"]
    tampered = dict(t.launch_log, vcpus=[dict(vcpus[0], regs=dict(vcpus[0]["regs"], rsp=0))] + vcpus[1:])
    assert measure.predict_from_transcript({"launch_log": tampered}) != predicted
