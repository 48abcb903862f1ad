"""Event handler registry and the event log of one guest run (docs/contract.md §3)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from snplab.vmm.events import Event, EventType, to_jsonable

Handler = Callable[[Any, Any], Any]          # fn(vcpu, event) -> answer
CompletionHook = Callable[[Any], None]       # fn(vcpu)


class UnhandledExit(Exception):
    """No handler is registered for a non-terminal event."""

    def __init__(self, event: Event) -> None:
        self.event = event
        fields = ", ".join(f"{k}={_fmt(v)}" for k, v in event.to_json().items() if k != "kind")
        super().__init__(f"no handler for {event.kind}({fields})")


def _fmt(v: Any) -> str:
    return hex(v) if isinstance(v, int) and not isinstance(v, bool) else repr(v)


class HandlerRegistry:
    """{event type: handler}, plus hooks run by `vcpu.request_complete()`."""

    def __init__(self) -> None:
        self._handlers: dict[EventType, Handler] = {}
        self._completion: list[CompletionHook] = []

    def register(self, event_type: EventType, fn: Handler) -> None:
        """Handle `event_type` with `fn(vcpu, event) -> answer` (replaces an earlier handler)."""
        if not (isinstance(event_type, type) and issubclass(event_type, Event)):
            raise TypeError(f"{event_type!r} is not an Event type")
        self._handlers[event_type] = fn

    def unregister(self, event_type: EventType) -> None:
        self._handlers.pop(event_type, None)

    def get(self, event_type: EventType) -> Handler | None:
        return self._handlers.get(event_type)

    def __contains__(self, event_type: object) -> bool:
        return event_type in self._handlers

    def on_request_complete(self, fn: CompletionHook) -> None:
        """Run `fn(vcpu)` when a guest request that caused a certificate exit has completed."""
        self._completion.append(fn)

    @property
    def completion_hooks(self) -> tuple[CompletionHook, ...]:
        return tuple(self._completion)


class EventRecord:
    """One dispatched event, its answer and (for nested events) the event it came from."""

    __slots__ = ("t", "vcpu", "event", "answer", "parent", "error")

    def __init__(self, t: float, vcpu: int, event: Event, parent: EventRecord | None) -> None:
        self.t = t
        self.vcpu = vcpu
        self.event = event
        self.answer: Any = None
        self.parent = parent
        self.error: str | None = None

    def to_json(self, index: dict[int, int] | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"t": round(self.t, 6), "vcpu": self.vcpu}
        d.update(self.event.to_json())
        d["answer"] = to_jsonable(self.answer)
        if self.parent is not None and index is not None:
            d["parent"] = index.get(id(self.parent))
        if self.error is not None:
            d["error"] = self.error
        return d


class EventLog:
    """Append-only, thread-safe list of EventRecords."""

    def __init__(self) -> None:
        self.records: list[EventRecord] = []
        self._lock = threading.Lock()

    def append(self, rec: EventRecord) -> None:
        with self._lock:
            self.records.append(rec)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self.records))

    def of_kind(self, *types: EventType) -> list[EventRecord]:
        return [r for r in self.records if isinstance(r.event, types)]

    def to_json(self) -> list[dict[str, Any]]:
        recs = list(self.records)
        index = {id(r): i for i, r in enumerate(recs)}
        return [r.to_json(index) for r in recs]
