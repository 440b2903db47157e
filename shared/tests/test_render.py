"""Tests of musiccore.render: soundfont lookup, score -> MIDI (programs, channels, tempo), MIDI -> WAV."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

music21 = pytest.importorskip("music21")
from music21 import corpus, instrument, midi, tempo  # noqa: E402

from musiccore import render  # noqa: E402
from musiccore.testing import require_tool  # noqa: E402


@pytest.fixture(scope="module")
def chorale_excerpt():
    """Bars 1-4 of Bach's BWV 66.6, four parts (SATB): a real score with lyrics and instruments."""
    return corpus.parse("bach/bwv66.6").measures(1, 4)


def midi_events(path: Path):
    mf = midi.MidiFile()
    mf.open(str(path))
    mf.read()
    mf.close()
    return [ev for tr in mf.tracks for ev in tr.events]


def test_find_soundfont_order(tmp_path, monkeypatch):
    sf2 = tmp_path / "mine.sf2"
    sf2.write_bytes(b"RIFF")
    monkeypatch.setenv("MUSIC_SOUNDFONT", str(sf2))
    assert render.find_soundfont() == sf2
    monkeypatch.setenv("MUSIC_SOUNDFONT", str(tmp_path / "missing.sf2"))
    with pytest.raises(render.ToolNotFoundError, match="missing.sf2"):
        render.find_soundfont()
    monkeypatch.delenv("MUSIC_SOUNDFONT")
    second = tmp_path / "FluidR3_GM.sf2"
    second.write_bytes(b"RIFF")
    monkeypatch.setattr(render, "SOUNDFONT_CANDIDATES", (str(tmp_path / "TimGM6mb.sf2"), str(second)))
    assert render.find_soundfont() == second  # the first candidate that exists
    monkeypatch.setattr(render, "SOUNDFONT_CANDIDATES", (str(tmp_path / "none.sf2"),))
    with pytest.raises(render.ToolNotFoundError, match="apt-get install timgm6mb-soundfont"):
        render.find_soundfont()


def test_find_soundfont_default_is_timgm6mb(monkeypatch):
    monkeypatch.delenv("MUSIC_SOUNDFONT", raising=False)
    if not Path(render.SOUNDFONT_CANDIDATES[0]).is_file():
        pytest.skip("TimGM6mb soundfont not installed")
    assert render.find_soundfont().name == "TimGM6mb.sf2"


def test_require_tool_names_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(render.ToolNotFoundError, match=r"fluidsynth not found on PATH; install it with `apt-get install fluidsynth`"):
        render.require_tool("fluidsynth")
    with pytest.raises(render.ToolNotFoundError, match="apt-get install abcmidi"):
        render.require_tool("midi2abc")
    assert not render.tool_available("abc2midi")


def test_score_to_midi_programs_channels_tempo(tmp_path, chorale_excerpt):
    before = [[i.midiProgram for i in p.recurse().getElementsByClass(instrument.Instrument)] for p in chorale_excerpt.parts]
    out = render.score_to_midi(chorale_excerpt, tmp_path / "c.mid", programs=[52, 19, 19, 19], tempo_bpm=80)
    assert out.read_bytes()[:4] == b"MThd"
    # the input score is untouched
    after = [[i.midiProgram for i in p.recurse().getElementsByClass(instrument.Instrument)] for p in chorale_excerpt.parts]
    assert after == before

    events = midi_events(out)
    progs = {(ev.channel, ev.data) for ev in events if ev.type == midi.ChannelVoiceMessages.PROGRAM_CHANGE}
    assert progs == {(1, 52), (2, 19), (3, 19), (4, 19)}  # music21 numbers channels from 1
    note_channels = {ev.channel for ev in events if ev.type == midi.ChannelVoiceMessages.NOTE_ON and ev.velocity}
    assert note_channels == {1, 2, 3, 4}
    tempos = [ev for ev in events if ev.type == midi.MetaEvents.SET_TEMPO]
    assert len(tempos) == 1
    assert round(60_000_000 / int.from_bytes(tempos[0].data, "big")) == 80

    back = music21.converter.parse(str(out))
    assert len(back.parts) == 4
    marks = list(back.recurse().getElementsByClass(tempo.MetronomeMark))
    assert marks and marks[0].number == 80
    assert sorted(p.midi for n in back.recurse().notes for p in n.pitches) == sorted(
        p.midi for n in chorale_excerpt.recurse().notes for p in n.pitches)
    # one program for every part; channel 9 (GM drums) is skipped when there are many parts
    out2 = render.score_to_midi(chorale_excerpt, tmp_path / "c2.mid", programs=0)
    progs2 = {(ev.channel, ev.data) for ev in midi_events(out2) if ev.type == midi.ChannelVoiceMessages.PROGRAM_CHANGE}
    assert progs2 == {(1, 0), (2, 0), (3, 0), (4, 0)}
    ten = music21.stream.Score([music21.stream.Part([music21.note.Note(60 + i, quarterLength=1)]) for i in range(11)])
    chans = {ev.channel for ev in midi_events(render.score_to_midi(ten, tmp_path / "ten.mid", programs=5))
             if ev.type == midi.ChannelVoiceMessages.NOTE_ON}
    assert chans == set(range(1, 13)) - {10}  # 11 parts on channels 0..11 without 9 (1-based: no 10)
    gen = render._free_channels()
    assert [next(gen) for _ in range(16)] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 0]


