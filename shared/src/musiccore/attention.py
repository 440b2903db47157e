"""Attention for packed rows shared by the LM trainers (ChatMusician, YuE): ``packed_sdpa``.

Packed rows hold several samples (documents) whose position ids restart at 0; with no attention mask, transformers
builds a block-diagonal causal mask from the position ids, which the stock SDPA path computes in full (every
cross-sample block too). ``packed_sdpa`` runs one causal SDPA per sample instead, so cross-sample blocks cost
nothing (what flash-attention varlen does on GPU). Register it once, then load models with
``attn_implementation="packed_sdpa"``.

``varlen_kwargs`` gives the sample boundaries of packed rows in the form transformers' flash-attention path consumes
(``cu_seq_lens_q/k``, ``max_length_q/k``). transformers (5.x) infers them from the position ids only for a batch of
one row (``_is_packed_sequence``); with more rows and no such kwargs, ``flash_attention_2`` runs one causal attention
over each whole row, so every packed sample attends to the ones before it. The LM collators add them to packed batches.
"""

from __future__ import annotations

import torch

__all__ = ["PACKED_SDPA", "PackingError", "VARLEN_KEYS", "register_packed_attention", "varlen_kwargs"]

PACKED_SDPA = "packed_sdpa"
VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


class PackingError(ValueError):
    """Position ids that do not describe packed rows (wrong shape or type, a row not starting at 0, a negative id)."""


def varlen_kwargs(position_ids: torch.Tensor) -> dict:
    """Sample boundaries of a packed batch for flash-attention varlen, as transformers' ``flash_attention_2`` path
    takes them as model-forward kwargs (``_flash_attention_forward``: with all four given and no attention mask it
    flattens query/key/value ``[B, T, H, D]`` to ``[B*T, H, D]``, calls ``flash_attn_varlen_func`` with these
    boundaries and views the output back as ``[B, T, H, D]``).

    ``position_ids`` ``[B, T]``: every row starts a sample at position 0 and a new sample starts wherever the position
    id is 0 again (the collators' padding run is such a sample). Returns ``cu_seq_lens_q`` = ``cu_seq_lens_k``: int32
    ``[N + 1]``, the start offset of each of the N samples in the flattened ``B*T`` tokens, then ``B*T`` (a row's
    first sample starts at ``row * T``, so no sample spans two rows), and ``max_length_q`` = ``max_length_k``: the
    longest sample (a Python int, as ``flash_attn_varlen_func`` wants, so there is no device sync in the model).
    Raises :class:`PackingError` naming the row and the reason for input that is not such a batch.
    """
    if not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 2 or position_ids.dtype.is_floating_point \
            or position_ids.dtype == torch.bool:  # fmt: skip
        what = f"a {position_ids.dim()}-D {position_ids.dtype} tensor" if isinstance(position_ids, torch.Tensor) \
            else type(position_ids).__name__  # fmt: skip
        raise PackingError(f"varlen_kwargs: position_ids must be an integer tensor [B, T], got {what}")
    B, T = position_ids.shape
    if B == 0 or T == 0:
        raise PackingError(f"varlen_kwargs: position_ids is empty ({B} rows x {T} tokens)")
    pos = position_ids.detach().cpu()
    bad = (pos[:, 0] != 0).nonzero().flatten()
    if len(bad):
        r = int(bad[0])
        raise PackingError(f"varlen_kwargs: row {r} starts at position {int(pos[r, 0])}, not 0 "
                           "(a packed row starts a sample)")
    if bool((pos < 0).any()):
        r, t = (int(v) for v in (pos < 0).nonzero()[0])
        raise PackingError(f"varlen_kwargs: row {r} token {t} has a negative position id {int(pos[r, t])}")
    starts = (pos.reshape(-1) == 0).nonzero().flatten()  # flattened offsets of the sample starts (each row's first)
    cu = torch.cat([starts, torch.tensor([B * T])]).to(torch.int32)
    longest = int(cu.diff().max())
    cu = cu.to(position_ids.device)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu.clone(), "max_length_q": longest, "max_length_k": longest}


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
