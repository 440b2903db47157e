"""Tests of musiccore.abc on real tunes from music21's corpus (Ryan's Mammoth, O'Neill's, Aird's, Essen)."""

from __future__ import annotations

import os
import re
from fractions import Fraction
from pathlib import Path

import pytest

music21 = pytest.importorskip("music21")
from music21 import corpus, harmony  # noqa: E402

from musiccore import abc  # noqa: E402
from musiccore.render import ToolNotFoundError  # noqa: E402
from musiccore.testing import require_tool  # noqa: E402


def work(name: str) -> Path:
    return Path(corpus.getWork(name))


@pytest.fixture(scope="module")
def oneills_text() -> str:
    return work("oneills1850/0001-0050").read_text()


@pytest.fixture(scope="module")
def aird_tunes() -> list[str]:
    return abc.split_file(work("airdsAirs/book1"))


def pitches(tune_or_score) -> list[int]:
    """MIDI pitches in order (chord members in order), from an ABC tune or a music21 stream."""
    s = abc.parse_score(tune_or_score) if isinstance(tune_or_score, str) else tune_or_score
    return [p.midi for n in s.recurse().notes if not isinstance(n, harmony.ChordSymbol) for p in n.pitches]


def struck_pitches(score) -> list[int]:
    """Pitches of notes that are struck (tie continuations dropped): what survives a MIDI round trip."""
    out = []
    for n in score.recurse().notes:
        if isinstance(n, harmony.ChordSymbol):
            continue
        if n.tie is not None and n.tie.type in ("stop", "continue"):
            continue
        out.extend(p.midi for p in n.pitches)
    return out


# a tune that uses most of the syntax the validator must understand; every bar is exact
FEATURES = """X:7
T:Feature tune
T:Second title
C:test
M:6/8
L:1/8
Q:3/8=100
R:jig
K:D
%%MIDI program 40
% a comment line
"D"A |: d2e fed | "G"{g}B3 !trill!c3 | (3ABc d2 ~e>f | [DFA]3 [K:G] G2 z | \\
[M:2/4] d>e f<g | [L:1/16] A4 B4 |[M:6/8][L:1/8] a2g fed |1 "A7"e3 A2 :|2 e3 d2 ||
V:2
Z2 | D3 F3 |]
"""


# --------------------------------------------------------------------------------------------------
# splitting and headers


def test_split_counts_x_lines(oneills_text):
    tunes = abc.split_tunes(oneills_text)
    n_x = len(re.findall(r"^X:", oneills_text, re.MULTILINE))
    assert len(tunes) == n_x == 50
    assert all(t.startswith("X:") for t in tunes)
    assert tunes[1].splitlines()[1] == "T: Fare You Well"
    # the last tune keeps its whole body and no trailing blank lines
    assert not tunes[-1].endswith("\n")


def test_split_ryans_file_and_concatenation():
    files = [work("ryansMammoth/7thRegimentReel"), work("ryansMammoth/AcaciaReel"), work("ryansMammoth/AdmiralsHornpipe")]
    texts = [f.read_text() for f in files]
    for t in texts:
        assert len(abc.split_tunes(t)) == len(re.findall(r"^X:", t, re.MULTILINE)) == 1
    both = abc.split_tunes("\n\n".join(texts))
    assert len(both) == 3
    assert [abc.parse_header(t)["T"] for t in both] == [abc.parse_header(t)["T"] for t in texts]


