"""One lab host as the controller sees it: cached artifacts, preflight facts, job servers.

Lifecycle: ``prepare()`` (once per connection) starts the first job server
(``snplab.remote.job_server``): its start-up ships whatever of the snplab package, the payload and
the other files the host's cache lacks, and its ``hello`` carries the host's facts (kernel,
memory, free SNP ASIDs), which fix the capacity. ``run_guest()`` then sends one scenario to an
idle job server of this host (starting another only when all are busy, e.g. ``run_many``); the
server takes a slot lock on the host for the guest and answers with its transcript.
"""

from __future__ import annotations

import logging
import shlex
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from snplab.remote.artifact import Artifact, Shipment
from snplab.remote.errors import RemoteError, RemoteJobFailed
from snplab.remote.inventory import HostEntry
from snplab.remote.job_client import JobServerConn
from snplab.remote.transport import SshOptions, SshTransport, last_line

log = logging.getLogger(__name__)

SHIP_TIMEOUT_S = 120.0  # one shipment over an established server (the keys tree: a few KB)


@dataclass(frozen=True)
class JobOutcome:
    """A finished guest: the transcript document, or ``busy`` if the host had no free slot."""

    busy: bool
    doc: dict[str, Any] | None


class RemoteHost:
    """A lab host from the inventory, reached over one SSH connection, with a pool of job
    servers (one per concurrent guest of this controller process; normally one)."""

    def __init__(self, entry: HostEntry, options: SshOptions, remote_platform: str,
                 package: Artifact, payload: Artifact | None, abi: str | None = None) -> None:
        self.entry = entry
        self.options = options
        self.remote_platform = remote_platform
        self.package = Shipment.package(package)
        self.payload = Shipment.file(payload, "payload", ".elf") if payload is not None else None
        self.abi = abi  # forced host ABI profile (snp), None: detect
        self.transport = SshTransport(entry.endpoint, options, jump=entry.jump)
        self.facts: dict[str, Any] | None = None
        self.capacity = 0
        self.workdir = ""
        self._shipped: set[str] = set()  # markers known present on the host
        self._idle: list[JobServerConn] = []
        self._lock = threading.Lock()
        self._pool_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def start_timeout(self) -> float:
        """Starting a server: connect, ship (a few hundred KB), start Python, import."""
        return self.options.connect_timeout * 3 + SHIP_TIMEOUT_S

    def _start_server(self, extra: Sequence[Shipment] = ()) -> JobServerConn:
        ships = [self.package] + ([self.payload] if self.payload else []) + list(extra)
        conn = JobServerConn.start(self.transport, self.entry.workdir, self.entry.python, ships,
                                   self.package, ["--platform", self.remote_platform], self.start_timeout)
        self.workdir = conn.workdir
        self._shipped.update(s.marker for s in ships)
        return conn

    def prepare(self, extra: Sequence[Shipment] = ()) -> None:
        """Start the first job server (shipping what is missing), fix capacity (idempotent,
        thread-safe)."""
        with self._lock:
            if self.facts is not None:
                return
            conn = self._start_server(extra)
            facts = dict(conn.hello.get("facts") or {})
            derived = int(facts.get("capacity") or 0)
            self.capacity = min(derived, self.entry.capacity) if self.entry.capacity else derived
            if self.remote_platform == "emulated" and not facts.get("kvm"):
                conn.close()
                raise RemoteJobFailed(f"{self.transport.where}: /dev/kvm is not usable on the host")
            if self.capacity < 1:
                conn.close()
                raise RemoteJobFailed(
                    f"{self.transport.where}: no capacity (free SNP ASIDs {facts.get('free_snp_asids')}, "
                    f"MemAvailable {facts.get('mem_available')})")
            self.facts = facts
            self._checkin(conn)
            log.info("%s: %s kernel %s, capacity %d, job server %s", self.transport.where,
                     facts.get("hostname"), facts.get("kernel"), self.capacity, conn.pid)

    def _checkout(self) -> JobServerConn:
        """An idle live job server of this host, or a new one."""
        with self._pool_lock:
            while self._idle:
                conn = self._idle.pop()
                if conn.alive:
                    return conn
                conn.close(wait=False)
        return self._start_server()

    def _checkin(self, conn: JobServerConn) -> None:
        with self._pool_lock:
            self._idle.append(conn)

    def run_guest(self, scenario: dict[str, Any], timeout: float, slot_wait: float, owner: str,
                  label: str = "guest job", keys: Shipment | None = None,
                  ship: Sequence[Shipment] = (), certs_blob: str | None = None) -> JobOutcome:
        """Run one guest on a job server of this host.

        ``keys``: an unpacked tree used as the guest's ``$SNPLAB_CACHE`` (emulated keys);
        ``ship``: other files the guest needs (shipped first if not known to be there);
        ``certs_blob``: the blob file the VMM serves (relative to the workdir, or absolute)."""
        self.prepare()
        conn = self._checkout()
        ok = False
        try:
            for s in ([keys] if keys else []) + list(ship):
                if s.marker not in self._shipped:
                    conn.ship(s, SHIP_TIMEOUT_S)
                    self._shipped.add(s.marker)
            req = {"type": "run", "id": label, "scenario": scenario, "slot_wait": slot_wait,
                   "capacity": self.capacity, "owner": owner,
                   # the server's own deadline outlives ours a little: we kill first, it catches
                   # the case where we cannot (connection gone without the host noticing)
                   "deadline_s": timeout + slot_wait + 30.0,
                   "payload": self.payload.remote if self.payload else None,
                   "keys": keys.remote if keys else None, "certs_blob": certs_blob, "abi": self.abi}
            ans = conn.request(req, "result", timeout + slot_wait, label)
            ok = True
        finally:
            if ok:
                self._checkin(conn)
            else:
                conn.close(wait=False)
        outcome = ans.get("outcome")
        if outcome == "busy":
            return JobOutcome(True, None)
        if outcome != "ok" or not isinstance(ans.get("transcript"), dict):
            raise RemoteJobFailed(f"{self.transport.where}: {label} failed: {ans.get('error') or outcome}")
        return JobOutcome(False, ans["transcript"])

    def read_file(self, path: str) -> bytes:
        """Contents of a file on the host (e.g. its certificate blob)."""
        res = self.transport.run(f"cat {shlex.quote(path)}", label=f"read {path}")
        if res.exit_status != 0:
            raise RemoteJobFailed(f"{self.transport.where}: cannot read {path}: {last_line(res.stderr)}")
        return res.stdout

    def close(self) -> None:
        """End every job server (EOF on its stdin, waiting briefly for each), then disconnect."""
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            try:
                conn.close()
            except RemoteError as e:
                log.warning("%s: closing job server: %s", self.transport.where, e)
        self.transport.close()
