"""verify_from_cert_table: VEK, ASK/ASVK and ARK picked from a GHCB certificate table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snplab.abi import cert_table as ct
from snplab.abi.tcb import TcbLayout, TcbVersion
from snplab.attest import testing as fake
from snplab.attest.certs import der_bytes, load_certificate
from snplab.attest.trust import TrustStore
from snplab.attest.verify import verify_from_cert_table

VECTORS = Path(os.environ.get("SNPLAB_VECTORS") or Path(__file__).resolve().parents[1].parent / "shared" / "vectors")
needs_vectors = pytest.mark.skipif(not (VECTORS / "manifest.json").is_file(), reason=f"no test vectors at {VECTORS}")
TCB = TcbVersion(TcbLayout.MILAN_GENOA, bootloader=3, snp=8, microcode=115)
AT = fake.EPOCH.replace(month=3)


def _pem_der(name: str) -> bytes:
    return der_bytes(load_certificate((VECTORS / "amd_roots" / name).read_bytes()))


def _real(case: str, vek_file: str, asks: str):
    rep = (VECTORS / case / "report.bin").read_bytes()
    vek = (VECTORS / case / vek_file).read_bytes()
    c = load_certificate(vek)
    at = c.not_valid_before_utc + (c.not_valid_after_utc - c.not_valid_before_utc) / 2
    guid = ct.VLEK_GUID if vek_file == "vlek.der" else ct.VCEK_GUID
    table = ct.build_table([(guid, vek), (ct.ASK_GUID, _pem_der(asks)), (ct.ARK_GUID, _pem_der("milan_ark.pem"))])
    return rep, table, at


@needs_vectors
@pytest.mark.parametrize("case,vek_file,asks", [("milan_virtee", "vcek.der", "milan_ask.pem"),
                                                ("milan_trustee_vlek", "vlek.der", "milan_asvk.pem")])
def test_real_chain_from_table(case, vek_file, asks):
    rep, table, at = _real(case, vek_file, asks)
    page = table + bytes(-len(table) % 4096)  # as a guest receives it: whole pages
    v = verify_from_cert_table(rep, page, TrustStore.from_dir(VECTORS / "amd_roots"), at=at)
    assert v.ok, v.summary()
    assert v.checks[0].name == "report_parse" and v.checks[1].name == "cert_table"
    assert "ARK" in v.check("cert_table").detail
    # with no trust directory at all, the table's ARK is accepted because it matches AMD's pin
    v = verify_from_cert_table(rep, page, TrustStore.empty(), at=at)
    assert v.ok and "evidence" in v.check("chain_ark_self_signed").detail


@needs_vectors
def test_table_without_the_signers_entry():
    rep, _, at = _real("milan_virtee", "vcek.der", "milan_ask.pem")
    table = ct.build_table([(ct.VLEK_GUID, (VECTORS / "milan_trustee_vlek" / "vlek.der").read_bytes())])
    v = verify_from_cert_table(rep, table, TrustStore.from_dir(VECTORS / "amd_roots"), at=at)
    assert v.verdict == "error" and v.first_failure.name == "cert_table"
    assert "no VCEK entry" in v.first_failure.detail


def test_synthetic_table_unpinned():
    roots = fake.make_roots("milan")
    key, vek = fake.make_vek(roots, TCB)
    rep = fake.sign_report(fake.make_report(TCB), key)
    table = ct.build_table([(ct.VCEK_GUID, der_bytes(vek)), (ct.ASK_GUID, der_bytes(roots.ask)),
                            (ct.ARK_GUID, der_bytes(roots.ark)), (ct.CRL_GUID, b"crl")])
    assert verify_from_cert_table(rep, table, TrustStore.empty(pinned=False), at=AT).ok
    v = verify_from_cert_table(rep, table, TrustStore.empty(pinned=True), at=AT)
    assert v.first_failure.name == "chain_ark_pinned"


def test_table_entry_that_is_not_a_certificate():
    roots = fake.make_roots("milan")
    key, vek = fake.make_vek(roots, TCB)
    rep = fake.sign_report(fake.make_report(TCB), key)
    table = ct.build_table([(ct.VCEK_GUID, b"\x30\x03garbage")])
    v = verify_from_cert_table(rep, table, fake.trust_store(roots), at=AT)
    assert v.verdict == "error" and v.first_failure.name == "cert_table" and "VCEK entry" in v.first_failure.detail


@pytest.mark.parametrize("table, fragment", [(b"", "unterminated"), (bytes(23), "unterminated"),
                                             (ct.pack_entry(ct.VCEK_GUID, 48, 10**6) + bytes(24), "outside")])
def test_malformed_table_is_input_error(table, fragment):
    v = verify_from_cert_table(fake.make_report(TCB).pack(), table, TrustStore.empty(), at=AT)
    assert v.verdict == "error" and v.first_failure.name == "cert_table" and fragment in v.first_failure.detail
    assert all(c.detail.startswith("not run") for c in v.checks[2:])


@settings(max_examples=60)
@given(st.binary(max_size=200))
def test_hostile_tables_never_raise(table):
    v = verify_from_cert_table(fake.make_report(TCB).pack(), table, TrustStore.empty(), at=AT)
    assert not v.ok
    assert v.first_failure.name in ("cert_table", "vek_parse")