def test_split_file_header_and_missing_x():
    text = "% book preamble\nL:1/8\n%%MIDI program 73\nfree text\n\nX:1\nT:a\nK:C\nCDEF|\n\nX:2\nT:b\nL:1/4\nK:C\nCDEF|\n"
    t1, t2 = abc.split_tunes(text)
    assert "L:1/8" in t1 and "%%MIDI program 73" in t1 and "free text" not in t1
    assert "L:1/8" not in t2 and "L:1/4" in t2  # the tune's own field wins
    assert abc.split_tunes(text, keep_file_header=False)[0] == "X:1\nT:a\nK:C\nCDEF|"
    # model output without X: gets X:1; text without K: is not a tune
    assert abc.split_tunes("M:4/4\nL:1/8\nK:G\nGABc|\n") == ["X:1\nM:4/4\nL:1/8\nK:G\nGABc|"]
    assert abc.split_tunes("hello, no music here") == []
    # a tune ends at the first empty line after K:; free text between tunes is not part of it
    assert abc.split_tunes("X:1\nL:1/8\nK:C\nCDEF|\n\nSome notes about the next tune.\nX:2\nK:C\nC|") == [
        "X:1\nL:1/8\nK:C\nCDEF|", "X:2\nK:C\nC|"]
    assert abc.split_tunes("") == []


def test_error_types():
    assert issubclass(abc.ABCError, ValueError) and issubclass(ToolNotFoundError, RuntimeError)
    assert set(abc.__all__) <= set(dir(abc))


def test_split_file_unreadable(tmp_path):
    with pytest.raises(abc.ABCError, match="nope.abc"):
        abc.split_file(tmp_path / "nope.abc")


def test_parse_header_real_tunes(aird_tunes):
    h = abc.parse_header(aird_tunes[0])
    assert h["X"] == "0001"
    assert h.titles == ["The Ranting Highlandman.", "The White Cockade"]
    assert h["T"] == "The Ranting Highlandman."
    assert (h["M"], h["L"], h["Q"], h["K"]) == ("C|", "1/8", "1/2=112", "G")
    assert h["Z"].startswith("Jack Campin")
    assert ("%%", "G A B c d e ^f g a") in h.fields
    assert h.body.startswith("AG|B2B2 B2AG|")
    assert h.body == abc.tune_body(aird_tunes[0])

    r = abc.parse_header(work("ryansMammoth/7thRegimentReel").read_text())
    assert r["T"] == "7th Regiment -- Reel" and r["C"] == "CONN. HIGGINS." and r["R"] == "reel"
    assert r.getall("N") == ["Similar to Flowing Tide Hornpipe", "363"]
    assert r["K"] == "A" and r["L"] == "1/16" and r["M"] == "2/4"
    assert r.body.splitlines()[0].startswith("vA2(Ac)")


def test_parse_header_continuation_and_errors():
    h = abc.parse_header("X:1\nT:Long\n+:title\nM:3/4 % comment\nK:Am\nABc|")
    assert h["T"] == "Long title" and h["M"] == "3/4" and h["K"] == "Am"
    with pytest.raises(abc.ABCError, match=r'X:5 "No key".*no K: field'):
        abc.parse_header("X:5\nT:No key\nM:4/4\nabc|")
    partial = abc.parse_header("X:5\nT:No key\nM:4/4\n", strict=False)
    assert partial["M"] == "4/4" and "K" not in partial and partial.body == ""
    assert abc.parse_header("X:1\nT:t\n3/8=120\nK:C\nC|").stray == ["header line 3 is not a field ('3/8=120')"]


def test_meter_length_key_parsing():
    assert abc.parse_meter("6/8") == Fraction(3, 4)
    assert abc.parse_meter("C") == 1 and abc.parse_meter("C|") == 1
    assert abc.parse_meter("2+3/8") == Fraction(5, 8)
    assert abc.parse_meter("none") is None and abc.parse_meter("FREI4/4") is None
    with pytest.raises(abc.ABCError, match="meter"):
        abc.parse_meter("fast")
    assert abc.parse_length("1/16") == Fraction(1, 16)
    with pytest.raises(abc.ABCError, match="unit note length"):
        abc.parse_length("1/0")
    assert abc.default_unit_length(Fraction(2, 4)) == Fraction(1, 16)
    assert abc.default_unit_length(Fraction(3, 4)) == Fraction(1, 8)
    k = abc.parse_key("F#m")
    assert (k.tonic, k.alter, k.fifths(), k.name) == ("F", 1, 3, "F#m")
    assert abc.parse_key("Ddor").signature() == {L: 0 for L in "CDEFGAB"}
    assert abc.parse_key("Ador").signature() == {**{L: 0 for L in "CDEFGAB"}, "F": 1}
    assert abc.parse_key("Gmix").fifths() == 0 and abc.parse_key("Bbm").fifths() == -5
    assert abc.parse_key("Bb").signature()["E"] == -1
    assert abc.parse_key("D exp ^f").signature() == {**{L: 0 for L in "CDEFGAB"}, "F": 1}
    assert abc.parse_key("G clef=bass").rest == "clef=bass"
    assert abc.parse_key("none").tonic is None and abc.parse_key("HP").special == "HP"


