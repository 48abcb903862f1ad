"""The statuses a vCPU (and so a run) ends with: plain strings, shared by the run loop
(``vcpu.py``), the exit decoders (``exits.py``) and the guest (``guest.py``). A leaf module: it
imports nothing, so none of those three has to import another for a constant."""

from __future__ import annotations

HALTED = "halted"
TERMINATED = "terminated"
STOPPED = "stopped"            # stopped because another vCPU failed or the caller asked
TIMEOUT = "timeout"
KVM_RUN_ERROR = "kvm-run-error"
UNHANDLED_EXIT = "unhandled-exit"
ERROR = "error"                # a handler raised a Python exception
SHUTDOWN = "shutdown"          # triple fault
INTERNAL_ERROR = "internal-error"
FAIL_ENTRY = "fail-entry"
SYSTEM_EVENT = "system-event"
RUNNING = "running"
NOT_STARTED = "not-started"

OK_STATUSES = frozenset({HALTED, TERMINATED, STOPPED})
CRASH_STATUSES = frozenset({SHUTDOWN, INTERNAL_ERROR, FAIL_ENTRY, SYSTEM_EVENT})
