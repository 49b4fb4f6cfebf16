"""The package's import graph: no cycles, and no module reaches into another's private names.

Read from the source with `ast` (nothing is imported): every `from .x import ...` (and
`from neuromask_onnx.x import ...`) of neuromask_onnx/*.py, at module level or inside a
function (a deferred import is still a dependency: the cycle explain -> rewrite -> outputs ->
explain went through one). Imports under `if TYPE_CHECKING:` never run and are left out.
The cycle checks cover the top-level modules (the rule modules of vjp_rules/ call the
driver back on purpose, a deferred import); the private-name check covers vjp_rules/ too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "neuromask_onnx"

KNOWN_CYCLES: dict[frozenset[str], str] = {}
"""Cycles through deferred imports that later parts of issue 11 remove. A new cycle, or one
that grows past its group, fails."""

KNOWN_PRIVATE: dict[tuple[str, str, str], str] = {}


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _walk(nodes: list[ast.stmt], deferred: bool) -> Iterator[tuple[ast.ImportFrom, bool]]:
    """Every ImportFrom that runs, and whether it runs only inside a function."""
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            yield node, deferred
        elif isinstance(node, ast.If) and _is_type_checking(node):
            yield from _walk(node.orelse, deferred)
        else:
            inner = deferred or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            for field in ("body", "orelse", "finalbody"):
                yield from _walk(getattr(node, field, None) or [], inner)
            for handler in getattr(node, "handlers", None) or []:
                yield from _walk(handler.body, inner)


def _targets(node: ast.ImportFrom, modules: set[str]) -> list[tuple[str, list[str]]]:
    """(module imported from, names taken) for an import of the package itself."""
    if node.level == 1:
        mod = node.module
    elif node.level == 0 and node.module and node.module.split(".")[0] == PKG.name:
        mod = node.module.partition(".")[2] or None
    else:
        return []
    names = [a.name for a in node.names]
    if mod is None:  # from . import a, b: the modules a and b, or names of __init__
        subs = [n for n in names if n in modules]
        rest = [n for n in names if n not in modules]
        return [(n, []) for n in subs] + ([("__init__", rest)] if rest else [])
    return [(mod.split(".")[0], names)]


Edges = dict[str, set[str]]
Layout = tuple[Edges, Edges, list[tuple[str, str, str]]]


def graph(pkg: Path) -> Layout:
    """(module-level edges, all edges, private names imported) among pkg/*.py."""
    modules = {p.stem for p in pkg.glob("*.py")}
    top: dict[str, set[str]] = {m: set() for m in modules}
    every: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for path in sorted(pkg.glob("*.py")):
        me = path.stem
        tree = ast.parse(path.read_text(encoding="utf-8"))
        from_pkg: set[str] = set()
        for node, deferred in _walk(tree.body, False):
            for mod, names in _targets(node, modules):
                if mod in modules and mod != me:
                    every[me].add(mod)
                    if not deferred:
                        top[me].add(mod)
                if not names:
                    from_pkg.add(mod)
                private += [(me, mod, n) for n in names
                            if n.startswith("_") and not n.startswith("__")]
        for attr in ast.walk(tree):  # `from . import explain` then `explain._name`
            if (isinstance(attr, ast.Attribute) and isinstance(attr.value, ast.Name)
                    and attr.value.id in from_pkg and attr.attr.startswith("_")
                    and not attr.attr.startswith("__")):
                private.append((me, attr.value.id, attr.attr))
    return top, every, private


def cycles(edges: Edges) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = set()
            while True:
                w = stack.pop()
                on.discard(w)
                scc.add(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(scc)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def package() -> Layout:
    return graph(PKG)


def test_no_cycle_among_module_level_imports(package: Layout) -> None:
    top, _, _ = package
    assert cycles(top) == []


def test_deferred_imports_close_no_new_cycle(package: Layout) -> None:
    _, every, _ = package
    found = cycles(every)
    new = [sorted(c) for c in found if not any(c <= known for known in KNOWN_CYCLES)]
    assert new == [], f"import cycle(s) {new}; break them (files.py is the bottom)"


def test_the_rewriter_and_files_sit_below_the_explainer(package: Layout) -> None:
    _, every, _ = package
    assert every["files"] == set(), "files.py must import nothing of the package"
    assert every["mask"] <= {"errors"}

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for w in every[todo.pop()] - seen:
                seen.add(w)
                todo.append(w)
        return seen

    for low in ("rewrite", "files", "mask", "metrics"):
        assert "explain" not in reach(low), low
    assert "outputs" not in reach("rewrite")  # the cycle explain -> rewrite -> outputs
    assert "baselines" not in reach("metrics")  # metrics needs baselines only for typing


def test_no_module_imports_a_private_name(package: Layout) -> None:
    _, _, private = package
    left = sorted({p for p in private if p not in KNOWN_PRIVATE})
    assert left == [], f"private names imported across modules: {left}; make them public"


def test_the_walker_sees_a_deferred_cycle_and_a_private_import(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from .b import thing\n")
    (tmp_path / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import x\n"
        "def f():\n    try:\n        from .a import _hidden\n    finally:\n        pass\n")
    (tmp_path / "c.py").write_text("from . import a\nprint(a._secret)\n")
    top, every, private = graph(tmp_path)
    assert cycles(top) == []
    assert cycles(every) == [{"a", "b"}]
    assert "c" not in every["b"]  # TYPE_CHECKING imports never run
    assert sorted(private) == [("b", "a", "_hidden"), ("c", "a", "_secret")]


def test_no_rule_module_imports_a_private_name() -> None:
    """`from .pooling import _pool_geometry` between rule modules, or `from ..bodies import
    _x` into them: a helper two modules share is public in the one that defines it."""
    private = []
    for path in sorted((PKG / "vjp_rules").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                private += [f"{path.stem}: {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
    assert private == []
