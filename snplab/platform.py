"""Platforms: run a ``Scenario`` as one guest and return its ``Transcript`` (contract §5).

``get_platform("emulated")`` runs guests on the local ``/dev/kvm`` with the SNP parts of KVM and
the PSP modelled by ``snplab.emu``; ``get_platform("snp")`` runs them as real SNP guests on this
host (``snplab.vmm.snp``).  Both use the same VMM (``snplab.vmm.guest.Guest``), the same payload
ELF and the same certificate responder; only the backend differs.

``run`` never raises for anything the guest, KVM or the emulated platform does: timeouts, KVM
errors, unhandled exits and setup failures become ``status`` and ``error`` in the transcript.
Per-run cost is kept to the guest itself: the payload path, the parsed ELF, the emulated keys,
cert blobs and trust stores are cached per process.
"""

from __future__ import annotations

import errno as errno_mod
import os
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

from snplab.report.host_facts import host_facts
from snplab.scenario import Scenario
from snplab.transcript import RESULTS_COUNTED_ARRAYS, Transcript, jsonable, trim_results

PAYLOAD_ELF = Path(__file__).resolve().parent.parent / "guest-payloads" / "build" / \
    "snplab-guest.elf"
# DWARF enum names the transcript carries so oracles can name outcomes without a copy of them.
TRANSCRIPT_ENUMS = ("snplab_outcome", "snplab_decrypt", "snplab_term", "snplab_canary",
                    "snplab_limits")

_OPS = {"ext_req": "SNPLAB_OP_EXT_REQ", "req": "SNPLAB_OP_REQ",
        "terminate": "SNPLAB_OP_TERMINATE"}
_POLICIES = {"none": "SNPLAB_POLICY_NONE", "linux": "SNPLAB_POLICY_LINUX",
             "naive": "SNPLAB_POLICY_NAIVE"}
_PAGES = {"normal": "SNPLAB_PAGES_NORMAL", "same": "SNPLAB_PAGES_SAME",
          "private_req": "SNPLAB_PAGES_PRIVATE_REQ", "private_certs": "SNPLAB_PAGES_PRIVATE_CERTS",
          "misaligned_req": "SNPLAB_PAGES_MISALIGNED_REQ"}


class PlatformUnavailable(RuntimeError):
    """The platform cannot run guests on this machine (the message says why)."""


class PlatformSetupError(RuntimeError):
    """A setup step of the VM failed the way the VMM would abort on (message names the errno)."""


class ScenarioEncodeError(ValueError):
    """A scenario that does not fit the payload's params (too many vCPUs or steps)."""


@runtime_checkable
class Platform(Protocol):
    """Runs scenarios; the suite only ever talks to this."""

    name: str
    host_abi: str | None       # the ABI the host kernel plays (None: any, chosen per scenario)
    host_product: str | None   # the host's CPU product (None: any)

    def run(self, scenario: Scenario) -> Transcript: ...

    def run_many(self, scenarios: Sequence[Scenario]) -> list[Transcript]: ...

    def cert_blob(self, product: str, signer: str) -> bytes: ...

    def trust(self, product: str) -> Any: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------------
# the payload and its params


def default_payload_path() -> Path:
    """The guest payload ELF, (re)built first if missing or older than its sources.  Checked on
    every run (a stat of the sources, ~0.3 ms) so a payload rebuilt or cleaned meanwhile by
    someone else is picked up instead of failing the run."""
    try:
        from snplab import payload as payload_mod
    except ImportError:
        payload_mod = None  # type: ignore[assignment]
    if payload_mod is not None:
        try:
            return Path(payload_mod.ensure_built())
        except payload_mod.PayloadBuildError as e:
            raise PlatformUnavailable(f"guest payload: {e}") from e
    if not PAYLOAD_ELF.is_file():
        raise PlatformUnavailable(f"guest payload {PAYLOAD_ELF} not built (make -C guest-payloads)")
    return PAYLOAD_ELF


