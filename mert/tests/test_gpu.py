"""GPU smoke test (``make test-gpu``; skipped without CUDA): the tiny MERT pretraining on one CUDA device in bf16.

The real entry point (:func:`mert.train.build_trainer` + ``Trainer.train``) on the synthetic clips: 30 updates of
2-second crops. It checks what a first cluster run needs: the weights and the optimizer state live on the GPU, the
transformer's matmuls run under bf16 autocast (a forward hook sees a bf16 output inside an autocast region), the
loss is finite at every step and falls.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides


def tiny_pretraining(synth_data, tiny_cache, run_dir: Path, precision: str, steps: int = 30) -> dict:
    """Train the tiny config for ``steps`` updates; returns what the test checks (devices, dtypes, losses)."""
    from mert.train import CONFIG_DIR, build_trainer, load_train_config

    cfg = load_train_config(CONFIG_DIR / "tiny.yaml", tiny_overrides(synth_data, run_dir, tiny_cache, **{
        "trainer.precision": precision, "trainer.max_steps": steps, "trainer.save_steps": 10 * steps,
        "trainer.eval_steps": 0, "trainer.log_steps": 1, "trainer.plot": "false", "optim.warmup_steps": 3,
        "data.max_tokens": 48000}))  # 2 crops per update: 6 batches per epoch, 5 epochs
    trainer, run_dir, _ = build_trainer(cfg)
    model = trainer.model
    q_proj = model.encoder.layers[0].attention.q_proj if hasattr(model, "encoder") else next(
        m for n, m in model.named_modules() if n.endswith("q_proj"))
    seen: list[tuple] = []

    def hook(module, inputs, output):  # the dtype a transformer matmul really computes in
        dev = output.device.type
        seen.append((dev, output.dtype, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)))

    handle = q_proj.register_forward_hook(hook)
    try:
        trainer.train()
    finally:
        handle.remove()
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    state_devices = {v.device.type for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()}
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "param_devices": {p.device.type for p in model.parameters()},
        "param_dtypes": {p.dtype for p in model.parameters()},
        "optimizer_state_devices": state_devices,
        "mixed_precision": trainer.accelerator.mixed_precision,
        "forward": seen,
        "losses": [r["loss"] for r in rows if "loss" in r],
        "steps": trainer.state.global_step,
    }


@pytest.mark.gpu
def test_tiny_pretraining_bf16_on_cuda(synth_data, tiny_cache, tmp_path):
    out = tiny_pretraining(synth_data, tiny_cache, tmp_path / "run", "bf16")
    assert out["steps"] == 30
    assert out["param_devices"] == {"cuda"} and out["param_dtypes"] == {torch.float32}  # fp32 master weights
    assert out["optimizer_state_devices"] == {"cuda"}
    assert out["mixed_precision"] == "bf16"
    train_fwd = out["forward"]
    assert train_fwd and all(f == ("cuda", torch.bfloat16, True, torch.bfloat16) for f in train_fwd), train_fwd[:3]
    losses = out["losses"]
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, losses  # falls by more than batch-to-batch noise
