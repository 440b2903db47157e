"""Masking, cosine logits, the summed-CE loss and the in-batch noise mixture (spec §2.5, §3)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mert.loss import compute_span_mask, cosine_logits, grad_multiply, inbatch_noise_mix, mert_loss


def test_span_mask_counts_and_fraction():
    rng = np.random.default_rng(0)
    fracs = []
    for _ in range(20):
        m = compute_span_mask(4, 374, 0.8, 5, 2, rng)
        assert m.shape == (4, 374) and m.dtype == bool
        counts = m.sum(1)
        assert (counts == counts[0]).all()  # fairseq require_same_masks: every row masks the same number
        fracs.append(m.mean())
    # ~0.8 * 374 / 5 = 60 overlapping spans of 5 -> 1 - (1 - 60/369)^5 ~ 0.59 before the row equalisation
    assert 0.5 < np.mean(fracs) < 0.62


def test_span_mask_spans_are_runs_of_five():
    m = compute_span_mask(1, 200, 0.05, 5, 2, np.random.default_rng(3))[0]
    # few spans: each run of True has length >= 5 unless two spans overlap into a longer one
    runs, cur = [], 0
    for v in list(m) + [False]:
        if v:
            cur += 1
        elif cur:
            runs.append(cur)
            cur = 0
    assert runs and min(runs) >= 5 and sum(runs) == m.sum()


def test_span_mask_min_masks_and_determinism():
    a = compute_span_mask(2, 50, 0.0, 5, 2, np.random.default_rng(7))
    assert (a.sum(1) >= 5).all()  # min_masks=2 spans even with mask_prob 0
    b = compute_span_mask(2, 50, 0.0, 5, 2, np.random.default_rng(7))
    assert (a == b).all()


def test_cosine_logits_match_definition():
    torch.manual_seed(0)
    p, e = torch.randn(6, 8), torch.randn(10, 8)
    ref = torch.stack([torch.stack([F.cosine_similarity(p[i], e[j], dim=0) for j in range(10)]) for i in range(6)]) / 0.1
    assert torch.allclose(cosine_logits(p, e, 0.1), ref, atol=1e-5)
    assert cosine_logits(p, e, 0.1).abs().max() <= 10.0 + 1e-4


def test_loss_is_summed_over_codebooks_and_normalised_by_masked_frames():
    torch.manual_seed(0)
    b, t, k, f, c = 2, 20, 3, 4, 7
    proj = torch.randn(b, t, k * f, requires_grad=True)
    embs = [torch.randn(c, f) for _ in range(k)]
    targets = torch.randint(0, c, (b, k, t))
    mask = torch.zeros(b, t, dtype=torch.bool)
    mask[:, 3:9] = True
    pen = torch.tensor(0.25)
    cqt_pred, cqt_tgt = torch.randn(int(mask.sum()), 5), torch.randn(int(mask.sum()), 5)
    out = mert_loss(proj, embs, targets, mask, pen, cqt_pred, cqt_tgt)
    m = int(mask.sum())
    ce = sum(
        F.cross_entropy(cosine_logits(proj.reshape(b, t, k, f)[:, :, j][mask], embs[j]), targets[:, j][mask], reduction="sum")
        for j in range(k)
    )
    expected = ce / m + 10 * 0.25 + ((cqt_pred - cqt_tgt) ** 2).mean()
    assert out.num_masked == m == 12
    assert torch.allclose(out.loss, expected, atol=1e-5)
    out.loss.backward()
    g = proj.grad.abs().sum(-1)
    assert (g[~mask] == 0).all() and (g[mask] > 0).all()  # skip_nomask: unmasked frames carry no loss


def test_loss_accuracy_counts_correct_argmax():
    b, t, k, f, c = 1, 6, 1, 3, 3
    embs = [torch.eye(3)]
    targets = torch.tensor([[[0, 1, 2, 0, 1, 2]]])
    proj = torch.eye(3)[targets[0, 0]].reshape(1, t, 3)  # perfect predictions
    mask = torch.ones(b, t, dtype=torch.bool)
    out = mert_loss(proj, embs, targets, mask, torch.tensor(0.0))
    assert out.correct == [6]
    assert out.metrics()["acc"] == 1.0


def test_loss_rejects_shape_mismatch():
    with pytest.raises(ValueError):
        mert_loss(torch.randn(1, 5, 8), [torch.randn(4, 4)] * 2, torch.zeros(1, 2, 6, dtype=torch.long),
                  torch.ones(1, 5, dtype=torch.bool), torch.tensor(0.0))


def test_noise_mix_semantics():
    torch.manual_seed(0)
    wav = torch.zeros(4, 30000)
    for i in range(4):
        wav[i] = i + 1.0  # constant clips: any added segment is visible as another item's value
    # mixture_prob 1.0: rand > 1 never holds -> nothing augmented
    out, aug = inbatch_noise_mix(wav, 1.0, rng=np.random.default_rng(0))
    assert not aug.any() and torch.equal(out, wav)
    # mixture_prob 0.0: every item augmented; one segment of 12000-24000 samples cut from the OTHER clips
    out, aug = inbatch_noise_mix(wav, 0.0, (1, 1), (12000, 24000), np.random.default_rng(1))
    assert aug.all()
    for i in range(4):
        diff = out[i] - wav[i]
        n_added = int((diff != 0).sum())
        assert 12000 <= n_added <= 24000
        # raw amplitude sum (volume 1.0, no SNR scaling) of samples of the other clips only
        assert set(torch.unique(diff[diff != 0]).tolist()) <= {float(j + 1) for j in range(4) if j != i}
    # 1-3 segments: up to 3 x 24000 samples touched
    out, aug = inbatch_noise_mix(wav, 0.0, (1, 3), (12000, 24000), np.random.default_rng(2))
    assert all(12000 <= int(((out[i] - wav[i]) != 0).sum()) <= 30000 for i in range(4))
    assert torch.equal(wav[:, 0], torch.arange(1, 5).float())  # the input (clean targets' source) is untouched


def test_noise_mix_probability_is_one_minus_p():
    rng = np.random.default_rng(2)
    wav = torch.randn(2, 2000)
    hits = sum(inbatch_noise_mix(wav, 0.8, noise_len_range=(100, 200), rng=rng)[1][0] for _ in range(400))
    assert abs(hits / 400 - 0.2) < 0.06


def test_grad_multiply():
    x = torch.ones(3, requires_grad=True)
    y = grad_multiply(x, 0.1)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full((3,), 0.1))
    assert grad_multiply(x, 1.0) is x


def test_baseline_hits_majority_and_copy_peers():
    from mert.loss import baseline_hits

    # one row, one codebook: labels 1 2 2 3 3 with frames 1, 2 and 3 masked
    targets = torch.tensor([[[1, 2, 2, 3, 3]]])
    mask = torch.tensor([[False, True, True, True, False]])
    maj, copy = baseline_hits(targets, mask, [2])
    assert maj == [2]  # masked frames 1 and 2
    # frame 1 copies frame 0 (miss), frame 2 ties between 0 and 4 -> the earlier (miss), frame 3 copies 4 (hit)
    assert copy == [1]
    # labels 1 1 2 2 3 3, frames 1, 2 and 5 masked: 1 <- 0, 2 <- 3 (nearer), 5 <- 4: all hits
    maj, copy = baseline_hits(torch.tensor([[[1, 1, 2, 2, 3, 3]]]),
                              torch.tensor([[False, True, True, False, False, True]]), [9])
    assert maj == [0] and copy == [3]
    # a second codebook and a fully masked row (no context: the copy peer never hits)
    targets = torch.tensor([[[0, 0, 0], [5, 5, 4]], [[7, 7, 7], [1, 1, 1]]])
    mask = torch.tensor([[False, True, True], [True, True, True]])
    maj, copy = baseline_hits(targets, mask, [7, 5])
    assert maj == [3, 1] and copy == [2, 1]
