"""Thin wrappers for the /dev/kvm, VM and vCPU file descriptors (KVM selftests style).

Every wrapper comes as a pair: `x_raw(...)` returns the ioctl's result (>= 0) or `-errno` and never
raises for a kernel error; `x(...)` checks and raises `IoctlError(name, errno)`. (Python mangles
`__x` names inside classes, so the raw form is spelled with a `_raw` suffix.)

All system calls on KVM fds go through one `IoctlLayer` so that a test can inject a fake that
records every call and answers like KVM (the SNP launch test does this).
"""

from __future__ import annotations

import ctypes as C
import errno
import fcntl
import mmap
import os
from typing import Any

from snplab.vmm import uapi
from snplab.vmm.errors import IoctlError, KvmUnavailable, VmDeadError

Arg = Any  # int, or a ctypes object / bytearray passed by pointer (mutated in place)


class IoctlLayer:
    """The system calls the VMM makes on KVM fds; replace it to record or fake them."""

    def __init__(self) -> None:
        # Per-layer cache for answers that never change in a process (supported CPUID, mmap size).
        self.cache: dict[str, Any] = {}

    def ioctl(self, fd: int, request: int, arg: Arg = 0) -> int:
        """Issue one ioctl; raise OSError on failure. Buffers are passed by pointer."""
        if isinstance(arg, int):
            return fcntl.ioctl(fd, request, arg)
        return fcntl.ioctl(fd, request, arg, True)

    def open(self, path: str, flags: int) -> int:
        return os.open(path, flags | os.O_CLOEXEC)

    def close(self, fd: int) -> None:
        os.close(fd)

    def mmap(self, fd: int, length: int) -> mmap.mmap:
        """Map a vCPU's kvm_run (shared, read/write)."""
        return mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


DEFAULT_IOCTL = IoctlLayer()


def addr_of(obj: Any) -> int:
    """User-space address of a ctypes object or bytearray (for pointer fields in uapi structs)."""
    if isinstance(obj, bytearray):
        return C.addressof((C.c_char * len(obj)).from_buffer(obj))
    return C.addressof(obj)


class _Fd:
    kind = "fd"

    def __init__(self, fd: int, io: IoctlLayer) -> None:
        self.fd = fd
        self.io = io

    def ioctl_raw(self, request: int, arg: Arg = 0) -> int:
        """Return the ioctl's result, or -errno."""
        try:
            return self.io.ioctl(self.fd, request, arg)
        except OSError as e:
            return -(e.errno or errno.EIO)

    def ioctl(self, name: str, request: int, arg: Arg = 0) -> int:
        """Return the ioctl's result; raise IoctlError on failure."""
        rc = self.ioctl_raw(request, arg)
        if rc < 0:
            self._fail(name, -rc)
        return rc

    def _fail(self, name: str, err: int) -> None:
        raise IoctlError(name, err)

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            self.io.close(fd)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _device_attr(group: int, attr: int, value: C.c_uint64 | None = None) -> uapi.kvm_device_attr:
    da = uapi.kvm_device_attr(flags=0, group=group, attr=attr)
    if value is not None:
        da.addr = C.addressof(value)
    return da


class _AttrMixin(_Fd):
    def get_device_attr_raw(self, group: int, attr: int) -> tuple[int, int]:
        """Return (rc, value) of KVM_GET_DEVICE_ATTR; value is the u64 read back."""
        value = C.c_uint64(0)
        rc = self.ioctl_raw(uapi.KVM_GET_DEVICE_ATTR, _device_attr(group, attr, value))
        return rc, value.value

    def get_device_attr(self, group: int, attr: int) -> int:
        rc, value = self.get_device_attr_raw(group, attr)
        if rc < 0:
            self._fail(f"KVM_GET_DEVICE_ATTR group={group} attr={attr}", -rc)
        return value

    def has_device_attr_raw(self, group: int, attr: int) -> int:
        return self.ioctl_raw(uapi.KVM_HAS_DEVICE_ATTR, _device_attr(group, attr))

    def has_device_attr(self, group: int, attr: int) -> bool:
        return self.has_device_attr_raw(group, attr) == 0

    def set_device_attr_raw(self, group: int, attr: int, value: int) -> int:
        v = C.c_uint64(value)
        return self.ioctl_raw(uapi.KVM_SET_DEVICE_ATTR, _device_attr(group, attr, v))

    def set_device_attr(self, group: int, attr: int, value: int) -> None:
        rc = self.set_device_attr_raw(group, attr, value)
        if rc < 0:
            self._fail(f"KVM_SET_DEVICE_ATTR group={group} attr={attr}", -rc)

    def check_extension_raw(self, cap: int) -> int:
        return self.ioctl_raw(uapi.KVM_CHECK_EXTENSION, cap)

    def check_extension(self, cap: int) -> int:
        return self.ioctl(f"KVM_CHECK_EXTENSION({cap})", uapi.KVM_CHECK_EXTENSION, cap)

    def enable_cap_raw(self, cap: int, *args: int, flags: int = 0) -> int:
        ec = uapi.kvm_enable_cap(cap=cap, flags=flags)
        for i, a in enumerate(args):
            ec.args[i] = a
        return self.ioctl_raw(uapi.KVM_ENABLE_CAP, ec)

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        rc = self.enable_cap_raw(cap, *args, flags=flags)
        if rc < 0:
            self._fail(f"KVM_ENABLE_CAP({cap}, {list(args)})", -rc)


