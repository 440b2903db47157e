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

Memory: songs are read from their ``.npz`` files when a document is built; blocks are numpy arrays. Nothing holds
the corpus as Python lists.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from yue.lm.config import CODE_KEYS, LMTrainConfig
from yue.tokenizer import YuETokenizer, find_released_tokenizer

log = logging.getLogger(__name__)

IGNORE_INDEX = -100

__all__ = ["DataError", "Segment", "SongRecord", "PreparedData", "DocumentBuilder", "Packer", "BlockStream",
           "Collator", "schedule_at", "icl_span", "token_report", "eval_blocks", "pack_documents", "training_documents"]  # fmt: skip


class DataError(ValueError):
    """A prepared folder, manifest row or codes file that cannot be used (names the file/row/field and why)."""


@dataclass(frozen=True)
class Segment:
    """A labelled lyrics section and its frame range ``[frame_start, frame_end)`` in the song's codes."""

    label: str
    text: str
    frame_start: int
    frame_end: int


@dataclass
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


class PreparedData:
    """A ``yue prepare`` folder: manifest rows (bad ones skipped with a reason), lazily loaded codes, tokenizer.

    Attributes:
        songs: valid :class:`SongRecord` rows, manifest order.
        skipped: ``(row id or line, reason)`` for every row or song that could not be used.
        tok: the :class:`YuETokenizer` the folder was prepared with.
    """

    def __init__(self, folder: str | Path, tokenizer: str | None = None):
        self.folder = Path(folder)
        manifest = self.folder / "manifest.jsonl"
        if not manifest.is_file():
            raise DataError(f"{manifest}: not found (run `yue prepare -o {self.folder}` first)")
        self.songs: list[SongRecord] = []
        self.skipped: list[tuple[str, str]] = []
        seen = set()
        for n, line in enumerate(manifest.read_text().splitlines(), 1):
            if not line.strip():
                continue
            where = f"{manifest}:{n}"
            try:
                rec = parse_row(json.loads(line), self.folder, where)
                if rec.id in seen:
                    raise DataError(f"{where}: duplicate id {rec.id!r}")
            except json.JSONDecodeError as e:
                self.skipped.append((where, f"not JSON ({e})"))
                continue
            except DataError as e:
                self.skipped.append((where, str(e)))
                continue
            seen.add(rec.id)
            self.songs.append(rec)
        for where, why in self.skipped:
            log.warning("skipping manifest row %s", why if why.startswith(where) else f"{where}: {why}")
        self.tok = find_tokenizer(self.folder, tokenizer)

    def split(self, name: str, limit: int = 0) -> list[SongRecord]:
        out = [s for s in self.songs if s.split == name]
        return out[:limit] if limit > 0 else out

    def codes(self, rec: SongRecord) -> dict[str, np.ndarray]:
        """``{"vocal", "accompaniment", "mix"}`` -> ``[K, T]`` int64 codes (raises :class:`DataError`)."""
        p = rec.codes_path
        try:
            with np.load(p, allow_pickle=False) as z:
                out = {k: np.asarray(z[k]).astype(np.int64) for k in ("vocal", "accompaniment", "mix") if k in z.files}
        except (OSError, ValueError) as e:
            raise DataError(f"{p}: unreadable codes file ({e})") from e
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
        v0, i0, m0 = (codes[k][0] for k in ("vocal", "accompaniment", "mix"))
        ref = None
        if rng is not None:
            m = self.cfg.modes
            a, b = icl_span(rec, m0 if mode != "dual" else v0, rng, m.icl_mean_s, m.icl_std_s, m.icl_min_s,
                            m.icl_max_s, self.cfg.data.fps)  # fmt: skip
            ref = (Reference("dual", v0[a:b], i0[a:b]) if mode == "dual"
                   else Reference("single", codes[CODE_KEYS[mode]][0, a:b]))  # fmt: skip
        if mode == "dual":
            song = Stage1Song(rec.tags, sections, [v0[s.frame_start : s.frame_end] for s in rec.segments],
                              [i0[s.frame_start : s.frame_end] for s in rec.segments], ref)  # fmt: skip
            return build_stage1(tok, song, eod=True)
        # single-track modes: the same CoT layout with one codebook-0 id per frame in each audio block
        track = codes[CODE_KEYS[mode]][0]
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
        ids, _ = build_stage2_document(self.layout, arr[:8], chunk_frames=self.cfg.data.stage2_chunk_frames,
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
        self.builder, self.songs, self.blocks_per_step, self.seed = builder, list(songs), blocks_per_step, seed
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
    """

    pad_id: int
    doc_masking: bool = True

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
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
        return {"input_ids": ids, "labels": labels, "position_ids": pos}


# ---------------------------------------------------------------------------------------------------------------
# reports and held-out blocks
# ---------------------------------------------------------------------------------------------------------------
def token_report(builder: DocumentBuilder, data: PreparedData, splits: Sequence[str], modes: Sequence[str],
                 icl_seed: int | None = None, max_songs: int = 0) -> dict:  # fmt: skip
    """Documents and tokens per split and mode (``"<mode>+icl"`` too when ``icl_seed`` is given: one seeded draw).

    Returns ``{split: {mode: {"songs": n, "tokens": n}}, "skipped": [[song, mode, reason], ...]}``.
    """
    out: dict = {"skipped": []}
    for split in splits:
        songs = data.split(split, max_songs if split == builder.cfg.data.train_split else 0)
        row: dict = {}
        for mode in modes:
            for icl in ([False, True] if icl_seed is not None else [False]):
                n_docs = n_tok = 0
                for k, rec in enumerate(songs):
                    try:
                        rng = np.random.default_rng([icl_seed, k]) if icl else None
                        n_tok += int(builder.document(rec, mode, rng).size)
                        n_docs += 1
                    except DataError as e:
                        if not icl:
                            out["skipped"].append([rec.id, mode, str(e)])
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
