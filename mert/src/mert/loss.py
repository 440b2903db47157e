"""MERT pretraining objective: span masking, masked prediction over teacher codebooks, CQT reconstruction.

Spec (mert.md §3, §2.5), all verified against the fairseq code and yamls:

- span masking: ``mask_prob`` 0.8, ``mask_length`` 5 frames, static lengths, ``min_masks`` 2, overlapping spans,
  every row of a batch gets the same number of masked frames (fairseq ``require_same_masks``);
- logits: cosine(projection slice k, every label embedding of codebook k) / 0.1 (a softmax classifier with cosine
  logits); cross-entropy SUMMED over the codebooks and the masked frames (``skip_nomask``: unmasked frames carry no loss);
- extras: ``features_pen = mean(conv_features ** 2)`` x 10 and CQT reconstruction MSE (mean over masked frames and bins) x 1;
- normalisation: everything divided by M = number of masked frames, so
  ``L = CE_sum / M + 10 * features_pen + 1 * cqt_mse``;
- in-batch noise mixture: an item is augmented when ``rand > mixture_prob`` (so p = 1 - mixture_prob), with 1-3 segments
  cut from the concatenated OTHER clips of the batch, 0.5-1.0 s long (95M) and added at raw amplitude (no SNR control);
  targets stay those of the clean clip.

All random draws take an explicit generator, so a resumed run reproduces the draws of an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------------------------------
# Masking
# ---------------------------------------------------------------------------------------------------------------------
def compute_span_mask(
    batch_size: int,
    num_frames: int,
    mask_prob: float = 0.8,
    mask_length: int = 5,
    min_masks: int = 2,
    rng: np.random.Generator | None = None,
    lengths: "np.ndarray | list[int] | None" = None,
) -> np.ndarray:
    """Static-length span masks with overlap (fairseq ``compute_mask_indices``, mask_type "static").

    The only span-mask function of the project: training (``mert.train``) and :class:`MERTForPretraining` both call it.
    The number of span starts is ``int(mask_prob * T / mask_length + u)`` with ``u ~ U[0, 1)`` (at least ``min_masks``),
    drawn once per batch (once per row when ``lengths`` gives padded rows, T = that row's length, as fairseq does with
    a padding mask); starts are sampled without replacement, spans may overlap, so the masked fraction is below
    ``mask_prob`` (about 59 % for T = 374). Rows are then subsampled to the smallest row count, so every row masks the
    same number of frames (fairseq ``require_same_masks``).

    Args:
        batch_size: B.
        num_frames: T, frames per row.
        mask_prob, mask_length, min_masks: the fairseq parameters.
        rng: numpy generator (default: a fresh unseeded one).
        lengths: optional [B] real frames per row (right padding); spans stay inside them. Rows under 2 real frames
            get no mask and do not count for the equal-count subsampling.

    Returns:
        bool array [B, T].
    """
    rng = rng if rng is not None else np.random.default_rng()
    if lengths is None:
        if num_frames < 2:
            raise ValueError(f"cannot mask a sequence of {num_frames} frames")
        row_len = [num_frames] * batch_size
    else:
        row_len = [int(n) for n in lengths]
        if len(row_len) != batch_size or any(not 0 <= n <= num_frames for n in row_len):
            raise ValueError(f"lengths must be {batch_size} values in [0, {num_frames}], got {row_len}")
    mask = np.zeros((batch_size, num_frames), dtype=bool)
    batch_num = max(min_masks, int(mask_prob * num_frames / float(mask_length) + rng.random()))
    rows: list[np.ndarray | None] = []
    for n_frames in row_len:
        if n_frames < 2:
            rows.append(None)  # nothing to mask in a (nearly) empty row
            continue
        # padded rows draw their own count from their real length (fairseq's per-row ``sz``)
        n = batch_num if n_frames == num_frames else max(
            min_masks, int(mask_prob * n_frames / float(mask_length) + rng.random()))
        span = mask_length
        if n_frames - span <= n:
            # Too short for n distinct starts of full spans: shrink the start range like fairseq does.
            span = n_frames - n - 1
            if span < 1:
                n, span = max(1, n_frames - 2), 1
        starts = rng.choice(n_frames - span, n, replace=False)
        idx = (starts[:, None] + np.arange(mask_length)[None, :]).reshape(-1)
        rows.append(np.unique(idx[idx < n_frames]))
    real = [r for r in rows if r is not None]
    if not real:
        return mask
    min_count = min(len(r) for r in real)
    for i, r in enumerate(rows):
        if r is None:
            continue
        if len(r) > min_count:
            r = rng.choice(r, min_count, replace=False)
        mask[i, r] = True
    return mask


# ---------------------------------------------------------------------------------------------------------------------
# In-batch noise mixture
# ---------------------------------------------------------------------------------------------------------------------
def inbatch_noise_mix(
    wav: torch.Tensor,
    mixture_prob: float = 0.5,
    num_noise_range: tuple[int, int] = (1, 3),
    noise_len_range: tuple[int, int] = (12000, 24000),
    rng: np.random.Generator | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Add segments of the other clips of the batch to some clips (MERT's in-batch noise mixture).

    Semantics of the released code (spec §2.5, pitfall 13): item i is augmented when ``u > mixture_prob`` with
    ``u ~ U[0, 1)``; the number of segments is uniform in ``num_noise_range`` (inclusive); each segment has a length
    uniform in ``noise_len_range`` (inclusive), starts at a random point of the concatenation of the OTHER clean clips,
    and is added with volume 1.0 at a random position of the clip. A segment that does not fit (clip or source too
    short) leaves the clip clean, as the reference's exception fallback does.

    Args:
        wav: clean waveforms [B, N].
        rng: numpy generator (draws are made on the host so they do not depend on the device).

    Returns:
        (mixed waveforms [B, N] (a new tensor), bool array [B]: which items were augmented)
    """
    rng = rng if rng is not None else np.random.default_rng()
    batch, n = wav.shape
    out = wav.clone()
    augmented = np.zeros(batch, dtype=bool)
    if batch < 2:
        return out, augmented
    for i in range(batch):
        if not rng.random() > mixture_prob:
            continue
        others = torch.cat([wav[j] for j in range(batch) if j != i])  # clean sources, never the mixed ones
        k = int(rng.integers(num_noise_range[0], num_noise_range[1] + 1))
        lens = rng.integers(noise_len_range[0], noise_len_range[1] + 1, size=k)
        if lens.max() >= n or lens.max() >= others.numel():
            continue  # fallback: clean clip
        for length in lens:
            src = int(rng.integers(0, others.numel() - length + 1))
            dst = int(rng.integers(0, n - length + 1))
            out[i, dst : dst + length] += others[src : src + length]
        augmented[i] = True
    return out, augmented


