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

import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from snplab.remote import artifact
from snplab.remote.artifact import Artifact, Shipment
from snplab.remote.emu_keys import EmulatedKeyMirror
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
    """Runs scenarios as guest jobs on remote hosts (``--platform ssh``).

    Same interface as ``snplab.platform.Platform``: run, run_many, cert_blob, trust, close,
    host_abi, host_product.
    """

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
        certs_blob: Path | str | None = None,
        trust_dir: Path | None = None,
        abi: str | None = None,
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
        self.trust_dir = trust_dir
        self.abi = abi
        package = artifact.snplab_package()
        pl = artifact.payload(payload) if payload is not None else None
        self.hosts = [RemoteHost(h, options, remote_platform, package, pl, abi) for h in hosts]
        self.host_errors: dict[str, RemoteError] = {}
        self._lock = threading.Lock()
        # emulated: one key hierarchy for controller and hosts; a local blob file is shipped.
        # snp: the blob is a file on each host (inventory certs_blob, else --certs-blob).
        self._keys: EmulatedKeyMirror | None = None
        self._blob: Shipment | None = None
        self._remote_blob_path = str(certs_blob) if certs_blob is not None else None
        if remote_platform == "emulated":
            opts = {k: v for k, v in (("certs_blob", certs_blob), ("trust_dir", trust_dir)) if v is not None}
            self._keys = EmulatedKeyMirror(**opts)
            if certs_blob is not None:
                self._blob = Shipment.file(Artifact.of(Path(certs_blob).read_bytes()), "blobs", ".bin")

    @property
    def host_abi(self) -> str | None:
        """snp: the ABI profile the (first usable) host's kernel plays; emulated: None (any)."""
        if self.remote_platform != "snp":
            return None
        return self.abi or (self._usable()[0].facts or {}).get("host_abi")

    @property
    def host_product(self) -> str | None:
        """snp: the (first usable) host's CPU product; emulated: None (any)."""
        if self.remote_platform != "snp":
            return None
        host = self._usable()[0]
        return host.entry.product or (host.facts or {}).get("host_product")
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
                self._drop(h, e)
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

    def _drop(self, host: RemoteHost, e: RemoteError) -> None:
        with self._lock:
            self.host_errors.setdefault(host.name, e)
        log.error("dropping host %s for this run: %s", host.name, e)

    def _job_files(self, host: RemoteHost, scenario: Scenario) -> tuple[Shipment | None, list[Shipment], str | None]:
        """(key tree, other shipments, certificate blob path) a guest of this scenario needs on host."""
        if self._keys is not None:
            keys = self._keys.shipment_for(scenario.product, scenario.signer)
            if self._blob is not None:
                return keys, [self._blob], self._blob.remote
            return keys, [], None
        return None, [], host.entry.certs_blob or self._remote_blob_path

    # -- running -------------------------------------------------------------------------------

    def run(self, scenario: Scenario) -> Transcript:
        """Run one guest on a lab host and return its transcript (host facts filled in)."""
        doc = scenario.to_json()
        timeout = scenario.guest_timeout + self.job_overhead_s
        deadline = time.monotonic() + self.lease_timeout
        wait = 0.0
        while True:
            for host in self._usable():
                t0 = time.monotonic()
                keys, ship, blob = self._job_files(host, scenario)
                try:
                    outcome = host.run_guest(doc, timeout=timeout, slot_wait=wait, owner=self.owner,
                                             label=f"guest job {scenario.name!r}", keys=keys, ship=ship,
                                             certs_blob=blob)
                except (HostKeyUnknown, HostKeyChanged, AuthFailed, HostUnreachable) as e:
                    self._drop(host, e)  # e.g. the host went down since preflight: try the others
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

    def run_many(self, scenarios: Sequence[Scenario]) -> list[Transcript]:
        """Run several guests at the same time, in parallel (each on its own job server and slot)."""
        if len(scenarios) <= 1:
            return [self.run(s) for s in scenarios]
        with ThreadPoolExecutor(max_workers=len(scenarios), thread_name_prefix="snplab-ssh") as ex:
            return list(ex.map(self.run, scenarios))

    def _transcript(self, host: RemoteHost, doc: dict[str, Any], elapsed: float) -> Transcript:
        h = dict(doc.get("host") or {})
        h.update(
            transport="ssh",
            inventory_name=host.name,
            address=host.entry.endpoint.address,
            labels=dict(host.entry.labels),
            inventory_product=host.entry.product,
            capacity=host.capacity,
        )
        doc["host"] = h
        timings = dict(doc.get("timings") or {})
        timings["ssh_total_s"] = round(elapsed, 6)
        doc["timings"] = timings
        return Transcript.from_json(doc)

    # -- what the suite's fixtures ask -----------------------------------------------------------

    def cert_blob(self, product: str, signer: str) -> bytes:
        """The certificate blob guests get: the controller's emulated one (which the hosts use),
        or on snp the host's blob file (read from the first usable host)."""
        if self._keys is not None:
            return self._keys.cert_blob(product, signer)
        host = self._usable()[0]
        path = host.entry.certs_blob or self._remote_blob_path
        if path is None:
            raise RemoteJobFailed(f"{host.transport.where}: no certs_blob for this host (inventory "
                                  f"certs_blob or --certs-blob, a path on the host)")
        return host.read_file(path)

    def trust(self, product: str) -> Any:
        """Trust anchors: the emulated roots the hosts sign with, or --trust-dir (AMD roots)."""
        if self._keys is not None:
            return self._keys.trust(product)
        from snplab.attest.trust import TrustStore

        if self.trust_dir is None:
            return TrustStore.empty(pinned=True)
        return TrustStore.from_dir(self.trust_dir)

    def probe(self) -> dict[str, dict[str, Any]]:
        """Preflight facts of every usable host (connects and ships artifacts as needed)."""
        return {h.name: dict(h.facts or {}, capacity=h.capacity) for h in self._usable()}

    def close(self) -> None:
        for h in self.hosts:
            h.close()
        if self._keys is not None:
            self._keys.close()

    def __enter__(self) -> SshPlatform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
