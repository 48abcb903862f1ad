"""The guest payload build: ELF layout (contract memory map), DWARF for the params/results layout
(checked against the compiler's own sizeof/offsetof), the instructions the SNP path may not use,
a reproducible warning-free build, and `snplab.payload.ensure_built` (staleness, concurrency,
errors)."""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import subprocess
import time
from functools import lru_cache
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from snplab import payload
from snplab.payload import PAYLOAD_DIR, PayloadBuildError, ensure_built

STRUCTS = ("snplab_params", "snplab_vcpu_params", "snplab_step", "snplab_results",
           "snplab_vcpu_results", "snplab_step_result", "snplab_attempt")
LOAD_BASE, STACKS = 0x100000, 0x300000   # docs/contract.md §1


@lru_cache(maxsize=1)
def dwarf_structs() -> dict[str, tuple[int, dict[str, int]]]:
    """{struct: (byte_size, {member: offset})} from the payload's DWARF."""
    found: dict[str, tuple[int, dict[str, int]]] = {}
    with open(ensure_built(), "rb") as f:
        for cu in ELFFile(f).get_dwarf_info().iter_CUs():
            for die in cu.iter_DIEs():
                if die.tag != "DW_TAG_structure_type" or "DW_AT_name" not in die.attributes:
                    continue
                name = die.attributes["DW_AT_name"].value.decode()
                if name in STRUCTS and "DW_AT_byte_size" in die.attributes:
                    members = {c.attributes["DW_AT_name"].value.decode():
                               c.attributes["DW_AT_data_member_location"].value
                               for c in die.iter_children() if c.tag == "DW_TAG_member"}
                    found.setdefault(name, (die.attributes["DW_AT_byte_size"].value, members))
    return found


def dwarf_enumerators() -> dict[str, int]:
    with open(ensure_built(), "rb") as f:
        return {d.attributes["DW_AT_name"].value.decode():
                d.attributes["DW_AT_const_value"].value
                for cu in ELFFile(f).get_dwarf_info().iter_CUs() for d in cu.iter_DIEs()
                if d.tag == "DW_TAG_enumerator"}


def test_elf_layout_follows_the_memory_map() -> None:
    with open(ensure_built(), "rb") as f:
        elf = ELFFile(f)
        assert elf["e_type"] == "ET_EXEC" and elf["e_machine"] == "EM_X86_64"
        symtab = elf.get_section_by_name(".symtab")
        assert elf["e_entry"] == symtab.get_symbol_by_name("_start")[0]["st_value"] == LOAD_BASE
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert loads
        for seg in loads:
            assert LOAD_BASE <= seg["p_vaddr"] and seg["p_vaddr"] + seg["p_memsz"] <= STACKS
            assert seg["p_vaddr"] % 4096 == 0
            assert not (seg["p_flags"] & 1 and seg["p_flags"] & 2), "W+X segment"
        params = symtab.get_symbol_by_name("snplab_params")[0]
        data = elf.get_section_by_name(".data")
        assert data["sh_addr"] <= params["st_value"] < data["sh_addr"] + data["sh_size"]
        assert params["st_size"] == dwarf_structs()["snplab_params"][0]
        bss = elf.get_section_by_name(".bss")
        assert bss["sh_addr"] % 4096 == 0, ".bss must start a page (launched as ZERO pages)"


