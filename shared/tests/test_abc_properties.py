"""musiccore.abc under generated input (issue 12, hypothesis).

Promises checked: on malformed headers, bodies, meters and lengths every entry point returns a valid result or
raises a typed :class:`ABCError` (an :class:`ABCLimitError` exactly when a bound of ``musiccore.abc.limits`` is
crossed, naming it); the tokenizer gives the line back; and on valid tunes transposing up then down restores every
pitch, normalising is idempotent and fingerprints ignore what normalising drops. A few dozen examples per test in
the default suite, 20x with ``--runslow`` (``musiccore.testing.property_settings``).
"""

from __future__ import annotations

import re

import pytest

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("music21")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from musiccore import abc  # noqa: E402
from musiccore.abc import ABCError, ABCLimitError  # noqa: E402
from musiccore.testing import property_settings  # noqa: E402

# ------------------------------------------------------------------------------------------- malformed tunes

NUMBER = st.one_of(st.integers(0, 70).map(str), st.integers(0, 10**12).map(str), st.just("9" * 60), st.just(""))
METERS = st.one_of(
    st.sampled_from(["4/4", "6/8", "C", "C|", "none", "2+3/8", "(2+2+3)/8", "3/0", "0/4", "/", "fast", "", "12/8"]),
    st.builds(lambda a, b: f"{a}/{b}", NUMBER, NUMBER),
    st.text(alphabet="0123456789/+ ()C|", max_size=30),
)
LENGTHS = st.one_of(st.sampled_from(["1/8", "1/16", "1/4", "1", "1/0", "0", "x", ""]),
                    st.builds(lambda a, b: f"{a}/{b}", NUMBER, NUMBER), st.text(alphabet="0123456789/ ", max_size=20))
KEYS = st.one_of(st.sampled_from(["C", "G", "Am", "F#m", "Bb", "Ddor", "HP", "none", "D exp ^f", "Q", ""]),
                 st.text(max_size=12))
NOTE = st.builds(lambda acc, letter, octave, num, sl, den: f"{acc}{letter}{octave}{num}{sl}{den}",
                 st.sampled_from(["", "^", "_", "=", "^^", "__"]), st.sampled_from("CDEFGABcdefgabzxZ"),
                 st.sampled_from(["", ",", "'", ",,"]), NUMBER, st.sampled_from(["", "/", "//", "/" * 12]), NUMBER)
BODY_TOKEN = st.one_of(
    NOTE, NOTE, NOTE,
    st.sampled_from(["|", "||", "|]", "|:", ":|", "::", "[1", ":|2", " ", "\n", "-", "(", ")", "[", "]", "{", "}",
                     "&", ">", "<", ">>>>>>", '"Am"', '"', "!trill!", "~", "\\", "%c", "[K:D]", "y", "T", "k"]),
    st.builds(lambda n: f"({n}", NUMBER),
    st.builds(lambda m: f"[M:{m}]", METERS),
    st.builds(lambda m: f"[L:{m}]", LENGTHS),
    st.builds(lambda m: f"\nM:{m}\n", METERS),
    st.builds(lambda n: f"Z{n}", NUMBER),
    st.text(max_size=4),
)


@st.composite
def malformed_tunes(draw):
    fields = []
    if draw(st.booleans()):
        fields.append("X:" + draw(st.sampled_from(["1", "", "x" * 50])))
    for letter, values in (("T", st.text(max_size=10)), ("M", METERS), ("L", LENGTHS)):
        if draw(st.booleans()):
            fields.append(f"{letter}:{draw(values)}")
    if draw(st.integers(0, 9)):  # mostly with a K: line
        fields.append("K:" + draw(KEYS))
    body = "".join(draw(st.lists(BODY_TOKEN, max_size=40)))
    return "\n".join(draw(st.permutations(fields)) if draw(st.booleans()) else fields) + "\n" + body


