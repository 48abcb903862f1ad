"""What the controller ships to a lab host, named by content hash so the host caches it.

* the snplab package as a deterministic zip (same sources -> same bytes -> same hash), unpacked
  on the host into ``<workdir>/pkg/<hash>/`` and put on ``PYTHONPATH``; unpacked rather than
  imported from the zip so code that reads files next to its modules works unchanged;
* the guest payload ELF, stored as ``<workdir>/payload/<hash>.elf``.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import snplab

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


# Runs on the host with its python3: unpack pkg zip argv[1] into directory argv[2] atomically,
# then prune sibling versions untouched for a day beyond the newest KEEP.
UNPACK_SCRIPT = """\
import compileall, os, shutil, sys, time, zipfile
KEEP, AGE = 8, 86400
src, final = sys.argv[1], sys.argv[2]
tmp = "%s.tmp.%d" % (final, os.getpid())
zipfile.ZipFile(src).extractall(tmp)
compileall.compile_dir(tmp, quiet=2)  # jobs start faster, even where bytecode writing is off
open(os.path.join(tmp, ".complete"), "w").close()
try:
    os.rename(tmp, final)
except OSError:
    shutil.rmtree(tmp, ignore_errors=True)
    if not os.path.exists(os.path.join(final, ".complete")):
        raise
os.unlink(src)
d = os.path.dirname(final)
entries = sorted((os.path.getmtime(os.path.join(d, n)), n) for n in os.listdir(d))
for mtime, n in entries[:-KEEP]:
    if time.time() - mtime > AGE and ".tmp." not in n and not n.endswith(".zip"):
        shutil.rmtree(os.path.join(d, n), ignore_errors=True)
"""
