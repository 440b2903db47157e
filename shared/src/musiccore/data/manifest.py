"""Manifests, checksums, splits and progress reporting of the offline data kit.

Layout of a kit root (every path stored in a row is relative to the root)::

    <root>/kit.json                 parameters, versions and per-kind counts of the last build
           report.json              bad items (id, reason), counts and timings of the last build
           README.md                what is inside, where it came from, licences
           tunes/tunes.jsonl        one ABC tune per row
           clips/manifest.jsonl     one rendered clip per row, clips/<id>.wav (+ clips/<id>.mid)
           songs/manifest.jsonl     one song per row, songs/<id>/{vocal,accompaniment,mix}.wav

A manifest is written atomically at the end of a build. While a build runs, every finished item is also
appended (flushed) to ``<manifest>.partial``, so a killed build resumes without redoing finished items.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from ..runs import append_jsonl, atomic_path, data_dir

log = logging.getLogger("musiccore.data")

KINDS = ("tunes", "clips", "songs")
SPLITS = ("train", "valid", "test")
#: manifest file of each kind, relative to the kit root
MANIFEST_PATHS = {
    "tunes": "tunes/tunes.jsonl",
    "clips": "clips/manifest.jsonl",
    "songs": "songs/manifest.jsonl",
}


class DataKitError(RuntimeError):
    """A kit that is missing, incomplete or corrupt (the message names the file and the reason)."""


# ----------------------------------------------------------------------------------------------- splits
def split_of(item_id: str, valid_pct: int = 10, test_pct: int = 10) -> str:
    """Deterministic split of an item from a hash of its id (~80/10/10 by default).

    Splits are assigned per *source* (tune or piece) id, never per clip, so that two clips of the same piece
    never land in different splits; the seed does not enter, so every build agrees.
    """
    bucket = int.from_bytes(hashlib.sha256(item_id.encode("utf-8")).digest()[:8], "big") % 100
    if bucket < test_pct:
        return "test"
    if bucket < test_pct + valid_pct:
        return "valid"
    return "train"


# ----------------------------------------------------------------------------------------------- checksums
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha1_text(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def stable_hash(obj: Any, n: int = 16) -> str:
    """Short hex digest of a JSON-serialisable object (sorted keys), stable across processes and runs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:n]


# ----------------------------------------------------------------------------------------------- jsonl
def read_jsonl(path: str | Path, missing_ok: bool = False) -> list[dict]:
    """Rows of a jsonl file. A truncated last line (a killed appender) is ignored; other bad lines raise."""
    path = Path(path)
    if not path.exists():
        if missing_ok:
            return []
        raise DataKitError(f"{path}: manifest not found")
    rows: list[dict] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1 and path.suffix == ".partial":
                break  # the last append of a killed build
            raise DataKitError(f"{path}:{i + 1}: not valid JSON ({e})") from e
    return rows


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write all rows atomically (temp file, then rename): readers never see a half-written manifest."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    return path


class PartialLog:
    """Append-only log of finished rows (``<manifest>.partial``) so that a killed build keeps its work."""

    def __init__(self, manifest: Path):
        self.path = Path(str(manifest) + ".partial")

    def rows(self) -> list[dict]:
        return read_jsonl(self.path, missing_ok=True)

    def append(self, row: dict) -> None:
        append_jsonl(self.path, row)

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


# ----------------------------------------------------------------------------------------------- public API
def kit_root(root: str | Path | None = None) -> Path:
    return Path(root).expanduser() if root is not None else data_dir()


def resolve(row_path: str | Path, root: str | Path | None = None) -> Path:
    """Absolute path of a path stored in a manifest row (rows hold paths relative to the kit root)."""
    p = Path(row_path)
    if p.is_absolute():
        return p
    return kit_root(root) / p


def load_manifest(kind: str, split: str | None = None, root: str | Path | None = None) -> list[dict]:
    """Rows of one manifest of the kit (``kind`` in tunes/clips/songs), optionally of one split.

    Raises :class:`DataKitError` naming the file when the kit (or that part of it) was not built.
    """
    if kind not in MANIFEST_PATHS:
        raise ValueError(f"unknown manifest kind {kind!r}; expected one of {', '.join(KINDS)}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    path = kit_root(root) / MANIFEST_PATHS[kind]
    if not path.exists():
        raise DataKitError(
            f"{path}: no {kind} manifest; build the kit first: python -m musiccore.data build --root {kit_root(root)}"
        )
    rows = read_jsonl(path)
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
    return rows


def verify_rows(kind: str, rows: list[dict], root: Path) -> list[str]:
    """Problems of a manifest: missing files or checksum mismatches (an empty list means the part is intact)."""
    problems: list[str] = []
    for r in rows:
        for field, sha in file_fields(kind, r):
            p = resolve(r[field], root)
            if not p.exists():
                problems.append(f"{r['id']}: {p} is missing")
            elif sha is not None and sha256_file(p) != sha:
                problems.append(f"{r['id']}: {p} does not match its sha256")
        if kind == "tunes" and sha1_text(r.get("abc", "")) != r.get("sha1"):
            problems.append(f"{r['id']}: abc text does not match its sha1")
    return problems


def file_fields(kind: str, row: dict) -> list[tuple[str, str | None]]:
    """(path field, expected sha256 or None) of each file a row points to."""
    if kind == "clips":
        out = [("path", row.get("sha256"))]
        if row.get("midi"):
            out.append(("midi", row.get("midi_sha256")))
        return out
    if kind == "songs":
        sums = row.get("sha256") if isinstance(row.get("sha256"), dict) else {}
        return [(f, sums.get(f)) for f in ("vocal", "accompaniment", "mix") if row.get(f)]
    return []


# ----------------------------------------------------------------------------------------------- progress
class Progress:
    """Progress of a batch job: a tqdm bar when stderr is a terminal, else one log line every ``every`` items
    (readable in a Slurm .out file or a CI log)."""

    def __init__(self, total: int, desc: str, every: int = 25):
        self.total, self.desc, self.every = total, desc, max(1, every)
        self.n = 0
        self.t0 = time.time()
        self.bar = None
        if sys.stderr.isatty() and not os.environ.get("MUSIC_NO_TQDM"):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="item", leave=False)

    def update(self, k: int = 1, note: str = "") -> None:
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
        elif self.n % self.every == 0 or self.n == self.total:
            dt = time.time() - self.t0
            log.info("%s: %d/%d (%.1f s, %.2f items/s)%s", self.desc, self.n, self.total, dt,
                     self.n / max(dt, 1e-9), f" {note}" if note else "")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------------- locking
class FileLock:
    """Exclusive inter-process lock on ``path`` (``fcntl.flock``; released when the holder exits or dies)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh = None

    def __enter__(self) -> "FileLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
