"""A fake /dev/kvm + /dev/sev that answers like an SNP host's KVM (for tests/test_snp_*.py).

It records every call and enforces the rules real KVM enforces (kvm-host-abi.md §1(d), §3.4–§3.6,
errata A): INIT2 once and before vCPUs, ENABLE_REQ_CERTS before vCPUs, LAUNCH_* in order, every
launched GFN private and backed by guest_memfd and launched once, partial LAUNCH_UPDATE progress
written back into the struct, a CPUID page checked by the "firmware" the way QEMU expects it to be
(``cpuid_reject="invalid"``: refused feature bits or a 0xD.0/0xD.1 EBX other than 0x240 → INVALID_PARAM
with the corrected page copied to uaddr; ``"always"``: the first page sent is corrected whatever it
holds; ``"never"``), ENABLE_REQ_CERTS refused once a vCPU exists (``kvm->created_vcpus``), the /dev/sev fd on every command, protected vCPU state after
LAUNCH_FINISH. KVM_RUN plays a per-vCPU script of exits and checks the VMM's answers at the next
entry the way KVM completes an exit (REQ_CERTS ret, hypercall ret, immediate_exit → EINTR).
"""

from __future__ import annotations

import ctypes as C
import errno
import hashlib
import mmap
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from snplab.vmm import uapi
from snplab.vmm.kvm import IoctlLayer

PAGE = 4096
SEV_RET_INVALID_PARAM = 0x16
SEV_RET_INVALID_PAGE_STATE = 0x1A
# CPUID bits the fake firmware refuses (QEMU sev_snp_mask_cpuid_features), written out here
# independently of snplab.abi.cpuid_page: (function, index) → register letter → mask
_REFUSED = {(1, None): {"c": 1 << 24}, (7, 0): {"b": 1 << 1, "d": 0xFC000000}, (0x80000008, None): {"b": 1 << 25}}
NAMES = {v: k for k, v in vars(uapi).items() if k.startswith("KVM_") and isinstance(v, int) and v > 0xFFFF}


def _err(code: int) -> OSError:
    if code == errno.EINTR:
        return InterruptedError(code, os.strerror(code))
    return OSError(code, os.strerror(code))


@dataclass
class Call:
    fd_kind: str
    name: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Exit:
    """One scripted exit: `setup(run)` fills kvm_run; `check(run, fake)` runs at the next KVM_RUN
    entry (KVM completing the exit) and may raise OSError like KVM_RUN would."""

    setup: Callable[[Any], None]
    check: Callable[[Any, "FakeSnpKvm"], None] | None = None
    errno_: int = 0  # KVM_RUN fails with this errno after filling kvm_run (MEMORY_FAULT: EFAULT)
    label: str = ""


