"""The LM collator's flash-attention varlen boundaries (``Collator(varlen=True)``, issue 13 item 4 follow-up).

- the boundaries equal the ones counted by hand for 2 packed blocks (several documents, a document cut by the block
  end, padding) and are one sample per row without document masking; off by default (the Trainer's stream
  dispatcher slices every tensor of a batch along dim 0, see ``Collator``);
- a forward of the YuE LM with such a batch hands them to every attention call unchanged.
(That flash-attention then keeps the documents apart: shared/tests/test_varlen.py.)
"""

from __future__ import annotations

import numpy as np
import torch

from yue.lm.data import Collator, pack_documents
from yue.lm.model import build_lm

EOD, PAD = 7, 0
VARLEN = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def _blocks(doc_masking: bool):
    docs = [np.concatenate([np.arange(n - 1) + 100 + 1000 * k, [EOD]]) for k, n in enumerate([3, 4, 5, 2])]
    # block 0: doc 1 (3) | doc 2 (4) | first token of doc 3; block 1: rest of doc 3 (4) | doc 4 (2) | padding (2)
    return pack_documents(docs, 8, doc_masking, PAD)


def test_collator_boundaries_are_the_hand_counted_ones():
    b = Collator(PAD, doc_masking=True, varlen=True)(_blocks(True))
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 0, 1, 0, 1]]
    assert b["cu_seq_lens_q"].tolist() == [0, 3, 7, 8, 12, 14, 16] == b["cu_seq_lens_k"].tolist()
    assert b["cu_seq_lens_q"].dtype == torch.int32 and b["max_length_q"] == b["max_length_k"] == 4
    # a shorter row: the padding run is a sample of its own
    first, second = _blocks(True)
    short = Collator(PAD, doc_masking=True, varlen=True)([first, {k: v[:5] for k, v in second.items()}])
    assert short["cu_seq_lens_q"].tolist() == [0, 3, 7, 8, 12, 13, 16]
    plain = Collator(PAD, doc_masking=False, varlen=True)(_blocks(False))  # no masking: each row one sequence
    assert plain["cu_seq_lens_q"].tolist() == [0, 8, 16] and plain["max_length_q"] == 8
    assert not set(Collator(PAD, doc_masking=True)(_blocks(True))) & set(VARLEN)  # off by default


def test_boundaries_reach_every_attention_call(tiny_tokenizer):
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    from musiccore.attention import register_packed_attention

    real = AttentionInterface()[register_packed_attention()]
    seen: list[dict] = []

    def watched(module, query, key, value, attention_mask, *a, **kw):
        seen.append({k: kw.get(k) for k in VARLEN})
        return real(module, query, key, value, attention_mask, *a, **kw)

    AttentionInterface.register("test_watch_varlen", watched)
    AttentionMaskInterface.register("test_watch_varlen", ALL_MASK_ATTENTION_FUNCTIONS["packed_sdpa"])
    eod = tiny_tokenizer.id("<EOD>")
    docs = [np.concatenate([np.arange(n - 1) + 10 + 7 * k, [eod]]) for k, n in enumerate([5, 9, 4])]
    blocks = pack_documents(docs, 12, True, tiny_tokenizer.id("<PAD>"))
    batch = Collator(tiny_tokenizer.id("<PAD>"), doc_masking=True, varlen=True)(blocks)
    model = build_lm("tiny_stage1", tiny_tokenizer.layout, attn_implementation="test_watch_varlen", seed=0)
    out = model(**batch)
    assert torch.isfinite(out.loss)
    assert len(seen) == model.config.num_hidden_layers
    for kw in seen:
        assert kw["cu_seq_lens_q"] is batch["cu_seq_lens_q"] and kw["cu_seq_lens_k"] is batch["cu_seq_lens_k"]
        assert kw["max_length_q"] == kw["max_length_k"] == batch["max_length_q"] == 7  # 9-token doc 2 is cut at 7
    assert batch["cu_seq_lens_q"].tolist() == [0, 5, 12, 14, 18, 24]