# --------------------------------------------------------------------------------------------------
# validation


def test_validate_accepts_real_tunes(aird_tunes, oneills_text):
    tunes = [work("ryansMammoth/7thRegimentReel").read_text(), aird_tunes[0], abc.split_tunes(oneills_text)[1]]
    for t in tunes:
        r = abc.validate(t)
        assert r.ok, (r.label, r.errors)
        assert r.music21_notes and r.music21_notes > 20
        assert r.n_bars >= 8 and r.bad_bars == 0
    # Essen: bars without a closing bar line at line ends, and M:none
    essen = abc.split_file(work("essenFolksong/altdeu10"))
    assert abc.validate(essen[0], use_music21=False).ok
    assert abc.validate(essen[1], use_music21=False).ok  # M: none, so bars are not checked


def test_validate_structural_rate_on_corpus_files():
    # a whole O'Neill file, structure only (fast): most tunes are clean, and the failures carry reasons
    results = abc.validate_many(abc.split_file(work("oneills1850/0051-0100")), use_music21=False)
    assert len(results) == 50
    ok = sum(r.ok for r in results)
    assert ok >= 40
    assert all(r.errors and all(isinstance(e, str) and e for e in r.errors) for r in results if not r.ok)


def test_validate_feature_tune():
    r = abc.validate(FEATURES)
    assert r.ok, r.errors
    assert r.bad_bars == 0 and r.music21_notes > 20
    assert r.n_bars == 13  # 10 bars of voice 1 (pickup included) + 3 of voice 2 (Z2 is two)


def test_validate_rejects_broken_with_reasons():
    good = "X:1\nT:ok\nM:4/4\nL:1/8\nK:G\nGABc d2e2|f2g2 a4|]\n"
    assert abc.validate(good).ok
    cases = {
        "no K": ("X:1\nT:nok\nM:4/4\nL:1/8\nGABc d2e2|\n", "no K: field"),
        "no body": ("X:1\nT:empty\nM:4/4\nL:1/8\nK:G\n", "empty body"),
        "garbage": ("X:1\nT:junk\nM:4/4\nL:1/8\nK:G\n#### @@@ ;;;\n", "unexpected character"),
        "open chord": ("X:1\nT:chord\nM:4/4\nL:1/8\nK:G\nGABc [d2e2 f4|\n", "bar line inside a chord"),
        "open chord at end": ("X:1\nT:chord\nM:4/4\nL:1/8\nK:G\nGABc d2e2 [f4\n", "a chord is not closed"),
        "open grace": ("X:1\nT:grace\nM:4/4\nL:1/8\nK:G\nGABc {d2e2 f4|\n", "grace-note group is not closed"),
        "open quote": ('X:1\nT:quote\nM:4/4\nL:1/8\nK:G\n"Am GABc d2e2|\n', "unexpected"),
        "no L or M": ("X:1\nT:len\nK:G\nGABc d2e2|\n", "no L: or M: field"),
        "bad meter": ("X:1\nT:met\nM:fast\nL:1/8\nK:G\nGABc d2e2|\n", "unreadable meter"),
        "no X": ("T:nox\nM:4/4\nL:1/8\nK:G\nGABc d2e2|f2g2 a4|]\n", "missing X: field"),
        "long bar": ("X:1\nT:long\nM:4/4\nL:1/8\nK:G\nGABc d2e2|f2g2 a4|GABc d2e2 f|g8|]\n", "bar(s) do not match"),
        "short bar": ("X:1\nT:short\nM:3/4\nL:1/8\nK:G\nGABc d2|e2f2g2|f4|GABc d2|e6|]\n", "bar 3 lasts 1/2 < 3/4"),
    }
    for name, (tune, reason) in cases.items():
        r = abc.validate(tune)
        assert not r.ok, name
        assert any(reason in e for e in r.errors), (name, r.errors)
        with pytest.raises(abc.ABCError, match=re.escape(r.label)):
            r.raise_if_bad()
    assert abc.validate("").errors == ["empty tune"]
    # reserved decoration letters: a warning unless U: defines them (Ryan's Mammoth writes k for a snap)
    r = abc.validate("X:1\nT:k\nM:2/4\nL:1/8\nK:G\nkGA kBc|d4|]\n", use_music21=False)
    assert r.ok and r.warnings == ["decoration letters without a U: definition: k"]
    assert abc.validate("X:1\nT:k\nM:2/4\nL:1/8\nU:k=!snap!\nK:G\nkGA kBc|d4|]\n", use_music21=False).warnings == []
    # tolerance: one bad bar in 3 is accepted with max_bad_bars=1 (and reported as a warning)
    r = abc.validate(cases["long bar"][0], max_bad_bars=1, use_music21=False)
    assert r.ok and r.bad_bars == 1 and "do not match" in r.warnings[0]


