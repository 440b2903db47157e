"""pytest plugin shared by every project (registered through the ``pytest11`` entry point).

Markers
-------
slow    long tests (real-size shapes, long audio); run with ``--runslow`` or ``MUSIC_RUN_SLOW=1``
gpu     need CUDA; skipped when ``torch.cuda.is_available()`` is false
slurm   need a running Slurm controller (``shared/scripts/slurm-local.sh start``); skipped otherwise

The default suite (``make test``) runs everything else on a CPU.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("musiccore")
    group.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


#: True in a ``--runslow`` / ``MUSIC_RUN_SLOW=1`` session (set before test modules are imported).
RUN_SLOW = os.environ.get("MUSIC_RUN_SLOW") == "1"


def pytest_configure(config):
    global RUN_SLOW
    RUN_SLOW = bool(config.getoption("--runslow", default=False)) or os.environ.get("MUSIC_RUN_SLOW") == "1"
    config.addinivalue_line("markers", "slow: long test; run with --runslow or MUSIC_RUN_SLOW=1")
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one")
    config.addinivalue_line("markers", "slurm: needs a running Slurm (shared/scripts/slurm-local.sh start)")


@functools.lru_cache(maxsize=None)
def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def no_cuda_reason() -> str:
    """Why ``torch.cuda.is_available()`` is false, for the skip line (a CPU-only torch build, or no visible device)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if torch.version.cuda is None:
        return f"no CUDA device (torch {torch.__version__} is a CPU-only build)"
    return f"no CUDA device visible (torch {torch.__version__}, CUDA {torch.version.cuda}; CUDA_VISIBLE_DEVICES=" \
           f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r})"


