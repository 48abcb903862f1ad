"""Transcripts: everything one guest run produced, as JSON-able data (docs/contract.md §5).

A ``Transcript`` is what ``platform.run(scenario)`` returns and what the oracles in
``snplab.checks`` judge: the guest's own raw facts (``results``, decoded from the payload's
``struct snplab_results`` via DWARF, byte arrays as hex), the host's exit log (``events``), the
emulated PSP's message log, the launch log and measurement, timings and host facts.

The accessors return small typed views (``StepResult``, ``Attempt``) so oracles and tests read
``t.step(0, 1).attempts[0].vmm_error`` rather than dictionary paths.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from snplab.abi.ghcb import SVM_VMGEXIT_EXT_GUEST_REQUEST as EXT_GUEST_REQUEST
from snplab.abi.ghcb import SVM_VMGEXIT_GUEST_REQUEST as GUEST_REQUEST
from snplab.scenario import Scenario

SCHEMA = 1
STATUSES = ("ok", "timeout", "kvm-run-error", "crash", "unhandled-exit", "error")

# Byte arrays of struct snplab_results that are trimmed to their used length in JSON.
_TRIM_COUNTS = {"vcpu": "nvcpus", "steps": "nsteps", "attempts": "nattempts"}
# Every array of struct snplab_results with the sibling field that counts its used part: what
# ``trim_results`` keeps, so a decoder may skip the rest (snplab.vmm.dwarf.decode_bytes counts).
RESULTS_COUNTED_ARRAYS = {**_TRIM_COUNTS, "cert_store": "cert_store_used", "log": "log_len"}


class TranscriptError(ValueError):
    """A transcript that cannot be read (wrong schema, missing fields)."""


def as_bytes(v: Any) -> bytes:
    """Bytes from the forms a decoded byte array may take: bytes, hex text or a list of ints."""
    if v is None:
        return b""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, str):
        return bytes.fromhex(v)
    return bytes(v)


_PLAIN = frozenset({str, int, float, bool, type(None)})


def jsonable(obj: Any) -> Any:
    """Deep copy of ``obj`` with bytes as hex text, tuples as lists and dataclasses as dicts."""
    t = type(obj)  # exact types first: a transcript is mostly these, and ABC checks are slow
    if t in _PLAIN:
        return obj
    if t is dict:
        return {str(k): jsonable(v) for k, v in obj.items()}
    if t is list or t is tuple:
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).hex()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        to_json = getattr(obj, "to_json", None)
        return jsonable(to_json() if callable(to_json) else dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "value") and hasattr(obj, "name") and isinstance(getattr(obj, "value"), int):
        return int(obj.value)  # enum members
    return obj


def trim_results(results: Mapping[str, Any]) -> dict[str, Any]:
    """JSON form of decoded ``snplab_results``: unused vCPUs, steps and attempts dropped, the
    certificate store cut to its used length, the text log decoded; byte arrays as hex."""

    def walk(node: Any, key: str | None, parent: Mapping[str, Any] | None) -> Any:
        if isinstance(node, Mapping):
            out = {}
            for k, v in node.items():
                out[k] = walk(v, k, node)
            return out
        if isinstance(node, (list, tuple)) and key in _TRIM_COUNTS and parent is not None:
            n = parent.get(_TRIM_COUNTS[key])
            items = list(node) if not isinstance(n, int) else list(node)[: max(0, n)]
            return [walk(v, None, None) for v in items]
        if key == "cert_store" and parent is not None:
            used = parent.get("cert_store_used", 0)
            return as_bytes(node)[: max(0, int(used))].hex()
        if key == "log" and parent is not None:
            raw = as_bytes(node) if not isinstance(node, str) else node.encode("utf-8", "replace")
            n = parent.get("log_len")
            if isinstance(n, int):
                raw = raw[: max(0, n)]
            return raw.split(b"\0", 1)[0].decode("ascii", "replace")
        return jsonable(node)

    return walk(dict(results), None, None)


@dataclass(frozen=True)
class Attempt:
    """One VMGEXIT of a guest request, as the guest recorded it (struct snplab_attempt)."""

    vcpu: int
    step: int
    index: int
    exit_code: int
    req_gpa: int
    resp_gpa: int
    rax_in: int
    rbx_in: int
    rbx_out: int
    sw_exitinfo1: int
    sw_exitinfo2: int
    seqno: int
    vmpck: int
    msg_type: int
    resent: bool
    tag: bytes
    certs_head: bytes
    resp_written: bool = False  # not completed, yet the response page was not left zero

    @classmethod
    def from_results(cls, vcpu: int, step: int, index: int, d: Mapping[str, Any]) -> "Attempt":
        return cls(vcpu=vcpu, step=step, index=index,
                   exit_code=int(d["exit_code"]), req_gpa=int(d["req_gpa"]),
                   resp_gpa=int(d["resp_gpa"]), rax_in=int(d["rax_in"]), rbx_in=int(d["rbx_in"]),
                   rbx_out=int(d["rbx_out"]), sw_exitinfo1=int(d["sw_exitinfo1"]),
                   sw_exitinfo2=int(d["sw_exitinfo2"]), seqno=int(d["seqno"]),
                   vmpck=int(d["vmpck"]), msg_type=int(d["msg_type"]),
                   resent=bool(d.get("resent", 0)), tag=as_bytes(d.get("tag")),
                   certs_head=as_bytes(d.get("certs_head")),
                   resp_written=bool(d.get("resp_written", 0)))

    @property
    def where(self) -> str:
        return f"vCPU {self.vcpu} step {self.step} attempt {self.index}"

    @property
    def vmm_error(self) -> int:
        """SW_EXITINFO2[63:32]: the hypervisor's error (1 INVALID_LEN, 2 BUSY, other: generic)."""
        return self.sw_exitinfo2 >> 32

    @property
    def fw_status(self) -> int:
        """SW_EXITINFO2[31:0]: the firmware status."""
        return self.sw_exitinfo2 & 0xFFFF_FFFF

    @property
    def ghcb_error(self) -> bool:
        """SW_EXITINFO1 != 0: KVM rejected the call itself (malformed input etc.)."""
        return self.sw_exitinfo1 != 0

    @property
    def completed(self) -> bool:
        """The request reached the firmware and succeeded: EXITINFO1 = 0 and EXITINFO2 = 0."""
        return self.sw_exitinfo1 == 0 and self.sw_exitinfo2 == 0

    @property
    def host_error(self) -> bool:
        """KVM or the VMM refused the request before the firmware (no sequence number used)."""
        return self.ghcb_error or self.vmm_error != 0

    @property
    def is_ext(self) -> bool:
        return self.exit_code == EXT_GUEST_REQUEST




