"""Named faults the emulated platform can inject: each changes exactly one behaviour of the
emulated KVM or PSP, to measure whether the suite notices (shared/reference/peers-and-bugs.md §2).

A backend takes ``faults=("name", ...)``; the emulated code asks ``name in faults``. Unknown names
are refused so that a typo cannot silently run the fault-free platform.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    name: str
    layer: str  # "kvm" | "firmware"
    profiles: tuple[str, ...]  # ABI profiles where it can change anything
    description: str
    source: str


_ALL = ("stub", "req-certs", "vmgexit-v15")
_CERTS = ("req-certs", "vmgexit-v15")

FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("rbx-unchanged-on-invalid-len", "kvm", _CERTS,
          "INVALID_LEN is returned but the page count the VMM asked for is not copied into RBX",
          "kvm-host-abi.md §1(d): KVM must take npages from the exit (userspace cannot set RBX)"),
    Fault("firmware-called-before-busy", "kvm", _CERTS,
          "on BUSY the firmware request is issued first (the VMPCK sequence number is consumed) and "
          "then BUSY is reported",
          "Tom Lendacky on v12 29/29 (2024-04-11): a stale check after the firmware call desyncs the guest"),
    Fault("certs-written-on-enospc", "kvm", _CERTS,
          "on INVALID_LEN the part of the certificate table that fits is written into the guest's "
          "buffer anyway",
          "peers-and-bugs.md §2 item 2/10: buffer contents on a too-small buffer are not defined"),
    Fault("seqno-not-checked", "firmware", _ALL,
          "the PSP accepts any message sequence number (replays and skips are processed)",
          "guest-protocol.md §3.3: the ASP accepts only its exact next sequence number"),
    Fault("counter-advances-on-error", "firmware", _ALL,
          "the PSP advances its sequence counter even when it rejects a message",
          "Linux snp_disable_vmpck comment: the ASP only increments on a successful round trip"),
    Fault("response-seqno-unchanged", "firmware", _ALL,
          "the response carries the request's sequence number instead of seqno + 1",
          "guest-protocol.md §3.2: resp.msg_seqno == req.msg_seqno + 1"),
    Fault("invalid-len-in-low-bits", "kvm", _CERTS,
          "INVALID_LEN encoded as 1 in SW_EXITINFO2[31:0] (a firmware status) instead of 1 << 32",
          "peers-and-bugs.md §2: wrong INVALID_LEN encoding (guest-protocol.md §2.3)"),
    Fault("generic-as-bit31", "kvm", ("req-certs",),
          "EIO is reported as the v15 draft's GENERIC BIT(31) << 32 instead of ~0U << 32",
          "errata.md B3: GENERIC is ~0U since the KVM_EXIT_COCO drafts"),
    Fault("invalid-ret-as-generic", "kvm", ("req-certs",),
          "an invalid REQ_CERTS ret is reported to the guest as GENERIC instead of failing KVM_RUN",
          "errata.md B5: any ret other than 0/ENOSPC/EAGAIN/EIO fails KVM_RUN with EINVAL"),
    Fault("stub-no-terminator", "kvm", ("stub",),
          "the stub does not write the 24-byte empty certificate table when RBX != 0",
          "kvm-host-abi.md §1(c): kvm_clear_guest(data_gpa, 24)"),
    Fault("certs-exit-any-msg-type", "kvm", ("req-certs",),
          "the certificate exit is taken for every extended request, not only MSG_REPORT_REQ",
          "errata.md B10: the exit fires only for msg_type 5"),
    Fault("late-enable-req-certs", "kvm", ("req-certs",),
          "KVM_SEV_SNP_ENABLE_REQ_CERTS succeeds after a vCPU exists",
          "kvm-host-abi.md §1(d): -EINVAL once kvm->created_vcpus"),
)}


class FaultSet(frozenset):
    """An immutable set of fault names, checked against the registry."""

    def __new__(cls, names: Iterable[str] = ()) -> FaultSet:
        names = tuple(names)
        unknown = [n for n in names if n not in FAULTS]
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(FAULTS))})")
        return super().__new__(cls, names)

    def describe(self) -> Iterator[Fault]:
        return (FAULTS[n] for n in sorted(self))


def fault_names() -> tuple[str, ...]:
    return tuple(sorted(FAULTS))
