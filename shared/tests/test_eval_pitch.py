"""musiccore.eval.pitch: pYIN-based sung-pitch accuracy against score notes."""

import subprocess

import numpy as np
import pytest

from musiccore.eval.pitch import midi_to_hz, pitch_accuracy
from musiccore.testing import require_tool

SR = 16000
NOTES = [(0.0, 0.4, 60), (0.5, 0.9, 64), (0.9, 1.3, 67)]  # a rest between the first two notes


def sing(notes, shift=0.0, total=1.4, seed=0):
    """A voice-like tone: 3 harmonics, 5 Hz vibrato of +-20 cents, a little noise; silence outside the notes."""
    r = np.random.default_rng(seed)
    y = np.zeros(int(SR * total))
    for start, end, midi in notes:
        i0, i1 = int(start * SR), int(end * SR)
        t = np.arange(i1 - i0) / SR
        f = midi_to_hz(midi + shift) * 2 ** (0.2 / 12 * np.sin(2 * np.pi * 5 * t))
        phase = 2 * np.pi * np.cumsum(f) / SR
        y[i0:i1] = sum(0.3 / k * np.sin(k * phase) for k in (1, 2, 3))
    return (y + 0.003 * r.standard_normal(len(y))).astype(np.float32)


def test_in_tune_singing_scores_near_one():
    res = pitch_accuracy(sing(NOTES), SR, NOTES)
    assert res.accuracy > 0.95 and res.raw_pitch_accuracy > 0.9 and res.voicing_recall > 0.9
    assert res.mean_abs_cents < 25  # the vibrato is +-20 cents
    assert res.n_note_frames > 80 and res.n_voiced_frames <= res.n_note_frames
    assert res.raw_pitch_accuracy == pytest.approx(res.accuracy * res.voicing_recall)
    # [1, T] and stereo input are accepted (channels averaged).
    assert pitch_accuracy(sing(NOTES)[None], SR, NOTES).accuracy == pytest.approx(res.accuracy)


def test_two_semitones_off_scores_near_zero():
    res = pitch_accuracy(sing(NOTES, shift=2.0), SR, NOTES)
    assert res.accuracy < 0.05
    assert res.mean_abs_cents == pytest.approx(200, abs=25)
    assert res.voicing_recall > 0.9  # it is still sung, just out of tune


def test_octave_offset():
    low = sing(NOTES, shift=-12.0)
    assert pitch_accuracy(low, SR, NOTES).accuracy < 0.05
    res = pitch_accuracy(low, SR, NOTES, octave_offset=-1)
    assert res.accuracy > 0.95 and res.octave_offset == -1


def test_silence_gives_zero_voicing():
    res = pitch_accuracy(np.zeros(SR, np.float32), SR, [(0.1, 0.9, 60)])
    assert res.voicing_recall == 0.0 and res.accuracy == 0.0 and np.isnan(res.mean_abs_cents)


def test_bad_inputs():
    y = sing(NOTES)
    with pytest.raises(ValueError, match="no score notes"):
        pitch_accuracy(y, SR, [])
    with pytest.raises(ValueError, match="start < end"):
        pitch_accuracy(y, SR, [(0.5, 0.2, 60)])
    with pytest.raises(ValueError, match="outside 0..127"):
        pitch_accuracy(y, SR, [(0.0, 0.2, 200)])
    with pytest.raises(ValueError, match=r"expected \(start_s, end_s, midi\)"):
        pitch_accuracy(y, SR, [(0.0, 0.2)])
    with pytest.raises(ValueError, match="no analysis frame"):
        pitch_accuracy(y, SR, [(5.0, 6.0, 60)])  # the note lies after the audio
    with pytest.raises(ValueError, match="empty"):
        pitch_accuracy(np.zeros(0), SR, NOTES)
    with pytest.raises(ValueError, match="non-finite"):
        pitch_accuracy(np.full(SR, np.nan), SR, NOTES)
    with pytest.raises(ValueError, match="rate"):
        pitch_accuracy(y, 0, NOTES)


def test_festival_sings_an_octave_low(tmp_path):
    """Real singing: Festival's singing mode renders one octave below the written notes (offline-data.md §3)."""
    require_tool("text2wave")
    from musiccore.audio import load_audio

    xml = tmp_path / "song.xml"
    xml.write_text(
        '<?xml version="1.0"?>\n'
        '<!DOCTYPE SINGING PUBLIC "-//SINGING//DTD SINGING mark up//EN" "Singing.v0_1.dtd" []>\n'
        '<SINGING BPM="60">'
        + "".join(f'<DURATION BEATS="1"><PITCH NOTE="{n}">la</PITCH></DURATION>' for n in ("A4", "C5", "E5"))
        + "</SINGING>\n"
    )
    wav = tmp_path / "song.wav"
    proc = subprocess.run(["text2wave", "-mode", "singing", str(xml), "-o", str(wav)], capture_output=True, timeout=60)
    if proc.returncode != 0 or not wav.exists():
        pytest.skip(f"text2wave failed: {proc.stderr.decode()[-200:]}")
    y, sr = load_audio(wav)
    beat = y.shape[1] / sr / 3  # Festival's tempo is not exactly BPM; its 3 equal notes fill the file
    notes = [(i * beat, (i + 1) * beat, m) for i, m in enumerate((69, 72, 76))]
    res = pitch_accuracy(y, sr, notes, octave_offset=-1, trim_s=0.1)
    assert res.accuracy > 0.9 and res.voicing_recall > 0.9
    assert pitch_accuracy(y, sr, notes, octave_offset=0, trim_s=0.1).accuracy < 0.05


def test_datakit_song_vocal_matches_its_notes(datakit):
    """Real data: the kit's Festival vocal sings the manifest's ``midi`` pitches (octave already compensated)."""
    from musiccore.audio import load_audio
    from musiccore.data import load_manifest, resolve

    songs = load_manifest("songs", root=datakit)
    if not songs:
        pytest.skip("the tiny data kit has no song (Festival missing)")
    song = songs[0]
    y, sr = load_audio(resolve(song["vocal"], root=datakit), offset_s=0.0, duration_s=6.0)
    notes = [
        (n["start"], n["end"], n["midi"])
        for sec in song["sections"]
        for w in sec["words"]
        for n in w.get("notes", [{"start": w["start"], "end": w["end"], "midi": w["midi"]}])
        if n["end"] <= 6.0
    ]
    res = pitch_accuracy(y, sr, notes, resolution=0.2)
    assert res.accuracy > 0.7 and res.voicing_recall > 0.7
    assert pitch_accuracy(y, sr, notes, octave_offset=-1, resolution=0.2).accuracy < 0.1
