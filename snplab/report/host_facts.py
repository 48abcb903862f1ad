"""Facts about the machine running the tests, as shown in every report."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any


def host_facts() -> dict[str, Any]:
    """Facts about the machine running the tests (kernel, host name, CPU)."""
    u = os.uname()
    facts: dict[str, Any] = {"hostname": socket.gethostname(), "kernel": u.release,
                             "machine": u.machine}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return facts
