"""Emulated KVM GHCB handling: MSR protocol, GHCB validation codes (newest vs 7.0), page-state changes
(MSR and NAE) as MapGpaRange exits + RMP updates, PVALIDATE, termination, the RMP's shared view."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from emu_refguest import CERTS_MAX_PAGES, PAGE, RAM, RefGuest, RefHost

from snplab.abi import ghcb as G
from snplab.emu.ghcb import SEV_STATUS_VALUE, SNP_CBIT_POSITION
from snplab.vmm.errors import IoctlError
from snplab.vmm.events import KvmRunError, MapGpaRange, ReqCerts, SevTerm
from snplab.vmm.exits import sev_term_event

MALFORMED = G.GHCB_HV_RESP_MALFORMED_INPUT


def _guest(tmp_path: Path, setup: bool = True, **kw) -> tuple[RefHost, RefGuest]:
    host = RefHost(tmp_path, **kw)
    guest = RefGuest(host)
    if setup:
        guest.setup()
    return host, guest


def test_msr_protocol_answers(tmp_path: Path) -> None:
    host, g = _guest(tmp_path, setup=False)
    assert g.rdmsr(G.MSR_AMD64_SEV) == SEV_STATUS_VALUE
    assert g.wrmsr(G.MSR_AMD64_SEV, 0) is False  # read-only: #GP
    assert g.msr_call(G.GHCB_MSR_SEV_INFO_REQ) == (2 << 48) | (1 << 32) | (SNP_CBIT_POSITION << 24) | 0x001
    assert g.msr_call(G.GHCB_MSR_HV_FT_REQ) == (G.GHCB_HV_FT_SUPPORTED << 12) | 0x081
    assert g.msr_call(G.GHCB_MSR_PREF_GPA_REQ) == (G.GHCB_MSR_PREF_GPA_NONE << 12) | 0x011
    assert g.msr_call(0x016) == 0x016  # VMPL request: not KVM's, MSR left as is
    assert g.msr_call(0x004 | (1 << 32)) == 0x004 | (1 << 32)  # CPUID without a CPUID source
    assert g.msr_call(G.reg_gpa_req(0x400)) == (0x400 << 12) | 0x013
    assert host.kvm.state(0).registered_gpa == 0x400000


def test_msr_page_state_change(tmp_path: Path) -> None:
    host, g = _guest(tmp_path, setup=False)
    gpa = 0x500000
    assert g.pvalidate(gpa, False) == (0, True)  # not validated yet: no RMP update (CF)
    assert g.msr_call(G.psc_req(gpa >> 12, G.SNP_PAGE_STATE_SHARED)) == G.GHCB_MSR_PSC_RESP
    ev = host.of_kind(MapGpaRange)[-1]["event"]
    assert (ev.gpa, ev.npages, ev.attrs) == (gpa, 1, 0)
    assert not host.rmp.is_private(gpa)
    assert g.msr_call(G.psc_req(gpa >> 12, G.SNP_PAGE_STATE_PRIVATE)) == G.GHCB_MSR_PSC_RESP
    assert host.of_kind(MapGpaRange)[-1]["event"].attrs == 0x10
    assert host.rmp.is_private(gpa) and not host.rmp.is_validated(gpa)
    n = len(host.of_kind(MapGpaRange))
    assert g.msr_call(G.psc_req(gpa >> 12, 3)) == G.GHCB_MSR_PSC_RESP_ERROR  # bad op: no exit
    assert len(host.of_kind(MapGpaRange)) == n
    host.map_answer = lambda ev: errno.EINVAL
    assert g.msr_call(G.psc_req(gpa >> 12, G.SNP_PAGE_STATE_SHARED)) == G.GHCB_MSR_PSC_RESP_ERROR
    assert host.rmp.is_private(gpa), "a refused conversion leaves the RMP alone"
    host.map_answer = lambda ev: 99
    with pytest.raises(KvmRunError) as e:
        g.msr_call(G.psc_req(gpa >> 12, G.SNP_PAGE_STATE_SHARED))
    assert e.value.errno == errno.EINVAL


def test_msr_psc_odd_ret_on_7_0_is_a_psc_error(tmp_path: Path) -> None:
    host, g = _guest(tmp_path, setup=False, kernel="7.0")
    host.map_answer = lambda ev: 99
    assert g.msr_call(G.psc_req(0x500, G.SNP_PAGE_STATE_SHARED)) == G.GHCB_MSR_PSC_RESP_ERROR


def test_setup_converts_the_window(tmp_path: Path) -> None:
    host, g = _guest(tmp_path)
    for gpa in (g.ghcb_gpa, g.req_gpa, g.resp_gpa, g.certs_gpa, g.certs_gpa + (CERTS_MAX_PAGES - 1) * PAGE):
        assert not host.rmp.is_private(gpa)
    assert host.rmp.is_private(g.certs_gpa + CERTS_MAX_PAGES * PAGE)
    maps = [e["event"] for e in host.of_kind(MapGpaRange)]
    # req and resp pages are adjacent entries with the same op: coalesced into one exit
    assert [(m.gpa, m.npages) for m in maps] == [(g.ghcb_gpa, 1), (g.req_gpa, 2), (g.certs_gpa, CERTS_MAX_PAGES)]
    hdr = G.PscHdr.unpack(g.mem.read(g.ghcb_gpa + 0x800, 8))
    assert hdr.cur_entry == hdr.end_entry + 1
    e0 = G.PscEntry.from_u64(g.ghcb_u64(0x808))
    assert e0.cur_page == 1


@pytest.mark.parametrize("abi,kernel,misaligned", [
    ("req-certs", "newest", G.GHCB_ERR_INVALID_INPUT), ("req-certs", "7.0", G.GHCB_ERR_MISSING_INPUT),
    ("stub", "6.11-stub", G.GHCB_ERR_MISSING_INPUT)])
def test_ghcb_validation_codes(tmp_path: Path, abi: str, kernel: str, misaligned: int) -> None:
    host, g = _guest(tmp_path, abi=abi, kernel=kernel)
    req, resp = g.req_gpa, g.resp_gpa
    assert g.ghcb_call(G.SVM_VMGEXIT_GUEST_REQUEST, req, resp, usage=1) == (MALFORMED, G.GHCB_ERR_INVALID_USAGE)
    assert g.ghcb_call(G.SVM_VMGEXIT_GUEST_REQUEST, req, resp, mark=("sw_exit_code", "sw_exit_info_1")) == \
        (MALFORMED, G.GHCB_ERR_MISSING_INPUT)
    assert g.ghcb_call(0x8000_0099, 0, 0) == (MALFORMED, G.GHCB_ERR_INVALID_EVENT)
    assert g.ghcb_call(G.SVM_VMGEXIT_GUEST_REQUEST, req + 8, resp) == (MALFORMED, misaligned)
    assert g.ghcb_call(G.SVM_VMGEXIT_GUEST_REQUEST, req, req) == (MALFORMED, misaligned)
    assert g.ghcb_call(G.SVM_VMGEXIT_PSC, 0, 0) == (MALFORMED, G.GHCB_ERR_MISSING_INPUT)  # no scratch
    assert g.ghcb_call(G.SVM_VMGEXIT_HV_FEATURES, 0, 0) == (0, G.GHCB_HV_FT_SUPPORTED)
    assert not host.psp.message_log, "no malformed call reached the firmware"
    # KVM clears the bitmap, then marks what it wrote back: RAX..RDX and the two exit infos
    bitmap = int.from_bytes(g.mem.read(g.ghcb_gpa + G.GHCB_VALID_BITMAP_OFFSET, 16), "little")
    want = sum(1 << G.ghcb_bitmap_idx(G.GHCB_FIELD_OFFSETS[n])
               for n in ("rax", "rbx", "rcx", "rdx", "sw_exit_info_1", "sw_exit_info_2"))
    assert bitmap == want


def test_ext_request_register_checks(tmp_path: Path) -> None:
    host, g = _guest(tmp_path)
    r = g.request(no_rax_valid=True)
    assert (r.attempts[0].info1, r.attempts[0].info2) == (MALFORMED, G.GHCB_ERR_INVALID_INPUT)
    r = g.request(certs_gpa=g.certs_gpa + 8)
    assert (r.attempts[0].info1, r.attempts[0].info2) == (MALFORMED, G.GHCB_ERR_INVALID_INPUT)
    assert not host.of_kind(ReqCerts) and host.psp.next_seqno(0) == 1
    _, v15 = _guest(tmp_path / "v15", abi="vmgexit-v15")
    r = v15.request(no_rbx_valid=True)
    assert (r.attempts[0].info1, r.attempts[0].info2) == (MALFORMED, G.GHCB_ERR_MISSING_INPUT)


@pytest.mark.parametrize("abi,kernel,fatal", [("req-certs", "newest", False), ("req-certs", "7.0", True),
                                              ("vmgexit-v15", "v15", True), ("stub", "6.11-stub", True)])
def test_unregistered_ghcb(tmp_path: Path, abi: str, kernel: str, fatal: bool) -> None:
    host, g = _guest(tmp_path, abi=abi, kernel=kernel)
    assert g.ghcb_call(G.SVM_VMGEXIT_HV_FEATURES, 0, 0, rax=0xAAAA, rbx=0xBBBB) == (0, G.GHCB_HV_FT_SUPPORTED)
    other = g.private_gpa + 0x1000  # any page but the registered one
    g.mem.write(other, bytes(PAGE))
    host.rmp.set_shared(other, 1)
    if fatal:
        with pytest.raises(KvmRunError) as e:
            g.ghcb_call(G.SVM_VMGEXIT_HV_FEATURES, 0, 0, rax=0x5555, ghcb_gpa=other)
        assert e.value.errno == errno.EINVAL
        # sev_es_sync_from_ghcb ran before the check: the page's valid bitmap is cleared
        assert g.mem.read(other + G.GHCB_VALID_BITMAP_OFFSET, 16) == bytes(16)
        return
    assert g.ghcb_call(G.SVM_VMGEXIT_HV_FEATURES, 0, 0, rax=0x5555, ghcb_gpa=other) == \
        (MALFORMED, G.GHCB_ERR_NOT_REGISTERED)
    # this GHCB's registers were read first (RBX not valid → 0), not the previous call's
    assert (g.ghcb_u64(G.GHCB_RAX_OFFSET, other), g.ghcb_u64(G.GHCB_RBX_OFFSET, other)) == (0x5555, 0)
    bitmap = int.from_bytes(g.mem.read(other + G.GHCB_VALID_BITMAP_OFFSET, 16), "little")
    want = sum(1 << G.ghcb_bitmap_idx(G.GHCB_FIELD_OFFSETS[n])
               for n in ("rax", "rbx", "rcx", "rdx", "sw_exit_info_1", "sw_exit_info_2"))
    assert bitmap == want, "the bitmap was cleared (sw_exit_code no longer valid) before the answer"


def test_no_ghcb_or_unmappable_ghcb_resumes_quietly(tmp_path: Path) -> None:
    host, g = _guest(tmp_path, setup=False)
    g.wrmsr(G.MSR_AMD64_SEV_ES_GHCB, 0)
    g.vmgexit()
    g.wrmsr(G.MSR_AMD64_SEV_ES_GHCB, RAM + 0x1000)
    g.vmgexit()
    assert host.kvm.stats["vmgexit-no-ghcb"] == 1 and host.kvm.stats["vmgexit-unmappable-ghcb"] == 1
    assert g.rdmsr(G.MSR_AMD64_SEV_ES_GHCB) == RAM + 0x1000


def test_private_ghcb_sees_nothing(tmp_path: Path) -> None:
    """A GHCB that was registered but never made shared: KVM reads zeros, its answer is lost."""
    host, g = _guest(tmp_path, setup=False)
    page = 0x600000
    g.msr_call(G.reg_gpa_req(page >> 12))
    before = g.ghcb_call(G.SVM_VMGEXIT_HV_FEATURES, 0, 0, ghcb_gpa=page)
    assert before == (0, 0), "the guest's own GHCB view is untouched"
    assert host.kvm.host.dropped_writes > 0


def test_psc_nae_paths(tmp_path: Path) -> None:
    host, g = _guest(tmp_path)
    base = 0x700000
    n0 = len(host.of_kind(MapGpaRange))
    assert g.psc([(base, 2, 0), (base + PAGE, 2, 0), (base + 2 * PAGE, 2, 0), (base + 5 * PAGE, 2, 0),
                  (base + 6 * PAGE, 3, 0)]) == (0, 0)
    maps = [e["event"] for e in host.of_kind(MapGpaRange)[n0:]]
    assert [(m.gpa, m.npages, m.attrs) for m in maps] == [(base, 3, 0), (base + 5 * PAGE, 1, 0)]  # PSMASH: no exit
    assert not host.rmp.is_private(base + 2 * PAGE) and host.rmp.is_private(base + 3 * PAGE)
    # a 2M entry: one exit of 512 pages with the 2M page-size attribute
    assert g.psc([(0xA00000, 1, 1)]) == (0, 0)
    m = host.of_kind(MapGpaRange)[-1]["event"]
    assert (m.gpa, m.npages, m.attrs) == (0xA00000, 512, 0x10 | 1)
    assert G.PscEntry.from_u64(g.ghcb_u64(0x808)).cur_page == 512
    # errors
    assert g.psc([(0xA01000, 1, 1)]) == (0, G.VMGEXIT_PSC_ERROR_INVALID_ENTRY)  # 2M entry, 4K-aligned gfn
    g.mem.write(g.ghcb_gpa + 0x800, G.PscHdr(0, 253).pack())
    assert g.ghcb_call(G.SVM_VMGEXIT_PSC, 0, 0, scratch=g.ghcb_gpa + 0x800) == (0, G.VMGEXIT_PSC_ERROR_INVALID_HDR)
    host.map_answer = lambda ev: errno.EAGAIN if ev.gpa == base + 9 * PAGE else 0
    assert g.psc([(base + 8 * PAGE, 2, 0), (base + 9 * PAGE, 1, 0)]) == (0, G.VMGEXIT_PSC_ERROR_GENERIC)
    hdr = G.PscHdr.unpack(g.mem.read(g.ghcb_gpa + 0x800, 8))
    assert hdr.cur_entry == 1, "progress stops at the entry the VMM refused"
    host.map_answer = lambda ev: 0
    assert g.ghcb_call(G.SVM_VMGEXIT_PSC, 0, 0, scratch=g.req_gpa) == (MALFORMED, G.GHCB_ERR_INVALID_SCRATCH_AREA)
    assert g.ghcb_call(G.SVM_VMGEXIT_PSC, 0, 0, scratch=g.ghcb_gpa + 0x100) == \
        (MALFORMED, G.GHCB_ERR_INVALID_SCRATCH_AREA)


@pytest.mark.parametrize("kernel,accepted", [("newest", True), ("7.0", False)])
def test_psc_scratch_length(tmp_path: Path, kernel: str, accepted: bool) -> None:
    """Newest KVM takes sizeof(struct psc_hdr) as the scratch length and ignores SW_EXITINFO2
    (errata B12); 7.0 uses SW_EXITINFO2, so 0x1000 bytes from +0x800 leave the GHCB's buffer."""
    host, g = _guest(tmp_path, kernel=kernel)
    scratch = g.ghcb_gpa + G.GHCB_SHARED_BUF_OFFSET
    g.mem.write(scratch, G.PscHdr(0, 0).pack() + G.PscEntry(0, 0x720, 2, 0).to_u64().to_bytes(8, "little"))
    want = (0, 0) if accepted else (MALFORMED, G.GHCB_ERR_INVALID_SCRATCH_AREA)
    assert g.ghcb_call(G.SVM_VMGEXIT_PSC, 0, 0x1000, scratch=scratch) == want
    assert host.rmp.is_private(0x720000) is not accepted