def test_validate_rejects_real_broken_tunes():
    # Ryan's Mammoth tunes with quoted-printable damage ("=20", "=3D") and a bar that is 7/8 of C
    r = abc.validate(work("ryansMammoth/CosmopolitanHornpipe").read_text(), use_music21=False)
    assert not r.ok and any("unexpected '='" in e for e in r.errors)
    r = abc.validate(work("ryansMammoth/BonniestLassInAyerStrathspey").read_text(), use_music21=False)
    assert not r.ok and any("lasts 7/8 < 1 of M:" in e for e in r.errors)


def test_validate_many_skips_and_reports():
    tunes = ["X:1\nT:a\nM:2/4\nL:1/8\nK:D\nDE FA|d4|]", "X:2\nT:b\nnonsense", None, "X:3\nT:c\nL:1/4\nK:C\nC D E F|"]
    rs = abc.validate_many(tunes, use_music21=False)
    assert [r.ok for r in rs] == [True, False, False, True]
    assert rs[1].label == 'X:2 "b"' and "no K: field" in rs[1].errors[0]


# --------------------------------------------------------------------------------------------------
# normalisation


def test_normalize_canonical_and_idempotent():
    messy = "X: 3\nK:  G\n"  # K first is invalid: it ends the header, so put fields in a messy but legal order
    messy = "Z: someone   \nX: 3\nM: 6/8 % meter\nT:  A   tune\nR:jig\n%%MIDI program 1\nT: other\nK:  G\n\n% comment\nGAB   cde  |\"Am  7\"  dBG  G3|  \n\n\ngfe dBA|]   \n"
    n = abc.normalize(messy)
    lines = n.splitlines()
    assert lines[:5] == ["X:3", "T:A tune", "T:other", "R:jig", "Z:someone"]
    assert lines[5:9] == ["%%MIDI program 1", "L:1/8", "M:6/8", "K:G"]
    assert lines[9:] == ['GAB cde |"Am  7" dBG G3|', "gfe dBA|]"]
    assert n.endswith("\n") and abc.normalize(n) == n
    assert abc.normalize(messy, x=1, drop=("Z", "R")).splitlines()[:4] == ["X:1", "T:A tune", "T:other", "%%MIDI program 1"]
    # the normalised tune means the same music
    assert pitches(n) == pitches("X:3\nM:6/8\nL:1/8\nK:G\nGABcde|dBGG3|gfedBA|]")
    # no L: and no M: -> explicit L:1/8 so music21 can parse it
    assert "L:1/8" in abc.normalize("X:1\nK:C\nCDEF|")
    with pytest.raises(abc.ABCError, match="no K:"):
        abc.normalize("X:1\nT:x\nCDEF|")


