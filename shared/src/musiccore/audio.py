"""Audio I/O and simple signal helpers: soundfile for files, soxr for resampling, numpy for the rest.

Conventions
-----------
- A waveform is a float32 numpy array shaped ``[C, T]`` (channels first, like torch audio code). Functions that
  take a waveform also accept a 1-D ``[T]`` array and treat it as one channel; they return ``[C, T]``.
- Sample rates are positive integers up to :data:`MAX_SAMPLE_RATE`; anything else is an :class:`AudioError`.
- Every problem with an input file or with samples (missing, empty, corrupt, not audio, NaN/inf, bad rate) raises
  :class:`AudioError`, a ``ValueError`` whose message names the file (when there is one) and the reason.
- Formats: whatever the bundled libsndfile reads. With soundfile 0.14 / libsndfile 1.2.2 that includes WAV, FLAC,
  OGG/Vorbis and MP3 (read and write; MP3 needs libsndfile >= 1.1). MP3 and Vorbis are lossy, so a round trip is
  close to, not equal to, the input.

Silence policy (documented and tested): :func:`peak_normalize` returns an all-zero input unchanged (there is no gain
that gives it a peak); :func:`loudness_normalize` raises :class:`AudioError` on input whose loudness is below the
BS.1770 absolute gate (-70 LUFS), unless ``on_silence="keep"`` asks for it to be returned unchanged.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from musiccore.runs import atomic_path

log = logging.getLogger(__name__)

__all__ = [
    "AudioError",
    "AudioInfo",
    "MAX_CHANNELS",
    "MAX_SAMPLE_RATE",
    "audio_info",
    "load_audio",
    "resample",
    "to_mono",
    "crop_or_pad",
    "peak_normalize",
    "loudness",
    "loudness_normalize",
    "k_weighting_filters",
    "write_audio",
    "iter_windows",
]

#: Highest sample rate accepted anywhere (768 kHz is the highest rate real converters use).
MAX_SAMPLE_RATE = 768_000
#: Most channels :func:`write_audio` writes. More almost always means a ``[T, C]`` array passed as ``[C, T]``
#: (1000 "channels" of 2 samples), which would otherwise be written as a valid but absurd file.
MAX_CHANNELS = 64

# Subtype written when the caller gives none: 16-bit PCM for the lossless formats, the codec for the lossy ones.
_DEFAULT_SUBTYPE = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}
_FORMAT_BY_SUFFIX = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".oga": "OGG", ".mp3": "MP3"}


class AudioError(ValueError):
    """Bad audio input: missing/empty/corrupt file, non-finite samples, unsupported sample rate, ..."""


@dataclass(frozen=True)
class AudioInfo:
    """What :func:`audio_info` reports about a file without decoding it."""

    path: str
    frames: int  # samples per channel
    sample_rate: int
    channels: int
    duration: float  # seconds, frames / sample_rate
    format: str  # libsndfile container, e.g. "WAV", "FLAC", "MP3"
    subtype: str  # libsndfile encoding, e.g. "PCM_16", "FLOAT", "VORBIS"


# --------------------------------------------------------------------------------------------- checks


def _check_rate(sr, what: str = "sample rate", where: str | os.PathLike | None = None) -> int:
    prefix = f"{where}: " if where is not None else ""
    try:
        ok = float(sr) == int(sr)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or isinstance(sr, bool):
        raise AudioError(f"{prefix}{what} must be an integer number of Hz, got {sr!r}")
    sr = int(sr)
    if sr <= 0 or sr > MAX_SAMPLE_RATE:
        raise AudioError(f"{prefix}unsupported {what} {sr} Hz (must be in 1..{MAX_SAMPLE_RATE})")
    return sr


def _as_2d(wav, where: str | os.PathLike | None = None) -> np.ndarray:
    """``[T]`` or ``[C, T]`` -> float32 ``[C, T]`` (a view when possible)."""
    prefix = f"{where}: " if where is not None else ""
    arr = np.asarray(wav)
    if arr.dtype.kind not in "fiu":
        raise AudioError(f"{prefix}waveform must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise AudioError(f"{prefix}waveform must be [T] or [C, T], got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise AudioError(f"{prefix}waveform has no channels (shape {tuple(arr.shape)})")
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4:
        with np.errstate(over="ignore"):
            out = arr.astype(np.float32)
        # finite float64 samples beyond float32's range would turn into inf here and be blamed on the input
        if np.isinf(out).sum() > np.isinf(arr).sum():
            big = float(np.abs(arr[np.isfinite(arr)]).max())
            raise AudioError(f"{prefix}waveform has samples up to {big:.3g}, beyond the float32 range")
        return out
    return arr.astype(np.float32, copy=False)


def _check_finite(wav: np.ndarray, where: str | os.PathLike | None = None) -> None:
    if not np.isfinite(wav).all():
        n_nan = int(np.isnan(wav).sum())
        n_inf = int(np.isinf(wav).sum())
        prefix = f"{where}: " if where is not None else ""
        raise AudioError(f"{prefix}waveform has non-finite samples ({n_nan} NaN, {n_inf} inf)")


def _open_error(path: Path, exc: Exception) -> AudioError:
    msg = str(exc)
    # soundfile repeats the path in its message ("Error opening '<path>': <reason>"); keep only the reason.
    prefix = f"Error opening {str(path)!r}: "
    if msg.startswith(prefix):
        msg = msg[len(prefix) :].strip() or msg
    return AudioError(f"{path}: cannot decode audio ({msg})")


def _check_path(path) -> Path:
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: file not found")
    if p.is_dir():
        raise AudioError(f"{p}: is a directory, not an audio file")
    if p.stat().st_size == 0:
        raise AudioError(f"{p}: file is empty (0 bytes)")
    return p


def _open(path):
    """Open ``path`` for reading with soundfile, turning every failure into an :class:`AudioError`."""
    import soundfile as sf

    p = _check_path(path)
    try:
        f = sf.SoundFile(str(p))
    except (sf.SoundFileError, RuntimeError, TypeError) as e:
        raise _open_error(p, e) from e
    try:
        _check_rate(f.samplerate, "file sample rate", p)
        if f.channels <= 0:
            raise AudioError(f"{p}: file reports {f.channels} channels")
    except AudioError:
        f.close()
        raise
    return p, f


# --------------------------------------------------------------------------------------------- files


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Header facts of an audio file (frames, rate, channels, duration) without decoding the samples.

    Raises :class:`AudioError` for a missing, empty or undecodable file. A file whose header says 0 frames is
    reported as is (``frames=0``); :func:`load_audio` is the one that refuses it.
    """
    p, f = _open(path)
    with f:
        frames = int(f.frames)
        return AudioInfo(
            path=str(p),
            frames=frames,
            sample_rate=int(f.samplerate),
            channels=int(f.channels),
            duration=frames / float(f.samplerate),
            format=str(f.format),
            subtype=str(f.subtype),
        )