@functools.lru_cache(maxsize=None)
def slurm_available() -> bool:
    """True when ``sinfo`` answers and lists at least one node that is up."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    states = out.stdout.split()
    return out.returncode == 0 and any(s.rstrip("*") in {"idle", "mix", "alloc", "comp"} for s in states)


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--runslow") or os.environ.get("MUSIC_RUN_SLOW") == "1"
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: use --runslow or MUSIC_RUN_SLOW=1"))
        if "gpu" in item.keywords and not cuda_available():
            item.add_marker(pytest.mark.skip(reason=f"gpu: {no_cuda_reason()}"))
        if "slurm" in item.keywords and not slurm_available():
            item.add_marker(pytest.mark.skip(reason="slurm: no running Slurm (shared/scripts/slurm-local.sh start)"))


def property_settings(examples: int = 25, slow_factor: int = 20, **kw):
    """``hypothesis.settings`` of a property test: ``examples`` generated inputs in the default suite (a few
    seconds per family), ``examples * slow_factor`` in a ``--runslow``/``MUSIC_RUN_SLOW=1`` session; no per-example
    deadline (the shared CI machine's timing noise is not a failure). Extra keywords go to ``settings``.

    Example::

        @property_settings(30)
        @given(st.binary())
        def test_reader(data): ...
    """
    from hypothesis import HealthCheck, settings

    kw.setdefault("suppress_health_check", [HealthCheck.too_slow, HealthCheck.data_too_large])
    return settings(max_examples=examples * (slow_factor if RUN_SLOW else 1), deadline=None, **kw)


def require_tool(*names: str) -> None:
    """Skip the calling test when a command-line tool is missing (a bare machine still gets a green run)."""
    for n in names:
        if shutil.which(n) is None:
            pytest.skip(f"{n} not installed (make setup installs it)")


# ------------------------------------------------------------------------------------------------ data kit
#: sizes of the tiny kit that the ``datakit`` fixture builds (shared by every project's tests)
DATAKIT_SIZES = {"tunes": 40, "clips": 6, "clip_seconds": 5.0, "sample_rate": 24000, "seed": 0}


def _datakit_code_version() -> str:
    """Hash of the code that decides the kit's content (data package, abc (module or subpackage), render, audio)."""
    import hashlib
    from pathlib import Path

    here = Path(__file__).parent
    files = sorted((here / "data").glob("*.py")) + sorted((here / "abc").glob("*.py"))
    files += [here / f for f in ("abc.py", "render.py", "audio.py")]
    h = hashlib.sha256()
    for f in files:
        if f.exists():
            h.update(str(f.relative_to(here)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _datakit_songs() -> int:
    """1 song when Festival and the songs step are available, else 0."""
    if shutil.which("text2wave") is None:
        return 0
    try:
        from musiccore.data import songs  # noqa: F401
    except ImportError:
        return 0
    return 1 if hasattr(songs, "build_song") and hasattr(songs, "select_song_sources") else 0


@pytest.fixture(scope="session")
def datakit():
    """Root ``Path`` of a tiny offline data kit (40 tunes, 6 clips of 5 s, 1 song when Festival is installed).

    Built once into ``musiccore.runs.cache_dir()/test-datakit-<hash of sizes and code>`` under a file lock, so two
    pytest processes never build it at the same time; later sessions only verify it (checksums) and reuse it.
    Skips when music21, fluidsynth or a GM soundfont is missing.
    """
    import hashlib
    import json

    pytest.importorskip("music21")
    require_tool("fluidsynth")
    from musiccore.render import ToolNotFoundError, find_soundfont

    try:
        find_soundfont()
    except ToolNotFoundError as e:  # only a missing soundfont skips; any other error is a bug and fails
        pytest.skip(f"datakit needs a GM soundfont: {e}")
    from musiccore.data import build
    from musiccore.data.manifest import FileLock
    from musiccore.runs import cache_dir

    sizes = dict(DATAKIT_SIZES, songs=_datakit_songs())
    tag = hashlib.sha256(json.dumps([sizes, _datakit_code_version()], sort_keys=True).encode()).hexdigest()[:12]
    root = cache_dir() / f"test-datakit-{tag}"
    with FileLock(cache_dir() / f"test-datakit-{tag}.lock"):
        # build() is resumable: on an intact kit it only checks checksums (well under a second)
        build(root, tunes=sizes["tunes"], clips=sizes["clips"], songs=sizes["songs"], seed=sizes["seed"],
              clip_seconds=sizes["clip_seconds"], sample_rate=sizes["sample_rate"], workers=2)
    _prune_old_datakits(root)
    return root


def _prune_old_datakits(keep, max_age_days: float = 7.0) -> None:
    """Delete test kits of older code versions that no session used for ``max_age_days`` (a kit's folder mtime
    changes at every build or check); each is removed under its own lock, so a kit in use is never deleted."""
    import time

    from musiccore.data.manifest import FileLock

    for d in keep.parent.glob("test-datakit-*"):
        if d == keep or not d.is_dir() or time.time() - d.stat().st_mtime < max_age_days * 86400:
            continue
        with FileLock(d.parent / f"{d.name}.lock"):
            if d.exists() and time.time() - d.stat().st_mtime >= max_age_days * 86400:
                shutil.rmtree(d, ignore_errors=True)


PROJECTS = ("mert", "chatmusician", "yue")


def sibling_imports(src_dir, project: str) -> dict[str, list[str]]:
    """``{file: [sibling, ...]}`` for every file under ``src_dir`` that imports a sibling project.

    A project may import only itself, ``musiccore`` and third-party packages, so that the project folder plus
    ``shared/`` can be handed to another team (``make handoff``). Each project's ``tests/test_imports.py`` asserts
    this returns nothing.
    """
    import ast
    from pathlib import Path

    siblings = set(PROJECTS) - {project}
    found: dict[str, list[str]] = {}
    for path in sorted(Path(src_dir).rglob("*.py")):
        roots = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots.add(node.module.split(".")[0])
        if roots & siblings:
            found[str(path.relative_to(src_dir))] = sorted(roots & siblings)
    return found


def import_graph(src_dir, package: str) -> dict[str, set[str]]:
    """``{module: {package modules it imports}}`` for every module of ``package`` under ``src_dir`` (the folder that
    holds ``package/``), read from the source (nothing is imported). Names are dotted (``yue.codec.xcodec``; a
    package's ``__init__.py`` is the package name, ``yue.codec``).

    What counts as an edge ``A -> B``:

    - every ``import`` statement anywhere in ``A``: top level, inside functions (a lazy import is still a dependency)
      and under ``try``; only ``if TYPE_CHECKING:`` blocks are left out (they never run);
    - absolute (``import yue.lm.model``, ``from yue.lm.model import x``) and relative imports of any level
      (``from .x import y``, ``from ..codec import xcodec``, ``from . import x``);
    - ``from P import n`` is an import of the submodule ``P.n`` when that module exists, else of ``P`` itself (``n``
      is a name defined in ``P``);
    - importing ``B`` also runs the ``__init__`` of every package above ``B``: those packages are edges too, except
      the packages that hold ``A`` itself. So ``yue.generate.stage2 -> yue.codec.xcodec`` adds ``yue.codec`` (its
      ``__init__`` runs and re-exports), but ``yue.codec.vocos -> yue.codec.xcodec`` does not add ``yue.codec``.

    A package ``__init__`` that re-exports its submodules therefore has edges to them, and a submodule has an edge
    back to its package only when it asks for it by name (``from yue.codec import XCodec``, ``from . import name``):
    that pair is a real cycle (the submodule reads a half-initialised package), whereas the parent-package import
    that Python does before every submodule is not counted (it would make every re-exporting package a cycle).

    Raises ``ValueError`` naming the file and line for a relative import that climbs above ``package``, and
    ``SyntaxError`` (with the file name) for a file that does not parse.
    """
    import ast
    from pathlib import Path

    root = Path(src_dir) / package
    if not (root / "__init__.py").is_file():
        raise ValueError(f"import_graph: {root} is not a package (no __init__.py)")
    files: dict[str, Path] = {}
    for p in sorted(root.rglob("*.py")):
        parts = (package,) + p.relative_to(root).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p

    def type_checking_only(node: ast.AST) -> bool:
        t = node.test if isinstance(node, ast.If) else None
        return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
            isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")

    def imports(tree: ast.AST):
        # ast.walk, minus the bodies of ``if TYPE_CHECKING:`` (their ``else`` still runs)
        todo = [tree]
        while todo:
            node = todo.pop()
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node
            if type_checking_only(node):
                todo.extend(node.orelse)
            else:
                todo.extend(ast.iter_child_nodes(node))

    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        here = name.split(".") if is_pkg else name.split(".")[:-1]  # the package ``from . import`` means
        own = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}  # packages holding ``name``
        targets: set[str] = set()
        for node in imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
                continue
            if node.level:
                if node.level > len(here):
                    raise ValueError(f"{path}:{node.lineno}: relative import climbs above the package {package!r}")
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for a in node.names:
                sub = f"{base}.{a.name}"
                targets.add(sub if sub in files else base)
        deps: set[str] = set()
        for t in targets:
            while t and t not in files:  # ``import yue.codec.xcodec.thing``-like names: the longest module prefix
                t = t.rpartition(".")[0]
            if not t:
                continue  # not a module of ``package``
            deps.add(t)
            parts = t.split(".")
            deps |= {p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p not in own}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def graph_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import each other, directly or through others: the strongly connected components
    of more than one node (Tarjan), each sorted, the list sorted. ``graph``: ``{node: {nodes it imports}}``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:  # v is the root of a component: pop it
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def import_cycles(src_dir, package: str) -> list[list[str]]:
    """The import cycles of ``package`` under ``src_dir``: ``graph_cycles(import_graph(src_dir, package))`` (see
    ``import_graph`` for what counts as an import). Each project's ``tests/test_imports.py`` asserts it is empty."""
    return graph_cycles(import_graph(src_dir, package))


# ------------------------------------------------------------------------------------------------ packed attention
def packing_leak(model, input_ids, position_ids, varlen: bool = False) -> dict:
    """Does anything flow between the samples of a packed row? (GPU smoke tests of the LM trainers.)

    ``input_ids``, ``position_ids``: a packed batch ``[B, T]`` whose position ids restart at 0 where a sample starts;
    every row must hold such a restart. Every token before a row's first restart is replaced and the logits
    ``[B, T, V]`` are compared: on the tokens after the restart they must not move (attention stays inside each sample;
    every other layer works row by row, so a correct varlen or per-sample attention leaves them unchanged, bf16
    included), on the replaced tokens they must. The control runs the same rows as one causal sequence (continuous
    positions): what a leak looks like.

    ``varlen``: call the model as the LM trainers' collators do, with the sample boundaries of the position ids as
    keyword arguments (:func:`musiccore.attention.varlen_kwargs`: ``cu_seq_lens_q/k``, ``max_length_q/k``; the control
    gets its one-sample-per-row boundaries). transformers' ``flash_attention_2`` needs them to keep the samples of a
    batch of more than one row apart; ``packed_sdpa``, ``sdpa`` and ``eager`` ignore them.

    Returns the largest absolute logit change ``{"later": .., "first": .., "leak_control": ..}``.
    """
    import torch

    dev = next(model.parameters()).device
    ids, pos = input_ids.to(dev), position_ids.to(dev)
    restarts = (pos[:, 1:] == 0).int()
    if not bool(restarts.any(dim=1).all()):
        raise ValueError("packing_leak: every row needs a second sample (a position id 0 after the first token)")
    cut = restarts.argmax(dim=1) + 1  # [B] index where each row's second sample starts
    col = torch.arange(ids.shape[1], device=dev)[None]
    first, later = col < cut[:, None], col >= cut[:, None]
    vocab = model.get_input_embeddings().num_embeddings
    changed = torch.where(first, (ids + 1 + torch.randint_like(ids, vocab - 1)) % vocab, ids)  # every token differs
    one_seq = col.expand_as(ids)
    if varlen:
        from musiccore.attention import varlen_kwargs

        kw, kw_one = varlen_kwargs(pos), varlen_kwargs(one_seq)
    else:
        kw = kw_one = {}
    was_training = model.training
    model.eval()  # no dropout (LoRA's included)
    try:
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            a, b = (model(input_ids=x, position_ids=pos, **kw).logits.float() for x in (ids, changed))
            c, d = (model(input_ids=x, position_ids=one_seq, **kw_one).logits.float() for x in (ids, changed))
    finally:
        model.train(was_training)
    return {"later": float((a - b).abs()[later].max()), "first": float((a - b).abs()[first].max()),
            "leak_control": float((c - d).abs()[later].max())}
