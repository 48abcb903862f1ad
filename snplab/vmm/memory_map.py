"""The guest memory map (docs/contract.md §1), identity page tables with a C-bit mask, the GDT,
and the vCPU entry state the VMM sets."""

from __future__ import annotations

import functools
import struct

from snplab.vmm.errors import GuestSetupError

PAGE_SIZE = 0x1000
PML4_GPA = 0x1000
PDPT_GPA = 0x2000
PD_GPA = 0x3000
GDT_GPA = 0x4000
SECRETS_GPA = 0x5000
CPUID_GPA = 0x6000
PAYLOAD_GPA = 0x10_0000
PAYLOAD_END = 0x30_0000       # PT_LOAD segments must fit in [PAYLOAD_GPA, PAYLOAD_END)
STACKS_GPA = 0x30_0000
STACK_SIZE = 0x4000
SCRATCH_GPA = 0x38_0000
SHARED_GPA = 0x40_0000
SHARED_VCPU_STRIDE = 0x10_0000
GHCB_OFFSET = 0x0
REQ_OFFSET = 0x1000
RESP_OFFSET = 0x2000
CERTS_OFFSET = 0x1_0000
CERTS_MAX_PAGES = 128
RESULTS_GPA = 0x80_0000
RESULTS_MAX_SIZE = 0x8_0000
SHARED_END = 0xA0_0000
MIN_RAM_SIZE = SHARED_END
DEFAULT_RAM_SIZE = 0x100_0000
MAX_VCPUS = 4
IDENTITY_MAP_SIZE = 1 << 30   # 0-1 GiB with 2 MiB pages

# Page-table entry bits. U/S is set at every level: the payload runs its computation at CPL3
# (docs/contract.md §1); with CR4.SMEP/SMAP clear its CPL0 part still reaches every page.
PTE_P, PTE_RW, PTE_US, PTE_PS = 1 << 0, 1 << 1, 1 << 2, 1 << 7
PTE_FLAGS = PTE_P | PTE_RW | PTE_US

# GDT selectors and descriptors: null, code64 0x08, data 0x10.
CODE_SEL, DATA_SEL = 0x08, 0x10
GDT_CODE64 = 0x00AF9B000000FFFF  # P, DPL0, S, exec/read/accessed, L, G
GDT_DATA = 0x00CF93000000FFFF    # P, DPL0, S, read/write/accessed, D/B, G

# Entry state (docs/contract.md §1).
CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1, 2, 0x10, 0x20, 1 << 16, 1 << 31
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 5, 1 << 9, 1 << 10
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1, 1 << 8, 1 << 10, 1 << 11
ENTRY_CR0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
ENTRY_CR4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
ENTRY_EFER = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE
ENTRY_RFLAGS = 0x2
APIC_BASE_DEFAULT = 0xFEE0_0000
APIC_BASE_ENABLE, APIC_BASE_BSP = 1 << 11, 1 << 8


def stack_top(vcpu: int) -> int:
    return STACKS_GPA + STACK_SIZE + vcpu * STACK_SIZE


def scratch_gpa(vcpu: int) -> int:
    return SCRATCH_GPA + vcpu * PAGE_SIZE


def shared_slice(vcpu: int) -> int:
    return SHARED_GPA + vcpu * SHARED_VCPU_STRIDE


def ghcb_gpa(vcpu: int) -> int:
    return shared_slice(vcpu) + GHCB_OFFSET


def req_gpa(vcpu: int) -> int:
    return shared_slice(vcpu) + REQ_OFFSET


def resp_gpa(vcpu: int) -> int:
    return shared_slice(vcpu) + RESP_OFFSET


def certs_gpa(vcpu: int) -> int:
    return shared_slice(vcpu) + CERTS_OFFSET


def check_c_bit_mask(mask: int) -> None:
    if mask and (mask & (mask - 1) or not (1 << 32) <= mask <= (1 << 51)):
        raise GuestSetupError(f"c_bit_mask {mask:#x} is not a single bit in 32..51")


@functools.lru_cache(maxsize=8)
def page_tables(c_bit_mask: int) -> bytes:
    """PML4 (0x1000), PDPT (0x2000), PD (0x3000): identity map of 0-1 GiB with 2 MiB pages, user
    accessible, the C-bit on every entry except the PD entries of the shared window
    [SHARED_GPA, SHARED_END)."""
    check_c_bit_mask(c_bit_mask)
    pml4 = bytearray(PAGE_SIZE)
    pdpt = bytearray(PAGE_SIZE)
    struct.pack_into("<Q", pml4, 0, PDPT_GPA | c_bit_mask | PTE_FLAGS)
    struct.pack_into("<Q", pdpt, 0, PD_GPA | c_bit_mask | PTE_FLAGS)
    entries = []
    for i in range(512):
        gpa = i << 21
        shared = SHARED_GPA <= gpa < SHARED_END
        entries.append(gpa | (0 if shared else c_bit_mask) | PTE_FLAGS | PTE_PS)
    pd = struct.pack("<512Q", *entries)
    return bytes(pml4) + bytes(pdpt) + pd


@functools.lru_cache(maxsize=1)
def gdt_page() -> bytes:
    page = bytearray(PAGE_SIZE)
    struct.pack_into("<QQQ", page, 0, 0, GDT_CODE64, GDT_DATA)
    return bytes(page)


GDT_LIMIT = 3 * 8 - 1