def load_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    mono: bool = False,
    *,
    offset_s: float = 0.0,
    duration_s: float | None = None,
    quality: str = "HQ",
) -> tuple[np.ndarray, int]:
    """Decode an audio file into float32 ``[C, T]``.

    Args:
        path: wav/flac/ogg/mp3 (anything libsndfile reads).
        sample_rate: resample to this rate (soxr, ``quality``); ``None`` keeps the file's rate.
        mono: average the channels into ``[1, T]``.
        offset_s / duration_s: read only this excerpt (seeks, so a long file is not decoded whole). The excerpt
            starts at file frame ``round(offset_s * file_rate)``; when it lies inside the file the result has
            exactly ``round(duration_s * rate)`` samples at the output rate (fewer when the file ends first).
        quality: soxr quality recipe ("VHQ", "HQ", "MQ", "LQ", "QQ").

    Returns:
        ``(wav [C, T] float32, sample_rate)``.

    Raises:
        AudioError: missing/empty/corrupt file, no samples (or an excerpt past the end), NaN/inf samples,
            unsupported sample rate.
    """
    if sample_rate is not None:
        sample_rate = _check_rate(sample_rate, "requested sample rate", path)
    if offset_s < 0 or (duration_s is not None and duration_s <= 0):
        raise AudioError(f"{path}: offset_s must be >= 0 and duration_s > 0 (got {offset_s}, {duration_s})")
    p, f = _open(path)
    with f:
        sr = int(f.samplerate)
        start = int(round(offset_s * sr))
        n = -1 if duration_s is None else max(1, int(round(duration_s * sr)))
        if start and start >= f.frames:
            raise AudioError(f"{p}: file has no samples at offset {offset_s} s (it lasts {f.frames / sr:.3f} s)")
        try:
            if start:
                f.seek(start)
            data = f.read(frames=n, dtype="float32", always_2d=True)  # [T, C]
        except (RuntimeError, ValueError) as e:  # libsndfile decode errors are RuntimeErrors; bad seeks ValueErrors
            raise AudioError(f"{p}: cannot decode audio ({e})") from e
    if data.shape[0] == 0:
        what = "no samples" if start == 0 else f"no samples at offset {offset_s} s"
        raise AudioError(f"{p}: file has {what}")
    wav = np.ascontiguousarray(data.T)
    _check_finite(wav, p)
    if mono:
        wav = to_mono(wav)
    if sample_rate is not None and sample_rate != sr:
        full = n > 0 and data.shape[0] == n  # the excerpt did not run into the end of the file
        n_in = wav.shape[1]
        wav = resample(wav, sr, sample_rate, quality=quality)
        if wav.shape[1] == 0:  # soxr gives nothing for e.g. 1 sample at 44.1 kHz -> 16 kHz
            raise AudioError(f"{p}: {n_in} sample(s) at {sr} Hz are too short to resample to {sample_rate} Hz")
        sr = sample_rate
        if full:
            # Exactly round(duration_s * sample_rate) samples, whatever the rounding of the file-rate excerpt.
            wav = crop_or_pad(wav, int(round(duration_s * sr)))
    return wav, sr


