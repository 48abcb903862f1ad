"""The job server on a lab host: ``python3 -m snplab.remote.job_server --platform {emulated,snp}``.

One long-lived process per controller worker and host, started once over SSH (through
``snplab.remote.protocol``'s bootstrap, which ships the package first if the host lacks it). It
reads request frames on stdin and writes answer frames on stdout; logs go to stderr. Guests run
one at a time, in the main thread (KVM's vCPU kick signal needs its handler there).

=====================================================  ==============================================
request                                                answer
=====================================================  ==============================================
(at start, unasked)                                    ``hello`` {pid, pgid, facts (as ``--probe``)}
``ping``                                               ``pong``
``ship`` {remote, unpack} + a bytes frame              ``shipped`` {remote} (kept if already there)
``run`` {id, scenario, deadline_s, slot_wait,          ``result`` {id, outcome: ``ok`` + transcript,
capacity, owner, payload, keys, certs_blob, abi}       ``busy`` (no free slot), ``failed`` + error}
=====================================================  ==============================================

A guest that crashes (an exception anywhere in its run, a KVM error, its own watchdog) is that
guest's ``failed``/error answer; the server carries on with the next request. Each ``run`` takes
a guest slot on the host (``snplab.remote.host_slots``) for exactly the guest's duration.

The server never outlives its controller: it exits when stdin reaches EOF (the SSH channel
closed: controller gone or done), when its parent dies (``PR_SET_PDEATHSIG``), when a request
overruns its ``deadline_s`` (slot wait + guest; answered ``failed`` first: a guest still running
then cannot be trusted),
and after ``--max-idle`` seconds without a request; leading its process group (as under sshd), it
takes anything it started with it. A malformed or oversized frame is answered ``error`` and ends
the server with status 2 (the stream cannot be trusted after it).

Exit status: 0 stdin closed or idle, 2 bad frame, 124 a request overran its deadline, 129 parent gone,
1 anything else; every exit other than a plain EOF prints one line on stderr.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import queue
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

from snplab.remote import host_facts, host_slots, protocol

log = logging.getLogger("snplab.remote.job_server")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
EXIT_BAD_FRAME = 2
EXIT_DEADLINE = 124  # as timeout(1)
EXIT_ORPHANED = 129
_DYING = threading.Lock()
_WRITE = threading.Lock()


_SCRATCH_DIRS: list[Path] = []  # removed by die()


def die(status: int, message: str = "") -> NoReturn:
    """Print one line on stderr (if any) and end the process now, from any thread."""
    if not _DYING.acquire(blocking=False):
        threading.Event().wait()  # another thread is already ending the process
    try:
        if message:
            os.write(2, f"snplab.remote.job_server: {' '.join(message.split())}\n".encode())
        if os.getpgrp() == os.getpid():
            kill_group_members()  # we lead our process group (as under sshd)
    finally:
        for d in _SCRATCH_DIRS:  # os._exit runs no finalizers: remove our scratch files here
            shutil.rmtree(d, ignore_errors=True)
        os._exit(status)


def kill_group_members(sig: int = signal.SIGKILL) -> None:
    """Send sig to every other process of our process group (not to ourselves)."""
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat_line = f.read()
            # fields after the ")" that ends comm: state ppid pgrp ...
            if int(stat_line.rsplit(b")", 1)[1].split()[2]) == me:
                os.kill(int(entry.name), sig)
        except (OSError, ValueError, IndexError):
            continue


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` when our parent exits; exit now if it already has."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != parent:  # the parent died before the prctl took effect
        die(EXIT_ORPHANED, "parent exited before the job server started")


def send(obj: dict[str, Any]) -> None:
    """Write one answer frame (thread-safe)."""
    with _WRITE:
        protocol.write_all(1, protocol.encode(obj))


def snp_facts() -> dict[str, Any]:
    """What an SNP host's kernel plays (ABI profile) and its CPU product, for preflight."""
    try:
        from snplab.vmm import snp
    except ImportError as e:
        return {"snp_unavailable": f"{type(e).__name__}: {e}"}
    out: dict[str, Any] = {"snp_unavailable": snp.unavailable_reason()}
    if out["snp_unavailable"] is None:
        out["host_abi"] = snp.detect_abi()
    out["host_product"] = snp.host_product()
    return out