def encode_scenario(params: Any, dwarf: Any, scenario: Scenario) -> None:
    """Write the per-vCPU step scripts into ``snplab_params`` (a DWARF StructView), with every
    enum value and limit taken from the payload's DWARF."""
    limits = dwarf.enum("snplab_limits")
    max_vcpus, max_steps = limits["SNPLAB_MAX_VCPUS"], limits["SNPLAB_MAX_STEPS"]
    if scenario.nvcpus > max_vcpus:
        raise ScenarioEncodeError(f"{scenario.nvcpus} vCPUs, the payload has room for {max_vcpus}")
    ops, policies, pages = (dwarf.enum("snplab_op"), dwarf.enum("snplab_policy"),
                            dwarf.enum("snplab_pages"))
    flags = dwarf.enum("snplab_step_flags")
    guest_faults = _guest_fault_bits(dwarf, scenario.faults)
    for v, script in enumerate(scenario.steps):
        if len(script) > max_steps:
            raise ScenarioEncodeError(f"vCPU {v}: {len(script)} steps, the payload runs at most "
                                      f"{max_steps}")
        vp = params["vcpu"][v]
        vp["nsteps"] = len(script)
        vp["guest_faults"] = guest_faults
        for i, s in enumerate(script):
            f = 0
            if s.seqno is not None:
                f |= flags["SNPLAB_STEP_SEQNO_OVERRIDE"]
            if s.certs_gpa is not None:
                f |= flags["SNPLAB_STEP_CERTS_GPA_ABS"]
            if s.no_rax_valid:
                f |= flags["SNPLAB_STEP_NO_RAX_VALID"]
            if s.no_rbx_valid:
                f |= flags["SNPLAB_STEP_NO_RBX_VALID"]
            if s.term_ghcb:
                f |= flags["SNPLAB_STEP_TERM_GHCB"]
            vp["steps"][i].assign({
                "op": ops[_OPS[s.op]], "policy": policies[_POLICIES[s.policy]],
                "msg_type": s.msg_type, "msg_version": s.msg_version, "vmpck": s.vmpck,
                "pages": pages[_PAGES[s.pages]], "vmpl": s.vmpl, "flags": f,
                "max_busy_retries": s.max_busy_retries, "certs_npages": s.certs_npages,
                "certs_gpa_offset": s.certs_gpa_offset, "certs_gpa": s.certs_gpa or 0,
                "seqno": s.seqno or 0, "report_data": s.padded_report_data,
            })


def _guest_fault_bits(dwarf: Any, faults: Sequence[str]) -> int:
    """``snplab_vcpu_params.guest_faults`` for the scenario's faults of layer "guest"."""
    names = [f for f in faults if f.startswith("guest-")]
    if not names:
        return 0
    from snplab.emu.faults import GUEST_FAULT_BITS, FaultSet

    FaultSet(names)  # refuse typos
    bits = dwarf.enum("snplab_guest_fault")
    return sum(bits[GUEST_FAULT_BITS[n]] for n in set(names))


def _error_text(e: BaseException) -> str:
    """One line naming the exception and, for OS/KVM errors, the errno by name (e.g. EINVAL)."""
    text = f"{type(e).__name__}: {e}"
    for err in (getattr(e, "errno", None), getattr(getattr(e, "__cause__", None), "errno", None)):
        if isinstance(err, int) and err in errno_mod.errorcode:
            name = errno_mod.errorcode[err]
            if name not in text:
                text += f" ({name})"
            break
    return " ".join(text.split())


_HOST_FACTS: dict[str, Any] = {}


def _host_facts() -> dict[str, Any]:
    if not _HOST_FACTS:
        _HOST_FACTS.update(host_facts())
    return dict(_HOST_FACTS)


# --------------------------------------------------------------------------------------------
# the shared local runner


