"""A guest: build it (memory, payload ELF, params, page tables, vCPUs, launch), run it (one thread
per vCPU under a wall-clock watchdog), read its results (decoded via DWARF).

    with Guest(GuestConfig(elf=path), PlainBackend()) as g:
        g.prepare()                       # VM, memory, ELF loaded; g.params is writable now
        g.params['vcpu'][0]['nsteps'] = 1
        g.launch()                        # page tables, GDT, vCPUs, launcher.update/finish
        result = g.run()                  # RunResult: status, per-vCPU rip/symbol, events
        decoded = g.results()

Memory map and entry state: docs/contract.md §1; launch order: §4; events: §3.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from snplab.vmm import memory_map as mm
from snplab.vmm import uapi
from snplab.vmm.dwarf import StructView, TypeLayout, decode_bytes
from snplab.vmm.elf import ElfImage, load_elf
from snplab.vmm.errors import DwarfError, ElfError, GuestSetupError
from snplab.vmm.events import to_jsonable
from snplab.vmm.exits import Decoder, default_decoders
from snplab.vmm.handlers import EventLog, HandlerRegistry
from snplab.vmm.kvm import DEFAULT_IOCTL, IoctlLayer, Kvm, VmFd
from snplab.vmm.launch import Launcher, LaunchRecord, PageType, PlainLauncher, VcpuInitState
from snplab.vmm.memory import GpaOutOfRange, GuestMemory
from snplab.vmm.status import CRASH_STATUSES, OK_STATUSES, STOPPED, TIMEOUT
from snplab.vmm.vcpu import Vcpu, ensure_kick_handler, install_kick_handler
from snplab.vmm.watchdog import WATCHDOG

PARAMS_SYMBOL = "snplab_params"
PARAMS_STRUCT = "snplab_params"
RESULTS_STRUCT = "snplab_results"
KICK_GRACE_S = 0.45  # a kicked vCPU must have left KVM_RUN within this (limit + 0.5 s overall)


@dataclass(frozen=True)
class GuestConfig:
    """One guest: payload ELF, vCPU count, RAM size (bytes), wall-clock limit (seconds), the
    launch inputs (SNP guest policy, 32-byte HOST_DATA) handed to the launcher, and where the
    guest's results are (struct name in DWARF, GPA) for `RunResult.results`."""

    elf: Path
    nvcpus: int = 1
    ram_size: int = mm.DEFAULT_RAM_SIZE
    timeout_s: float = 10.0
    policy: int = 0x30000
    host_data: bytes = bytes(32)
    results_struct: str = "snplab_results"
    results_gpa: int | None = None  # None: params.results_gpa, else the symbol named like it


@runtime_checkable
class Backend(Protocol):
    """What differs between platforms: VM type, C-bit, VM/vCPU setup, launcher, handlers."""

    name: str
    vm_type: int
    c_bit_mask: int

    def setup_vm(self, guest: Guest) -> None: ...

    def launcher(self, guest: Guest) -> Launcher: ...

    def setup_vcpu(self, guest: Guest, vcpu: Vcpu) -> None: ...

    def register_handlers(self, guest: Guest) -> None: ...


class PlainBackend:
    """A plain (non-SNP) KVM guest, type 0: for the VMM's own tests."""

    name = "plain"
    vm_type = uapi.KVM_X86_DEFAULT_VM
    c_bit_mask = 0

    def setup_vm(self, guest: Guest) -> None:
        pass

    def launcher(self, guest: Guest) -> Launcher:
        return PlainLauncher()

    def setup_vcpu(self, guest: Guest, vcpu: Vcpu) -> None:
        pass

    def register_handlers(self, guest: Guest) -> None:
        pass


