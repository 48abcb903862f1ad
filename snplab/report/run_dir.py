"""The layout of one run's report directory, ``reports/<run-id>/``, and file names of its cases.

Every file is written by the process that ran the test (xdist-safe: one file per test, no shared
file) through ``atomic_write`` (write a temp file, rename), so a run killed half-way never leaves
a half-written file behind.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

_SAFE = re.compile(r"[^A-Za-z0-9_.=+-]+")


def new_run_id() -> str:
    """A run id that sorts by time and is unique per controller process."""
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"


def safe_name(nodeid: str) -> str:
    """A file name for a test id ("suites/test_sizes.py::test_x[a-b]" → "sizes.test_x[a-b]")."""
    path, _, rest = nodeid.partition("::")
    stem = Path(path).stem
    if stem.startswith("test_"):
        stem = stem[5:]
    name = f"{stem}.{rest}".replace("::", ".")
    name = name.replace("[", "(").replace("]", ")")
    return _SAFE.sub("_", name)[:200]


def family_of(nodeid: str) -> str | None:
    """The behaviour family of a suite test: its module name without ``test_`` (None outside
    ``suites/``)."""
    path = nodeid.partition("::")[0].replace(os.sep, "/")
    parts = path.split("/")
    if "suites" not in parts[:-1]:
        return None
    stem = Path(parts[-1]).stem
    return stem[5:] if stem.startswith("test_") else stem


@dataclass
class RunPaths:
    root: Path

    @property
    def tests(self) -> Path:
        return self.root / "tests"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def junit(self) -> Path:
        return self.root / "junit.xml"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def test_json(self, nodeid: str) -> Path:
        return self.tests / f"{safe_name(nodeid)}.json"

    def artifact_dir(self, nodeid: str) -> Path:
        return self.artifacts / safe_name(nodeid)


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and a rename (readers never see half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
