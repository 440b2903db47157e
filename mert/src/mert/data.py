"""Pretraining data: audio manifests, the teacher-label cache, cropping and batching by total seconds.

Pipeline (spec §2.4, §4, pitfall 14):

1. a manifest (jsonl: ``path``, ``duration``, ``sample_rate``, ``frames``) lists the audio (``mert prepare manifest``);
2. a :class:`LabelStore` holds the precomputed teacher labels of every manifest row, ``[K, T_label]`` int16 at
   ``sample_rate / 320`` Hz, in shards written independently (one Slurm array task per shard);
3. :class:`SecondsBatchSampler` groups rows into batches of at most ``max_tokens`` samples (counted after the crop to
   ``max_sample_size``), fixed once, and shuffles the batch ORDER per epoch from ``(seed, epoch)``. It yields
   ``(row, batch_seed)`` pairs, so every random draw of a batch (crops here, masks and noise in the train step) is
   a function of the seed, the epoch and the batch position: a resumed run sees the same data as an uninterrupted one;
4. :class:`PretrainDataset` reads a random window of at most ``max_sample_size`` samples that starts on a label-frame
   boundary (a multiple of 320 samples) together with its labels;
5. :class:`Collater` crops the batch to its shortest item (``pad_audio=false``), again on a frame boundary, so label t
   belongs to conv frame t. Items shorter than ``min_sample_size`` (3 s) are dropped from the manifest up front.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from musiccore.data.rowtable import RowTable
from musiccore.runs import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

HOP = 320


class DataError(ValueError):
    """A manifest or label cache that cannot be used (names the file and the reason)."""


# ---------------------------------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------------------------------
def check_manifest_row(row: object, where: str) -> dict:
    """``row`` if it is a usable manifest row, else a :class:`DataError` naming ``where`` and the field.

    A row is a JSON object with ``path`` (non-empty string), ``duration`` (finite number >= 0) and ``sample_rate``
    (positive integer); other fields are kept as they are.
    """
    if not isinstance(row, dict):
        raise DataError(f"{where}: row must be a JSON object, got {type(row).__name__} {row!r:.60}")
    for key in ("path", "duration", "sample_rate"):
        if key not in row:
            raise DataError(f"{where}: row lacks {key!r}")
    p, dur, sr = row["path"], row["duration"], row["sample_rate"]
    if not isinstance(p, str) or not p.strip() or "\x00" in p:
        raise DataError(f"{where}: field 'path' must be a non-empty string without NUL, got {type(p).__name__} {p!r:.60}")
    try:
        finite = isinstance(dur, (int, float)) and not isinstance(dur, bool) and math.isfinite(dur)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite or dur < 0:
        raise DataError(f"{where}: field 'duration' must be a finite number >= 0, got {dur!r:.40}")
    if isinstance(sr, bool) or not isinstance(sr, int) or sr <= 0:
        raise DataError(f"{where}: field 'sample_rate' must be a positive integer, got {sr!r:.40}")
    return row


class ManifestRows(RowTable):
    """The usable rows of a manifest file (:func:`read_manifest`): a read-only ``Sequence`` of row dicts kept as byte
    ranges of the file (:class:`musiccore.data.rowtable.RowTable`), re-read and checked when indexed.

    Memory: 24 bytes a row (offset, length, line and the ``duration`` column, float64 ``[N]``: the value
    ``float(row["duration"])`` gives, so crops and batches are the ones a list of dicts gave) instead of ~700 for a
    dict. Slices and index arrays give tables too; ``rows[i]["path"]`` is absolute (a relative one is resolved
    against the manifest's folder).
    """

    error = DataError

    def parse(self, obj, where: str) -> dict:
        row = check_manifest_row(obj, where)
        p = Path(row["path"])
        row["path"] = str(p if p.is_absolute() else (self.path.parent / p).resolve())
        return row


def _manifest_columns(row: object, where: str) -> dict:
    return {"duration": check_manifest_row(row, where)["duration"]}


def read_manifest(path: str | Path, problems: list[str] | None = None) -> ManifestRows:
    """Rows of a jsonl manifest (:class:`ManifestRows`, list-like); relative ``path`` fields are resolved against the
    manifest's folder.

    The file is read once as a stream of ``\n``-terminated lines; what is kept is where each usable row is and its
    duration (24 bytes a row), and a row is parsed again when it is used. A malformed row (invalid JSON, not an
    object, a missing or mistyped field) is skipped with a warning that names ``<file>:<line>`` and the field, and
    appended to ``problems`` when given; a manifest with no usable row at all, or with bytes that are not UTF-8, is a
    :class:`DataError` that names the file (and the first problems).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found (write one with `mert prepare manifest`)")
    try:
        scan = ManifestRows.scan(path, _manifest_columns, {"duration": np.float64}, errors=(DataError,))
    except OSError as e:
        raise DataError(f"{path}: cannot read manifest ({e})") from e
    rows = scan.table
    for b in scan.bad:
        if isinstance(b.error, UnicodeDecodeError):  # not a text manifest at all (or a corrupt one): refused whole
            raise DataError(f"{path}: cannot read manifest ({b.where}: {b.error})")
    bad = [f"{b.where}: not valid JSON ({b.error})" if b.not_json else str(b.error) for b in scan.bad]
    if bad:
        log.warning("%s: %d malformed row(s) skipped, e.g. %s", path, len(bad), "; ".join(bad[:3]))
        if problems is not None:
            problems.extend(bad)
    if not len(rows):
        raise DataError(f"{path}: manifest has no usable row" + (f" ({'; '.join(bad[:3])})" if bad else " (empty)"))
    return rows


def manifest_durations(rows: Sequence[dict]) -> np.ndarray:
    """float64 ``[N]``: ``float(row["duration"])`` of every row (a :class:`ManifestRows` gives its column, unread)."""
    if isinstance(rows, RowTable) and "duration" in rows.columns:
        return rows.column("duration")
    return np.fromiter((float(r["duration"]) for r in rows), dtype=np.float64, count=len(rows))


def write_manifest(rows: Sequence[dict], path: str | Path) -> Path:
    """Write rows as jsonl, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return Path(path)


def manifest_digest(rows: Sequence[dict]) -> str:
    """Short hash of the rows' paths and lengths: identifies the label cache that belongs to a manifest."""
    h = hashlib.sha1()
    for r in rows:
        h.update(f"{r['path']}|{r.get('frames', r['duration'])}\n".encode())
    return h.hexdigest()[:10]


# ---------------------------------------------------------------------------------------------------------------------
# Label cache
# ---------------------------------------------------------------------------------------------------------------------
def shard_bounds(num_rows: int, shard: int, num_shards: int) -> tuple[int, int]:
    """Contiguous rows [start, end) of one shard (array task ``shard`` of ``num_shards``)."""
    if not 0 <= shard < num_shards:
        raise DataError(f"shard {shard} out of range for {num_shards} shards")
    return num_rows * shard // num_shards, num_rows * (shard + 1) // num_shards


def shard_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}"


