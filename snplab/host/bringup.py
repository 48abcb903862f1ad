"""``snplab host bringup``: the first run on a new SNP lab host, item by item.

It walks the items of docs/hardware-status.md in order, through the same code the suite uses on
``--platform snp`` (``snplab.platform.SnpPlatform`` → ``snplab.vmm.snp`` launch and exits,
``snplab.checks`` / ``snplab.attest`` verdicts), and stops at the first failure, naming the exact
ioctl, its errno and the firmware status. Every ioctl goes through a recording layer
(``IoctlTrace``), so a launch failure is attributed to the ioctl that failed, not guessed.

The record (Markdown + JSON) says what the run ran against: ``target`` is ``hardware`` only when
the real ioctl layer was used on a host that offers SNP VMs; a run through an injected ioctl
layer (the fake KVM of the tests) is marked ``fake``, and this command never runs on the
emulated platform.
"""

from __future__ import annotations

import errno as errno_mod
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from snplab.vmm import uapi
from snplab.vmm.kvm import DEFAULT_IOCTL, IoctlLayer

PASS, FAIL, SKIPPED, NOT_RUN = "pass", "fail", "skipped", "not run"


@dataclass(frozen=True)
class Item:
    id: str
    title: str
    status_item: str  # the item of docs/hardware-status.md "Not yet run" it settles


ITEMS: tuple[Item, ...] = (
    Item("create_vm", "KVM_CREATE_VM(KVM_X86_SNP_VM)", "1"),
    Item("init2", "KVM_SEV_INIT2", "1"),
    Item("enable_req_certs", "KVM_SEV_SNP_ENABLE_REQ_CERTS (before any vCPU)", "1"),
    Item("guest_memfd", "KVM_ENABLE_CAP(EXIT_HYPERCALL), KVM_CREATE_GUEST_MEMFD + "
                        "KVM_SET_USER_MEMORY_REGION2, KVM_SET_MEMORY_ATTRIBUTES(PRIVATE)", "1"),
    Item("vcpus", "KVM_CREATE_VCPU, KVM_SET_CPUID2/SREGS/REGS (long-mode state)", "3"),
    Item("launch_start", "KVM_SEV_SNP_LAUNCH_START", "1"),
    Item("launch_update", "KVM_SEV_SNP_LAUNCH_UPDATE with our CPUID page", "1, 2"),
    Item("launch_finish", "KVM_SEV_SNP_LAUNCH_FINISH", "1"),
    Item("entry_64bit", "guest entered directly in 64-bit mode and ran its script", "3"),
    Item("guest_request", "SNP_GUEST_REQUEST (MSG_REPORT_REQ), report decrypted", "—"),
    Item("ext_request", "SNP_EXTENDED_GUEST_REQUEST: certificates + report verified", "5, 10"),
    Item("measurement", "report MEASUREMENT = snplab.attest.measure prediction", "4"),
    Item("invalid_len", "INVALID_LEN with RBX = pages needed", "5"),
    Item("busy", "BUSY (VMM answers EAGAIN)", "5"),
    Item("sev_term_msr", "SEV_TERM, GHCB MSR form", "7"),
    Item("sev_term_ghcb", "SEV_TERM, GHCB NAE form", "7"),
)
ITEM_IDS = tuple(i.id for i in ITEMS)

_SEV_ITEM = {uapi.KVM_SEV_INIT2: "init2", uapi.KVM_SEV_SNP_ENABLE_REQ_CERTS: "enable_req_certs",
             uapi.KVM_SEV_SNP_LAUNCH_START: "launch_start", uapi.KVM_SEV_SNP_LAUNCH_UPDATE: "launch_update",
             uapi.KVM_SEV_SNP_LAUNCH_FINISH: "launch_finish"}
