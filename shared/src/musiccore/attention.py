"""Attention for packed rows shared by the LM trainers (ChatMusician, YuE): ``packed_sdpa``.

Packed rows hold several samples (documents) whose position ids restart at 0; with no attention mask, transformers
builds a block-diagonal causal mask from the position ids, which the stock SDPA path computes in full (every
cross-sample block too). ``packed_sdpa`` runs one causal SDPA per sample instead, so cross-sample blocks cost
nothing (what flash-attention varlen does on GPU). Register it once, then load models with
``attn_implementation="packed_sdpa"``.
"""

from __future__ import annotations

import torch

__all__ = ["PACKED_SDPA", "register_packed_attention"]

PACKED_SDPA = "packed_sdpa"


def register_packed_attention() -> str:
    """Register ``attn_implementation="packed_sdpa"``: SDPA that, for packed rows (position ids restarting per
    sample, no cache), runs causal attention on each sample separately, so cross-sample blocks cost
    nothing (what flash-attention varlen does on GPU). Every other call (padding masks, generation with a cache) is
    plain SDPA with the usual mask. Returns the implementation name."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    sdpa_mask = ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]

    def packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, position_ids=None, **kwargs):
        # query [B, H, T, D], key/value [B, Hkv, S, D]
        pos = None if position_ids is None else position_ids.expand(query.shape[0], -1)
        # packed rows: every row starts a sample at position 0 and some row starts another one later (a left-padded
        # generation prompt starts at position 1, a decode step has one query): the mask is then block-diagonal causal
        packed = (pos is not None and query.shape[2] == key.shape[2] and query.shape[2] > 1
                  and bool((pos[:, 0] == 0).all()) and bool((pos[:, 1:] == 0).any()))
        if not packed:
            if attention_mask is None and query.shape[2] > 1 and query.shape[2] != key.shape[2]:
                raise ValueError("packed_sdpa: a multi-token query over a longer cache needs an attention mask")
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        n_rep = query.shape[1] // key.shape[1]
        key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
        T = query.shape[2]
        rows = []
        # split + cat rather than assigning each sample's output into a slice of a [B, H, T, D] tensor: the backward
        # of every slice allocates and fills a full-size gradient (quadratic in the number of samples per row)
        for q, k, v, p in zip(query.split(1), key.split(1), value.split(1), pos.unbind(0)):
            starts = (p == 0).nonzero().flatten().tolist() + [T]
            lengths = [e - s for s, e in zip(starts, starts[1:])]
            rows.append(torch.cat([
                torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout, is_causal=True, scale=scaling)
                for qs, ks, vs in zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2))
            ], dim=2))  # one causal attention per packed sample, [1, H, n, D] each (4D: the fused kernels need it)
        return torch.cat(rows).transpose(1, 2).contiguous(), None

    def packed_sdpa_mask(*args, attention_mask=None, q_length=None, kv_length=None, **kwargs):
        # no padding mask and query length == key length (training rows, a prompt without cache): attention is causal
        # per row or per packed sample, which packed_sdpa does without a mask; building the [B, 1, T, T] block mask
        # that the stock path derives from the position ids would cost time and memory for nothing
        if attention_mask is None and q_length == kv_length:
            return None
        return sdpa_mask(*args, attention_mask=attention_mask, q_length=q_length, kv_length=kv_length, **kwargs)

    AttentionInterface.register(PACKED_SDPA, packed_sdpa)
    AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)
    return PACKED_SDPA
