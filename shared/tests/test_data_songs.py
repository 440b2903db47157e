"""Songs of the offline data kit (musiccore.data.songs): Festival-sung melodies over a fluidsynth accompaniment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musiccore.data import songs
from musiccore.testing import require_tool

#: The handbook's assets sit beside the project checkout (``<repo>/../shared/assets``), wherever it is cloned.
REPO = Path(__file__).resolve().parents[2]
TOP_TAGS = REPO.parent / "shared" / "assets" / "yue" / "top_200_tags.json"


def _need_tools():
    require_tool("festival")
    require_tool("text2wave")
    require_tool("fluidsynth")
    if not songs.FESTIVAL_SONGS_DIR.exists():
        pytest.skip("festival example songs not installed")


def _doremi(**kw) -> songs.SongSpec:
    # the 8-note scale, kept short for the tests (no strophic repeat)
    base = dict(id="doremi-test", source="festival:doremi", source_id="festival-doremi", title="doremi",
                tempo_range=(60.0, 90.0), min_seconds=4.0, max_seconds=30.0)
    base.update(kw)
    return songs.SongSpec(**base)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    _need_tools()
    out = tmp_path_factory.mktemp("kit") / "songs"
    row = songs.build_song(_doremi(), out, seed=3)
    return out, row


def _words(row):
    return [w for s in row["sections"] for w in s["words"]]


# ----------------------------------------------------------------------------------------------- pure helpers
def test_festival_quirk_helpers():
    # Festival numbers A5 = 440 Hz: to sing MIDI m write the usual name of m + 12
    assert songs.festival_note_name(48) == "C4"
    assert songs.festival_note_name(57) == "A4"
    assert songs.festival_note_name(69) == "A5"
    assert songs.festival_note_name(58) == "Bb4"
    # Festival plays BEATS at BPM / 50 beats per second
    assert songs.festival_bpm(60.0) == pytest.approx(50.0)
    assert songs.festival_bpm(120.0) / 50.0 == pytest.approx(2.0)  # quarter notes per second at 120 qpm


def test_sanitize_and_syllable_fit():
    assert songs._sanitize("Seel’") == "Seel"
    assert songs._sanitize("Müh'") == "Mueh"
    assert songs._sanitize("größ-ter,") == "groesster"
    assert songs._sanitize("1.") == ""
    # fewer Festival syllables: extra notes become a melisma of the last one, order kept
    syls = [[(1.0, 60)], [(0.5, 62), (0.5, 64)]]
    assert songs._fit_syllables(syls, 1) == [[(1.0, 60), (0.5, 62), (0.5, 64)]]
    # more Festival syllables: the longest note is split in equal parts, total duration and pitches kept
    fit = songs._fit_syllables([[(2.0, 60)]], 2)
    assert fit == [[(1.0, 60)], [(1.0, 60)]]
    assert songs._fit_syllables(syls, 2) is syls


def test_write_midi_roundtrip(tmp_path):
    music21 = pytest.importorskip("music21")
    notes = [songs._Note(0.0, 1.0, 60), songs._Note(1.0, 1.0, 64), songs._Note(2.0, 2.0, 67)]
    bass = [songs._Note(0.0, 4.0, 48)]
    p = tmp_path / "a.mid"
    songs.write_midi(p, [notes, bass], [19, 42], tempo=90.0, meter=(3, 4))
    s = music21.converter.parse(str(p))
    # music21 splits notes at bar lines into tied notes: count note starts only
    got = sorted(n.pitch.midi for n in s.recurse().notes if n.tie is None or n.tie.type == "start")
    assert got == [48, 60, 64, 67]
    mm = list(s.recurse().getElementsByClass("MetronomeMark"))
    assert mm and mm[0].number == pytest.approx(90.0, abs=0.5)


def test_select_song_sources_deterministic_english_first():
    pytest.importorskip("music21")
    a = songs.select_song_sources(20, seed=0)
    b = songs.select_song_sources(20, seed=0)
    c = songs.select_song_sources(20, seed=1)
    assert [s.id for s in a] == [s.id for s in b]
    assert len(a) == 20 and len({s.id for s in a}) == 20
    n_en = len(songs.english_sources())
    assert all(s.language == "en" for s in a[:n_en])
    assert all(s.source.startswith("music21:bach/") for s in a[n_en:])
    assert [s.id for s in a[:n_en]] == [s.id for s in c[:n_en]]
    assert [s.id for s in a[n_en:]] != [s.id for s in c[n_en:]]  # the seed shuffles the chorales
    assert not any("spice" in s.source for s in songs.select_song_sources(400, 0))
    from musiccore.data.manifest import split_of

    assert {split_of(s.source_id) for s in a} == {"train", "valid", "test"}
    assert songs.select_song_sources(0, 0) == []


def test_tags_come_from_yue_top_200():
    if not TOP_TAGS.exists():
        pytest.skip(f"YuE's top_200_tags.json not beside the checkout ({TOP_TAGS} is absent)")
    top = {t.strip() for v in json.loads(TOP_TAGS.read_text()).values() for t in v}
    for t in songs.PROGRAM_TAGS.values():
        assert t in top, t
    for s in songs.english_sources() + [songs.chorale_spec("bach/bwv10.7")]:
        for g in s.genres:
            assert g in top, g
    spec = songs.chorale_spec("bach/bwv10.7")
    tags = songs._tags(spec, "minor", 70.0, [19, 42], 55.0)
    extra = {"hymn", "slow", "moderate", "fast", "major", "minor"}
    assert all(t in top or t in extra for t in tags), tags
    assert {"male", "organ", "cello", "slow", "minor"} <= set(tags)


def test_sections_rule():
    N = songs._Note

    def word(text, on, dur, midi, fermata=False):
        return songs._Word(text, [[N(on, dur, midi)]], fermata=fermata)

    # four 3-word phrases ended by fermatas -> two sections of two phrases, different melody and text
    ws = []
    t = 0.0
    mel = [60, 62, 64]
    for k in range(4):
        for j in range(3):
            ws.append(word("abcd"[k] + "xyz"[j], t, 1.0, mel[j], fermata=(j == 2)))
            t += 1.0
    for j in range(6, 12):
        ws[j].syllables[0][0].midi += 5  # second pair of phrases differs from the first
    secs = songs._sections(ws)
    assert [s["label"] for s in secs] == ["verse", "verse"]
    covered = [j for s in secs for ph in s["phrases"] for j in ph]
    assert covered == list(range(len(ws)))
    # a repeated section (same melody and text) becomes the chorus
    rep = ws[:6] + [songs._Word(w.text, [[N(n.onset + 12, n.dur, n.midi) for n in w.notes]], w.fermata)
                    for w in ws[:6]]
    rep += [word("end", 30.0, 1.0, 50), word("of", 31.0, 1.0, 52), word("the", 32.0, 2.0, 48, True),
            word("song", 34.0, 1.0, 50), word("is", 35.0, 1.0, 52), word("here", 36.0, 2.0, 48, True)]
    labels = [s["label"] for s in songs._sections(rep)]
    assert labels == ["chorus", "chorus", "outro"]
    # a lone last phrase joins the previous section
    assert [len(s["phrases"]) for s in songs._sections(rep[:15])] == [2, 3]
    # score markings win
    for w in ws[6:]:
        w.mark = "chorus"
    assert [s["label"] for s in songs._sections(ws)][-1] == "chorus"


# ----------------------------------------------------------------------------------------------- built song
def test_built_song_files(built):
    out, row = built
    root = out.parent
    assert row["id"] == "doremi-test" and row["sample_rate"] == 16000
    for f in ("vocal", "accompaniment", "mix"):
        assert row[f] == f"songs/doremi-test/{f}.wav"
        info = sf.info(str(root / row[f]))
        assert info.samplerate == 16000 and info.channels == 1
        assert info.frames == int(round(row["duration"] * 16000))
    v, _ = sf.read(str(root / row["vocal"]), dtype="float32")
    a, _ = sf.read(str(root / row["accompaniment"]), dtype="float32")
    m, _ = sf.read(str(root / row["mix"]), dtype="float32")
    assert np.abs(v).max() > 0.05 and np.abs(a).max() > 0.01
    assert np.abs(m - (v + a)).max() < 2e-4  # the mix is the sum of the stems (up to 16-bit rounding)
    assert (root / row["lyrics_path"]).read_text() == row["lyrics"]
    assert (root / row["accompaniment_midi"]).stat().st_size > 50
    # no leftovers of the atomic build
    assert sorted(p.name for p in out.iterdir()) == ["doremi-test"]
    assert row["key"] == "G major" and row["split"] in ("train", "valid", "test")
    assert "male" in row["tags"]


def test_built_song_timings_and_sections(built):
    _, row = built
    words = _words(row)
    assert [w["sung"] for w in words] == ["doe", "ray", "me", "fah", "sew", "lah", "tee", "doe"]
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)
    for w, nxt in zip(words, words[1:] + [None]):
        assert 0.0 <= w["start"] < w["end"] <= row["duration"]
        if nxt is not None:
            assert w["end"] <= nxt["start"] + 1e-6
    # the scale goes up by step, sung inside the male range
    midis = [w["midi"] for w in words]
    assert [b - a for a, b in zip(midis, midis[1:])] == [2, 2, 1, 2, 2, 2, 1]
    assert 45 <= np.median(midis) < 62
    # one quarter note per word at the song's tempo
    q = 60.0 / row["tempo_bpm"]
    assert all(abs((w["end"] - w["start"]) - q) < 2e-3 for w in words)
    # every word belongs to exactly one section, sections in time order; YuE-style lyrics text
    assert sum(len(s["words"]) for s in row["sections"]) == len(words) == 8
    for s in row["sections"]:
        assert s["start"] == s["words"][0]["start"] and s["end"] == s["words"][-1]["end"]
    blocks = row["lyrics"].strip().split("\n\n")
    assert len(blocks) == len(row["sections"])
    for b, s in zip(blocks, row["sections"]):
        assert b.splitlines()[0] == f"[{s['label']}]"


def test_vocal_pitch_matches_score(built):
    """pyin on the middle of a few words: the sung pitch equals the row's MIDI (octave quirk handled)."""
    librosa = pytest.importorskip("librosa")
    out, row = built
    v, sr = sf.read(str(out.parent / row["vocal"]), dtype="float32")
    words = _words(row)
    checked = 0
    for w in words[1::2]:
        a, b = w["start"], w["end"]
        seg = v[int((a + 0.35 * (b - a)) * sr): int((a + 0.85 * (b - a)) * sr)]
        f0, voiced, _ = librosa.pyin(seg, fmin=60, fmax=500, sr=sr, frame_length=1024, hop_length=160)
        f0 = f0[voiced & np.isfinite(f0)]
        assert len(f0) > 3, w
        cents = 1200 * np.log2(np.median(f0) / librosa.midi_to_hz(w["midi"]))
        assert abs(cents) < 50, (w, cents)
        checked += 1
    assert checked == 4


