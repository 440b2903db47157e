"""Training data of the two LMs: documents built from ``yue prepare``'s folder, packed into fixed blocks.

Input (a ``yue prepare -o DIR`` folder)::

    DIR/manifest.jsonl      {id, split, tags, frames, segments: [{label, text, frame_start, frame_end}], ...}
    DIR/codes/<id>.npz      vocal, accompaniment, mix: int16 [K, T] (equal T; 50 frames/s)
    DIR/tokenizer/          tokenizer.model (+ layout.json for a small test tokenizer), or report.json names it

Documents (one per song and mode, rebuilt from the codes so every track mode and ICL reference can be drawn):

- stage 1 (spec 2.3, CoT layout via :func:`yue.sequences.build_stage1`): ``dual`` (vocal/instrumental codebook 0
  interleaved, as released), ``mix`` / ``vocal`` / ``inst`` (one track, 1 id per frame); optionally with an ICL
  reference cut from the same song (length ~ N(30 s, var 3) truncated to [20, 40] s, halved while longer than the
  lyric span, starting in a chorus when there is one, redrawn up to 5 times when < 10 % of its codes are distinct).
- stage 2 (spec 3, :func:`yue.sequences.build_stage2_document`): per stem (``vocal``, ``inst``) and for the ``mix``,
  exact ``stage2_chunk_frames`` chunks, teacher-forced frame-major codebooks 0..7.

Every document ends with ``<EOD>``. :class:`Packer` concatenates documents and cuts the stream into blocks of
``block_size`` tokens (Megatron-style, as the released finetune packs). In a block:

- ``input_ids == labels`` except where the label is ``-100``; the one shift happens inside the model
  (``LlamaForCausalLM`` scores ``logits[t]`` against ``labels[t + 1]``);
- the first token of a document that follows an ``<EOD>`` in the same block has label ``-100``: nothing is scored
  across a document boundary (``<EOD>`` itself is a target: the model learns where a song ends);
- padding (only in a final partial block) has label ``-100``;
- with ``doc_masking`` the position ids restart at 0 at every document start (and at the padding), which keeps
  attention inside each document (transformers builds the block-diagonal mask from the position ids; ``packed_sdpa``
  computes only the diagonal blocks).

Memory and the cluster (issue 13): training only opens a finished folder, and no rank builds data.
:class:`PreparedData` streams the manifest once, validating every row, and keeps 18 bytes per song (where its row
is: :class:`SongTable`; a record is parsed again when a document is built). It refuses a folder ``yue prepare`` has
not finished (:class:`PreparedFolderError`: no manifest, or a row count that differs from the ``report.json``
prepare writes last, i.e. a run still appending or interrupted), so every rank of every node sees the same songs.
A song's codes are memory-mapped from its ``.npz`` (``np.savez`` stores members uncompressed: :func:`open_codes`
maps them in place), so a stage-1 document reads only codebook 0 of each stem (1/K of the file); nothing holds the
corpus in RAM or as Python lists, and blocks are numpy arrays. Measured by ``benchmarks/data_open.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from musiccore.attention import varlen_kwargs
from musiccore.data.rowtable import RowTable
from yue.lm.config import CODE_KEYS, LMTrainConfig
from yue.tokenizer import YuETokenizer, find_released_tokenizer

log = logging.getLogger(__name__)

IGNORE_INDEX = -100

__all__ = ["DataError", "PreparedFolderError", "Segment", "SongRecord", "SongTable", "PreparedData",
           "DocumentBuilder", "Packer", "BlockStream", "Collator", "schedule_at", "icl_span", "token_report",
           "eval_blocks", "pack_documents", "training_documents", "open_codes", "REPORT_MAX_SONGS"]  # fmt: skip

# the token report rank 0 writes before training counts at most this many songs per split (evenly spaced) and
# scales up: exact on small sets, seconds instead of hours on a cluster-sized one (other ranks wait for rank 0)
REPORT_MAX_SONGS = 200


class DataError(ValueError):
    """A prepared folder, manifest row or codes file that cannot be used (names the file/row/field and why)."""


class PreparedFolderError(DataError):
    """A prepared folder training must not open: missing, or not finished by ``yue prepare`` (one-line message that
    names the ``yue prepare`` command to run)."""


@dataclass(frozen=True, slots=True)
class Segment:
    """A labelled lyrics section and its frame range ``[frame_start, frame_end)`` in the song's codes."""

    label: str
    text: str
    frame_start: int
    frame_end: int