_IOCTL_ITEM = {"KVM_CREATE_VM": "create_vm", "KVM_ENABLE_CAP": "guest_memfd",
               "KVM_CREATE_GUEST_MEMFD": "guest_memfd", "KVM_SET_USER_MEMORY_REGION2": "guest_memfd",
               "KVM_SET_MEMORY_ATTRIBUTES": "guest_memfd", "KVM_CREATE_VCPU": "vcpus",
               "KVM_SET_CPUID2": "vcpus", "KVM_SET_SREGS": "vcpus", "KVM_SET_REGS": "vcpus",
               "KVM_RUN": "entry_64bit"}
_IOCTL_NAMES = {v: k for k, v in vars(uapi).items()
                if k.startswith("KVM_") and isinstance(v, int) and (v >> 8) & 0xFF == 0xAE}


class BringupError(RuntimeError):
    """The bringup cannot start here (one line: why)."""


# ---- the ioctl record --------------------------------------------------------------------------


@dataclass(frozen=True)
class IoctlCall:
    name: str                  # KVM_MEMORY_ENCRYPT_OP(KVM_SEV_SNP_LAUNCH_UPDATE) for SEV commands
    errno: int                 # 0 on success
    fw_error: int = 0
    sev_cmd: int | None = None

    @property
    def item(self) -> str | None:
        if self.sev_cmd is not None:
            return _SEV_ITEM.get(self.sev_cmd)
        return _IOCTL_ITEM.get(self.name)

    def describe(self) -> str:
        from snplab.vmm.snp import firmware_status_text

        if not self.errno:
            return f"{self.name}: ok"
        text = f"{self.name}: {errno_mod.errorcode.get(self.errno, self.errno)} ({os.strerror(self.errno)})"
        if self.sev_cmd is not None:
            text += f", firmware status {firmware_status_text(self.fw_error)}"
        return text


class IoctlTrace(IoctlLayer):
    """Forwards every call to ``inner`` and keeps (ioctl, errno, firmware status) of each."""

    def __init__(self, inner: IoctlLayer) -> None:
        super().__init__()
        self.inner = inner
        self.cache = inner.cache
        self.calls: list[IoctlCall] = []

    def ioctl(self, fd: int, request: int, arg: Any = 0) -> int:
        name = _IOCTL_NAMES.get(request, f"ioctl {request:#x}")
        sev = None
        if request == uapi.KVM_MEMORY_ENCRYPT_OP and isinstance(arg, uapi.kvm_sev_cmd):
            from snplab.vmm.snp import SEV_CMD_NAMES

            sev = int(arg.id)
            name = f"{name}({SEV_CMD_NAMES.get(sev, sev)})"
        try:
            rc = self.inner.ioctl(fd, request, arg)
        except OSError as e:
            fw = int(arg.error) if sev is not None else 0
            self.calls.append(IoctlCall(name, e.errno or errno_mod.EIO, fw, sev))
            raise
        self.calls.append(IoctlCall(name, 0, 0, sev))
        return rc

    def open(self, path: str, flags: int) -> int:
        return self.inner.open(path, flags)

    def close(self, fd: int) -> None:
        self.inner.close(fd)

    def mmap(self, fd: int, length: int) -> Any:
        return self.inner.mmap(fd, length)

    def mark(self) -> int:
        return len(self.calls)


# ---- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemResult:
    item: Item
    status: str
    evidence: str = ""
    ioctl: str | None = None      # the failing ioctl, errno and firmware status
    checks: tuple[str, ...] = ()  # snplab.checks verdicts behind the result

    def to_json(self) -> dict[str, Any]:
        return {"id": self.item.id, "title": self.item.title, "hardware_status_item": self.item.status_item,
                "status": self.status, "evidence": self.evidence, "ioctl": self.ioctl, "checks": list(self.checks)}


