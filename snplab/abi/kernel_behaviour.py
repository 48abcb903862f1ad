"""What each kernel generation's KVM does with each shape of SEV-SNP guest request: one table.

The emulated KVM (``snplab.emu.ghcb``) *plays* these rows and ``snplab.checks`` *judges* from
them, so a kernel that behaves differently (a fix to the 6.11 stub, a kvm-next change) is one new
``Generation`` plus its rows, and a test. Pure data: no behaviour beyond lookups.

Generations (the tree each one was read from is cited in ``Generation.source``):

| generation | kernels | ABI profiles it can play |
|---|---|---|
| ``v15`` | the May 2024 v15 SNP series (KVM_EXIT_VMGEXIT), AMD snp-host-latest of 2024 | vmgexit-v15 |
| ``6.11-stub`` | Linux 6.11 – 6.19 (no certificate exit) | stub |
| ``7.0`` | Linux 7.0: KVM_EXIT_SNP_REQ_CERTS with the pre-#VMGEXIT-rework validation | req-certs, stub |
| ``newest`` | kvm-x86 after Sean Christopherson's 2026 #VMGEXIT series (INVALID_INPUT page checks) | req-certs, stub |

(``stub`` on 7.0/newest: the VMM did not issue KVM_SEV_SNP_ENABLE_REQ_CERTS, so the 6.11 stub
code path runs, with that kernel's validation codes.)

Source tags (shared/reference/fidelity-review.md "Sources read", errata.md, kvm-host-abi.md):
[OLD] kvm-x86 ``arch/x86/kvm/svm/sev.c`` @97ac0c81c448 (pre-REQ_CERTS, representative of
6.11–6.19); [NEW] the same file @1a27afa0511e (post-7.0 kvm-x86); [V7] "[PATCH v7 1/2, 2/2]"
KVM_EXIT_SNP_REQ_CERTS / KVM_SEV_SNP_ENABLE_REQ_CERTS (merged for 7.0, behaviour = [NEW]'s
certificate path); [V15] "[PATCH v15 19/20]" and [V15-18] its 18/20 (guest request support).
The ``7.0`` rows pair [V7] with [OLD]'s validation: an inference from dates (fidelity-review.md
notes), marked ``verified=False`` where it matters.

A request *shape* names one input case (``SHAPES``); a ``Rule`` says what the generation's KVM
does with it: the ``outcome`` the guest (or the VMM) sees, at which ``stage`` KVM decides, whether a
certificate exit reaches the VMM first, what KVM writes, and the kernel function that does it.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, replace

from snplab.abi.ghcb import (GHCB_ERR_INVALID_INPUT, GHCB_ERR_INVALID_SCRATCH_AREA,
                             GHCB_ERR_MISSING_INPUT, GHCB_ERR_NOT_REGISTERED,
                             GHCB_HV_RESP_MALFORMED_INPUT, SNP_GUEST_VMM_ERR_BUSY,
                             SNP_GUEST_VMM_ERR_GENERIC, SNP_GUEST_VMM_ERR_GENERIC_V15,
                             SNP_GUEST_VMM_ERR_INVALID_LEN, VMGEXIT_PSC_ERROR_GENERIC)

# ---- outcomes: what the guest (or the VMM) sees ---------------------------------------------

GHCB_ERROR = "ghcb-error"        # SW_EXITINFO1 = 2, SW_EXITINFO2 = reason; guest resumed; no firmware call
VMM_ERROR = "vmm-error"          # SW_EXITINFO1 = 0, SW_EXITINFO2[63:32] = vmm_error; no firmware call
FIRMWARE = "firmware"            # the request reaches the firmware: SW_EXITINFO2 = vmm_error << 32 | status
KVM_RUN_ERROR = "kvm-run-error"  # KVM_RUN fails with ``errno_name``; the guest is not resumed
ACCEPTED = "accepted"            # KVM goes on as for a well-formed call (no error of its own)
PSC_ERROR = "psc-error"          # the page-state change fails (GHCB: EXITINFO2 = psc error; MSR: error response)
IOCTL_ERROR = "ioctl-error"      # the VMM's ioctl fails with ``errno_name``
OUTCOMES = (GHCB_ERROR, VMM_ERROR, FIRMWARE, KVM_RUN_ERROR, ACCEPTED, PSC_ERROR, IOCTL_ERROR)

# ---- stages: where KVM decides ----------------------------------------------------------------

VALIDATION = "validation"        # before the NAE handler (sev_es_validate_vmgexit / sev_handle_vmgexit)
REQUEST = "request"              # in the request handler, before any certificate exit
AFTER_CERT_EXIT = "after-cert-exit"  # once the VMM answered the certificate exit
FIRMWARE_SETUP = "firmware-setup"    # while setting up the firmware call (after any certificate exit)
AFTER_PSC_EXIT = "after-psc-exit"    # once the VMM answered KVM_HC_MAP_GPA_RANGE
ANY_STAGE = "-"
STAGES = (VALIDATION, REQUEST, AFTER_CERT_EXIT, FIRMWARE_SETUP, AFTER_PSC_EXIT, ANY_STAGE)

# ---- request shapes ---------------------------------------------------------------------------

SHAPES: dict[str, str] = {
    "report-request": "extended MSG_REPORT_REQ, well formed, certificate exit enabled "
                      "(REQ_CERTS on; always on v15)",
    "report-request-no-certs-exit": "extended MSG_REPORT_REQ, well formed, no certificate exit "
                                    "(the 6.11 stub code; 7.0+ without ENABLE_REQ_CERTS)",
    "other-msg-type": "extended request whose message is not MSG_REPORT_REQ",
    "pages-misaligned": "request or response GPA (SW_EXITINFO1/2) not 4 KiB aligned",
    "pages-identical": "request GPA == response GPA",
    "regs-not-valid": "extended MSG_REPORT_REQ without RAX or RBX marked valid in the GHCB",
    "certs-gpa-unaligned": "extended MSG_REPORT_REQ whose certificate GPA (RAX) is not 4 KiB aligned",
    "ghcb-unregistered": "#VMGEXIT with a GHCB GPA other than the registered one",
    "firmware-error": "the firmware rejects the message (non-zero status)",
    "vmm-enospc": "the VMM answers the certificate exit with 'buffer too small'",
    "vmm-eagain": "the VMM answers the certificate exit with 'busy'",
    "vmm-eio": "the VMM answers the certificate exit with its generic error",
    "vmm-bad-ret": "the VMM answers the certificate exit with any other ret",
    "enable-req-certs-after-vcpu": "KVM_SEV_SNP_ENABLE_REQ_CERTS once a vCPU exists",
    "psc-scratch-outside-ghcb": "GHCB page-state change whose scratch area lies outside the GHCB",
    "psc-exitinfo2-past-ghcb": "GHCB page-state change whose SW_EXITINFO2 (length) runs past the GHCB buffer",
    "map-gpa-range-bad-ret": "the VMM answers KVM_HC_MAP_GPA_RANGE with a ret other than 0, EINVAL, EAGAIN",
}


@dataclass(frozen=True)
class Rule:
    """What one generation's KVM does with one request shape."""

    outcome: str
    stage: str
    source: str                      # "[TAG] function": where the kernel does it
    reason: int | None = None        # GHCB_ERROR: SW_EXITINFO2
    vmm_error: int | None = None     # VMM_ERROR / FIRMWARE: SW_EXITINFO2[63:32]; None = the VMM's ret verbatim
    errno_name: str = ""             # KVM_RUN_ERROR / IOCTL_ERROR
    cert_exit: bool = False          # a certificate exit reaches the VMM before this answer
    ret: int | None = None           # vmm-* shapes: the VMM's ret value that selects the row
    fw_bits: str = ""                # SW_EXITINFO2[31:0]: "0", "status" (the firmware's), "any"
    zeroes: int = 0                  # bytes KVM zeroes at RAX (the certificate buffer) when RBX != 0
    writes: str = ""                 # what KVM writes to the guest (memory, RBX)
    verified: bool = True            # False: inferred, not read in a source
    note: str = ""

    def __post_init__(self) -> None:
        if not self.fw_bits:
            object.__setattr__(self, "fw_bits", "status" if self.outcome == FIRMWARE else "0")
        if self.fw_bits not in ("0", "status", "any"):
            raise ValueError(f"unknown fw_bits {self.fw_bits!r}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}")
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}")

    @property
    def exitinfo1(self) -> int | None:
        """SW_EXITINFO1 the guest sees (None: the guest is not resumed or the row is not a GHCB answer)."""
        if self.outcome == GHCB_ERROR:
            return GHCB_HV_RESP_MALFORMED_INPUT
        if self.outcome in (VMM_ERROR, FIRMWARE, ACCEPTED, PSC_ERROR):
            return 0
        return None

    @property
    def reaches_firmware(self) -> bool:
        return self.outcome == FIRMWARE

    def to_json(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"exitinfo1": self.exitinfo1}


