"""``yue demo``: the whole YuE path on tiny models, on a CPU, in a few minutes: from songs to a new song you can hear.

1. codec: train the tiny X-Codec briefly on the kit's training songs (or load ``--codec``); reconstruct a held-out song;
2. prepare: every kit song -> codes and stage-1 / stage-2 token documents (``yue prepare``, tiny tokenizer);
3. stage-1 LM: train the tiny stage-1 config for a few steps; held-out cross-entropy next to unigram/bigram models;
4. stage-2 LM: the same for the tiny stage-2 config (and its codebook 1-7 accuracy given codebook 0);
5. generate: lyrics and tags of a held-out song -> ``vocals.wav``, ``instrumental.wav``, ``mix.wav`` (16 kHz);
6. eval: ``yue eval`` on the generated song (sections, codes in range, vocal presence per section).

The models are tiny and trained for about a minute, so the song is mostly noise with the right structure: the demo
shows the pipeline, its file formats and its checks end to end. For better numbers: ``make train`` (codec), then the
tiny LM configs with their full step counts (README "Language-model training").
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parents[2]  # yue/ (configs/ lives there)


def _lm_config(name: str, overrides: list[str]):
    from musiccore.config import load_config
    from yue.lm.config import LMTrainConfig

    return load_config(LMTrainConfig, PROJECT_DIR / "configs" / name, overrides)


def _train_lm(task: str, prepared: Path, out: Path, steps: int) -> dict:
    from yue.lm.train import train

    cfg = _lm_config(f"tiny_{task}.yaml", [
        f"data.prepared={prepared}", f"run.dir={out / task}", "run.fresh=true", f"trainer.max_steps={steps}",
        f"trainer.save_steps={steps}", f"trainer.log_every={max(1, steps // 4)}", "eval.max_blocks=8",
    ])  # fmt: skip
    t0 = time.time()
    summary = train(cfg)
    summary["wall_s"] = time.time() - t0
    return summary


def _eval_line(summary: dict) -> str:
    ev = summary.get("eval") or {}
    split = next((s for s in ("all", "test", "valid") if s in ev), None)
    if split is None:
        return "no held-out songs to score"
    r = ev[split]
    line = (f"held-out ({split}) cross-entropy {r['model']['ce']:.3f} nats/token vs unigram {r['unigram']['ce']:.3f}, "
            f"bigram {r['bigram']['ce']:.3f}")  # fmt: skip
    if "acc_cb1_7" in r["model"]:
        line += f"; codebook 1-7 accuracy {100 * r['model']['acc_cb1_7']:.1f}%"
    return line


def _request_from(prepared: Path, n_sections: int) -> tuple[str, str, str]:
    """(song id, tags, lyrics) of a held-out prepared song (its first ``n_sections`` labelled sections)."""
    import json

    rows = [json.loads(x) for x in (prepared / "manifest.jsonl").read_text().splitlines() if x.strip()]
    held = [r for r in rows if r.get("split") in ("test", "valid")] or rows[-1:]
    row = held[0]
    segs = row["segments"][:n_sections]
    lyrics = "\n".join(f"[{s['label']}]\n{s['text']}\n" for s in segs)
    return row["id"], row.get("tags") or "pop", lyrics


def run_demo(steps: int = 300, codec_dir: str | None = None, out_dir: str | None = None, seconds: float = 8.0,
             lm_steps: int = 40, sections: int = 2, section_tokens: int = 400, seed: int = 0,
             max_songs: int = 16) -> dict:  # fmt: skip
    """Run the six steps above into ``out_dir`` (default ``$MUSIC_RUNS_DIR/yue-demo``); returns what it printed.

    Args:
        steps: codec training steps (when no ``codec_dir``). 300: the tiny codec's codebooks restart unused codes
            only once their usage decays below threshold (~230 steps); before that codebook 0 uses about 6 codes and the
            songs give no stage-2 documents (upstream's filter wants 25 distinct codes per chunk). 300 steps: ~200.
        seconds: length of the held-out excerpt the codec reconstructs.
        lm_steps: training steps of each tiny LM.
        sections / section_tokens: sections to generate and stage-1 ids per section at most (2 ids per 20 ms frame).
        max_songs: training songs prepared at most (plus 2 valid and 2 test songs), so a large kit stays fast.
    """
    from musiccore.audio import write_audio
    from musiccore.runs import runs_root
    from yue.codec.train import CodecTrainConfig, evaluate_codec, train_codec
    from yue.codec.xcodec import XCodec
    from yue.evaluate import evaluate
    from yue.generate import generate
    from yue.prepare import describe_codec, prepare_folder
    from yue.songs import SongLoadError, load_songs

    out = Path(out_dir) if out_dir else runs_root() / "yue-demo"
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    # ---- 1. codec
    held_out = load_songs("test", limit=1)  # a song the codec never trained on (a synthesized one without a kit)
    synthetic = held_out[0].synthetic
    if codec_dir:
        codec_path = Path(codec_dir)
        what = f"loaded {codec_dir}"
    else:
        cfg = CodecTrainConfig()
        cfg.trainer.run_dir = str(out / "codec-run")
        cfg.data.split = "train"
        cfg.trainer.max_steps = steps
        cfg.trainer.save_every = max(steps, 1)
        cfg.trainer.log_every = max(1, min(10, steps))
        codec_path = train_codec(cfg, fresh=True) / "checkpoint"
        what = f"tiny X-Codec trained {steps} steps on the kit's training songs"
    codec = XCodec.from_pretrained(codec_path)
    song = held_out[0]
    n = min(len(song.mix), int(seconds * codec.sample_rate))
    rec = evaluate_codec(codec, song.mix[:n], 6.0)
    write_audio(out / "codec_input.wav", song.mix[None, :n], codec.sample_rate)
    write_audio(out / "codec_recon.wav", np.clip(rec["recon"], -0.99, 0.99)[None], codec.sample_rate)
    print(f"[1/6] codec: {what}; held-out '{song.id}' ({n / codec.sample_rate:.1f} s mix, "
          f"{codec.num_frames(n)} frames of 12 codes) at 6 kbps: SNR {rec['snr_db']:.2f} dB, "
          f"log-spectral distance {rec['lsd_db']:.2f} dB")  # fmt: skip

    # ---- 2. prepare (``yue prepare``'s own code path: tokenizer, report, resume checks)
    prepared = out / "prepared"
    shutil.rmtree(prepared, ignore_errors=True)  # a new codec: never mix codes of two codecs
    info = describe_codec(codec, codec_path)
    runs = [(None, 3)] if synthetic else [("train", max_songs), ("valid", 2), ("test", 2)]
    for split, limit in runs:  # at most max_songs training songs and 2 held-out ones per split, however large the kit is
        try:
            prepare_folder(prepared, codec, info, "tiny", split=split, limit=limit, allow_synth=synthetic)
        except SongLoadError as e:  # a split without songs: the others still make a demo
            log.warning("yue prepare (split %s): %s", split, e)

    report_path = prepared / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    c = report.get("counts", {})
    if not report.get("tokens"):
        raise RuntimeError(f"yue prepare built no song; see {report_path}")
    splits = ", ".join(f"{k} {v['songs']} songs / {v['stage1_tokens']} stage-1 + {v['stage2_tokens']} stage-2 tokens"
                       for k, v in report["tokens"].items())  # fmt: skip
    n_songs = sum(v["songs"] for v in report["tokens"].values())
    print(f"[2/6] prepare: {n_songs} songs -> codes + LM documents in {prepared} ({splits})"
          + (f"; {c['failed']} skipped (see report.json)" if c["failed"] else ""))

    # ---- 3./4. the two LMs
    s1 = _train_lm("stage1", prepared, out, lm_steps)
    print(f"[3/6] stage-1 LM (tiny): {s1['global_step']} steps in {s1['wall_s']:.0f} s; {_eval_line(s1)}")
    s2 = _train_lm("stage2", prepared, out, lm_steps)
    print(f"[4/6] stage-2 LM (tiny): {s2['global_step']} steps in {s2['wall_s']:.0f} s; {_eval_line(s2)}")

    # ---- 5. generate a song from a held-out song's lyrics and tags
    sid, tags, lyrics = _request_from(prepared, sections)
    song_dir = out / "song"
    shutil.rmtree(song_dir, ignore_errors=True)
    sj = generate(s1["final"], s2["final"], str(codec_path), tags, lyrics, song_dir, seed=seed,
                  overrides=[f"stage1.max_new_tokens={section_tokens}", f"stage1.min_new_tokens={min(100, section_tokens)}"])
    secs = ", ".join(f"{s['label']} {s['end_s'] - s['start_s']:.1f} s" for s in sj["sections"])
    print(f"[5/6] generate: lyrics + tags of held-out '{sid}' ({tags!r}) -> {len(sj['sections'])} sections ({secs}) "
          f"in {sj['timings']['total_s']:.1f} s (stage 1 {sj['timings']['stage1_s']:.1f} s, stage 2 "
          f"{sj['timings']['stage2_s']:.1f} s); {sj['sample_rate']} Hz")  # fmt: skip

    # ---- 6. yue eval on it
    rep = evaluate(song_dir, out_dir=out / "eval")
    one = rep["songs"][0] if rep["songs"] else {}
    sm = rep["summary"]
    voc = ", ".join(f"{r['label']} {100 * r['voiced_ratio']:.0f}% voiced" for r in one.get("vocals", {}).get("per_section", [])
                    if r.get("voiced_ratio") is not None)  # fmt: skip
    print(f"[6/6] yue eval: sections {sm['sections_present']}/{sm['sections_requested']} present, codes in range and "
          f"consistent: {'yes' if sm['songs_codes_ok'] == sm['songs'] else 'NO'}, {sm['total_s']:.1f} s"
          + (f"; vocal stem: {voc}" if voc else ""))  # fmt: skip
    print(f"      report: {out / 'eval' / 'eval.md'}")
    print(f"listen: {song_dir / 'mix.wav'} (also vocals.wav, instrumental.wav); codec reconstruction: "
          f"{out / 'codec_recon.wav'}  [demo took {time.time() - t_start:.0f} s]")  # fmt: skip
    return {"out": str(out), "codec": rec, "prepared": c, "stage1": s1, "stage2": s2, "song": sj, "eval": rep,
            "eval_song": one}  # fmt: skip
