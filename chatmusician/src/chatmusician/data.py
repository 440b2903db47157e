"""Corpus building (``chatmusician data``): MusicPile-style pretraining text and MusicPile-sft-style conversations.

Pipeline::

    input tunes (data kit manifest | music21 corpus)         MusicPile / MusicPile-sft files (parquet/jsonl)
      -> clean: normalise, optional crop/annotation strip       -> read rows, count malformed ones
      -> reject non-ABC, dedup by normalised body               -> reject empty outputs / non-ABC score outputs
      -> split by tune (hash of the body: every sample of a tune and its transpositions land in one split)
      -> SFT task generators (metadata, continuation, chords, transpose, key/meter/length questions)
      -> pretraining documents (ABC + music text, mixed to `abc_text_ratio` of characters)
      -> tokenise (released recipe), drop or truncate over-long samples
      -> <out_dir>/{sft,pretrain}/{train,valid}.jsonl, <out_dir>/{sft,pretrain}/tokenized (arrow), report.json

Nothing bad is trained on silently: every rejected row is counted by reason in ``report.json`` and in the log.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Iterable, Iterator

from musiccore.config import config_hash
from musiccore.runs import atomic_path, atomic_write_json

from . import abctools
from .config import ChatMusicianConfig
from .tokenization import EOS_TEXT, sft_row, tokenize_pretrain, tokenize_sft, train_tokenizer

log = logging.getLogger(__name__)

# bump when the corpus recipe (cleaning, tasks, tokenizer training) changes: built corpora are then rebuilt
DATA_VERSION = 2
SCORE_SOURCES = ("irishman", "kernscores", "bach", "jsb", "abc")  # MusicPile-sft `src` values whose output is ABC
KEY_MODES = {"": "major", "maj": "major", "m": "minor", "min": "minor", "mix": "mixolydian", "dor": "dorian",
             "phr": "phrygian", "lyd": "lydian", "loc": "locrian", "ion": "ionian", "aeo": "aeolian"}


class Report(collections.Counter):
    """Counts of rows read, kept and rejected (by reason), written to ``report.json``."""

    def reject(self, reason: str, where: str = "", n: int = 1) -> None:
        self[f"rejected/{reason}"] += n
        if where and self[f"rejected/{reason}"] <= 5:  # name the first few offenders in the log
            log.warning("rejected (%s): %s", reason, where)


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
    seen: set[str] = set()
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
        if key in seen:
            report.reject("duplicate_tune")
            continue
        seen.add(key)
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
    rows = []
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
            rows.append(row)
    return rows


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
# Released files and extra text


def read_rows(folder: str | Path, report: Report, kind: str) -> Iterator[dict]:
    """Rows of every ``*.parquet``, ``*.jsonl`` and ``*.json`` file under ``folder`` (MusicPile / MusicPile-sft
    layouts). Malformed jsonl lines and non-object rows are counted under ``rejected/malformed_jsonl``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {kind} folder not found")
    files = sorted(p for p in folder.rglob("*") if p.suffix in {".parquet", ".jsonl", ".json"})
    if not files:
        raise FileNotFoundError(f"{folder}: no .parquet/.jsonl files for {kind}")
    for p in files:
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            for row in pq.read_table(p).to_pylist():
                yield row
            continue
        with open(p, errors="replace") as f:
            for ln, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    report.reject("malformed_jsonl", f"{p}:{ln}: {e}")
                    continue
                if not isinstance(row, dict):
                    report.reject("malformed_jsonl", f"{p}:{ln}: not an object")
                    continue
                yield row


def check_sft_row(row: dict, report: Report, where: str) -> dict | None:
    """A MusicPile-sft row with string fields and a non-empty output; score rows must carry ABC."""
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


def read_text_files(paths: Iterable[str], report: Report) -> Iterator[str]:
    """Music text documents: ``.txt`` files split on blank lines, or jsonl/parquet folders with a ``text`` field."""
    for p in map(Path, paths):
        if p.is_dir() or p.suffix in {".jsonl", ".json", ".parquet"}:
            folder = p if p.is_dir() else p.parent
            for row in read_rows(folder, report, "text"):
                if isinstance(row.get("text"), str) and row["text"].strip():
                    yield row["text"]
                else:
                    report.reject("empty_text", str(p))
        else:
            for para in p.read_text(errors="replace").split("\n\n"):
                if para.strip():
                    yield para.strip()


