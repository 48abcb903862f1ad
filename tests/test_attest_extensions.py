"""AMD X.509 extensions, the DER reader under them, and RSASSA-PSS parameter reading."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import given
from hypothesis import strategies as st

from snplab.abi.tcb import TcbLayout, TcbVersion
from snplab.attest import chain as chainmod
from snplab.attest import der
from snplab.attest import testing as fake
from snplab.attest.certs import load_certificate
from snplab.attest.extensions import ExtensionError, decode_hw_id, parse_extensions

VECTORS = Path(os.environ.get("SNPLAB_VECTORS") or Path(__file__).resolve().parents[1].parent / "shared" / "vectors")
needs_vectors = pytest.mark.skipif(not (VECTORS / "manifest.json").is_file(), reason=f"no test vectors at {VECTORS}")


def test_der_integer_minimal_forms():
    assert der.decode_integer(der.read_single(bytes.fromhex("020100"))) == 0
    assert der.decode_integer(der.read_single(bytes.fromhex("020200db"))) == 219  # ucodeSPL 219
    assert der.decode_integer(der.read_single(bytes.fromhex("02017f"))) == 127
    with pytest.raises(der.DerError, match="non-minimal"):
        der.decode_integer(der.read_single(bytes.fromhex("0202007f")))
    with pytest.raises(der.DerError):
        der.read_single(bytes.fromhex("020100ff"))  # trailing byte
    with pytest.raises(der.DerError):
        der.read_single(bytes.fromhex("0205aa"))  # length past the end


def test_der_oid_and_ia5():
    assert der.decode_oid(der.read_single(bytes.fromhex("06092b060104019c780103"))) == "1.3.6.1.4.1.3704.1.3"
    assert der.decode_ia5(der.read_single(bytes.fromhex("16054d696c616e"))) == "Milan"
    with pytest.raises(der.DerError):
        der.decode_ia5(der.read_single(bytes.fromhex("1601ff")))


@given(st.binary(max_size=64))
def test_der_reader_only_raises_der_error(b):
    try:
        tlv = der.read_single(b)
    except der.DerError:
        return
    assert tlv.raw == b


def test_hw_id_forms():
    raw64 = bytes(range(64))
    assert decode_hw_id(raw64) == (raw64, False)
    assert decode_hw_id(b"\x04\x40" + raw64) == (raw64, True)
    assert decode_hw_id(bytes(8)) == (bytes(8), False)
    assert decode_hw_id(b"\x04\x08" + bytes(range(8))) == (bytes(range(8)), True)
    # a bare 64-byte hwID that happens to start with 04 40 is still bare
    tricky = b"\x04\x40" + bytes(62)
    assert decode_hw_id(tricky) == (tricky, False)
    for bad in (bytes(63), bytes(65), b"\x04\x41" + raw64, b"\x04\x40" + raw64 + b"\0"):
        with pytest.raises(ExtensionError):
            decode_hw_id(bad)


def test_extensions_of_a_turin_vcek():
    tcb = TcbVersion(TcbLayout.TURIN, fmc=5, bootloader=1, tee=2, snp=3, microcode=200)
    _, cert = fake.make_vek(fake.make_roots("turin"), tcb, hw_id=bytes(range(8)))
    ext = parse_extensions(cert)
    assert (ext.struct_version, ext.product_name, ext.fmc_spl, ext.ucode_spl) == (1, "Turin", 5, 200)
    assert ext.hw_id == bytes(range(8)) and ext.csp_id is None and ext.spl_4 is None
    assert ext.tcb(TcbLayout.TURIN) == tcb
    with pytest.raises(ExtensionError, match="fmc_spl"):
        parse_extensions(fake.make_vek(fake.make_roots("milan"), TcbVersion(TcbLayout.MILAN_GENOA))[1]) \
            .tcb(TcbLayout.TURIN)


@needs_vectors
def test_extensions_of_real_certificates():
    milan = parse_extensions(load_certificate((VECTORS / "milan_virtee" / "vcek.der").read_bytes()))
    assert milan.product_name == "Milan-B0" and milan.struct_version == 0
    assert (milan.bl_spl, milan.tee_spl, milan.snp_spl, milan.ucode_spl) == (3, 0, 8, 115)
    assert (milan.spl_4, milan.spl_5, milan.spl_6, milan.spl_7) == (0, 0, 0, 0)
    assert len(milan.hw_id) == 64 and not milan.hw_id_wrapped
    assert milan.tcb(TcbLayout.MILAN_GENOA).pack() == 0x7308000000000003
    turin = parse_extensions(load_certificate((VECTORS / "turin_virtee_certonly" / "vcek.der").read_bytes()))
    assert turin.struct_version == 1 and turin.fmc_spl == 0 and len(turin.hw_id) == 8 and turin.spl_4 is None
    vlek = parse_extensions(load_certificate((VECTORS / "milan_trustee_vlek" / "vlek.der").read_bytes()))
    assert vlek.csp_id == "CN=cc-us-east-2.amazonaws.com" and vlek.hw_id is None
    assert vlek.ucode_spl == 217  # 02 02 00 d9


@needs_vectors
@pytest.mark.parametrize("name", ["milan_ark", "milan_ask", "genoa_asvk", "turin_ark"])
def test_pss_params_read_from_real_certificates(name):
    cert = load_certificate((VECTORS / "amd_roots" / f"{name}.pem").read_bytes())
    p = chainmod.check_pss_sha384(cert)
    assert (p.hash_oid, p.mgf_hash_oid, p.salt_length, p.trailer_field) == (chainmod.OID_SHA384, chainmod.OID_SHA384, 48, 1)


def test_pss_params_wrong_hash_rejected():
    roots = fake.make_roots("milan")
    sha256 = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    _, cert = fake.make_vek(roots, TcbVersion(TcbLayout.MILAN_GENOA), pss=sha256)
    p = chainmod.pss_params(cert)
    assert p.mgf_hash_oid == "2.16.840.1.101.3.4.2.1" and p.salt_length == 32
    with pytest.raises(chainmod.ChainError, match="expected SHA-384"):
        chainmod.check_pss_sha384(cert)


def test_pkcs1_signature_is_not_pss():
    from cryptography import x509
    roots = fake.make_roots("milan")
    b = (x509.CertificateBuilder().subject_name(fake.amd_name("SEV-VCEK")).issuer_name(roots.ask.subject)
         .public_key(roots.ask_key.public_key()).serial_number(1)
         .not_valid_before(fake.EPOCH).not_valid_after(fake.EPOCH.replace(year=2030)))
    cert = b.sign(roots.ask_key, hashes.SHA384())  # PKCS#1 v1.5
    with pytest.raises(chainmod.ChainError, match="not RSASSA-PSS"):
        chainmod.verify_signed_by(cert, roots.ask)
