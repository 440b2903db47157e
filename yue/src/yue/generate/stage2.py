"""Stage 2: codebook 0 of each track -> codebooks 0..7, every 6 s chunk of every track in one batch.

Per chunk the released sequence is ``<SOA> <stage_1> cb0_1..cb0_T <stage_2>`` followed, per frame, by the known
``cb0_t`` and 7 generated codes ``cb1_t..cb7_t`` (spec ``yue.md`` §3). Upstream calls ``generate`` once per frame and
re-encodes the whole prompt every time; here each chunk is prefilled **once** and then decoded with its KV cache
(1 fed token + 7 generated per frame). All chunks of both tracks, including the shorter tail chunk, are decoded
together: shorter chunks are left-padded and their pad positions hidden (:mod:`yue.generate.lmstep`), with their own
position ids, so each row computes what it would compute alone. ``batch_chunks`` caps the batch (memory is bounded by
the batch in flight, not by the song length).

Step j of a frame samples only codebook j (``codebook_mask``, ours) or any code of codebooks 1..7 (upstream). Ids
outside a frame position's codebook (possible only with the joint range) are repaired with upstream's "dirty fix"
(:func:`yue.codec_ids.repair_codes`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from yue.codec_ids import repair_codes
from yue.generate.config import Stage2Settings
from yue.generate.lmstep import forward_step
from yue.generate.masks import stage2_allowed_range
from yue.generate.stage1 import _Progress
from yue.sequences import STAGE2_CODEBOOKS, stage2_prompt

log = logging.getLogger(__name__)

__all__ = ["Chunk", "split_chunks", "run_stage2", "batch_seed"]


@dataclass
class Chunk:
    """One chunk: ``track`` index, first frame ``start`` and its codebook-0 codes ``cb0 [T]``."""

    track: int
    start: int
    cb0: np.ndarray


def split_chunks(tracks: list[np.ndarray], chunk_frames: int) -> list[Chunk]:
    """Cut every track ``[T]`` into ``chunk_frames`` chunks; the last one of a track may be shorter."""
    out = []
    for i, t in enumerate(tracks):
        t = np.asarray(t).reshape(-1)
        for s in range(0, t.shape[0], chunk_frames):
            out.append(Chunk(i, s, t[s : s + chunk_frames]))
    return out


def batch_seed(seed: int, b: int) -> int:
    return (int(seed) * 1_000_033 + 104_729 * (b + 1)) % (2**63 - 1)


@torch.no_grad()
def _decode_batch(model, layout, chunks: list[Chunk], settings: Stage2Settings, gen, bar,
                  stats: dict | None = None) -> list[np.ndarray]:
    """Decode one batch of chunks; returns each chunk's ``[8, T_c]`` codes (-1 where an id left its codebook)."""
    from transformers import DynamicCache, TemperatureLogitsWarper, TopPLogitsWarper

    device = next(model.parameters()).device
    xc = layout.xcodec
    lens = [c.cb0.shape[0] for c in chunks]
    tmax = max(lens)
    plen = 3 + tmax  # <SOA> <stage_1> cb0 x tmax <stage_2>
    pad_id = layout.id("<SOA>")  # any valid id: pad positions are never visible
    prompts, cb0_ids = [], []
    for c in chunks:
        p = stage2_prompt(layout, c.cb0)
        prompts.append([pad_id] * (plen - len(p)) + p)
        ids = xc.codes_to_ids(np.asarray(c.cb0)[None], 0)
        cb0_ids.append(np.concatenate([ids, np.full(tmax - len(ids), ids[-1])]))  # pad rows repeat their last cb0
    cb0 = torch.tensor(np.stack(cb0_ids), device=device)  # [B, tmax]
    start = torch.tensor([plen - (3 + n) for n in lens], device=device)
    cache = DynamicCache(config=model.config)
    feed = torch.cat([torch.tensor(prompts, device=device), cb0[:, :1]], dim=1)  # prefill + cb0 of frame 0
    logits = forward_step(model, feed, cache, start, 0, vocab_slice=stage2_allowed_range(layout, 1, settings.codebook_mask))
    pos = feed.shape[1]
    out = torch.empty(len(chunks), tmax, STAGE2_CODEBOOKS, dtype=torch.long, device=device)
    out[:, :, 0] = cb0
    warp = []
    if not settings.greedy:
        if settings.temperature != 1.0:
            warp.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_p < 1.0:
            warp.append(TopPLogitsWarper(settings.top_p))
    def allowed(j: int) -> tuple[int, int]:
        return stage2_allowed_range(layout, j, settings.codebook_mask)

    for t in range(tmax):
        for j in range(1, STAGE2_CODEBOOKS):
            lo = allowed(j)[0]
            scores = logits  # [B, hi-lo]: only the allowed ids were computed (the mask as a slice)
            if settings.greedy:
                tok = scores.argmax(-1) + lo
            else:
                for w in warp:
                    scores = w(None, scores)
                tok = torch.multinomial(torch.softmax(scores, -1), 1, generator=gen)[:, 0] + lo
            out[:, t, j] = tok
            if j < STAGE2_CODEBOOKS - 1:
                step = tok[:, None]
            elif t + 1 < tmax:
                step = torch.stack([tok, cb0[:, t + 1]], dim=1)  # close frame t, open frame t+1 with its known cb0
            else:
                break
            logits = forward_step(model, step, cache, start, pos, vocab_slice=allowed(j % 7 + 1))
            pos += step.shape[1]
        bar.update(1)
    if stats is not None:  # KV-cache bytes of this batch at its largest (the end): what the batch in flight holds
        kv = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
                 if isinstance(t, torch.Tensor))  # fmt: skip
        stats["peak_kv_bytes"] = max(stats.get("peak_kv_bytes", 0), kv)
    res = []
    for b, n in enumerate(lens):
        flat = out[b, :n].reshape(-1).cpu().numpy()
        res.append(xc.ids_to_codes(flat, n=STAGE2_CODEBOOKS, begin=0, strict=False))  # bad ids -> -1
    return res


