"""snplab.vmm.uapi against the kernel: a C probe compiled with gcc against the installed
<linux/kvm.h> prints sizeof/offsetof of every struct (and every ioctl number / constant) the
headers define; structs newer than the headers are checked against the figures in
shared/reference/kvm-host-abi.md §3 (written out below, not computed by the code under test)."""

from __future__ import annotations

import ctypes as C
import shutil
import subprocess
from pathlib import Path

import pytest

from snplab.vmm import uapi

# (ctypes struct, C type, guard macro: probe only if the installed headers define it)
STRUCTS = [
    (uapi.kvm_regs, "struct kvm_regs", None),
    (uapi.kvm_segment, "struct kvm_segment", None),
    (uapi.kvm_dtable, "struct kvm_dtable", None),
    (uapi.kvm_sregs, "struct kvm_sregs", None),
    (uapi.kvm_userspace_memory_region, "struct kvm_userspace_memory_region", None),
    (uapi.kvm_enable_cap, "struct kvm_enable_cap", None),
    (uapi.kvm_msr_filter_range, "struct kvm_msr_filter_range", None),
    (uapi.kvm_msr_filter, "struct kvm_msr_filter", None),
    (uapi.kvm_cpuid_entry2, "struct kvm_cpuid_entry2", None),
    (uapi.kvm_cpuid2, "struct kvm_cpuid2", None),
    (uapi.kvm_xcr, "struct kvm_xcr", None),
    (uapi.kvm_xcrs, "struct kvm_xcrs", None),
    (uapi.kvm_device_attr, "struct kvm_device_attr", None),
    (uapi.kvm_sev_cmd, "struct kvm_sev_cmd", None),
    (uapi.kvm_msr_entry, "struct kvm_msr_entry", None),
    (uapi.kvm_msrs, "struct kvm_msrs", None),
    (uapi.kvm_run, "struct kvm_run", None),
    (uapi.kvm_userspace_memory_region2, "struct kvm_userspace_memory_region2",
     "KVM_SET_USER_MEMORY_REGION2"),
    (uapi.kvm_create_guest_memfd, "struct kvm_create_guest_memfd", "KVM_CREATE_GUEST_MEMFD"),
    (uapi.kvm_memory_attributes, "struct kvm_memory_attributes", "KVM_SET_MEMORY_ATTRIBUTES"),
    (uapi.kvm_sev_init, "struct kvm_sev_init", "KVM_X86_SEV_VM"),
    (uapi.kvm_sev_snp_launch_start, "struct kvm_sev_snp_launch_start", "KVM_X86_SNP_VM"),
    (uapi.kvm_sev_snp_launch_update, "struct kvm_sev_snp_launch_update", "KVM_X86_SNP_VM"),
    (uapi.kvm_sev_snp_launch_finish, "struct kvm_sev_snp_launch_finish", "KVM_X86_SNP_VM"),
    (uapi.kvm_pre_fault_memory, "struct kvm_pre_fault_memory", "KVM_PRE_FAULT_MEMORY"),
    (uapi.kvm_exit_snp_req_certs, "struct kvm_exit_snp_req_certs", "KVM_EXIT_SNP_REQ_CERTS"),
]
# kvm_run members newer than 6.1, probed only where the headers have them.
RUN_MEMBER_GUARDS = {"memory_fault": "KVM_EXIT_MEMORY_FAULT",
                     "snp_req_certs": "KVM_EXIT_SNP_REQ_CERTS",
                     "vmgexit": "KVM_EXIT_VMGEXIT"}

