"""A pure-Python reference guest and a fake VMM around ``snplab.emu`` (no KVM).

``RefHost`` plays the VMM: fake guest memory, an event dispatcher with the VMM's own certificate
responder (``snplab.vmm.certs.CertResponder``) and a page-state handler, and a small launch.
``RefGuest`` plays the payload on one vCPU: GHCB MSR protocol, GHCB registration, page-state
changes, PVALIDATE through the doorbells, and guest requests encrypted with its own AES-GCM from the
VMPCK it reads from its secrets page, with the Linux INVALID_LEN/BUSY policy or a naive one.

``CHECKS`` holds the reference-guest checks used by the tests and by the fault-injection tests:
each returns a list of problems (empty = the behaviour is right).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from snplab.abi import ghcb as G
from snplab.abi import guest_msg as gm
from snplab.abi import kernel_behaviour as kb
from snplab.abi.cert_table import parse_table
from snplab.emu.ghcb import DOORBELL_PORT, PVAL_VALIDATE, PVALIDATE_PORT
from snplab.emu.platform import EmulatedBackend
from snplab.vmm.certs import CertResponder
from snplab.vmm.events import (
    Doorbell,
    KvmRunError,
    MapGpaRange,
    MsrRead,
    MsrWrite,
    ReqCerts,
    VmgexitReqCerts,
)
from snplab.vmm.launch import PageType, VcpuInitState
from snplab.vmm.memory import GpaOutOfRange

PAGE = 4096
RAM = 16 << 20
SECRETS_GPA = 0x5000
SHARED_GPA = 0x40_0000
SLICE = 0x10_0000
SCRATCH_GPA = 0x38_0000
CERTS_MAX_PAGES = 16
POLICY = 0x30000


class FakeMemory:
    """Guest RAM as one bytearray; ``view`` refuses anything outside it like GuestMemory."""

    def __init__(self, size: int = RAM) -> None:
        self.buf = bytearray(size)
        self.mv = memoryview(self.buf)

    @property
    def end(self) -> int:
        return len(self.buf)

    def view(self, gpa: int, length: int) -> memoryview:
        if gpa < 0 or length < 0 or gpa + length > len(self.buf):
            raise GpaOutOfRange(gpa, length)
        return self.mv[gpa:gpa + length]

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data: bytes) -> None:
        self.view(gpa, len(data))[:] = data


class Unhandled(Exception):
    pass


class FakeVcpu:
    """What snplab.emu needs of a VMM vCPU: index, ghcb_msr, dispatch, request_complete, stop."""

    def __init__(self, host: RefHost, index: int) -> None:
        self.host = host
        self.guest = host  # CertResponder reads vcpu.guest.memory
        self.index = index
        self.ghcb_msr = 0
        self.status = "running"
        self.reason = ""
        self.completions = 0

    def dispatch(self, event: Any) -> Any:
        fn = self.host.handlers.get(type(event))
        rec = {"vcpu": self.index, "event": event, "answer": None}
        self.host.events.append(rec)
        if fn is None:
            if getattr(event, "terminal", False):
                return None
            raise Unhandled(event)
        rec["answer"] = ans = fn(self, event)
        return ans

    def request_complete(self) -> None:
        self.completions += 1
        for hook in self.host.completion_hooks:
            hook(self)

    def stop(self, status: str, reason: str = "") -> None:
        if self.status == "running":
            self.status, self.reason = status, reason


def vcpu_init_state(index: int = 0) -> VcpuInitState:
    code = dict(base=0, limit=0xFFFFFFFF, selector=8, type=11, present=1, dpl=0, db=0, s=1, l=1, g=1, avl=0)
    data = dict(code, selector=0x10, type=3, db=1, l=0)
    sregs = {"cs": code, "ds": data, "es": data, "fs": data, "gs": data, "ss": data,
             "tr": dict(base=0, limit=0xFFFF, selector=0, type=11, present=1, dpl=0, db=0, s=0, l=0, g=0, avl=0),
             "ldt": dict(base=0, limit=0xFFFF, selector=0, type=2, present=1, dpl=0, db=0, s=0, l=0, g=0, avl=0),
             "gdt": {"base": 0x4000, "limit": 23}, "idt": {"base": 0, "limit": 0},
             "cr0": 0x80050033, "cr2": 0, "cr3": 0x1000, "cr4": 0x620, "cr8": 0, "efer": 0xD01,
             "apic_base": 0xFEE00900}
    regs = {n: 0 for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11",
                           "r12", "r13", "r14", "r15")}
    regs.update(rip=0x100000, rflags=2, rdi=index, rsi=0x100000, rsp=0x304000 + index * 0x4000)
    return VcpuInitState(index, regs, sregs, 1)


class RefHost:
    """The fake VMM: builds the emulated VM, launches it and answers the exits snplab.emu raises."""

    def __init__(self, tmp_path: Path, *, abi: str = "req-certs", product: str = "milan", signer: str = "vcek",
                 faults: tuple[str, ...] = (), kernel: str | None = None, report_version: int = 5,
                 answers: tuple[str, ...] = (), nvcpus: int = 1, enable_req_certs: str = "early",
                 store: Any = None) -> None:
        self.backend = EmulatedBackend(product=product, signer=signer, abi=abi, faults=faults, kernel=kernel,
                                       report_version=report_version, enable_req_certs=enable_req_certs,
                                       store=store)
        self.memory = FakeMemory()
        self.events: list[dict[str, Any]] = []
        self.blob = self.backend.cert_blob()
        Path(tmp_path).mkdir(parents=True, exist_ok=True)
        self.blob_path = Path(tmp_path) / "certs.bin"
        self.blob_path.write_bytes(self.blob)
        self.responder = CertResponder(self.blob_path, answers)
        self.map_answer: Callable[[MapGpaRange], int] = self._map_default
        vm = self.backend.new_vm(self.memory, RAM)
        self.psp, self.kvm, self.rmp = vm.psp, vm.kvm, vm.rmp
        self.handlers: dict[type, Callable[[Any, Any], Any]] = {
            MsrRead: self.kvm.on_msr_read, MsrWrite: self.kvm.on_msr_write, Doorbell: self.kvm.on_doorbell,
            MapGpaRange: lambda v, e: self.map_answer(e),
            ReqCerts: self.responder.on_req_certs, VmgexitReqCerts: self.responder.on_vmgexit_req_certs,
        }
        self.completion_hooks = [self.responder.complete]
        self.vcpus = []
        for i in range(nvcpus):
            v = FakeVcpu(self, i)
            self.vcpus.append(v)
            self.backend.setup_vcpu(_Cfg(nvcpus), v)
        self.launch(nvcpus)

    def _map_default(self, ev: MapGpaRange) -> int:
        return 0 if 0 <= ev.gpa and ev.gpa + ev.npages * PAGE <= RAM else errno.EINVAL

    def launch(self, nvcpus: int) -> None:
        psp = self.psp
        psp.start(POLICY)
        tables = bytes(range(256)) * 16 * 4  # four NORMAL pages at 0x1000
        self.memory.write(0x1000, tables)
        psp.update(0x1000, tables, PageType.NORMAL)
        psp.update(SECRETS_GPA, bytes(PAGE), PageType.SECRETS)
        psp.update(0x6000, bytes(PAGE), PageType.CPUID)
        code = b"\xf4" * PAGE
        self.memory.write(0x100000, code)
        psp.update(0x100000, code, PageType.NORMAL)
        psp.update(0x300000, bytes(4 * PAGE * nvcpus), PageType.ZERO)
        psp.update(SCRATCH_GPA, bytes(PAGE * nvcpus), PageType.ZERO)
        psp.finish(bytes(range(32)), [vcpu_init_state(i) for i in range(nvcpus)])

    def of_kind(self, kind: type) -> list[dict[str, Any]]:
        return [e for e in self.events if isinstance(e["event"], kind)]


@dataclass(frozen=True)
class _Cfg:
    nvcpus: int

    @property
    def config(self) -> _Cfg:
        return self


@dataclass
class Attempt:
    exit_code: int
    seqno: int
    vmpck: int
    tag: bytes
    rbx_in: int
    info1: int
    info2: int
    rbx_out: int
    resent: bool = False

    @property
    def vmm_error(self) -> int:
        return self.info2 >> 32

    @property
    def fw_error(self) -> int:
        return self.info2 & 0xFFFF_FFFF


@dataclass
class StepResult:
    attempts: list[Attempt] = field(default_factory=list)
    outcome: str = "not-run"  # ok, invalid-len, busy, vmm-error, fw-error, ghcb-error, decrypt-fail
    decrypt: str = "none"
    resp_hdr: gm.MsgHeader | None = None
    rsp_status: int | None = None
    report: bytes | None = None
    certs: bytes = b""
    needed_pages: int | None = None


class RefGuest:
    """The guest payload's logic on vCPU ``index``, in Python."""

    def __init__(self, host: RefHost, index: int = 0) -> None:
        self.host = host
        self.vcpu = host.vcpus[index]
        self.index = index
        base = SHARED_GPA + index * SLICE
        self.ghcb_gpa, self.req_gpa, self.resp_gpa = base, base + 0x1000, base + 0x2000
        self.certs_gpa = base + 0x10000
        self.private_gpa = SCRATCH_GPA + index * PAGE
        self.mem = host.memory  # the guest's own (encrypted, on SNP) view of its RAM
        self.last_seqno = [0, 0, 0, 0]
        self.ghcb_version = 0
        self.hv_features = 0

    # -- CPU-level primitives ----------------------------------------------------------------------

    def rdmsr(self, index: int) -> int | None:
        return self.vcpu.dispatch(MsrRead(index))

    def wrmsr(self, index: int, value: int) -> bool:
        return self.vcpu.dispatch(MsrWrite(index, value))

    def vmgexit(self) -> None:
        self.vcpu.dispatch(Doorbell(DOORBELL_PORT, 0, "out", 4))

    def pvalidate(self, gpa: int, validate: bool, huge: bool = False) -> tuple[int, bool]:
        arg = (gpa & ~0xFFF) | (1 if huge else 0) | (PVAL_VALIDATE if validate else 0)
        self.vcpu.dispatch(Doorbell(PVALIDATE_PORT, arg, "out", 4))
        res = self.vcpu.dispatch(Doorbell(PVALIDATE_PORT, 0, "in", 4))
        return res & 0xFF, bool(res >> 8 & 1)

    def msr_call(self, value: int) -> int:
        self.wrmsr(G.MSR_AMD64_SEV_ES_GHCB, value)
        self.vmgexit()
        return self.rdmsr(G.MSR_AMD64_SEV_ES_GHCB)

    # -- GHCB page ---------------------------------------------------------------------------------

    def ghcb_call(self, exit_code: int, info1: int, info2: int, *, rax: int | None = None,
                  rbx: int | None = None, scratch: int | None = None, usage: int = 0,
                  mark: tuple[str, ...] = ("sw_exit_code", "sw_exit_info_1", "sw_exit_info_2"),
                  ghcb_gpa: int | None = None) -> tuple[int, int]:
        gpa = self.ghcb_gpa if ghcb_gpa is None else ghcb_gpa
        g = self.mem.view(gpa, PAGE)
        g[G.GHCB_VALID_BITMAP_OFFSET:G.GHCB_VALID_BITMAP_OFFSET + 16] = bytes(16)
        bitmap = 0
        fields = {"sw_exit_code": exit_code, "sw_exit_info_1": info1, "sw_exit_info_2": info2}
        if rax is not None:
            fields["rax"] = rax
        if rbx is not None:
            fields["rbx"] = rbx
        if scratch is not None:
            fields["sw_scratch"] = scratch
        for name, value in fields.items():
            off = G.GHCB_FIELD_OFFSETS[name]
            struct.pack_into("<Q", g, off, value)
            if name in mark or name in ("rax", "rbx", "sw_scratch"):
                bitmap |= 1 << G.ghcb_bitmap_idx(off)
        g[G.GHCB_VALID_BITMAP_OFFSET:G.GHCB_VALID_BITMAP_OFFSET + 16] = bitmap.to_bytes(16, "little")
        struct.pack_into("<HI", g, G.GHCB_PROTOCOL_VERSION_OFFSET, 2, usage)
        self.wrmsr(G.MSR_AMD64_SEV_ES_GHCB, gpa)
        self.vmgexit()
        return self.ghcb_u64(G.GHCB_SW_EXIT_INFO_1_OFFSET, gpa), self.ghcb_u64(G.GHCB_SW_EXIT_INFO_2_OFFSET, gpa)

    def ghcb_u64(self, off: int, gpa: int | None = None) -> int:
        return int.from_bytes(self.mem.view((self.ghcb_gpa if gpa is None else gpa) + off, 8), "little")

    def ghcb_valid(self, name: str) -> bool:
        bitmap = int.from_bytes(self.mem.view(self.ghcb_gpa + G.GHCB_VALID_BITMAP_OFFSET, 16), "little")
        return bool(bitmap >> G.ghcb_bitmap_idx(G.GHCB_FIELD_OFFSETS[name]) & 1)

    def psc(self, entries: list[tuple[int, int, int]]) -> tuple[int, int]:
        """GHCB PSC NAE with [(gpa, op, pagesize)] in the shared buffer."""
        buf = G.PscHdr(0, len(entries) - 1).pack() + b"".join(
            G.PscEntry(0, gpa >> 12, op, size).to_u64().to_bytes(8, "little") for gpa, op, size in entries)
        self.mem.write(self.ghcb_gpa + G.GHCB_SHARED_BUF_OFFSET, buf)
        return self.ghcb_call(G.SVM_VMGEXIT_PSC, 0, 0, scratch=self.ghcb_gpa + G.GHCB_SHARED_BUF_OFFSET)

    # -- setup (what start.S + setup code do) ------------------------------------------------------

    def setup(self, *, convert: bool = True) -> None:
        sev = self.rdmsr(G.MSR_AMD64_SEV)
        assert sev is not None and sev & G.MSR_AMD64_SEV_SNP_ENABLED, f"SEV_STATUS {sev!r}"
        info = self.msr_call(G.GHCB_MSR_SEV_INFO_REQ)
        assert G.msr_info(info) == G.GHCB_MSR_SEV_INFO_RESP, hex(info)
        assert (info >> 32) & 0xFFFF <= 2 <= info >> 48, hex(info)
        self.ghcb_version = 2
        ft = self.msr_call(G.GHCB_MSR_HV_FT_REQ)
        assert G.msr_info(ft) == G.GHCB_MSR_HV_FT_RESP and G.msr_data(ft) & G.GHCB_HV_FT_SNP, hex(ft)
        self.hv_features = G.msr_data(ft)
        rc, _ = self.pvalidate(self.ghcb_gpa, False)
        assert rc == 0, rc
        resp = self.msr_call(G.psc_req(self.ghcb_gpa >> 12, G.SNP_PAGE_STATE_SHARED))
        assert resp == G.GHCB_MSR_PSC_RESP, hex(resp)
        self.mem.write(self.ghcb_gpa, bytes(PAGE))
        resp = self.msr_call(G.reg_gpa_req(self.ghcb_gpa >> 12))
        assert resp == G.reg_gpa_req(self.ghcb_gpa >> 12) + 1, hex(resp)
        if convert:
            pages = [self.req_gpa, self.resp_gpa] + [self.certs_gpa + i * PAGE for i in range(CERTS_MAX_PAGES)]
            info1, info2 = self.psc([(p, G.VMGEXIT_PSC_OP_SHARED, 0) for p in pages])
            assert (info1, info2) == (0, 0), (info1, info2)

    # -- guest messages ------------------------------------------------------------------------------

    def vmpck(self, i: int) -> bytes:
        return self.mem.read(SECRETS_GPA + 0x20 + 32 * i, 32)

    def seal(self, seqno: int, vmpck: int, msg_type: int, payload: bytes, msg_version: int = 1) -> bytes:
        hdr = gm.MsgHeader(msg_seqno=seqno, msg_type=msg_type, msg_sz=len(payload), msg_vmpck=vmpck,
                           msg_version=msg_version)
        sealed = AESGCM(self.vmpck(vmpck)).encrypt(gm.aead_iv(seqno), payload, hdr.aad())
        return hdr.with_tag(sealed[-16:]).pack() + sealed[:-16]

    def open_response(self, req_seqno: int, vmpck: int, msg_type: int, page: bytes, result: StepResult) -> None:
        hdr = gm.MsgHeader.unpack(page)
        result.resp_hdr = hdr
        if (hdr.algo != 1 or hdr.hdr_version != 1 or hdr.hdr_sz != 0x60 or hdr.msg_type != msg_type + 1
                or hdr.msg_vmpck != vmpck):
            result.decrypt = "bad-header"
            return
        if hdr.msg_seqno != req_seqno + 1:
            result.decrypt = "bad-seqno"
            return
        if hdr.msg_sz > gm.MAX_PAYLOAD_SIZE:
            result.decrypt = "bad-size"
            return
        try:
            pt = AESGCM(self.vmpck(vmpck)).decrypt(gm.aead_iv(hdr.msg_seqno),
                                                    page[0x60:0x60 + hdr.msg_sz] + hdr.tag, hdr.aad())
        except InvalidTag:
            result.decrypt = "bad-tag"
            return
        result.decrypt = "ok"
        if msg_type == gm.MSG_REPORT_REQ:
            rsp = gm.ReportRsp.unpack(pt)
            result.rsp_status = rsp.status
            result.report = rsp.report if rsp.status == 0 else None
        else:
            result.rsp_status = struct.unpack_from("<I", pt)[0]

    def payload(self, msg_type: int, report_data: bytes, vmpl: int, key_sel: int) -> bytes:
        if msg_type == gm.MSG_REPORT_REQ:
            return gm.ReportReq(report_data=report_data, vmpl=vmpl, key_sel=key_sel).pack()
        if msg_type == gm.MsgType.KEY_REQ:
            return struct.pack("<IIQIIQ", 0, 0, 0b1000, vmpl, 0, 0)
        return bytes(96)

    def request(self, op: str = "ext_req", *, msg_type: int = gm.MSG_REPORT_REQ, vmpck: int = 0, vmpl: int = 0,
                report_data: bytes = b"snplab", npages: int = CERTS_MAX_PAGES, pages: str = "normal",
                seqno: int | None = None, policy: str = "none", max_busy_retries: int = 4, key_sel: int = 0,
                no_rax_valid: bool = False, no_rbx_valid: bool = False, certs_gpa: int | None = None) -> StepResult:
        """One scripted step, as the payload does it."""
        result = StepResult()
        req_gpa, resp_gpa = self.req_gpa, self.resp_gpa
        if pages == "same":
            resp_gpa = req_gpa
        elif pages == "private_req":
            req_gpa = self.private_gpa
        elif pages == "misaligned_req":
            req_gpa += 8
        data_gpa = certs_gpa if certs_gpa is not None else (
            self.private_gpa if pages == "private_certs" else self.certs_gpa)
        n = self.last_seqno[vmpck] + 1 if seqno is None else seqno
        msg = self.seal(n, vmpck, msg_type, self.payload(msg_type, report_data, vmpl, key_sel))
        exit_code = G.SVM_VMGEXIT_EXT_GUEST_REQUEST if op == "ext_req" else G.SVM_VMGEXIT_GUEST_REQUEST
        rbx = npages
        busy_left = max_busy_retries
        resent = False
        while True:
            self.mem.write(req_gpa, msg)
            if resp_gpa != req_gpa:
                self.mem.write(resp_gpa, bytes(PAGE))
            ext = exit_code == G.SVM_VMGEXIT_EXT_GUEST_REQUEST
            info1, info2 = self.ghcb_call(exit_code, req_gpa, resp_gpa,
                                          rax=None if (not ext or no_rax_valid) else data_gpa,
                                          rbx=None if (not ext or no_rbx_valid) else rbx)
            rbx_out = self.ghcb_u64(G.GHCB_RBX_OFFSET)
            att = Attempt(exit_code, n, vmpck, msg[:16], rbx if ext else 0, info1, info2, rbx_out, resent)
            result.attempts.append(att)
            if info1 & 0xFFFF_FFFF:
                result.outcome = "ghcb-error"
                return result
            if info2 == 0:
                self.last_seqno[vmpck] = n + 1
                page = self.mem.read(resp_gpa, PAGE)
                self.open_response(n, vmpck, msg_type, page, result)
                if ext:
                    result.certs = self._read_certs(data_gpa)
                if result.outcome == "not-run":
                    result.outcome = "ok" if result.decrypt == "ok" else "decrypt-fail"
                return result
            if ext and info2 == G.snp_guest_err(G.SNP_GUEST_VMM_ERR_INVALID_LEN, 0):
                result.needed_pages = rbx_out
                if policy == "linux":
                    exit_code, resent = G.SVM_VMGEXIT_GUEST_REQUEST, True  # same bytes, plain request
                    result.outcome = "invalid-len"
                    continue
                if policy == "naive":  # re-encrypt another plaintext under the same seqno (IV reuse)
                    msg = self.seal(n, vmpck, msg_type, self.payload(msg_type, report_data[::-1] + b"!", vmpl, key_sel))
                    rbx = rbx_out
                    result.outcome = "invalid-len"
                    continue
                result.outcome = "invalid-len"
                return result
            if info2 == G.snp_guest_err(G.SNP_GUEST_VMM_ERR_BUSY, 0):
                if policy == "linux" and busy_left > 0:
                    busy_left -= 1
                    resent = True
                    continue
                result.outcome = "busy"
                return result
            result.outcome = "vmm-error" if info2 >> 32 else "fw-error"
            return result

    def _read_certs(self, gpa: int) -> bytes:
        try:
            return self.mem.read(gpa, CERTS_MAX_PAGES * PAGE)
        except GpaOutOfRange:
            return b""