def test_psc_scratch_outside_ghcb_on_7_0(tmp_path: Path) -> None:
    host, g = _guest(tmp_path, kernel="7.0")
    desc = G.PscHdr(0, 0).pack() + G.PscEntry(0, 0x710, 2, 0).to_u64().to_bytes(8, "little")
    g.mem.write(g.req_gpa, desc)
    assert g.ghcb_call(G.SVM_VMGEXIT_PSC, 0, len(desc), scratch=g.req_gpa) == (0, 0)
    assert G.PscHdr.unpack(g.mem.read(g.req_gpa, 8)).cur_entry == 1  # written back (ghcb_sa_sync)
    assert not host.rmp.is_private(0x710000)


def test_pvalidate(tmp_path: Path) -> None:
    host, g = _guest(tmp_path, setup=False)
    assert g.pvalidate(0x1000, True) == (0, True)  # launched: already validated
    assert g.pvalidate(0x1000, False) == (0, False)
    assert not host.rmp.is_validated(0x1000)
    assert g.pvalidate(0x1000, True) == (0, False)
    assert g.pvalidate(0x200000, True, huge=True) == (G.PVALIDATE_FAIL_SIZEMISMATCH, False)
    assert g.pvalidate(0x201000, True, huge=True) == (G.PVALIDATE_FAIL_INPUT, False)
    assert g.pvalidate(RAM + 0x1000, True) == (G.PVALIDATE_FAIL_INPUT, False)
    host.rmp.set_shared(0x900000, 1)
    assert g.pvalidate(0x900000, True) == (G.PVALIDATE_FAIL_INPUT, False)


