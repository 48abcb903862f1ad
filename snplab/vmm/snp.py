"""The real SNP backend: launch an SEV-SNP guest through KVM and answer KVM's SNP exits.

Launch (shared/reference/kvm-host-abi.md §3.6; numbers §3.1–§3.5, errata.md table A)::

    KVM_CREATE_VM(KVM_X86_SNP_VM)                       (Guest.prepare, vm_type = 4)
    KVM_SEV_INIT2 {vmsa_features, ghcb_version 0 → 2}   setup_vm
    KVM_SEV_SNP_ENABLE_REQ_CERTS                        setup_vm, profile req-certs, before vCPUs
                                                        (or setup_vcpu after the last vCPU, to see
                                                        KVM refuse it: enable_req_certs="late")
    KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL, 1 << KVM_HC_MAP_GPA_RANGE)
    KVM_CREATE_GUEST_MEMFD + KVM_SET_USER_MEMORY_REGION2(KVM_MEM_GUEST_MEMFD) per memslot
    KVM_SET_MEMORY_ATTRIBUTES(PRIVATE) on all RAM        (the guest converts its shared window)
    KVM_CREATE_VCPU, KVM_SET_CPUID2/SREGS/REGS          (Guest.launch)
    KVM_SEV_SNP_LAUNCH_START {policy}                   SnpLauncher.start
    KVM_SEV_SNP_LAUNCH_UPDATE per range                 SnpLauncher.update (loops on partial
                                                        progress; the CPUID page is built the way
                                                        QEMU builds it, the firmware-corrected page
                                                        is the fallback; which one launched is
                                                        recorded as ``cpuid_launched``)
    KVM_SEV_SNP_LAUNCH_FINISH {host_data}               SnpLauncher.finish (KVM measures VMSAs)

Every KVM_MEMORY_ENCRYPT_OP carries the /dev/sev fd (``kvm_sev_cmd.sev_fd``).

Exits (decoders in snplab.vmm.exits, shared with the emulated platform): KVM_EXIT_SNP_REQ_CERTS
(the number from the host's kernel headers when they define it, else 43; overridable),
KVM_EXIT_VMGEXIT (v15 draft, 40), KVM_EXIT_HYPERCALL(KVM_HC_MAP_GPA_RANGE) and
KVM_EXIT_MEMORY_FAULT (→ KVM_SET_MEMORY_ATTRIBUTES), KVM_EXIT_SYSTEM_EVENT(SEV_TERM).
The certificate answer keeps its blob lock until the following KVM_RUN returns EINTR under
``immediate_exit`` (contract §3; exits._req_certs / Vcpu.await_completion).

The launch digest is not readable from KVM: ``SnpLauncher.measurement`` is None and the
MEASUREMENT comes from the guest's attestation report (predicted by snplab.attest.measure).
"""

from __future__ import annotations

import ctypes as C
import errno
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snplab.abi import cpuid_page as cpuid_abi
from snplab.vmm import uapi
from snplab.vmm.errors import GuestSetupError, VmmError
from snplab.vmm.events import MapGpaRange, MemoryFault
from snplab.vmm.kvm import DEFAULT_IOCTL, IoctlLayer, Kvm
from snplab.vmm.launch import PAGE_SIZE, PageType, VcpuInitState
from snplab.vmm import memory_map as mm

if TYPE_CHECKING:
    from snplab.vmm.guest import Guest
    from snplab.vmm.vcpu import Vcpu

ABIS = ("auto", "stub", "req-certs", "vmgexit-v15")
DEFAULT_REQ_CERTS_EXIT = uapi.KVM_EXIT_SNP_REQ_CERTS  # 43 in mainline 7.0 (errata A)
DEFAULT_C_BIT = 51  # Milan, Genoa, Turin: CPUID 0x8000001F EBX[5:0]
SEV_RET_INVALID_PARAM = 0x16  # include/uapi/linux/psp-sev.h
MAX_UPDATE_STALLS = 16  # LAUNCH_UPDATE calls in a row without progress before giving up

SNP_CPUID_MAX_ENTRIES = cpuid_abi.SNP_CPUID_MAX_ENTRIES
ENABLE_REQ_CERTS_WHEN = ("early", "late")  # late: after the last vCPU exists (KVM says EINVAL)
CPUID_FIRST_ATTEMPT = "first attempt"
CPUID_FIRMWARE_CORRECTED = "firmware-corrected retry"

