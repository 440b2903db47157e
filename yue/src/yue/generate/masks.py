"""Logits masks of both stages (``transformers.LogitsProcessor`` objects, so HF ``generate`` can use them too).

Stage 1 (inside the ``<SOA> <xcodec> ... <EOA>`` block of a section): only codebook-0 ids and ``<EOA>`` (upstream
blocks only ids below ``<EOA>``, spec §10.2); never an id ``>= layout.vocab_size`` (embedding padding rows). Options:
``<EOA>`` only on a frame boundary; a forced track (its positions admit one id: the silence code).

Stage 2 (frame-major ``cb0 cb1 .. cb7``): step j of a frame may only emit codebook j (``per_step``), or any id of
codebooks 1..7 (upstream's joint range ``[46358, 53526)`` in released ids).
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from yue.tokenizer import TokenLayout

__all__ = ["Stage1Mask", "stage2_allowed_range", "Stage2JointMask", "apply_stage2_mask"]

NEG_INF = float("-inf")


class Stage1Mask(LogitsProcessor):
    """Allowed ids of the next stage-1 audio token, given how many ids of the section were generated.

    Args:
        layout: token layout (codebook-0 range and ``<EOA>``).
        prompt_len: length of ``input_ids`` when the section's generation started (generated = len - prompt_len).
        eoa_on_frame_boundary: ``<EOA>`` only after an even number of generated ids.
        forced: ``{0: id}`` forces every vocal position (even index), ``{1: id}`` every instrumental one (odd).

    ``__call__(input_ids [B, L], scores [B, V]) -> [B, V]`` with disallowed entries set to ``-inf``.
    """

    def __init__(self, layout: TokenLayout, prompt_len: int, eoa_on_frame_boundary: bool = True,
                 forced: dict[int, int] | None = None):  # fmt: skip
        self.lo, self.hi = layout.xcodec.id_range(0, 1)
        self.eoa = layout.id("<EOA>")
        self.prompt_len = int(prompt_len)
        self.eoa_on_frame_boundary = eoa_on_frame_boundary
        self.forced = dict(forced or {})
        self._cache: dict = {}
        for parity, i in self.forced.items():
            if parity not in (0, 1) or not self.lo <= i < self.hi:
                raise ValueError(f"forced track {parity}: id {i} is not a codebook-0 id")

    def allowed(self, n_generated: int, vocab: int, device=None) -> torch.Tensor:
        """Boolean ``[V]``: which ids may come next after ``n_generated`` ids of the section (cached per parity)."""
        key = (n_generated % 2, vocab, str(device))
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self._allowed(n_generated, vocab, device)
        return hit

    def _allowed(self, n_generated: int, vocab: int, device=None) -> torch.Tensor:
        ok = torch.zeros(vocab, dtype=torch.bool, device=device)
        parity = n_generated % 2
        if parity in self.forced:
            ok[self.forced[parity]] = True
        else:
            ok[self.lo : self.hi] = True
        if not self.eoa_on_frame_boundary or parity == 0:
            ok[self.eoa] = True
        return ok

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n = input_ids.shape[-1] - self.prompt_len
        ok = self.allowed(n, scores.shape[-1], scores.device)
        return scores.masked_fill(~ok, NEG_INF)


def stage2_allowed_range(layout: TokenLayout, step: int, per_step: bool) -> tuple[int, int]:
    """Half-open id range allowed at position ``step`` (1..7) of a frame: codebook ``step``, or codebooks 1..7."""
    if not 1 <= step <= 7:
        raise ValueError(f"stage-2 step {step}: the generated positions of a frame are 1..7")
    return layout.xcodec.id_range(step, 1) if per_step else layout.xcodec.id_range(1, 7)


def apply_stage2_mask(scores: torch.Tensor, layout: TokenLayout, step: int, per_step: bool) -> torch.Tensor:
    """``scores [B, V]`` with everything outside :func:`stage2_allowed_range` set to ``-inf``."""
    lo, hi = stage2_allowed_range(layout, step, per_step)
    out = torch.full_like(scores, NEG_INF)
    out[:, lo:hi] = scores[:, lo:hi]
    return out


class Stage2JointMask(LogitsProcessor):
    """Upstream's stage-2 processor pair as one: only ids of codebooks 1..7 (``[46358, 53526)`` released)."""

    def __init__(self, layout: TokenLayout):
        self.lo, self.hi = layout.xcodec.id_range(1, 7)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = torch.full_like(scores, NEG_INF)
        out[:, self.lo : self.hi] = scores[:, self.lo : self.hi]
        return out
