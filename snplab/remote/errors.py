"""Typed errors of the remote runner; every message is one line naming the host and the cause."""

from __future__ import annotations


class RemoteError(Exception):
    """Base class: an SSH host, the inventory or a remote job could not do what was asked.

    The pytest plugin reports a test that raised one of these as an *error* (infrastructure),
    not a failure, with ``str(exc)`` as the whole report.
    """

    def __init__(self, message: str) -> None:
        # Keep messages to one line whatever the lower layer put in them.
        super().__init__(" ".join(str(message).split()))


class InventoryError(RemoteError):
    """The inventory file is missing, not TOML, or describes a host badly."""


class HostKeyUnknown(RemoteError):
    """The host presented a key that is not in known_hosts (and TOFU was not asked for)."""


class HostKeyChanged(RemoteError):
    """The host presented a key different from the one recorded in known_hosts."""


class AuthFailed(RemoteError):
    """The host refused our user key (or the key file is unreadable)."""


class HostUnreachable(RemoteError):
    """TCP connect or the SSH handshake failed or timed out."""


class ConnectionLost(RemoteError):
    """An established connection died while a command was running."""


class CommandTimeout(RemoteError):
    """A remote command ran past its deadline; its process group was killed."""


class RemoteJobFailed(RemoteError):
    """The remote guest job exited without a transcript (bad scenario, crash, missing deps)."""


class LeaseTimeout(RemoteError):
    """No guest slot became free on any selected host before the lease deadline."""