SEV_CMD_NAMES = {uapi.KVM_SEV_INIT2: "KVM_SEV_INIT2", uapi.KVM_SEV_SNP_LAUNCH_START: "KVM_SEV_SNP_LAUNCH_START",
                 uapi.KVM_SEV_SNP_LAUNCH_UPDATE: "KVM_SEV_SNP_LAUNCH_UPDATE",
                 uapi.KVM_SEV_SNP_LAUNCH_FINISH: "KVM_SEV_SNP_LAUNCH_FINISH",
                 uapi.KVM_SEV_SNP_ENABLE_REQ_CERTS: "KVM_SEV_SNP_ENABLE_REQ_CERTS"}


def firmware_status_text(status: int) -> str:
    """``INVALID_PARAM (0x16)``; ``0x0`` for no firmware status."""
    from snplab.abi.sev_status import status_name

    name = status_name(status)
    return f"{name} ({status:#x})" if status and not name.startswith("0x") else f"{status:#x}"


class SnpLaunchError(VmmError):
    """A KVM_MEMORY_ENCRYPT_OP failed: names the SEV command, the errno and the firmware status."""

    def __init__(self, command: str, err: int, fw_error: int, detail: str = "") -> None:
        self.command, self.errno, self.fw_error = command, err, fw_error
        msg = f"{command}: {os.strerror(err)} ({errno.errorcode.get(err, err)}), firmware status " \
              f"{firmware_status_text(fw_error)}"
        super().__init__(f"{msg}; {detail}" if detail else msg)


# ---- host queries (used by snplab.platform.SnpPlatform) ---------------------------------------


def detect_abi(kvm_path: str = "/dev/kvm", io: IoctlLayer | None = None) -> str:
    """req-certs if KVM_X86_SEV_SNP_REQ_CERTS reads 1 on /dev/kvm, else stub (kvm-host-abi §1(d)).

    A kernel with the v15 patch cannot be told apart: pass abi="vmgexit-v15" explicitly."""
    with Kvm(kvm_path, io=io) as kvm:
        rc, value = kvm.get_device_attr_raw(uapi.KVM_X86_GRP_SEV, uapi.KVM_X86_SEV_SNP_REQ_CERTS)
    return "req-certs" if rc == 0 and value == 1 else "stub"


def unavailable_reason(kvm_path: str = "/dev/kvm", sev_path: str = "/dev/sev",
                       io: IoctlLayer | None = None) -> str | None:
    """None if this host offers SNP VMs, else one line saying why not (`snplab host check`
    gives the full diagnosis)."""
    io = io or DEFAULT_IOCTL
    try:
        kvm = Kvm(kvm_path, io=io)
    except VmmError as e:
        return str(e)
    with kvm:
        types = kvm.check_extension_raw(uapi.KVM_CAP_VM_TYPES)
    if types < 0 or not types & (1 << uapi.KVM_X86_SNP_VM):
        return ("KVM offers no SNP VM type (KVM_CAP_VM_TYPES lacks KVM_X86_SNP_VM): not an SNP host; "
                "run 'snplab host check'")
    try:
        fd = io.open(sev_path, os.O_RDWR)
    except OSError as e:
        return f"cannot open {sev_path}: {e.strerror}"
    io.close(fd)
    return None