@dataclass(slots=True)
class SongRecord:
    """One manifest row: song id, split, tags (one line), frame count ``T`` and its segments."""

    id: str
    split: str
    tags: str
    frames: int
    segments: list[Segment]
    codes_path: Path


def _row_error(where: str, msg: str) -> DataError:
    return DataError(f"{where}: {msg}")


def parse_row(row: dict, folder: Path, where: str) -> SongRecord:
    """Validate one ``manifest.jsonl`` row of the input contract (raises :class:`DataError` naming the field)."""
    if not isinstance(row, dict):
        raise _row_error(where, f"expected a JSON object, got {type(row).__name__}")
    for key, typ in (("id", str), ("split", str), ("frames", int), ("segments", list)):
        if key not in row:
            raise _row_error(where, f"missing field {key!r}")
        if not isinstance(row[key], typ) or isinstance(row[key], bool):
            raise _row_error(where, f"field {key!r} must be {typ.__name__}, got {type(row[key]).__name__}")
    sid, frames = row["id"], row["frames"]
    if not sid or "/" in sid:
        raise _row_error(where, f"field 'id' must be a non-empty file-name-safe string, got {sid!r}")
    if frames <= 0:
        raise _row_error(where, f"field 'frames' must be > 0, got {frames}")
    tags = row.get("tags", "")
    if isinstance(tags, (list, tuple)):
        tags = " ".join(str(t) for t in tags)
    if not isinstance(tags, str) or "\n" in tags:
        raise _row_error(where, f"field 'tags' must be one line of text or a list, got {tags!r}")
    segs: list[Segment] = []
    for k, s in enumerate(row["segments"]):
        sw = f"{where}: segments[{k}]"
        if not isinstance(s, dict):
            raise DataError(f"{sw}: expected an object")
        for key, typ in (("label", str), ("text", str), ("frame_start", int), ("frame_end", int)):
            if not isinstance(s.get(key), typ) or isinstance(s.get(key), bool):
                raise DataError(f"{sw}: field {key!r} must be {typ.__name__}, got {s.get(key)!r}")
        a, b = s["frame_start"], s["frame_end"]
        if not 0 <= a < b <= frames:
            raise DataError(f"{sw}: frame range [{a}, {b}) is not inside the song's {frames} frames")
        if not s["label"].replace("_", "").isalnum():
            raise DataError(f"{sw}: label {s['label']!r} is not one word")
        segs.append(Segment(s["label"], s["text"].strip(), a, b))
    if not segs:
        raise _row_error(where, "no segments (a stage-1 document needs at least one labelled section)")
    return SongRecord(sid, row["split"], tags, frames, segs, folder / "codes" / f"{sid}.npz")


def find_tokenizer(folder: Path, explicit: str | None = None) -> YuETokenizer:
    """The tokenizer of a prepared folder: ``explicit``, else ``<folder>/tokenizer/tokenizer.model``, else the path
    in ``report.json`` (key ``tokenizer``), else the released one."""
    if explicit:
        return YuETokenizer(explicit)
    own = folder / "tokenizer" / "tokenizer.model"
    if own.is_file():
        return YuETokenizer(own)
    rep = folder / "report.json"
    if rep.is_file():
        try:
            rec = json.loads(rep.read_text()).get("tokenizer")
        except (OSError, json.JSONDecodeError, AttributeError) as e:
            raise DataError(f"{rep}: unreadable ({e})") from e
        if isinstance(rec, dict):
            rec = rec.get("path")
        if isinstance(rec, str) and rec not in ("", "released"):
            p = Path(rec) if Path(rec).is_absolute() else folder / rec
            if p.is_dir():
                p = p / "tokenizer.model"
            return YuETokenizer(p)
    rel = find_released_tokenizer()
    if rel is None:
        raise DataError(f"{folder}: no tokenizer/tokenizer.model, none named in report.json, and the released one "
                        "was not found (set data.tokenizer or $YUE_TOKENIZER)")  # fmt: skip
    return YuETokenizer(rel)


_ZIP_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature .. file name length, extra field length (30 bytes)