@dataclass(frozen=True)
class Generation:
    """One kernel generation: what it is, which profiles it can play, what was read."""

    name: str
    kernels: str
    profiles: tuple[str, ...]
    source: str


GENERATIONS: dict[str, Generation] = {g.name: g for g in (
    Generation("v15", "the v15 SNP patch series (May 2024; AMD snp-host-latest, -next as 32fde9e18b3f)",
               ("vmgexit-v15",), "[V15] v15 19/20 + [V15-18] 18/20"),
    Generation("6.11-stub", "Linux 6.11 - 6.19", ("stub",),
               "[OLD] sev.c @97ac0c81c448 (about 6.16-6.18; v6.11 tag itself not read)"),
    Generation("7.0", "Linux 7.0 (REQ_CERTS, pre-#VMGEXIT-rework validation)", ("req-certs", "stub"),
               "[V7] + [OLD] validation (pairing inferred from dates)"),
    Generation("newest", "kvm-x86 after the 2026 #VMGEXIT series (release not pinned down; > 7.0)",
               ("req-certs", "stub"), "[NEW] sev.c @1a27afa0511e"),
)}

# The generation the emulated platform plays for a profile unless told otherwise.
DEFAULT_GENERATION: dict[str, str] = {"req-certs": "newest", "stub": "newest", "vmgexit-v15": "v15"}

