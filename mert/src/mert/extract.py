"""Feature extraction at any length: audio files, folders or manifests -> per-item feature files + an index.

Audio is streamed in windows (default 5 s, the training context) with :func:`musiccore.audio.iter_windows`, so
memory does not grow with the input length: a window holds ``W = rf + (F - 1) * 320`` samples (F = frames per
window, rf = 400), consecutive windows start ``H = (F - overlap_frames) * 320`` samples apart, and every frame of
the whole file is produced by exactly one window (with overlap, by the window where it sits furthest from the
edge). Frame-level output therefore has exactly ``floor((N - 400) / 320) + 1`` frames, as a whole-file forward
would; inside each window the model sees only that window's context (as in training).

Output per input (``<out>/<id>.npy`` or ``.safetensors``, tensor ``features``):
    pooling "none":   [L, T, D]  frame-level, L = selected layers (hidden-state indices, 0 = encoder input)
    pooling "mean":   [L, D]     time average of those frames
    pooling "window": [L, K, D]  one time average per window (MARBLE style; tails under ``min_window_s`` dropped)
plus one JSON line per finished item in ``index.jsonl`` (``index-<i>-of-<n>.jsonl`` for ``--shard i/n``) and one
per failed item in ``failed[-<i>-of-<n>].jsonl``. A re-run skips items whose output is a complete feature file of
the same settings (header and size checked; anything else under that name is extracted again and reported); files
are written atomically, so a killed run never leaves a partial output. Output ids are relative paths checked to stay
inside the output folder (``../x``, absolute paths, empty ids, NUL are refused per row, reported, skipped).

Input handling (documented behaviour, tested): any channel count is averaged to mono; any sample rate is
resampled (soxr) to the model's rate with a warning; silent input is processed and flagged ``silent`` in the
index; corrupt/empty/non-finite files and inputs shorter than one frame (400 samples at the model rate) are
reported in the failed file and skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from .modeling_mert import MERTModel

logger = logging.getLogger(__name__)

AUDIO_EXTS = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif"}
POOLINGS = ("none", "mean", "window")
FORMATS = ("npy", "safetensors")
SETTINGS_NAME = "extract_config.json"


MIN_SAMPLE_RATE = 1000
"""Lowest input rate accepted (below it a file is not audio, and resampling to 24 kHz would multiply its length)."""
MAX_SAMPLE_RATE = 768_000
MAX_CHANNELS = 64
"""More "channels" than this in an in-memory [C, N] array is almost surely an [N, C] array: refused."""


class ExtractError(ValueError):
    """A problem with one input (too short, unreadable) or with the extraction settings."""


def check_sample_rate(sr: Any, where: str) -> int:
    """``sr`` as an int in [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE], else an :class:`ExtractError` naming ``where``."""
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)):
        raise ExtractError(f"{where}: sample rate must be an integer number of Hz, got {sr!r}")
    if not MIN_SAMPLE_RATE <= int(sr) <= MAX_SAMPLE_RATE:
        raise ExtractError(f"{where}: sample rate {int(sr)} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    return int(sr)


# ============================================================================================ options, items


@dataclass
class ExtractOptions:
    """Settings of one extraction (saved as ``extract_config.json``; a re-run into the folder must match)."""

    layers: list[int] | None = None
    """Hidden-state indices to keep (0 = encoder input, L = last; negatives count from the end). None = all."""
    pooling: str = "none"
    """"none" (frames), "mean" (time average), "window" (one average per window)."""
    window_s: float = 5.0
    """Context the model sees per window (the training crop is 5 s)."""
    overlap_s: float = 0.0
    """Overlap between consecutive windows."""
    min_window_s: float = 1.0
    """pooling "window" only: a last window shorter than this is dropped (MARBLE drops tails under 1 s)."""
    batch_size: int = 8
    """Windows per forward pass (consecutive windows of equal length are batched, also across files)."""
    fmt: str = "npy"
    """"npy" or "safetensors"."""
    dtype: str = "float32"
    """Stored dtype: "float32" or "float16"."""
    normalize: bool = False
    """Zero-mean/unit-variance per window before the model (HF processor do_normalize; MARBLE: on for 95M/v0)."""

    def validate(self) -> None:
        if self.pooling not in POOLINGS:
            raise ExtractError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.fmt not in FORMATS:
            raise ExtractError(f"format must be one of {FORMATS}, got {self.fmt!r}")
        if self.dtype not in ("float32", "float16"):
            raise ExtractError(f"dtype must be float32 or float16, got {self.dtype!r}")
        if not (self.window_s > 0 and math.isfinite(self.window_s)):
            raise ExtractError(f"window_s must be > 0, got {self.window_s}")
        if not (0 <= self.overlap_s < self.window_s):
            raise ExtractError(f"overlap_s must be in [0, window_s), got {self.overlap_s}")
        if self.batch_size < 1:
            raise ExtractError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Item:
    """One input: ``id`` names the output file (may contain '/'), ``path`` the audio."""

    id: str
    path: Path


@dataclass
class ExtractSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    redone: dict[str, str] = field(default_factory=dict)
    """Items whose existing output was not a valid feature file of these settings (reason): extracted again."""
    windows: int = 0
    audio_seconds: float = 0.0
    seconds: float = 0.0
    max_window_samples: int = 0

    def line(self) -> str:
        rate = self.audio_seconds / self.seconds if self.seconds > 0 else float("nan")
        return (
            f"extracted {len(self.done)}, skipped (already done) {len(self.skipped)}, failed {len(self.failed)}"
            + (f", redone (invalid earlier output) {len(self.redone)}" if self.redone else "") + "; "
            f"{self.windows} windows, {self.audio_seconds:.1f} s of audio in {self.seconds:.1f} s ({rate:.1f}x real time)"
        )


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n (Slurm: ``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``)."""
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError as e:
        raise ExtractError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from e
    if n < 1 or not 0 <= i < n:
        raise ExtractError(f"--shard {text}: need 0 <= i < n")
    return i, n


