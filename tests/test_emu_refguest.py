"""The pure-Python reference guest runs every path of every ABI profile against snplab.emu (no KVM),
and every report it gets verifies against the certificates the host returned (emulated roots)."""

from __future__ import annotations

from pathlib import Path

import emu_refguest as R
import pytest

from snplab.abi import ghcb as G
from snplab.attest.trust import TrustStore
from snplab.attest.verify import verify_from_cert_table
from snplab.vmm.events import ReqCerts, VmgexitReqCerts

CERT_PROFILES = ("req-certs", "vmgexit-v15")


@pytest.mark.parametrize("abi", ("req-certs", "vmgexit-v15", "stub"))
def test_success_with_table(tmp_path: Path, abi: str) -> None:
    assert R.check_success_with_table(tmp_path, abi=abi) == []


@pytest.mark.parametrize("abi", CERT_PROFILES)
def test_invalid_len_with_the_right_rbx(tmp_path: Path, abi: str) -> None:
    assert R.check_invalid_len(tmp_path, abi=abi) == []


@pytest.mark.parametrize("abi", CERT_PROFILES)
def test_invalid_len_linux_resend_then_retry(tmp_path: Path, abi: str) -> None:
    assert R.check_invalid_len_then_retry(tmp_path, abi=abi) == []


@pytest.mark.parametrize("abi", CERT_PROFILES)
def test_busy_then_success(tmp_path: Path, abi: str) -> None:
    assert R.check_busy_then_success(tmp_path, abi=abi) == []


@pytest.mark.parametrize("abi", CERT_PROFILES)
def test_generic(tmp_path: Path, abi: str) -> None:
    assert R.check_generic(tmp_path, abi=abi) == []


def test_invalid_ret_fails_kvm_run(tmp_path: Path) -> None:
    assert R.check_invalid_ret(tmp_path) == []


def test_v15_takes_ret_verbatim(tmp_path: Path) -> None:
    host, g = R._host(tmp_path, (), abi="vmgexit-v15", answers=("ret:7",))
    r = g.request()
    assert (r.attempts[0].info1, r.attempts[0].info2) == (0, 7 << 32)
    assert host.of_kind(VmgexitReqCerts)[0]["event"].exit_type == 1


def test_stub_empty_table(tmp_path: Path) -> None:
    assert R.check_stub_empty_table(tmp_path) == []


def test_stub_never_invalid_len_and_rbx_zero_writes_nothing(tmp_path: Path) -> None:
    _, g = R._host(tmp_path, (), abi="stub")
    g.mem.write(g.certs_gpa, b"\xaa" * 32)
    r = g.request(npages=0)
    assert r.outcome == "ok" and g.mem.read(g.certs_gpa, 32) == b"\xaa" * 32
    assert all(a.info2 == 0 for a in r.attempts)


def test_replayed_seqno_is_a_firmware_error_without_advance(tmp_path: Path) -> None:
    assert R.check_replayed_seqno(tmp_path) == []


@pytest.mark.parametrize("abi", ("req-certs", "vmgexit-v15", "stub"))
def test_request_page_left_private(tmp_path: Path, abi: str) -> None:
    assert R.check_private_request_page(tmp_path, abi=abi) == []


def test_non_report_extended_request_is_a_plain_request(tmp_path: Path) -> None:
    assert R.check_non_report_no_exit(tmp_path) == []


def test_enable_req_certs_after_vcpu_creation(tmp_path: Path) -> None:
    assert R.check_late_enable(tmp_path) == []


@pytest.mark.parametrize("abi", CERT_PROFILES)
def test_two_vcpus_share_the_firmware(tmp_path: Path, abi: str) -> None:
    host = R.RefHost(tmp_path, abi=abi, nvcpus=2)
    guests = [R.RefGuest(host, i) for i in range(2)]
    guests[1].last_seqno = guests[0].last_seqno  # one guest, one set of VMPCK counters
    for g in guests:
        g.setup()
    for _ in range(2):
        for g in guests:
            assert g.request(report_data=bytes([g.index])).outcome == "ok"
    assert host.psp.next_seqno(0) == 9  # one VMPCK0 counter for the guest: 4 exchanges
    assert len(host.of_kind(ReqCerts) + host.of_kind(VmgexitReqCerts)) == 4


@pytest.mark.parametrize("product", ("milan", "genoa", "turin"))
@pytest.mark.parametrize("signer", ("vcek", "vlek"))
def test_reports_verify_with_the_returned_certificates(tmp_path: Path, product: str, signer: str) -> None:
    host, g = R._host(tmp_path, (), product=product, signer=signer)
    r = g.request(report_data=b"verify me")
    assert r.outcome == "ok" and r.report is not None
    trust = TrustStore.from_dir(host.backend.trust_dir(tmp_path / "trust"), pinned=False)
    verdict = verify_from_cert_table(r.report, r.certs, trust)
    assert verdict.ok, verdict.summary()
    assert verdict.signer == signer and verdict.product == product
    amd = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "amd_roots"
    if amd.exists():
        assert not verify_from_cert_table(r.report, r.certs, TrustStore.from_dir(amd)).ok


def test_same_request_and_response_page(tmp_path: Path) -> None:
    host, g = R._host(tmp_path, ())
    r = g.request(pages="same")
    assert (r.attempts[0].info1, r.attempts[0].info2) == (G.GHCB_HV_RESP_MALFORMED_INPUT, G.GHCB_ERR_INVALID_INPUT)
    assert host.psp.next_seqno(0) == 1