def write_audio(
    path: str | os.PathLike,
    wav,
    sample_rate: int,
    *,
    subtype: str | None = None,
    clip: bool = True,
) -> Path:
    """Write ``wav`` (``[C, T]`` or ``[T]``) atomically: a reader never sees a half-written file.

    The container follows the suffix (.wav, .flac, .ogg, .mp3). ``subtype`` defaults to PCM_16 for WAV and
    FLAC; pass ``"FLOAT"`` (WAV only) to keep float32 samples exactly. Integer subtypes cannot hold samples
    outside [-1, 1]: with ``clip=True`` they are clipped (and a warning is logged), otherwise an
    :class:`AudioError` is raised.
    """
    import soundfile as sf

    p = Path(path)
    fmt = _FORMAT_BY_SUFFIX.get(p.suffix.lower())
    if fmt is None:
        raise AudioError(f"{p}: unsupported output suffix {p.suffix!r} (use one of {sorted(_FORMAT_BY_SUFFIX)})")
    sr = _check_rate(sample_rate, "sample rate", p)
    x = _as_2d(wav, p)
    if x.shape[0] > MAX_CHANNELS:
        raise AudioError(f"{p}: {x.shape[0]} channels of {x.shape[1]} samples (at most {MAX_CHANNELS}); waveforms are "
                         f"[C, T], transpose a [T, C] array")
    if x.shape[1] == 0:
        raise AudioError(f"{p}: refusing to write an empty waveform (0 samples)")
    _check_finite(x, p)
    subtype = subtype or _DEFAULT_SUBTYPE[fmt]
    if not sf.check_format(fmt, subtype):
        raise AudioError(f"{p}: libsndfile cannot write subtype {subtype!r} in format {fmt}")
    peak = float(np.abs(x).max())
    if peak > 1.0 and subtype not in ("FLOAT", "DOUBLE"):
        if not clip:
            raise AudioError(f"{p}: peak {peak:.3f} exceeds 1.0 and subtype {subtype} cannot hold it (clip=False)")
        log.warning("%s: peak %.3f > 1.0, clipping for subtype %s", p, peak, subtype)
        x = np.clip(x, -1.0, 1.0)
    with atomic_path(p) as tmp:
        try:
            sf.write(str(tmp), x.T, sr, format=fmt, subtype=subtype)
        except (sf.SoundFileError, RuntimeError) as e:
            raise AudioError(f"{p}: cannot write audio ({e})") from e
    return p


# --------------------------------------------------------------------------------------------- arrays


def resample(wav, orig_sr: int, target_sr: int, quality: str = "HQ") -> np.ndarray:
    """Band-limited resampling with soxr: ``[C, T]`` (or ``[T]``) at ``orig_sr`` -> float32 ``[C, T']``.

    ``T'`` is about ``T * target_sr / orig_sr`` (soxr's rounding: it can be one less than the ceiling, and 0 for a
    single sample when downsampling). Equal rates return a float32 copy.
    """
    import soxr

    orig_sr = _check_rate(orig_sr, "source sample rate")
    target_sr = _check_rate(target_sr, "target sample rate")
    x = _as_2d(wav)
    if orig_sr == target_sr:
        return x.copy()
    if x.shape[1] == 0:
        return np.zeros((x.shape[0], 0), np.float32)
    y = soxr.resample(np.ascontiguousarray(x.T), orig_sr, target_sr, quality=quality)  # [T', C]
    return np.ascontiguousarray(y.T, dtype=np.float32)