@dataclass
class BadRow:
    """A manifest row (or input) that names no usable item: skipped and reported, the rest of the batch goes on."""

    where: str
    """``<manifest>:<line>`` (or the input as given)."""
    error: str
    """Why it was refused (names the field)."""


def check_item_id(iid: Any, where: str) -> str:
    """``iid`` if it names a file strictly inside the output folder, else an :class:`ExtractError` naming ``where``.

    An id is a relative POSIX path: not empty, no empty, ``.`` or ``..`` parts (so ``../../x`` and ``/abs`` cannot
    escape ``--out``), no NUL or other control characters, no part longer than 200 bytes (file-name limits).
    """
    if not isinstance(iid, str):
        raise ExtractError(f"{where}: field 'id' must be a string, got {type(iid).__name__} {iid!r}")
    if not iid:
        raise ExtractError(f"{where}: field 'id' is empty")
    if any(ord(c) < 32 or c == "\x7f" for c in iid):
        raise ExtractError(f"{where}: field 'id' {iid!r} contains NUL or control characters")
    parts = iid.split("/")
    if iid.startswith("/"):
        raise ExtractError(f"{where}: field 'id' {iid!r} is an absolute path; ids name files inside --out")
    if any(p in ("", ".", "..") for p in parts):
        raise ExtractError(f"{where}: field 'id' {iid!r} has an empty, '.' or '..' part; ids must stay inside --out")
    if any(len(p.encode("utf-8", "surrogateescape")) > 200 for p in parts):
        raise ExtractError(f"{where}: field 'id' {iid[:40]!r}...: a path part is longer than 200 bytes")
    return iid


def _check_path_text(p: Any, where: str, field_name: str = "path") -> str:
    if not isinstance(p, str) or not p.strip():
        raise ExtractError(f"{where}: field {field_name!r} must be a non-empty string, got {type(p).__name__} {p!r}")
    if "\x00" in p:
        raise ExtractError(f"{where}: field {field_name!r} contains a NUL byte")
    return p


def _manifest_items(path: Path, bad: list[BadRow] | None = None) -> list[Item]:
    """Items of one manifest. A row that is not usable (invalid JSON, not an object, a missing or non-string path,
    an id that would leave the output folder) is appended to ``bad`` (or raised when ``bad`` is None)."""
    items: list[Item] = []
    base = path.parent

    def resolve(p: str) -> Path:
        q = Path(p).expanduser()
        if q.is_absolute():
            return q
        for root in (base, base.parent):  # data-kit rows are relative to the kit root, one level up
            if (root / q).exists():
                return root / q
        return base / q

    def row_item(n: int, text: str) -> Item:
        where = f"{path}:{n}"
        if path.suffix == ".jsonl":
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise ExtractError(f"{where}: not valid JSON ({e})") from e
            if not isinstance(row, dict):
                raise ExtractError(f"{where}: row must be a JSON object with a 'path' field, got {type(row).__name__}")
            # the first non-empty of path/audio/mix (as before); else the first present one, to say what is wrong
            key = next((k for k in ("path", "audio", "mix") if row.get(k)), None) or next(
                (k for k in ("path", "audio", "mix") if row.get(k) is not None), None)
            if key is None:
                raise ExtractError(f"{where}: row has no 'path' (or 'audio'/'mix') field")
            p = _check_path_text(row[key], where, key)
            iid = row.get("id")
            iid = Path(p).with_suffix("").as_posix() if iid is None else iid
            return Item(check_item_id(iid, where), resolve(p))
        if path.suffix == ".tsv":  # fairseq: "relpath<TAB>frames" under the root on line 1
            rel = _check_path_text(text.split("\t")[0], where)
            return Item(check_item_id(Path(rel).with_suffix("").as_posix(), where), root / rel)
        q = resolve(_check_path_text(text.strip(), where))  # .txt / .lst: one path per line
        return Item(check_item_id(q.stem, where), q)

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ExtractError(f"{path}: cannot read manifest ({e})") from e
    lines = list(enumerate(text.splitlines(), 1))
    if path.suffix == ".tsv":
        lines = [(n, ln) for n, ln in lines if ln.strip()]
        if not lines:
            raise ExtractError(f"{path}: empty manifest")
        root = Path(lines[0][1].strip())
        lines = lines[1:]
    for n, line in lines:
        if not line.strip() or (path.suffix not in (".jsonl", ".tsv") and line.startswith("#")):
            continue
        try:
            items.append(row_item(n, line))
        except ExtractError as e:
            if bad is None:
                raise
            bad.append(BadRow(f"{path}:{n}", str(e)))
    return items


