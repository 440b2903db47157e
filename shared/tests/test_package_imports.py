"""musiccore's modules form no import cycle (issue 12: config.py and runs.py used to import each other)."""

from __future__ import annotations

import ast
from pathlib import Path

import musiccore

PKG = Path(musiccore.__file__).parent


def _module_graph() -> dict[str, set[str]]:
    """``{module: {musiccore modules it imports}}``, counting imports inside functions too (a lazy import is still
    a dependency). ``from pkg import sub`` counts as importing the submodule ``pkg.sub``."""
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = ("musiccore",) + p.relative_to(PKG).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    graph: dict[str, set[str]] = {}
    for name, p in mods.items():
        pkg = name if p.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(p.read_text(), filename=str(p))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                cands = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
            elif isinstance(node, ast.Import):
                cands = [a.name for a in node.names]
            else:
                continue
            deps |= {c for c in cands if c in mods and c != name}
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_cycle_finder_sees_lazy_mutual_imports():
    g = {"musiccore.config": {"musiccore.runs"}, "musiccore.runs": {"musiccore.config"}, "musiccore.audio": set()}
    assert _cycles(g) == [["musiccore.config", "musiccore.runs"]]


def test_musiccore_has_no_import_cycles():
    graph = _module_graph()
    assert {"musiccore.config", "musiccore.runs", "musiccore.atomic"} <= graph.keys()
    assert "musiccore.runs" not in graph["musiccore.config"]  # config -> atomic only; runs -> config, atomic
    assert _cycles(graph) == []
