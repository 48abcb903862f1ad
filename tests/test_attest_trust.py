"""Trust directories, ARK pinning, and explicitly unpinned (emulated) roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from snplab.abi.tcb import TcbLayout, TcbVersion
from snplab.attest import testing as fake
from snplab.attest.certs import load_certificate, sha256_fingerprint
from snplab.attest.trust import AMD_ARK_SHA256, TrustStore, TrustStoreError
from snplab.attest.verify import verify_report

VECTORS = Path(os.environ.get("SNPLAB_VECTORS") or Path(__file__).resolve().parents[1].parent / "shared" / "vectors")
needs_vectors = pytest.mark.skipif(not (VECTORS / "manifest.json").is_file(), reason=f"no test vectors at {VECTORS}")
TCB = TcbVersion(TcbLayout.MILAN_GENOA, bootloader=3, snp=8, microcode=115)
AT = fake.EPOCH.replace(month=3)


@needs_vectors
@pytest.mark.parametrize("prod", ["milan", "genoa", "turin"])
def test_pins_are_the_real_arks(prod):
    ark = load_certificate((VECTORS / "amd_roots" / f"{prod}_ark.pem").read_bytes())
    assert sha256_fingerprint(ark) == AMD_ARK_SHA256[prod]


@needs_vectors
def test_from_dir_loads_all_products():
    t = TrustStore.from_dir(VECTORS / "amd_roots")
    assert t.products == ("genoa", "milan", "turin") and t.pinned
    r = t.get("turin")
    assert r.ark is not None and r.ask is not None and r.asvk is not None


def test_from_dir_errors(tmp_path):
    with pytest.raises(TrustStoreError, match="does not exist"):
        TrustStore.from_dir(tmp_path / "nope")
    with pytest.raises(TrustStoreError, match="holds no"):
        TrustStore.from_dir(tmp_path)
    (tmp_path / "milan_ark.pem").write_text("garbage")
    with pytest.raises(TrustStoreError, match="milan_ark.pem"):
        TrustStore.from_dir(tmp_path)


def _write_roots(d: Path, roots: fake.FakeRoots) -> None:
    for kind in ("ark", "ask", "asvk"):
        (d / f"{roots.product}_{kind}.pem").write_bytes(getattr(roots, kind).public_bytes(Encoding.PEM))


def test_emulated_roots_need_explicit_unpinning(tmp_path):
    roots = fake.make_roots("genoa")
    _write_roots(tmp_path, roots)
    tcb = TcbVersion(TcbLayout.MILAN_GENOA, bootloader=9, snp=23, microcode=72)
    key, vek = fake.make_vek(roots, tcb)
    rep = fake.sign_report(fake.make_report(tcb, "genoa"), key)
    v = verify_report(rep, vek, TrustStore.from_dir(tmp_path), at=AT)
    assert v.failed == ("chain_ark_pinned",)
    v = verify_report(rep, vek, TrustStore.from_dir(tmp_path, pinned=False), at=AT)
    assert v.ok and "unpinned" in v.check("chain_ark_pinned").detail


def test_from_pem_bundle_sorts_by_cn():
    m, g = fake.make_roots("milan"), fake.make_roots("genoa")
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in (m.ask, g.ark, m.ark, m.asvk, g.ask))
    t = TrustStore.from_pem(pem, pinned=False)
    assert t.get("milan").ark == m.ark and t.get("milan").asvk == m.asvk and t.get("genoa").asvk is None
    with pytest.raises(TrustStoreError, match="two ARK"):
        TrustStore.from_pem(m.ark.public_bytes(Encoding.PEM) * 2)
    _, vek = fake.make_vek(m, TCB)
    with pytest.raises(TrustStoreError, match="not an ARK"):
        TrustStore.from_pem(vek.public_bytes(Encoding.PEM))


def test_missing_ask_is_named():
    roots = fake.make_roots("milan")
    key, vek = fake.make_vek(roots, TCB, kind="vlek")
    rep = fake.sign_report(fake.make_report(TCB, chip_id=bytes(64), signing_key=1), key)
    from snplab.attest.trust import ProductRoots
    t = TrustStore({"milan": ProductRoots("milan", roots.ark, roots.ask, None)}, pinned=False)
    v = verify_report(rep, vek, t, at=AT)
    assert v.first_failure.name == "chain_ask" and "no ASVK" in v.first_failure.detail


def test_no_ark_anywhere():
    roots = fake.make_roots("milan")
    key, vek = fake.make_vek(roots, TCB)
    v = verify_report(fake.sign_report(fake.make_report(TCB), key), vek, TrustStore.empty(), at=AT)
    assert v.first_failure.name == "chain_ark_self_signed" and "no milan ARK" in v.first_failure.detail
