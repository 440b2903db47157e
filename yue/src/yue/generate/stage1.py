"""Stage 1: lyrics + genre (+ ICL prompt) -> interleaved vocal/instrumental codebook-0 ids, section by section.

The algorithm and sampling are upstream's (``inference/infer.py``, spec ``yue.md`` §4.2); the differences are:

- **one KV cache across sections**: the growing history is fed once, never re-prefilled per section;
- **classifier-free guidance as one batch of two** (:mod:`yue.generate.lmstep`): row 1 is HF's unconditional branch
  (the section's last prompt token and the ids generated since, positions from 0), so the scores are exactly
  ``s * (log_softmax(cond) - log_softmax(uncond)) + log_softmax(uncond)`` as in
  ``UnbatchedClassifierFreeGuidanceLogitsProcessor``; then transformers' own processors in HF's order
  (repetition penalty over the context, min-new-tokens, our :class:`~yue.generate.masks.Stage1Mask`, temperature,
  top-k, top-p);
- **a preallocated KV cache** (:class:`~yue.generate.lmstep.PreallocatedCache`, sized for the whole song): keys and
  values are written in place, where ``DynamicCache`` concatenates every layer's whole history each step; decode
  masks are views of one tensor per section (:class:`~yue.generate.lmstep.DecodeMask`); ``inference_mode``;
- **every requested section** is generated (upstream: one fewer);
- **context overflow** drops the oldest whole sections and keeps the head (upstream keeps the last tokens and loses
  the genre/lyrics head); the cache is then re-filled once.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from yue.generate.config import Stage1Settings
from yue.generate.lmstep import DecodeMask, PreallocatedCache, forward_step
from yue.generate.masks import Stage1Mask
from yue.generate.request import GenerateInputError

log = logging.getLogger(__name__)

__all__ = ["Stage1Plan", "Stage1Result", "run_stage1", "context_ids", "section_seed"]


@dataclass
class Stage1Plan:
    """Token pieces of one song.

    Attributes:
        head: ``tok(head)`` followed by the ICL block if any (never dropped).
        prompts: per section to generate: ``tok("[start_of_segment]") tok(section) <SOA> <xcodec>``.
        end_of_segment: ``tok("[end_of_segment]")`` (closes a section before the next prompt).
        eoa: ``<EOA>`` id.
        forced: ``{0: id}`` / ``{1: id}``: vocal / instrumental positions forced to one id (single-track requests).
    """

    head: list[int]
    prompts: list[list[int]]
    end_of_segment: list[int]
    eoa: int
    forced: dict[int, int] = field(default_factory=dict)


@dataclass
class Stage1Result:
    """Generated ids per section (codebook-0 ids then ``<EOA>``), which earlier sections each one saw, timing."""

    sections: list[list[int]]
    contexts: list[list[int]]
    seconds: float = 0.0
    new_tokens: int = 0


def context_ids(plan: Stage1Plan, sections: list[list[int]], kept: list[int], k: int) -> list[int]:
    """The full stage-1 input before generating section ``k`` with earlier sections ``kept`` in context."""
    ids = list(plan.head)
    for j in kept:
        ids += plan.prompts[j] + sections[j] + plan.end_of_segment
    return ids + plan.prompts[k]


def section_seed(seed: int, k: int) -> int:
    """Seed of section ``k``'s sampler (independent of earlier sections, so a resumed run draws the same)."""
    return (int(seed) * 1_000_003 + 7919 * (k + 1)) % (2**63 - 1)


def _sampler(settings: Stage1Settings) -> list:
    warpers = []
    if settings.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(settings.temperature))
    if settings.top_k:
        warpers.append(TopKLogitsWarper(settings.top_k))
    if settings.top_p < 1.0:
        warpers.append(TopPLogitsWarper(settings.top_p))
    return warpers


class _Progress:
    """tqdm bar on a TTY, otherwise a plain log line every ``every`` ids (Slurm .out friendly)."""

    def __init__(self, desc: str, total: int, every: int, unit: str = "ids"):
        self.desc, self.every, self.n, self.t0 = desc, max(1, every), 0, time.perf_counter()
        self.unit = unit
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False)

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
        elif self.n % self.every < k:
            dt = time.perf_counter() - self.t0
            log.info("%s: %d %s, %.1f %s/s", self.desc, self.n, self.unit, self.n / max(dt, 1e-9), self.unit)

    def close(self) -> float:
        if self.bar is not None:
            self.bar.close()
        return time.perf_counter() - self.t0