def to_mono(wav) -> np.ndarray:
    """Average the channels: ``[C, T]`` (or ``[T]``) -> ``[1, T]`` float32."""
    x = _as_2d(wav)
    if x.shape[0] == 1:
        return x.copy()
    return x.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)


def crop_or_pad(wav, length: int, offset: int = 0) -> np.ndarray:
    """Take ``length`` samples starting at ``offset``; zero-pad at the end when the input runs out.

    ``[C, T]`` (or ``[T]``) -> ``[C, length]``. ``offset`` past the end gives all zeros.
    """
    if int(length) != length or length < 0:
        raise AudioError(f"length must be a non-negative integer, got {length!r}")
    if int(offset) != offset or offset < 0:
        raise AudioError(f"offset must be a non-negative integer, got {offset!r}")
    length, offset = int(length), int(offset)
    x = _as_2d(wav)
    out = np.zeros((x.shape[0], length), np.float32)
    piece = x[:, offset : offset + length]
    out[:, : piece.shape[1]] = piece
    return out


def peak_normalize(wav, peak: float = 1.0) -> np.ndarray:
    """Scale so that ``max |x| == peak`` (linear, e.g. 0.99). All-zero input comes back unchanged (a copy)."""
    if not (0.0 < peak <= 1e3) or not math.isfinite(peak):
        raise AudioError(f"peak must be a positive finite amplitude, got {peak!r}")
    x = _as_2d(wav)
    _check_finite(x)
    cur = float(np.abs(x).max()) if x.size else 0.0
    if cur == 0.0:
        return x.copy()
    return (x * np.float32(peak / cur)).astype(np.float32)


# --------------------------------------------------------------------------------------------- loudness

# ITU-R BS.1770-4 K-weighting, given as analog prototypes so the filters can be built for any sample rate. At 48 kHz
# they give the coefficients tabulated in the standard (tested). Stage 1 is a high shelf (+4 dB, head effects),
# stage 2 the "RLB" high-pass.
_SHELF_F0, _SHELF_GAIN_DB, _SHELF_Q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
_HP_F0, _HP_Q = 38.13547087602444, 0.5003270373238773
_ABS_GATE_LUFS = -70.0
_REL_GATE_LU = -10.0