class Kvm(_AttrMixin):
    """The /dev/kvm system fd."""

    kind = "kvm"

    def __init__(self, path: str = "/dev/kvm", io: IoctlLayer | None = None) -> None:
        io = io or DEFAULT_IOCTL
        try:
            fd = io.open(path, os.O_RDWR)
        except OSError as e:
            raise KvmUnavailable(f"cannot open {path}: {e.strerror}") from e
        super().__init__(fd, io)
        self.path = path

    def api_version(self) -> int:
        return self.ioctl("KVM_GET_API_VERSION", uapi.KVM_GET_API_VERSION)

    def vcpu_mmap_size(self) -> int:
        size = self.io.cache.get("vcpu_mmap_size")
        if size is None:
            size = self.ioctl("KVM_GET_VCPU_MMAP_SIZE", uapi.KVM_GET_VCPU_MMAP_SIZE)
            self.io.cache["vcpu_mmap_size"] = size
        return int(size)

    def create_vm_raw(self, vm_type: int = 0) -> int:
        """Return the new VM fd, or -errno."""
        return self.ioctl_raw(uapi.KVM_CREATE_VM, vm_type)

    def create_vm(self, vm_type: int = 0) -> VmFd:
        fd = self.ioctl(f"KVM_CREATE_VM(type={vm_type})", uapi.KVM_CREATE_VM, vm_type)
        return VmFd(fd, self.io, self, vm_type)

    def supported_cpuid_raw(self, nent: int = uapi.KVM_MAX_CPUID_ENTRIES) -> tuple[int, Any]:
        buf = uapi.cpuid2_type(nent)()
        buf.nent = nent
        return self.ioctl_raw(uapi.KVM_GET_SUPPORTED_CPUID, buf), buf

    def supported_cpuid(self) -> Any:
        """KVM_GET_SUPPORTED_CPUID as a kvm_cpuid2 (fetched once per IoctlLayer, then shared).

        Callers must not modify the returned object; copy it with `cpuid2_copy` first."""
        cached = self.io.cache.get("supported_cpuid")
        if cached is None:
            rc, buf = self.supported_cpuid_raw()
            if rc < 0:
                self._fail("KVM_GET_SUPPORTED_CPUID", -rc)
            cached = uapi.cpuid2_type(buf.nent)()
            cached.nent = buf.nent
            C.memmove(C.addressof(cached.entries), C.addressof(buf.entries),
                      C.sizeof(uapi.kvm_cpuid_entry2) * buf.nent)
            self.io.cache["supported_cpuid"] = cached
        return cached


def cpuid2_copy(src: Any) -> Any:
    """A private, modifiable copy of a kvm_cpuid2 object."""
    dst = type(src)()
    C.memmove(C.addressof(dst), C.addressof(src), C.sizeof(src))
    return dst


