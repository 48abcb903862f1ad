"""snplab.transcript.jsonable: the JSON form every transcript (local and over SSH) is built with."""

from __future__ import annotations

import dataclasses
import enum

from snplab.transcript import jsonable


class Colour(enum.IntEnum):
    RED = 3


@dataclasses.dataclass(frozen=True)
class Plain:
    a: int
    b: bytes


@dataclasses.dataclass(frozen=True)
class Own:
    x: int

    def to_json(self) -> dict:
        return {"x2": (self.x * 2,)}


def test_every_kind_of_value():
    src = {1: (b"\x01\xff", bytearray(b"\x02"), memoryview(b"\x03")), "e": Colour.RED,
           "d": Plain(1, b"\x0a"), "o": [Own(4)], "s": ("t", 1.5, True, None)}
    out = jsonable(src)
    assert out == {"1": ["01ff", "02", "03"], "e": 3, "d": {"a": 1, "b": "0a"}, "o": [{"x2": [8]}],
                   "s": ["t", 1.5, True, None]}
    assert type(out["e"]) is int and type(out["s"]) is list and out["s"][2] is True


def test_is_a_deep_copy():
    inner = [1, 2]
    src = {"k": inner}
    out = jsonable(src)
    inner.append(3)
    assert out == {"k": [1, 2]} and out["k"] is not inner