class LocalPlatform:
    """Runs guests in this process with ``snplab.vmm`` and a backend made per scenario."""

    name = "local"
    host_abi: str | None = None
    host_product: str | None = None

    def __init__(self, payload: str | os.PathLike[str] | None = None,
                 certs_blob: str | os.PathLike[str] | None = None,
                 trust_dir: str | os.PathLike[str] | None = None, abi: str | None = None,
                 work_dir: str | os.PathLike[str] | None = None) -> None:
        self._payload = Path(payload) if payload is not None else None
        self._certs_blob = Path(certs_blob) if certs_blob is not None else None
        self._trust_dir = Path(trust_dir) if trust_dir is not None else None
        self._abi = abi
        self._work_dir = Path(work_dir) if work_dir is not None else None
        self._tmp_dir: Path | None = None
        self._tmp_cleanup: weakref.finalize | None = None
        self._tmp_lock = threading.Lock()
        self._cache: dict[Any, Any] = {}
        self._cache_lock = threading.Lock()

    # -- to be provided by a concrete platform ---------------------------------------------------
    def make_backend(self, scenario: Scenario) -> Any:
        raise NotImplementedError

    def default_blob(self, scenario: Scenario, backend: Any) -> bytes:
        raise NotImplementedError

    def transcript_extras(self, scenario: Scenario, backend: Any) -> dict[str, Any]:
        return {}

    def kernel_behaviour(self, scenario: Scenario, backend: Any) -> str:
        """The kernel generation the host plays for ``scenario`` ("" if unknown)."""
        played = getattr(backend, "kernel", None)
        return (scenario.kernel or (played if isinstance(played, str) else "")
                or getattr(self, "host_kernel_behaviour", None) or "")

    def start_updater(self, scenario: Scenario, backend: Any, blob_path: Path,
                      served: list[bytes], responder: Any,
                      guest: Any) -> Callable[[], None] | None:
        return None

    def check_launched(self, scenario: Scenario, backend: Any) -> None:
        """Raise if the backend reports a setup step that a real VMM would abort on."""

    def vmm_faults(self, scenario: Scenario) -> frozenset[str]:
        """Faults of layer "vmm" for the certificate responder (emulated platform only)."""
        return frozenset()

    def guest_io(self, backend: Any) -> Any:
        """The ioctl layer the guest's VMM uses (None: the real one)."""
        return None

    # -- helpers ---------------------------------------------------------------------------------
    def _cached(self, key: Any, make: Callable[[], Any]) -> Any:
        with self._cache_lock:
            if key in self._cache:
                return self._cache[key]
        value = make()
        with self._cache_lock:
            return self._cache.setdefault(key, value)

    def payload_path(self) -> Path:
        """The payload ELF: the one given, else the built default (built or checked for staleness
        once per platform, not per guest)."""
        if self._payload is not None:
            return self._payload
        return self._cached(("default-payload",), default_payload_path)

    @property
    def _tmp(self) -> Path:
        """Scratch directory for the certificate blob files the responder serves: created on
        first use under ``work_dir`` (the run's directory) or else the system temp dir, removed
        by ``close()`` — or, if nobody calls it, when the platform is collected or at exit."""
        with self._tmp_lock:
            if self._tmp_dir is None:
                if self._work_dir is not None:
                    self._work_dir.mkdir(parents=True, exist_ok=True)
                d = Path(tempfile.mkdtemp(prefix="snplab-blobs-", dir=self._work_dir))
                self._tmp_cleanup = weakref.finalize(self, shutil.rmtree, d, ignore_errors=True)
                self._tmp_dir = d
            return self._tmp_dir

    def _write_blob(self, blob: bytes) -> Path:
        path = self._tmp / f"certs-{uuid.uuid4().hex}.bin"
        path.write_bytes(blob)
        return path

    def close(self) -> None:
        with self._tmp_lock:
            if self._tmp_cleanup is not None:
                self._tmp_cleanup()  # rmtree, once
            self._tmp_dir = self._tmp_cleanup = None

    # -- running ---------------------------------------------------------------------------------
    def run(self, scenario: Scenario) -> Transcript:
        """Run one guest; never raises for guest or platform behaviour."""
        t0 = time.perf_counter()
        try:
            return self._run(scenario, t0)
        except Exception as e:  # noqa: BLE001 - becomes the transcript's status/error
            return self._failed(scenario, _error_text(e), t0)

    def run_many(self, scenarios: Sequence[Scenario]) -> list[Transcript]:
        """Run several guests at the same time (one thread each)."""
        if len(scenarios) <= 1:
            return [self.run(s) for s in scenarios]
        from snplab.vmm.vcpu import ensure_kick_handler

        ensure_kick_handler()  # signal handlers can only be installed on the main thread
        with ThreadPoolExecutor(max_workers=len(scenarios), thread_name_prefix="snplab-guest") as ex:
            return list(ex.map(self.run, scenarios))

    def _run(self, sc: Scenario, t0: float) -> Transcript:
        from snplab.vmm.certs import CertResponder
        from snplab.vmm.guest import Guest, GuestConfig

        elf = self.payload_path()
        backend = self.make_backend(sc)
        blob = sc.cert_blob if sc.cert_blob is not None else self.default_blob(sc, backend)
        blob_path = self._write_blob(blob)
        served: list[bytes] = [blob]
        guest = Guest(GuestConfig(elf=elf, nvcpus=sc.nvcpus, timeout_s=sc.guest_timeout,
                                  policy=sc.policy, host_data=sc.host_data), backend,
                      io=self.guest_io(backend))
        responder = CertResponder(blob_path, sc.cert_answers, faults=self.vmm_faults(sc))
        stop_updater: Callable[[], None] | None = None
        t_setup = time.perf_counter()
        try:
            guest.prepare()
            if guest.params is None:
                raise ScenarioEncodeError(f"{elf}: no snplab_params in the payload's DWARF")
            encode_scenario(guest.params, guest.elf.dwarf, sc)
            responder.attach(guest)
            guest.launch()
            self.check_launched(sc, backend)
            stop_updater = self.start_updater(sc, backend, blob_path, served, responder, guest)
            result = guest.run()
            if stop_updater is not None:
                stop_updater()
                stop_updater = None
            return self._transcript(sc, guest, result, backend, served, responder, t0, t_setup)
        finally:
            if stop_updater is not None:
                stop_updater()
            responder.close()
            guest.close()
            try:
                blob_path.unlink()
            except OSError:
                pass

    def _enums(self, dwarf: Any) -> dict[str, dict[str, int]]:
        def make() -> dict[str, dict[str, int]]:
            out = {}
            for name in TRANSCRIPT_ENUMS:
                try:
                    out[name] = dict(dwarf.enum(name))
                except Exception:  # noqa: BLE001 - an older payload without that enum
                    continue
            return out

        return self._cached(("enums", id(dwarf)), make)

    def _transcript(self, sc: Scenario, guest: Any, result: Any, backend: Any,
                    served: list[bytes], responder: Any, t0: float, t_setup: float) -> Transcript:
        raw = result.results_in_use(RESULTS_COUNTED_ARRAYS)
        results = trim_results(raw) if isinstance(raw, Mapping) else {}
        launch_log = {"updates": [r.to_json() for r in result.launch_log],
                      "vcpus": [s.to_json() for s in guest.vcpu_states]}
        sev_features = getattr(getattr(backend, "psp", None), "sev_features", None)
        if sev_features is not None:
            launch_log["sev_features"] = int(sev_features)
        timings = {k: round(float(v), 6) for k, v in result.timings.items()}
        timings["platform_s"] = round(t_setup - t0, 6)
        timings["wall_s"] = round(time.perf_counter() - t0, 6)
        extras = self.transcript_extras(sc, backend)
        return Transcript(
            scenario=sc, platform=self.name, abi=sc.abi, product=sc.product,
            status=result.status, error=result.error,
            vcpus=tuple(jsonable(v) for v in result.vcpus),
            events=tuple(result.events.to_json()), results=results,
            message_log=tuple(extras.pop("message_log", ())), launch_log=launch_log,
            measurement=result.measurement.hex() if result.measurement else "",
            trust=extras.pop("trust", {}), timings=timings,
            host={**_host_facts(), "responder": responder.to_json(), **extras.pop("host", {})},
            cert_blobs=tuple(b.hex() for b in served), enums=self._enums(guest.elf.dwarf),
            kernel_behaviour=self.kernel_behaviour(sc, backend))

    def _failed(self, sc: Scenario, error: str, t0: float) -> Transcript:
        return Transcript(scenario=sc, platform=self.name, abi=sc.abi, product=sc.product,
                          status="error", error=error,
                          timings={"wall_s": round(time.perf_counter() - t0, 6)},
                          host=_host_facts())


