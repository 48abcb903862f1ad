"""VMM exit events (docs/contract.md §3): frozen dataclasses, JSON-serialisable.

The run loop turns each `kvm_run` exit into one of these and dispatches it to the handler
registered for its type; the emulated platform raises the SNP ones (`ReqCerts`, `MapGpaRange`,
`SevTerm`, ...) itself through `vcpu.dispatch(event)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar


def to_jsonable(value: Any) -> Any:
    """bytes → hex, tuples → lists, dataclasses → dicts; everything else unchanged."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_json = getattr(value, "to_json", None)
        if to_json is not None:
            return to_json()
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


@dataclass(frozen=True)
class Event:
    """Base of every exit event; `kind` is the class name."""

    terminal: ClassVar[bool] = False  # the vCPU always stops after this event

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            d[f.name] = to_jsonable(getattr(self, f.name))
        return d


EventType = type[Event]


@dataclass(frozen=True)
class Io(Event):
    port: int
    size: int
    direction: str  # "in" / "out"
    count: int
    data: bytes  # OUT: the bytes written; IN: empty


@dataclass(frozen=True)
class Hlt(Event):
    terminal: ClassVar[bool] = True


@dataclass(frozen=True)
class Shutdown(Event):
    """Triple fault (or other shutdown): the vCPU cannot continue."""

    terminal: ClassVar[bool] = True


@dataclass(frozen=True)
class InternalError(Event):
    terminal: ClassVar[bool] = True
    suberror: int
    data: tuple[int, ...]


@dataclass(frozen=True)
class FailEntry(Event):
    terminal: ClassVar[bool] = True
    reason: int
    cpu: int


@dataclass(frozen=True)
class MsrRead(Event):
    index: int


@dataclass(frozen=True)
class MsrWrite(Event):
    index: int
    value: int


@dataclass(frozen=True)
class Doorbell(Event):
    """Port I/O on a registered doorbell port (emulated platform). `direction` is "out" (value =
    what the guest wrote) or "in" (value 0; the answer is the int the guest reads)."""

    port: int
    value: int
    direction: str = "out"
    size: int = 4


@dataclass(frozen=True)
class SystemEvent(Event):
    type: int
    data: tuple[int, ...]


@dataclass(frozen=True)
class ReqCerts(Event):
    """KVM_EXIT_SNP_REQ_CERTS (Linux 7.0+): the guest's certificate buffer GPA and page count."""

    gpa: int
    npages: int


@dataclass(frozen=True)
class VmgexitReqCerts(Event):
    """KVM_EXIT_VMGEXIT type REQ_CERTS of the v15 draft."""

    exit_type: int
    data_gpa: int
    data_npages: int
    flags: int


@dataclass(frozen=True)
class MapGpaRange(Event):
    """KVM_HC_MAP_GPA_RANGE (page-state change): attrs bit 4 = to private (encrypted)."""

    gpa: int
    npages: int
    attrs: int


@dataclass(frozen=True)
class MemoryFault(Event):
    flags: int
    gpa: int
    size: int


@dataclass(frozen=True)
class SevTerm(Event):
    """GHCB termination request; `raw` = the GHCB MSR value (MSR protocol) or the GHCB GPA."""

    terminal: ClassVar[bool] = True
    reason_set: int
    reason_code: int
    raw: int


@dataclass(frozen=True)
class CertsAnswer:
    """The VMM's answer to a certificate exit: `ret` as the ABI defines it (7.0: 0, ENOSPC,
    EAGAIN, EIO or anything; v15: 0, 1, 2, 1<<31) and the page count to report."""

    ret: int
    npages: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"ret": self.ret, "npages": self.npages}


class KvmRunError(Exception):
    """Raised by a handler when real KVM_RUN would fail with `errno` (e.g. EINVAL for an invalid
    REQ_CERTS `ret`); the run loop ends the vCPU with status "kvm-run-error"."""

    def __init__(self, errno_: int, reason: str = "") -> None:
        import os

        self.errno = errno_
        self.reason = reason
        super().__init__(f"KVM_RUN: {os.strerror(errno_)} (errno {errno_})"
                         + (f": {reason}" if reason else ""))


ALL_EVENTS: tuple[EventType, ...] = (Io, Hlt, Shutdown, InternalError, FailEntry, MsrRead,
                                     MsrWrite, Doorbell, SystemEvent, ReqCerts, VmgexitReqCerts,
                                     MapGpaRange, MemoryFault, SevTerm)
