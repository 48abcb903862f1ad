"""Launch interface (docs/contract.md §4): the VMM reports every launched range to a `Launcher`
(the emulated PSP or the SNP backend) in increasing GPA order, then the vCPUs' initial state.

Page types are KVM's `KVM_SEV_SNP_PAGE_TYPE_*` (kvm-host-abi.md §3.4; VMSA is firmware-internal).
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

PAGE_SIZE = 4096


class PageType(enum.IntEnum):
    NORMAL = 1
    VMSA = 2
    ZERO = 3
    UNMEASURED = 4
    SECRETS = 5
    CPUID = 6


@dataclass(frozen=True)
class VcpuInitState:
    """A vCPU's state at launch, as the VMM set it (the VMSA is built from this).

    `regs`: GPRs + rip + rflags by kvm_regs name. `sregs`: segments (cs, ds, es, fs, gs, ss, tr,
    ldt → dict of kvm_segment fields), gdt/idt (base, limit), cr0, cr2, cr3, cr4, cr8, efer,
    apic_base. `xcr0`: the XCR0 value."""

    index: int
    regs: dict[str, int]
    sregs: dict[str, Any]
    xcr0: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "regs": dict(self.regs), "sregs": self.sregs,
                "xcr0": self.xcr0}


@dataclass(frozen=True)
class LaunchRecord:
    """One `update` call: page-aligned [gpa, gpa+len(data)) of `page_type`."""

    gpa: int
    page_type: PageType
    data: bytes = field(repr=False)

    @property
    def npages(self) -> int:
        return len(self.data) // PAGE_SIZE

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"gpa": self.gpa, "npages": self.npages,
                             "type": self.page_type.name}
        if self.page_type in (PageType.NORMAL, PageType.VMSA):
            d["sha384"] = [hashlib.sha384(self.data[i:i + PAGE_SIZE]).hexdigest()
                           for i in range(0, len(self.data), PAGE_SIZE)]
        return d


@runtime_checkable
class Launcher(Protocol):
    """What the VMM calls while it builds a guest."""

    def start(self, policy: int) -> None: ...

    def update(self, gpa: int, data: bytes, page_type: PageType) -> None: ...

    def finish(self, host_data: bytes, vcpus: list[VcpuInitState]) -> None: ...

    @property
    def measurement(self) -> bytes | None: ...


class PlainLauncher:
    """Non-SNP launcher: checks the call order and records the launch log; measures nothing."""

    def __init__(self) -> None:
        self.policy: int | None = None
        self.log: list[LaunchRecord] = []
        self.host_data: bytes | None = None
        self.vcpus: list[VcpuInitState] = []
        self.finished = False

    def start(self, policy: int) -> None:
        if self.policy is not None:
            raise RuntimeError("launcher started twice")
        self.policy = policy

    def update(self, gpa: int, data: bytes, page_type: PageType) -> None:
        if self.policy is None or self.finished:
            raise RuntimeError("update outside start..finish")
        if gpa % PAGE_SIZE or not data or len(data) % PAGE_SIZE:
            raise ValueError(f"update gpa={gpa:#x} len={len(data):#x} not page-aligned")
        if self.log and gpa < self.log[-1].gpa + len(self.log[-1].data):
            raise ValueError(f"update gpa={gpa:#x} not in increasing GPA order")
        self.log.append(LaunchRecord(gpa, PageType(page_type), bytes(data)))

    def finish(self, host_data: bytes, vcpus: list[VcpuInitState]) -> None:
        if self.policy is None or self.finished:
            raise RuntimeError("finish without start, or twice")
        self.host_data = bytes(host_data)
        self.vcpus = list(vcpus)
        self.finished = True

    @property
    def measurement(self) -> bytes | None:
        return None
