"""One forward step of a ``LlamaForCausalLM`` over a KV cache with a custom per-row visibility rule.

Both stages batch rows whose visible history differs:

- stage 1 runs classifier-free guidance as a batch of two: row 0 sees the whole context, row 1 (the unconditional
  branch of HF's ``UnbatchedClassifierFreeGuidanceLogitsProcessor``) sees only the tokens from the section's last
  prompt token on, with its own position ids starting at 0;
- stage 2 left-pads chunks of different lengths into one batch: row b sees nothing before its ``start[b]``.

Both are "row b sees keys ``start[b] <= k <= q``" with per-row ``start`` and positions ``q - start[b]``. A query
that lies before its row's start (padding) sees only itself, so no attention row is empty (an empty row would
produce NaN in SDPA, which then leaks into the cache); its output is never read.
"""

from __future__ import annotations

import torch

__all__ = ["visible_mask", "forward_step"]


def visible_mask(start: torch.Tensor, q0: int, n: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean attention mask ``[B, 1, n, q0+n]`` and position ids ``[B, n]`` for queries ``q0 .. q0+n-1``.

    Args:
        start: ``[B]`` first visible key of each row.
    """
    start = start.to(device)
    if n == 1 and q0 >= int(start.max()):  # decode step: row b sees keys start[b]..q0 (a cheaper path, same mask)
        k = torch.arange(q0 + 1, device=device)
        return (k[None, :] >= start[:, None])[:, None, None, :], (q0 - start)[:, None]
    q = torch.arange(q0, q0 + n, device=device)[:, None]  # [n, 1]
    k = torch.arange(q0 + n, device=device)[None, :]  # [1, K]
    s = start.to(device)[:, None, None]  # [B, 1, 1]
    causal = (k <= q)[None]  # [1, n, K]
    mask = causal & ((k[None] >= s) | (k == q)[None])  # [B, n, K]
    pos = (q[:, 0][None, :] - start.to(device)[:, None]).clamp_min(0)  # [B, n]
    return mask[:, None], pos


@torch.no_grad()
def forward_step(model, ids: torch.Tensor, cache, start: torch.Tensor, q0: int, chunk: int = 1024,
                 vocab_slice: tuple[int, int] | None = None):  # fmt: skip
    """Feed ``ids [B, n]`` at positions ``q0..q0+n-1`` of every row; return the last logits ``[B, V]`` (float32).

    Long inputs (a prefill) are fed in pieces of ``chunk`` queries so the mask stays ``[B, 1, chunk, K]``.
    ``vocab_slice=(lo, hi)`` computes only the logits of ids ``lo..hi-1`` (``[B, hi-lo]``): when a mask allows
    nothing else, sampling or argmax over the slice equals sampling over the masked full vocabulary.
    """
    n = ids.shape[1]
    hidden = None
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        mask, pos = visible_mask(start, q0 + a, b - a, ids.device)
        out = model.model(input_ids=ids[:, a:b], attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1]
    w = model.lm_head.weight if vocab_slice is None else model.lm_head.weight[vocab_slice[0] : vocab_slice[1]]
    return torch.nn.functional.linear(hidden, w).float()
