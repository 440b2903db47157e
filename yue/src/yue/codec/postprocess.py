"""YuE's final low-band replacement (``post_process_audio.replace_low_freq_with_energy_matched``).

output = lowpass(resample(codec_16k, 44.1k)) * (rms(lowpass(vocos_44k)) / rms(lowpass(codec_44k))) + highpass(vocos_44k)

Both filters are the RBJ biquads torchaudio's ``lowpass_biquad``/``highpass_biquad`` use (Q = 0.707, one pass,
output clamped to [-1, 1] as torchaudio's ``lfilter`` does by default); the RMS is global over channels and time;
lengths are trimmed to the shorter signal. Upstream's docstring says 48 kHz; the rate is 44.1 kHz.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["biquad_coeffs", "biquad", "replace_low_freq_with_energy_matched"]


def biquad_coeffs(kind: str, sample_rate: int, cutoff: float, q: float = 0.707) -> tuple[np.ndarray, np.ndarray]:
    """``(b, a)`` of an RBJ low- or high-pass biquad, normalised so ``a[0] == 1``."""
    w0 = 2 * math.pi * cutoff / sample_rate
    alpha = math.sin(w0) / 2 / q
    cos = math.cos(w0)
    if kind == "lowpass":
        b = np.array([(1 - cos) / 2, 1 - cos, (1 - cos) / 2])
    elif kind == "highpass":
        b = np.array([(1 + cos) / 2, -(1 + cos), (1 + cos) / 2])
    else:
        raise ValueError(f"kind must be 'lowpass' or 'highpass', got {kind!r}")
    a = np.array([1 + alpha, -2 * cos, 1 - alpha])
    return b / a[0], a / a[0]


def biquad(x: np.ndarray, kind: str, sample_rate: int, cutoff: float, clamp: bool = True) -> np.ndarray:
    """Filter ``x [..., T]`` along time."""
    from scipy.signal import lfilter

    b, a = biquad_coeffs(kind, sample_rate, cutoff)
    y = lfilter(b, a, np.asarray(x, dtype=np.float64), axis=-1)
    return np.clip(y, -1.0, 1.0) if clamp else y


def replace_low_freq_with_energy_matched(
    codec_wav: np.ndarray, codec_sr: int, vocos_wav: np.ndarray, vocos_sr: int, cutoff: float = 5500.0,
    eps: float = 1e-10,
) -> np.ndarray:  # fmt: skip
    """Combine the codec's low band (energy-matched) with the Vocos output's high band.

    Args:
        codec_wav: ``[C, N]`` or ``[N]`` codec decode (16 kHz).
        vocos_wav: ``[C, M]`` or ``[M]`` upsampler output (44.1 kHz).

    Returns:
        ``[C, min(len)]`` float32 at ``vocos_sr``.
    """
    a = np.atleast_2d(np.asarray(codec_wav, dtype=np.float32))
    b = np.atleast_2d(np.asarray(vocos_wav, dtype=np.float32))
    if codec_sr != vocos_sr:
        import soxr

        a = np.stack([soxr.resample(ch, codec_sr, vocos_sr, quality="HQ") for ch in a]).astype(np.float32)
    a_low = biquad(a, "lowpass", vocos_sr, cutoff)
    b_low = biquad(b, "lowpass", vocos_sr, cutoff)
    scale = (math.sqrt(float(np.mean(b_low**2))) + eps) / (math.sqrt(float(np.mean(a_low**2))) + eps)
    b_high = biquad(b, "highpass", vocos_sr, cutoff)
    n = min(a_low.shape[-1], b_high.shape[-1])
    return (a_low[..., :n] * scale + b_high[..., :n]).astype(np.float32)
