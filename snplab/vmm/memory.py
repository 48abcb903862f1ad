"""Guest RAM: memslots backed by anonymous mmap, a bounds-checked GPA accessor, and the
private/shared page-attribute map (mirrored into KVM_SET_MEMORY_ATTRIBUTES when KVM has it).

Every GPA access goes through `GuestMemory.view(gpa, length)`: guest-chosen addresses and lengths
are hostile input, so any byte outside a memslot raises `GpaOutOfRange` (docs/contract.md §6).
"""

from __future__ import annotations

import ctypes as C
import mmap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from snplab.vmm import uapi
from snplab.vmm.errors import GuestSetupError, VmmError

if TYPE_CHECKING:
    from snplab.vmm.kvm import VmFd

PAGE_SIZE = 4096
PAGE_SHIFT = 12


class GpaOutOfRange(VmmError):
    """A guest-physical range is not wholly inside one memslot."""

    def __init__(self, gpa: int, length: int) -> None:
        self.gpa = gpa
        self.length = length
        super().__init__(f"GPA range [{gpa:#x}, +{length:#x}) is outside guest RAM")


@dataclass
class MemSlot:
    """One memslot: [gpa, gpa+size) backed by an anonymous mapping at host address `hva`."""

    slot: int
    gpa: int
    size: int
    backing: mmap.mmap
    view: memoryview
    hva: int
    flags: int = 0
    guest_memfd: int | None = None
    guest_memfd_offset: int = 0
    registered: bool = False

    @property
    def end(self) -> int:
        return self.gpa + self.size


@dataclass
class _Attrs:
    private: bytearray = field(default_factory=bytearray)  # one byte per page: 1 = private