@dataclass
class RunResult:
    """Outcome of `Guest.run()` (JSON via `to_json()`)."""

    platform: str
    status: str                      # ok, timeout, kvm-run-error, crash, unhandled-exit, error
    error: str | None
    vcpus: list[dict[str, Any]]
    events: EventLog
    timings: dict[str, float]
    launch_log: list[LaunchRecord]
    measurement: bytes | None
    params_layout: TypeLayout | None = None
    params_bytes: bytes | None = None
    results_layout: TypeLayout | None = None
    results_bytes: bytes | None = None
    _results: Any = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def params(self) -> Any:
        if self.params_layout is None or self.params_bytes is None:
            return None
        return decode_bytes(self.params_layout, self.params_bytes)

    @property
    def results(self) -> Any:
        """The guest's `snplab_results` at the end of the run, decoded (None if absent)."""
        if self._results is None and self.results_layout is not None and \
                self.results_bytes is not None:
            self._results = decode_bytes(self.results_layout, self.results_bytes)
        return self._results

    def results_in_use(self, counts: Mapping[str, str]) -> Any:
        """``results`` with each counted array cut to its count field (``decode_bytes``
        ``counts``): the unused parts of the results area are not decoded at all."""
        if self.results_layout is None or self.results_bytes is None:
            return None
        return decode_bytes(self.results_layout, self.results_bytes, counts=counts)

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": self.platform, "status": self.status, "error": self.error,
            "vcpus": [dict(v) for v in self.vcpus], "events": self.events.to_json(),
            "params": self.params, "results": self.results,
            "launch_log": [r.to_json() for r in self.launch_log],
            "measurement": self.measurement.hex() if self.measurement else None,
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
        }


@functools.lru_cache(maxsize=32)
def _elf_launch_ranges(img: ElfImage) -> tuple[tuple[int, int, PageType], ...]:
    """[(gpa, npages, NORMAL|ZERO)] covering the ELF's pages; pages holding no file bytes are
    ZERO (pure .bss)."""
    pages: dict[int, PageType] = {}
    for s in img.segments:
        first = s.gpa & ~(mm.PAGE_SIZE - 1)
        for p in range(first, s.end, mm.PAGE_SIZE):
            has_file = s.filesz > 0 and p < s.gpa + s.filesz and s.gpa < p + mm.PAGE_SIZE
            if has_file or pages.get(p) == PageType.NORMAL:
                pages[p] = PageType.NORMAL
            else:
                pages.setdefault(p, PageType.ZERO)
    out: list[list[Any]] = []
    for p in sorted(pages):
        t = pages[p]
        if out and out[-1][2] == t and out[-1][0] + out[-1][1] * mm.PAGE_SIZE == p:
            out[-1][1] += 1
        else:
            out.append([p, 1, t])
    return tuple((g, n, t) for g, n, t in out)


@functools.lru_cache(maxsize=1)
def _sregs_template() -> bytes:
    s = uapi.kvm_sregs()
    for name in ("ds", "es", "fs", "gs", "ss"):
        seg = getattr(s, name)
        seg.base, seg.limit, seg.selector, seg.type = 0, 0xFFFFFFFF, mm.DATA_SEL, 3
        seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g = 1, 0, 1, 1, 0, 1
    cs = s.cs
    cs.base, cs.limit, cs.selector, cs.type = 0, 0xFFFFFFFF, mm.CODE_SEL, 0xB
    cs.present, cs.dpl, cs.db, cs.s, cs.l, cs.g = 1, 0, 0, 1, 1, 1
    # TR and LDTR as KVM resets them (busy TSS, LDT), both present.
    s.tr.limit, s.tr.type, s.tr.present = 0xFFFF, 11, 1
    s.ldt.limit, s.ldt.type, s.ldt.present = 0xFFFF, 2, 1
    s.gdt.base, s.gdt.limit = mm.GDT_GPA, mm.GDT_LIMIT
    s.idt.base, s.idt.limit = 0, 0
    s.cr0, s.cr3, s.cr4, s.efer = mm.ENTRY_CR0, mm.PML4_GPA, mm.ENTRY_CR4, mm.ENTRY_EFER
    return bytes(s)


def _seg_dict(seg: uapi.kvm_segment) -> dict[str, int]:
    return {"base": seg.base, "limit": seg.limit, "selector": seg.selector, "type": seg.type,
            "present": seg.present, "dpl": seg.dpl, "db": seg.db, "s": seg.s, "l": seg.l,
            "g": seg.g, "avl": seg.avl}


