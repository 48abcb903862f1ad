"""GHCB extended-guest-request certificate table.

Layout (GHCB spec 56421 "SNP Extended Guest Request"; Linux ``struct snp_msg_cert_entry``;
facts in shared/reference/guest-protocol.md §6 and errata.md table A):

    entry  = GUID[16] | offset u32 LE | length u32 LE        (24 bytes)
    table  = entry* | 24 zero bytes (terminator)
    offsets are from the start of the table (= start of the buffer)

GUID bytes are in RFC-4122 "string" order (``uuid.UUID.bytes``), settled-questions Q2.
There is no separate ASVK GUID: an ASVK is stored under the ASK GUID.

``parse_table`` is strict: it rejects unterminated tables, entries that leave the buffer,
overlap the table or each other, duplicate GUIDs and zero-length entries; it reports unknown
GUIDs instead of failing. It only ever slices the buffer it was given.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field
from typing import Sequence

# GUIDs (RFC-4122 byte order), virtee/sev ``CertType`` and go-sev-guest ``abi.go``.
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")  # also used for the ASVK
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
CRL_GUID = uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea")
# Not AMD's: go-sev-guest / GCE "extra platform info" entry; named only so it is recognised.
EXTRA_PLATFORM_INFO_GUID = uuid.UUID("ecae0c0f-9502-43b1-afa2-0ae2e0d565b6")
NULL_GUID = uuid.UUID(int=0)

KNOWN_GUIDS: dict[uuid.UUID, str] = {
    ARK_GUID: "ARK",
    ASK_GUID: "ASK",
    VCEK_GUID: "VCEK",
    VLEK_GUID: "VLEK",
    CRL_GUID: "CRL",
    EXTRA_PLATFORM_INFO_GUID: "EXTRA_PLATFORM_INFO",
}

CERT_TABLE_ENTRY_SIZE = 24
_ENTRY = struct.Struct("<16sII")
assert _ENTRY.size == CERT_TABLE_ENTRY_SIZE
_TERMINATOR = bytes(CERT_TABLE_ENTRY_SIZE)
_U32_MAX = 0xFFFF_FFFF


class CertTableError(ValueError):
    """The buffer is not a well-formed certificate table."""


def guid_name(guid: uuid.UUID) -> str:
    """Human-readable name of a GUID; flags known GUIDs stored in mixed-endian (EFI) order."""
    if guid in KNOWN_GUIDS:
        return KNOWN_GUIDS[guid]
    for known, name in KNOWN_GUIDS.items():
        if guid.bytes == known.bytes_le:
            return f"{name} in mixed-endian byte order ({guid})"
    return str(guid)


@dataclass(frozen=True)
class CertEntry:
    guid: uuid.UUID
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class CertTable:
    entries: tuple[CertEntry, ...]
    table_size: int  # bytes of the table itself, terminator included
    data: bytes = field(repr=False)  # the buffer parsed (entries index into it)

    @property
    def unknown_guids(self) -> tuple[uuid.UUID, ...]:
        return tuple(e.guid for e in self.entries if e.guid not in KNOWN_GUIDS)

    @property
    def used_length(self) -> int:
        """Bytes actually used: max(offset + length) over all entries (the table alone if empty)."""
        return max([self.table_size, *(e.end for e in self.entries)])

    def entry(self, guid: uuid.UUID) -> CertEntry | None:
        for e in self.entries:
            if e.guid == guid:
                return e
        return None

    def get(self, guid: uuid.UUID) -> bytes | None:
        e = self.entry(guid)
        return None if e is None else self.data[e.offset : e.end]

    def guids(self) -> tuple[uuid.UUID, ...]:
        return tuple(e.guid for e in self.entries)


def pack_entry(guid: uuid.UUID, offset: int, length: int) -> bytes:
    """One raw 24-byte entry (no validation beyond u32 ranges; for building hostile tables)."""
    return _ENTRY.pack(guid.bytes, offset, length)


def table_size(n_entries: int) -> int:
    """Size of a table with n entries plus the terminator."""
    return CERT_TABLE_ENTRY_SIZE * (n_entries + 1)


def build_table(certs: Sequence[tuple[uuid.UUID, bytes]]) -> bytes:
    """Table, terminator, then the certificates back to back (first one right after the terminator)."""
    seen: set[uuid.UUID] = set()
    for guid, blob in certs:
        if guid == NULL_GUID:
            raise ValueError("certificate table entry with the null GUID")
        if guid in seen:
            raise ValueError(f"duplicate GUID {guid_name(guid)} in certificate table")
        if not blob:
            raise ValueError(f"empty certificate for {guid_name(guid)}")
        seen.add(guid)
    offset = table_size(len(certs))
    head = bytearray()
    for guid, blob in certs:
        if offset + len(blob) > _U32_MAX:
            raise ValueError("certificate table larger than 4 GiB")
        head += pack_entry(guid, offset, len(blob))
        offset += len(blob)
    head += _TERMINATOR
    return bytes(head) + b"".join(bytes(blob) for _, blob in certs)


def parse_table(buf: bytes | bytearray | memoryview) -> CertTable:
    """Strictly parse a certificate table. Raises CertTableError with a precise message."""
    data = bytes(buf)
    raw: list[CertEntry] = []
    pos = 0
    while True:
        if pos + CERT_TABLE_ENTRY_SIZE > len(data):
            raise CertTableError(
                f"certificate table unterminated: no all-zero entry within {len(data)} bytes "
                f"({len(raw)} entries read)"
            )
        chunk = data[pos : pos + CERT_TABLE_ENTRY_SIZE]
        pos += CERT_TABLE_ENTRY_SIZE
        if chunk == _TERMINATOR:
            break
        gbytes, offset, length = _ENTRY.unpack(chunk)
        guid = uuid.UUID(bytes=gbytes)
        if guid == NULL_GUID:
            raise CertTableError(
                f"entry {len(raw)}: null GUID with offset {offset:#x} length {length:#x} "
                "(terminator must be all zero)"
            )
        raw.append(CertEntry(guid, offset, length))
    size = pos
    seen: dict[uuid.UUID, int] = {}
    for i, e in enumerate(raw):
        name = guid_name(e.guid)
        if e.guid in seen:
            raise CertTableError(f"entry {i}: duplicate GUID {name} (also entry {seen[e.guid]})")
        seen[e.guid] = i
        if e.length == 0:
            raise CertTableError(f"entry {i} ({name}): zero length")
        if e.offset < size:
            raise CertTableError(
                f"entry {i} ({name}): offset {e.offset:#x} overlaps the table (table is {size:#x} bytes)"
            )
        if e.end > len(data):
            raise CertTableError(
                f"entry {i} ({name}): offset {e.offset:#x} + length {e.length:#x} = {e.end:#x} "
                f"is outside the {len(data):#x}-byte buffer"
            )
    order = sorted(range(len(raw)), key=lambda k: (raw[k].offset, raw[k].end))
    for a, b in zip(order, order[1:]):
        if raw[b].offset < raw[a].end:
            raise CertTableError(
                f"entry {b} ({guid_name(raw[b].guid)}) at {raw[b].offset:#x} overlaps entry {a} "
                f"({guid_name(raw[a].guid)}) at {raw[a].offset:#x}..{raw[a].end:#x}"
            )
    return CertTable(entries=tuple(raw), table_size=size, data=data)
