"""``decode_bytes``: the compiled decoders give the plain values field by field, and with
``counts`` they decode only the used part of counted arrays — the same JSON as decoding all of
``snplab_results`` and trimming it (``trim_results``)."""

from __future__ import annotations

import random
import struct

import pytest

from snplab.platform import default_payload_path
from snplab.transcript import RESULTS_COUNTED_ARRAYS, trim_results
from snplab.vmm.dwarf import DwarfInfo, Field, TypeLayout, decode_bytes

U8 = TypeLayout("int", "uint8_t", 1)
CHAR = TypeLayout("int", "char", 1, signed=True, is_char=True)
I16 = TypeLayout("int", "int16_t", 2, signed=True)
U32 = TypeLayout("int", "uint32_t", 4)
U64 = TypeLayout("int", "uint64_t", 8)
U128 = TypeLayout("int", "unsigned __int128", 16)


def arr(e: TypeLayout, n: int) -> TypeLayout:
    return TypeLayout("array", f"{e.name}[{n}]", e.size * n, element=e, count=n)


def test_scalars_arrays_structs_unions() -> None:
    inner = TypeLayout("struct", "inner", 8, fields=(Field("a", 0, I16), Field("b", 4, U32)))
    union = TypeLayout("union", "u", 8, fields=(Field("x", 0, U64), Field("y", 0, U32)))
    outer = TypeLayout("struct", "outer", 80, fields=(
        Field("n", 0, U32), Field("bits", 4, U32, bit_size=3), Field("tag", 8, arr(U8, 4)),
        Field("name", 12, arr(CHAR, 4)), Field("vals", 16, arr(U32, 2)),
        Field("inner", 24, arr(inner, 2)), Field("u", 40, union), Field("big", 48, U128),
        Field("last", 64, U64)))
    data = (struct.pack("<II", 3, 7) + b"\xde\xad\xbe\xef" + b"ab\0c" + struct.pack("<II", 1, 2)
            + struct.pack("<hxxI", -2, 5) + struct.pack("<hxxI", 3, 4) + struct.pack("<Q", 2**40 + 9)
            + (2**100).to_bytes(16, "little") + struct.pack("<Q", 11))
    assert decode_bytes(outer, data) == {
        "n": 3, "tag": "deadbeef", "name": "ab", "vals": [1, 2],
        "inner": [{"a": -2, "b": 5}, {"a": 3, "b": 4}], "u": {"x": 2**40 + 9, "y": 9},
        "big": 2**100, "last": 11}
    assert list(decode_bytes(outer, data)) == ["n", "tag", "name", "vals", "inner", "u", "big", "last"]
    # counts: "vals" cut to n (3 -> clamped to its length 2), "tag" to "last" (11 -> 4 bytes)
    got = decode_bytes(outer, data, counts={"vals": "n", "tag": "last", "nope": "n"})
    assert got["vals"] == [1, 2] and got["tag"] == "deadbeef"
    short = bytearray(data)
    short[0:4] = (1).to_bytes(4, "little")
    short[64:72] = (2).to_bytes(8, "little")
    got = decode_bytes(outer, bytes(short), counts={"vals": "n", "tag": "last", "inner": "n"})
    assert (got["vals"], got["tag"], len(got["inner"])) == ([1], "dead", 1)


@pytest.fixture(scope="module")
def results_layout() -> TypeLayout:
    path = default_payload_path()
    return DwarfInfo(path, path.read_bytes()).layout("snplab_results")


def _results_bytes(t: TypeLayout, rng: random.Random) -> bytes:
    data = bytearray(rng.randbytes(t.size))

    def put(path: str, v: int) -> None:
        data[t.offsetof(path):t.offsetof(path) + 4] = v.to_bytes(4, "little")

    put("nvcpus", rng.choice([0, 1, 2, 4, 7, 2**32 - 1]))
    for v in range(4):
        put(f"vcpu[{v}].nsteps", rng.choice([0, 1, 3, 16, 99]))
        put(f"vcpu[{v}].cert_store_used", rng.choice([0, 5, 0x10000, 0x20000]))
        put(f"vcpu[{v}].log_len", rng.choice([0, 5, 256, 300]))
        for s in range(16):
            put(f"vcpu[{v}].steps[{s}].nattempts", rng.choice([0, 1, 8, 9]))
    return bytes(data)


@pytest.mark.parametrize("seed", range(12))
def test_counted_decoding_equals_decode_then_trim(results_layout: TypeLayout, seed: int) -> None:
    data = _results_bytes(results_layout, random.Random(seed))
    full = trim_results(decode_bytes(results_layout, data))
    assert trim_results(decode_bytes(results_layout, data, counts=RESULTS_COUNTED_ARRAYS)) == full


def test_non_ascii_guest_log_does_not_break_the_transcript(results_layout: TypeLayout) -> None:
    """A guest log with bytes that are not UTF-8 (guest-controlled) used to raise
    UnicodeEncodeError in trim_results; now they become replacement characters."""
    data = bytearray(results_layout.size)
    data[0:12] = struct.pack("<III", 0, 1, 1)  # magic, abi_version, nvcpus = 1
    log = results_layout.offsetof("vcpu[0].log")
    data[log:log + 4] = b"ok\xff\xfe"
    n = results_layout.offsetof("vcpu[0].log_len")
    data[n:n + 4] = (4).to_bytes(4, "little")
    for counts in (None, RESULTS_COUNTED_ARRAYS):
        out = trim_results(decode_bytes(results_layout, bytes(data), counts=counts))
        assert out["vcpu"][0]["log"].startswith("ok") and "\ufffd" in out["vcpu"][0]["log"]
