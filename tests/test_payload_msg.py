"""SNP guest messages built and opened by the payload's C code (guest-payloads/src/msg.c), checked
against an independent Python construction with `cryptography`: 96-byte header, AAD = header bytes
0x30-0x5F, IV = msg_seqno (LE u64) + 4 zero bytes, tag in header bytes 0x00-0x0F."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from payload_abi import abi

from snplab.payload import run_harness


def key(n: int) -> bytes:
    return bytes((0x11 * (n + 1) + i) & 0xFF for i in range(32))


def iv(seqno: int) -> bytes:
    return struct.pack("<Q", seqno) + bytes(4)


def seal_request(vmpck: int, seqno: int, msg_type: int, version: int, report_data: bytes,
                 vmpl: int) -> bytes:
    out = run_harness([(f"msg_seal {key(vmpck).hex()} {seqno} {msg_type} {version} {vmpck} "
                        f"{report_data.hex() or '-'} {vmpl}")])
    return bytes.fromhex(out[0])


def make_response(vmpck: int, seqno: int, msg_type: int, payload: bytes, *, version: int = 1,
                  algo: int = 1, hdr_version: int = 1, hdr_sz: int = 0x60,
                  msg_sz: int | None = None, reserved: bytes = bytes(35)) -> bytearray:
    hdr = bytearray(0x60)
    struct.pack_into("<Q", hdr, 0x20, seqno)
    struct.pack_into("<BBHBBH", hdr, 0x30, algo, hdr_version, hdr_sz, msg_type, version,
                     len(payload) if msg_sz is None else msg_sz)
    hdr[0x3C] = vmpck
    hdr[0x3D:0x60] = reserved
    sealed = AESGCM(key(vmpck)).encrypt(iv(seqno), payload, bytes(hdr[0x30:0x60]))
    hdr[0:16] = sealed[-16:]
    return hdr + sealed[:-16]


def open_response(vmpck: int, req_seqno: int, req_type: int, req_version: int,
                  resp: bytes) -> tuple[int, int, bytes]:
    out = run_harness([(f"msg_open {key(vmpck).hex()} {req_seqno} {req_type} {req_version} "
                        f"{vmpck} {resp.hex()}")])
    dec, length, pt = out[0].split()
    return int(dec), int(length), bytes.fromhex(pt.replace("-", ""))


@pytest.mark.parametrize("vmpck,seqno", [(0, 1), (1, 3), (3, 0xFFFF_FFFF), (2, 2**63 + 5)])
def test_report_request_decrypts_with_header_aad(vmpck: int, seqno: int) -> None:
    rd = bytes(range(64))
    msg = seal_request(vmpck, seqno, 5, 1, rd, vmpl=2)
    assert len(msg) == 0x60 + 96
    hdr = msg[:0x60]
    assert hdr[16:32] == bytes(16), "authtag bytes 16..31 must be zero"
    assert struct.unpack_from("<Q", hdr, 0x20)[0] == seqno
    assert hdr[0x28:0x30] == bytes(8)
    algo, hdr_ver, hdr_sz, mtype, mver, msz = struct.unpack_from("<BBHBBH", hdr, 0x30)
    assert (algo, hdr_ver, hdr_sz, mtype, mver, msz) == (1, 1, 0x60, 5, 1, 96)
    assert hdr[0x38:0x3C] == bytes(4) and hdr[0x3C] == vmpck and hdr[0x3D:0x60] == bytes(35)
    pt = AESGCM(key(vmpck)).decrypt(iv(seqno), msg[0x60:] + hdr[:16], hdr[0x30:0x60])
    assert pt[:64] == rd
    assert struct.unpack_from("<I", pt, 0x40)[0] == 2
    assert pt[0x44:] == bytes(0x1C)    # KEY_SEL 0 and reserved


def test_other_message_types_have_their_payload_sizes() -> None:
    key_req = seal_request(0, 1, 3, 1, b"", vmpl=1)
    tsc_req = seal_request(0, 3, 17, 1, b"", vmpl=0)
    assert len(key_req) == 0x60 + 32 and len(tsc_req) == 0x60 + 128
    pt = AESGCM(key(0)).decrypt(iv(1), key_req[0x60:] + key_req[:16], key_req[0x30:0x60])
    assert struct.unpack_from("<I", pt, 0x10)[0] == 1 and pt[:0x10] == bytes(16)
    tsc_pt = AESGCM(key(0)).decrypt(iv(3), tsc_req[0x60:] + tsc_req[:16], tsc_req[0x30:0x60])
    assert tsc_pt == bytes(128)


def test_same_seqno_new_plaintext_is_visible_as_new_ciphertext() -> None:
    """What the suite's IV-reuse oracle sees: identical bytes for a resend, different ones for
    a re-encryption under the same seqno."""
    a = seal_request(0, 7, 5, 1, bytes(64), 0)
    b = seal_request(0, 7, 5, 1, bytes(64), 0)
    c = seal_request(0, 7, 5, 1, bytes(63) + b"\x01", 0)
    assert a == b
    assert c[0x60:] != a[0x60:] and c[:16] != a[:16]
    # keystream reuse: XOR of ciphertexts == XOR of plaintexts
    x = bytes(p ^ q for p, q in zip(a[0x60:], c[0x60:]))
    assert x == bytes(63) + b"\x01" + bytes(32)


def test_response_opens() -> None:
    payload = (struct.pack("<II", 0, 0x4A0) + bytes(24) + bytes(range(256)) * 4
               + bytes(0x4A0 - 1024))
    resp = make_response(1, 6, 6, payload)
    dec, length, pt = open_response(1, 5, 5, 1, bytes(resp))
    assert (dec, length, pt) == (abi()["SNPLAB_DEC_OK"], len(payload), payload)


def test_response_reserved_fields_are_authenticated_not_validated() -> None:
    payload = bytes(range(64))
    resp = make_response(0, 2, 6, payload, reserved=b"\x5a" * 35)
    assert open_response(0, 1, 5, 1, bytes(resp))[0] == abi()["SNPLAB_DEC_OK"]
    resp[0x40] ^= 1   # a reserved byte changed after sealing: AAD mismatch
    assert open_response(0, 1, 5, 1, bytes(resp))[0] == abi()["SNPLAB_DEC_BAD_TAG"]


def _bad(field: str) -> bytearray:
    payload = bytes(range(96))
    if field == "seqno":
        return make_response(0, 4, 6, payload)
    if field == "type":
        return make_response(0, 2, 7, payload)
    if field == "version":
        return make_response(0, 2, 6, payload, version=2)
    if field == "algo":
        return make_response(0, 2, 6, payload, algo=2)
    if field == "hdr_version":
        return make_response(0, 2, 6, payload, hdr_version=2)
    if field == "hdr_sz":
        return make_response(0, 2, 6, payload, hdr_sz=0x40)
    if field == "vmpck":
        r = make_response(0, 2, 6, payload)
        r[0x3C] = 1
        return r
    if field == "msg_sz":
        return make_response(0, 2, 6, payload, msg_sz=4001)
    if field == "tag":
        r = make_response(0, 2, 6, payload)
        r[3] ^= 0x80
        return r
    if field == "ciphertext":
        r = make_response(0, 2, 6, payload)
        r[0x60 + 95] ^= 1
        return r
    raise AssertionError(field)


@pytest.mark.parametrize("field,expected", [
    ("seqno", "SNPLAB_DEC_BAD_SEQNO"), ("type", "SNPLAB_DEC_BAD_HEADER"),
    ("version", "SNPLAB_DEC_BAD_HEADER"), ("algo", "SNPLAB_DEC_BAD_HEADER"),
    ("hdr_version", "SNPLAB_DEC_BAD_HEADER"), ("hdr_sz", "SNPLAB_DEC_BAD_HEADER"),
    ("vmpck", "SNPLAB_DEC_BAD_HEADER"), ("msg_sz", "SNPLAB_DEC_BAD_SIZE"),
    ("tag", "SNPLAB_DEC_BAD_TAG"), ("ciphertext", "SNPLAB_DEC_BAD_TAG"),
])
def test_bad_responses_are_refused(field: str, expected: str) -> None:
    dec, _, pt = open_response(0, 1, 5, 1, bytes(_bad(field)))
    assert dec == abi()[expected]
    assert pt == b""
