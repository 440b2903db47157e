"""Import hygiene: the project imports only itself, the shared package and third-party libraries."""

from pathlib import Path

from musiccore.testing import sibling_imports

SRC = Path(__file__).resolve().parents[1] / "src"


def test_no_sibling_imports():
    offenders = sibling_imports(SRC, "mert")
    assert not offenders, f"sibling projects imported (a project may import only itself and musiccore): {offenders}"


def test_package_and_cli_import():
    import mert
    from mert.cli import build_parser

    assert mert.__version__
    assert build_parser().prog == "mert"


def _package_imports(src: Path, package: str) -> dict[str, set[str]]:
    """module -> the package modules it imports, at any depth (function-local imports count too)."""
    import ast

    mods = {p.stem: p for p in (src / package).glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:  # from .x import y
                    deps.add(node.module.split(".")[0])
                elif node.level == 1:  # from . import x, y
                    deps.update(a.name for a in node.names)
                elif node.module and node.module.startswith(package + "."):
                    deps.add(node.module.split(".")[1])
                elif node.module == package:
                    deps.update(a.name for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name.split(".")[1] for a in node.names if a.name.startswith(package + "."))
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_two_modules_import_each_other():
    """Issue 12: prepare.py and train.py imported each other (and extract.py / cli.py); the config tree now lives in
    mert.config and the model-folder lookup in mert.model_folder, so the package's import graph has no cycle."""
    graph = _package_imports(SRC, "mert")
    assert {"config", "prepare", "train", "extract", "cli"} <= set(graph)
    assert "config" in graph["prepare"] and "config" in graph["train"]
    assert not _cycles(graph), f"modules that import each other (directly or through others): {_cycles(graph)}"


def test_cycle_detector_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
