"""The fault catalog: named bugs the emulated platform can inject, one per real bug class of the
extended guest request path (shared/reference/peers-and-bugs.md §2) and the neighbours a patch
to the same code could introduce.  ``snplab mutate`` runs the suite once per fault and reports
which tests kill it.

Each fault perturbs exactly one decision of the real logic at the place the real code makes it
(``if "name" in self.faults`` in the emulated KVM, the PSP model, the VMM's certificate
responder, or a bit of ``snplab_params.guest_faults`` in the payload's step interpreter); none
adds a code path that only the fault uses.  ``layer`` says where it lives:

- ``kvm``: ``snplab/emu/ghcb.py`` (KVM's GHCB / certificate-exit handling),
- ``firmware``: ``snplab/emu/psp.py`` (the PSP's guest-message handling),
- ``vmm``: ``snplab/vmm/certs.py`` (the VMM's answer to the certificate exit; emulated runs only),
- ``guest``: ``guest-payloads/src/steps.c`` (the guest's request policy, via
  ``enum snplab_guest_fault``).

``profiles`` are the ABI profiles where the fault can change anything (``snplab mutate`` runs
only those); ``breaks`` are the suite properties (``snplab.checks`` names) the fault violates:
a fault counts as *specifically* killed only when a failing test names one of them.

Some faults are the correct behaviour of another kernel generation (e.g. the v15 draft's GENERIC
encoding); they are faults only relative to the profile/generation being played, as their
descriptions say.

A backend takes ``faults=("name", ...)``; unknown names are refused so that a typo cannot
silently run the fault-free platform.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

LAYERS = ("kvm", "firmware", "vmm", "guest")


@dataclass(frozen=True)
class Fault:
    name: str
    layer: str  # one of LAYERS
    profiles: tuple[str, ...]  # ABI profiles where it can change anything
    description: str
    source: str  # the real bug, or the kernel/spec text whose logic it perturbs
    breaks: tuple[str, ...]  # suite properties (snplab.checks names) it violates


_ALL = ("stub", "req-certs", "vmgexit-v15")
_CERTS = ("req-certs", "vmgexit-v15")
_RC = ("req-certs",)
_STUB = ("stub",)

# Bits of snplab_params.guest_faults (enum snplab_guest_fault in snplab_abi.h), by fault name.
GUEST_FAULT_BITS: dict[str, str] = {
    "guest-iv-reuse-after-invalid-len": "SNPLAB_GFAULT_IV_REUSE",
    "guest-no-busy-retry": "SNPLAB_GFAULT_NO_BUSY_RETRY",
    "guest-reseal-on-busy": "SNPLAB_GFAULT_RESEAL_ON_BUSY",
    "guest-16k-cert-cap": "SNPLAB_GFAULT_CERTS_16K_CAP",
    "guest-seqno-advance-on-host-error": "SNPLAB_GFAULT_SEQNO_ON_HOST_ERROR",
    "guest-msg-over-page": "SNPLAB_GFAULT_MSG_OVER_PAGE",
}

FAULTS: dict[str, Fault] = {f.name: f for f in (
    # ---- KVM: INVALID_LEN and RBX ----------------------------------------------------------
    Fault("rbx-unchanged-on-invalid-len", "kvm", _CERTS,
          "INVALID_LEN is returned but the page count the VMM asked for is not copied into RBX",
          "kvm-host-abi.md §1(d): KVM must take npages from the exit (userspace cannot set RBX)",
          ("invalid_len_rbx",)),
    Fault("rbx-off-by-one", "kvm", _CERTS,
          "RBX after INVALID_LEN is the VMM's page count plus one",
          "snp_complete_req_certs: vcpu->arch.regs[VCPU_REGS_RBX] = vcpu->run->snp_req_certs.npages",
          ("invalid_len_rbx",)),
    Fault("rbx-in-bytes", "kvm", _CERTS,
          "RBX after INVALID_LEN holds bytes (npages << PAGE_SHIFT) instead of pages",
          "peers-and-bugs.md §0: certs_len is bytes in the ioctl ABI but pages on the GHCB wire "
          "(virtee/sev PR #54)",
          ("invalid_len_rbx",)),
    Fault("invalid-len-in-low-bits", "kvm", _CERTS,
          "INVALID_LEN encoded as 1 in SW_EXITINFO2[31:0] (a firmware status) instead of 1 << 32",
          "peers-and-bugs.md §2: wrong INVALID_LEN encoding (guest-protocol.md §2.3)",
          ("invalid_len_encoding",)),
    Fault("invalid-len-in-exitinfo1", "kvm", _CERTS,
          "INVALID_LEN put in the wrong word: SW_EXITINFO1 = 1 next to SW_EXITINFO2 = 1 << 32",
          "GHCB spec: SW_EXITINFO1 stays 0 for a guest request answered by the VMM; the VMM "
          "error lives in SW_EXITINFO2[63:32] (kvm-host-abi.md §1(d))",
          ("invalid_len_encoding",)),
    Fault("certs-written-on-enospc", "kvm", _CERTS,
          "on INVALID_LEN the part of the certificate table that fits is written into the guest's "
          "buffer anyway",
          "peers-and-bugs.md §2 item 2/10: buffer contents on a too-small buffer are not defined",
          ("invalid_len_no_write",)),
    # ---- KVM: BUSY, generic errors and the REQ_CERTS ret mapping ---------------------------
    Fault("firmware-called-before-busy", "kvm", _CERTS,
          "on BUSY the firmware request is issued first (the VMPCK sequence number is consumed) and "
          "then BUSY is reported",
          "Tom Lendacky on v12 29/29 (2024-04-11): a stale check after the firmware call desyncs the guest",
          ("host_error_no_seqno",)),
    Fault("firmware-called-on-eio", "kvm", _CERTS,
          "the firmware is called although the VMM answered EIO (GENERIC is reported afterwards)",
          "snp_complete_req_certs: only ret 0 leads to snp_handle_guest_req",
          ("host_error_no_seqno",)),
    Fault("firmware-called-on-enospc", "kvm", _CERTS,
          "the firmware is called although the VMM answered ENOSPC (INVALID_LEN is reported "
          "afterwards): the guest's retry then reuses a consumed sequence number",
          "peers-and-bugs.md §2 item 1 (IV reuse after INVALID_LEN), 47894e0fa6a5",
          ("host_error_no_seqno",)),
    Fault("firmware-called-twice", "kvm", _CERTS,
          "on success KVM issues SNP_GUEST_REQUEST twice for one VMGEXIT (the replay is "
          "rejected; the first status is reported)",
          "snp_handle_guest_req: one sev_issue_cmd per request; the v10 TOCTOU review "
          "(ZS614OSoritrE1d2@google.com)",
          ("firmware_call_per_request",)),
    Fault("busy-in-low-bits", "kvm", _CERTS,
          "BUSY encoded as 2 in SW_EXITINFO2[31:0] instead of 2 << 32",
          "include/uapi/linux/sev-guest.h SNP_GUEST_VMM_ERR_BUSY in bits 63:32",
          ("busy_encoding",)),
    Fault("eagain-as-generic", "kvm", _RC,
          "the VMM's EAGAIN is reported as GENERIC instead of BUSY (the guest gives up)",
          "KVM api.rst (v7 cert series): EAGAIN → SNP_GUEST_VMM_ERR_BUSY",
          ("busy_encoding",)),
    Fault("eio-as-busy", "kvm", _RC,
          "the VMM's EIO is reported as BUSY instead of GENERIC (the guest retries a dead request)",
          "KVM api.rst (v7 cert series): EIO → SNP_GUEST_VMM_ERR_GENERIC",
          ("vmm_error_encoding",)),
    Fault("generic-as-bit31", "kvm", _RC,
          "EIO is reported as the v15 draft's GENERIC BIT(31) << 32 instead of ~0U << 32 (correct "
          "for the v15 generation, a fault for Linux 7.0)",
          "errata.md B3: GENERIC is ~0U since the KVM_EXIT_COCO drafts",
          ("vmm_error_encoding",)),
    Fault("invalid-ret-as-generic", "kvm", _RC,
          "an invalid REQ_CERTS ret is reported to the guest as GENERIC instead of failing KVM_RUN",
          "errata.md B5: any ret other than 0/ENOSPC/EAGAIN/EIO fails KVM_RUN with EINVAL",
          ("kvm_run_einval",)),
    Fault("response-written-on-host-error", "kvm", _CERTS,
          "on a VMM error (INVALID_LEN, BUSY, GENERIC) KVM still copies its response bounce page "
          "(a stale response) into the guest's response page",
          "snp_handle_guest_req copies the response only after a firmware call; "
          "\"KVM: SEV: Fix guest memory leak when handling guest requests\" reworked that path",
          ("host_error_no_response",)),
    # ---- KVM: arguments of the certificate exit --------------------------------------------
    Fault("npages-truncated-32", "kvm", _CERTS,
          "the guest's RBX is truncated to 32 bits before it reaches the VMM's certificate exit",
          "struct kvm_run snp_req_certs.npages is __u64; RBX is a 64-bit register",
          ("cert_exit_args",)),
    Fault("misaligned-certs-gpa-accepted", "kvm", _CERTS,
          "a certificate GPA that is not 4 KiB aligned is passed to the VMM instead of being "
          "rejected as INVALID_INPUT",
          "snp_handle_ext_guest_req: if (!PAGE_ALIGNED(data_gpa)) → GHCB_ERR_INVALID_INPUT "
          "(v15: GENERIC without an exit; the registry row certs-gpa-unaligned)",
          ("kernel_answer", "cert_exit_per_request")),
    Fault("certs-exit-any-msg-type", "kvm", _RC,
          "the certificate exit is taken for every extended request, not only MSG_REPORT_REQ "
          "(the v15 generation does exit for every type; a fault for Linux 7.0)",
          "errata.md B10: the exit fires only for msg_type 5",
          ("cert_exit_per_request",)),
    Fault("late-enable-req-certs", "kvm", _RC,
          "KVM_SEV_SNP_ENABLE_REQ_CERTS succeeds after a vCPU exists",
          "kvm-host-abi.md §1(d): -EINVAL once kvm->created_vcpus",
          ("enable_req_certs_einval",)),
    # ---- KVM: the 6.11–6.19 stub ---------------------------------------------------------
    Fault("stub-no-terminator", "kvm", _STUB,
          "the stub does not write the 24-byte empty certificate table when RBX != 0",
          "kvm-host-abi.md §1(c): kvm_clear_guest(data_gpa, 24)",
          ("stub_empty_table",)),
    Fault("stub-writes-when-rbx-zero", "kvm", _STUB,
          "the stub writes the empty table even when the guest offered RBX = 0 pages",
          "snp_handle_ext_guest_req (6.11): if (data_npages && kvm_clear_guest(...))",
          ("stub_empty_table",)),
    # ---- firmware (PSP) ------------------------------------------------------------------
    Fault("seqno-not-checked", "firmware", _ALL,
          "the PSP accepts any message sequence number (replays and skips are processed)",
          "guest-protocol.md §3.3: the ASP accepts only its exact next sequence number",
          ("seqno_replay_rejected",)),
    Fault("replayed-seqno-accepted", "firmware", _ALL,
          "the PSP accepts a sequence number below its counter (a replay)",
          "guest-protocol.md §3.3; peers-and-bugs.md §2 item 1 (the counter is the IV)",
          ("seqno_replay_rejected",)),
    Fault("skipped-seqno-accepted", "firmware", _ALL,
          "the PSP accepts a sequence number above its counter (a skip ahead)",
          "guest-protocol.md §3.3: the ASP accepts only its exact next sequence number",
          ("seqno_replay_rejected",)),
    Fault("counter-advances-on-error", "firmware", _ALL,
          "the PSP advances its sequence counter even when it rejects a message",
          "Linux snp_disable_vmpck comment: the ASP only increments on a successful round trip",
          ("firmware_error_no_seqno",)),
    Fault("counter-advances-by-one", "firmware", _ALL,
          "after a completed exchange the PSP expects seqno + 1 instead of seqno + 2",
          "guest-protocol.md §3.2: request N, response N + 1, next request N + 2",
          ("firmware_accepts_next_seqno",)),
    Fault("response-seqno-unchanged", "firmware", _ALL,
          "the response carries the request's sequence number instead of seqno + 1",
          "guest-protocol.md §3.2: resp.msg_seqno == req.msg_seqno + 1",
          ("seqno_advance",)),
    Fault("response-reuses-request-iv", "firmware", _ALL,
          "the response is sealed under the request's IV (seqno N) while its header says N + 1: "
          "two messages under one AES-GCM IV",
          "guest-protocol.md §3.2: the response IV is its own msg_seqno (N + 1)",
          ("response_authentic",)),
    Fault("response-type-unchanged", "firmware", _ALL,
          "the response header carries the request's msg_type instead of msg_type + 1",
          "SNP firmware ABI: MSG_REPORT_RSP = MSG_REPORT_REQ + 1",
          ("response_header",)),
    Fault("report-data-stale", "firmware", _ALL,
          "a report carries the REPORT_DATA of the previous report request of the guest",
          "peers-and-bugs.md §2 item 6 (report fields from the wrong request); SNP ABI "
          "MSG_REPORT_REQ.REPORT_DATA",
          ("report_data_roundtrip",)),
    Fault("report-vmpl-from-vmpck", "firmware", _ALL,
          "the report's VMPL is the VMPCK number of the message instead of MSG_REPORT_REQ.VMPL",
          "SNP firmware ABI: REPORT.VMPL = MSG_REPORT_REQ.VMPL",
          ("report_vmpl",)),
    Fault("vmpl-check-missing", "firmware", _ALL,
          "a report for a VMPL below the VMPCK's own (more privileged) is granted",
          "SNP firmware ABI MSG_REPORT_REQ: VMPL must be >= the requester's VMPL, else INVALID_PARAM",
          ("report_vmpl_checked",)),
    Fault("reported-tcb-stale", "firmware", _CERTS,
          "after a TCB update (SNP_COMMIT / SNP_SET_CONFIG) the report keeps the launch-time "
          "REPORTED_TCB while the new VCEK signs it",
          "peers-and-bugs.md §2 item 6 (TCB/VCEK vs certificate race); go-sev-guest validateTcb",
          ("reported_tcb",)),
    Fault("signing-key-field-vcek", "firmware", _ALL,
          "SIGNER_INFO.SIGNING_KEY says VCEK although the report is signed with the VLEK",
          "peers-and-bugs.md §2 item 14 (VLEK vs VCEK confusion; MS TEE verifier PR #147)",
          ("signing_key",)),
    Fault("chip-id-of-another-chip", "firmware", _ALL,
          "CHIP_ID in the report differs from the chip the VCEK was issued for",
          "peers-and-bugs.md §2 item 15 (hwID matching); SNP ABI REPORT.CHIP_ID",
          ("chip_id",)),
    # ---- VMM: the certificate responder ----------------------------------------------------
    Fault("vmm-npages-floor", "vmm", _CERTS,
          "the VMM computes the pages needed as len // 4096 (rounded down)",
          "kvm-host-abi.md §1(d): npages = pages needed for the whole blob (round up)",
          ("invalid_len_rbx",)),
    Fault("vmm-npages-in-bytes", "vmm", _CERTS,
          "the VMM answers ENOSPC with the blob's length in bytes as npages",
          "peers-and-bugs.md §0: bytes vs pages conflated (virtee/sev PR #54, SVSM attest.rs)",
          ("invalid_len_rbx",)),
    Fault("vmm-enospc-when-exact", "vmm", _CERTS,
          "the VMM answers ENOSPC when the blob exactly fills the guest's pages (>= for >)",
          "kvm-host-abi.md §1(d): ENOSPC only if the blob does not fit in npages pages",
          ("invalid_len_justified",)),
    Fault("vmm-partial-table-on-enospc", "vmm", _CERTS,
          "on ENOSPC the VMM writes the table entries (without the certificates) into the "
          "guest's buffer",
          "peers-and-bugs.md §2 item 10/12 (a partial or unterminated table on INVALID_LEN)",
          ("invalid_len_no_write",)),
    Fault("vmm-certs-at-offset", "vmm", _CERTS,
          "the VMM writes the blob 32 bytes into the guest's buffer instead of at its start",
          "kvm-host-abi.md §1(d): the table starts at the exit's gpa",
          ("cert_table_parses", "cert_table_matches_blob")),
    Fault("vmm-certs-page-short", "vmm", _CERTS,
          "the VMM writes all but the last page of the blob (a page short; a one-page blob "
          "loses its second half)",
          "peers-and-bugs.md §2 item 10 (truncated certificate data)",
          ("cert_table_parses", "cert_table_matches_blob")),
    Fault("vmm-ignores-npages", "vmm", _CERTS,
          "the VMM writes the whole blob and answers 0 even when it is larger than the guest's "
          "npages pages (writes past the guest's buffer)",
          "peers-and-bugs.md §2 item 13 (VMM writes outside the guest's buffer)",
          ("certs_within_buffer",)),
    Fault("vmm-stale-blob", "vmm", _CERTS,
          "the VMM reads the certificate file once and serves that copy forever (stale "
          "certificates after an update)",
          "peers-and-bugs.md §2 items 5/6 (stale certs after a TCB update; Berrangé's inode race)",
          ("report_signature", "reported_tcb")),
    # ---- guest policies (payload) --------------------------------------------------------
    Fault("guest-iv-reuse-after-invalid-len", "guest", _CERTS,
          "after INVALID_LEN the Linux-policy guest re-encrypts a changed request under the same "
          "sequence number (the naive policy) instead of resending the identical bytes",
          "47894e0fa6a5 \"virt/sev-guest: Prevent IV reuse in the SNP guest driver\" (6.1)",
          ("no_iv_reuse",)),
    Fault("guest-reseal-on-busy", "guest", _CERTS,
          "after BUSY the guest re-encrypts the request (new plaintext) under the same sequence "
          "number instead of resending it",
          "72f7754dcf31 \"virt/coco/sev-guest: Add throttling awareness\": resend the same message",
          ("busy_resent_identical", "no_iv_reuse")),
    Fault("guest-no-busy-retry", "guest", _CERTS,
          "the guest gives up on the first BUSY (as the sev crate does) instead of retrying",
          "peers-and-bugs.md §2 items 3/19 (BUSY wiped the VMPCK; sev crate maps BUSY to an error)",
          ("busy_retried",)),
    Fault("guest-16k-cert-cap", "guest", _CERTS,
          "the guest caps its certificate buffer at 16 KiB (SEV_FW_BLOB_MAX_SIZE): a table of "
          "more than 4 pages is never fetched after INVALID_LEN",
          "peers-and-bugs.md §2 item 10 (sev-guest.c get_ext_report, configfs-tsm 16 KiB buffer)",
          ("invalid_len_retry_pages",)),
    Fault("guest-seqno-advance-on-host-error", "guest", _CERTS,
          "the guest counts a host-side error (INVALID_LEN, BUSY) as a consumed sequence number",
          "sev-guest.c: only a completed exchange advances the VMPCK's sequence number "
          "(snp_inc_msg_seqno after success)",
          ("seqno_advance",)),
    Fault("guest-msg-over-page", "guest", _ALL,
          "the guest's message header claims a payload that runs past the request page "
          "(header + msg_sz > 4096)",
          "2b9ac0b84c2c \"virt: sev-guest: Ensure the SNP guest messages do not exceed a page\"",
          ("message_within_page",)),
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

    def of_layer(self, layer: str) -> frozenset[str]:
        return frozenset(n for n in self if FAULTS[n].layer == layer)


def fault_names() -> tuple[str, ...]:
    return tuple(sorted(FAULTS))