@dataclass(frozen=True)
class StepResult:
    """What the guest recorded for one step (struct snplab_step_result), plus names of its enums."""

    vcpu: int
    index: int
    outcome: int
    outcome_name: str
    attempts: tuple[Attempt, ...]
    decrypt: int
    decrypt_name: str
    resp_seqno: int
    resp_msg_type: int
    resp_msg_version: int
    resp_msg_vmpck: int
    rsp_status: int
    rsp_report_size: int
    report: bytes
    certs: bytes
    certs_gpa: int
    certs_npages: int
    certs_truncated: bool

    @property
    def where(self) -> str:
        return f"vCPU {self.vcpu} step {self.index}"

    @property
    def last(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def has_report(self) -> bool:
        return self.decrypt_name == "OK" and any(self.report)


@dataclass(frozen=True)
class Transcript:
    """The record of one guest run (JSON schema in docs/contract.md §5)."""

    scenario: Scenario
    platform: str
    abi: str
    product: str
    status: str
    error: str | None = None
    vcpus: tuple[dict[str, Any], ...] = ()
    events: tuple[dict[str, Any], ...] = ()
    results: dict[str, Any] = field(default_factory=dict)
    message_log: tuple[dict[str, Any], ...] = ()
    launch_log: tuple[dict[str, Any], ...] = ()
    measurement: str = ""
    trust: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    # Every certificate blob the host served during the run, hex, first = the initial one.
    cert_blobs: tuple[str, ...] = ()
    # DWARF enum tables of the payload the run used ({"snplab_outcome": {"SNPLAB_OUT_OK": 1}}).
    enums: dict[str, dict[str, int]] = field(default_factory=dict)
    # The kernel generation (snplab.abi.kernel_behaviour) the host played; "" = not recorded.
    kernel_behaviour: str = ""
    schema: int = SCHEMA

    # -- JSON ------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema": self.schema}
        for f in dataclasses.fields(self):
            if f.name == "schema":
                continue
            v = getattr(self, f.name)
            d[f.name] = v.to_json() if f.name == "scenario" else jsonable(v)
        return d

    def dumps(self, **kw: Any) -> str:
        return json.dumps(self.to_json(), **kw)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.dumps(indent=1))

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Transcript":
        if d.get("schema") != SCHEMA:
            raise TranscriptError(f"transcript schema {d.get('schema')!r}, want {SCHEMA}")
        try:
            kw: dict[str, Any] = {"scenario": Scenario.from_json(d["scenario"])}
            for f in dataclasses.fields(cls):
                if f.name in ("scenario",) or f.name not in d:
                    continue
                v = d[f.name]
                kw[f.name] = tuple(v) if isinstance(v, list) else v
        except (KeyError, TypeError, ValueError) as e:
            raise TranscriptError(f"transcript unreadable: {e}") from e
        return cls(**kw)

    @classmethod
    def loads(cls, text: str) -> "Transcript":
        return cls.from_json(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> "Transcript":
        return cls.loads(Path(path).read_text())

    # -- run-level accessors ---------------------------------------------------------------------

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def nvcpus(self) -> int:
        return len(self.results.get("vcpu", ()))

    @property
    def cert_blob(self) -> bytes:
        """The certificate blob the host served first (b"" if none was recorded)."""
        return bytes.fromhex(self.cert_blobs[0]) if self.cert_blobs else b""

    def served_blobs(self) -> tuple[bytes, ...]:
        return tuple(bytes.fromhex(b) for b in self.cert_blobs)

    def enum_name(self, enum: str, value: int, prefix: str) -> str:
        """Short member name of ``value`` in DWARF enum ``enum`` (prefix stripped), else the int."""
        for name, v in self.enums.get(enum, {}).items():
            if v == value and name.startswith(prefix):
                return name[len(prefix):]
        return str(value)

    def events_of(self, kind: str, vcpu: int | None = None) -> list[dict[str, Any]]:
        """Host events of one kind (e.g. "ReqCerts"), optionally for one vCPU, in order."""
        return [e for e in self.events
                if e.get("kind") == kind and (vcpu is None or e.get("vcpu") == vcpu)]

    def cert_exits(self, vcpu: int | None = None) -> list[dict[str, Any]]:
        """Certificate-request exits (either ABI) the VMM answered, in order."""
        return [e for e in self.events if e.get("kind") in ("ReqCerts", "VmgexitReqCerts")
                and (vcpu is None or e.get("vcpu") == vcpu)]

    # -- guest results ---------------------------------------------------------------------------

    def vcpu(self, v: int) -> dict[str, Any]:
        try:
            return self.results["vcpu"][v]
        except (KeyError, IndexError) as e:
            raise TranscriptError(f"no results for vCPU {v} (run status {self.status})") from e

    def steps(self, v: int) -> list[StepResult]:
        """The steps vCPU ``v`` executed, in order."""
        vr = self.vcpu(v)
        return [self._step_view(v, i, s) for i, s in enumerate(vr.get("steps", ()))
                if i < int(vr.get("nsteps", len(vr.get("steps", ()))))]

    def step(self, v: int, i: int) -> StepResult:
        steps = self.steps(v)
        if i >= len(steps):
            raise TranscriptError(f"vCPU {v} executed {len(steps)} step(s), no step {i} "
                                  f"(run status {self.status}{': ' + self.error if self.error else ''})")
        return steps[i]

    def attempts(self, v: int, i: int) -> tuple[Attempt, ...]:
        return self.step(v, i).attempts

    def report(self, v: int, i: int) -> bytes:
        """The decrypted report of step ``i`` of vCPU ``v`` (zeros if none)."""
        return self.step(v, i).report

    def cert_bytes(self, v: int, i: int) -> bytes:
        """The certificate bytes the guest kept for step ``i`` of vCPU ``v``."""
        return self.step(v, i).certs

    def all_steps(self) -> Iterator[StepResult]:
        for v in range(self.nvcpus):
            yield from self.steps(v)

    def all_attempts(self) -> Iterator[Attempt]:
        for s in self.all_steps():
            yield from s.attempts

    def _step_view(self, v: int, i: int, s: Mapping[str, Any]) -> StepResult:
        vr = self.vcpu(v)
        n = int(s.get("nattempts", len(s.get("attempts", ()))))
        attempts = tuple(Attempt.from_results(v, i, j, a)
                         for j, a in enumerate(list(s.get("attempts", ()))[:n]))
        store = as_bytes(vr.get("cert_store"))
        off, ln = int(s.get("certs_store_off", 0)), int(s.get("certs_len", 0))
        outcome, decrypt = int(s.get("outcome", 0)), int(s.get("decrypt", 0))
        return StepResult(
            vcpu=v, index=i, outcome=outcome,
            outcome_name=self.enum_name("snplab_outcome", outcome, "SNPLAB_OUT_"),
            attempts=attempts, decrypt=decrypt,
            decrypt_name=self.enum_name("snplab_decrypt", decrypt, "SNPLAB_DEC_"),
            resp_seqno=int(s.get("resp_seqno", 0)), resp_msg_type=int(s.get("resp_msg_type", 0)),
            resp_msg_version=int(s.get("resp_msg_version", 0)),
            resp_msg_vmpck=int(s.get("resp_msg_vmpck", 0)),
            rsp_status=int(s.get("rsp_status", 0)),
            rsp_report_size=int(s.get("rsp_report_size", 0)),
            report=as_bytes(s.get("report")), certs=store[off:off + ln],
            certs_gpa=int(s.get("certs_gpa", 0)), certs_npages=int(s.get("certs_npages", 0)),
            certs_truncated=bool(s.get("certs_truncated", 0)))

    # -- summary ---------------------------------------------------------------------------------

    def summary(self) -> str:
        """One line per step: what each attempt got, for failure messages and reports."""
        lines = [f"{self.platform}/{self.abi}/{self.product} status={self.status}"
                 + (f" error={self.error}" if self.error else "")]
        try:
            for s in self.all_steps():
                atts = "; ".join(
                    f"{'EXT' if a.is_ext else 'REQ'} seq={a.seqno} rbx={a.rbx_in}->{a.rbx_out} "
                    f"e1={a.sw_exitinfo1:#x} e2={a.sw_exitinfo2:#x}{' resent' if a.resent else ''}"
                    for a in s.attempts)
                lines.append(f"  {s.where}: {s.outcome_name} dec={s.decrypt_name} [{atts}]")
        except TranscriptError as e:
            lines.append(f"  (results unreadable: {e})")
        return "\n".join(lines)


__all__ = ["Transcript", "TranscriptError", "StepResult", "Attempt", "as_bytes", "jsonable",
           "trim_results", "GUEST_REQUEST", "EXT_GUEST_REQUEST", "SCHEMA", "STATUSES"]