_INVALID_LEN_WRITES = "RBX := the npages the VMM put in the exit; nothing in the certificate buffer"

# Rows common to the ≥ 6.11 merged code (bounce buffers, msg_type filter, RAX checks).
_MERGED_REQUEST = {
    "report-request-no-certs-exit": Rule(
        ACCEPTED, REQUEST, "[OLD]/[NEW] snp_handle_ext_guest_req", cert_exit=False, zeroes=24,
        writes="24 zero bytes at RAX (kvm_clear_guest) if RBX != 0, nothing if RBX = 0; never "
               "INVALID_LEN or BUSY; then the firmware call"),
    "other-msg-type": Rule(
        ACCEPTED, REQUEST, "[OLD]/[NEW] snp_handle_ext_guest_req (msg_type != SNP_MSG_REPORT_REQ)",
        writes="nothing: handled as SNP_GUEST_REQUEST, RAX/RBX ignored"),
    "regs-not-valid": Rule(
        GHCB_ERROR, REQUEST, "[OLD]/[NEW] snp_handle_ext_guest_req", reason=GHCB_ERR_INVALID_INPUT,
        note="only for MSG_REPORT_REQ; other message types ignore RAX/RBX"),
    "certs-gpa-unaligned": Rule(
        GHCB_ERROR, REQUEST, "[OLD]/[NEW] snp_handle_ext_guest_req", reason=GHCB_ERR_INVALID_INPUT),
    "firmware-error": Rule(
        FIRMWARE, FIRMWARE_SETUP, "[OLD]/[NEW] snp_handle_guest_req", vmm_error=0,
        writes="the response bounce page is copied back to the guest's response page even on a "
               "firmware error; SW_EXITINFO2 = SNP_GUEST_ERR(0, fw_err)"),
}


def _bad_pages(source: str, reason: int) -> dict[str, Rule]:
    """Misaligned and identical request/response pages: one check in the merged kernels."""
    return {s: Rule(GHCB_ERROR, VALIDATION, source, reason=reason)
            for s in ("pages-misaligned", "pages-identical")}


