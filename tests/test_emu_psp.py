"""The emulated PSP's guest messages: header/sequence/tag checks, reports (v2/v3/v5, VCEK/VLEK) that
verify against the emulated roots and not against AMD's, derived keys, and the message log."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from emu_refguest import FakeMemory, vcpu_init_state

from snplab.abi import guest_msg as gm
from snplab.abi.report import SIGNING_KEY_VCEK, SIGNING_KEY_VLEK, AttestationReport
from snplab.attest.trust import TrustStore
from snplab.attest.verify import verify_from_cert_table
from snplab.emu import keys
from snplab.emu.platform import EmulatedBackend
from snplab.emu.psp import EmulatedPsp
from snplab.vmm.launch import PageType

PAGE = 4096
VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"
INVALID_PARAM = 0x16


def _launched(product: str = "milan", signer: str = "vcek", report_version: int = 5,
              host_data: bytes = bytes(range(32))) -> tuple[EmulatedBackend, EmulatedPsp]:
    backend = EmulatedBackend(product=product, signer=signer, report_version=report_version)
    mem = FakeMemory()
    psp = backend.new_vm(mem, mem.end).psp
    psp.start(0x30000)
    psp.update(0x1000, b"\x33" * PAGE, PageType.NORMAL)
    psp.update(0x5000, bytes(PAGE), PageType.SECRETS)
    psp.finish(host_data, [vcpu_init_state(0)])
    return backend, psp


def _msg(psp: EmulatedPsp, seqno: int, payload: bytes, *, msg_type: int = 5, vmpck: int = 0, key: bytes | None = None,
         **hdr_kw: int) -> bytes:
    hdr = gm.MsgHeader(msg_seqno=seqno, msg_type=msg_type, msg_sz=len(payload), msg_vmpck=vmpck, **hdr_kw)
    sealed = AESGCM(key or psp.vmpcks[vmpck]).encrypt(gm.aead_iv(seqno), payload, hdr.aad())
    return (hdr.with_tag(sealed[-16:]).pack() + sealed[:-16]).ljust(PAGE, b"\0")


def _report_req(report_data: bytes = b"rd", vmpl: int = 0, key_sel: int = 0) -> bytes:
    return gm.ReportReq(report_data=report_data, vmpl=vmpl, key_sel=key_sel).pack()


def _open(psp: EmulatedPsp, resp: bytes, vmpck: int = 0) -> tuple[gm.MsgHeader, bytes]:
    hdr = gm.MsgHeader.unpack(resp)
    pt = AESGCM(psp.vmpcks[vmpck]).decrypt(gm.aead_iv(hdr.msg_seqno), resp[0x60:0x60 + hdr.msg_sz] + hdr.tag,
                                           hdr.aad())
    return hdr, pt


def _report(psp: EmulatedPsp, seqno: int = 1, **kw: int | bytes) -> AttestationReport:
    resp = bytearray(PAGE)
    assert psp.guest_request(_msg(psp, seqno, _report_req(**kw)), resp) == 0  # type: ignore[arg-type]
    hdr, pt = _open(psp, resp)
    assert (hdr.msg_seqno, hdr.msg_type, hdr.msg_version, hdr.msg_vmpck) == (seqno + 1, 6, 1, 0)
    rsp = gm.ReportRsp.unpack(pt)
    assert (rsp.status, rsp.report_size) == (0, 0x4A0)
    return AttestationReport.unpack(rsp.report)


@pytest.mark.parametrize("product", keys.PRODUCTS)
@pytest.mark.parametrize("signer", keys.SIGNERS)
@pytest.mark.parametrize("version", (2, 3, 5))
def test_report_verifies_against_emulated_roots_only(product: str, signer: str, version: int, tmp_path: Path) -> None:
    backend, psp = _launched(product, signer, version)
    report = _report(psp, report_data=b"nonce-123", vmpl=1)
    raw = report.pack()
    assert report.version == version
    assert report.report_data == b"nonce-123".ljust(64, b"\0")
    assert report.vmpl == 1
    assert report.measurement == psp.measurement
    assert report.host_data == bytes(range(32))
    tcb = backend.keys.tcb.pack()
    assert report.reported_tcb == report.current_tcb == report.committed_tcb == report.launch_tcb == tcb
    assert report.chip_id == backend.keys.chip_id
    assert report.signer.signing_key == (SIGNING_KEY_VCEK if signer == "vcek" else SIGNING_KEY_VLEK)
    info = keys.product_info(product)
    cpuid = (report.cpuid_fam_id, report.cpuid_mod_id, report.cpuid_step)
    assert cpuid == ((info.family, info.model, info.stepping) if version >= 3 else (0, 0, 0))
    assert report.policy == 0x30000 and report.report_id_ma == b"\xff" * 32
    assert not report.reserved_nonzero()

    trust = TrustStore.from_dir(backend.trust_dir(tmp_path / "t"), pinned=False)
    verdict = verify_from_cert_table(raw, backend.cert_blob(), trust)
    assert verdict.ok, verdict.summary()
    tampered = bytearray(raw)
    tampered[0x50] ^= 1
    assert not verify_from_cert_table(bytes(tampered), backend.cert_blob(), trust).ok

    amd = VECTORS / "amd_roots"
    if amd.exists():
        real = TrustStore.from_dir(amd)
        assert not verify_from_cert_table(raw, backend.cert_blob(), real).ok


def test_message_checks_reject_without_advancing() -> None:
    _, psp = _launched()
    good = _report_req()
    resp = bytearray(b"\xee" * PAGE)
    bad = {
        "wrong seqno": _msg(psp, 3, good),
        "seqno 0": _msg(psp, 0, good),
        "bad tag": bytes([_msg(psp, 1, good)[0] ^ 1]) + _msg(psp, 1, good)[1:],
        "other key": _msg(psp, 1, good, key=psp.vmpcks[1]),
        "algo 0": _msg(psp, 1, good, algo=0),
        "hdr_version 2": _msg(psp, 1, good, hdr_version=2),
        "hdr_sz": _msg(psp, 1, good, hdr_sz=0x50),
        "unsupported type": _msg(psp, 1, bytes(128), msg_type=gm.MsgType.TSC_INFO_REQ),
        "type 0": _msg(psp, 1, good, msg_type=0),
        "short report request": _msg(psp, 1, good[:64]),
        "report msg_version 2": _msg(psp, 1, good, msg_version=2),
        "zero page": bytes(PAGE),
    }
    for name, page in bad.items():
        assert psp.guest_request(page, resp) == INVALID_PARAM, name
        assert psp.next_seqno(0) == 1, name
    vmpck4 = bytearray(_msg(psp, 1, good))
    vmpck4[gm.MSG_VMPCK_OFFSET] = 4
    assert psp.guest_request(bytes(vmpck4), resp) == INVALID_PARAM
    assert resp == b"\xee" * PAGE, "the response page is written only on success"
    assert psp.guest_request(_msg(psp, 1, good), resp) == 0
    assert psp.next_seqno(0) == 3 and psp.next_seqno(1) == 1
    assert [e.status for e in psp.message_log].count(0) == 1
    last = psp.message_log[-1]
    ct = _msg(psp, 1, good)[0x60:0x60 + len(good)]
    assert (last.vmpck, last.seqno, last.msg_type, last.ct_sha256) == (0, 1, 5, hashlib.sha256(ct).hexdigest())


def test_each_vmpck_has_its_own_counter() -> None:
    _, psp = _launched()
    resp = bytearray(PAGE)
    assert psp.guest_request(_msg(psp, 1, _report_req(vmpl=2), vmpck=2), resp) == 0
    hdr, pt = _open(psp, resp, 2)
    assert hdr.msg_vmpck == 2 and gm.ReportRsp.unpack(pt).status == 0
    assert (psp.next_seqno(0), psp.next_seqno(2)) == (1, 3)


@pytest.mark.parametrize("vmpl,key_sel,want", [
    (0, 0, 0), (3, 1, 0), (4, 0, 0x16), (0, 2, 0x27), (0, 3, 0x16), (0, 1 << 4, 0x16)])
def test_report_request_fields(vmpl: int, key_sel: int, want: int) -> None:
    _, psp = _launched(signer="vcek")
    resp = bytearray(PAGE)
    assert psp.guest_request(_msg(psp, 1, _report_req(vmpl=vmpl, key_sel=key_sel)), resp) == 0
    _, pt = _open(psp, resp)
    rsp = gm.ReportRsp.unpack(pt)
    assert rsp.status == want
    assert rsp.report_size == (0x4A0 if want == 0 else 0)
    assert psp.next_seqno(0) == 3  # a status inside the response is still a completed exchange


def test_vmpl_below_the_keys_vmpl_is_refused() -> None:
    _, psp = _launched()
    resp = bytearray(PAGE)
    assert psp.guest_request(_msg(psp, 1, _report_req(vmpl=1), vmpck=2), resp) == 0
    assert gm.ReportRsp.unpack(_open(psp, resp, 2)[1]).status == 0x16


def test_vlek_platform_signs_with_vcek_on_request() -> None:
    _, psp = _launched(signer="vlek")
    r = _report(psp, key_sel=gm.KEY_SEL_VCEK)
    assert r.signer.signing_key == SIGNING_KEY_VCEK
    r2 = _report(psp, seqno=3)
    assert r2.signer.signing_key == SIGNING_KEY_VLEK


def test_derived_keys() -> None:
    _, psp = _launched()

    def key(seqno: int, root: int = 0, fields: int = 0b1000, vmpl: int = 0, svn: int = 0, tcb: int = 0) -> tuple[int, bytes]:
        resp = bytearray(PAGE)
        req = struct.pack("<IIQIIQ", root, 0, fields, vmpl, svn, tcb)
        assert psp.guest_request(_msg(psp, seqno, req, msg_type=gm.MsgType.KEY_REQ), resp) == 0
        hdr, pt = _open(psp, resp)
        assert hdr.msg_type == gm.MsgType.KEY_RSP and len(pt) == 64
        status = struct.unpack_from("<I", pt)[0]
        return status, pt[32:]

    s1, k1 = key(1)
    s2, k2 = key(3)
    s3, k3 = key(5, fields=0)
    assert s1 == s2 == s3 == 0 and k1 == k2 != k3 and k1 != bytes(32)
    assert key(7, root=1)[0] == 0x16  # VMRK without a migration agent
    assert key(9, root=2 << 1)[0] == 0x27  # VLEK not installed
    assert key(11, tcb=0xFF << 56)[0] == 0x16  # TCB above the current one
    assert key(13, svn=1)[0] == 0x16


def test_reports_differ_per_request_and_sign_each_time() -> None:
    _, psp = _launched()
    a, b = _report(psp, 1, report_data=b"a"), _report(psp, 3, report_data=b"b")
    assert a.report_id == b.report_id and a.signature_r != b.signature_r
    assert psp.reports_signed == 2