def test_dwarf_layout_matches_the_compiler(tmp_path: Path) -> None:
    """Every member offset and struct size in the DWARF equals what gcc computes from the header."""
    structs = dwarf_structs()
    assert set(structs) == set(STRUCTS)
    header = (PAYLOAD_DIR / "include" / "snplab_abi.h").read_text()
    enum_names = re.findall(r"^\s+(SNPLAB_[A-Z0-9_]+)\s*=", header, re.MULTILINE)
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "snplab_abi.h"',
             "int main(void) {"]
    for s, (_, members) in structs.items():
        lines.append(f'printf("{s} %zu\\n", sizeof(struct {s}));')
        lines += [f'printf("{s}.{m} %zu\\n", offsetof(struct {s}, {m}));' for m in members]
    lines += [f'printf("{e} %lld\\n", (long long){e});' for e in enum_names]
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run(["gcc", "-I", str(PAYLOAD_DIR / "include"), "-o", str(exe), str(src)],
                   check=True)
    printed = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    truth = dict(line.rsplit(" ", 1) for line in printed.splitlines())
    for s, (size, members) in structs.items():
        assert int(truth[s]) == size, s
        for m, off in members.items():
            assert int(truth[f"{s}.{m}"]) == off, f"{s}.{m}"
    enums = dwarf_enumerators()
    assert len(enum_names) > 40
    for e in enum_names:
        assert enums.get(e) == int(truth[e]), f"{e} missing from DWARF or wrong"


def _disassembly() -> dict[str, list[str]]:
    """{function: [instruction text]} from objdump (labels of start.S count as functions)."""
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(ensure_built())],
                         capture_output=True, text=True, check=True).stdout
    fns: dict[str, list[str]] = {}
    fn = ""
    for line in dis.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if m:
            fn = m.group(1)
            fns.setdefault(fn, [])
        elif "\t" in line and fn:
            fns[fn].append(line.split("\t", 1)[1])
    return fns


def _functions_using(pattern: str) -> set[str]:
    rx = re.compile(pattern)
    return {fn for fn, insns in _disassembly().items() if any(rx.search(i) for i in insns)}


# The payload's CPL0 part (kernel.c, exc.c, platform.c, start.S); everything else runs at CPL3.
KERNEL_FUNCTIONS = {"_start", "__payload_start", "snplab_main", "enter_user", "kcall_entry",
                    "snplab_kcall", "exc_install", "exc_common", "snplab_exception", "vmgexit",
                    "pvalidate_run_4k", "pvalidate_4k", "emu_doorbell", "emu_pvalidate_range"}
PRIVILEGED = (r"^\s*(rdmsr|wrmsr|(in|out)[bwl]?|ins[bwl]?|outs[bwl]?|hlt|cli|sti|lgdt|lidt|ltr|"
              r"lretq?|iretq?|vmgexit|vmmcall|pvalidate|invlpg|wbinvd)\b|%cr[0-8]\b|"
              r"^\s*mov\s+\S+,%[c-gs]s\s*$")


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump not installed")
def test_snp_path_avoids_instructions_that_trap() -> None:
    """No CPUID anywhere; port I/O only in the emulated-platform doorbells; VMGEXIT/PVALIDATE
    only in their platform wrappers; MSR access only in the kernel-call dispatcher."""
    assert _functions_using(r"^\s*cpuid\b") == set()
    assert _functions_using(r"^\s*(in|out)[bwl]?\s") == {"emu_doorbell", "emu_pvalidate_range"}
    assert _functions_using(r"^\s*vmgexit\b") == {"vmgexit"}
    assert _functions_using(r"^\s*pvalidate\b") == {"pvalidate_4k"}
    assert _functions_using(r"^\s*(rd|wr)msr\b") == {"snplab_kcall"}


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump not installed")
def test_privileged_code_is_only_reached_through_the_kernel() -> None:
    """The CPL3 part never executes a privileged instruction: they sit in kernel functions only,
    and kernel functions are called (or jumped to) from kernel functions only; CPL3 reaches CPL0
    through INT3 (the kernel-call gate, vector 3) and exceptions."""
    fns = _disassembly()
    assert KERNEL_FUNCTIONS - {"_start", "__payload_start"} <= set(fns)
    privileged = _functions_using(PRIVILEGED)
    assert {"snplab_main", "snplab_kcall", "enter_user", "kcall_entry"} <= privileged
    assert privileged <= KERNEL_FUNCTIONS, privileged - KERNEL_FUNCTIONS
    target = re.compile(r"^\s*(call|jmp|j[a-z]+)\s+[0-9a-f]+ <([^>+]+)")
    for fn, insns in fns.items():
        if fn in KERNEL_FUNCTIONS or fn.startswith("exc_stub_"):
            continue
        for i in insns:
            m = target.match(i)
            assert not (m and m.group(2) in KERNEL_FUNCTIONS and m.group(2) != fn), (fn, i)
    # INT3 (the gate) from CPL3 code only: nothing the kernel calls may use it (kcall.h)
    callers = _functions_using(r"^\s*int3\b")
    assert {"snplab_user_main", "ghcb_terminate", "hv_guest_request"} <= callers
    reached, todo = set(), list(KERNEL_FUNCTIONS & set(fns))
    while todo:
        fn = todo.pop()
        if fn in reached:
            continue
        reached.add(fn)
        todo += [m.group(2) for m in map(target.match, fns.get(fn, ())) if m and m.group(2) in fns]
    assert "vcpu_finish" in reached and "snplab_user_main" not in reached
    assert not callers & reached, callers & reached


