"""``chatmusician demo``: the tiny model end to end on a CPU in a few minutes.

1. build the SFT corpus from the data kit's tunes (music21's public-domain ABC when the kit is not built),
   and train the small BPE tokenizer on it;
2. score the untrained (random) model on metadata prompts: how many replies parse as ABC;
3. fine-tune it on whole 8-bar tunes (``configs/demo.yaml``), then ask the same prompts for 8-bar tunes, without and
   with constrained decoding, and print the table (parse, strict validity, key/meter/bars as asked, bars per tune);
4. one constrained chat turn, rendered next to its reply (.abc .mid .wav .musicxml .svg) in ``<run>/chat_sample/``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from musiccore.config import load_config
from musiccore.runs import atomic_write_json, runs_root

from .config import ChatMusicianConfig

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def run_demo(steps: int | None = None, n_prompts: int = 20, out: str | None = None) -> dict:
    from .data import ensure_built, tokenizer_source
    from .evaluate import evaluate_generation
    from .generate import load_model
    from .tokenization import load_tokenizer
    from .train import build_model, train

    run_dir = Path(out) if out else runs_root() / "chatmusician" / "demo"
    overrides = [f"run.dir={run_dir}", "run.fresh=true", f"data.out_dir={run_dir.parent / 'demo-data'}"]
    if steps:
        overrides.append(f"trainer.max_steps={steps}")
    cfg = load_config(ChatMusicianConfig, CONFIGS / "demo.yaml", overrides)
    t0 = time.time()
    if cfg.trainer.cpu_threads > 0:
        import torch

        torch.set_num_threads(cfg.trainer.cpu_threads)
    ensure_built(cfg)
    tok = load_tokenizer(tokenizer_source(cfg))
    # the random model never stops on its own: a shorter budget (10 prompts, 64 tokens) is enough to show ~0%
    before = evaluate_generation(build_model(cfg, tok).eval(), tok, cfg, n=min(n_prompts, 10), max_new_tokens=64, bars=8)
    summary = train(cfg)
    model, tok = load_model(summary["final"])
    bars = 8  # the demo asks every prompt for an 8-bar tune (the corpus holds tunes cropped to 8 bars)
    after = evaluate_generation(model, tok, cfg, n=n_prompts, out_path=run_dir / "demo_generations.jsonl", bars=bars)
    cons = evaluate_generation(model, tok, cfg, n=n_prompts, out_path=run_dir / "demo_generations_constrained.jsonl",
                               bars=bars, constrained=True)
    rows = [json.loads(x) for x in (run_dir / "demo_generations.jsonl").read_text().splitlines()]
    print("\n=== ChatMusician tiny demo ===")
    print(f"trained {summary['global_step']} steps in {summary['seconds']:.0f} s (loss {summary['train_loss']:.3f}); "
          f"prompts ask for {bars}-bar tunes")
    print(f"{'':26s}{'prompts':>8s}{'parse':>7s}{'valid':>7s}{'key ok':>8s}{'meter ok':>9s}{'bars ok':>8s}{'bars/tune':>10s}")
    for name, r in (("untrained", before), ("trained", after), ("trained + constrained", cons)):
        m = r["metrics"]
        bars_ok = "-" if m["bars_match"] is None else f"{m['bars_match']:.0%}"
        print(f"{name:26s}{r['n']:8d}{r['parse_rate']:7.0%}{r['valid_rate']:7.0%}{r['key_match']:8.0%}"
              f"{r['meter_match']:9.0%}{bars_ok:>8s}{m['bars_per_tune']:10.1f}")
    print(f"{sum(r['parsed'] for r in rows)} of {len(rows)} unconstrained tunes parse with music21 "
          f"({sum(r['valid'] for r in rows)} also pass the strict bar-duration check)")
    sample = chat_sample(model, tok, cfg, run_dir / "chat_sample")
    result = {"before": before, "after": after, "constrained": cons, "train": summary, "chat_sample": sample,
              "seconds": time.time() - t0}
    print(f"\ntotal {time.time() - t0:.0f} s")
    atomic_write_json(run_dir / "demo_result.json", result)
    return result


SAMPLE_PROMPT = ("Create sheet music in ABC notation from the provided text.\nKey: D major\nMeter: 6/8\n"
                 "Note Length: 1/8\nBars: 8")


def chat_sample(model, tok, cfg: ChatMusicianConfig, out_dir: Path) -> dict:
    """One constrained chat turn, printed with its rendered files (.abc .mid .wav .musicxml .svg)."""
    from .chat import describe, parse_request, process_reply
    from .constrained import AbcAutomaton
    from .generate import generate_detailed

    req = parse_request(SAMPLE_PROMPT)
    auto = AbcAutomaton(key=req.key, meter=req.meter, unit=req.unit, min_bars=req.bars, max_bars=req.bars)
    o = generate_detailed(model, tok, [SAMPLE_PROMPT], cfg.generate, seed=cfg.run.seed, constraints=[auto])[0]
    rec = process_reply(o["reply"], out_dir / "sample")
    print("\n--- chat sample (constrained) ---\nHuman: " + SAMPLE_PROMPT + "\nAssistant: " + o["reply"].strip())
    print(describe(rec))
    print(f"files in {out_dir}")
    return {"prompt": SAMPLE_PROMPT, **o, **rec}
