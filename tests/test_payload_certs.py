"""The payload's bounded walk of the host-written certificate table (guest-payloads/src/certs.c),
run on hostile buffers in the ASan/UBSan host harness: the harness hands it a heap buffer of
exactly `limit` bytes, so any read past the limit aborts the harness and fails the test."""

from __future__ import annotations

import random
import struct

import pytest

from snplab.payload import run_harness

VCEK = bytes.fromhex("63da758de6644564adc5f4b93be8accd")
ASK = bytes.fromhex("4ab7b379bbac4fe4a02f05aef327c782")
ARK = bytes.fromhex("c0b406a4a803495297433fb6014cd0ae")
U32 = 0xFFFF_FFFF


def entry(guid: bytes, offset: int, length: int) -> bytes:
    return guid + struct.pack("<II", offset, length)


def reference_extent(buf: bytes, limit: int) -> tuple[int, int, int]:
    """Python model of the rule: (len, nentries, truncated)."""
    if limit == 0:
        return 0, 0, 0
    data = buf[:limit].ljust(limit, b"\0")
    end, n, pos = 0, 0, 0
    while True:
        if pos + 24 > limit:
            return limit, n, 1
        e = data[pos:pos + 24]
        off, length = struct.unpack_from("<II", e, 16)
        if e == bytes(24):
            end = max(end, pos + 24)
            break
        n += 1
        end = max(end, off + length)
        pos += 24
    return (limit, n, 1) if end > limit else (end, n, 0)


def extent(buf: bytes, limit: int) -> tuple[int, int, int]:
    out = run_harness([f"certs {limit} {buf.hex() or '-'}"])
    a, b, c = out[0].split()
    return int(a), int(b), int(c)


def test_well_formed_table() -> None:
    table = entry(VCEK, 96, 1300) + entry(ASK, 1396, 1600) + entry(ARK, 2996, 1500) + bytes(24)
    assert extent(table, 3 * 4096) == (4496, 3, 0)


def test_empty_table_and_empty_buffer() -> None:
    assert extent(bytes(24), 4096) == (24, 0, 0)
    assert extent(b"", 0) == (0, 0, 0)


@pytest.mark.parametrize("buf,limit,expected", [
    (b"\xff" * 4096, 4096, (4096, 170, 1)),                    # no terminator at all
    (entry(VCEK, U32, U32) + bytes(24), 4096, (4096, 1, 1)),   # offset+length overflows u32
    (entry(VCEK, 0xFFFF_FFF0, 0x20) + bytes(24), 8192, (8192, 1, 1)),
    (entry(VCEK, 48, 10), 30, (30, 1, 1)),                      # no room for a terminator
    (entry(VCEK, 40, 8) + bytes(24), 47, (47, 1, 1)),           # terminator cut by the limit
    (entry(VCEK, 40, 8) + bytes(24), 48, (48, 1, 0)),           # terminator just fits
    (entry(VCEK, 48, 10) + bytes(24), 48, (48, 1, 1)),          # data runs past the limit
    (bytes(10), 10, (10, 0, 1)),                                # smaller than one entry
    (entry(bytes(16), 8, 0) + bytes(24), 4096, (48, 1, 0)),     # zero GUID, not a terminator
    (entry(VCEK, 0, 0) + bytes(24), 4096, (48, 1, 0)),          # empty entry inside the table
], ids=lambda v: None if isinstance(v, (bytes, tuple)) else str(v))
def test_hostile_tables(buf: bytes, limit: int, expected: tuple[int, int, int]) -> None:
    assert extent(buf, limit) == expected == reference_extent(buf, limit)


def test_random_tables_match_the_reference_model() -> None:
    rng = random.Random(8)
    cases = []
    for _ in range(250):
        n = rng.randrange(0, 8)
        parts = []
        for _ in range(n):
            guid = rng.choice([VCEK, ASK, ARK, bytes(16), rng.randbytes(16)])
            off = rng.choice([0, 24, rng.randrange(0, 20000), U32, rng.randrange(0, 2**32)])
            length = rng.choice([0, 1, rng.randrange(0, 20000), U32])
            parts.append(entry(guid, off, length))
        if rng.random() < 0.8:
            parts.append(bytes(24))
        buf = b"".join(parts) + rng.randbytes(rng.randrange(0, 64))
        limit = rng.choice([0, 1, 23, 24, len(buf), max(0, len(buf) - 7), 4096, 3 * 4096])
        cases.append((buf[:limit], limit))
    out = run_harness([f"certs {limit} {buf.hex() or '-'}" for buf, limit in cases])
    for (buf, limit), line in zip(cases, out, strict=True):
        got = tuple(int(x) for x in line.split())
        assert got == reference_extent(buf, limit), (buf.hex(), limit)
        assert got[0] <= limit


AREA, AREA_PAGES = 0x410000, 128


@pytest.mark.parametrize("buf_gpa,npages,expected", [
    (AREA, 0, 0),
    (AREA, 3, 3 * 4096),
    (AREA, 128, 128 * 4096),
    (AREA, 129, 128 * 4096),                 # clipped to the area
    (AREA, 2**32 - 1, 128 * 4096),           # a guest-chosen hostile npages
    (AREA, 2**64 - 1, 128 * 4096),           # npages * 4096 would overflow
    (AREA + 8, 2, 2 * 4096),                 # misaligned buffer
    (AREA + 127 * 4096 + 8, 1, 4096 - 8),    # misaligned buffer at the end of the area
    (AREA + 128 * 4096, 1, 0),               # just past the area
    (AREA - 4096, 1, 0),                     # before the area
    (0xFFFF_FFFF_FFFF_F000, 2**64 - 1, 0),   # far outside
])
def test_readable_length_is_clipped_to_the_area(buf_gpa: int, npages: int, expected: int) -> None:
    out = run_harness([f"readable {buf_gpa} {npages} {AREA} {AREA_PAGES}"])
    assert int(out[0]) == expected