@pytest.mark.parametrize("how", ["msr", "nae"])
def test_termination(tmp_path: Path, how: str) -> None:
    host, g = _guest(tmp_path, setup=(how == "nae"))
    at_exit: list[tuple[int, int]] = []  # the GHCB's exit infos as the VMM sees them at the exit
    host.handlers[SevTerm] = lambda v, e: at_exit.append(
        (g.ghcb_u64(G.GHCB_SW_EXIT_INFO_1_OFFSET), g.ghcb_u64(G.GHCB_SW_EXIT_INFO_2_OFFSET)))
    if how == "msr":
        g.msr_call(G.term_req(3, 4))
        want = (3, 4, G.term_req(3, 4))
    else:
        # KVM zeroes SW_EXITINFO1/2 (svm_vmgexit_success) before the SEV_TERM exit: reason unknown
        g.ghcb_call(G.SVM_VMGEXIT_TERM_REQUEST, 3 | (4 << 4), 7)
        want = (-1, -1, g.ghcb_gpa)
        assert at_exit == [(0, 0)]
    ev = host.of_kind(SevTerm)[-1]["event"]
    assert (ev.reason_set, ev.reason_code, ev.raw) == want
    assert ev == sev_term_event(ev.raw), "the emulator's event is what the VMM decodes from a real exit"
    assert g.vcpu.status == "terminated"