@dataclass
class BringupRecord:
    target: str                    # "hardware" or "fake (...)": what the run ran against
    host: dict[str, Any]
    profile: str | None
    items: list[ItemResult] = field(default_factory=list)
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    seconds: float = 0.0

    @property
    def failed(self) -> ItemResult | None:
        return next((r for r in self.items if r.status == FAIL), None)

    @property
    def ok(self) -> bool:
        return self.failed is None and all(r.status in (PASS, SKIPPED) for r in self.items)

    def to_json(self) -> dict[str, Any]:
        f = self.failed
        return {"tool": "snplab host bringup", "target": self.target, "started": self.started,
                "seconds": round(self.seconds, 3), "host": self.host, "profile": self.profile,
                "ok": self.ok, "stopped_at": f.item.id if f else None, "items": [r.to_json() for r in self.items]}

    def markdown(self) -> str:
        h = self.host
        hw = self.target == "hardware"
        lines = [f"### snplab host bringup, {self.started} — {'hardware run' if hw else self.target}", ""]
        if not hw:
            lines += [f"> **Not a hardware result**: this run went through {self.target}.", ""]
        lines += [f"- host CPU: {h.get('cpu', '?')} (family {h.get('family', '?')}, model {h.get('model', '?')}, "
                  f"stepping {h.get('stepping', '?')}; product {h.get('product') or '?'})",
                  f"- kernel: {h.get('kernel', '?')}",
                  f"- SNP firmware: {h.get('firmware', '?')}; reported TCB {h.get('reported_tcb', '?')}",
                  f"- ABI profile detected: {self.profile or '?'}",
                  "", "| # | item | doc item | result | evidence |", "|---|---|---|---|---|"]
        for n, r in enumerate(self.items, 1):
            ev = r.evidence if r.ioctl is None else f"{r.ioctl}" + (f"; {r.evidence}" if r.evidence else "")
            lines.append(f"| {n} | {r.item.title} | {r.item.status_item} | {r.status} | {ev.replace('|', '/')} |")
        f = self.failed
        skipped = sum(r.status == SKIPPED for r in self.items)
        lines += ["", f"Stopped at **{f.item.id}**: {f.ioctl or f.evidence}" if f else
                  (("Every item passed." if not skipped else f"Every item passed or was skipped ({skipped} "
                                                            f"skipped, see evidence).") if self.ok else
                   "Not every item ran."), ""]
        return "\n".join(lines)


# ---- host facts -----------------------------------------------------------------------------------


