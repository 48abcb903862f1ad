"""KVM userspace ABI (x86-64): ioctl numbers, exit reasons, capabilities and ctypes structs.

Sources: the installed `<linux/kvm.h>` / `<asm/kvm.h>` (Linux 6.1 here) for the long-stable
structs, and `shared/reference/kvm-host-abi.md` §3 (corrected by `errata.md`) for the ones newer
than those headers (memory_region2, guest_memfd, memory attributes, SEV/SNP launch, the
`snp_req_certs` exit and the v15 draft `kvm_user_vmgexit`). Every struct is declared once, with
its size checked at import; `tests/test_vmm_uapi.py` compares sizes and offsets with gcc.

Field names copy the C spelling so the C probe can name them. Padding the C header does not name
is called `_pad<offset>` (the probe skips names starting with `_`).
"""

from __future__ import annotations

import ctypes as C
from typing import Any

u8, u16, u32, u64 = C.c_uint8, C.c_uint16, C.c_uint32, C.c_uint64


class UapiLayoutError(Exception):
    """A ctypes declaration disagrees with the size the ABI fixes."""


def _sized(cls: Any, size: int) -> Any:
    if C.sizeof(cls) != size:
        raise UapiLayoutError(f"{cls.__name__}: sizeof is {C.sizeof(cls)}, want {size}")
    return cls


# --- asm-generic/ioctl.h -------------------------------------------------------------------
IOC_NONE, IOC_WRITE, IOC_READ = 0, 1, 2


def IOC(direction: int, typ: int, nr: int, size: int) -> int:
    """Encode an ioctl request number like the kernel's _IOC()."""
    if not 0 <= size < (1 << 14):
        raise UapiLayoutError(f"ioctl size {size} does not fit in 14 bits")
    return (direction << 30) | (size << 16) | (typ << 8) | nr


def _size_of(arg: Any) -> int:
    return arg if isinstance(arg, int) else C.sizeof(arg)


def IO(typ: int, nr: int) -> int:
    return IOC(IOC_NONE, typ, nr, 0)


def IOR(typ: int, nr: int, arg: Any) -> int:
    return IOC(IOC_READ, typ, nr, _size_of(arg))


def IOW(typ: int, nr: int, arg: Any) -> int:
    return IOC(IOC_WRITE, typ, nr, _size_of(arg))


def IOWR(typ: int, nr: int, arg: Any) -> int:
    return IOC(IOC_READ | IOC_WRITE, typ, nr, _size_of(arg))


def IOC_SIZE(request: int) -> int:
    return (request >> 16) & 0x3FFF


KVMIO = 0xAE

# --- structs in the installed 6.1 headers ---------------------------------------------------


class kvm_regs(C.Structure):
    _fields_ = [(n, u64) for n in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class kvm_segment(C.Structure):
    _fields_ = [("base", u64), ("limit", u32), ("selector", u16), ("type", u8),
                ("present", u8), ("dpl", u8), ("db", u8), ("s", u8), ("l", u8), ("g", u8),
                ("avl", u8), ("unusable", u8), ("padding", u8)]


class kvm_dtable(C.Structure):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


class kvm_sregs(C.Structure):
    _fields_ = [(n, kvm_segment) for n in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")] + [
        ("gdt", kvm_dtable), ("idt", kvm_dtable),
        ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64), ("cr8", u64), ("efer", u64),
        ("apic_base", u64), ("interrupt_bitmap", u64 * 4)]


class kvm_userspace_memory_region(C.Structure):
    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64), ("memory_size", u64),
                ("userspace_addr", u64)]


class kvm_enable_cap(C.Structure):
    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


class kvm_msr_filter_range(C.Structure):
    _fields_ = [("flags", u32), ("nmsrs", u32), ("base", u32), ("_pad12", u32),
                ("bitmap", u64)]  # __u8 *bitmap (user pointer)


KVM_MSR_FILTER_MAX_RANGES = 16


class kvm_msr_filter(C.Structure):
    _fields_ = [("flags", u32), ("_pad4", u32),
                ("ranges", kvm_msr_filter_range * KVM_MSR_FILTER_MAX_RANGES)]


class kvm_cpuid_entry2(C.Structure):
    _fields_ = [("function", u32), ("index", u32), ("flags", u32), ("eax", u32), ("ebx", u32),
                ("ecx", u32), ("edx", u32), ("padding", u32 * 3)]


class kvm_cpuid2(C.Structure):
    """Header only; the entries follow (flexible array). See `cpuid2_type(n)`."""
    _fields_ = [("nent", u32), ("padding", u32)]


