"""Run folders and atomic file writes.

A run folder holds everything needed to understand and resume a run::

    <run_dir>/config.yaml     resolved config (written once; a relaunch with another config is refused)
              git.txt         commit and dirty diff stat of the code that ran
              env.txt         python, torch, platform, the lock file (path, sha256) and installed packages
              logs/           train.log (rank 0), per-rank logs
              metrics.jsonl   one JSON object per logged step
              checkpoints/    written by the trainer, atomically

Locations come from the environment, never from code: ``MUSIC_RUNS_DIR`` (default ``./runs``),
``MUSIC_DATA_DIR`` (the offline data kit; default: the checkout's ``data/kit``, see :func:`data_dir`),
``MUSIC_CACHE_DIR`` (caches, default ``~/.cache/musiccore``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator


def cache_dir() -> Path:
    return Path(os.environ.get("MUSIC_CACHE_DIR", Path.home() / ".cache" / "musiccore")).expanduser()


def runs_root() -> Path:
    return Path(os.environ.get("MUSIC_RUNS_DIR", "runs")).expanduser()


def checkout_root() -> Path | None:
    """The monorepo checkout this package runs from (``<root>/shared/src/musiccore``, editable install), else None
    (musiccore installed as a plain package)."""
    root = Path(__file__).resolve().parents[3]  # runs.py -> musiccore -> src -> shared -> <root>
    if (root / "shared" / "src" / "musiccore").is_dir() and (root / "Makefile").is_file():
        return root
    return None


def data_dir() -> Path:
    """Root of the offline data kit: ``MUSIC_DATA_DIR`` when set; else ``<checkout>/data/kit`` when musiccore runs
    from a checkout of the monorepo (where ``make data`` builds it, so a direct ``yue prepare`` or ``python -m
    musiccore.data build`` in a plain shell uses the same kit); else ``<cache>/datakit``."""
    env = os.environ.get("MUSIC_DATA_DIR", "").strip()
    if env:
        return Path(env).expanduser()
    root = checkout_root()
    return root / "data" / "kit" if root is not None else cache_dir() / "datakit"


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on error delete it.

    Readers never see a partial file, and a killed writer leaves only a ``.tmp`` file that the next write
    replaces. ``suffix`` keeps an extension on the temporary name for tools that look at it (e.g. ``.wav``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sfx = suffix if suffix is not None else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{sfx}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def git_info(cwd: str | Path | None = None) -> str:
    """Commit id and dirty file list of the repository holding ``cwd`` (empty text outside git)."""
    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    commit = run("rev-parse", "HEAD")
    if not commit:
        return "not a git checkout\n"
    return f"commit: {commit}\nstatus:\n{run('status', '--porcelain')}\n"


#: Written by shared/scripts/setup.sh into the venv it installs from a lock (``key=value`` lines: lock, sha256,
#: input-sha256, torch-build, installer).
LOCK_MARKER = ".musiccore-lock"


def lock_info(prefix: str | Path | None = None) -> dict[str, str] | None:
    """Which lock the environment at ``prefix`` (default: the running one, ``sys.prefix``) was installed from.

    Returns the marker's fields plus ``state``: ``"matches"`` when the lock file still has the installed sha256,
    ``"changed"`` when it was edited since (``make setup`` re-installs it), ``"missing"`` when it is gone; None when
    the environment was not installed from a lock (setup without one, or a plain pip install).
    """
    import hashlib

    marker = Path(prefix if prefix is not None else sys.prefix) / LOCK_MARKER
    try:
        text = marker.read_text()
    except OSError:
        return None
    info = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    lock = Path(info.get("lock", ""))
    if not info.get("lock") or not lock.is_file():
        info["state"] = "missing"
    else:
        now = hashlib.sha256(lock.read_bytes()).hexdigest()
        info["state"] = "matches" if now == info.get("sha256") else "changed"
    return info


def env_info() -> str:
    """Text of ``env.txt``: python, platform, torch build, the lock the environment was installed from (its path,
    sha256 and whether the file still matches) and every installed distribution with its version."""
    lines = [f"python: {sys.version.split()[0]}", f"platform: {platform.platform()}"]
    try:
        import torch

        lines.append(f"torch: {torch.__version__} cuda={torch.version.cuda} available={torch.cuda.is_available()}")
    except ImportError:
        pass
    lock = lock_info()
    if lock is None:
        lines.append("lock: none (environment not installed from a lock by shared/scripts/setup.sh)")
    else:
        lines.append(f"lock: {lock.get('lock', '?')}")
        lines.append(
            f"lock-sha256: {lock.get('sha256', '?')} ({lock['state']}; input-sha256 {lock.get('input-sha256', '?')},"
            f" torch build {lock.get('torch-build', '?')}, installed by {lock.get('installer', '?')})"
        )
    lines.append("packages:")
    lines += sorted(f"  {d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"])
    return "\n".join(lines) + "\n"


def prepare_run_dir(run_dir: str | Path, cfg: Any, fresh: bool = False) -> Path:
    """Create (or re-open, to resume) a run folder and record config, git state and environment.

    Relaunching with the same resolved config resumes; a different config in an existing folder raises
    (pass ``fresh=True`` to clear it), because resuming a run under another config silently mixes experiments.
    """
    import shutil

    from .config import to_yaml

    run_dir = Path(run_dir)
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    text = to_yaml(cfg)
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists() and cfg_path.read_text() != text:
        raise RuntimeError(
            f"{run_dir}: holds a run with another config; use a new run folder or fresh=true to start over"
        )
    atomic_write_text(cfg_path, text)
    atomic_write_text(run_dir / "git.txt", git_info(Path(__file__).parent))
    atomic_write_text(run_dir / "env.txt", env_info())
    return run_dir


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one JSON line (flushed, so a killed run keeps every finished line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row, default=float) + "\n")
        f.flush()