class GuestMemory:
    """Guest-physical memory of one VM."""

    def __init__(self, ram_size: int = 16 << 20, base: int = 0) -> None:
        self.slots: list[MemSlot] = []
        self.vm: VmFd | None = None
        self.kvm_attributes = False  # KVM_SET_MEMORY_ATTRIBUTES is used (VM supports PRIVATE)
        self._attrs = _Attrs()
        if ram_size:
            self.add_slot(base, ram_size)

    # --- slots ---------------------------------------------------------------------------------
    def add_slot(self, gpa: int, size: int, flags: int = 0) -> MemSlot:
        """Back [gpa, gpa+size) with a fresh anonymous mapping (not yet given to KVM)."""
        if gpa % PAGE_SIZE or size <= 0 or size % PAGE_SIZE:
            raise GuestSetupError(f"memslot gpa={gpa:#x} size={size:#x} must be page-aligned")
        for s in self.slots:
            if gpa < s.end and s.gpa < gpa + size:
                raise GuestSetupError(f"memslot [{gpa:#x},+{size:#x}) overlaps slot {s.slot}")
        backing = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                            mmap.PROT_READ | mmap.PROT_WRITE)
        view = memoryview(backing)
        hva = C.addressof(C.c_char.from_buffer(backing))
        s = MemSlot(len(self.slots), gpa, size, backing, view, hva, flags)
        self.slots.append(s)
        self.slots.sort(key=lambda x: x.gpa)
        end = max(x.end for x in self.slots)
        if len(self._attrs.private) < end >> PAGE_SHIFT:
            self._attrs.private.extend(bytes((end >> PAGE_SHIFT) - len(self._attrs.private)))
        return s

    def register(self, vm: VmFd) -> None:
        """Give every not-yet-registered slot to KVM (KVM_SET_USER_MEMORY_REGION). A backend
        that needs KVM_SET_USER_MEMORY_REGION2 with a guest_memfd registers the slot itself in
        `setup_vm` (using `slot.hva` as userspace_addr) and sets `slot.registered = True`."""
        self.vm = vm
        for s in self.slots:
            if not s.registered:
                vm.set_user_memory_region(s.slot, s.flags, s.gpa, s.size, s.hva)
                s.registered = True

    @property
    def size(self) -> int:
        return sum(s.size for s in self.slots)

    @property
    def end(self) -> int:
        return max((s.end for s in self.slots), default=0)

    def contains(self, gpa: int, length: int) -> bool:
        try:
            self._slot(gpa, length)
            return True
        except GpaOutOfRange:
            return False

    def _slot(self, gpa: int, length: int) -> MemSlot:
        if gpa < 0 or length < 0:
            raise GpaOutOfRange(gpa, length)
        for s in self.slots:
            if s.gpa <= gpa and gpa + length <= s.end:
                return s
        raise GpaOutOfRange(gpa, length)

    # --- access --------------------------------------------------------------------------------
    def view(self, gpa: int, length: int) -> memoryview:
        """A writable view of [gpa, gpa+length); raises GpaOutOfRange outside a memslot."""
        s = self.slots[0] if len(self.slots) == 1 else None
        if s is not None and 0 <= length and s.gpa <= gpa and gpa + length <= s.end:
            off = gpa - s.gpa
            return s.view[off:off + length]
        s = self._slot(gpa, length)
        off = gpa - s.gpa
        return s.view[off:off + length]

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.view(gpa, len(data))[:] = data

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        self.view(gpa, length)  # range check
        if length:
            C.memset(self.hva(gpa, length), byte, length)

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.view(gpa, 8), "little")

    def write_u64(self, gpa: int, value: int) -> None:
        self.view(gpa, 8)[:] = (value & (2**64 - 1)).to_bytes(8, "little")

    def read_u32(self, gpa: int) -> int:
        return int.from_bytes(self.view(gpa, 4), "little")

    def write_u32(self, gpa: int, value: int) -> None:
        self.view(gpa, 4)[:] = (value & 0xFFFFFFFF).to_bytes(4, "little")

    def hva(self, gpa: int, length: int = 1) -> int:
        """Host virtual address of `gpa` (range-checked)."""
        s = self._slot(gpa, length)
        return s.hva + (gpa - s.gpa)

    # --- page attributes -----------------------------------------------------------------------
    def enable_kvm_attributes(self, vm: VmFd) -> bool:
        """Mirror attribute changes into KVM if the VM supports KVM_MEMORY_ATTRIBUTE_PRIVATE."""
        caps = vm.check_extension_raw(uapi.KVM_CAP_MEMORY_ATTRIBUTES)
        self.vm = vm
        self.kvm_attributes = caps > 0 and bool(caps & uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE)
        return self.kvm_attributes

    def set_attributes(self, gpa: int, npages: int, private: bool) -> None:
        """Mark [gpa, +npages pages) private or shared (raises GpaOutOfRange outside RAM)."""
        if gpa % PAGE_SIZE:
            raise GpaOutOfRange(gpa, npages * PAGE_SIZE)
        self._slot(gpa, npages * PAGE_SIZE)
        if self.kvm_attributes and self.vm is not None:
            attrs = uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE if private else 0
            self.vm.set_memory_attributes(gpa, npages * PAGE_SIZE, attrs)
        first = gpa >> PAGE_SHIFT
        self._attrs.private[first:first + npages] = (b"\x01" if private else b"\x00") * npages

    def is_private(self, gpa: int) -> bool:
        self._slot(gpa, 1)
        return bool(self._attrs.private[gpa >> PAGE_SHIFT])

    def private_ranges(self) -> list[tuple[int, int]]:
        """[(gpa, npages)] of maximal private runs."""
        out: list[tuple[int, int]] = []
        p = self._attrs.private
        i, n = 0, len(p)
        while i < n:
            j = p.find(b"\x01", i)
            if j < 0:
                break
            k = p.find(b"\x00", j)
            k = n if k < 0 else k
            out.append((j << PAGE_SHIFT, k - j))
            i = k
        return out

    # --- teardown ------------------------------------------------------------------------------
    def close(self) -> None:
        """Unmap every slot (idempotent). Views still held elsewhere keep their mapping alive
        until they are released."""
        slots, self.slots = self.slots, []
        for s in slots:
            s.view.release()
            try:
                s.backing.close()
            except BufferError:
                pass
        self.vm = None


def map_gpa_range_handler(memory: GuestMemory) -> Any:
    """Handler for `MapGpaRange`: update the attribute map; 0, or EINVAL for a range outside RAM."""
    import errno

    def handle(vcpu: Any, event: Any) -> int:
        private = bool(event.attrs & uapi.KVM_MAP_GPA_RANGE_ENCRYPTED)
        if event.npages <= 0 or event.npages > (1 << 40):
            return errno.EINVAL
        try:
            memory.set_attributes(event.gpa, event.npages, private)
        except GpaOutOfRange:
            return errno.EINVAL
        return 0

    return handle


def memory_fault_handler(memory: GuestMemory) -> Any:
    """Handler for `MemoryFault`: flip the faulting range to what the guest accessed; re-enter."""

    def handle(vcpu: Any, event: Any) -> bool:
        private = bool(event.flags & uapi.KVM_MEMORY_EXIT_FLAG_PRIVATE)
        start = event.gpa & ~(PAGE_SIZE - 1)
        npages = max(1, (event.gpa + event.size - start + PAGE_SIZE - 1) // PAGE_SIZE)
        try:
            memory.set_attributes(start, npages, private)
        except GpaOutOfRange:
            return False
        return True

    return handle
