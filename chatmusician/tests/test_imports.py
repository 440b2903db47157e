"""Import hygiene: the project imports only itself, the shared package and third-party libraries."""

from pathlib import Path

from musiccore.testing import import_cycles, import_graph, sibling_imports

SRC = Path(__file__).resolve().parents[1] / "src"


def test_no_sibling_imports():
    offenders = sibling_imports(SRC, "chatmusician")
    assert not offenders, f"sibling projects imported (a project may import only itself and musiccore): {offenders}"


def test_package_and_cli_import():
    import chatmusician
    from chatmusician.cli import build_parser

    assert chatmusician.__version__
    assert build_parser().prog == "chatmusician"


def test_no_two_modules_import_each_other():
    """Issue 12: no import cycle among chatmusician's modules (``musiccore.testing.import_graph``: function-local
    and relative imports count; its own tests plant cycles)."""
    graph = import_graph(SRC, "chatmusician")
    assert {"chatmusician.cli", "chatmusician.config", "chatmusician.data", "chatmusician.train"} <= set(graph)
    assert "chatmusician.config" in graph["chatmusician.train"]
    cycles = import_cycles(SRC, "chatmusician")
    assert not cycles, f"modules that import each other (directly or through others): {cycles}"
