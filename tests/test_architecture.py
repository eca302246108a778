"""The import graph of vpace/ and kernels/, derived from the source, against docs/ARCHITECTURE.md.

The layer order has one home: the "Layers" table of docs/ARCHITECTURE.md, parsed here. Every import counts:
module level, inside functions and under ``if TYPE_CHECKING:`` (a cycle there still ties two files together).
"""

from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"vpace": "vpace", "kernels": "vpace_kernels"}  # folder -> import name (pyproject's package-dir)


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module of this tree
    where: str  # path:line, for the failure message


def module_files() -> dict[str, Path]:
    """Import name -> file of every module of the two trees (a package is its __init__.py)."""
    out = {}
    for folder, name in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [name, *path.relative_to(ROOT / folder).with_suffix("").parts]
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module of this tree that importing ``name`` loads (``a.b.func`` -> ``a.b``), else None."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports(modules: dict[str, Path], root: Path = ROOT) -> list[Import]:
    """Every import of a module of this tree by a module of this tree (absolute and relative)."""
    out = []
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # from .x import y: relative to the importing package
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                names = [f"{base}.{a.name}" for a in node.names]  # a submodule, or a name in `base`
            else:
                continue
            where = f"{path.relative_to(root)}:{node.lineno}"
            for name in names:
                target = _resolve(name, modules)
                if target is not None and target != mod:
                    out.append(Import(mod, target, where))
    return out


def documented_layers() -> list[list[str]]:
    """The units of each row of the "Layers" table of docs/ARCHITECTURE.md, top row first."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if re.match(r"\|\s*\d+\s*\|", line)]
    assert rows, "docs/ARCHITECTURE.md: no layer rows ('| 1 | `unit`, ... | what |') under '## Layers'"
    assert [int(r[1]) for r in rows] == list(range(1, len(rows) + 1)), "layer rows must be numbered 1, 2, ..."
    return [re.findall(r"`([\w.]+)`", r[2]) for r in rows]


def unit_of(mod: str, units: list[str]) -> str | None:
    """A unit is a module, or a package with everything below it; the root package `vpace` is only its
    __init__ (every other top-level module is a unit of its own)."""
    if mod in units:
        return mod
    below = [u for u in units if u != "vpace" and mod.startswith(u + ".")]
    return max(below, key=len) if below else None


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Import]]:
    modules = module_files()
    return modules, imports(modules)


def test_the_layer_table_covers_every_module_and_names_only_real_ones(graph) -> None:
    modules, _ = graph
    layers = documented_layers()
    units = [u for row in layers for u in row]
    assert len(units) == len(set(units)), f"a unit is listed twice: {units}"
    stale = [u for u in units if u not in modules]
    assert not stale, f"the Layers table names modules that do not exist: {stale}"
    missing = [m for m in modules if unit_of(m, units) is None]
    assert not missing, f"modules missing from the Layers table of docs/ARCHITECTURE.md: {missing}"


def test_imports_point_down_only(graph) -> None:
    """A module imports its own unit or a lower row; never a sibling of its row, never a higher row."""
    modules, edges = graph
    layers = documented_layers()
    units = [u for row in layers for u in row]
    row_of = {u: i for i, row in enumerate(layers) for u in row}
    wrong = []
    for e in edges:
        a, b = unit_of(e.source, units), unit_of(e.target, units)
        if a is None or b is None:
            continue  # not in the table: the test above names it
        if a != b and row_of[b] <= row_of[a]:
            kind = "a sibling" if row_of[b] == row_of[a] else "a higher layer"
            wrong.append(f"{e.where}: {e.source} imports {e.target} ({kind}: row {row_of[a] + 1} -> "
                         f"row {row_of[b] + 1} of docs/ARCHITECTURE.md)")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(set(wrong)))


def _cycles(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one file (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_files(graph) -> None:
    modules, edges = graph
    succ: dict[str, set[str]] = {}
    for e in edges:
        succ.setdefault(e.source, set()).add(e.target)
    cycles = _cycles(sorted(modules), succ)
    detail = [f"{c}: " + ", ".join(sorted({e.where for e in edges if e.source in c and e.target in c}))
              for c in cycles]
    assert not cycles, "files that import each other (TYPE_CHECKING and function-level imports count):\n" + \
        "\n".join(detail)


def test_the_graph_sees_every_kind_of_import(tmp_path) -> None:
    """The parser itself: function-level, TYPE_CHECKING, relative and `from package import submodule`."""
    files = {
        "__init__.py": "",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.b import X\n",
        "b.py": "def f():\n    from . import c\n    import p.d.e\n",
        "c.py": "from .a import name_in_a\n",
        "d/__init__.py": "from ..c import *\n",
        "d/e.py": "import numpy\n",
    }
    modules = {}
    for rel, text in files.items():
        path = tmp_path / "p" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        modules[".".join(["p", *Path(rel).with_suffix("").parts]).removesuffix(".__init__")] = path
    got = {(e.source, e.target) for e in imports(modules, tmp_path)}
    assert got == {("p.a", "p.b"), ("p.b", "p.c"), ("p.b", "p.d.e"), ("p.c", "p.a"), ("p.d", "p.c")}
    succ: dict[str, set[str]] = {}
    for s, t in got:
        succ.setdefault(s, set()).add(t)
    assert _cycles(sorted(modules), succ) == [["p.a", "p.b", "p.c"]]


def _all_names(package: str) -> list[str]:
    """The package's `__all__` as Python computes it (a lazily importing package builds it from a table)."""
    return list(getattr(importlib.import_module(package), "__all__", []))


def test_no_public_name_is_also_a_submodule(graph) -> None:
    """`from vpace.eval import speed` must mean one thing: a package exports no name a submodule has
    (importing the submodule would rebind the package attribute to the module)."""
    modules, _ = graph
    clashes = []
    for mod, path in modules.items():
        if path.name == "__init__.py":
            subs = {m.rpartition(".")[2] for m in modules if m.rpartition(".")[0] == mod}
            clashes += [f"{mod}.{n}" for n in _all_names(mod) if n in subs]
    assert not clashes, f"names that are both a public export and a submodule: {clashes}"
