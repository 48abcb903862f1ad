"""GHCB certificate table: builder, strict parser, and property tests."""

from __future__ import annotations

import struct
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snplab.abi import cert_table as ct
from snplab.abi.cert_table import (
    ARK_GUID,
    ASK_GUID,
    CERT_TABLE_ENTRY_SIZE,
    CRL_GUID,
    VCEK_GUID,
    VLEK_GUID,
    CertEntry,
    CertTableError,
    build_table,
    pack_entry,
    parse_table,
)

CHAIN = [(VCEK_GUID, b"V" * 100), (ASK_GUID, b"A" * 50), (ARK_GUID, b"R" * 70)]


def test_guid_bytes_are_rfc4122_string_order():
    # settled-questions Q2 / errata table A: the bytes as written, no mixed-endian swap
    assert VCEK_GUID.bytes == bytes.fromhex("63da758de6644564adc5f4b93be8accd")
    assert VLEK_GUID.bytes == bytes.fromhex("a8074bc2a25a483eaae639c045a0b8a1")
    assert ASK_GUID.bytes == bytes.fromhex("4ab7b379bbac4fe4a02f05aef327c782")
    assert ARK_GUID.bytes == bytes.fromhex("c0b406a4a803495297433fb6014cd0ae")
    assert CRL_GUID.bytes == bytes.fromhex("92f81bc358114d3d97ffd19f88dc67ea")
    table = build_table([(VCEK_GUID, b"x")])
    assert table[:16] == bytes.fromhex("63da758de6644564adc5f4b93be8accd")


def test_build_layout_first_cert_after_terminator():
    buf = build_table(CHAIN)
    assert CERT_TABLE_ENTRY_SIZE == 24
    assert buf[72:96] == bytes(24)  # terminator after 3 entries
    g, off, length = struct.unpack_from("<16sII", buf, 0)
    assert (g, off, length) == (VCEK_GUID.bytes, 96, 100)
    assert struct.unpack_from("<16sII", buf, 24)[1:] == (196, 50)
    assert struct.unpack_from("<16sII", buf, 48)[1:] == (246, 70)
    assert len(buf) == 96 + 220


def test_parse_round_trip_and_accessors():
    buf = build_table(CHAIN)
    t = parse_table(buf + bytes(4096 - len(buf)))  # a page-sized guest buffer
    assert t.entries == (CertEntry(VCEK_GUID, 96, 100), CertEntry(ASK_GUID, 196, 50), CertEntry(ARK_GUID, 246, 70))
    assert t.get(ASK_GUID) == b"A" * 50 and t.get(VLEK_GUID) is None
    assert t.used_length == 316
    assert t.unknown_guids == ()
    assert t.table_size == 96


def test_empty_table_is_24_zero_bytes():
    t = parse_table(bytes(24))
    assert t.entries == () and t.used_length == 24
    assert build_table([]) == bytes(24)


def test_unknown_guid_reported_not_rejected():
    g = uuid.UUID("12345678-1234-5678-1234-567812345678")
    t = parse_table(build_table([(VCEK_GUID, b"v"), (g, b"xyz")]))
    assert t.unknown_guids == (g,)
    assert t.get(g) == b"xyz"


def test_mixed_endian_guid_is_unknown_but_named():
    mixed = uuid.UUID(bytes=VCEK_GUID.bytes_le)
    t = parse_table(build_table([(mixed, b"v")]))
    assert t.unknown_guids == (mixed,)
    assert "mixed-endian" in ct.guid_name(mixed)


def _raw(*entries: tuple[uuid.UUID, int, int], terminate: bool = True, tail: int = 256) -> bytes:
    b = b"".join(pack_entry(*e) for e in entries) + (bytes(24) if terminate else b"")
    return b + b"\xaa" * tail