def collect_items(inputs: Iterable[str | Path], bad: list[BadRow] | None = None) -> list[Item]:
    """Audio files, folders (searched recursively; ids keep the sub-folders) and manifests (.jsonl/.tsv/.txt/.lst).

    Unusable manifest rows and inputs whose id would leave the output folder go to ``bad`` (skipped; the caller
    reports them) or, when ``bad`` is None, raise :class:`ExtractError`. Two different files with one output id are
    refused before any work (no output is overwritten by another input's features).
    """
    items: list[Item] = []

    def add(iid: str, p: Path, where: str) -> None:
        try:
            items.append(Item(check_item_id(iid, where), p))
        except ExtractError as e:
            if bad is None:
                raise
            bad.append(BadRow(where, str(e)))

    for inp in inputs:
        p = Path(inp).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTS and f.is_file())
            for f in files:
                add(f.relative_to(p).with_suffix("").as_posix(), f, str(f))
        elif p.suffix.lower() in (".jsonl", ".tsv", ".txt", ".lst") and p.is_file():
            items += _manifest_items(p, bad)
        else:
            add(p.stem, p, str(inp))  # a missing file is reported as a failed item, not here
    seen: dict[str, Path] = {}
    dups = []
    for it in items:
        if it.id in seen and seen[it.id] != it.path:
            dups.append(f"{it.id} ({seen[it.id]} and {it.path})")
        seen[it.id] = it.path
    if dups:
        raise ExtractError(f"duplicate output ids: {dups[:5]}; give the files distinct names or use a manifest with ids")
    # identical (id, path) pairs given twice are extracted once
    uniq = {(it.id, str(it.path)): it for it in items}
    return sorted(uniq.values(), key=lambda it: it.id)


def output_path(out_dir: Path, iid: str, fmt: str) -> Path:
    """``<out_dir>/<id>.<fmt>``, refused (:class:`ExtractError`) unless it lies inside ``out_dir`` once resolved
    (a second guard after :func:`check_item_id`: a symlinked sub-folder pointing elsewhere is refused too)."""
    out = out_dir / f"{check_item_id(iid, iid)}.{fmt}"
    root = out_dir.resolve()
    if not out.parent.resolve().is_relative_to(root):
        raise ExtractError(f"{iid}: output {out} resolves outside the output folder {root}")
    return out


# ============================================================================================ windows


@dataclass
class WindowPlan:
    """Window geometry in samples and frames at the model rate."""

    win_frames: int
    hop_frames: int
    win_samples: int
    hop_samples: int
    stride: int
    receptive_field: int

    @property
    def overlap_frames(self) -> int:
        return self.win_frames - self.hop_frames


def plan_windows(model: MERTModel, window_s: float, overlap_s: float = 0.0) -> WindowPlan:
    cfg = model.config
    stride, rf = cfg.total_stride, cfg.receptive_field
    win_frames = max(1, int(round(window_s * cfg.frame_rate)))
    ov = int(round(overlap_s * cfg.frame_rate))
    hop_frames = win_frames - ov
    if hop_frames < 1:
        raise ExtractError(f"overlap {overlap_s} s leaves no hop inside a {window_s} s window")
    return WindowPlan(win_frames, hop_frames, rf + (win_frames - 1) * stride, hop_frames * stride, stride, rf)


def _array_windows(wav: np.ndarray, plan: WindowPlan) -> Iterator[tuple[int, np.ndarray]]:
    """Same windows as iter_windows over an in-memory [1, N] array (until one reaches the end)."""
    n = wav.shape[-1]
    start = 0
    while True:
        yield start, wav[:, start : start + plan.win_samples]
        if start + plan.win_samples >= n:
            return
        start += plan.hop_samples


def _with_last_flag(it: Iterator[tuple[int, np.ndarray]]) -> Iterator[tuple[int, int, np.ndarray, bool]]:
    """(k, start, wav, is_last) with one window of look-ahead."""
    prev = None
    k = 0
    for start, w in it:
        if prev is not None:
            yield k - 1, prev[0], prev[1], False
        prev = (start, w)
        k += 1
    if prev is not None:
        yield k - 1, prev[0], prev[1], True


# ============================================================================================ writers


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _safetensors_header(shape: tuple[int, ...], dtype: np.dtype, metadata: dict[str, str]) -> bytes:
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    st_dtype = {"float32": "F32", "float16": "F16"}[np.dtype(dtype).name]
    header = {"features": {"dtype": st_dtype, "shape": list(shape), "data_offsets": [0, nbytes]}}
    header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def write_features(path: Path, chunks: Iterable[np.ndarray | bytes] | np.ndarray, shape: tuple[int, ...], dtype: str,
                   fmt: str, metadata: dict[str, str] | None = None) -> None:
    """Write one C-order tensor ``features`` of ``shape`` atomically, from consecutive chunks (arrays, or raw bytes
    already in ``dtype``), so a frame-level output never has to sit in memory whole."""
    from musiccore.runs import atomic_path

    dt = np.dtype(dtype)
    if isinstance(chunks, np.ndarray):
        chunks = [chunks]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(_npy_header(shape, dt) if fmt == "npy" else _safetensors_header(shape, dt, metadata or {}))
            written = 0
            for c in chunks:
                b = c if isinstance(c, bytes) else np.ascontiguousarray(c, dtype=dt).tobytes()
                f.write(b)
                written += len(b)
        expect = int(np.prod(shape)) * dt.itemsize
        if written != expect:
            raise RuntimeError(f"{path}: wrote {written} bytes of features, expected {expect}")