_OLD_VALIDATION = {
    **_bad_pages("[OLD] sev_es_validate_vmgexit (reason preset to GHCB_ERR_MISSING_INPUT)",
                 GHCB_ERR_MISSING_INPUT),
    "ghcb-unregistered": Rule(
        KVM_RUN_ERROR, VALIDATION, "[OLD] sev_handle_vmgexit (GHCB GPA != ghcb_registered_gpa)",
        errno_name="EINVAL", writes="sev_es_sync_from_ghcb ran first: the valid bitmap is cleared"),
    "psc-scratch-outside-ghcb": Rule(
        ACCEPTED, REQUEST, "[OLD] setup_vmgexit_scratch (outside the GHCB: up to "
        "GHCB_SCRATCH_AREA_LIMIT, copied in and synced back)",
        note="length = SW_EXITINFO2; more than 16 pages -> INVALID_SCRATCH_AREA"),
    "psc-exitinfo2-past-ghcb": Rule(
        GHCB_ERROR, REQUEST, "[OLD] setup_vmgexit_scratch (len = exit_info_2)",
        reason=GHCB_ERR_INVALID_SCRATCH_AREA),
    "map-gpa-range-bad-ret": Rule(
        PSC_ERROR, AFTER_PSC_EXIT, "[OLD] snp_complete_psc / snp_complete_psc_msr (any non-zero ret)",
        note="GHCB form: SW_EXITINFO2 = VMGEXIT_PSC_ERROR_GENERIC; MSR form: GHCB_MSR_PSC_RESP_ERROR",
        vmm_error=VMGEXIT_PSC_ERROR_GENERIC >> 32),
}

_REQ_CERTS = {
    "report-request": Rule(
        ACCEPTED, REQUEST, "[V7]/[NEW] snp_handle_ext_guest_req (snp_certs_enabled)", cert_exit=True,
        writes="KVM_EXIT_SNP_REQ_CERTS {gpa = RAX, npages = RBX (not validated), ret = 0}; KVM "
               "writes nothing into the certificate buffer (the VMM does)",
        note="only for MSG_REPORT_REQ, after the RAX/RBX checks; ret 0 -> the firmware call"),
    "vmm-enospc": Rule(
        VMM_ERROR, AFTER_CERT_EXIT, "[V7]/[NEW] snp_complete_req_certs", cert_exit=True,
        vmm_error=SNP_GUEST_VMM_ERR_INVALID_LEN, ret=errno.ENOSPC, writes=_INVALID_LEN_WRITES),
    "vmm-eagain": Rule(
        VMM_ERROR, AFTER_CERT_EXIT, "[V7]/[NEW] snp_complete_req_certs", cert_exit=True,
        vmm_error=SNP_GUEST_VMM_ERR_BUSY, ret=errno.EAGAIN),
    "vmm-eio": Rule(
        VMM_ERROR, AFTER_CERT_EXIT, "[V7]/[NEW] snp_complete_req_certs (SNP_GUEST_VMM_ERR_GENERIC = ~0U)",
        cert_exit=True, vmm_error=SNP_GUEST_VMM_ERR_GENERIC, ret=errno.EIO),
    "vmm-bad-ret": Rule(
        KVM_RUN_ERROR, AFTER_CERT_EXIT, "[V7]/[NEW] snp_complete_req_certs (default case)",
        cert_exit=True, errno_name="EINVAL", note="the guest is not resumed"),
    "enable-req-certs-after-vcpu": Rule(
        IOCTL_ERROR, ANY_STAGE, "[V7]/[NEW] snp_enable_certs (kvm->created_vcpus)", errno_name="EINVAL"),
}

