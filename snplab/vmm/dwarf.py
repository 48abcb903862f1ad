"""Struct layouts and enum values read from the payload's DWARF (pyelftools), and `StructView`,
a named-field accessor over guest memory.

`guest-payloads/include/snplab_abi.h` is the only definition of the params/results layout; the
VMM never hard-codes an offset from it. Layouts are immutable and cached with their `ElfImage`.
"""

from __future__ import annotations

import functools
import io
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elftools.elf.elffile import ELFFile

from snplab.vmm.errors import DwarfError

# DW_ATE_* (DWARF 5 §7.8)
_ATE_BOOLEAN, _ATE_FLOAT, _ATE_SIGNED, _ATE_SIGNED_CHAR = 0x2, 0x4, 0x5, 0x6
_ATE_UNSIGNED, _ATE_UNSIGNED_CHAR, _ATE_UTF = 0x7, 0x8, 0x10


@dataclass(frozen=True, eq=False)
class Field:
    name: str
    offset: int
    type: TypeLayout
    bit_size: int | None = None  # bit-fields are described but not accessible


@dataclass(frozen=True, eq=False)
class TypeLayout:
    """One C type: kind is int, enum, float, pointer, struct, union or array."""

    kind: str
    name: str
    size: int
    signed: bool = False
    is_char: bool = False
    fields: tuple[Field, ...] = ()
    element: TypeLayout | None = None
    count: int = 0
    _by_name: dict[str, Field] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({f.name: f for f in self.fields})

    @property
    def is_scalar(self) -> bool:
        return self.kind in ("int", "enum", "pointer", "float")

    @property
    def is_bytes(self) -> bool:
        """An array of 1-byte integers (u8[] or char[])."""
        return self.kind == "array" and self.element is not None and \
            self.element.kind == "int" and self.element.size == 1

    def field(self, name: str) -> Field:
        try:
            return self._by_name[name]
        except KeyError:
            raise DwarfError(f"{self.name} has no field {name!r}") from None

    def has_field(self, name: str) -> bool:
        return name in self._by_name

    def locate(self, path: str) -> tuple[int, TypeLayout]:
        """(offset, type) of a path like 'vcpu[1].steps[0].certs_npages'."""
        off, t = 0, self
        for part in path.replace("[", ".[").split("."):
            if not part:
                continue
            if part.startswith("["):
                i = int(part[1:-1], 0)
                if t.kind != "array" or t.element is None or not 0 <= i < t.count:
                    raise DwarfError(f"{self.name}: bad index {part} in {path!r}")
                off, t = off + i * t.element.size, t.element
            else:
                f = t.field(part)
                off, t = off + f.offset, f.type
        return off, t

    def offsetof(self, path: str) -> int:
        return self.locate(path)[0]

    def describe(self) -> dict[str, Any]:
        """Plain-dict description (offsets, sizes, arrays), e.g. for transcripts or docs."""
        d: dict[str, Any] = {"kind": self.kind, "name": self.name, "size": self.size}
        if self.kind in ("struct", "union"):
            d["fields"] = [{"name": f.name, "offset": f.offset, **f.type.describe()}
                           for f in self.fields]
        elif self.kind == "array" and self.element is not None:
            d["count"] = self.count
            d["element"] = self.element.describe()
        return d


