"""SnpBackend run loop against the fake SNP KVM: each real exit (REQ_CERTS incl. ENOSPC/retry and
immediate_exit, v15 VMGEXIT with NOTIFY_DONE, MAP_GPA_RANGE, MEMORY_FAULT, SEV_TERM in both forms),
the answers KVM reads back, and the certificate lock held until the request reached firmware."""

from __future__ import annotations

import errno
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "guests"))
from guest_build import build_guest  # noqa: E402
from snp_fakes import Exit, FakeSnpKvm, _err  # noqa: E402

from snplab.vmm import memory_map as mm  # noqa: E402
from snplab.vmm import snp, uapi  # noqa: E402
from snplab.vmm.certs import CertResponder  # noqa: E402
from snplab.vmm.guest import Guest, GuestConfig  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed (test guest)")

BLOB = bytes(range(256)) * 24  # 6144 bytes → 2 pages
TERM_MSR = 0x100 | (3 << 12) | (5 << 16)  # GHCB MSR termination: set 3, code 5


# ---- scripted exits -------------------------------------------------------------------------------


def req_certs(gpa: int, npages: int, seen: list, responder=None, exit_no: int = 43) -> Exit:
    def setup(run):
        run.exit_reason = exit_no
        run.snp_req_certs.gpa, run.snp_req_certs.npages, run.snp_req_certs.ret = gpa, npages, 0

    def check(run, fake):
        r = run.snp_req_certs
        seen.append({"ret": r.ret, "npages": r.npages, "immediate_exit": run.immediate_exit,
                     "locks": responder.locks_held if responder else None})
        if r.ret not in (0, errno.ENOSPC, errno.EAGAIN, errno.EIO):
            raise _err(errno.EINVAL)  # snp_complete_req_certs: anything else fails KVM_RUN

    return Exit(setup, check, label="req_certs")


