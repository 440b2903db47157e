"""Atomic file writes: a reader never sees a half-written file, a killed writer leaves only a ``.tmp`` file.

The leaf module of musiccore's file plumbing: it imports nothing from the package, so both :mod:`musiccore.config`
(``save_config``) and :mod:`musiccore.runs` (run folders) build on it without importing each other.
:mod:`musiccore.runs` re-exports these names (``from musiccore.runs import atomic_path`` keeps working).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json"]


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
    """Write ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON (one trailing newline) through :func:`atomic_path`."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
