"""Training pieces of the codec that transformers' inference-only ``XcodecModel`` lacks.

- :func:`rvq_forward`: residual VQ with straight-through gradients, Encodec-style EMA codebook updates
  (decay 0.99, Laplace smoothing), dead-code replacement and a data-driven init, writing the SAME buffers
  (``embed``, ``embed_avg``, ``cluster_size``) the converted checkpoints use, plus the commitment loss.
- :func:`multiscale_stft_loss`: L1 of log magnitudes + spectral convergence over several FFT sizes.
- :func:`codec_forward`: one training forward of an :class:`~yue.codec.xcodec.XCodec` -> reconstruction and losses.
- metrics: :func:`snr_db`, :func:`log_spectral_distance`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "rvq_forward", "init_codebooks", "codec_latent", "multiscale_stft_loss", "codec_forward", "snr_db",
    "log_spectral_distance",
]  # fmt: skip

_WINDOWS: dict = {}  # (n_fft, device, dtype) -> Hann window: built once, not at every loss call


@torch.no_grad()
def _init_codebook(codebook, data: torch.Tensor, iters: int = 5) -> None:
    """k-means init (a few Lloyd steps) from this batch's vectors ``[N, D]`` (sampled with replacement if N < bins)."""
    bins = codebook.embed.shape[0]
    idx = torch.randint(0, data.shape[0], (bins,), device=data.device) if data.shape[0] < bins else torch.randperm(data.shape[0], device=data.device)[:bins]
    means = data[idx].clone()
    for _ in range(iters):
        assign = torch.cdist(data, means).argmin(-1)
        counts = torch.bincount(assign, minlength=bins).float()
        sums = torch.zeros_like(means).index_add_(0, assign, data)
        means = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], means)
    codebook.embed.copy_(means)
    codebook.embed_avg.copy_(means)
    codebook.cluster_size.fill_(1.0)


