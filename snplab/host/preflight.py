"""`snplab host check`: can this machine run the suite on the snp platform, and if not, why.

Each check reads files under an injectable root (default "/") and issues ioctls through an
injectable ``IoctlLayer``, so the whole preflight is tested against fixture /proc and /sys trees.
A check ends ``ok``, ``fail`` (the suite cannot run here), ``warn`` (it can, but something is
off or unknown) or ``skip`` (a prerequisite failed). Every failure carries a fix hint.

Facts and numbers: shared/reference/kvm-host-abi.md §1(d), §3.1, §3.6 (VM types, device
attributes, /dev/sev); Linux include/uapi/linux/psp-sev.h (platform status, see sev_device.py).
"""

from __future__ import annotations

import enum
import errno
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from snplab.abi import kernel_behaviour as kb
from snplab.host import kernel_headers, sev_device
from snplab.vmm import uapi
from snplab.vmm.kvm import DEFAULT_IOCTL, IoctlLayer, Kvm
from snplab.vmm.errors import KvmUnavailable

# Linux releases: SNP host support and the 6.11 extended-request stub; KVM_EXIT_SNP_REQ_CERTS.
MIN_KERNEL = (6, 11)
REQ_CERTS_KERNEL = (7, 0)
# Oldest SNP firmware API the kernel's ccp driver accepts (drivers/crypto/ccp SNP_MIN_API 1.51).
MIN_SNP_API = (1, 51)
DEFAULT_CERT_BLOB = "/var/lib/snplab/cert-blob.bin"
CERT_BLOB_ENV = "SNPLAB_CERT_BLOB"


class Status(enum.Enum):
    OK = "ok"
    FAIL = "fail"
    WARN = "warn"
    SKIP = "skip"


SYMBOL = {Status.OK: "✓", Status.FAIL: "✗", Status.WARN: "!", Status.SKIP: "–"}


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    status: Status
    detail: str
    hint: str = ""
    facts: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "status": self.status.value, "detail": self.detail,
                "hint": self.hint, "facts": dict(self.facts)}


@dataclass(frozen=True)
class Report:
    root: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return not any(c.status is Status.FAIL for c in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status is Status.FAIL)

    def check(self, check_id: str) -> Check:
        for c in self.checks:
            if c.id == check_id:
                return c
        raise KeyError(check_id)

    @property
    def abi(self) -> str | None:
        return self.check("sev_attrs").facts.get("abi") if any(c.id == "sev_attrs" for c in self.checks) else None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "root": self.root, "abi": self.abi,
                "checks": [c.to_json() for c in self.checks],
                "failed": [c.id for c in self.failed]}

    def render(self) -> str:
        width = max(len(c.title) for c in self.checks)
        lines = [f"snplab host check (root {self.root})"]
        for c in self.checks:
            lines.append(f"  {SYMBOL[c.status]} {c.title:<{width}}  {c.detail}")
            if c.hint and c.status in (Status.FAIL, Status.WARN):
                lines.append(f"    {'':<{width}}  fix: {c.hint}")
        if self.ok:
            lines.append(f"result: this host can run the snp platform (ABI profile {self.abi or 'unknown'})")
        else:
            names = ", ".join(c.title for c in self.failed)
            lines.append(f"result: this host CANNOT run the snp platform: {len(self.failed)} check(s) failed ({names})")
        return "\n".join(lines)


