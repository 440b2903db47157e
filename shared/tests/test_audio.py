"""musiccore.audio: loading, resampling, normalisation, atomic writes, windowed iteration and bad input."""

import math

import numpy as np
import pytest
import soundfile as sf

from musiccore import audio as A
from musiccore.audio import AudioError


def sine(freq, sr, seconds, amp=0.5, phase=0.0):
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def peak_hz(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)]


@pytest.fixture
def stereo(tmp_path):
    """3.3 s stereo float WAV at 44.1 kHz: 440 Hz left, 660 Hz right."""
    sr = 44100
    x = np.stack([sine(440, sr, 3.3), sine(660, sr, 3.3, amp=0.25)])
    path = tmp_path / "stereo.wav"
    sf.write(path, x.T, sr, subtype="FLOAT")
    return path, x, sr


# ------------------------------------------------------------------------------------------ load / info


def test_load_keeps_samples_shape_and_dtype(stereo):
    path, x, sr = stereo
    wav, got_sr = A.load_audio(path)
    assert got_sr == sr and wav.dtype == np.float32 and wav.shape == x.shape
    np.testing.assert_array_equal(wav, x)
    mono, _ = A.load_audio(path, mono=True)
    assert mono.shape == (1, x.shape[1])
    np.testing.assert_allclose(mono[0], x.mean(axis=0), atol=1e-7)


