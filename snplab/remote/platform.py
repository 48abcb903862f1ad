"""``--platform ssh``: run every guest of the suite on lab hosts from the inventory.

``SshPlatform.run(scenario) -> Transcript`` is the same call as the local platforms', so the suite
runs unchanged. Each call leases a guest slot on one of the selected hosts (the slot is a lock
taken by the job on the host: ``snplab.remote.host_slots``), so no host ever runs more guests
than its capacity, whatever the number of xdist workers or controllers. A worker tries its
preferred host first (workers are spread over the hosts' slots), then the others; when every slot
is taken it waits, up to the lease timeout.

A host that cannot be reached or authenticated is dropped for the rest of the run with its error
logged; when no selected host is left, ``run`` raises that error (the test is reported as an
error, see ``snplab.remote.pytest_remote``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from snplab.remote import artifact
from snplab.remote.errors import (
    AuthFailed,
    HostKeyChanged,
    HostKeyUnknown,
    HostUnreachable,
    LeaseTimeout,
    RemoteError,
    RemoteJobFailed,
)
from snplab.remote.host import RemoteHost
from snplab.remote.inventory import HostEntry
from snplab.remote.transport import SshOptions
from snplab.scenario import Scenario
from snplab.transcript import Transcript

log = logging.getLogger(__name__)

REMOTE_PLATFORMS = ("emulated", "snp")
# Errors that make a host unusable for the rest of the run (others fail one job only).
_HOST_FATAL = (HostKeyUnknown, HostKeyChanged, AuthFailed, HostUnreachable, RemoteJobFailed)


def xdist_worker_index() -> int:
    """0 for ``gw0`` (or no xdist), 1 for ``gw1``, ... ."""
    wid = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = "".join(c for c in wid if c.isdigit())
    return int(digits) if digits else 0


class SshPlatform:
    """Runs scenarios as guest jobs on remote hosts (``--platform ssh``)."""

    name = "ssh"

    def __init__(
        self,
        hosts: Sequence[HostEntry],
        remote_platform: str = "emulated",
        payload: Path | None = None,
        options: SshOptions = SshOptions(),
        worker_index: int = 0,
        lease_timeout: float = 600.0,
        job_overhead_s: float = 60.0,
        owner: str = "",
    ) -> None:
        if remote_platform not in REMOTE_PLATFORMS:
            raise ValueError(f"remote platform {remote_platform!r} not in {REMOTE_PLATFORMS}")
        if not hosts:
            raise ValueError("SshPlatform needs at least one host")
        self.remote_platform = remote_platform
        self.options = options
        self.worker_index = worker_index
        self.lease_timeout = lease_timeout
        self.job_overhead_s = job_overhead_s
        self.owner = owner or f"{os.uname().nodename}:{os.getpid()}:gw{worker_index}"
        package = artifact.snplab_package()
        pl = artifact.payload(payload) if payload is not None else None
        self.hosts = [RemoteHost(h, options, remote_platform, package, pl) for h in hosts]
        self.host_errors: dict[str, RemoteError] = {}
        self._lock = threading.Lock()

    # -- host choice -------------------------------------------------------------------------

    def _usable(self) -> list[RemoteHost]:
        """Prepared hosts in this worker's order of preference; drops hosts that fail."""
        ready = []
        for h in self.hosts:
            if h.name in self.host_errors:
                continue
            try:
                h.prepare()
            except _HOST_FATAL as e:
                with self._lock:
                    self.host_errors[h.name] = e
                log.error("dropping host %s for this run: %s", h.name, e)
                continue
            ready.append(h)
        if not ready:
            first = next(iter(self.host_errors.values()))
            if len(self.hosts) == 1:
                raise first
            raise type(first)(f"no usable host left ({len(self.hosts)} selected); first error: {first}")
        # Spread workers over slots: slot k of the flattened (host, capacity) list is worker k's.
        slots = [h for h in ready for _ in range(h.capacity)]
        preferred = slots[self.worker_index % len(slots)]
        i = ready.index(preferred)
        return ready[i:] + ready[:i]

    # -- running -------------------------------------------------------------------------------

    def run(self, scenario: Scenario) -> Transcript:
        """Run one guest on a lab host and return its transcript (host facts filled in)."""
        line = json.dumps(scenario.to_json(), separators=(",", ":")).encode()
        timeout = scenario.guest_timeout + self.job_overhead_s
        deadline = time.monotonic() + self.lease_timeout
        wait = 0.0
        while True:
            for host in self._usable():
                t0 = time.monotonic()
                try:
                    outcome = host.run_job(line, timeout=timeout, slot_wait=wait, owner=self.owner,
                                           label=f"guest job {scenario.name!r}")
                except _HOST_FATAL as e:
                    if isinstance(e, RemoteJobFailed):
                        raise  # the job itself failed: that is this test's problem, not the host's
                    with self._lock:
                        self.host_errors[host.name] = e
                    log.error("dropping host %s for this run: %s", host.name, e)
                    continue
                if outcome.busy:
                    continue
                assert outcome.doc is not None
                return self._transcript(host, outcome.doc, time.monotonic() - t0)
            if time.monotonic() >= deadline:
                raise LeaseTimeout(
                    f"no free guest slot on {', '.join(h.name for h in self.hosts)} within "
                    f"{self.lease_timeout:g} s")
            wait = min(1.0, max(0.05, wait * 2))

    def _transcript(self, host: RemoteHost, doc: dict, elapsed: float) -> Transcript:
        h = dict(doc.get("host") or {})
        h.update(
            transport="ssh",
            inventory_name=host.name,
            address=host.entry.endpoint.address,
            labels=dict(host.entry.labels),
            product=host.entry.product,
            capacity=host.capacity,
        )
        doc["host"] = h
        timings = dict(doc.get("timings") or {})
        timings["ssh_total_s"] = elapsed
        doc["timings"] = timings
        return Transcript.from_json(doc)

    def probe(self) -> dict[str, dict]:
        """Preflight facts of every usable host (connects and ships artifacts as needed)."""
        return {h.name: dict(h.facts or {}, capacity=h.capacity) for h in self._usable()}

    def close(self) -> None:
        for h in self.hosts:
            h.close()

    def __enter__(self) -> SshPlatform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
