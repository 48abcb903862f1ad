"""Guest message header and MSG_REPORT_REQ/RSP layouts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snplab.abi import guest_msg as gm
from snplab.abi.guest_msg import MsgHeader, ReportReq, ReportRsp


def test_header_offsets():
    h = MsgHeader(msg_seqno=0x1122334455667788, msg_type=gm.MSG_REPORT_REQ, msg_sz=0x60, msg_vmpck=3,
                  authtag=b"\xaa" * 16 + bytes(16))
    b = h.pack()
    assert len(b) == gm.MSG_HDR_SIZE == 0x60
    assert b[0:16] == b"\xaa" * 16 and not any(b[16:32])
    assert b[0x20:0x28] == bytes.fromhex("8877665544332211")
    assert b[0x30] == 1 and b[0x31] == 1  # AES-256-GCM, header version 1
    assert b[0x32:0x34] == b"\x60\x00"
    assert b[gm.MSG_TYPE_OFFSET] == 5 and gm.MSG_TYPE_OFFSET == 0x34
    assert b[0x35] == 1
    assert b[0x36:0x38] == b"\x60\x00"
    assert b[0x3C] == 3
    assert h.aad() == b[0x30:0x60] and len(h.aad()) == gm.AAD_SIZE == 48
    assert h.tag == b"\xaa" * 16


def test_msg_types_and_aead_constants():
    assert (gm.MSG_REPORT_REQ, gm.MSG_REPORT_RSP) == (5, 6)
    assert gm.MsgType.TSC_INFO_RSP == 18
    assert gm.aead_iv(1) == b"\x01" + bytes(11)
    assert gm.aead_iv(0x0102) == b"\x02\x01" + bytes(10)
    assert gm.MAX_PAYLOAD_SIZE == 4000


@given(st.binary(min_size=96, max_size=96))
def test_header_round_trip(raw):
    assert MsgHeader.unpack(raw).pack() == raw


def test_header_too_short():
    with pytest.raises(gm.GuestMsgError):
        MsgHeader.unpack(bytes(95))


def test_with_tag():
    h = MsgHeader(msg_seqno=1, msg_type=5, msg_sz=96).with_tag(b"\x01" * 16)
    assert h.pack()[:32] == b"\x01" * 16 + bytes(16)
    with pytest.raises(gm.GuestMsgError):
        h.with_tag(b"short")


def test_report_req_layout():
    b = ReportReq(report_data=b"\x42" * 64, vmpl=1, key_sel=gm.KEY_SEL_VLEK).pack()
    assert len(b) == gm.REPORT_REQ_SIZE == 0x60
    assert b[:64] == b"\x42" * 64 and b[0x40:0x44] == b"\x01\0\0\0" and b[0x44:0x48] == b"\x02\0\0\0"
    assert not any(b[0x48:])
    assert ReportReq.unpack(b) == ReportReq(report_data=b"\x42" * 64, vmpl=1, key_sel=2)
    assert ReportReq(report_data=b"ab").pack()[:3] == b"ab\0"


def test_report_rsp_layout():
    report = bytes(range(256)) * 4 + bytes(0x4A0 - 1024)
    b = ReportRsp(status=0, report_size=0x4A0, report=report).pack()
    assert len(b) == gm.REPORT_RSP_SIZE == 0x4C0
    assert b[4:8] == (0x4A0).to_bytes(4, "little") and b[0x20:] == report
    r = ReportRsp.unpack(b + bytes(100))  # decrypted payloads may be padded
    assert r.report == report and r.status == 0


def test_report_rsp_size_past_buffer_rejected():
    b = ReportRsp(status=0, report_size=0x4A0, report=bytes(0x4A0)).pack()
    with pytest.raises(gm.GuestMsgError, match="runs past"):
        ReportRsp.unpack(b[:-1])
    hostile = (0x16).to_bytes(4, "little") + (0xFFFFFFFF).to_bytes(4, "little") + bytes(24)
    with pytest.raises(gm.GuestMsgError):
        ReportRsp.unpack(hostile)
