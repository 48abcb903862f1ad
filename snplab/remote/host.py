"""One lab host as the controller sees it: cached artifacts, preflight facts, guest jobs.

Lifecycle: ``prepare()`` (once per connection) makes sure the snplab package and the payload are
in the host's cache (uploading only what is missing), then probes the host (kernel, memory, free
SNP ASIDs) to fix its capacity; ``run_job()`` then starts ``python3 -m snplab.vmm.job`` for one
guest, which takes a slot lock on the host, and returns its transcript document.
"""

from __future__ import annotations

import json
import logging
import secrets
import shlex
import threading
from dataclasses import dataclass
from typing import Any

from snplab.remote import artifact
from snplab.remote.artifact import Artifact
from snplab.remote.errors import RemoteJobFailed
from snplab.remote.inventory import HostEntry
from snplab.remote.transport import CommandResult, SshOptions, SshTransport, last_line

log = logging.getLogger(__name__)

EXIT_MISSING = 3  # prepare: an artifact is not in the host's cache yet
EXIT_BAD_INPUT = 2  # these three mirror snplab.vmm.job
EXIT_NO_SLOT = 75
EXIT_WATCHDOG = 124
WORKDIR_MARK = "__snplab_workdir="


@dataclass(frozen=True)
class JobOutcome:
    """A finished job: the transcript document, or ``busy`` if the host had no free slot."""

    busy: bool
    doc: dict[str, Any] | None
    result: CommandResult