def test_unsupported_event_fails_kvm_run(tmp_path: Path) -> None:
    _, g = _guest(tmp_path)
    with pytest.raises(KvmRunError):
        g.ghcb_call(G.SVM_VMGEXIT_UNSUPPORTED_EVENT, 0, 0)


def test_enable_req_certs(tmp_path: Path) -> None:
    host = RefHost(tmp_path, abi="req-certs", enable_req_certs="never")
    with pytest.raises(IoctlError) as e:
        host.kvm.enable_req_certs()  # a vCPU exists
    assert e.value.errno == errno.EINVAL
    assert host.kvm.req_certs_enabled is False
    stub = RefHost(tmp_path, abi="stub")
    with pytest.raises(IoctlError):
        stub.kvm.enable_req_certs()
    # not enabled: the 7.0 kernel plays the stub (24 zero bytes, no exit)
    g = RefGuest(host)
    g.setup()
    g.mem.write(g.certs_gpa, b"\xaa" * 32)
    assert g.request(npages=1).outcome == "ok"
    assert g.mem.read(g.certs_gpa, 32) == bytes(24) + b"\xaa" * 8
    assert not host.of_kind(ReqCerts)


def test_private_certs_buffer_keeps_vmm_writes_out(tmp_path: Path) -> None:
    host, g = _guest(tmp_path)
    before = g.mem.read(g.private_gpa, PAGE)
    r = g.request(pages="private_certs", npages=CERTS_MAX_PAGES)
    assert r.outcome == "ok"  # the VMM wrote the blob through its shared mapping and answered 0
    assert host.responder.records[-1].written_len == len(host.blob)
    assert g.mem.read(g.private_gpa, PAGE) == before, "the guest's private page must not change"


