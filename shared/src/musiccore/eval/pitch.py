"""Sung-pitch accuracy of a vocal track against its score notes, with librosa's pYIN f0 tracker.

The score is a list of ``(start_s, end_s, midi)`` notes (a MIDI number may be fractional). pYIN gives an f0 and a
voiced flag every ``hop`` seconds. Frames whose centre lies inside a note (minus ``trim_s`` at both ends, where
onsets, consonants and glides live) are the *note frames*; each has an expected pitch ``midi + 12 * octave_offset``.

- ``voicing_recall``: note frames that pYIN calls voiced / note frames.
- ``accuracy``: voiced note frames whose f0 is within ``tolerance_cents`` (50) of the expected pitch / voiced note
  frames (how well the pitch is sung where something is sung).
- ``mean_abs_cents``: mean |f0 - expected| in cents over the voiced note frames.
- ``raw_pitch_accuracy``: within-tolerance voiced note frames / all note frames (mir_eval's raw pitch accuracy with
  the score as reference; equals ``accuracy * voicing_recall``).

Festival's singing mode renders one octave below the written note name (specs/offline-data.md §3): score a
Festival rendering of plain note names with ``octave_offset=-1``. The offline data kit already compensates (it writes
the name of ``m + 12`` to get MIDI ``m`` sung) and its ``midi`` fields are the sung pitch, so kit songs use
``octave_offset=0``.

Cost: pYIN's Viterbi dominates; on this 2-core machine 8 s of 16 kHz audio took about 3-5 s (``resolution=0.1``)
with other jobs running, and the first call in a fresh environment pays librosa's numba compilation (about a minute).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["PitchResult", "pitch_accuracy", "midi_to_hz"]


@dataclass(frozen=True)
class PitchResult:
    accuracy: float  # within-tolerance fraction of voiced note frames (0.0 when none is voiced)
    mean_abs_cents: float  # over voiced note frames (NaN when none is voiced)
    voicing_recall: float  # voiced note frames / note frames
    raw_pitch_accuracy: float  # within-tolerance voiced note frames / note frames
    n_note_frames: int
    n_voiced_frames: int
    octave_offset: int


def midi_to_hz(midi) -> np.ndarray:
    """MIDI note number (A4 = 69 = 440 Hz; fractional allowed) -> Hz."""
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def _check_notes(notes) -> np.ndarray:
    arr = []
    for i, n in enumerate(notes):
        try:
            start, end, midi = (float(v) for v in n)
        except (TypeError, ValueError) as e:
            raise ValueError(f"note {i}: expected (start_s, end_s, midi), got {n!r}") from e
        if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
            raise ValueError(f"note {i}: need 0 <= start < end, got start={start}, end={end}")
        if not 0 <= midi <= 127:
            raise ValueError(f"note {i}: midi {midi} outside 0..127")
        arr.append((start, end, midi))
    if not arr:
        raise ValueError("no score notes given")
    return np.array(arr, np.float64)


def pitch_accuracy(
    audio,
    sample_rate: int,
    notes: Sequence[tuple[float, float, float]],
    *,
    octave_offset: int = 0,
    tolerance_cents: float = 50.0,
    trim_s: float = 0.05,
    fmin: float | None = None,
    fmax: float | None = None,
    hop_s: float = 0.01,
    resolution: float = 0.1,
) -> PitchResult:
    """Score a sung track against its notes (see the module doc for the definitions).

    Args:
        audio: waveform ``[T]``, ``[1, T]`` or ``[C, T]`` (channels are averaged).
        sample_rate: Hz.
        notes: ``(start_s, end_s, midi)`` per score note, times relative to the audio's start.
        octave_offset: octaves added to the score pitch to get the expected sung pitch (Festival: -1).
        tolerance_cents: a frame counts as correct within this many cents of the expected pitch.
        trim_s: ignore this much at both ends of each note (notes shorter than ``2 * trim_s`` are skipped).
        fmin / fmax: pYIN search range; default 14 semitones below the lowest and above the highest expected
            pitch, so octave errors are still found (as 1200-cent errors) rather than clipped away.
        hop_s: pYIN hop in seconds.
        resolution: pYIN pitch-bin width in semitones. pYIN's Viterbi costs grow with the square of the number of
            bins: 0.2 is about twice as fast as the default 0.1 and still far finer than the 50-cent tolerance.

    Raises:
        ValueError: empty/non-finite audio, bad notes, or no note frame inside the audio.
    """
    import librosa

    from musiccore.audio import _as_2d, _check_finite, _check_rate, to_mono

    sr = _check_rate(sample_rate)
    y = to_mono(_as_2d(audio))[0]
    if y.size == 0:
        raise ValueError("audio is empty")
    _check_finite(y)
    score = _check_notes(notes)
    expected_midi = score[:, 2] + 12.0 * octave_offset
    if fmin is None:
        fmin = float(midi_to_hz(expected_midi.min() - 14))
    if fmax is None:
        fmax = float(midi_to_hz(expected_midi.max() + 14))
    fmin = max(fmin, 20.0)
    fmax = min(fmax, 0.45 * sr)
    if not fmin < fmax:
        raise ValueError(f"empty pitch range fmin={fmin:.1f} Hz, fmax={fmax:.1f} Hz at {sr} Hz")

    hop = max(1, int(round(hop_s * sr)))
    # The frame must hold at least two periods of fmin (pYIN's difference function needs a lag range that long).
    frame = 1 << int(math.ceil(math.log2(max(4 * hop, 2.2 * sr / fmin + 2))))
    if y.size < frame:
        y = np.pad(y, (0, frame - y.size))  # a very short clip still gets one analysis frame
    f0, voiced, _ = librosa.pyin(
        y, fmin=fmin, fmax=fmax, sr=sr, frame_length=frame, hop_length=hop, center=True, resolution=resolution
    )
    times = np.arange(len(f0)) * hop / sr  # centre of each frame (center=True)

    expected = np.full(len(f0), np.nan)
    for (start, end, _), m in zip(score, expected_midi):
        inside = (times >= start + trim_s) & (times < end - trim_s)
        expected[inside] = m
    in_note = ~np.isnan(expected)
    n_note = int(in_note.sum())
    if n_note == 0:
        raise ValueError(
            f"no analysis frame falls inside a note (audio {len(y) / sr:.2f} s, notes from {score[:, 0].min():.2f} s)"
        )
    sung = in_note & voiced & np.isfinite(f0)
    n_voiced = int(sung.sum())
    if n_voiced == 0:
        return PitchResult(0.0, float("nan"), 0.0, 0.0, n_note, 0, octave_offset)
    cents = 1200.0 * np.log2(f0[sung] / midi_to_hz(expected[sung]))
    good = np.abs(cents) <= tolerance_cents
    return PitchResult(
        accuracy=float(good.mean()),
        mean_abs_cents=float(np.abs(cents).mean()),
        voicing_recall=n_voiced / n_note,
        raw_pitch_accuracy=float(good.sum()) / n_note,
        n_note_frames=n_note,
        n_voiced_frames=n_voiced,
        octave_offset=octave_offset,
    )