def cpuid2_type(nent: int) -> Any:
    """A kvm_cpuid2 with room for `nent` entries."""
    return type(f"kvm_cpuid2_{nent}", (C.Structure,), {
        "_fields_": [("nent", u32), ("padding", u32), ("entries", kvm_cpuid_entry2 * nent)]})


class kvm_xcr(C.Structure):
    _fields_ = [("xcr", u32), ("reserved", u32), ("value", u64)]


class kvm_xcrs(C.Structure):
    _fields_ = [("nr_xcrs", u32), ("flags", u32), ("xcrs", kvm_xcr * 16), ("padding", u64 * 16)]


class kvm_device_attr(C.Structure):
    _fields_ = [("flags", u32), ("group", u32), ("attr", u64), ("addr", u64)]


class kvm_sev_cmd(C.Structure):
    _fields_ = [("id", u32), ("_pad4", u32), ("data", u64), ("error", u32), ("sev_fd", u32)]


class kvm_msr_entry(C.Structure):
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


class kvm_msrs(C.Structure):
    _fields_ = [("nmsrs", u32), ("pad", u32)]


# kvm_run exit-union members (x86 subset).
class _run_hw(C.Structure):
    _fields_ = [("hardware_exit_reason", u64)]


class _run_fail_entry(C.Structure):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class _run_ex(C.Structure):
    _fields_ = [("exception", u32), ("error_code", u32)]


class _run_io(C.Structure):
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32),
                ("data_offset", u64)]


class _run_mmio(C.Structure):
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class _run_hypercall(C.Structure):
    _fields_ = [("nr", u64), ("args", u64 * 6), ("ret", u64), ("longmode", u32), ("pad", u32)]


class _run_internal(C.Structure):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class _run_system_event_u(C.Union):
    _fields_ = [("flags", u64), ("data", u64 * 16)]


class _run_system_event(C.Structure):
    _anonymous_ = ("_u",)
    _fields_ = [("type", u32), ("ndata", u32), ("_u", _run_system_event_u)]


class _run_msr(C.Structure):
    _fields_ = [("error", u8), ("pad", u8 * 7), ("reason", u32), ("index", u32), ("data", u64)]


class _run_notify(C.Structure):
    _fields_ = [("flags", u32)]


# Newer than the installed headers (kvm-host-abi.md §3.3, §3.5; errata A).
class _run_memory_fault(C.Structure):
    _fields_ = [("flags", u64), ("gpa", u64), ("size", u64)]


class kvm_exit_snp_req_certs(C.Structure):
    _fields_ = [("gpa", u64), ("npages", u64), ("ret", u64)]


class kvm_user_vmgexit(C.Structure):
    """v15 draft, never merged: type @0, data_gpa @8, data_npages @16, ret @24, flags @28,
    status @29."""
    _fields_ = [("type", u32), ("_pad4", u32), ("data_gpa", u64), ("data_npages", u64),
                ("ret", u32), ("flags", u8), ("status", u8), ("_pad30", u8 * 2)]


class _run_exit_union(C.Union):
    _fields_ = [("hw", _run_hw), ("fail_entry", _run_fail_entry), ("ex", _run_ex),
                ("io", _run_io), ("mmio", _run_mmio), ("hypercall", _run_hypercall),
                ("internal", _run_internal), ("system_event", _run_system_event),
                ("msr", _run_msr), ("notify", _run_notify),
                ("memory_fault", _run_memory_fault), ("snp_req_certs", kvm_exit_snp_req_certs),
                ("vmgexit", kvm_user_vmgexit), ("padding", C.c_char * 256)]


SYNC_REGS_SIZE_BYTES = 2048


class kvm_run(C.Structure):
    _anonymous_ = ("_exit",)
    _fields_ = [("request_interrupt_window", u8), ("immediate_exit", u8), ("padding1", u8 * 6),
                ("exit_reason", u32), ("ready_for_interrupt_injection", u8), ("if_flag", u8),
                ("flags", u16), ("cr8", u64), ("apic_base", u64), ("_exit", _run_exit_union),
                ("kvm_valid_regs", u64), ("kvm_dirty_regs", u64),
                ("s", C.c_char * SYNC_REGS_SIZE_BYTES)]


# --- structs newer than the installed headers (kvm-host-abi.md §3.4, §3.5) ------------------


class kvm_userspace_memory_region2(C.Structure):
    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64), ("memory_size", u64),
                ("userspace_addr", u64), ("guest_memfd_offset", u64), ("guest_memfd", u32),
                ("pad1", u32), ("pad2", u64 * 14)]