def open_codes(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a ``codes/<id>.npz``, memory-mapped where the member is stored uncompressed (``np.savez``).

    ``np.load`` reads a whole ``.npz`` member into memory (it cannot memory-map inside a zip); a stored member is a
    plain ``.npy`` at a known offset of the file, so it is mapped in place (read-only ``np.memmap``) and only the
    pages a caller slices are read. Compressed members (``np.savez_compressed``) are read into memory.

    Returns:
        ``{member name without .npy: array}`` (int16 ``[K, T]`` for prepare's codes).

    Raises:
        OSError, ValueError, zipfile.BadZipFile: a missing, truncated or foreign file (the caller names it).
    """
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f, zipfile.ZipFile(f) as z:
        for info in z.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if info.compress_type != zipfile.ZIP_STORED:
                with z.open(info) as m:
                    out[name] = np.lib.format.read_array(m, allow_pickle=False)
                continue
            # the member's data follows its local header (whose name/extra lengths may differ from the directory's)
            f.seek(info.header_offset)
            head = _ZIP_LOCAL_HEADER.unpack(f.read(_ZIP_LOCAL_HEADER.size))
            if head[0] != b"PK\x03\x04":
                raise ValueError(f"member {info.filename}: bad local header")
            f.seek(info.header_offset + _ZIP_LOCAL_HEADER.size + head[-2] + head[-1])
            start = f.tell()
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):  # 3.0 (utf-8 field names) is not a codes array: read it
                with z.open(info) as m:
                    out[name] = np.lib.format.read_array(m, allow_pickle=False)
                continue
            fmt = np.lib.format
            shape, fortran, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
            if dtype.hasobject:
                raise ValueError(f"member {info.filename}: object arrays are not codes")
            data_at = f.tell()
            n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if data_at - start + n_bytes > info.file_size:
                raise ValueError(f"member {info.filename}: {shape} {dtype} does not fit its {info.file_size} bytes")
            if n_bytes == 0:
                out[name] = np.zeros(shape, dtype)
                continue
            out[name] = np.memmap(path, dtype=dtype, mode="r", offset=data_at, shape=shape,
                                  order="F" if fortran else "C")  # fmt: skip
    return out


def check_finished(folder: Path, json_rows: int) -> None:
    """Refuse a folder a ``yue prepare`` run has not finished (:class:`PreparedFolderError`, one line).

    ``prepare`` appends a manifest row per song and writes ``report.json`` (with ``counts.in_manifest``, the rows it
    saw) last, so a manifest with another row count is still being written or was interrupted; training on it would
    give ranks that read it at different moments different song lists. A folder without ``report.json`` (assembled
    by hand) is accepted with a warning: its completeness cannot be checked.
    """
    rep = folder / "report.json"
    cmd = f"`yue prepare -o {folder} ...` (the same arguments)"
    if not rep.is_file():
        log.warning("%s: no report.json (not written by a finished `yue prepare`): completeness not checked", folder)
        return
    try:
        n = int(json.loads(rep.read_text())["counts"]["in_manifest"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PreparedFolderError(f"{rep}: unreadable or without counts.in_manifest ({type(e).__name__}: {e}); "
                                  f"rerun {cmd} to rewrite it") from e  # fmt: skip
    if n != json_rows:
        raise PreparedFolderError(f"{folder}: stale prepared folder: manifest.jsonl has {json_rows} rows but "
                                  f"report.json counts {n} (a `yue prepare` run is still writing it or was "
                                  f"interrupted); finish it with {cmd}, which keeps the songs already "
                                  "there")  # fmt: skip


class SongTable(RowTable):
    """The valid manifest rows of a prepared folder, kept as byte ranges of ``manifest.jsonl`` (a read-only
    ``Sequence`` of :class:`SongRecord`; the shared :class:`musiccore.data.rowtable.RowTable`).

    Memory: 18 bytes per song (offset int64, length int32, line int32, split code int16) instead of a Python record
    with its sections and lyrics (~4 KB), so a rank holds 10M songs in ~180 MB; a record is re-read (``os.pread``,
    one call) and parsed when it is indexed, i.e. when a document is built. Indexing with a slice or a
    boolean/integer array gives another table over the same file.
    """

    error = DataError

    @property
    def manifest(self) -> Path:
        """``<folder>/manifest.jsonl`` as the folder was named."""
        return Path(self.name)

    @property
    def folder(self) -> Path:
        return self.manifest.parent

    @property
    def splits(self) -> np.ndarray:
        """``[N]`` int16: each song's split, an index into :attr:`split_names`."""
        return self.column("split")

    @property
    def split_names(self) -> list[str]:
        return self.categories["split"]

    def parse(self, obj, where: str) -> SongRecord:
        return parse_row(obj, self.folder, where)


class PreparedData:
    """A ``yue prepare`` folder: manifest rows (bad ones skipped with a reason), memory-mapped codes, tokenizer.

    Opening streams the manifest once (every row validated with :func:`parse_row`, bad ones and later duplicates
    skipped) and keeps only where each valid row is (:class:`SongTable`); codes are mapped per song when a document
    is built (:meth:`codes`). Nothing is written: a folder that is missing or that ``yue prepare`` has not finished
    is refused, so no rank of any node builds or completes data.

    Attributes:
        songs: the valid rows, manifest order (:class:`SongTable` of :class:`SongRecord`).
        skipped: ``(row id or line, reason)`` for every row or song that could not be used, in line order.
        tok: the :class:`YuETokenizer` the folder was prepared with.

    Raises:
        PreparedFolderError: no manifest, or a folder ``yue prepare`` has not finished (:func:`check_finished`).
    """

    def __init__(self, folder: str | Path, tokenizer: str | None = None):
        self.folder = Path(folder)
        manifest = self.folder / "manifest.jsonl"
        if not manifest.is_file():
            raise PreparedFolderError(f"{manifest}: not found (run `yue prepare -o {self.folder}` first)")
        folder = self.folder

        def check(row, where: str) -> dict:
            rec = parse_row(row, folder, where)  # validated once here, parsed again when a song is used
            return {"split": rec.split,
                    "id_hash": int.from_bytes(hashlib.blake2b(rec.id.encode(), digest_size=8).digest(), "little",
                                              signed=True)}  # fmt: skip

        scan = SongTable.scan(manifest, check, {"split": str, "id_hash": np.int64}, errors=(DataError,))
        skipped = [(b.line, b.where, f"not JSON ({b.error})" if b.not_json else str(b.error)) for b in scan.bad]
        check_finished(self.folder, scan.json_rows)
        h, table = scan.table.column("id_hash"), scan.table.without("id_hash")
        # duplicate ids: a row whose id (8-byte hash, confirmed on the ids themselves) came earlier is skipped
        _, first = np.unique(h, return_index=True)
        keep = np.zeros(h.size, dtype=bool)
        keep[first] = True
        if not keep.all():
            seen: set[str] = set()
            for j in np.nonzero(np.isin(h, h[~keep]))[0]:  # only the rows whose hash occurs more than once
                sid = table[int(j)].id
                keep[j] = sid not in seen  # (two different ids with one hash are both kept)
                seen.add(sid)
                if not keep[j]:
                    where = f"{manifest}:{int(table.lines[j])}"
                    skipped.append((int(table.lines[j]), where, f"{where}: duplicate id {sid!r}"))
        self.songs = table if keep.all() else table[keep]
        self.skipped = [(where, why) for _, where, why in sorted(skipped)]
        for where, why in self.skipped:
            log.warning("skipping manifest row %s", why if why.startswith(where) else f"{where}: {why}")
        self.tok = find_tokenizer(self.folder, tokenizer)

    def split(self, name: str, limit: int = 0) -> SongTable:
        """The songs of split ``name`` (the first ``limit`` when > 0), manifest order."""
        code = self.songs.split_names.index(name) if name in self.songs.split_names else -1
        out = self.songs[np.nonzero(self.songs.splits == code)[0]]
        return out[:limit] if limit > 0 else out

    def codes(self, rec: SongRecord) -> dict[str, np.ndarray]:
        """``{"vocal", "accompaniment", "mix"}`` -> ``[K, T]`` integer codes, memory-mapped (:func:`open_codes`: as
        stored, int16 for prepare's files; slice, then convert what is used). Raises :class:`DataError`."""
        p = rec.codes_path
        try:
            arrays = open_codes(p)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"{p}: unreadable codes file ({e})") from e
        out = {k: v for k, v in arrays.items() if k in ("vocal", "accompaniment", "mix")}
        if any(v.dtype.kind not in "iu" for v in out.values()):
            raise DataError(f"{p}: codes must be integers, got {({k: str(v.dtype) for k, v in out.items()})}")
        missing = {"vocal", "accompaniment", "mix"} - set(out)
        if missing:
            raise DataError(f"{p}: missing stem(s) {sorted(missing)}")
        shapes = {k: v.shape for k, v in out.items()}
        if any(v.ndim != 2 for v in out.values()) or len({s[1] for s in shapes.values()}) != 1:
            raise DataError(f"{p}: stems must be [K, T] with equal T, got {shapes}")
        t, end = out["mix"].shape[1], max(s.frame_end for s in rec.segments)
        if t < end:
            raise DataError(f"{p}: {t} frames, but song {rec.id}'s segments end at frame {end}")
        return out


# ---------------------------------------------------------------------------------------------------------------
# documents
# ---------------------------------------------------------------------------------------------------------------
def icl_span(rec: SongRecord, codes_cb0: np.ndarray, rng: np.random.Generator, mean_s: float, std_s: float,
             min_s: float, max_s: float, fps: int = 50) -> tuple[int, int]:  # fmt: skip
    """Frame range ``[a, b)`` of an ICL reference (spec 2.3), drawn with ``rng``.

    Length: N(mean, std) truncated to [min, max] seconds (redrawn until inside, clipped after 100 tries), halved
    while longer than the lyric span [first segment start, last segment end). Start: inside a random chorus segment
    when the song has one, else uniform in the span. Up to 5 draws while fewer than 10 % of the codes
    (``codes_cb0`` ``[T]``) in the range are distinct.
    """
    lo, hi = min(s.frame_start for s in rec.segments), max(s.frame_end for s in rec.segments)
    choruses = [s for s in rec.segments if s.label.lower().startswith("chorus")]
    best = None
    for _ in range(5):
        for _ in range(100):
            sec = rng.normal(mean_s, std_s)
            if min_s <= sec <= max_s:
                break
        sec = float(np.clip(sec, min_s, max_s))
        n = max(1, int(round(sec * fps)))
        while n > hi - lo and n > 1:
            n //= 2  # upstream halves a prompt longer than the span
        if choruses:
            c = choruses[int(rng.integers(len(choruses)))]
            a = int(rng.integers(c.frame_start, c.frame_end))
        else:
            a = int(rng.integers(lo, max(lo + 1, hi - n + 1)))
        a = max(lo, min(a, hi - n))
        best = (a, a + n)
        seg = codes_cb0[a : a + n]
        if len(np.unique(seg)) >= 0.1 * max(1, seg.size):
            break
    assert best is not None
    return best


class DocumentBuilder:
    """Builds the token ids (int32 ``[N]``, ``<EOD>``-terminated) of one song in one mode."""

    def __init__(self, data: PreparedData, cfg: LMTrainConfig):
        self.data, self.cfg, self.tok = data, cfg, data.tok
        self.layout = self.tok.layout

    def document(self, rec: SongRecord, mode: str, icl_rng: np.random.Generator | None = None) -> np.ndarray:
        """Ids of ``rec`` in ``mode`` (stage 1 with an ICL reference when ``icl_rng`` is given).

        Raises:
            DataError: unreadable codes, or a song that gives no document (e.g. stage 2 on a song < one chunk).
        """
        from yue.codec_ids import CodecIdError
        from yue.lyrics import LyricsError
        from yue.sequences import SequenceError

        codes = self.data.codes(rec)
        try:
            if self.cfg.task == "stage1":
                ids = self._stage1(rec, codes, mode, icl_rng)
            else:
                ids = self._stage2(rec, codes, mode)
        except (SequenceError, CodecIdError, LyricsError) as e:
            raise DataError(f"song {rec.id} ({mode}): {e}") from e
        if not ids:
            raise DataError(f"song {rec.id} ({mode}): no document (stage 2 needs {self.cfg.data.stage2_chunk_frames} "
                            f"frames with >= {self.cfg.data.stage2_min_unique} distinct codes)")  # fmt: skip
        return np.asarray(ids, dtype=np.int32)

    def _stage1(self, rec, codes, mode, rng) -> list[int]:
        from yue.lyrics import Section
        from yue.sequences import MARKERS, Reference, Stage1Song, _reference_ids, build_stage1, head_text

        tok = self.tok
        sections = [Section(s.label, s.text) for s in rec.segments]
        # codebook 0 only: the rows of the memory-mapped codes that stage 1 reads (1/K of the file)
        cb0 = {m: np.asarray(codes[k][0], dtype=np.int64) for m, k in CODE_KEYS.items()}
        v0, i0, m0 = cb0["vocal"], cb0["inst"], cb0["mix"]
        ref = None
        if rng is not None:
            m = self.cfg.modes
            a, b = icl_span(rec, m0 if mode != "dual" else v0, rng, m.icl_mean_s, m.icl_std_s, m.icl_min_s,
                            m.icl_max_s, self.cfg.data.fps)  # fmt: skip
            ref = (Reference("dual", v0[a:b], i0[a:b]) if mode == "dual"
                   else Reference("single", cb0[mode][a:b]))  # fmt: skip
        if mode == "dual":
            song = Stage1Song(rec.tags, sections, [v0[s.frame_start : s.frame_end] for s in rec.segments],
                              [i0[s.frame_start : s.frame_end] for s in rec.segments], ref)  # fmt: skip
            return build_stage1(tok, song, eod=True)
        # single-track modes: the same CoT layout with one codebook-0 id per frame in each audio block
        track = cb0[mode]
        soa, eoa, xc = tok.id("<SOA>"), tok.id("<EOA>"), tok.id("<xcodec>")
        ids = tok.tokenize(head_text(rec.tags, sections))
        if ref is not None:
            ids += _reference_ids(tok, ref)
        sos, eos = tok.tokenize(MARKERS["start_of_segment"]), tok.tokenize(MARKERS["end_of_segment"])
        xcl = self.layout.xcodec
        for sec, s in zip(sections, rec.segments):
            body = xcl.codes_to_ids(track[None, s.frame_start : s.frame_end], 0).tolist()
            ids += sos + tok.tokenize(sec.render()) + [soa, xc] + body + [eoa] + eos
        ids.append(tok.id("<EOD>"))
        return ids

    def _stage2(self, rec, codes, mode) -> list[int]:
        from yue.sequences import build_stage2_document

        arr = codes[CODE_KEYS[mode]]
        if arr.shape[0] < 8:
            raise DataError(f"{rec.codes_path}: {CODE_KEYS[mode]} has {arr.shape[0]} codebooks; stage 2 needs 8")
        ids, _ = build_stage2_document(self.layout, np.asarray(arr[:8], dtype=np.int64),
                                       chunk_frames=self.cfg.data.stage2_chunk_frames,
                                       min_unique=self.cfg.data.stage2_min_unique, eod=True)  # fmt: skip
        return ids


# ---------------------------------------------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------------------------------------------
class Packer:
    """Concatenate documents and cut the stream into blocks of ``block_size`` tokens.

    Each block is a dict of int64 arrays ``input_ids``, ``labels``, ``position_ids`` (all ``[block_size]``) and
    ``doc_ids`` (which document of the stream each token belongs to; not fed to the model). See the module
    docstring for the label rules.
    """

    def __init__(self, block_size: int, doc_masking: bool, pad_id: int):
        self.L, self.doc_masking, self.pad_id = block_size, doc_masking, pad_id
        self._ids: list[np.ndarray] = []
        self._docs: list[np.ndarray] = []
        self._n = 0
        self._doc_count = 0

    def add(self, doc: np.ndarray) -> list[dict]:
        """Append one document; return the blocks it completed."""
        doc = np.asarray(doc, dtype=np.int64)
        if doc.size == 0:
            return []
        self._ids.append(doc)
        self._docs.append(np.full(doc.size, self._doc_count, dtype=np.int64))
        self._doc_count += 1
        self._n += doc.size
        out = []
        while self._n >= self.L:
            ids, docs = np.concatenate(self._ids), np.concatenate(self._docs)
            out.append(self._block(ids[: self.L], docs[: self.L], self.L))
            self._ids, self._docs, self._n = [ids[self.L :]], [docs[self.L :]], ids.size - self.L
        return out

    def flush(self) -> list[dict]:
        """The final partial block, padded (``[]`` when nothing is left)."""
        if self._n == 0:
            return []
        ids, docs = np.concatenate(self._ids), np.concatenate(self._docs)
        self._ids, self._docs, self._n = [], [], 0
        n = ids.size
        ids = np.concatenate([ids, np.full(self.L - n, self.pad_id, dtype=np.int64)])
        docs = np.concatenate([docs, np.full(self.L - n, -1, dtype=np.int64)])
        return [self._block(ids, docs, n)]

    def _block(self, ids: np.ndarray, docs: np.ndarray, n_real: int) -> dict:
        L = ids.size
        labels = ids.copy()
        labels[n_real:] = IGNORE_INDEX  # padding is never a target
        # a document start inside the block: its first token would be predicted from the previous document's <EOD>
        start = np.zeros(L, dtype=bool)
        start[1:] = docs[1:] != docs[:-1]
        labels[start] = IGNORE_INDEX
        if self.doc_masking:
            # position ids restart at every document start (and at the padding run): attention stays inside
            start[0] = True
            idx = np.arange(L)
            pos = idx - np.maximum.accumulate(np.where(start, idx, 0))
        else:
            pos = np.arange(L)
        return {"input_ids": ids, "labels": labels, "position_ids": pos.astype(np.int64), "doc_ids": docs}


def pack_documents(docs: Iterable[np.ndarray], block_size: int, doc_masking: bool, pad_id: int,
                   max_blocks: int = 0) -> list[dict]:  # fmt: skip
    """All blocks of a finite list of documents (the last one padded); at most ``max_blocks`` when > 0."""
    p = Packer(block_size, doc_masking, pad_id)
    out: list[dict] = []
    for d in docs:
        out += p.add(d)
        if max_blocks and len(out) >= max_blocks:
            return out[:max_blocks]
    out += p.flush()
    return out[:max_blocks] if max_blocks else out


def schedule_at(cfg: LMTrainConfig, step: int) -> tuple[dict[str, float], float]:
    """Mode weights and ICL share in force at optimizer ``step`` (base values, then every phase started by then)."""
    weights, icl = cfg.base_weights(), cfg.modes.icl_share
    for p in sorted(cfg.modes.schedule, key=lambda p: p.start_step):
        if p.start_step > step:
            break
        if p.weights:
            weights = dict(p.weights)
        if p.icl_share >= 0:
            icl = p.icl_share
    return weights, icl


class BlockStream(torch.utils.data.IterableDataset):
    """Endless, deterministic stream of training blocks (an ``IterableDataset`` for ``transformers.Trainer``).

    Epoch ``e`` visits the training songs in a seeded permutation; each song gets one document whose mode (and ICL
    reference) is drawn with ``default_rng([seed, e, song index])`` from the weights in force at the optimizer step
    the stream has reached (``blocks // blocks_per_step``). The stream is a pure function of the config, so a resumed
    run (the Trainer skips the batches already trained) sees exactly the blocks it would have seen.
    """

    def __init__(self, builder: DocumentBuilder, songs: Sequence[SongRecord], blocks_per_step: int, seed: int):
        super().__init__()
        if not songs:
            raise DataError(f"{builder.data.folder}: no training songs (split {builder.cfg.data.train_split!r})")
        # a SongTable stays a table (18 bytes per song); anything else becomes a list
        self.builder, self.blocks_per_step, self.seed = builder, blocks_per_step, seed
        self.songs = songs if isinstance(songs, RowTable) else list(songs)
        cfg = builder.cfg
        self.packer_args = (cfg.data.block_size, cfg.data.doc_masking, builder.layout.id("<PAD>"))
        self.mode_counts: dict[str, int] = {}
        self.history: list[tuple[int, str, str]] | None = None  # set to [] to record (step, song, mode) per document

    def __iter__(self) -> Iterator[dict]:
        cfg = self.builder.cfg
        packer = Packer(*self.packer_args)
        emitted, epoch, bad = 0, 0, set()
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.songs))
            made = 0
            for j in order:
                rec = self.songs[int(j)]
                weights, icl = schedule_at(cfg, emitted // self.blocks_per_step)
                names = [m for m, w in weights.items() if w > 0]
                p = np.array([weights[m] for m in names], dtype=np.float64)
                rng = np.random.default_rng([self.seed, epoch, int(j)])
                mode = names[int(rng.choice(len(names), p=p / p.sum()))]
                use_icl = cfg.task == "stage1" and rng.random() < icl
                try:
                    doc = self.builder.document(rec, mode, rng if use_icl else None)
                except DataError as e:
                    if (rec.id, mode) not in bad:  # report once per song and mode, keep going
                        log.warning("skipping %s", e)
                        bad.add((rec.id, mode))
                    continue
                made += 1
                key = mode + ("+icl" if use_icl else "")
                self.mode_counts[key] = self.mode_counts.get(key, 0) + 1
                if self.history is not None:
                    self.history.append((emitted // self.blocks_per_step, rec.id, key))
                for block in packer.add(doc):
                    emitted += 1
                    yield {k: v for k, v in block.items() if k != "doc_ids"}
            if made == 0:
                raise DataError(f"{self.builder.data.folder}: no training song gave a document in epoch {epoch} "
                                f"(skipped: {sorted(bad)[:5]})")  # fmt: skip
            epoch += 1


@dataclass
class Collator:
    """Stack blocks into a batch: ``input_ids``, ``labels``, ``position_ids`` ``[B, T]`` (no attention mask).

    Rows shorter than the longest (one document per row, the benchmark's baseline) are right-padded with ``pad_id``
    and label -100; the padding's position ids start a new run at 0 under ``doc_masking`` (a separate "document"
    nothing attends to) and continue the row's positions otherwise (causal attention never looks right).

    ``varlen``: also add the document boundaries for flash-attention varlen (``cu_seq_lens_q/k`` int32 [N + 1] over
    the flattened B*T tokens, ``max_length_q/k``: :func:`musiccore.attention.varlen_kwargs`), which transformers'
    ``flash_attention_2`` needs for a batch of more than one row (it infers them from the position ids only for one
    row). :func:`yue.lm.train.train` turns it on and sets ``accelerator_config={"dispatch_batches": False}``: by
    default accelerate feeds an ``IterableDataset`` such as :class:`BlockStream` through its batch dispatcher, which
    slices every tensor of the collated batch along dim 0, even in one process (``cu_seq_lens`` [N + 1] would be cut
    to its first B entries). Off by default here: turn it on only where the batch reaches the model as collated.
    """

    pad_id: int
    doc_masking: bool = True
    varlen: bool = False  # add the flash-attention varlen boundaries (see above)

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor | int]:
        T = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), T), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), T), IGNORE_INDEX, dtype=torch.long)
        pos = torch.zeros((len(batch), T), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.as_tensor(np.asarray(b["input_ids"]))
            labels[i, :n] = torch.as_tensor(np.asarray(b["labels"]))
            pos[i, :n] = torch.as_tensor(np.asarray(b["position_ids"]))
            pos[i, n:] = torch.arange(T - n) + (0 if self.doc_masking else n)
        out: dict[str, torch.Tensor | int] = {"input_ids": ids, "labels": labels, "position_ids": pos}
        if self.varlen:
            out.update(varlen_kwargs(pos))
        return out


# ---------------------------------------------------------------------------------------------------------------
# reports and held-out blocks
# ---------------------------------------------------------------------------------------------------------------
def token_report(builder: DocumentBuilder, data: PreparedData, splits: Sequence[str], modes: Sequence[str],
                 icl_seed: int | None = None, max_songs: int = 0, sample: int = 0) -> dict:  # fmt: skip
    """Documents and tokens per split and mode (``"<mode>+icl"`` too when ``icl_seed`` is given: one seeded draw).

    Args:
        max_songs: the training split's cap (``data.max_songs``; 0 = all).
        sample: when > 0 and a split has more songs, count ``sample`` evenly spaced songs and scale the counts by
            ``songs / sample`` (rounded): building every document of a cluster-sized corpus before training would
            take rank 0 hours while the other ranks wait (see :data:`REPORT_MAX_SONGS`).

    Returns ``{split: {mode: {"songs": n, "tokens": n}}, "skipped": [[song, mode, reason], ...],
    "sampled": {split: {"counted": n, "songs": n}}}`` (``sampled`` names the splits whose counts are estimates;
    ``skipped`` lists the counted songs only).
    """
    out: dict = {"skipped": [], "sampled": {}}
    for split in splits:
        songs = data.split(split, max_songs if split == builder.cfg.data.train_split else 0)
        picks = list(range(len(songs)))
        if 0 < sample < len(songs):
            picks = sorted(set(np.linspace(0, len(songs) - 1, sample).round().astype(int).tolist()))
            out["sampled"][split] = {"counted": len(picks), "songs": len(songs)}
        scale = len(songs) / max(1, len(picks))
        row: dict = {}
        for mode in modes:
            for icl in ([False, True] if icl_seed is not None else [False]):
                n_docs = n_tok = 0
                for k in picks:
                    rec = songs[k]
                    try:
                        rng = np.random.default_rng([icl_seed, k]) if icl else None
                        n_tok += int(builder.document(rec, mode, rng).size)
                        n_docs += 1
                    except DataError as e:
                        if not icl:
                            out["skipped"].append([rec.id, mode, str(e)])
                if scale != 1.0:
                    n_docs, n_tok = round(n_docs * scale), round(n_tok * scale)
                row[mode + ("+icl" if icl else "")] = {"songs": n_docs, "tokens": n_tok}
        out[split] = row
    return out


def eval_blocks(builder: DocumentBuilder, songs: Sequence[SongRecord], modes: Sequence[str],
                max_blocks: int = 0) -> list[dict]:  # fmt: skip
    """Held-out blocks: every song in every mode (no ICL), packed as in training, the last block padded."""
    cfg = builder.cfg
    docs = []
    for rec in songs:
        for mode in modes:
            try:
                docs.append(builder.document(rec, mode))
            except DataError as e:
                log.warning("eval: skipping %s", e)
    return pack_documents(docs, cfg.data.block_size, cfg.data.doc_masking, builder.layout.id("<PAD>"), max_blocks)


def training_documents(builder: DocumentBuilder, songs: Sequence[SongRecord], modes: Sequence[str]) -> Iterator[np.ndarray]:
    """One document per training song and mode (no ICL): what the n-gram baselines are fitted on."""
    for rec in songs:
        for mode in modes:
            try:
                yield builder.document(rec, mode)
            except DataError:
                continue