def mix_pretrain(abc_docs: list[str], text_docs: list[str], ratio: float, seed: int) -> list[str]:
    """Mix documents so that ABC makes up about ``ratio`` of all characters: the larger side is subsampled
    (text) or the ABC side repeated/subsampled to reach the target; returns the shuffled mix."""
    rng = random.Random(seed)
    a = sum(map(len, abc_docs))
    t = sum(map(len, text_docs))
    if not text_docs or ratio >= 1.0:
        docs = list(abc_docs)
    elif not abc_docs or ratio <= 0.0:
        docs = list(text_docs)
    else:
        want_text = a * (1 - ratio) / ratio  # characters of text that give the ratio with all the ABC
        if want_text <= t:
            text_sel, acc = [], 0
            for d in rng.sample(text_docs, len(text_docs)):
                if acc >= want_text:
                    break
                text_sel.append(d)
                acc += len(d)
            docs = list(abc_docs) + text_sel
        else:  # not enough text: keep all of it and subsample the ABC instead
            want_abc = t * ratio / (1 - ratio)
            abc_sel, acc = [], 0
            for d in rng.sample(abc_docs, len(abc_docs)):
                if acc >= want_abc:
                    break
                abc_sel.append(d)
                acc += len(d)
            docs = abc_sel + list(text_docs)
    rng.shuffle(docs)
    return docs


# ---------------------------------------------------------------------------------------------------------------
# Build


def data_fingerprint(cfg: ChatMusicianConfig) -> str:
    """What the built corpus depends on: the data section, the tokenizer choice and the packing settings."""
    return config_hash({"data": cfg.data.__dict__, "tokenizer": cfg.tokenizer.__dict__, "model_tok": tokenizer_source(cfg),
                        "version": DATA_VERSION, "abc": abctools.BACKEND},
                       exclude=("build_if_missing", "stage"))


def tokenizer_source(cfg: ChatMusicianConfig) -> str:
    """Folder of the tokenizer used for the corpus: explicit, the model folder, or the one ``data`` trains."""
    if cfg.model.tokenizer:
        return cfg.model.tokenizer
    if cfg.tokenizer.train or cfg.model.init == "scratch":
        return str(Path(cfg.data.out_dir) / "tokenizer")
    if not cfg.model.name_or_path:
        raise ValueError("no tokenizer: set model.tokenizer, model.name_or_path or tokenizer.train=true")
    return cfg.model.name_or_path