# kvm-host-abi.md §3.2-§3.5 and §1(a) figures: name -> size, or "struct.field" -> offset.
REFERENCE = {
    "struct kvm_userspace_memory_region2": 160,
    "struct kvm_userspace_memory_region2.slot": 0,
    "struct kvm_userspace_memory_region2.flags": 4,
    "struct kvm_userspace_memory_region2.guest_phys_addr": 8,
    "struct kvm_userspace_memory_region2.memory_size": 16,
    "struct kvm_userspace_memory_region2.userspace_addr": 24,
    "struct kvm_userspace_memory_region2.guest_memfd_offset": 32,
    "struct kvm_userspace_memory_region2.guest_memfd": 40,
    "struct kvm_userspace_memory_region2.pad1": 44,
    "struct kvm_userspace_memory_region2.pad2": 48,
    "struct kvm_create_guest_memfd": 64,
    "struct kvm_create_guest_memfd.size": 0,
    "struct kvm_create_guest_memfd.flags": 8,
    "struct kvm_create_guest_memfd.reserved": 16,
    "struct kvm_memory_attributes": 32,
    "struct kvm_memory_attributes.address": 0,
    "struct kvm_memory_attributes.size": 8,
    "struct kvm_memory_attributes.attributes": 16,
    "struct kvm_memory_attributes.flags": 24,
    "struct kvm_sev_init": 48,
    "struct kvm_sev_init.vmsa_features": 0,
    "struct kvm_sev_init.flags": 8,
    "struct kvm_sev_init.ghcb_version": 12,
    "struct kvm_sev_init.pad1": 14,
    "struct kvm_sev_init.pad2": 16,
    "struct kvm_sev_snp_launch_start": 64,
    "struct kvm_sev_snp_launch_start.policy": 0,
    "struct kvm_sev_snp_launch_start.gosvw": 8,
    "struct kvm_sev_snp_launch_start.flags": 24,
    "struct kvm_sev_snp_launch_start.pad0": 26,
    "struct kvm_sev_snp_launch_start.pad1": 32,
    "struct kvm_sev_snp_launch_update": 64,
    "struct kvm_sev_snp_launch_update.gfn_start": 0,
    "struct kvm_sev_snp_launch_update.uaddr": 8,
    "struct kvm_sev_snp_launch_update.len": 16,
    "struct kvm_sev_snp_launch_update.type": 24,
    "struct kvm_sev_snp_launch_update.pad0": 25,
    "struct kvm_sev_snp_launch_update.flags": 26,
    "struct kvm_sev_snp_launch_update.pad1": 28,
    "struct kvm_sev_snp_launch_update.pad2": 32,
    "struct kvm_sev_snp_launch_finish": 88,
    "struct kvm_sev_snp_launch_finish.id_block_uaddr": 0,
    "struct kvm_sev_snp_launch_finish.id_auth_uaddr": 8,
    "struct kvm_sev_snp_launch_finish.id_block_en": 16,
    "struct kvm_sev_snp_launch_finish.auth_key_en": 17,
    "struct kvm_sev_snp_launch_finish.vcek_disabled": 18,
    "struct kvm_sev_snp_launch_finish.host_data": 19,
    "struct kvm_sev_snp_launch_finish.pad0": 51,
    "struct kvm_sev_snp_launch_finish.flags": 54,
    "struct kvm_sev_snp_launch_finish.pad1": 56,
    "struct kvm_pre_fault_memory": 64,  # from KVM_PRE_FAULT_MEMORY = 0xC040AED5
    "struct kvm_pre_fault_memory.gpa": 0,
    "struct kvm_pre_fault_memory.size": 8,
    "struct kvm_pre_fault_memory.flags": 16,
    "struct kvm_pre_fault_memory.padding": 24,
    "struct kvm_exit_snp_req_certs": 24,
    "struct kvm_exit_snp_req_certs.gpa": 0,
    "struct kvm_exit_snp_req_certs.npages": 8,
    "struct kvm_exit_snp_req_certs.ret": 16,
    "struct kvm_run.memory_fault": 32,
    "struct kvm_run.snp_req_certs": 32,
    "struct kvm_run.vmgexit": 32,
    "struct kvm_run.memory_fault.flags": 32,
    "struct kvm_run.memory_fault.gpa": 40,
    "struct kvm_run.memory_fault.size": 48,
    "struct kvm_run.snp_req_certs.gpa": 32,
    "struct kvm_run.snp_req_certs.npages": 40,
    "struct kvm_run.snp_req_certs.ret": 48,
    # v15 draft kvm_user_vmgexit, 32 bytes, inside kvm_run at +32 (§1(a); errata A).
    "struct kvm_run.vmgexit.type": 32,
    "struct kvm_run.vmgexit.data_gpa": 40,
    "struct kvm_run.vmgexit.data_npages": 48,
    "struct kvm_run.vmgexit.ret": 56,
    "struct kvm_run.vmgexit.flags": 60,
    "struct kvm_run.vmgexit.status": 61,
}

