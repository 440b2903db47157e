"""The import-cycle checker of ``musiccore.testing`` (used by every project's ``tests/test_imports.py``), and musiccore's
own modules form no import cycle (issue 12: config.py and runs.py used to import each other)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import musiccore
from musiccore.testing import graph_cycles, import_cycles, import_graph, property_settings

SRC = Path(musiccore.__file__).resolve().parents[1]


def _package(root: Path, files: dict[str, str]) -> Path:
    """Write ``{relative path: source}`` under ``root`` and return ``root`` (the ``src`` folder)."""
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


# A package with a subpackage whose __init__ re-exports its submodule, like yue.codec or musiccore.abc.
LAYOUT = {
    "pkg/__init__.py": "from .sub import A\n",
    "pkg/sub/__init__.py": "from .a import A\n",
    "pkg/sub/a.py": "class A:\n    pass\n",
    "pkg/b.py": "from pkg.sub.a import A\n",
    "pkg/c.py": "import os\nimport pkg.b\nfrom . import b\n",
}


def test_planted_cycle_through_a_function_local_two_level_relative_import(tmp_path):
    # pkg.sub.a imports pkg.b lazily, two levels up; pkg.b imports pkg.sub.a (and so runs pkg.sub's __init__)
    src = _package(tmp_path, {**LAYOUT, "pkg/sub/a.py": "class A:\n    def f(self):\n        from ..b import g\n"})
    assert import_cycles(src, "pkg") == [["pkg.b", "pkg.sub", "pkg.sub.a"]]
    assert import_graph(src, "pkg")["pkg.sub.a"] == {"pkg.b"}


def test_reexporting_init_alone_is_not_a_cycle(tmp_path):
    src = _package(tmp_path, LAYOUT)
    g = import_graph(src, "pkg")
    assert g == {"pkg": {"pkg.sub"}, "pkg.sub": {"pkg.sub.a"}, "pkg.sub.a": set(),
                 "pkg.b": {"pkg.sub", "pkg.sub.a"},  # importing pkg.sub.a runs pkg.sub's __init__ too
                 "pkg.c": {"pkg.b"}}  # fmt: skip
    assert import_cycles(src, "pkg") == []


def test_submodule_asking_its_package_for_a_name_is_a_cycle(tmp_path):
    # pkg.sub's __init__ imports .a, and .a reads a name from the half-initialised pkg.sub: a real cycle
    for line in ("from pkg.sub import helper\n", "from . import helper\n"):
        src = _package(tmp_path / str(len(line)), {**LAYOUT, "pkg/sub/a.py": line, "pkg/sub/__init__.py":
                                                    "helper = 1\nfrom .a import A\n"})  # fmt: skip
        assert import_cycles(src, "pkg") == [["pkg.sub", "pkg.sub.a"]], line


def test_absolute_and_submodule_forms_are_edges(tmp_path):
    src = _package(tmp_path, {**LAYOUT, "pkg/sub/a.py": "import pkg.c as c\n"})  # import X.Y as Z
    assert import_cycles(src, "pkg") == [["pkg.b", "pkg.c", "pkg.sub", "pkg.sub.a"]]
    src = _package(tmp_path / "2", {**LAYOUT, "pkg/sub/a.py": "from pkg import c\n"})  # from P import submodule
    assert import_graph(src, "pkg")["pkg.sub.a"] == {"pkg.c"}
    assert import_cycles(src, "pkg") == [["pkg.b", "pkg.c", "pkg.sub", "pkg.sub.a"]]


def test_type_checking_imports_do_not_count_but_their_else_does(tmp_path):
    body = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import x\n"
    src = _package(tmp_path, {**LAYOUT, "pkg/sub/a.py": body})
    assert import_cycles(src, "pkg") == []
    src = _package(tmp_path / "2", {**LAYOUT, "pkg/sub/a.py": body + "else:\n    from pkg.c import y\n"})
    assert import_cycles(src, "pkg") == [["pkg.b", "pkg.c", "pkg.sub", "pkg.sub.a"]]


def test_bad_packages_are_typed_errors_naming_the_file(tmp_path):
    src = _package(tmp_path, {**LAYOUT, "pkg/b.py": "x = 1\nfrom ... import y\n"})
    with pytest.raises(ValueError, match=r"b\.py:2: relative import climbs above the package 'pkg'"):
        import_graph(src, "pkg")
    with pytest.raises(ValueError, match="not a package"):
        import_graph(tmp_path, "nope")
    src = _package(tmp_path / "2", {**LAYOUT, "pkg/b.py": "def (:\n"})
    with pytest.raises(SyntaxError) as e:
        import_graph(src, "pkg")
    assert e.value.filename.endswith("b.py")


def test_cycle_finder_sees_lazy_mutual_imports():
    g = {"musiccore.config": {"musiccore.runs"}, "musiccore.runs": {"musiccore.config"}, "musiccore.audio": set()}
    assert graph_cycles(g) == [["musiccore.config", "musiccore.runs"]]
    assert graph_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert graph_cycles({"a": {"b"}, "b": set()}) == []


@property_settings(60)
@given(st.dictionaries(st.integers(0, 7), st.sets(st.integers(0, 7), max_size=4), max_size=8))
def test_cycle_groups_are_exactly_the_mutually_reachable_modules(edges):
    """Against a brute-force closure: two modules share a group iff each reaches the other."""
    graph = {str(v): {str(w) for w in ws if w in edges} for v, ws in edges.items()}
    reach = {v: set(ws) for v, ws in graph.items()}
    for _ in graph:  # |V| rounds of relaxation give the transitive closure
        for v in graph:
            reach[v] |= {x for w in reach[v] for x in reach[w]}
    expected = sorted({tuple(sorted({v} | {w for w in reach[v] if v in reach[w]})) for v in graph
                       if any(v in reach[w] for w in reach[v] if w != v)})  # fmt: skip
    assert graph_cycles(graph) == [list(c) for c in expected]


def test_musiccore_has_no_import_cycles():
    graph = import_graph(SRC, "musiccore")
    assert {"musiccore.config", "musiccore.runs", "musiccore.atomic", "musiccore.abc.parse", "musiccore.data.builder",
            "musiccore.eval.metrics", "musiccore.slurm"} <= graph.keys()  # fmt: skip
    assert "musiccore.runs" not in graph["musiccore.config"]  # config -> atomic only; runs -> config, atomic
    assert "musiccore.config" in graph["musiccore.slurm"]  # function-local ``from ..config import launch_section``
    assert import_cycles(SRC, "musiccore") == []