class VmFd(_AttrMixin):
    """A VM fd returned by KVM_CREATE_VM."""

    kind = "vm"

    def __init__(self, fd: int, io: IoctlLayer, kvm: Kvm, vm_type: int) -> None:
        super().__init__(fd, io)
        self.kvm = kvm
        self.vm_type = vm_type

    def _fail(self, name: str, err: int) -> None:
        # Dead-VM detection (KVM selftests): on EIO, a VM that no longer answers a trivial
        # CHECK_EXTENSION was killed or bugged by KVM; say so instead of blaming the ioctl.
        if err == errno.EIO and not self.closed and \
                self.ioctl_raw(uapi.KVM_CHECK_EXTENSION, uapi.KVM_CAP_USER_MEMORY) < 0:
            raise VmDeadError(name, err, "KVM killed/bugged the VM, check the kernel log")
        raise IoctlError(name, err)

    def create_vcpu_raw(self, vcpu_id: int) -> int:
        return self.ioctl_raw(uapi.KVM_CREATE_VCPU, vcpu_id)

    def create_vcpu(self, vcpu_id: int) -> VcpuFd:
        fd = self.ioctl(f"KVM_CREATE_VCPU({vcpu_id})", uapi.KVM_CREATE_VCPU, vcpu_id)
        try:
            return VcpuFd(fd, self.io, self, vcpu_id)
        except BaseException:
            self.io.close(fd)
            raise

    def set_user_memory_region_raw(self, slot: int, flags: int, gpa: int, size: int,
                                   uaddr: int) -> int:
        r = uapi.kvm_userspace_memory_region(slot=slot, flags=flags, guest_phys_addr=gpa,
                                             memory_size=size, userspace_addr=uaddr)
        return self.ioctl_raw(uapi.KVM_SET_USER_MEMORY_REGION, r)

    def set_user_memory_region(self, slot: int, flags: int, gpa: int, size: int,
                               uaddr: int) -> None:
        rc = self.set_user_memory_region_raw(slot, flags, gpa, size, uaddr)
        if rc < 0:
            self._fail(f"KVM_SET_USER_MEMORY_REGION slot={slot} gpa={gpa:#x} size={size:#x}", -rc)

    def set_user_memory_region2_raw(self, slot: int, flags: int, gpa: int, size: int,
                                    uaddr: int, guest_memfd: int = 0,
                                    guest_memfd_offset: int = 0) -> int:
        r = uapi.kvm_userspace_memory_region2(
            slot=slot, flags=flags, guest_phys_addr=gpa, memory_size=size, userspace_addr=uaddr,
            guest_memfd=guest_memfd, guest_memfd_offset=guest_memfd_offset)
        return self.ioctl_raw(uapi.KVM_SET_USER_MEMORY_REGION2, r)

    def set_user_memory_region2(self, slot: int, flags: int, gpa: int, size: int, uaddr: int,
                                guest_memfd: int = 0, guest_memfd_offset: int = 0) -> None:
        rc = self.set_user_memory_region2_raw(slot, flags, gpa, size, uaddr, guest_memfd,
                                              guest_memfd_offset)
        if rc < 0:
            self._fail(f"KVM_SET_USER_MEMORY_REGION2 slot={slot} gpa={gpa:#x} size={size:#x}",
                       -rc)

    def create_guest_memfd_raw(self, size: int, flags: int = 0) -> int:
        return self.ioctl_raw(uapi.KVM_CREATE_GUEST_MEMFD,
                              uapi.kvm_create_guest_memfd(size=size, flags=flags))

    def create_guest_memfd(self, size: int, flags: int = 0) -> int:
        rc = self.create_guest_memfd_raw(size, flags)
        if rc < 0:
            self._fail(f"KVM_CREATE_GUEST_MEMFD size={size:#x}", -rc)
        return rc

    def set_memory_attributes_raw(self, gpa: int, size: int, attributes: int) -> int:
        return self.ioctl_raw(uapi.KVM_SET_MEMORY_ATTRIBUTES, uapi.kvm_memory_attributes(
            address=gpa, size=size, attributes=attributes, flags=0))

    def set_memory_attributes(self, gpa: int, size: int, attributes: int) -> None:
        rc = self.set_memory_attributes_raw(gpa, size, attributes)
        if rc < 0:
            self._fail(f"KVM_SET_MEMORY_ATTRIBUTES gpa={gpa:#x} size={size:#x} "
                       f"attributes={attributes:#x}", -rc)

    def memory_encrypt_op_raw(self, cmd: uapi.kvm_sev_cmd) -> int:
        """KVM_MEMORY_ENCRYPT_OP; `cmd.error` holds the firmware status afterwards."""
        return self.ioctl_raw(uapi.KVM_MEMORY_ENCRYPT_OP, cmd)

    def memory_encrypt_op(self, cmd: uapi.kvm_sev_cmd) -> None:
        rc = self.memory_encrypt_op_raw(cmd)
        if rc < 0:
            self._fail(f"KVM_MEMORY_ENCRYPT_OP id={cmd.id} fw_error={cmd.error:#x}", -rc)

    def set_msr_filter_raw(self, flt: uapi.kvm_msr_filter) -> int:
        return self.ioctl_raw(uapi.KVM_X86_SET_MSR_FILTER, flt)

    def set_msr_filter(self, flt: uapi.kvm_msr_filter) -> None:
        rc = self.set_msr_filter_raw(flt)
        if rc < 0:
            self._fail("KVM_X86_SET_MSR_FILTER", -rc)

    def set_tss_addr(self, addr: int) -> None:
        self.ioctl(f"KVM_SET_TSS_ADDR({addr:#x})", uapi.KVM_SET_TSS_ADDR, addr)


