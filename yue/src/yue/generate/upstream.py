"""Upstream's generation algorithm, re-implemented with HF ``generate`` (reference for tests and the benchmark).

This mirrors ``inference/infer.py`` of the released repository (spec ``yue.md`` §3, §4.2) step for step, with the
differences needed to compare tokens with :mod:`yue.generate`:

- the logits masks are ours (:class:`~yue.generate.masks.Stage1Mask`; stage 2 uses upstream's joint range);
- decoding is whatever ``generate`` is told (the benchmark uses greedy in both pipelines);
- every requested section is generated (upstream's off-by-one is a bug, not a cost).

What is kept on purpose, because it is what makes upstream slow: stage 1 calls ``generate`` once per section on the
whole growing history (re-prefilled) with ``guidance_scale`` (HF's unbatched CFG: a second forward per step);
stage 2 calls ``generate(min_new_tokens=7, max_new_tokens=7)`` once per frame on the whole re-encoded prompt, in
batches of ``batch_size`` full 6 s chunks, and the tail chunk alone with batch 1.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import LogitsProcessorList

from yue.codec_ids import repair_codes
from yue.generate.config import Stage1Settings
from yue.generate.masks import Stage1Mask, Stage2JointMask
from yue.generate.stage1 import Stage1Plan
from yue.sequences import STAGE2_CODEBOOKS, stage2_prompt

__all__ = ["upstream_stage1", "upstream_stage2"]


@torch.no_grad()
def upstream_stage1(model, layout, plan: Stage1Plan, settings: Stage1Settings) -> list[list[int]]:
    """Per section: ``generate`` on ``raw_output + [end_of_segment] + prompt`` (re-prefilled), HF CFG."""
    device = next(model.parameters()).device
    raw = None
    sections = []
    for k, prompt in enumerate(plan.prompts):
        ids = plan.head + prompt if k == 0 else plan.end_of_segment + prompt
        x = torch.tensor([ids], device=device)
        x = x if raw is None else torch.cat([raw, x], dim=1)
        kw = dict(do_sample=not settings.greedy)
        if not settings.greedy:
            kw.update(top_p=settings.top_p, temperature=settings.temperature, top_k=settings.top_k)
        out = model.generate(
            input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=settings.max_new_tokens,
            min_new_tokens=settings.min_new_tokens, repetition_penalty=settings.repetition_penalty,
            eos_token_id=plan.eoa, pad_token_id=plan.eoa,
            logits_processor=LogitsProcessorList([Stage1Mask(layout, x.shape[1], settings.eoa_on_frame_boundary,
                                                             plan.forced)]),
            guidance_scale=settings.guidance_first if k == 0 else settings.guidance_later, **kw,
        )  # fmt: skip
        if int(out[0, -1]) != plan.eoa:
            out = torch.cat([out, torch.tensor([[plan.eoa]], device=device)], dim=1)
        sections.append(out[0, x.shape[1] :].tolist())
        raw = out
    return sections


@torch.no_grad()
def _stage2_generate(model, layout, cb0: np.ndarray, batch_size: int) -> np.ndarray:
    """Upstream ``stage2_generate``: ``[T]`` cb0 codes -> ``[8, T]`` codes, one ``generate`` call per frame."""
    device = next(model.parameters()).device
    xc = layout.xcodec
    eoa = layout.id("<EOA>")
    frames = cb0.shape[0] // batch_size if batch_size > 1 else cb0.shape[0]
    rows = [cb0[i * frames : (i + 1) * frames] for i in range(batch_size)] if batch_size > 1 else [cb0]
    prompt = torch.tensor([stage2_prompt(layout, r) for r in rows], device=device)
    codec = torch.tensor(np.stack([xc.codes_to_ids(r[None], 0) for r in rows]), device=device)
    procs = LogitsProcessorList([Stage2JointMask(layout)])
    for t in range(codec.shape[1]):
        prompt = torch.cat([prompt, codec[:, t : t + 1]], dim=1)
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), min_new_tokens=7,
                             max_new_tokens=7, eos_token_id=eoa, pad_token_id=eoa, logits_processor=procs,
                             do_sample=False)  # fmt: skip
        assert out.shape[1] - prompt.shape[1] == 7
        prompt = out
    tail = prompt[:, 3 + codec.shape[1] :].cpu().numpy()  # [B, T*8] frame-major per row
    codes = [xc.ids_to_codes(r, n=STAGE2_CODEBOOKS, begin=0, strict=False) for r in tail]
    return np.concatenate(codes, axis=1)


def upstream_stage2(model, layout, cb0: np.ndarray, batch_size: int = 4, chunk_frames: int = 300) -> np.ndarray:
    """Upstream ``stage2_inference`` for one track: full chunks in batches of ``batch_size``, then the tail alone."""
    cb0 = np.asarray(cb0).reshape(-1)
    n_full = cb0.shape[0] // chunk_frames
    parts = []
    if n_full:
        for b0 in range(0, n_full, batch_size):  # upstream splits the full chunks into groups of batch_size
            nb = min(batch_size, n_full - b0)
            seg = cb0[b0 * chunk_frames : (b0 + nb) * chunk_frames]
            parts.append(_stage2_generate(model, layout, seg, nb))
    if n_full * chunk_frames != cb0.shape[0]:
        parts.append(_stage2_generate(model, layout, cb0[n_full * chunk_frames :], 1))
    codes = np.concatenate(parts, axis=1)
    return repair_codes(codes, layout.xcodec.codebook_size)
