"""Payload ELF reading with pyelftools: PT_LOAD segments, entry point and symbols.

Parsed images are cached per (path, mtime, size), so booting the same payload again costs no
parsing; the file is read into memory once and no fd stays open.
"""

from __future__ import annotations

import bisect
import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from elftools.common.exceptions import ELFError as _PyElfError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from snplab.vmm.errors import ElfError

if TYPE_CHECKING:
    from snplab.vmm.dwarf import DwarfInfo

PT_LOAD = 1
PF_X, PF_W, PF_R = 1, 2, 4


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD segment: `filesz` bytes of `data` at `gpa`, zero-filled up to `memsz`."""

    gpa: int
    memsz: int
    filesz: int
    data: bytes
    flags: int

    @property
    def end(self) -> int:
        return self.gpa + self.memsz


@dataclass(frozen=True)
class Symbol:
    name: str
    addr: int
    size: int
    kind: str  # "func", "object", "notype"


class ElfImage:
    """A parsed payload ELF (immutable once built; shared between guests)."""

    def __init__(self, path: Path, raw: bytes) -> None:
        self.path = path
        self.raw = raw
        try:
            elf = ELFFile(io.BytesIO(raw))
            if elf.get_machine_arch() != "x64" or elf.elfclass != 64:
                raise ElfError(f"{path}: not an x86-64 ELF64 ({elf.get_machine_arch()})")
            self.entry: int = elf.header.e_entry
            segs = []
            for ph in elf.iter_segments():
                if ph.header.p_type != "PT_LOAD" or ph.header.p_memsz == 0:
                    continue
                h = ph.header
                if h.p_filesz > h.p_memsz:
                    raise ElfError(f"{path}: PT_LOAD at {h.p_paddr:#x} has filesz > memsz")
                segs.append(Segment(h.p_paddr, h.p_memsz, h.p_filesz, ph.data()[:h.p_filesz],
                                    h.p_flags))
            self.segments: tuple[Segment, ...] = tuple(sorted(segs, key=lambda s: s.gpa))
            syms: dict[str, Symbol] = {}
            for sec in elf.iter_sections():
                if not isinstance(sec, SymbolTableSection):
                    continue
                for s in sec.iter_symbols():
                    kind = {"STT_FUNC": "func", "STT_OBJECT": "object",
                            "STT_NOTYPE": "notype"}.get(s["st_info"]["type"])
                    if not s.name or kind is None or s["st_shndx"] == "SHN_UNDEF":
                        continue
                    if s.name not in syms or syms[s.name].kind == "notype":
                        syms[s.name] = Symbol(s.name, s["st_value"], s["st_size"], kind)
            self.has_dwarf = elf.has_dwarf_info()
        except _PyElfError as e:
            raise ElfError(f"{path}: not a readable ELF: {e}") from e
        self.symbols: dict[str, Symbol] = syms
        code = sorted((s.addr, s.name) for s in syms.values() if s.kind in ("func", "notype"))
        self._code_addrs = [a for a, _ in code]
        self._code_names = [n for _, n in code]
        self._dwarf: DwarfInfo | None = None
        self._dwarf_lock = threading.Lock()
        for a, b in zip(self.segments, self.segments[1:], strict=False):
            if a.end > b.gpa:
                raise ElfError(f"{path}: PT_LOAD segments at {a.gpa:#x} and {b.gpa:#x} overlap")

    def symbol(self, name: str) -> Symbol:
        """The symbol `name`; raises ElfError if the ELF has none."""
        try:
            return self.symbols[name]
        except KeyError:
            raise ElfError(f"{self.path}: no symbol {name!r}") from None

    def find_symbol(self, name: str) -> Symbol | None:
        return self.symbols.get(name)

    def nearest_symbol(self, addr: int) -> str | None:
        """'name+0xoff' of the closest code symbol at or below `addr`, or None."""
        i = bisect.bisect_right(self._code_addrs, addr) - 1
        if i < 0 or not self.segments or not (self.segments[0].gpa <= addr < self.segments[-1].end):
            return None
        off = addr - self._code_addrs[i]
        return self._code_names[i] + (f"+{off:#x}" if off else "")

    @property
    def dwarf(self) -> DwarfInfo:
        """The payload's DWARF layouts (parsed on first use, then cached with the image)."""
        if self._dwarf is None:
            with self._dwarf_lock:
                if self._dwarf is None:
                    from snplab.vmm.dwarf import DwarfInfo

                    self._dwarf = DwarfInfo(self.path, self.raw)
        return self._dwarf

    @property
    def load_range(self) -> tuple[int, int]:
        """[lowest gpa, highest end) over all segments."""
        if not self.segments:
            return (0, 0)
        return self.segments[0].gpa, max(s.end for s in self.segments)


_cache: dict[tuple[str, int, int, int, int], ElfImage] = {}
_cache_lock = threading.Lock()


def load_elf(path: str | os.PathLike[str]) -> ElfImage:
    """Parse `path` (cached per path + mtime + size)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise ElfError(f"{p}: {e.strerror}") from e
    key = (str(p), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    img = _cache.get(key)
    if img is not None:
        return img
    with _cache_lock:
        img = _cache.get(key)
        if img is None:
            try:
                raw = p.read_bytes()
            except OSError as e:
                raise ElfError(f"{p}: {e.strerror}") from e
            img = ElfImage(p, raw)
            for k in [k for k in _cache if k[0] == key[0]]:
                del _cache[k]
            _cache[key] = img
    return img
