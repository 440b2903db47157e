"""Absurd and truncating ABC (issue 12): bounded work with a typed error, and renders cut short or silent
reported as failures. Every file of ``tests/bad_inputs/abc/`` is used by a case below.

"Bounded" is shown without timing anything: music21 (whose time and memory grow with meters, note lengths and
bar counts) is replaced by a tripwire for the over-the-limit cases, and the Python heap peak is measured with
tracemalloc (before the bounds, ``M:999999999/1`` took > 3 GB and ``Z99999999`` 39 s then MemoryError).
"""

from __future__ import annotations

import os
import re
import tracemalloc
from fractions import Fraction
from pathlib import Path

import pytest

pytest.importorskip("music21")

from musiccore import abc  # noqa: E402
from musiccore.abc import ABCError, ABCLimitError  # noqa: E402
from musiccore.render import RenderError  # noqa: E402
from musiccore.testing import require_tool  # noqa: E402

BAD = Path(__file__).parent / "bad_inputs" / "abc"

#: file -> (error class, what validate()'s first error and parse_score's message say)
LIMITS = {
    "huge_meter.abc": (ABCLimitError, r"M:999999999/1: meter numerator 999999999 is above MAX_METER_NUMERATOR=64"),
    "inline_huge_meter.abc": (ABCLimitError, r"line 6: M:999999999/4: meter numerator .* MAX_METER_NUMERATOR=64"),
    "huge_unit_length.abc": (ABCLimitError, r"L:1/999999999: unit length denominator .* MAX_UNIT_DENOMINATOR=512"),
    "huge_note.abc": (ABCLimitError, r"line 6 col 1: a note lasts 99999999 units of L: \(more than MAX_NOTE_UNITS=256"),
    "huge_multibar_rest.abc": (ABCLimitError, r"line 6 col 1: multi-bar rest Z99999999 makes more than MAX_BARS=500"),
    "long_number.abc": (ABCLimitError, r"line 6 col 11: 'A999.*\(5,001 chars\)': .* more than MAX_NUMBER_DIGITS=9"),
    "long_tuplet_number.abc": (ABCLimitError, r"line 6 col 11: '\(1234567890123': a tuplet number .*MAX_NUMBER_DIGITS"),
    "long_broken_rhythm.abc": (ABCLimitError, r"line 6 col 12: broken rhythm of 7 signs \(limit MAX_BROKEN=3\)"),
    "divide_by_zero.abc": (ABCError, r"line 6 col 11: 'A/0': length divided by zero"),
    "no_key.abc": (ABCError, r"no K: field"),
}

#: file -> what abc_to_midi (abc2midi) or abc_to_wav (fluidsynth) raise: (function, RenderError message)
RENDERS = {
    # "C/3": abc2midi says "not a power of 2" and writes a MIDI without a single note
    "abc2midi_drops_all.abc": ("midi", r'X:1 "power of two": abc2midi wrote a truncated MIDI: 0 notes where the '
                                       r"source strikes at least 34; .*\(abc2midi: Error .*not a power of 2\)"),
    # an unclosed "[" makes abc2midi fold the rest of the tune into one chord: its last note starts at
    # quarter note 4.9 instead of 19.5
    "abc2midi_cut_short.abc": ("midi", r'X:1 "open chord": abc2midi wrote a truncated MIDI: its last note starts at '
                                       r"quarter note 4\.\d+ where the source's starts at 19\.5$"),
    # channel volume 0: fluidsynth renders 16 notes as silence (peak 3e-05)
    "silent_volume.abc": ("wav", r'X:1 "silent": fluidsynth rendered silence \(peak .* < 0\.001\) from 16 notes'),
}


@pytest.fixture
def no_music21(monkeypatch):
    """Fail the test if music21's parser is asked to read a tune (the work the bounds exist to avoid)."""
    from music21 import converter

    def tripwire(*a, **k):
        raise AssertionError("music21 was asked to parse a tune that is over a bound")

    monkeypatch.setattr(converter, "parse", tripwire)


def test_every_bad_abc_file_has_a_case():
    assert sorted(p.name for p in BAD.iterdir()) == sorted({**LIMITS, **RENDERS})


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_bad_abc_file_gives_a_typed_error_naming_field_and_limit(name, no_music21):
    cls, reason = LIMITS[name]
    tune = (BAD / name).read_text()
    label = abc.tune_label(tune)
    tracemalloc.start()
    try:
        r = abc.validate(tune)  # never raises
        with pytest.raises(cls, match=re.escape(label) + ".*" + reason) as info:
            abc.parse_score(tune)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MB"
    assert type(info.value) is cls  # an ABCError that is not about a limit is not an ABCLimitError, and vice versa
    assert not r.ok and re.search(reason, r.errors[0]), r.errors
    assert r.over_limit == (cls is ABCLimitError) and r.music21_notes is None
    with pytest.raises(cls, match=re.escape(label)):
        r.raise_if_bad()
    # what a renderer would need is refused the same way, before any tool runs
    with pytest.raises(cls, match=reason):
        abc.tune_extent(tune)


