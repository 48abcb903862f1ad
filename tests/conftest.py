"""Fixtures shared by the project's own tests."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest


@pytest.fixture(scope="session")
def emulated_platform_factory() -> Callable[[], Iterator[object]]:
    """Generator factory for a module-scoped emulated platform (skips if it cannot run here)."""

    def make() -> Iterator[object]:
        from snplab.platform import PlatformUnavailable, get_platform

        try:
            p = get_platform("emulated")
        except PlatformUnavailable as e:
            pytest.skip(str(e))
        yield p
        p.close()

    return make


# Loopback OpenSSH servers for the remote tests (module-scoped, started on first use).
from sshd_fixture import sshd, sshd_pair  # noqa: E402,F401