def write_label_shard(out_dir: str | Path, shard: int, num_shards: int, rows: Sequence[dict],
                      labels: Sequence[np.ndarray | None], errors: Sequence[str | None]) -> Path:
    """Write one shard: ``<name>.npy`` (int16 [K, sum T]) and ``<name>.json`` (index), each atomically, index last.

    ``rows`` are the manifest rows of the shard in order; a row whose ``labels`` entry is None is recorded with its
    error and gets no labels (the dataset skips it).
    """
    out_dir = Path(out_dir)
    name = shard_name(shard, num_shards)
    good = [lab for lab in labels if lab is not None]
    k = good[0].shape[0] if good else 0
    if any(lab.shape[0] != k for lab in good):
        raise DataError(f"{out_dir}/{name}: codebook counts differ between files")
    if good and max(int(lab.max()) for lab in good) > np.iinfo(np.int16).max:
        raise DataError(f"{out_dir}/{name}: label ids do not fit int16")
    flat = np.concatenate(good, axis=1).astype(np.int16) if good else np.zeros((k, 0), np.int16)
    index, off = [], 0
    for row, lab, err in zip(rows, labels, errors):
        entry = {"path": row["path"], "offset": off, "length": 0 if lab is None else int(lab.shape[1])}
        if err:
            entry["error"] = err
        index.append(entry)
        off += entry["length"]
    with atomic_path(out_dir / f"{name}.npy", suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, flat, allow_pickle=False)
    atomic_write_json(out_dir / f"{name}.json", {"num_codebooks": k, "rows": index})
    return out_dir / f"{name}.json"