def test_hostile_certificate_buffers(tmp_path: Path) -> None:
    host, g = _guest(tmp_path)
    r = g.request(npages=(1 << 64) - 1)  # the blob fits: written, success
    assert r.outcome == "ok"
    r = g.request(certs_gpa=RAM - PAGE, npages=16)  # the buffer leaves RAM: the VMM answers EIO
    assert r.attempts[0].info2 == 0xFFFF_FFFF << 32
    r = g.request(npages=0)  # npages 0 still exits; ENOSPC with the pages needed
    assert host.of_kind(ReqCerts)[-1]["event"].npages == 0
    assert r.outcome == "invalid-len" and r.needed_pages == -(-len(host.blob) // PAGE)


def test_message_log(tmp_path: Path) -> None:
    host, g = _guest(tmp_path)
    g.request(npages=1, policy="linux")
    g.request(pages="misaligned_req")
    log = host.kvm.message_log
    assert [(r.exit_code, r.seqno, r.reached_firmware, r.fw_status) for r in log] == [
        (G.SVM_VMGEXIT_EXT_GUEST_REQUEST, 1, False, None), (G.SVM_VMGEXIT_GUEST_REQUEST, 1, True, 0),
        (G.SVM_VMGEXIT_EXT_GUEST_REQUEST, 3, False, None)]
    assert log[0].ct_sha256 == log[1].ct_sha256 and log[0].tag == log[1].tag
    assert log[0].sw_exit_info_2 == 1 << 32 and log[2].sw_exit_info_1 == MALFORMED
    assert host.backend.message_log[0]["vmpck"] == 0


def test_iv_reuse_is_visible_in_the_log(tmp_path: Path) -> None:
    host, g = _guest(tmp_path)
    g.request(npages=1, policy="naive")

    def reused(log: list) -> bool:
        seen: dict[tuple[int, int], set[str]] = {}
        for r in log:
            seen.setdefault((r.vmpck, r.seqno), set()).add(r.ct_sha256)
        return any(len(v) > 1 for v in seen.values())

    assert reused(host.kvm.message_log)
    host2, g2 = _guest(tmp_path / "b")
    g2.request(npages=1, policy="linux")
    assert not reused(host2.kvm.message_log)


def test_responder_lock_released_after_each_exit(tmp_path: Path) -> None:
    host, g = _guest(tmp_path, answers=("EAGAIN", "auto"))
    g.request(policy="linux")
    assert host.responder.locks_held == 0
    assert g.vcpu.completions == 2


def test_host_view_of_private_pages_is_the_shared_backing(tmp_path: Path) -> None:
    """D8: KVM's kvm_write_guest/kvm_read_guest of a private page go through the shared backing
    (the memslot's userspace mapping): the host reads back what it wrote, the guest does not see
    it while the page is private, and sees it once it converts the page to shared."""
    host, g = _guest(tmp_path)
    page = g.private_gpa
    guest_bytes = g.mem.read(page, 32)
    assert host.kvm.host.read(page, 32) == bytes(32), "a backing never written reads as zeros"
    host.kvm.host.write(page + 8, b"\x5a" * 16)
    assert host.kvm.host.read(page, 32) == bytes(8) + b"\x5a" * 16 + bytes(8)
    assert g.mem.read(page, 32) == guest_bytes, "the guest's private view is untouched"
    # the stub's 24-byte terminator into a private certificate buffer lands in the backing too
    stub_host, stub = _guest(tmp_path / "stub", abi="stub")
    stub.mem.write(stub.private_gpa, b"\xaa" * 32)
    assert stub.request(pages="private_certs", npages=1).outcome == "ok"
    assert stub.mem.read(stub.private_gpa, 32) == b"\xaa" * 32
    assert stub_host.kvm.host.read(stub.private_gpa, 32) == bytes(32)
    # converting the page to shared shows the guest the backing
    assert g.msr_call(G.psc_req(page >> 12, G.SNP_PAGE_STATE_SHARED)) == G.GHCB_MSR_PSC_RESP
    assert g.mem.read(page, 32) == bytes(8) + b"\x5a" * 16 + bytes(8)


def test_vmm_writes_into_private_certificate_pages_reach_the_backing(tmp_path: Path) -> None:
    host, g = _guest(tmp_path)
    before = g.mem.read(g.private_gpa, PAGE)
    assert g.request(pages="private_certs", npages=CERTS_MAX_PAGES).outcome == "ok"
    assert g.mem.read(g.private_gpa, PAGE) == before
    assert host.kvm.host.read(g.private_gpa, 64) == host.blob[:64], "the VMM's write is in the backing"