def test_score_to_midi_single_part_and_errors(tmp_path, chorale_excerpt):
    soprano = chorale_excerpt.parts[0]
    out = render.score_to_midi(soprano, tmp_path / "s.mid", programs=[73], tempo_bpm=100)
    progs = {ev.data for ev in midi_events(out) if ev.type == midi.ChannelVoiceMessages.PROGRAM_CHANGE}
    assert progs == {73}
    with pytest.raises(ValueError, match="2 programs given for 4 parts"):
        render.score_to_midi(chorale_excerpt, tmp_path / "x.mid", programs=[1, 2])
    with pytest.raises(ValueError, match="0..127"):
        render.score_to_midi(chorale_excerpt, tmp_path / "x.mid", programs=200)
    with pytest.raises(ValueError, match="tempo_bpm"):
        render.score_to_midi(chorale_excerpt, tmp_path / "x.mid", tempo_bpm=0)
    with pytest.raises(ValueError, match="no notes"):
        render.score_to_midi(music21.stream.Score([music21.stream.Part()]), tmp_path / "x.mid")
    assert not (tmp_path / "x.mid").exists()


def test_midi_to_wav_duration_and_audio(tmp_path, chorale_excerpt):
    require_tool("fluidsynth")
    import soundfile as sf

    mid = render.score_to_midi(chorale_excerpt, tmp_path / "c.mid", programs=[52, 19, 19, 19], tempo_bpm=80)
    wav = render.midi_to_wav(mid, tmp_path / "c.wav", sample_rate=16000, gain=0.6)
    data, sr = sf.read(wav)
    assert sr == 16000 and data.ndim == 2 and data.shape[1] == 2
    expected = float(chorale_excerpt.highestTime) * 60 / 80  # quarter notes at 80 bpm
    assert expected > 10
    assert abs(len(data) / sr - expected) <= 0.1 * expected
    assert float(np.sqrt(np.mean(data**2))) > 0.01
    # sound all the way through: every second of the music has audio
    env = np.abs(data).max(axis=1)
    assert min(env[i * sr : (i + 1) * sr].max() for i in range(int(expected))) > 0.01
    # without trimming, fluidsynth's silent tail is kept (longer file, same audio at the start)
    raw = render.midi_to_wav(mid, tmp_path / "raw.wav", sample_rate=16000, trim_tail=False)
    raw_data, _ = sf.read(raw)
    assert len(raw_data) > len(data)
    np.testing.assert_array_equal(raw_data[: len(data)], data)
    assert sorted(os.listdir(tmp_path)) == ["c.mid", "c.wav", "raw.wav"]  # no temporary files left


