"""Facts about the machine running the tests, as shown in every report."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any


_KB_FACTS: dict[str, dict[str, Any]] = {}


def _kernel_behaviour_facts(release: str) -> dict[str, Any]:
    """The kernel generation this machine's kernel is detected as (release + the
    KVM_X86_SEV_SNP_REQ_CERTS attribute; snplab.host.kernel_generation), probed once."""
    if release not in _KB_FACTS:
        from snplab.host.kernel_generation import host_facts as kernel_behaviour_facts

        _KB_FACTS[release] = kernel_behaviour_facts(release)
    return dict(_KB_FACTS[release])


def host_facts() -> dict[str, Any]:
    """Facts about the machine running the tests (kernel, host name, CPU, kernel generation)."""
    u = os.uname()
    facts: dict[str, Any] = {"hostname": socket.gethostname(), "kernel": u.release,
                             "machine": u.machine, **_kernel_behaviour_facts(u.release)}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return facts
