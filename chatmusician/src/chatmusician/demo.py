"""``chatmusician demo``: the tiny model end to end on a CPU in a few minutes.

1. build the SFT corpus from the data kit's tunes (music21's public-domain ABC when the kit is not built),
   and train the small BPE tokenizer on it;
2. score the untrained (random) model on metadata prompts: how many replies parse as ABC;
3. fine-tune it (``configs/demo.yaml``), then score it again on the same prompts and print two generated tunes.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from musiccore.config import load_config
from musiccore.runs import runs_root

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
    before = evaluate_generation(build_model(cfg, tok).eval(), tok, cfg, n=min(n_prompts, 10), max_new_tokens=64)
    summary = train(cfg)
    model, tok = load_model(summary["final"])
    after = evaluate_generation(model, tok, cfg, n=n_prompts, out_path=run_dir / "demo_generations.jsonl")
    rows = [json.loads(x) for x in (run_dir / "demo_generations.jsonl").read_text().splitlines()]
    print("\n=== ChatMusician tiny demo ===")
    print(f"trained {summary['global_step']} steps in {summary['seconds']:.0f} s (loss {summary['train_loss']:.3f}); "
          f"total {time.time() - t0:.0f} s")
    print(f"{'':12s}{'prompts':>8s}{'parse':>8s}{'valid':>8s}{'key ok':>8s}{'meter ok':>10s}")
    for name, r in (("untrained", before), ("trained", after)):
        print(f"{name:12s}{r['n']:8d}{r['parse_rate']:8.0%}{r['valid_rate']:8.0%}{r['key_match']:8.0%}{r['meter_match']:10.0%}")
    print(f"{sum(r['parsed'] for r in rows)} of {len(rows)} generated tunes parse with music21 "
          f"({sum(r['valid'] for r in rows)} also pass the strict bar-duration check)")
    for r in rows[:2]:
        print("\n--- prompt ---\n" + r["text"] + "\n--- reply ---\n" + r["reply"].strip())
    result = {"before": before, "after": after, "train": summary}
    (run_dir / "demo_result.json").write_text(json.dumps(result, indent=1, default=str))
    return result
