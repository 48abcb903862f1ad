"""What the controller ships to a lab host, named by content hash so the host caches it.

* the snplab package as a deterministic zip (same sources -> same bytes -> same hash), unpacked
  on the host into ``<workdir>/pkg/<hash>/`` and put on ``sys.path``; unpacked rather than
  imported from the zip so code that reads files next to its modules works unchanged (and Python
  caches its bytecode there, so only the first job server on a host compiles it);
* the guest payload ELF, stored as ``<workdir>/payload/<hash>.elf``.

Shipping itself goes over the job server's own channel (``snplab.remote.protocol``).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import snplab
from snplab.remote.protocol import shipment_marker

HASH_CHARS = 16  # 64 bits of SHA-256: plenty to tell builds apart
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = {".pyc", ".pyo", ".so", ".tmp"}


@dataclass(frozen=True)
class Artifact:
    """Bytes to ship and the content hash that names them on the host."""

    data: bytes
    digest: str  # hex, HASH_CHARS long

    @classmethod
    def of(cls, data: bytes) -> Artifact:
        return cls(data, hashlib.sha256(data).hexdigest()[:HASH_CHARS])


@dataclass(frozen=True)
class Shipment:
    """An artifact and where it lives under the host's workdir: a file, or a zip unpacked into a
    directory (``unpack``), complete once ``<dir>/.complete`` exists."""

    artifact: Artifact
    remote: str  # relative to the workdir
    unpack: bool = False

    @property
    def marker(self) -> str:
        return shipment_marker(self.remote, self.unpack)

    @classmethod
    def package(cls, a: Artifact) -> Shipment:
        return cls(a, f"pkg/{a.digest}", unpack=True)

    @classmethod
    def file(cls, a: Artifact, kind: str, suffix: str) -> Shipment:
        return cls(a, f"{kind}/{a.digest}{suffix}")

    @classmethod
    def tree(cls, a: Artifact, kind: str) -> Shipment:
        return cls(a, f"{kind}/{a.digest}", unpack=True)


def package_zip(package_dir: Path) -> bytes:
    """Deterministic zip of a package directory (sorted names, fixed dates and modes)."""
    root = package_dir.parent
    files = (
        p for p in package_dir.rglob("*")
        if p.is_file() and not (_SKIP_DIRS & set(p.relative_to(root).parts)) and p.suffix not in _SKIP_SUFFIXES
    )
    return files_zip({p.relative_to(root).as_posix(): p.read_bytes() for p in files}, mode=0o644)


def files_zip(files: dict[str, bytes], mode: int = 0o600) -> bytes:
    """Deterministic zip of named byte strings."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, files[name])
    return buf.getvalue()


@lru_cache(maxsize=1)
def snplab_package() -> Artifact:
    """The running snplab package, zipped (computed once per process)."""
    return Artifact.of(package_zip(Path(snplab.__file__).resolve().parent))


def payload(path: Path) -> Artifact:
    """A payload ELF read from disk."""
    return Artifact.of(Path(path).read_bytes())
