"""The certificate table the guest gets: strict parse, byte-equal to the served blob, and the
right certificates in it (VCEK or VLEK, ASK or ASVK, ARK)."""

from __future__ import annotations

import pytest

from snplab import checks
from snplab.abi.cert_table import ASK_GUID, VCEK_GUID, VLEK_GUID, parse_table
from snplab.scenario import Scenario, Step, pages_for

pytestmark = pytest.mark.abi("req-certs", "vmgexit-v15")


@pytest.mark.parametrize("signer", ["vcek", "vlek"])
def test_table_strict_and_equal_to_blob(run_scenario, abi, product, signer, cert_blob):
    """The table parses strictly, equals the blob the host served and holds the signer's VEK,
    the ASK/ASVK and the ARK."""
    t = run_scenario(Scenario.single(abi, product, Step.ext(pages_for(len(cert_blob))),
                                     signer=signer))
    checks.assert_run_completed(t)
    checks.assert_success(t, 0, 0)
    checks.assert_cert_table_parses(t, 0, 0)
    checks.assert_cert_table_matches_blob(t, 0, 0)
    checks.assert_cert_table_contents(t, 0, 0, signer)
    table = parse_table(t.cert_bytes(0, 0))
    other = VCEK_GUID if signer == "vlek" else VLEK_GUID
    assert table.get(other) is None, f"{signer} host also returned the other kind of VEK"
    assert table.get(ASK_GUID) is not None
    checks.assert_invariants(t)


def test_table_in_a_larger_buffer(run_scenario, abi, product, cert_blob):
    """With twice the pages needed, the guest still gets exactly the served table (the bytes
    after it are not part of it)."""
    need = pages_for(len(cert_blob))
    t = run_scenario(Scenario.single(abi, product, Step.ext(2 * need)))
    checks.assert_run_completed(t)
    checks.assert_cert_table_matches_blob(t, 0, 0)
    assert len(t.cert_bytes(0, 0)) == parse_table(cert_blob).used_length
    checks.assert_invariants(t)


def test_each_request_gets_the_table(run_scenario, abi, product, cert_blob):
    """Three extended requests in a row each get the full, identical table."""
    need = pages_for(len(cert_blob))
    t = run_scenario(Scenario.single(abi, product, Step.ext(need), Step.ext(need + 1),
                                     Step.ext(need)))
    checks.assert_run_completed(t)
    for i in range(3):
        checks.assert_cert_table_matches_blob(t, 0, i)
    assert t.cert_bytes(0, 0) == t.cert_bytes(0, 1) == t.cert_bytes(0, 2)
    checks.assert_invariants(t)


@pytest.mark.parametrize("msg_type", [3])
def test_non_report_message_exit_rules(run_scenario, abi, product, cert_blob, msg_type):
    """An extended request carrying another message type (MSG_KEY_REQ): Linux 7.0 KVM makes no
    certificate exit for it (it is a plain guest request), the v15 draft exits for every
    extended request; either way no sequence number goes wrong."""
    t = run_scenario(Scenario.single(abi, product, Step.ext(pages_for(len(cert_blob)),
                                                            msg_type=msg_type)))
    checks.assert_run_completed(t)
    checks.assert_cert_exits_match_requests(t)
    checks.assert_invariants(t)