class kvm_create_guest_memfd(C.Structure):
    _fields_ = [("size", u64), ("flags", u64), ("reserved", u64 * 6)]


class kvm_memory_attributes(C.Structure):
    _fields_ = [("address", u64), ("size", u64), ("attributes", u64), ("flags", u64)]


class kvm_sev_init(C.Structure):
    _fields_ = [("vmsa_features", u64), ("flags", u32), ("ghcb_version", u16), ("pad1", u16),
                ("pad2", u32 * 8)]


class kvm_sev_snp_launch_start(C.Structure):
    _fields_ = [("policy", u64), ("gosvw", u8 * 16), ("flags", u16), ("pad0", u8 * 6),
                ("pad1", u64 * 4)]


class kvm_sev_snp_launch_update(C.Structure):
    _fields_ = [("gfn_start", u64), ("uaddr", u64), ("len", u64), ("type", u8), ("pad0", u8),
                ("flags", u16), ("pad1", u32), ("pad2", u64 * 4)]


class kvm_sev_snp_launch_finish(C.Structure):
    _fields_ = [("id_block_uaddr", u64), ("id_auth_uaddr", u64), ("id_block_en", u8),
                ("auth_key_en", u8), ("vcek_disabled", u8), ("host_data", u8 * 32),
                ("pad0", u8 * 3), ("flags", u16), ("pad1", u64 * 4)]


class kvm_pre_fault_memory(C.Structure):
    _fields_ = [("gpa", u64), ("size", u64), ("flags", u64), ("padding", u64 * 5)]


for _cls, _size in ((kvm_regs, 144), (kvm_segment, 24), (kvm_dtable, 16), (kvm_sregs, 312),
                    (kvm_userspace_memory_region, 32), (kvm_enable_cap, 104),
                    (kvm_msr_filter_range, 24), (kvm_msr_filter, 392), (kvm_cpuid_entry2, 40),
                    (kvm_cpuid2, 8), (kvm_xcr, 16), (kvm_xcrs, 392), (kvm_device_attr, 24),
                    (kvm_sev_cmd, 24), (kvm_msr_entry, 16), (kvm_msrs, 8),
                    (_run_exit_union, 256), (kvm_run, 2352),
                    (_run_memory_fault, 24), (kvm_exit_snp_req_certs, 24), (kvm_user_vmgexit, 32),
                    (kvm_userspace_memory_region2, 160), (kvm_create_guest_memfd, 64),
                    (kvm_memory_attributes, 32), (kvm_sev_init, 48),
                    (kvm_sev_snp_launch_start, 64), (kvm_sev_snp_launch_update, 64),
                    (kvm_sev_snp_launch_finish, 88), (kvm_pre_fault_memory, 64)):
    _sized(_cls, _size)
del _cls, _size

# Offset of the exit union inside kvm_run (x86: no s390 psw words).
KVM_RUN_EXIT_OFFSET = 32

