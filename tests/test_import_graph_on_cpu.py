"""The package's layers, from its imports: no import circle anywhere in ``glore_ray``; the lower
layers (the Ray-free core ``method/``, ``data/``, and ``train/``, ``engines/``) never import the
stages, Serve or the pipeline; and a stage never imports the pipeline (its paths arrive as an
argument)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "glore_ray"
UPPER = ("glore_ray.stages", "glore_ray.serve", "glore_ray.pipeline")
LOWER = ("glore_ray.method", "glore_ray.data", "glore_ray.train", "glore_ray.engines")


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (at any depth of the file: lazy imports count)."""
    mods = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            graph[m].update(t for t in targets if t in mods and t != m)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    assert cycles(import_graph()) == []


def _arrows(graph: dict[str, set[str]], sources: tuple[str, ...],
            targets: tuple[str, ...]) -> dict[str, list[str]]:
    """The imports of a ``sources`` module into ``targets`` (by module-name prefix)."""
    bad = {m: sorted(t for t in ts if t.startswith(targets))
           for m, ts in graph.items() if m.startswith(sources)}
    return {m: ts for m, ts in bad.items() if ts}


def test_the_lower_layers_import_no_upper_layer():
    assert _arrows(import_graph(), LOWER, UPPER) == {}


def test_no_stage_imports_the_pipeline():
    assert _arrows(import_graph(), ("glore_ray.stages",), ("glore_ray.pipeline",)) == {}


def test_the_checks_can_fail():
    """The walker sees the package, lazy imports included (and would see a circle)."""
    graph = import_graph()
    assert "glore_ray.stages.generation" in graph["glore_ray.stages.policy"]  # inside a function
    assert _arrows(graph, ("glore_ray.pipeline",), ("glore_ray.stages",))
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
