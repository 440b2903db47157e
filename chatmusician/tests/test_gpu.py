"""GPU smoke tests (``make test-gpu``; skipped without CUDA): tiny LoRA training with packed rows on one CUDA device.

- LoRA + packing in bf16 through :func:`chatmusician.train.train`: the attention implementation the model really
  dispatches to (``flash_attention_2`` when ``flash_attn`` imports, else ``packed_sdpa``) is counted at every call,
  every call sees packed rows (no mask, position ids restarting) in bf16 on CUDA, and after training nothing flows
  between the samples of a packed row (changing a row's first sample leaves the later samples' logits as they were;
  the control, the row attended as one sequence, moves them). Micro-batches of 2 rows: transformers' flash path
  infers varlen boundaries from position ids only for a batch of one row, so this is where a leak would show; every
  training call must get all the sample boundaries of its batch from the collator (``cu_seq_lens_q``), and the leak
  check passes them too (``packing_leak(..., varlen=True)``), as training does.
- The same run under DeepSpeed ZeRO-2 in its own process: the engine's ZeRO stage is 2, the model is on CUDA in
  bf16, and the loss is finite.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import CONFIGS, PROJECT, SMALL, subprocess_env

RUN = ["trainer.max_steps=6", "trainer.micro_batch=2", "trainer.log_every=1", "trainer.save_steps=1000",
       "lora.enabled=true", "lora.r=8", "pack.enabled=true", "model.attn_implementation=auto", "trainer.precision=auto"]


def expected_attention() -> str:
    """What ``model.attn_implementation=auto`` must pick for packed rows on CUDA."""
    import importlib.util

    return "flash_attention_2" if importlib.util.find_spec("flash_attn") is not None else "packed_sdpa"


def all_boundaries(pos, cu) -> bool:
    """``cu`` (``cu_seq_lens_q`` as an attention call got it) holds every sample start of the position ids ``pos``
    ``[B, T]`` in the flattened batch, then ``B*T``."""
    if pos is None or cu is None:
        return False
    want = (pos.reshape(-1) == 0).nonzero().flatten().tolist() + [pos.numel()]
    return cu.tolist() == want


def lora_packed_run(cfg) -> dict:
    """Train ``cfg`` in this process, recording every call of the attention function the model dispatches to; then
    the packing leak check on two packed training rows."""
    import chatmusician.train as T
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from musiccore.testing import packing_leak

    from chatmusician.tokenization import Collator

    calls: list[dict] = []
    built: dict = {}
    real_build = T.build_model

    def build_and_watch(cfg_, tok):
        model = real_build(cfg_, tok)
        name = model.config._attn_implementation
        real_fn = ALL_ATTENTION_FUNCTIONS[name]

        def counted(module, query, key, value, attention_mask, *a, **kw):
            pos = kw.get("position_ids")
            calls.append({"impl": name, "device": query.device.type, "dtype": str(query.dtype).split(".")[-1],
                          "mask": attention_mask is not None, "batch": query.shape[0],
                          "packed": pos is not None and bool((pos[..., 1:] == 0).any()),
                          "boundaries": all_boundaries(pos, kw.get("cu_seq_lens_q"))})
            return real_fn(module, query, key, value, attention_mask, *a, **kw)

        AttentionInterface.register(name, counted)  # dispatch is looked up at every forward
        built.update(model=model, impl=name, real_fn=real_fn, tok=tok)
        return model

    T.build_model = build_and_watch
    try:
        summary = T.train(cfg)
    finally:
        T.build_model = real_build
        if "impl" in built:
            AttentionInterface.register(built["impl"], built["real_fn"])
    model = built["model"]
    rows = [r for r in T.load_split(cfg, "train") if sum(p == 0 for p in r["position_ids"]) >= 2][:2]
    # the rows' later samples include the collator's padding run (position ids restarting too): it must not move either
    batch = Collator(pad_id=built["tok"].pad_token_id)([dict(r) for r in rows])
    leak = packing_leak(model, batch["input_ids"], batch["position_ids"], varlen=True)
    return {"summary": summary, "impl": built["impl"], "config_impl": model.config._attn_implementation,
            "calls": calls, "param_devices": {p.device.type for p in model.parameters()},
            "base_dtypes": {p.dtype for n, p in model.named_parameters() if "lora_" not in n},
            "leak": leak,
            "losses": [json.loads(x)["loss"] for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()
                       if '"loss"' in x]}


@pytest.mark.gpu
def test_lora_packed_training_on_cuda_bf16(cfg_on_corpus):
    out = lora_packed_run(cfg_on_corpus(*RUN))
    assert out["summary"]["global_step"] == 6 and (Path(out["summary"]["final"]) / "adapter_config.json").exists()
    assert out["impl"] == out["config_impl"] == expected_attention()
    calls = out["calls"]
    assert calls, "the attention function was never called"
    train_calls = [c for c in calls if c["batch"] == 2]
    # 6 steps x 2 layers (no gradient checkpointing, so no recomputed forwards); each call packed, bf16, on CUDA
    assert len(train_calls) >= 6 * 2
    assert all(c["device"] == "cuda" and c["dtype"] == "bfloat16" and not c["mask"] and c["packed"]
               and c["boundaries"] for c in train_calls), train_calls[:3]
    assert out["param_devices"] == {"cuda"} and out["base_dtypes"] == {torch.bfloat16}  # LoRA: frozen base in bf16
    assert len(out["losses"]) == 6 and all(math.isfinite(v) and v > 0 for v in out["losses"])
    # attention stays inside each packed sample: the later samples of a row ignore the first one
    leak = out["leak"]
    assert leak["first"] > 0.1 and leak["leak_control"] > 0.1, leak  # the change is visible where it may be
    assert leak["later"] < 0.02 * leak["leak_control"], leak


# ------------------------------------------------------------------------------------------------------ DeepSpeed
DRIVER = r'''
import json, sys
import chatmusician.train as T
from chatmusician.cli import main

out_file = sys.argv[1]
real_class = T._trainer_class
seen = {}

def watched_class():
    base = real_class()

    class Watched(base):
        def train(self, *a, **kw):
            result = super().train(*a, **kw)
            eng = self.model_wrapped
            p = next(eng.module.parameters())
            seen.update(engine=type(eng).__name__, stage=int(eng.zero_optimization_stage()),
                        bf16=bool(eng.bfloat16_enabled()), device=p.device.type, dtype=str(p.dtype),
                        optimizer=type(eng.optimizer).__name__)
            return result

    return Watched

T._trainer_class = watched_class
rc = main(["train", *sys.argv[2:]])
open(out_file, "w").write(json.dumps(seen))
sys.exit(rc)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.gpu
def test_deepspeed_zero2_lora_on_cuda(corpus_dir, tmp_path):
    pytest.importorskip("deepspeed")
    run = tmp_path / "run"
    (tmp_path / "driver.py").write_text(DRIVER)
    args = ["--config", str(CONFIGS / "tiny.yaml"), f"data.out_dir={corpus_dir / 'data'}", f"run.dir={run}", *SMALL,
            *RUN, "trainer.max_steps=3", "deepspeed.enabled=true", "deepspeed.stage=2"]
    env = subprocess_env(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    r = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "seen.json"), *args], cwd=PROJECT,
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["engine"] == "DeepSpeedEngine" and seen["stage"] == 2, seen
    assert seen["device"] == "cuda" and seen["bf16"] and seen["dtype"] == "torch.bfloat16", seen
    ds = json.loads((run / "deepspeed.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"] == {"enabled": True}
    s = json.loads((run / "summary.json").read_text())
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert s["global_step"] == 3 and len(losses) == 3 and all(math.isfinite(v) and v > 0 for v in losses)
    assert os.path.isdir(s["final"])
