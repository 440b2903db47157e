"""Run folders and atomic file writes.

A run folder holds everything needed to understand and resume a run::

    <run_dir>/config.yaml     resolved config (a relaunch with another config is refused once the folder
                              holds work of the run; see :func:`prepare_run_dir`)
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

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# The atomic writers live in a leaf module so that musiccore.config can use them without importing this one;
# they are re-exported here, where the projects have always imported them from.
from .atomic import atomic_path, atomic_write_json, atomic_write_text
from .config import to_yaml

__all__ = [
    "RunDirError", "SETUP_ENTRIES", "append_jsonl", "atomic_path", "atomic_write_json", "atomic_write_text",
    "cache_dir", "checkout_root", "data_dir", "env_info", "git_info", "lock_info", "prepare_run_dir", "run_outputs",
    "runs_root",
]


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


class RunDirError(RuntimeError):
    """A run folder that holds another run's work (names the folder, the config keys that differ and the way out)."""


#: What :func:`prepare_run_dir` itself writes. A folder that holds nothing else has no work of a run in it: the
#: launch that made it stopped before training (a failed argument or data check), so a relaunch may take it over.
SETUP_ENTRIES = frozenset({"config.yaml", "git.txt", "env.txt", "logs"})


def run_outputs(run_dir: str | Path) -> list[str]:
    """Names of the entries of ``run_dir`` that a run produced (checkpoints, metrics, ...), i.e. everything but
    :data:`SETUP_ENTRIES` and leftover temporary files of atomic writes; ``[]`` for a missing folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir()
                  if p.name not in SETUP_ENTRIES and not (p.name.startswith(".") and ".tmp" in p.name))


def _changed_keys(old_text: str, new_text: str, limit: int = 6) -> str:
    """``a.b: 1 -> 2, ...``: the dotted keys whose values differ between two config YAML texts."""
    import yaml

    def flat(x, prefix=""):
        if isinstance(x, dict):
            out = {}
            for k, v in x.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: x}

    try:
        old, new = flat(yaml.safe_load(old_text) or {}), flat(yaml.safe_load(new_text) or {})
    except yaml.YAMLError:
        return "config.yaml is not valid YAML"
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, "<absent>") != new.get(k, "<absent>"))
    shown = [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in keys[:limit]]
    return ", ".join(shown) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def prepare_run_dir(run_dir: str | Path, cfg: Any, fresh: bool = False, rank: int = 0,
                    timeout: float = 1800.0) -> Path:
    """Create (or re-open, to resume) a run folder and record config, git state and environment.

    In a distributed job only global ``rank`` 0 does this; every other rank waits (up to ``timeout`` seconds, then
    :class:`RunDirError`) until the folder's ``config.yaml`` is this very config, so no rank logs into a folder that
    rank 0 is still clearing (``fresh``) or about to refuse.

    Relaunching with the same resolved config resumes. A different config is refused with :class:`RunDirError`
    (pass ``fresh=True`` to clear the folder) once the folder holds work of a run (:func:`run_outputs`: checkpoints,
    metrics, ...), because resuming under another config silently mixes experiments. A folder with nothing but
    what this function writes belongs to a launch that stopped before training (e.g. a failed data or argument
    check after this call): the corrected relaunch takes it over, with a warning naming the changed keys.
    """
    import logging
    import shutil
    import time

    run_dir = Path(run_dir)
    if rank != 0:
        text, cfg_path, t0 = to_yaml(cfg), run_dir / "config.yaml", time.monotonic()
        while not (cfg_path.is_file() and cfg_path.read_text() == text):
            if time.monotonic() - t0 > timeout:
                raise RunDirError(f"{run_dir}: rank {rank} waited {timeout:.0f} s for rank 0 to write this run's "
                                  "config.yaml (did rank 0 stop with an error?)")
            time.sleep(0.5)
        return run_dir
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: exists and is not a folder")
    text = to_yaml(cfg)
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists() and cfg_path.read_text() != text:
        changed = _changed_keys(cfg_path.read_text(), text)
        work = run_outputs(run_dir)
        if work:
            raise RunDirError(
                f"{run_dir}: holds a run with another config ({changed}) and its work ({', '.join(work[:5])}); "
                "use a new run folder or fresh=true to start over"
            )
        logging.getLogger(__name__).warning(
            "%s: replacing the config of a launch that stopped before training (%s)", run_dir, changed)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
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
