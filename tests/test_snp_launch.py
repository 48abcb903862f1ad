"""SnpBackend launch sequence against a fake KVM that answers like an SNP host (tests/snp_fakes.py):
order, SEV command ids, struct bytes, the /dev/sev fd, guest_memfd memslots, private attributes,
partial LAUNCH_UPDATE progress, the CPUID-page correction, and that the launch log the VMM
records (from which snplab.attest.measure predicts MEASUREMENT) is exactly what KVM received."""

from __future__ import annotations

import shutil
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "guests"))
from guest_build import build_guest  # noqa: E402
from snp_fakes import FakeSnpKvm  # noqa: E402

from snplab.attest import measure  # noqa: E402
from snplab.vmm import memory_map as mm  # noqa: E402
from snplab.vmm import snp, uapi  # noqa: E402
from snplab.vmm.errors import GuestSetupError  # noqa: E402
from snplab.vmm.guest import Guest, GuestConfig  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed (test guest)")

HOST_DATA = bytes(range(32))


def make_guest(fake: FakeSnpKvm, nvcpus: int = 2, abi: str = "req-certs", policy: int = 0x30000, **kw) -> Guest:
    backend = snp.SnpBackend(abi=abi, ioctl=fake, sev_path="/dev/sev", req_certs_exit=kw.pop("exit", None),
                             headers_root=kw.pop("headers_root", "/nonexistent"), **kw)
    return Guest(GuestConfig(elf=build_guest(), nvcpus=nvcpus, policy=policy, host_data=HOST_DATA), backend, io=fake)


@pytest.fixture
def launched():
    fake = FakeSnpKvm()
    g = make_guest(fake)
    g.prepare()
    g.launch()
    yield g, fake
    g.close()


def sev_ids(fake):
    return [c["id"] for c in fake.sev_cmds]


def test_call_order(launched):
    g, fake = launched
    names = fake.names()
    first = [n for n in names if n not in ("KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE")]
    i_vm = first.index("KVM_CREATE_VM")
    expect_prefix = ["KVM_CREATE_VM", "KVM_MEMORY_ENCRYPT_OP", "KVM_MEMORY_ENCRYPT_OP", "KVM_ENABLE_CAP",
                     "KVM_CREATE_GUEST_MEMFD", "KVM_SET_USER_MEMORY_REGION2", "KVM_SET_MEMORY_ATTRIBUTES"]
    assert first[i_vm:i_vm + len(expect_prefix)] == expect_prefix
    assert "KVM_SET_USER_MEMORY_REGION" not in names
    # vCPUs after ENABLE_REQ_CERTS, LAUNCH_* after the vCPUs' state
    last_vcpu_state = max(i for i, n in enumerate(names) if n in ("KVM_SET_REGS", "KVM_SET_SREGS"))
    first_launch = [i for i, c in enumerate(c for c in fake.calls if c.fd_kind.split(":")[0] in ("kvm", "vm", "vcpu"))
                    if c.name == "KVM_MEMORY_ENCRYPT_OP" and c.detail.get("id") == uapi.KVM_SEV_SNP_LAUNCH_START]
    assert first_launch and first_launch[0] > last_vcpu_state
    assert names.count("KVM_CREATE_VCPU") == 2