def test_normalize_real_tunes_parse_the_same(aird_tunes):
    t = aird_tunes[1]
    n = abc.normalize(t)
    assert pitches(n) == pitches(t)
    assert abc.validate(n, use_music21=False).ok == abc.validate(t, use_music21=False).ok


def test_fingerprint_dedup():
    a = "X:1\nT:One\nM:4/4\nL:1/8\nK:G\nGABc d2e2|f2g2 a4|]\n"
    b = "X:99\nT:Another name\nZ:someone\nM:4/4\nL:1/8\nK:G\n% comment\nGABc  d2e2|\nf2g2 a4|]\n"
    c = a.replace("a4", "b4")
    assert abc.fingerprint(a) == abc.fingerprint(b)
    assert abc.fingerprint(a) != abc.fingerprint(c)
    assert abc.fingerprint(a) != abc.fingerprint(a.replace("K:G", "K:D"))


# --------------------------------------------------------------------------------------------------
# transposition


def test_transpose_g_to_a_shifts_pitches(aird_tunes):
    t = aird_tunes[0]
    assert abc.parse_header(t)["K"] == "G"
    up = abc.transpose(t, 2)
    assert abc.parse_header(up)["K"] == "A"
    p0, p1 = pitches(t), pitches(up)
    assert len(p0) > 50 and p1 == [p + 2 for p in p0]
    # music21 agrees on the key signature
    assert abc.parse_score(up).recurse().getElementsByClass("KeySignature").first().sharps == 3
    # round trip back to the original text's music and key
    back = abc.transpose(up, -2)
    assert abc.parse_header(back)["K"] == "G" and pitches(back) == p0


def abc2midi_pitches(tune: str, tmp: Path) -> list[int]:
    """Pitches as abc2midi plays them (ABC 2.1 semantics: accidentals carry to the end of the bar, inline
    [K:] changes apply). music21's ABC reader does neither, so it cannot judge those cases."""
    mid = abc.abc_to_midi(tune, tmp / "p.mid", engine="abc2midi")
    score = music21.converter.parse(str(mid))
    return [p for _, p in sorted((float(n.offset), p.midi) for n in score.flatten().notes for p in n.pitches)]


def test_transpose_carried_accidentals_against_abc2midi(tmp_path):
    require_tool("abc2midi")
    t = ("X:1\nT:carry\nM:4/4\nL:1/8\nK:Em\nE^FG=F ^d2 d2|_B,B,=B,^c c4|[K:Bb] B2e2 =e2e2|[^ce_g]4 ^c4|\n"
         "K:F#\n^^F2 F2 _B2 B2|c8|]\n")
    p0 = abc2midi_pitches(t, tmp_path)
    assert p0[:8] == [64, 66, 67, 65, 75, 75, 58, 58]  # abc2midi carries ^d and _B through the bar
    for s in (1, 3, 6, -4, -6, 13):
        tt = abc.transpose(t, s)
        assert abc2midi_pitches(tt, tmp_path) == [p + s for p in p0], (s, tt)


