"""The payload's ABI enumerators, read from its DWARF (shared by the payload tests)."""

from __future__ import annotations

from functools import lru_cache

from elftools.elf.elffile import ELFFile

from snplab.payload import ensure_built


@lru_cache(maxsize=1)
def abi() -> dict[str, int]:
    """Every enumerator of the payload's DWARF (snplab_abi.h enums)."""
    with open(ensure_built(), "rb") as f:
        dwarf = ELFFile(f).get_dwarf_info()
        return {die.attributes["DW_AT_name"].value.decode():
                die.attributes["DW_AT_const_value"].value
                for cu in dwarf.iter_CUs() for die in cu.iter_DIEs()
                if die.tag == "DW_TAG_enumerator"}
