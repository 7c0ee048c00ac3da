"""The import graph of ``workbench/``: no cycles between its modules (top-level and
function-local imports alike) and the library never imports the application layer."""
import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "workbench"
#: the application layer: entry points and jobs built on the library
APP = {"workbench.cli", "workbench.runner", "workbench.bench", "workbench.bench_distill", "workbench.bench_peers", "workbench.bench_discrete", "workbench.demo"}


def _modules(root: Path = ROOT) -> dict:
    out = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def import_graph(root: Path = ROOT) -> dict:
    """module -> the intra-package modules it imports (every ``import`` statement, wherever it is)."""
    mods = _modules(root)
    pkg = root.name
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        is_pkg = p.name == "__init__.py"
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = m.split(".") if is_pkg else m.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for t in names:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m and t.split(".")[0] == pkg:
                    graph[m].add(t)
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_cycles_and_local_imports(tmp_path):
    pkg = tmp_path / "workbench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    (pkg / "c.py").write_text("from workbench import b\n")
    g = import_graph(pkg)
    assert g["workbench.a"] == {"workbench.b"} and g["workbench.b"] == {"workbench.a"} and g["workbench.c"] == {"workbench.b"}
    assert cycles(g) == [["workbench.a", "workbench.b"]]


def test_no_import_cycles_in_workbench():
    assert cycles(_workbench_graph()) == []


@functools.lru_cache(maxsize=1)
def _workbench_graph() -> dict:
    return import_graph()


@pytest.mark.parametrize("module", sorted(set(_modules()) - APP))
def test_library_does_not_import_the_application_layer(module):
    bad = _workbench_graph()[module] & APP
    assert not bad, f"{module} imports {sorted(bad)}"