class DwarfInfo:
    """Type index of one ELF's DWARF: struct/union/enum/typedef names → layouts and values."""

    def __init__(self, path: Path, raw: bytes) -> None:
        self.path = path
        elf = ELFFile(io.BytesIO(raw))
        if not elf.has_dwarf_info():
            raise DwarfError(f"{path}: no DWARF (build the payload with -g)")
        self._dw = elf.get_dwarf_info()
        self._types: dict[str, Any] = {}     # "struct foo" / "union foo" / "typedef foo" → DIE
        self._enums: dict[str, dict[str, int]] = {}
        self.constants: dict[str, int] = {}  # every enumerator of every named enum
        self._memo: dict[int, TypeLayout] = {}
        self._lock = threading.Lock()
        for cu in self._dw.iter_CUs():
            for die in cu.get_top_DIE().iter_children():
                self._index(die)

    def _index(self, die: Any) -> None:
        tag = die.tag
        name = _name(die)
        if tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
            if name and "DW_AT_declaration" not in die.attributes:
                key = ("struct " if tag == "DW_TAG_structure_type" else "union ") + name
                self._types.setdefault(key, die)
        elif tag == "DW_TAG_typedef" and name:
            self._types.setdefault("typedef " + name, die)
        elif tag == "DW_TAG_enumeration_type":
            values = {_name(c): _const(c) for c in die.iter_children()
                      if c.tag == "DW_TAG_enumerator"}
            if name:
                self._enums.setdefault(name, values)
            for k, v in values.items():
                self.constants.setdefault(k, v)

    # --- public API ----------------------------------------------------------------------------
    def has_struct(self, name: str) -> bool:
        return any(k in self._types for k in (f"struct {name}", f"union {name}",
                                               f"typedef {name}"))

    def layout(self, name: str) -> TypeLayout:
        """Layout of `struct name` (or union/typedef `name`), with nested fields and arrays."""
        for key in (f"struct {name}", f"union {name}", f"typedef {name}"):
            die = self._types.get(key)
            if die is not None:
                with self._lock:
                    return self._resolve(die)
        raise DwarfError(f"{self.path}: no struct/union/typedef {name!r} in DWARF")

    def enum(self, name: str) -> dict[str, int]:
        """{enumerator: value} of `enum name`."""
        try:
            return dict(self._enums[name])
        except KeyError:
            raise DwarfError(f"{self.path}: no enum {name!r} in DWARF (declared but unused "
                             "enums need -fno-eliminate-unused-debug-types)") from None

    def constant(self, name: str) -> int:
        try:
            return self.constants[name]
        except KeyError:
            raise DwarfError(f"{self.path}: no enumerator {name!r} in DWARF") from None

    # --- resolution ----------------------------------------------------------------------------
    def _resolve(self, die: Any) -> TypeLayout:
        memo = self._memo.get(die.offset)
        if memo is not None:
            return memo
        t = self._build(die)
        self._memo[die.offset] = t
        return t

    def _target(self, die: Any) -> Any:
        if "DW_AT_type" not in die.attributes:
            return None
        return die.get_DIE_from_attribute("DW_AT_type")

    def _build(self, die: Any) -> TypeLayout:
        tag = die.tag
        if tag in ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type",
                   "DW_TAG_restrict_type", "DW_TAG_atomic_type"):
            target = self._target(die)
            if target is None:
                return TypeLayout("int", "void", 0)
            return self._resolve(target)
        if tag == "DW_TAG_base_type":
            enc = die.attributes["DW_AT_encoding"].value
            size = die.attributes["DW_AT_byte_size"].value
            nm = _name(die)
            if enc == _ATE_FLOAT:
                return TypeLayout("float", nm, size)
            return TypeLayout("int", nm, size, signed=enc in (_ATE_SIGNED, _ATE_SIGNED_CHAR),
                              is_char=enc in (_ATE_SIGNED_CHAR, _ATE_UNSIGNED_CHAR)
                              and nm == "char")
        if tag == "DW_TAG_enumeration_type":
            size = die.attributes["DW_AT_byte_size"].value
            target = self._target(die)
            signed = bool(target is not None and self._resolve(target).signed)
            return TypeLayout("enum", "enum " + _name(die), size, signed=signed)
        if tag in ("DW_TAG_pointer_type", "DW_TAG_reference_type"):
            return TypeLayout("pointer", "pointer", die.attributes["DW_AT_byte_size"].value
                              if "DW_AT_byte_size" in die.attributes else 8)
        if tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
            kind = "struct" if tag == "DW_TAG_structure_type" else "union"
            if "DW_AT_byte_size" not in die.attributes:
                raise DwarfError(f"{self.path}: {kind} {_name(die)!r} is incomplete")
            fields: list[Field] = []
            for m in die.iter_children():
                if m.tag != "DW_TAG_member":
                    continue
                ft = self._resolve(self._target(m))
                off = _member_offset(m)
                bits = m.attributes["DW_AT_bit_size"].value if "DW_AT_bit_size" in m.attributes \
                    else None
                mname = _name(m)
                if not mname and ft.kind in ("struct", "union"):
                    # Anonymous struct/union member: its fields belong to the parent.
                    fields.extend(Field(f.name, off + f.offset, f.type, f.bit_size)
                                  for f in ft.fields)
                    continue
                fields.append(Field(mname, off, ft, bits))
            return TypeLayout(kind, f"{kind} {_name(die) or '<anon>'}",
                              die.attributes["DW_AT_byte_size"].value, fields=tuple(fields))
        if tag == "DW_TAG_array_type":
            elem = self._resolve(self._target(die))
            dims = []
            for sub in die.iter_children():
                if sub.tag != "DW_TAG_subrange_type":
                    continue
                if "DW_AT_count" in sub.attributes:
                    dims.append(int(sub.attributes["DW_AT_count"].value))
                elif "DW_AT_upper_bound" in sub.attributes:
                    dims.append(int(sub.attributes["DW_AT_upper_bound"].value) + 1)
                else:
                    dims.append(0)  # flexible array member
            t = elem
            for n in reversed(dims or [0]):
                t = TypeLayout("array", f"{t.name}[{n}]", t.size * n, element=t, count=n)
            return t
        if tag == "DW_TAG_subroutine_type":
            return TypeLayout("pointer", "function", 0)
        raise DwarfError(f"{self.path}: unsupported DWARF type {tag} ({_name(die)!r})")


