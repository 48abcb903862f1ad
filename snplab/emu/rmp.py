"""The emulated Reverse Map Table: per 4 KiB page, assigned-to-the-guest (private) or not, and
validated or not; plus the host's view of guest memory that the RMP implies.

On SNP hardware with guest_memfd, a private page's contents live in guest_memfd and the host's
ordinary mapping of that GPA is a different (shared) page: KVM's ``kvm_read_guest`` /
``kvm_write_guest`` / ``kvm_clear_guest`` go through the memslot's ``userspace_addr`` whatever the
private attribute (fidelity-review D8). The emulated platform has one memslot (the guest's view),
so the shared backing of private pages is modelled here (``HostView``): **a host access (KVM or
the VMM) to a page that is private in the RMP reads and writes that page's shared backing** — the
guest never sees it while the page stays private; when the guest converts the page to shared
(``to_shared``), what the host wrote there is what it sees, as on hardware. The backing of a page
the host never wrote reads as zeros. So a request page the guest left private reaches the firmware
as a zero page (the firmware answers INVALID_PARAM), and certificates written into a private
buffer never reach the guest while it is private.

Not modelled (documented): the shared backing of a page launched NORMAL holds the pre-launch
plaintext the VMM left in its mapping (``snplab/vmm/snp.py`` writes the source there), which a
host read of it would return on hardware; here it reads as zeros. A private page converted to
shared without host writes keeps the guest's contents here; on hardware it would show the shared
backing (zeros, or that plaintext). The suites use only pages launched ZERO and never written
through the shared mapping, where both agree.

States (the granularity is always 4 KiB; a 2 MiB PVALIDATE on 4 KiB entries is a size mismatch):
- launched pages: private + validated (SNP_LAUNCH_UPDATE validates them);
- every other page: private + not validated (guest_memfd default), until the guest converts it;
- page-state change to shared: not private, not validated; to private: private, not validated.
"""

from __future__ import annotations

from typing import Protocol

from snplab.abi.ghcb import (
    PVALIDATE_FAIL_INPUT,
    PVALIDATE_FAIL_SIZEMISMATCH,
    PVALIDATE_SUCCESS,
)
from snplab.vmm.memory import GpaOutOfRange

PAGE_SIZE = 4096
PAGE_SHIFT = 12
_PRIVATE = 1
_VALIDATED = 2


class Memory(Protocol):
    """Guest memory as the VMM exposes it (``snplab.vmm.memory.GuestMemory``)."""

    def view(self, gpa: int, length: int) -> memoryview: ...


class RmpError(ValueError):
    """A GPA outside the RMP (outside guest RAM)."""


class Rmp:
    def __init__(self, ram_end: int) -> None:
        if ram_end <= 0 or ram_end % PAGE_SIZE:
            raise ValueError(f"RMP size {ram_end:#x} is not a positive page multiple")
        self.npages = ram_end >> PAGE_SHIFT
        self._state = bytearray([_PRIVATE]) * self.npages

    def _index(self, gpa: int) -> int:
        pfn = gpa >> PAGE_SHIFT
        if gpa < 0 or pfn >= self.npages:
            raise RmpError(f"GPA {gpa:#x} is outside the RMP ({self.npages} pages)")
        return pfn

    def contains(self, gpa: int) -> bool:
        return 0 <= gpa and (gpa >> PAGE_SHIFT) < self.npages

    def is_private(self, gpa: int) -> bool:
        return bool(self._state[self._index(gpa)] & _PRIVATE)

    def is_validated(self, gpa: int) -> bool:
        return bool(self._state[self._index(gpa)] & _VALIDATED)

    def launch(self, gpa: int, npages: int) -> None:
        """SNP_LAUNCH_UPDATE: pages become private and validated."""
        self._set(gpa, npages, _PRIVATE | _VALIDATED)

    def set_shared(self, gpa: int, npages: int) -> None:
        self._set(gpa, npages, 0)

    def set_private(self, gpa: int, npages: int) -> None:
        """Shared → private (unvalidated). Pages already private keep their validated bit."""
        first = self._index(gpa)
        self._index(gpa + (npages - 1) * PAGE_SIZE)
        for i in range(first, first + npages):
            if not self._state[i] & _PRIVATE:
                self._state[i] = _PRIVATE

    def _set(self, gpa: int, npages: int, value: int) -> None:
        first = self._index(gpa)
        self._index(gpa + (npages - 1) * PAGE_SIZE)
        self._state[first:first + npages] = bytes([value]) * npages

    def pvalidate(self, gpa: int, huge: bool, validate: bool) -> tuple[int, bool]:
        """PVALIDATE: (rc, cf). CF=1 with rc 0 = the page already had the requested state.

        Simplifications (documented): a GPA outside RAM, a misaligned 2M GPA, or a page that is not
        private (real hardware: an RMP nested page fault) gives FAIL_INPUT; any 2M request gives
        FAIL_SIZEMISMATCH because the emulated RMP holds 4K entries only."""
        if not self.contains(gpa) or (huge and gpa % (2 << 20)):
            return PVALIDATE_FAIL_INPUT, False
        if huge:
            return PVALIDATE_FAIL_SIZEMISMATCH, False
        i = gpa >> PAGE_SHIFT
        if not self._state[i] & _PRIVATE:
            return PVALIDATE_FAIL_INPUT, False
        if bool(self._state[i] & _VALIDATED) == validate:
            return PVALIDATE_SUCCESS, True
        self._state[i] = _PRIVATE | (_VALIDATED if validate else 0)
        return PVALIDATE_SUCCESS, False

    def private_pages(self, gpa: int, length: int) -> list[int]:
        """GPAs of the pages in [gpa, gpa+length) that are private (pages outside RAM skipped)."""
        if length <= 0:
            return []
        first = max(gpa, 0) >> PAGE_SHIFT
        last = min((gpa + length - 1) >> PAGE_SHIFT, self.npages - 1)
        return [i << PAGE_SHIFT for i in range(first, last + 1) if self._state[i] & _PRIVATE]

    def counts(self) -> dict[str, int]:
        s = self._state
        return {"private": sum(1 for b in s if b & _PRIVATE),
                "validated": sum(1 for b in s if b & _VALIDATED),
                "shared": sum(1 for b in s if not b & _PRIVATE)}


