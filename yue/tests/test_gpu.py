"""GPU smoke tests (``make test-gpu``; skipped without CUDA): YuE's tiny codec and LM training on one CUDA device.

- Codec: a few steps of :func:`yue.codec.train.train_codec` with ``trainer.device=cuda`` (the codec loop trains in
  fp32, as upstream X-Codec does): weights and Adam state on CUDA, finite losses, a checkpoint that loads.
- LM (stage 1, packed blocks with document masking) through :func:`yue.lm.train.train` with
  ``trainer.precision=bf16``: the attention implementation the model dispatches to (``flash_attention_2`` when
  ``flash_attn`` imports, else ``packed_sdpa``) is counted at every call, and every call is bf16 on CUDA without a
  mask, with all the document boundaries of its micro-batch of 2 blocks (``cu_seq_lens_q``, which
  transformers' flash path needs for more than one row); fp32 master weights on CUDA; finite losses; and nothing
  flows between the documents of a packed block (:func:`musiccore.testing.packing_leak` with the boundaries passed,
  ``varlen=True``, as training passes them).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch


def codec_run(tmp_path: Path, device: str, steps: int = 3) -> dict:
    """Train the tiny codec for ``steps`` on synthesized songs; returns devices, losses and the reloaded codebooks."""
    import yue.codec.train as CT
    from yue.codec import XCodec

    cfg = CT.CodecTrainConfig()
    cfg.trainer.run_dir, cfg.trainer.device = str(tmp_path / "codec"), device
    cfg.trainer.max_steps, cfg.trainer.log_every, cfg.trainer.save_every = steps, 1, steps
    cfg.data.root = str(tmp_path / "no-kit")  # synthesized songs (warned)
    cfg.data.max_songs, cfg.data.segment_s, cfg.data.batch_size = 1, 0.4, 2
    seen: dict = {}
    real_opt = torch.optim.Adam

    class WatchedAdam(real_opt):  # the optimizer the loop builds; its state shows where the update ran
        def step(self, *a, **kw):
            out = super().step(*a, **kw)
            seen["params"] = {p.device.type for g in self.param_groups for p in g["params"]}
            seen["state"] = {v.device.type for s in self.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()}
            return out

    torch.optim.Adam = WatchedAdam
    try:
        run = CT.train_codec(cfg)
    finally:
        torch.optim.Adam = real_opt
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    codec = XCodec.from_pretrained(run / "checkpoint")
    return {**seen, "losses": [r["loss"] for r in rows], "steps": [r["step"] for r in rows],
            "codebook_energy": float(codec.model.quantizer.quantizers[0].codebook.embed.abs().sum())}


@pytest.mark.gpu
def test_tiny_codec_trains_on_cuda(tmp_path):
    out = codec_run(tmp_path, "cuda")
    assert out["params"] == {"cuda"} and out["state"] == {"cuda"}
    assert out["steps"] == [1, 2, 3] and all(math.isfinite(v) for v in out["losses"])
    assert out["codebook_energy"] > 0  # k-means init + EMA updates happened and were saved


def expected_attention() -> str:
    import importlib.util

    return "flash_attention_2" if importlib.util.find_spec("flash_attn") is not None else "packed_sdpa"


def lm_run(cfg) -> dict:
    """Train ``cfg`` in this process, watching every attention call; then the packing leak check on eval blocks."""
    import yue.lm.train as LT
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from musiccore.testing import packing_leak
    from yue.lm.data import Collator, DocumentBuilder, PreparedData, eval_blocks

    calls: list[dict] = []
    built: dict = {}
    real_build = LT.build_model

    def build_and_watch(cfg_, tok, attn, dtype):
        model = real_build(cfg_, tok, attn, dtype)
        name = model.config._attn_implementation
        real_fn = ALL_ATTENTION_FUNCTIONS[name]

        def counted(module, query, key, value, attention_mask, *a, **kw):
            pos, cu = kw.get("position_ids"), kw.get("cu_seq_lens_q")
            # every document start of the micro-batch in the flattened B*T tokens, then B*T
            full = (pos is not None and cu is not None
                    and cu.tolist() == (pos.reshape(-1) == 0).nonzero().flatten().tolist() + [pos.numel()])
            calls.append({"device": query.device.type, "dtype": str(query.dtype).split(".")[-1],
                          "mask": attention_mask is not None, "batch": query.shape[0], "boundaries": full})
            return real_fn(module, query, key, value, attention_mask, *a, **kw)

        AttentionInterface.register(name, counted)  # dispatch is looked up at every forward
        built.update(model=model, impl=name, real_fn=real_fn)
        return model

    LT.build_model = build_and_watch
    try:
        summary = LT.train(cfg)
    finally:
        LT.build_model = real_build
        if "impl" in built:
            AttentionInterface.register(built["impl"], built["real_fn"])
    model = built["model"]
    data = PreparedData(cfg.data.prepared)
    blocks = eval_blocks(DocumentBuilder(data, cfg), data.split("valid") + data.split("test"), ["dual", "vocal"])
    two_docs = [b for b in blocks if (np.asarray(b["position_ids"])[1:] == 0).any()][:2]
    batch = Collator(data.tok.id("<PAD>"), cfg.data.doc_masking)(two_docs)
    leak = packing_leak(model, batch["input_ids"], batch["position_ids"], varlen=True)
    rows = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    return {"summary": summary, "impl": built["impl"], "calls": calls,
            "param_devices": {p.device.type for p in model.parameters()},
            "param_dtypes": {p.dtype for p in model.parameters()},
            "leak": leak, "blocks": len(two_docs),
            "losses": [r["loss"] for r in rows if "loss" in r]}


@pytest.mark.gpu
def test_tiny_lm_stage1_bf16_on_cuda(lm_cfg):
    out = lm_run(lm_cfg("stage1", "trainer.max_steps=4", "trainer.precision=bf16", "eval.enabled=false",
                        "model.attn_implementation=auto", "data.doc_masking=true"))
    assert out["summary"]["global_step"] == 4 and out["summary"]["final"]
    assert out["impl"] == expected_attention()
    train_calls = [c for c in out["calls"] if c["batch"] == 2]
    assert len(train_calls) >= 4 and all(
        c == {"device": "cuda", "dtype": "bfloat16", "mask": False, "batch": 2, "boundaries": True}
        for c in train_calls), out["calls"][:3]  # fmt: skip
    assert out["param_devices"] == {"cuda"} and out["param_dtypes"] == {torch.float32}  # fp32 master weights
    assert len(out["losses"]) == 4 and all(math.isfinite(v) and v > 0 for v in out["losses"])
    leak = out["leak"]
    assert out["blocks"] == 2 and leak["first"] > 0.1 and leak["leak_control"] > 0.1, leak
    assert leak["later"] < 0.02 * leak["leak_control"], leak