def _name(die: Any) -> str:
    a = die.attributes.get("DW_AT_name")
    return a.value.decode("utf-8", "replace") if a is not None else ""


def _const(die: Any) -> int:
    return int(die.attributes["DW_AT_const_value"].value)


def _member_offset(m: Any) -> int:
    a = m.attributes.get("DW_AT_data_member_location")
    if a is None:
        if "DW_AT_data_bit_offset" in m.attributes:
            return int(m.attributes["DW_AT_data_bit_offset"].value) // 8
        return 0  # union members
    if isinstance(a.value, int):
        return a.value
    # DWARF 2/3 location expression: DW_OP_plus_uconst ULEB128.
    expr = list(a.value)
    if expr and expr[0] == 0x23:
        val, shift = 0, 0
        for b in expr[1:]:
            val |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return val
    raise DwarfError(f"unsupported member location expression {expr}")


# --- StructView ---------------------------------------------------------------------------------

def _read_int(buf: memoryview, off: int, t: TypeLayout) -> int:
    return int.from_bytes(buf[off:off + t.size], "little", signed=t.signed)


def _write_int(buf: memoryview, off: int, t: TypeLayout, value: int, what: str) -> None:
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, int):
        raise TypeError(f"{what}: want int, got {type(value).__name__}")
    bits = t.size * 8
    lo = -(1 << (bits - 1)) if t.signed else 0  # signed: either representation
    hi = (1 << bits) - 1
    if not lo <= value <= hi:
        raise ValueError(f"{what}: {value} does not fit in {t.size} bytes")
    buf[off:off + t.size] = (value & hi).to_bytes(t.size, "little")


class StructView:
    """Named-field access to a struct, union or array laid out per DWARF in a writable buffer.

    `view['vcpu'][1]['steps'][0]['certs_npages'] = 3`; composite members return StructViews,
    scalars return ints; byte arrays accept bytes (zero-padded)."""

    __slots__ = ("layout", "_buf", "_off", "gpa", "_what")

    def __init__(self, layout: TypeLayout, buf: memoryview, offset: int = 0,
                 gpa: int | None = None, what: str | None = None) -> None:
        if offset < 0 or offset + layout.size > len(buf):
            raise DwarfError(f"{layout.name} ({layout.size} bytes) does not fit its buffer")
        self.layout = layout
        self._buf = buf
        self._off = offset
        self.gpa = gpa
        self._what = what or layout.name

    # --- navigation ----------------------------------------------------------------------------
    def _member(self, key: Any) -> tuple[int, TypeLayout, str]:
        t = self.layout
        if t.kind == "array":
            if not isinstance(key, int):
                raise TypeError(f"{self._what}: array index must be int, got {key!r}")
            i = key + t.count if key < 0 else key
            if not 0 <= i < t.count or t.element is None:
                raise IndexError(f"{self._what}[{key}] out of range (count {t.count})")
            return self._off + i * t.element.size, t.element, f"{self._what}[{i}]"
        if t.kind in ("struct", "union"):
            f = t.field(key)
            if f.bit_size is not None:
                raise DwarfError(f"{self._what}.{key} is a bit-field (not supported)")
            return self._off + f.offset, f.type, f"{self._what}.{key}"
        raise TypeError(f"{self._what} is a scalar")

    def _wrap(self, off: int, t: TypeLayout, what: str) -> Any:
        if t.is_scalar:
            return _read_int(self._buf, off, t)
        gpa = None if self.gpa is None else self.gpa + (off - self._off)
        v = StructView.__new__(StructView)
        v.layout, v._buf, v._off, v.gpa, v._what = t, self._buf, off, gpa, what
        return v

    def __getitem__(self, key: Any) -> Any:
        return self._wrap(*self._member(key))

    def __setitem__(self, key: Any, value: Any) -> None:
        off, t, what = self._member(key)
        _assign(self._buf, off, t, value, what)

    def get(self, path: str) -> Any:
        """Value at a dotted path ('vcpu[1].nsteps')."""
        off, t = self.layout.locate(path)
        return self._wrap(self._off + off, t, f"{self._what}.{path}")

    def set(self, path: str, value: Any) -> None:
        off, t = self.layout.locate(path)
        _assign(self._buf, self._off + off, t, value, f"{self._what}.{path}")

    def assign(self, value: Any) -> None:
        """Overwrite the whole object from a dict / list / bytes / StructView."""
        _assign(self._buf, self._off, self.layout, value, self._what)

    def __len__(self) -> int:
        return self.layout.count if self.layout.kind == "array" else len(self.layout.fields)

    def __iter__(self) -> Iterator[Any]:
        if self.layout.kind == "array":
            return (self[i] for i in range(self.layout.count))
        return iter(f.name for f in self.layout.fields)

    def keys(self) -> list[str]:
        return [f.name for f in self.layout.fields]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.layout.has_field(name)

    @property
    def size(self) -> int:
        return self.layout.size

    @property
    def offset(self) -> int:
        """Offset of this object inside the underlying buffer."""
        return self._off

    def bytes(self) -> bytes:
        return bytes(self._buf[self._off:self._off + self.layout.size])

    def clear(self) -> None:
        self._buf[self._off:self._off + self.layout.size] = bytes(self.layout.size)

    def decode(self) -> Any:
        """Plain JSON-able value: dicts for structs, lists for arrays, ints, hex for u8[],
        text (up to the first NUL) for char[]."""
        return decode_bytes(self.layout, self.bytes())

    def release(self) -> None:
        """Drop the reference to the underlying buffer (the view is unusable afterwards)."""
        self._buf = memoryview(b"\0" * 0)

    def __repr__(self) -> str:
        where = f" @ {self.gpa:#x}" if self.gpa is not None else ""
        return f"<StructView {self._what}{where}>"


