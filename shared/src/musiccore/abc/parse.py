"""Reading ABC text: splitting tunes, header fields, meters, unit lengths, keys and the body tokenizer.

Pure text work on strings (no music21, no external tools). Numbers read from a tune are bounded
(:mod:`musiccore.abc.limits`): a meter, unit length or note length beyond a bound raises
:class:`~musiccore.abc.limits.ABCLimitError` naming the field or the line and column.
"""

from __future__ import annotations

import dataclasses
import re
from fractions import Fraction
from pathlib import Path
from typing import Iterator

from musiccore.abc.limits import (
    MAX_LENGTH_SLASHES,
    MAX_METER_DENOMINATOR,
    MAX_METER_NUMERATOR,
    MAX_NUMBER_DIGITS,
    MAX_UNIT_DENOMINATOR,
    MAX_UNIT_NUMERATOR,
    ABCError,
    ABCLimitError,
)

__all__ = [
    "Header",
    "KeySpec",
    "Token",
    "split_tunes",
    "split_file",
    "parse_header",
    "tune_body",
    "tune_label",
    "parse_meter",
    "parse_length",
    "default_unit_length",
    "parse_key",
    "tokenize_line",
    "tokenize_body",
    "user_symbols",
]

# --------------------------------------------------------------------------------------------------
# splitting and headers
# --------------------------------------------------------------------------------------------------

_FIELD_RE = re.compile(r"^([A-Za-z+]):(.*)$")
_X_RE = re.compile(r"^X:", re.MULTILINE)
# fields that may appear as whole lines inside a tune body (ABC 2.1 section 3)
_BODY_FIELDS = set("IKLMmNPQRrsTUVWw+")
# canonical header order used by normalize(); anything unknown goes after the metadata, before Q/L/M/V/K
_HEADER_ORDER = ["X", "T", "C", "O", "A", "R", "B", "D", "F", "G", "H", "N", "S", "Z", "W",
                 "I", "U", "P", "Q", "L", "M", "V", "K"]


def split_tunes(text: str, keep_file_header: bool = True) -> list[str]:
    """Split a multi-tune ABC text on ``X:`` lines; one string per tune (no trailing blank lines).

    A tune ends at the next ``X:`` line or at the first empty line after its ``K:`` line (ABC 2.1), so free
    text between tunes is dropped.

    Text before the first ``X:`` is the file header. With ``keep_file_header`` its field lines and
    ``%%`` directives (e.g. a shared ``L:`` or ``%%MIDI`` line) are copied into every tune right after
    its ``X:`` line, unless the tune sets the same field itself; free text and ``%`` comments are dropped.
    A text with no ``X:`` line at all but with a ``K:`` field is returned as one tune with ``X:1`` prepended
    (the form language models often emit); text with neither gives an empty list.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    starts = [m.start() for m in _X_RE.finditer(text)]
    if not starts:
        if re.search(r"^K:", text, re.MULTILINE):
            return ["X:1\n" + text.strip("\n")]
        return []
    preamble = text[: starts[0]]
    shared: list[str] = []
    if keep_file_header:
        for line in preamble.split("\n"):
            s = line.rstrip()
            if s.startswith("%%") or (_FIELD_RE.match(s) and s[0] not in "XTK"):
                shared.append(s)
    tunes = []
    for i, st in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        tune = _cut_at_blank_line(text[st:end]).rstrip()
        if shared:
            own = {ln[0] for ln in tune.split("\n") if _FIELD_RE.match(ln)}
            extra = [s for s in shared if s.startswith("%%") or s[0] not in own]
            first, _, rest = tune.partition("\n")
            tune = "\n".join([first, *extra] + ([rest] if rest else []))
        tunes.append(tune)
    return tunes


def _cut_at_blank_line(chunk: str) -> str:
    """A tune ends at the first empty line after its ``K:`` line (ABC 2.1); drop the free text after it."""
    m = re.search(r"^K:.*$", chunk, re.MULTILINE)
    if m is None:
        return chunk
    b = re.search(r"\n[ \t]*\n", chunk[m.end():])
    return chunk if b is None else chunk[: m.end() + b.start()]


def split_file(path: str | Path, keep_file_header: bool = True) -> list[str]:
    """Read an ``.abc`` file and :func:`split_tunes` it; :class:`ABCError` naming the file if unreadable."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ABCError(f"{path}: cannot read ABC file ({e.strerror or e})") from e
    return split_tunes(text, keep_file_header=keep_file_header)