def _copy_sources(dst: Path) -> Path:
    root = dst / "guest-payloads"
    shutil.copytree(PAYLOAD_DIR, root, ignore=shutil.ignore_patterns("build"))
    return root


@pytest.fixture(scope="module")
def payload_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy_sources(tmp_path_factory.mktemp("payload"))


def test_build_is_reproducible_and_warning_free(payload_copy: Path) -> None:
    proc = subprocess.run(["make", "-C", str(payload_copy)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in (proc.stdout + proc.stderr).lower()
    built = payload_copy / "build" / "snplab-guest.elf"
    # a different directory, a separate build: the same bytes, and no absolute paths inside
    assert built.read_bytes() == ensure_built().read_bytes()
    assert str(payload_copy).encode() not in built.read_bytes()
    assert str(PAYLOAD_DIR).encode() not in built.read_bytes()


def _build_in(root: str) -> str:
    return str(ensure_built(payload_dir=Path(root)))


def test_ensure_built_rebuilds_stale_once_under_concurrency(payload_copy: Path) -> None:
    elf = ensure_built(payload_dir=payload_copy)
    assert not payload.is_stale(payload_dir=payload_copy)
    past = time.time() - 3600           # the ELF predates its sources: stale
    os.utime(elf, (past, past))
    before = elf.stat().st_mtime_ns
    assert payload.is_stale(payload_dir=payload_copy)
    with multiprocessing.get_context("fork").Pool(4) as pool:
        paths = pool.map(_build_in, [str(payload_copy)] * 4)
    assert set(paths) == {str(elf)}
    assert elf.stat().st_mtime_ns > before
    assert not payload.is_stale(payload_dir=payload_copy)
    assert elf.read_bytes() == ensure_built().read_bytes()


def test_ensure_built_reports_compiler_errors(payload_copy: Path) -> None:
    src = payload_copy / "src" / "log.c"
    good = src.read_text()
    try:
        src.write_text(good + "\nthis is not C;\n")
        with pytest.raises(PayloadBuildError) as exc:
            ensure_built(payload_dir=payload_copy)
        assert "log.c" in str(exc.value) and "failed" in str(exc.value)
    finally:
        src.write_text(good)
    assert ensure_built(payload_dir=payload_copy).is_file()


def test_ensure_built_without_make(payload_copy: Path, monkeypatch: pytest.MonkeyPatch,
                                   tmp_path: Path) -> None:
    os.utime(payload.output_path(payload_dir=payload_copy), (time.time() - 3600,) * 2)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PayloadBuildError, match="'make' not found"):
        ensure_built(payload_dir=payload_copy)


def test_unknown_target() -> None:
    with pytest.raises(PayloadBuildError, match="unknown payload target"):
        ensure_built("no-such-payload")