def rvq_forward(
    quantizer, e: torch.Tensor, n_q: int, training: bool, decay: float = 0.99, eps: float = 1e-5,
    dead_threshold: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Quantize ``e [B, D, T]`` with the first ``n_q`` codebooks of a transformers ``XcodecResidualVectorQuantization``.

    Returns:
        ``(quantized [B, D, T]`` with straight-through gradients, ``codes [n_q, B, T]``, ``commitment loss)``.
    """
    residual = e
    out = torch.zeros_like(e)
    codes, commit = [], e.new_zeros(())
    for layer in quantizer.quantizers[:n_q]:
        cb = layer.codebook
        x = residual.transpose(1, 2).reshape(-1, residual.shape[1])  # [B*T, D]
        if training and bool((cb.embed.abs().sum() == 0).item()) and bool((x.detach().abs().max() > 1e-8).item()):
            # lazy init (prefer init_codebooks on a pool > bins vectors); a zero residual (the batch was matched
            # exactly by the codebooks above) would init a table of zeros, so wait for a step with real data
            _init_codebook(cb, x.detach())
        with torch.no_grad():
            idx = cb.quantize(x.detach())  # nearest code (Euclidean)
        q = F.embedding(idx, cb.embed)
        if training:
            commit = commit + F.mse_loss(x, q.detach())
            with torch.no_grad():  # EMA codebook update (vq-vae eqs. 6-8 with Laplace smoothing)
                onehot = F.one_hot(idx, cb.embed.shape[0]).type(x.dtype)
                cb.cluster_size.mul_(decay).add_(onehot.sum(0), alpha=1 - decay)
                cb.embed_avg.mul_(decay).add_(onehot.t() @ x.detach(), alpha=1 - decay)
                n = cb.cluster_size.sum()
                size = (cb.cluster_size + eps) / (n + cb.embed.shape[0] * eps) * n
                cb.embed.copy_(cb.embed_avg / size[:, None])
                dead = cb.cluster_size < dead_threshold  # unused codes restart from random current vectors
                if dead.any():
                    pick = x.detach()[torch.randint(0, x.shape[0], (int(dead.sum()),), device=x.device)]
                    cb.embed[dead] = pick
                    cb.embed_avg[dead] = pick
                    cb.cluster_size[dead] = 1.0
            q = x + (q - x).detach()  # straight-through
        q = q.reshape(residual.shape[0], residual.shape[2], -1).transpose(1, 2)
        out = out + q
        residual = residual - q.detach() if training else residual - q
        codes.append(idx.reshape(e.shape[0], e.shape[2]))
    return out, torch.stack(codes), commit


@torch.no_grad()
def init_codebooks(quantizer, e: torch.Tensor, iters: int = 5) -> int:
    """Data-driven init of every all-zero codebook, in RVQ order, from a pool ``e [B, D, T]`` of encoder outputs.

    Codebook ``k`` is fit (k-means) to a random half of the residual left by codebooks ``0..k-1``. Use a pool with
    clearly more vectors than ``2 * bins`` (B * T >> 2048): from fewer, codebook 0 copies the vectors exactly, the
    residual is zero and the deeper codebooks get nothing to learn from. An all-zero residual is skipped (left for
    the lazy init in :func:`rvq_forward`). Returns the number of codebooks initialised.
    """
    residual = e.transpose(1, 2).reshape(-1, e.shape[1]).float()
    done = 0
    for layer in quantizer.quantizers:
        cb = layer.codebook
        if bool((cb.embed.abs().sum() == 0).item()) and bool((residual.abs().max() > 1e-8).item()):
            # fit on a random half: the vectors a code copies exactly leave a zero residual, the other half
            # keeps real residual for the next codebook
            half = torch.randperm(residual.shape[0], device=residual.device)[: max(1, residual.shape[0] // 2)]
            _init_codebook(cb, residual[half], iters)
            done += 1
        residual = residual - F.embedding(cb.quantize(residual), cb.embed)
    return done


def _stft_mag(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    key = (n_fft, x.device, x.dtype)
    win = _WINDOWS.get(key)
    if win is None:
        win = _WINDOWS[key] = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    return torch.stft(x, n_fft, n_fft // 4, window=win, return_complex=True).abs().clamp(min=1e-5)


def multiscale_stft_loss(y: torch.Tensor, x: torch.Tensor, ffts=(256, 512, 1024)) -> torch.Tensor:
    """Mean over FFT sizes of ``L1(log|Y|, log|X|) + ||(|X|-|Y|)||_F / ||X||_F``. ``y, x``: ``[B, N]``."""
    total = y.new_zeros(())
    for n in ffts:
        my, mx = _stft_mag(y, n), _stft_mag(x, n)
        total = total + F.l1_loss(my.log(), mx.log()) + torch.linalg.norm(mx - my) / torch.linalg.norm(mx)
    return total / len(ffts)


def codec_latent(codec, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-quantizer latent of ``x [B, 1, N]``: ``(e [B, D+S, T], semantic teacher features [B, T', S])``."""
    m = codec.model
    with torch.no_grad():  # the HuBERT teacher is frozen
        sem = m._extract_semantic_features(x)  # [B, T, S], mean over all hidden states
    e_sem = m.encoder_semantic(sem.transpose(1, 2))
    e_ac = m.acoustic_encoder(x)
    t = min(e_sem.shape[-1], e_ac.shape[-1])
    e = m.fc(torch.cat([e_ac[..., :t], e_sem[..., :t]], dim=1).transpose(1, 2)).transpose(1, 2)
    return e, sem


def codec_forward(codec, x: torch.Tensor, n_q: int, training: bool = True):
    """One forward of the full codec on ``x [B, 1, N]`` (N a multiple of the hop).

    Returns:
        dict with ``audio [B, 1, N]``, ``codes [n_q, B, T]``, ``commit``, ``semantic`` (MSE of the semantic
        reconstruction through ``fc1`` + ``decoder_semantic``, as upstream trains it).
    """
    m = codec.model
    e, sem = codec_latent(codec, x)
    t = e.shape[-1]
    q, codes, commit = rvq_forward(m.quantizer, e, n_q, training)
    y = m.acoustic_decoder(m.fc2(q.transpose(1, 2)).transpose(1, 2))[..., : x.shape[-1]]
    sem_rec = m.decoder_semantic(m.fc1(q.transpose(1, 2)).transpose(1, 2))
    semantic = F.mse_loss(sem_rec, sem.transpose(1, 2)[..., :t])
    return {"audio": y, "codes": codes, "commit": commit, "semantic": semantic}


def snr_db(ref: torch.Tensor, est: torch.Tensor) -> float:
    """Signal-to-noise ratio of ``est`` against ``ref`` in dB (same length)."""
    n = min(ref.shape[-1], est.shape[-1])
    r, e = ref[..., :n].double(), est[..., :n].double()
    return float(10 * torch.log10(r.pow(2).sum() / (r - e).pow(2).sum().clamp(min=1e-12)))


def log_spectral_distance(ref: torch.Tensor, est: torch.Tensor, n_fft: int = 512) -> float:
    """RMS over bins of the log10 power difference (dB), averaged over frames."""
    n = min(ref.shape[-1], est.shape[-1])
    r = _stft_mag(ref[..., :n].reshape(-1, n).float(), n_fft).pow(2)
    e = _stft_mag(est[..., :n].reshape(-1, n).float(), n_fft).pow(2)
    d = 10 * (r.log10() - e.log10())
    return float(d.pow(2).mean(dim=-2).sqrt().mean())