@pytest.mark.parametrize(
    "buf, fragment",
    [
        (b"", "unterminated"),
        (bytes(23), "unterminated"),
        (_raw((VCEK_GUID, 48, 8), terminate=False, tail=0), "unterminated"),
        (_raw((VCEK_GUID, 48, 8), terminate=False, tail=20), "unterminated"),
        (_raw((VCEK_GUID, 48, 300)), "outside"),
        (_raw((VCEK_GUID, 0xFFFF_FFFF, 0xFFFF_FFFF)), "outside"),
        (_raw((VCEK_GUID, 24, 8)), "overlaps the table"),
        (_raw((VCEK_GUID, 0, 8)), "overlaps the table"),
        (_raw((VCEK_GUID, 72, 16), (ASK_GUID, 80, 16)), "overlaps entry"),
        (_raw((VCEK_GUID, 72, 16), (ASK_GUID, 72, 16)), "overlaps entry"),
        (_raw((VCEK_GUID, 72, 16), (VCEK_GUID, 100, 16)), "duplicate GUID"),
        (_raw((VCEK_GUID, 48, 0)), "zero length"),
        (_raw((ct.NULL_GUID, 48, 8)), "null GUID"),
    ],
)
def test_strict_rejections(buf, fragment):
    with pytest.raises(CertTableError, match=fragment):
        parse_table(buf)


def test_is_a_value_error():
    assert issubclass(CertTableError, ValueError)


def test_only_the_given_view_is_read():
    good = build_table(CHAIN)
    big = bytearray(good + bytes(100))
    # a view that stops inside the entries must be unterminated, even though the terminator is
    # present in the underlying memory
    with pytest.raises(CertTableError, match="unterminated"):
        parse_table(memoryview(big)[:50])
    # a view that cuts the last certificate short is outside the buffer
    with pytest.raises(CertTableError, match="outside"):
        parse_table(memoryview(big)[: len(good) - 1])


def test_builder_refuses_bad_input():
    for bad in ([(VCEK_GUID, b"")], [(VCEK_GUID, b"a"), (VCEK_GUID, b"b")], [(ct.NULL_GUID, b"a")]):
        with pytest.raises(ValueError):
            build_table(bad)


# ---- properties -----------------------------------------------------------------------------

guids = st.uuids() | st.sampled_from([VCEK_GUID, VLEK_GUID, ASK_GUID, ARK_GUID, CRL_GUID])
cert_lists = st.lists(st.tuples(guids, st.binary(min_size=1, max_size=300)), max_size=6,
                      unique_by=lambda t: t[0]).filter(lambda xs: all(g != ct.NULL_GUID for g, _ in xs))


def _assert_invariants(t: ct.CertTable, buf: bytes) -> None:
    assert t.table_size % 24 == 0 and t.table_size <= len(buf)
    assert len({e.guid for e in t.entries}) == len(t.entries)
    spans = sorted((e.offset, e.end) for e in t.entries)
    for (a0, a1), (b0, _) in zip(spans, spans[1:]):
        assert a1 <= b0
    for e in t.entries:
        assert e.length > 0 and t.table_size <= e.offset and e.end <= len(buf)
        assert t.get(e.guid) == buf[e.offset : e.end]
    assert t.used_length <= len(buf)


@given(cert_lists, st.integers(0, 64))
def test_build_parse_round_trip(certs, pad):
    buf = build_table(certs)
    t = parse_table(buf + bytes(pad))
    assert [e.guid for e in t.entries] == [g for g, _ in certs]
    for g, blob in certs:
        assert t.get(g) == blob
    assert t.used_length == len(buf)
    _assert_invariants(t, buf + bytes(pad))


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_random_buffers_only_raise_cert_table_error(buf):
    try:
        t = parse_table(buf)
    except CertTableError:
        return
    _assert_invariants(t, buf)


_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7)),
    st.tuples(st.just("set32"), st.integers(0, 10_000), st.integers(0, 0xFFFF_FFFF)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("extend"), st.integers(0, 64), st.just(0)),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(cert_lists, st.lists(_mutation, min_size=1, max_size=4))
def test_mutated_tables_only_raise_cert_table_error(certs, mutations):
    buf = bytearray(build_table(certs))
    for kind, pos, arg in mutations:
        if not buf:
            break
        p = pos % len(buf)
        if kind == "flip":
            buf[p] ^= 1 << arg
        elif kind == "set32":
            # aim at offset/length fields (entry byte 16..23) most of the time
            p = (p // 24) * 24 + 16 + (4 if pos & 1 else 0)
            if p + 4 <= len(buf):
                buf[p : p + 4] = arg.to_bytes(4, "little")
        elif kind == "truncate":
            del buf[p:]
        else:
            buf += bytes(pos)
    data = bytes(buf)
    try:
        t = parse_table(data)
    except CertTableError:
        return
    _assert_invariants(t, data)