def _write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def build(cfg: ChatMusicianConfig) -> dict:
    """Build both corpora, the tokenizer (when asked) and the tokenized arrow datasets. Returns the report dict."""
    import datasets

    from .tokenization import load_tokenizer

    out = Path(cfg.data.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = Report()
    tunes = prepare_tunes(load_tunes(cfg), cfg, report) if cfg.data.tunes != "none" else []
    for t in tunes:
        report[f"tunes/{t['split']}"] += 1

    # SFT rows: generated from tunes, plus released MusicPile-sft rows when a folder is given
    sft = generate_sft(tunes, cfg, report)
    if cfg.data.musicpile_sft_dir:
        for i, row in enumerate(read_rows(cfg.data.musicpile_sft_dir, report, "MusicPile-sft")):
            checked = check_sft_row(row, report, f"{cfg.data.musicpile_sft_dir} row {i}")
            if checked:
                # released rows carry no tune identity: split by the hash of the whole row text
                checked["split"] = split_of(checked["instruction"] + checked["input"] + checked["output"], cfg.data.valid_fraction)
                sft.append(checked)

    # pretraining documents: ABC tunes + music text
    abc_docs = [(t["abc"], t["split"]) for t in tunes]
    text_docs = [(music_text(t), t["split"]) for t in tunes]
    extra = list(read_text_files(cfg.data.text_files, report)) if cfg.data.text_files else []
    if cfg.data.musicpile_dir:
        for i, row in enumerate(read_rows(cfg.data.musicpile_dir, report, "MusicPile")):
            if isinstance(row.get("text"), str) and row["text"].strip():
                extra.append(row["text"])
            else:
                report.reject("empty_text", f"{cfg.data.musicpile_dir} row {i}")
    text_docs += [(d, split_of(d, cfg.data.valid_fraction)) for d in extra]
    pretrain = {}
    for split in ("train", "valid"):
        docs = mix_pretrain([d for d, s in abc_docs if s == split], [d for d, s in text_docs if s == split],
                            cfg.data.abc_text_ratio, cfg.run.seed)
        pretrain[split] = [{"text": d} for d in docs]

    # tokenizer: train one on the corpus for scratch models
    tok_dir = Path(tokenizer_source(cfg))
    if cfg.tokenizer.train or (cfg.model.init == "scratch" and not cfg.model.tokenizer):
        corpus = [r["instruction"] + r["input"] + r["output"] for r in sft] + [d["text"] for d in pretrain["train"]]
        tok = train_tokenizer(corpus, cfg.tokenizer.vocab_size)
        tok.save_pretrained(str(tok_dir))
    tok = load_tokenizer(str(tok_dir))

    for stage, splits in (("sft", {s: [r for r in sft if r["split"] == s] for s in ("train", "valid")}), ("pretrain", pretrain)):
        dd = {}
        for split, rows in splits.items():
            _write_jsonl(out / stage / f"{split}.jsonl", rows)
            toks = []
            for r in rows:
                if stage == "sft":
                    s = tokenize_sft(tok, r, cfg.data.max_src_len, cfg.data.max_len)
                    if s.pop("overlong"):
                        if cfg.data.overlong == "drop":
                            report.reject("overlong", f"{stage}/{split} row id={r.get('id')} ({r.get('src')})")
                            continue
                        report["truncated/overlong"] += 1
                    if not any(lab != -100 for lab in s["labels"]):
                        report.reject("no_target_tokens", f"{stage}/{split} id={r.get('id')}")
                        continue
                    s["src"] = r.get("src", "")
                    toks.append(s)
                else:
                    chunks = tokenize_pretrain(tok, r["text"], cfg.data.max_len)
                    report["pretrain/chunked_docs"] += int(len(chunks) > 1)
                    toks += [{**c, "src": "text"} for c in chunks]
            report[f"{stage}/{split}/samples"] += len(toks)
            report[f"{stage}/{split}/tokens"] += sum(len(s["input_ids"]) for s in toks)
            dd[split] = datasets.Dataset.from_list(toks) if toks else datasets.Dataset.from_dict(
                {"input_ids": [], "labels": [], "src": []})
        final = out / stage / "tokenized"
        tmp = out / stage / ".tokenized.tmp"
        datasets.DatasetDict(dd).save_to_disk(str(tmp))
        if final.exists():
            import shutil

            shutil.rmtree(final)
        tmp.rename(final)
    for r in sft:
        report[f"sft/{r['split']}/task/{r['src']}"] += 1
    result = {"fingerprint": data_fingerprint(cfg), "tokenizer": str(tok_dir), "counts": dict(sorted(report.items()))}
    atomic_write_json(out / "report.json", result)
    rejected = {k: v for k, v in report.items() if k.startswith("rejected/")}
    log.info("data: %d tunes kept of %d; sft train/valid %d/%d samples; pretrain train/valid %d/%d; rejected %s",
             report["tunes/kept"], report["tunes/read"], report["sft/train/samples"], report["sft/valid/samples"],
             report["pretrain/train/samples"], report["pretrain/valid/samples"], rejected or "none")
    return result


def ensure_built(cfg: ChatMusicianConfig) -> dict:
    """The corpus report; (re)builds when missing or built from another data config."""
    rep = Path(cfg.data.out_dir) / "report.json"
    if rep.exists():
        r = json.loads(rep.read_text())
        if r.get("fingerprint") == data_fingerprint(cfg):
            return r
        if not cfg.data.build_if_missing:
            raise RuntimeError(f"{rep}: corpus was built from another data config; run `chatmusician data` again")
    elif not cfg.data.build_if_missing:
        raise FileNotFoundError(f"{rep}: no corpus; run `chatmusician data --config ...` first")
    return build(cfg)