def test_festival_crash_is_retried(tmp_path, caplog):
    """Festival segfaults on any word sung for exactly 0.5 beat at BPM 60 (0.4167 s); the batch recovers."""
    _need_tools()
    caplog.set_level("DEBUG", logger="musiccore.data.songs")
    items = [("sing", [[(1.0, 55)]]), ("the", [[(0.5, 57)]]), ("song", [[(1.0, 59)]])]
    # tempo 72 qpm -> Festival BPM 60; 0.5 quarter -> the crashing duration
    waves = songs._sing_words(items, 72.0, tmp_path, "test")
    assert len(waves) == 3
    assert all(w.dtype == np.float32 and np.abs(w).max() > 0.01 for w in waves)
    assert abs(len(waves[1]) / 16000 - 0.5 * 60 / 72) < 0.06  # rendered 3 % longer, trimmed later
    assert "festival crashed on 'the'" in caplog.text


def test_same_seed_same_song(built, tmp_path):
    out, row = built
    row2 = songs.build_song(_doremi(), tmp_path / "songs", seed=3)
    assert json.dumps(row, sort_keys=True) == json.dumps(row2, sort_keys=True)
    for f in ("vocal", "accompaniment", "mix"):
        a, _ = sf.read(str(out.parent / row[f]), dtype="int16")
        b, _ = sf.read(str(tmp_path / row2[f]), dtype="int16")
        assert np.array_equal(a, b), f


