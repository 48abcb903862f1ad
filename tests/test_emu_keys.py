"""snplab.emu.keys: the emulated ARK/ASK/ASVK/VCEK/VLEK look like AMD's, say they are not, are cached
safely, and produce a certificate blob and trust directory the verifier accepts (unpinned only)."""

from __future__ import annotations

import hashlib
import multiprocessing
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from snplab.abi.cert_table import ARK_GUID, ASK_GUID, VCEK_GUID, VLEK_GUID, parse_table
from snplab.abi.tcb import TcbLayout, TcbVersion
from snplab.attest import chain as attest_chain
from snplab.attest.trust import TrustStore, TrustStoreError
from snplab.emu import keys

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"
AMD = "1.3.6.1.4.1.3704.1."


def _exts(cert: x509.Certificate) -> list[tuple[str, bytes]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return [(e.oid.dotted_string, e.value.value) for e in cert.extensions]  # type: ignore[attr-defined]


def _serial(cert: x509.Certificate) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return cert.serial_number


@pytest.fixture(scope="module")
def store() -> keys.KeyStore:
    return keys.default_store()


@pytest.mark.parametrize("product", keys.PRODUCTS)
def test_vcek_extensions_are_amds_in_amds_order(store: keys.KeyStore, product: str) -> None:
    tcb = keys.default_tcb(product)
    chip = keys.default_chip_id(product)
    vcek = store.vek(product, "vcek", tcb, chip_id=chip).cert
    exts = _exts(vcek)
    if product == "turin":
        order = ["1", "2", "3.9", "3.1", "3.2", "3.3", "3.5", "3.6", "3.7", "3.8", "4"]
        want = {"1": b"\x02\x01\x01", "2": b"\x16\x05Turin", "3.9": bytes([2, 1, tcb.fmc]),
                "3.1": bytes([2, 1, tcb.bootloader]), "3.2": bytes([2, 1, tcb.tee]), "3.3": bytes([2, 1, tcb.snp]),
                "3.8": bytes([2, 1, tcb.microcode]), "4": chip[:8]}
        assert not any(chip[8:]), "Turin CHIP_ID has 8 significant bytes"
    else:
        order = ["1", "2", "3.1", "3.2", "3.4", "3.5", "3.6", "3.7", "3.3", "3.8", "4"]
        name = b"Milan-B0" if product == "milan" else b"Genoa"
        ucode = tcb.microcode
        want = {"1": b"\x02\x01\x00", "2": b"\x16" + bytes([len(name)]) + name,
                "3.1": bytes([2, 1, tcb.bootloader]), "3.2": bytes([2, 1, tcb.tee]), "3.3": bytes([2, 1, tcb.snp]),
                "3.8": bytes([2, 2, 0, ucode]) if ucode >= 128 else bytes([2, 1, ucode]), "4": chip}
    assert [oid.removeprefix(AMD) for oid, _ in exts] == order
    got = {oid.removeprefix(AMD): v for oid, v in exts}
    for k, v in want.items():
        assert got[k] == v, k
    assert all(got[k] == b"\x02\x01\x00" for k in ("3.4", "3.5", "3.6", "3.7") if k in got)
    assert _serial(vcek) == 0
    assert isinstance(vcek.public_key(), ec.EllipticCurvePublicKey) and vcek.public_key().curve.name == "secp384r1"


@pytest.mark.parametrize("product,vector", [("milan", "milan_virtee"), ("turin", "turin_virtee_certonly"),
                                            ("genoa", "genoa_v5_routex")])
def test_vcek_extension_order_matches_a_real_vcek(store: keys.KeyStore, product: str, vector: str) -> None:
    path = VECTORS / vector / "vcek.der"
    if not path.exists():
        pytest.skip("shared/vectors absent")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        real = x509.load_der_x509_certificate(path.read_bytes())
    ours = store.vek(product, "vcek").cert
    assert [o for o, _ in _exts(ours)] == [o for o, _ in _exts(real)]
    assert [len(v) for o, v in _exts(ours) if o == AMD + "4"] == [len(v) for o, v in _exts(real) if o == AMD + "4"]
    assert [a.oid for a in ours.subject] == [a.oid for a in real.subject]  # OU, C, L, ST, O, CN
    assert ours.signature_algorithm_oid == real.signature_algorithm_oid


def test_vlek_has_csp_id_and_no_hwid(store: keys.KeyStore) -> None:
    vlek = store.vek("milan", "vlek").cert
    exts = dict(_exts(vlek))
    assert AMD + "4" not in exts
    assert exts[AMD + "5"] == b"\x16" + bytes([len(keys.DEFAULT_CSP_ID)]) + keys.DEFAULT_CSP_ID.encode()
    assert exts[AMD + "2"] == b"\x16\x05Milan"
    assert vlek.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "SEV-VLEK"
    assert vlek.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "SEV-VLEK-Milan"
    life = vlek.not_valid_after_utc - vlek.not_valid_before_utc
    assert 364 <= life.days <= 366


@pytest.mark.parametrize("product", keys.PRODUCTS)
def test_chain_is_amd_shaped_and_marked_emulated(store: keys.KeyStore, product: str) -> None:
    roots = store.roots(product)
    info = keys.product_info(product)
    vcek = store.vek(product, "vcek").cert
    vlek = store.vek(product, "vlek").cert
    for ik, cn, serial in ((roots.ark, f"ARK-{info.name}", info.ark_serial),
                           (roots.ask, f"SEV-{info.name}", info.ask_serial),
                           (roots.asvk, f"SEV-VLEK-{info.name}", info.asvk_serial)):
        c = ik.cert
        assert c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
        assert c.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == keys.EMULATED_ORGANIZATION
        assert _serial(c) == serial
        assert isinstance(ik.key, rsa.RSAPrivateKey) and ik.key.key_size == 4096
        assert ik.key.public_key().public_numbers().e == 65537
    for c in (roots.ark.cert, roots.ask.cert, roots.asvk.cert, vcek, vlek):
        assert "Advanced Micro Devices" not in c.subject.rfc4514_string() + c.issuer.rfc4514_string()
        # AMD's exact RSASSA-PSS AlgorithmIdentifier, explicit trailerField included
        der = c.public_bytes(serialization.Encoding.DER)
        assert der.count(keys.AMD_PSS_ALGORITHM) == 2
        attest_chain.check_pss_sha384(c)
    attest_chain.verify_signed_by(roots.ark.cert, roots.ark.cert)
    attest_chain.verify_signed_by(roots.ask.cert, roots.ark.cert)
    attest_chain.verify_signed_by(roots.asvk.cert, roots.ark.cert)
    attest_chain.verify_signed_by(vcek, roots.ask.cert)
    attest_chain.verify_signed_by(vlek, roots.asvk.cert)
    with pytest.raises(attest_chain.ChainError):
        attest_chain.verify_signed_by(vlek, roots.ask.cert)


def test_pss_algorithm_identifier_equals_amds_bytes() -> None:
    ark = VECTORS / "amd_roots" / "milan_ark.pem"
    if not ark.exists():
        pytest.skip("shared/vectors absent")
    der = x509.load_pem_x509_certificate(ark.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert der.count(keys.AMD_PSS_ALGORITHM) == 2


@pytest.mark.parametrize("signer", keys.SIGNERS)
def test_cert_blob_is_vek_intermediate_ark(store: keys.KeyStore, signer: str) -> None:
    pk = store.platform_keys("genoa", signer)
    table = parse_table(pk.cert_table())
    vek_guid = VCEK_GUID if signer == "vcek" else VLEK_GUID
    assert table.guids() == (vek_guid, ASK_GUID, ARK_GUID)
    assert table.get(vek_guid) == pk.vek.der
    assert table.get(ASK_GUID) == (pk.roots.ask.der if signer == "vcek" else pk.roots.asvk.der)
    assert table.get(ARK_GUID) == pk.roots.ark.der
    assert keys.cert_blob("genoa", signer, store=store) == pk.cert_table()


def test_trust_dir_loads_only_unpinned(store: keys.KeyStore, tmp_path: Path) -> None:
    d = keys.write_trust_dir("turin", tmp_path / "trust", store)
    assert sorted(p.name for p in d.iterdir()) == ["turin_ark.pem", "turin_ask.pem", "turin_asvk.pem"]
    assert (d / "turin_ark.pem").read_bytes() == store.roots("turin").ark.pem
    ts = TrustStore.from_dir(d, pinned=False)
    assert ts.get("turin").ark is not None
    try:
        pinned = TrustStore.from_dir(d, pinned=True)
    except TrustStoreError:
        return
    assert pinned.ark_pin_problem("turin", pinned.get("turin").ark) is not None


def test_emulated_ark_is_not_amds(store: keys.KeyStore) -> None:
    from snplab.attest.trust import AMD_ARK_SHA256

    for product in keys.PRODUCTS:
        fp = hashlib.sha256(store.roots(product).ark.der).hexdigest()
        assert fp != AMD_ARK_SHA256[product]


def test_chip_id_and_tcb_inputs_are_checked() -> None:
    with pytest.raises(ValueError):
        keys.normalize_chip_id("milan", bytes(8))
    with pytest.raises(ValueError):
        keys.normalize_chip_id("turin", b"\x01" * 64)
    assert keys.normalize_chip_id("turin", b"\x01" * 8) == b"\x01" * 8 + bytes(56)
    with pytest.raises(ValueError):
        keys.product_info("naples")
    with pytest.raises(ValueError):
        keys.amd_extensions("milan", TcbVersion(TcbLayout.TURIN, fmc=1), hwid=bytes(64))


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SNPLAB_CACHE", str(tmp_path))
    assert keys.default_cache_dir() == tmp_path / "emu-keys"
    monkeypatch.delenv("SNPLAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert keys.default_cache_dir() == tmp_path / "xdg" / "snplab" / "emu-keys"


# --- the on-disk cache ---------------------------------------------------------------------------

def _worker(directory: str, out: multiprocessing.Queue[tuple[int, str, str]]) -> None:
    s = keys.KeyStore(directory)
    vcek = s.vek("milan", "vcek")
    out.put((s.generated, hashlib.sha256(s.roots("milan").ark.der).hexdigest(), hashlib.sha256(vcek.der).hexdigest()))


def test_cache_is_shared_by_concurrent_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sum(r[0] for r in results) == 2  # roots once and the VCEK once, by whichever came first
    assert results[0][1:] == results[1][1:]
    assert not list(tmp_path.glob(".*.json.*")), "temporary files left behind"

    # a new store in this process loads both without generating anything
    s = keys.KeyStore(tmp_path)
    vcek = s.vek("milan", "vcek")
    assert s.generated == 0
    assert hashlib.sha256(vcek.der).hexdigest() == results[0][2]

    # a corrupt cache file is replaced, not trusted
    files = sorted(tmp_path.glob("v*-vcek-milan-*.json"))
    assert len(files) == 1
    files[0].write_text("{not json")
    s2 = keys.KeyStore(tmp_path)
    fresh = s2.vek("milan", "vcek")
    assert s2.generated == 1 and fresh.der != vcek.der
    # another TCB is another key
    other = s2.vek("milan", "vcek", TcbVersion(TcbLayout.MILAN_GENOA, bootloader=1, snp=1, microcode=1))
    assert other.der != fresh.der and s2.generated == 2
