"""The report: signature with the returned VEK, chain to the trusted root, REPORTED_TCB and
CHIP_ID against the VEK, REPORT_DATA round trip, the launch measurement against the prediction."""

from __future__ import annotations

import pytest

from snplab import checks
from snplab.abi.cert_table import VCEK_GUID, VLEK_GUID, parse_table
from snplab.abi.report import HOST_DATA_OFFSET, REPORT_DATA_OFFSET, VMPL_OFFSET
from snplab.scenario import Scenario, Step, pages_for


@pytest.mark.abi("req-certs", "vmgexit-v15")
@pytest.mark.parametrize("signer", ["vcek", "vlek"])
def test_report_verifies_with_returned_vek(run_scenario, abi, product, signer, cert_blob, trust,
                                           report_data):
    """The report verifies with the VCEK/VLEK from the table; VEK → ASK/ASVK → ARK chains to the
    trusted root; REPORTED_TCB and CHIP_ID match the VEK; REPORT_DATA is ours."""
    t = run_scenario(Scenario.single(abi, product, Step.ext(pages_for(len(cert_blob)),
                                                            report_data=report_data),
                                     signer=signer))
    checks.assert_run_completed(t)
    checks.assert_step_verified(t, 0, 0, trust)
    checks.assert_report_data_roundtrip(t, 0, 0)
    assert t.report(0, 0)[REPORT_DATA_OFFSET:REPORT_DATA_OFFSET + 64] == report_data


@pytest.mark.abi("req-certs")
@pytest.mark.parametrize("version", [2, 3])
def test_older_report_versions(run_scenario, abi, product, cert_blob, trust, report_data,
                               version):
    """Firmware producing report version 2 or 3: the same checks hold."""
    t = run_scenario(Scenario.single(abi, product, Step.ext(pages_for(len(cert_blob)),
                                                            report_data=report_data),
                                     report_version=version))
    checks.assert_run_completed(t)
    checks.assert_step_verified(t, 0, 0, trust)
    assert int.from_bytes(t.report(0, 0)[:4], "little") == version


def test_plain_request_verifies_with_host_certificates(run_scenario, abi, product, cert_blob,
                                                       trust, report_data):
    """A plain guest request (no certificates) on every ABI: its report verifies with the VEK
    the host would serve, fetched separately as a real user would."""
    t = run_scenario(Scenario.single(abi, product, Step.req(report_data=report_data)))
    checks.assert_run_completed(t)
    checks.assert_success(t, 0, 0)
    assert t.cert_exits() == [], "a plain guest request exited to the VMM for certificates"
    vek = parse_table(cert_blob).get(VCEK_GUID) or parse_table(cert_blob).get(VLEK_GUID)
    checks.assert_report_verifies_with(t, 0, 0, vek, trust=trust)
    checks.assert_report_data_roundtrip(t, 0, 0)
    checks.assert_invariants(t)


@pytest.mark.abi("req-certs")
def test_measurement_matches_prediction(run_scenario, abi, product, cert_blob):
    """The report's MEASUREMENT equals the launch digest predicted independently from the
    launch sequence (snplab.attest.measure), and HOST_DATA is what the launch set."""
    host_data = bytes(range(32))
    t = run_scenario(Scenario.single(abi, product, Step.ext(pages_for(len(cert_blob))),
                                     host_data=host_data))
    checks.assert_run_completed(t)
    checks.assert_success(t, 0, 0)
    checks.assert_measurement_matches(t)
    assert t.report(0, 0)[HOST_DATA_OFFSET:HOST_DATA_OFFSET + 32] == host_data


@pytest.mark.abi("req-certs")
@pytest.mark.parametrize("vmpl", [1, 3])
def test_report_vmpl(run_scenario, abi, product, cert_blob, trust, vmpl):
    """MSG_REPORT_REQ.VMPL = 1 or 3 from a VMPL-0 guest: the report carries that VMPL and still
    verifies."""
    t = run_scenario(Scenario.single(abi, product, Step.ext(pages_for(len(cert_blob)),
                                                            vmpl=vmpl)))
    checks.assert_run_completed(t)
    checks.assert_step_verified(t, 0, 0, trust)
    checks.assert_report_vmpl(t, 0, 0)
    assert int.from_bytes(t.report(0, 0)[VMPL_OFFSET:VMPL_OFFSET + 4], "little") == vmpl


def test_report_vmpl_below_vmpck_refused(run_scenario, abi, product, cert_blob):
    """A request under VMPCK1 (a VMPL-1 guest) asking for a VMPL-0 report is refused by the
    firmware (MSG_REPORT_RSP status INVALID_PARAM, no report); the exchange itself completes
    and the next request under VMPCK1 uses seqno 3."""
    need = pages_for(len(cert_blob))
    t = run_scenario(Scenario.single(abi, product, Step.ext(need, vmpck=1, vmpl=0),
                                     Step.ext(need, vmpck=1, vmpl=1)))
    checks.assert_run_completed(t)
    checks.assert_report_refused(t, 0, 0, name="report_vmpl_checked")
    checks.assert_success(t, 0, 1)
    checks.assert_report_vmpl(t, 0, 1)
    assert t.attempts(0, 1)[0].seqno == 3, t.summary()
    checks.assert_invariants(t)