def test_a_note_over_the_limit_is_refused_even_without_music21():
    r = abc.validate("X:1\nL:1/8\nM:6/8\nK:G\nGAB cde|C2222222 C|]\n", use_music21=False)
    assert r.over_limit and any("units of L:" in e and "MAX_NOTE_UNITS" in e for e in r.errors)
    # shorter than 1/512 of L: as well; the limits themselves are accepted
    r = abc.validate("X:1\nL:1/8\nM:6/8\nK:G\nGAB c/1024 de|]\n", use_music21=False)
    assert r.over_limit and "MAX_NOTE_DENOMINATOR" in r.errors[0]
    ok = abc.validate(f"X:1\nL:1/{abc.MAX_UNIT_DENOMINATOR}\nM:{abc.MAX_METER_NUMERATOR}/{abc.MAX_METER_DENOMINATOR}"
                      f"\nK:C\nC{abc.MAX_NOTE_UNITS} D/{abc.MAX_NOTE_DENOMINATOR}|]\n", use_music21=False)
    assert not ok.over_limit, ok.errors


def test_ten_thousand_bars_many_notes_and_a_megabyte_line_stop_at_the_limits(no_music21, tmp_path):
    head = "X:1\nT:long\nM:2/4\nL:1/8\nK:C\n"
    bars = head + ("C4|" * 4 + "\n") * 2_500  # 10,000 bars in 33 KB: under MAX_TUNE_CHARS, over MAX_BARS
    notes = head + "C" * 4_500 + "|\n"  # one bar of 4,500 notes: over MAX_NOTES
    line = head + "C" * 1_000_000 + "|\n"  # one megabyte-long line
    tracemalloc.start()
    try:
        rb = abc.validate(bars)
        rl = abc.validate(line)
        rn = abc.validate(notes)
        with pytest.raises(ABCLimitError, match=r'X:1 "long": line 131: more than MAX_BARS=500 bars; not parsed'):
            abc.parse_score(bars)
        for fn in (abc.parse_score, abc.normalize, abc.fingerprint, abc.tune_extent, lambda t: abc.transpose(t, 2),
                   lambda t: abc.abc_to_midi(t, tmp_path / "x.mid")):
            with pytest.raises(ABCLimitError, match=r'X:1 "long": the tune has 1,000,02[89] characters \(limit '
                                                    r"MAX_TUNE_CHARS=50,000\)"):
                fn(line)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 60 * 2**20, f"{peak / 2**20:.0f} MB"  # the megabyte text itself is held a few times, no more
    assert rb.over_limit and rb.errors == ["line 131: more than MAX_BARS=500 bars"]  # bar 501 is on line 6 + 500 // 4
    assert rn.over_limit and rn.errors == ["line 6 col 4001: more than MAX_NOTES=4000 notes"]
    assert rl.over_limit and rl.errors == ["the tune has 1,000,029 characters (limit MAX_TUNE_CHARS=50,000)"]
    assert not (tmp_path / "x.mid").exists()


def test_limits_are_far_above_real_tunes():
    """The 130 O'Neill tunes of three corpus files validate as before: no limit is hit by real music."""
    from music21 import corpus

    for name in ("oneills1850/0001-0050", "oneills1850/0051-0100", "oneills1850/1801-1850"):
        for t in abc.split_file(corpus.getWork(name)):
            r = abc.validate(t, use_music21=False)
            assert not r.over_limit, (r.label, r.errors)


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_truncated_or_silent_render_is_a_render_error(name, tmp_path):
    require_tool("abc2midi")
    fn, reason = RENDERS[name]
    tune = (BAD / name).read_text()
    if fn == "midi":
        with pytest.raises(RenderError, match=reason):
            abc.abc_to_midi(tune, tmp_path / "t.mid", engine="abc2midi")
    else:
        require_tool("fluidsynth")
        assert abc.validate(tune).ok  # nothing wrong with the ABC itself
        with pytest.raises(RenderError, match=reason):
            abc.abc_to_wav(tune, tmp_path / "t.wav", sample_rate=16000)
    assert os.listdir(tmp_path) == []  # no output and no temporary file left
    # a batch records the tune and carries on
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "bad.abc").write_text(tune)
    rep = abc.convert_many([tmp_path / "src"], tmp_path / "out", fmt="midi" if fn == "midi" else "wav")
    assert rep.done == [] and len(rep.failed) == 1 and re.search(reason, rep.failed[0][1])


def test_midi_check_accepts_repeats_ties_grace_notes_and_chords(tmp_path):
    """The truncation check is a lower bound: what abc2midi adds (repeats played twice, grace notes, guitar-chord
    accompaniment) or merges (tied notes) never fails a complete tune."""
    require_tool("abc2midi")
    tune = ('X:1\nT:ok\nM:4/4\nL:1/8\nK:G\n|:"G"{A}G2 B2- B2 d2|[GBd]4 (3efg a2:|\n'
            '|[1 "D"A8:|[2 G4- G2 z2|]\nV:2\nZ2|G,8|]\n')
    ext = abc.tune_extent(tune)
    # voice 1: G B B- d [GBd] e f g a A G- G = 14 written, the ties merge B-B and G-G; voice 2: G, -> 13 struck.
    # voice 1 ends on G2 at 3 + 6/8 whole notes (the rest z2 is not counted), voice 2 at 2 (Z2) + 1
    assert ext.struck_notes == 13 and ext.whole_notes == Fraction(15, 4)
    from musiccore.render import midi_stats

    st = midi_stats(abc.abc_to_midi(tune, tmp_path / "ok.mid", engine="abc2midi"))
    assert ext.last_onset == 3  # G4 opens bar 4; the G2 it ties into is no new onset (abc2midi plays one note)
    assert st.n_notes >= ext.struck_notes and st.last_onset_quarters >= ext.last_onset_quarters