# kvm-host-abi.md §3.2 (computed with gcc by the reference's author) and §3.3.
REFERENCE_IOCTLS = {
    "KVM_CREATE_VM": 0xAE01, "KVM_CHECK_EXTENSION": 0xAE03, "KVM_GET_VCPU_MMAP_SIZE": 0xAE04,
    "KVM_GET_SUPPORTED_CPUID": 0xC008AE05, "KVM_GET_DEVICE_ATTR": 0x4018AEE2,
    "KVM_HAS_DEVICE_ATTR": 0x4018AEE3, "KVM_CREATE_VCPU": 0xAE41,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46, "KVM_SET_USER_MEMORY_REGION2": 0x40A0AE49,
    "KVM_SET_TSC_KHZ": 0xAEA2, "KVM_ENABLE_CAP": 0x4068AEA3,
    "KVM_MEMORY_ENCRYPT_OP": 0xC008AEBA, "KVM_SET_MEMORY_ATTRIBUTES": 0x4020AED2,
    "KVM_CREATE_GUEST_MEMFD": 0xC040AED4, "KVM_PRE_FAULT_MEMORY": 0xC040AED5,
    "KVM_RUN": 0xAE80, "KVM_GET_REGS": 0x8090AE81, "KVM_SET_REGS": 0x4090AE82,
    "KVM_GET_SREGS": 0x8138AE83, "KVM_SET_SREGS": 0x4138AE84, "KVM_SET_MSRS": 0x4008AE89,
    "KVM_SET_CPUID2": 0x4008AE90, "KVM_SET_XCRS": 0x4188AEA7,
    "KVM_EXIT_MEMORY_FAULT": 39, "KVM_EXIT_SNP_REQ_CERTS": 43, "KVM_X86_SNP_VM": 4,
    "KVM_X86_SEV_SNP_REQ_CERTS": 2, "KVM_SEV_SNP_ENABLE_REQ_CERTS": 103, "KVM_SEV_INIT2": 22,
    "KVM_SYSTEM_EVENT_SEV_TERM": 6, "KVM_HC_MAP_GPA_RANGE": 12,
}
REFERENCE_RUN_OFFSETS = {"immediate_exit": 1, "exit_reason": 8, "_exit": 32,
                         "kvm_valid_regs": 288, "kvm_dirty_regs": 296, "s": 304}

# Every ioctl number / constant uapi.py defines that a header may also define.
CONSTANTS = sorted(n for n in dir(uapi) if n.startswith(("KVM_", "SYNC_REGS"))
                   and isinstance(getattr(uapi, n), int)
                   and n not in ("KVM_EXIT_VMGEXIT_V15", "KVM_RUN_EXIT_OFFSET",
                                 "KVM_MAX_CPUID_ENTRIES"))


def _field_paths(cls: type, prefix: str = "", base: int = 0) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    anon = set(getattr(cls, "_anonymous_", ()))
    for name, ftype in cls._fields_:
        off = base + getattr(cls, name).offset
        if name in anon:
            out += _field_paths(ftype, prefix, off)
            continue
        if name.startswith("_"):
            continue
        path = f"{prefix}{name}"
        out.append((path, off))
        if isinstance(ftype, type) and issubclass(ftype, (C.Structure, C.Union)):
            out += _field_paths(ftype, path + ".", off)
    return out