def host_product(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    from snplab.attest.product import product_from_cpuid

    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        k, _, v = line.partition(":")
        fields[k.strip()] = v.strip()
    if fields.get("vendor_id") != "AuthenticAMD":
        return None
    try:
        return product_from_cpuid(int(fields["cpu family"]), int(fields["model"]))
    except (KeyError, ValueError):
        return None


def req_certs_exit_from_headers(root: str = "/") -> int | None:
    from snplab.host.kernel_headers import req_certs_exit_number

    return req_certs_exit_number(root)


def cpuid_page(entries: list[tuple[int, int, int, int, int, int]], xcr0: int = 1) -> bytes:
    """SNP CPUID page from (function, index, eax, ebx, ecx, edx) tuples (first 64), values as
    given (xcr0_in = ``xcr0`` for 0xD.0/0xD.1). ``snp_cpuid_entries`` builds QEMU's page."""
    return cpuid_abi.pack_page([cpuid_abi.CpuidEntry(fn, idx, xcr0 if fn == 0xD and idx in (0, 1) else 0, 0,
                                                     a, b, c, d) for fn, idx, a, b, c, d in entries])


def parse_cpuid_page(page: bytes) -> list[tuple[int, int, int, int, int, int]]:
    return [(e.eax_in, e.ecx_in, *e.values) for e in cpuid_abi.parse_page(page)]


def _kept_leaf(function: int) -> bool:
    """Standard and extended leaves only: no hypervisor range (0x4000_0000..), no Transmeta/Centaur."""
    return function < 0x4000_0000 or 0x8000_0000 <= function < 0x8000_0100


def snp_cpuid_entries(cpuid: Any) -> list[cpuid_abi.CpuidEntry]:
    """The CPUID page QEMU builds from KVM_GET_SUPPORTED_CPUID (qemu target/i386/sev.c
    ``sev_snp_cpuid_info_fill`` after ``sev_snp_mask_cpuid_features``): feature bits the firmware
    refuses cleared, ``ecx_in`` only for KVM_CPUID_FLAG_SIGNIFCANT_INDEX entries, 0xD.0/0xD.1
    with EBX = 0x240, xcr0_in = 1, xss_in = 0. Sent first; the firmware-corrected page is the
    fallback (SnpLauncher._update)."""
    out = []
    for i in range(cpuid.nent):
        e = cpuid.entries[i]
        if not _kept_leaf(e.function):
            continue
        ecx_in = e.index if e.flags & uapi.KVM_CPUID_FLAG_SIGNIFCANT_INDEX else 0
        ent = cpuid_abi.without_masked(cpuid_abi.CpuidEntry(e.function, ecx_in, 0, 0, e.eax, e.ebx, e.ecx, e.edx))
        if e.function == cpuid_abi.XSAVE_LEAF and e.index in (0, 1):
            ent = cpuid_abi.CpuidEntry(e.function, ecx_in, cpuid_abi.XCR0_X87, 0, ent.eax,
                                       cpuid_abi.XSAVE_LEGACY_SIZE, ent.ecx, ent.edx)
        out.append(ent)
    return out[:SNP_CPUID_MAX_ENTRIES]


# ---- the backend ----------------------------------------------------------------------------


@dataclass
class SevCommandRecord:
    """One KVM_MEMORY_ENCRYPT_OP: what was asked and what came back (for the transcript)."""

    name: str
    id: int
    rc: int
    fw_error: int
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "id": self.id, "rc": self.rc, "fw_error": self.fw_error, **self.detail}