# ------------------------------------------------------------------------------------------------
# Checks: each builds a fresh host, runs the reference guest, returns a list of problems.

def _host(tmp_path: Path, faults: tuple[str, ...], **kw: Any) -> tuple[RefHost, RefGuest]:
    host = RefHost(tmp_path, faults=faults, **kw)
    guest = RefGuest(host)
    guest.setup()
    return host, guest


def check_success_with_table(tmp_path: Path, faults: tuple[str, ...] = (), abi: str = "req-certs",
                             **kw: Any) -> list[str]:
    host, guest = _host(tmp_path, faults, abi=abi, **kw)
    r = guest.request(npages=CERTS_MAX_PAGES, report_data=b"table")
    problems = []
    if r.outcome != "ok":
        problems.append(f"outcome {r.outcome}: {r.attempts[-1] if r.attempts else None}")
        return problems
    if abi == "stub":
        if r.certs[:24] != bytes(24):
            problems.append("stub did not write an empty table")
    else:
        table = parse_table(r.certs)
        if r.certs[:table.used_length] != host.blob:
            problems.append("certificate table differs from the host's blob")
    if r.resp_hdr is None or r.resp_hdr.msg_seqno != 2:
        problems.append(f"response seqno {r.resp_hdr.msg_seqno if r.resp_hdr else None}, want 2")
    if host.psp.next_seqno(0) != 3:
        problems.append(f"firmware counter {host.psp.next_seqno(0)}, want 3")
    return problems


