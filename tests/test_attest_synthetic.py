"""Verifier checks in isolation, on synthetic chains and reports signed on the spot.

Real reports cannot be re-signed, so a change to a signed field always breaks `signature` too;
here each report is signed after the change, so exactly the check under test must fail.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from snplab.abi.report import AttestationReport
from snplab.abi.tcb import TcbLayout, TcbVersion
from snplab.attest import testing as fake
from snplab.attest.signature import P384_ORDER, is_high_s
from snplab.attest.trust import TrustStore
from snplab.attest.verify import CHECK_ORDER, verify_report

MILAN_TCB = TcbVersion(TcbLayout.MILAN_GENOA, bootloader=4, tee=0, snp=24, microcode=219)
TURIN_TCB = TcbVersion(TcbLayout.TURIN, fmc=2, bootloader=1, tee=0, snp=2, microcode=71)
TCB = {"milan": MILAN_TCB, "genoa": MILAN_TCB, "turin": TURIN_TCB}
AT = fake.EPOCH + timedelta(days=30)


def make(product="milan", kind="vcek", report_kw=None, vek_kw=None, tcb=None):
    roots = fake.make_roots(product)
    tcb = tcb or TCB[product]
    key, vek = fake.make_vek(roots, tcb, kind=kind, **(vek_kw or {}))
    kw = {"signing_key": 1 if kind == "vlek" else 0}
    if kind == "vlek":
        kw["chip_id"] = bytes(64)
    kw.update(report_kw or {})
    report = fake.make_report(tcb, product, **kw)
    return roots, key, vek, report


def run(roots, key, vek, report, at=AT, **kw):
    return verify_report(fake.sign_report(report, key), vek, fake.trust_store(roots), at=at, **kw)


@pytest.mark.parametrize("prod", ["milan", "genoa", "turin"])
@pytest.mark.parametrize("kind", ["vcek", "vlek"])
def test_good_synthetic_reports_verify(prod, kind):
    roots, key, vek, report = make(prod, kind)
    v = run(roots, key, vek, report)
    assert v.ok, v.summary()
    assert (v.product, v.signer, v.report_version) == (prod, kind, 5)
    assert [c.name for c in v.checks] == [n for n in CHECK_ORDER if n not in ("cert_table", "chain_parse")]


def test_unpinned_roots_rejected_when_pinning_is_on():
    roots, key, vek, report = make()
    pinned = TrustStore({"milan": roots.product_roots()}, pinned=True)
    v = verify_report(fake.sign_report(report, key), vek, pinned, at=AT)
    assert v.failed == ("chain_ark_pinned",)
    assert "not AMD's milan ARK" in v.first_failure.detail


def test_reported_tcb_mismatch_alone():
    roots, key, vek, report = make()
    v = run(roots, key, vek, replace(report, reported_tcb=replace(MILAN_TCB, snp=25).pack()))
    assert v.failed == ("reported_tcb",)


def test_reported_tcb_spl4_to_7_compared():
    # go-sev-guest maps spl_4..7 to the reserved bytes 2..5: a non-zero byte there must match the cert
    roots, key, vek, report = make()
    v = run(roots, key, vek, replace(report, reported_tcb=MILAN_TCB.pack() | (1 << 16)))
    assert v.failed == ("reported_tcb",)


def test_turin_tcb_uses_turin_layout_and_fmc():
    roots, key, vek, report = make("turin")
    assert report.reported_tcb.to_bytes(8, "little") == bytes([2, 1, 0, 2, 0, 0, 0, 71])
    assert run(roots, key, vek, report).ok
    v = run(roots, key, vek, replace(report, reported_tcb=replace(TURIN_TCB, fmc=3).pack()))
    assert v.failed == ("reported_tcb",) and "fmc=3" in v.check("reported_tcb").detail


def test_chip_id_mismatch_alone():
    roots, key, vek, report = make()
    v = run(roots, key, vek, replace(report, chip_id=bytes(range(1, 65))))
    assert v.failed == ("chip_id",)


def test_chip_id_masked_is_accepted():
    roots, key, vek, report = make()
    v = run(roots, key, vek, replace(report, chip_id=bytes(64)))
    assert v.ok and "MASK_CHIP_ID" in v.check("chip_id").detail


def test_turin_chip_id_is_8_bytes_then_zeros():
    roots, key, vek, report = make("turin")
    assert run(roots, key, vek, report).check("chip_id").ok
    tail = bytearray(report.chip_id)
    tail[40] = 1
    assert run(roots, key, vek, replace(report, chip_id=bytes(tail))).failed == ("chip_id",)


def test_wrapped_hw_id_accepted():
    roots, key, vek, report = make(vek_kw={"hw_id_wrapped": True})
    assert run(roots, key, vek, report).ok


def test_signing_key_mismatch_alone():
    roots, key, vek, report = make(kind="vlek", report_kw={"signing_key": 0})
    v = run(roots, key, vek, report)
    assert v.failed == ("signing_key",)
    roots, key, vek, report = make(report_kw={"signing_key": 7})
    assert "not signed" in run(roots, key, vek, report).check("signing_key").detail


def test_signature_algo_alone():
    roots, key, vek, report = make()
    assert run(roots, key, vek, replace(report, signature_algo=2)).failed == ("signature_algo",)


def test_report_format_alone():
    roots, key, vek, report = make()
    assert run(roots, key, vek, replace(report, policy=0x10000)).failed == ("report_format",)
    assert run(roots, key, vek, replace(report, reserved1=b"\x01" + bytes(20))).failed == ("report_format",)


def test_high_s_is_accepted():
    roots, key, vek, report = make()
    signed = AttestationReport.unpack(fake.sign_report(report, key))
    r, s = signed.r, signed.s
    high = s if s > P384_ORDER // 2 else P384_ORDER - s  # (r, n-s) is the other valid signature
    raw = signed.with_signature(r, high).pack()
    assert is_high_s(raw)
    assert verify_report(raw, vek, fake.trust_store(roots), at=AT).ok


def test_validity_window():
    roots, key, vek, report = make()
    assert run(roots, key, vek, report, at=fake.EPOCH - timedelta(days=1)).failed == ("validity",)
    assert run(roots, key, vek, report, at=fake.EPOCH + timedelta(days=8 * 365)).failed == ("validity",)
    assert run(roots, key, vek, report, at=None).ok


def test_naive_at_is_utc():
    roots, key, vek, report = make()
    assert run(roots, key, vek, report, at=datetime(2024, 2, 1)).ok


def test_wrong_pss_salt_rejected_by_chain_vek():
    roots = fake.make_roots("milan")
    salt32 = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=32)
    key, vek = fake.make_vek(roots, MILAN_TCB, pss=salt32)
    v = run(roots, key, vek, fake.make_report(MILAN_TCB))
    assert v.failed == ("chain_vek",) and "salt=32" in v.first_failure.detail


def test_vek_signed_by_wrong_key_rejected_by_chain_vek():
    roots = fake.make_roots("milan")
    other = fake.make_roots("milan", tag="other")
    key, vek = fake.make_vek(roots, MILAN_TCB, signer_key=other.ask_key)
    v = run(roots, key, vek, fake.make_report(MILAN_TCB))
    assert v.failed == ("chain_vek",)


def test_ask_from_another_ark_rejected_by_chain_ask():
    roots = fake.make_roots("milan")
    other = fake.make_roots("milan", tag="other")
    key, vek = fake.make_vek(other, MILAN_TCB)  # VEK chains to the other ASK, which has the same CN
    v = verify_report(fake.sign_report(fake.make_report(MILAN_TCB), key), vek, fake.trust_store(roots),
                      chain=[other.ask], at=AT)
    assert v.first_failure.name == "chain_ask" and v.failed == ("chain_ask",)


def test_vek_must_be_p384():
    roots = fake.make_roots("milan")
    key, vek = fake.make_vek(roots, MILAN_TCB, key=ec.generate_private_key(ec.SECP256R1()))
    v = verify_report(fake.make_report(MILAN_TCB).pack(), vek, fake.trust_store(roots), at=AT)
    assert v.first_failure.name == "vek_parse" and "P-384" in v.first_failure.detail


@pytest.mark.parametrize("version", [2, 3, 4])
def test_older_report_versions(version):
    roots, key, vek, report = make(report_kw={"version": version})
    v = run(roots, key, vek, report)
    assert v.ok and v.report_version == version
    if version == 2:
        assert "productName" in v.check("product").detail


def test_v2_product_from_product_name_genoa():
    roots, key, vek, report = make("genoa", report_kw={"version": 2})
    v = run(roots, key, vek, report)
    assert v.ok and v.product == "genoa"


def test_v2_without_known_product_name_fails_product():
    roots, key, vek, report = make(report_kw={"version": 2}, vek_kw={"product_name": "Venice"})
    v = run(roots, key, vek, report)
    assert v.first_failure.name == "product"


@pytest.mark.parametrize("fam,mod,prod", [(0x19, 0x00, "milan"), (0x19, 0x0F, "milan"),
                                               (0x19, 0x10, "genoa"), (0x19, 0x1F, "genoa"),
                                               (0x19, 0xA0, "genoa"), (0x19, 0xAF, "genoa"),
                                               (0x1A, 0x00, "turin"), (0x1A, 0x11, "turin")])
def test_product_from_cpuid_ranges(fam, mod, prod):
    roots, key, vek, report = make(prod)
    v = run(roots, key, vek, replace(report, cpuid_fam_id=fam, cpuid_mod_id=mod))
    assert v.ok and v.product == prod


@pytest.mark.parametrize("fam,mod", [(0x19, 0x20), (0x19, 0xB0), (0x1A, 0x12), (0x17, 0x01), (0, 0)])
def test_unknown_cpuid_fails_product(fam, mod):
    roots, key, vek, report = make()
    v = run(roots, key, vek, replace(report, cpuid_fam_id=fam, cpuid_mod_id=mod))
    assert v.first_failure.name == "product"
    assert v.check("chain_ask").detail.startswith("not run")


def test_garbage_vek_is_input_error():
    v = verify_report(fake.make_report(MILAN_TCB).pack(), b"not a certificate", TrustStore.empty(), at=AT)
    assert v.input_error and v.verdict == "error" and v.first_failure.name == "vek_parse"


def test_now_is_the_default_time():
    roots, key, vek, report = make()  # EPOCH + 7 years: valid now (2024..2031)
    v = verify_report(fake.sign_report(report, key), vek, fake.trust_store(roots))
    now = datetime.now(timezone.utc)
    assert v.check("validity").ok == (fake.EPOCH <= now <= fake.EPOCH + timedelta(days=7 * 365))
