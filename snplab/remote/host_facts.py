"""Facts about the host a guest job runs on (kernel, SNP ASIDs, memory) and the capacity they allow.

Runs on the lab host (inside ``python3 -m snplab.vmm.job``), standard library only, reads /proc
and /sys only. Every transcript carries ``host_facts()``; ``--probe`` prints them at preflight.
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path
from typing import Any

# Budget per concurrent guest job: 16 MiB guest RAM (contract.md §1) + the Python VMM process.
JOB_MEMORY_BYTES = 256 << 20
# Memory left to the host whatever the guests need.
HOST_RESERVE_BYTES = 1 << 30
KVM_AMD_PARAMS = Path("/sys/module/kvm_amd/parameters")
# cgroup v2 "misc" controller: SEV-ES ASIDs (SNP guests use the SEV-ES ASID range), Linux >= 5.17.
MISC_CAPACITY = Path("/sys/fs/cgroup/misc.capacity")
MISC_CURRENT = Path("/sys/fs/cgroup/misc.current")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _flat_keyed(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def mem_available() -> int | None:
    """MemAvailable from /proc/meminfo, bytes."""
    for line in (_read(Path("/proc/meminfo")) or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def free_snp_asids() -> int | None:
    """SEV-ES/SNP ASIDs not in use, from the misc cgroup; None where the host does not say."""
    cap = _flat_keyed(_read(MISC_CAPACITY)).get("sev_es")
    if cap is None:
        return None
    return max(0, cap - _flat_keyed(_read(MISC_CURRENT)).get("sev_es", 0))


def kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def derived_capacity(remote_platform: str) -> int:
    """Concurrent guests this host can take now: free memory, and free SNP ASIDs on ``snp``."""
    mem = mem_available()
    by_mem = max(1, (mem - HOST_RESERVE_BYTES) // JOB_MEMORY_BYTES) if mem else 1
    if remote_platform == "snp":
        asids = free_snp_asids()
        if asids is not None:
            return max(0, min(by_mem, asids))
    return int(by_mem)


def host_facts() -> dict[str, Any]:
    """Kernel and host identity recorded in every transcript."""
    u = os.uname()
    return {
        "hostname": socket.gethostname(),
        "kernel": u.release,
        "kernel_version": u.version,
        "machine": u.machine,
        "python": platform.python_version(),
        "sev_snp_param": _read(KVM_AMD_PARAMS / "sev_snp"),
        **_kernel_behaviour(u.release),
    }


def _kernel_behaviour(release: str) -> dict[str, Any]:
    """The kernel generation this host is detected as (snplab.host.kernel_generation)."""
    from snplab.host.kernel_generation import host_facts as kernel_behaviour_facts

    return kernel_behaviour_facts(release)


def probe(remote_platform: str) -> dict[str, Any]:
    """Preflight: host facts plus what limits concurrency."""
    return {
        **host_facts(),
        "kvm": kvm_usable(),
        "cpus": os.cpu_count(),
        "mem_available": mem_available(),
        "free_snp_asids": free_snp_asids(),
        "capacity": derived_capacity(remote_platform),
    }