REGISTRY: dict[str, dict[str, Rule]] = {
    "v15": {
        "report-request": Rule(
            ACCEPTED, REQUEST, "[V15] snp_begin_ext_guest_req", cert_exit=True,
            writes="KVM_EXIT_VMGEXIT {type = REQ_CERTS, data_gpa = RAX, data_npages = RBX, ret = 0}",
            note="every extended request exits (no msg_type filter); ret 0 -> the firmware call"),
        "other-msg-type": Rule(
            ACCEPTED, REQUEST, "[V15] snp_begin_ext_guest_req (no msg_type filter)", cert_exit=True,
            writes="KVM_EXIT_VMGEXIT as for a report request"),
        "pages-misaligned": Rule(
            VMM_ERROR, FIRMWARE_SETUP, "[V15-18] snp_setup_guest_buf (!PAGE_ALIGNED -> -EINVAL) in "
            "snp_handle_guest_req / [V15] snp_complete_ext_guest_req",
            vmm_error=SNP_GUEST_VMM_ERR_GENERIC_V15, cert_exit=True,
            note="not checked at validation: an extended request exits to the VMM first; GENERIC "
                 "when the VMM answers ret 0 (its INVALID_LEN/BUSY answers win)"),
        "pages-identical": Rule(
            FIRMWARE, FIRMWARE_SETUP, "[V15-18] sev_es_validate_vmgexit / snp_setup_guest_buf "
            "(req == resp never checked)", vmm_error=0, cert_exit=True, verified=False,
            note="the firmware gets one page as request and (firmware-owned) response; its answer "
                 "is not pinned down by any source: the emulated PSP processes the message"),
        "regs-not-valid": Rule(
            GHCB_ERROR, VALIDATION, "[V15-18] sev_es_validate_vmgexit (RAX/RBX valid bits for "
            "EXT_GUEST_REQUEST)", reason=GHCB_ERR_MISSING_INPUT,
            note="every extended request, whatever its message type"),
        "certs-gpa-unaligned": Rule(
            VMM_ERROR, REQUEST, "[V15] snp_begin_ext_guest_req (!IS_ALIGNED(data_gpa) -> "
            "abort_request)", vmm_error=SNP_GUEST_VMM_ERR_GENERIC_V15, fw_bits="any",
            note="SW_EXITINFO1 stays 0; SW_EXITINFO2[31:0] = an uninitialised fw_err (the clang "
                 "warning Nathan Chancellor reported); the emulated KVM puts 0 there"),
        "ghcb-unregistered": _OLD_VALIDATION["ghcb-unregistered"],
        "firmware-error": Rule(
            FIRMWARE, FIRMWARE_SETUP, "[V15-18] __snp_handle_guest_req -> snp_handle_guest_req / "
            "[V15] snp_complete_ext_guest_req (vmm_ret = SNP_GUEST_VMM_ERR_GENERIC)",
            vmm_error=SNP_GUEST_VMM_ERR_GENERIC_V15,
            writes="SW_EXITINFO2 = BIT(31) << 32 | fw_err; the guest's own response page was handed "
                   "to the firmware (rmp_make_private) and, on a firmware error, is left "
                   "firmware-owned (no snp_cleanup_guest_buf)",
            note="the leftover firmware-owned page makes the next request RMP-fault (AMDESE/AMDSEV#220); "
                 "the emulated KVM does not model that crash"),
        "vmm-enospc": Rule(
            VMM_ERROR, AFTER_CERT_EXIT, "[V15] snp_complete_ext_guest_req (ret verbatim)", cert_exit=True,
            vmm_error=SNP_GUEST_VMM_ERR_INVALID_LEN, ret=SNP_GUEST_VMM_ERR_INVALID_LEN,
            writes="RBX := data_npages from the exit; nothing in the certificate buffer"),
        "vmm-eagain": Rule(
            VMM_ERROR, AFTER_CERT_EXIT, "[V15] snp_complete_ext_guest_req (ret verbatim)", cert_exit=True,
            vmm_error=SNP_GUEST_VMM_ERR_BUSY, ret=SNP_GUEST_VMM_ERR_BUSY),
        "vmm-eio": Rule(
            VMM_ERROR, AFTER_CERT_EXIT, "[V15] snp_complete_ext_guest_req (KVM_USER_VMGEXIT_REQ_CERTS_"
            "ERROR_GENERIC = BIT(31))", cert_exit=True, vmm_error=SNP_GUEST_VMM_ERR_GENERIC_V15,
            ret=SNP_GUEST_VMM_ERR_GENERIC_V15),
        "vmm-bad-ret": Rule(
            VMM_ERROR, AFTER_CERT_EXIT, "[V15] snp_complete_ext_guest_req (ret used verbatim as the "
            "VMM error)", cert_exit=True, vmm_error=None, note="u32 ret, no validation"),
        "enable-req-certs-after-vcpu": Rule(
            IOCTL_ERROR, ANY_STAGE, "[OLD] sev_mem_enc_ioctl (no command 103: default case)",
            errno_name="EINVAL"),
        **{k: v for k, v in _OLD_VALIDATION.items() if k.startswith(("psc-", "map-"))},
    },
    "6.11-stub": {
        **_MERGED_REQUEST,
        **_OLD_VALIDATION,
        "enable-req-certs-after-vcpu": Rule(
            IOCTL_ERROR, ANY_STAGE, "[OLD] sev_mem_enc_ioctl (no command 103: default case)",
            errno_name="EINVAL"),
    },
    "7.0": {
        **_MERGED_REQUEST,
        **{k: replace(v, verified=False, note=(v.note + "; " if v.note else "")
                      + "7.0 = [V7] on [OLD] validation (inferred from dates)")
           if k in ("pages-misaligned", "pages-identical", "ghcb-unregistered") else v
           for k, v in _OLD_VALIDATION.items()},
        **_REQ_CERTS,
    },
    "newest": {
        **_MERGED_REQUEST,
        **_bad_pages("[NEW] sev_handle_vmgexit (svm_vmgexit_bad_input(GHCB_ERR_INVALID_INPUT))",
                     GHCB_ERR_INVALID_INPUT),
        "ghcb-unregistered": Rule(
            GHCB_ERROR, VALIDATION, "[NEW] sev_handle_vmgexit (PATCH 18/24 \"Don't terminate SNP "
            "VMs on #VMGEXIT without a registered GHCB\")", reason=GHCB_ERR_NOT_REGISTERED,
            writes="sev_es_sync_from_ghcb ran first; RAX/RBX/RCX/RDX written back at unmap"),
        "psc-scratch-outside-ghcb": Rule(
            GHCB_ERROR, REQUEST, "[NEW] setup_vmgexit_scratch (GHCB v2: scratch inside the GHCB)",
            reason=GHCB_ERR_INVALID_SCRATCH_AREA),
        "psc-exitinfo2-past-ghcb": Rule(
            ACCEPTED, REQUEST, "[NEW] snp_begin_psc (min_len = sizeof(struct psc_hdr); "
            "SW_EXITINFO2 ignored)"),
        "map-gpa-range-bad-ret": Rule(
            KVM_RUN_ERROR, AFTER_PSC_EXIT, "[NEW] snp_complete_psc / snp_complete_psc_msr "
            "(kvm_is_valid_map_gpa_range_ret)", errno_name="EINVAL"),
        **_REQ_CERTS,
    },
}