# ---------------------------------------------------------------------------------------------------------------------
# Masked prediction
# ---------------------------------------------------------------------------------------------------------------------
def cosine_logits(proj: torch.Tensor, label_embs: torch.Tensor, logit_temp: float = 0.1) -> torch.Tensor:
    """Cosine-similarity logits of HuBERT's "NCE" head, one codebook.

    Args:
        proj: projected frames [M, F].
        label_embs: label embeddings of the codebook [C, F].
        logit_temp: fixed temperature (0.1).

    Returns:
        logits [M, C] = cos(proj_m, emb_c) / logit_temp. (The reference puts the positive first and sets negatives equal
        to it to -inf; with distinct embeddings that is exactly a softmax over all C classes.)
    """
    p = F.normalize(proj.float(), dim=-1, eps=1e-8)
    e = F.normalize(label_embs.float(), dim=-1, eps=1e-8)
    return p @ e.t() / logit_temp


@dataclass
class LossOutput:
    """Terms of one pretraining loss evaluation (all scalars are tensors; ``loss`` carries the graph)."""

    loss: torch.Tensor
    ce_sum: torch.Tensor
    features_pen: torch.Tensor
    cqt_mse: torch.Tensor
    num_masked: int
    correct: list[int] = field(default_factory=list)  # per codebook, argmax == target on masked frames

    def metrics(self) -> dict[str, float]:
        m = max(self.num_masked, 1)
        out = {
            "ce": float(self.ce_sum.detach()) / m,
            "features_pen": float(self.features_pen.detach()),
            "cqt_mse": float(self.cqt_mse.detach()),
            "num_masked": float(self.num_masked),
        }
        if self.correct:
            out["acc"] = float(np.mean(self.correct)) / m
        return out


