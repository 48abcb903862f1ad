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
                 fail_update_at: int | None = None, c_bit: int = 51, mem_attrs: bool = True) -> None:
        super().__init__()
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
        return self._new("vm")

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
            script = self.scripts.get(self.vcpus[fd]["id"], [])
            if not script:
                raise _err(errno.EIO)
            ex = script.pop(0)
            call.detail["exit"] = ex.label
            ex.setup(run)
            self.pending[fd] = ex
            if ex.errno_:
                raise _err(ex.errno_)
            return 0
        finally:
            del run
