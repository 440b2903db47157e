"""Trained tokens per second with packing vs padding, on the real length distribution of the data kit's tunes.

Every mode trains the *same* samples (a seeded draw from the SFT corpus that ``chatmusician data`` builds from whole kit
tunes with the default task mix, released tokenisation, max_len 2048 / source 1536) with the same model, init and
optimizer, so the ratios are ratios of wall time for identical work. "Trained tokens" are the samples' tokens (prompt
and target); pad positions cost compute but train nothing. Modes:

- ``pad-longest``  batches of B samples right-padded to the longest one (the released collator at batch > 1,
                   ``DataCollatorForSeq2Seq``): the padding baseline, once per B in ``--batch`` (the padding share
                   grows with B: the longest of 16 samples is longer than the longest of 8);
- ``released``     micro batch 1 with gradient accumulation 8 (the released recipe, global batch 8: no padding at all,
                   but one short sequence per forward);
- ``pad-max-len``  batches of 8 padded to max_len (fixed shapes, ``padding="max_length"``; slow, not run by default);
- ``pack-dense``   rows of max_len tokens holding several samples, stock SDPA (dense block-diagonal mask: the
                   cross-sample blocks are computed and thrown away);
- ``pack-varlen``  the same rows with ``packed_sdpa`` (one causal attention per sample: the CPU analogue of
                   flash-attention varlen on GPU).

The default model (hidden 256, 4 layers) is small enough for a CPU yet compute-bound like a real LLM (the tiny
config's hidden-96 model is dominated by per-op overhead, which says nothing about padding). For a model whose cost
is linear in positions, packing can beat ``pad-longest`` by at most 1 / (1 - padding share); that ceiling is printed.

    python benchmarks/train_tokens.py [--samples 128 --batch 8,16 --threads 1 --modes pad-longest,pack-varlen]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch

from musiccore.config import load_config

from chatmusician.config import ChatMusicianConfig
from chatmusician.data import Report, generate_sft, load_tunes, prepare_tunes
from chatmusician.tokenization import Collator, pack_samples, tokenize_sft, train_tokenizer
from chatmusician.train import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODES = ("pad-longest", "released", "pad-max-len", "pack-dense", "pack-varlen")
DEFAULT_MODES = ("pad-longest", "released", "pack-dense", "pack-varlen")
RELEASED_BATCH = 8  # released global batch: micro 1 x 8 GPUs


def steps_for(mode: str, samples: list[dict], batch: int, max_len: int, rows: int) -> list[tuple[list[dict], bool]]:
    """The forward/backward calls of one mode over ``samples``: [(micro-batch, optimizer step after it?)]."""
    if mode == "released":
        return [([s], (i + 1) % batch == 0 or i == len(samples) - 1) for i, s in enumerate(samples)]
    if mode.startswith("pad"):
        return [(samples[i : i + batch], True) for i in range(0, len(samples), batch)]
    packed = pack_samples(samples, max_len, seed=0)
    return [(packed[i : i + rows], True) for i in range(0, len(packed), rows)]


def time_mode(model, steps, collate, warmup) -> tuple[float, int]:
    """Seconds for all ``steps`` (after one untimed warm-up step) and the number of positions computed."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for b in warmup:
        model(**collate(b)).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    positions, t0 = 0, time.perf_counter()
    for micro, step in steps:
        b = collate(micro)  # collation is part of the cost of a mode
        positions += b["input_ids"].numel()
        model(**b).loss.backward()
        if step:
            opt.step()
            opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, positions


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Runs the modes, prints one line each and the ratios; returns trained tokens/s per mode."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=128, help="samples every mode trains (the same ones)")
    ap.add_argument("--batch", default="8,16", help="comma-separated padded batch sizes for pad-longest")
    ap.add_argument("--rows", type=int, default=1, help="packed rows per step (one 2048-token row holds ~8 median samples)")
    ap.add_argument("--max-len", type=int, default=2048, help="released max_len; the source is truncated at 3/4 of it (1536)")
    ap.add_argument("--tasks", default="", help="comma-separated SFT tasks (default: the data config's full mix)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-tunes", type=int, default=1500)
    ap.add_argument("--tunes", default="kit", choices=["kit", "music21"], help="kit (falls back to music21 when not built)")
    ap.add_argument("--modes", default=",".join(DEFAULT_MODES))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        ap.error(f"unknown modes {sorted(unknown)}; choose from {MODES}")

    L = args.max_len
    overrides = [
        f"data.tunes={args.tunes}", "data.max_bars=0", "data.strip_annotations=false", f"data.max_tunes={args.max_tunes}", f"data.max_len={L}",
        f"data.max_src_len={3 * L // 4}", f"pack.length={L}", f"model.max_position_embeddings={L}",
        f"model.hidden_size={args.hidden}", f"model.intermediate_size={args.hidden * 11 // 4}",
        f"model.num_layers={args.layers}", "model.num_heads=4", "model.num_kv_heads=4",
    ]
    if args.tasks:
        overrides.append(f"data.tasks=[{args.tasks}]")
    cfg = load_config(ChatMusicianConfig, CONFIGS / "tiny.yaml", overrides)
    rep = Report()
    rows = generate_sft(prepare_tunes(load_tunes(cfg), cfg, rep), cfg, rep)
    tok = train_tokenizer((r["instruction"] + r["input"] + r["output"] for r in rows), cfg.tokenizer.vocab_size)
    corpus = []
    for r in rows:
        s = tokenize_sft(tok, r, cfg.data.max_src_len, cfg.data.max_len)
        if not s.pop("overlong"):
            corpus.append(s)
    lens = sorted(len(s["input_ids"]) for s in corpus)
    print(f"{len(corpus)} SFT samples ({', '.join(cfg.data.tasks)}) from {rep['tunes/kept']} tunes; tokens per sample: "
          f"median {statistics.median(lens):.0f}, p10 {lens[len(lens) // 10]}, p90 {lens[9 * len(lens) // 10]}, "
          f"max {lens[-1]} (max_len {L})")

    batches = [int(b) for b in args.batch.split(",")]
    rng = random.Random(0)
    draw = rng.sample(corpus, args.samples + max(batches))
    warm, timed = draw[: max(batches)], draw[max(batches) :]
    n_tokens = sum(len(s["input_ids"]) for s in timed)
    print(f"each mode trains the same {len(timed)} samples = {n_tokens} tokens; model hidden {args.hidden}, "
          f"{args.layers} layers, {args.threads} thread(s)")

    runs = [(f"pad-longest/{b}", "pad-longest", b) for b in batches if "pad-longest" in modes]
    runs += [(m, m, RELEASED_BATCH) for m in modes if m != "pad-longest"]
    results, ceilings = {}, {}
    for label, mode, batch in runs:
        attn = "packed_sdpa" if mode == "pack-varlen" else "sdpa"
        collate = Collator(pad_id=tok.pad_token_id, pad_to_multiple_of=L if mode == "pad-max-len" else 1)
        cfg.model.attn_implementation = attn
        model = build_model(cfg, tok).train()  # same seed -> same init in every mode
        steps = steps_for(mode, timed, batch, L, args.rows)
        warmup = [w for w, _ in steps_for(mode, warm, batch, L, args.rows)][:1]
        secs, positions = time_mode(model, steps, collate, warmup)
        results[label] = n_tokens / secs
        ceilings[label] = positions / n_tokens
        print(f"{label:14s} attn={attn:12s} {len(steps):4d} forwards {secs:7.1f} s {results[label]:7.0f} trained tokens/s"
              f"  ({1 - n_tokens / positions:.0%} of positions are padding)", flush=True)
    for mode in ("pack-varlen", "pack-dense"):
        for base in (label for label in results if not label.startswith("pack")):
            if mode in results:
                extra = f"  (ceiling for a cost linear in positions: {ceilings[base]:.2f}x)" if base.startswith("pad-longest") else ""
                print(f"{mode} / {base} = {results[mode] / results[base]:.2f}x trained tokens per second{extra}")
    return results


if __name__ == "__main__":
    main()
