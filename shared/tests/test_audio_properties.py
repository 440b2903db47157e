"""musiccore.audio under generated bad input (issue 12): arrays (NaN/inf/empty/huge values, integer and other dtypes,
channel layouts, bad sample rates) and files (random bytes, truncated and corrupted headers).

Promise checked: an :class:`AudioError` whose message names the file (when there is one), or a valid result
(float32 ``[C, T]``, finite, the documented shape); a refused write leaves no file and no temporary file behind.
"""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from musiccore import audio as A  # noqa: E402
from musiccore.audio import AudioError  # noqa: E402
from musiccore.testing import property_settings  # noqa: E402

DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.int16, np.int32, np.uint8, np.int8, np.bool_,
                          np.complex64])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40)
RATES = st.one_of(st.sampled_from([8000, 16000, 22050, 44100, 48000]), st.integers(-10, 10**7), st.floats(),
                  st.sampled_from([True, None, "16000", 16000.5, 768_001]))


@st.composite
def waveforms(draw):
    dtype = np.dtype(draw(DTYPES))
    shape = draw(SHAPES)
    if dtype.kind == "f":
        elems = st.floats(width=min(64, dtype.itemsize * 8), allow_nan=True, allow_infinity=True)
    else:
        elems = None  # every value of the dtype (huge ints included)
    return draw(hnp.arrays(dtype, shape, elements=elems))


def _expected_2d(x: np.ndarray) -> tuple[int, int] | None:
    """The ``[C, T]`` shape a valid write keeps, None when the input is no waveform at all."""
    if x.dtype.kind not in "fiu" or x.ndim not in (1, 2):
        return None
    return (1, x.shape[0]) if x.ndim == 1 else x.shape


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@property_settings(40)
@given(waveforms(), RATES, st.sampled_from([".wav", ".flac"]), st.sampled_from([None, "FLOAT", "PCM_16"]))
def test_write_audio_writes_a_loadable_file_or_raises_leaving_nothing(x, sr, suffix, subtype):
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / f"out{suffix}"
        try:
            A.write_audio(out, x, sr, subtype=subtype)
        except AudioError as e:
            assert str(out) in str(e)  # the message names the file
            assert _leftovers(Path(d)) == []  # no partial output, no temporary file
            return
        assert _leftovers(Path(d)) == [out.name]
        shape = _expected_2d(x)
        assert shape is not None and shape[1] > 0 and 0 < shape[0] <= A.MAX_CHANNELS
        assert np.isfinite(x.astype(np.float64)).all()
        y, got_sr = A.load_audio(out)
        assert y.dtype == np.float32 and y.shape == shape and got_sr == int(sr)
        assert np.isfinite(y).all() and np.abs(y).max() <= 1.0 + 1e-6 or subtype == "FLOAT"


@property_settings(25)
@given(waveforms(), RATES, RATES)
def test_array_helpers_return_finite_float32_2d_or_raise(x, sr_in, sr_out):
    shape = _expected_2d(x)
    for fn in (lambda: A.to_mono(x), lambda: A.crop_or_pad(x, 50, offset=3), lambda: A.peak_normalize(x, 0.9),
               lambda: A.resample(x, sr_in, sr_out), lambda: A.loudness(x, sr_in)):
        try:
            y = fn()
        except AudioError:
            continue
        assert shape is not None and shape[0] > 0  # a non-waveform never comes back as a result
        if isinstance(y, float):  # loudness: LUFS or -inf for silence
            assert math.isfinite(y) or y == -math.inf
            continue
        assert y.dtype == np.float32 and y.ndim == 2 and y.shape[0] in (1, shape[0])


def _wav_bytes(n_ch: int, frames: int, sr: int, subtype: str) -> bytes:
    buf = io.BytesIO()
    t = np.arange(frames) / sr
    sf.write(buf, np.stack([np.sin(2 * np.pi * 440 * (c + 1) * t) * 0.5 for c in range(n_ch)], 1), sr,
             format="WAV", subtype=subtype)
    return buf.getvalue()


@st.composite
def audio_files(draw):
    """(suffix, bytes): random bytes, or a real WAV/FLAC that is truncated and/or has header bytes overwritten."""
    suffix = draw(st.sampled_from([".wav", ".flac", ".ogg", ".mp3"]))
    kind = draw(st.sampled_from(["random", "truncated", "corrupt", "intact"]))
    if kind == "random":
        return suffix, draw(st.binary(max_size=300))
    n_ch, frames = draw(st.integers(1, 3)), draw(st.integers(0, 400))
    sr = draw(st.sampled_from([8000, 16000, 44100]))
    subtype = draw(st.sampled_from(["PCM_16", "PCM_24", "FLOAT", "ULAW"]))
    data = bytearray(_wav_bytes(n_ch, frames, sr, subtype))
    if kind in ("truncated", "corrupt") and data:
        if draw(st.booleans()) or kind == "truncated":
            data = data[: draw(st.integers(0, len(data)))]
        if kind == "corrupt" and data:
            for _ in range(draw(st.integers(1, 4))):
                i = draw(st.integers(0, min(len(data), 60) - 1))  # the header: format, channels, rate, sizes
                data[i] = draw(st.integers(0, 255))
    return ".wav", bytes(data)


@property_settings(60)
@given(audio_files(), st.sampled_from([None, 16000, 0, -5, 10**9]), st.booleans())
def test_reading_any_bytes_gives_audio_or_an_error_naming_the_file(f, sr, mono):
    suffix, data = f
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"in{suffix}"
        p.write_bytes(data)
        try:
            info = A.audio_info(p)
            assert info.frames >= 0 and info.channels > 0 and 0 < info.sample_rate <= A.MAX_SAMPLE_RATE
        except AudioError as e:
            assert str(p) in str(e)
        try:
            y, got = A.load_audio(p, sr, mono)
        except AudioError as e:
            assert str(p) in str(e) or (sr is not None and "sample rate" in str(e))
        else:
            assert y.dtype == np.float32 and y.ndim == 2 and y.shape[1] > 0 and np.isfinite(y).all()
            assert got == (sr or got) and (not mono or y.shape[0] == 1)
        try:
            wins = list(A.iter_windows(p, 16000, 0.01, mono=mono))
        except AudioError as e:
            assert str(p) in str(e)
        else:
            assert wins and all(w.dtype == np.float32 and np.isfinite(w).all() for _, w in wins)
        assert p.read_bytes() == data  # input never modified


def test_write_refuses_a_channels_last_array_and_names_the_layout(tmp_path):
    """[T, C] passed where [C, T] belongs (1000 "channels" of 2 samples) is refused instead of written."""
    x = np.zeros((1000, 2), np.float32)
    with pytest.raises(AudioError, match=r"out.wav: 1000 channels .*\[C, T\]"):
        A.write_audio(tmp_path / "out.wav", x, 16000)
    assert list(tmp_path.iterdir()) == []