class LabelStore:
    """Read-only view of a label cache folder: labels of manifest row i as int64 [K, T_label].

    Args:
        label_dir: folder with ``shard-*-of-N.{npy,json}`` and ``teacher.json``.
        rows: the manifest rows the cache was computed for (paths are checked, so a cache never silently pairs
            labels with another manifest).
    """

    def __init__(self, label_dir: str | Path, rows: Sequence[dict]):
        self.dir = Path(label_dir)
        meta_path = self.dir / "teacher.json"
        if not meta_path.is_file():
            raise DataError(f"{self.dir}: no label cache (teacher.json missing); run `mert prepare labels`")
        try:
            self.meta = json.loads(meta_path.read_text())
            n_shards = int(self.meta["num_shards"])
            self.codebook_sizes = [int(c) for c in self.meta["codebook_sizes"]]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{meta_path}: not a label-cache description ({type(e).__name__}: {e}); "
                            "delete the folder and run `mert prepare labels` again") from e
        self._arrays: list[np.ndarray] = []
        # per manifest row: shard array, offset and length of its labels (array -1: none); numpy, 20 bytes a row
        # (a Python tuple per row was ~100), next to the memory-mapped label arrays themselves
        self._arr_id = np.full(len(rows), -1, dtype=np.int32)
        self._off = np.zeros(len(rows), dtype=np.int64)
        self._len = np.zeros(len(rows), dtype=np.int64)
        missing = []
        for s in range(n_shards):
            name = shard_name(s, n_shards)
            if not (self.dir / f"{name}.json").is_file():
                missing.append(name)
                continue
            idx, arr = self._read_shard(name)
            arr_id = len(self._arrays)
            self._arrays.append(arr)
            start, end = shard_bounds(len(rows), s, n_shards)
            if len(idx["rows"]) != end - start:
                raise DataError(f"{self.dir}/{name}: {len(idx['rows'])} rows, expected {end - start} (another manifest?)")
            # the shard's rows, read in order (a manifest table reads them in large chunks, not one by one)
            for j, (entry, row) in enumerate(zip(idx["rows"], rows[start:end])):
                if entry["path"] != row["path"]:
                    raise DataError(f"{self.dir}/{name}: row {start + j} is {entry['path']}, manifest has {row['path']}")
                if entry["length"] > 0:
                    k = start + j
                    try:
                        self._arr_id[k], self._off[k], self._len[k] = arr_id, int(entry["offset"]), int(entry["length"])
                    except (KeyError, TypeError, ValueError) as e:
                        raise DataError(f"{self.dir}/{name}: row {k}: bad offset/length ({e}); recompute the "
                                        "shard") from e
        if missing:
            raise DataError(f"{self.dir}: label shards missing: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")

    def _read_shard(self, name: str) -> tuple[dict, np.ndarray]:
        """(index, labels [K, sum T] memory-mapped) of one shard; :class:`DataError` naming the file when a part is
        empty, truncated or inconsistent (a zero-byte ``.npy`` left by a full disk, an edited index)."""
        jpath, npath = self.dir / f"{name}.json", self.dir / f"{name}.npy"
        try:
            idx = json.loads(jpath.read_text())
            entries = idx["rows"]
            total = sum(int(e["length"]) for e in entries)
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{jpath}: not a label-shard index ({type(e).__name__}: {e}); run `mert prepare labels` "
                            "again for this shard (delete the file first)") from e
        if not npath.is_file():
            raise DataError(f"{npath}: label array missing (its index {jpath.name} exists)")
        if npath.stat().st_size == 0:
            raise DataError(f"{npath}: empty file (0 bytes); delete {jpath.name} and recompute the shard")
        try:
            arr = np.load(npath, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{npath}: not a label array ({type(e).__name__}: {e})") from e
        if arr.ndim != 2 or arr.dtype.kind not in "iu" or arr.shape[1] != total:
            raise DataError(f"{npath}: shape {arr.shape} {arr.dtype}, its index expects [K, {total}] integers")
        return idx, arr

    @property
    def num_codebooks(self) -> int:
        return len(self.codebook_sizes)

    def has(self, i: int) -> bool:
        return bool(self._arr_id[i] >= 0)

    def get(self, i: int, start: int = 0, length: int | None = None) -> np.ndarray:
        """Labels of row ``i``, frames [start, start + length) -> int64 [K, length]."""
        if self._arr_id[i] < 0:
            raise DataError(f"row {i}: no labels in {self.dir}")
        arr_id, off, n = int(self._arr_id[i]), int(self._off[i]), int(self._len[i])
        length = n - start if length is None else length
        return np.asarray(self._arrays[arr_id][:, off + start : off + min(start + length, n)], dtype=np.int64)

    def length(self, i: int) -> int:
        return int(self._len[i]) if self._arr_id[i] >= 0 else 0

    def labelled(self) -> np.ndarray:
        """bool ``[N]``: which manifest rows have labels (:meth:`has` of every row)."""
        return self._arr_id >= 0

    def lengths(self, indices: np.ndarray | None = None) -> np.ndarray:
        """int64 ``[N]`` (or ``[len(indices)]``): label frames of rows ``indices`` (0 without labels)."""
        idx = slice(None) if indices is None else indices
        return np.where(self._arr_id[idx] >= 0, self._len[idx], 0)

    def class_counts(self, indices: Sequence[int] | None = None) -> list[np.ndarray]:
        """Label frequencies of rows ``indices`` (default: every labelled row): K arrays [C_k] of frame counts."""
        rows = range(self._arr_id.size) if indices is None else indices
        counts = [np.zeros(c, dtype=np.int64) for c in self.codebook_sizes]
        for i in rows:
            if self._arr_id[i] < 0:
                continue
            lab = self.get(i)
            for k, c in enumerate(self.codebook_sizes):
                counts[k] += np.bincount(lab[k], minlength=c)[:c]
        return counts


# ---------------------------------------------------------------------------------------------------------------------
# Dataset, sampler, collater
# ---------------------------------------------------------------------------------------------------------------------
def load_mono(path: str, sample_rate: int, offset: int = 0, num_samples: int | None = None) -> np.ndarray:
    """Read samples [offset, offset + num_samples) of a file as mono float32 [N] at ``sample_rate``."""
    from musiccore.audio import load_audio

    wav, _ = load_audio(path, sample_rate=sample_rate, mono=True, offset_s=offset / sample_rate,
                        duration_s=None if num_samples is None else num_samples / sample_rate)
    return wav[0]


class PretrainDataset(Dataset):
    """Random frame-aligned windows of the manifest's audio with their teacher labels.

    Args:
        rows: manifest rows (a :class:`ManifestRows` stays a table: its durations are a column, a row is read when
            its audio is).
        sample_rate: model rate (files are resampled to it).
        max_sample_size: window length (120000 = 5 s for 95M, 122880 = 5.12 s for 330M).
        labels: label cache (None: audio only, e.g. for benchmarks).

    ``dataset[(row, seed)]`` -> dict(wav float32 [N], labels int64 [K, N // 320] or None, row, seed).
    """

    def __init__(self, rows: Sequence[dict], sample_rate: int, max_sample_size: int, labels: LabelStore | None = None):
        self.rows = rows if isinstance(rows, RowTable) else list(rows)
        self.durations = manifest_durations(self.rows)  # float64 [N]: sizes without reading a row
        self.sample_rate = sample_rate
        self.max_sample_size = max_sample_size // HOP * HOP
        self.labels = labels

    def __len__(self) -> int:
        return len(self.rows)

    def num_samples(self, i: int) -> int:
        """Samples of row i at the model rate, floored to whole label frames."""
        n = int(round(float(self.durations[i]) * self.sample_rate))
        if self.labels is not None:
            # Never read past the labels (a codec may emit one frame less than N / 320 at the end).
            n = min(n, self.labels.length(i) * HOP)
        return n // HOP * HOP

    def size(self, i: int) -> int:
        return min(self.num_samples(i), self.max_sample_size)

    def sizes(self, indices: np.ndarray | None = None) -> np.ndarray:
        """int64 ``[N]`` (or ``[len(indices)]``): :meth:`size` of every row (of ``indices``), from the columns."""
        d = self.durations if indices is None else self.durations[indices]
        n = np.rint(d * self.sample_rate).astype(np.int64)  # round half to even, as round() in num_samples
        if self.labels is not None:
            n = np.minimum(n, self.labels.lengths(indices) * HOP)
        return np.minimum(n // HOP * HOP, self.max_sample_size)

    def __getitem__(self, key) -> dict:
        i, seed = key if isinstance(key, tuple) else (key, 0)
        n = self.num_samples(i)
        rng = np.random.default_rng([seed, i])
        frames_total, frames_win = n // HOP, self.size(i) // HOP
        f0 = int(rng.integers(0, frames_total - frames_win + 1))  # random crop on a label-frame boundary
        wav = load_mono(self.rows[i]["path"], self.sample_rate, f0 * HOP, frames_win * HOP)
        if len(wav) < frames_win * HOP:  # resampling rounding at the file end: pad the last few samples
            wav = np.pad(wav, (0, frames_win * HOP - len(wav)))
        lab = None
        if self.labels is not None:
            lab = self.labels.get(i, f0, frames_win)
            if lab.shape[1] < frames_win:
                lab = np.pad(lab, ((0, 0), (0, frames_win - lab.shape[1])), mode="edge")
        return {"wav": wav[: frames_win * HOP].astype(np.float32), "labels": lab, "row": i, "seed": seed}


@dataclass
class Collater:
    """Crop a list of items to the shortest one (on a label-frame boundary) and stack.

    Returns dict(input_values [B, N] float32, labels [B, K, N // 320] int64 (if any), seed [1] int64: the batch seed
    that the train step uses for masks and noise mixing).
    """

    def __call__(self, items: list[dict]) -> dict:
        frames = min(len(it["wav"]) for it in items) // HOP
        seed = int(items[0]["seed"])
        rng = np.random.default_rng([seed, 0x5EED])
        wavs, labs = [], []
        for it in items:
            f0 = int(rng.integers(0, len(it["wav"]) // HOP - frames + 1))
            wavs.append(torch.from_numpy(it["wav"][f0 * HOP : (f0 + frames) * HOP]))
            if it["labels"] is not None:
                labs.append(torch.from_numpy(it["labels"][:, f0 : f0 + frames]))
        batch = {"input_values": torch.stack(wavs), "seed": torch.tensor([seed], dtype=torch.long)}
        if labs:
            batch["labels"] = torch.stack(labs)
        return batch


class SecondsBatchSampler(Sampler):
    """Batches of at most ``max_tokens`` samples (``n * max crop size``), fixed once, order shuffled per epoch.

    Rows are sorted by size (ties broken by a seeded shuffle) and packed greedily, as fairseq's ``batch_by_size``
    does, so items of a batch have similar lengths and the crop to the shortest wastes little audio. Every epoch the
    batch order is permuted with ``(seed, epoch)``; each yielded batch is a list of ``(row, batch_seed)``.

    Under DDP the Trainer (accelerate) hands batch j to rank ``j % world``; all ranks build the same list.
    """

    def __init__(self, sizes: Sequence[int], max_tokens: int, max_batch_size: int | None = None, seed: int = 0,
                 shuffle: bool = True):
        self.sizes = np.asarray(sizes, dtype=np.int64)
        if len(self.sizes) == 0:
            raise DataError("no audio to batch (empty manifest after filtering)")
        if self.sizes.max() > max_tokens:
            raise DataError(f"max_tokens {max_tokens} is smaller than one crop ({self.sizes.max()} samples)")
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        rng = np.random.default_rng([seed, 1])
        order = rng.permutation(len(self.sizes)) if shuffle else np.arange(len(self.sizes))
        order = order[np.argsort(self.sizes[order], kind="stable")]
        starts, count = [], 0
        for k, top in enumerate(self.sizes[order].tolist()):
            # sizes ascend, so the row being added is the largest crop of its batch
            if count and ((count + 1) * top > max_tokens or (max_batch_size and count >= max_batch_size)):
                starts.append(k - count)
                count = 0
            count += 1
        starts.append(len(order) - count)
        # rows of batch b: _rows[_bounds[b]:_bounds[b + 1]] (8 bytes a row, not a Python list of lists)
        self._rows = order.astype(np.int64)
        self._bounds = np.asarray(starts + [len(order)], dtype=np.int64)

    @property
    def batches(self) -> list[list[int]]:
        """Row indices of each batch (built on access; iteration does not need it)."""
        return [self._rows[a:b].tolist() for a, b in zip(self._bounds[:-1], self._bounds[1:])]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._bounds) - 1

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, 2, self.epoch])
        order = rng.permutation(len(self)) if self.shuffle else np.arange(len(self))
        for pos, b in enumerate(order):
            batch_seed = int(np.random.default_rng([self.seed, 3, self.epoch, pos]).integers(0, 2**31 - 1))
            yield [(i, batch_seed) for i in self._rows[self._bounds[b] : self._bounds[b + 1]].tolist()]

    def seconds_per_epoch(self, sample_rate: int) -> float:
        # a batch is cropped to its shortest (first: sizes ascend) item
        first = self.sizes[self._rows[self._bounds[:-1]]]
        return float(int((first * np.diff(self._bounds)).sum())) / sample_rate


def filter_rows(rows: Sequence[dict], sample_rate: int, min_sample_size: int, labels: LabelStore | None = None) -> list[int]:
    """Indices of rows long enough to train on (and with labels when a store is given); logs what is dropped.

    Reads the durations column of a :class:`ManifestRows` (no row is parsed)."""
    dur = manifest_durations(rows)
    labelled = labels.labelled() if labels is not None else np.ones(dur.size, dtype=bool)
    short = labelled & (dur * sample_rate < min_sample_size)
    keep = np.nonzero(labelled & ~short)[0].tolist()
    n_short, unlabeled = int(short.sum()), int((~labelled).sum())
    if n_short or unlabeled:
        log.info("data: %d rows kept, %d shorter than %d samples, %d without labels", len(keep), n_short, min_sample_size, unlabeled)
    return keep


class Subset(Dataset):
    """Rows ``indices`` of a :class:`PretrainDataset`, keyed like it with ``(position, seed)``."""

    def __init__(self, base: PretrainDataset, indices: Sequence[int]):
        self.base, self.indices = base, np.asarray(indices, dtype=np.int64).reshape(-1)  # 8 bytes a row

    def __len__(self) -> int:
        return len(self.indices)

    def size(self, j: int) -> int:
        return self.base.size(int(self.indices[j]))

    def sizes(self) -> np.ndarray:
        """int64 ``[len(self)]``: :meth:`size` of every position (the batch sampler's input)."""
        return self.base.sizes(self.indices)

    def __getitem__(self, key) -> dict:
        j, seed = key if isinstance(key, tuple) else (key, 0)
        return self.base[(int(self.indices[j]), seed)]
