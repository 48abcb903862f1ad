"""The payload's privilege split on the emulated platform (local /dev/kvm): the computation runs at
CPL3, CPL0 only behind the kernel-call gate and the exception handlers (docs/contract.md §1).

Each test runs a copy of the payload ELF with one function's first instruction overwritten, so
that a fault happens at a known place, and reads what the guest recorded. Emulated results."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from snplab.platform import default_payload_path
from snplab.scenario import Scenario, Step
from snplab.vmm.dwarf import DwarfInfo

pytestmark = pytest.mark.kvm

UNMAPPED = 0x4000_0000            # first byte above the VMM's 1 GiB identity map
MOVB_TO_UNMAPPED = bytes.fromhex("c60425") + UNMAPPED.to_bytes(4, "little") + b"\x00"
UD2 = b"\x0f\x0b"
PF_WRITE, PF_USER = 1 << 1, 1 << 2   # page-fault error code bits (SDM vol. 3 §4.7)
UD = 6


def patched_payload(tmp_path: Path, function: str, code: bytes) -> tuple[Path, int]:
    """A copy of the payload with `code` at the entry of `function`; returns (path, address)."""
    src = default_payload_path()
    dst = tmp_path / f"payload-{function}.elf"
    shutil.copyfile(src, dst)
    with open(src, "rb") as f:
        elf = ELFFile(f)
        (sym,) = elf.get_section_by_name(".symtab").get_symbol_by_name(function)
        addr = sym["st_value"]
        text = elf.get_section_by_name(".text")
        assert text["sh_addr"] <= addr and addr + len(code) <= text["sh_addr"] + text["sh_size"]
        offset = text["sh_offset"] + addr - text["sh_addr"]
    with open(dst, "r+b") as f:
        f.seek(offset)
        f.write(code)
    return dst, addr


def run(payload: Path, nvcpus: int = 1):
    from snplab.platform import PlatformUnavailable, get_platform

    try:
        platform = get_platform("emulated", payload=payload)
    except PlatformUnavailable as e:
        pytest.skip(str(e))
    try:
        steps = (Step(op="ext_req", certs_npages=16),)
        return platform.run(Scenario(name="ring3", steps=(steps,) * nvcpus, guest_timeout=20.0))
    finally:
        platform.close()


def term_codes(t) -> list[int]:
    return [e["reason_code"] for e in t.to_json()["events"] if e["kind"] == "SevTerm"]


def term_exception() -> int:
    path = default_payload_path()
    return DwarfInfo(path, path.read_bytes()).constant("SNPLAB_TERM_EXCEPTION")


def test_fault_at_cpl3_is_recorded_by_the_kernel(tmp_path: Path) -> None:
    """A write to an unmapped address in the step interpreter: #PF with U/S = 1 in the error code
    (the access came from CPL3), recorded through TSS.RSP0 on every vCPU, each terminating."""
    payload, addr = patched_payload(tmp_path, "run_steps", MOVB_TO_UNMAPPED)
    t = run(payload, nvcpus=2)
    assert t.status == "ok", t.error
    assert term_codes(t) == [term_exception()] * 2
    for v in range(2):
        r = t.results["vcpu"][v]
        assert (r["started"], r["finished"], r["setup_error"]) == (1, 0, 0)
        assert (r["exc_valid"], r["exc_vector"], r["exc_rip"], r["exc_cr2"]) == (1, 14, addr, UNMAPPED)
        assert r["exc_error_code"] & (PF_USER | PF_WRITE) == PF_USER | PF_WRITE
        assert t.vcpus[v]["status"] == "terminated"


def test_fault_at_cpl0_inside_a_kernel_call_terminates(tmp_path: Path) -> None:
    """#UD in the kernel's PVALIDATE range doorbell (the first PVALIDATE, before the results area
    is shared): the handler runs nested at CPL0 and still terminates through the kernel-call gate."""
    payload, _ = patched_payload(tmp_path, "emu_pvalidate_range", UD2)
    t = run(payload)
    assert t.status == "ok", t.error
    assert term_codes(t) == [term_exception()]
    assert t.vcpus[0]["status"] == "terminated"
    assert not any(e["kind"] == "Doorbell" and e["port"] in (0xE4, 0xE8) for e in t.to_json()["events"])


def test_unmodified_payload_runs_clean(tmp_path: Path) -> None:
    """Control for the two above: the same copy-and-run path without a patch."""
    payload = tmp_path / "payload.elf"
    shutil.copyfile(default_payload_path(), payload)
    t = run(payload)
    assert t.status == "ok", t.error
    r = t.results["vcpu"][0]
    assert (r["finished"], r["exc_valid"], r["steps"][0]["outcome"]) == (1, 0, 1)
    assert term_codes(t) == [0]
