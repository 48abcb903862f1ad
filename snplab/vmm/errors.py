"""Typed errors raised by the VMM library (callers translate them; the run loop turns guest
behaviour into a status, never into one of these)."""

from __future__ import annotations


class VmmError(Exception):
    """Base class of every error the VMM raises."""


class IoctlError(VmmError):
    """A checking ioctl wrapper failed: names the ioctl and the errno."""

    def __init__(self, name: str, errno_: int, detail: str = "") -> None:
        import os

        self.name = name
        self.errno = errno_
        msg = f"{name}: {os.strerror(errno_)} (errno {errno_})"
        super().__init__(f"{msg}; {detail}" if detail else msg)


class VmDeadError(IoctlError):
    """KVM killed or bugged the VM (EIO and the VM no longer answers CHECK_EXTENSION)."""


class KvmUnavailable(VmmError):
    """/dev/kvm cannot be opened or used."""


class GuestSetupError(VmmError):
    """The guest cannot be built as configured (bad ELF, too many vCPUs, layout overlap...)."""


class ElfError(GuestSetupError):
    """The payload ELF cannot be read or does not fit the memory map."""


class DwarfError(GuestSetupError):
    """A struct, field or enum is missing from the payload's DWARF."""