def check_invalid_len(tmp_path: Path, faults: tuple[str, ...] = (), abi: str = "req-certs", **kw: Any) -> list[str]:
    """A 1-page buffer for a multi-page blob: INVALID_LEN, RBX = pages needed, buffer untouched,
    no sequence number consumed."""
    host, guest = _host(tmp_path, faults, abi=abi, **kw)
    need = -(-len(host.blob) // PAGE)
    guest.mem.write(guest.certs_gpa, b"\xaa" * PAGE)
    r = guest.request(npages=1)
    problems = []
    a = r.attempts[0]
    if a.info1 != 0 or a.info2 != 1 << 32:
        problems.append(f"EXITINFO1/2 = {a.info1:#x}/{a.info2:#x}, want 0/0x100000000")
    if a.rbx_out != need:
        problems.append(f"RBX = {a.rbx_out}, want {need}")
    if guest.mem.read(guest.certs_gpa, PAGE) != b"\xaa" * PAGE:
        problems.append("the certificate buffer was written although INVALID_LEN was returned")
    if host.psp.next_seqno(0) != 1 or host.psp.message_log:
        problems.append("INVALID_LEN consumed a sequence number / reached firmware")
    return problems


def check_invalid_len_then_retry(tmp_path: Path, faults: tuple[str, ...] = (), abi: str = "req-certs",
                                 **kw: Any) -> list[str]:
    """Linux policy: resend the same bytes as a plain request, then a fresh request with RBX pages."""
    _, guest = _host(tmp_path, faults, abi=abi, **kw)
    r1 = guest.request(npages=1, policy="linux")
    problems = []
    if [a.exit_code for a in r1.attempts] != [G.SVM_VMGEXIT_EXT_GUEST_REQUEST, G.SVM_VMGEXIT_GUEST_REQUEST]:
        problems.append(f"attempts {[hex(a.exit_code) for a in r1.attempts]}")
    if r1.decrypt != "ok":
        problems.append(f"resent request decrypt {r1.decrypt}")
    need = r1.needed_pages or 0
    if not 1 < need <= CERTS_MAX_PAGES:
        return problems + [f"needed pages {need}"]
    r2 = guest.request(npages=need)
    if r2.outcome != "ok" or r2.attempts[0].seqno != 3:
        problems.append(f"retry outcome {r2.outcome}, seqno {r2.attempts[0].seqno}")
    return problems


def check_busy_then_success(tmp_path: Path, faults: tuple[str, ...] = (), abi: str = "req-certs", **kw: Any) -> list[str]:
    """BUSY first: no firmware call, the identical message succeeds on the retry."""
    host, guest = _host(tmp_path, faults, abi=abi, answers=("EAGAIN",), **kw)
    r = guest.request(policy="linux")
    problems = []
    if len(r.attempts) != 2 or r.attempts[0].info2 != 2 << 32:
        problems.append(f"attempts {[(hex(a.info1), hex(a.info2)) for a in r.attempts]}")
    if r.outcome != "ok":
        problems.append(f"outcome after BUSY retry: {r.outcome} ({r.attempts[-1].info2:#x})")
    if [e.status for e in host.psp.message_log] != [0]:
        problems.append(f"firmware saw {[(e.seqno, e.status) for e in host.psp.message_log]}, want one success")
    return problems


def check_generic(tmp_path: Path, faults: tuple[str, ...] = (), abi: str = "req-certs", **kw: Any) -> list[str]:
    host, guest = _host(tmp_path, faults, abi=abi, answers=("EIO",), **kw)
    r = guest.request()
    want = 0xFFFF_FFFF << 32 if abi == "req-certs" else 1 << 63
    a = r.attempts[0]
    problems = []
    if (a.info1, a.info2) != (0, want):
        problems.append(f"EXITINFO1/2 = {a.info1:#x}/{a.info2:#x}, want 0/{want:#x}")
    if host.psp.message_log:
        problems.append("GENERIC reached firmware")
    return problems


def check_invalid_ret(tmp_path: Path, faults: tuple[str, ...] = (), **kw: Any) -> list[str]:
    _, guest = _host(tmp_path, faults, abi="req-certs", answers=("ret:99",), **kw)
    try:
        r = guest.request()
    except KvmRunError as e:
        return [] if e.errno == errno.EINVAL else [f"KVM_RUN errno {e.errno}, want EINVAL"]
    return [f"guest resumed with {r.attempts[-1].info2:#x} instead of KVM_RUN failing"]


def check_stub_empty_table(tmp_path: Path, faults: tuple[str, ...] = (), **kw: Any) -> list[str]:
    host, guest = _host(tmp_path, faults, abi="stub", **kw)
    guest.mem.write(guest.certs_gpa, b"\xaa" * PAGE)
    r = guest.request(npages=1)
    problems = []
    if r.outcome != "ok":
        problems.append(f"stub outcome {r.outcome}")
    if guest.mem.read(guest.certs_gpa, PAGE) != bytes(24) + b"\xaa" * (PAGE - 24):
        problems.append("stub did not write exactly 24 zero bytes")
    if host.of_kind(ReqCerts) or host.of_kind(VmgexitReqCerts):
        problems.append("stub exited to userspace")
    return problems


def check_replayed_seqno(tmp_path: Path, faults: tuple[str, ...] = (), **kw: Any) -> list[str]:
    """A replayed sequence number: firmware error INVALID_PARAM, counter unchanged, next one works."""
    host, guest = _host(tmp_path, faults, **kw)
    problems = []
    if guest.request().outcome != "ok":
        return ["first request failed"]
    r = guest.request(seqno=1)
    a = r.attempts[0]
    if (a.info1, a.info2) != (0, 0x16):
        problems.append(f"replay gave {a.info1:#x}/{a.info2:#x}, want 0/0x16")
    if host.psp.next_seqno(0) != 3:
        problems.append(f"firmware counter {host.psp.next_seqno(0)} after a rejected replay, want 3")
    if guest.request().outcome != "ok":
        problems.append("the next in-order request failed")
    return problems


def check_private_request_page(tmp_path: Path, faults: tuple[str, ...] = (), **kw: Any) -> list[str]:
    """A request page left private reaches the firmware as zeros: INVALID_PARAM (with the
    kernel's VMM error for a firmware error: v15 GENERIC), no seqno consumed."""
    host, guest = _host(tmp_path, faults, **kw)
    r = guest.request(pages="private_req")
    a = r.attempts[0]
    problems = []
    want = G.snp_guest_err(kb.rule(host.kvm.generation, "firmware-error").vmm_error or 0, 0x16)
    if (a.info1, a.info2) != (0, want):
        problems.append(f"private request page gave {a.info1:#x}/{a.info2:#x}, want 0/{want:#x}")
    if host.psp.next_seqno(0) != 1:
        problems.append("the private request consumed a sequence number")
    return problems


def check_response_seqno(tmp_path: Path, faults: tuple[str, ...] = (), **kw: Any) -> list[str]:
    _, guest = _host(tmp_path, faults, **kw)
    r = guest.request()
    return [] if r.decrypt == "ok" else [f"decrypt {r.decrypt}"]


def check_non_report_no_exit(tmp_path: Path, faults: tuple[str, ...] = (), **kw: Any) -> list[str]:
    """An extended MSG_KEY_REQ is a plain guest request: no certificate exit."""
    host, guest = _host(tmp_path, faults, **kw)
    r = guest.request(msg_type=gm.MsgType.KEY_REQ)
    problems = [] if r.outcome == "ok" else [f"KEY_REQ outcome {r.outcome}"]
    if host.of_kind(ReqCerts):
        problems.append("an extended KEY_REQ exited for certificates")
    return problems


def check_late_enable(tmp_path: Path, faults: tuple[str, ...] = (), **kw: Any) -> list[str]:
    host = RefHost(tmp_path, faults=faults, abi="req-certs", enable_req_certs="late", **kw)
    err = host.backend.vm.enable_req_certs_error if host.backend.vm else None
    return [] if err and f"errno {errno.EINVAL}" in err else [f"late enable did not fail with EINVAL ({err})"]


CHECKS: dict[str, Callable[..., list[str]]] = {
    "success_with_table": check_success_with_table,
    "invalid_len": check_invalid_len,
    "invalid_len_then_retry": check_invalid_len_then_retry,
    "busy_then_success": check_busy_then_success,
    "generic": check_generic,
    "invalid_ret": check_invalid_ret,
    "stub_empty_table": check_stub_empty_table,
    "replayed_seqno": check_replayed_seqno,
    "private_request_page": check_private_request_page,
    "response_seqno": check_response_seqno,
    "non_report_no_exit": check_non_report_no_exit,
    "late_enable": check_late_enable,
}