# --------------------------------------------------------------------------------------------
# emulated


class EmulatedPlatform(LocalPlatform):
    """Guests on the local /dev/kvm; SNP parts of KVM and the PSP modelled by ``snplab.emu``.
    Emulated results are not hardware results."""

    name = "emulated"

    def __init__(self, **opts: Any) -> None:
        super().__init__(**opts)
        problem = kvm_problem()
        if problem:
            raise PlatformUnavailable(problem)

    def make_backend(self, sc: Scenario) -> Any:
        from snplab.emu.platform import EmulatedBackend

        return EmulatedBackend(sc.product, sc.signer, sc.abi, sc.faults, sc.report_version,
                               kernel=sc.kernel,
                               enable_req_certs="late" if sc.enable_req_certs_late else "early")

    def vmm_faults(self, sc: Scenario) -> frozenset[str]:
        from snplab.emu.faults import FaultSet

        return FaultSet(sc.faults).of_layer("vmm")

    def check_launched(self, sc: Scenario, backend: Any) -> None:
        """A VMM aborts when KVM_SEV_SNP_ENABLE_REQ_CERTS fails (e.g. EINVAL after a vCPU)."""
        vm = getattr(backend, "vm", None)
        err = getattr(vm, "enable_req_certs_error", None)
        if err:
            raise PlatformSetupError(err)

    def default_blob(self, sc: Scenario, backend: Any) -> bytes:
        if self._certs_blob is not None:
            return self._cached(("file-blob",), self._certs_blob.read_bytes)
        return self.cert_blob(sc.product, sc.signer, backend)

    def cert_blob(self, product: str, signer: str, backend: Any = None) -> bytes:
        """The blob the emulated host serves for ``product``/``signer`` (cached)."""
        if self._certs_blob is not None:
            return self._cached(("file-blob",), self._certs_blob.read_bytes)

        def make() -> bytes:
            b = backend
            if b is None:
                from snplab.emu.platform import EmulatedBackend

                b = EmulatedBackend(product, signer, "req-certs", (), 5)
            return bytes(b.cert_blob())

        return self._cached(("blob", product, signer), make)

    def trust(self, product: str) -> Any:
        """``--trust-dir`` if given (pinned), else the emulated roots (accepted unpinned)."""
        from snplab.attest.trust import TrustStore

        if self._trust_dir is not None:
            return self._cached(("trust-dir",), lambda: TrustStore.from_dir(self._trust_dir,
                                                                            pinned=False))
        return self._cached(("trust", product), lambda: TrustStore.from_pem(
            self._roots_pem(product), pinned=False, label=f"emulated {product} roots"))

    def _roots_pem(self, product: str) -> str:
        def make() -> str:
            from snplab.emu import keys

            roots = keys.default_store().roots(product)
            return "".join(getattr(roots, r).pem.decode() for r in ("ark", "ask", "asvk"))

        return self._cached(("roots-pem", product), make)

    def transcript_extras(self, sc: Scenario, backend: Any) -> dict[str, Any]:
        log = getattr(backend, "message_log", None)
        if log is None:
            log = getattr(getattr(backend, "psp", None), "message_log", ())
        describe = getattr(backend, "describe", None)
        return {"message_log": [jsonable(m) for m in log],
                "trust": {"roots": self._roots_pem(sc.product), "emulated": True},
                "host": {"platform_note": "emulated: SNP parts of KVM and the PSP modelled in "
                                          "Python; not a hardware result",
                         "psp_log": [jsonable(m) for m in getattr(backend, "psp_log", ())],
                         "backend": jsonable(describe()) if callable(describe) else None}}

    def start_updater(self, sc: Scenario, backend: Any, blob_path: Path,
                      served: list[bytes], responder: Any,
                      guest: Any) -> Callable[[], None] | None:
        if not sc.tcb_updates:
            return None
        updater = TcbUpdater(sc, backend, blob_path, served, responder)
        guest.handlers.on_request_complete(updater.on_complete)  # after the responder's hook
        updater.start()
        return updater.stop


