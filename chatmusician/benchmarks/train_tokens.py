"""Trained tokens per second with packing vs padding, on the real length distribution of the data kit's tunes.

Both modes train the same tiny LLaMA (configs/tiny.yaml sizes) with the same optimizer on the same metadata->tune SFT
samples built from whole tunes (no cropping), tokenised by a BPE trained on them:

- padding: batches of ``--batch`` random samples right-padded to the longest one (the released collator);
- packing: rows of ``--max-len`` tokens filled with several samples, positions restarting per sample; with the
  stock SDPA (dense block-diagonal mask: cross-sample blocks are computed and discarded) and with ``packed_sdpa``
  (per-sample causal attention, the CPU analogue of flash-attention varlen).

"Trained tokens" are target tokens plus prompt tokens, i.e. every non-pad token; pad tokens cost compute but train
nothing. Prints one line per mode and the ratio.

    python benchmarks/train_tokens.py [--steps 12 --batch 8 --max-len 1024 --threads 1]
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
from chatmusician.tokenization import Collator, pack_samples, register_packed_attention, tokenize_sft, train_tokenizer
from chatmusician.train import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def run(mode: str, model, batches, lr: float = 1e-3) -> tuple[float, float]:
    """Returns (non-pad tokens/s, padded fraction) over the timed steps (the first step is warm-up)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    times, real, total = [], 0, 0
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if i == 0:
            continue
        times.append(dt)
        n_real = int((b["input_ids"] != 0).sum()) if "attention_mask" not in b else int(b["attention_mask"].sum())
        real += n_real
        total += b["input_ids"].numel()
    return real / sum(times), 1 - real / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8, help="samples per padded batch = rows per packed batch")
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-tunes", type=int, default=1500)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_config(ChatMusicianConfig, CONFIGS / "tiny.yaml",
                      ["data.max_bars=0", "data.strip_annotations=false", "data.tasks=[metadata]",
                       f"data.max_tunes={args.max_tunes}", f"data.max_len={args.max_len}",
                       f"data.max_src_len={args.max_len // 2}", f"model.max_position_embeddings={args.max_len}",
                       f"pack.length={args.max_len}"])
    rep = Report()
    rows = generate_sft(prepare_tunes(load_tunes(cfg), cfg, rep), cfg, rep)
    tok = train_tokenizer((r["instruction"] + r["input"] + r["output"] for r in rows), cfg.tokenizer.vocab_size)
    samples = []
    for r in rows:
        s = tokenize_sft(tok, r, cfg.data.max_src_len, cfg.data.max_len)
        if not s.pop("overlong"):
            samples.append(s)
    lens = sorted(len(s["input_ids"]) for s in samples)
    print(f"{len(samples)} samples from {rep['tunes/kept']} tunes; tokens per sample: median {statistics.median(lens):.0f}, "
          f"p10 {lens[len(lens) // 10]}, p90 {lens[9 * len(lens) // 10]}, max {lens[-1]} (max_len {args.max_len})")

    rng = random.Random(0)
    coll = Collator(pad_id=tok.pad_token_id)
    pad_batches = [coll(rng.sample(samples, args.batch)) for _ in range(args.steps + 1)]
    packed = pack_samples(samples, args.max_len, seed=0)
    pack_batches = [coll(packed[i * args.batch : (i + 1) * args.batch]) for i in range(args.steps + 1)]

    results = {}
    register_packed_attention()
    modes = (("padding", pad_batches, "sdpa"), ("packing", pack_batches, "sdpa"), ("packing+varlen", pack_batches, "packed_sdpa"))
    for mode, batches, attn in modes:
        torch.manual_seed(0)
        cfg.model.attn_implementation = attn
        model = build_model(cfg, tok).train()
        results[mode] = run(mode, model, batches)
        tps, waste = results[mode]
        print(f"{mode:15s} attn={attn:12s} {tps:7.0f} trained tokens/s  ({waste:.0%} of positions are padding)")
    for mode in ("packing", "packing+varlen"):
        print(f"{mode} / padding = {results[mode][0] / results['padding'][0]:.2f}x trained tokens per second "
              f"(threads {args.threads}, batch {args.batch}, max_len {args.max_len})")


if __name__ == "__main__":
    main()