def _typed(e: BaseException) -> None:
    """An expected refusal: an ABCError that names a bound exactly when it is an ABCLimitError."""
    assert isinstance(e, ABCError), f"{type(e).__name__}: {e}"
    assert ("MAX_" in str(e)) == isinstance(e, ABCLimitError), str(e)


@property_settings(60)
@given(malformed_tunes())
def test_validate_gives_a_result_and_the_parsers_a_typed_error(tune):
    r = abc.validate(tune, use_music21=False)  # never raises
    assert isinstance(r, abc.ValidationResult) and all(isinstance(e, str) and e for e in r.errors)
    assert r.over_limit == any("MAX_" in e for e in r.errors)
    if r.errors:
        with pytest.raises(ABCError) as info:
            r.raise_if_bad()
        assert isinstance(info.value, ABCLimitError) == r.over_limit
    for fn in (abc.tune_extent, abc.normalize, lambda t: abc.transpose(t, 5)):
        try:
            out = fn(tune)
        except Exception as e:  # noqa: BLE001 - the property: only typed errors
            _typed(e)
            continue
        if isinstance(out, abc.TuneExtent):
            assert out.whole_notes >= 0 and out.struck_notes >= 0 and out.n_bars <= abc.MAX_BARS
        else:
            assert isinstance(out, str)


@property_settings(8)
@given(malformed_tunes())
def test_validate_with_music21_stays_within_the_bounds(tune):
    """music21 only sees tunes within the bounds; then it parses them or validate() records why not."""
    r = abc.validate(tune)
    if r.over_limit:
        assert r.music21_notes is None
    try:
        abc.parse_score(tune)
    except Exception as e:  # noqa: BLE001
        _typed(e)


@property_settings(60)
@given(st.text(max_size=80) | st.lists(BODY_TOKEN, max_size=30).map("".join))
def test_tokenizer_gives_the_line_back_or_a_typed_error(line):
    line = line.replace("\n", " ")
    try:
        toks = abc.tokenize_line(line, 3)
    except Exception as e:  # noqa: BLE001
        _typed(e)
        assert re.match(r"line 4 col \d+: ", str(e))  # names where
        return
    assert "".join(t.text for t in toks) == line


@property_settings(60)
@given(METERS, LENGTHS)
def test_meters_and_lengths_are_bounded_fractions_or_typed_errors(m, n):
    try:
        meter = abc.parse_meter(m)
        assert meter is None or (0 < meter.numerator <= abc.MAX_METER_NUMERATOR and meter.denominator <= 64)
    except Exception as e:  # noqa: BLE001
        _typed(e)
    try:
        unit = abc.parse_length(n)
        assert 0 < unit <= abc.MAX_UNIT_NUMERATOR and unit.denominator <= abc.MAX_UNIT_DENOMINATOR
    except Exception as e:  # noqa: BLE001
        _typed(e)


# ------------------------------------------------------------------------------------- valid tunes, round trips

#: key -> sharps (+) or flats (-) of its signature, written out here rather than taken from musiccore: the tonic's
#: place on the circle of fifths (F C G D A E B = -1..5, a sharp +7, a flat -7) plus the mode's offset
_TONIC = {"F": -1, "C": 0, "G": 1, "D": 2, "A": 3, "E": 4, "B": 5}
_MODE = {"": 0, "m": -3, "dor": -2, "mix": -1}
KEY_FIFTHS = {t + acc + mode: f + {"": 0, "#": 7, "b": -7}[acc] + off
              for t, f in _TONIC.items() for acc in ("", "#", "b") for mode, off in _MODE.items()
              if abs(f + {"": 0, "#": 7, "b": -7}[acc] + off) <= 7}
GENERATED_KEYS = ["C", "G", "D", "A", "E", "F#", "F", "Bb", "Eb", "Db", "Am", "Em", "F#m", "Dm", "Gm", "Cm",
                  "Ador", "Edor", "Ddor", "Gmix", "Dmix"]
