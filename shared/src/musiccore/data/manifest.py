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
from typing import Any, Iterable, Iterator

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


class ManifestError(DataKitError):
    """A malformed manifest line or row: ``<file>:<line>: [field '<name>':] <reason>``.

    ``path``, ``line`` (1-based), ``field`` (None for a whole-row problem) and ``reason`` are kept as attributes.
    """

    def __init__(self, path: str | Path, line: int, reason: str, field: str | None = None):
        self.path, self.line, self.field, self.reason = Path(path), line, field, reason
        super().__init__(f"{path}:{line}: " + (f"field {field!r}: " if field else "") + reason)


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


# ----------------------------------------------------------------------------------------------- row schema
#: Fields every row of a kind must have (consumers index them without ``.get``).
REQUIRED_FIELDS = {"tunes": ("id", "abc"), "clips": ("id", "path", "duration", "sample_rate"), "songs": ("id",)}
#: Fields that hold a path relative to the kit root (optional ones may be absent or null).
PATH_FIELDS = {"tunes": (), "clips": ("path", "midi"), "songs": ("vocal", "accompaniment", "mix")}
_JSON_TYPE = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
              list: "a list", dict: "an object"}


def _json_type(v: Any) -> str:
    return _JSON_TYPE.get(type(v), type(v).__name__)


def _path_problem(v: Any) -> str | None:
    """Why ``v`` is not a path relative to the kit root that stays inside it (None when it is one)."""
    from pathlib import PurePosixPath, PureWindowsPath

    if not isinstance(v, str) or not v.strip():
        return f"must be a non-empty path string, got {_json_type(v)} {v!r}"[:200]
    if "\x00" in v:
        return "path contains a NUL character"
    if PurePosixPath(v).is_absolute() or PureWindowsPath(v).is_absolute() or PureWindowsPath(v).drive:
        return f"must be relative to the kit root, got absolute path {v!r}"
    if ".." in PurePosixPath(v.replace("\\", "/")).parts:
        return f"must stay inside the kit root, got {v!r}"
    return None


def row_problems(kind: str, row: Any, required: bool = True) -> list[tuple[str | None, str]]:
    """``[(field or None, reason)]`` of everything wrong with one manifest row of ``kind`` (``[]``: a valid row).

    Checked: the row is a JSON object; ``id`` is a non-empty string that cannot name another folder (no ``/``,
    ``\\``, ``..``); ``split`` (when present) is one of :data:`SPLITS`; path fields are relative and stay inside
    the kit root; checksums are strings; ``duration``/``sample_rate`` are positive finite numbers. With
    ``required`` every field of :data:`REQUIRED_FIELDS` must be present (``verify_rows`` checks only what it uses).
    """
    import math

    if not isinstance(row, dict):
        return [(None, f"row must be a JSON object, got {_json_type(row)}")]
    out: list[tuple[str | None, str]] = []
    need = REQUIRED_FIELDS.get(kind, ("id",)) if required else ("id",)
    for f in need:
        if f not in row or row[f] is None:
            out.append((f, "missing"))
    rid = row.get("id")
    if rid is not None:
        if not isinstance(rid, str) or not rid.strip():
            out.append(("id", f"must be a non-empty string, got {_json_type(rid)} {rid!r}"[:200]))
        elif any(c in rid for c in "/\\\x00") or rid in (".", ".."):
            out.append(("id", f"must not contain path separators or be '.'/'..', got {rid!r}"))
    if "split" in row and row["split"] not in SPLITS:
        out.append(("split", f"must be one of {', '.join(SPLITS)}, got {row['split']!r}"[:200]))
    for f in PATH_FIELDS.get(kind, ()):
        # an optional path field that is null or "" means "no such file" to every reader (``file_fields``)
        if row.get(f) is not None and (row[f] != "" or f in REQUIRED_FIELDS.get(kind, ())):
            why = _path_problem(row[f])
            if why:
                out.append((f, why))
    if kind == "tunes":
        for f in ("abc", "sha1"):
            if row.get(f) is not None and not isinstance(row[f], str):
                out.append((f, f"must be a string, got {_json_type(row[f])}"))
    if kind == "clips":
        for f in ("sha256", "midi_sha256"):
            if row.get(f) is not None and not isinstance(row[f], str):
                out.append((f, f"must be a hex string, got {_json_type(row[f])}"))
        d, sr = row.get("duration"), row.get("sample_rate")
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d <= 0):
            out.append(("duration", f"must be a positive number of seconds, got {d!r}"[:200]))
        if sr is not None and (isinstance(sr, bool) or not isinstance(sr, int) or not 0 < sr <= 768_000):
            out.append(("sample_rate", f"must be an integer in 1..768000, got {sr!r}"[:200]))
    if kind == "songs" and row.get("sha256") is not None:
        sums = row["sha256"]
        if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
            out.append(("sha256", f"must be an object of hex strings per stem, got {_json_type(sums)}"))
    return out


def check_row(kind: str, row: Any, path: str | Path, line: int, required: bool = True) -> dict:
    """``row`` when it is a valid ``kind`` row, else :class:`ManifestError` naming ``path:line``, the field and the
    reason (the first problem of :func:`row_problems`)."""
    probs = row_problems(kind, row, required)
    if probs:
        field, reason = probs[0]
        raise ManifestError(path, line, reason, field)
    return row


