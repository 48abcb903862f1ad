"""SNP guest messages (SNP_GUEST_REQUEST): the 96-byte header, AEAD constants, and the
MSG_REPORT_REQ / MSG_REPORT_RSP payloads. Pack/unpack only; no cryptography here.

Source: SNP firmware ABI 56860 "Guest Messages"; Linux ``struct snp_guest_msg_hdr``
(arch/x86/include/asm/sev.h), ``struct snp_report_req``; offsets in
shared/reference/guest-protocol.md §3 and errata.md table A.

    0x00 authtag[32] (GCM tag in 0x00..0x0F)  0x20 msg_seqno u64  0x28 rsvd[8]
    0x30 algo u8  0x31 hdr_version u8  0x32 hdr_sz u16  0x34 msg_type u8  0x35 msg_version u8
    0x36 msg_sz u16  0x38 rsvd u32  0x3C msg_vmpck u8  0x3D rsvd[35]   → payload at 0x60

AEAD: AES-256-GCM, key VMPCKn, IV = msg_seqno (u64 LE) + 4 zero bytes, AAD = header[0x30:0x60],
16-byte tag stored in authtag[0:16], ciphertext length = msg_sz (no appended tag).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

MSG_HDR_SIZE = 0x60
MSG_PAGE_SIZE = 4096
MAX_PAYLOAD_SIZE = MSG_PAGE_SIZE - MSG_HDR_SIZE  # 4000

# header offsets
AUTHTAG_OFFSET = 0x00
AUTHTAG_SIZE = 32  # MAX_AUTHTAG_LEN
MSG_SEQNO_OFFSET = 0x20
HDR_RSVD1_OFFSET = 0x28
ALGO_OFFSET = 0x30
HDR_VERSION_OFFSET = 0x31
HDR_SZ_OFFSET = 0x32
MSG_TYPE_OFFSET = 0x34  # byte KVM inspects to decide on a certificate exit
MSG_VERSION_OFFSET = 0x35
MSG_SZ_OFFSET = 0x36
HDR_RSVD2_OFFSET = 0x38
MSG_VMPCK_OFFSET = 0x3C
HDR_RSVD3_OFFSET = 0x3D
HDR_RSVD3_SIZE = 35
PAYLOAD_OFFSET = MSG_HDR_SIZE

# AEAD
AEAD_ALGO_INVALID = 0
AEAD_ALGO_AES_256_GCM = 1
AEAD_KEY_SIZE = 32
AEAD_IV_SIZE = 12
AUTHTAG_LEN = 16
AAD_OFFSET = ALGO_OFFSET
AAD_SIZE = MSG_HDR_SIZE - AAD_OFFSET  # 48
MSG_HDR_VER = 1
VMPCK_COUNT = 4


class MsgType(enum.IntEnum):
    INVALID = 0
    CPUID_REQ = 1
    CPUID_RSP = 2
    KEY_REQ = 3
    KEY_RSP = 4
    REPORT_REQ = 5
    REPORT_RSP = 6
    EXPORT_REQ = 7
    EXPORT_RSP = 8
    IMPORT_REQ = 9
    IMPORT_RSP = 10
    ABSORB_REQ = 11
    ABSORB_RSP = 12
    VMRK_REQ = 13
    VMRK_RSP = 14
    ABSORB_NOMA_REQ = 15
    ABSORB_NOMA_RSP = 16
    TSC_INFO_REQ = 17
    TSC_INFO_RSP = 18


MSG_REPORT_REQ = MsgType.REPORT_REQ
MSG_REPORT_RSP = MsgType.REPORT_RSP

_HDR = struct.Struct("<32sQ8sBBHBBHIB35s")
assert _HDR.size == MSG_HDR_SIZE


class GuestMsgError(ValueError):
    """A buffer that cannot hold the message structure asked for."""


def aead_iv(seqno: int) -> bytes:
    """12-byte GCM IV for a message sequence number."""
    return seqno.to_bytes(8, "little") + bytes(4)


@dataclass(frozen=True)
class MsgHeader:
    msg_seqno: int
    msg_type: int
    msg_sz: int
    msg_vmpck: int = 0
    msg_version: int = 1
    algo: int = AEAD_ALGO_AES_256_GCM
    hdr_version: int = MSG_HDR_VER
    hdr_sz: int = MSG_HDR_SIZE
    authtag: bytes = bytes(AUTHTAG_SIZE)
    rsvd1: bytes = bytes(8)
    rsvd2: int = 0
    rsvd3: bytes = bytes(HDR_RSVD3_SIZE)

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview) -> "MsgHeader":
        if len(buf) < MSG_HDR_SIZE:
            raise GuestMsgError(f"guest message header needs {MSG_HDR_SIZE} bytes, got {len(buf)}")
        (tag, seqno, r1, algo, hver, hsz, mtype, mver, msz, r2, vmpck, r3) = _HDR.unpack(
            bytes(buf[:MSG_HDR_SIZE])
        )
        return cls(msg_seqno=seqno, msg_type=mtype, msg_sz=msz, msg_vmpck=vmpck, msg_version=mver,
                   algo=algo, hdr_version=hver, hdr_sz=hsz, authtag=tag, rsvd1=r1, rsvd2=r2, rsvd3=r3)

    def pack(self) -> bytes:
        return _HDR.pack(self.authtag, self.msg_seqno, self.rsvd1, self.algo, self.hdr_version,
                         self.hdr_sz, self.msg_type, self.msg_version, self.msg_sz, self.rsvd2,
                         self.msg_vmpck, self.rsvd3)

    def aad(self) -> bytes:
        """AEAD associated data: header bytes 0x30..0x5F."""
        return self.pack()[AAD_OFFSET:]

    @property
    def tag(self) -> bytes:
        return self.authtag[:AUTHTAG_LEN]

    def with_tag(self, tag: bytes) -> "MsgHeader":
        if len(tag) != AUTHTAG_LEN:
            raise GuestMsgError(f"GCM tag must be {AUTHTAG_LEN} bytes")
        return MsgHeader(**{**self.__dict__, "authtag": tag + bytes(AUTHTAG_SIZE - AUTHTAG_LEN)})


# MSG_REPORT_REQ payload (96 bytes): REPORT_DATA[64] @0, VMPL u32 @0x40, KEY_SEL u32 @0x44 (bits 1:0),
# reserved[24] @0x48
REPORT_REQ_SIZE = 0x60
REPORT_REQ_REPORT_DATA_OFFSET = 0x00
REPORT_REQ_VMPL_OFFSET = 0x40
REPORT_REQ_KEY_SEL_OFFSET = 0x44
KEY_SEL_DEFAULT = 0  # VLEK if installed, else VCEK
KEY_SEL_VCEK = 1
KEY_SEL_VLEK = 2
_REPORT_REQ = struct.Struct("<64sII24s")
assert _REPORT_REQ.size == REPORT_REQ_SIZE

# MSG_REPORT_RSP payload: STATUS u32 @0, REPORT_SIZE u32 @4, reserved[24] @8, report @0x20
REPORT_RSP_HDR_SIZE = 0x20
REPORT_RSP_STATUS_OFFSET = 0x00
REPORT_RSP_REPORT_SIZE_OFFSET = 0x04
REPORT_RSP_REPORT_OFFSET = 0x20
REPORT_RSP_REPORT_LEN = 0x4A0
REPORT_RSP_SIZE = REPORT_RSP_HDR_SIZE + REPORT_RSP_REPORT_LEN  # 0x4C0
_REPORT_RSP_HDR = struct.Struct("<II24s")
assert _REPORT_RSP_HDR.size == REPORT_RSP_HDR_SIZE

# MSG_REPORT_RSP.status values (coconut-svsm pld_report.rs; Linux sev_report_new)
REPORT_RSP_STATUS_SUCCESS = 0x00
REPORT_RSP_STATUS_INVALID_PARAM = 0x16
REPORT_RSP_STATUS_INVALID_KEY = 0x27


@dataclass(frozen=True)
class ReportReq:
    report_data: bytes = bytes(64)
    vmpl: int = 0
    key_sel: int = KEY_SEL_DEFAULT  # the whole u32 at 0x44; bits 1:0 are KEY_SEL
    reserved: bytes = bytes(24)

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview) -> "ReportReq":
        if len(buf) < REPORT_REQ_SIZE:
            raise GuestMsgError(f"MSG_REPORT_REQ needs {REPORT_REQ_SIZE} bytes, got {len(buf)}")
        rd, vmpl, key_sel, rsvd = _REPORT_REQ.unpack(bytes(buf[:REPORT_REQ_SIZE]))
        return cls(report_data=rd, vmpl=vmpl, key_sel=key_sel, reserved=rsvd)

    def pack(self) -> bytes:
        if len(self.report_data) > 64:
            raise GuestMsgError("REPORT_DATA is at most 64 bytes")
        return _REPORT_REQ.pack(bytes(self.report_data).ljust(64, b"\0"), self.vmpl, self.key_sel,
                                self.reserved)


@dataclass(frozen=True)
class ReportRsp:
    status: int
    report_size: int
    report: bytes  # the raw report bytes (report_size of them, bounded by the buffer)
    reserved: bytes = bytes(24)

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview) -> "ReportRsp":
        if len(buf) < REPORT_RSP_HDR_SIZE:
            raise GuestMsgError(f"MSG_REPORT_RSP needs at least {REPORT_RSP_HDR_SIZE} bytes, got {len(buf)}")
        status, size, rsvd = _REPORT_RSP_HDR.unpack(bytes(buf[:REPORT_RSP_HDR_SIZE]))
        end = REPORT_RSP_REPORT_OFFSET + size
        if end > len(buf):
            raise GuestMsgError(
                f"MSG_REPORT_RSP report_size {size:#x} runs past the {len(buf):#x}-byte payload"
            )
        return cls(status=status, report_size=size, report=bytes(buf[REPORT_RSP_REPORT_OFFSET:end]),
                   reserved=rsvd)

    def pack(self) -> bytes:
        return _REPORT_RSP_HDR.pack(self.status, self.report_size, self.reserved) + bytes(self.report)
