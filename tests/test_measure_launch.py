"""snplab.attest.measure for our own launch sequence (docs/contract.md §1, §4)."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snplab.attest import measure as m


def long_mode_vcpu(index: int, entry: int = 0x100000, params: int = 0x101000) -> m.VcpuInit:
    """The entry state of contract §1 as the VMM gives it to KVM_SET_SREGS/REGS."""
    code = m.Segment(selector=0x08, limit=0xFFFFF, type=0xB, s=1, present=1, l=1, g=1)
    data = m.Segment(selector=0x10, limit=0xFFFFF, type=0x3, s=1, present=1, db=1, g=1)
    return m.VcpuInit(
        regs={"rip": entry, "rsp": 0x304000 + index * 0x4000, "rdi": index, "rsi": params, "rflags": 0x2},
        cs=code, ds=data, es=data, ss=data, fs=data, gs=data,
        tr=m.Segment(limit=0x67, type=0xB, present=1), ldt=m.Segment(type=0x2, present=1, unusable=1),
        gdt=m.DescriptorTable(base=0x4000, limit=23), idt=m.DescriptorTable(),
        cr0=0x8001_0033, cr3=0x1000, cr4=0x620, efer=0xD01, xcr0=1,
    )


def u64(page: bytes, off: int) -> int:
    return struct.unpack_from("<Q", page, off)[0]


# ---- PAGE_INFO and the chain --------------------------------------------------------------


def test_page_info_layout():
    cur, contents = bytes(range(48)), bytes(range(100, 148))
    pi = m.page_info(cur, contents, m.PAGE_TYPE_NORMAL, 0x12345000)
    assert len(pi) == 0x70
    assert pi[0:48] == cur and pi[0x30:0x60] == contents
    assert pi[0x60:0x62] == b"\x70\x00" and pi[0x62] == 1 and pi[0x63] == 0
    assert pi[0x64:0x68] == bytes(4)
    assert pi[0x68:0x70] == (0x12345000).to_bytes(8, "little")
    # VMPL permission order (errata B7): reserved, VMPL1, VMPL2, VMPL3
    assert m.page_info(cur, contents, 1, 0, imi=True, vmpl_perms=(1, 2, 3))[0x63:0x68] == bytes([1, 0, 1, 2, 3])


@pytest.mark.parametrize("bad", [dict(gpa=0x1001), dict(page_type=9), dict(contents=b"x")])
def test_page_info_rejects(bad):
    args = dict(digest_cur=bytes(48), contents=bytes(48), page_type=1, gpa=0x1000) | bad
    with pytest.raises(m.MeasureError):
        m.page_info(**args)


def test_chain_by_hand():
    """Two pages, computed with hashlib directly from the PAGE_INFO definition."""
    data = bytes([7]) * 4096
    ld0 = bytes(48)
    pi1 = ld0 + hashlib.sha384(data).digest() + struct.pack("<HBB4sQ", 0x70, 1, 0, bytes(4), 0x100000)
    ld1 = hashlib.sha384(pi1).digest()
    pi2 = ld1 + bytes(48) + struct.pack("<HBB4sQ", 0x70, 3, 0, bytes(4), 0x300000)
    ld2 = hashlib.sha384(pi2).digest()
    ld = m.LaunchDigest()
    ld.add_range(0x100000, m.PAGE_TYPE_NORMAL, data)
    assert ld.digest == ld1
    ld.add_range(0x300000, m.PAGE_TYPE_ZERO, length=4096)
    assert ld.digest == ld2 and ld.pages == 2


def test_unmeasured_types_ignore_contents():
    for pt in (m.PAGE_TYPE_ZERO, m.PAGE_TYPE_SECRETS, m.PAGE_TYPE_CPUID, m.PAGE_TYPE_UNMEASURED):
        a, b = m.LaunchDigest(), m.LaunchDigest()
        a.add_range(0x5000, pt, bytes(4096))
        b.add_range(0x5000, pt, b"\xff" * 4096)
        assert a.digest == b.digest
    a, b = m.LaunchDigest(), m.LaunchDigest()
    a.add_range(0x5000, m.PAGE_TYPE_NORMAL, bytes(4096))
    b.add_range(0x5000, m.PAGE_TYPE_NORMAL, b"\xff" * 4096)
    assert a.digest != b.digest


def test_range_errors():
    ld = m.LaunchDigest()
    with pytest.raises(m.MeasureError):
        ld.add_range(0x1000, m.PAGE_TYPE_NORMAL, length=4096)  # NORMAL needs bytes
    with pytest.raises(m.MeasureError):
        ld.add_range(0x1000, m.PAGE_TYPE_ZERO, length=100)
    with pytest.raises(m.MeasureError):
        ld.add_range(0x1800, m.PAGE_TYPE_ZERO, length=4096)
    with pytest.raises(m.MeasureError):
        m.LaunchDigest(b"short")
    with pytest.raises(m.MeasureError):
        ld.add_vmsa(bytes(100))


# ---- VMSA from our vCPU state ------------------------------------------------------------


def test_vmsa_of_long_mode_vcpu():
    page = m.vmsa_page(long_mode_vcpu(1), sev_features=1)
    assert len(page) == 4096
    sel, attrib, limit, base = struct.unpack_from("<HHIQ", page, 0x10)  # CS
    assert (sel, attrib, limit, base) == (0x08, 0xA9B, 0xFFFFF, 0)  # G|L|P|S|type 0xB
    assert struct.unpack_from("<HHIQ", page, 0x20)[:2] == (0x10, 0xC93)  # SS: G|DB|P|S|type 3
    assert struct.unpack_from("<HHIQ", page, 0x60) == (0, 0, 23, 0x4000)  # GDTR
    assert struct.unpack_from("<HH", page, 0x70) == (0, 0x02)  # unusable LDTR → not present
    assert page[0xCB] == 0  # CPL = SS.DPL
    assert u64(page, 0xD0) == 0xD01 | 0x1000  # EFER | SVME
    assert u64(page, 0x148) == 0x620 | 0x40  # CR4 | host MCE
    assert u64(page, 0x150) == 0x1000 and u64(page, 0x158) == 0x8001_0033
    assert u64(page, 0x160) == 0x400 and u64(page, 0x168) == 0xFFFF_0FF0
    assert u64(page, 0x170) == 2 and u64(page, 0x178) == 0x100000
    assert u64(page, 0x1D8) == 0x308000  # RSP
    assert u64(page, 0x338) == 1 and u64(page, 0x330) == 0x101000  # RDI, RSI
    assert u64(page, 0x268) == 0x0007_0406_0007_0406
    assert u64(page, 0x3B0) == 1 and u64(page, 0x3E8) == 1
    assert struct.unpack_from("<I", page, 0x408)[0] == 0x1F80
    assert struct.unpack_from("<H", page, 0x410)[0] == 0x37F
    # everything else zero: count the non-zero bytes we did not set above
    assert page[0x420:] == bytes(4096 - 0x420)


def test_vmsa_cd_nw_cleared_and_quirk_off():
    vcpu = long_mode_vcpu(0)
    cd_nw = m.VcpuInit(**{**vcpu.__dict__, "cr0": vcpu.cr0 | 0x6000_0000})
    assert u64(m.vmsa_page(cd_nw, 1), 0x158) == 0x8001_0033
    assert u64(m.vmsa_page(cd_nw, 1, m.KvmHost(cd_nw_quirk=False)), 0x158) == 0xE001_0033


def test_vmsa_default_vm_type_skips_fpu():
    page = m.vmsa_page(long_mode_vcpu(0), 1, m.KvmHost(snp_vm_type=False))
    assert page[0x400:] == bytes(0xC00)


def test_vmsa_rejects_oversized_fields():
    vcpu = long_mode_vcpu(0)
    with pytest.raises(m.MeasureError):
        m.vmsa_page(m.VcpuInit(**{**vcpu.__dict__, "pkru": 1 << 32}), 1)
    with pytest.raises(m.MeasureError):
        m.vmsa_page(m.VcpuInit(**{**vcpu.__dict__, "regs": {"rip": 1 << 64}}), 1)


# ---- whole launch log --------------------------------------------------------------------


def our_launch(nvcpus: int = 2) -> tuple[list[dict], list[tuple[int, int, bytes]]]:
    """A launch in contract §1/§4 order, as JSON update entries and as raw (gpa, type, bytes)."""
    pt = bytes(range(256)) * 16
    elf = b"\x90" * 8192
    raw = [
        (0x1000, m.PAGE_TYPE_NORMAL, pt * 4),  # PML4, PDPT, PD, GDT
        (0x5000, m.PAGE_TYPE_SECRETS, bytes(4096)),
        (0x6000, m.PAGE_TYPE_CPUID, b"\x01" * 4096),
        (0x100000, m.PAGE_TYPE_NORMAL, elf),
        (0x102000, m.PAGE_TYPE_ZERO, bytes(4096)),  # .bss
        (0x300000, m.PAGE_TYPE_ZERO, bytes(0x4000 * nvcpus)),
        (0x380000, m.PAGE_TYPE_ZERO, bytes(0x1000 * nvcpus)),
    ]
    entries = []
    for gpa, kind, data in raw:
        e = {"gpa": gpa, "page_type": m.PAGE_TYPE_NAMES[kind], "len": len(data)}
        if kind == m.PAGE_TYPE_NORMAL:
            e["sha384"] = [hashlib.sha384(data[i:i + 4096]).digest().hex() for i in range(0, len(data), 4096)]
        entries.append(e)
    return entries, raw


def vcpu_json(v: m.VcpuInit) -> dict:
    seg = lambda s: dict(s.__dict__)  # noqa: E731
    return {
        "regs": dict(v.regs),
        "sregs": {"cs": seg(v.cs), "ds": seg(v.ds), "es": seg(v.es), "fs": seg(v.fs), "gs": seg(v.gs),
                  "ss": seg(v.ss), "tr": seg(v.tr), "ldt": seg(v.ldt), "gdt": seg(v.gdt), "idt": seg(v.idt),
                  "cr0": v.cr0, "cr2": 0, "cr3": v.cr3, "cr4": v.cr4, "cr8": 0, "efer": v.efer, "apic_base": 0xFEE00900},
        "xcr0": v.xcr0,
    }


def direct_digest(raw, vcpus, features=1) -> bytes:
    ld = m.LaunchDigest()
    for gpa, kind, data in raw:
        ld.add_range(gpa, kind, data)
    for v in vcpus:
        ld.add_vmsa(m.vmsa_page(v, features))
    return ld.digest


def test_predict_from_dict_and_list_forms():
    entries, raw = our_launch(2)
    vcpus = [long_mode_vcpu(0), long_mode_vcpu(1)]
    expected = direct_digest(raw, vcpus)
    as_dict = {"updates": entries, "vcpus": [vcpu_json(v) for v in vcpus], "sev_features": 1}
    as_list = entries + [{"op": "finish", "vcpus": [vcpu_json(v) for v in vcpus]}]
    for form in (as_dict, as_list):
        transcript = json.loads(json.dumps({"launch_log": form}))
        assert m.predict_from_transcript(transcript) == expected


def test_vcpus_from_top_level_vcpu_init():
    """Guest.to_json() form: launch_log is a list of updates, vCPU states in vcpu_init."""
    entries, raw = our_launch(1)
    v = long_mode_vcpu(0)
    vmm_style = [{"gpa": e["gpa"], "npages": e["len"] // 4096, "type": e["page_type"],
                  **({"sha384": e["sha384"]} if "sha384" in e else {})} for e in entries]
    got = m.predict_from_transcript({"launch_log": vmm_style, "vcpu_init": [{"index": 0, **vcpu_json(v)}]})
    assert got == direct_digest(raw, [v])
    with pytest.raises(m.MeasureError, match="no vCPU"):
        m.predict_from_transcript({"launch_log": vmm_style})


def test_data_hex_form_equals_sha_form():
    entries, raw = our_launch(1)
    with_data = [{"gpa": g, "page_type": k, "data": d.hex()} for g, k, d in raw]
    vcpus = [vcpu_json(long_mode_vcpu(0))]
    a = m.predict_measurement(m.launch_log_from_json({"updates": with_data, "vcpus": vcpus}))
    b = m.predict_measurement(m.launch_log_from_json({"updates": entries, "vcpus": vcpus}))
    assert a == b


def test_prediction_is_sensitive_to_everything_measured():
    entries, raw = our_launch(2)
    vcpus = [long_mode_vcpu(0), long_mode_vcpu(1)]
    base = direct_digest(raw, vcpus)
    assert direct_digest(raw, vcpus[::-1]) != base  # vCPU order
    assert direct_digest(raw, vcpus, features=0x21) != base  # SEV features
    moved = [(g + 0x1000 if g == 0x6000 else g, k, d) for g, k, d in raw]
    assert direct_digest(moved, vcpus) != base  # GPA of an unmeasured-content page
    flipped = list(raw)
    flipped[3] = (0x100000, m.PAGE_TYPE_NORMAL, b"\x91" + raw[3][2][1:])
    assert direct_digest(flipped, vcpus) != base  # one byte of the ELF
    other_rsp = m.VcpuInit(**{**vcpus[1].__dict__, "regs": {**vcpus[1].regs, "rsp": 0}})
    assert direct_digest(raw, [vcpus[0], other_rsp]) != base  # a register


@pytest.mark.parametrize("log,msg", [
    ({"updates": [{"gpa": 0x1000, "page_type": "NORMAL", "len": 4096}], "vcpus": []}, "SHA-384"),
    ({"updates": [{"gpa": 0x1000, "page_type": "VMSA", "len": 4096}], "vcpus": []}, "cannot be launched"),
    ({"updates": [{"gpa": 0x1000, "page_type": "BOGUS", "len": 4096}], "vcpus": []}, "unknown page type"),
    ({"updates": [{"gpa": 0x1001, "page_type": 3, "len": 4096}], "vcpus": []}, "aligned"),
    ({"updates": [{"gpa": 0x1000, "page_type": 3, "len": 100}], "vcpus": []}, "page multiple"),
    ({"updates": [{"gpa": 0x1000, "page_type": 3}], "vcpus": []}, "neither"),
    ({"updates": [{"gpa": "x", "page_type": 3, "len": 4096}], "vcpus": []}, "integer"),
    ({"updates": [{"gpa": 0x1000, "page_type": 1, "data": "zz"}], "vcpus": []}, "hex"),
    ({"updates": [], "vcpus": [{"regs": {}}]}, "sregs"),
    ([{"op": "explode"}], "unknown launch_log op"),
    ("nope", "object or a list"),
    ({"updates": [{"gpa": 0x1000, "page_type": 3, "npages": 1 << 40}], "vcpus": []}, "page count"),
])
def test_bad_logs_raise_typed_errors(log, msg):
    with pytest.raises(m.MeasureError, match=msg):
        m.predict_measurement(m.launch_log_from_json(log))


def test_double_launch_and_no_vcpu_rejected():
    entries, _ = our_launch(1)
    vcpus = [vcpu_json(long_mode_vcpu(0))]
    with pytest.raises(m.MeasureError, match="twice"):
        m.predict_measurement(m.launch_log_from_json({"updates": entries + entries[1:2], "vcpus": vcpus}))
    with pytest.raises(m.MeasureError, match="no vCPU"):
        m.predict_measurement(m.launch_log_from_json({"updates": entries, "vcpus": []}))
    with pytest.raises(m.MeasureError, match="launch_log"):
        m.predict_from_transcript({})


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0x3FF), st.sampled_from([1, 3, 4, 5, 6]), st.binary(min_size=1, max_size=8)),
                min_size=1, max_size=6, unique_by=lambda t: t[0]))
def test_json_and_direct_paths_agree(pages):
    """Any set of single-page updates: the JSON path equals the direct chain."""
    raw = [(pfn * 4096, kind, (seed * 4096)[:4096]) for pfn, kind, seed in pages]
    entries = [{"gpa": g, "page_type": k, "data": d.hex()} for g, k, d in raw]
    v = long_mode_vcpu(0)
    got = m.predict_measurement(m.launch_log_from_json({"updates": entries, "vcpus": [vcpu_json(v)]}))
    assert got == direct_digest(raw, [v])