# Shapes only some generations have (no row: the shape cannot occur there).
_OPTIONAL = {"report-request", "report-request-no-certs-exit", "vmm-enospc", "vmm-eagain", "vmm-eio",
             "vmm-bad-ret"}


class UnknownGeneration(ValueError):
    """A kernel generation or shape the registry does not have."""


def generation(name: str) -> Generation:
    try:
        return GENERATIONS[name]
    except KeyError:
        raise UnknownGeneration(f"unknown kernel behaviour {name!r} (known: "
                                f"{', '.join(GENERATIONS)})") from None


def rule(gen: str, shape: str) -> Rule:
    """The row for ``shape`` in generation ``gen`` (read at call time: tests may patch rows)."""
    rows = REGISTRY.get(gen)
    if rows is None:
        generation(gen)
    if shape not in SHAPES:
        raise UnknownGeneration(f"unknown request shape {shape!r} (known: {', '.join(SHAPES)})")
    try:
        return REGISTRY[gen][shape]
    except KeyError:
        raise UnknownGeneration(f"kernel behaviour {gen} has no row for {shape!r}") from None


def has_rule(gen: str, shape: str) -> bool:
    return shape in REGISTRY.get(gen, {})


def profiles_of(gen: str) -> tuple[str, ...]:
    """The ABI profiles generation ``gen`` can play."""
    return generation(gen).profiles