@torch.inference_mode()  # like no_grad, minus autograd's per-op version-counter bookkeeping (every step counts)
def run_stage1(
    model,
    layout,
    plan: Stage1Plan,
    settings: Stage1Settings,
    seed: int = 42,
    done: list[list[int]] | None = None,
    on_section: Callable[[int, list[list[int]], list[list[int]]], None] | None = None,
    labels: list[str] | None = None,
    log_every: int = 500,
) -> Stage1Result:
    """Generate every section of ``plan`` with one KV cache (see the module docstring).

    Args:
        model: ``LlamaForCausalLM`` (eval mode; its device and dtype are used).
        layout: the tokenizer's :class:`~yue.tokenizer.TokenLayout`.
        done: sections already generated by an interrupted run (resume): their ids are reused, not regenerated.
        on_section: called after each finished section with ``(k, sections, contexts)`` (saves the resume state).

    Returns:
        :class:`Stage1Result`; ``sections[k]`` always ends with ``<EOA>`` and holds an even number of codec ids
        when ``settings.eoa_on_frame_boundary``.
    """
    device = next(model.parameters()).device
    max_ctx = settings.max_context or int(model.config.max_position_embeddings)
    limit = max_ctx - settings.max_new_tokens - 1  # the released rule: prompt + max_new_tokens + 1 must fit
    cfg_on = settings.guidance_first != 1.0 or settings.guidance_later != 1.0
    rows = 2 if cfg_on else 1
    sections: list[list[int]] = [list(s) for s in (done or [])]
    contexts: list[list[int]] = []
    kept: list[int] = []
    cache = None
    cached: list[int] = []  # ids whose keys/values sit in the cache (same for both rows)
    buf = torch.zeros(1, max_ctx + 2, dtype=torch.long, device=device)  # context ids for the repetition penalty
    warpers = _sampler(settings)
    penalty = RepetitionPenaltyLogitsProcessor(settings.repetition_penalty) if settings.repetition_penalty != 1.0 else None
    t_total, new_total = 0.0, 0
    # an upper bound of the whole song's length (head, every section at max_new_tokens + <EOA>, markers)
    per_section = settings.max_new_tokens + 1 + len(plan.end_of_segment)
    song_len = len(plan.head) + sum(len(p) + per_section for p in plan.prompts)
    for k in range(len(plan.prompts)):
        # ---- context: keep the head, drop the oldest whole sections until the section fits
        kept = [j for j in kept] + ([k - 1] if k > 0 and (k - 1) not in kept else [])
        ctx = context_ids(plan, sections, kept, k)
        while len(ctx) > limit and kept:
            kept = kept[1:]
            ctx = context_ids(plan, sections, kept, k)
        if len(ctx) > limit:
            raise GenerateInputError(
                f"section {k}: head ({len(plan.head)} ids) + section prompt ({len(plan.prompts[k])} ids) + "
                f"max_new_tokens {settings.max_new_tokens} + 1 exceed the context of {max_ctx} tokens"
            )
        contexts.append(list(kept))
        if k < len(sections):  # resumed: this section exists already
            continue
        if cached != ctx[: len(cached)]:  # sections were dropped (or a resume): the cache no longer matches
            if cached:
                log.info("stage1 section %d: context full, dropped sections -> keeping %s, re-filling the cache", k, kept)
            cache, cached = None, []
        if cache is None:  # sized for the whole song (keys written in place; no per-step copy of the history)
            cache = PreallocatedCache(model.config, min(max_ctx, song_len) + 1)
        t0 = time.perf_counter()
        scale = settings.guidance_first if k == 0 else settings.guidance_later
        u0 = len(ctx) - 1  # the unconditional branch starts at the last prompt token (<xcodec>)
        start = torch.tensor([0, u0][:rows], device=device)
        decode = DecodeMask(start, max_ctx + 1, device)
        feed = torch.tensor([ctx[len(cached) :]], device=device).expand(rows, -1)
        logits = forward_step(model, feed, cache, start, len(cached))
        cached = list(ctx)
        buf[0, : len(ctx)] = torch.tensor(ctx, device=device)
        n_ctx = len(ctx)
        # HF's order after CFG: repetition penalty, min-new-tokens (MinNewTokensLengthLogitsProcessor: <EOA> = -inf
        # before min_new_tokens ids), our mask; called directly (LogitsProcessorList inspects signatures every call)
        mask = Stage1Mask(layout, n_ctx, settings.eoa_on_frame_boundary, plan.forced)
        gen = torch.Generator(device=device).manual_seed(section_seed(seed, k))
        label = labels[k] if labels else str(k)
        bar = _Progress(f"stage1 section {k + 1}/{len(plan.prompts)} [{label}]", settings.max_new_tokens, log_every)
        out: list[int] = []
        step = torch.empty(rows, 1, dtype=torch.long, device=device)
        while True:
            ids_so_far = buf[:, : n_ctx + len(out)]
            scores = logits[:1]
            if scale != 1.0:  # HF's CFG: combine log-softmaxes of both branches
                cond = torch.log_softmax(scores, dim=-1)
                unc = torch.log_softmax(logits[1:2], dim=-1)
                scores = scale * (cond - unc) + unc
            if penalty is not None:
                scores = penalty(ids_so_far, scores)
            if len(out) < settings.min_new_tokens:
                scores[:, plan.eoa] = float("-inf")
            scores = mask(ids_so_far, scores)
            if settings.greedy:
                tok = int(scores.argmax(-1))
            else:
                for w in warpers:  # temperature, top-k, top-p (HF's warpers, HF's order)
                    scores = w(ids_so_far, scores)
                probs = torch.softmax(scores, dim=-1)
                tok = int(torch.multinomial(probs, 1, generator=gen))
            out.append(tok)
            buf[0, n_ctx + len(out) - 1] = tok
            bar.update()
            if tok == plan.eoa or len(out) >= settings.max_new_tokens:
                break
            # both rows take the sampled token (the unconditional branch continues from its own history)
            step.fill_(tok)
            logits = forward_step(model, step, cache, start, len(cached), decode=decode)
            cached.append(tok)
        if out[-1] != plan.eoa:
            out.append(plan.eoa)  # upstream closes a section that hit max_new_tokens
        dt = bar.close()
        t_total += dt
        new_total += len(out)
        sections.append(out)
        log.info("stage1 section %d/%d [%s]: %d ids (%d frames) in %.1f s, %.1f ids/s, context %d ids, kept %s",
                 k + 1, len(plan.prompts), label, len(out), (len(out) - 1) // 2, dt, len(out) / max(dt, 1e-9),
                 n_ctx, kept)  # fmt: skip
        if on_section is not None:
            on_section(k, sections, contexts)
    return Stage1Result(sections, contexts, t_total, new_total)