class VcpuFd(_AttrMixin):
    """A vCPU fd plus its mmapped `kvm_run` (as `self.run_struct`)."""

    kind = "vcpu"

    def __init__(self, fd: int, io: IoctlLayer, vm: VmFd, vcpu_id: int) -> None:
        super().__init__(fd, io)
        self.vm = vm
        self.vcpu_id = vcpu_id
        self._mmap = io.mmap(fd, vm.kvm.vcpu_mmap_size())
        self.run_struct: uapi.kvm_run | None = uapi.kvm_run.from_buffer(self._mmap)

    def _fail(self, name: str, err: int) -> None:
        VmFd._fail(self.vm, name, err)

    @property
    def run_mmap(self) -> mmap.mmap:
        """The raw kvm_run mapping (I/O data lives at run.io.data_offset)."""
        return self._mmap

    def run_raw(self) -> int:
        """KVM_RUN; 0 or -errno (-EINTR after a kick or with immediate_exit set)."""
        return self.ioctl_raw(uapi.KVM_RUN, 0)

    def run(self) -> None:
        self.ioctl("KVM_RUN", uapi.KVM_RUN, 0)

    def get_regs(self) -> uapi.kvm_regs:
        regs = uapi.kvm_regs()
        self.ioctl("KVM_GET_REGS", uapi.KVM_GET_REGS, regs)
        return regs

    def set_regs_raw(self, regs: uapi.kvm_regs) -> int:
        return self.ioctl_raw(uapi.KVM_SET_REGS, regs)

    def set_regs(self, regs: uapi.kvm_regs) -> None:
        self.ioctl("KVM_SET_REGS", uapi.KVM_SET_REGS, regs)

    def get_sregs(self) -> uapi.kvm_sregs:
        sregs = uapi.kvm_sregs()
        self.ioctl("KVM_GET_SREGS", uapi.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs_raw(self, sregs: uapi.kvm_sregs) -> int:
        return self.ioctl_raw(uapi.KVM_SET_SREGS, sregs)

    def set_sregs(self, sregs: uapi.kvm_sregs) -> None:
        self.ioctl("KVM_SET_SREGS", uapi.KVM_SET_SREGS, sregs)

    def set_cpuid2_raw(self, cpuid: Any) -> int:
        return self.ioctl_raw(uapi.KVM_SET_CPUID2, cpuid)

    def set_cpuid2(self, cpuid: Any) -> None:
        self.ioctl(f"KVM_SET_CPUID2(nent={cpuid.nent})", uapi.KVM_SET_CPUID2, cpuid)

    def get_xcrs(self) -> uapi.kvm_xcrs:
        x = uapi.kvm_xcrs()
        self.ioctl("KVM_GET_XCRS", uapi.KVM_GET_XCRS, x)
        return x

    def set_xcrs_raw(self, xcrs: uapi.kvm_xcrs) -> int:
        return self.ioctl_raw(uapi.KVM_SET_XCRS, xcrs)

    def set_xcrs(self, xcrs: uapi.kvm_xcrs) -> None:
        self.ioctl("KVM_SET_XCRS", uapi.KVM_SET_XCRS, xcrs)

    def set_xcr0(self, value: int) -> None:
        x = uapi.kvm_xcrs(nr_xcrs=1)
        x.xcrs[0].xcr = 0
        x.xcrs[0].value = value
        self.set_xcrs(x)

    def close(self) -> None:
        if self.run_struct is not None:
            self.run_struct = None  # drop the buffer export before unmapping
            try:
                self._mmap.close()
            except BufferError:  # someone still holds a view of kvm_run: let GC unmap it
                pass
        super().close()
