"""One lab host as the controller sees it: cached artifacts, preflight facts, guest jobs.

Lifecycle: ``prepare()`` (once per connection) makes sure the snplab package, the payload and any
other shipped file are in the host's cache (one round trip to check, uploads only for what is
missing), then probes the host (kernel, memory, free SNP ASIDs) to fix its capacity;
``run_job()`` then starts ``python3 -m snplab.vmm.job`` for one guest, which takes a slot lock on
the host, and returns its transcript document.
"""

from __future__ import annotations

import json
import logging
import secrets
import shlex
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from snplab.remote import artifact
from snplab.remote.artifact import Artifact
from snplab.remote.errors import RemoteJobFailed
from snplab.remote.inventory import HostEntry
from snplab.remote.transport import CommandResult, SshOptions, SshTransport, last_line

log = logging.getLogger(__name__)

EXIT_MISSING = 3  # prepare: an artifact is not in the host's cache yet
EXIT_NO_SLOT = 75  # mirrors snplab.vmm.job
WORKDIR_MARK = "__snplab_workdir="


@dataclass(frozen=True)
class Shipment:
    """An artifact and where it lives under the host's workdir: a file, or a zip unpacked into a
    directory (``unpack``), complete once ``<dir>/.complete`` exists."""

    artifact: Artifact
    remote: str  # relative to the workdir
    unpack: bool = False

    @property
    def marker(self) -> str:
        return f"{self.remote}/.complete" if self.unpack else self.remote

    @classmethod
    def package(cls, a: Artifact) -> Shipment:
        return cls(a, f"pkg/{a.digest}", unpack=True)

    @classmethod
    def file(cls, a: Artifact, kind: str, suffix: str) -> Shipment:
        return cls(a, f"{kind}/{a.digest}{suffix}")

    @classmethod
    def tree(cls, a: Artifact, kind: str) -> Shipment:
        return cls(a, f"{kind}/{a.digest}", unpack=True)


@dataclass(frozen=True)
class JobOutcome:
    """A finished job: the transcript document, or ``busy`` if the host had no free slot."""

    busy: bool
    doc: dict[str, Any] | None
    result: CommandResult