def mert_loss(
    proj: torch.Tensor,
    label_embs: list[torch.Tensor],
    targets: torch.Tensor,
    mask: torch.Tensor,
    features_pen: torch.Tensor,
    cqt_pred: torch.Tensor | None = None,
    cqt_target: torch.Tensor | None = None,
    logit_temp: float = 0.1,
    features_pen_weight: float = 10.0,
    cqt_weight: float = 1.0,
) -> LossOutput:
    """MERT objective for one batch.

    Args:
        proj: ``final_proj`` output [B, T, K * F] (untied: slice k predicts codebook k).
        label_embs: K tensors [C_k, F], the label embeddings of each codebook.
        targets: teacher labels [B, K, T] (long), aligned so that label t belongs to conv frame t.
        mask: masked frames [B, T] (bool); only these carry loss.
        features_pen: mean squared conv feature (scalar), before the feature-projection LayerNorm.
        cqt_pred: CQT head output at the masked frames [M, n_bins] (or None to skip the CQT term).
        cqt_target: clean-audio CQT magnitude at the masked frames [M, n_bins].

    Returns:
        :class:`LossOutput` with ``loss = CE_sum / M + w_pen * features_pen + w_cqt * cqt_mse``.
    """
    b, k, t = targets.shape
    if proj.shape[:2] != (b, t) or mask.shape != (b, t):
        raise ValueError(f"shape mismatch: proj {tuple(proj.shape)}, targets {tuple(targets.shape)}, mask {tuple(mask.shape)}")
    if len(label_embs) != k:
        raise ValueError(f"{len(label_embs)} label-embedding tables for {k} codebooks")
    slices = proj.chunk(k, dim=-1)
    m = int(mask.sum())
    ce_sum = proj.new_zeros((), dtype=torch.float32)
    correct = []
    for j in range(k):
        logits = cosine_logits(slices[j][mask], label_embs[j], logit_temp)  # [M, C_j]
        tgt = targets[:, j][mask]  # [M]
        ce_sum = ce_sum + F.cross_entropy(logits, tgt, reduction="sum")
        correct.append(int((logits.argmax(-1) == tgt).sum()))
    if cqt_pred is not None and cqt_target is not None and cqt_weight != 0:
        cqt_mse = F.mse_loss(cqt_pred.float(), cqt_target.float())
    else:
        cqt_mse = proj.new_zeros((), dtype=torch.float32)
    loss = ce_sum / max(m, 1) + features_pen_weight * features_pen.float() + cqt_weight * cqt_mse
    return LossOutput(loss=loss, ce_sum=ce_sum, features_pen=features_pen.float(), cqt_mse=cqt_mse, num_masked=m, correct=correct)


def baseline_hits(targets: torch.Tensor, mask: torch.Tensor, majority: list[int] | torch.Tensor) -> tuple[list[int], list[int]]:
    """Correct predictions of two label-only peers on the masked frames (the floor a trained model must beat).

    - majority: always predict ``majority[k]``, the most frequent label of codebook k in the TRAINING labels (the
      rate a model reaches by learning the label frequencies only);
    - copy: predict the label of the nearest unmasked frame of the same row (ties: the earlier one), i.e. how
      predictable the labels are from their unmasked context when the labels themselves are known.

    Args:
        targets: teacher labels [B, K, T] (long).
        mask: masked frames [B, T] (bool).
        majority: K label ids.

    Returns:
        (majority hits per codebook, copy hits per codebook), counted over the masked frames; a row without any
        unmasked frame gives the copy peer no hit.
    """
    b, k, t = targets.shape
    mask = mask.bool()
    maj = torch.as_tensor(majority, dtype=targets.dtype, device=targets.device).reshape(1, k, 1)
    maj_hits = ((targets == maj) & mask[:, None]).sum(dim=(0, 2))
    pos = torch.arange(t, device=targets.device).expand(b, t)
    big = t * 4  # farther than any real frame
    # last unmasked frame at or before t, first unmasked frame at or after t (running max / min over the row)
    prev = torch.where(~mask, pos, torch.full_like(pos, -big)).cummax(dim=1).values
    nxt = torch.where(~mask, pos, torch.full_like(pos, 2 * big)).flip(1).cummin(dim=1).values.flip(1)
    src = torch.where(pos - prev <= nxt - pos, prev, nxt)
    valid = mask & (src >= 0) & (src < t)
    copied = targets.gather(2, src.clamp(0, t - 1)[:, None, :].expand(b, k, t))
    copy_hits = ((copied == targets) & valid[:, None]).sum(dim=(0, 2))
    return [int(v) for v in maj_hits], [int(v) for v in copy_hits]


def grad_multiply(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass, gradient scaled by ``scale`` in the backward pass (fairseq GradMultiply).

    Used with ``feature_grad_mult`` (0.1 for 95M): the conv front end learns 10x slower than the transformer.
    """
    if scale == 1.0:
        return x
    return x * scale + x.detach() * (1.0 - scale)
