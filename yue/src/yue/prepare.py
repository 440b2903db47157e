"""Songs -> codec tokens and stage-1 / stage-2 token sequences (``yue prepare``).

For every song: the vocal, accompaniment and mix stems are encoded with the codec (all codebooks, chunked), the
lyrics sections (with their times) become a stage-1 CoT document (``<EOD>``-terminated, the training layout), and
each stem's codes become a stage-2 document of 6 s chunks. Output folder::

    codes/<id>.npz         vocal, accompaniment, mix: int16 [K, T] (equal T)
    stage1/<id>.npy        int32 ids of the stage-1 document
    stage2/<id>_vocal.npy  stage2/<id>_inst.npy     int32 ids (stage-2 documents; absent when the song < 6 s)
    manifest.jsonl         one row per prepared song (see below)
    tokenizer/             tokenizer.model + layout.json (``--tokenizer tiny``; the released one is only named)
    report.json            counts, per-song failures with reasons, codec and tokenizer, token counts per split
    failures.jsonl         the songs this run skipped, one ``{"id", "reason"}`` row each

Manifest row (the contract the LM data loader reads)::

    {"id": str, "split": "train"|"valid"|"test", "tags": str, "frames": T, "codebooks": K,
     "segments": [{"label": str, "text": str, "frame_start": int, "frame_end": int}, ...],
     "sections": [label, ...], "stage1_len": int, "stage2_len": {"vocal": int, "inst": int},
     "stage2_chunks": {"vocal": [chunk index, ...], "inst": [...]}, "synthetic": bool}

``segments`` are the sections kept, in the order of the stage-1 document, with their frame range (50 frames/s)
into the codes of ``codes/<id>.npz`` (``0 <= frame_start``, ``frame_end - frame_start >= 50``, ``frame_end <= T``).

Rules (upstream's data filters, spec 2.3): the stems must be within 10 frames (3200 samples) of each other in
length (then cut to the shortest); frame ranges come from the section times at 50 frames/s; sections shorter than
1 s are dropped. A song is skipped, with its reason in ``report.json``, when a stem is missing or its audio cannot
be read, the stems differ in length by more than that, a section has no label, an unknown label or timings outside
the audio (negative, not increasing, NaN, or ending more than ``time_tolerance_s`` after the audio), there is no
labelled section (or none of at least 1 s), or the audio is silent. Every file is written atomically; songs
already in the manifest are skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["prepare_song", "prepare_songs", "prepare_folder", "prepare_tokenizer", "describe_codec", "check_sections",
           "PrepareError"]

STEMS = ("vocal", "accompaniment", "mix")


class PrepareError(ValueError):
    """A song that cannot become training sequences (names the song and the reason)."""


def _save_npy(path: Path, arr: np.ndarray) -> None:
    from musiccore.runs import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)


def check_sections(
    song_id: str, sections: list[dict], duration_s: float, frames: int, fps: int, time_tolerance_s: float = 0.1
) -> list[dict]:
    """Validate a song's lyrics sections against its audio and return the kept ones with frame ranges.

    Args:
        sections: ``[{label, start, end, lyrics}]`` with times in seconds (the kit's manifest rows).
        duration_s: length of the audio; frames: ``T`` of its codes; fps: codec frames per second.
        time_tolerance_s: a section may end this much after the audio (rounding of the times); it is then cut.

    Returns:
        ``[{"label", "text", "frame_start", "frame_end"}]``: the sections of at least 1 s (upstream drops shorter
        ones), in the given order.

    Raises:
        PrepareError: no sections, a section without a label or with an unknown one, timings that are not numbers,
        negative, not increasing, or outside the audio, or no section of at least 1 s.
    """
    from yue.lyrics import KNOWN_LABELS

    if not sections:
        raise PrepareError(f"{song_id}: no labelled section (the song has no lyrics sections)")
    if not isinstance(sections, (list, tuple)):
        raise PrepareError(f"{song_id}: sections must be a list of objects, got {type(sections).__name__}")
    kept = []
    for i, sec in enumerate(sections):
        where = f"{song_id}: section {i}"
        if not isinstance(sec, dict):
            raise PrepareError(f"{where}: expected a {{label, start, end, lyrics}} object, got {type(sec).__name__}")
        label = str(sec.get("label") or "").strip()
        if not label:
            raise PrepareError(f"{where}: no label (no labelled section)")
        if label.lower() not in KNOWN_LABELS:
            raise PrepareError(f"{where}: unknown section label {label!r}")
        try:
            start, end = float(sec["start"]), float(sec["end"])
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise PrepareError(f"{where} ({label}): start/end missing or not numbers ({e})") from e
        if not (math.isfinite(start) and math.isfinite(end)):
            raise PrepareError(f"{where} ({label}): non-finite timing [{start}, {end}]")
        if start < 0 or end <= start:
            raise PrepareError(f"{where} ({label}): timing [{start:.3f}, {end:.3f}] s is negative or not increasing")
        if end > duration_s + time_tolerance_s:
            raise PrepareError(
                f"{where} ({label}): lyrics timing [{start:.3f}, {end:.3f}] s lies outside the audio "
                f"({duration_s:.3f} s)"
            )
        a, b = int(round(start * fps)), min(frames, int(round(end * fps)))
        if b - a < fps:  # upstream drops segments shorter than 1 s
            continue
        kept.append({"label": label, "text": str(sec.get("lyrics") or "").strip(), "frame_start": a, "frame_end": b})
    if not kept:
        raise PrepareError(f"{song_id}: no section of at least 1 s inside the audio")
    return kept


def prepare_song(song, codec, tok, chunk_s: float = 30.0, max_frame_diff: int = 10,
                 time_tolerance_s: float = 0.1) -> dict:  # fmt: skip
    """Encode one :class:`yue.songs.Song` and build its sequences.

    Returns:
        ``{"codes": {stem: int [K, T]}, "stage1": int32 [L], "stage2": {"vocal"|"inst": (int32 [L2], kept chunk
        indices)}, "segments": [{label, text, frame_start, frame_end}], "frames": T}``.

    Raises:
        PrepareError: a missing stem, stems too different in length, bad sections (see :func:`check_sections`),
        silent or unusable audio, bad lyrics.
    """
    from yue.codec.xcodec import CodecInputError, prepare_waveform
    from yue.lyrics import LyricsError, Section
    from yue.sequences import Stage1Song, build_stage1, build_stage2_document

    hop = codec.hop_length
    wavs = {}
    for stem in STEMS:
        w = getattr(song, stem, None)
        if w is None or np.asarray(w).size == 0:
            raise PrepareError(f"{song.id}: missing stem: no {stem} audio")
        try:
            wavs[stem] = prepare_waveform(w, codec.sample_rate, codec.sample_rate, where=f"{song.id}/{stem}")
        except CodecInputError as e:
            raise PrepareError(str(e)) from e
    lens = {k: len(v) for k, v in wavs.items()}
    if max(lens.values()) - min(lens.values()) > max_frame_diff * hop:
        raise PrepareError(
            f"{song.id}: stems of different lengths: {lens} samples differ by more than {max_frame_diff} frames "
            f"({max_frame_diff * hop} samples)"
        )
    n = min(lens.values())
    # validate the sections before the (expensive) encode; the frame count follows the codec's rule
    segments = check_sections(song.id, list(song.sections), n / codec.sample_rate, codec.num_frames(n),
                              codec.cfg.frame_rate, time_tolerance_s)  # fmt: skip
    codes = {k: codec.encode_long(v[:n], chunk_s=chunk_s).cpu().numpy() for k, v in wavs.items()}
    t = min(c.shape[1] for c in codes.values())  # equal by construction (same length, same rule)
    codes = {k: v[:, :t] for k, v in codes.items()}
    sections = [Section(s["label"], s["text"]) for s in segments]
    vocal = [codes["vocal"][0, s["frame_start"] : s["frame_end"]] for s in segments]
    inst = [codes["accompaniment"][0, s["frame_start"] : s["frame_end"]] for s in segments]
    try:
        s1 = build_stage1(tok, Stage1Song(song.tags, sections, vocal, inst), eod=True)
    except (LyricsError, ValueError) as e:
        raise PrepareError(f"{song.id}: {e}") from e
    s2 = {}
    for name, stem in (("vocal", "vocal"), ("inst", "accompaniment")):
        # stage 2 needs 8 codebooks (a codec encoded at < 4 kbps gives no stage-2 document)
        ids, kept = build_stage2_document(tok.layout, codes[stem][:8]) if codes[stem].shape[0] >= 8 else ([], [])
        s2[name] = (np.asarray(ids, dtype=np.int32), kept)
    return {"codes": codes, "stage1": np.asarray(s1, dtype=np.int32), "stage2": s2, "segments": segments,
            "frames": t}  # fmt: skip


def _read_manifest(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a killed appender's truncated last line: that song is redone
                log.warning("%s: ignoring a truncated line", path)
    return rows


def token_counts(rows: Iterable[dict]) -> dict[str, dict[str, int]]:
    """Songs, frames and stage-1 / stage-2 token counts per split of manifest rows."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        c = out.setdefault(r.get("split", "train"), {"songs": 0, "frames": 0, "stage1_tokens": 0,
                                                     "stage2_tokens": 0})  # fmt: skip
        c["songs"] += 1
        c["frames"] += int(r.get("frames", 0))
        c["stage1_tokens"] += int(r.get("stage1_len", 0))
        c["stage2_tokens"] += sum(int(v) for v in (r.get("stage2_len") or {}).values())
    return dict(sorted(out.items()))


