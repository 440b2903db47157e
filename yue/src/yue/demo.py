"""``yue demo``: the codec and token layout end to end on one song, on a CPU in a few minutes.

1. codec: train the tiny X-Codec briefly on data-kit songs (or load ``--codec``);
2. encode an excerpt of a song's vocal and accompaniment stems (all 12 codebooks);
3. tokenizer: train the tiny SentencePiece tokenizer (released special-token layout) on the kit's lyrics;
4. build the stage-1 CoT document (sections from the song's lyrics and times) and stage-2 chunks, parse both back
   and check they give the same codes;
5. decode the codes back to audio (16 kHz) and print shapes, id ranges and reconstruction metrics.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def run_demo(steps: int = 100, codec_dir: str | None = None, out_dir: str | None = None, seconds: float = 8.0) -> dict:
    import torch

    from musiccore.audio import write_audio
    from musiccore.runs import runs_root
    from yue.codec.train import CodecTrainConfig, evaluate_codec, train_codec
    from yue.codec.xcodec import XCodec
    from yue.lyrics import Section
    from yue.sequences import (Stage1Song, build_stage1, build_stage2_chunk, parse_stage1, parse_stage2)  # fmt: skip
    from yue.songs import load_songs
    from yue.tokenizer import YuETokenizer, train_tiny_tokenizer

    out = Path(out_dir) if out_dir else runs_root() / "yue-demo"
    out.mkdir(parents=True, exist_ok=True)
    songs = load_songs("train", limit=8)  # the codec trains on these (the same as CodecTrainConfig's data)
    held_out = load_songs("test", limit=1)  # the demo encodes a song the codec never saw
    if held_out[0].synthetic:  # no kit: the synthesized stand-ins are all alike; keep the previous pick
        held_out = songs[-1:]
    src = "synthesized (data kit not built)" if songs[0].synthetic else "data kit"
    print(f"[1/5] songs: {len(songs)} train + held-out '{held_out[0].id}' from {src}")

    if codec_dir:
        codec = XCodec.from_pretrained(codec_dir)
        print(f"[1/5] codec: loaded {codec_dir}")
    else:
        cfg = CodecTrainConfig()
        cfg.trainer.run_dir = str(out / "codec-run")
        cfg.data.split = "train"
        cfg.trainer.max_steps = steps
        cfg.trainer.save_every = max(steps, 1)
        cfg.trainer.log_every = max(1, min(10, steps))
        run = train_codec(cfg, fresh=True)
        codec = XCodec.from_pretrained(run / "checkpoint")
        print(f"[1/5] codec: tiny X-Codec trained {steps} steps -> {run / 'checkpoint'}")

    song = held_out[0]
    n = min(len(song.mix), int(seconds * codec.sample_rate))
    vocal, inst, mix = song.vocal[:n], song.accompaniment[:n], song.mix[:n]
    with torch.no_grad():
        cv = codec.encode(vocal).numpy()[0]
        ci = codec.encode(inst).numpy()[0]
    print(f"[2/5] encoded {n / codec.sample_rate:.1f} s of '{song.id}': vocal codes {list(cv.shape)}, "
          f"instrumental codes {list(ci.shape)} (T = ceil({n}/320) = {-(-n // 320)})")  # fmt: skip

    tok = YuETokenizer(train_tiny_tokenizer(out / "tiny_tokenizer", [s.lyrics for s in songs + held_out]))
    lay = tok.layout
    print(f"[3/5] tiny tokenizer: {lay.sp_vocab_size} SP pieces, <SOA>={lay.id('<SOA>')} <EOA>={lay.id('<EOA>')} "
          f"<xcodec>={lay.id('<xcodec>')}, codebook 0 ids {lay.xcodec.id_range(0, 1)}, vocab {lay.vocab_size}")  # fmt: skip

    fps = codec.cfg.frame_rate
    t = cv.shape[1]
    sections, vs, is_ = [], [], []
    for sec in song.sections:  # sections inside the excerpt (at least 1 s), frames from their times
        a, b = int(round(sec["start"] * fps)), min(t, int(round(sec["end"] * fps)))
        if b - a >= fps:
            sections.append(Section(str(sec["label"]), str(sec.get("lyrics", ""))))
            vs.append(cv[0, a:b])
            is_.append(ci[0, a:b])
    if not sections:  # excerpt shorter than the first section: one section over the whole excerpt
        first = song.sections[0] if song.sections else {"label": "verse", "lyrics": ""}
        sections, vs, is_ = [Section(str(first["label"]), str(first.get("lyrics", "")))], [cv[0]], [ci[0]]
    s1 = build_stage1(tok, Stage1Song(song.tags or "pop", sections, vs, is_), eod=True)
    p1 = parse_stage1(tok, s1)
    v_back, i_back = p1.tracks()
    ok1 = p1.ok and np.array_equal(v_back[0], np.concatenate(vs)) and np.array_equal(i_back[0], np.concatenate(is_))
    print(f"[4/5] stage-1 document: {len(s1)} ids, {len(sections)} sections ({', '.join(s.label for s in sections)}); "
          f"first ids {s1[:8]} ...; parse -> {'identical codes' if ok1 else 'MISMATCH ' + str(p1.errors)}")  # fmt: skip
    frames = min(t, 300)
    s2 = build_stage2_chunk(lay, cv[:8, :frames])
    p2 = parse_stage2(lay, s2)
    ok2 = p2.ok and np.array_equal(p2.codes(), cv[:8, :frames])
    print(f"[4/5] stage-2 chunk: {len(s2)} ids = 3 + {frames} + {8 * frames} + 1 (<EOA>); "
          f"parse -> {'identical codes' if ok2 else 'MISMATCH ' + str(p2.errors)}")  # fmt: skip

    metrics = {}
    for name, wav in (("vocal", vocal), ("instrumental", inst), ("mix", mix)):
        for bw in (0.5, 6.0) if name != "mix" else (0.5, 4.0, 6.0):
            r = evaluate_codec(codec, wav, bw)
            metrics[f"{name}@{bw}kbps"] = {"snr_db": r["snr_db"], "lsd_db": r["lsd_db"]}
            if bw == 6.0:
                write_audio(out / f"{name}_recon.wav", np.clip(r["recon"], -0.99, 0.99)[None], codec.sample_rate)
        write_audio(out / f"{name}_input.wav", wav[None], codec.sample_rate)
    print("[5/5] reconstruction (SNR dB higher is better, log-spectral distance dB lower is better):")
    for k, m in metrics.items():
        print(f"       {k:>22}: SNR {m['snr_db']:6.2f} dB   LSD {m['lsd_db']:6.2f} dB")
    print(f"outputs in {out}")
    return {"stage1_ok": ok1, "stage2_ok": ok2, "metrics": metrics, "out": str(out)}