class HostView:
    """KVM's ``kvm_read_guest`` / ``kvm_write_guest``: the shared side of guest memory.

    Bounds are checked by the memory object (``GpaOutOfRange``); a private page is read from and
    written to its shared backing (``backing``, zeros until the host writes it), never the guest's
    view (see the module docstring)."""

    def __init__(self, memory: Memory, rmp: Rmp) -> None:
        self.memory = memory
        self.rmp = rmp
        self.dropped_writes = 0  # bytes written to private pages (never seen by the guest while private)
        self.backing: dict[int, bytearray] = {}  # page GPA -> shared backing of a private page

    def _backing(self, page: int) -> bytearray:
        buf = self.backing.get(page)
        if buf is None:
            buf = self.backing[page] = bytearray(PAGE_SIZE)
        return buf

    def read(self, gpa: int, length: int) -> bytes:
        data = bytearray(self.memory.view(gpa, length))
        for page in self.rmp.private_pages(gpa, length):
            lo = max(page, gpa) - gpa
            hi = min(page + PAGE_SIZE, gpa + length) - gpa
            buf = self.backing.get(page)
            off = max(page, gpa) - page
            data[lo:hi] = buf[off:off + hi - lo] if buf is not None else bytes(hi - lo)
        return bytes(data)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        view = self.memory.view(gpa, len(data))
        private = self.rmp.private_pages(gpa, len(data))
        if not private:
            view[:] = data
            return
        src = memoryview(bytes(data))
        pos = gpa
        end = gpa + len(data)
        while pos < end:
            page_end = min((pos | (PAGE_SIZE - 1)) + 1, end)
            if self.rmp.contains(pos) and self.rmp.is_private(pos):
                self.dropped_writes += page_end - pos
                page = pos & ~(PAGE_SIZE - 1)
                self._backing(page)[pos - page:page_end - page] = src[pos - gpa:page_end - gpa]
            else:
                view[pos - gpa:page_end - gpa] = src[pos - gpa:page_end - gpa]
            pos = page_end

    def snapshot_private(self, gpa: int, length: int) -> list[tuple[int, bytes]]:
        """Contents of the private pages in a range (to undo host writes made through another path)."""
        out = []
        for page in self.rmp.private_pages(gpa, length):
            try:
                out.append((page, bytes(self.memory.view(page, PAGE_SIZE))))
            except GpaOutOfRange:  # a page outside a memslot: nothing to protect
                pass
        return out

    def restore(self, snapshot: list[tuple[int, bytes]]) -> int:
        """Put private pages back; returns how many bytes the host had changed in them."""
        changed = 0
        for page, data in snapshot:
            view = self.memory.view(page, PAGE_SIZE)
            if view != data:
                changed += sum(1 for a, b in zip(bytes(view), data) if a != b)
                self._backing(page)[:] = view  # what the VMM wrote went to the shared backing
                view[:] = data
        self.dropped_writes += changed
        return changed

    def to_shared(self, gpa: int, npages: int) -> None:
        """Pages become shared: the guest now sees their shared backing where the host wrote
        one (call before the RMP update)."""
        for i in range(npages):
            page = gpa + i * PAGE_SIZE
            buf = self.backing.pop(page, None)
            if buf is not None:
                self.memory.view(page, PAGE_SIZE)[:] = buf

    def to_private(self, gpa: int, npages: int) -> None:
        """Pages become private: their shared backing starts empty (the VMM discards it)."""
        for i in range(npages):
            self.backing.pop(gpa + i * PAGE_SIZE, None)