def host_facts(root: str = "/", io: IoctlLayer | None = None, sev_path: str = "/dev/sev") -> dict[str, Any]:
    """CPU (family/model/stepping, product), kernel release, SNP firmware version and TCB."""
    from snplab.attest.product import product_from_cpuid
    from snplab.host import sev_device
    from snplab.host.preflight import parse_cpuinfo

    facts: dict[str, Any] = {"kernel": os.uname().release}
    try:
        info = parse_cpuinfo((Path(root) / "proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        info = {}
    facts.update(cpu=info.get("name"), family=info.get("family"), model=info.get("model"),
                 stepping=info.get("stepping"))
    try:
        facts["product"] = product_from_cpuid(int(info["family"]), int(info["model"]))
    except (KeyError, ValueError, TypeError):
        facts["product"] = None
    io = io or DEFAULT_IOCTL
    try:
        fd = io.open(sev_path, os.O_RDWR)
    except OSError as e:
        facts["firmware"] = f"unknown ({sev_path}: {e.strerror})"
        return facts
    try:
        st = sev_device.snp_platform_status(io, fd)
        facts.update(firmware=str(st.firmware_version), reported_tcb=f"{st.reported_tcb:#018x}",
                     current_tcb=f"{st.current_tcb:#018x}")
    except OSError as e:
        facts["firmware"] = f"unknown ({e})"
    finally:
        io.close(fd)
    return facts


# ---- the walk --------------------------------------------------------------------------------------


def _verdicts(results: list[Any]) -> tuple[bool, str, tuple[str, ...]]:
    names = tuple(f"{r.name}: {'ok' if r.ok else ('n/a' if r.ok is None else 'FAILED')} {r.detail}".strip()
                  for r in results)
    bad = [r for r in results if r.ok is False]
    if bad:
        return False, f"{bad[0].name}: {bad[0].detail}", names
    return True, "; ".join(r.detail for r in results if r.detail)[:300], names


class Bringup:
    """One bringup walk over an SnpPlatform whose ioctls go through ``trace``."""

    def __init__(self, platform: Any, trace: IoctlTrace, product: str, target: str,
                 host: dict[str, Any], trust: Any = None) -> None:
        self.platform, self.trace, self.product = platform, trace, product
        self.trust = trust
        self.record = BringupRecord(target=target, host=host, profile=platform.host_abi)
        self._done: set[str] = set()

    # -- helpers ----------------------------------------------------------------------------------
    def _add(self, item_id: str, status: str, evidence: str = "", ioctl: str | None = None,
             checks: tuple[str, ...] = ()) -> bool:
        item = ITEMS[ITEM_IDS.index(item_id)]
        self.record.items.append(ItemResult(item, status, evidence, ioctl, checks))
        self._done.add(item_id)
        return status != FAIL

    def _run(self, sc: Any) -> tuple[Any, list[IoctlCall], Any]:
        start = self.trace.mark()
        t = self.platform.run(sc)
        return t, self.trace.calls[start:], getattr(self.platform, "last_backend", None)

    def _launch_items(self, t: Any, calls: list[IoctlCall], backend: Any) -> bool:
        """Items create_vm..launch_finish from the ioctls of the first run."""
        fatal = None
        if t.status == "error" or (t.status != "ok" and not any(c.name == "KVM_RUN" and not c.errno
                                                              for c in calls)):
            fatal = next((c for c in reversed(calls) if c.errno), None)
        fatal_item = fatal.item if fatal is not None else None
        if t.status == "error" and fatal_item is None:
            fatal_item = next((i for i in ITEM_IDS[:8] if not any(c.item == i for c in calls)), "create_vm")
        abi = getattr(backend, "abi", None) or self.platform.host_abi
        for item in ITEM_IDS[:8]:
            mine = [c for c in calls if c.item == item]
            if item == fatal_item:
                failed = [c for c in getattr(backend, "commands", ()) if c.rc < 0]
                where = ", ".join(f"{k} {v:#x}" if k == "gpa" else f"{k} {v}"
                                  for k, v in (failed[-1].detail.items() if failed else ()))
                return self._add(item, FAIL, f"run error: {t.error}" if fatal is None else where,
                                 fatal.describe() if fatal is not None else None)
            if item == "enable_req_certs" and abi != "req-certs":
                self._add(item, SKIPPED, f"profile {abi}: the kernel has no certificate exit to enable")
                continue
            if not mine:
                return self._add(item, FAIL, f"never issued (run: {t.status} {t.error or ''})".strip())
            self._add(item, PASS, self._launch_evidence(item, mine, backend))
        return True

    def _launch_evidence(self, item: str, calls: list[IoctlCall], backend: Any) -> str:
        oks = [c for c in calls if not c.errno]
        if item == "launch_update":
            recs = [c for c in getattr(backend, "commands", ()) if c.name == "KVM_SEV_SNP_LAUNCH_UPDATE" and c.rc == 0]
            cpuid = getattr(backend, "cpuid_launched", None)
            text = f"{len(recs)} ranges in {len(calls)} calls; CPUID page launched: {cpuid}"
            corr = getattr(backend, "cpuid_corrections", [])
            if corr:
                text += f" ({len(corr[0]['changed'])} entries corrected by the firmware)"
            return text
        if item == "guest_memfd":
            return ", ".join(sorted({c.name for c in oks}))
        return f"{len(oks)} call(s) ok" if len(oks) > 1 else "ok"

    # -- the walk -----------------------------------------------------------------------------------
    def walk(self) -> BringupRecord:
        from snplab import checks
        from snplab.scenario import Scenario, Step, pages_for

        t0 = time.perf_counter()
        try:
            self._walk(checks, Scenario, Step, pages_for)
        finally:
            for item in ITEMS:
                if item.id not in self._done:
                    self.record.items.append(ItemResult(item, NOT_RUN, "stopped before this item"))
            self.record.items.sort(key=lambda r: ITEM_IDS.index(r.item.id))
            self.record.seconds = time.perf_counter() - t0
        return self.record

    def _walk(self, checks: Any, Scenario: Any, Step: Any, pages_for: Any) -> None:
        abi = self.platform.host_abi or "stub"
        product = self.product
        blob = self.platform.cert_blob(product, "vcek")
        need = max(1, pages_for(len(blob)))
        trust = self.trust if self.trust is not None else self.platform.trust(product)

        # 1. launch, 64-bit entry, a plain guest request (its SEV_TERM is judged last, in item order)
        t, calls, backend = self._run(Scenario.single(abi, product, Step.req(report_data=b"snplab bringup: req"),
                                                      name="bringup/req"))
        if not self._launch_items(t, calls, backend):
            return
        vr = (t.results.get("vcpu") or [{}])[0]
        v0 = t.vcpus[0] if t.vcpus else {}
        if not vr.get("started"):
            run_fail = next((c for c in reversed(calls) if c.errno and c.name == "KVM_RUN"), None)
            self._add("entry_64bit", FAIL, f"the guest never reached C: vCPU 0 {v0.get('status')} "
                                           f"{v0.get('reason', '')}".strip(),
                      run_fail.describe() if run_fail else None)
            return
        ok = bool(vr.get("finished")) and not vr.get("exc_valid") and not vr.get("setup_error")
        if not self._add("entry_64bit", PASS if ok else FAIL,
                         "vCPU 0 entered C at the ELF entry in long mode and ran its script" if ok else
                         f"vCPU 0 started but did not finish its script (setup_error {vr.get('setup_error')}, "
                         f"exception {vr.get('exc_vector') if vr.get('exc_valid') else 'none'}): {t.error or ''}"):
            return
        ok, ev, names = _verdicts([checks.expect_success(t, 0, 0), checks.report_data_roundtrip(t, 0, 0)])
        if not self._add("guest_request", PASS if ok else FAIL, ev, checks=names):
            return
        first = t

        # 2. an extended request with room for the blob; the measurement
        t, _, _ = self._run(Scenario.single(abi, product, Step.ext(need, report_data=b"snplab bringup: ext"),
                                            name="bringup/ext"))
        if abi == "stub":
            results = [checks.expect_success(t, 0, 0), checks.stub_empty_table(t, 0, 0)]
        else:
            results = checks.step_verdicts(t, 0, 0, trust)
        ok, ev, names = _verdicts(results)
        if not self._add("ext_request", PASS if ok else FAIL, ev, checks=names):
            return
        ok, ev, names = _verdicts([checks.measurement_matches(t)])
        if not self._add("measurement", PASS if ok else FAIL, ev, checks=names):
            return

        # 3. INVALID_LEN and BUSY (not on the 6.11 stub: it never answers either)
        if abi == "stub":
            self._add("invalid_len", SKIPPED, "profile stub: the kernel never answers INVALID_LEN")
            self._add("busy", SKIPPED, "profile stub: the kernel never answers BUSY")
        else:
            t, _, _ = self._run(Scenario.single(abi, product, Step.ext(0), name="bringup/invalid-len"))
            ok, ev, names = _verdicts([checks.expect_invalid_len(t, 0, 0, pages=need)])
            if not self._add("invalid_len", PASS if ok else FAIL, ev, checks=names):
                return
            t, _, _ = self._run(Scenario.single(abi, product, Step.ext(need), cert_answers=("EAGAIN",),
                                                name="bringup/busy"))
            ok, ev, names = _verdicts([checks.expect_exit(t, 0, 0, 2 << 32, name="busy_encoding")])
            if not self._add("busy", PASS if ok else FAIL, ev, checks=names):
                return
        v0 = first.vcpus[0] if first.vcpus else {}
        term = [e for e in first.events if e.get("kind") == "SevTerm"]
        ok = v0.get("status") == "terminated" and bool(term) and term[0].get("reason_set") == 3
        if not self._add("sev_term_msr", PASS if ok else FAIL,
                         f"KVM_SYSTEM_EVENT(SEV_TERM) data[0] = {term[0].get('raw', 0):#x} (set 3, code "
                         f"{term[0].get('reason_code')})" if ok else f"vCPU 0 {v0.get('status')}: {v0.get('reason')}"):
            return

        # 4. SEV_TERM through the GHCB page (NAE 0x8000FFFE): KVM zeroes SW_EXITINFO1/2 and reports
        # data[0] = the GHCB GPA, so only the GPA can be checked (the reason is lost)
        from snplab.vmm import memory_map as mm

        t, _, _ = self._run(Scenario.single(abi, product, Step.terminate(ghcb=True),
                                            name="bringup/sev-term-ghcb"))
        v0 = t.vcpus[0] if t.vcpus else {}
        term = [e for e in t.events if e.get("kind") == "SevTerm"]
        want = mm.ghcb_gpa(0)
        ok = v0.get("status") == "terminated" and bool(term) and term[0].get("raw") == want
        self._add("sev_term_ghcb", PASS if ok else FAIL,
                  f"KVM_SYSTEM_EVENT(SEV_TERM) data[0] = {want:#x} (vCPU 0's GHCB GPA)" if ok else
                  f"vCPU 0 {v0.get('status')}: {v0.get('reason')}; want SEV_TERM with data[0] = GHCB GPA {want:#x}")


def run_bringup(*, certs_blob: str, trust_dir: str | None = None, payload: str | None = None,
                ioctl: IoctlLayer | None = None, root: str = "/", product: str | None = None,
                abi: str | None = None, target: str | None = None, trust: Any = None) -> BringupRecord:
    """Walk every item on this host (``ioctl`` None: the kernel) and return the record.

    ``trust`` replaces the trust store built from ``trust_dir`` (tests: unpinned emulated roots).
    Raises BringupError (one line) if the host cannot run SNP guests at all."""
    from snplab.platform import PlatformUnavailable, SnpPlatform

    trace = IoctlTrace(ioctl or DEFAULT_IOCTL)
    try:
        platform = SnpPlatform(ioctl=trace, certs_blob=certs_blob, trust_dir=trust_dir, payload=payload,
                               abi=abi, cpuinfo=str(Path(root) / "proc/cpuinfo"))
    except PlatformUnavailable as e:
        raise BringupError(str(e)) from None
    try:
        host = host_facts(root, trace)
        product = product or platform.host_product or host.get("product")
        if product is None:
            raise BringupError("cannot tell the CPU product (milan/genoa/turin) from /proc/cpuinfo: pass --product")
        if target is None:
            target = "hardware" if ioctl is None else f"fake ({type(ioctl).__name__}: not a hardware result)"
        return Bringup(platform, trace, product, target, host, trust).walk()
    finally:
        platform.close()


def write_record(record: BringupRecord, out_dir: str | Path) -> tuple[Path, Path]:
    """``bringup-<time>.md`` and ``.json`` in ``out_dir``."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    stem = "bringup-" + record.started.replace(":", "").replace("-", "")
    md, js = d / f"{stem}.md", d / f"{stem}.json"
    md.write_text(record.markdown())
    js.write_text(json.dumps(record.to_json(), indent=1) + "\n")
    return md, js


__all__ = ["ITEMS", "Item", "ItemResult", "BringupRecord", "BringupError", "IoctlTrace", "IoctlCall",
           "run_bringup", "write_record", "host_facts", "PASS", "FAIL", "SKIPPED", "NOT_RUN"]