def probe(platform: str) -> dict[str, Any]:
    facts = host_facts.probe(platform)
    if platform == "snp":
        facts.update(snp_facts())
    return facts


def one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


class Requests(threading.Thread):
    """Reads request frames from stdin into a queue; EOF or a bad frame ends the server."""

    def __init__(self) -> None:
        super().__init__(name="job-requests", daemon=True)
        self.frames = protocol.FdFrames(0)
        self.queue: queue.Queue[tuple[dict[str, Any], bytes | None]] = queue.Queue()

    def run(self) -> None:
        try:
            while True:
                req = self.frames.read_json()
                if req is None:
                    die(0)  # the channel closed: controller done or gone
                data = None
                if req.get("type") == "ship":
                    got = self.frames.read()
                    if got is None or got[0] != protocol.KIND_BYTES:
                        raise protocol.FrameError("a ship request must be followed by a bytes frame")
                    data = got[1]
                self.queue.put((req, data))
        except (protocol.FrameError, OSError) as e:
            try:
                send({"type": "error", "error": one_line(e)})
            finally:
                die(EXIT_BAD_FRAME, f"bad request stream: {one_line(e)}")


SCRATCH = "scratch"  # <work dir>/scratch/job-<pid>: a job server's scratch files


def scratch_dir(workdir: Path, pid: int) -> Path:
    """This server's scratch directory under the host's work dir, after removing those of job
    servers that are gone (a SIGKILLed server cannot clean up after itself; the next one does)."""
    root = workdir / SCRATCH
    if root.is_dir():
        for d in root.glob("job-*"):
            try:
                other = int(d.name[len("job-"):])
            except ValueError:
                continue
            if other != pid and not _alive(other):
                shutil.rmtree(d, ignore_errors=True)
    return root / f"job-{pid}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobServer:
    """Runs the requests of one controller worker, one guest at a time."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path.cwd()
        self.scratch = scratch_dir(self.workdir, os.getpid())
        _SCRATCH_DIRS.append(self.scratch)
        self._platform: Any = None
        self._platform_key: tuple[Any, ...] | None = None

    def platform_for(self, req: dict[str, Any]) -> Any:
        """The local platform for this request's payload, key tree, blob and ABI (kept while they
        stay the same, which is every guest of a run once the keys are complete)."""
        from snplab.platform import get_platform

        key = tuple(req.get(k) for k in ("payload", "keys", "certs_blob", "abi"))
        if req.get("keys"):
            # emulated keys: the controller's key tree (snplab.emu.keys reads SNPLAB_CACHE)
            os.environ["SNPLAB_CACHE"] = str(self.workdir / req["keys"])
        if key != self._platform_key:
            self.drop_platform()
            opts = {k: v for k, v in (("payload", req.get("payload")), ("certs_blob", req.get("certs_blob")),
                                      ("abi", req.get("abi"))) if v}
            opts["work_dir"] = self.scratch  # blob files stay in the host's work dir, never /tmp
            self._platform = get_platform(self.args.platform, **opts)
            self._platform_key = key
        return self._platform

    def drop_platform(self) -> None:
        if self._platform is not None:
            try:
                self._platform.close()
            except Exception as e:  # noqa: BLE001 - a broken platform is replaced anyway
                log.warning("closing platform: %s", one_line(e))
        self._platform, self._platform_key = None, None

    def handle(self, req: dict[str, Any], data: bytes | None) -> None:
        kind = req.get("type")
        if kind == "ping":
            send({"type": "pong"})
        elif kind == "ship":
            protocol.store_shipment(str(self.workdir), str(req["remote"]), bool(req.get("unpack")), data or b"")
            send({"type": "shipped", "remote": req["remote"]})
        elif kind == "run":
            send(self.run(req))
        else:
            send({"type": "error", "error": f"unknown request type {kind!r}"})

    def run(self, req: dict[str, Any]) -> dict[str, Any]:
        """One guest: slot, platform, run; every failure becomes this guest's answer."""
        rid = req.get("id")
        lease = None
        timer = threading.Timer(float(req.get("deadline_s") or 600.0), self._overran, (rid,))
        timer.daemon = True
        try:
            from snplab.scenario import Scenario

            scenario = Scenario.from_json(req["scenario"])
            timer.start()  # the deadline covers the wait for a slot too
            lease = host_slots.acquire(self.workdir / "slots", int(req.get("capacity") or 1),
                                       str(req.get("owner") or ""), wait_s=float(req.get("slot_wait") or 0))
            if lease is None:
                return {"type": "result", "id": rid, "outcome": "busy"}
            platform = self.platform_for(req)
            wall_start = time.time()
            transcript = platform.run(scenario)
            wall_end = time.time()
            doc = transcript.to_json()
        except Exception as e:  # noqa: BLE001 - a crashed guest is its own failure, not ours
            log.debug("guest failed", exc_info=True)
            self.drop_platform()  # whatever state it was left in
            return {"type": "result", "id": rid, "outcome": "failed", "error": one_line(e)}
        finally:
            timer.cancel()
            if lease is not None:
                lease.release()
        host = dict(doc.get("host") or {})
        for k, v in host_facts.host_facts().items():
            host.setdefault(k, v)
        host.update(job_pid=os.getpid(), wall_start=wall_start, wall_end=wall_end,
                    slot=lease.index, owner=req.get("owner") or None)
        doc["host"] = host
        return {"type": "result", "id": rid, "outcome": "ok", "transcript": doc}

    def _overran(self, rid: Any) -> None:
        msg = f"request overran its deadline; job server {os.getpid()} exits"
        try:
            send({"type": "result", "id": rid, "outcome": "failed", "error": msg})
        finally:
            die(EXIT_DEADLINE, msg)

    def serve(self, requests: Requests) -> int:
        while True:
            try:
                req, data = requests.queue.get(timeout=self.args.max_idle)
            except queue.Empty:
                die(0, f"no request for {self.args.max_idle:g} s, exiting")
            try:
                self.handle(req, data)
            except (KeyError, TypeError, ValueError, OSError, protocol.FrameError) as e:
                send({"type": "error", "error": f"bad {req.get('type')!r} request: {one_line(e)}"})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m snplab.remote.job_server",
                                description=__doc__.split("\n")[0])
    p.add_argument("--platform", choices=("emulated", "snp"), required=True)
    p.add_argument("--probe", action="store_true", help="print host facts and derived capacity as JSON, serve nothing")
    p.add_argument("--max-idle", type=float, default=3600.0, help="exit after this long without a request (3600)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def warm_up() -> None:
    """Import what every guest needs now, so the first guest does not pay for it."""
    import snplab.emu.platform  # noqa: F401
    import snplab.platform  # noqa: F401
    import snplab.vmm.guest  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    if args.probe:
        import json

        print(json.dumps(probe(args.platform)))
        return 0
    set_parent_death_signal()
    try:
        requests = Requests()
        requests.start()  # EOF is noticed from now on, even while warming up
        from snplab.vmm.vcpu import ensure_kick_handler

        ensure_kick_handler()
        warm_up()
        server = JobServer(args)  # sweeps dead servers' scratch before we say hello
        send({"type": "hello", "pid": os.getpid(), "pgid": os.getpgrp(), "facts": probe(args.platform),
              "protocol": protocol.PROTOCOL_VERSION})
        return server.serve(requests)
    except Exception as e:  # CLI boundary: one line, no traceback
        log.debug("job server failed", exc_info=True)
        die(1, one_line(e))


if __name__ == "__main__":
    sys.exit(main())
