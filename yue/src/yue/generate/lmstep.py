"""One forward step of a ``LlamaForCausalLM`` over a KV cache with a custom per-row visibility rule.

Both stages batch rows whose visible history differs:

- stage 1 runs classifier-free guidance as a batch of two: row 0 sees the whole context, row 1 (the unconditional
  branch of HF's ``UnbatchedClassifierFreeGuidanceLogitsProcessor``) sees only the tokens from the section's last
  prompt token on, with its own position ids starting at 0;
- stage 2 left-pads chunks of different lengths into one batch: row b sees nothing before its ``start[b]``.

Both are "row b sees keys ``start[b] <= k <= q``" with per-row ``start`` and positions ``q - start[b]``. A query
that lies before its row's start (padding) sees only itself, so no attention row is empty (an empty row would
produce NaN in SDPA, which then leaks into the cache); its output is never read.

:class:`PreallocatedCache` is transformers' ``DynamicCache`` semantics (the attention sees exactly the keys written
so far) without its per-step ``torch.cat`` of every layer's whole history: keys/values are written in place into
buffers allocated once (grown by doubling if ever too small), and each layer hands out a view of the filled part.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

__all__ = ["visible_mask", "forward_step", "PreallocatedCache", "DecodeMask"]


class _PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys``/``values`` ``[B, H, n, D]`` are views into buffers ``[B, H, capacity, D]``."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = max(1, int(capacity))
        self._k = self._v = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        b, h, _, d = key_states.shape
        self._k = key_states.new_empty(b, h, self.capacity, d)
        self._v = value_states.new_empty(b, h, self.capacity, value_states.shape[-1])
        self.keys, self.values = self._k[:, :, :0], self._v[:, :, :0]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, m = self.keys.shape[-2], key_states.shape[-2]
        if n + m > self._k.shape[-2]:  # rare: grow by doubling (amortised O(1) per token, like a Python list)
            cap = max(n + m, 2 * self._k.shape[-2])
            k, v = self._k.new_empty(*self._k.shape[:2], cap, self._k.shape[-1]), self._v.new_empty(
                *self._v.shape[:2], cap, self._v.shape[-1])  # fmt: skip
            k[:, :, :n], v[:, :, :n] = self.keys, self.values
            self._k, self._v = k, v
        self._k[:, :, n : n + m] = key_states  # in place: no copy of the history
        self._v[:, :, n : n + m] = value_states
        self.keys, self.values = self._k[:, :, : n + m], self._v[:, :, : n + m]
        return self.keys, self.values

    def reset(self) -> None:
        self._k = self._v = None
        super().reset()


class PreallocatedCache(Cache):
    """KV cache of ``num_layers`` preallocated layers holding up to ``capacity`` positions each without reallocating.

    Drop-in for ``DynamicCache`` (same lengths, same masks, ``crop`` works); only the storage differs.
    """

    def __init__(self, config, capacity: int):
        n = config.get_text_config(decoder=True).num_hidden_layers
        super().__init__(layers=[_PreallocatedLayer(capacity) for _ in range(n)])


class DecodeMask:
    """Masks of single-token decode steps for rows with first visible key ``start [B]``, up to ``capacity`` keys.

    ``at(q0)`` returns the same ``[B, 1, 1, q0+1]`` mask and ``[B, 1]`` positions as ``visible_mask(start, q0, 1)``
    (for ``q0 >= max(start)``) as views of tensors built once, instead of building them every step.
    """

    def __init__(self, start: torch.Tensor, capacity: int, device=None):
        self.start = start.to(device)
        k = torch.arange(capacity, device=device)
        self.rows = (k[None, :] >= self.start[:, None])[:, None, None, :]  # [B, 1, 1, capacity]
        self.pos = (k[None, :] - self.start[:, None]).clamp_min(0)  # [B, capacity]: position of query q in row b
        self.first = int(self.start.max())

    def at(self, q0: int) -> tuple[torch.Tensor, torch.Tensor]:
        if q0 < self.first or q0 >= self.pos.shape[1]:
            return visible_mask(self.start, q0, 1, self.start.device)
        return self.rows[..., : q0 + 1], self.pos[:, q0 : q0 + 1]


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
                 vocab_slice: tuple[int, int] | None = None, decode: DecodeMask | None = None):  # fmt: skip
    """Feed ``ids [B, n]`` at positions ``q0..q0+n-1`` of every row; return the last logits ``[B, V]`` (float32).

    Long inputs (a prefill) are fed in pieces of ``chunk`` queries so the mask stays ``[B, 1, chunk, K]``.
    ``vocab_slice=(lo, hi)`` computes only the logits of ids ``lo..hi-1`` (``[B, hi-lo]``): when a mask allows
    nothing else, sampling or argmax over the slice equals sampling over the masked full vocabulary.
    ``decode`` (a :class:`DecodeMask` of the same ``start``) serves the mask of single-token steps.
    """
    n = ids.shape[1]
    hidden = None
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        if decode is not None and b - a == 1:
            mask, pos = decode.at(q0 + a)
        else:
            mask, pos = visible_mask(start, q0 + a, b - a, ids.device)
        out = model.model(input_ids=ids[:, a:b], attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1]
    w = model.lm_head.weight if vocab_slice is None else model.lm_head.weight[vocab_slice[0] : vocab_slice[1]]
    return torch.nn.functional.linear(hidden, w).float()
