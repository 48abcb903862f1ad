"""The kernel-behaviour registry (snplab.abi.kernel_behaviour): what the v15 profile plays (D2-D4
of shared/reference/fidelity-review.md), and that the emulated KVM and snplab.checks both read
the registry's rows."""

from __future__ import annotations

from pathlib import Path

from emu_refguest import RefGuest, RefHost

from snplab.abi import ghcb as G
from snplab.vmm.events import VmgexitReqCerts

GENERIC_V15 = G.SNP_GUEST_VMM_ERR_GENERIC_V15 << 32


def _v15(tmp_path: Path, **kw) -> tuple[RefHost, RefGuest]:
    host = RefHost(tmp_path, abi="vmgexit-v15", **kw)
    guest = RefGuest(host)
    guest.setup()
    return host, guest


# ---- D2-D4: the v15 profile plays the v15 patch code ------------------------------------------


def test_v15_unaligned_certificate_gpa_is_generic(tmp_path: Path) -> None:
    """D2: [V15] snp_begin_ext_guest_req answers an unaligned RAX with GENERIC (BIT(31) in the
    VMM-error word), SW_EXITINFO1 = 0, before any exit to the VMM and without the firmware."""
    host, g = _v15(tmp_path)
    r = g.request(certs_gpa=g.certs_gpa + 8)
    a = r.attempts[0]
    assert (a.info1, a.vmm_error) == (0, G.SNP_GUEST_VMM_ERR_GENERIC_V15), (hex(a.info1), hex(a.info2))
    assert not host.of_kind(VmgexitReqCerts), "v15 aborts before the KVM_EXIT_VMGEXIT"
    assert host.psp.next_seqno(0) == 1, "no firmware call"


def test_v15_request_pages_checked_after_the_certificate_exit(tmp_path: Path) -> None:
    """D3: v15 does not check the request/response pages at validation: an extended request
    with a misaligned request page exits to the VMM, then snp_setup_guest_buf fails → GENERIC
    (EXITINFO1 = 0); req == resp is not checked at all (the request exits and goes on)."""
    host, g = _v15(tmp_path)
    r = g.request(pages="misaligned_req")
    a = r.attempts[0]
    assert (a.info1, a.info2) == (0, GENERIC_V15), (hex(a.info1), hex(a.info2))
    assert len(host.of_kind(VmgexitReqCerts)) == 1, "the certificate exit comes first"
    assert host.psp.next_seqno(0) == 1
    r = g.request(pages="same")
    assert r.attempts[0].info1 == 0, "req == resp is not malformed input on v15"
    assert len(host.of_kind(VmgexitReqCerts)) == 2
    # a plain guest request with a misaligned page: GENERIC from snp_handle_guest_req
    assert g.ghcb_call(G.SVM_VMGEXIT_GUEST_REQUEST, g.req_gpa + 8, g.resp_gpa) == (0, GENERIC_V15)


def test_v15_firmware_error_is_generic_plus_status(tmp_path: Path) -> None:
    """D4: a message the firmware rejects (replayed seqno) gets SW_EXITINFO2 =
    BIT(31) << 32 | firmware status on v15 ([V15-18] snp_handle_guest_req: vmm_ret = GENERIC)."""
    host, g = _v15(tmp_path)
    assert g.request().outcome == "ok"
    r = g.request(seqno=1)  # replay: the firmware refuses it
    a = r.attempts[0]
    assert a.info1 == 0 and a.vmm_error == G.SNP_GUEST_VMM_ERR_GENERIC_V15 and a.fw_error != 0, hex(a.info2)
    plain = g.request("req", seqno=1)
    assert plain.attempts[0].vmm_error == G.SNP_GUEST_VMM_ERR_GENERIC_V15 and plain.attempts[0].fw_error
    assert g.request().outcome == "ok", "the rejection consumed no sequence number"