class SnpBackend:
    """Backend protocol (snplab.vmm.guest.Backend) for real SEV-SNP guests."""

    name = "snp"
    vm_type = uapi.KVM_X86_SNP_VM

    def __init__(self, abi: str = "auto", req_certs_exit: int | None = None, sev_path: str = "/dev/sev",
                 ioctl: IoctlLayer | None = None, *, c_bit: int | None = None, vmsa_features: int = 0,
                 cpuid_table: str = "kvm", headers_root: str = "/", enable_req_certs: str = "early") -> None:
        if abi not in ABIS:
            raise GuestSetupError(f"abi {abi!r}: want one of {', '.join(ABIS)}")
        if cpuid_table not in ("kvm", "empty"):
            raise GuestSetupError(f"cpuid_table {cpuid_table!r}: want 'kvm' or 'empty'")
        if enable_req_certs not in ENABLE_REQ_CERTS_WHEN:
            raise GuestSetupError(f"enable_req_certs {enable_req_certs!r}: want 'early' or 'late'")
        self.enable_req_certs_when = enable_req_certs
        # KVM_SEV_SNP_ENABLE_REQ_CERTS issued after a vCPU exists: the error KVM gave (None: it
        # was accepted, which snp_enable_certs never does; the platform then runs the guest)
        self.enable_req_certs_error: str | None = None
        self.requested_abi = abi
        self.abi: str | None = None if abi == "auto" else abi
        if req_certs_exit is None:
            req_certs_exit = req_certs_exit_from_headers(headers_root) or DEFAULT_REQ_CERTS_EXIT
        self.req_certs_exit = req_certs_exit
        self.sev_path = sev_path
        self.io = ioctl
        self.vmsa_features = vmsa_features
        self.cpuid_table = cpuid_table
        self._c_bit = c_bit
        self.sev_fd: int | None = None
        self.commands: list[SevCommandRecord] = []
        self.cpuid_corrections: list[dict[str, Any]] = []
        self.gmem_fds: list[int] = []
        self.cpuid_page_sent: bytes | None = None
        # which CPUID page the firmware launched: CPUID_FIRST_ATTEMPT or CPUID_FIRMWARE_CORRECTED
        self.cpuid_launched: str | None = None

    # -- Backend protocol -------------------------------------------------------------------------

    @property
    def c_bit_mask(self) -> int:
        if self._c_bit is None:
            self._c_bit = self._host_c_bit()
        return 1 << self._c_bit

    def _host_c_bit(self) -> int:
        """CPUID 0x8000001F EBX[5:0] as KVM reports it; 51 if KVM does not say."""
        try:
            with Kvm(io=self.io) as kvm:
                cpuid = kvm.supported_cpuid()
        except VmmError:
            return DEFAULT_C_BIT
        for i in range(cpuid.nent):
            e = cpuid.entries[i]
            if e.function == 0x8000001F and e.ebx & 0x3F:
                return e.ebx & 0x3F
        return DEFAULT_C_BIT

    def setup_vm(self, guest: Guest) -> None:
        assert guest.vm is not None and guest.kvm is not None and guest.memory is not None
        io = self.io or guest.io
        self.io = io
        if self.abi is None:
            rc, value = guest.kvm.get_device_attr_raw(uapi.KVM_X86_GRP_SEV, uapi.KVM_X86_SEV_SNP_REQ_CERTS)
            self.abi = "req-certs" if rc == 0 and value == 1 else "stub"
        try:
            self.sev_fd = io.open(self.sev_path, os.O_RDWR)
        except OSError as e:
            raise GuestSetupError(f"cannot open {self.sev_path}: {e.strerror}") from None
        # KVM keeps this fd number from LAUNCH_START (snp_launch_start: sev->fd = argp->sev_fd) and
        # uses it for every guest request, so it stays open for the guest's lifetime.
        weakref.finalize(guest, self.close)
        init = uapi.kvm_sev_init(vmsa_features=self.vmsa_features, flags=0, ghcb_version=0)
        self.sev_command(guest, uapi.KVM_SEV_INIT2, init, vmsa_features=self.vmsa_features)
        if self.abi == "req-certs" and self.enable_req_certs_when == "early":
            self.sev_command(guest, uapi.KVM_SEV_SNP_ENABLE_REQ_CERTS, None)
        guest.vm.enable_cap(uapi.KVM_CAP_EXIT_HYPERCALL, 1 << uapi.KVM_HC_MAP_GPA_RANGE)
        mem = guest.memory
        for slot in mem.slots:
            gfd = guest.vm.create_guest_memfd(slot.size, 0)
            self.gmem_fds.append(gfd)
            slot.guest_memfd, slot.guest_memfd_offset = gfd, 0
            slot.flags |= uapi.KVM_MEM_GUEST_MEMFD
            guest.vm.set_user_memory_region2(slot.slot, slot.flags, slot.gpa, slot.size, slot.hva, gfd, 0)
            slot.registered = True
        if not mem.enable_kvm_attributes(guest.vm):
            raise GuestSetupError("the SNP VM does not support KVM_MEMORY_ATTRIBUTE_PRIVATE")
        for slot in mem.slots:
            mem.set_attributes(slot.gpa, slot.size // PAGE_SIZE, True)
        self.cpuid_page_sent = self._cpuid_page(guest)
        mem.write(mm.CPUID_GPA, self.cpuid_page_sent)

    def _cpuid_page(self, guest: Guest) -> bytes:
        if self.cpuid_table == "empty":
            return bytes(PAGE_SIZE)
        assert guest.kvm is not None
        return cpuid_abi.pack_page(snp_cpuid_entries(guest.kvm.supported_cpuid()))

    def launcher(self, guest: Guest) -> SnpLauncher:
        return SnpLauncher(self, guest)

    def setup_vcpu(self, guest: Guest, vcpu: Vcpu) -> None:
        """KVM builds the VMSA from the state Guest.launch set. With enable_req_certs="late",
        ENABLE_REQ_CERTS goes out once the last vCPU exists; snp_enable_certs refuses it then
        (``kvm->created_vcpus`` → -EINVAL), and the platform aborts the run with that error."""
        if (self.abi == "req-certs" and self.enable_req_certs_when == "late"
                and vcpu.index == guest.config.nvcpus - 1):
            try:
                self.sev_command(guest, uapi.KVM_SEV_SNP_ENABLE_REQ_CERTS, None, after_vcpus=vcpu.index + 1)
            except SnpLaunchError as e:
                self.enable_req_certs_error = str(e)

    def register_handlers(self, guest: Guest) -> None:
        from snplab.vmm.memory import map_gpa_range_handler, memory_fault_handler

        assert guest.memory is not None
        guest.handlers.register(MapGpaRange, map_gpa_range_handler(guest.memory))
        guest.handlers.register(MemoryFault, memory_fault_handler(guest.memory))
        dec = guest.exit_decoders
        req_certs = dec.pop(uapi.KVM_EXIT_SNP_REQ_CERTS)
        v15 = dec.pop(uapi.KVM_EXIT_VMGEXIT_V15)
        if self.abi == "req-certs":
            dec[self.req_certs_exit] = req_certs
        elif self.abi == "vmgexit-v15":
            dec[uapi.KVM_EXIT_VMGEXIT_V15] = v15
        # stub: KVM never exits for certificates; an unexpected exit is reported as unhandled

    def close(self) -> None:
        io = self.io or DEFAULT_IOCTL
        for fd in self.gmem_fds:
            try:
                io.close(fd)
            except OSError:
                pass
        self.gmem_fds = []
        if self.sev_fd is not None:
            try:
                io.close(self.sev_fd)
            except OSError:
                pass
            self.sev_fd = None

    # -- SEV commands -----------------------------------------------------------------------------

    def sev_command_raw(self, guest: Guest, cmd_id: int, data: Any) -> tuple[int, int]:
        """KVM_MEMORY_ENCRYPT_OP(cmd_id, &data, sev_fd); (rc or -errno, firmware status)."""
        assert guest.vm is not None and self.sev_fd is not None
        cmd = uapi.kvm_sev_cmd(id=cmd_id, data=C.addressof(data) if data is not None else 0,
                               error=0, sev_fd=self.sev_fd)
        rc = guest.vm.memory_encrypt_op_raw(cmd)
        return rc, cmd.error

    def sev_command(self, guest: Guest, cmd_id: int, data: Any, **detail: Any) -> None:
        name = SEV_CMD_NAMES.get(cmd_id, f"sev command {cmd_id}")
        rc, fw = self.sev_command_raw(guest, cmd_id, data)
        self.commands.append(SevCommandRecord(name, cmd_id, rc, fw, detail))
        if rc < 0:
            raise SnpLaunchError(name, -rc, fw)

    def to_json(self) -> dict[str, Any]:
        return {"abi": self.abi, "req_certs_exit": self.req_certs_exit, "c_bit": self._c_bit,
                "vmsa_features": self.vmsa_features, "sev_commands": [c.to_json() for c in self.commands],
                "cpuid_corrections": self.cpuid_corrections, "cpuid_launched": self.cpuid_launched,
                "enable_req_certs": self.enable_req_certs_when,
                "enable_req_certs_error": self.enable_req_certs_error}


class SnpLauncher:
    """The Launcher (contract §4) that issues KVM_SEV_SNP_LAUNCH_{START,UPDATE,FINISH}."""

    def __init__(self, backend: SnpBackend, guest: Guest) -> None:
        self.backend, self.guest = backend, guest
        self.started = self.finished = False
        self._next_gpa = 0

    @property
    def measurement(self) -> bytes | None:
        return None  # only the attestation report carries it on real hardware

    def start(self, policy: int) -> None:
        if self.started:
            raise GuestSetupError("SNP launch started twice")
        ls = uapi.kvm_sev_snp_launch_start(policy=policy, flags=0)
        self.backend.sev_command(self.guest, uapi.KVM_SEV_SNP_LAUNCH_START, ls, policy=policy)
        self.started = True

    def update(self, gpa: int, data: bytes, page_type: PageType) -> None:
        if not self.started or self.finished:
            raise GuestSetupError("LAUNCH_UPDATE outside start..finish")
        if gpa % PAGE_SIZE or not data or len(data) % PAGE_SIZE or gpa < self._next_gpa:
            raise GuestSetupError(f"launch update {gpa:#x}+{len(data):#x}: not page aligned or not ascending")
        mem = self.guest.memory
        assert mem is not None
        npages = len(data) // PAGE_SIZE
        page_type = PageType(page_type)
        if any(not mem.is_private(gpa + i * PAGE_SIZE) for i in range(npages)):
            mem.set_attributes(gpa, npages, True)
        if page_type != PageType.ZERO:
            mem.write(gpa, data)  # the source KVM copies into the private (guest_memfd) page
        self._update(gpa, npages, page_type)
        self._next_gpa = gpa + len(data)

    def _update(self, gpa: int, npages: int, page_type: PageType) -> None:
        b, g = self.backend, self.guest
        mem = g.memory
        assert mem is not None
        up = uapi.kvm_sev_snp_launch_update(gfn_start=gpa // PAGE_SIZE, uaddr=mem.hva(gpa, npages * PAGE_SIZE),
                                            len=npages * PAGE_SIZE, type=int(page_type), flags=0)
        calls = stalls = 0
        corrected = False
        while up.len:
            before = up.len
            rc, fw = b.sev_command_raw(g, uapi.KVM_SEV_SNP_LAUNCH_UPDATE, up)
            calls += 1
            if rc == -errno.EIO and fw == SEV_RET_INVALID_PARAM and page_type == PageType.CPUID and not corrected:
                # The firmware rejected CPUID values and KVM copied its corrected page back to
                # uaddr (sev_gmem_post_populate): record what changed and launch that page.
                corrected = True
                self._note_cpuid_correction(up.gfn_start * PAGE_SIZE)
                continue
            if rc == -errno.EAGAIN or (rc >= 0 and up.len == before):
                stalls += 1
                if stalls > MAX_UPDATE_STALLS:
                    raise SnpLaunchError("KVM_SEV_SNP_LAUNCH_UPDATE", errno.EAGAIN, fw,
                                         f"no progress at gpa {up.gfn_start * PAGE_SIZE:#x}")
                continue
            if rc < 0:
                b.commands.append(SevCommandRecord("KVM_SEV_SNP_LAUNCH_UPDATE", uapi.KVM_SEV_SNP_LAUNCH_UPDATE,
                                                   rc, fw, {"gpa": gpa, "npages": npages, "type": page_type.name}))
                raise SnpLaunchError("KVM_SEV_SNP_LAUNCH_UPDATE", -rc, fw,
                                     f"{page_type.name} at gpa {up.gfn_start * PAGE_SIZE:#x}")
            stalls = 0
        if page_type == PageType.CPUID:
            b.cpuid_launched = CPUID_FIRMWARE_CORRECTED if corrected else CPUID_FIRST_ATTEMPT
        b.commands.append(SevCommandRecord("KVM_SEV_SNP_LAUNCH_UPDATE", uapi.KVM_SEV_SNP_LAUNCH_UPDATE, 0, 0,
                                           {"gpa": gpa, "npages": npages, "type": page_type.name, "calls": calls,
                                            **({"cpuid_launched": b.cpuid_launched}
                                               if page_type == PageType.CPUID else {})}))

    def _note_cpuid_correction(self, page_gpa: int) -> None:
        mem = self.guest.memory
        assert mem is not None
        ours = self.backend.cpuid_page_sent if page_gpa == mm.CPUID_GPA else None
        theirs = mem.read(page_gpa, PAGE_SIZE)
        old = {(f, i): v for f, i, *v in parse_cpuid_page(ours)} if ours else {}
        changed = [{"function": f, "index": i, "sent": old.get((f, i)), "firmware": v}
                   for f, i, *v in parse_cpuid_page(theirs) if old.get((f, i)) != v]
        self.backend.cpuid_corrections.append({"gpa": page_gpa, "changed": changed})

    def finish(self, host_data: bytes, vcpus: list[VcpuInitState]) -> None:
        if not self.started or self.finished:
            raise GuestSetupError("LAUNCH_FINISH without start, or twice")
        if len(host_data) != 32:
            raise GuestSetupError(f"HOST_DATA is {len(host_data)} bytes, want 32")
        lf = uapi.kvm_sev_snp_launch_finish(flags=0)
        C.memmove(C.addressof(lf) + type(lf).host_data.offset, bytes(host_data), 32)
        self.backend.sev_command(self.guest, uapi.KVM_SEV_SNP_LAUNCH_FINISH, lf, host_data=bytes(host_data).hex(),
                                 vcpus=len(vcpus))
        self.finished = True


__all__ = ["SnpBackend", "SnpLauncher", "SnpLaunchError", "detect_abi", "unavailable_reason", "host_product",
           "cpuid_page", "parse_cpuid_page", "snp_cpuid_entries", "req_certs_exit_from_headers",
           "CPUID_FIRST_ATTEMPT", "CPUID_FIRMWARE_CORRECTED"]