class TcbUpdater(threading.Thread):
    """A host TCB update while guests run (races family): under the exclusive lock on the blob
    file, install a new TCB and endorsement key in the emulated firmware and rewrite the blob,
    as SNP_COMMIT / SNP_SET_CONFIG tools do (kvm-host-abi.md §1(d) lock convention).

    Update k is due once certificate exit ``stride * (k + 1)`` has been answered; it starts when
    a request completes (reaches the firmware) with the update due, and that vCPU waits in its
    completion hook (``on_complete``, after the responder dropped its shared lock) until the
    update is installed. So updates interleave with requests however fast the guest is: the
    reports before it carry the old TCB, that vCPU's next request the new one, while the other
    vCPUs keep running (the updater waits for their shared locks; guests asking meanwhile get
    BUSY)."""

    def __init__(self, sc: Scenario, backend: Any, blob_path: Path, served: list[bytes],
                 responder: Any, stride: int = 2, hold_s: float = 5.0) -> None:
        super().__init__(name="snplab-tcb-updater", daemon=True)
        self.sc, self.backend, self.blob_path, self.served = sc, backend, blob_path, served
        self.responder = responder
        self.stride = stride
        self.hold_s = hold_s  # bound on a vCPU's wait in on_complete
        self._cv = threading.Condition()
        self._done = 0        # updates installed
        self._stopped = False
        self.error: str | None = None

    def _due(self) -> int:
        answered = sum(1 for r in self.responder.records if r.ret == 0)
        return min(self.sc.tcb_updates, answered // self.stride)

    def on_complete(self, vcpu: Any) -> None:
        """Completion hook: with an update due, wake the updater and wait until it is in."""
        with self._cv:
            due = self._due()
            if due <= self._done or self._stopped:
                return
            self._cv.notify_all()
            self._cv.wait_for(lambda: self._done >= due or self._stopped, timeout=self.hold_s)

    def run(self) -> None:
        try:
            for k in range(self.sc.tcb_updates):
                with self._cv:  # woken by on_complete; polls too, for an exit never completed
                    while not (self._due() > k or self._stopped):
                        self._cv.wait(0.01)
                    if self._stopped:
                        return
                if not self._update():
                    return
                with self._cv:
                    self._done = k + 1
                    self._cv.notify_all()
        except Exception as e:  # noqa: BLE001 - shows as fewer served blobs than asked for
            self.error = _error_text(e)
        finally:
            with self._cv:  # never leave a vCPU waiting in on_complete
                self._stopped = True
                self._cv.notify_all()

    def _update(self) -> bool:
        from dataclasses import replace

        from snplab.vmm.certs import lock_exclusive

        fd = os.open(self.blob_path, os.O_RDWR | os.O_CLOEXEC)
        try:
            while not lock_exclusive(fd):   # guests hold shared locks mid-request
                with self._cv:
                    if self._cv.wait_for(lambda: self._stopped, timeout=0.0005):
                        return False
            tcb = self.backend.keys.tcb
            self.backend.update_tcb(replace(tcb, snp=(tcb.snp + 1) & 0xFF))
            blob = bytes(self.backend.cert_blob())
            os.ftruncate(fd, 0)
            os.pwrite(fd, blob, 0)
            self.served.append(blob)
            return True
        finally:
            os.close(fd)  # closing the description drops the OFD lock

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        self.join(5)


# --------------------------------------------------------------------------------------------
# real SNP


class SnpPlatform(LocalPlatform):
    """Guests as real SNP guests on this host (``snplab.vmm.snp``).

    ``ioctl`` replaces the kernel's ioctl layer (tests: the fake SNP KVM of tests/snp_fakes.py);
    ``cpuinfo`` is where the host product is read from."""

    name = "snp"

    def __init__(self, *, ioctl: Any = None, cpuinfo: str = "/proc/cpuinfo",
                 headers_root: str = "/", **opts: Any) -> None:
        super().__init__(**opts)
        self._ioctl = ioctl
        self._headers_root = headers_root
        self.last_backend: Any = None
        if ioctl is None:
            problem = kvm_problem()
            if problem:
                raise PlatformUnavailable(problem)
        from snplab.vmm import snp

        self._snp = snp
        reason = snp.unavailable_reason(io=ioctl)
        if reason:
            raise PlatformUnavailable(reason)
        self.host_abi = self._abi or snp.detect_abi(io=ioctl)
        self.host_product = snp.host_product(cpuinfo)
        from snplab.host.kernel_generation import detect as detect_generation

        self.host_kernel_behaviour: str | None = (
            "v15" if self.host_abi == "vmgexit-v15" else detect_generation(io=ioctl)["kernel_behaviour"])
        if self._certs_blob is None:
            raise PlatformUnavailable("--certs-blob FILE (the host's certificate blob) is needed "
                                      "on an SNP host")

    def make_backend(self, sc: Scenario) -> Any:
        backend = self._snp.SnpBackend(abi=sc.abi, ioctl=self._ioctl, headers_root=self._headers_root,
                                       enable_req_certs="late" if sc.enable_req_certs_late else "early")
        self.last_backend = backend  # the bringup reads its command record even when setup failed
        return backend

    def guest_io(self, backend: Any) -> Any:
        return self._ioctl

    def check_launched(self, sc: Scenario, backend: Any) -> None:
        """A VMM aborts when KVM_SEV_SNP_ENABLE_REQ_CERTS fails (EINVAL after a vCPU)."""
        if backend.enable_req_certs_error:
            raise PlatformSetupError(backend.enable_req_certs_error)

    def transcript_extras(self, sc: Scenario, backend: Any) -> dict[str, Any]:
        return {"host": {"backend": jsonable(backend.to_json())}}

    def default_blob(self, sc: Scenario, backend: Any) -> bytes:
        assert self._certs_blob is not None
        return self._certs_blob.read_bytes()

    def cert_blob(self, product: str, signer: str) -> bytes:
        assert self._certs_blob is not None
        return self._cached(("file-blob",), self._certs_blob.read_bytes)

    def trust(self, product: str) -> Any:
        from snplab.attest.trust import TrustStore

        if self._trust_dir is None:
            return TrustStore.empty(pinned=True)  # AMD's pinned ARK, presented in the table
        return self._cached(("trust-dir",), lambda: TrustStore.from_dir(self._trust_dir))


def kvm_problem() -> str | None:
    """Why /dev/kvm cannot be used here (None if it can)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"/dev/kvm unusable: {e.strerror}"
    os.close(fd)
    return None


PLATFORMS: dict[str, Callable[..., Any]] = {"emulated": EmulatedPlatform, "snp": SnpPlatform}


def get_platform(name: str, **opts: Any) -> Any:
    """The platform called ``name`` (emulated, snp), created with ``opts`` (payload, certs_blob,
    trust_dir, abi, work_dir: where its scratch files go, default the system temp dir; they are
    removed by ``close()``).  Raises PlatformUnavailable with the reason if it cannot run here."""
    try:
        factory = PLATFORMS[name]
    except KeyError:
        raise PlatformUnavailable(f"unknown platform {name!r} (known: {', '.join(PLATFORMS)})") \
            from None
    return factory(**opts)


__all__ = ["Platform", "PlatformUnavailable", "EmulatedPlatform", "SnpPlatform", "get_platform",
           "encode_scenario", "default_payload_path", "PLATFORMS"]