class Header(dict):
    """Header fields of one tune: ``header["T"]`` is the first value of a field (a ``str``).

    Repeated fields (several ``T:`` titles, ``N:`` notes, ``Z:`` lines) are all kept:
    ``header.getall("T")`` lists them in order, and ``header.fields`` is the ordered list of
    ``(letter, value)`` pairs including ``%%`` directives (letter ``"%%"``). ``header.body`` is the text after
    the ``K:`` line and ``header.body_line`` its 0-based line number in the tune.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fields: list[tuple[str, str]] = []
        self.body: str = ""
        self.body_line: int = 0
        self.stray: list[str] = []  # header lines that are not fields (kept out of the header, reported)

    def add(self, letter: str, value: str) -> None:
        self.fields.append((letter, value))
        if letter != "%%":
            self.setdefault(letter, value)

    def getall(self, letter: str) -> list[str]:
        return [v for k, v in self.fields if k == letter]

    @property
    def titles(self) -> list[str]:
        return self.getall("T")


def tune_label(tune: str) -> str:
    """Short human label for messages: ``X:3 "The Little Heathy Hill"`` (works on malformed text too)."""
    x = re.search(r"^X:[ \t]*(.*)$", tune, re.MULTILINE)
    t = re.search(r"^T:[ \t]*(.*)$", tune, re.MULTILINE)
    parts = [f"X:{_short(x.group(1).strip(), 100)}" if x else "X:?"]
    if t and t.group(1).strip():
        parts.append(f'"{_short(t.group(1).strip(), 100)}"')
    return " ".join(parts)


def parse_header(tune: str, strict: bool = True) -> Header:
    """Parse the header (``X:`` ... ``K:``) of one tune into a :class:`Header`.

    ``+:`` lines continue the previous field. ``%`` comments are skipped, ``%%`` directives kept; header
    lines that are not fields are skipped and listed in ``header.stray``. With ``strict`` a tune without
    a ``K:`` field raises :class:`ABCError` naming the tune; with ``strict=False`` the header collects what
    it can and ``body`` is empty when no ``K:`` is found.
    """
    h = Header()
    lines = tune.replace("\r\n", "\n").split("\n")
    label = tune_label(tune)
    for i, raw in enumerate(lines):
        line = raw.rstrip()
        if not line.strip():
            if h.fields:  # a blank line inside the header ends the tune (ABC 2.1)
                break
            continue
        if line.startswith("%%"):
            h.add("%%", line[2:].strip())
            continue
        if line.lstrip().startswith("%"):
            continue
        m = _FIELD_RE.match(line)
        if m is None:
            h.stray.append(f"header line {i + 1} is not a field ({line[:40]!r})")
            continue
        letter, value = m.group(1), _strip_comment(m.group(2)).strip()
        if letter == "+":
            if h.fields:
                k, v = h.fields[-1]
                h.fields[-1] = (k, f"{v} {value}".strip())
                if k in h and h[k] == v:
                    h[k] = h.fields[-1][1]
            continue
        h.add(letter, value)
        if letter == "K":
            h.body_line = i + 1
            h.body = "\n".join(lines[i + 1 :]).strip("\n")
            return h
    if strict:
        raise ABCError(f"{label}: no K: field (the header must end with a K: line)")
    return h


def tune_body(tune: str) -> str:
    """The music after the ``K:`` line (raises :class:`ABCError` if there is no ``K:``)."""
    return parse_header(tune).body


def _strip_comment(s: str) -> str:
    """Remove a ``%`` comment (not an escaped ``\\%``) from one line."""
    out = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] == "%":
            out.append("\\%")
            i += 2
            continue
        if c == "%":
            break
        out.append(c)
        i += 1
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# meters, lengths and keys
# --------------------------------------------------------------------------------------------------


def parse_meter(value: str | None) -> Fraction | None:
    """Bar length in whole notes for an ``M:`` value: ``6/8`` -> 3/4, ``C`` -> 1, ``C|`` -> 1,
    ``2+3/8`` -> 5/8. ``none``/empty/free meters give ``None``. Raises :class:`ABCError` if unreadable."""
    if value is None:
        return None
    v = value.strip()
    if not v or v.lower() in ("none", "free") or v.upper().startswith("FREI"):
        return None  # free meter (Essen writes FREI4/4)
    if v == "C":
        return Fraction(1)
    if v == "C|":
        return Fraction(1)
    # blanks carry no meaning ("2 + 3/8" = "2+3/8"); dropping them first keeps the match linear in the length
    m = _METER_RE.fullmatch(re.sub(r"\s+", "", v))
    if m is None:
        raise ABCError(f"unreadable meter M:{_short(value)}")
    parts = [p for p in m.group(1).split("+") if p]
    num = sum(_bounded_int(p, f"M:{_short(value)}: meter numerator", MAX_METER_NUMERATOR, "MAX_METER_NUMERATOR")
              for p in parts)
    den = _bounded_int(m.group(2), f"M:{_short(value)}: meter denominator", MAX_METER_DENOMINATOR,
                       "MAX_METER_DENOMINATOR")
    if num <= 0 or den <= 0:
        raise ABCError(f"unreadable meter M:{_short(value)}")
    if num > MAX_METER_NUMERATOR:
        raise ABCLimitError(f"M:{_short(value)}: meter numerator {num} is above "
                            f"MAX_METER_NUMERATOR={MAX_METER_NUMERATOR}")
    return Fraction(num, den)


_METER_RE = re.compile(r"\(?([\d+]+)\)?/(\d+)")


def _short(text: str, n: int = 40) -> str:
    """``text`` cut to ``n`` characters for a message (a megabyte-long field stays readable)."""
    return text if len(text) <= n else text[:n] + f"...({len(text):,} chars)"


def _bounded_int(digits: str, what: str, limit: int, limit_name: str) -> int:
    """``int(digits)`` or :class:`ABCLimitError` naming ``what``, the value and the limit (checked on the
    digit count first, so a 5,000-digit number never reaches ``int()``)."""
    if len(digits) > MAX_NUMBER_DIGITS or int(digits) > limit:
        raise ABCLimitError(f"{what} {_short(digits, 12)} is above {limit_name}={limit}")
    return int(digits)


def _meter_numerator(value: str | None) -> int | None:
    if not value:
        return None
    v = value.strip()
    if v in ("C", "C|"):
        return 4 if v == "C" else 2
    m = re.match(r"\(?([\d+]+)\)?/", re.sub(r"\s+", "", v))
    if not m:
        return None
    parts = [p for p in m.group(1).split("+") if p]
    if any(len(p) > MAX_NUMBER_DIGITS for p in parts):
        return None  # parse_meter reports it
    return sum(int(p) for p in parts)


def parse_length(value: str) -> Fraction:
    """``L:`` value -> unit note length in whole notes (``1/8`` -> 1/8). :class:`ABCError` if unreadable."""
    m = re.fullmatch(r"(\d+)(?:/(\d+))?", re.sub(r"\s+", "", value or ""))
    if m is None or not m.group(1).strip("0") or (m.group(2) is not None and not m.group(2).strip("0")):
        raise ABCError(f"unreadable unit note length L:{_short(value or '')}")
    what = f"L:{_short(value)}: unit length"
    num = _bounded_int(m.group(1), what + " numerator", MAX_UNIT_NUMERATOR, "MAX_UNIT_NUMERATOR")
    den = _bounded_int(m.group(2) or "1", what + " denominator", MAX_UNIT_DENOMINATOR, "MAX_UNIT_DENOMINATOR")
    return Fraction(num, den)


def default_unit_length(meter: Fraction | None) -> Fraction:
    """ABC 2.1 default ``L:`` when a tune has none: 1/16 if the meter is below 3/4, else 1/8."""
    if meter is not None and meter < Fraction(3, 4):
        return Fraction(1, 16)
    return Fraction(1, 8)


_LETTERS = "CDEFGAB"
_NATURAL_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_FIFTHS = {"F": -1, "C": 0, "G": 1, "D": 2, "A": 3, "E": 4, "B": 5}
_MODES = {"maj": 0, "ion": 0, "mix": -1, "dor": -2, "aeo": -3, "min": -3, "m": -3, "phr": -4, "loc": -5, "lyd": 1}
_SHARP_ORDER = "FCGDAEB"


@dataclasses.dataclass
class KeySpec:
    """A parsed ``K:`` value. ``tonic`` is ``None`` for ``K:none`` (and for a bare clef)."""

    tonic: str | None = None  # letter A-G
    alter: int = 0  # -1 flat, +1 sharp
    mode: str = ""  # as written ("", "m", "min", "Dor", ...)
    mode_offset: int = 0
    # explicit accidentals written after the key, as (alteration, lower-case letter): "K:D =c" -> [(0, "c")]
    modifiers: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    exp: bool = False  # "exp": only the modifiers apply
    rest: str = ""  # clef=..., middle=... and other trailing text, kept verbatim
    special: str = ""  # "HP"/"Hp" (bagpipe)

    def fifths(self) -> int:
        if self.tonic is None:
            return 0
        return _FIFTHS[self.tonic] + 7 * self.alter + self.mode_offset

    def signature(self) -> dict[str, int]:
        """Letter (upper case) -> alteration implied by this key signature."""
        sig = {L: 0 for L in _LETTERS}
        if self.special == "HP":
            return sig
        if self.special == "Hp":
            sig.update(F=1, C=1, G=0)
            return sig
        if self.tonic is not None and not self.exp:
            f = self.fifths()
            if f > 0:
                for L in _SHARP_ORDER[: min(f, 7)]:
                    sig[L] = 1
            elif f < 0:
                for L in _SHARP_ORDER[::-1][: min(-f, 7)]:
                    sig[L] = -1
        for alt, letter in self.modifiers:
            sig[letter.upper()] = alt
        return sig

    def render(self) -> str:
        if self.special:
            core = self.special
        elif self.tonic is None:
            core = "none" if not self.rest else ""
        else:
            core = self.tonic + {1: "#", -1: "b", 0: ""}[self.alter] + self.mode
        parts = [core] if core else []
        if self.exp:
            parts.append("exp")
        for alt, letter in self.modifiers:
            parts.append({2: "^^", 1: "^", 0: "=", -1: "_", -2: "__"}[alt] + letter)
        if self.rest:
            parts.append(self.rest)
        return " ".join(parts)

    @property
    def name(self) -> str:
        """Readable key name: ``G``, ``Am``, ``Ddor``, ``none``."""
        if self.special:
            return self.special
        if self.tonic is None:
            return "none"
        m = {0: "", -3: "m", -1: "mix", -2: "dor", -4: "phr", -5: "loc", 1: "lyd"}[self.mode_offset]
        return self.tonic + {1: "#", -1: "b", 0: ""}[self.alter] + m


_KEY_RE = re.compile(r"^\s*(?:([A-G])([#b]?)\s*([A-Za-z]*))?")


def parse_key(value: str) -> KeySpec:
    """Parse a ``K:`` value (``G``, ``F#m``, ``Ador``, ``D exp ^f =c``, ``C clef=bass``, ``HP``, ``none``)."""
    v = _strip_comment(value or "").strip()
    k = KeySpec()
    if v in ("HP", "Hp"):
        k.special = v
        return k
    if v.lower().startswith("none"):
        v = v[4:].strip()
    else:
        m = _KEY_RE.match(v)
        if m and m.group(1):
            mode_word = m.group(3) or ""
            mode_key = mode_word.lower()[:3] if mode_word.lower() not in ("m",) else "m"
            if mode_word and mode_key not in _MODES:
                # not a mode: e.g. "Gclef=..." cannot happen; "G treble" has a space. Treat as trailing text.
                end = m.start(3)
            else:
                end = m.end()
            k.tonic, k.alter = m.group(1), {"#": 1, "b": -1, "": 0}[m.group(2)]
            if mode_word and mode_key in _MODES:
                k.mode, k.mode_offset = mode_word, _MODES[mode_key]
            v = v[end:].strip()
    rest = []
    for word in v.split():
        am = re.fullmatch(r"(\^\^|\^|__|_|=)([A-Ga-g])", word)
        if am:
            k.modifiers.append(({"^^": 2, "^": 1, "=": 0, "_": -1, "__": -2}[am.group(1)], am.group(2).lower()))
        elif word.lower() == "exp":
            k.exp = True
        else:
            rest.append(word)
    k.rest = " ".join(rest)
    return k


# --------------------------------------------------------------------------------------------------
# body tokenizer
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Token:
    """One lexical item of a tune body. Concatenating ``text`` of all tokens of a line gives the line back.

    kind: ``note``, ``rest`` (z/x), ``mrest`` (Z/X multi-bar rest), ``bar``, ``ending`` (``[1``),
    ``chord_start``, ``chord_end`` (``]`` with an optional length), ``grace_start``, ``grace_end``,
    ``tuplet``, ``slur_start``, ``slur_end``, ``broken`` (``>``/``<``), ``deco``, ``text`` (``"..."``),
    ``inline_field`` (``[K:D]``), ``field`` (a whole field line), ``directive`` (``%%`` line),
    ``comment``, ``tie``, ``overlay`` (``&``), ``space``, ``cont`` (``\\``), ``spacer`` (``y``),
    ``symbol`` (a reserved letter without a ``U:`` definition), ``other`` (a character with no meaning here).
    """

    kind: str
    text: str
    line: int
    col: int
    acc: str = ""  # note accidental as written: "", "^", "^^", "_", "__", "="
    letter: str = ""  # note letter as written (A-G, a-g) or rest letter
    octave: str = ""  # "," and "'" marks
    length: Fraction = Fraction(1)  # length multiplier written after a note/rest/chord


_LEN = r"(\d*)(/*)(\d*)"
_NOTE_RE = re.compile(r"(\^\^|\^|__|_|=)?([A-Ga-g])([,']*)" + _LEN)
_REST_RE = re.compile(r"([zx])" + _LEN)
_MREST_RE = re.compile(r"([ZX])(\d*)")
_BAR_RE = re.compile(r"(?:\[\||\.?\||:+)[|\]:]*")
_TUPLET_RE = re.compile(r"\((\d+)(?::(\d*))?(?::(\d*))?")
_INLINE_RE = re.compile(r"\[([A-Za-z]):([^\]\n]*)\]")
_ENDING_RE = re.compile(r"\[(\d+(?:[,\-]\d+)*)")
_CHORD_END_RE = re.compile(r"\]" + _LEN)
# ABC 2.1 predefined one-character decorations; other letters in H-W/h-w need a U: definition
_DECO_CHARS = frozenset(".~HLMOPSTuv")
_USER_SYMBOLS = frozenset("HIJKLMNOPQRSTUVWhijklmnopqrstuvw")


def _length(num: str, slashes: str, den: str, where: str = "") -> Fraction:
    """Length multiplier written after a note/rest/chord (``3/2``, ``/``, ``//``, ``3``).

    ``where`` (``line 5 col 7: note 'A/0'``) starts the message of the :class:`ABCError` raised for a zero
    denominator and of the :class:`ABCLimitError` raised beyond :data:`MAX_NUMBER_DIGITS` digits or
    :data:`MAX_LENGTH_SLASHES` slashes."""
    if len(num) > MAX_NUMBER_DIGITS or len(den) > MAX_NUMBER_DIGITS:
        raise ABCLimitError(f"{where}: a length number has more than MAX_NUMBER_DIGITS={MAX_NUMBER_DIGITS} digits")
    if len(slashes) > MAX_LENGTH_SLASHES:
        raise ABCLimitError(f"{where}: {len(slashes)} slashes in a length "
                            f"(limit MAX_LENGTH_SLASHES={MAX_LENGTH_SLASHES})")
    n = int(num) if num else 1
    if not slashes:
        return Fraction(n)
    if den:
        if int(den) == 0:
            raise ABCError(f"{where}: length divided by zero")
        return Fraction(n, int(den) * (2 ** (len(slashes) - 1)))
    return Fraction(n, 2 ** len(slashes))


def _where(lineno: int, col: int, text: str) -> str:
    return f"line {lineno + 1} col {col + 1}: {_short(text, 20)!r}"


def tokenize_line(line: str, lineno: int = 0, user_symbols: frozenset[str] | set[str] = frozenset()) -> list[Token]:
    """Tokenize one music line of a body (see :class:`Token`).

    ``user_symbols`` are letters given a meaning by ``U:`` fields; they become ``deco`` tokens like the
    predefined ``.~HLMOPSTuv``; other letters of ``H-W``/``h-w`` are ``symbol`` tokens (reserved but
    undefined: abc2midi ignores them, :func:`validate` warns).

    Raises :class:`ABCError` for a length divided by zero (``A/0``) and :class:`ABCLimitError` for a number
    longer than :data:`MAX_NUMBER_DIGITS` digits or more than :data:`MAX_LENGTH_SLASHES` slashes; the
    message names the line, the column and the token.
    """
    toks: list[Token] = []
    i, n = 0, len(line)
    in_chord = False
    while i < n:
        c = line[i]
        m = None
        if c == "%":
            toks.append(Token("comment", line[i:], lineno, i))
            break
        if c == '"':
            j = line.find('"', i + 1)
            if j < 0:
                toks.append(Token("other", line[i:], lineno, i))
                break
            toks.append(Token("text", line[i : j + 1], lineno, i))
            i = j + 1
            continue
        if c in "!+":
            j = line.find(c, i + 1)
            if j > i + 1 and " " not in line[i + 1 : j]:
                toks.append(Token("deco", line[i : j + 1], lineno, i))
                i = j + 1
                continue
            # a lone "!" is the ABC 1.6 line break; a lone "+" has no meaning
            toks.append(Token("spacer" if c == "!" else "other", c, lineno, i))
            i += 1
            continue
        if c == "[" and not in_chord:
            m = _INLINE_RE.match(line, i)
            if m:
                toks.append(Token("inline_field", m.group(0), lineno, i))
                i = m.end()
                continue
            m = _ENDING_RE.match(line, i)
            if m:
                toks.append(Token("ending", m.group(0), lineno, i))
                i = m.end()
                continue
            if line.startswith("[|", i):
                m = _BAR_RE.match(line, i)
                toks.append(Token("bar", m.group(0), lineno, i))
                i = m.end()
                continue
            toks.append(Token("chord_start", "[", lineno, i))
            in_chord = True
            i += 1
            continue
        if c == "]" and in_chord:
            m = _CHORD_END_RE.match(line, i)
            toks.append(Token("chord_end", m.group(0), lineno, i,
                              length=_length(*m.groups(), _where(lineno, i, m.group(0)))))
            in_chord = False
            i = m.end()
            continue
        if c in "|:" or (c == "." and line.startswith(".|", i)):
            m = _BAR_RE.match(line, i)
            if m:
                toks.append(Token("bar", m.group(0), lineno, i))
                i = m.end()
                continue
            toks.append(Token("other", c, lineno, i))
            i += 1
            continue
        if c in "0123456789":  # not str.isdigit(): "²" is a digit to it, yet no number
            prev = next((t for t in reversed(toks) if t.kind != "space"), None)
            m = re.compile(r"\d+(?:[,\-]\d+)*").match(line, i)
            if prev is None or prev.kind == "bar":
                toks.append(Token("ending", m.group(0), lineno, i))
                i = m.end()
                continue
        m = _NOTE_RE.match(line, i)
        if m:
            toks.append(Token("note", m.group(0), lineno, i, acc=m.group(1) or "", letter=m.group(2), octave=m.group(3),
                              length=_length(*m.groups()[3:], _where(lineno, i, m.group(0)))))
            i = m.end()
            continue
        m = _REST_RE.match(line, i)
        if m:
            toks.append(Token("rest", m.group(0), lineno, i, letter=m.group(1),
                              length=_length(*m.groups()[1:], _where(lineno, i, m.group(0)))))
            i = m.end()
            continue
        m = _MREST_RE.match(line, i)
        if m:
            _length(m.group(2), "", "", _where(lineno, i, m.group(0)))  # digit bound
            toks.append(Token("mrest", m.group(0), lineno, i, letter=m.group(1), length=Fraction(int(m.group(2) or 1))))
            i = m.end()
            continue
        if c == "(":
            m = _TUPLET_RE.match(line, i)
            if m:
                if any(g and len(g) > MAX_NUMBER_DIGITS for g in m.groups()):
                    raise ABCLimitError(f"{_where(lineno, i, m.group(0))}: a tuplet number has more than "
                                        f"MAX_NUMBER_DIGITS={MAX_NUMBER_DIGITS} digits")
                toks.append(Token("tuplet", m.group(0), lineno, i))
                i = m.end()
                continue
            toks.append(Token("slur_start", c, lineno, i))
            i += 1
            continue
        if c == ")":
            toks.append(Token("slur_end", c, lineno, i))
            i += 1
            continue
        if c == "{":
            j = i + 2 if line.startswith("{/", i) else i + 1
            toks.append(Token("grace_start", line[i:j], lineno, i))
            i = j
            continue
        if c == "}":
            toks.append(Token("grace_end", c, lineno, i))
            i += 1
            continue
        if c in "<>":
            j = i
            while j < n and line[j] == c:
                j += 1
            toks.append(Token("broken", line[i:j], lineno, i))
            i = j
            continue
        if c == "y":
            m = re.compile(r"y\d*").match(line, i)
            toks.append(Token("spacer", m.group(0), lineno, i))
            i = m.end()
            continue
        if c in _DECO_CHARS or c in user_symbols:
            toks.append(Token("deco", c, lineno, i))
            i += 1
            continue
        if c in _USER_SYMBOLS:
            # reserved for U: definitions; old collections (Ryan's Mammoth) use k/V/U... as decorations
            toks.append(Token("symbol", c, lineno, i))
            i += 1
            continue
        if c == "-":
            toks.append(Token("tie", c, lineno, i))
        elif c == "&":
            toks.append(Token("overlay", c, lineno, i))
        elif c in " \t":
            j = i
            while j < n and line[j] in " \t":
                j += 1
            toks.append(Token("space", line[i:j], lineno, i))
            i = j
            continue
        elif c == "\\":
            toks.append(Token("cont", c, lineno, i))
        elif c in "`$*":
            toks.append(Token("spacer", c, lineno, i))
        else:
            toks.append(Token("other", c, lineno, i))
        i += 1
    return toks


def _line_kind(line: str) -> str:
    s = line.strip()
    if not s:
        return "blank"
    if s.startswith("%%"):
        return "directive"
    if s.startswith("%"):
        return "comment"
    m = _FIELD_RE.match(line)
    if m and m.group(1) in _BODY_FIELDS:
        return "field"
    return "music"


def user_symbols(text: str) -> frozenset[str]:
    """Letters defined by ``U:`` fields (``U:W=!trill!``) anywhere in a tune."""
    return frozenset(m.group(1) for m in re.finditer(r"^U:\s*([A-Za-z~])\s*=", text, re.MULTILINE)
                     if m.group(1) in _USER_SYMBOLS)


def tokenize_body(body: str, first_line: int = 0, symbols: frozenset[str] = frozenset()) -> Iterator[Token]:
    """Tokens of a whole body, line by line; field lines (``w:``, ``M:``, ``K:``, ``V:``...) come as one
    ``field`` token, ``%%`` lines as ``directive``, comment lines as ``comment``, and each line ends
    with a ``space`` token whose text is ``"\\n"`` (so the body can be rebuilt exactly)."""
    for k, line in enumerate(body.split("\n")):
        ln = first_line + k
        kind = _line_kind(line)
        if kind == "music":
            yield from tokenize_line(line, ln, symbols)
        elif kind != "blank":
            yield Token(kind, line, ln, 0)
        else:
            yield Token("space", line, ln, 0)
        yield Token("space", "\n", ln, len(line))


# --------------------------------------------------------------------------------------------------
# pitch spelling (shared by transpose() and score_to_abc())
# --------------------------------------------------------------------------------------------------

_ACC_ALTER = {"": None, "^": 1, "^^": 2, "_": -1, "__": -2, "=": 0}
_ALTER_ACC = {2: "^^", 1: "^", 0: "=", -1: "_", -2: "__"}


def _diatonic(letter: str, octave_marks: str) -> int:
    """Diatonic step index of a note (C4 = 28, i.e. octave * 7 + letter index)."""
    octave = 5 if letter.islower() else 4
    octave += octave_marks.count("'") - octave_marks.count(",")
    return octave * 7 + _LETTERS.index(letter.upper())


def _natural_midi(step: int) -> int:
    return 12 * (step // 7 + 1) + _NATURAL_PC[_LETTERS[step % 7]]


def _write_note(step: int) -> tuple[str, str]:
    letter, octave = _LETTERS[step % 7], step // 7
    if octave >= 5:
        return letter.lower(), "'" * (octave - 5)
    return letter, "," * (4 - octave)


# --------------------------------------------------------------------------------------------------
# one tune out of a text (shared by the converters and parse_score())
# --------------------------------------------------------------------------------------------------


def _ensure_x(tune: str) -> str:
    t = tune.strip("\n")
    if not re.match(r"\s*X:", t):
        t = "X:1\n" + t
    return t


def _single(tune: str) -> str:
    tunes = split_tunes(tune)
    if not tunes:
        raise ABCError(f"{tune_label(tune)}: no tune found (no X: or K: field)")
    if len(tunes) > 1:
        raise ABCError(f"text holds {len(tunes)} tunes; split_tunes() it and convert them one by one")
    return tunes[0]
