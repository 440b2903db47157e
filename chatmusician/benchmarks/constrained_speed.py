"""Constrained decoding cost at the released LLaMA-2 vocabulary (32,000 tokens), in one run:

- generation with and without ``AbcLogitsProcessor`` (same random tiny LLaMA with a 32000-row embedding, same prompts,
  seed and budget): seconds, and the processor's own time per generation step and per batch row;
- the vocabulary walk of one step (``AbcLogitsProcessor._allowed``) over the alphabet-pruned trie the processor
  builds vs a trie of the whole vocabulary, on the states of the constrained replies (identical masks asserted).

The tiny model makes the forward pass nearly free, so the processor's share here is an upper bound; a 7B forward on
a GPU costs tens of milliseconds per step.

    python benchmarks/constrained_speed.py [--tokenizer DIR] [--budget 160] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

PROJECT = Path(__file__).resolve().parents[1]
PROMPTS = ["Create sheet music in ABC notation from the provided text.\nKey: G major\nMeter: 6/8\nNote Length: 1/8\nBars: 4",
           "Key: D dorian\nMeter: 3/4\nBars: 4", "Key: Bb major\nMeter: 2/4\nNote Length: 1/16\nBars: 4",
           "Key: E minor\nMeter: 12/8\nBars: 4"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default=os.environ.get("CHATMUSICIAN_LLAMA2_TOKENIZER",
                                                          str(PROJECT.parent.parent / "shared/assets/chatmusician/llama2")))
    ap.add_argument("--budget", type=int, default=160)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatmusician.chat import parse_request
    from chatmusician.config import GenerateConfig
    from chatmusician.constrained import AbcAutomaton, AbcLogitsProcessor, _Trie
    from chatmusician.generate import generate_detailed
    from chatmusician.tokenization import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=32, max_position_embeddings=512,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()
    gen = GenerateConfig(temperature=1.0, max_new_tokens=args.budget)
    reqs = [parse_request(p) for p in PROMPTS]

    def autos():
        return [AbcAutomaton(key=r.key, meter=r.meter, unit=r.unit, min_bars=r.bars, max_bars=r.bars) for r in reqs]

    steps: list[float] = []
    real_call = AbcLogitsProcessor.__call__

    def timed(self, input_ids, scores):  # the processor's own time per generation step (all rows)
        t = time.perf_counter()
        out = real_call(self, input_ids, scores)
        steps.append(time.perf_counter() - t)
        return out

    AbcLogitsProcessor.__call__ = timed
    generate_detailed(model, tok, PROMPTS[:1], gen, seed=0, max_new_tokens=40, constraints=autos()[:1])  # warm-up
    steps.clear()
    t0 = time.perf_counter()
    free = generate_detailed(model, tok, PROMPTS, gen, seed=1, batch_size=len(PROMPTS))
    t_free = time.perf_counter() - t0
    t0 = time.perf_counter()
    cons = generate_detailed(model, tok, PROMPTS, gen, seed=1, batch_size=len(PROMPTS), constraints=autos())
    t_cons = time.perf_counter() - t0
    AbcLogitsProcessor.__call__ = real_call
    n_free = max(o["new_tokens"] for o in free)
    print(f"vocabulary {len(tok)}, {len(PROMPTS)} rows, budget {args.budget}, torch threads {args.threads}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'':28s}{'seconds':>9s}{'steps':>7s}{'ms/step':>9s}")
    print(f"{'unconstrained':28s}{t_free:9.2f}{n_free:7d}{1000 * t_free / n_free:9.2f}")
    print(f"{'constrained':28s}{t_cons:9.2f}{len(steps):7d}{1000 * t_cons / len(steps):9.2f}")
    per_row = 1000 * sum(steps) / len(steps) / len(PROMPTS)
    print(f"processor: {1000 * sum(steps) / len(steps):.2f} ms per step ({per_row:.2f} ms per row), "
          f"{sum(steps) / t_cons:.0%} of the constrained run")

    # one vocabulary walk: pruned trie (what the processor builds) vs the whole vocabulary's trie
    a = AbcAutomaton(key="G", meter="6/8", unit="1/8", min_bars=4, max_bars=4)
    proc = AbcLogitsProcessor(tok, [a], args.budget)
    full = _Trie()
    for i, t in enumerate(proc.strings):
        if t:
            node = full
            for ch in t:
                node = node.children.setdefault(ch, _Trie())
            node.ids.append(i)
    text = cons[0]["reply"]
    states = [a.run(a.start(), text[:k]) for k in range(len(text))]
    states = [s for s in states if s is not None]
    timings = {}
    for name, root in (("whole vocabulary", full), ("alphabet-pruned", proc.root)):
        proc.root = root
        t0 = time.perf_counter()
        masks = [sorted(proc._allowed(0, s)) for s in states]
        timings[name] = ((time.perf_counter() - t0) / len(states), masks)
    assert timings["whole vocabulary"][1] == timings["alphabet-pruned"][1], "pruned walk differs"
    tw, tp = timings["whole vocabulary"][0], timings["alphabet-pruned"][0]
    print(f"one vocabulary walk over {len(states)} states: whole vocabulary {1000 * tw:.2f} ms, alphabet-pruned "
          f"{1000 * tp:.2f} ms: {tw / tp:.1f}x (identical masks)")


if __name__ == "__main__":
    main()