class FeatureFileError(ExtractError):
    """A feature file that cannot be used: empty, truncated, not .npy/.safetensors, a pickle, no ``features``."""


_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}
_MAX_ST_HEADER = 100 << 20  # a safetensors header larger than this is not one of ours (and not worth parsing)


def feature_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype, dict[str, str]]:
    """(shape, dtype, metadata) of a feature file from its header, checked against the file size.

    Reads only the header, so checking a finished 20-minute frame-level output costs microseconds. Raises
    :class:`FeatureFileError` naming the file for anything :func:`read_features` could not load in full.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if path.suffix == ".npy":
                try:
                    version = np.lib.format.read_magic(f)
                    read = {(1, 0): np.lib.format.read_array_header_1_0,
                            (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read is None:
                        raise ValueError(f"unsupported .npy version {version}")
                    shape, fortran, dtype = read(f)
                except (ValueError, EOFError) as e:
                    raise FeatureFileError(f"{path}: not a .npy array ({size} bytes; {e})") from e
                if dtype.hasobject:
                    raise FeatureFileError(f"{path}: holds Python objects (a pickle), not features")
                if fortran:
                    raise FeatureFileError(f"{path}: Fortran-ordered array, not written by mert extract")
                expect = f.tell() + int(np.prod(shape)) * dtype.itemsize
                meta: dict[str, str] = {}
            elif path.suffix == ".safetensors":
                if size < 8:
                    raise FeatureFileError(f"{path}: not a safetensors file ({size} bytes)")
                (n,) = struct.unpack("<Q", f.read(8))
                if n > min(size - 8, _MAX_ST_HEADER):
                    raise FeatureFileError(f"{path}: not a safetensors file (header length {n} for {size} bytes)")
                try:
                    header = json.loads(f.read(n))
                    meta = header.pop("__metadata__", None) or {}
                    ent = header["features"]
                    dtype = np.dtype(_ST_DTYPES[ent["dtype"]])
                    shape = tuple(int(x) for x in ent["shape"])
                    begin, end = (int(x) for x in ent["data_offsets"])
                except (ValueError, KeyError, TypeError) as e:
                    raise FeatureFileError(f"{path}: no readable 'features' tensor in the safetensors header ({e})") from e
                if end - begin != int(np.prod(shape)) * dtype.itemsize:
                    raise FeatureFileError(f"{path}: 'features' offsets do not match its shape {shape}")
                expect = 8 + n + end
            else:
                raise FeatureFileError(f"{path}: not a feature file (expected .npy or .safetensors)")
    except OSError as e:
        raise FeatureFileError(f"{path}: cannot read ({e})") from e
    if size != expect:
        raise FeatureFileError(f"{path}: truncated or padded: {size} bytes, its header says {expect}")
    return tuple(shape), np.dtype(dtype), dict(meta)


def read_features(path: str | Path) -> np.ndarray:
    """Load a feature file written by :func:`extract` (.npy or .safetensors) -> [L, T, D] / [L, D] / [L, K, D].

    Raises :class:`FeatureFileError` (naming the file) for an empty, truncated or foreign file; never unpickles.
    """
    path = Path(path)
    feature_header(path)
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        from safetensors.numpy import load_file

        return load_file(str(path))["features"]
    except Exception as e:  # noqa: BLE001 - numpy/safetensors raise several types; all mean "unreadable file"
        raise FeatureFileError(f"{path}: cannot load features ({type(e).__name__}: {e})") from e


class _FileResult:
    """Accumulates the windows of one input (in order) into frames / a mean / window means."""

    def __init__(self, item: Item, n_layers: int, dim: int, opts: ExtractOptions, plan: WindowPlan,
                 spool_dir: Path | None, min_window_samples: int = 0):
        self.item, self.opts, self.plan = item, opts, plan
        self.min_window_samples = min_window_samples
        self.n_layers, self.dim = n_layers, dim
        self.frames = 0
        self.windows = 0
        self.samples = 0
        self.peak = 0.0
        self.sum = np.zeros((n_layers, dim), np.float64)
        self.win_means: list[np.ndarray] = []
        self.mem_frames: list[np.ndarray] = []
        self.spool: list[Any] | None = None
        self.spool_paths: list[Path] = []
        if opts.pooling == "none" and spool_dir is not None:
            # Frame-level output is spooled per layer to disk, so memory stays flat for any length.
            spool_dir.mkdir(parents=True, exist_ok=True)
            # a hash of the id: no two items share a spool name ("a/b" vs "a__b"), and long ids stay short
            base = spool_dir / f".spool-{hashlib.sha1(item.id.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}"
            self.spool_paths = [Path(f"{base}.L{i}.part") for i in range(n_layers)]
            self.spool = [open(p, "wb") for p in self.spool_paths]

    def add(self, k: int, h: np.ndarray, is_last: bool, n_samples: int) -> None:
        """h: [L, n, D] float32 hidden states of window k (all its frames)."""
        n = h.shape[1]
        self.windows += 1
        if self.opts.pooling == "window":
            if k == 0 or not (is_last and n_samples < self.min_window_samples):
                self.win_means.append(h.mean(axis=1))
                self.frames += n
            return
        ov = self.plan.overlap_frames
        lo = 0 if k == 0 else ov // 2
        hi = n if is_last else min(n, self.plan.hop_frames + ov // 2)
        own = h[:, lo:hi]  # frames this window is responsible for
        self.frames += own.shape[1]
        if self.opts.pooling == "mean":
            self.sum += own.sum(axis=1, dtype=np.float64)
        elif self.spool is not None:
            for i, f in enumerate(self.spool):
                f.write(np.ascontiguousarray(own[i], dtype=np.dtype(self.opts.dtype)).tobytes())
        else:
            self.mem_frames.append(own)

    def result_array(self) -> np.ndarray:
        if self.opts.pooling == "mean":
            return (self.sum / max(self.frames, 1)).astype(np.float32)
        if self.opts.pooling == "window":
            return np.stack(self.win_means, axis=1).astype(np.float32)
        return np.concatenate(self.mem_frames, axis=1) if self.mem_frames else np.zeros((self.n_layers, 0, self.dim), np.float32)

    def shape(self) -> tuple[int, ...]:
        if self.opts.pooling == "mean":
            return (self.n_layers, self.dim)
        if self.opts.pooling == "window":
            return (self.n_layers, len(self.win_means), self.dim)
        return (self.n_layers, self.frames, self.dim)

    def write(self, path: Path, metadata: dict[str, str]) -> None:
        if self.spool is None:
            write_features(path, self.result_array(), self.shape(), self.opts.dtype, self.opts.fmt, metadata)
            return
        for f in self.spool:
            f.close()

        def chunks() -> Iterator[bytes]:
            for p in self.spool_paths:  # layer-major concatenation == C order of [L, T, D]
                with open(p, "rb") as f:
                    while block := f.read(1 << 24):
                        yield block

        try:
            write_features(path, chunks(), self.shape(), self.opts.dtype, self.opts.fmt, metadata)
        finally:
            self.close()

    def close(self) -> None:
        if self.spool is not None:
            for f in self.spool:
                f.close()
            for p in self.spool_paths:
                p.unlink(missing_ok=True)
            self.spool = None


# ============================================================================================ extractor


class FeatureExtractor:
    """Runs a :class:`MERTModel` over windows of many inputs with batching; the core of ``mert extract``."""

    def __init__(self, model: MERTModel, opts: ExtractOptions | None = None, device: str | torch.device = "cpu",
                 autocast_dtype: torch.dtype | None = None):
        self.opts = opts or ExtractOptions()
        self.opts.validate()
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        cfg = model.config
        self.sample_rate = cfg.sample_rate
        self.num_states = cfg.num_hidden_layers + 1
        layers = self.opts.layers if self.opts.layers is not None else list(range(self.num_states))
        norm = []
        for i in layers:
            j = i + self.num_states if i < 0 else i
            if not 0 <= j < self.num_states:
                raise ExtractError(f"layer {i} out of range: this model has hidden states 0..{self.num_states - 1}")
            norm.append(j)
        self.layers = norm
        self.plan = plan_windows(model, self.opts.window_s, self.opts.overlap_s)
        self.stats = ExtractSummary()
        self._rate_warned: set[int] = set()

    # -------------------------------------------------------------- model call
    @torch.inference_mode()
    def forward_windows(self, wavs: list[np.ndarray]) -> np.ndarray:
        """Equal-length mono windows -> selected hidden states [B, L, T, D] (float32)."""
        x = torch.from_numpy(np.stack([w.reshape(-1) for w in wavs])).to(self.device, torch.float32)
        if self.opts.normalize:
            x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + 1e-7)
        n_run = max(self.layers)  # hidden state i needs layers 1..i only
        enabled = self.autocast_dtype is not None
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=enabled):
            out = self.model(x, output_hidden_states=True, num_layers=n_run)
        hs = torch.stack([out.hidden_states[i] for i in self.layers], dim=1)
        self.stats.windows += len(wavs)
        self.stats.max_window_samples = max(self.stats.max_window_samples, x.shape[-1])
        return hs.float().cpu().numpy()

    # -------------------------------------------------------------- window streams
    def _file_windows(self, item: Item) -> Iterator[tuple[int, int, np.ndarray, bool]]:
        from musiccore.audio import audio_info, iter_windows

        info = audio_info(item.path)
        check_sample_rate(info.sample_rate, str(item.path))
        if info.sample_rate != self.sample_rate and info.sample_rate not in self._rate_warned:
            self._rate_warned.add(info.sample_rate)
            logger.warning(
                "%s: %d Hz input resampled to the model's %d Hz (further files at %d Hz are resampled silently)",
                item.path, info.sample_rate, self.sample_rate, info.sample_rate,
            )
        if info.channels > 1:
            logger.debug("%s: %d channels averaged to mono", item.path, info.channels)
        it = iter_windows(
            item.path, self.sample_rate, self.plan.win_samples / self.sample_rate,
            self.plan.hop_samples / self.sample_rate, mono=True,
        )
        yield from _with_last_flag(it)

    def _check_window(self, where: str, k: int, w: np.ndarray) -> bool:
        """False for a window too short for one frame (a tail: skipped); raises when it is the first window."""
        if w.shape[-1] >= self.plan.receptive_field:
            return True
        if k == 0:
            raise ExtractError(
                f"{where}: too short: {w.shape[-1]} samples at {self.sample_rate} Hz, one frame needs "
                f"{self.plan.receptive_field} ({1000 * self.plan.receptive_field / self.sample_rate:.1f} ms)"
            )
        return False

    # -------------------------------------------------------------- in-memory API
    def extract_array(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """One waveform ([N] or [C, N], any rate) -> features as stored by :func:`extract` ([L, T, D], [L, D] or
        [L, K, D] by pooling). Windows are batched; the whole waveform is held in memory."""
        from musiccore.audio import resample, to_mono

        sample_rate = check_sample_rate(sample_rate, "waveform")
        arr = np.asarray(wav)
        if arr.dtype.kind not in "fiub":
            raise ExtractError(f"waveform must be a real numeric array, got dtype {arr.dtype}")
        if arr.ndim not in (1, 2):
            raise ExtractError(f"waveform must be [N] or [C, N], got shape {tuple(arr.shape)}")
        if arr.ndim == 2 and arr.shape[0] > MAX_CHANNELS:
            raise ExtractError(f"waveform of shape {tuple(arr.shape)} has {arr.shape[0]} channels (> {MAX_CHANNELS}): "
                               "expected [C, N]; transpose an [N, C] array")
        if arr.size == 0:
            raise ExtractError(f"waveform is empty (shape {tuple(arr.shape)})")
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: refused just below
            wav = arr.astype(np.float32)
        if wav.ndim == 1:
            wav = wav[None]
        if not np.isfinite(wav).all():
            raise ExtractError("waveform has non-finite samples")
        wav = to_mono(wav)
        if sample_rate != self.sample_rate:
            logger.warning("waveform at %d Hz resampled to the model's %d Hz", sample_rate, self.sample_rate)
            wav = resample(wav, sample_rate, self.sample_rate)
        res = self._new_result(Item("array", Path("array")), None)
        wav_peak = float(np.abs(wav).max()) if wav.size else 0.0
        wins = [(k, s, w, last) for k, s, w, last in _with_last_flag(_array_windows(wav, self.plan))]
        wins = [t for t in wins if self._check_window("waveform", t[0], t[2])]
        for i in range(0, len(wins), self.opts.batch_size):
            batch = wins[i : i + self.opts.batch_size]
            # group equal lengths (only the tail differs)
            groups: dict[int, list] = {}
            for t in batch:
                groups.setdefault(t[2].shape[-1], []).append(t)
            outs = {}
            for g in groups.values():
                h = self.forward_windows([t[2] for t in g])
                if not np.isfinite(h).all():
                    raise ExtractError(f"waveform: the model produced non-finite features (input peak {wav_peak:.3g})")
                for t, hh in zip(g, h):
                    outs[t[0]] = hh
            for k, s, w, last in batch:
                res.add(k, outs[k], last or k == wins[-1][0], w.shape[-1])
        return res.result_array()

    def _new_result(self, item: Item, spool_dir: Path | None) -> _FileResult:
        return _FileResult(item, len(self.layers), self.model.config.hidden_size, self.opts, self.plan, spool_dir,
                           min_window_samples=int(round(self.opts.min_window_s * self.sample_rate)))

    # -------------------------------------------------------------- files
    def output_problem(self, out: Path, row: dict | None = None) -> str | None:
        """None when ``out`` is a complete feature file of these settings (layers, pooling, dtype, width; and the
        shape of its index ``row`` when there is one), else why not. Decides "already done" on a re-run."""
        try:
            shape, dtype, meta = feature_header(out)
        except FeatureFileError as e:
            return str(e)
        ndim = 2 if self.opts.pooling == "mean" else 3
        expect = f"[{len(self.layers)}, {'T, ' if ndim == 3 else ''}{self.model.config.hidden_size}]"
        if len(shape) != ndim or shape[0] != len(self.layers) or shape[-1] != self.model.config.hidden_size:
            return f"{out}: shape {list(shape)}, expected {expect} for pooling {self.opts.pooling!r}"
        if dtype != np.dtype(self.opts.dtype):
            return f"{out}: dtype {dtype}, expected {self.opts.dtype}"
        if meta and (meta.get("layers") != json.dumps(self.layers) or meta.get("pooling") != self.opts.pooling):
            return f"{out}: written with layers {meta.get('layers')} / pooling {meta.get('pooling')}"
        if row is not None and row.get("shape") is not None and list(shape) != list(row["shape"]):
            return f"{out}: shape {list(shape)} differs from its index row {row['shape']}"
        return None

    def run(self, items: list[Item], out_dir: Path, index_path: Path, failed_path: Path,
            progress: bool | None = None, bad_rows: Iterable[BadRow] = ()) -> ExtractSummary:
        """Extract every item (skipping finished ones) with cross-file batching of equal-length windows.

        ``bad_rows`` (unusable manifest rows) are reported in the failed file and the summary first.
        """
        from musiccore.runs import append_jsonl

        out_dir.mkdir(parents=True, exist_ok=True)
        stats = self.stats
        t0 = time.perf_counter()
        for b in bad_rows:
            stats.failed[b.where] = b.error
            logger.error("skipping %s", b.error)
            append_jsonl(failed_path, {"id": b.where, "path": b.where, "error": b.error})
        todo = []
        index_rows = _index_rows(out_dir)
        for it in items:
            try:
                out = output_path(out_dir, it.id, self.opts.fmt)
            except ExtractError as e:
                stats.failed[it.id] = str(e)
                logger.error("skipping %s", e)
                append_jsonl(failed_path, {"id": it.id, "path": str(it.path), "error": str(e)})
                continue
            if out.exists() or out.is_symlink():
                problem = self.output_problem(out, index_rows.get(it.id))
                if problem is None:
                    stats.skipped.append(it.id)
                    if it.id not in index_rows:  # killed between writing the output and its index line
                        shape = list(feature_header(out)[0])
                        append_jsonl(index_path, {"id": it.id, "path": str(it.path),
                                                  "output": out.relative_to(out_dir).as_posix(), "shape": shape,
                                                  "recovered": True})
                    continue
                # a file with this name that is not a valid output of these settings: extract again, say so
                logger.warning("%s: existing output is not valid (%s): extracting again", it.id, problem)
                stats.redone[it.id] = problem
            todo.append(it)
        if stats.skipped:
            logger.info("%d items already extracted in %s: skipped", len(stats.skipped), out_dir)

        bar = None
        if progress is None:
            progress = sys.stderr.isatty()
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), unit="file", desc="mert extract")

        results: dict[str, _FileResult] = {}
        pending: list[tuple[str, int, np.ndarray, bool]] = []  # (id, k, window, is_last)
        last_log = time.perf_counter()

        def fail(item: Item, err: Exception) -> None:
            msg = str(err) if str(item.path) in str(err) or item.id in str(err) else f"{item.path}: {err}"
            stats.failed[item.id] = msg
            logger.error("skipping %s", msg)
            append_jsonl(failed_path, {"id": item.id, "path": str(item.path), "error": msg})
            r = results.pop(item.id, None)
            if r is not None:
                r.close()
            if bar is not None:
                bar.update(1)

        def finish(item: Item) -> None:
            r = results.pop(item.id)
            out = output_path(out_dir, item.id, self.opts.fmt)
            out.parent.mkdir(parents=True, exist_ok=True)
            if out.is_symlink():
                out.unlink()  # replace the link itself, never write through it
            meta = {"layers": json.dumps(self.layers), "pooling": self.opts.pooling,
                    "sample_rate": str(self.sample_rate), "frame_rate": str(self.model.config.frame_rate)}
            r.write(out, meta)
            silent = r.peak == 0.0
            if silent:
                logger.warning("%s: silent input (all samples are zero); features written and flagged", item.path)
            append_jsonl(index_path, {
                "id": item.id, "path": str(item.path), "output": out.relative_to(out_dir).as_posix(),
                "shape": list(r.shape()), "layers": self.layers, "pooling": self.opts.pooling,
                "num_frames": r.frames, "num_windows": r.windows, "duration_s": r.samples / self.sample_rate,
                "silent": silent, **({"redone": stats.redone[item.id]} if item.id in stats.redone else {}),
            })
            stats.done.append(item.id)
            stats.audio_seconds += r.samples / self.sample_rate
            if bar is not None:
                bar.update(1)

        by_id = {it.id: it for it in todo}

        def flush() -> None:
            nonlocal pending
            if not pending:
                return
            batch, pending = pending, []
            h = self.forward_windows([b[2] for b in batch])
            for (iid, k, w, last), hh in zip(batch, h):
                r = results.get(iid)
                if r is None:
                    continue  # the file failed after this window was queued
                if not np.isfinite(hh).all():  # e.g. finite but huge samples overflow inside the model
                    fail(by_id[iid], ExtractError(f"{by_id[iid].path}: the model produced non-finite features in "
                                                  f"window {k} (input peak {float(np.abs(w).max()):.3g})"))
                    continue
                r.add(k, hh, last, w.shape[-1])
                if last:
                    finish(by_id[iid])

        for n_item, item in enumerate(todo):
            try:
                results[item.id] = self._new_result(item, out_dir)
                got_any = False
                for k, start, w, last in self._file_windows(item):
                    r = results.get(item.id)
                    if r is None:
                        break  # failed inside a flush (non-finite features): its remaining windows are not read
                    r.samples = max(r.samples, start + w.shape[-1])
                    r.peak = max(r.peak, float(np.abs(w).max()) if w.size else 0.0)
                    if not self._check_window(str(item.path), k, w):
                        # a tail too short for one frame: the previous window becomes the last one
                        if pending and pending[-1][0] == item.id:
                            pending[-1] = (*pending[-1][:3], True)
                        elif got_any:
                            finish(item)  # its earlier windows were all processed already
                        continue
                    if pending and (pending[0][2].shape[-1] != w.shape[-1] or len(pending) >= self.opts.batch_size):
                        flush()
                    pending.append((item.id, k, w, last))
                    got_any = True
            except Exception as e:  # noqa: BLE001 - one bad input must not stop a batch job
                pending = [p for p in pending if p[0] != item.id]
                if isinstance(e, (ValueError, OSError, RuntimeError)):
                    fail(item, e)
                else:
                    raise
            # not on a TTY (a Slurm .out file): one line per 100 files or per 30 s, whichever comes first
            if not bar and (time.perf_counter() - last_log > 30 or (n_item + 1) % 100 == 0 or n_item + 1 == len(todo)):
                last_log = time.perf_counter()
                logger.info("extract: %d/%d files read, %d done, %d failed", n_item + 1, len(todo),
                            len(stats.done), len(stats.failed))
        try:
            flush()
        finally:
            for r in results.values():
                r.close()
        for iid in list(results):
            fail(by_id[iid], RuntimeError("internal: unfinished item"))
        if bar is not None:
            bar.close()
        stats.seconds = time.perf_counter() - t0
        return stats


def _index_rows(out_dir: Path) -> dict[str, dict]:
    """id -> its newest index row over every shard's index file (unreadable lines, e.g. cut by a kill, skipped)."""
    rows: dict[str, dict] = {}
    for p in sorted(Path(out_dir).glob("index*.jsonl")):
        for line in p.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
                rows[row["id"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return rows


def _indexed_ids(out_dir: Path) -> set[str]:
    return set(_index_rows(out_dir))


def load_index(out_dir: str | Path) -> list[dict]:
    """All index rows of an output folder (every shard's index file), one per id (the newest: an item redone
    after its output was found invalid has two), sorted by id."""
    return sorted(_index_rows(Path(out_dir)).values(), key=lambda r: r["id"])


# ============================================================================================ public API


def extract(
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    model: MERTModel | str | Path,
    opts: ExtractOptions | None = None,
    shard: str | tuple[int, int] | None = None,
    device: str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    progress: bool | None = None,
) -> ExtractSummary:
    """Python API of ``mert extract``: inputs (files, folders, manifests) -> ``out_dir`` feature files + index.

    ``model`` is a loaded :class:`MERTModel` or a model folder (ours or a released HF folder; never remote code).
    """
    from musiccore.runs import atomic_write_json

    inputs = list(inputs)
    opts = opts or ExtractOptions()
    opts.validate()
    check_device(device)
    i, n = parse_shard(shard) if not isinstance(shard, tuple) else shard
    model_src = str(model) if not isinstance(model, MERTModel) else "in-memory model"
    if not isinstance(model, MERTModel):
        model = MERTModel.from_pretrained(resolve_model_folder(model))
    # Everything that can be wrong with the arguments is checked before the output folder and its
    # extract_config.json exist: a refused run must not leave settings that then refuse the corrected rerun.
    fx = FeatureExtractor(model, opts, device=device, autocast_dtype=autocast_dtype)
    bad: list[BadRow] = []
    items = collect_items(inputs, bad)
    if not items and not bad:
        raise ExtractError(f"no audio inputs found in {list(map(str, inputs))}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"options": asdict(opts), "model": model_src, "model_config": model.config.to_dict(),
                "model_fingerprint": model_fingerprint(model)}
    settings_path = out_dir / SETTINGS_NAME
    if settings_path.exists():
        old = json.loads(settings_path.read_text())
        if any(old.get(k) != settings[k] for k in ("options", "model_config", "model_fingerprint")):
            raise ExtractError(
                f"{out_dir}: holds features extracted with other settings or another model ({settings_path}); "
                "use a new output folder"
            )
    else:
        atomic_write_json(settings_path, settings)
    items, bad = items[i::n], bad[i::n]  # each shard reports its share of the bad rows
    suffix = "" if n == 1 else f"-{i}-of-{n}"
    logger.info(
        "extracting %d items (shard %d/%d) with layers %s, pooling %s, %.2f s windows (hop %.2f s) -> %s",
        len(items), i, n, fx.layers, opts.pooling, fx.plan.win_samples / fx.sample_rate,
        fx.plan.hop_samples / fx.sample_rate, out_dir,
    )
    summary = fx.run(items, out_dir, out_dir / f"index{suffix}.jsonl", out_dir / f"failed{suffix}.jsonl", progress,
                     bad_rows=bad)
    logger.info(summary.line())
    return summary


MODEL_HELP = (
    "a model folder holds config.json + model.safetensors (or pytorch_model.bin). Get one with: "
    "`mert convert MERT-v1-95M_fairseq.pt DIR --allow-pickle` (fairseq checkpoint), "
    "`mert convert /path/to/MERT-v1-95M DIR` (a released HF folder you downloaded), "
    "or `mert demo`, which leaves the tiny pretrained model in $MUSIC_RUNS_DIR/mert/tiny-<hash>/encoder "
    "(printed as 'tiny model:'); nothing is downloaded at run time"
)


def resolve_model_folder(model: str | Path) -> Path:
    """A model folder from what a user typed: the folder itself, or a run folder holding ``encoder/`` (and the like).

    Raises :class:`ExtractError` saying how to get a model folder when ``model`` is a hub name or a missing path.
    """
    from .model_folder import find_model_folder

    p = Path(model).expanduser()
    if not p.exists():
        raise ExtractError(f"model {str(model)!r} is not a local folder ({MODEL_HELP})")
    found = find_model_folder(p) if p.is_dir() else None
    if found is None:
        raise ExtractError(f"model {str(model)!r} holds no model weights ({MODEL_HELP})")
    return found


def check_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, or an :class:`ExtractError` in one line when that device is not usable here."""
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ExtractError(f"--device {device!r}: not a torch device ({e})") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ExtractError(f"--device {device}: CUDA is not available on this machine (torch "
                               f"{torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ExtractError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ExtractError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    return dev


def model_fingerprint(model: MERTModel) -> str:
    """Short hash of the weights (names, shapes and a strided sample of values): tells checkpoints apart."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        flat = v.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)].float().cpu().numpy()
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(sample.tobytes())
    return h.hexdigest()[:16]


def extract_waveform(model: MERTModel, wav: np.ndarray, sample_rate: int, opts: ExtractOptions | None = None,
                     device: str = "cpu") -> np.ndarray:
    """In-memory API: one waveform -> features ([L, T, D] / [L, D] / [L, K, D] by ``opts.pooling``)."""
    return FeatureExtractor(model, opts, device=device).extract_array(wav, sample_rate)