def _sregs_dict(s: uapi.kvm_sregs) -> dict[str, Any]:
    d: dict[str, Any] = {n: _seg_dict(getattr(s, n))
                         for n in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")}
    d["gdt"] = {"base": s.gdt.base, "limit": s.gdt.limit}
    d["idt"] = {"base": s.idt.base, "limit": s.idt.limit}
    for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base"):
        d[n] = getattr(s, n)
    return d


_REG_NAMES = [f[0] for f in uapi.kvm_regs._fields_]


class Guest:
    """One guest VM built from a payload ELF by a `Backend`."""

    def __init__(self, config: GuestConfig, backend: Backend | None = None, *,
                 io: IoctlLayer | None = None, kvm_path: str = "/dev/kvm") -> None:
        self.config = config
        self.backend: Backend = backend if backend is not None else PlainBackend()
        self.io = io or DEFAULT_IOCTL
        self.kvm_path = kvm_path
        if not 1 <= config.nvcpus <= mm.MAX_VCPUS:
            raise GuestSetupError(f"nvcpus={config.nvcpus}: the memory map has room for "
                                  f"1..{mm.MAX_VCPUS}")
        if config.ram_size < mm.MIN_RAM_SIZE or config.ram_size % (2 << 20):
            raise GuestSetupError(f"ram_size={config.ram_size:#x}: want a multiple of 2 MiB "
                                  f">= {mm.MIN_RAM_SIZE:#x}")
        if len(config.host_data) != 32:
            raise GuestSetupError(f"host_data is {len(config.host_data)} bytes, want 32")
        mm.check_c_bit_mask(self.backend.c_bit_mask)
        ensure_kick_handler()  # now, if on the main thread: run() may be called from another
        self.elf: ElfImage = load_elf(config.elf)
        self.memory: GuestMemory | None = None
        self.kvm: Kvm | None = None
        self.vm: VmFd | None = None
        self.vcpus: list[Vcpu] = []
        self.handlers = HandlerRegistry()
        self.events = EventLog()
        self.exit_decoders: dict[int, Decoder] = default_decoders()
        self.doorbell_ports: set[int] = set()
        self.params: StructView | None = None
        self.launcher: Launcher | None = None
        self.launch_log: list[LaunchRecord] = []
        self.vcpu_states: list[VcpuInitState] = []
        self.timings: dict[str, float] = {}
        self.state = "new"
        self.t_run0 = 0.0
        self.result: RunResult | None = None
        self._cond = threading.Condition()
        self._running = 0
        self._first_failure: Vcpu | None = None
        self._t0 = 0.0

    # --- build ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the VM and its memory, load the ELF, fill the memory-map fields of params."""
        if self.state != "new":
            raise GuestSetupError(f"prepare() in state {self.state}")
        self._t0 = t0 = time.perf_counter()
        try:
            self.kvm = Kvm(self.kvm_path, self.io)
            self.vm = self.kvm.create_vm(self.backend.vm_type)
            self.memory = GuestMemory(self.config.ram_size)
            self.backend.setup_vm(self)
            self.memory.register(self.vm)  # slots the backend did not register itself
            self.memory.enable_kvm_attributes(self.vm)
            t1 = time.perf_counter()
            self._load_elf()
            self._init_params()
            self.backend.register_handlers(self)
        except BaseException:
            self.close()
            raise
        t2 = time.perf_counter()
        self.timings.update(create_s=t1 - t0, load_s=t2 - t1)
        self.state = "prepared"

    def _load_elf(self) -> None:
        assert self.memory is not None
        img = self.elf
        if not img.segments:
            raise ElfError(f"{img.path}: no PT_LOAD segments")
        for s in img.segments:
            if s.gpa < mm.PAYLOAD_GPA or s.end > mm.PAYLOAD_END:
                raise ElfError(f"{img.path}: PT_LOAD [{s.gpa:#x}, {s.end:#x}) outside the "
                               f"payload window [{mm.PAYLOAD_GPA:#x}, {mm.PAYLOAD_END:#x})")
            self.memory.write(s.gpa, s.data)  # .bss: fresh anonymous memory is already zero
        if not any(s.gpa <= img.entry < s.end and s.flags & 1 for s in img.segments):
            raise ElfError(f"{img.path}: entry {img.entry:#x} is not in an executable segment")

    def _init_params(self) -> None:
        assert self.memory is not None
        sym = self.elf.find_symbol(PARAMS_SYMBOL)
        if sym is None or not self.elf.has_dwarf or not self.elf.dwarf.has_struct(PARAMS_STRUCT):
            return
        layout = self.elf.dwarf.layout(PARAMS_STRUCT)
        if sym.size and sym.size != layout.size:
            raise ElfError(f"symbol {PARAMS_SYMBOL} is {sym.size} bytes, DWARF says {layout.size}")
        self.params = StructView(layout, self.memory.view(sym.addr, layout.size), gpa=sym.addr,
                                 what=PARAMS_SYMBOL)
        self._fill_memory_map(self.params)

    def _fill_memory_map(self, p: StructView) -> None:
        consts = self.elf.dwarf.constants
        n = self.config.nvcpus
        values: dict[str, int] = {
            "nvcpus": n, "c_bit_mask": self.backend.c_bit_mask,
            "secrets_gpa": mm.SECRETS_GPA, "results_gpa": mm.RESULTS_GPA,
            "results_size": self._results_size(), "shared_gpa": mm.SHARED_GPA,
            "shared_size": mm.SHARED_END - mm.SHARED_GPA,
        }
        if "SNPLAB_PARAMS_MAGIC" in consts:
            values["magic"] = consts["SNPLAB_PARAMS_MAGIC"]
        if "SNPLAB_ABI_VERSION" in consts:
            values["abi_version"] = consts["SNPLAB_ABI_VERSION"]
        plat = "SNPLAB_PLATFORM_SNP" if self.backend.name == "snp" else "SNPLAB_PLATFORM_EMULATED"
        if plat in consts:
            values["platform"] = consts[plat]
        for k, v in values.items():
            if k in p:
                p[k] = v
        if "vcpu" not in p:
            return
        vcpu_arr = p["vcpu"]
        if len(vcpu_arr) < n:
            raise GuestSetupError(f"snplab_params has room for {len(vcpu_arr)} vCPUs, want {n}")
        for i in range(n):
            vp = vcpu_arr[i]
            for k, v in (("ghcb_gpa", mm.ghcb_gpa(i)), ("req_gpa", mm.req_gpa(i)),
                         ("resp_gpa", mm.resp_gpa(i)), ("certs_gpa", mm.certs_gpa(i)),
                         ("certs_max_pages", mm.CERTS_MAX_PAGES),
                         ("private_gpa", mm.scratch_gpa(i))):
                if k in vp:
                    vp[k] = v

    def _results_size(self) -> int:
        dw = self.elf.dwarf
        if dw.has_struct(RESULTS_STRUCT):
            size = dw.layout(RESULTS_STRUCT).size
            if size > mm.RESULTS_MAX_SIZE:
                raise ElfError(f"struct {RESULTS_STRUCT} is {size} bytes, the memory map has "
                               f"{mm.RESULTS_MAX_SIZE}")
            return size
        return mm.RESULTS_MAX_SIZE

    def launch(self) -> None:
        """Page tables, GDT, vCPUs in long mode, then launcher start/update.../finish."""
        if self.state == "new":
            self.prepare()
        if self.state != "prepared":
            raise GuestSetupError(f"launch() in state {self.state}")
        assert self.memory is not None and self.vm is not None and self.kvm is not None
        t0 = time.perf_counter()
        try:
            mem = self.memory
            mem.write(mm.PML4_GPA, mm.page_tables(self.backend.c_bit_mask))
            mem.write(mm.GDT_GPA, mm.gdt_page())
            cpuid = self.kvm.supported_cpuid()
            sregs_t = _sregs_template()
            entry = self.elf.entry
            params_gpa = self.params.gpa if self.params is not None else 0
            for i in range(self.config.nvcpus):
                fd = self.vm.create_vcpu(i)
                vcpu = Vcpu(self, i, fd)
                self.vcpus.append(vcpu)
                fd.set_cpuid2(cpuid)
                sregs = uapi.kvm_sregs.from_buffer_copy(sregs_t)
                sregs.apic_base = mm.APIC_BASE_DEFAULT | mm.APIC_BASE_ENABLE | \
                    (mm.APIC_BASE_BSP if i == 0 else 0)
                fd.set_sregs(sregs)
                regs = uapi.kvm_regs(rip=entry, rsp=mm.stack_top(i), rdi=i, rsi=params_gpa,
                                     rflags=mm.ENTRY_RFLAGS)
                fd.set_regs(regs)
                self.vcpu_states.append(VcpuInitState(
                    i, {n: getattr(regs, n) for n in _REG_NAMES}, _sregs_dict(sregs), 1))
                self.backend.setup_vcpu(self, vcpu)
            self._run_launcher()
        except BaseException:
            self.close()
            raise
        self.timings["launch_s"] = time.perf_counter() - t0
        self.state = "launched"

    def _run_launcher(self) -> None:
        assert self.memory is not None
        mem = self.memory
        n = self.config.nvcpus
        launcher = self.backend.launcher(self)
        self.launcher = launcher
        launcher.start(self.config.policy)
        P = mm.PAGE_SIZE
        ranges: list[tuple[int, int, PageType]] = [
            (mm.PML4_GPA, 4, PageType.NORMAL),   # PML4, PDPT, PD, GDT
            (mm.SECRETS_GPA, 1, PageType.SECRETS),
            (mm.CPUID_GPA, 1, PageType.CPUID),
            *_elf_launch_ranges(self.elf),
            (mm.STACKS_GPA, n * mm.STACK_SIZE // P, PageType.ZERO),
            (mm.SCRATCH_GPA, n, PageType.ZERO),
        ]
        log = self.launch_log
        for gpa, npages, ptype in ranges:
            data = bytes(npages * P) if ptype == PageType.ZERO else mem.read(gpa, npages * P)
            log.append(LaunchRecord(gpa, ptype, data))
            launcher.update(gpa, data, ptype)
        launcher.finish(self.config.host_data, list(self.vcpu_states))

    def build(self) -> None:
        """prepare() + launch()."""
        self.prepare()
        self.launch()

    # --- run -----------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run every vCPU until all stop or the wall-clock limit expires. vCPU 0 runs on the
        calling thread, every other vCPU on a thread of its own; the process-wide watchdog
        kicks them all at the deadline."""
        if self.state in ("new", "prepared"):
            self.launch()
        if self.state != "launched":
            raise GuestSetupError(f"run() in state {self.state}")
        install_kick_handler()
        self.state = "running"
        cfg = self.config
        self._running = len(self.vcpus)
        threads = [threading.Thread(target=v.run_loop, name=f"snplab-vcpu{v.index}", daemon=True)
                   for v in self.vcpus[1:]]
        self.t_run0 = t_run0 = time.perf_counter()
        deadline = t_run0 + cfg.timeout_s
        token = WATCHDOG.arm(deadline, self._on_deadline)
        try:
            for t in threads:
                t.start()
            self.vcpus[0].run_loop()
            with self._cond:
                while self._running:
                    rem = deadline - time.perf_counter()
                    if rem <= 0:
                        break
                    self._cond.wait(rem)
                timed_out = self._running > 0
            if timed_out:
                self._on_deadline()
        finally:
            WATCHDOG.disarm(token)
        grace_end = time.perf_counter() + KICK_GRACE_S
        for t, v in zip(threads, self.vcpus[1:], strict=True):
            t.join(max(0.0, min(0.002, grace_end - time.perf_counter())))
            while t.is_alive() and time.perf_counter() < grace_end:
                v.kick(v.status if v.stopping else STOPPED)  # re-kick: a signal may have raced
                t.join(0.005)
        stuck = [v for t, v in zip(threads, self.vcpus[1:], strict=True) if t.is_alive()]
        t_end = time.perf_counter()
        self.timings["run_s"] = t_end - t_run0
        self.timings["total_s"] = t_end - self._t0
        self.result = self._make_result(stuck)
        self._teardown_kvm(leak={v.index for v in stuck})
        self.state = "ran"
        return self.result

    def _on_deadline(self) -> None:
        """The wall-clock limit expired: stop every vCPU still running (re-kicked every 50 ms
        while any is, in case a signal raced with a KVM_RUN entry)."""
        for v in self.vcpus:
            v.kick(TIMEOUT, f"no termination within {self.config.timeout_s:g} s")
        if self.state == "running" and any(v.alive for v in self.vcpus):
            WATCHDOG.arm(time.perf_counter() + 0.05, self._on_deadline)

    def _vcpu_finished(self, vcpu: Vcpu) -> None:
        """Called on each vCPU thread as it ends; a failing vCPU stops the others."""
        others: list[Vcpu] = []
        with self._cond:
            self._running -= 1
            if vcpu.status not in OK_STATUSES and vcpu.status != TIMEOUT and \
                    self._first_failure is None:
                self._first_failure = vcpu
                others = [v for v in self.vcpus if v is not vcpu]
            self._cond.notify_all()
        for v in others:
            v.kick(STOPPED, f"vcpu{vcpu.index} ended with {vcpu.status}")

    def _make_result(self, stuck: list[Vcpu]) -> RunResult:
        vres = []
        for v in self.vcpus:
            r = v.result()
            if v in stuck:
                r["reason"] += " (vCPU thread did not stop; its fds were leaked)"
            vres.append(r)
        failed = [v for v in self.vcpus if v.status not in OK_STATUSES]
        if not failed:
            status, error = "ok", None
        else:
            f = self._first_failure or failed[0]
            status = "crash" if f.status in CRASH_STATUSES else f.status
            where = ""
            if f.rip is not None:
                where = f"; rip {f.rip:#x}" + (f" ({f.symbol})" if f.symbol else "")
            error = f"vcpu{f.index}: {f.status}: {f.reason}{where}"
        params_bytes = self.params.bytes() if self.params is not None else None
        res_layout, res_bytes = None, None
        try:
            view = self.results_view(self.config.results_struct, self.config.results_gpa)
        except (ElfError, DwarfError, GpaOutOfRange, GuestSetupError):
            view = None
        if view is not None:
            res_layout = view.layout
            # Snapshot only results the guest wrote (magic set): a 400 KiB copy of untouched
            # memory would cost more than the rest of a test boot.
            if "magic" not in view or view["magic"]:
                res_bytes = view.bytes()
            view.release()
        return RunResult(
            platform=self.backend.name, status=status, error=error, vcpus=vres,
            events=self.events, timings=dict(self.timings), launch_log=self.launch_log,
            measurement=self.launcher.measurement if self.launcher is not None else None,
            params_layout=self.params.layout if self.params is not None else None,
            params_bytes=params_bytes, results_layout=res_layout, results_bytes=res_bytes)

    # --- results -------------------------------------------------------------------------------
    def results_view(self, struct_name: str = RESULTS_STRUCT, gpa: int | None = None) -> StructView:
        """A StructView of `struct_name` in guest memory at `gpa` (default: params.results_gpa
        for snplab_results, else the ELF symbol named like the struct)."""
        if self.memory is None:
            raise GuestSetupError("guest memory is gone (closed)")
        if not self.elf.has_dwarf:
            raise DwarfError(f"{self.elf.path}: no DWARF")
        layout = self.elf.dwarf.layout(struct_name)
        if gpa is None:
            if struct_name == RESULTS_STRUCT and self.params is not None and \
                    "results_gpa" in self.params and self.params["results_gpa"]:
                gpa = int(self.params["results_gpa"])
            else:
                sym = self.elf.find_symbol(struct_name)
                if sym is None:
                    raise ElfError(f"no GPA for struct {struct_name}: pass gpa= or name a symbol")
                gpa = sym.addr
        return StructView(layout, self.memory.view(gpa, layout.size), gpa=gpa, what=struct_name)

    def results(self, struct_name: str = RESULTS_STRUCT, gpa: int | None = None) -> Any:
        """`struct_name` at `gpa`, decoded via DWARF into plain JSON-able values."""
        v = self.results_view(struct_name, gpa)
        try:
            return v.decode()
        finally:
            v.release()

    # --- teardown ------------------------------------------------------------------------------
    def _teardown_kvm(self, leak: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        for v in self.vcpus:
            if v.index in leak:
                continue
            v.run_struct = None
            try:
                v.fd.close()
            except OSError:
                pass
        if leak:
            return  # a vCPU thread still uses the VM: keep the VM and memory alive
        for obj in (self.vm, self.kvm):
            if obj is not None:
                try:
                    obj.close()
                except OSError:
                    pass
        backend_close = getattr(self.backend, "close", None)
        if callable(backend_close):
            backend_close()  # e.g. the SNP backend's /dev/sev and guest_memfd fds

    def close(self) -> None:
        """Release every fd and mapping (idempotent)."""
        if self.state == "closed":
            return
        if self.state == "running":
            raise GuestSetupError("close() while running")
        self._teardown_kvm()
        if self.params is not None:
            self.params.release()
        if self.memory is not None:
            self.memory.close()
            self.memory = None
        self.state = "closed"

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def vcpu(self, index: int) -> Vcpu:
        return self.vcpus[index]

    def to_json(self) -> dict[str, Any]:
        """The run's record (RunResult.to_json()) plus config, for transcripts."""
        base = self.result.to_json() if self.result is not None else {}
        base["config"] = {"elf": str(self.config.elf), "nvcpus": self.config.nvcpus,
                          "ram_size": self.config.ram_size, "timeout_s": self.config.timeout_s,
                          "policy": self.config.policy, "host_data": self.config.host_data.hex()}
        base["vcpu_init"] = [to_jsonable(s) for s in self.vcpu_states]
        return base

