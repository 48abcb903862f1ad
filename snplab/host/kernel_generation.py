"""Which kernel generation (``snplab.abi.kernel_behaviour``) this host's KVM plays: from the
kernel release and the ``KVM_X86_SEV_SNP_REQ_CERTS`` device attribute on /dev/kvm
(kvm-host-abi.md §1(d)). A kernel carrying the v15 patch cannot be told apart; force ``v15``
(``--kernel-behaviour v15``)."""

from __future__ import annotations

import os
from typing import Any

from snplab.abi import kernel_behaviour as kb
from snplab.host.preflight import parse_release


def read_req_certs_attr(kvm_path: str = "/dev/kvm", io: Any = None) -> int | None:
    """KVM_X86_SEV_SNP_REQ_CERTS as /dev/kvm reports it; None when absent or unreadable."""
    from snplab.vmm import uapi
    from snplab.vmm.errors import VmmError
    from snplab.vmm.kvm import Kvm

    try:
        with Kvm(kvm_path, io=io) as kvm:
            rc, value = kvm.get_device_attr_raw(uapi.KVM_X86_GRP_SEV, uapi.KVM_X86_SEV_SNP_REQ_CERTS)
    except (OSError, VmmError):
        return None
    return int(value) if rc >= 0 else None


def detect(release: str | None = None, req_certs_attr: int | None = None, *,
           probe: bool = True, kvm_path: str = "/dev/kvm", io: Any = None) -> dict[str, Any]:
    """Host facts about the kernel generation: ``kernel_behaviour`` (None: unknown), the release
    and attribute it was derived from, and how."""
    release = release if release is not None else os.uname().release
    attr = read_req_certs_attr(kvm_path, io) if probe and req_certs_attr is None else req_certs_attr
    ver = parse_release(release)
    gen = kb.detect_generation(ver[:2] if ver else None, attr)
    basis = f"release {release}, KVM_X86_SEV_SNP_REQ_CERTS {'absent' if attr is None else attr}"
    return {"kernel_behaviour": gen, "kernel_behaviour_basis": basis, "req_certs_attr": attr}


def host_facts(release: str | None = None) -> dict[str, Any]:
    """The two host facts reports carry: ``kernel_behaviour_detected`` and its basis (never
    raises: a fact that could not be got says why)."""
    try:
        d = detect(release)
    except Exception as e:  # noqa: BLE001 - reported as a fact
        return {"kernel_behaviour_detected": None, "kernel_behaviour_basis": f"not detected: {e}"}
    return {"kernel_behaviour_detected": d["kernel_behaviour"],
            "kernel_behaviour_basis": d["kernel_behaviour_basis"]}
