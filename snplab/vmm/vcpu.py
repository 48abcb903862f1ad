"""One vCPU of a running guest: its thread's run loop, event dispatch, and the kick that stops it.

A vCPU stuck in KVM_RUN is freed by `immediate_exit = 1` plus a SIGUSR1 sent to its thread
(a no-op Python handler is installed, so KVM_RUN returns EINTR and `fcntl.ioctl` raises
InterruptedError). See `install_kick_handler`.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from snplab.vmm import uapi
from snplab.vmm.errors import GuestSetupError
from snplab.vmm.events import Event, KvmRunError
from snplab.vmm.handlers import EventLog, EventRecord, HandlerRegistry, UnhandledExit
from snplab.vmm.status import ERROR, KVM_RUN_ERROR, NOT_STARTED, RUNNING, STOPPED, UNHANDLED_EXIT

if TYPE_CHECKING:
    from snplab.vmm.elf import ElfImage
    from snplab.vmm.kvm import VcpuFd

KICK_SIGNAL = signal.SIGUSR1
EHWPOISON = getattr(errno, "EHWPOISON", 133)  # Linux asm-generic/errno.h; absent from Python


def _noop_handler(signum: int, frame: Any) -> None:
    pass


def ensure_kick_handler() -> bool:
    """Install the SIGUSR1 handler if this is the main thread; True if one is installed."""
    current = signal.getsignal(KICK_SIGNAL)
    if current not in (signal.SIG_DFL, signal.SIG_IGN, None):
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(KICK_SIGNAL, _noop_handler)
    return True


def install_kick_handler() -> None:
    """Install a no-op SIGUSR1 handler (needed to interrupt KVM_RUN). Call from the main thread;
    an existing non-default handler is kept."""
    current = signal.getsignal(KICK_SIGNAL)
    if current not in (signal.SIG_DFL, signal.SIG_IGN, None):
        return
    if threading.current_thread() is not threading.main_thread():
        raise GuestSetupError("SIGUSR1 has no handler and Guest.run() is not on the main "
                              "thread: call snplab.vmm.vcpu.install_kick_handler() from the "
                              "main thread first")
    signal.signal(KICK_SIGNAL, _noop_handler)


class VcpuOwner(Protocol):
    """What a vCPU uses of the guest that owns it (``snplab.vmm.guest.Guest``): a protocol, so
    that this module does not import the guest module (which imports this one)."""

    events: EventLog
    handlers: HandlerRegistry
    exit_decoders: dict[int, Callable[[Vcpu, uapi.kvm_run], None]]
    doorbell_ports: set[int]
    t_run0: float
    elf: ElfImage

    def _vcpu_finished(self, vcpu: Vcpu) -> None: ...


class Vcpu:
    """A vCPU of `guest`: fd, kvm_run, status and the state platform handlers keep on it."""

    def __init__(self, guest: VcpuOwner, index: int, fd: VcpuFd) -> None:
        self.guest = guest
        self.index = index
        self.fd = fd
        self.run_struct = fd.run_struct
        self.status = NOT_STARTED
        self.reason = ""
        self.errno: int | None = None
        self.rip: int | None = None
        self.symbol: str | None = None
        self.exit_reason: str | None = None
        self.nexits = 0
        self.t_end: float | None = None
        self.ghcb_msr = 0             # GHCB MSR value (emulated platform, contract §2)
        self.data: dict[str, Any] = {}  # free-form per-vCPU state for platform handlers
        self._stop = False
        self._kicked = False
        self._await_completion = False
        self._current: EventRecord | None = None
        self._alive = False
        self._kick_lock = threading.Lock()
        self.thread_id: int | None = None

    # --- used by handlers ----------------------------------------------------------------------
    def dispatch(self, event: Event) -> Any:
        """Log `event` and return its handler's answer (nested dispatch allowed). Raises
        UnhandledExit if no handler is registered for a non-terminal event."""
        g = self.guest
        rec = EventRecord(time.perf_counter() - g.t_run0, self.index, event, self._current)
        g.events.append(rec)
        fn = g.handlers.get(type(event))
        if fn is None:
            if event.terminal:
                return None
            rec.error = "unhandled"
            raise UnhandledExit(event)
        prev, self._current = self._current, rec
        try:
            answer = fn(self, event)
        except KvmRunError as e:
            rec.error = str(e)
            raise
        finally:
            self._current = prev
        rec.answer = answer
        return answer

    def stop(self, status: str, reason: str = "") -> None:
        """End this vCPU after the current exit with `status` (first call wins)."""
        if not self._stop:
            self._stop = True
            self.status = status
            self.reason = reason
            self.t_end = time.perf_counter()

    @property
    def stopping(self) -> bool:
        return self._stop

    @property
    def alive(self) -> bool:
        """The vCPU's run loop is executing."""
        return self._alive

    def request_complete(self) -> None:
        """The guest request behind the last certificate exit reached firmware: run the
        completion hooks (the certificate responder drops its lock)."""
        self._await_completion = False
        for fn in self.guest.handlers.completion_hooks:
            fn(self)

    def await_completion(self, immediate_exit: bool = True) -> None:
        """Call `request_complete` when the next KVM_RUN returns (SNP REQ_CERTS lock flow)."""
        self._await_completion = True
        if immediate_exit and self.run_struct is not None:
            self.run_struct.immediate_exit = 1

    # --- kick (other threads) ------------------------------------------------------------------
    def kick(self, status: str, reason: str = "") -> bool:
        """Ask a running vCPU to stop with `status`; True if its thread was signalled."""
        with self._kick_lock:
            if not self._kicked:
                self._kicked = True
                self.stop(status, reason)  # also stops a vCPU whose loop has not started yet
            if not self._alive:
                return False
            run = self.run_struct
            if run is not None:
                run.immediate_exit = 1
            if self.thread_id is not None:
                try:
                    signal.pthread_kill(self.thread_id, KICK_SIGNAL)
                except OSError:
                    return False
            return True

    # --- the loop (vCPU thread) ----------------------------------------------------------------
    def run_loop(self) -> None:
        g = self.guest
        self.thread_id = threading.get_ident()
        with self._kick_lock:
            self._alive = not self._stop
        self.status = RUNNING if not self._stop else self.status
        run = self.run_struct
        assert run is not None
        ioctl = self.fd.io.ioctl
        fd = self.fd.fd
        decoders = g.exit_decoders
        KVM_RUN = uapi.KVM_RUN
        try:
            while not self._stop:
                try:
                    ioctl(fd, KVM_RUN, 0)
                except InterruptedError:
                    if self._kicked or self._stop:
                        break
                    if run.immediate_exit:
                        run.immediate_exit = 0
                    if self._await_completion:
                        self.request_complete()
                    continue
                except OSError as e:
                    err = e.errno or errno.EIO
                    if err in (errno.EFAULT, EHWPOISON) and \
                            run.exit_reason == uapi.KVM_EXIT_MEMORY_FAULT:
                        self.nexits += 1
                        decoders[uapi.KVM_EXIT_MEMORY_FAULT](self, run)
                        continue
                    self.errno = err
                    self.stop(KVM_RUN_ERROR, f"KVM_RUN failed: {os.strerror(err)} (errno {err})")
                    break
                self.nexits += 1
                reason = run.exit_reason
                dec = decoders.get(reason)
                if dec is None:
                    self.exit_reason = uapi.EXIT_REASON_NAMES.get(reason, str(reason))
                    self.stop(UNHANDLED_EXIT, f"unhandled exit reason {reason} "
                                              f"({self.exit_reason}){_exit_detail(run)}")
                    break
                dec(self, run)
        except KvmRunError as e:
            self.errno = e.errno
            self.stop(KVM_RUN_ERROR, str(e))
        except UnhandledExit as e:
            self.stop(UNHANDLED_EXIT, str(e))
        except InterruptedError as e:
            self.stop(ERROR, f"handler interrupted: {e}")
        except Exception as e:  # a handler bug: report it, never kill the process
            tb = traceback.extract_tb(e.__traceback__)[-1]
            self.stop(ERROR, f"handler raised {type(e).__name__}: {e} "
                             f"({os.path.basename(tb.filename)}:{tb.lineno})")
        finally:
            with self._kick_lock:
                self._alive = False
            if self._await_completion:
                try:
                    self.request_complete()
                except Exception:
                    pass
            if not self._stop:
                self.stop(STOPPED)
            self._capture_rip()
            g._vcpu_finished(self)

    def _capture_rip(self) -> None:
        try:
            regs = self.fd.get_regs()
        except Exception:
            return  # protected state (SNP) or a dead VM: no RIP
        self.rip = regs.rip
        self.symbol = self.guest.elf.nearest_symbol(regs.rip)

    def result(self) -> dict[str, Any]:
        return {"index": self.index, "status": self.status, "reason": self.reason,
                "rip": self.rip, "symbol": self.symbol, "exit_reason": self.exit_reason,
                "errno": self.errno, "nexits": self.nexits}


def _exit_detail(run: uapi.kvm_run) -> str:
    if run.exit_reason == uapi.KVM_EXIT_MMIO:
        m = run.mmio
        return f": MMIO {'write' if m.is_write else 'read'} gpa={m.phys_addr:#x} len={m.len}"
    if run.exit_reason == uapi.KVM_EXIT_HYPERCALL:
        return f": hypercall nr={run.hypercall.nr}"
    return ""
