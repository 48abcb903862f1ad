"""A minimal strict DER reader: just enough for AMD's certificate extensions and the RSASSA-PSS
AlgorithmIdentifier (ITU-T X.690). Every read is bounds-checked; errors raise DerError."""

from __future__ import annotations

from dataclasses import dataclass

TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_OCTET_STRING = 0x04
TAG_NULL = 0x05
TAG_OID = 0x06
TAG_IA5STRING = 0x16
TAG_SEQUENCE = 0x30


class DerError(ValueError):
    """Malformed or unexpected DER."""


@dataclass(frozen=True)
class Tlv:
    tag: int
    value: bytes
    raw: bytes  # the whole encoding (tag, length and value)


def read_tlv(buf: bytes, pos: int = 0) -> tuple[Tlv, int]:
    """Read one TLV at pos; returns it and the position after it. Single-byte tags only."""
    if pos + 2 > len(buf):
        raise DerError("truncated DER header")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise DerError(f"multi-byte DER tag {tag:#x} not supported")
    first = buf[pos + 1]
    hdr = 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4:
            raise DerError(f"unsupported DER length form {first:#x}")
        if pos + 2 + n > len(buf):
            raise DerError("truncated DER length")
        length = int.from_bytes(buf[pos + 2 : pos + 2 + n], "big")
        if length < 0x80 or buf[pos + 2] == 0:
            raise DerError("non-minimal DER length")
        hdr += n
    end = pos + hdr + length
    if end > len(buf):
        raise DerError(f"DER value of {length} bytes runs past the end of its container")
    return Tlv(tag, buf[pos + hdr : end], buf[pos:end]), end


def read_single(buf: bytes, tag: int | None = None) -> Tlv:
    """The buffer must hold exactly one TLV (of the given tag, if any)."""
    tlv, end = read_tlv(buf, 0)
    if end != len(buf):
        raise DerError(f"{len(buf) - end} trailing bytes after DER value")
    if tag is not None and tlv.tag != tag:
        raise DerError(f"expected DER tag {tag:#04x}, got {tlv.tag:#04x}")
    return tlv


def children(value: bytes) -> list[Tlv]:
    """The TLVs inside a constructed value."""
    out = []
    pos = 0
    while pos < len(value):
        tlv, pos = read_tlv(value, pos)
        out.append(tlv)
    return out


def decode_integer(tlv: Tlv) -> int:
    if tlv.tag != TAG_INTEGER:
        raise DerError(f"expected INTEGER, got tag {tlv.tag:#04x}")
    v = tlv.value
    if not v:
        raise DerError("empty INTEGER")
    if len(v) > 1 and ((v[0] == 0 and v[1] < 0x80) or (v[0] == 0xFF and v[1] >= 0x80)):
        raise DerError("non-minimal INTEGER encoding")
    return int.from_bytes(v, "big", signed=True)


def decode_oid(tlv: Tlv) -> str:
    if tlv.tag != TAG_OID:
        raise DerError(f"expected OBJECT IDENTIFIER, got tag {tlv.tag:#04x}")
    v = tlv.value
    if not v or v[-1] & 0x80:
        raise DerError("malformed OBJECT IDENTIFIER")
    arcs: list[int] = []
    acc = 0
    for b in v:
        acc = (acc << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(acc)
            acc = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])


def decode_ia5(tlv: Tlv) -> str:
    if tlv.tag != TAG_IA5STRING:
        raise DerError(f"expected IA5String, got tag {tlv.tag:#04x}")
    if any(b > 0x7F for b in tlv.value):
        raise DerError("IA5String holds non-ASCII bytes")
    return tlv.value.decode("ascii")
