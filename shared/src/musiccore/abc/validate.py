"""Checking ABC: :func:`validate` (structure, bar durations, music21 parse), :func:`validate_many`,
:func:`tune_extent` (what a player must at least produce) and :func:`parse_score` (music21, within bounds).

All work is bounded by :mod:`musiccore.abc.limits`: an over-sized tune fails (``over_limit``) with a message
naming the field or line and the limit instead of running for minutes or gigabytes.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import warnings
from fractions import Fraction
from typing import Any, Iterable

from musiccore.abc.limits import (
    MAX_BARS,
    MAX_BROKEN,
    MAX_NOTES,
    MAX_NOTE_DENOMINATOR,
    MAX_NOTE_UNITS,
    MAX_TUNE_CHARS,
    ABCError,
    ABCLimitError,
    check_tune_size,
)
from musiccore.abc.parse import (
    _FIELD_RE,
    _INLINE_RE,
    _TUPLET_RE,
    Token,
    _meter_numerator,
    _single,
    _strip_comment,
    default_unit_length,
    parse_header,
    parse_key,
    parse_length,
    parse_meter,
    tokenize_body,
    tune_label,
    user_symbols,
)

log = logging.getLogger("musiccore.abc")

__all__ = ["ValidationResult", "TuneExtent", "validate", "validate_many", "tune_extent", "parse_score"]


@dataclasses.dataclass
class ValidationResult:
    """Outcome of :func:`validate`. ``ok`` is true when ``errors`` is empty; ``warnings`` never fail a tune."""

    label: str
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    n_bars: int = 0
    n_notes: int = 0  # notes and chord members in the ABC text (grace notes excluded)
    bad_bars: int = 0
    music21_notes: int | None = None  # notes music21 found, when it was asked to parse
    seconds: float = 0.0
    over_limit: bool = False  # a bound of musiccore.abc.limits was exceeded (the tune was not fully checked)

    @property
    def ok(self) -> bool:
        return not self.errors

    def __bool__(self) -> bool:
        return self.ok

    def raise_if_bad(self) -> None:
        """Raise :class:`ABCLimitError` (tune over a bound) or :class:`ABCError` listing the errors, if any."""
        if self.errors:
            raise (ABCLimitError if self.over_limit else ABCError)(f"{self.label}: " + "; ".join(self.errors))


@dataclasses.dataclass
class _Voice:
    unit: Fraction
    meter: Fraction | None
    meter_num: int | None
    # one entry per closed bar: (duration, is a multi-bar rest, line, opening bar kind, closing bar kind, meter)
    bars: list[tuple[Fraction, bool, int, str, str, Fraction | None]] = dataclasses.field(default_factory=list)
    # current bar
    cur: list[Fraction] = dataclasses.field(default_factory=list)
    cur_sum: Fraction = Fraction(0)  # sum(cur), kept as it changes (summing per note is quadratic in a bar)
    seg_max: Fraction = Fraction(0)
    full_rest: bool = False
    start_kind: str = "start"
    line: int = 0
    n_barlines: int = 0
    done: Fraction = Fraction(0)  # time of the closed bars (multi-bar rests count M: each)
    last_note_end: Fraction = Fraction(0)  # end of the last note or chord (trailing rests excluded)
    last_onset: Fraction = Fraction(0)  # start of the last note or chord that is not a tied continuation
    tied: bool = False  # a "-" waits for the note it ties into


def _bar_kind(text: str) -> str:
    t = text.rstrip("0123456789,-")
    if t in ("|",) and not text[len(t):]:
        return "plain"
    return "section"


def validate(
    tune: str,
    *,
    use_music21: bool = True,
    check_bars: bool = True,
    max_bad_bars: int | float = 0,
) -> ValidationResult:
    """Check one tune; returns a :class:`ValidationResult` (never raises for bad ABC).

    Structural checks: an ``X:`` field, a ``K:`` field ending the header, an ``L:`` or ``M:`` field
    (music21 needs one), readable ``M:``/``L:``/``K:`` values, a body with notes, balanced ``[]``,
    ``{}``, ``()`` and ``"``, no stray characters, and bar durations against ``M:``/``L:`` (including
    inline ``[M:..]``/``[L:..]`` changes, tuplets ``(3``, broken rhythm ``>``/``<``, chords ``[CEG]2``,
    grace notes ``{..}`` (no duration), multi-bar rests ``Z4``, overlays ``&`` and per-voice ``V:``).
    Short bars are allowed at the start and end of a voice and next to section bar lines (``||``,
    ``|:``, ``:|``, ``::``, ``|]``, endings), where pickups and their complements live; a line that ends
    with exactly one full bar and no bar line closes the bar (the Essen style). A bar that is too long,
    or too short elsewhere, is a *bad bar*; more than ``max_bad_bars`` of them (a count, or a fraction
    of the bars when < 1) make an error, fewer are warnings. ``use_music21`` also parses the tune with
    music21 and fails it if that raises or yields no notes.

    Work is bounded (:mod:`musiccore.abc.limits`): a tune over a bound (size, bars, meter, unit or note
    length, numbers) fails with ``over_limit`` set and an error naming the field or line and the limit,
    and music21 is not asked to parse it (:meth:`ValidationResult.raise_if_bad` then raises
    :class:`ABCLimitError`).
    """
    t0 = time.perf_counter()
    res = ValidationResult(label=tune_label(tune[:MAX_TUNE_CHARS] if tune else tune))
    if not tune or not tune.strip():
        res.errors.append("empty tune")
        return res
    try:
        check_tune_size(tune, res.label)
    except ABCLimitError as e:
        res.errors.append(str(e)[len(res.label) + 2:])
        res.over_limit = True
        return res
    h = parse_header(tune, strict=False)
    if not re.search(r"^X:", tune, re.MULTILINE):
        res.errors.append("missing X: field")
    elif not tune.lstrip().startswith("X:"):
        res.errors.append("text before the X: line")
    if "K" not in h:
        res.errors.append("no K: field (the header must end with a K: line)")
        res.seconds = time.perf_counter() - t0
        return res
    res.warnings.extend(h.stray)
    if "L" not in h and "M" not in h:
        res.errors.append("no L: or M: field (the unit note length is undefined for music21)")
    meter: Fraction | None = None
    try:
        meter = parse_meter(h.get("M"))
    except ABCError as e:
        res.errors.append(str(e))
        res.over_limit |= isinstance(e, ABCLimitError)
    try:
        unit = parse_length(h["L"]) if "L" in h else default_unit_length(meter)
    except ABCError as e:
        res.errors.append(str(e))
        res.over_limit |= isinstance(e, ABCLimitError)
        unit = default_unit_length(meter)
    key = parse_key(h["K"])
    if h["K"].strip() and key.tonic is None and not key.special and not h["K"].strip().lower().startswith("none") \
            and not key.rest.lower().startswith(("clef", "treble", "bass", "alto", "tenor", "perc")):
        res.warnings.append(f"unusual key K:{h['K']}")

    body = h.body
    if not body.strip():
        res.errors.append("empty body (no music after K:)")
        res.seconds = time.perf_counter() - t0
        return res
    try:
        _structure(body, h.body_line, unit, meter, h.get("M"), res, check_bars, max_bad_bars, user_symbols(tune))
        walked = True
    except ABCError as e:  # the tokenizer met an unreadable or out-of-bounds length: the rest is not checked
        res.errors.append(str(e))
        res.over_limit |= isinstance(e, ABCLimitError)
        walked = False
    if walked and res.n_notes == 0 and not any("no notes" in e for e in res.errors):
        res.errors.append("no notes in the body")
    if use_music21 and walked and not res.over_limit and not any(e.startswith(("no K:", "no L: or M:"))
                                                                 for e in res.errors):
        try:
            score = parse_score(tune)
            res.music21_notes = _count_notes(score)
            if res.music21_notes == 0:
                res.errors.append("music21 found no notes")
        except ABCError as e:
            msg = str(e)
            res.errors.append(msg[len(res.label) + 2:] if msg.startswith(res.label + ": ") else msg)
    res.seconds = time.perf_counter() - t0
    return res


def _structure(body: str, first_line: int, unit: Fraction, meter: Fraction | None, meter_text: str | None,
               res: ValidationResult, check_bars: bool, max_bad_bars: int | float,
               symbols: frozenset[str] = frozenset()) -> tuple[Fraction, Fraction, int]:
    """Bracket balance, stray characters and bar durations of a body; fills ``res``.

    Returns ``(end, onset, struck)``: when the last note or chord of the longest voice ends and when the
    latest one starts (whole notes, in written order: repeats not expanded, trailing rests not counted), and
    how many notes are struck (chord members count one each; grace notes and tied continuations not at
    all). Any player lasts and strikes at least that much (:func:`tune_extent`). Raises :class:`ABCLimitError`
    past :data:`MAX_BARS` bars or :data:`MAX_NOTES` notes.
    """
    voices: dict[str, _Voice] = {}
    vname = "1"
    v = voices[vname] = _Voice(unit=unit, meter=meter, meter_num=_meter_numerator(meter_text))
    depth = {"chord": 0, "grace": 0, "slur": 0}
    tuplet_left, tuplet_mult = 0, Fraction(1)
    broken_next: Fraction | None = None
    in_chord_first: Fraction | None = None
    stray: list[str] = []
    undefined: set[str] = set()
    n_closed = 0  # bars closed so far, all voices (bounded by MAX_BARS)
    n_seen = 0  # note tokens so far, grace notes included (bounded by MAX_NOTES)
    n_tied = 0  # struck notes that a tie continues (not struck again)
    last_group = 0  # notes in the last note or chord (what a following "-" ties)
    chord_members = 0

    def set_field(letter: str, value: str, line: int) -> None:
        nonlocal v, vname
        if letter == "M":
            try:
                v.meter = parse_meter(value)
                v.meter_num = _meter_numerator(value)
            except ABCError as e:
                res.errors.append(f"line {line + 1}: {e}")
                res.over_limit |= isinstance(e, ABCLimitError)
        elif letter == "L":
            try:
                v.unit = parse_length(value)
            except ABCError as e:
                res.errors.append(f"line {line + 1}: {e}")
                res.over_limit |= isinstance(e, ABCLimitError)
        elif letter == "V":
            name = (value.split() or ["1"])[0]
            if name != vname:
                if name not in voices:
                    voices[name] = _Voice(unit=v.unit, meter=v.meter, meter_num=v.meter_num)
                vname = name
                v = voices[name]

    def add(d: Fraction, note: bool = False) -> None:
        v.cur.append(d)
        v.cur_sum += d
        if note:
            v.last_note_end = v.done + v.cur_sum
            if not v.tied:  # a tied continuation sounds on from the note before it: no new onset
                v.last_onset = v.last_note_end - d
        v.tied = False

    def close_bar(kind_end: str, line: int) -> None:
        nonlocal n_closed
        total = max(v.cur_sum, v.seg_max)
        if total > 0 or v.full_rest:
            n_closed += 1
            if n_closed > MAX_BARS:
                raise ABCLimitError(f"line {line + 1 if line < 10**9 else 'end'}: more than MAX_BARS={MAX_BARS} bars")
            v.bars.append((total, v.full_rest, line, v.start_kind, kind_end, v.meter))
            v.done += total if total > 0 else (v.meter or Fraction(0))
        v.cur = []
        v.cur_sum = Fraction(0)
        v.seg_max = Fraction(0)
        v.full_rest = False
        v.start_kind = kind_end

    for tok in tokenize_body(body, first_line, symbols):
        k = tok.kind
        if k == "field":
            m = _FIELD_RE.match(tok.text)
            set_field(m.group(1), _strip_comment(m.group(2)).strip(), tok.line)
            continue
        if k == "inline_field":
            m = _INLINE_RE.match(tok.text)
            set_field(m.group(1), m.group(2).strip(), tok.line)
            continue
        if k == "space" and tok.text == "\n":
            # Essen style: a line that ends exactly on a full bar without a bar line closes the bar
            if v.meter is not None and v.cur and v.cur_sum == v.meter and depth["chord"] == 0:
                close_bar("plain", tok.line)
            continue
        if k == "symbol":
            undefined.add(tok.text)
            continue
        if k == "other":
            stray.append(f"line {tok.line + 1} col {tok.col + 1}: unexpected {tok.text[:10]!r}")
            continue
        if k == "chord_start":
            depth["chord"] += 1
            in_chord_first = None
            chord_members = 0
            continue
        if k == "chord_end":
            depth["chord"] -= 1
            if depth["chord"] < 0:
                res.errors.append(f"line {tok.line + 1}: ']' without '['")
                depth["chord"] = 0
                continue
            if in_chord_first is not None and depth["grace"] == 0:
                _check_note_length(in_chord_first * tok.length, tok, res)
                d = in_chord_first * tok.length * v.unit
                d, tuplet_left, broken_next = _apply_time(d, tuplet_left, tuplet_mult, broken_next)
                add(d, note=chord_members > 0)
                last_group = chord_members
            continue
        if k == "grace_start":
            depth["grace"] += 1
            continue
        if k == "grace_end":
            depth["grace"] -= 1
            if depth["grace"] < 0:
                res.errors.append(f"line {tok.line + 1}: '}}' without '{{'")
                depth["grace"] = 0
            continue
        if k == "slur_start":
            depth["slur"] += 1
            continue
        if k == "slur_end":
            depth["slur"] -= 1
            continue
        if k == "tuplet":
            m = _TUPLET_RE.match(tok.text)
            p = int(m.group(1))
            if p < 2:
                res.errors.append(f"line {tok.line + 1}: bad tuplet {tok.text}")
                continue
            q = int(m.group(2)) if m.group(2) else None
            r = int(m.group(3)) if m.group(3) else p
            if q is None:
                compound = v.meter_num is not None and v.meter_num % 3 == 0 and v.meter_num > 3
                q = {2: 3, 3: 2, 4: 3, 6: 2, 8: 3}.get(p, 3 if compound else 2)
            tuplet_left, tuplet_mult = r, Fraction(q, p)
            continue
        if k == "broken":
            if len(tok.text) > MAX_BROKEN:
                res.errors.append(f"line {tok.line + 1} col {tok.col + 1}: broken rhythm of {len(tok.text)} signs "
                                  f"(limit MAX_BROKEN={MAX_BROKEN})")
                res.over_limit = True
                continue
            if not v.cur:
                res.errors.append(
                    f"line {tok.line + 1} col {tok.col + 1}: broken rhythm {tok.text!r} without a note before it")
                continue
            nb = len(tok.text)
            short = Fraction(1, 2 ** nb)
            long_ = 2 - short
            first, second = (long_, short) if tok.text[0] == ">" else (short, long_)
            v.cur_sum += v.cur[-1] * first - v.cur[-1]
            v.cur[-1] = v.cur[-1] * first
            broken_next = second
            continue
        if k == "tie":
            if depth["grace"] == 0:
                n_tied += last_group
                v.tied = True
            last_group = 0
            continue
        if k in ("note", "rest"):
            if k == "note":
                res.n_notes += depth["grace"] == 0
                n_seen += 1
                if n_seen > MAX_NOTES:
                    raise ABCLimitError(f"line {tok.line + 1} col {tok.col + 1}: more than MAX_NOTES={MAX_NOTES} notes")
            if depth["grace"] > 0:
                continue
            if depth["chord"] > 0:
                if in_chord_first is None:
                    in_chord_first = tok.length
                chord_members += k == "note"
                continue
            _check_note_length(tok.length, tok, res)
            d = tok.length * v.unit
            d, tuplet_left, broken_next = _apply_time(d, tuplet_left, tuplet_mult, broken_next)
            add(d, note=k == "note")
            last_group = int(k == "note")
            continue
        if k == "mrest":
            n_bars = int(tok.length)
            if n_closed + n_bars > MAX_BARS:  # Z99999999 would close 10^8 bars one by one
                raise ABCLimitError(f"line {tok.line + 1} col {tok.col + 1}: multi-bar rest {tok.text} makes more "
                                    f"than MAX_BARS={MAX_BARS} bars")
            v.full_rest = True
            for _ in range(max(n_bars - 1, 0)):
                close_bar("plain", tok.line)
                v.full_rest = True
            continue
        if k == "overlay":
            v.seg_max = max(v.seg_max, v.cur_sum)
            v.cur = []
            v.cur_sum = Fraction(0)
            continue
        if k in ("bar", "ending"):
            if depth["chord"] > 0:
                res.errors.append(f"line {tok.line + 1} col {tok.col + 1}: bar line inside a chord '['")
                depth["chord"] = 0
            kind = "section" if k == "ending" else _bar_kind(tok.text)
            v.n_barlines += k == "bar"
            if k == "ending" and not v.cur:
                v.start_kind = "section"
                continue
            close_bar(kind, tok.line)
            continue
    for name, vv in voices.items():
        if vv.cur:
            v = vv
            close_bar("end", 10**9)
    if depth["chord"] > 0:
        res.errors.append("unbalanced '[': a chord is not closed")
    if depth["grace"] > 0:
        res.errors.append("unbalanced '{': a grace-note group is not closed")
    if depth["slur"] != 0:
        res.warnings.append(f"unbalanced slurs ({depth['slur']:+d} open)")
    if body.count('"') % 2:
        res.errors.append("unbalanced '\"': a chord symbol or annotation is not closed")
    if undefined:
        res.warnings.append(f"decoration letters without a U: definition: {''.join(sorted(undefined))}")
    if stray:
        res.errors.append(f"{len(stray)} unexpected character(s): " + "; ".join(stray[:3]))

    res.n_bars = sum(len(vv.bars) for vv in voices.values())
    extent = (max(vv.last_note_end for vv in voices.values()), max(vv.last_onset for vv in voices.values()),
              max(res.n_notes - n_tied, 0))
    if not check_bars:
        return extent
    bad: list[str] = []
    for name, vv in voices.items():
        nb = len(vv.bars)
        if vv.n_barlines < 2 and nb:
            # unbarred music (e.g. the Josquin pieces): there is nothing to check the meter against
            res.warnings.append(f"voice {name} has no bar lines; bar durations not checked")
            continue
        for i, (dur, full_rest, line, start_kind, end_kind, meter_now) in enumerate(vv.bars):
            if meter_now is None or full_rest:
                continue
            if dur == meter_now:
                continue
            where = f"line {line + 1 if line < 10**9 else 'end'}" + (f" (voice {name})" if len(voices) > 1 else "")
            if dur > meter_now:
                bad.append(f"{where}: bar {i + 1} lasts {dur} > {meter_now} of M:")
                continue
            lenient = i == 0 or i == nb - 1 or start_kind != "plain" or end_kind != "plain"
            if not lenient:
                bad.append(f"{where}: bar {i + 1} lasts {dur} < {meter_now} of M:")
    res.bad_bars = len(bad)
    limit = max_bad_bars if max_bad_bars >= 1 or max_bad_bars == 0 else max_bad_bars * max(res.n_bars, 1)
    if bad:
        msg = f"{len(bad)} bar(s) do not match M:/L: (" + "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else "") + ")"
        if len(bad) > limit:
            res.errors.append(msg)
        else:
            res.warnings.append(msg)
    return extent


def _check_note_length(units: Fraction, tok: Token, res: ValidationResult) -> None:
    """Record an error (and ``over_limit``) for a note/rest longer than :data:`MAX_NOTE_UNITS` units of ``L:``
    or shorter than ``1/MAX_NOTE_DENOMINATOR`` of it (once per tune: one such error already fails it)."""
    if res.over_limit:
        return
    if units > MAX_NOTE_UNITS:
        res.errors.append(f"line {tok.line + 1} col {tok.col + 1}: a note lasts {units} units of L: "
                          f"(more than MAX_NOTE_UNITS={MAX_NOTE_UNITS})")
        res.over_limit = True
    elif units.denominator > MAX_NOTE_DENOMINATOR:
        res.errors.append(f"line {tok.line + 1} col {tok.col + 1}: a note lasts {units} units of L: "
                          f"(shorter than 1/MAX_NOTE_DENOMINATOR=1/{MAX_NOTE_DENOMINATOR})")
        res.over_limit = True


def _count_notes(score) -> int:
    """Notes and chords of a music21 stream, not counting chord symbols (``"Am"``), which music21 lists too."""
    from music21 import harmony

    return sum(1 for n in score.recurse().notes if not isinstance(n, harmony.ChordSymbol))


def _apply_time(d: Fraction, tuplet_left: int, tuplet_mult: Fraction, broken_next: Fraction | None):
    if tuplet_left > 0:
        d = d * tuplet_mult
        tuplet_left -= 1
    if broken_next is not None:
        d = d * broken_next
        broken_next = None
    return d, tuplet_left, broken_next


def validate_many(tunes: Iterable[str], **kwargs: Any) -> list[ValidationResult]:
    """:func:`validate` each tune; a tune that crashes the checker becomes a failed result, never an exception."""
    out = []
    for t in tunes:
        try:
            out.append(validate(t, **kwargs))
        except Exception as e:  # noqa: BLE001 - batch helper: record and carry on
            r = ValidationResult(label=tune_label(t or ""))
            r.errors.append(f"validator crashed: {type(e).__name__}: {e}")
            out.append(r)
    bad = sum(not r.ok for r in out)
    if bad:
        log.info("validate_many: %d of %d tunes failed", bad, len(out))
    return out



@dataclasses.dataclass(frozen=True)
class TuneExtent:
    """What any faithful player of a tune produces at least (:func:`tune_extent`): a lower bound, since
    repeats are not expanded and grace notes, trailing rests and guitar-chord accompaniment are not counted."""

    whole_notes: Fraction  # when the last note or chord of the longest voice ends, in whole notes
    last_onset: Fraction  # when the latest note or chord starts, in whole notes (staccato cannot move it)
    struck_notes: int  # notes struck (chord members one each; tied continuations and grace notes excluded)
    n_bars: int

    @property
    def quarter_notes(self) -> float:
        return float(self.whole_notes * 4)

    @property
    def last_onset_quarters(self) -> float:
        return float(self.last_onset * 4)


def tune_extent(tune: str) -> TuneExtent:
    """Written length and struck notes of one tune (see :class:`TuneExtent`), from the same walk as
    :func:`validate` (tuplets, broken rhythm, chords, inline ``[L:]``/``[M:]``, voices, overlays).

    Used to catch a renderer that stops early (:func:`musiccore.abc.abc_to_midi`). An unreadable ``M:`` or
    ``L:`` falls back to the ABC defaults; raises :class:`ABCError` for a tune without ``K:`` or with an
    unreadable length (``A/0``) and :class:`ABCLimitError` for a tune over a bound.
    """
    label = tune_label(tune[:MAX_TUNE_CHARS])
    check_tune_size(tune, label)
    h = parse_header(tune)
    meter: Fraction | None = None
    unit: Fraction | None = None
    try:
        meter = parse_meter(h.get("M"))
        unit = parse_length(h["L"]) if "L" in h else None
    except ABCLimitError as e:
        raise ABCLimitError(f"{label}: {e}") from e
    except ABCError:
        pass  # players fall back to defaults too
    res = ValidationResult(label=label)
    try:
        end, onset, struck = _structure(h.body, h.body_line, unit or default_unit_length(meter), meter, h.get("M"), res,
                                 False, 0, user_symbols(tune))
    except ABCError as e:
        raise type(e)(f"{label}: {e}") from e
    if res.over_limit:
        raise ABCLimitError(f"{label}: {next(e for e in res.errors if 'MAX_' in e)}")
    return TuneExtent(whole_notes=end, last_onset=onset, struck_notes=struck, n_bars=res.n_bars)


def parse_score(tune: str):
    """Parse one tune with music21 (``converter.parse(format='abc')``) -> ``music21.stream.Score``.

    Raises :class:`ABCError` naming the tune when music21 fails (e.g. no ``L:``/``M:`` field), and
    :class:`ABCLimitError` before music21 is asked when the tune is over a bound of
    :mod:`musiccore.abc.limits` (size, bars, meter, unit length, a note longer than :data:`MAX_NOTE_UNITS`
    units), since music21's time and memory grow with those.
    """
    from music21 import converter

    label = tune_label(tune[:MAX_TUNE_CHARS])
    check_tune_size(tune, label)
    t = _single(tune)
    h = parse_header(t, strict=False)
    if "K" not in h:
        raise ABCError(f"{label}: no K: field")
    if "L" not in h and "M" not in h:
        # music21 needs a unit length; the ABC default for a tune without M: is 1/8
        t = re.sub(r"^(X:[^\n]*)", r"\1\nL:1/8", t, count=1, flags=re.MULTILINE)
    res = ValidationResult(label=label)
    for letter, read in (("M", parse_meter), ("L", parse_length)):
        try:
            if letter in h:
                read(h[letter])
        except ABCLimitError as e:
            raise ABCLimitError(f"{label}: {e}; not parsed") from e
        except ABCError:
            pass  # an unreadable (not oversized) field is music21's to judge, as before the bounds
    try:
        # bars, multi-bar rests, inline fields and note lengths against the bounds (e.g. "C2222222" from a
        # language model made music21 re-bar for minutes); the unit and meter given here do not matter
        _structure(h.body, h.body_line, Fraction(1, 8), None, None, res, False, 0)
    except ABCError as e:  # the tokenizer: "A/0", a 5,000-digit length, or more than MAX_BARS bars
        raise type(e)(f"{label}: {e}; not parsed") from e
    if res.over_limit:
        raise ABCLimitError(f"{label}: {next(e for e in res.errors if 'MAX_' in e)}; not parsed")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            score = converter.parse(t, format="abc", forceSource=True)
    except Exception as e:  # noqa: BLE001 - music21 raises many types for bad ABC
        raise ABCError(f"{label}: music21 could not parse it: {type(e).__name__}: {str(e)[:200]}") from e
    return score