def map_gpa_range(gpa: int, npages: int, private: bool, seen: list) -> Exit:
    def setup(run):
        run.exit_reason = uapi.KVM_EXIT_HYPERCALL
        hc = run.hypercall
        hc.nr, hc.ret = uapi.KVM_HC_MAP_GPA_RANGE, 0
        hc.args[0], hc.args[1], hc.args[2] = gpa, npages, uapi.KVM_MAP_GPA_RANGE_ENCRYPTED if private else 0

    def check(run, fake):
        gfns = range(gpa // 4096, gpa // 4096 + npages)
        seen.append({"ret": run.hypercall.ret, "private_now": all(g in fake.private for g in gfns),
                     "shared_now": not any(g in fake.private for g in gfns)})

    return Exit(setup, check, label="map_gpa_range")


def memory_fault(gpa: int, private: bool, seen: list) -> Exit:
    def setup(run):
        run.exit_reason = uapi.KVM_EXIT_MEMORY_FAULT
        mf = run.memory_fault
        mf.flags, mf.gpa, mf.size = uapi.KVM_MEMORY_EXIT_FLAG_PRIVATE if private else 0, gpa, 4096

    def check(run, fake):
        seen.append({"private_now": gpa // 4096 in fake.private})

    return Exit(setup, check, errno_=errno.EFAULT, label="memory_fault")


def sev_term(data0: int) -> Exit:
    def setup(run):
        run.exit_reason = uapi.KVM_EXIT_SYSTEM_EVENT
        se = run.system_event
        se.type, se.ndata = uapi.KVM_SYSTEM_EVENT_SEV_TERM, 1
        se.data[0] = data0

    return Exit(setup, None, label="sev_term")


def ghcb_sev_term(memory, ghcb_gpa: int) -> Exit:
    """NAE 0x8000FFFE as KVM reports it: svm_vmgexit_success(svm, 0) zeroes SW_EXITINFO1/2 in the
    mapped GHCB first, then SEV_TERM with data[0] = the GHCB GPA."""
    inner = sev_term(ghcb_gpa)

    def setup(run):
        memory.write_u64(ghcb_gpa + 0x398, 0)  # SW_EXITINFO1
        memory.write_u64(ghcb_gpa + 0x3A0, 0)  # SW_EXITINFO2
        inner.setup(run)

    return Exit(setup, None, label="ghcb_sev_term")


def vmgexit_v15(gpa: int, npages: int, status: int, seen: list) -> Exit:
    def setup(run):
        run.exit_reason = uapi.KVM_EXIT_VMGEXIT_V15
        v = run.vmgexit
        v.type, v.data_gpa, v.data_npages, v.ret, v.flags, v.status = 1, gpa, npages, 0, 0, status

    def check(run, fake):
        v = run.vmgexit
        seen.append({"ret": v.ret, "npages": v.data_npages, "flags": v.flags})

    return Exit(setup, check, label="vmgexit")


# ---- harness --------------------------------------------------------------------------------------


def run_guest(tmp_path, scripts, *, abi="req-certs", nvcpus=1, answers=(), exit_no=None, attach=True):
    fake = FakeSnpKvm(partial=64, cpuid_reject="never")
    backend = snp.SnpBackend(abi=abi, ioctl=fake, sev_path="/dev/sev", c_bit=51, req_certs_exit=exit_no,
                             headers_root="/nonexistent")
    g = Guest(GuestConfig(elf=build_guest(), nvcpus=nvcpus, timeout_s=5.0), backend, io=fake)
    blob = tmp_path / "blob.bin"
    blob.write_bytes(BLOB)
    responder = CertResponder(blob, answers)
    g.prepare()
    if attach:
        responder.attach(g)
    g.launch()
    made = scripts(g, responder)
    fake.scripts = {i: list(s) for i, s in made.items()}
    result = g.run()
    return g, fake, responder, result


def test_req_certs_enospc_then_success_with_immediate_exit(tmp_path):
    certs_gpa = mm.certs_gpa(0)
    seen: list = []
    pf: list = []

    def scripts(g, responder):
        return {0: [map_gpa_range(mm.SHARED_GPA, (mm.SHARED_END - mm.SHARED_GPA) // 4096, False, pf),
                    req_certs(certs_gpa, 1, seen, responder),
                    req_certs(certs_gpa, 2, seen, responder),
                    sev_term(TERM_MSR)]}

    g, fake, responder, result = run_guest(tmp_path, scripts)
    try:
        assert result.status == "ok", result.error
        assert pf == [{"ret": 0, "private_now": False, "shared_now": True}]
        enospc, ok = seen
        # ENOSPC never reaches firmware: no lock kept; ret 0: the shared lock is still held while
        # KVM completes the request (immediate_exit set), and dropped after the EINTR
        assert enospc == {"ret": errno.ENOSPC, "npages": 2, "immediate_exit": 1, "locks": 0}
        assert ok == {"ret": 0, "npages": 2, "immediate_exit": 1, "locks": 1}
        # the completing KVM_RUN with immediate_exit returned EINTR, then the lock was dropped
        runs = [c.detail for c in fake.calls if c.name == "KVM_RUN"]
        assert sum(1 for d in runs if d.get("immediate_exit")) == 2
        assert responder.locks_held == 0
        assert g.memory.read(certs_gpa, len(BLOB)) == BLOB
        rec = [r.to_json() for r in responder.records]
        assert [(r["ret"], r["npages_out"]) for r in rec] == [(errno.ENOSPC, 2), (0, 0)]
        v = result.vcpus[0]
        assert v["status"] == "terminated" and v["rip"] is None  # protected state: no RIP
        term = [e for e in result.events.to_json() if e["kind"] == "SevTerm"]
        assert term and term[0]["reason_set"] == 3 and term[0]["reason_code"] == 5
    finally:
        g.close()


@pytest.mark.parametrize("answer,ret", [("EAGAIN", errno.EAGAIN), ("EIO", errno.EIO)])
def test_req_certs_scripted_errors_reach_kvm(tmp_path, answer, ret):
    seen: list = []
    g, fake, responder, result = run_guest(
        tmp_path, lambda g, r: {0: [req_certs(mm.certs_gpa(0), 8, seen, r), sev_term(TERM_MSR)]}, answers=(answer,))
    try:
        assert result.status == "ok" and seen[0]["ret"] == ret and seen[0]["locks"] == 0
    finally:
        g.close()


def test_invalid_ret_fails_kvm_run(tmp_path):
    seen: list = []
    g, fake, responder, result = run_guest(
        tmp_path, lambda g, r: {0: [req_certs(mm.certs_gpa(0), 8, seen, r), sev_term(TERM_MSR)]}, answers=("ret:99",))
    try:
        assert seen[0]["ret"] == 99
        assert result.status == "kvm-run-error" and result.vcpus[0]["errno"] == errno.EINVAL
    finally:
        g.close()


def test_req_certs_on_renumbered_exit(tmp_path):
    seen: list = []
    g, fake, responder, result = run_guest(
        tmp_path, lambda g, r: {0: [req_certs(mm.certs_gpa(0), 2, seen, r, exit_no=42), sev_term(TERM_MSR)]},
        exit_no=42)
    try:
        assert result.status == "ok" and seen[0]["ret"] == 0
    finally:
        g.close()


def test_stub_profile_has_no_certificate_exit(tmp_path):
    seen: list = []
    g, fake, responder, result = run_guest(
        tmp_path, lambda g, r: {0: [req_certs(mm.certs_gpa(0), 2, seen, r), sev_term(TERM_MSR)]}, abi="stub")
    try:
        assert result.status == "unhandled-exit" and "43" in result.error
        assert uapi.KVM_SEV_SNP_ENABLE_REQ_CERTS not in [c["id"] for c in fake.sev_cmds]
    finally:
        g.close()


def test_v15_vmgexit_notify_done(tmp_path):
    seen: list = []

    def scripts(g, responder):
        return {0: [vmgexit_v15(mm.certs_gpa(0), 1, 0, seen),   # too small → INVALID_LEN (1), npages 2
                    vmgexit_v15(mm.certs_gpa(0), 2, 0, seen),   # fits → ret 0, NOTIFY_DONE requested
                    vmgexit_v15(mm.certs_gpa(0), 2, 1, seen),   # KVM: status DONE after the firmware call
                    sev_term(TERM_MSR)]}

    g, fake, responder, result = run_guest(tmp_path, scripts, abi="vmgexit-v15")
    try:
        assert result.status == "ok", result.error
        assert seen[0]["ret"] == 1 and seen[0]["npages"] == 2
        assert seen[1]["ret"] == 0 and seen[1]["flags"] & uapi.KVM_USER_VMGEXIT_REQ_CERTS_FLAGS_NOTIFY_DONE
        assert responder.locks_held == 0 and len(responder.records) == 2
        assert uapi.KVM_SEV_SNP_ENABLE_REQ_CERTS not in [c["id"] for c in fake.sev_cmds]
    finally:
        g.close()


def test_memory_fault_and_ghcb_termination_on_two_vcpus(tmp_path):
    faults: list = []
    pscs: list = []

    def scripts(g, responder):
        ghcb = mm.ghcb_gpa(1)
        g.memory.write_u64(ghcb + 0x398, 3 | (7 << 4))  # the guest's reason: set 3, code 7
        return {0: [memory_fault(mm.shared_slice(0), False, faults),  # shared access to a private page
                    memory_fault(mm.shared_slice(0), True, faults),   # and back
                    sev_term(TERM_MSR)],
                1: [map_gpa_range(mm.shared_slice(1), 16, False, pscs),
                    ghcb_sev_term(g.memory, ghcb)]}

    g, fake, responder, result = run_guest(tmp_path, scripts, nvcpus=2)
    try:
        assert result.status == "ok", result.error
        assert faults == [{"private_now": False}, {"private_now": True}]
        assert pscs[0]["ret"] == 0 and pscs[0]["shared_now"]
        terms = {e["vcpu"]: e for e in result.events.to_json() if e["kind"] == "SevTerm"}
        # KVM zeroed the reason before exiting: the VMM knows only that vCPU 1 used its GHCB
        assert (terms[1]["reason_set"], terms[1]["reason_code"], terms[1]["raw"]) == (-1, -1, mm.ghcb_gpa(1))
        assert g.memory.read_u64(mm.ghcb_gpa(1) + 0x398) == 0
        assert (terms[0]["reason_set"], terms[0]["reason_code"], terms[0]["raw"]) == (3, 5, TERM_MSR)
        assert [v["status"] for v in result.vcpus] == ["terminated", "terminated"]
    finally:
        g.close()


def test_map_gpa_range_outside_ram_is_einval(tmp_path):
    pscs: list = []
    g, fake, responder, result = run_guest(
        tmp_path, lambda g, r: {0: [map_gpa_range(1 << 40, 1, False, pscs), sev_term(TERM_MSR)]})
    try:
        assert result.status == "ok" and pscs[0]["ret"] == errno.EINVAL
    finally:
        g.close()
