"""The package's import graph, read from the source (ast), has no cycle.

Every ``import marnn...`` and ``from ... import ...`` of a marnn module counts,
at module level and inside functions alike: an import moved into a function
still makes the two modules depend on each other. A cycle is named with the
file and line of each of its imports.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "marnn"

def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _add(edges: dict[str, int], name: str, target: str | None, line: int) -> None:
    """Module ``name`` imports ``target`` at ``line``."""
    if target is None or target == name:
        return
    edges.setdefault(target, line)
    # importing marnn.a.b runs marnn/a/__init__.py first: a dependency too, unless it is
    # a package this module belongs to (which is being imported already)
    parent = target.rpartition(".")[0]
    while parent and not (name == parent or name.startswith(parent + ".")):
        edges.setdefault(parent, line)
        parent = parent.rpartition(".")[0]


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {module it imports: line of the first such import}}`` over the marnn package."""
    modules = _modules()

    def known(name: str) -> str | None:  # the module a dotted name refers to (a name in a module: the module)
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, int] = {}

        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "marnn" or alias.name.startswith("marnn."):
                        _add(edges, name, known(alias.name), node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source != "marnn" and not source.startswith("marnn."):
                    continue
                for alias in node.names:  # "from X import Y": module X.Y if there is one, else X
                    _add(edges, name, known(f"{source}.{alias.name}"), node.lineno)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def describe(part: list[str], graph: dict[str, dict[str, int]]) -> str:
    """One closed path through the component, with the file and line of each import."""
    members = set(part)
    start, path, seen = part[0], [part[0]], {part[0]}
    while True:
        here = path[-1]
        nxt = sorted(w for w in graph[here] if w in members)
        back = start if start in nxt and len(path) > 1 else None
        step = back or next((w for w in nxt if w not in seen), None) or nxt[0]
        path.append(step)
        if step in seen:
            path = path[path.index(step):]
            break
        seen.add(step)
    modules = _modules()
    hops = [f"{a} -> {b} ({modules[a].relative_to(PACKAGE.parent)}:{graph[a][b]})"
            for a, b in zip(path[:-1], path[1:], strict=True)]
    return f"{', '.join(part)}: " + "; ".join(hops)


def test_the_walker_sees_imports_inside_functions_and_package_parents():
    graph = import_graph()
    assert "marnn.registry" in graph["marnn.scales"]  # module level
    assert "marnn.train" in graph["marnn.train.formal"]  # "from . import ..." in a submodule: the package
    assert "marnn.models.stack_rnn" in graph["marnn.analysis.weights"]  # under TYPE_CHECKING
    assert "marnn.train.run" in graph["marnn.grid"]  # inside a function
    assert "marnn.kernels" in graph["marnn.models.stack_rnn"]  # marnn.kernels.fused_lstm runs its package first
    toy = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert cycles(toy) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(part, graph) for part in found)


def test_the_rules_sit_below_the_tables():
    """marnn.verdicts (the comparison rule) reads marnn.report's tables; report never imports verdicts."""
    graph = import_graph()
    assert "marnn.report" in graph["marnn.verdicts"] and "marnn.verdicts" not in graph["marnn.report"]


@pytest.mark.parametrize("leaf", ["marnn.registry", "marnn.paths"])
def test_leaves_import_nothing_of_marnn(leaf):
    assert import_graph()[leaf] == {}


def test_kernels_sit_below_the_models():
    """The kernels make the models' maths fast; they never import the models (or anything above them)."""
    graph = import_graph()
    for name, edges in graph.items():
        if name == "marnn.kernels" or name.startswith("marnn.kernels."):
            above = sorted(t for t in edges if not (t.startswith("marnn.kernels") or t == "marnn.registry"))
            assert not above, f"{name} imports {above}"