def _ctypes_figures() -> dict[str, tuple[int, str | None]]:
    """name -> (value, guard macro) for every size and field offset of the ctypes side."""
    figs: dict[str, tuple[int, str | None]] = {}
    for cls, cname, guard in STRUCTS:
        figs[cname] = (C.sizeof(cls), guard)
        for path, off in _field_paths(cls):
            g = guard
            if cls is uapi.kvm_run:
                g = RUN_MEMBER_GUARDS.get(path.split(".")[0], guard)
            figs[f"{cname}.{path}"] = (off, g)
    return figs


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    if shutil.which("gcc") is None or not Path("/usr/include/linux/kvm.h").exists():
        pytest.skip("gcc or <linux/kvm.h> not installed")
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>",
             "#define P(n, v) printf(\"%s=%llu\\n\", n, (unsigned long long)(v))",
             "int main(void) {"]
    for name, (_, guard) in _ctypes_figures().items():
        ctype, _, path = name.partition(".")
        expr = f"offsetof({ctype}, {name[len(ctype) + 1:]})" if path else f"sizeof({ctype})"
        stmt = f'  P("{name}", {expr});'
        lines += [f"#ifdef {guard}", stmt, "#endif"] if guard else [stmt]
    for n in CONSTANTS:
        lines += [f"#ifdef {n}", f'  P("{n}", {n});', "#endif"]
    lines += ["  return 0;", "}"]
    d = tmp_path_factory.mktemp("uapi_probe")
    src, exe = d / "probe.c", d / "probe"
    src.write_text("\n".join(lines) + "\n")
    r = subprocess.run(["gcc", "-o", str(exe), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in (line.split("=", 1) for line in out.splitlines())}


def test_struct_layouts_match_installed_headers(probe: dict[str, int]) -> None:
    """Every size and offset the installed headers define equals the ctypes declaration."""
    ours = _ctypes_figures()
    probed = {k: v for k, v in probe.items() if k in ours}
    assert len(probed) > 150, "the probe checked suspiciously few figures"
    bad = {k: (ours[k][0], v) for k, v in probed.items() if ours[k][0] != v}
    assert not bad, f"ctypes vs <linux/kvm.h> (ours, header): {bad}"
    # The long-stable structs must all have been probed (they are in any 6.x header).
    for _cls, cname, guard in STRUCTS:
        if guard is None:
            assert cname in probed, f"{cname} missing from the probe"


def test_newer_structs_match_reference_figures(probe: dict[str, int]) -> None:
    """Structs the installed headers lack are checked against kvm-host-abi.md figures, and
    every such figure is checked by one side or the other."""
    ours = _ctypes_figures()
    unprobed = [k for k in ours if k not in probe]
    for k in unprobed:
        assert k in REFERENCE, f"{k}: checked by neither the headers nor the reference"
    for k, want in REFERENCE.items():
        assert k in ours, f"reference figure {k} has no ctypes counterpart"
        assert ours[k][0] == want, f"{k}: ctypes {ours[k][0]}, reference {want}"
        if k in probe:  # newer headers on this host: they must agree with the reference too
            assert probe[k] == want, f"{k}: header {probe[k]}, reference {want}"


def test_ioctl_numbers_and_constants(probe: dict[str, int]) -> None:
    """Ioctl numbers and constants equal the header's where it has them, and kvm-host-abi.md's."""
    checked = 0
    for n in CONSTANTS:
        if n in probe:
            assert getattr(uapi, n) == probe[n], f"{n}: ours {getattr(uapi, n):#x}, " \
                                                 f"header {probe[n]:#x}"
            checked += 1
    assert checked >= 40
    for n, want in REFERENCE_IOCTLS.items():
        assert getattr(uapi, n) == want, f"{n}: ours {getattr(uapi, n):#x}, reference {want:#x}"


def test_kvm_run_offsets_and_ioc_size() -> None:
    """kvm_run's fixed offsets (§3.3) and IOC_SIZE of each struct-carrying ioctl."""
    for name, off in REFERENCE_RUN_OFFSETS.items():
        assert getattr(uapi.kvm_run, name).offset == off, name
    assert uapi.IOC_SIZE(uapi.KVM_SET_USER_MEMORY_REGION2) == \
        C.sizeof(uapi.kvm_userspace_memory_region2)
    assert uapi.IOC_SIZE(uapi.KVM_MEMORY_ENCRYPT_OP) == 8  # unsigned long, not kvm_sev_cmd
    assert uapi.IOC_SIZE(uapi.KVM_X86_SET_MSR_FILTER) == 392
    with pytest.raises(uapi.UapiLayoutError):
        uapi.IOC(uapi.IOC_READ, uapi.KVMIO, 1, 1 << 14)