def test_sev_commands_ids_fd_and_bytes(launched):
    g, fake = launched
    ids = sev_ids(fake)
    assert ids[:3] == [uapi.KVM_SEV_INIT2, uapi.KVM_SEV_SNP_ENABLE_REQ_CERTS, uapi.KVM_SEV_SNP_LAUNCH_START]
    assert ids[-1] == uapi.KVM_SEV_SNP_LAUNCH_FINISH
    assert set(ids[3:-1]) == {uapi.KVM_SEV_SNP_LAUNCH_UPDATE}
    assert (22, 103, 100, 101, 102) == (uapi.KVM_SEV_INIT2, uapi.KVM_SEV_SNP_ENABLE_REQ_CERTS,
                                        uapi.KVM_SEV_SNP_LAUNCH_START, uapi.KVM_SEV_SNP_LAUNCH_UPDATE,
                                        uapi.KVM_SEV_SNP_LAUNCH_FINISH)
    sev_fd = g.backend.sev_fd
    assert sev_fd is not None and {c["sev_fd"] for c in fake.sev_cmds} == {sev_fd}
    init = fake.sev_cmds[0]["data"]
    assert init == bytes(48)  # vmsa_features 0, flags 0, ghcb_version 0 (→ 2)
    start = fake.sev_cmds[2]["data"]
    assert struct.unpack_from("<Q", start)[0] == 0x30000 and start[8:] == bytes(56)
    finish = fake.sev_cmds[-1]["data"]
    assert len(finish) == 88 and finish[19:51] == HOST_DATA
    assert finish[:19] == bytes(19) and finish[51:] == bytes(88 - 51)  # no ID block, no auth, flags 0
    first_update = fake.sev_cmds[3]["data"]
    gfn, uaddr, length, ptype = struct.unpack_from("<QQQB", first_update)
    assert (gfn, length, ptype) == (mm.PML4_GPA // 4096, 4 * 4096, 1)
    assert uaddr == g.memory.hva(mm.PML4_GPA) and uaddr % 4096 == 0


def test_enable_cap_memslots_and_attributes(launched):
    g, fake = launched
    cap = next(c for c in fake.calls if c.name == "KVM_ENABLE_CAP")
    assert cap.detail["cap"] == uapi.KVM_CAP_EXIT_HYPERCALL == 201
    assert cap.detail["args"] == [1 << 12, 0, 0, 0]
    gmem = next(c for c in fake.calls if c.name == "KVM_CREATE_GUEST_MEMFD")
    assert gmem.detail == {"size": g.config.ram_size, "flags": 0}
    (slot,) = fake.memslots
    assert slot["flags"] == uapi.KVM_MEM_GUEST_MEMFD and slot["guest_memfd"] in g.backend.gmem_fds
    assert (slot["gpa"], slot["size"], slot["uaddr"]) == (0, g.config.ram_size, g.memory.hva(0))
    attrs = [c.detail for c in fake.calls if c.name == "KVM_SET_MEMORY_ATTRIBUTES"]
    assert attrs[0] == {"address": 0, "size": g.config.ram_size, "attributes": uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE}


def test_every_range_launched_once_with_the_logged_bytes(launched):
    g, fake = launched
    expected = {}
    for rec in g.launch_log:
        j = rec.to_json()
        for i in range(rec.npages):
            digest = j["sha384"][i] if "sha384" in j else None
            expected[rec.gpa // 4096 + i] = (int(rec.page_type), digest)
    assert fake.launched == expected
    assert fake.launch_order == sorted(fake.launch_order)  # increasing GPA order
    # partial progress: 3 pages per call, so ranges of more than 3 pages took several calls
    updates = [c for c in fake.sev_cmds if c["id"] == uapi.KVM_SEV_SNP_LAUNCH_UPDATE]
    total_pages = sum(r.npages for r in g.launch_log)
    assert len(updates) >= -(-total_pages // 3)
    stacks = [c for c in updates if c["gfn"] >= mm.STACKS_GPA // 4096 and c["type"] == 3]
    assert [c["len"] for c in stacks][:3] == [8 * 4096, 5 * 4096, 2 * 4096]  # 2 vCPUs × 4 pages, 3 at a time


def test_cpuid_page_built_like_qemu_is_accepted_first(launched):
    """D5: the page sent first is QEMU's (sev_snp_cpuid_info_fill + sev_snp_mask_cpuid_features),
    which a firmware that checks CPUID values accepts on the first attempt; the record says so."""
    g, fake = launched
    cpuid = [c for c in fake.sev_cmds if c["id"] == uapi.KVM_SEV_SNP_LAUNCH_UPDATE and c["type"] == 6]
    assert len(cpuid) == 1 and not fake.cpuid_attempts and not g.backend.cpuid_corrections
    assert g.backend.cpuid_launched == snp.CPUID_FIRST_ATTEMPT
    assert g.backend.to_json()["cpuid_launched"] == "first attempt"
    rec = next(c for c in g.backend.commands if c.detail.get("type") == "CPUID")
    assert rec.detail["cpuid_launched"] == "first attempt" and rec.detail["calls"] == 1
    from snplab.abi import cpuid_page as cp

    ents = {e.key: e for e in cp.parse_page(g.backend.cpuid_page_sent)}
    assert ents[(1, 0)].ecx & (1 << 24) == 0 and ents[(1, 0)].ecx == 0x7FD8320B & ~(1 << 24)
    assert ents[(7, 0)].ebx & 0x2 == 0 and ents[(7, 0)].edx & 0xFC000000 == 0
    assert ents[(7, 0)].edx == 0x10 and ents[(7, 1)].eax == 0x20  # 7.1 kept (significant index)
    assert ents[(0x80000008, 0)].ebx == 0x2B91D205 & ~(1 << 25)
    for sub in (0, 1):
        e = ents[(0xD, sub)]
        assert (e.ebx, e.xcr0_in, e.xss_in) == (0x240, 1, 0)
    assert all(e.xcr0_in == 0 for k, e in ents.items() if k[0] != 0xD)
    # ecx_in only where KVM flags the index as significant (0x8000_0008 is not flagged)
    assert all(k[1] == 0 for k in ents if k[0] not in (7, 0xD))


def test_cpuid_page_corrected_once():
    """The fallback: the firmware refuses the page, KVM copies its correction back, the
    corrected page launches, and the record names the firmware-corrected retry."""
    fake = FakeSnpKvm(cpuid_reject="always")
    g = make_guest(fake)
    g.prepare()
    g.launch()
    cpuid = [c for c in fake.sev_cmds if c["id"] == uapi.KVM_SEV_SNP_LAUNCH_UPDATE and c["type"] == 6]
    assert len(cpuid) == 2  # rejected with INVALID_PARAM, then accepted with the firmware's page
    assert g.backend.cpuid_launched == snp.CPUID_FIRMWARE_CORRECTED
    (corr,) = g.backend.cpuid_corrections
    assert corr["gpa"] == mm.CPUID_GPA and len(corr["changed"]) == 1
    change = corr["changed"][0]
    assert change["function"] == 0 and change["sent"][1] ^ change["firmware"][1] == 1
    assert g.memory.read(mm.CPUID_GPA, 4096) == fake.cpuid_firmware
    # what we sent first was built from KVM_GET_SUPPORTED_CPUID, minus the hypervisor leaves
    sent = snp.parse_cpuid_page(g.backend.cpuid_page_sent)
    assert (0x8000001F, 0) in [(f, i) for f, i, *_ in sent] and all(f != 0x40000000 for f, *_ in sent)
    g.close()


def test_log_predicts_what_kvm_measured(launched):
    """MEASUREMENT predicted from the VMM's launch log == predicted from what the fake KVM received
    (pages as launched, vCPU state as set by KVM_SET_REGS/SREGS)."""
    g, fake = launched
    log = {"updates": [r.to_json() for r in g.launch_log], "vcpus": [s.to_json() for s in g.vcpu_states]}
    from_log = measure.predict_measurement(measure.launch_log_from_json(log))

    from_kvm = measure.predict_measurement(measure.launch_log_from_json(fake.measured_launch_log()))
    assert from_log == from_kvm
    assert g.launcher.measurement is None  # real KVM does not expose the digest


def test_c_bit_from_kvm_cpuid_and_page_tables():
    fake = FakeSnpKvm(c_bit=47)
    g = make_guest(fake, nvcpus=1)
    try:
        assert g.backend.c_bit_mask == 1 << 47
        g.prepare()
        g.launch()
        pml4 = struct.unpack_from("<Q", g.memory.read(mm.PML4_GPA, 8))[0]
        assert pml4 & (1 << 47)
    finally:
        g.close()


def test_enable_req_certs_late_is_refused_by_kvm():
    """D1: with enable_req_certs="late" the backend issues command 103 after the last vCPU exists;
    KVM (here the fake, enforcing kvm->created_vcpus) says EINVAL and the backend records it."""
    fake = FakeSnpKvm()
    g = make_guest(fake, nvcpus=2, enable_req_certs="late")
    try:
        g.prepare()
        assert uapi.KVM_SEV_SNP_ENABLE_REQ_CERTS not in sev_ids(fake)  # not before the vCPUs
        g.launch()
        names = fake.names()
        i_103 = next(i for i, c in enumerate(c for c in fake.calls if c.fd_kind.split(":")[0] in ("kvm", "vm", "vcpu"))
                     if c.name == "KVM_MEMORY_ENCRYPT_OP" and c.detail.get("id") == uapi.KVM_SEV_SNP_ENABLE_REQ_CERTS)
        assert names[:i_103].count("KVM_CREATE_VCPU") == 2
        assert not fake.req_certs_enabled
        err = g.backend.enable_req_certs_error
        assert err and "KVM_SEV_SNP_ENABLE_REQ_CERTS" in err and "EINVAL" in err
        rec = next(c for c in g.backend.commands if c.id == uapi.KVM_SEV_SNP_ENABLE_REQ_CERTS)
        assert rec.rc == -22 and rec.detail == {"after_vcpus": 2}
    finally:
        g.close()


@pytest.mark.parametrize("attr,expect", [(1, "req-certs"), (None, "stub"), (0, "stub")])
def test_abi_auto_detection(attr, expect):
    fake = FakeSnpKvm(req_certs_attr=attr)
    g = make_guest(fake, nvcpus=1, abi="auto", c_bit=51)
    try:
        g.prepare()
        assert g.backend.abi == expect
        assert (uapi.KVM_SEV_SNP_ENABLE_REQ_CERTS in sev_ids(fake)) == (expect == "req-certs")
    finally:
        g.close()
    assert snp.detect_abi("/dev/kvm", io=FakeSnpKvm(req_certs_attr=attr)) == expect


@pytest.mark.parametrize("abi,exit_no,expect", [
    ("req-certs", None, {43}), ("req-certs", 42, {42}), ("vmgexit-v15", None, {40}), ("stub", None, set())])
def test_exit_decoders_per_abi(abi, exit_no, expect):
    g = make_guest(FakeSnpKvm(), nvcpus=1, abi=abi, c_bit=51, exit=exit_no)
    try:
        g.prepare()
        cert_exits = {n for n in g.exit_decoders if n in (40, 42, 43)}
        assert cert_exits == expect
        assert uapi.KVM_EXIT_HYPERCALL in g.exit_decoders and uapi.KVM_EXIT_MEMORY_FAULT in g.exit_decoders
    finally:
        g.close()


def test_exit_number_from_headers(tmp_path):
    inc = tmp_path / "usr/include/linux"
    inc.mkdir(parents=True)
    (inc / "kvm.h").write_text("#define KVM_EXIT_SNP_REQ_CERTS 44\n")
    assert snp.SnpBackend(abi="req-certs", headers_root=str(tmp_path), c_bit=51).req_certs_exit == 44
    assert snp.SnpBackend(abi="req-certs", headers_root=str(tmp_path), req_certs_exit=43, c_bit=51).req_certs_exit == 43
    assert snp.SnpBackend(abi="req-certs", headers_root=str(tmp_path / "none"), c_bit=51).req_certs_exit == 43


def test_firmware_failure_is_a_typed_error_and_fds_close():
    fake = FakeSnpKvm(fail_update_at=0x100000)
    g = make_guest(fake, nvcpus=1, c_bit=51)
    g.prepare()
    with pytest.raises(snp.SnpLaunchError) as e:
        g.launch()
    assert e.value.command == "KVM_SEV_SNP_LAUNCH_UPDATE" and e.value.fw_error == 0x1A
    assert "gpa 0x100000" in str(e.value)
    g.close()
    g.backend.close()
    assert not [k for k in fake.fds.values() if k in ("sev", "gmem")]


def test_policy_rejected_by_kvm():
    g = make_guest(FakeSnpKvm(), nvcpus=1, policy=0x10000, c_bit=51)  # RSVD_MBO (bit 17) missing
    g.prepare()
    with pytest.raises(snp.SnpLaunchError, match="KVM_SEV_SNP_LAUNCH_START: Invalid argument"):
        g.launch()
    g.close()


def test_bad_arguments():
    with pytest.raises(GuestSetupError):
        snp.SnpBackend(abi="v16")
    with pytest.raises(GuestSetupError):
        snp.SnpBackend(cpuid_table="host")


def test_unavailable_reason_and_cpuid_page_roundtrip():
    assert snp.unavailable_reason("/dev/kvm", "/dev/sev", io=FakeSnpKvm()) is None
    entries = [(0, 0, 1, 2, 3, 4), (0xD, 1, 5, 6, 7, 8)]
    page = snp.cpuid_page(entries)
    assert len(page) == 4096 and snp.parse_cpuid_page(page) == entries
    assert struct.unpack_from("<Q", page, 0x10 + 48 + 8)[0] == 1  # xcr0_in for leaf 0xD subleaf 1
    assert len(snp.parse_cpuid_page(snp.cpuid_page([(i, 0, 0, 0, 0, 0) for i in range(100)]))) == 64


@pytest.mark.skipif(Path("/dev/sev").exists(), reason="this machine has /dev/sev")
def test_this_machine_is_not_an_snp_host():
    """The snp platform refuses to start here with a one-line reason."""
    from snplab.platform import PlatformUnavailable, get_platform

    reason = snp.unavailable_reason()
    assert reason and "\n" not in reason
    with pytest.raises(PlatformUnavailable):
        get_platform("snp", certs_blob="/nonexistent")
