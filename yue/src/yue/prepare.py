"""Songs -> codec tokens and stage-1 / stage-2 token sequences (``yue prepare``).

For every song: the vocal, accompaniment and mix stems are encoded with the codec (all codebooks, chunked), the
lyrics sections (with their times) become a stage-1 CoT document (``<EOD>``-terminated, the training layout), and
each stem's codes become a stage-2 document of 6 s chunks. Output folder::

    codes/<id>.npz         vocal, accompaniment, mix: int16 [K, T]
    stage1/<id>.npy        int32 ids of the stage-1 document
    stage2/<id>_vocal.npy  stage2/<id>_inst.npy     int32 ids (stage-2 documents; absent when the song < 6 s)
    manifest.jsonl         one row per prepared song (ids lengths, sections kept, frames)
    failures.jsonl         songs skipped, with the reason

Rules (upstream's data filters): the stems must give frame counts within 10 frames of each other (then truncated);
sections shorter than 1 s are dropped; frame ranges come from the section times at 50 frames/s. Every file is written
atomically, and songs already in the manifest are skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["prepare_song", "prepare_songs", "PrepareError"]


class PrepareError(ValueError):
    """A song that cannot become training sequences (names the song and the reason)."""


def _save_npy(path: Path, arr: np.ndarray) -> None:
    from musiccore.runs import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)


def prepare_song(song, codec, tok, chunk_s: float = 30.0, max_frame_diff: int = 10) -> dict:
    """Encode one :class:`yue.songs.Song` and build its sequences. Returns a dict of arrays and ids.

    Raises:
        PrepareError: stems too different in length, no usable section, bad lyrics, silent stems.
    """
    from yue.codec.xcodec import CodecInputError, prepare_waveform
    from yue.lyrics import KNOWN_LABELS, LyricsError, Section
    from yue.sequences import Stage1Song, build_stage1, build_stage2_document

    codes = {}
    for stem in ("vocal", "accompaniment", "mix"):
        try:
            wav = prepare_waveform(getattr(song, stem), codec.sample_rate, codec.sample_rate, where=f"{song.id}/{stem}")
        except CodecInputError as e:
            raise PrepareError(str(e)) from e
        codes[stem] = codec.encode_long(wav, chunk_s=chunk_s).cpu().numpy()
    lens = {k: v.shape[1] for k, v in codes.items()}
    if max(lens.values()) - min(lens.values()) > max_frame_diff:
        raise PrepareError(f"{song.id}: stem frame counts differ by more than {max_frame_diff}: {lens}")
    t = min(lens.values())
    codes = {k: v[:, :t] for k, v in codes.items()}
    fps = codec.cfg.frame_rate
    sections, vocal, inst = [], [], []
    for sec in song.sections:
        a, b = int(round(float(sec["start"]) * fps)), min(t, int(round(float(sec["end"]) * fps)))
        if b - a < fps:  # upstream drops segments shorter than 1 s
            continue
        label = str(sec["label"])
        if label.lower() not in KNOWN_LABELS:
            raise PrepareError(f"{song.id}: unknown section label {label!r}")
        sections.append(Section(label, str(sec.get("lyrics", "")).strip()))
        vocal.append(codes["vocal"][0, a:b])
        inst.append(codes["accompaniment"][0, a:b])
    if not sections:
        raise PrepareError(f"{song.id}: no section of at least 1 s inside the audio")
    try:
        s1 = build_stage1(tok, Stage1Song(song.tags, sections, vocal, inst), eod=True)
    except (LyricsError, ValueError) as e:
        raise PrepareError(f"{song.id}: {e}") from e
    s2 = {}
    for name, stem in (("vocal", "vocal"), ("inst", "accompaniment")):
        # stage 2 needs 8 codebooks (a codec encoded at < 4 kbps gives no stage-2 document)
        ids, kept = build_stage2_document(tok.layout, codes[stem][:8]) if codes[stem].shape[0] >= 8 else ([], [])
        s2[name] = (np.asarray(ids, dtype=np.int32), kept)
    return {"codes": codes, "stage1": np.asarray(s1, dtype=np.int32), "stage2": s2, "sections": sections, "frames": t}


def prepare_songs(songs, codec, tok, out_dir: str | Path, chunk_s: float = 30.0) -> dict:
    """Prepare many songs into ``out_dir`` (see the module docstring); bad songs are skipped and reported.

    Returns:
        ``{"done": [...ids], "skipped": [...ids already there], "failed": [(id, reason), ...]}``.
    """
    from musiccore.runs import append_jsonl, atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.jsonl"
    have = set()
    if manifest.is_file():
        have = {json.loads(line)["id"] for line in manifest.read_text().splitlines() if line.strip()}
    report = {"done": [], "skipped": [], "failed": []}
    for song in songs:
        if song.id in have:
            report["skipped"].append(song.id)
            continue
        try:
            res = prepare_song(song, codec, tok, chunk_s=chunk_s)
        except (PrepareError, ValueError) as e:
            log.warning("skipping %s: %s", song.id, e)
            report["failed"].append((song.id, str(e)))
            append_jsonl(out / "failures.jsonl", {"id": song.id, "reason": str(e)})
            continue
        (out / "codes").mkdir(exist_ok=True)
        with atomic_path(out / "codes" / f"{song.id}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **{k: v.astype(np.int16) for k, v in res["codes"].items()})
        _save_npy(out / "stage1" / f"{song.id}.npy", res["stage1"])
        for name, (ids, _) in res["stage2"].items():
            if ids.size:
                _save_npy(out / "stage2" / f"{song.id}_{name}.npy", ids)
        row = {
            "id": song.id, "frames": res["frames"], "codebooks": int(res["codes"]["mix"].shape[0]),
            "sections": [s.label for s in res["sections"]], "stage1_len": int(res["stage1"].size),
            "stage2_len": {k: int(v[0].size) for k, v in res["stage2"].items()},
            "stage2_chunks": {k: v[1] for k, v in res["stage2"].items()}, "synthetic": bool(song.synthetic),
        }  # fmt: skip
        append_jsonl(manifest, row)  # last: a song is "done" only once all its files exist
        report["done"].append(song.id)
        log.info("prepared %s: %d frames, %d sections, stage-1 %d ids", song.id, row["frames"],
                 len(row["sections"]), row["stage1_len"])  # fmt: skip
    return report