def test_transpose_accidentals_keys_and_chords():
    # (music21 ignores inline [K:] for pitches, so the key change is a K: line here)
    t = ('X:1\nT:acc\nM:4/4\nL:1/8\nK:Em\n"Em"E^FG=F "D/F#"^d2 d2|"Am7"_B,B,=B,^c c4|\n'
         'K:Bb\nB2e2 =e2e2|[^ce_g]4 z4|]\n')
    p0 = pitches(t)
    for s in (1, 2, -3, 5, 12, -12):  # no enharmonic respelling of the key change (see the abc2midi test)
        tt = abc.transpose(t, s)
        assert pitches(tt) == [p + s for p in p0], (s, tt)
        assert abc.transpose(tt, -s).count("|") == t.count("|")
        assert pitches(abc.transpose(tt, -s)) == p0
    up = abc.transpose(t, 3)
    h = abc.parse_header(up)
    assert h["K"] == "Gm"
    assert '"Gm"' in up and '"F/A"' in up and '"Cm7"' in up and "\nK:Db\n" in up
    assert abc.transpose("X:1\nL:1/8\nK:C\nC [K:A] A|", 2) == "X:1\nL:1/8\nK:D\nD [K:B] B|"
    assert abc.parse_header(abc.transpose("X:1\nL:1/8\nK:C\nC|", 1))["K"] == "Db"
    assert abc.parse_header(abc.transpose("X:1\nL:1/8\nK:Ador\nA|", 2))["K"] == "Bdor"
    assert abc.parse_header(abc.transpose("X:1\nL:1/8\nK:D exp ^f ^c\nd|", 2))["K"] == "E exp ^g ^d"
    assert abc.transpose(t, 0) == t
    # no key signature: accidentals are written where needed; clef and comments on K: survive
    assert abc.transpose("X:1\nL:1/8\nK:none\nC D ^F|F|", 1) == "X:1\nL:1/8\nK:none\n_D _E =G|_G|"
    assert abc.transpose("X:1\nL:1/8\nK:G clef=bass % c\nG,, B, d|", -2) == "X:1\nL:1/8\nK:F clef=bass % c\nF,, A, c|"


def test_transpose_corpus_tunes_match_music21():
    tunes = abc.split_file(work("oneills1850/0001-0050"))[2:4] + [work("ryansMammoth/AcaciaReel").read_text()]
    for t, s in zip(tunes, (-5, 7, 1)):
        assert pitches(abc.transpose(t, s)) == [p + s for p in pitches(t)], abc.tune_label(t)


def test_transpose_errors():
    with pytest.raises(abc.ABCError, match="bagpipe"):
        abc.transpose("X:1\nT:pipes\nL:1/8\nK:HP\nABc|", 2)
    with pytest.raises(abc.ABCError, match="no K: field"):
        abc.transpose("X:1\nT:nokey\nL:1/8\nABc|", 2)
    with pytest.raises(ValueError, match="engine"):
        abc.transpose("X:1\nL:1/8\nK:C\nC|", 2, engine="bogus")


def test_transpose_agrees_with_abc2abc(aird_tunes):
    require_tool("abc2abc")
    t = aird_tunes[2]
    ours, theirs = abc.transpose(t, 3), abc.transpose(t, 3, engine="abc2abc")
    assert pitches(ours) == pitches(theirs) == [p + 3 for p in pitches(t)]


# --------------------------------------------------------------------------------------------------
# conversions

SHORT = "X:1\nT:Short\nM:4/4\nL:1/8\nQ:1/4=120\nK:D\nDEFG ABcd|e2d2 c2B2|A2F2 D4|[DFA]8|]\n"  # 4 bars = 8 s


def test_abc_to_midi_both_engines(tmp_path):
    expected = pitches(SHORT)
    engines = ["music21"] + (["abc2midi"] if abc.tool_available("abc2midi") else [])
    for eng in engines:
        out = abc.abc_to_midi(SHORT, tmp_path / f"{eng}.mid", engine=eng)
        assert out.read_bytes()[:4] == b"MThd"
        back = music21.converter.parse(str(out))
        assert sorted(struck_pitches(back)) == sorted(expected), eng
    assert sorted(os.listdir(tmp_path)) == sorted(f"{e}.mid" for e in engines)  # no temp files left


def test_abc_to_midi_bad_input(tmp_path, monkeypatch):
    with pytest.raises(abc.ABCError, match=r'X:1 "nokey".*no K: field'):
        abc.abc_to_midi("X:1\nT:nokey\nL:1/8\nABC|", tmp_path / "a.mid")
    with pytest.raises(abc.ABCError, match="empty body"):
        abc.abc_to_midi("X:1\nT:e\nL:1/8\nK:C\n", tmp_path / "a.mid")
    with pytest.raises(abc.ABCError, match="2 tunes"):
        abc.abc_to_midi(SHORT + "\n" + SHORT.replace("X:1", "X:2"), tmp_path / "a.mid")
    with pytest.raises(abc.ABCError, match="no tune found"):
        abc.abc_to_midi("just words", tmp_path / "a.mid")
    assert not (tmp_path / "a.mid").exists()
    # missing tools: an explicit abc2midi request names the package; auto falls back to music21
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolNotFoundError, match=r"abc2midi.*apt-get install abcmidi"):
        abc.abc_to_midi(SHORT, tmp_path / "a.mid", engine="abc2midi")
    assert abc.abc_to_midi(SHORT, tmp_path / "b.mid").read_bytes()[:4] == b"MThd"
    with pytest.raises(ToolNotFoundError, match="midi2abc"):
        abc.midi_to_abc(tmp_path / "b.mid", engine="midi2abc")


