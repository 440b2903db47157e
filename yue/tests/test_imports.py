"""Import hygiene: the project imports only itself, the shared package and third-party libraries."""

from pathlib import Path

from musiccore.testing import import_cycles, import_graph, sibling_imports

SRC = Path(__file__).resolve().parents[1] / "src"


def test_no_sibling_imports():
    offenders = sibling_imports(SRC, "yue")
    assert not offenders, f"sibling projects imported (a project may import only itself and musiccore): {offenders}"


def test_package_and_cli_import():
    import yue
    from yue.cli import build_parser

    assert yue.__version__
    assert build_parser().prog == "yue"


def test_no_two_modules_import_each_other():
    """Issue 12: no import cycle among yue's modules, subpackages (codec/, lm/, generate/) included
    (``musiccore.testing.import_graph``: function-local and relative imports count; its own tests plant cycles).
    ``yue demo`` used to call ``yue.cli.main`` while the CLI imports ``yue.demo``; both now call
    ``yue.prepare.prepare_folder``."""
    graph = import_graph(SRC, "yue")
    assert {"yue.cli", "yue.demo", "yue.prepare", "yue.codec", "yue.codec.xcodec", "yue.lm.train",
            "yue.generate.pipeline"} <= set(graph)  # fmt: skip
    assert "yue.prepare" in graph["yue.demo"] and "yue.cli" not in graph["yue.demo"]
    cycles = import_cycles(SRC, "yue")
    assert not cycles, f"modules that import each other (directly or through others): {cycles}"
