"""Import hygiene: the project imports only itself, the shared package and third-party libraries."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
SIBLINGS = {"mert", "chatmusician", "yue"} - {"yue"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_sibling_imports():
    offenders = {str(p.relative_to(SRC)): sorted(_imported_roots(p) & SIBLINGS) for p in SRC.rglob("*.py")}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"sibling projects imported (a project may import only itself and musiccore): {offenders}"


def test_package_and_cli_import():
    import yue
    from yue.cli import build_parser

    assert yue.__version__
    assert build_parser().prog == "yue"