def test_abc2midi_strict_reports_errors(tmp_path):
    require_tool("abc2midi")
    tune = "X:1\nT:tie\nM:2/4\nL:1/8\nK:C\nC-D EF|G4|]\n"  # a tie between different notes
    assert abc.abc_to_midi(tune, tmp_path / "lenient.mid", engine="abc2midi").exists()
    with pytest.raises(abc.ABCError, match=r'X:1 "tie": abc2midi: Error'):
        abc.abc_to_midi(tune, tmp_path / "strict.mid", engine="abc2midi", strict=True)
    assert not (tmp_path / "strict.mid").exists()


def test_abc_to_wav_duration_and_audio(tmp_path, oneills_text):
    require_tool("abc2midi")
    require_tool("fluidsynth")
    import numpy as np
    import soundfile as sf

    tune = abc.split_tunes(oneills_text)[1]  # "Fare You Well", no Q: so 120 quarter notes a minute
    out = abc.abc_to_wav(tune, tmp_path / "tune.wav", sample_rate=16000, program=73)
    wav, sr = sf.read(out)
    assert sr == 16000
    expected = float(abc.parse_score(tune).highestTime) * 60 / 120
    assert expected == 24.0
    assert abs(len(wav) / sr - expected) <= 0.1 * expected
    rms = float(np.sqrt(np.mean(wav**2)))
    assert rms > 0.01
    # sound in every second of the tune (no gaps), not just somewhere
    mono = np.abs(wav).mean(axis=1) if wav.ndim == 2 else np.abs(wav)
    per_second = [mono[i * sr : (i + 1) * sr].max() for i in range(int(expected))]
    assert min(per_second) > 0.01
    with pytest.raises(ValueError, match="0..127"):
        abc.abc_to_wav(SHORT, tmp_path / "x.wav", program=300)
    assert not (tmp_path / "x.wav").exists()


def test_abc_to_wav_falls_back_to_music21(tmp_path, monkeypatch):
    require_tool("fluidsynth")
    import shutil

    import soundfile as sf

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "fluidsynth").symlink_to(shutil.which("fluidsynth"))
    monkeypatch.setenv("PATH", str(bin_dir))  # fluidsynth but no abc2midi
    assert not abc.tool_available("abc2midi")
    wav, sr = sf.read(abc.abc_to_wav(SHORT, tmp_path / "m21.wav", sample_rate=16000, program=0))
    assert sr == 16000 and abs(len(wav) / sr - 8.0) <= 0.15 * 8.0 and float(abs(wav).max()) > 0.05


def test_abc_to_musicxml_round_trip(tmp_path, aird_tunes):
    for t in (aird_tunes[0], SHORT):
        out = abc.abc_to_musicxml(t, tmp_path / "t.musicxml")
        orig = abc.parse_score(t)
        back = music21.converter.parse(str(out))
        assert len(back.recurse().notes) == len(orig.recurse().notes) > 0
        assert pitches(back) == pitches(orig)
    with pytest.raises(abc.ABCError, match="no K: field"):
        abc.abc_to_musicxml("X:1\nT:k\nL:1/8\nCDE|", tmp_path / "bad.musicxml")
    assert not (tmp_path / "bad.musicxml").exists()


