"""Stage-1/stage-2 cores: masks (property tests), fast == upstream algorithm (greedy), context overflow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from yue.generate.config import Stage1Settings, Stage2Settings
from yue.generate.masks import Stage1Mask, apply_stage2_mask, stage2_allowed_range
from yue.generate.stage1 import Stage1Plan, run_stage1
from yue.generate.stage2 import run_stage2
from yue.generate.upstream import upstream_stage1, upstream_stage2
from yue.lyrics import split_lyrics
from yue.sequences import MARKERS, head_text, stage1_section_prompt
from yue.tokenizer import TokenLayout

LAYOUTS = [TokenLayout.released()]


def _logits(seed: int, vocab: int, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, vocab, generator=g) * scale
    # adversarial: make a forbidden id (text, other codebook, padding row) the most likely one
    x[0, int(torch.randint(0, vocab, (1,), generator=g))] = 1e4
    return x


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 3000), scale=st.floats(0.01, 100.0),
       forced=st.sampled_from([None, 0, 1]), boundary=st.booleans(), greedy=st.booleans())  # fmt: skip
def test_stage1_mask_never_lets_an_invalid_id_through(seed, n, scale, forced, boundary, greedy):
    from transformers import RepetitionPenaltyLogitsProcessor, TopKLogitsWarper, TopPLogitsWarper

    layout = LAYOUTS[0]
    vocab = layout.model_vocab_size  # 83968 rows; ids >= 83738 are padding
    lo, hi = layout.xcodec.id_range(0, 1)
    eoa = layout.id("<EOA>")
    silence = lo + 17
    mask = Stage1Mask(layout, 10, boundary, {forced: silence} if forced is not None else None)
    ids = torch.randint(0, vocab, (1, 10 + n), generator=torch.Generator().manual_seed(seed))
    scores = RepetitionPenaltyLogitsProcessor(1.1)(ids, _logits(seed, vocab, scale))
    scores = mask(ids, scores)
    if greedy:
        tok = int(scores.argmax())
    else:
        scores = TopPLogitsWarper(0.93)(ids, TopKLogitsWarper(50)(ids, scores))
        tok = int(torch.multinomial(torch.softmax(scores, -1), 1, generator=torch.Generator().manual_seed(seed)))
    assert tok < layout.vocab_size
    assert lo <= tok < hi or tok == eoa
    if tok == eoa:
        assert not boundary or n % 2 == 0
    elif forced is not None and n % 2 == forced:
        assert tok == silence


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), step=st.integers(1, 7), per_step=st.booleans(), scale=st.floats(0.01, 100.0),
       rows=st.integers(1, 4))  # fmt: skip
def test_stage2_mask_never_lets_an_invalid_id_through(seed, step, per_step, scale, rows):
    layout = LAYOUTS[0]
    scores = torch.cat([_logits(seed + r, layout.model_vocab_size, scale) for r in range(rows)])
    masked = apply_stage2_mask(scores, layout, step, per_step)
    toks = torch.cat([masked.argmax(-1), torch.multinomial(torch.softmax(masked, -1), 1)[:, 0]])
    lo, hi = stage2_allowed_range(layout, step, per_step)
    # the pipeline computes only the allowed slice of the logits: same choice as the masked full vocabulary
    assert torch.equal(scores[:, lo:hi].argmax(-1) + lo, masked.argmax(-1))
    assert ((toks >= lo) & (toks < hi)).all()
    if per_step:
        assert ((toks - layout.xcodec.offset(step)) // layout.xcodec.codebook_size == 0).all()  # codebook `step`
    else:
        assert lo == layout.xcodec.offset(1) and hi == layout.xcodec.offset(8)  # released [46358, 53526)
        assert (lo, hi) == (46358, 53526)


# ---- tiny models ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tiny_tokenizer):
    from yue.lm import build_lm

    torch.set_num_threads(1)
    return build_lm("tiny_stage1", tiny_tokenizer.layout, seed=0).eval(), build_lm("tiny_stage2", tiny_tokenizer.layout, seed=1).eval()


def _plan(tok, n_sections=3):
    secs = split_lyrics("[verse]\nla la la\n\n[chorus]\nsing with me\n\n[verse]\nhold on\n\n[outro]\nthe night\n")
    head = tok.tokenize(head_text("pop female", secs))
    prompts = [stage1_section_prompt(tok, s, True) for s in secs[:n_sections]]
    return Stage1Plan(head, prompts, tok.tokenize(MARKERS["end_of_segment"]), tok.id("<EOA>"))


def test_fast_pipeline_emits_the_upstream_algorithms_greedy_tokens(models, tiny_tokenizer):
    m1, m2 = models
    layout = tiny_tokenizer.layout
    plan = _plan(tiny_tokenizer, 3)
    st1 = Stage1Settings(greedy=True, min_new_tokens=6, max_new_tokens=24)
    fast = run_stage1(m1, layout, plan, st1)
    assert len(fast.sections) == 3
    assert fast.sections == upstream_stage1(m1, layout, plan, st1)
    # stage 2: 2 tracks x (2 full chunks + a tail): all 6 chunks in one batch vs upstream's batches and lone tails
    rng = np.random.RandomState(0)
    tracks = [rng.randint(0, 1024, 25), rng.randint(0, 1024, 25)]
    st2 = Stage2Settings(codebook_mask=False, chunk_frames=10)
    ours, _ = run_stage2(m2, layout, tracks, st2)
    for t, o in zip(tracks, ours):
        assert np.array_equal(o, upstream_stage2(m2, layout, t, batch_size=4, chunk_frames=10))
    # batching is only a speed-up: one chunk at a time gives the same codes (per-step mask on)
    st2b = Stage2Settings(codebook_mask=True, chunk_frames=10)
    a, _ = run_stage2(m2, layout, tracks, st2b)
    b, _ = run_stage2(m2, layout, tracks, Stage2Settings(codebook_mask=True, chunk_frames=10, batch_chunks=1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # with the per-step mask every row holds codes of its own codebook (no repair needed)
    assert all(((x >= 0) & (x < 1024)).all() for x in a)


def test_context_overflow_drops_old_sections_and_keeps_the_head(models, tiny_tokenizer, monkeypatch):
    import yue.generate.stage1 as s1

    m1, _ = models
    layout = tiny_tokenizer.layout
    plan = _plan(tiny_tokenizer, 4)
    st = Stage1Settings(greedy=True, min_new_tokens=40, max_new_tokens=40, max_context=len(plan.head) + 240)
    feeds = []
    real = s1.forward_step

    def spy(model, ids, cache, start, q0, chunk=1024, **kw):
        if ids.shape[1] > 1:
            feeds.append((q0, ids[0].tolist()))
        return real(model, ids, cache, start, q0, chunk, **kw)

    monkeypatch.setattr(s1, "forward_step", spy)
    res = run_stage1(m1, layout, plan, st)
    assert len(res.sections) == 4 and all(len(s) == 41 for s in res.sections)
    assert res.contexts[0] == [] and res.contexts[1] == [0]
    assert any(0 not in c for c in res.contexts[2:])  # an old section was dropped...
    assert all(c == sorted(c) and (not c or c[-1] == k - 1) for k, c in enumerate(res.contexts))  # ...oldest first
    refills = [ids for q0, ids in feeds if q0 == 0]
    assert len(refills) >= 2  # the first prefill and one after the drop
    for ids in refills:
        assert ids[: len(plan.head)] == plan.head  # the head (genre + lyrics) is always the start of the context
    # what the model saw equals a from-scratch build of the kept context
    k = next(k for k, c in enumerate(res.contexts) if k and c != list(range(k)))
    assert refills[1] == s1.context_ids(plan, res.sections, res.contexts[k], k)


def test_stage1_sections_are_whole_frames_of_codebook0(models, tiny_tokenizer):
    m1, _ = models
    layout = tiny_tokenizer.layout
    lo, hi = layout.xcodec.id_range(0, 1)
    res = run_stage1(m1, layout, _plan(tiny_tokenizer, 2), Stage1Settings(min_new_tokens=6, max_new_tokens=24), seed=7)
    for sec in res.sections:
        body = np.asarray(sec[:-1])
        assert sec[-1] == layout.id("<EOA>") and len(body) % 2 == 0 and 6 <= len(body) <= 24
        assert ((body >= lo) & (body < hi)).all()


def test_preallocated_cache_matches_dynamic_cache_and_grows(models, tiny_tokenizer):
    """The in-place KV cache (no per-step torch.cat) gives DynamicCache's logits, also past its initial capacity."""
    from transformers import DynamicCache

    from yue.generate.lmstep import DecodeMask, PreallocatedCache, forward_step, visible_mask

    m1, _ = models
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (2, 12))
    start = torch.tensor([0, 9])  # row 1 sees only from position 9 on (the CFG branch's layout)
    dyn, pre = DynamicCache(config=m1.config), PreallocatedCache(m1.config, 4)  # capacity 4: must grow while decoding
    dec = DecodeMask(start, 16)  # steps 12..15 use its views, 16..19 (past its 16 keys) fall back to visible_mask
    a, b = forward_step(m1, ids, dyn, start, 0), forward_step(m1, ids, pre, start, 0)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    for q0 in range(12, 20):
        step = torch.randint(0, 1000, (1, 1)).expand(2, 1)
        a, b = forward_step(m1, step, dyn, start, q0), forward_step(m1, step, pre, start, q0, decode=dec)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert pre.get_seq_length() == dyn.get_seq_length() == 20
    assert pre.layers[0].capacity == 4 and pre.layers[0]._k.shape[-2] >= 20  # it grew instead of failing
    for q0 in (9, 10, 12):  # DecodeMask serves visible_mask's decode masks as views of one tensor
        m, p = DecodeMask(start, 32).at(q0)
        m2, p2 = visible_mask(start, q0, 1)
        assert torch.equal(m, m2) and torch.equal(p, p2)