def test_load_excerpt_seeks(stereo):
    path, x, sr = stereo
    wav, _ = A.load_audio(path, offset_s=1.0, duration_s=0.5)
    np.testing.assert_array_equal(wav, x[:, sr : sr + sr // 2])
    with pytest.raises(AudioError, match="no samples at offset"):
        A.load_audio(path, offset_s=10.0)
    # Resampled excerpts have exactly round(duration * rate) samples and match the same span of the whole file.
    full, _ = A.load_audio(path, sample_rate=16000)
    for off, dur in ((0.5, 0.3337), (1.01, 1.0), (0.0, 0.0001)):
        part, _ = A.load_audio(path, sample_rate=16000, offset_s=off, duration_s=dur)
        assert part.shape == (2, round(dur * 16000))
    part, _ = A.load_audio(path, sample_rate=16000, offset_s=1.0, duration_s=1.0)
    # Away from the cut edges (filter transients), the excerpt equals the whole-file resampling.
    np.testing.assert_allclose(part[:, 200:-200], full[:, 16000 + 200 : 32000 - 200], atol=2e-3)
    tail, _ = A.load_audio(path, sample_rate=16000, offset_s=3.0, duration_s=5.0)  # runs past the end: shorter
    assert tail.shape[1] == pytest.approx(0.3 * 16000, abs=2)


@pytest.mark.parametrize("target", [16000, 24000, 48000])
def test_resampling_on_load_keeps_frequency(stereo, target):
    path, x, sr = stereo
    wav, got = A.load_audio(path, sample_rate=target, mono=False)
    assert got == target
    assert wav.shape == (2, math.ceil(x.shape[1] * target / sr))
    for ch, f in ((0, 440), (1, 660)):
        assert abs(peak_hz(wav[ch], target) - f) < 1.0
    # Amplitude survives band-limited resampling (away from the edges).
    assert abs(np.abs(wav[0, target // 2 : -target // 2]).max() - 0.5) < 0.01


def test_resample_function_and_identity():
    x = sine(1000, 48000, 1.0)
    y = A.resample(x, 48000, 22050)
    assert y.shape == (1, 22050) and y.dtype == np.float32
    assert abs(peak_hz(y[0], 22050) - 1000) < 1.0
    same = A.resample(x, 48000, 48000)
    np.testing.assert_array_equal(same[0], x)
    # A tone above the new Nyquist is removed, not aliased.
    hi = A.resample(sine(15000, 48000, 1.0), 48000, 16000)
    assert np.abs(hi[0, 2000:-2000]).max() < 1e-3


@pytest.mark.parametrize("bad", [0, -16000, 10**9, 44100.5, "fast", None])
def test_unsupported_rates_raise(stereo, bad):
    path, x, sr = stereo
    with pytest.raises(AudioError, match="rate"):
        A.resample(x, sr, bad)
    if bad is not None:
        with pytest.raises(AudioError, match="rate") as e:
            A.load_audio(path, sample_rate=bad)
        assert str(path) in str(e.value)


def test_audio_info(stereo):
    path, x, sr = stereo
    info = A.audio_info(path)
    assert (info.frames, info.sample_rate, info.channels) == (x.shape[1], sr, 2)
    assert info.duration == pytest.approx(3.3)
    assert info.format == "WAV" and info.subtype == "FLOAT"


# ------------------------------------------------------------------------------------------ bad files


def test_missing_empty_corrupt_and_non_audio_files(tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="file not found") as e:
        A.load_audio(missing)
    assert str(missing) in str(e.value)
    assert isinstance(e.value, ValueError)

    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        A.load_audio(empty)
    with pytest.raises(AudioError, match="empty"):
        A.audio_info(empty)

    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(AudioError, match="cannot decode") as e:
        A.load_audio(corrupt)
    assert "corrupt.wav" in str(e.value)

    text = tmp_path / "notes.flac"
    text.write_text("this is not audio at all\n" * 20)
    with pytest.raises(AudioError, match="notes.flac: cannot decode"):
        A.audio_info(text)

    with pytest.raises(AudioError, match="directory"):
        A.load_audio(tmp_path)


def test_zero_frames_and_non_finite_samples(tmp_path):
    zero = tmp_path / "zero.wav"
    sf.write(zero, np.zeros((0, 1)), 16000)
    assert A.audio_info(zero).frames == 0
    with pytest.raises(AudioError, match="zero.wav: file has no samples"):
        A.load_audio(zero)
    with pytest.raises(AudioError, match="no samples"):
        list(A.iter_windows(zero, 16000, 1.0))

    nan = tmp_path / "nan.wav"
    x = sine(440, 16000, 0.5)
    x[100] = np.nan
    x[200] = np.inf
    sf.write(nan, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan.wav: .*non-finite samples \(1 NaN, 1 inf\)"):
        A.load_audio(nan)
    with pytest.raises(AudioError, match="non-finite"):
        list(A.iter_windows(nan, 16000, 0.1))
    with pytest.raises(AudioError, match="non-finite"):
        A.write_audio(tmp_path / "out.wav", x, 16000)
    assert not (tmp_path / "out.wav").exists()


# ------------------------------------------------------------------------------------------ write


def test_write_roundtrip_formats_and_atomicity(tmp_path):
    sr = 24000
    x = np.stack([sine(300, sr, 1.0), sine(500, sr, 1.0, amp=0.3)])
    # Float WAV is exact; 16-bit WAV/FLAC are within one quantisation step.
    A.write_audio(tmp_path / "f.wav", x, sr, subtype="FLOAT")
    np.testing.assert_array_equal(A.load_audio(tmp_path / "f.wav")[0], x)
    for name in ("p.wav", "p.flac"):
        A.write_audio(tmp_path / name, x, sr)
        y, got = A.load_audio(tmp_path / name)
        assert got == sr and y.shape == x.shape
        assert np.abs(y - x).max() <= 1.0 / 32768 + 1e-7
        assert A.audio_info(tmp_path / name).subtype == "PCM_16"
    # Only the final files are left: no temporary names.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.wav", "p.flac", "p.wav"]


def test_write_failures_leave_nothing(tmp_path):
    x = sine(440, 16000, 0.2)
    with pytest.raises(AudioError, match="suffix"):
        A.write_audio(tmp_path / "a.xyz", x, 16000)
    with pytest.raises(AudioError, match="rate"):
        A.write_audio(tmp_path / "a.wav", x, 0)
    with pytest.raises(AudioError, match="cannot write subtype"):
        A.write_audio(tmp_path / "a.flac", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="empty"):
        A.write_audio(tmp_path / "a.wav", np.zeros((1, 0)), 16000)
    with pytest.raises(AudioError, match="exceeds 1.0"):
        A.write_audio(tmp_path / "a.wav", 3 * x, 16000, clip=False)
    assert list(tmp_path.iterdir()) == []
    A.write_audio(tmp_path / "a.wav", 3 * x, 16000)  # clip=True: clipped to full scale
    y, _ = A.load_audio(tmp_path / "a.wav")
    assert 0.999 < np.abs(y).max() <= 1.0


def test_lossy_formats_roundtrip(tmp_path):
    """OGG/Vorbis and MP3 (libsndfile >= 1.1) load through the same API; lossy, so compare the spectrum."""
    sr = 44100
    x = sine(440, sr, 1.0)
    for name in ("t.ogg", "t.mp3"):
        if not sf.check_format(name.split(".")[1].upper()):
            pytest.skip(f"libsndfile {sf.__libsndfile_version__} cannot write {name}")
        A.write_audio(tmp_path / name, x, sr)
        y, got = A.load_audio(tmp_path / name, sample_rate=16000, mono=True)
        assert got == 16000 and y.shape[0] == 1
        assert abs(y.shape[1] - 16000) < 0.05 * 16000  # codec padding may add a few ms
        assert abs(peak_hz(y[0], 16000) - 440) < 2.0
        assert abs(A.audio_info(tmp_path / name).duration - 1.0) < 0.05


# ------------------------------------------------------------------------------------------ arrays


def test_to_mono_crop_pad_and_peak():
    x = np.stack([np.ones(10, np.float32), -np.ones(10, np.float32) * 0.5])
    np.testing.assert_allclose(A.to_mono(x), np.full((1, 10), 0.25))
    assert A.to_mono(np.arange(5.0)).shape == (1, 5)

    y = A.crop_or_pad(np.arange(10.0), 4, offset=3)
    np.testing.assert_array_equal(y, [[3, 4, 5, 6]])
    y = A.crop_or_pad(np.arange(10.0), 6, offset=7)
    np.testing.assert_array_equal(y, [[7, 8, 9, 0, 0, 0]])
    assert A.crop_or_pad(x, 3, offset=50).tolist() == [[0, 0, 0], [0, 0, 0]]
    with pytest.raises(AudioError):
        A.crop_or_pad(x, -1)
    with pytest.raises(AudioError):
        A.crop_or_pad(x, 3, offset=-2)
    with pytest.raises(AudioError, match="shape"):
        A.to_mono(np.zeros((1, 2, 3)))

    z = A.peak_normalize(sine(100, 8000, 0.1, amp=0.1), peak=0.9)
    assert np.abs(z).max() == pytest.approx(0.9, abs=1e-6)
    silent = np.zeros((2, 100), np.float32)
    np.testing.assert_array_equal(A.peak_normalize(silent), silent)  # documented: silence is returned unchanged
    with pytest.raises(AudioError, match="non-finite"):
        A.peak_normalize(np.array([0.1, np.nan]))


# ------------------------------------------------------------------------------------------ loudness


def test_k_weighting_matches_bs1770_table_at_48k():
    (b1, a1), (b2, a2) = A.k_weighting_filters(48000)
    np.testing.assert_allclose(b1, [1.53512485958697, -2.69169618940638, 1.19839281085285], atol=1e-10)
    np.testing.assert_allclose(a1, [1.0, -1.69065929318241, 0.73248077421585], atol=1e-10)
    np.testing.assert_allclose(b2, [1.0, -2.0, 1.0])
    np.testing.assert_allclose(a2, [1.0, -1.99004745483398, 0.99007225036621], atol=1e-10)


@pytest.mark.parametrize("sr", [48000, 44100, 16000])
def test_loudness_of_full_scale_sine(sr):
    # BS.1770: a 0 dBFS 997 Hz sine in one channel reads -3.01 LKFS; the same sine in both stereo channels 0.0.
    x = sine(997, sr, 3.0, amp=1.0)
    assert A.loudness(x, sr) == pytest.approx(-3.01, abs=0.5)
    assert A.loudness(x, sr) == pytest.approx(-3.01, abs=0.05)
    assert A.loudness(np.stack([x, x]), sr) == pytest.approx(0.0, abs=0.05)
    # Gain in dB maps one to one onto LU.
    assert A.loudness(x * 0.1, sr) == pytest.approx(-23.01, abs=0.05)


def test_loudness_gating():
    sr = 16000
    tone = sine(997, sr, 2.0, amp=0.5)
    with_gap = np.concatenate([tone, np.zeros(sr * 4, np.float32)])
    # 400 ms blocks every 100 ms: 17 blocks lie inside the 2 s tone, 3 straddle its end (75/50/25 % tone) and pass
    # the gates, the 37 silent ones fall under the absolute gate. Without gating the reading would drop by 4.8 LU.
    expected = A.loudness(tone, sr) + 10 * np.log10((17 + 0.75 + 0.5 + 0.25) / 20)
    assert A.loudness(with_gap, sr) == pytest.approx(expected, abs=0.01)
    # Relative gate: a long passage 30 dB down is dropped, so the loud part alone sets the reading.
    quiet = sine(997, sr, 6.0, amp=0.5 * 10 ** (-30 / 20))
    assert A.loudness(np.concatenate([tone, quiet]), sr) == pytest.approx(expected, abs=0.05)
    assert A.loudness(np.zeros(sr), sr) == float("-inf")


def test_loudness_normalize_and_silence_policy():
    sr = 24000
    x = np.stack([sine(440, sr, 2.0, amp=0.05), sine(880, sr, 2.0, amp=0.02)])
    y = A.loudness_normalize(x, sr, target_lufs=-20.0)
    assert y.shape == x.shape and y.dtype == np.float32
    assert A.loudness(y, sr) == pytest.approx(-20.0, abs=0.01)
    limited = A.loudness_normalize(x, sr, target_lufs=0.0, peak_limit=0.5)
    assert np.abs(limited).max() == pytest.approx(0.5, abs=1e-4)
    short = sine(440, sr, 0.2, amp=0.1)  # shorter than one 400 ms block: measured as one block
    assert A.loudness(A.loudness_normalize(short, sr, -18.0), sr) == pytest.approx(-18.0, abs=0.01)

    silent = np.zeros((1, sr), np.float32)
    with pytest.raises(AudioError, match="silence"):
        A.loudness_normalize(silent, sr)
    np.testing.assert_array_equal(A.loudness_normalize(silent, sr, on_silence="keep"), silent)
    with pytest.raises(AudioError, match="non-finite"):
        A.loudness(np.array([0.0, np.inf, 0.0]), sr)


# ------------------------------------------------------------------------------------------ windows


def test_windows_concatenate_to_the_resampled_file(stereo):
    path, x, sr = stereo
    full, _ = A.load_audio(path, sample_rate=24000, mono=True)
    # Blocks of 0.37 s do not line up with 2 s windows: the resampler stream must still be seamless.
    wins = list(A.iter_windows(path, 24000, 2.0, block_s=0.37))
    assert [s for s, _ in wins] == [0, 48000]
    assert [w.shape for _, w in wins] == [(1, 48000), (1, full.shape[1] - 48000)]
    np.testing.assert_allclose(np.concatenate([w for _, w in wins], axis=1), full, atol=1e-6)


def test_windows_same_rate_exact_overlap_padding_and_tail(stereo):
    path, x, sr = stereo
    wins = list(A.iter_windows(path, sr, 1.0, hop_s=0.5, mono=False, pad_last=True, block_s=0.3))
    starts = [s for s, _ in wins]
    assert starts == [0, 22050, 44100, 66150, 88200, 110250]  # the window at 110250 reaches the end (145530)
    for s, w in wins:
        assert w.shape == (2, sr)
        n = min(sr, x.shape[1] - s)
        np.testing.assert_array_equal(w[:, :n], x[:, s : s + n])  # same rate: bit exact
        assert not w[:, n:].any()  # padding is zeros
    # MARBLE-style: non-overlapping 1 s windows, drop a tail under 0.5 s (3.3 s -> 3 windows, 0.3 s tail dropped).
    wins = list(A.iter_windows(path, sr, 1.0, min_last_s=0.5))
    assert [s for s, _ in wins] == [0, 44100, 88200]
    # A file shorter than one window still yields it (the first window is never dropped).
    wins = list(A.iter_windows(path, 16000, 10.0, min_last_s=5.0))
    assert len(wins) == 1 and wins[0][1].shape == (1, round(3.3 * 16000))


def test_windows_bad_arguments_fail_at_call_time(stereo, tmp_path):
    path, x, sr = stereo
    with pytest.raises(AudioError, match="file not found"):
        A.iter_windows(tmp_path / "missing.wav", 16000, 1.0)
    with pytest.raises(AudioError, match="window_s"):
        A.iter_windows(path, 16000, 0.0)
    with pytest.raises(AudioError, match="hop_s"):
        A.iter_windows(path, 16000, 1.0, hop_s=-1)
    with pytest.raises(AudioError, match="rate"):
        A.iter_windows(path, -5, 1.0)


def test_windows_stop_once_the_end_is_covered(tmp_path):
    # The last complete window ends exactly at the end of the file and of a read block: no redundant tail window.
    path = tmp_path / "ramp.wav"
    x = np.linspace(-0.5, 0.5, 3000, dtype=np.float32)
    A.write_audio(path, x, 1000, subtype="FLOAT")
    wins = list(A.iter_windows(path, 1000, 2.0, hop_s=1.0, block_s=1.0))
    assert [(s, w.shape[1]) for s, w in wins] == [(0, 2000), (1000, 2000)]
    np.testing.assert_array_equal(wins[1][1][0], x[1000:])
    # Hop longer than the window: gaps are skipped, windows stay on the k * hop grid.
    wins = list(A.iter_windows(path, 1000, 0.5, hop_s=1.2, block_s=0.7))
    assert [(s, w.shape[1]) for s, w in wins] == [(0, 500), (1200, 500), (2400, 500)]
    np.testing.assert_array_equal(wins[2][1][0], x[2400:2900])


def test_write_killed_midway_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "keep.wav"
    A.write_audio(path, sine(440, 16000, 0.1), 16000)
    before = path.read_bytes()

    def broken_write(file, data, samplerate, **kw):
        with open(file, "wb") as f:
            f.write(b"RIFF partial")  # a half-written file...
        raise RuntimeError("disk full")  # ...then the writer dies

    monkeypatch.setattr(sf, "write", broken_write)
    with pytest.raises(AudioError, match="keep.wav: cannot write audio"):
        A.write_audio(path, sine(880, 16000, 0.1), 16000)
    assert path.read_bytes() == before  # readers still see the complete old file
    assert [p.name for p in tmp_path.iterdir()] == ["keep.wav"]  # and no temporary file is left
