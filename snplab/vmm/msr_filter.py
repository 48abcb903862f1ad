"""Route chosen MSRs to userspace: KVM_CAP_X86_USER_SPACE_MSR with KVM_MSR_EXIT_REASON_FILTER plus
a KVM_X86_SET_MSR_FILTER that denies them, so rdmsr/wrmsr of those MSRs become `MsrRead` /
`MsrWrite` events (the emulated platform's GHCB MSR 0xC0010130, contract §2)."""

from __future__ import annotations

import ctypes as C
from collections.abc import Iterable

from snplab.vmm import uapi
from snplab.vmm.errors import GuestSetupError
from snplab.vmm.kvm import VmFd

GHCB_MSR = 0xC001_0130
SEV_STATUS_MSR = 0xC001_0131


def enable_user_msr(vm: VmFd, indices: Iterable[int]) -> None:
    """Make every access to `indices` exit to userspace (at most 16 distinct MSRs)."""
    idx = sorted(set(indices))
    if not 1 <= len(idx) <= uapi.KVM_MSR_FILTER_MAX_RANGES:
        raise GuestSetupError(f"enable_user_msr: {len(idx)} MSRs, want 1..16")
    vm.enable_cap(uapi.KVM_CAP_X86_USER_SPACE_MSR, uapi.KVM_MSR_EXIT_REASON_FILTER)
    flt = uapi.kvm_msr_filter(flags=uapi.KVM_MSR_FILTER_DEFAULT_ALLOW)
    deny = (C.c_uint8 * 1)(0)  # bit 0 clear: the one MSR of the range is denied
    for i, msr in enumerate(idx):
        r = flt.ranges[i]
        r.flags = uapi.KVM_MSR_FILTER_READ | uapi.KVM_MSR_FILTER_WRITE
        r.nmsrs = 1
        r.base = msr
        r.bitmap = C.addressof(deny)  # KVM copies the bitmap during the ioctl
    vm.set_msr_filter(flt)