def _assign(buf: memoryview, off: int, t: TypeLayout, value: Any, what: str) -> None:
    if t.is_scalar:
        _write_int(buf, off, t, value, what)
        return
    if isinstance(value, StructView):
        if value.layout.size != t.size:
            raise ValueError(f"{what}: size {value.layout.size} != {t.size}")
        buf[off:off + t.size] = value.bytes()
        return
    if t.kind == "array" and t.element is not None:
        if t.is_bytes and isinstance(value, (bytes, bytearray, memoryview, str)):
            data = value.encode() if isinstance(value, str) else bytes(value)
            if len(data) > t.size:
                raise ValueError(f"{what}: {len(data)} bytes do not fit in {t.size}")
            buf[off:off + t.size] = data + bytes(t.size - len(data))
            return
        if isinstance(value, (list, tuple)):
            if len(value) > t.count:
                raise ValueError(f"{what}: {len(value)} elements, room for {t.count}")
            for i, v in enumerate(value):
                _assign(buf, off + i * t.element.size, t.element, v, f"{what}[{i}]")
            return
    if t.kind in ("struct", "union") and isinstance(value, dict):
        for k, v in value.items():
            f = t.field(k)
            _assign(buf, off + f.offset, f.type, v, f"{what}.{k}")
        return
    raise TypeError(f"{what}: cannot assign {type(value).__name__} to {t.name}")


def decode_bytes(t: TypeLayout, data: bytes, off: int = 0,
                 counts: Mapping[str, str] | None = None) -> Any:
    """Decode `t` at `off` in `data` into plain JSON-able values: scalars as ints (little
    endian), u8/char arrays as hex / text up to the first NUL, other arrays as lists, structs and
    unions as dicts (bit-fields left out).

    ``counts`` maps an array field's name to the name of a scalar field of the same struct that
    says how many of its elements are in use (``{"steps": "nsteps"}``): such an array is decoded
    only that far (clamped to 0..length), the rest of it is not read."""
    return _decoder(t, frozenset((counts or {}).items()))(data, off)


Decoder = Callable[[bytes, int], Any]
_INT_FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _scalar_format(t: TypeLayout) -> str | None:
    f = _INT_FORMATS.get(t.size)
    return None if f is None else (f.lower() if t.signed else f)


