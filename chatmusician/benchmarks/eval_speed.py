"""MusicTheoryBench perplexity scoring: questions per second, batched vs one sequence at a time.

Same model, same questions, same protocol (``chatmusician.mtb``: four ``Answer: X`` prompts per question, mean token
loss, lowest wins), in one run:

- ``one at a time``: every candidate prompt alone (OpenCompass' ``batch_padding False``, the released setting);
- ``batched``: ``chatmusician.mtb.question_losses``: one forward per question gives all four candidates (they share
  every token but the letter), ``--batch`` questions per forward (right padding, masked, sorted by length).

The predicted letters must be identical (asserted) and the losses equal up to float rounding (largest difference
printed); the ratio of questions per second is printed.

Questions: a local MusicTheoryBench copy (``--mtb DIR``), else the built-in theory set generated from the corpus
(``chatmusician.theory``). Model: a local folder (``--model DIR``), else a randomly initialised LLaMA (``--hidden``,
``--layers``) with the corpus tokenizer, which is enough to time the scoring.

    python benchmarks/eval_speed.py [--model DIR] [--mtb DIR] [--questions 60 --batch 16 --threads 1 --device cpu]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

PROJECT = Path(__file__).resolve().parents[1]


def _questions(args) -> list[dict]:
    from musiccore.config import load_config

    from chatmusician.config import ChatMusicianConfig
    from chatmusician.evaluate import corpus_tunes
    from chatmusician.mtb import load_mtb
    from chatmusician.theory import TOPICS, build_theory_set

    if args.mtb:
        return load_mtb(args.mtb)["test"][: args.questions]
    cfg = load_config(ChatMusicianConfig, PROJECT / "configs" / "tiny.yaml", args.overrides)
    per_topic = args.questions // len(TOPICS) + 2  # + the dev item and a remainder
    return build_theory_set(corpus_tunes(cfg), per_topic=per_topic)["test"][: args.questions]


def _model(args, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatmusician.generate import load_model, resolve_dtype

    dtype = resolve_dtype(args.dtype, device)
    if args.model:
        return load_model(args.model, dtype=dtype, device=device)
    from musiccore.config import load_config

    from chatmusician.config import ChatMusicianConfig
    from chatmusician.data import ensure_built, tokenizer_source
    from chatmusician.tokenization import load_tokenizer

    cfg = load_config(ChatMusicianConfig, PROJECT / "configs" / "tiny.yaml", args.overrides)
    ensure_built(cfg)
    tok = load_tokenizer(tokenizer_source(cfg))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden, num_hidden_layers=args.layers,
                                         num_attention_heads=max(1, args.hidden // 64),
                                         num_key_value_heads=max(1, args.hidden // 64),
                                         intermediate_size=args.hidden * 3, max_position_embeddings=4096))
    return model.to(device=device, dtype=dtype).eval(), tok


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="local model folder (default: random LLaMA)")
    ap.add_argument("--mtb", default=None, help="local MusicTheoryBench folder (default: built-in theory set)")
    ap.add_argument("--questions", type=int, default=60)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("overrides", nargs="*", help="config overrides for the corpus, e.g. data.tunes=music21")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from chatmusician.generate import resolve_device
    from chatmusician.mtb import LETTERS, mean_losses, prompts_for, question_losses

    device = resolve_device(args.device)
    items = _questions(args)
    model, tok = _model(args, device)
    per_q = [prompts_for(r, [], tok) for r in items]
    cands = [c for q in per_q for c in q]
    n_tok = sum(len(tok(c)["input_ids"]) for c in cands)
    print(f"{len(items)} questions ({len(cands)} candidate prompts, {n_tok / len(cands):.0f} tokens on average); "
          f"model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params on {device} "
          f"({str(next(model.parameters()).dtype).replace('torch.', '')}), {args.threads} thread(s); "
          f"load average {os.getloadavg()[0]:.1f}")
    mean_losses(model, tok, cands[:4], batch_size=4)  # warm-up
    results, preds = {}, {}
    for name, bs in (("one at a time", 1), (f"batched x{args.batch}", args.batch)):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if bs == 1:
            losses = mean_losses(model, tok, cands, batch_size=1)
        else:
            losses = [x for q in question_losses(model, tok, per_q, batch_size=bs) for x in q]
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        preds[name] = [LETTERS[min(range(4), key=lambda j: losses[4 * i + j])] for i in range(len(items))]
        results[name] = {"seconds": dt, "questions_per_s": len(items) / dt, "losses": losses}
        print(f"{name:16s} {dt:8.2f} s  {len(items) / dt:8.2f} questions/s")
    one, bat = results["one at a time"], results[f"batched x{args.batch}"]
    diff = max(abs(a - b) for a, b in zip(one["losses"], bat["losses"]))
    assert preds["one at a time"] == preds[f"batched x{args.batch}"], "batched scoring changed a predicted answer"
    ratio = bat["questions_per_s"] / one["questions_per_s"]
    print(f"batched / one at a time = {ratio:.2f}x (target >= 4x); identical answers for all {len(items)} questions "
          f"(largest loss difference {diff:.1e})")
    return {"ratio": ratio, "one": one["questions_per_s"], "batched": bat["questions_per_s"], "max_diff": diff,
            "n": len(items)}


if __name__ == "__main__":
    main()