# --- ioctl request numbers (kvm-host-abi.md §3.2) ------------------------------------------
# /dev/kvm
KVM_GET_API_VERSION = IO(KVMIO, 0x00)
KVM_CREATE_VM = IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = IOWR(KVMIO, 0x05, kvm_cpuid2)
# VM fd
KVM_CREATE_VCPU = IO(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = IO(KVMIO, 0x47)
KVM_SET_USER_MEMORY_REGION2 = IOW(KVMIO, 0x49, kvm_userspace_memory_region2)
KVM_SET_TSC_KHZ = IO(KVMIO, 0xA2)
KVM_ENABLE_CAP = IOW(KVMIO, 0xA3, kvm_enable_cap)
KVM_MEMORY_ENCRYPT_OP = IOWR(KVMIO, 0xBA, C.c_ulong)  # size is `unsigned long`: uapi wart
KVM_X86_SET_MSR_FILTER = IOW(KVMIO, 0xC6, kvm_msr_filter)
KVM_SET_MEMORY_ATTRIBUTES = IOW(KVMIO, 0xD2, kvm_memory_attributes)
KVM_CREATE_GUEST_MEMFD = IOWR(KVMIO, 0xD4, kvm_create_guest_memfd)
KVM_SET_DEVICE_ATTR = IOW(KVMIO, 0xE1, kvm_device_attr)
KVM_GET_DEVICE_ATTR = IOW(KVMIO, 0xE2, kvm_device_attr)
KVM_HAS_DEVICE_ATTR = IOW(KVMIO, 0xE3, kvm_device_attr)
# vCPU fd
KVM_RUN = IO(KVMIO, 0x80)
KVM_GET_REGS = IOR(KVMIO, 0x81, kvm_regs)
KVM_SET_REGS = IOW(KVMIO, 0x82, kvm_regs)
KVM_GET_SREGS = IOR(KVMIO, 0x83, kvm_sregs)
KVM_SET_SREGS = IOW(KVMIO, 0x84, kvm_sregs)
KVM_SET_MSRS = IOW(KVMIO, 0x89, kvm_msrs)
KVM_SET_CPUID2 = IOW(KVMIO, 0x90, kvm_cpuid2)
KVM_GET_XCRS = IOR(KVMIO, 0xA6, kvm_xcrs)
KVM_SET_XCRS = IOW(KVMIO, 0xA7, kvm_xcrs)
KVM_PRE_FAULT_MEMORY = IOWR(KVMIO, 0xD5, kvm_pre_fault_memory)

# --- exit reasons (kvm-host-abi.md §3.3; errata A) -----------------------------------------
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_X86_RDMSR = 29
KVM_EXIT_X86_WRMSR = 30
KVM_EXIT_NOTIFY = 37
KVM_EXIT_MEMORY_FAULT = 39
KVM_EXIT_VMGEXIT_V15 = 40  # v15 draft only; mainline 40 is KVM_EXIT_TDX (never on AMD)
KVM_EXIT_SNP_REQ_CERTS = 43

EXIT_REASON_NAMES = {v: k[len("KVM_EXIT_"):] for k, v in dict(globals()).items()
                     if k.startswith("KVM_EXIT_") and isinstance(v, int)
                     and k not in ("KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT")}

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3
KVM_SYSTEM_EVENT_SEV_TERM = 6

KVM_INTERNAL_ERROR_EMULATION = 1

KVM_HC_MAP_GPA_RANGE = 12
KVM_MAP_GPA_RANGE_ENCRYPTED = 1 << 4

KVM_MEMORY_EXIT_FLAG_PRIVATE = 1 << 3
KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3

# v15 kvm_user_vmgexit constants (kvm-host-abi.md §1(a)).
KVM_USER_VMGEXIT_REQ_CERTS = 1
KVM_USER_VMGEXIT_REQ_CERTS_FLAGS_NOTIFY_DONE = 1 << 0
KVM_USER_VMGEXIT_REQ_CERTS_STATUS_PENDING = 0
KVM_USER_VMGEXIT_REQ_CERTS_STATUS_DONE = 1

# --- capabilities (installed kvm.h; kvm-host-abi.md §3.1) ----------------------------------
KVM_CAP_USER_MEMORY = 3
KVM_CAP_NR_VCPUS = 9
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_X86_USER_SPACE_MSR = 188
KVM_CAP_X86_MSR_FILTER = 189
KVM_CAP_EXIT_HYPERCALL = 201
KVM_CAP_SYS_ATTRIBUTES = 209
KVM_CAP_USER_MEMORY2 = 231
KVM_CAP_MEMORY_FAULT_INFO = 232
KVM_CAP_MEMORY_ATTRIBUTES = 233
KVM_CAP_GUEST_MEMFD = 234
KVM_CAP_VM_TYPES = 235
KVM_CAP_PRE_FAULT_MEMORY = 236

KVM_MSR_EXIT_REASON_INVAL = 1 << 0
KVM_MSR_EXIT_REASON_UNKNOWN = 1 << 1
KVM_MSR_EXIT_REASON_FILTER = 1 << 2
KVM_MSR_FILTER_READ = 1 << 0
KVM_MSR_FILTER_WRITE = 1 << 1
KVM_MSR_FILTER_DEFAULT_ALLOW = 0
KVM_MSR_FILTER_DEFAULT_DENY = 1

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2

# VM types (KVM_CREATE_VM argument).
KVM_X86_DEFAULT_VM = 0
KVM_X86_SW_PROTECTED_VM = 1
KVM_X86_SEV_VM = 2
KVM_X86_SEV_ES_VM = 3
KVM_X86_SNP_VM = 4

# Device attributes on /dev/kvm (group KVM_X86_GRP_SEV).
KVM_X86_GRP_SEV = 1
KVM_X86_SEV_VMSA_FEATURES = 0
KVM_X86_SNP_POLICY_BITS = 1
KVM_X86_SEV_SNP_REQ_CERTS = 2

# sev_cmd_id
KVM_SEV_INIT2 = 22
KVM_SEV_SNP_LAUNCH_START = 100
KVM_SEV_SNP_LAUNCH_UPDATE = 101
KVM_SEV_SNP_LAUNCH_FINISH = 102
KVM_SEV_SNP_ENABLE_REQ_CERTS = 103

KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0
KVM_MAX_CPUID_ENTRIES = 256