def test_music21_chorale_excerpt(tmp_path):
    """German chorale: syllables joined into words, fermata phrases, excerpt within max_seconds."""
    _need_tools()
    pytest.importorskip("music21")
    spec = songs.chorale_spec("bach/bwv10.7")
    spec = songs.SongSpec(**{**spec.__dict__, "min_seconds": 5.0, "max_seconds": 16.0})
    row = songs.build_song(spec, tmp_path / "songs", seed=0)
    words = _words(row)
    assert row["duration"] <= 16.0 + 1e-6
    assert [w["word"] for w in words[:4]] == ["Meine", "Seel’", "erhebt", "den"]
    assert words[1]["sung"] == "Seel"
    assert row["language"] == "de" and "hymn" in row["tags"]
    # the soprano line (reciting on D5 here) is sung octaves down, its median inside the male range [50, 62)
    assert row["vocal_octave_shift"] in (-12, -24)
    assert songs.VOCAL_RANGE[0] <= np.median([w["midi"] for w in words]) < songs.VOCAL_RANGE[1]
    assert words[0]["midi"] - row["vocal_octave_shift"] == 74  # D5 in the score
    assert sum(len(s["words"]) for s in row["sections"]) == len(words)


# ----------------------------------------------------------------------------------------------- bad input
def test_words_from_music21_events():
    """Syllables joined by their ``syllabic`` info; melisma and tied notes extend a word; verse numbers dropped."""

    class Ly:
        def __init__(self, text, syllabic):
            self.text, self.syllabic, self.number = text, syllabic, 1

    ev = [(0.0, 1.0, 60, Ly("1. Lie", "begin"), False), (1.0, 0.5, 62, Ly("bs", "middle"), False),
          (1.5, 0.5, 64, None, False),  # melisma
          (2.0, 1.0, 65, Ly("ter", "end"), False), (3.0, 1.0, 67, Ly("Herr,", "single"), True),
          (5.0, 1.0, 69, None, False),  # after a rest, no lyric: not sung
          (6.0, 1.0, 67, Ly("du", "single"), False)]
    words = songs._words_from_events(ev)
    assert [w.text for w in words] == ["Liebster", "Herr,", "du"]
    assert [[n.midi for n in s] for s in words[0].syllables] == [[60], [62, 64], [65]]
    assert words[0].onset == 0.0 and words[0].end == 3.0
    assert words[1].fermata and not words[0].fermata
    assert [n.midi for n in words[2].notes] == [67]


