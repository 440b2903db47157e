"""Import hygiene: the project imports only itself, the shared package and third-party libraries."""

from pathlib import Path

from musiccore.testing import sibling_imports

SRC = Path(__file__).resolve().parents[1] / "src"


def test_no_sibling_imports():
    offenders = sibling_imports(SRC, "chatmusician")
    assert not offenders, f"sibling projects imported (a project may import only itself and musiccore): {offenders}"


def test_package_and_cli_import():
    import chatmusician
    from chatmusician.cli import build_parser

    assert chatmusician.__version__
    assert build_parser().prog == "chatmusician"
