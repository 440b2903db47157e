"""Corpus building (``chatmusician data``): MusicPile-style pretraining text and MusicPile-sft-style conversations,
built once on disk with ``datasets`` (arrow, memory-mapped) and only opened by training.

Pipeline (every stage streams: rows go from generators or batched maps straight into arrow files on disk, so memory
stays bounded by a batch, not by the corpus)::

    kit tunes (data kit manifest | music21 corpus)              MusicPile / MusicPile-sft / text files
      -> clean, reject non-ABC, dedup by body digest              -> rows read file by file; a corrupt parquet file,
      -> split by tune (hash of the body)                            malformed jsonl lines and invalid UTF-8 are
      -> SFT task generators, ABC + music-text documents             skipped and counted per file
                  \\____________________ Dataset.from_generator (arrow) ____________________/
      -> pretraining: MusicPile text kept whole; kit ABC mixed to ``abc_text_ratio`` only when asked (> 0)
      -> shuffle (``data.seed``) -> tokenise: Dataset.map(batched, num_proc) -> drop/truncate over-long SFT rows
      -> pack: SFT samples next-fit into rows of ``pack.length``; pretraining documents (+ EOS) cut into blocks of
         ``pack.length`` with positions restarting and the label masked at every document start
      -> <out_dir>/{sft,pretrain}/{tokenized,packed} (save_to_disk layout), {train,valid}.jsonl, tokenizer/, report.json

The pretraining corpus (the one that reaches GBs) is tokenised and packed in windows (:func:`_build_pretrain`): each
window runs in a forked process that exits when its window is written, and every window's arrow file is one file of
the saved split, so no process keeps more than a window of the corpus memory-mapped (a process that reads a whole
memory-mapped file keeps all of it in its RSS) and nothing is copied a second time to save it.

The build writes into ``<out_dir>/.build-*`` and renames the finished parts into place; ``report.json`` (the
manifest: fingerprint of the data-relevant config, tokenizer id, counts, per-file problems) is written last, so a
folder with a matching manifest is always complete. Training calls :func:`open_split`, which refuses a missing or
stale corpus with the ``chatmusician data`` command that builds it: no rank of any node ever builds data.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import random
import shlex
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from musiccore.config import config_hash
from musiccore.runs import atomic_write_json

from . import abctools
from .config import ChatMusicianConfig
from .tokenization import (
    EOS_TEXT,
    IGNORE_INDEX,
    pack_rows,
    pack_pretrain_blocks,
    sft_row,
    tokenize_pretrain,
    tokenize_sft,
    train_tokenizer,
)

log = logging.getLogger(__name__)

# bump when the corpus recipe (cleaning, tasks, tokenizer training, packing) changes: built corpora become stale
DATA_VERSION = 3
SCORE_SOURCES = ("irishman", "kernscores", "bach", "jsb", "abc")  # MusicPile-sft `src` values whose output is ABC
KEY_MODES = {"": "major", "maj": "major", "m": "minor", "min": "minor", "mix": "mixolydian", "dor": "dorian",
             "phr": "phrygian", "lyd": "lydian", "loc": "locrian", "ion": "ionian", "aeo": "aeolian"}
MAP_BATCH = 1000  # rows (SFT rows, chunks <= max_len) per batched map call: the unit of memory of the build
DOC_BATCH = 100  # pretraining documents per batch (a MusicPile "pile" document averages ~46K tokens)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt")


class CorpusError(RuntimeError):
    """The prepared corpus is missing, incomplete or was built from another data config / tokenizer."""


class Report(collections.Counter):
    """Counts of rows read, kept and rejected (by reason), written to ``report.json``; ``files`` holds per-file
    problems (``{path: {"rows": n, "invalid_utf8": k, "malformed_jsonl": m, "error": "..."}}``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.files: dict[str, collections.Counter | dict] = {}

    def reject(self, reason: str, where: str = "", n: int = 1) -> None:
        self[f"rejected/{reason}"] += n
        if where and self[f"rejected/{reason}"] - n < 5:  # name the first few offenders in the log
            log.warning("rejected (%s): %s", reason, where)

    def file(self, path: str | Path) -> collections.Counter:
        """The per-file counter of ``path`` (created on first use)."""
        return self.files.setdefault(str(path), collections.Counter())


# ---------------------------------------------------------------------------------------------------------------
# Input tunes


def music21_tunes(collections_: Iterable[str]) -> Iterator[dict]:
    """Tunes from music21's bundled ABC corpus (public-domain collections), one dict per ``X:`` tune."""
    import music21

    root = Path(music21.__file__).parent / "corpus"
    for coll in collections_:
        for f in sorted((root / coll).glob("*.abc")):
            for i, tune in enumerate(abctools.split_tunes(f.read_text(errors="replace"))):
                try:
                    h = abctools.parse_header(tune)
                except abctools.ABCError:
                    h = {}  # rejected later by clean_tune, and counted
                yield {"id": f"{coll}/{f.stem}/{i}", "collection": coll, "title": h.get("T", ""), "abc": tune,
                       "rhythm": h.get("R", ""), "origin": h.get("O", "")}


def load_tunes(cfg: ChatMusicianConfig) -> list[dict]:
    """Input tunes per ``data.tunes``: the data kit's tunes manifest, falling back to music21's corpus when the kit
    (``musiccore.data``) is not installed or not built."""
    d = cfg.data
    rows: list[dict] = []
    if d.tunes == "kit":
        try:
            from musiccore import data as kit  # type: ignore[attr-defined]

            rows = list(kit.load_manifest("tunes", root=d.kit_root or None))
        except (ImportError, AttributeError, OSError, RuntimeError) as e:  # kit missing or not built
            log.warning("data kit tunes unavailable (%s): reading music21's corpus %s instead", e, d.music21_collections)
            rows = list(music21_tunes(d.music21_collections))
    elif d.tunes == "music21":
        rows = list(music21_tunes(d.music21_collections))
    if d.max_tunes > 0:
        rows = rows[: d.max_tunes]
    return rows


def key_text(k: str) -> str:
    """``G`` -> ``G major``, ``Ador`` -> ``A dorian``: the key written in words for prompts and answers."""
    k = k.strip()
    if not k:
        return ""
    tonic = k[0].upper() + (k[1] if len(k) > 1 and k[1] in "b#" else "")
    mode = k[len(tonic):].strip().lower()[:3]
    return f"{tonic} {KEY_MODES.get(mode, mode)}".strip()


def clean_tune(abc: str, max_bars: int = 0, strip: bool = False) -> str:
    """Normalised tune ``X:1 / L: / M: / K: / body`` (title and free text dropped, as in IrishMAN scores).

    Raises:
        ABCError: no ``K:`` header, no ``L:``/``M:`` (music21 cannot parse without one) or a body without notes.
    """
    norm = abctools.normalize(abc)
    h = abctools.parse_header(norm)
    body = abctools.tune_body(norm)
    if "K" not in h:
        raise abctools.ABCError("no K: header")
    if "L" not in h and "M" not in h:
        raise abctools.ABCError("neither L: nor M: header")
    if strip:
        body = abctools.strip_annotations(body)
    if max_bars > 0:
        body, _ = abctools.first_bars(body, max_bars)
    body = "\n".join(ln.strip() for ln in body.splitlines() if ln.strip())
    if not abctools.has_notes(body):
        raise abctools.ABCError("body has no notes")
    head = ["X:1"] + [f"{k}:{h[k]}" for k in ("L", "M", "K") if h.get(k)]
    return "\n".join(head) + "\n" + body + "\n"


def split_of(body_key: str, valid_fraction: float) -> str:
    """Deterministic split by tune: the first 8 hex digits of sha1(body) as a fraction."""
    v = int(hashlib.sha1(body_key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "valid" if v < valid_fraction else "train"


def prepare_tunes(rows: list[dict], cfg: ChatMusicianConfig, report: Report) -> list[dict]:
    """Clean, reject non-ABC, dedup by normalised body, assign the split. Returns tune dicts with ``abc``,
    ``header`` (parsed), ``body_key`` and ``split``."""
    seen: set[bytes] = set()  # 16-byte digests of the normalised bodies: bounded memory per tune, not per character
    out = []
    for r in rows:
        report["tunes/read"] += 1
        text = r.get("abc") or ""
        try:
            abc = clean_tune(text, cfg.data.max_bars, cfg.data.strip_annotations)
        except abctools.ABCError as e:
            report.reject("not_abc", f"tune {r.get('id')}: {e}")
            continue
        key = abctools.body_key(abc)
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        if digest in seen:
            report.reject("duplicate_tune")
            continue
        seen.add(digest)
        h = abctools.parse_header(abc)
        meta = {"rhythm": r.get("rhythm") or h.get("R", ""), "origin": r.get("origin") or h.get("O", ""),
                "title": r.get("title") or ""}
        n_bars = abctools.validate(abc, use_music21=False, check_bars=False).n_bars
        out.append({"id": str(r.get("id", len(out))), "abc": abc, "header": h, "body_key": key, "n_bars": n_bars,
                    "split": split_of(key, cfg.data.valid_fraction), **meta})
        report["tunes/kept"] += 1
    return out


# ---------------------------------------------------------------------------------------------------------------
# SFT task generators: each returns (instruction, input, reply) or None when the tune does not support the task


def metadata_prompt(tune: dict, bars: bool = False) -> str:
    """The natural-language description a metadata-conditioned prompt gives (also used by ``chatmusician eval``);
    ``bars`` adds ``Bars: N`` (``data.prompt_bars``)."""
    h = tune["header"]
    lines = [f"Key: {key_text(h['K'])}" if h.get("K") else "", f"Meter: {h['M']}" if h.get("M") else "",
             f"Note Length: {h['L']}" if h.get("L") else "", f"Bars: {tune['n_bars']}" if bars and tune.get("n_bars") else "",
             f"Rhythm: {tune['rhythm']}" if tune.get("rhythm") else "", f"Origin: {tune['origin']}" if tune.get("origin") else ""]
    return "\n".join(x for x in lines if x)


METADATA_INSTRUCTION = "Create sheet music in ABC notation from the provided text."


def task_metadata(tune: dict, cfg: ChatMusicianConfig):
    return METADATA_INSTRUCTION, metadata_prompt(tune, cfg.data.prompt_bars), tune["abc"]


def task_continuation(tune: dict, cfg: ChatMusicianConfig):
    body = abctools.tune_body(tune["abc"])
    head_bars, rest = abctools.first_bars(body, cfg.data.continuation_bars)
    if not rest:
        return None
    headers = tune["abc"][: len(tune["abc"]) - len(body)]
    return "Continue the following tune from its first bars, in ABC notation.", headers + head_bars, tune["abc"]


def task_chords(tune: dict, cfg: ChatMusicianConfig):
    seq = abctools.chords(tune["abc"])
    if not seq:
        return None
    uniq = [c for i, c in enumerate(seq) if i == 0 or c != seq[i - 1]]  # drop immediate repeats
    return "Develop a melody using the given chord pattern.", ", ".join(f"'{c}'" for c in uniq), tune["abc"]


def task_transpose(tune: dict, cfg: ChatMusicianConfig, semitones: int):
    try:
        moved = clean_tune(abctools.transpose(tune["abc"], semitones))
    except abctools.ABCError:
        return None
    direction = "up" if semitones > 0 else "down"
    return f"Transpose this tune {direction} by {abs(semitones)} semitones.", tune["abc"].rstrip("\n"), moved


def task_qa(tune: dict, cfg: ChatMusicianConfig, what: str):
    h = tune["header"]
    abc = tune["abc"].rstrip("\n")
    if what == "key" and h.get("K"):
        return "What is the key of this tune?", abc, f"The key is {key_text(h['K'])}."
    if what == "meter" and h.get("M"):
        return "What is the meter of this tune?", abc, f"The meter is {h['M']}."
    if what == "length":
        n = abctools.count_bars(abctools.tune_body(tune["abc"]))
        unit = f"; the unit note length is {h['L']}" if h.get("L") else ""
        return "How long is this tune?", abc, f"The tune has {n} bars{unit}."
    return None


def generate_sft(tunes: list[dict], cfg: ChatMusicianConfig, report: Report) -> list[dict]:
    """All enabled tasks over all tunes, as released-format rows with ``split`` and ``src`` (the task name)."""
    return list(iter_sft(tunes, cfg, report))


def iter_sft(tunes: Iterable[dict], cfg: ChatMusicianConfig, report: Report) -> Iterator[dict]:
    """:func:`generate_sft` one row at a time (what the corpus build streams into arrow)."""
    for t in tunes:
        produced = []
        for task in cfg.data.tasks:
            if task == "metadata":
                produced.append((task, task_metadata(t, cfg)))
            elif task == "continuation":
                produced.append((task, task_continuation(t, cfg)))
            elif task == "chords":
                produced.append((task, task_chords(t, cfg)))
            elif task == "transpose":
                produced += [(task, task_transpose(t, cfg, s)) for s in cfg.data.transpose_semitones]
            elif task.startswith("qa_"):
                produced.append((task, task_qa(t, cfg, task[3:])))
            else:
                raise ValueError(f"data.tasks: unknown task {task!r}")
        for task, res in produced:
            if res is None:
                report[f"skipped_task/{task}"] += 1
                continue
            ins, inp, reply = res
            row = sft_row(ins, inp, reply, src=f"kit_{task}", id=t["id"])
            row["split"] = t["split"]
            yield row


def music_text(tune: dict) -> str:
    """A sentence of music text describing a tune from its headers (offline stand-in for MusicPile's music text)."""
    h = tune["header"]
    parts = [f"\"{tune['title']}\"" if tune.get("title") else "This tune"]
    desc = f" is a {tune['rhythm']}" if tune.get("rhythm") else " is a tune"
    if h.get("K"):
        desc += f" in {key_text(h['K'])}"
    if h.get("M"):
        desc += f", written in {h['M']} time"
    if tune.get("origin"):
        desc += f", from {tune['origin']}"
    n = abctools.count_bars(abctools.tune_body(tune["abc"]))
    return parts[0] + desc + f". It is {n} bars long" + (f" with a unit note length of {h['L']}." if h.get("L") else ".")



# ---------------------------------------------------------------------------------------------------------------
# Released files and extra text (read file by file: a bad file or line is skipped, counted and named, never fatal)


def _input_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in {".parquet", ".jsonl", ".json"} and p.is_file())


def _iter_rows(folder: str | Path, report: Report, kind: str) -> Iterator[tuple[str, dict]]:
    """``(where, row)`` for every row of every ``*.parquet``/``*.jsonl``/``*.json`` file under ``folder``.

    A parquet file whose footer or a row group cannot be read is reported under ``rejected/corrupt_file`` (file +
    reason; rows of the row groups before the damage are kept and said so) and the next file is read. jsonl lines that
    are not valid UTF-8 are rejected under ``rejected/invalid_utf8`` (never decoded with replacement characters), lines
    that are not JSON objects under ``rejected/malformed_jsonl``; both are also counted per file in ``report.files``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {kind} folder not found")
    files = _input_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no .parquet/.jsonl files for {kind}")
    for p in files:
        fc = report.file(p)
        if p.suffix == ".parquet":
            yield from _iter_parquet(p, report, fc)
            continue
        with open(p, "rb") as f:
            for ln, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    fc["invalid_utf8"] += 1
                    report.reject("invalid_utf8", f"{p}:{ln}: byte {e.start}: {e.reason}")
                    continue
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    fc["malformed_jsonl"] += 1
                    report.reject("malformed_jsonl", f"{p}:{ln}: {e}")
                    continue
                if not isinstance(row, dict):
                    fc["malformed_jsonl"] += 1
                    report.reject("malformed_jsonl", f"{p}:{ln}: not an object")
                    continue
                fc["rows"] += 1
                yield f"{p}:{ln}", row


def _iter_parquet(p: Path, report: Report, fc: collections.Counter) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)  # reads the footer: a truncated file fails here
    except (pa.ArrowException, OSError, ValueError) as e:
        fc["error"] = f"unreadable parquet file: {e}"
        report.reject("corrupt_file", f"{p}: unreadable parquet file ({e}); skipped")
        return
    n = 0
    try:
        for batch in pf.iter_batches(batch_size=MAP_BATCH):  # one record batch in memory at a time
            for row in batch.to_pylist():
                n += 1
                yield f"{p} row {n - 1}", row
    except (pa.ArrowException, OSError, ValueError) as e:
        fc["error"] = f"damaged after {n} rows: {e}"
        report.reject("corrupt_file", f"{p}: damaged after row {n} ({e}); the {n} rows before were kept, "
                                      "the rest skipped")
    finally:
        fc["rows"] += n


def read_rows(folder: str | Path, report: Report, kind: str) -> Iterator[dict]:
    """Rows of every ``*.parquet``, ``*.jsonl`` and ``*.json`` file under ``folder`` (MusicPile / MusicPile-sft
    layouts); bad files and lines are skipped and counted (see :func:`_iter_rows`)."""
    for _, row in _iter_rows(folder, report, kind):
        yield row


def check_sft_row(row: dict, report: Report, where: str) -> dict | None:
    """A MusicPile-sft row with string fields and a non-empty output; score rows must carry ABC. A null
    ``instruction``/``input`` reads as empty (as the released rows with ``input: null`` were trained)."""
    row = {**row, **{k: "" for k in ("instruction", "input") if row.get(k) is None}}
    if not all(isinstance(row.get(k, ""), str) for k in ("instruction", "input", "output")) or "output" not in row:
        report.reject("malformed_row", where)
        return None
    reply = row["output"].replace(EOS_TEXT, "").replace("Assistant:", "").strip()
    if not reply:
        report.reject("empty_output", where)
        return None
    src = str(row.get("src", "")).lower()
    if any(s in src for s in SCORE_SOURCES) and not ("K:" in reply and abctools.has_notes(reply)):
        report.reject("non_abc_output", where)
        return None
    return {"instruction": row.get("instruction", ""), "input": row.get("input", ""), "output": row["output"],
            "src": str(row.get("src", "")), "id": str(row.get("id", ""))}


def _iter_text_files(paths: Iterable[str], report: Report) -> Iterator[tuple[str, str]]:
    for p in map(Path, paths):
        if p.is_dir() or p.suffix in {".jsonl", ".json", ".parquet"}:
            folder = p if p.is_dir() else p.parent
            for where, row in _iter_rows(folder, report, "text"):
                if isinstance(row.get("text"), str) and row["text"].strip():
                    yield where, row["text"]
                else:
                    report.reject("empty_text", where)
            continue
        if not p.is_file():
            raise FileNotFoundError(f"{p}: data.text_files entry not found")
        fc = report.file(p)
        with open(p, "rb") as f:  # paragraphs (blank-line separated) streamed, never the whole file in memory
            para: list[bytes] = []
            start = 1
            for ln, raw in enumerate(f, 1):
                if raw.strip():
                    if not para:
                        start = ln
                    para.append(raw)
                    continue
                if para:
                    if (text := _decode_para(para, p, start, report, fc)) is not None:
                        yield f"{p}:{start}", text
                    para = []
            if para and (text := _decode_para(para, p, start, report, fc)) is not None:
                yield f"{p}:{start}", text


def _decode_para(lines: list[bytes], p: Path, start: int, report: Report, fc: collections.Counter) -> str | None:
    try:
        text = b"".join(lines).decode("utf-8").strip()
    except UnicodeDecodeError as e:
        fc["invalid_utf8"] += 1
        report.reject("invalid_utf8", f"{p}:{start}: paragraph byte {e.start}: {e.reason}")
        return None
    fc["rows"] += 1
    return text


def read_text_files(paths: Iterable[str], report: Report) -> Iterator[str]:
    """Music text documents: ``.txt`` files split on blank lines, or jsonl/parquet folders with a ``text`` field.
    Paragraphs or lines that are not valid UTF-8 are skipped and counted (``rejected/invalid_utf8``, per file)."""
    for _, text in _iter_text_files(paths, report):
        yield text


def abc_selection(abc_chars: list[int], text_chars: int, ratio: float, seed: int) -> tuple[int, list[int]]:
    """Which kit ABC documents make ABC about ``ratio`` of the pretraining characters next to ``text_chars`` of
    text, which is never subsampled (MusicPile is kept whole). Returns ``(full passes, extra indices)``: every ABC
    document ``full passes`` times, plus a seeded sample of indices; ``ratio >= 1`` or no text: every document once;
    ``ratio <= 0``: none."""
    if not abc_chars or ratio <= 0.0:
        return 0, []
    a = sum(abc_chars)
    if ratio >= 1.0 or text_chars <= 0 or a <= 0:
        return 1, []
    want = text_chars * ratio / (1 - ratio)
    reps = int(want // a)
    rest = want - reps * a
    rng = random.Random(seed)
    extra, acc = [], 0
    for i in rng.sample(range(len(abc_chars)), len(abc_chars)):
        if acc >= rest:
            break
        extra.append(i)
        acc += abc_chars[i]
    return reps, extra


def mix_pretrain(abc_docs: list[str], text_docs: list[str], ratio: float, seed: int) -> list[str]:
    """In-memory form of the pretraining mix (the build streams the same selection): all text documents, plus the
    ABC documents chosen by :func:`abc_selection`; ``ratio >= 1`` keeps the ABC alone. Returns the shuffled mix."""
    reps, extra = abc_selection([len(d) for d in abc_docs], sum(map(len, text_docs)), ratio, seed)
    docs = list(abc_docs) * reps + [abc_docs[i] for i in extra] + ([] if ratio >= 1.0 else list(text_docs))
    random.Random(seed).shuffle(docs)
    return docs


# ---------------------------------------------------------------------------------------------------------------
# Fingerprint, manifest and the command that builds the corpus


def tokenizer_source(cfg: ChatMusicianConfig) -> str:
    """Folder of the tokenizer used for the corpus: explicit, the model folder, or the one ``data`` trains."""
    if cfg.model.tokenizer:
        return cfg.model.tokenizer
    if _trains_tokenizer(cfg):
        return str(Path(cfg.data.out_dir) / "tokenizer")
    if not cfg.model.name_or_path:
        raise ValueError("no tokenizer: set model.tokenizer, model.name_or_path or tokenizer.train=true")
    return cfg.model.name_or_path


def _trains_tokenizer(cfg: ChatMusicianConfig) -> bool:
    return not cfg.model.tokenizer and (cfg.tokenizer.train or cfg.model.init == "scratch")


def data_fingerprint(cfg: ChatMusicianConfig) -> str:
    """Hash of what the built corpus depends on: the data section (not ``stage``: both stages are built; not
    ``out_dir``/``num_proc``), the trained tokenizer's settings or the tokenizer folder, the pack length and the
    recipe version. The tokenizer's files are checked separately (:func:`tokenizer_id`)."""
    data = {k: v for k, v in cfg.data.__dict__.items() if k not in ("stage", "out_dir", "num_proc")}
    if _trains_tokenizer(cfg):
        tok = {"train": cfg.tokenizer.__dict__}
    else:
        tok = {"folder": str(Path(tokenizer_source(cfg)).resolve())}
    return config_hash({"data": data, "tokenizer": tok, "pack_length": cfg.pack.length, "version": DATA_VERSION,
                        "abc": abctools.BACKEND}, exclude=())


def tokenizer_id(folder: str | Path) -> str:
    """sha256 (16 hex digits) over the tokenizer files of ``folder`` (names and bytes): a changed tokenizer makes a
    corpus stale even when the config is the same. Raises ``CorpusError`` when the folder holds no tokenizer file."""
    folder = Path(folder)
    h = hashlib.sha256()
    found = 0
    for name in TOKENIZER_FILES:
        p = folder / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes())
            found += 1
    if not found:
        raise CorpusError(f"{folder}: no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...)")
    return h.hexdigest()[:16]


def inputs_signature(cfg: ChatMusicianConfig) -> list[list]:
    """``[path, size, mtime_ns]`` of every input file (MusicPile, MusicPile-sft, text files, the kit's tunes manifest):
    ``chatmusician data`` rebuilds when they change. Training does not look at it (the raw data may be gone)."""
    d = cfg.data
    paths: list[Path] = []
    for folder in (d.musicpile_dir, d.musicpile_sft_dir):
        if folder and Path(folder).is_dir():
            paths += _input_files(Path(folder))
    for p in map(Path, d.text_files):
        paths += _input_files(p) if p.is_dir() else [p]
    if d.tunes == "kit":
        with contextlib.suppress(Exception):  # kit layout unknown or kit not built: music21 stands in, see load_tunes
            from musiccore.data.manifest import MANIFEST_PATHS, kit_root

            paths.append(kit_root(d.kit_root or None) / MANIFEST_PATHS["tunes"])
    out = []
    for p in paths:
        st = p.stat() if p.exists() else None
        out.append([str(p), st.st_size if st else -1, st.st_mtime_ns if st else -1])
    return out


def _override_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def data_command(cfg: ChatMusicianConfig, argv: list[str] | None = None) -> str:
    """The shell command that builds the corpus ``cfg`` trains on: the user's own ``train`` command line with
    ``data`` in its place when training was launched from the CLI (also under torchrun/Slurm), else
    ``chatmusician data`` with the data-relevant fields that differ from the defaults as ``key=value``."""
    argv = sys.argv if argv is None else argv
    args = [a for a in argv[1:]]
    first = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    if first is not None and args[first] == "train" and "--config" in args:
        return shlex.join(["chatmusician", "data", *[a for a in args[first + 1:] if a != "--dump-config"]])
    default = ChatMusicianConfig()
    over = []
    for section in ("data", "tokenizer", "pack"):
        for k, v in getattr(cfg, section).__dict__.items():
            if k != "stage" and getattr(getattr(default, section), k) != v:
                over.append(f"{section}.{k}={_override_value(v)}")
    for k in ("init", "name_or_path", "tokenizer"):
        if getattr(cfg.model, k) != getattr(default.model, k):
            over.append(f"model.{k}={_override_value(getattr(cfg.model, k))}")
    return shlex.join(["chatmusician", "data", *over])


def check_corpus(cfg: ChatMusicianConfig) -> dict:
    """The manifest (``report.json``) of the corpus ``cfg`` trains on, after checking that it exists, was built from
    the same data config (fingerprint) and tokenizer (file hash), and holds the parts training opens.

    Raises:
        CorpusError: one line naming the folder, what is wrong and the ``chatmusician data`` command that fixes it.
    """
    out = Path(cfg.data.out_dir)
    rep = out / "report.json"
    fix = f"build it with: {data_command(cfg)}"
    if not rep.is_file():
        raise CorpusError(f"{out}: no prepared corpus (no report.json); {fix}")
    try:
        m = json.loads(rep.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorpusError(f"{rep}: unreadable manifest ({e}); {fix}") from None
    if not isinstance(m, dict):
        raise CorpusError(f"{rep}: manifest is not a JSON object; {fix}")
    fp = data_fingerprint(cfg)
    if m.get("fingerprint") != fp:
        raise CorpusError(f"{out}: stale corpus, built from another data config (fingerprint {m.get('fingerprint')}, "
                          f"this config {fp}); re{fix}")
    tid = tokenizer_id(tokenizer_source(cfg))
    if m.get("tokenizer_id") != tid:
        raise CorpusError(f"{out}: stale corpus, tokenized with another tokenizer ({m.get('tokenizer_id')}, "
                          f"{tokenizer_source(cfg)} is {tid}); re{fix}")
    stage = cfg.data.stage
    for part in ("tokenized", "packed") if cfg.pack.enabled else ("tokenized",):
        if not (out / stage / part / "dataset_dict.json").is_file():
            raise CorpusError(f"{out / stage / part}: missing part of the corpus; re{fix}")
    return m


def open_split(cfg: ChatMusicianConfig, split: str):
    """What training reads: ``<out_dir>/<stage>/packed`` (``pack.enabled``) or ``tokenized``, memory-mapped
    (``load_from_disk``), reduced to the model's columns: ``input_ids`` [T], ``labels`` [T] and, packed,
    ``position_ids`` [T] per row. Never builds anything (see :func:`check_corpus` for the errors)."""
    import datasets

    check_corpus(cfg)
    path = Path(cfg.data.out_dir) / cfg.data.stage / ("packed" if cfg.pack.enabled else "tokenized")
    dd = datasets.load_from_disk(str(path))
    if split not in dd:  # nothing in this split (e.g. no hold-out): an empty dataset of the same columns
        return _empty(_features()["packed" if cfg.pack.enabled else "tokenized"])
    ds = dd[split]
    keep = {"input_ids", "labels", "position_ids"}
    return ds.remove_columns([c for c in ds.column_names if c not in keep])


def up_to_date(cfg: ChatMusicianConfig) -> dict | None:
    """The manifest when the built corpus matches ``cfg`` and its input files are unchanged, else None."""
    try:
        m = check_corpus(cfg)
    except (CorpusError, ValueError):
        return None
    return m if m.get("inputs") == json.loads(json.dumps(inputs_signature(cfg))) else None


def ensure_built(cfg: ChatMusicianConfig) -> dict:
    """Single-process tools (demo, benchmarks): the manifest, building the corpus first when missing or stale.
    Training never calls this; it only opens a finished corpus."""
    return up_to_date(cfg) or build(cfg)


# ---------------------------------------------------------------------------------------------------------------
# Build: generators -> arrow -> batched maps -> save_to_disk


def resolve_num_proc(n: int) -> int:
    """``data.num_proc``; 0 = the CPUs this process may use (at most 16)."""
    if n > 0:
        return n
    try:
        return max(1, min(16, len(os.sched_getaffinity(0))))
    except AttributeError:  # not Linux
        return max(1, min(16, os.cpu_count() or 1))


def _features():
    import datasets

    s, ids = datasets.Value("string"), datasets.List(datasets.Value("int32"))
    return {
        "sft_rows": datasets.Features({k: s for k in ("instruction", "input", "output", "src", "id", "split")}),
        "docs": datasets.Features({"text": s, "split": s, "src": s}),
        "sft_tok": datasets.Features({"input_ids": ids, "labels": ids, "src": s, "id": s,
                                      "overlong": datasets.Value("bool"), "has_target": datasets.Value("bool")}),
        "pt_tok": datasets.Features({"input_ids": ids, "labels": ids, "src": s, "doc_start": datasets.Value("bool")}),
        "pt_chunks": datasets.Features({"input_ids": ids, "labels": ids, "src": s}),  # the saved pretraining chunks
        "packed": datasets.Features({"input_ids": ids, "labels": ids, "position_ids": ids}),
        "tokenized": datasets.Features({"input_ids": ids, "labels": ids}),
    }


def _gen_sft_rows(tunes: list[dict], cfg: ChatMusicianConfig, report: Report) -> Iterator[dict]:
    yield from iter_sft(tunes, cfg, report)
    if cfg.data.musicpile_sft_dir:
        for where, row in _iter_rows(cfg.data.musicpile_sft_dir, report, "MusicPile-sft"):
            checked = check_sft_row(row, report, where)
            if checked:
                # released rows carry no tune identity: split by the hash of the whole row text (valid_fraction 0:
                # no hold-out, as released)
                checked["split"] = split_of(checked["instruction"] + checked["input"] + checked["output"],
                                            cfg.data.valid_fraction)
                report["released_sft/kept"] += 1
                yield checked


def _gen_text_docs(tunes: list[dict], cfg: ChatMusicianConfig, report: Report) -> Iterator[dict]:
    for t in tunes:  # a sentence of music text per kit tune (only when kit tunes are configured)
        yield {"text": music_text(t), "split": t["split"], "src": "kit_text"}
    vf = cfg.data.valid_fraction
    for _, text in _iter_text_files(cfg.data.text_files, report):
        yield {"text": text, "split": split_of(text, vf), "src": "text"}
    if cfg.data.musicpile_dir:
        for where, row in _iter_rows(cfg.data.musicpile_dir, report, "MusicPile"):
            text = row.get("text")
            if isinstance(text, str) and text.strip():
                yield {"text": text, "split": split_of(text, vf), "src": str(row.get("src") or "musicpile")}
            else:
                report.reject("empty_text", where)


def _gen_abc_docs(abc: list[str], reps: int, extra: list[int], split: str) -> Iterator[dict]:
    for _ in range(reps):
        for a in abc:
            yield {"text": a, "split": split, "src": "kit_abc"}
    for i in extra:
        yield {"text": abc[i], "split": split, "src": "kit_abc"}


def _tok_sft_batch(batch: dict, tokenizer, max_src_len: int, max_len: int) -> dict:
    out: dict[str, list] = {"input_ids": [], "labels": [], "overlong": [], "has_target": []}
    for ins, inp, outp in zip(batch["instruction"], batch["input"], batch["output"]):
        s = tokenize_sft(tokenizer, {"instruction": ins, "input": inp, "output": outp}, max_src_len, max_len)
        out["input_ids"].append(s["input_ids"])
        out["labels"].append(s["labels"])
        out["overlong"].append(bool(s["overlong"]))
        out["has_target"].append(any(lab != IGNORE_INDEX for lab in s["labels"]))
    return out


def _tok_pretrain_batch(batch: dict, tokenizer, max_len: int) -> dict:
    out: dict[str, list] = {"input_ids": [], "labels": [], "src": [], "doc_start": []}
    for text, src in zip(batch["text"], batch["src"]):
        for j, c in enumerate(tokenize_pretrain(tokenizer, text, max_len)):  # chunks of one document stay adjacent
            out["input_ids"].append(c["input_ids"])
            out["labels"].append(c["labels"])
            out["src"].append(src)
            out["doc_start"].append(j == 0)
    return out


def _pack_sft_batch(batch: dict, length: int) -> dict:
    return pack_rows(batch["input_ids"], batch["labels"], length)


def _pack_pretrain_batch(batch: dict, length: int) -> dict:
    return pack_pretrain_blocks(batch["input_ids"], batch["labels"], batch["doc_start"], length)


class _Maps:
    """Batched maps/filters of one build: fresh fingerprints (nothing hashed, nothing reused from another build)
    and ``num_proc`` only where the dataset is big enough to pay for the worker processes."""

    def __init__(self, num_proc: int):
        self.num_proc = num_proc
        self.n = 0

    def _fp(self) -> str:
        self.n += 1
        return f"cm-{uuid.uuid4().hex[:12]}-{self.n}"

    def _np(self, ds) -> int | None:
        return self.num_proc if self.num_proc > 1 and len(ds) >= 2 * MAP_BATCH else None

    def map(self, ds, fn, features, batch_size: int = MAP_BATCH, **kw):
        if not len(ds):  # datasets skips the function on 0 rows and would keep the input's columns
            return _empty(features)
        return ds.map(fn, batched=True, batch_size=batch_size, features=features, remove_columns=ds.column_names,
                      num_proc=self._np(ds), new_fingerprint=self._fp(), **kw)

    def split(self, ds, split: str):
        return ds.filter(_is_split, batched=True, batch_size=10 * MAP_BATCH, input_columns="split",
                         fn_kwargs={"split": split}, num_proc=self._np(ds), new_fingerprint=self._fp())

    def keep(self, ds, truncate: bool):
        return ds.filter(_keep_sft, batched=True, batch_size=10 * MAP_BATCH, input_columns=["overlong", "has_target"],
                         fn_kwargs={"truncate": truncate}, num_proc=self._np(ds), new_fingerprint=self._fp())


def _is_split(splits: list[str], split: str) -> list[bool]:
    return [s == split for s in splits]


def _keep_sft(overlong: list[bool], has_target: list[bool], truncate: bool) -> list[bool]:
    return [h and (truncate or not o) for o, h in zip(overlong, has_target)]


def _column_sum(ds, column: str, fn, batch: int = MAP_BATCH) -> int:
    """Sum of ``fn(arrow column chunk)`` over ``ds`` read in batches (works through an indices mapping)."""
    import pyarrow.compute as pc

    total = 0
    for t in ds.select_columns([column]).with_format("arrow").iter(batch_size=batch):
        if t.num_rows:
            total += pc.sum(fn(t.column(column))).as_py() or 0
    return int(total)


def _flags(ds, column: str):
    """A boolean column as a numpy array (1 byte per row, not per token)."""
    import numpy as np

    parts = [t.column(column).to_numpy(zero_copy_only=False)
             for t in ds.select_columns([column]).with_format("arrow").iter(batch_size=10 * MAP_BATCH) if t.num_rows]
    return np.concatenate(parts).astype(bool) if parts else np.zeros(0, dtype=bool)


def _write_jsonl(path: Path, ds, columns: list[str], batch: int = MAP_BATCH) -> int:
    """``ds`` rows as jsonl, streamed in batches."""
    n = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for b in ds.select_columns(columns).iter(batch_size=batch):
            for vals in zip(*(b[c] for c in columns)):
                f.write(json.dumps(dict(zip(columns, vals)), ensure_ascii=False) + "\n")
                n += 1
    return n


def _empty(features):
    import datasets

    return datasets.Dataset.from_dict({k: [] for k in features}, features=features)


def _from_gen(gen, features, cache: Path, tag: str, writer_batch_size: int = MAP_BATCH, **kwargs):
    """``Dataset.from_generator`` writing into ``cache`` under a fresh fingerprint. List arguments are passed as
    tuples: ``datasets`` would take a list for shards and call the generator once per item."""
    import datasets

    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    try:
        return datasets.Dataset.from_generator(gen, features=features, cache_dir=str(cache), gen_kwargs=kwargs,
                                               fingerprint=f"{tag}-{uuid.uuid4().hex[:12]}",
                                               writer_batch_size=writer_batch_size)
    except datasets.exceptions.DatasetGenerationError as e:
        # the generator raised: surface our own typed error (a missing input folder, a bad task name) as it was
        raise (e.__cause__ or e) from None
    except ValueError as e:
        if "corresponds to no data" not in str(e):  # datasets' words for a generator that yielded no row
            raise
        return _empty(features)


def build(cfg: ChatMusicianConfig) -> dict:
    """Build both corpora (SFT and pretraining), the tokenizer (scratch models) and the packed arrow datasets into
    ``data.out_dir``; returns the manifest written to ``report.json``. Memory stays bounded by a map batch: rows
    stream from generators into arrow files, tokenising and packing are batched maps (``data.num_proc`` workers)."""
    import datasets

    if not sys.stderr.isatty():  # progress bars only on a terminal: a Slurm .out file gets the log lines
        datasets.disable_progress_bars()
    out = Path(cfg.data.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for left in out.glob(".build-*"):  # never removed here: another `chatmusician data` may be writing it
        log.warning("data: %s was left by an interrupted build (or one is running); delete it when none is", left)
    work = out / f".build-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    t0 = time.time()
    try:
        manifest = _build_into(cfg, work)
        manifest["seconds"] = round(time.time() - t0, 1)
        parts = ["sft", "pretrain"] + (["tokenizer"] if _trains_tokenizer(cfg) else [])
        # install: the manifest goes first (a reader never pairs it with half-replaced parts) and comes back last
        with contextlib.suppress(FileNotFoundError):
            (out / "report.json").unlink()
        for name in parts:
            if (out / name).exists():
                (out / name).rename(work / f"old-{name}")
            (work / name).rename(out / name)
        atomic_write_json(out / "report.json", manifest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    c = manifest["counts"]
    rejected = {k: v for k, v in c.items() if k.startswith("rejected/")}
    log.info("data: %d tunes kept of %d; sft train/valid %d/%d samples; pretrain train/valid %d/%d chunks "
             "(%d/%d tokens); rejected %s; %.0f s", c.get("tunes/kept", 0), c.get("tunes/read", 0),
             c.get("sft/train/samples", 0), c.get("sft/valid/samples", 0), c.get("pretrain/train/samples", 0),
             c.get("pretrain/valid/samples", 0), c.get("pretrain/train/tokens", 0), c.get("pretrain/valid/tokens", 0),
             rejected or "none", manifest["seconds"])
    for path, fc in manifest["files"].items():
        log.warning("data: %s: %s", path, ", ".join(f"{k} {v}" for k, v in fc.items()))
    return manifest


def _build_into(cfg: ChatMusicianConfig, work: Path) -> dict:
    import datasets

    from .tokenization import load_tokenizer

    d = cfg.data
    cache = work / "cache"
    feats = _features()
    maps = _Maps(resolve_num_proc(d.num_proc))
    report = Report()
    tunes = prepare_tunes(load_tunes(cfg), cfg, report) if d.tunes != "none" else []  # the kit: bounded, in memory
    for t in tunes:
        report[f"tunes/{t['split']}"] += 1

    # rows -> arrow: SFT rows (kit tasks + released MusicPile-sft rows), pretraining documents
    sft_rows = _from_gen(_gen_sft_rows, feats["sft_rows"], cache, "sft", tunes=tunes, cfg=cfg, report=report)
    text_docs = _from_gen(_gen_text_docs, feats["docs"], cache, "text", writer_batch_size=DOC_BATCH, tunes=tunes,
                          cfg=cfg, report=report)
    docs = {}
    for split in ("train", "valid"):
        part = maps.split(text_docs, split)
        abc = [t["abc"] for t in tunes if t["split"] == split]
        # characters of text: only needed to mix kit ABC in (MusicPile alone: no extra pass over the text)
        text_chars = _column_sum(part, "text", _utf8_length, DOC_BATCH) if abc and 0 < d.abc_text_ratio < 1 else 0
        reps, extra = abc_selection([len(a) for a in abc], text_chars, d.abc_text_ratio, d.seed)
        pieces = [] if d.abc_text_ratio >= 1.0 and abc else [part]
        if reps or extra:
            pieces.append(_from_gen(_gen_abc_docs, feats["docs"], cache, f"abc-{split}", abc=abc, reps=reps,
                                    extra=extra, split=split))
        pieces = [p for p in pieces if len(p)]
        both = datasets.concatenate_datasets(pieces) if pieces else _empty(feats["docs"])
        docs[split] = both.shuffle(seed=d.seed) if len(both) else both  # documents in random order before packing
        report[f"pretrain/{split}/docs"] += len(docs[split])

    # tokenizer: a small BPE trained on the corpus for scratch models (texts streamed in batches)
    tok_dir = work / "tokenizer" if _trains_tokenizer(cfg) else Path(tokenizer_source(cfg))
    if _trains_tokenizer(cfg):
        tok = train_tokenizer(_tokenizer_texts(sft_rows, docs["train"]), cfg.tokenizer.vocab_size)
        tok.save_pretrained(str(tok_dir))
    elif not tok_dir.is_dir():
        raise FileNotFoundError(f"{tok_dir}: tokenizer folder not found (model.tokenizer / model.name_or_path)")
    tok = load_tokenizer(str(tok_dir))
    pack_ok = cfg.pack.length >= d.max_len

    # SFT: tokenise (released truncation), drop or truncate over-long rows, shuffle, pack next-fit
    tokd, packd = {}, {}
    for split in ("train", "valid"):
        part = maps.split(sft_rows, split)
        _write_jsonl(work / "sft" / f"{split}.jsonl", part, ["instruction", "input", "output", "src", "id", "split"])
        t = _empty(feats["sft_tok"]) if not len(part) else part.map(
            _tok_sft_batch, batched=True, batch_size=MAP_BATCH, features=feats["sft_tok"], num_proc=maps._np(part),
            remove_columns=["instruction", "input", "output", "split"], new_fingerprint=maps._fp(),
            fn_kwargs={"tokenizer": tok, "max_src_len": d.max_src_len, "max_len": d.max_len})
        overlong, has_target = _flags(t, "overlong"), _flags(t, "has_target")
        _report_sft(report, t, split, overlong, has_target, d.overlong)
        kept = maps.keep(t, d.overlong == "truncate").remove_columns(["overlong", "has_target", "id"])
        report[f"sft/{split}/samples"] += len(kept)
        report[f"sft/{split}/tokens"] += _column_sum(kept, "input_ids", _list_length)
        for src, n in _value_counts(kept, "src").items():
            report[f"sft/{split}/task/{src}"] += n
        tokd[split] = kept
        if pack_ok:
            shuffled = kept.shuffle(seed=d.seed) if len(kept) else kept
            packd[split] = maps.map(shuffled.select_columns(["input_ids", "labels"]), _pack_sft_batch,
                                    feats["packed"], fn_kwargs={"length": cfg.pack.length})
            report[f"sft/{split}/packed_rows"] += len(packd[split])
    _save(work / "sft", tokd, packd)

    # pretraining: documents + EOS, chunks of max_len (unpacked) and blocks of pack.length with document-aware labels,
    # built window by window in short-lived processes (the corpus grows, no process's mapped pages do)
    _build_pretrain(work / "pretrain", docs, tok, cfg, report, maps.num_proc, pack_ok)

    return {"fingerprint": data_fingerprint(cfg), "tokenizer": tokenizer_source(cfg),
            "tokenizer_id": tokenizer_id(tok_dir), "pack_length": cfg.pack.length if pack_ok else None,
            "data_version": DATA_VERSION, "inputs": inputs_signature(cfg), "command": data_command(cfg),
            "num_proc": maps.num_proc,  # pack batch boundaries follow the worker shards (README "Built once")
            "counts": dict(sorted(report.items())),
            "files": {p: dict(c) for p, c in report.files.items() if set(c) - {"rows"}}}  # files with a problem


def _utf8_length(col):
    import pyarrow.compute as pc

    return pc.utf8_length(col)


def _list_length(col):
    import pyarrow.compute as pc

    return pc.list_value_length(col)


def _value_counts(ds, column: str) -> collections.Counter:
    import pyarrow.compute as pc

    c: collections.Counter = collections.Counter()
    for t in ds.select_columns([column]).with_format("arrow").iter(batch_size=10 * MAP_BATCH):
        for vc in pc.value_counts(t.column(column)).to_pylist():
            c[vc["values"]] += vc["counts"]
    return c


def _report_sft(report: Report, t, split: str, overlong, has_target, mode: str) -> None:
    """Counts (and the first few ids) of over-long rows (dropped, or counted as truncated) and of rows with no
    target token left, as the per-row loop counted them: over-long first, then no target."""
    import numpy as np

    if mode == "truncate":
        report["truncated/overlong"] += int(overlong.sum())
        masks = (("no_target_tokens", ~has_target),)
    else:
        masks = (("overlong", overlong), ("no_target_tokens", ~overlong & ~has_target))
    for name, mask in masks:
        n = int(mask.sum())
        if n:
            ids = sorted(set(t.select(np.flatnonzero(mask)[:5].tolist())["id"]))
            report.reject(name, n=n, where=f"sft/{split} ids {ids}" + (" ..." if n > 5 else ""))


def _tokenizer_texts(sft_rows, train_docs) -> Iterator[str]:
    for b in sft_rows.select_columns(["instruction", "input", "output"]).iter(batch_size=MAP_BATCH):
        for a, b2, c in zip(b["instruction"], b["input"], b["output"]):
            yield a + b2 + c
    for b in train_docs.select_columns(["text"]).iter(batch_size=DOC_BATCH):
        yield from b["text"]


def _save(folder: Path, tokd: dict, packd: dict) -> None:
    """``save_to_disk`` of the non-empty splits (datasets 5 cannot load back a split saved with no rows;
    :func:`open_split` gives an empty dataset for a split that is not there)."""
    import datasets

    for name, dd in (("tokenized", tokd), ("packed", packd)):
        if name == "tokenized" or packd:
            datasets.DatasetDict({k: v for k, v in dd.items() if len(v)}).save_to_disk(str(folder / name))


# ---------------------------------------------------------------------------------------------------------------
# Pretraining corpus in windows: every pass over the (memory-mapped) documents and tokens runs in a forked process
# that handles one window and exits, so its mapped pages are unmapped with it. A long-lived process that reads a whole
# arrow file through its memory map keeps every page it touched in its RSS (clean file-backed pages, but counted, and
# summed over the workers), which grew the build's RSS with the corpus; windows keep it at a window's worth.

PRETRAIN_WINDOW_DOCS = 2000  # documents per tokenising task (a window of the shuffled document order)
PACK_WINDOW_BATCHES = 5  # pack batches (MAP_BATCH chunk rows each) per packing task
_JOB: dict = {}  # what the forked window workers read: set by the parent right before a pool forks, cleared after


def _run_windows(fn, tasks: list, num_proc: int, what: str) -> list:
    """``[fn(task) for task in tasks]``, each call in a fresh forked process (``maxtasksperchild=1``: the worker's
    memory maps close when it exits), ``num_proc`` at a time; results in task order. A worker's exception is raised
    here. Logs one line per ~10% of the tasks."""
    import multiprocessing as mp

    if not tasks:
        return []
    out = []
    every = max(1, len(tasks) // 10)
    t0 = time.time()
    env = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # as datasets does for its workers: no thread pool across a fork
    try:
        with mp.get_context("fork").Pool(max(1, min(num_proc, len(tasks))), maxtasksperchild=1) as pool:
            for k, r in enumerate(pool.imap(fn, tasks, chunksize=1), 1):
                out.append(r)
                if k % every == 0 or k == len(tasks):
                    log.info("data: %s: %d/%d windows (%.0f s)", what, k, len(tasks), time.time() - t0)
    finally:
        if env is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = env
    return out


def _tok_window(task: tuple) -> dict:
    """Worker: documents ``[a, b)`` of the shuffled order -> their jsonl part and tokenised chunks written straight to
    ``arrow`` (``input_ids`` [T], ``labels`` [T], ``src``). Returns rows, tokens and the ``doc_start`` flags [rows]."""
    import numpy as np

    a, b, arrow, jsonl = task
    docs = _JOB["docs"].select(range(a, b))
    _write_jsonl(Path(jsonl), docs, ["text"], DOC_BATCH)
    starts: list[bool] = []

    def tok(batch: dict) -> dict:
        out = _tok_pretrain_batch(batch, _JOB["tok"], _JOB["max_len"])
        starts.extend(out.pop("doc_start"))  # kept aside: the packing pass needs them, the saved corpus does not
        return out

    t = docs.map(tok, batched=True, batch_size=DOC_BATCH, features=_features()["pt_chunks"],
                 remove_columns=docs.column_names, cache_file_name=str(arrow), new_fingerprint=f"cm-{uuid.uuid4().hex}")
    return {"rows": len(t), "tokens": _column_sum(t, "input_ids", _list_length), "starts": np.array(starts, dtype=bool)}


def _pack_window(task: tuple) -> int:
    """Worker: chunk rows ``[lo, hi)`` (global) read from the tokenised shard files ``files`` (the first starting at
    row ``first``) -> packed blocks (``input_ids``/``labels``/``position_ids`` [pack.length]) written to ``arrow``, in
    batches of ``MAP_BATCH`` rows from ``lo``. Returns the number of blocks."""
    import datasets

    files, first, lo, hi, arrow = task
    t = datasets.concatenate_datasets([datasets.Dataset.from_file(f) for f in files]).select(range(lo - first, hi - first))
    starts = _JOB["starts"][lo:hi]

    def pack(batch: dict, idx: list[int]) -> dict:
        return pack_pretrain_blocks(batch["input_ids"], batch["labels"], starts[idx].tolist(), _JOB["length"])

    p = t.select_columns(["input_ids", "labels"]).map(
        pack, batched=True, batch_size=MAP_BATCH, with_indices=True, features=_features()["packed"],
        remove_columns=["input_ids", "labels"], cache_file_name=str(arrow), new_fingerprint=f"cm-{uuid.uuid4().hex}")
    return len(p)


def pack_windows(n_rows: int, num_proc: int, batches: int = PACK_WINDOW_BATCHES) -> list[tuple[int, int]]:
    """``[lo, hi)`` chunk-row windows of the packing pass, made of whole pack batches. The batches start where a
    ``Dataset.map(batch_size=MAP_BATCH, num_proc=p)`` over all ``n_rows`` starts them (``p`` workers on contiguous
    shards when the dataset is big enough, see ``_Maps``), so the blocks are the ones a single map would give."""
    p = num_proc if num_proc > 1 and n_rows >= 2 * MAP_BATCH else 1
    div, mod = divmod(n_rows, p)
    out = []
    for r in range(p):  # datasets' contiguous shard r: [div*r + min(r, mod), ...) of div (+1) rows
        s = div * r + min(r, mod)
        e = s + div + (1 if r < mod else 0)
        out += [(lo, min(e, lo + batches * MAP_BATCH)) for lo in range(s, e, batches * MAP_BATCH)]
    return out


def _write_split_folder(folder: Path, files: list[str], features, rows: int) -> None:
    """A ``save_to_disk``-layout split folder (``state.json`` + ``dataset_info.json``) over arrow files already in
    ``folder``: what ``load_from_disk`` opens, without rewriting the data."""
    import dataclasses

    import datasets

    info = dataclasses.asdict(datasets.DatasetInfo(features=features, dataset_size=0))
    info["splits"] = None
    state = {"_data_files": [{"filename": Path(f).name} for f in files], "_fingerprint": f"cm-{uuid.uuid4().hex[:12]}",
             "_format_columns": list(features), "_format_kwargs": {}, "_format_type": None,
             "_output_all_columns": False, "_split": None}
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    (folder / "dataset_info.json").write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2))
    log.info("data: %s: %d rows in %d files", folder, rows, len(files))


def _build_pretrain(folder: Path, docs: dict, tok, cfg: ChatMusicianConfig, report: Report, num_proc: int,
                    pack_ok: bool) -> None:
    """``folder/{train,valid}.jsonl``, ``folder/tokenized`` and (``pack_ok``) ``folder/packed`` from the shuffled
    documents ``docs[split]``, as ``save_to_disk`` folders: pass 1 tokenises windows of ``PRETRAIN_WINDOW_DOCS``
    documents into one arrow file each (chunks of ``max_len``: ``input_ids``/``labels`` [T <= max_len], ``src``);
    pass 2 packs windows of whole pack batches of those rows into blocks (:func:`pack_windows`). The rows are the ones
    one map over the whole corpus gives; no process maps more than a window of it."""
    import numpy as np

    feats = _features()
    parts = {"tokenized": [], "packed": []}
    for split in ("train", "valid"):
        n = len(docs[split])
        jsonl = folder / f"{split}.jsonl"
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        for key in ("chunked_docs", f"{split}/samples", f"{split}/tokens") + ((f"{split}/packed_rows",) if pack_ok else ()):
            report[f"pretrain/{key}"] += 0  # every count in the manifest, zero for an empty split
        if not n:
            jsonl.write_text("")
            continue
        tdir, pdir, tmp = folder / "tokenized" / split, folder / "packed" / split, folder / f".parts-{split}"
        for d in (tdir, tmp) + ((pdir,) if pack_ok else ()):
            d.mkdir(parents=True, exist_ok=True)
        bounds = [(a, min(n, a + PRETRAIN_WINDOW_DOCS)) for a in range(0, n, PRETRAIN_WINDOW_DOCS)]
        tfiles = [str(tdir / f"data-{k:05d}-of-{len(bounds):05d}.arrow") for k in range(len(bounds))]
        _JOB.update(docs=docs[split], tok=tok, max_len=cfg.data.max_len)
        try:
            res = _run_windows(_tok_window, [(a, b, f, tmp / f"{k:05d}.jsonl") for k, ((a, b), f)
                                             in enumerate(zip(bounds, tfiles))], num_proc, f"pretrain/{split} tokenise")
        finally:
            _JOB.clear()
        with open(jsonl, "wb") as out:  # the parts in window order: the shuffled documents, one per line
            for k in range(len(bounds)):
                with open(tmp / f"{k:05d}.jsonl", "rb") as part:
                    shutil.copyfileobj(part, out, 1 << 20)
        shutil.rmtree(tmp)
        starts = np.concatenate([r["starts"] for r in res])
        rows = int(len(starts))
        report["pretrain/chunked_docs"] += int((~starts[1:] & starts[:-1]).sum()) if rows > 1 else 0
        report[f"pretrain/{split}/samples"] += rows
        report[f"pretrain/{split}/tokens"] += sum(r["tokens"] for r in res)
        _write_split_folder(tdir, tfiles, feats["pt_chunks"], rows)
        parts["tokenized"].append(split)
        if not pack_ok:
            continue
        first = np.cumsum([0] + [r["rows"] for r in res])  # global row of each tokenised file's first row
        tasks = []
        windows = pack_windows(rows, num_proc)
        for k, (lo, hi) in enumerate(windows):
            i, j = int(np.searchsorted(first, lo, "right")) - 1, int(np.searchsorted(first, hi, "left"))
            tasks.append((tfiles[i:j], int(first[i]), lo, hi, str(pdir / f"data-{k:05d}-of-{len(windows):05d}.arrow")))
        _JOB.update(starts=starts, length=cfg.pack.length)
        try:
            blocks = _run_windows(_pack_window, tasks, num_proc, f"pretrain/{split} pack")
        finally:
            _JOB.clear()
        report[f"pretrain/{split}/packed_rows"] += sum(blocks)
        _write_split_folder(pdir, [t[-1] for t in tasks], feats["packed"], sum(blocks))
        parts["packed"].append(split)
    for name, splits in parts.items():
        if name == "tokenized" or pack_ok:
            (folder / name).mkdir(parents=True, exist_ok=True)
            (folder / name / "dataset_dict.json").write_text(json.dumps({"splits": splits}))