NATURAL = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
ALTER = {"^^": 2, "^": 1, "=": 0, "_": -1, "__": -2}


def written_pitches(tune: str) -> list[int]:
    """MIDI pitches of the notes of a plain tune (notes, chords, bars; one K: in the header), by ABC 2.1 rules
    written out here: the key signature, and an accidental holds for that note up to the end of its bar."""
    key = re.search(r"^K:(\S+)", tune, re.MULTILINE).group(1)
    k = KEY_FIFTHS[key]
    sig = {L: 0 for L in NATURAL}
    for L in ("FCGDAEB"[:k] if k > 0 else "BEADGCF"[: -k]):
        sig[L] = 1 if k > 0 else -1
    body = tune.split(f"K:{key}\n", 1)[1]
    out: list[int] = []
    held: dict[tuple[str, int], int] = {}
    for m in re.finditer(r"(\|)|(\^\^|\^|__|_|=)?([A-Ga-g])([,']*)", body):
        if m.group(1):
            held.clear()
            continue
        letter = m.group(3)
        octave = 5 + (letter.islower()) + m.group(4).count("'") - m.group(4).count(",")
        where = (letter.upper(), octave)
        if m.group(2):
            held[where] = ALTER[m.group(2)]
        out.append(12 * octave + NATURAL[letter.upper()] + held.get(where, sig[letter.upper()]))
    return out


@st.composite
def plain_tunes(draw):
    key = draw(st.sampled_from(GENERATED_KEYS))
    note = st.builds(lambda a, n, d: a + n + d, st.sampled_from(["", "", "", "^", "_", "=", "^^", "__"]),
                     st.sampled_from("CDEFGAB"), st.sampled_from(["", "2", "/2"]))
    bars = []
    for _ in range(draw(st.integers(1, 6))):
        items = draw(st.lists(note | st.lists(note, min_size=2, max_size=3).map(lambda c: "[" + "".join(c) + "]"),
                              min_size=1, max_size=6))
        bars.append(" ".join(items))
    return f"X:1\nT:gen\nM:4/4\nL:1/8\nK:{key}\n" + "|".join(bars) + "|]\n"


@property_settings(40)
@given(plain_tunes(), st.integers(-11, 11))
def test_transpose_up_then_down_restores_every_pitch(tune, s):
    p0 = written_pitches(tune)
    up = abc.transpose(tune, s)
    assert written_pitches(up) == [p + s for p in p0]
    back = abc.transpose(up, -s)
    assert written_pitches(back) == p0
    assert abc.parse_header(back)["K"] in KEY_FIFTHS and abc.parse_header(up)["K"] in KEY_FIFTHS


@property_settings(40)
@given(plain_tunes(), st.text(alphabet="abc XYZ", max_size=8), st.integers(1, 999))
def test_normalize_is_idempotent_and_fingerprint_ignores_titles_and_spacing(tune, title, x):
    n = abc.normalize(tune)
    assert abc.normalize(n) == n
    retitled = tune.replace("T:gen", f"T:{title}\nZ:someone").replace("X:1", f"X:{x}").replace(" ", "  ")
    assert abc.fingerprint(retitled) == abc.fingerprint(tune)
    assert written_pitches(n) == written_pitches(tune)
    ext = abc.tune_extent(tune)
    r = abc.validate(tune, use_music21=False, check_bars=False)
    assert r.ok and ext.struck_notes == r.n_notes and ext.whole_notes > 0  # no ties: every note is struck


def test_written_pitches_helper_reads_carried_accidentals():
    """The test's own reader follows ABC 2.1 (so the round trip above cannot pass on a reader that ignores keys)."""
    assert written_pitches("X:1\nK:D\nF ^C C =F F|F|]\n") == [66, 61, 61, 65, 65, 66]
    assert written_pitches("X:1\nK:Bb\nB b, [B=E] E|E|]\n") == [70, 70, 70, 64, 64, 63]