def test_midi_to_wav_bad_input(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nothing.mid"):
        render.midi_to_wav(tmp_path / "nothing.mid", tmp_path / "o.wav")
    fake = tmp_path / "fake.mid"
    fake.write_text("hello")
    with pytest.raises(render.RenderError, match="not a MIDI file"):
        render.midi_to_wav(fake, tmp_path / "o.wav")
    broken = tmp_path / "broken.mid"
    broken.write_bytes(b"MThd\x00\x00\x00\x06garbage-garbage")
    if render.tool_available("fluidsynth"):
        with pytest.raises(render.RenderError, match="broken.mid: fluidsynth failed"):
            render.midi_to_wav(broken, tmp_path / "o.wav")
    with pytest.raises(ValueError, match="sample_rate"):
        render.midi_to_wav(broken, tmp_path / "o.wav", sample_rate=10)
    if render.tool_available("fluidsynth"):
        with pytest.raises(render.ToolNotFoundError, match="none.sf2"):
            render.midi_to_wav(broken, tmp_path / "o.wav", soundfont=tmp_path / "none.sf2")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(render.ToolNotFoundError, match="apt-get install fluidsynth"):
        render.midi_to_wav(broken, tmp_path / "o.wav")
    assert not (tmp_path / "o.wav").exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp.wav")]


def test_midi_to_wav_timeout_leaves_nothing(tmp_path, chorale_excerpt):
    require_tool("fluidsynth")
    mid = render.score_to_midi(chorale_excerpt, tmp_path / "c.mid")
    with pytest.raises(render.RenderError, match="timed out"):
        render.midi_to_wav(mid, tmp_path / "o.wav", timeout=0.001)
    assert sorted(os.listdir(tmp_path)) == ["c.mid"]


def test_run_tool_timeout_message(tmp_path):
    require_tool("sleep")
    with pytest.raises(render.RenderError, match=r"tune X:1: sleep timed out after 0.05 s"):
        render.run_tool(["sleep", "5"], what="tune X:1", timeout=0.05)


# -------------------------------------------------------------------------------- truncated and silent renders


def _scale_midi(tmp_path, n=8, bpm=60):
    """``n`` quarter notes C4, D4, ... at ``bpm``: a MIDI whose notes and timing are known without reading it."""
    s = music21.stream.Stream([music21.note.Note(60 + i, quarterLength=1) for i in range(n)])
    return render.score_to_midi(s, tmp_path / f"scale{n}.mid", tempo_bpm=bpm)


def test_midi_stats_counts_notes_and_follows_the_tempo(tmp_path):
    st = render.midi_stats(_scale_midi(tmp_path, 8, bpm=60))
    assert st.n_notes == 8 and st.end_quarters == 8 and st.last_onset_quarters == 7
    assert abs(st.end_seconds - 8.0) < 1e-6  # 60 bpm: one quarter note a second
    assert abs(render.midi_stats(_scale_midi(tmp_path, 6, bpm=120)).end_seconds - 3.0) < 1e-6
    (tmp_path / "junk.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
    with pytest.raises(render.RenderError, match=r"junk.mid: cannot read the MIDI file"):
        render.midi_stats(tmp_path / "junk.mid")


def test_check_midi_complete_names_what_is_missing(tmp_path):
    mid = _scale_midi(tmp_path, 4)
    assert render.check_midi_complete(mid, min_notes=4, min_onset_quarters=3, what="tune X:1").n_notes == 4
    with pytest.raises(render.RenderError, match=r"^tune X:1: abc2midi wrote a truncated MIDI: 4 notes where the "
                                                 r"source strikes at least 8; its last note starts at quarter note 3 "
                                                 r"where the source's starts at 7$"):
        render.check_midi_complete(mid, min_notes=8, min_onset_quarters=7, what="tune X:1", tool="abc2midi")
    with pytest.raises(render.RenderError, match=r"starts at quarter note 3 where the source's starts at 3.5"):
        render.check_midi_complete(mid, min_notes=0, min_onset_quarters=3.5, what="t")


def test_midi_to_wav_refuses_silence_and_an_empty_midi(tmp_path):
    require_tool("fluidsynth")
    mid = _scale_midi(tmp_path, 4)
    with pytest.raises(render.RenderError, match=r"scale4.mid: fluidsynth rendered silence \(peak \S+ < 0.001\) "
                                                 r"from 4 notes"):
        render.midi_to_wav(mid, tmp_path / "silent.wav", gain=0.0)  # gain 0: fluidsynth writes (near) zeros
    assert render.midi_to_wav(mid, tmp_path / "quiet.wav", gain=0.0, min_peak=None).exists()  # asked for: kept
    empty = music21.stream.Stream([music21.note.Note(60, quarterLength=1)])
    empty.notes[0].volume.velocity = 0  # a note-on with velocity 0 is a note-off: no note sounds
    render.score_to_midi(empty, tmp_path / "empty.mid")
    with pytest.raises(render.RenderError, match=r"empty.mid: the MIDI file has no notes"):
        render.midi_to_wav(tmp_path / "empty.mid", tmp_path / "empty.wav")
    assert sorted(os.listdir(tmp_path)) == ["empty.mid", "quiet.wav", "scale4.mid"]


def test_midi_to_wav_refuses_a_render_that_stops_early(tmp_path, monkeypatch):
    """A synthesizer that exits 0 after writing only the first second of a 10 s MIDI (a crash, a full disk)."""
    require_tool("fluidsynth")
    mid = _scale_midi(tmp_path, 10, bpm=60)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "fluidsynth"
    fake.write_text("#!/bin/sh\n# writes 1 s of a 440 Hz tone to the -F file and exits 0\n"
                    'while [ "$1" != "-F" ]; do shift; done\n'
                    "exec python3 -c \"import math, struct, sys, wave\n"
                    "w = wave.open(sys.argv[1], 'wb'); w.setnchannels(2); w.setsampwidth(2); w.setframerate(22050)\n"
                    "w.writeframes(b''.join(struct.pack('<hh', v, v) for v in (int(8000 * math.sin(i / 8)) "
                    "for i in range(22050))))\" \"$2\"\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(render.RenderError, match=r"scale10.mid: fluidsynth stopped early: 1.00 s of audio for 10.00 s "
                                                 r"of notes"):
        render.midi_to_wav(mid, tmp_path / "cut.wav")
    assert not (tmp_path / "cut.wav").exists()
