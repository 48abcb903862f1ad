"""Tampered real reports: each change is rejected, and by the check that owns it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from snplab.abi import report as rpt
from snplab.attest import chain as chainmod
from snplab.attest.certs import load_certificate
from snplab.attest.signature import signature_der
from snplab.attest.trust import TrustStore
from snplab.attest.verify import verify_report

VECTORS = Path(os.environ.get("SNPLAB_VECTORS") or Path(__file__).resolve().parents[1].parent / "shared" / "vectors")
pytestmark = pytest.mark.skipif(not (VECTORS / "manifest.json").is_file(), reason=f"no test vectors at {VECTORS}")


def _cases() -> list[dict]:
    if not (VECTORS / "manifest.json").is_file():
        return []
    return [e for e in json.loads((VECTORS / "manifest.json").read_text())
            if e["expect"] == "pass" and "report" in e["files"]]


@pytest.fixture(scope="module")
def trust() -> TrustStore:
    return TrustStore.from_dir(VECTORS / "amd_roots")


def _load(e):
    rep = (VECTORS / e["files"]["report"]).read_bytes()
    vek = (VECTORS / e["files"]["vek"]).read_bytes()
    c = load_certificate(vek)
    at = c.not_valid_before_utc + (c.not_valid_after_utc - c.not_valid_before_utc) / 2
    return bytearray(rep), vek, at


def flip(buf: bytearray, offset: int, bit: int = 0) -> bytes:
    b = bytearray(buf)
    b[offset] ^= 1 << bit
    return bytes(b)


@pytest.mark.parametrize("e", _cases(), ids=lambda e: e["id"])
@pytest.mark.parametrize("where", [
    ("REPORT_DATA", rpt.REPORT_DATA_OFFSET + 5),
    ("MEASUREMENT", rpt.MEASUREMENT_OFFSET + 47),
    ("R", rpt.SIGNATURE_R_OFFSET),
    ("S", rpt.SIGNATURE_S_OFFSET + 20),
], ids=lambda w: w[0])
def test_flipped_bit_fails_signature_only(e, where, trust):
    rep, vek, at = _load(e)
    assert verify_report(bytes(rep), vek, trust, at=at).ok  # the untampered report verifies
    v = verify_report(flip(rep, where[1], 3), vek, trust, at=at)
    assert not v.ok
    assert v.first_failure.name == "signature"
    assert v.failed == ("signature",)


@pytest.mark.parametrize("e", _cases(), ids=lambda e: e["id"])
def test_r_s_read_big_endian_is_rejected(e, trust):
    rep, vek, at = _load(e)
    key = load_certificate(vek).public_key()
    signed = bytes(rep[: rpt.SIGNED_LENGTH])
    R = bytes(rep[0x2A0:0x2E8])
    S = bytes(rep[0x2E8:0x330])
    # the verifier's little-endian reading is the one that verifies ...
    key.verify(signature_der(bytes(rep)), signed, ec.ECDSA(hashes.SHA384()))
    # ... a big-endian reading of the same fields does not
    be = encode_dss_signature(int.from_bytes(R, "big"), int.from_bytes(S, "big"))
    with pytest.raises(InvalidSignature):
        key.verify(be, signed, ec.ECDSA(hashes.SHA384()))
    # a report whose R/S were stored big-endian (48 significant bytes reversed) is rejected
    b = bytearray(rep)
    b[0x2A0:0x2D0] = R[:48][::-1]
    b[0x2E8:0x318] = S[:48][::-1]
    v = verify_report(bytes(b), vek, trust, at=at)
    assert v.first_failure.name == "signature" and v.failed == ("signature",)
    # whole 72-byte fields reversed: signature fails first; the non-zero padding is also flagged
    b = bytearray(rep)
    b[0x2A0:0x2E8] = R[::-1]
    b[0x2E8:0x330] = S[::-1]
    v = verify_report(bytes(b), vek, trust, at=at)
    assert v.first_failure.name == "signature" and "report_format" in v.failed


@pytest.mark.parametrize("e", _cases(), ids=lambda e: e["id"])
def test_reported_tcb_changed(e, trust):
    rep, vek, at = _load(e)
    b = bytearray(rep)
    b[rpt.REPORTED_TCB_OFFSET + 6] += 1  # SNP SPL in the Milan/Genoa layout
    v = verify_report(bytes(b), vek, trust, at=at)
    assert not v.ok
    assert set(v.failed) == {"signature", "reported_tcb"}
    assert "REPORTED_TCB" in v.check("reported_tcb").detail


@pytest.mark.parametrize("e", [e for e in _cases() if e["signer"] == "vcek"], ids=lambda e: e["id"])
def test_chip_id_changed(e, trust):
    rep, vek, at = _load(e)
    v = verify_report(flip(rep, rpt.CHIP_ID_OFFSET + 10), vek, trust, at=at)
    assert set(v.failed) == {"signature", "chip_id"}


@pytest.mark.parametrize("e", _cases(), ids=lambda e: e["id"])
def test_signing_key_changed(e, trust):
    rep, vek, at = _load(e)
    b = bytearray(rep)
    b[rpt.SIGNER_INFO_OFFSET] ^= 1 << 2  # VCEK <-> VLEK
    v = verify_report(bytes(b), vek, trust, at=at)
    assert set(v.failed) == {"signature", "signing_key"}


def _other(product: str) -> str:
    return {"milan": "genoa", "genoa": "milan"}[product]


@pytest.mark.parametrize("e", [e for e in _cases() if e["signer"] == "vcek"], ids=lambda e: e["id"])
def test_vek_against_another_products_ask_in_chain(e, trust):
    rep, vek, at = _load(e)
    product = verify_report(bytes(rep), vek, trust, at=at).product
    other_ask = (VECTORS / "amd_roots" / f"{_other(product)}_ask.pem").read_bytes()
    v = verify_report(bytes(rep), vek, trust, chain=other_ask, at=at)
    assert not v.ok
    assert v.first_failure.name == "chain_ask"
    assert "chain_vek" in v.failed  # the VEK does not verify under the other ASK either
    assert v.check("signature").ok  # the report itself is fine


@pytest.mark.parametrize("e", [e for e in _cases() if e["signer"] == "vcek"], ids=lambda e: e["id"])
def test_vek_against_another_products_ask_in_trust_dir(e, trust, tmp_path):
    rep, vek, at = _load(e)
    product = verify_report(bytes(rep), vek, trust, at=at).product
    roots = VECTORS / "amd_roots"
    shutil.copy(roots / f"{product}_ark.pem", tmp_path / f"{product}_ark.pem")
    shutil.copy(roots / f"{_other(product)}_ask.pem", tmp_path / f"{product}_ask.pem")
    v = verify_report(bytes(rep), vek, TrustStore.from_dir(tmp_path), at=at)
    assert v.first_failure.name == "chain_ask"
    assert "chain_vek" in v.failed


def test_vek_signature_under_another_products_ask_does_not_verify():
    e = next(e for e in _cases() if e["signer"] == "vcek")
    vek = load_certificate((VECTORS / e["files"]["vek"]).read_bytes())
    for product in ("milan", "genoa", "turin"):
        ask = load_certificate((VECTORS / "amd_roots" / f"{product}_ask.pem").read_bytes())
        if ask.subject == vek.issuer:
            chainmod.verify_signed_by(vek, ask)
        else:
            with pytest.raises(chainmod.ChainError):
                chainmod.verify_signed_by(vek, ask)


@pytest.mark.parametrize("e", _cases()[:1], ids=lambda e: e["id"])
def test_presented_ark_must_be_the_trusted_one(e, trust):
    rep, vek, at = _load(e)
    product = verify_report(bytes(rep), vek, trust, at=at).product
    other_ark = (VECTORS / "amd_roots" / f"{_other(product)}_ark.pem").read_bytes()
    v = verify_report(bytes(rep), vek, trust, chain=other_ark, at=at)
    assert v.first_failure.name == "chain_ark_pinned"