class RemoteHost:
    """A lab host from the inventory, reached over one SSH connection."""

    def __init__(self, entry: HostEntry, options: SshOptions, remote_platform: str,
                 package: Artifact, payload: Artifact | None) -> None:
        self.entry = entry
        self.options = options
        self.remote_platform = remote_platform
        self.package = package
        self.payload = payload
        self.transport = SshTransport(entry.endpoint, options, jump=entry.jump)
        self.facts: dict[str, Any] | None = None
        self.capacity = 0
        self.workdir = ""
        self._prepared_for: int | None = None  # id() of the transport client we prepared on
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.entry.name

    def _python(self, args: str) -> str:
        return (f"PYTHONPATH=pkg/{self.package.digest} exec {shlex.quote(self.entry.python)} "
                f"-m snplab.vmm.job --platform {self.remote_platform} {args}")

    def prepare(self) -> None:
        """Ship what is missing, probe the host, fix capacity (idempotent, thread-safe)."""
        with self._lock:
            if self.facts is not None:
                return
            q = shlex.quote
            check = [f"test -f pkg/{self.package.digest}/.complete"]
            if self.payload is not None:
                check.append(f"test -f payload/{self.payload.digest}.elf")
            cmd = (f"mkdir -p {q(self.entry.workdir)} && cd {q(self.entry.workdir)} && "
                   f"mkdir -p pkg payload slots && echo {WORKDIR_MARK}$(pwd) && "
                   f"if {' && '.join(check)}; then {self._python('--probe')}; else exit {EXIT_MISSING}; fi")
            res = self.transport.run(cmd, timeout=self.options.connect_timeout * 3)
            if res.exit_status == EXIT_MISSING:
                self._upload_missing(res)
                res = self.transport.run(cmd, timeout=self.options.connect_timeout * 3)
            if res.exit_status != 0:
                raise RemoteJobFailed(
                    f"{self.transport.where}: preflight failed (exit {res.exit_status}): {last_line(res.stderr)}")
            lines = res.stdout.decode(errors="replace").splitlines()
            self.workdir = next((ln[len(WORKDIR_MARK):] for ln in lines if ln.startswith(WORKDIR_MARK)), "")
            try:
                facts = json.loads(lines[-1])
            except (ValueError, IndexError) as e:
                raise RemoteJobFailed(f"{self.transport.where}: preflight printed no facts: {last_line(res.stdout)}") from e
            derived = int(facts.get("capacity") or 0)
            self.capacity = min(derived, self.entry.capacity) if self.entry.capacity else derived
            if self.remote_platform == "emulated" and not facts.get("kvm"):
                raise RemoteJobFailed(f"{self.transport.where}: /dev/kvm is not usable on the host")
            if self.capacity < 1:
                raise RemoteJobFailed(
                    f"{self.transport.where}: no capacity (free SNP ASIDs {facts.get('free_snp_asids')}, "
                    f"MemAvailable {facts.get('mem_available')})")
            self.facts = facts
            log.info("%s: %s kernel %s, capacity %d", self.transport.where, facts.get("hostname"),
                     facts.get("kernel"), self.capacity)

    def _upload_missing(self, probe: CommandResult) -> None:
        q = shlex.quote
        wd = self._workdir_from(probe)
        token = secrets.token_hex(4)
        have = self.transport.run(
            f"cd {q(wd)} && test -f pkg/{self.package.digest}/.complete && echo pkg; "
            + (f"test -f payload/{self.payload.digest}.elf && echo payload; " if self.payload else "") + "true")
        present = set(have.stdout.decode().split())
        if "pkg" not in present:
            zpath = f"{wd}/pkg/{self.package.digest}.{token}.zip"
            self.transport.put(self.package.data, zpath)
            res = self.transport.run(
                f"{q(self.entry.python)} -c {q(artifact.UNPACK_SCRIPT)} {q(zpath)} {q(wd + '/pkg/' + self.package.digest)}")
            if res.exit_status != 0:
                raise RemoteJobFailed(f"{self.transport.where}: unpacking snplab failed: {last_line(res.stderr)}")
            log.info("%s: shipped snplab %s (%d bytes)", self.transport.where, self.package.digest, len(self.package.data))
        if self.payload is not None and "payload" not in present:
            self.transport.put(self.payload.data, f"{wd}/payload/{self.payload.digest}.elf")
            log.info("%s: shipped payload %s (%d bytes)", self.transport.where, self.payload.digest, len(self.payload.data))

    @staticmethod
    def _workdir_from(res: CommandResult) -> str:
        for ln in res.stdout.decode(errors="replace").splitlines():
            if ln.startswith(WORKDIR_MARK):
                return ln[len(WORKDIR_MARK):]
        raise RemoteJobFailed("preflight did not report the work directory")

    def job_command(self, slot_wait: float, max_seconds: float, owner: str) -> str:
        args = [f"--slots-dir slots --capacity {self.capacity}", f"--slot-wait {slot_wait:g}",
                f"--max-seconds {max_seconds:g}", f"--owner {shlex.quote(owner)}"]
        if self.payload is not None:
            args.append(f"--payload payload/{self.payload.digest}.elf")
        return f"cd {shlex.quote(self.workdir)} && {self._python(' '.join(args))}"

    def run_job(self, scenario_line: bytes, timeout: float, slot_wait: float, owner: str,
                label: str = "guest job") -> JobOutcome:
        """Run one guest job; the job lives exactly as long as this call (stdin kept open)."""
        self.prepare()
        # The host's watchdog outlives our deadline a little: we kill first, it catches the case
        # where we cannot (connection gone without the host noticing).
        cmd = self.job_command(slot_wait, timeout + slot_wait + 30.0, owner)
        res = self.transport.run(cmd, stdin=scenario_line + b"\n", timeout=timeout + slot_wait,
                                 keep_stdin_open=True, label=label)
        if res.exit_status == EXIT_NO_SLOT:
            return JobOutcome(True, None, res)
        if res.exit_status != 0:
            raise RemoteJobFailed(
                f"{self.transport.where}: guest job exited {res.exit_status}: {last_line(res.stderr)}")
        try:
            doc = json.loads(res.stdout)
        except ValueError as e:
            raise RemoteJobFailed(f"{self.transport.where}: guest job printed no transcript: {e}") from e
        return JobOutcome(False, doc, res)

    def close(self) -> None:
        self.transport.close()