@dataclass
class HostEnv:
    """Where the preflight looks. ``root`` prefixes every path; ``io`` answers every ioctl."""

    root: Path = Path("/")
    io: IoctlLayer = field(default_factory=lambda: DEFAULT_IOCTL)
    cert_blob: str | None = None  # host path (under root); None → $SNPLAB_CERT_BLOB or the default
    ark_pins: Mapping[str, str] | None = None  # product → ARK SHA-256; None → AMD's pins
    cc: str | None = None
    probe_headers: bool = True
    now: Callable[[], datetime] = field(default=lambda: datetime.now(timezone.utc))

    def path(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    def read(self, host_path: str) -> str | None:
        try:
            return self.path(host_path).read_text(errors="replace")
        except OSError:
            return None

    def open_dev(self, host_path: str) -> int:
        p = str(self.path(host_path))
        try:
            return self.io.open(p, os.O_RDWR)
        except PermissionError:
            return self.io.open(p, os.O_RDONLY)


# ---- individual checks ------------------------------------------------------------------------


@dataclass
class _Ctx:
    env: HostEnv
    product: str | None = None
    release: str | None = None
    kvm: Kvm | None = None
    kvm_error: str | None = None
    sev_fd: int | None = None
    sev_error: str | None = None
    snp_vm_type: bool = False
    status: sev_device.SnpPlatformStatus | None = None
    chip_id: bytes | None = None
    checks: list[Check] = field(default_factory=list)

    def add(self, *args: Any, **kw: Any) -> Check:
        c = Check(*args, **kw)
        self.checks.append(c)
        return c


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """First processor block of /proc/cpuinfo: vendor, family, model, stepping, flags, name."""
    info: dict[str, Any] = {}
    for line in text.splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "vendor_id":
            info["vendor"] = value
        elif key in ("cpu family", "model", "stepping") and value.isdigit():
            info[key.replace("cpu ", "")] = int(value)
        elif key == "model name":
            info["name"] = value
        elif key == "flags":
            info["flags"] = value.split()
    return info


def _check_cpu(ctx: _Ctx) -> None:
    from snplab.attest.product import product_from_cpuid

    text = ctx.env.read("/proc/cpuinfo")
    hint = ("SEV-SNP needs an AMD EPYC 7003 (Milan), 9004 (Genoa/Bergamo/Siena) or 9005 (Turin) host "
            "with SMEE, SEV-SNP and SNP memory coverage enabled in the BIOS; a guest VM never has it")
    if text is None:
        ctx.add("cpu", "CPU", Status.FAIL, "cannot read /proc/cpuinfo", hint)
        return
    info = parse_cpuinfo(text)
    vendor, fam, model = info.get("vendor", "?"), info.get("family"), info.get("model")
    if fam is None or model is None:
        ctx.add("cpu", "CPU", Status.FAIL, "/proc/cpuinfo has no cpu family/model", hint)
        return
    ctx.product = product_from_cpuid(fam, model) if vendor == "AuthenticAMD" else None
    flags = set(info.get("flags", []))
    snp_flag = "sev_snp" in flags
    facts = {"vendor": vendor, "family": fam, "model": model, "stepping": info.get("stepping"),
             "name": info.get("name"), "product": ctx.product, "sev_snp_flag": snp_flag,
             "hypervisor": "hypervisor" in flags}
    desc = f"{vendor} family {fam:#x} model {model:#x}"
    if ctx.product:
        desc += f" ({ctx.product.capitalize()})"
    if vendor != "AuthenticAMD" or ctx.product is None:
        ctx.add("cpu", "CPU", Status.FAIL, f"{desc}: not an SNP-capable EPYC", hint, facts)
    elif not snp_flag:
        why = "running as a guest (cpuinfo 'hypervisor' flag)" if "hypervisor" in flags else \
            "the kernel did not enable it (BIOS setting, or RMP table not reserved)"
        ctx.add("cpu", "CPU", Status.FAIL, f"{desc}: no 'sev_snp' CPU flag: {why}", hint, facts)
    else:
        ctx.add("cpu", "CPU", Status.OK, f"{desc}, sev_snp flag present", facts=facts)


def parse_release(release: str) -> tuple[int, int, int] | None:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


def _check_kernel(ctx: _Ctx) -> None:
    text = ctx.env.read("/proc/sys/kernel/osrelease")
    if text is None and ctx.env.root == Path("/"):
        text = os.uname().release
    hint = f"boot Linux ≥ {MIN_KERNEL[0]}.{MIN_KERNEL[1]} built with CONFIG_KVM_AMD_SEV " \
           f"(≥ {REQ_CERTS_KERNEL[0]}.{REQ_CERTS_KERNEL[1]} for the req-certs profile)"
    if not text:
        ctx.add("kernel", "kernel", Status.FAIL, "cannot read /proc/sys/kernel/osrelease", hint)
        return
    ctx.release = text.strip()
    ver = parse_release(ctx.release)
    facts = {"release": ctx.release}
    if ver is None:
        ctx.add("kernel", "kernel", Status.WARN, f"cannot parse release {ctx.release!r}", hint, facts)
    elif ver[:2] < MIN_KERNEL:
        ctx.add("kernel", "kernel", Status.FAIL, f"Linux {ctx.release}: older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]}, "
                "no SNP guest support in KVM", hint, facts)
    else:
        expect = "req-certs" if ver[:2] >= REQ_CERTS_KERNEL else "stub"
        ctx.add("kernel", "kernel", Status.OK, f"Linux {ctx.release} (mainline ABI for this release: {expect})",
                facts=facts | {"expected_abi": expect})


def _check_dev_kvm(ctx: _Ctx) -> None:
    hint = "load kvm_amd (modprobe kvm_amd) and run as a user with rw access to /dev/kvm"
    if not ctx.env.path("/dev/kvm").exists():
        ctx.kvm_error = "/dev/kvm does not exist"
        ctx.add("dev_kvm", "/dev/kvm", Status.FAIL, ctx.kvm_error, hint)
        return
    try:
        ctx.kvm = Kvm(str(ctx.env.path("/dev/kvm")), io=ctx.env.io)
    except KvmUnavailable as e:
        ctx.kvm_error = str(e)
        ctx.add("dev_kvm", "/dev/kvm", Status.FAIL, ctx.kvm_error, hint)
        return
    ctx.add("dev_kvm", "/dev/kvm", Status.OK, "opened read/write")


def _param(ctx: _Ctx, name: str) -> str | None:
    text = ctx.env.read(f"/sys/module/kvm_amd/parameters/{name}")
    return None if text is None else text.strip()


def _check_kvm_amd(ctx: _Ctx) -> None:
    hint = "reload with 'modprobe kvm_amd sev=1 sev_es=1 sev_snp=1' (or kvm_amd.sev_snp=1 on the kernel " \
           "command line); if it stays N, 'dmesg | grep -i -e SEV -e RMP' says why (BIOS, firmware, IOMMU)"
    if not ctx.env.path("/sys/module/kvm_amd").is_dir():
        ctx.add("kvm_amd", "kvm_amd sev_snp", Status.FAIL, "kvm_amd module not loaded", "modprobe kvm_amd sev_snp=1")
        return
    params = {n: _param(ctx, n) for n in ("sev", "sev_es", "sev_snp")}
    snp = params["sev_snp"]
    if snp is None:
        ctx.add("kvm_amd", "kvm_amd sev_snp", Status.FAIL,
                "kvm_amd has no sev_snp parameter (kernel older than 6.11 or built without SEV)", hint, params)
    elif snp.upper() not in ("Y", "1"):
        ctx.add("kvm_amd", "kvm_amd sev_snp", Status.FAIL, f"sev_snp = {snp}", hint, params)
    else:
        ctx.add("kvm_amd", "kvm_amd sev_snp", Status.OK, "sev_snp = Y", facts=params)


def _check_dev_sev(ctx: _Ctx) -> None:
    hint = "load the ccp driver (modprobe ccp) and run as root (/dev/sev is 0600)"
    if not ctx.env.path("/dev/sev").exists():
        ctx.sev_error = "/dev/sev does not exist"
        ctx.add("dev_sev", "/dev/sev", Status.FAIL, ctx.sev_error + " (no AMD Secure Processor driver)", hint)
        return
    try:
        ctx.sev_fd = ctx.env.open_dev("/dev/sev")
    except OSError as e:
        ctx.sev_error = f"cannot open /dev/sev: {e.strerror}"
        ctx.add("dev_sev", "/dev/sev", Status.FAIL, ctx.sev_error, hint)
        return
    ctx.add("dev_sev", "/dev/sev", Status.OK, "opened")


def _check_vm_types(ctx: _Ctx) -> None:
    title = "VM type SNP"
    if ctx.kvm is None:
        ctx.add("vm_types", title, Status.SKIP, f"not checked: {ctx.kvm_error}")
        return
    rc = ctx.kvm.check_extension_raw(uapi.KVM_CAP_VM_TYPES)
    hint = "KVM reports SNP only when the SNP firmware initialised: check 'dmesg | grep -i SEV-SNP', " \
           "the firmware version and the BIOS RMP/SNP settings"
    if rc < 0:
        ctx.add("vm_types", title, Status.FAIL, f"KVM_CHECK_EXTENSION(KVM_CAP_VM_TYPES) failed: {os.strerror(-rc)}",
                hint)
    elif not rc & (1 << uapi.KVM_X86_SNP_VM):
        detail = "kernel predates KVM_CAP_VM_TYPES" if rc == 0 else f"VM types {rc:#x} lack KVM_X86_SNP_VM (bit 4)"
        ctx.add("vm_types", title, Status.FAIL, detail, hint, {"vm_types": rc})
    else:
        ctx.snp_vm_type = True
        ctx.add("vm_types", title, Status.OK, f"KVM_CAP_VM_TYPES = {rc:#x} includes KVM_X86_SNP_VM",
                facts={"vm_types": rc})


def _check_sev_attrs(ctx: _Ctx) -> None:
    title = "SEV attributes"
    if ctx.kvm is None or not ctx.snp_vm_type:
        why = ctx.kvm_error if ctx.kvm is None else "KVM offers no SNP VM type"
        ctx.add("sev_attrs", title, Status.SKIP, f"not checked: {why}")
        return
    facts: dict[str, Any] = {}
    for name, attr in (("vmsa_features", uapi.KVM_X86_SEV_VMSA_FEATURES),
                       ("snp_policy_bits", uapi.KVM_X86_SNP_POLICY_BITS),
                       ("req_certs", uapi.KVM_X86_SEV_SNP_REQ_CERTS)):
        rc, value = ctx.kvm.get_device_attr_raw(uapi.KVM_X86_GRP_SEV, attr)
        facts[name] = value if rc >= 0 else None
        facts[name + "_errno"] = None if rc >= 0 else -rc
    err = facts["req_certs_errno"]
    ver = parse_release(ctx.release or "")
    facts["kernel_behaviour"] = kb.detect_generation(ver[:2] if ver else None,
                                                     facts["req_certs"] if err is None else None)
    if err is None and facts["req_certs"] == 1:
        facts["abi"] = "req-certs"
        ctx.add("sev_attrs", title, Status.OK, "KVM_X86_SEV_SNP_REQ_CERTS = 1 → ABI profile req-certs", facts=facts)
    elif err in (errno.ENXIO, errno.EINVAL, errno.ENOTTY) or (err is None and facts["req_certs"] == 0):
        facts["abi"] = "stub"
        why = "absent" if err else "0 (SNP not enabled in KVM)"
        status = Status.OK if err else Status.WARN
        ctx.add("sev_attrs", title, status, f"KVM_X86_SEV_SNP_REQ_CERTS {why} → ABI profile stub "
                "(a kernel with the v15 patch needs --abi vmgexit-v15)",
                "" if err else "the attribute reads 0 when SNP is not initialised in KVM", facts)
    else:
        ctx.add("sev_attrs", title, Status.WARN, f"KVM_GET_DEVICE_ATTR failed: {os.strerror(err)}",
                "pass --abi explicitly", facts)


def _check_snp_status(ctx: _Ctx) -> None:
    title = "SNP firmware"
    if ctx.sev_fd is None:
        ctx.add("snp_status", title, Status.SKIP, f"not checked: {ctx.sev_error}")
        return
    hint = "SNP firmware must be initialised (kvm_amd does it at load with sev_snp=1); update the SEV " \
           "firmware (amd_sev_fam*.sbin in /lib/firmware/amd) if it is older than 1.51"
    try:
        st = sev_device.snp_platform_status(ctx.env.io, ctx.sev_fd)
    except OSError as e:
        ctx.add("snp_status", title, Status.FAIL, f"SNP_PLATFORM_STATUS failed: {e.strerror or e}", hint)
        return
    ctx.status = st
    try:
        ctx.chip_id = sev_device.chip_id(ctx.env.io, ctx.sev_fd)
    except OSError:
        ctx.chip_id = None
    facts = st.to_json() | {"chip_id": ctx.chip_id.hex() if ctx.chip_id else None}
    detail = (f"firmware {st.firmware_version}, state {st.state_name}, reported TCB {st.reported_tcb:#018x}, "
              f"current TCB {st.current_tcb:#018x}, {st.guest_count} guest(s)")
    if (st.api_major, st.api_minor) < MIN_SNP_API:
        ctx.add("snp_status", title, Status.FAIL, detail + f": API older than {MIN_SNP_API[0]}.{MIN_SNP_API[1]}",
                hint, facts)
    elif st.state != sev_device.SNP_STATE_INIT or not st.is_rmp_initialized:
        ctx.add("snp_status", title, Status.FAIL, detail + ("" if st.is_rmp_initialized else ", RMP not initialised"),
                hint, facts)
    elif st.mask_chip_key:
        ctx.add("snp_status", title, Status.FAIL, detail + ": MASK_CHIP_KEY set, reports are not signed",
                "clear MASK_CHIP_KEY with SNP_SET_CONFIG (e.g. snphost config set)", facts)
    else:
        ctx.add("snp_status", title, Status.OK, detail, facts=facts)


def _flat(text: str | None) -> dict[str, int]:
    out = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _check_asids(ctx: _Ctx) -> None:
    title = "SNP ASIDs"
    cap = _flat(ctx.env.read("/sys/fs/cgroup/misc.capacity")).get("sev_es")
    hint = "raise the SEV-ES/SNP ASID count in the BIOS ('SEV-ES ASID Space Limit' / 'SEV ASID count')"
    if cap is None:
        ctx.add("asids", title, Status.WARN, "unknown: no sev_es line in /sys/fs/cgroup/misc.capacity",
                "mount cgroup v2 with the misc controller to see the SNP ASID count (Linux ≥ 5.17)")
        return
    used = _flat(ctx.env.read("/sys/fs/cgroup/misc.current")).get("sev_es", 0)
    free = max(0, cap - used)
    facts = {"capacity": cap, "in_use": used, "free": free}
    if free == 0:
        ctx.add("asids", title, Status.FAIL, f"0 free of {cap} (SNP guests use the SEV-ES ASID range)", hint, facts)
    else:
        ctx.add("asids", title, Status.OK, f"{free} free of {cap} (one per concurrent guest)", facts=facts)


def _check_cert_blob(ctx: _Ctx) -> None:
    from snplab.host import certs as host_certs

    title = "certificate blob"
    path = ctx.env.cert_blob or os.environ.get(CERT_BLOB_ENV) or DEFAULT_CERT_BLOB
    hint = f"create it: 'snplab host certs fetch -o {path}' (needs KDS access) or " \
           f"'snplab host certs build --dir DIR -o {path}'"
    try:
        blob = ctx.env.path(path).read_bytes()
    except OSError as e:
        ctx.add("cert_blob", title, Status.FAIL, f"{path}: {e.strerror}", hint, {"path": path})
        return
    pins = ctx.env.ark_pins
    if pins is None:
        from snplab.attest.trust import AMD_ARK_SHA256
        pins = AMD_ARK_SHA256
    tcb = ctx.status.reported_tcb if ctx.status is not None else None
    chip = ctx.chip_id if ctx.status is not None and not ctx.status.mask_chip_id else None
    try:
        summary = host_certs.check_blob(blob, product=ctx.product, reported_tcb=tcb, chip_id=chip,
                                        ark_pins=pins, at=ctx.env.now())
    except host_certs.BlobError as e:
        ctx.add("cert_blob", title, Status.FAIL, f"{path}: {e}",
                "rebuild the blob for this host's current TCB: " + hint, {"path": path})
        return
    facts = summary.to_json() | {"path": path}
    detail = f"{path}: {summary.describe()}"
    if tcb is None:
        ctx.add("cert_blob", title, Status.WARN, detail + "; TCB not compared (no SNP platform status)",
                "run as root on the SNP host so the TCB can be read from /dev/sev", facts)
    else:
        ctx.add("cert_blob", title, Status.OK, detail, facts=facts)


def _check_headers(ctx: _Ctx) -> None:
    title = "kernel headers"
    paths = kernel_headers.kvm_header_candidates(ctx.env.root, ctx.release)
    found = kernel_headers.read_define(paths, "KVM_EXIT_SNP_REQ_CERTS")
    facts: dict[str, Any] = {"kvm_h": [str(p) for p in paths],
                             "KVM_EXIT_SNP_REQ_CERTS": found[0] if found else None}
    if not paths:
        ctx.add("headers", title, Status.WARN, "no linux/kvm.h found: layouts not checked against headers",
                "install the headers of the running kernel (linux-headers / kernel-devel)", facts)
        return
    exit_note = (f"KVM_EXIT_SNP_REQ_CERTS = {found[0]} from {found[1]}" if found
                 else f"KVM_EXIT_SNP_REQ_CERTS not defined (default {uapi.KVM_EXIT_SNP_REQ_CERTS} is used)")
    if not ctx.env.probe_headers:
        ctx.add("headers", title, Status.OK, exit_note + "; C probe not run", facts=facts)
        return
    r = kernel_headers.probe_layouts(ctx.env.path("/usr/include"), cc=ctx.env.cc)
    facts |= {"compared": r.compared, "absent": list(r.absent), "mismatches": [str(m) for m in r.mismatches],
              "notes": [str(m) for m in r.notes], "probe_error": r.error}
    if r.error:
        ctx.add("headers", title, Status.WARN, f"{exit_note}; C probe not run: {r.error}",
                "install gcc and the kernel headers to compare struct layouts", facts)
    elif r.mismatches:
        ctx.add("headers", title, Status.FAIL,
                f"{len(r.mismatches)} layout/constant mismatch(es) with {r.include_dir}: {r.mismatches[0]}"
                + (" …" if len(r.mismatches) > 1 else ""),
                "snplab.vmm.uapi disagrees with this kernel's ABI: fix the declaration (see --json)", facts)
    else:
        absent = f", {len(r.absent)} names newer than the headers" if r.absent else ""
        ctx.add("headers", title, Status.OK, f"{r.compared} sizes/offsets/constants agree{absent}; {exit_note}",
                facts=facts)


CHECKS = (_check_cpu, _check_kernel, _check_dev_kvm, _check_kvm_amd, _check_dev_sev, _check_vm_types,
          _check_sev_attrs, _check_snp_status, _check_asids, _check_cert_blob, _check_headers)


def run_checks(env: HostEnv | None = None) -> Report:
    env = env or HostEnv()
    ctx = _Ctx(env)
    try:
        for fn in CHECKS:
            fn(ctx)
    finally:
        if ctx.kvm is not None:
            ctx.kvm.close()
        if ctx.sev_fd is not None:
            env.io.close(ctx.sev_fd)
    return Report(str(env.root), tuple(ctx.checks))