# ----------------------------------------------------------------------------------------------- jsonl
def scan_jsonl(path: str | Path) -> Iterator[tuple[int, Any, str | None]]:
    """``(line number, parsed value or None, problem or None)`` for each non-blank line of a jsonl file.

    A line that is not UTF-8 or not JSON gives its problem instead of a value; nothing is raised for content (a
    missing or unreadable file raises :class:`DataKitError`), so a checker can report every bad line in one pass.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise DataKitError(f"{path}: manifest not found") from e
    except OSError as e:
        raise DataKitError(f"{path}: cannot read ({e.strerror or e})") from e
    for i, raw in enumerate(data.split(b"\n")):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield i + 1, None, f"not UTF-8 text (byte {e.start})"
            continue
        try:
            yield i + 1, json.loads(text), None
        except json.JSONDecodeError as e:
            yield i + 1, None, f"not valid JSON ({e})"
        except RecursionError:
            yield i + 1, None, "not valid JSON (nested too deeply)"


def read_jsonl(path: str | Path, missing_ok: bool = False, kind: str | None = None,
               on_bad: str = "raise") -> list[dict]:
    """Rows of a jsonl file. A truncated last line of a ``.partial`` log (a killed appender) is ignored.

    Every other line must be a JSON object (and, with ``kind``, a valid row of that kind: :func:`row_problems`).
    ``on_bad="raise"`` raises :class:`ManifestError` (``file:line: [field 'x':] reason``) at the first bad line;
    ``on_bad="skip"`` logs a warning for each bad line and leaves it out (a build reading its own cache).
    """
    if on_bad not in ("raise", "skip"):
        raise ValueError(f"on_bad must be 'raise' or 'skip', got {on_bad!r}")
    path = Path(path)
    if not path.exists():
        if missing_ok:
            return []
        raise DataKitError(f"{path}: manifest not found")
    rows: list[dict] = []
    scanned = list(scan_jsonl(path))
    for j, (line, obj, problem) in enumerate(scanned):
        if problem is not None and j == len(scanned) - 1 and path.suffix == ".partial":
            break  # the last append of a killed build
        try:
            if problem is not None:
                raise ManifestError(path, line, problem)
            if kind:
                check_row(kind, obj, path, line)
            elif not isinstance(obj, dict):
                raise ManifestError(path, line, f"row must be a JSON object, got {_json_type(obj)}")
            rows.append(obj)
        except ManifestError as e:
            if on_bad == "raise":
                raise
            log.warning("skipping %s", e)
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

    Every row is validated here (:func:`row_problems`), so a consumer can index the required fields and join the
    path fields to the root without further checks.

    Raises:
        DataKitError: the kit (or that part of it) was not built, naming the file.
        ManifestError: a malformed line or row, naming ``file:line``, the field and the reason.
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
    rows = read_jsonl(path, kind=kind)
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
    return rows


def _file_problems(kind: str, r: dict, root: Path) -> list[str]:
    """Missing, empty or mismatching files of one (structurally valid) row, each naming the file."""
    out = []
    for field, sha in file_fields(kind, r):
        p = resolve(r[field], root)
        if not p.exists():
            out.append(f"{p} is missing")
        elif not p.is_file():
            out.append(f"{p} is not a file")
        elif p.stat().st_size == 0:
            out.append(f"{p} is empty (0 bytes)")
        elif sha is not None and sha256_file(p) != sha:
            out.append(f"{p} does not match its sha256")
    if kind == "tunes" and sha1_text(r.get("abc") or "") != r.get("sha1"):
        out.append("abc text does not match its sha1")
    return out


def verify_rows(kind: str, rows: list[dict], root: Path) -> list[str]:
    """Problems of a manifest: malformed rows, missing or empty files, checksum mismatches (``[]``: intact).

    Each problem starts with the row's id (``row <n>`` when it has no usable id)."""
    problems: list[str] = []
    for n, r in enumerate(rows, 1):
        bad = row_problems(kind, r, required=False)
        name = r["id"] if isinstance(r, dict) and not any(f == "id" for f, _ in bad) else f"row {n}"
        if bad:
            problems += [f"{name}: " + (f"field {f!r}: " if f else "") + why for f, why in bad]
            continue
        problems += [f"{name}: {p}" for p in _file_problems(kind, r, Path(root))]
    return problems


def verify_manifest(kind: str, path: str | Path, root: str | Path) -> list[str]:
    """Every problem of one manifest file in one pass, each naming ``file:line``: lines that are not JSON, rows
    that are malformed (:func:`row_problems`, required fields included), files that are missing, empty or do not
    match their checksum. ``[]`` means the part is intact."""
    problems: list[str] = []
    for line, obj, problem in scan_jsonl(path):
        where = f"{path}:{line}"
        if problem is not None:
            problems.append(f"{where}: {problem}")
            continue
        bad = row_problems(kind, obj)
        if bad:
            problems += [f"{where}: " + (f"field {f!r}: " if f else "") + why for f, why in bad]
            continue
        problems += [f"{where}: {obj['id']}: {p}" for p in _file_problems(kind, obj, Path(root))]
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