class FakeSnpKvm(IoctlLayer):
    def __init__(self, *, req_certs_attr: int | None = 1, partial: int = 3, cpuid_reject: str = "invalid",
                 fail_update_at: int | None = None, c_bit: int = 51, mem_attrs: bool = True,
                 fail: dict[str, tuple[int, int]] | None = None) -> None:
        super().__init__()
        # ioctl name ("KVM_CREATE_VM") or "sev:<command id>" → (errno, firmware status) it fails with
        self.fail = dict(fail or {})
        self.req_certs_attr = req_certs_attr
        self.partial = partial
        if cpuid_reject not in ("invalid", "always", "never"):
            raise ValueError(f"cpuid_reject {cpuid_reject!r}")
        self.cpuid_reject = cpuid_reject
        self.fail_update_at = fail_update_at
        self.c_bit = c_bit
        self.mem_attrs = mem_attrs
        self.fds: dict[int, str] = {}
        self.calls: list[Call] = []
        self.sev_cmds: list[dict[str, Any]] = []
        self.private: set[int] = set()
        self.memslots: list[dict[str, Any]] = []
        self.gmem: set[int] = set()
        self.launched: dict[int, tuple[int, str | None]] = {}  # gfn → (type, sha384 of source)
        self.launch_order: list[int] = []
        self.state = "none"
        self.req_certs_enabled = False
        self.vcpus: dict[int, dict[str, Any]] = {}  # fd → {"id", "regs", "sregs", ...}
        self.scripts: dict[int, list[Exit]] = {}
        self.pending: dict[int, Exit | None] = {}
        self.completions: list[dict[str, Any]] = []
        self.host_data: bytes | None = None
        self.policy: int | None = None
        self.finished_vcpus: list[dict[str, Any]] = []
        self.cpuid_firmware: bytes | None = None
        self.cpuid_attempts: list[bytes] = []  # CPUID pages the firmware refused
        self.maps: list[mmap.mmap] = []
        self.guest: Any = None  # a FakeSnpGuest playing the payload at KVM_RUN (None: scripts only)
        self._next = 10

    # -- fds -------------------------------------------------------------------------------------
    def _new(self, kind: str) -> int:
        self._next += 1
        self.fds[self._next] = kind
        return self._next

    def open(self, path: str, flags: int) -> int:
        base = os.path.basename(path)
        if base not in ("kvm", "sev"):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        fd = self._new(base)
        self.calls.append(Call(base, "open", {"path": path, "fd": fd}))
        return fd

    def close(self, fd: int) -> None:
        kind = self.fds.pop(fd)
        self.calls.append(Call(kind, "close", {"fd": fd}))

    def mmap(self, fd: int, length: int) -> mmap.mmap:
        m = mmap.mmap(-1, length)
        self.maps.append(m)
        self.vcpus[fd]["map"] = m
        return m

    @property
    def sev_fd(self) -> int | None:
        return next((fd for fd, k in self.fds.items() if k == "sev"), None)

    def names(self, kinds: tuple[str, ...] = ("kvm", "vm", "vcpu")) -> list[str]:
        return [c.name for c in self.calls if c.fd_kind.split(":")[0] in kinds]

    # -- ioctl -----------------------------------------------------------------------------------
    def ioctl(self, fd: int, request: int, arg: Any = 0) -> int:
        kind = self.fds[fd]
        name = NAMES.get(request, hex(request))
        if request in (uapi.KVM_CHECK_EXTENSION, uapi.KVM_CREATE_VM, uapi.KVM_CREATE_VCPU, uapi.KVM_RUN,
                       uapi.KVM_GET_API_VERSION, uapi.KVM_GET_VCPU_MMAP_SIZE):
            name = {uapi.KVM_CHECK_EXTENSION: "KVM_CHECK_EXTENSION", uapi.KVM_CREATE_VM: "KVM_CREATE_VM",
                    uapi.KVM_CREATE_VCPU: "KVM_CREATE_VCPU", uapi.KVM_RUN: "KVM_RUN",
                    uapi.KVM_GET_API_VERSION: "KVM_GET_API_VERSION",
                    uapi.KVM_GET_VCPU_MMAP_SIZE: "KVM_GET_VCPU_MMAP_SIZE"}[request]
        call = Call(kind, name)
        self.calls.append(call)
        key = f"sev:{arg.id}" if request == uapi.KVM_MEMORY_ENCRYPT_OP else name
        if key in self.fail:
            err, fw = self.fail[key]
            if request == uapi.KVM_MEMORY_ENCRYPT_OP:
                arg.error = fw
            raise _err(err)
        handler = getattr(self, "_" + name.lower(), None)
        if handler is None:
            raise _err(errno.ENOTTY)
        return handler(fd, kind, arg, call)

    def _kvm_get_api_version(self, fd, kind, arg, call):
        return 12

    def _kvm_get_vcpu_mmap_size(self, fd, kind, arg, call):
        return 3 * PAGE

    def _kvm_check_extension(self, fd, kind, cap, call):
        call.detail["cap"] = cap
        if cap == uapi.KVM_CAP_VM_TYPES:
            return 0x1F
        if cap == uapi.KVM_CAP_MEMORY_ATTRIBUTES:
            return uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE if self.mem_attrs and kind == "vm" else 0
        return 1

    def _kvm_get_supported_cpuid(self, fd, kind, arg, call):
        sig = uapi.KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        # a Genoa-like host: TSC_DEADLINE, TSC_ADJUST, SPEC_CTRL..SSBD, VIRT_SSBD offered by KVM
        entries = [(0, 0, 0, 0x10, 0x68747541, 0x444D4163, 0x69746E65),
                   (1, 0, 0, 0xA10F11, 0x800, 0x7FD8320B, 0x178BFBFF),
                   (7, 0, sig, 1, 0xF1BF07AB, 0x405FCE, 0xFC000010), (7, 1, sig, 0x20, 0, 0, 0),
                   (0xD, 0, sig, 0x7, 0x340, 0x340, 0), (0xD, 1, sig, 0xF, 0x340, 0, 0),
                   (0x80000000, 0, 0, 0x80000021, 0, 0, 0), (0x80000008, 0, 0, 0x3030, 0x2B91D205, 0x7F, 0),
                   (0x8000001F, 0, 0, 0x1B, 0x40 | self.c_bit, 0, 0),
                   (0x40000000, 0, 0, 0x40000001, 0x4B4D564B, 0x564B4D56, 0x4D)]
        arg.nent = len(entries)
        for i, (f, idx, flags, a, b, c, d) in enumerate(entries):
            e = arg.entries[i]
            e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx = f, idx, flags, a, b, c, d
        return 0

    def _kvm_get_device_attr(self, fd, kind, arg, call):
        call.detail.update(group=arg.group, attr=arg.attr)
        if arg.group == uapi.KVM_X86_GRP_SEV and arg.attr == uapi.KVM_X86_SEV_SNP_REQ_CERTS and \
                self.req_certs_attr is not None:
            C.c_uint64.from_address(arg.addr).value = self.req_certs_attr
            return 0
        raise _err(errno.ENXIO)

    def _kvm_create_vm(self, fd, kind, vm_type, call):
        call.detail["type"] = vm_type
        if vm_type != uapi.KVM_X86_SNP_VM:
            raise _err(errno.EINVAL)
        if self.state != "none":  # a new VM after an earlier one: fresh per-VM state
            self._reset_vm()
        return self._new("vm")

    def _reset_vm(self) -> None:
        self.sev_cmds, self.private, self.memslots, self.gmem = [], set(), [], set()
        self.launched, self.launch_order, self.state, self.req_certs_enabled = {}, [], "none", False
        self.vcpus, self.scripts, self.pending, self.completions = {}, {}, {}, []
        self.host_data = self.policy = None
        self.finished_vcpus, self.cpuid_firmware, self.cpuid_attempts = [], None, []
        if self.guest is not None:
            self.guest.seqno = [1, 1, 1, 1]

    def _kvm_enable_cap(self, fd, kind, arg, call):
        call.detail.update(cap=arg.cap, args=[arg.args[i] for i in range(4)], raw=bytes(arg))
        return 0

    def _kvm_create_guest_memfd(self, fd, kind, arg, call):
        call.detail.update(size=arg.size, flags=arg.flags)
        g = self._new("gmem")
        self.gmem.add(g)
        return g

    def _kvm_set_user_memory_region2(self, fd, kind, arg, call):
        d = dict(slot=arg.slot, flags=arg.flags, gpa=arg.guest_phys_addr, size=arg.memory_size,
                 uaddr=arg.userspace_addr, guest_memfd=arg.guest_memfd, offset=arg.guest_memfd_offset)
        call.detail.update(d)
        if d["flags"] & uapi.KVM_MEM_GUEST_MEMFD and d["guest_memfd"] not in self.gmem:
            raise _err(errno.EINVAL)
        self.memslots.append(d)
        return 0

    def _kvm_set_user_memory_region(self, fd, kind, arg, call):
        call.detail.update(slot=arg.slot, gpa=arg.guest_phys_addr, size=arg.memory_size)
        raise _err(errno.EINVAL)  # an SNP VM needs guest_memfd memslots

    def _kvm_set_memory_attributes(self, fd, kind, arg, call):
        call.detail.update(address=arg.address, size=arg.size, attributes=arg.attributes)
        if arg.address % PAGE or arg.size % PAGE or arg.attributes & ~uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE:
            raise _err(errno.EINVAL)
        gfns = range(arg.address // PAGE, (arg.address + arg.size) // PAGE)
        if arg.attributes:
            self.private.update(gfns)
        else:
            self.private.difference_update(gfns)
        return 0

    def _kvm_create_vcpu(self, fd, kind, vcpu_id, call):
        call.detail["id"] = vcpu_id
        if self.state == "none":
            raise _err(errno.EINVAL)
        vfd = self._new(f"vcpu:{vcpu_id}")
        self.vcpus[vfd] = {"id": vcpu_id}
        self.pending[vfd] = None
        return vfd

    def _protected(self, fd) -> None:
        if self.state == "finished":
            raise _err(errno.EINVAL)

    def _kvm_set_cpuid2(self, fd, kind, arg, call):
        call.detail["nent"] = arg.nent
        return 0

    def _kvm_set_sregs(self, fd, kind, arg, call):
        self._protected(fd)
        self.vcpus[fd]["sregs"] = bytes(arg)
        return 0

    def _kvm_set_regs(self, fd, kind, arg, call):
        self._protected(fd)
        self.vcpus[fd]["regs"] = bytes(arg)
        return 0

    def _kvm_get_regs(self, fd, kind, arg, call):
        self._protected(fd)
        return 0

    # -- SEV commands ------------------------------------------------------------------------------
    def _kvm_memory_encrypt_op(self, fd, kind, cmd, call):
        rec = {"id": cmd.id, "sev_fd": cmd.sev_fd}
        call.detail.update(rec)
        self.sev_cmds.append(rec)
        if cmd.sev_fd != self.sev_fd:
            raise _err(errno.EBADF)
        sizes = {uapi.KVM_SEV_INIT2: 48, uapi.KVM_SEV_SNP_LAUNCH_START: 64, uapi.KVM_SEV_SNP_LAUNCH_UPDATE: 64,
                 uapi.KVM_SEV_SNP_LAUNCH_FINISH: 88}
        if cmd.id in sizes:
            rec["data"] = C.string_at(cmd.data, sizes[cmd.id])
        vcpus_exist = bool(self.vcpus)
        if cmd.id == uapi.KVM_SEV_INIT2:
            if self.state != "none" or vcpus_exist:
                raise _err(errno.EINVAL)
            self.state = "init"
            return 0
        if self.state == "none":
            raise _err(errno.ENOTTY)
        if cmd.id == uapi.KVM_SEV_SNP_ENABLE_REQ_CERTS:
            if vcpus_exist:
                raise _err(errno.EINVAL)
            self.req_certs_enabled = True
            return 0
        if cmd.id == uapi.KVM_SEV_SNP_LAUNCH_START:
            ls = uapi.kvm_sev_snp_launch_start.from_address(cmd.data)
            if self.state != "init" or not ls.policy & (1 << 17) or ls.flags:
                raise _err(errno.EINVAL)
            self.policy = ls.policy
            self.state = "launching"
            return 0
        if cmd.id == uapi.KVM_SEV_SNP_LAUNCH_UPDATE:
            return self._launch_update(cmd, rec)
        if cmd.id == uapi.KVM_SEV_SNP_LAUNCH_FINISH:
            if self.state != "launching":
                raise _err(errno.EINVAL)
            lf = uapi.kvm_sev_snp_launch_finish.from_address(cmd.data)
            self.host_data = bytes(lf.host_data)
            self.finished_vcpus = [{k: v for k, v in vc.items() if k != "map"}
                                   for _, vc in sorted(self.vcpus.items(), key=lambda kv: kv[1]["id"])]
            self.state = "finished"
            return 0
        raise _err(errno.EINVAL)

    def _launch_update(self, cmd, rec) -> int:
        up = uapi.kvm_sev_snp_launch_update.from_address(cmd.data)
        rec.update(gfn=up.gfn_start, len=up.len, type=up.type, uaddr=up.uaddr)
        if self.state != "launching" or not up.len or up.len % PAGE or up.flags:
            raise _err(errno.EINVAL)
        if up.type != 3 and (not up.uaddr or up.uaddr % PAGE):
            raise _err(errno.EINVAL)
        slot_ok = any(s["flags"] & uapi.KVM_MEM_GUEST_MEMFD and s["gpa"] <= up.gfn_start * PAGE < s["gpa"] + s["size"]
                      for s in self.memslots)
        if not slot_ok:
            raise _err(errno.EINVAL)
        n = min(self.partial, up.len // PAGE)
        for i in range(n):
            gfn = up.gfn_start + i
            if gfn not in self.private or gfn in self.launched:
                raise _err(errno.EINVAL)
            src = C.string_at(up.uaddr + i * PAGE, PAGE) if up.type != 3 else None
            if self.fail_update_at is not None and gfn * PAGE == self.fail_update_at:
                cmd.error = SEV_RET_INVALID_PAGE_STATE
                raise _err(errno.EIO)
            fixed = self._cpuid_correction(src) if up.type == 6 else None
            if fixed is not None:
                # firmware rejects: the corrected page is copied back to the source, KVM fails EIO
                self.cpuid_firmware = fixed
                self.cpuid_attempts.append(src)
                C.memmove(up.uaddr + i * PAGE, fixed, PAGE)
                cmd.error = SEV_RET_INVALID_PARAM
                raise _err(errno.EIO)
            self.launched[gfn] = (up.type, hashlib.sha384(src).hexdigest() if up.type == 1 else None)
            self.launch_order.append(gfn)
        up.gfn_start += n
        up.len -= n * PAGE
        if up.type != 3:
            up.uaddr += n * PAGE
        return 0

    def guest_view(self, gpa: int, size: int) -> memoryview:
        """Guest memory [gpa, gpa + size) through the memslot's userspace mapping."""
        for sl in self.memslots:
            if sl["gpa"] <= gpa and gpa + size <= sl["gpa"] + sl["size"]:
                return memoryview((C.c_char * size).from_address(sl["uaddr"] + gpa - sl["gpa"])).cast("B")
        raise _err(errno.EFAULT)

    def measured_launch_log(self) -> dict[str, Any]:
        """What KVM handed the firmware (pages launched, vCPU state at LAUNCH_FINISH), as the
        launch-log JSON snplab.attest.measure reads."""
        updates = [{"gpa": gfn * PAGE, "page_type": t, "npages": 1, **({"sha384": d} if d else {})}
                   for gfn, (t, d) in sorted(self.launched.items())]
        vcpus = []
        for v in self.finished_vcpus:
            regs = uapi.kvm_regs.from_buffer_copy(v["regs"])
            sregs = uapi.kvm_sregs.from_buffer_copy(v["sregs"])
            seg = lambda s: {n: getattr(s, n) for n, _ in uapi.kvm_segment._fields_}  # noqa: E731
            vcpus.append({"regs": {n: getattr(regs, n) for n, _ in uapi.kvm_regs._fields_},
                          "sregs": {**{n: seg(getattr(sregs, n)) for n in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")},
                                    "gdt": {"base": sregs.gdt.base, "limit": sregs.gdt.limit},
                                    "idt": {"base": sregs.idt.base, "limit": sregs.idt.limit},
                                    "cr0": sregs.cr0, "cr3": sregs.cr3, "cr4": sregs.cr4, "efer": sregs.efer}})
        return {"updates": updates, "vcpus": vcpus}

    def _cpuid_correction(self, src: bytes) -> bytes | None:
        """The page the fake firmware would accept instead of ``src``, None if it accepts ``src``."""
        if self.cpuid_reject == "never" or src == self.cpuid_firmware:
            return None
        if self.cpuid_reject == "always":
            fixed = bytearray(src)
            fixed[0x10 + 28] ^= 0x1  # entry 0: flip bit 0 of EBX
            return bytes(fixed)
        fixed = bytearray(src)
        count = int.from_bytes(src[:4], "little")
        bad = False
        for i in range(min(count, 64)):
            off = 0x10 + 48 * i
            fn, idx = int.from_bytes(src[off:off + 4], "little"), int.from_bytes(src[off + 4:off + 8], "little")
            for reg, mask in _REFUSED.get((fn, idx), _REFUSED.get((fn, None), {})).items():
                o = off + 24 + 4 * "abcd".index(reg)
                v = int.from_bytes(src[o:o + 4], "little")
                if v & mask:
                    bad = True
                    fixed[o:o + 4] = (v & ~mask).to_bytes(4, "little")
            if fn == 0xD and idx in (0, 1) and int.from_bytes(src[off + 28:off + 32], "little") != 0x240:
                bad = True
                fixed[off + 28:off + 32] = (0x240).to_bytes(4, "little")
        return bytes(fixed) if bad else None

    # -- KVM_RUN -----------------------------------------------------------------------------------
    def _kvm_run(self, fd, kind, arg, call):
        if self.state != "finished":
            raise _err(errno.EINVAL)
        run = uapi.kvm_run.from_buffer(self.vcpus[fd]["map"])
        try:
            prev = self.pending[fd]
            self.pending[fd] = None
            if prev is not None and prev.check is not None:
                prev.check(run, self)  # KVM completing the previous exit (may raise)
            if run.immediate_exit:
                call.detail["immediate_exit"] = True
                self.completions.append({"vcpu": self.vcpus[fd]["id"], "what": "immediate_exit"})
                raise _err(errno.EINTR)
            vid = self.vcpus[fd]["id"]
            if vid not in self.scripts and self.guest is not None:
                self.scripts[vid] = self.guest.exits(self, vid)
            script = self.scripts.get(vid, [])
            if isinstance(script, list):
                if not script:
                    raise _err(errno.EIO)
                ex = script.pop(0)
            else:
                ex = next(script, None)
                if ex is None:
                    raise _err(errno.EIO)
            call.detail["exit"] = ex.label
            ex.setup(run)
            self.pending[fd] = ex
            if ex.errno_:
                raise _err(ex.errno_)
            return 0
        finally:
            del run


# ---- a fake guest on the fake host ------------------------------------------------------------


class FakeSnpGuest:
    """Plays the payload (and the firmware behind KVM) on the fake SNP host: at KVM_RUN it reads
    the step script the VMM wrote into ``snplab_params`` (layout from the payload's DWARF), makes
    the exits a real SNP guest's requests cause (REQ_CERTS per extended request on req-certs; the
    6.11 stub's 24 zero bytes on stub), has "firmware" sign reports with the emulated platform's
    keys over the digest of what KVM was handed (``measured_launch_log``), writes
    ``snplab_results`` the way the payload does, and terminates through the GHCB MSR protocol
    (KVM_SYSTEM_EVENT SEV_TERM; a scripted ``terminate(ghcb=True)`` step as the NAE form, data[0] =
    the GHCB GPA). Only the ``none`` retry policy and normal pages are played.

    ``fail_at`` breaks one thing for tests of the callers: ``"req"``/``"ext_req"`` (the firmware
    returns INVALID_PARAM), ``"measurement"`` (a wrong MEASUREMENT), ``"entry"`` (the vCPU never
    reaches C: KVM_RUN fails with EFAULT, as a triple fault in the entry path would),
    ``"invalid_len"``/``"busy"`` (KVM turns the VMM's ENOSPC/EAGAIN into GENERIC), ``"sev_term"``
    (the guest ends in a SHUTDOWN system event instead of SEV_TERM), ``"sev_term_ghcb"`` (a GHCB
    NAE termination is reported like the MSR form)."""

    def __init__(self, elf: str | os.PathLike[str], product: str = "milan", *, fail_at: str | None = None) -> None:
        from snplab.emu.platform import EmulatedBackend
        from snplab.vmm.elf import load_elf

        self.img = load_elf(elf)
        self.dwarf = self.img.dwarf
        self.backend = EmulatedBackend(product, "vcek", "req-certs", (), 5)
        self.fail_at = fail_at
        self.seqno = [1, 1, 1, 1]

    def _view(self, fake: FakeSnpKvm, struct_name: str, gpa: int) -> Any:
        from snplab.vmm.dwarf import StructView

        layout = self.dwarf.layout(struct_name)
        return StructView(layout, fake.guest_view(gpa, layout.size), gpa=gpa, what=struct_name)

    def _report(self, fake: FakeSnpKvm, report_data: bytes, vmpl: int) -> bytes:
        import dataclasses

        from snplab.attest import measure
        from snplab.emu.psp import EmulatedPsp

        keys = self.backend.keys
        psp = EmulatedPsp(product=self.backend.product, tcb=keys.tcb, vcek=keys.vek, chip_id=keys.chip_id)
        psp.policy, psp.host_data = fake.policy, fake.host_data or bytes(32)
        digest = measure.predict_measurement(measure.launch_log_from_json(fake.measured_launch_log()))
        if self.fail_at == "measurement":
            digest = bytes(48)
        rep = dataclasses.replace(psp.build_report(report_data, vmpl), measurement=digest)
        return psp.sign_report(rep, keys.vek).pack()

    def exits(self, fake: FakeSnpKvm, vid: int):
        """The exits vCPU ``vid`` makes (a generator: answers are read back between exits)."""
        from snplab.abi.cert_table import parse_table

        if self.fail_at == "entry":
            yield Exit(lambda run: setattr(run, "exit_reason", uapi.KVM_EXIT_UNKNOWN), errno_=errno.EFAULT,
                       label="entry fault")
            return
        psym = self.img.find_symbol("snplab_params")
        params = self._view(fake, "snplab_params", psym.addr)
        vp = params["vcpu"][vid]
        results = self._view(fake, "snplab_results", int(params["results_gpa"]))
        ops, outs = self.dwarf.enum("snplab_op"), self.dwarf.enum("snplab_outcome")
        dec = self.dwarf.enum("snplab_decrypt")
        results.set("magic", self.dwarf.enum("snplab_magic")["SNPLAB_RESULTS_MAGIC"])
        results.set("abi_version", 1)
        results.set("nvcpus", int(params["nvcpus"]))
        vr = results["vcpu"][vid]
        vr["started"], vr["ghcb_version"] = 1, 2
        store_used = 0
        nsteps = int(vp["nsteps"])
        term = 0x100 | (3 << 12)  # GHCB MSR termination request, reason set 3, code 0 (done)
        for i in range(nsteps):
            st = vp["steps"][i]
            op = int(st["op"])
            if op == ops["SNPLAB_OP_TERMINATE"]:
                vr["nsteps"] = i + 1
                code = int(st["vmpl"]) & 0xFF or 4  # SNPLAB_TERM_SCRIPTED
                term = 0x100 | (3 << 12) | (code << 16)
                if int(st["flags"]) & self.dwarf.enum("snplab_step_flags")["SNPLAB_STEP_TERM_GHCB"] and \
                        self.fail_at != "sev_term_ghcb":
                    term = int(vp["ghcb_gpa"])  # NAE form: KVM reports the GHCB GPA
                break
            ext = op == ops["SNPLAB_OP_EXT_REQ"]
            certs_gpa = int(vp["certs_gpa"]) + int(st["certs_gpa_offset"])
            npages = int(st["certs_npages"])
            vmpck = int(st["vmpck"])
            att = {"exit_code": 0x80000012 if ext else 0x80000011, "req_gpa": int(vp["req_gpa"]),
                   "resp_gpa": int(vp["resp_gpa"]), "rax_in": certs_gpa if ext else 0, "rbx_in": npages if ext else 0,
                   "rbx_out": npages if ext else 0, "seqno": self.seqno[vmpck], "vmpck": vmpck,
                   "msg_type": int(st["msg_type"])}
            e2, e1 = 0, 0
            if ext and fake.req_certs_enabled:
                answer: dict[str, int] = {}

                def setup(run, gpa=certs_gpa, n=npages):
                    run.exit_reason = 43
                    run.snp_req_certs.gpa, run.snp_req_certs.npages, run.snp_req_certs.ret = gpa, n, 0

                def check(run, _fake, answer=answer):
                    answer.update(ret=run.snp_req_certs.ret, npages=run.snp_req_certs.npages)
                    if answer["ret"] not in (0, errno.ENOSPC, errno.EAGAIN, errno.EIO):
                        raise _err(errno.EINVAL)

                yield Exit(setup, check, label="req_certs")
                ret = answer["ret"]
                e2 = {0: 0, errno.ENOSPC: 1 << 32, errno.EAGAIN: 2 << 32, errno.EIO: 0xFFFFFFFF << 32}[ret]
                if (ret, self.fail_at) in ((errno.ENOSPC, "invalid_len"), (errno.EAGAIN, "busy")):
                    e2 = 0xFFFFFFFF << 32
                if ret == errno.ENOSPC:
                    att["rbx_out"] = answer["npages"]
            elif ext and npages:
                fake.guest_view(certs_gpa, 24)[:] = bytes(24)  # 6.11 stub: an empty table
            if e2 == 0 and self.fail_at == ("ext_req" if ext else "req"):
                e2 = SEV_RET_INVALID_PARAM
            sr = vr["steps"][i]
            if e2 == 0:
                sr.assign({"resp_seqno": self.seqno[vmpck] + 1, "resp_msg_type": 6, "resp_msg_version": 1,
                           "resp_msg_vmpck": vmpck, "decrypt": dec["SNPLAB_DEC_OK"], "rsp_status": 0,
                           "rsp_report_size": 0x4A0,
                           "report": self._report(fake, bytes(st["report_data"].bytes()), int(st["vmpl"]))})
                self.seqno[vmpck] += 2
                outcome = outs["SNPLAB_OUT_OK"]
                if ext and npages:
                    raw = bytes(fake.guest_view(certs_gpa, min(npages, 16) * PAGE))
                    try:
                        ents = parse_table(raw).entries
                        used = max([e.offset + e.length for e in ents], default=24)
                    except ValueError:
                        used = 24
                    fake.guest_view(vr["cert_store"].gpa + store_used, used)[:] = raw[:used]
                    sr.assign({"certs_len": used, "certs_store_off": store_used})
                    store_used += used
            else:
                outcome = {1: outs["SNPLAB_OUT_INVALID_LEN"], 2: outs["SNPLAB_OUT_BUSY"]}.get(
                    e2 >> 32, outs["SNPLAB_OUT_VMM_ERROR"] if e2 >> 32 else outs["SNPLAB_OUT_FW_ERROR"])
            att.update(sw_exitinfo1=e1, sw_exitinfo2=e2)
            sr.assign({"outcome": outcome, "nattempts": 1, "attempts": [att], "certs_gpa": certs_gpa if ext else 0,
                       "certs_npages": npages if ext else 0})
            vr["nsteps"] = i + 1
        vr["cert_store_used"] = store_used
        for k in range(4):
            vr["seqno_next"][k] = self.seqno[k]
        vr["finished"] = 1

        def term_setup(run):
            run.exit_reason = uapi.KVM_EXIT_SYSTEM_EVENT
            run.system_event.type, run.system_event.ndata = uapi.KVM_SYSTEM_EVENT_SEV_TERM, 1
            if self.fail_at == "sev_term":
                run.system_event.type = uapi.KVM_SYSTEM_EVENT_SHUTDOWN
            run.system_event.data[0] = term

        yield Exit(term_setup, label="sev_term")