class RemoteHost:
    """A lab host from the inventory, reached over one SSH connection."""

    def __init__(self, entry: HostEntry, options: SshOptions, remote_platform: str,
                 package: Artifact, payload: Artifact | None, job_args: Sequence[str] = ()) -> None:
        self.entry = entry
        self.options = options
        self.remote_platform = remote_platform
        self.package = Shipment.package(package)
        self.payload = Shipment.file(payload, "payload", ".elf") if payload is not None else None
        self.job_args = tuple(job_args)  # extra job options, e.g. ("--abi", "req-certs")
        self.transport = SshTransport(entry.endpoint, options, jump=entry.jump)
        self.facts: dict[str, Any] | None = None
        self.capacity = 0
        self.workdir = ""
        self._shipped: set[str] = set()  # markers known present on the host
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.entry.name

    def _python(self, args: str, env: str = "") -> str:
        return (f"{env}PYTHONPATH={self.package.remote} exec {shlex.quote(self.entry.python)} "
                f"-m snplab.vmm.job --platform {self.remote_platform} {args}")

    def _shipments(self, extra: Sequence[Shipment] = ()) -> list[Shipment]:
        return [self.package] + ([self.payload] if self.payload else []) + list(extra)

    def prepare(self, extra: Sequence[Shipment] = ()) -> None:
        """Ship what is missing, probe the host, fix capacity (idempotent, thread-safe)."""
        with self._lock:
            if self.facts is not None:
                return
            q = shlex.quote
            ships = self._shipments(extra)
            check = " && ".join(f"test -f {q(s.marker)}" for s in ships)
            cmd = (f"mkdir -p {q(self.entry.workdir)} && cd {q(self.entry.workdir)} && "
                   f"mkdir -p pkg payload slots && echo {WORKDIR_MARK}$(pwd) && "
                   f"if {check}; then {self._python('--probe')}; else exit {EXIT_MISSING}; fi")
            res = self.transport.run(cmd, timeout=self.options.connect_timeout * 3, label="preflight")
            if res.exit_status == EXIT_MISSING:
                self.workdir = self._workdir_from(res)
                self._ship_missing(ships)
                res = self.transport.run(cmd, timeout=self.options.connect_timeout * 3, label="preflight")
            if res.exit_status != 0:
                raise RemoteJobFailed(
                    f"{self.transport.where}: preflight failed (exit {res.exit_status}): {last_line(res.stderr)}")
            self.workdir = self._workdir_from(res)
            try:
                facts = json.loads(res.stdout.decode(errors="replace").splitlines()[-1])
            except (ValueError, IndexError) as e:
                raise RemoteJobFailed(
                    f"{self.transport.where}: preflight printed no facts: {last_line(res.stdout)}") from e
            derived = int(facts.get("capacity") or 0)
            self.capacity = min(derived, self.entry.capacity) if self.entry.capacity else derived
            if self.remote_platform == "emulated" and not facts.get("kvm"):
                raise RemoteJobFailed(f"{self.transport.where}: /dev/kvm is not usable on the host")
            if self.capacity < 1:
                raise RemoteJobFailed(
                    f"{self.transport.where}: no capacity (free SNP ASIDs {facts.get('free_snp_asids')}, "
                    f"MemAvailable {facts.get('mem_available')})")
            self._shipped.update(s.marker for s in ships)
            self.facts = facts
            log.info("%s: %s kernel %s, capacity %d", self.transport.where, facts.get("hostname"),
                     facts.get("kernel"), self.capacity)

    def ensure(self, shipments: Sequence[Shipment]) -> None:
        """Make sure these shipments are on the host (after prepare); no round trip if known."""
        todo = [s for s in shipments if s.marker not in self._shipped]
        if not todo:
            return
        with self._lock:
            todo = [s for s in todo if s.marker not in self._shipped]
            if todo:
                self._ship_missing(todo)
                self._shipped.update(s.marker for s in todo)

    def _ship_missing(self, ships: Sequence[Shipment]) -> None:
        q = shlex.quote
        wd = self.workdir
        probe = "; ".join(f"test -f {q(s.marker)} && echo {i}" for i, s in enumerate(ships))
        have = self.transport.run(f"cd {q(wd)} && {{ {probe}; true; }}", label="cache check")
        present = {int(x) for x in have.stdout.split() if x.isdigit()}
        for i, s in enumerate(ships):
            if i in present:
                continue
            target = f"{wd}/{s.remote}"
            if not s.unpack:
                self.transport.put(s.artifact.data, target)
            else:
                zpath = f"{target}.{secrets.token_hex(4)}.zip"
                self.transport.put(s.artifact.data, zpath)
                res = self.transport.run(
                    f"{q(self.entry.python)} -c {q(artifact.UNPACK_SCRIPT)} {q(zpath)} {q(target)}",
                    label=f"unpack {s.remote}")
                if res.exit_status != 0:
                    raise RemoteJobFailed(f"{self.transport.where}: unpacking {s.remote} failed: "
                                          f"{last_line(res.stderr)}")
            log.info("%s: shipped %s (%d bytes)", self.transport.where, s.remote, len(s.artifact.data))

    @staticmethod
    def _workdir_from(res: CommandResult) -> str:
        for ln in res.stdout.decode(errors="replace").splitlines():
            if ln.startswith(WORKDIR_MARK):
                return ln[len(WORKDIR_MARK):]
        raise RemoteJobFailed("preflight did not report the work directory")

    def job_command(self, slot_wait: float, max_seconds: float, owner: str,
                    keys: Shipment | None = None, job_args: Sequence[str] = ()) -> str:
        q = shlex.quote
        # absolute paths, so `ps` on the host shows whose job it is
        args = ["--slots-dir", f"{self.workdir}/slots", "--capacity", str(self.capacity),
                "--slot-wait", f"{slot_wait:g}", "--max-seconds", f"{max_seconds:g}", "--owner", owner,
                *self.job_args, *job_args]
        if self.payload is not None:
            args += ["--payload", f"{self.workdir}/{self.payload.remote}"]
        env = f"SNPLAB_CACHE={q(self.workdir + '/' + keys.remote)} " if keys is not None else ""
        return f"cd {q(self.workdir)} && {self._python(' '.join(q(a) for a in args), env)}"

    def run_job(self, scenario_line: bytes, timeout: float, slot_wait: float, owner: str,
                label: str = "guest job", keys: Shipment | None = None,
                ship: Sequence[Shipment] = (), job_args: Sequence[str] = ()) -> JobOutcome:
        """Run one guest job; the job lives exactly as long as this call (stdin kept open).

        ``keys``: an unpacked tree used as the job's ``$SNPLAB_CACHE`` (emulated keys);
        ``ship``: other files the job needs (shipped first if not cached)."""
        self.prepare()
        self.ensure(([keys] if keys else []) + list(ship))
        # The host's watchdog outlives our deadline a little: we kill first, it catches the case
        # where we cannot (connection gone without the host noticing).
        cmd = self.job_command(slot_wait, timeout + slot_wait + 30.0, owner, keys, job_args)
        res = self.transport.run(cmd, stdin=scenario_line + b"\n", timeout=timeout + slot_wait,
                                 keep_stdin_open=True, label=label)
        if res.exit_status == EXIT_NO_SLOT:
            return JobOutcome(True, None, res)
        if res.exit_status != 0:
            raise RemoteJobFailed(
                f"{self.transport.where}: {label} exited {res.exit_status}: {last_line(res.stderr)}")
        try:
            doc = json.loads(res.stdout)
        except ValueError as e:
            raise RemoteJobFailed(f"{self.transport.where}: {label} printed no transcript: {e}") from e
        return JobOutcome(False, doc, res)

    def read_file(self, path: str) -> bytes:
        """Contents of a file on the host (e.g. its certificate blob)."""
        res = self.transport.run(f"cat {shlex.quote(path)}", label=f"read {path}")
        if res.exit_status != 0:
            raise RemoteJobFailed(f"{self.transport.where}: cannot read {path}: {last_line(res.stderr)}")
        return res.stdout

    def close(self) -> None:
        self.transport.close()
