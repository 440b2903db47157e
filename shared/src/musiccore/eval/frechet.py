"""Fréchet distance between two embedding sets (the FID / FAD statistic).

Each set is summarised by a Gaussian (mean ``mu [D]``, covariance ``sigma [D, D]``); the distance between two
Gaussians is ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``. Used for Fréchet Audio Distance over MERT or
codec embeddings of generated vs reference music.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["embedding_stats", "frechet_distance", "frechet_distance_from_stats"]


def embedding_stats(x) -> tuple[np.ndarray, np.ndarray]:
    """``x [N, D]`` -> ``(mu [D], sigma [D, D])`` (unbiased covariance, float64). Needs N >= 2 finite rows."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {a.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"need at least 2 embeddings to estimate a covariance, got {a.shape[0]}")
    if not np.isfinite(a).all():
        raise ValueError("embeddings contain NaN/inf values")
    return a.mean(axis=0), np.atleast_2d(np.cov(a, rowvar=False))


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    The matrix square root comes from ``scipy.linalg.sqrtm``. When ``sigma1 @ sigma2`` is singular (fewer
    samples than dimensions) and the root is not finite, ``eps`` is added to both diagonals and the root recomputed;
    an imaginary part left by round-off is dropped (a large one raises, it means the inputs are not covariances).
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != mu2.shape or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", s1), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN/inf values")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        log.warning("frechet: singular product of covariances; adding %g to the diagonals", eps)
        offset = np.eye(d) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm gave a large imaginary part ({np.abs(covmean.imag).max():.3g}); are these covariances?")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def frechet_distance(x, y, eps: float = 1e-6) -> float:
    """Fréchet distance between embedding sets ``x [N, D]`` and ``y [M, D]`` (each fitted with a Gaussian)."""
    mu1, s1 = embedding_stats(x)
    mu2, s2 = embedding_stats(y)
    if mu1.shape != mu2.shape:
        raise ValueError(f"embedding dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    return frechet_distance_from_stats(mu1, s1, mu2, s2, eps=eps)