def test_midi_to_abc_keeps_pitches(tmp_path, aird_tunes):
    t = aird_tunes[7]
    orig = abc.parse_score(t).expandRepeats()  # the MIDI plays the repeats
    engines = ["music21"] + (["midi2abc"] if abc.tool_available("midi2abc") else [])
    mid = abc.abc_to_midi(t, tmp_path / "t.mid", engine="music21")
    for eng in engines:
        text = abc.midi_to_abc(mid, title="Round trip", engine=eng)
        assert abc.parse_header(text)["T"] == "Round trip"
        back = abc.parse_score(text)
        assert struck_pitches(back) == struck_pitches(orig), eng
    with pytest.raises(FileNotFoundError, match="missing.mid"):
        abc.midi_to_abc(tmp_path / "missing.mid")
    (tmp_path / "fake.mid").write_text("not midi")
    with pytest.raises(abc.ABCError, match="not a MIDI file"):
        abc.midi_to_abc(tmp_path / "fake.mid")


def test_score_to_abc_writer():
    # a real tune: pitches and durations survive the writer exactly
    t = abc.split_file(work("oneills1850/0001-0050"))[0]  # ties, grace notes, triplets, naturals in K:Gm
    s = abc.parse_score(t)
    text = abc.score_to_abc(s, title="Enchanted")
    back = abc.parse_score(text)
    assert abc.parse_header(text)["K"] == "Gm" and abc.parse_header(text)["M"] == "2/4"
    notes0 = [(p.midi, n.duration.quarterLength) for n in s.recurse().notes if n.duration.quarterLength for p in n.pitches]
    notes1 = [(p.midi, n.duration.quarterLength) for n in back.recurse().notes for p in n.pitches]
    assert [m for m, _ in notes1] == [m for m, _ in notes0]
    assert [Fraction(d).limit_denominator(64) for _, d in notes1] == [Fraction(d).limit_denominator(64) for _, d in notes0]
    # a Bach chorale soprano (accidentals against a key signature, MusicXML source)
    chorale = corpus.parse("bach/bwv66.6")
    text = abc.score_to_abc(chorale, part=0)
    assert pitches(text) == pitches(chorale.parts[0])
    with pytest.raises(abc.ABCError, match="part 9"):
        abc.score_to_abc(chorale, part=9)
    with pytest.raises(abc.ABCError, match="no notes"):
        abc.score_to_abc(music21.stream.Stream())


def test_convert_many_skips_bad(tmp_path, caplog):
    src = tmp_path / "abc"
    src.mkdir()
    (src / "good.abc").write_text(SHORT + "\n\n" + SHORT.replace("X:1", "X:2"))
    (src / "bad.abc").write_text("X:7\nT:Broken\nM:4/4\nL:1/8\nno key here\n")
    (src / "empty.abc").write_text("% nothing\n")
    rep = abc.convert_many([src, tmp_path / "absent.abc"], tmp_path / "out", fmt="musicxml")
    assert sorted(p.name for p in rep.done) == ["good_1.musicxml", "good_2.musicxml"]
    failed = dict(rep.failed)
    assert "no K: field" in failed[f"{src / 'bad.abc'}#X:7"]
    assert "no tunes" in failed[str(src / "empty.abc")]
    assert "cannot read" in failed[str(tmp_path / "absent.abc")]
    assert sorted(os.listdir(tmp_path / "out")) == ["good_1.musicxml", "good_2.musicxml"]
    assert "2 written, 3 failed" in rep.summary()
    with pytest.raises(ValueError, match="unknown format"):
        abc.convert_many([src], tmp_path / "out", fmt="pdf")


def test_tokenizer_round_trips_text():
    body = abc.parse_header(FEATURES).body
    toks = list(abc.tokenize_body(body))
    assert "".join(t.text for t in toks) == body + "\n"
    kinds = {t.kind for t in toks}
    assert {"note", "rest", "mrest", "bar", "ending", "chord_start", "chord_end", "grace_start", "tuplet",
            "broken", "deco", "text", "inline_field", "field", "directive", "comment", "cont"} <= kinds
    notes = [t for t in toks if t.kind == "note"]
    assert notes[0].letter == "A" and notes[0].length == 1
    assert any(t.text == "d2" and t.length == 2 for t in notes)