def prepare_songs(
    songs: Iterable[Any], codec, tok, out_dir: str | Path, chunk_s: float = 30.0, *, codec_info: dict | None = None,
    tokenizer_info: dict | None = None, log_every: int = 10, total: int | None = None,
) -> dict:  # fmt: skip
    """Prepare many songs into ``out_dir`` (see the module docstring); bad songs are skipped and reported.

    Args:
        songs: :class:`yue.songs.Song` or :class:`yue.songs.SongRef` items; a ref's audio is read only when its turn
            comes (one song in memory at a time), and a ref that cannot be read is a failure like any other.
        codec_info / tokenizer_info: what was used (path, kind), recorded in ``report.json``.
        log_every: without a terminal, one progress line every this many songs (a tqdm bar on a terminal).

    Returns:
        The report (also written atomically to ``out_dir/report.json``): ``counts`` (songs, prepared,
        already_there, failed), ``failures`` ``[{"id", "reason"}]``, ``prepared``/``already_there`` ids, ``codec``,
        ``tokenizer``, ``tokens`` per split (over the whole manifest), ``seconds``.
    """
    from musiccore.data.manifest import Progress
    from musiccore.runs import append_jsonl, atomic_path, atomic_write_json

    from yue.songs import SongLoadError, SongRef

    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.jsonl"
    have = {r["id"] for r in _read_manifest(manifest) if "id" in r}
    songs = list(songs) if total is None and not isinstance(songs, (list, tuple)) else songs
    n_total = total if total is not None else len(songs)  # type: ignore[arg-type]
    prepared: list[str] = []
    already: list[str] = []
    failures: list[dict] = []
    prog = Progress(n_total, "prepare", every=log_every)
    try:
        for item in songs:
            sid = str(item.id)
            if sid in have:
                already.append(sid)
                prog.update()
                continue
            try:
                song = item.load() if isinstance(item, SongRef) else item  # one song's audio at a time
                res = prepare_song(song, codec, tok, chunk_s=chunk_s)
            except (PrepareError, SongLoadError, ValueError) as e:
                # batch job: a bad song is reported and skipped, the others are built
                log.warning("skipping %s: %s", sid, e)
                failures.append({"id": sid, "reason": str(e)})
                prog.update()
                continue
            (out / "codes").mkdir(exist_ok=True)
            with atomic_path(out / "codes" / f"{sid}.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **{k: v.astype(np.int16) for k, v in res["codes"].items()})
            _save_npy(out / "stage1" / f"{sid}.npy", res["stage1"])
            for name, (ids, _) in res["stage2"].items():
                if ids.size:
                    _save_npy(out / "stage2" / f"{sid}_{name}.npy", ids)
            row = {
                "id": sid, "split": str(getattr(song, "split", "train")), "tags": str(song.tags),
                "frames": int(res["frames"]), "codebooks": int(res["codes"]["mix"].shape[0]),
                "segments": res["segments"], "sections": [s["label"] for s in res["segments"]],
                "stage1_len": int(res["stage1"].size),
                "stage2_len": {k: int(v[0].size) for k, v in res["stage2"].items()},
                "stage2_chunks": {k: [int(c) for c in v[1]] for k, v in res["stage2"].items()},
                "synthetic": bool(getattr(song, "synthetic", False)),
            }  # fmt: skip
            append_jsonl(manifest, row)  # last: a song is "done" only once all its files exist
            have.add(sid)
            prepared.append(sid)
            log.debug("prepared %s: %d frames, %d segments, stage-1 %d ids", sid, row["frames"],
                      len(row["segments"]), row["stage1_len"])  # fmt: skip
            prog.update()
    finally:
        prog.close()
    rows = _read_manifest(manifest)
    report = {
        "counts": {"songs": len(prepared) + len(already) + len(failures), "prepared": len(prepared),
                   "already_there": len(already), "failed": len(failures), "in_manifest": len(rows)},
        "failures": failures, "prepared": prepared, "already_there": already,
        "codec": codec_info if codec_info is not None else {"sample_rate": codec.sample_rate, "n_q": codec.n_q},
        "tokenizer": tokenizer_info if tokenizer_info is not None else {"vocab_size": tok.vocab_size},
        "tokens": token_counts(rows), "seconds": round(time.time() - t0, 2),
    }  # fmt: skip
    from musiccore.data.manifest import write_jsonl

    write_jsonl(out / "failures.jsonl", failures)
    atomic_write_json(out / "report.json", report)
    return report


def describe_codec(codec, path: str | Path | None, preset: str | None = None) -> dict:
    """What ``report.json`` records of the codec: its folder (``None`` for a random-weight ``preset`` codec), shape
    and rates. A resumed prepare compares ``path`` and ``random`` so that two codecs' codes never mix."""
    return {"path": str(Path(path).resolve()) if path else None, "random": not path,
            "preset": None if path else preset, "n_q": codec.n_q, "sample_rate": codec.sample_rate,
            "frame_rate": codec.cfg.frame_rate}  # fmt: skip


def prepare_tokenizer(path: str | None, songs=None, workdir: Path | None = None):
    """``(tokenizer, info)``: ``tiny`` trains one on the songs' lyrics and tags into ``workdir`` (or reuses the one
    already there, so a resumed ``yue prepare`` keeps its ids); else the given or released ``tokenizer.model``."""
    from yue.tokenizer import YuETokenizer, find_released_tokenizer, train_tiny_tokenizer

    if path == "tiny":
        model = Path(workdir) / "tokenizer.model"
        if not (model.is_file() and model.with_name("layout.json").is_file()):
            texts = [s.lyrics for s in songs or []] + [s.tags for s in songs or []]
            model = train_tiny_tokenizer(workdir, texts)
        tok = YuETokenizer(model)
        return tok, {"kind": "tiny", "path": str(model.resolve()), "vocab_size": tok.vocab_size}
    p = path or find_released_tokenizer()
    if p is None:
        raise SystemExit("no tokenizer: pass --tokenizer PATH (or 'tiny'), or set $YUE_TOKENIZER")
    tok = YuETokenizer(p)
    return tok, {"kind": "file" if path else "released", "path": str(Path(p).resolve()), "vocab_size": tok.vocab_size}


def prepare_folder(
    out_dir: str | Path, codec, codec_info: dict, tokenizer: str | None = None, *, split: str | None = None,
    root: str | Path | None = None, limit: int | None = None, allow_synth: bool = False, chunk_s: float = 30.0,
) -> dict:  # fmt: skip
    """``yue prepare``: the data kit's songs (``split``, the first ``limit``) -> ``out_dir`` with
    :func:`prepare_songs`; returns its report. Used by the CLI and by ``yue demo`` (one code path).

    Args:
        codec_info: :func:`describe_codec` of ``codec`` (recorded; a folder prepared with another codec is refused).
        tokenizer: ``tokenizer.model`` path, ``"tiny"`` (trained into ``out_dir/tokenizer``) or None (released).
        root: data-kit root (default ``musiccore.runs.data_dir()``).
        allow_synth: synthesized songs (``limit`` of them, 3 by default) when the kit has no songs.

    Raises:
        SongLoadError: no kit songs (and not ``allow_synth``).
        ValueError: ``out_dir`` holds songs prepared with another codec or tokenizer.
    """
    from musiccore.runs import data_dir

    from yue.songs import SongLoadError, song_refs, synth_song

    root = Path(root) if root else data_dir()
    try:
        songs = song_refs(split, root, limit)  # rows only: each song's audio is read in its turn
    except SongLoadError:
        if not allow_synth:
            raise
        songs = []
    if not songs:
        if not allow_synth:
            raise SongLoadError(f"no data-kit songs under {root} (split {split}); build them with `make data`")
        log.warning("no data-kit songs under %s: using synthesized songs (--allow-synth)", root)
        songs = [synth_song(seed=i) for i in range(limit or 3)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok, tok_info = prepare_tokenizer(tokenizer, songs, out / "tokenizer")
    prev = out / "report.json"
    if prev.is_file() and (out / "manifest.jsonl").is_file():  # resuming: never mix codecs or tokenizers
        old = json.loads(prev.read_text())
        for what, new in (("codec", codec_info), ("tokenizer", tok_info)):
            if old.get(what, {}).get("path") != new["path"] or old.get(what, {}).get("random") != new.get("random"):
                raise ValueError(f"{out}: holds songs prepared with {what} {old.get(what, {}).get('path')!r}, not "
                                 f"{new['path']!r}; use another output folder")
    log.info("prepare: %d songs from %s -> %s (codec %s, tokenizer %s)", len(songs), root, out,
             codec_info.get("path") or f"random {codec_info.get('preset')}", tok_info["path"])  # fmt: skip
    return prepare_songs(songs, codec, tok, out, chunk_s=chunk_s, codec_info=codec_info, tokenizer_info=tok_info)
