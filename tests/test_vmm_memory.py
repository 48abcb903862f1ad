"""GuestMemory: the bounds-checked GPA accessor and the page-attribute map."""

from __future__ import annotations

import errno
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snplab.vmm.errors import GuestSetupError
from snplab.vmm.events import MapGpaRange, MemoryFault
from snplab.vmm.memory import (
    GpaOutOfRange,
    GuestMemory,
    map_gpa_range_handler,
    memory_fault_handler,
)

RAM = 2 << 20


@pytest.fixture(scope="module")
def mem():  # type: ignore[no-untyped-def]
    m = GuestMemory(RAM)
    m.add_slot(0x40_0000, 0x1000)  # a second slot with a hole before it
    yield m
    m.close()


@settings(max_examples=300, deadline=None)
@given(gpa=st.integers(-2, 2**64), length=st.integers(-2, 2**64))
def test_view_refuses_anything_outside_a_slot(mem: GuestMemory, gpa: int, length: int) -> None:
    """view() returns exactly `length` bytes inside one slot, else raises GpaOutOfRange."""
    inside = length >= 0 and gpa >= 0 and (gpa + length <= RAM or
                                           0x40_0000 <= gpa and gpa + length <= 0x40_1000)
    if inside:
        assert len(mem.view(gpa, length)) == length
    else:
        with pytest.raises(GpaOutOfRange):
            mem.view(gpa, length)


def test_edges_and_round_trip(mem: GuestMemory) -> None:
    mem.write(RAM - 8, b"12345678")
    assert mem.read(RAM - 8, 8) == b"12345678"
    assert mem.view(RAM, 0).nbytes == 0
    for gpa, n in ((RAM - 7, 8), (RAM, 1), (RAM - 8, 0x40_0000), (0x40_0FFF, 2)):
        with pytest.raises(GpaOutOfRange):
            mem.view(gpa, n)
    mem.write_u64(0x1000, 2**64 - 1)
    assert mem.read_u64(0x1000) == 2**64 - 1
    assert mem.hva(0x1001) == mem.hva(0x1000) + 1
    with pytest.raises(GuestSetupError):
        mem.add_slot(0x1000, 0x1000)  # overlaps slot 0


def test_attributes_and_handlers(mem: GuestMemory) -> None:
    mem.set_attributes(0x2000, 3, private=True)
    assert mem.is_private(0x2000) and mem.is_private(0x4FFF) and not mem.is_private(0x5000)
    assert (0x2000, 3) in mem.private_ranges()
    with pytest.raises(GpaOutOfRange):
        mem.set_attributes(RAM - 0x1000, 2, private=True)
    h = map_gpa_range_handler(mem)
    vcpu = SimpleNamespace(index=0)
    assert h(vcpu, MapGpaRange(0x2000, 1, 0)) == 0  # to shared
    assert not mem.is_private(0x2000) and mem.is_private(0x3000)
    assert h(vcpu, MapGpaRange(RAM - 0x1000, 2, 1 << 4)) == errno.EINVAL
    assert h(vcpu, MapGpaRange(0, 2**64 - 1, 1 << 4)) == errno.EINVAL
    f = memory_fault_handler(mem)
    assert f(vcpu, MemoryFault(1 << 3, 0x6010, 8)) is True
    assert mem.is_private(0x6000)
    assert f(vcpu, MemoryFault(1 << 3, RAM + 0x1000, 8)) is False
    mem.set_attributes(0, RAM // 0x1000, private=False)
