"""Scenarios: what one guest run does, as plain data (docs/contract.md §5).

A ``Scenario`` is the guest's step script (one tuple of ``Step`` per vCPU) plus the host side of
the run: the ABI profile the emulated or real KVM plays, the product and signing key, the
certificate blob the VMM serves and its scripted answers to certificate exits, injected faults
(emulated platform only) and launch parameters.  ``platform.run(scenario)`` turns it into a
``Transcript``; nothing in here runs anything.

Both types are frozen and round-trip through JSON (``to_json``/``from_json``) so a report can
carry the exact scenario that produced it and a failing case can be replayed from its report.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

OPS = ("ext_req", "req", "terminate")
PAGES = ("normal", "same", "private_req", "private_certs", "misaligned_req")
POLICIES = ("none", "linux", "naive")
ABIS = ("req-certs", "stub", "vmgexit-v15")
PRODUCTS = ("milan", "genoa", "turin")
SIGNERS = ("vcek", "vlek")
REPORT_VERSIONS = (2, 3, 5)

# Guest message type of an attestation report request (SNP firmware ABI, MSG_REPORT_REQ).
MSG_REPORT_REQ = 5
REPORT_DATA_SIZE = 64
HOST_DATA_SIZE = 32
# Default guest policy: SMT allowed (bit 16), reserved-must-be-one (bit 17), ABI 0.0.
DEFAULT_GUEST_POLICY = 0x30000

_U64 = (1 << 64) - 1
_CERT_ANSWER = re.compile(r"^(auto|ENOSPC|EAGAIN|EIO|ret:\d+|enospc-npages:\d+)$")


class ScenarioError(ValueError):
    """A scenario or step that cannot be run as written."""


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ScenarioError(f"{what} {value!r} is not one of {', '.join(choices)}")


def _check_u64(what: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U64:
        raise ScenarioError(f"{what} {value!r} is not a 64-bit unsigned integer")


@dataclass(frozen=True)
class Step:
    """One guest operation and how the guest reacts to the host's answer.

    ``op``: ``ext_req`` (SNP_EXTENDED_GUEST_REQUEST 0x80000012), ``req`` (SNP_GUEST_REQUEST
    0x80000011) or ``terminate`` (GHCB termination now, reason code in ``vmpl``).
    ``certs_npages`` is RBX of the first attempt (hostile values allowed, up to 2^64-1);
    ``certs_gpa`` (absolute, the guest never touches it) overrides the vCPU's certificate area
    plus ``certs_gpa_offset``.  ``seqno`` None means the guest's own counter; an int replays or
    skips.  ``policy`` is the guest's reaction to INVALID_LEN/BUSY (see snplab_abi.h).
    """

    op: str = "ext_req"
    msg_type: int = MSG_REPORT_REQ
    msg_version: int = 1
    vmpck: int = 0
    vmpl: int = 0
    report_data: bytes = b""
    certs_npages: int = 0
    certs_gpa_offset: int = 0
    certs_gpa: int | None = None
    pages: str = "normal"
    seqno: int | None = None
    policy: str = "none"
    max_busy_retries: int = 4
    no_rax_valid: bool = False
    no_rbx_valid: bool = False
    term_ghcb: bool = False  # terminate: the GHCB NAE form (0x8000FFFE) instead of the MSR protocol

    def __post_init__(self) -> None:
        _check_choice("step op", self.op, OPS)
        _check_choice("step pages", self.pages, PAGES)
        _check_choice("step policy", self.policy, POLICIES)
        for name in ("msg_type", "msg_version"):
            v = getattr(self, name)
            if not 0 <= v <= 0xFF:
                raise ScenarioError(f"step {name} {v} does not fit in a byte")
        if not 0 <= self.vmpck <= 3:
            raise ScenarioError(f"step vmpck {self.vmpck} is not 0..3")
        if not 0 <= self.vmpl <= 0xFFFF_FFFF:
            raise ScenarioError(f"step vmpl {self.vmpl} does not fit in 32 bits")
        if not isinstance(self.report_data, bytes):
            object.__setattr__(self, "report_data", bytes(self.report_data))
        if len(self.report_data) > REPORT_DATA_SIZE:
            raise ScenarioError(f"report_data is {len(self.report_data)} bytes, at most 64")
        _check_u64("certs_npages", self.certs_npages)
        _check_u64("certs_gpa_offset", self.certs_gpa_offset)
        if self.certs_gpa is not None:
            _check_u64("certs_gpa", self.certs_gpa)
        if self.seqno is not None:
            _check_u64("seqno", self.seqno)
        if not 0 <= self.max_busy_retries <= 0xFFFF_FFFF:
            raise ScenarioError(f"max_busy_retries {self.max_busy_retries} out of range")

    # -- builders -------------------------------------------------------------------------------

    @classmethod
    def ext(cls, npages: int = 0, **kw: Any) -> "Step":
        """An extended guest request offering ``npages`` certificate pages."""
        return cls(op="ext_req", certs_npages=npages, **kw)

    @classmethod
    def req(cls, **kw: Any) -> "Step":
        """A plain guest request (no certificates)."""
        return cls(op="req", **kw)

    @classmethod
    def terminate(cls, code: int = 0, *, ghcb: bool = False) -> "Step":
        """A scripted termination request with reason ``code``: through the GHCB MSR protocol, or
        with ``ghcb`` through the GHCB page (NAE 0x8000FFFE; KVM reports data[0] = GHCB GPA)."""
        return cls(op="terminate", vmpl=code, term_ghcb=ghcb)

    @property
    def padded_report_data(self) -> bytes:
        """REPORT_DATA as the guest sends it: zero-padded to 64 bytes."""
        return self.report_data.ljust(REPORT_DATA_SIZE, b"\0")

    @property
    def is_report_request(self) -> bool:
        return self.op in ("ext_req", "req") and self.msg_type == MSG_REPORT_REQ

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["report_data"] = self.report_data.hex()
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Step":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ScenarioError(f"unknown step field(s): {', '.join(sorted(unknown))}")
        kw = dict(d)
        if "report_data" in kw:
            kw["report_data"] = bytes.fromhex(kw["report_data"])
        return cls(**kw)


@dataclass(frozen=True)
class Scenario:
    """One guest run: per-vCPU step scripts and the host's side of it.

    ``cert_blob`` None means the platform's own chain for ``product``/``signer``.
    ``cert_answers`` are the VMM's answers to certificate exits, in order, then ``auto``:
    ``auto`` (blob if it fits, else ENOSPC with the pages needed), ``ENOSPC``, ``EAGAIN``,
    ``EIO``, ``ret:<int>`` (a raw ret value) or ``enospc-npages:<int>``.
    ``faults`` name entries of ``snplab.emu.faults`` (emulated platform only).
    ``tcb_updates``: how many times a host updater replaces the certificate blob (and, on the
    emulated platform, the firmware's TCB) while the guest runs, taking the exclusive blob lock
    as the kernel documentation prescribes (races family).
    """

    name: str
    steps: tuple[tuple[Step, ...], ...]
    abi: str = "req-certs"
    product: str = "milan"
    signer: str = "vcek"
    cert_blob: bytes | None = None
    cert_answers: tuple[str, ...] = ()
    faults: tuple[str, ...] = ()
    report_version: int = 5
    policy: int = DEFAULT_GUEST_POLICY
    host_data: bytes = bytes(HOST_DATA_SIZE)
    enable_req_certs_late: bool = False
    guest_timeout: float = 10.0
    label: str = ""
    tcb_updates: int = 0

    def __post_init__(self) -> None:
        steps = tuple(tuple(v) for v in self.steps)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "cert_answers", tuple(self.cert_answers))
        object.__setattr__(self, "faults", tuple(self.faults))
        if not steps:
            raise ScenarioError(f"scenario {self.name!r} has no vCPU")
        for v, script in enumerate(steps):
            for s in script:
                if not isinstance(s, Step):
                    raise ScenarioError(f"vCPU {v}: {s!r} is not a Step")
        _check_choice("abi", self.abi, ABIS)
        _check_choice("product", self.product, PRODUCTS)
        _check_choice("signer", self.signer, SIGNERS)
        if self.report_version not in REPORT_VERSIONS:
            raise ScenarioError(f"report_version {self.report_version} not in {REPORT_VERSIONS}")
        for a in self.cert_answers:
            if not _CERT_ANSWER.match(a):
                raise ScenarioError(f"certificate answer {a!r} is not auto, ENOSPC, EAGAIN, EIO, "
                                    "ret:<int> or enospc-npages:<int>")
        if self.cert_blob is not None and not isinstance(self.cert_blob, bytes):
            object.__setattr__(self, "cert_blob", bytes(self.cert_blob))
        if not isinstance(self.host_data, bytes):
            object.__setattr__(self, "host_data", bytes(self.host_data))
        if len(self.host_data) != HOST_DATA_SIZE:
            raise ScenarioError(f"host_data is {len(self.host_data)} bytes, want 32")
        _check_u64("policy", self.policy)
        if not self.guest_timeout > 0:
            raise ScenarioError(f"guest_timeout {self.guest_timeout} must be positive")
        if self.tcb_updates < 0:
            raise ScenarioError("tcb_updates must be >= 0")

    # -- builders -------------------------------------------------------------------------------

    @classmethod
    def single(cls, abi: str, product: str, *steps: Step, name: str = "", **kw: Any) -> "Scenario":
        """One vCPU running ``steps``."""
        return cls(name=name or _auto_name(abi, product, [steps]), steps=(tuple(steps),),
                   abi=abi, product=product, **kw)

    @classmethod
    def multi(cls, abi: str, product: str, scripts: Iterable[Sequence[Step]], *, name: str = "",
              **kw: Any) -> "Scenario":
        """One vCPU per script, all running at once."""
        steps = tuple(tuple(s) for s in scripts)
        return cls(name=name or _auto_name(abi, product, steps), steps=steps, abi=abi,
                   product=product, **kw)

    def with_(self, **changes: Any) -> "Scenario":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def nvcpus(self) -> int:
        return len(self.steps)

    def step(self, vcpu: int, index: int) -> Step:
        return self.steps[vcpu][index]

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "steps":
                v = [[s.to_json() for s in script] for script in v]
            elif isinstance(v, bytes):
                v = v.hex()
            elif isinstance(v, tuple):
                v = list(v)
            d[f.name] = v
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Scenario":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ScenarioError(f"unknown scenario field(s): {', '.join(sorted(unknown))}")
        kw = dict(d)
        kw["steps"] = tuple(tuple(Step.from_json(s) for s in script) for script in d["steps"])
        if kw.get("cert_blob") is not None:
            kw["cert_blob"] = bytes.fromhex(kw["cert_blob"])
        if "host_data" in kw:
            kw["host_data"] = bytes.fromhex(kw["host_data"])
        for name in ("cert_answers", "faults"):
            if name in kw:
                kw[name] = tuple(kw[name])
        return cls(**kw)


def _auto_name(abi: str, product: str, scripts: Sequence[Sequence[Step]]) -> str:
    ops = "+".join(
        ",".join(f"{s.op}:{s.certs_npages}" if s.op == "ext_req" else s.op for s in script)
        for script in scripts)
    return f"{abi}/{product}/{ops}"


def pages_for(nbytes: int) -> int:
    """Number of 4 KiB pages needed to hold ``nbytes`` (what KVM/the VMM put in RBX)."""
    return -(-nbytes // 4096)


__all__ = ["Step", "Scenario", "ScenarioError", "pages_for", "OPS", "PAGES", "POLICIES", "ABIS",
           "PRODUCTS", "SIGNERS", "MSG_REPORT_REQ"]