def generations_for(profile: str) -> tuple[str, ...]:
    """The generations that can play ABI profile ``profile``."""
    return tuple(g.name for g in GENERATIONS.values() if profile in g.profiles)


def allows(gen: str, profile: str) -> bool:
    return profile in profiles_of(gen)


def default_generation(profile: str) -> str:
    """The generation the emulated platform plays for ``profile`` unless told otherwise."""
    try:
        return DEFAULT_GENERATION[profile]
    except KeyError:
        raise UnknownGeneration(f"no kernel generation plays ABI profile {profile!r}") from None


def report_request_shape(profile: str) -> str:
    """The shape of a well-formed extended MSG_REPORT_REQ under ``profile``."""
    return "report-request-no-certs-exit" if profile == "stub" else "report-request"


# KVM's order of decisions: an input with several bad shapes gets the earliest stage's answer.
STAGE_ORDER = (VALIDATION, REQUEST, AFTER_CERT_EXIT, FIRMWARE_SETUP)
_DECIDES = (GHCB_ERROR, VMM_ERROR, KVM_RUN_ERROR)


def first_rule(gen: str, shapes: tuple[str, ...]) -> tuple[str, Rule] | None:
    """Of the bad-input ``shapes`` one request has (in KVM's order within a stage), the one
    generation ``gen`` answers first, with its row; None if none of them stops the request."""
    rows = [(s, rule(gen, s)) for s in shapes if has_rule(gen, s)]
    for stage in STAGE_ORDER:
        for s, r in rows:
            if r.stage == stage and r.outcome in _DECIDES:
                return s, r
    return next(iter(rows), None)


def certs_answer_shape(gen: str, ret: int) -> str:
    """Which vmm-* row the VMM's certificate-exit ``ret`` selects in ``gen``."""
    for shape in ("vmm-enospc", "vmm-eagain", "vmm-eio"):
        r = REGISTRY.get(gen, {}).get(shape)
        if r is not None and r.ret == ret:
            return shape
    return "vmm-bad-ret"


# Release → generation on a real host (kvm-host-abi.md §1(c)/(d); errata B1: the INVALID_INPUT
# page checks land after 7.0, in the series applied 2026-05-29, i.e. in 7.1; stable backports of
# that series may make a 7.0.y host play "newest": force it with --kernel-behaviour then).
STUB_FIRST = (6, 11)
REQ_CERTS_FIRST = (7, 0)
NEWEST_FIRST = (7, 1)


def detect_generation(release: tuple[int, int] | None, req_certs_attr: int | None) -> str | None:
    """The generation a real host plays, from its kernel release (major, minor) and the
    KVM_X86_SEV_SNP_REQ_CERTS device attribute (1, 0, or None when absent). None: unknown
    (older than 6.11). A v15-patched kernel cannot be told apart: force ``v15``."""
    if req_certs_attr == 1:
        return "newest" if release is not None and release >= NEWEST_FIRST else "7.0"
    if release is None or release < STUB_FIRST:
        return None
    if release >= NEWEST_FIRST:
        return "newest"  # stub profile (attribute off) on a newest kernel
    if release >= REQ_CERTS_FIRST:
        return "7.0"
    return "6.11-stub"


def listing() -> list[dict[str, object]]:
    """Every generation with its rows, for ``snplab kernels`` and reports."""
    out = []
    for g in GENERATIONS.values():
        rows = [{"shape": s, **REGISTRY[g.name][s].to_json()} for s in SHAPES if s in REGISTRY[g.name]]
        out.append({"generation": g.name, "kernels": g.kernels, "profiles": list(g.profiles),
                    "source": g.source, "rows": rows})
    return out


def _check_complete() -> None:
    for gen, rows in REGISTRY.items():
        missing = [s for s in SHAPES if s not in rows and s not in _OPTIONAL]
        if missing:
            raise AssertionError(f"kernel behaviour {gen}: no row for {', '.join(missing)}")


_check_complete()
