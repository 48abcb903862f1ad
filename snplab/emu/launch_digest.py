"""The firmware's launch digest: SHA-384 chained over one PAGE_INFO per launched 4 KiB page.

SNP firmware ABI 56860 "PAGE_INFO" (shared/reference/verify.md §e.1, errata.md table A and B7):

    0x00 DIGEST_CUR[48]  0x30 CONTENTS[48]  0x60 LENGTH u16 = 0x70  0x62 PAGE_TYPE u8
    0x63 IMI_PAGE u8     0x64 reserved u8, VMPL1/2/3 permissions u8 each (zero under KVM)
    0x68 GPA u64         (VMSA pages: KVM's INITIAL_VMSA_GPA)

CONTENTS is SHA-384 of the page for NORMAL and VMSA pages and 48 zero bytes for every other type.
KVM's launch API has no VMPL-permission field, so the four bytes at 0x64 are always zero here.
"""

from __future__ import annotations

import hashlib
import struct

PAGE_SIZE = 4096
LD_SIZE = 48
PAGE_INFO_SIZE = 0x70

# KVM_SEV_SNP_PAGE_TYPE_* (include/uapi/linux/kvm.h); VMSA is the firmware's own type 2
SNP_PAGE_TYPE_NORMAL = 1
SNP_PAGE_TYPE_VMSA = 2
SNP_PAGE_TYPE_ZERO = 3
SNP_PAGE_TYPE_UNMEASURED = 4
SNP_PAGE_TYPE_SECRETS = 5
SNP_PAGE_TYPE_CPUID = 6
_MEASURED = (SNP_PAGE_TYPE_NORMAL, SNP_PAGE_TYPE_VMSA)

INITIAL_VMSA_GPA = 0xFFFF_FFFF_F000  # arch/x86/kvm/svm/sev.c

_PAGE_INFO = struct.Struct("<48s48sHBB4sQ")
assert _PAGE_INFO.size == PAGE_INFO_SIZE
_VMPL_PERMS_ZERO = bytes(4)


def pack_page_info(digest_cur: bytes, contents: bytes, page_type: int, gpa: int, imi: int = 0) -> bytes:
    return _PAGE_INFO.pack(digest_cur, contents, PAGE_INFO_SIZE, page_type, imi, _VMPL_PERMS_ZERO, gpa)


class LaunchDigest:
    """Running digest; starts at 48 zero bytes (SNP_LAUNCH_START)."""

    def __init__(self) -> None:
        self.value = bytes(LD_SIZE)
        self.pages = 0

    def extend(self, gpa: int, page_type: int, page: bytes | None) -> bytes:
        """Measure one page. ``page`` (4 KiB) is needed for NORMAL and VMSA pages."""
        if gpa % PAGE_SIZE:
            raise ValueError(f"page GPA {gpa:#x} is not 4 KiB aligned")
        if page_type in _MEASURED:
            if page is None or len(page) != PAGE_SIZE:
                raise ValueError(f"page type {page_type} at {gpa:#x} needs the 4 KiB page")
            contents = hashlib.sha384(page).digest()
        else:
            contents = bytes(LD_SIZE)
        self.value = hashlib.sha384(pack_page_info(self.value, contents, page_type, gpa)).digest()
        self.pages += 1
        return self.value
