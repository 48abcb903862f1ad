"""Attestation report layout, TCB_VERSION layouts, policy / platform info / signer info bits."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snplab.abi import report as rpt
from snplab.abi.policy import GuestPolicy, PlatformInfo
from snplab.abi.report import (
    REPORT_SIZE,
    SIGNED_LENGTH,
    AttestationReport,
    ReportFormatError,
    SignerInfo,
)
from snplab.abi.tcb import TcbLayout, TcbVersion, layout_for_product

VECTORS = Path(os.environ.get("SNPLAB_VECTORS") or Path(__file__).resolve().parents[1].parent / "shared" / "vectors")
needs_vectors = pytest.mark.skipif(not (VECTORS / "manifest.json").is_file(), reason=f"no test vectors at {VECTORS}")


def _manifest_reports():
    if not (VECTORS / "manifest.json").is_file():
        return []
    return [e for e in json.loads((VECTORS / "manifest.json").read_text()) if "report" in e["files"]]


def test_sizes_and_offsets():
    assert REPORT_SIZE == 0x4A0 and SIGNED_LENGTH == 0x2A0
    assert rpt.REPORT_DATA_OFFSET == 0x50 and rpt.MEASUREMENT_OFFSET == 0x90
    assert rpt.REPORTED_TCB_OFFSET == 0x180 and rpt.CHIP_ID_OFFSET == 0x1A0
    assert rpt.SIGNATURE_R_OFFSET == 0x2A0 and rpt.SIGNATURE_S_OFFSET == 0x2E8
    # the field table covers every byte exactly once, in order
    pos = 0
    for name, off, size, _ in rpt.field_layout():
        assert off == pos, name
        pos += size
    assert pos == REPORT_SIZE


def test_each_field_lands_at_its_offset():
    r = AttestationReport(version=3, guest_svn=0x11223344, policy=0x30000 | (1 << 19), vmpl=2,
                          current_tcb=0x0102030405060708, reported_tcb=0xA1A2A3A4A5A6A7A8,
                          report_data=bytes(range(64)), measurement=b"\x5a" * 48, chip_id=b"\xcc" * 64,
                          cpuid_fam_id=0x19, cpuid_mod_id=0xA0, cpuid_step=2, current_build=7,
                          current_minor=55, current_major=1, launch_mit_vector=3, signer_info=1 << 2)
    b = r.pack()
    assert len(b) == REPORT_SIZE
    assert b[0:4] == (3).to_bytes(4, "little")
    assert b[4:8] == bytes.fromhex("44332211")
    assert b[0x30] == 2
    assert b[0x38:0x40] == bytes.fromhex("0807060504030201")
    assert b[0x48] == 4
    assert b[0x50:0x90] == bytes(range(64))
    assert b[0x90:0xC0] == b"\x5a" * 48
    assert b[0x180:0x188] == bytes.fromhex("a8a7a6a5a4a3a2a1")
    assert b[0x188:0x18B] == bytes([0x19, 0xA0, 2])
    assert b[0x1A0:0x1E0] == b"\xcc" * 64
    assert b[0x1E8:0x1EB] == bytes([7, 55, 1])
    assert b[0x1F8:0x200] == (3).to_bytes(8, "little")
    assert AttestationReport.unpack(b) == r


@pytest.mark.parametrize("n", [0, 1, REPORT_SIZE - 1, REPORT_SIZE + 1, 4096])
def test_wrong_length_rejected(n):
    with pytest.raises(ReportFormatError, match="0x4a0"):
        AttestationReport.unpack(bytes(n))


@pytest.mark.parametrize("version", [0, 1, 6, 0xFFFFFFFF])
def test_unsupported_version_rejected(version):
    b = AttestationReport(version=2).pack()
    with pytest.raises(ReportFormatError, match="version"):
        AttestationReport.unpack(version.to_bytes(4, "little") + b[4:])


@given(st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE), st.sampled_from([2, 3, 4, 5]))
def test_unpack_pack_is_exact_for_any_bytes(body, version):
    b = version.to_bytes(4, "little") + body[4:]
    assert AttestationReport.unpack(b).pack() == b


def test_with_signature_places_r_s_little_endian():
    r = AttestationReport().with_signature(0x0102, 0x0A0B)
    b = r.pack()
    assert b[0x2A0:0x2A2] == b"\x02\x01" and not any(b[0x2A2:0x2E8])
    assert b[0x2E8:0x2EA] == b"\x0b\x0a" and not any(b[0x2EA:0x4A0])
    assert (r.r, r.s) == (0x0102, 0x0A0B)


def test_reserved_nonzero_is_version_aware():
    assert AttestationReport(version=5, launch_mit_vector=1).reserved_nonzero() == ()
    assert AttestationReport(version=3, launch_mit_vector=1).reserved_nonzero() == (
        "mitigation vectors (reserved before v5)",)
    assert "cpuid (reserved in v2)" in AttestationReport(version=2, cpuid_fam_id=0x19).reserved_nonzero()
    assert "reserved4" in AttestationReport(reserved4=b"\x01" + bytes(151)).reserved_nonzero()
    assert "signature R/S bytes 48..71" in AttestationReport().with_signature(1 << 400, 1).reserved_nonzero()


def test_field_range_validation():
    with pytest.raises(ValueError):
        AttestationReport(vmpl=1 << 32)
    with pytest.raises(ValueError):
        AttestationReport(report_data=b"short")


@needs_vectors
@pytest.mark.parametrize("entry", _manifest_reports(), ids=lambda e: e["id"])
def test_real_reports_round_trip(entry):
    b = (VECTORS / entry["files"]["report"]).read_bytes()
    r = AttestationReport.unpack(b)
    assert r.pack() == b
    assert r.version in (2, 3, 5)
    assert r.signature_algo == 1
    assert r.reserved_nonzero() == ()
    assert r.guest_policy.problems() == ()
    assert r.signer.signing_key == (1 if entry["signer"] == "vlek" else 0)


# ---- TCB ------------------------------------------------------------------------------------


def test_tcb_milan_genoa_layout():
    t = TcbVersion.unpack(0x4405000000000002, TcbLayout.MILAN_GENOA)
    assert (t.bootloader, t.tee, t.snp, t.microcode, t.fmc) == (2, 0, 5, 0x44, 0)
    assert t.pack() == 0x4405000000000002


def test_tcb_turin_layout():
    # errata: Turin byte0 FMC, 1 BL, 2 TEE, 3 SNP, 7 UCODE
    t = TcbVersion(TcbLayout.TURIN, fmc=9, bootloader=1, tee=3, snp=2, microcode=71)
    assert t.to_bytes() == bytes([9, 1, 3, 2, 0, 0, 0, 71])
    assert TcbVersion.unpack(t.pack(), TcbLayout.TURIN) == t


def test_tcb_reserved_bytes_survive():
    v = 0x0B0A0908070605FF
    assert TcbVersion.unpack(v, TcbLayout.MILAN_GENOA).pack() == v
    assert TcbVersion.unpack(v, TcbLayout.TURIN).pack() == v
    assert TcbVersion(TcbLayout.TURIN, reserved=bytes(3)) == TcbVersion.unpack(0, TcbLayout.TURIN)
    with pytest.raises(ValueError):
        TcbVersion(TcbLayout.TURIN, reserved=bytes(4))


@given(st.integers(0, (1 << 64) - 1), st.sampled_from(list(TcbLayout)))
def test_tcb_round_trip(value, layout):
    assert TcbVersion.unpack(value, layout).pack() == value


def test_tcb_layout_for_product():
    assert layout_for_product("Milan") is TcbLayout.MILAN_GENOA
    assert layout_for_product("genoa") is TcbLayout.MILAN_GENOA
    assert layout_for_product("turin") is TcbLayout.TURIN
    with pytest.raises(ValueError):
        layout_for_product("venice")
    with pytest.raises(ValueError):
        TcbVersion(TcbLayout.MILAN_GENOA, fmc=1)


# ---- policy / platform / signer -------------------------------------------------------------


def test_guest_policy_bits():
    p = GuestPolicy.unpack(0xB0000)
    assert p.smt and p.reserved_mbo and p.debug and not p.migrate_ma
    assert p.problems() == ()
    assert p.pack() == 0xB0000
    assert GuestPolicy.unpack(0x10000).problems() == ("policy bit 17 (reserved, must be one) is zero",)
    assert "63:26" in GuestPolicy.unpack(0x30000 | (1 << 40)).problems()[0]


@given(st.integers(0, (1 << 64) - 1))
def test_policy_and_platform_round_trip(v):
    assert GuestPolicy.unpack(v).pack() == v
    assert PlatformInfo.unpack(v).pack() == v


def test_platform_info_bits():
    p = PlatformInfo.unpack(0x25)
    assert p.flags() == ("smt_en", "ecc_en", "alias_check_complete")


def test_signer_info():
    s = SignerInfo.unpack(0b00111)
    assert s.author_key_en and s.mask_chip_key and s.signing_key == 1 and s.signing_key_name == "vlek"
    assert s.pack() == 0b00111
    assert SignerInfo.unpack(7 << 2).signing_key_name == "none"
    assert SignerInfo.unpack(1 << 5).reserved == 1 << 5
    assert replace(AttestationReport(), signer_info=7 << 2).signer.signing_key == 7
