"""Import hygiene: the project imports only itself, the shared package and third-party libraries."""

from pathlib import Path

from musiccore.testing import import_cycles, import_graph, sibling_imports

SRC = Path(__file__).resolve().parents[1] / "src"


def test_no_sibling_imports():
    offenders = sibling_imports(SRC, "mert")
    assert not offenders, f"sibling projects imported (a project may import only itself and musiccore): {offenders}"


def test_package_and_cli_import():
    import mert
    from mert.cli import build_parser

    assert mert.__version__
    assert build_parser().prog == "mert"


def test_no_two_modules_import_each_other():
    """Issue 12: prepare.py and train.py imported each other (and extract.py / cli.py); the config tree now lives in
    mert.config and the model-folder lookup in mert.model_folder, so the package's import graph has no cycle
    (``musiccore.testing.import_graph``: function-local and relative imports count; its own tests plant cycles)."""
    graph = import_graph(SRC, "mert")
    assert {"mert.config", "mert.prepare", "mert.train", "mert.extract", "mert.cli"} <= set(graph)
    assert "mert.config" in graph["mert.prepare"] and "mert.config" in graph["mert.train"]
    assert "mert.train" not in graph["mert.prepare"]  # train -> prepare only
    cycles = import_cycles(SRC, "mert")
    assert not cycles, f"modules that import each other (directly or through others): {cycles}"
