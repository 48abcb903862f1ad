"""ELF loading and DWARF layouts (snplab.vmm.elf / snplab.vmm.dwarf).

The layouts read from the test guest's DWARF are compared with what gcc itself computes for
guest-payloads/include/snplab_abi.h (an offsetof/sizeof probe), so a DWARF-reading bug cannot
hide behind a layout the code under test produced."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "guests"))
from guest_build import INCLUDE, build_guest  # noqa: E402

from snplab.vmm.dwarf import StructView, TypeLayout  # noqa: E402
from snplab.vmm.elf import load_elf  # noqa: E402
from snplab.vmm.errors import DwarfError, ElfError  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")


@pytest.fixture(scope="module")
def elf_path() -> Path:
    return build_guest()


@pytest.fixture(scope="module")
def img(elf_path: Path):  # type: ignore[no-untyped-def]
    return load_elf(elf_path)


def _leaf_paths(t: TypeLayout, prefix: str = "", base: int = 0) -> list[tuple[str, int, int]]:
    """(C member designator, offset, size) of every field; arrays of structs are entered at
    index 1 so that the element stride is checked too."""
    out = []
    for f in t.fields:
        path, off, ft = prefix + f.name, base + f.offset, f.type
        out.append((path, off, ft.size))
        while ft.kind == "array" and ft.element is not None and \
                ft.element.kind in ("array", "struct"):
            path, off, ft = path + "[1]", off + ft.element.size, ft.element
        if ft.kind == "struct":
            out += _leaf_paths(ft, path + ".", off)
    return out


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory, img) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """gcc's own offsetof/sizeof for every field path of params and results."""
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "snplab_abi.h"',
             "int main(void) {"]
    for name in ("snplab_params", "snplab_results", "snplab_step", "snplab_attempt"):
        t = img.dwarf.layout(name)
        lines.append(f'printf("{name}=%zu\\n", sizeof(struct {name}));')
        for path, _, _ in _leaf_paths(t):
            lines.append(f'printf("{name}.{path}=%zu\\n", offsetof(struct {name}, {path}));')
    for enum in ("SNPLAB_DOORBELL_PORT", "SNPLAB_PVALIDATE_PORT", "SNPLAB_PARAMS_MAGIC",
                 "SNPLAB_OP_EXT_REQ", "SNPLAB_TERM_SCRIPTED", "SNPLAB_MAX_STEPS"):
        lines.append(f'printf("{enum}=%lld\\n", (long long){enum});')
    lines += ["return 0;", "}"]
    d = tmp_path_factory.mktemp("abi_probe")
    (d / "p.c").write_text("\n".join(lines))
    r = subprocess.run(["gcc", f"-I{INCLUDE}", "-o", str(d / "p"), str(d / "p.c")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    out = subprocess.run([str(d / "p")], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in (ln.split("=") for ln in out.splitlines())}


def test_dwarf_layouts_equal_gcc_offsetof(img, c_layout) -> None:  # type: ignore[no-untyped-def]
    """Every offset/size of snplab_params/results read from DWARF equals gcc's offsetof."""
    n = 0
    for name in ("snplab_params", "snplab_results", "snplab_step", "snplab_attempt"):
        t = img.dwarf.layout(name)
        assert t.size == c_layout[name], name
        for path, off, _ in _leaf_paths(t):
            assert off == c_layout[f"{name}.{path}"], f"{name}.{path}"
            assert t.offsetof(path) == off, path
            n += 1
    assert n > 100


def test_enums_and_constants(img, c_layout) -> None:  # type: ignore[no-untyped-def]
    dw = img.dwarf
    for k in ("SNPLAB_DOORBELL_PORT", "SNPLAB_PVALIDATE_PORT", "SNPLAB_PARAMS_MAGIC",
              "SNPLAB_OP_EXT_REQ", "SNPLAB_TERM_SCRIPTED", "SNPLAB_MAX_STEPS"):
        assert dw.constant(k) == c_layout[k], k
    ops = dw.enum("snplab_op")
    assert ops == {"SNPLAB_OP_END": 0, "SNPLAB_OP_EXT_REQ": 1, "SNPLAB_OP_REQ": 2,
                   "SNPLAB_OP_TERMINATE": 3}
    with pytest.raises(DwarfError, match="no enum"):
        dw.enum("no_such_enum")
    with pytest.raises(DwarfError, match="no struct"):
        dw.layout("no_such_struct")


def test_nested_layout_arrays(img) -> None:  # type: ignore[no-untyped-def]
    p = img.dwarf.layout("snplab_params")
    vcpu = p.field("vcpu").type
    assert vcpu.kind == "array" and vcpu.count == 4
    steps = vcpu.element.field("steps").type
    assert steps.count == 16 and steps.element.field("report_data").type.is_bytes
    off, t = p.locate("vcpu[1].steps[2].certs_npages")
    assert t.kind == "int" and t.size == 8
    assert off == p.offsetof("vcpu") + vcpu.element.size + \
        vcpu.element.offsetof("steps") + 2 * steps.element.size + \
        steps.element.offsetof("certs_npages")
    with pytest.raises(DwarfError):
        p.locate("vcpu[4].nsteps")
    json.dumps(p.describe())


def test_elf_segments_symbols(img) -> None:  # type: ignore[no-untyped-def]
    assert img.entry == img.symbol("_start").addr == 0x100000
    assert [s.gpa for s in img.segments] == sorted(s.gpa for s in img.segments)
    data = next(s for s in img.segments if s.memsz > s.filesz)  # .data + .bss
    assert data.filesz == len(data.data)
    assert img.symbol("snplab_params").kind == "object"
    spin = img.symbol("spin_forever")
    assert img.nearest_symbol(spin.addr) == "spin_forever"
    assert img.nearest_symbol(spin.addr + 2) == "spin_forever+0x2"
    assert img.nearest_symbol(0x50) is None
    with pytest.raises(ElfError):
        img.symbol("nope")


def test_elf_cache_and_bad_input(elf_path: Path, tmp_path: Path) -> None:
    a = load_elf(elf_path)
    assert load_elf(elf_path) is a  # cached
    assert a.dwarf is a.dwarf
    copy = tmp_path / "g.elf"
    copy.write_bytes(elf_path.read_bytes())
    b = load_elf(copy)
    assert b is not a and b.entry == a.entry
    bad = tmp_path / "bad.elf"
    bad.write_bytes(b"\x7fELF" + b"\0" * 10)
    with pytest.raises(ElfError):
        load_elf(bad)
    with pytest.raises(ElfError):
        load_elf(tmp_path / "missing.elf")


def test_struct_view_read_write_decode(img) -> None:  # type: ignore[no-untyped-def]
    t = img.dwarf.layout("snplab_params")
    buf = bytearray(t.size + 16)
    v = StructView(t, memoryview(buf), 8, gpa=0x1000)
    v["vcpu"][1]["steps"][0]["certs_npages"] = 3
    v["magic"] = 0x534E5050
    v["vcpu"][1]["steps"][0]["report_data"] = b"\x01\x02"
    off = 8 + t.offsetof("vcpu[1].steps[0].certs_npages")
    assert int.from_bytes(buf[off:off + 8], "little") == 3
    assert buf[:8] == bytes(8) and buf[-8:] == bytes(8)  # nothing outside the object
    assert v.get("vcpu[1].steps[0].certs_npages") == 3
    assert v["vcpu"][1].gpa == 0x1000 + t.offsetof("vcpu[1]")
    d = v.decode()
    assert d["magic"] == 0x534E5050
    assert d["vcpu"][1]["steps"][0]["report_data"] == "0102" + "00" * 62
    json.dumps(d)
    with pytest.raises(ValueError):
        v["nvcpus"] = 1 << 32
    with pytest.raises(ValueError):
        v["vcpu"][0]["steps"][0]["report_data"] = bytes(65)
    with pytest.raises(IndexError):
        v["vcpu"][4]
    with pytest.raises(DwarfError):
        v["nope"]
    v.set("vcpu[0].nsteps", 2)
    assert v["vcpu"][0]["nsteps"] == 2
    v["vcpu"][2] = {"nsteps": 5, "steps": [{"op": 1}, {"op": 2}]}
    assert v.get("vcpu[2].steps[1].op") == 2
