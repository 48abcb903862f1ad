"""The emulated SNP platform as a VMM ``Backend`` (snplab.vmm.guest): a plain type-0 KVM VM whose
SEV-SNP parts — KVM's GHCB handling (ghcb.py) and the PSP (psp.py) — run in Python.

Wiring (docs/contract.md §2–§4): the GHCB MSR 0xC0010130 and SEV_STATUS 0xC0010131 are routed to
userspace with an MSR filter; ports 0xE0 (VMGEXIT) and 0xE4 (PVALIDATE) are doorbells; the MSR,
doorbell handlers are ``EmulatedKvm``'s; the launcher is the ``EmulatedPsp``. The emulated KVM
raises the same exit events real KVM gives the VMM (``ReqCerts``, ``VmgexitReqCerts``,
``MapGpaRange``, ``SevTerm``) and the VMM's own handlers answer them: ``register_handlers`` adds
the VMM's MapGpaRange handler if none is registered, and attaches a ``CertResponder`` if one is
given (the top-level platform may attach its own instead).

Nothing produced here is hardware-verified: reports are signed by emulated keys whose roots are
marked "snplab emulated (not AMD)" (keys.py).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from snplab.abi.tcb import TcbVersion
from snplab.emu.faults import FaultSet
from snplab.emu.ghcb import DOORBELL_PORT, PROFILES, PVALIDATE_PORT, EmulatedKvm
from snplab.emu.keys import (
    KeyStore,
    PlatformKeys,
    default_store,
    default_tcb,
    normalize_chip_id,
    product_info,
)
from snplab.emu.psp import EmulatedPsp
from snplab.emu.rmp import Rmp
from snplab.vmm.errors import IoctlError, VmmError
from snplab.vmm.events import Doorbell, MapGpaRange, MsrRead, MsrWrite

KVM_X86_DEFAULT_VM = 0
GHCB_MSR = 0xC001_0130
SEV_STATUS_MSR = 0xC001_0131
ENABLE_REQ_CERTS_WHEN = ("early", "late", "never")


class EmulatedVm:
    """Per-guest emulated state: the RMP, the PSP's guest context and KVM's SNP state."""

    def __init__(self, rmp: Rmp, psp: EmulatedPsp, kvm: EmulatedKvm) -> None:
        self.rmp = rmp
        self.psp = psp
        self.kvm = kvm
        self.enable_req_certs_error: str | None = None


class EmulatedBackend:
    """``Backend`` for the emulated platform (one instance may build several guests in turn; the
    accessors refer to the most recent one)."""

    name = "emulated"
    vm_type = KVM_X86_DEFAULT_VM
    c_bit_mask = 0

    def __init__(self, product: str = "milan", signer: str = "vcek", abi: str = "req-certs",
                 faults: Iterable[str] = (), report_version: int = 5, kernel: str = "newest",
                 tcb: TcbVersion | None = None, chip_id: bytes | None = None, csp_id: str | None = None,
                 enable_req_certs: str = "early", responder: Any = None, store: KeyStore | None = None,
                 platform_info: int | None = None, rng: Callable[[int], bytes] = os.urandom,
                 enable_req_certs_late: bool = False) -> None:
        if enable_req_certs_late:  # the top-level platform's spelling of enable_req_certs="late"
            enable_req_certs = "late"
        self.info = product_info(product)
        self.product = self.info.name.lower()
        if signer not in ("vcek", "vlek"):
            raise ValueError(f"unknown signer {signer!r} (want vcek or vlek)")
        if abi not in PROFILES:
            raise ValueError(f"unknown ABI profile {abi!r} (want one of {', '.join(PROFILES)})")
        if enable_req_certs not in ENABLE_REQ_CERTS_WHEN:
            raise ValueError(f"enable_req_certs must be one of {', '.join(ENABLE_REQ_CERTS_WHEN)}")
        if report_version not in (2, 3, 5):
            raise ValueError(f"report version {report_version} not emulated (2, 3 or 5)")
        self.signer = signer
        self.abi = abi
        self.kernel = kernel
        self.faults = FaultSet(faults)
        self.report_version = report_version
        self.enable_req_certs_when = enable_req_certs
        self.responder = responder
        self.platform_info = platform_info
        self.store = store or default_store()
        self._rng = rng
        tcb = tcb or default_tcb(self.product)
        chip = normalize_chip_id(self.product, chip_id)
        vcek = self.store.vek(self.product, "vcek", tcb, chip_id=chip)
        vlek = self.store.vek(self.product, "vlek", tcb, csp_id=csp_id) if signer == "vlek" else None
        self.keys = PlatformKeys(self.product, signer, tcb, chip, self.store.roots(self.product),
                                 vlek if vlek is not None else vcek)
        self._vcek, self._vlek, self._csp_id = vcek, vlek, csp_id
        self.vm: EmulatedVm | None = None
        self._trust_dir: Path | None = None

    # ---- accessors ----------------------------------------------------------------------------

    def cert_blob(self) -> bytes:
        """The certificate table this host serves: VCEK/VLEK, ASK/ASVK, ARK (emulated)."""
        return self.keys.cert_table()

    def trust_dir(self, directory: str | os.PathLike[str] | None = None) -> Path:
        """A directory holding the emulated ARK/ASK/ASVK PEMs for this product."""
        if directory is not None:
            return self.keys.write_trust_dir(directory)
        if self._trust_dir is None:
            self._trust_dir = self.keys.write_trust_dir(tempfile.mkdtemp(prefix="snplab-emu-trust-"))
        return self._trust_dir

    def _current(self) -> EmulatedVm:
        if self.vm is None:
            raise RuntimeError("the emulated backend has not built a guest yet")
        return self.vm

    @property
    def psp(self) -> EmulatedPsp:
        return self._current().psp

    @property
    def kvm(self) -> EmulatedKvm:
        return self._current().kvm

    @property
    def rmp(self) -> Rmp:
        return self._current().rmp

    @property
    def message_log(self) -> list[dict[str, Any]]:
        """Every guest message KVM saw at a VMGEXIT (docs/contract.md §5)."""
        return [r.to_json() for r in self.vm.kvm.message_log] if self.vm is not None else []

    @property
    def psp_log(self) -> list[dict[str, Any]]:
        return [e.to_json() for e in self.vm.psp.message_log] if self.vm is not None else []

    def update_tcb(self, tcb: TcbVersion) -> None:
        """A host TCB update while the guest runs: new REPORTED_TCB, new VCEK/VLEK and blob."""
        vcek = self.store.vek(self.product, "vcek", tcb, chip_id=self.keys.chip_id)
        vlek = self.store.vek(self.product, "vlek", tcb, csp_id=self._csp_id) if self.signer == "vlek" else None
        self._vcek, self._vlek = vcek, vlek
        self.keys = PlatformKeys(self.product, self.signer, tcb, self.keys.chip_id, self.keys.roots,
                                 vlek if vlek is not None else vcek)
        if self.vm is not None:
            self.vm.psp.install_keys(tcb, vcek, vlek)

    # ---- Backend protocol ---------------------------------------------------------------------

    def new_vm(self, memory: Any, ram_end: int, cpuid: Any = None) -> EmulatedVm:
        """Build the emulated state for a guest memory (also used without KVM by tests)."""
        rmp = Rmp(ram_end)
        psp = EmulatedPsp(product=self.product, tcb=self.keys.tcb, vcek=self._vcek, vlek=self._vlek,
                          chip_id=self.keys.chip_id, report_version=self.report_version, memory=memory,
                          rmp=rmp, faults=self.faults, platform_info=self.platform_info, rng=self._rng)
        kvm = EmulatedKvm(psp, rmp, memory, abi=self.abi, kernel=self.kernel, faults=self.faults,
                          cert_blob=self.cert_blob, cpuid=cpuid)
        self.vm = EmulatedVm(rmp, psp, kvm)
        if self.abi == "req-certs" and self.enable_req_certs_when == "early":
            kvm.enable_req_certs()
        return self.vm

    def setup_vm(self, guest: Any) -> None:
        from snplab.vmm.msr_filter import enable_user_msr

        self.new_vm(guest.memory, guest.memory.end, _cpuid_lookup(guest))
        enable_user_msr(guest.vm, (GHCB_MSR, SEV_STATUS_MSR))
        guest.doorbell_ports.update((DOORBELL_PORT, PVALIDATE_PORT))

    def launcher(self, guest: Any) -> EmulatedPsp:
        return self._current().psp

    def setup_vcpu(self, guest: Any, vcpu: Any) -> None:
        vm = self._current()
        vcpu.ghcb_msr = 0
        vm.kvm.vcpu_created(vcpu.index)
        if (self.abi == "req-certs" and self.enable_req_certs_when == "late"
                and vcpu.index == guest.config.nvcpus - 1):
            try:
                vm.kvm.enable_req_certs()
            except IoctlError as e:
                vm.enable_req_certs_error = str(e)

    def register_handlers(self, guest: Any) -> None:
        kvm = self._current().kvm
        guest.handlers.register(MsrRead, kvm.on_msr_read)
        guest.handlers.register(MsrWrite, kvm.on_msr_write)
        guest.handlers.register(Doorbell, kvm.on_doorbell)
        if MapGpaRange not in guest.handlers:
            from snplab.vmm.memory import map_gpa_range_handler

            guest.handlers.register(MapGpaRange, map_gpa_range_handler(guest.memory))
        if self.responder is not None:
            self.responder.attach(guest)

    def describe(self) -> dict[str, Any]:
        return {"platform": self.name, "product": self.product, "signer": self.signer, "abi": self.abi,
                "kernel": self.kernel, "faults": sorted(self.faults), "report_version": self.report_version,
                "tcb": f"{self.keys.tcb.pack():#018x}", "chip_id": self.keys.chip_id.hex(),
                "enable_req_certs_error": self.vm.enable_req_certs_error if self.vm else None}


def _cpuid_lookup(guest: Any) -> Callable[[int, int], tuple[int, int, int, int] | None] | None:
    """MSR-protocol CPUID answers from KVM_GET_SUPPORTED_CPUID (what the VMM gave the vCPUs)."""
    try:
        cpuid = guest.kvm.supported_cpuid()
        entries = {(e.function, e.index): (e.eax, e.ebx, e.ecx, e.edx)
                   for e in list(cpuid.entries)[:cpuid.nent]}
    except (OSError, AttributeError, VmmError):
        return None
    return lambda fn, idx: entries.get((fn, idx))
