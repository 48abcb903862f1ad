"""Every vector of ../shared/vectors/manifest.json gets the verdict the manifest expects.

Verification time: the middle of the VEK's validity window (VLEKs live one year and the public
ones have expired; using the same rule for VCEKs keeps the test independent of today's date).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from snplab.abi.report import AttestationReport
from snplab.attest.certs import load_certificate
from snplab.attest.extensions import parse_extensions
from snplab.attest.trust import TrustStore
from snplab.attest.verify import verify_report, verify_vek

VECTORS = Path(os.environ.get("SNPLAB_VECTORS") or Path(__file__).resolve().parents[1].parent / "shared" / "vectors")
pytestmark = pytest.mark.skipif(not (VECTORS / "manifest.json").is_file(), reason=f"no test vectors at {VECTORS}")


def _entries(expect: str) -> list[dict]:
    if not (VECTORS / "manifest.json").is_file():
        return []
    return [e for e in json.loads((VECTORS / "manifest.json").read_text()) if e["expect"] == expect]


@pytest.fixture(scope="module")
def trust() -> TrustStore:
    return TrustStore.from_dir(VECTORS / "amd_roots")


def mid_validity(vek: bytes) -> datetime:
    c = load_certificate(vek)
    return c.not_valid_before_utc + (c.not_valid_after_utc - c.not_valid_before_utc) / 2


def _files(e: dict) -> tuple[bytes | None, bytes, bytes | None]:
    f = e["files"]
    report = (VECTORS / f["report"]).read_bytes() if "report" in f else None
    chain = (VECTORS / f["chain"]).read_bytes() if "chain" in f else None
    return report, (VECTORS / f["vek"]).read_bytes(), chain


def _product(e: dict) -> str | None:
    return e["product"].split()[0].lower() if e["product"] else None


def test_manifest_has_every_kind():
    assert _entries("pass") and _entries("fail") and _entries("parse-only")


@pytest.mark.parametrize("e", _entries("pass"), ids=lambda e: e["id"])
def test_pass_vectors_verify(e, trust):
    report, vek, chain = _files(e)
    at = mid_validity(vek)
    if report is None:
        v = verify_vek(vek, trust, chain=chain, at=at)
        assert [c.name for c in v.checks] == ["vek_parse", "product", "chain_ark_self_signed",
                                              "chain_ark_pinned", "chain_ask", "chain_vek", "validity"]
    else:
        v = verify_report(report, vek, trust, chain=chain, at=at)
        assert v.report_version == AttestationReport.unpack(report).version
        assert {c.name for c in v.checks} >= {"signature", "reported_tcb", "chip_id", "signing_key"}
    assert v.ok, v.summary()
    assert v.first_failure is None
    assert v.signer == e["signer"]
    if _product(e):
        assert v.product == _product(e)


@pytest.mark.parametrize("e", [e for e in _entries("pass") if "report" in e["files"] and "chain" in e["files"]],
                         ids=lambda e: e["id"])
def test_pass_vectors_verify_without_chain_file(e, trust):
    report, vek, _ = _files(e)
    assert verify_report(report, vek, trust, at=mid_validity(vek)).ok


def test_vlek_outside_validity_is_rejected_by_validity(trust):
    e = next(e for e in _entries("pass") if e["signer"] == "vlek")
    report, vek, chain = _files(e)
    c = load_certificate(vek)
    v = verify_report(report, vek, trust, chain=chain, at=datetime(2030, 1, 1, tzinfo=timezone.utc))
    assert not v.ok and v.first_failure.name == "validity" and "expired" in v.first_failure.detail
    v = verify_report(report, vek, trust, at=c.not_valid_before_utc.replace(year=c.not_valid_before_utc.year - 1))
    assert v.first_failure.name == "validity" and "not valid before" in v.first_failure.detail
    assert verify_report(report, vek, trust, at=None).ok  # time checks off


@pytest.mark.parametrize("e", _entries("fail"), ids=lambda e: e["id"])
def test_fail_vectors_rejected_by_chain_vek(e, trust):
    report, vek, chain = _files(e)
    v = verify_vek(vek, trust, chain=chain, at=mid_validity(vek)) if report is None else \
        verify_report(report, vek, trust, chain=chain, at=mid_validity(vek))
    assert not v.ok
    assert v.input_error is None
    # the synthetic VCEKs parse (both hwID encodings) but are not signed by AMD's ASK
    assert v.check("vek_parse").ok
    assert v.first_failure.name == "chain_vek", v.summary()
    assert "does not verify" in v.first_failure.detail


@pytest.mark.parametrize("e", _entries("fail"), ids=lambda e: e["id"])
def test_fail_vectors_hw_id_encodings(e):
    ext = parse_extensions(load_certificate((VECTORS / e["files"]["vek"]).read_bytes()))
    assert ext.hw_id == bytes(range(64))  # "hwID 00..3f", raw in -legacy, OCTET STRING in -new
    assert ext.hw_id_wrapped == e["id"].endswith("_new")


@pytest.mark.parametrize("e", _entries("parse-only"), ids=lambda e: e["id"])
def test_parse_only_vectors_parse(e):
    raw = (VECTORS / e["files"]["report"]).read_bytes()
    r = AttestationReport.unpack(raw)
    assert r.pack() == raw
    assert r.version == 2 and r.signature_algo == 1
    assert r.reserved_nonzero() == ()
    assert "vek" not in e["files"]