def test_render_units_per_word_or_syllable():
    N = songs._Note
    w = songs._Word("Herren;", [[N(0.0, 1.0, 57)], [N(1.0, 0.5, 59), N(1.5, 0.5, 57)]], syl_texts=["Her", "ren;"])
    one = songs._Word("Gott", [[N(3.0, 2.0, 55)]], syl_texts=["Gott"])
    # English: one unit per word, melisma kept inside its syllable
    assert songs._render_units([w, one], per_syllable=False) == [
        ("Herren", [[(1.0, 57)], [(0.5, 59), (0.5, 57)]], 0.0, 2.0), ("Gott", [[(2.0, 55)]], 3.0, 5.0)]
    # other languages: one unit per score syllable, slots tile the word
    assert songs._render_units([w, one], per_syllable=True) == [
        ("Her", [[(1.0, 57)]], 0.0, 1.0), ("ren", [[(0.5, 59), (0.5, 57)]], 1.0, 2.0),
        ("Gott", [[(2.0, 55)]], 3.0, 5.0)]


def test_bad_sources_raise_song_error(tmp_path):
    _need_tools()
    with pytest.raises(songs.SongError, match="festival:nosuch"):
        songs.build_song(_doremi(id="x", source="festival:nosuch"), tmp_path, 0)
    with pytest.raises(songs.SongError, match="spice"):
        songs.build_song(_doremi(id="x", source="festival:spice1"), tmp_path, 0)
    # a Festival file whose words are all empty after cleaning
    bad = tmp_path / "empty.xml"
    bad.write_text('<?xml version="1.0"?>\n<SINGING BPM="60"><DURATION BEATS="1"><PITCH NOTE="C4">1.</PITCH>'
                   '</DURATION><DURATION BEATS="1"><PITCH NOTE="D4">--</PITCH></DURATION></SINGING>\n')
    with pytest.raises(songs.SongError, match="empty"):
        songs.build_song(_doremi(id="x", source=f"festival-xml:{bad}"), tmp_path, 0)
    broken = tmp_path / "broken.xml"
    broken.write_text("<SINGING><DURATION BEATS='1'>")
    with pytest.raises(songs.SongError, match="cannot parse"):
        songs.build_song(_doremi(id="x", source=f"festival-xml:{broken}"), tmp_path, 0)
    with pytest.raises(songs.SongError, match="unknown source kind"):
        songs.build_song(_doremi(id="x", source="mp3:foo"), tmp_path, 0)
    assert not any(p.name.startswith(".x.") for p in tmp_path.iterdir())  # no partial output


def test_chorale_without_lyrics_raises(tmp_path):
    _need_tools()
    pytest.importorskip("music21")
    spec = songs.chorale_spec("bach/bwv165.6")  # a chorale with no <lyric> in the corpus
    with pytest.raises(songs.SongError, match="no lyrics"):
        songs.build_song(spec, tmp_path, 0)
    assert list(tmp_path.iterdir()) == []


def test_festival_timeout_and_missing(tmp_path, monkeypatch):
    _need_tools()
    monkeypatch.setattr(songs, "WORDS_PER_SECOND_TIMEOUT", 0.0)
    real_run = songs._run_festival

    def slow(script, cwd, timeout, where):
        return real_run(script, cwd, 0.001 if script.name == "sing.scm" else timeout, where)

    monkeypatch.setattr(songs, "_run_festival", slow)
    with pytest.raises(songs.SongError, match="timed out"):
        songs.build_song(_doremi(id="t"), tmp_path / "songs", 0)
    assert not (tmp_path / "songs" / "t").exists()
    assert [p for p in (tmp_path / "songs").iterdir()] == []
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(songs.MissingToolError, match="apt-get install festival festvox-kallpc16k"):
        songs.build_song(_doremi(id="t"), tmp_path / "songs", 0)