@functools.lru_cache(maxsize=None)
def _decoder(t: TypeLayout, counts: frozenset[tuple[str, str]] = frozenset()) -> Decoder:
    """A decoding function for `t`, built once per layout (results are decoded after every run:
    one ``struct`` unpack for the scalar fields of a struct, one for a scalar array)."""
    if t.is_scalar:
        fmt = _scalar_format(t)
        if fmt is None:
            size, signed = t.size, t.signed
            return lambda data, off: int.from_bytes(data[off:off + size], "little", signed=signed)
        one = struct.Struct("<" + fmt)
        return lambda data, off: one.unpack_from(data, off)[0]
    if t.kind == "array" and t.element is not None:
        return _array_decoder(t, counts)(t.count)
    if t.kind in ("struct", "union"):
        return _struct_decoder(t, counts)
    return lambda data, off: None


def _array_decoder(t: TypeLayout, counts: frozenset[tuple[str, str]]) -> Callable[[int], Decoder]:
    """For an array type: n -> a decoder of its first n elements."""
    assert t.element is not None
    e = t.element
    if t.is_bytes:
        if e.is_char:
            return lambda n: lambda data, off: bytes(data[off:off + n]).split(b"\0", 1)[0].decode(
                "utf-8", "replace")
        return lambda n: lambda data, off: bytes(data[off:off + n]).hex()
    fmt = _scalar_format(e) if e.is_scalar else None
    if fmt is not None:
        def scalars(n: int) -> Decoder:
            many = struct.Struct(f"<{n}{fmt}")
            return lambda data, off: list(many.unpack_from(data, off))
        return scalars
    sub, esize = _decoder(e, counts), e.size
    return lambda n: lambda data, off: [sub(data, off + i * esize) for i in range(n)]


def _struct_decoder(t: TypeLayout, counts: frozenset[tuple[str, str]]) -> Decoder:
    fields = [f for f in t.fields if f.bit_size is None]
    names = {f.name for f in fields}
    counted = {k: v for k, v in counts if k in names and v in names}
    packed = _packed_scalars(t, fields)
    if packed is None:
        if not counted:
            parts = [(f.name, f.offset, _decoder(f.type, counts)) for f in fields]
            return lambda data, off: {name: dec(data, off + o) for name, o, dec in parts}
        packed = (struct.Struct("<"), {})
    whole, index = packed
    by_name = {f.name: f for f in fields}
    for arr, cnt in list(counted.items()):
        if by_name[arr].type.kind != "array" or cnt not in index:
            del counted[arr]  # only an array counted by a 1/2/4/8-byte scalar is cut
    if not counted:
        plan = [(f.name, index.get(f.name, -1), f.offset,
                 None if f.name in index else _decoder(f.type, counts)) for f in fields]
        if all(dec is None for *_, dec in plan):  # C structs: declaration order = offset order
            order = tuple(sorted(index, key=index.__getitem__))
            return lambda data, off: dict(zip(order, whole.unpack_from(data, off)))

        def decode_struct(data: bytes, off: int) -> dict[str, Any]:
            vals = whole.unpack_from(data, off)
            return {name: vals[i] if dec is None else dec(data, off + o) for name, i, o, dec in plan}

        return decode_struct
    cut = [(f.name, index.get(f.name, -1), f.offset,
            None if f.name in index else _decoder(f.type, counts),
            (index[counted[f.name]], f.type.count, _array_decoder(f.type, counts))
            if f.name in counted else None) for f in fields]

    def decode_counted(data: bytes, off: int) -> dict[str, Any]:
        vals = whole.unpack_from(data, off)
        out: dict[str, Any] = {}
        for name, i, o, dec, c in cut:
            if c is not None:
                ci, length, make = c
                out[name] = make(min(max(int(vals[ci]), 0), length))(data, off + o)
            else:
                out[name] = vals[i] if dec is None else dec(data, off + o)
        return out

    return decode_counted


def _packed_scalars(t: TypeLayout, fields: list[Field]) -> tuple[struct.Struct, dict[str, int]] | None:
    """One ``struct.Struct`` for the 1/2/4/8-byte scalar fields of a struct (which never
    overlap), and each such field's index in what it unpacks; None for unions, structs without
    such fields, or duplicate field names."""
    if t.kind != "struct" or len({f.name for f in fields}) != len(fields):
        return None
    fmt, pos, index = ["<"], 0, {}
    for f in sorted(fields, key=lambda f: f.offset):
        c = _scalar_format(f.type) if f.type.is_scalar else None
        if c is None or f.offset < pos:
            continue
        fmt.append(f"{f.offset - pos}x" if f.offset > pos else "")
        fmt.append(c)
        index[f.name] = len(index)
        pos = f.offset + f.type.size
    return (struct.Struct("".join(fmt)), index) if index else None
