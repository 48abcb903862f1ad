"""Layering: the VMM layer (snplab/vmm) never imports the layers above it, snplab.platform and
snplab.remote, not even inside a function (the remote job server lives in snplab/remote)."""

from __future__ import annotations

import ast
from pathlib import Path

VMM = Path(__file__).resolve().parents[1] / "snplab" / "vmm"
FORBIDDEN = ("snplab.platform", "snplab.remote")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, relative imports resolved against snplab.vmm."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = ["snplab", "vmm"][: max(0, 3 - node.level)]
                base = ".".join(parent + ([base] if base else []))
            out += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def violations(directory: Path) -> list[str]:
    """One entry per offending import statement: the first forbidden module it names."""
    found: dict[tuple[str, int], str] = {}
    for p in sorted(directory.glob("*.py")):
        for line, mod in imported_modules(p):
            if any(mod == f or mod.startswith(f + ".") for f in FORBIDDEN):
                found.setdefault((p.name, line), mod)
    return [f"{name}:{line}: imports {mod}" for (name, line), mod in sorted(found.items())]


def test_vmm_does_not_import_platform_or_remote():
    assert sorted(VMM.glob("*.py")), VMM
    assert violations(VMM) == []


def test_checker_sees_every_import_form(tmp_path):
    """The check is not vacuous: plain, from, in-function and relative imports are all caught."""
    (tmp_path / "a.py").write_text("import snplab.remote.host_slots\n")
    (tmp_path / "b.py").write_text("def f():\n    from snplab.platform import get_platform\n")
    (tmp_path / "c.py").write_text("from snplab import remote\nfrom .. import platform\n")
    (tmp_path / "d.py").write_text("from snplab.vmm import guest\nimport snplab.platforms_x\n")
    assert violations(tmp_path) == ["a.py:1: imports snplab.remote.host_slots",
                                    "b.py:2: imports snplab.platform",
                                    "c.py:1: imports snplab.remote",
                                    "c.py:2: imports snplab.platform"]