def k_weighting_filters(sample_rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two BS.1770 K-weighting biquads ``[(b, a), (b, a)]`` for ``sample_rate`` (bilinear transform)."""
    sr = _check_rate(sample_rate)
    k = math.tan(math.pi * _SHELF_F0 / sr)
    vh = 10.0 ** (_SHELF_GAIN_DB / 20.0)
    vb = vh**0.4996667741545416  # band gain of the shelf's low edge
    a0 = 1.0 + k / _SHELF_Q + k * k
    b1 = np.array([(vh + vb * k / _SHELF_Q + k * k), 2.0 * (k * k - vh), (vh - vb * k / _SHELF_Q + k * k)]) / a0
    a1 = np.array([a0, 2.0 * (k * k - 1.0), 1.0 - k / _SHELF_Q + k * k]) / a0
    k = math.tan(math.pi * _HP_F0 / sr)
    a0 = 1.0 + k / _HP_Q + k * k
    b2 = np.array([1.0, -2.0, 1.0])
    a2 = np.array([a0, 2.0 * (k * k - 1.0), 1.0 - k / _HP_Q + k * k]) / a0
    return [(b1, a1), (b2, a2)]


def _channel_weights(n_channels: int, weights: Sequence[float] | None) -> np.ndarray:
    if weights is None:
        # BS.1770: L, R, C weigh 1.0; the surround pair of a 5-channel (L R C Ls Rs) layout 1.41; 5.1 layouts
        # (L R C LFE Ls Rs) drop the LFE. Other channel counts: all 1.0.
        if n_channels == 5:
            return np.array([1.0, 1.0, 1.0, 1.41, 1.41])
        if n_channels == 6:
            return np.array([1.0, 1.0, 1.0, 0.0, 1.41, 1.41])
        return np.ones(n_channels)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_channels,) or (w < 0).any():
        raise AudioError(f"channel_weights must be {n_channels} non-negative numbers, got {weights!r}")
    return w


def loudness(wav, sample_rate: int, channel_weights: Sequence[float] | None = None) -> float:
    """Integrated loudness in LUFS after ITU-R BS.1770-4 (K-weighting, 400 ms blocks with 75 % overlap,
    absolute gate -70 LUFS, relative gate -10 LU).

    ``wav`` is ``[C, T]`` or ``[T]``. A signal shorter than one 400 ms block is measured as one block over its
    whole length (the standard leaves it undefined). Silence (every block under the absolute gate) gives
    ``-inf``. A full-scale 997 Hz sine on one channel reads -3.01 LUFS.
    """
    from scipy.signal import lfilter

    sr = _check_rate(sample_rate)
    if sr <= 2 * _SHELF_F0:  # the K-weighting shelf must lie below Nyquist (also: no 400 ms block under 1 sample)
        raise AudioError(f"cannot measure loudness at {sr} Hz (BS.1770 K-weighting needs more than "
                         f"{2 * _SHELF_F0:.0f} Hz)")
    x = _as_2d(wav).astype(np.float64)
    _check_finite(x)
    n = x.shape[1]
    if n == 0:
        raise AudioError("cannot measure the loudness of an empty waveform")
    for b, a in k_weighting_filters(sr):
        x = lfilter(b, a, x, axis=1)
    block = int(round(0.4 * sr))
    step = int(round(0.1 * sr))
    if n < block:
        z = np.mean(x**2, axis=1, keepdims=True)  # [C, 1]
    else:
        # Block mean squares from a cumulative sum: O(T) however many blocks overlap.
        csum = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(x**2, axis=1)], axis=1)
        starts = np.arange(0, n - block + 1, step)
        z = (csum[:, starts + block] - csum[:, starts]) / block  # [C, J]
    g = _channel_weights(x.shape[0], channel_weights)
    power = g @ z  # [J]
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10.0 * np.log10(power)
    keep = block_lufs > _ABS_GATE_LUFS
    if not keep.any():
        return float("-inf")
    rel_gate = -0.691 + 10.0 * math.log10(power[keep].mean()) + _REL_GATE_LU
    keep &= block_lufs > rel_gate
    return float(-0.691 + 10.0 * math.log10(power[keep].mean()))


def loudness_normalize(
    wav,
    sample_rate: int,
    target_lufs: float = -23.0,
    *,
    peak_limit: float | None = None,
    on_silence: str = "raise",
    channel_weights: Sequence[float] | None = None,
) -> np.ndarray:
    """Apply one gain so the integrated loudness (see :func:`loudness`) becomes ``target_lufs``.

    Args:
        wav: ``[C, T]`` or ``[T]``.
        target_lufs: e.g. -23 (EBU R128 broadcast) or -14 (streaming).
        peak_limit: if set, lower the gain so ``max |x| <= peak_limit`` (the result is then quieter than the
            target; a warning is logged).
        on_silence: ``"raise"`` (default) -> :class:`AudioError` when the input is below the -70 LUFS absolute gate;
            ``"keep"`` -> return it unchanged.

    Returns:
        float32 ``[C, T]``.
    """
    if on_silence not in ("raise", "keep"):
        raise ValueError(f"on_silence must be 'raise' or 'keep', got {on_silence!r}")
    if not math.isfinite(target_lufs):
        raise AudioError(f"target_lufs must be finite, got {target_lufs!r}")
    x = _as_2d(wav)
    current = loudness(x, sample_rate, channel_weights)
    if not math.isfinite(current):
        if on_silence == "keep":
            return x.copy()
        raise AudioError("cannot loudness-normalise silence (loudness below the -70 LUFS gate)")
    gain = 10.0 ** ((target_lufs - current) / 20.0)
    if peak_limit is not None:
        peak = float(np.abs(x).max())
        if peak * gain > peak_limit:
            log.warning("loudness_normalize: gain %.2f dB limited by peak_limit %.3f", 20 * math.log10(gain), peak_limit)
            gain = peak_limit / peak
    return (x.astype(np.float64) * gain).astype(np.float32)


# --------------------------------------------------------------------------------------------- windows


def iter_windows(
    path: str | os.PathLike,
    sample_rate: int,
    window_s: float,
    hop_s: float | None = None,
    mono: bool = True,
    *,
    pad_last: bool = False,
    min_last_s: float = 0.0,
    block_s: float = 10.0,
    quality: str = "HQ",
) -> Iterator[tuple[int, np.ndarray]]:
    """Stream fixed windows of a long file at ``sample_rate`` without loading it whole.

    The file is read in blocks of ``block_s`` seconds and resampled by one soxr stream, so the concatenated output
    equals ``load_audio(path, sample_rate, mono)`` sample for sample. Window ``k`` covers target-rate samples
    ``[k*H, k*H + W)`` with ``W = round(window_s * sample_rate)`` and ``H = round(hop_s * sample_rate)``
    (``hop_s`` defaults to ``window_s``: non-overlapping windows), so boundaries are exact in the target rate.
    Windows are emitted until one reaches the end of the file. The last one can be shorter than ``W``: it is
    dropped if shorter than ``min_last_s`` seconds (MARBLE drops tails under 1 s; the first window is never
    dropped), and zero-padded to ``W`` when ``pad_last`` is true.

    Yields:
        ``(start_sample, wav [C, W])`` with ``start_sample`` in the target rate; ``C`` is 1 when ``mono``.

    Raises:
        AudioError: at call time for a missing/undecodable file or bad rate/window; while iterating for
            samples that cannot be decoded or are NaN/inf.
    """
    sr_out = _check_rate(sample_rate, "requested sample rate", path)
    if not (window_s > 0 and math.isfinite(window_s)):
        raise AudioError(f"{path}: window_s must be > 0, got {window_s!r}")
    hop_s = window_s if hop_s is None else hop_s
    if not (hop_s > 0 and math.isfinite(hop_s)):
        raise AudioError(f"{path}: hop_s must be > 0, got {hop_s!r}")
    win = int(round(window_s * sr_out))
    hop = int(round(hop_s * sr_out))
    if win < 1 or hop < 1:
        raise AudioError(f"{path}: window/hop of {window_s}/{hop_s} s is under one sample at {sr_out} Hz")
    min_last = int(round(min_last_s * sr_out))
    # Fail now (not at the first next()) on a missing or undecodable file.
    p, f = _open(path)
    f.close()
    return _windows(p, sr_out, win, hop, mono, pad_last, min_last, block_s, quality)


def _windows(p, sr_out, win, hop, mono, pad_last, min_last, block_s, quality):
    import soxr

    p, f = _open(p)
    with f:
        sr_in = int(f.samplerate)
        n_ch = 1 if mono else int(f.channels)
        stream = None if sr_in == sr_out else soxr.ResampleStream(sr_in, sr_out, n_ch, dtype="float32", quality=quality)
        block = max(1, int(round(block_s * sr_in)))
        buf = np.zeros((n_ch, 0), np.float32)  # target-rate samples from buf_start onwards
        buf_start = 0  # target-rate index of buf[:, 0]
        next_start = 0  # start of the next window to emit
        covered = 0  # end of the last emitted window
        total_in = 0
        done = False
        while not done:
            try:
                data = f.read(frames=block, dtype="float32", always_2d=True)  # [t, C]
            except (RuntimeError, ValueError) as e:
                raise AudioError(f"{p}: cannot decode audio at frame {total_in} ({e})") from e
            done = data.shape[0] < block
            total_in += data.shape[0]
            if not np.isfinite(data).all():
                raise AudioError(f"{p}: non-finite samples (NaN/inf) near frame {total_in}")
            if mono and data.shape[1] > 1:
                data = data.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
            if stream is not None:
                data = stream.resample_chunk(np.ascontiguousarray(data), last=done)
            if data.shape[0]:
                buf = np.concatenate([buf, data.T], axis=1)
            end = buf_start + buf.shape[1]  # target-rate samples available so far
            # Emit every window that is complete; at the end also the partial last one.
            while next_start + win <= end or (done and next_start < end and covered < end):
                s = next_start - buf_start
                w = buf[:, s : s + win]
                last = next_start + win >= end and done
                if last and w.shape[1] < win:
                    if w.shape[1] < min_last and next_start > 0:
                        break
                    if pad_last:
                        w = crop_or_pad(w, win)
                covered = next_start + win
                yield next_start, np.array(w, dtype=np.float32, copy=True)
                if next_start + win >= end and done:
                    next_start = end  # this window reached the end: stop
                    break
                next_start += hop
            # Drop samples no future window needs.
            drop = min(max(0, next_start - buf_start), buf.shape[1])
            if drop:
                buf = buf[:, drop:]
                buf_start += drop
        if total_in == 0:
            raise AudioError(f"{p}: file has no samples")
        if covered == 0:  # every input sample was consumed by the resampler without one coming out
            raise AudioError(f"{p}: {total_in} sample(s) at {sr_in} Hz are too short to resample to {sr_out} Hz")