def run_stage2(model, layout, tracks: list[np.ndarray], settings: Stage2Settings, seed: int = 42,
               log_every: int = 500, stats: dict | None = None) -> tuple[list[np.ndarray], float]:  # fmt: skip
    """Codebook-0 tracks ``[T]`` (codes 0..1023) -> ``[8, T]`` codes per track, and the seconds it took.

    ``stats`` (optional dict) receives ``peak_kv_bytes``: the largest KV cache any batch held.

    Chunks are sorted longest first and decoded ``batch_chunks`` at a time (0 = all at once).
    """
    t0 = time.perf_counter()
    chunks = split_chunks(tracks, settings.chunk_frames)
    order = sorted(range(len(chunks)), key=lambda i: -chunks[i].cb0.shape[0])
    size = settings.batch_chunks or len(chunks)
    results: dict[int, np.ndarray] = {}
    device = next(model.parameters()).device
    n_batches = (len(order) + size - 1) // size
    for b in range(n_batches):
        idx = order[b * size : (b + 1) * size]
        batch = [chunks[i] for i in idx]
        tmax = max(c.cb0.shape[0] for c in batch)
        gen = torch.Generator(device=device).manual_seed(batch_seed(seed, b))
        bar = _Progress(f"stage2 batch {b + 1}/{n_batches} ({len(batch)} chunks)", tmax, max(1, log_every // 8), "frames")
        for i, codes in zip(idx, _decode_batch(model, layout, batch, settings, gen, bar, stats)):
            results[i] = codes
        dt = bar.close()
        log.info("stage2 batch %d/%d: %d chunks x %d frames in %.1f s, %.1f ids/s", b + 1, n_batches, len(batch),
                 tmax, dt, len(batch) * tmax * 7 / max(dt, 1e-9))  # fmt: skip
    out = []
    for i, t in enumerate(tracks):
        parts = [results[k] for k, c in enumerate(chunks) if c.track == i]
        codes = np.concatenate(parts, axis=1) if parts else np.zeros((STAGE2_CODEBOOKS, 0), np.int64)
        out.append(repair_codes(codes, layout.xcodec.codebook_size))  # per track, as upstream (row modes of the track)
    return out, time.perf_counter() - t0
