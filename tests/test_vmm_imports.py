"""The VMM's modules import each other without cycles (issue 14 item 5).

The graph is read from the source with ``ast``: every ``import``/``from ... import`` of a
``snplab.vmm`` module anywhere in a module counts, also inside functions and under
``if TYPE_CHECKING:`` (a cycle hidden there is still a circle in the design, and the next
runtime import would close it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = "snplab.vmm"
VMM_DIR = Path(__file__).resolve().parent.parent / "snplab" / "vmm"


def _module_name(path: Path) -> str:
    return PKG if path.name == "__init__.py" else f"{PKG}.{path.stem}"


def import_graph(directory: Path, package: str = PKG) -> dict[str, set[str]]:
    """{module: modules of ``package`` it imports}, from the source files in ``directory``."""
    modules = {(package if p.name == "__init__.py" else f"{package}.{p.stem}"): p
               for p in sorted(directory.glob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    parts = parts[:len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                # "from pkg import name": name may be a submodule
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for t in targets:
                while t and t not in modules and "." in t:
                    t = t.rsplit(".", 1)[0]  # "snplab.vmm.uapi.kvm_run" -> "snplab.vmm.uapi"
                if t in modules and t != mod:
                    graph[mod].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative DFS, white/grey/black)."""
    colour = dict.fromkeys(graph, 0)
    for start in sorted(graph):
        if colour[start]:
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path = [start]
        colour[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                colour[node] = 2
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop(0)
            if colour[nxt] == 1:
                return path[path.index(nxt):] + [nxt]
            if colour[nxt] == 0:
                colour[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(graph[nxt])))
    return None


def test_vmm_has_no_import_cycle() -> None:
    graph = import_graph(VMM_DIR)
    assert {"snplab.vmm.exits", "snplab.vmm.vcpu", "snplab.vmm.guest"} <= set(graph)
    assert "snplab.vmm.vcpu" in graph["snplab.vmm.exits"]  # the graph sees real edges
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in snplab/vmm: " + " -> ".join(cycle or [])


def test_run_statuses_live_in_a_leaf_module() -> None:
    """The status constants are in a module that imports nothing of ours."""
    graph = import_graph(VMM_DIR)
    assert graph["snplab.vmm.status"] == set()
    for user in ("snplab.vmm.exits", "snplab.vmm.guest", "snplab.vmm.vcpu"):
        assert "snplab.vmm.status" in graph[user], user


@pytest.mark.parametrize("sources, cycle", [
    ({"a": "from snplab.vmm import b\n", "b": "import snplab.vmm.c\n", "c": ""}, None),
    ({"a": "from snplab.vmm.b import X\n", "b": "from typing import TYPE_CHECKING\n"
      "if TYPE_CHECKING:\n    from snplab.vmm.a import Y\n"}, ["snplab.vmm.a", "snplab.vmm.b",
                                                             "snplab.vmm.a"]),
    ({"a": "def f():\n    from .b import g\n", "b": "from . import a\n"},
     ["snplab.vmm.a", "snplab.vmm.b", "snplab.vmm.a"]),
    ({"a": "from snplab.vmm.b import X\n", "b": "from snplab.vmm.c import Y\n",
      "c": "import snplab.vmm.a as a\n"},
     ["snplab.vmm.a", "snplab.vmm.b", "snplab.vmm.c", "snplab.vmm.a"]),
])
def test_cycle_finder_on_synthetic_packages(tmp_path: Path, sources: dict[str, str],
                                            cycle: list[str] | None) -> None:
    """The detector finds cycles through TYPE_CHECKING, function-level and relative imports."""
    for name, text in sources.items():
        (tmp_path / f"{name}.py").write_text(text)
    assert find_cycle(import_graph(tmp_path)) == cycle
