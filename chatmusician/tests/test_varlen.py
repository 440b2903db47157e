"""The collator hands flash-attention varlen boundaries to the model (issue 13 item 4 follow-up).

transformers' ``flash_attention_2`` finds packed samples from the position ids only for a batch of one row; with
``trainer.micro_batch`` > 1 the boundaries must come with the batch (``cu_seq_lens_q/k``, ``max_length_q/k``).

- the collator's boundaries equal the ones counted by hand (2 packed rows, several samples, padding); unpacked
  batches (attention mask) and ``varlen=False`` carry none;
- in a real LoRA training run (``chatmusician.train.train``, micro-batch 2, packed rows), every call of the attention
  function receives the boundaries of its own batch: they travel Trainer -> PEFT -> LLaMA -> attention unchanged.
  (That flash-attention then keeps the samples apart: shared/tests/test_varlen.py.)
"""

from __future__ import annotations

import torch

from musiccore.attention import varlen_kwargs

from chatmusician.tokenization import IGNORE_INDEX, Collator


def test_collator_boundaries_are_the_hand_counted_ones():
    rows = [
        {"input_ids": [5, 6, 7, 8, 9, 10, 11], "labels": [5, 6, 7, 8, 9, 10, 11],
         "position_ids": [0, 1, 2, 0, 1, 2, 3]},
        {"input_ids": [12, 13, 14, 15, 16], "labels": [IGNORE_INDEX, 13, 14, 15, 16], "position_ids": [0, 1, 0, 1, 2]},
    ]  # row 0: samples of 3 + 4 tokens; row 1: 2 + 3 tokens, then the collator's padding (its own run from 0)
    b = Collator(pad_id=0, pad_to_multiple_of=4)(rows)  # T = 8
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 0, 1, 2, 0, 1, 2]]
    assert b["cu_seq_lens_q"].tolist() == [0, 3, 7, 8, 10, 13, 16] == b["cu_seq_lens_k"].tolist()
    assert b["cu_seq_lens_q"].dtype == torch.int32 and b["max_length_q"] == b["max_length_k"] == 4
    assert "attention_mask" not in b
    assert not set(Collator(pad_id=0, varlen=False)(rows)) & {"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q"}
    unpacked = Collator(pad_id=0)([{k: v for k, v in r.items() if k != "position_ids"} for r in rows])
    assert "attention_mask" in unpacked and "cu_seq_lens_q" not in unpacked  # padding mask: transformers unpads


def test_boundaries_reach_the_attention_in_lora_training(cfg_on_corpus):
    import chatmusician.train as T
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    calls: list[dict] = []
    built: dict = {}
    real_build = T.build_model

    def build_and_watch(cfg_, tok):
        model = real_build(cfg_, tok)
        name = model.config._attn_implementation
        real_fn = ALL_ATTENTION_FUNCTIONS[name]

        def watched(module, query, key, value, attention_mask, *a, **kw):
            pos = kw.get("position_ids")
            want = varlen_kwargs(pos.expand(query.shape[0], -1)) if pos is not None else {}
            calls.append({"batch": query.shape[0], "got": {k: kw.get(k) for k in want}, "want": want})
            return real_fn(module, query, key, value, attention_mask, *a, **kw)

        AttentionInterface.register(name, watched)
        built.update(impl=name, real_fn=real_fn)
        return model

    T.build_model = build_and_watch
    try:
        T.train(cfg_on_corpus("trainer.max_steps=2", "trainer.micro_batch=2", "trainer.save_steps=1000",
                              "lora.enabled=true", "lora.r=4", "pack.enabled=true", "trainer.num_workers=0",
                              "trainer.tensorboard=false", "trainer.cpu_threads=1"))
    finally:
        T.build_model = real_build
        if "impl" in built:
            AttentionInterface.register(built["impl"], built["real_fn"])
    train_calls = [c for c in calls if c["batch"] == 2]
    assert len(train_calls) >= 2 * 2  # 2 steps x 2 layers
    for c in train_calls:
        got, want = c["got"], c["want"]
        assert torch.equal(got["cu_seq_lens_q"].cpu(), want["cu_seq_lens_q"]), c
        assert torch.equal(got["cu_seq_lens_k"].cpu(), want["cu_seq_lens_k"]), c
        assert got["max_length_q"] == want["max_length_q"] and got["max_length_k"] == want["max_length_k"], c
        assert len(want["cu_seq_lens_q"]) > 3  # packed rows: more samples than rows
