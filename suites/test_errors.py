"""Host-side errors: EIO → GENERIC, an invalid ret → KVM_RUN fails with EINVAL, enabling
certificate exits too late → EINVAL, malformed requests (same page for request and response,
missing RAX/RBX, a private request page) → GHCB errors that use no sequence number."""

from __future__ import annotations

import pytest

from snplab import checks
from snplab.scenario import Scenario, Step, pages_for


@pytest.mark.parametrize("seqno", [1, 7])
def test_wrong_seqno_rejected(run_scenario, abi, product, cert_blob, seqno):
    """A replayed (1) or skipped-ahead (7) sequence number is refused by the firmware, which
    keeps its counter: the next request under seqno 3 is accepted."""
    need = pages_for(len(cert_blob))
    t = run_scenario(Scenario.single(abi, product, Step.ext(need), Step.ext(need, seqno=seqno),
                                     Step.ext(need)))
    checks.assert_run_completed(t)
    checks.assert_success(t, 0, 0)
    checks.assert_firmware_rejected(t, 0, 1, name="seqno_replay_rejected")
    checks.assert_invariants(t)
    checks.assert_success(t, 0, 2)
    assert t.attempts(0, 2)[0].seqno == 3


@pytest.mark.abi("req-certs", "vmgexit-v15")
def test_eio_is_generic(run_scenario, abi, product, cert_blob):
    """The VMM answering EIO gives the guest the ABI's GENERIC VMM error (7.0: 0xFFFFFFFF << 32;
    v15: BIT(31) << 32), no firmware call, and the next request succeeds with seqno 1."""
    need = pages_for(len(cert_blob))
    t = run_scenario(Scenario.single(abi, product, Step.ext(need), Step.ext(need),
                                     cert_answers=("EIO",)))
    checks.assert_run_completed(t)
    checks.assert_exit(t, 0, 0, checks.generic_error(t), name="vmm_error_encoding")
    checks.assert_host_error_no_seqno(t)  # before the next request's verdict: it says why
    checks.assert_success(t, 0, 1)
    assert t.attempts(0, 1)[0].seqno == 1, "host_error_no_seqno violated: EIO consumed seqno 1"
    checks.assert_invariants(t)


@pytest.mark.abi("req-certs")
@pytest.mark.parametrize("ret", [16, 1, (1 << 64) - 5], ids=["EBUSY", "1", "minus-EIO"])
def test_invalid_ret_fails_kvm_run(run_scenario, abi, product, cert_blob, ret):
    """Any ret other than 0, ENOSPC, EAGAIN, EIO (here EBUSY, 1, -EIO as the u64 field holds
    it) makes KVM_RUN fail with EINVAL; the guest is not resumed."""
    t = run_scenario(Scenario.single(abi, product, Step.ext(pages_for(len(cert_blob))),
                                     cert_answers=(f"ret:{ret}",)))
    checks.assert_run_failed_with(t, "kvm-run-error", "EINVAL", name="kvm_run_einval")
    assert t.vcpus[0].get("status") == "kvm-run-error"


@pytest.mark.abi("req-certs")
def test_enable_req_certs_after_vcpu(run_scenario, abi, product, cert_blob):
    """KVM_SEV_SNP_ENABLE_REQ_CERTS after a vCPU exists fails with EINVAL and the run reports it
    (nothing runs with a half-configured VM)."""
    t = run_scenario(Scenario.single(abi, product, Step.ext(pages_for(len(cert_blob))),
                                     enable_req_certs_late=True))
    checks.assert_run_failed_with(t, None, "EINVAL", name="enable_req_certs_einval")


def _rejected_before_firmware(t, v: int, i: int) -> bool:
    hit = checks.answering_rule(t, t.attempts(v, i)[0])
    return hit is not None and not hit[1].reaches_firmware


def test_same_request_and_response_page(run_scenario, abi, product, cert_blob):
    """Request GPA == response GPA gets the kernel's answer for it (registry row pages-identical:
    malformed input, 4 up to Linux 7.0, 5 after; v15 never checks it): when KVM rejects it, no
    exit to the VMM, no firmware call, and the next request uses seqno 1."""
    need = pages_for(len(cert_blob))
    t = run_scenario(Scenario.single(abi, product, Step.ext(need, pages="same"), Step.ext(need)))
    checks.assert_run_completed(t)
    checks.assert_kernel_answer(t, 0, 0)
    checks.assert_success(t, 0, 1)
    if _rejected_before_firmware(t, 0, 0):
        assert t.attempts(0, 1)[0].seqno == 1
    checks.assert_invariants(t)


def test_misaligned_request_page(run_scenario, abi, product, cert_blob):
    """A request GPA 8 bytes into a page gets the kernel's answer (registry row pages-misaligned:
    malformed input; v15: GENERIC after the certificate exit): no firmware call, seqno 1 unused."""
    need = pages_for(len(cert_blob))
    t = run_scenario(Scenario.single(abi, product, Step.ext(need, pages="misaligned_req"),
                                     Step.ext(need)))
    checks.assert_run_completed(t)
    checks.assert_kernel_answer(t, 0, 0)
    checks.assert_success(t, 0, 1)
    assert t.attempts(0, 1)[0].seqno == 1
    checks.assert_invariants(t)


@pytest.mark.parametrize("missing", ["rax", "rbx"])
def test_missing_register_valid_bit(run_scenario, abi, product, cert_blob, missing):
    """An extended report request without RAX or RBX marked valid in the GHCB is malformed input
    (registry row regs-not-valid: INVALID_INPUT 5; v15 MISSING_INPUT 4) before any certificate
    exit or firmware call."""
    need = pages_for(len(cert_blob))
    flag = {"no_rax_valid": missing == "rax", "no_rbx_valid": missing == "rbx"}
    t = run_scenario(Scenario.single(abi, product, Step.ext(need, **flag), Step.ext(need)))
    checks.assert_run_completed(t)
    checks.assert_kernel_answer(t, 0, 0)
    checks.assert_success(t, 0, 1)
    assert t.attempts(0, 1)[0].seqno == 1
    checks.assert_invariants(t)


def test_private_request_page(run_scenario, abi, product, cert_blob):
    """A request page the guest left private is not a message KVM can read: the request fails
    (a GHCB or firmware error, never success), and no sequence number is consumed."""
    need = pages_for(len(cert_blob))
    t = run_scenario(Scenario.single(abi, product, Step.ext(need, pages="private_req"),
                                     Step.ext(need)))
    checks.assert_run_completed(t)
    first = t.attempts(0, 0)[0]
    assert not first.completed, f"request from a private page succeeded: {t.summary()}"
    checks.assert_success(t, 0, 1)
    assert t.attempts(0, 1)[0].seqno == 1, "a failed request from a private page consumed seqno 1"
    checks.assert_invariants(t)
