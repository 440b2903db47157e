"""ABC notation utilities: split, headers, validation, normalisation, transposition and conversion.

An ABC *tune* is text that starts with an ``X:`` line, has header fields up to and including the ``K:``
line, then a body of music lines (plus field lines such as ``w:``/``M:``/``K:``/``V:`` and ``%`` comments).

Everything here works on plain strings. Conversions go through external tools when they are installed
(``abc2midi``, ``midi2abc``, ``abc2abc`` from the Debian ``abcmidi`` package; ``fluidsynth``) and fall back
to music21 where it can do the job (ABC -> MIDI, ABC -> MusicXML, score -> ABC via :func:`score_to_abc`).

Semantics follow ABC 2.1 (as abc2midi does): an accidental carries to the end of its bar and inline
``[K:]`` changes apply. music21's ABC reader does neither (``K:C`` ``B _B B|`` gives B, Bb, B there), so
compare pitches with abc2midi's MIDI when a tune relies on them.

Errors: malformed tunes raise :class:`ABCError` (a ``ValueError``) whose message names the tune
(``X:``/``T:``) or file; a missing tool raises :class:`musiccore.render.ToolNotFoundError` (a
``RuntimeError``) that says how to install it. Batch helpers (:func:`validate_many`, :func:`convert_many`)
never raise for one bad item: they record it and carry on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import tempfile
import time
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from musiccore.render import (
    ToolNotFoundError,
    midi_to_wav,
    require_tool,
    run_tool,
    tool_available,
)
from musiccore.runs import atomic_path

log = logging.getLogger(__name__)

__all__ = [
    "ABCError",
    "ToolNotFoundError",
    "Header",
    "Token",
    "ValidationResult",
    "BatchReport",
    "split_tunes",
    "split_file",
    "parse_header",
    "tune_body",
    "tune_label",
    "tokenize_body",
    "tokenize_line",
    "user_symbols",
    "KeySpec",
    "parse_meter",
    "parse_length",
    "default_unit_length",
    "parse_key",
    "validate",
    "validate_many",
    "normalize",
    "fingerprint",
    "transpose",
    "parse_score",
    "abc_to_midi",
    "abc_to_wav",
    "abc_to_musicxml",
    "midi_to_abc",
    "score_to_abc",
    "convert_many",
]


class ABCError(ValueError):
    """Malformed or unusable ABC. The message names the tune (``X:``/``T:``) or the file."""


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
    parts = [f"X:{x.group(1).strip()}" if x else "X:?"]
    if t and t.group(1).strip():
        parts.append(f'"{t.group(1).strip()}"')
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
    m = re.fullmatch(r"\(?\s*([\d+\s]+?)\s*\)?\s*/\s*(\d+)", v)
    if m is None:
        raise ABCError(f"unreadable meter M:{value}")
    num = sum(int(p) for p in m.group(1).replace(" ", "").split("+") if p)
    den = int(m.group(2))
    if num <= 0 or den <= 0:
        raise ABCError(f"unreadable meter M:{value}")
    return Fraction(num, den)


def _meter_numerator(value: str | None) -> int | None:
    if not value:
        return None
    v = value.strip()
    if v in ("C", "C|"):
        return 4 if v == "C" else 2
    m = re.match(r"\(?\s*([\d+\s]+?)\s*\)?\s*/", v)
    if not m:
        return None
    return sum(int(p) for p in m.group(1).replace(" ", "").split("+") if p)


def parse_length(value: str) -> Fraction:
    """``L:`` value -> unit note length in whole notes (``1/8`` -> 1/8). :class:`ABCError` if unreadable."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:/\s*(\d+))?\s*", value or "")
    if m is None or int(m.group(1)) == 0 or (m.group(2) is not None and int(m.group(2)) == 0):
        raise ABCError(f"unreadable unit note length L:{value}")
    return Fraction(int(m.group(1)), int(m.group(2) or 1))


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


def _length(num: str, slashes: str, den: str) -> Fraction:
    n = int(num) if num else 1
    if not slashes:
        return Fraction(n)
    if den:
        return Fraction(n, int(den) * (2 ** (len(slashes) - 1)))
    return Fraction(n, 2 ** len(slashes))


def tokenize_line(line: str, lineno: int = 0, user_symbols: frozenset[str] | set[str] = frozenset()) -> list[Token]:
    """Tokenize one music line of a body (see :class:`Token`).

    ``user_symbols`` are letters given a meaning by ``U:`` fields; they become ``deco`` tokens like the
    predefined ``.~HLMOPSTuv``; other letters of ``H-W``/``h-w`` are ``symbol`` tokens (reserved but
    undefined: abc2midi ignores them, :func:`validate` warns).
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
            toks.append(Token("chord_end", m.group(0), lineno, i, length=_length(*m.groups())))
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
        if c.isdigit():
            prev = next((t for t in reversed(toks) if t.kind != "space"), None)
            m = re.compile(r"\d+(?:[,\-]\d+)*").match(line, i)
            if prev is None or prev.kind == "bar":
                toks.append(Token("ending", m.group(0), lineno, i))
                i = m.end()
                continue
        m = _NOTE_RE.match(line, i)
        if m:
            toks.append(Token("note", m.group(0), lineno, i, acc=m.group(1) or "", letter=m.group(2), octave=m.group(3),
                              length=_length(*m.groups()[3:])))
            i = m.end()
            continue
        m = _REST_RE.match(line, i)
        if m:
            toks.append(Token("rest", m.group(0), lineno, i, letter=m.group(1), length=_length(*m.groups()[1:])))
            i = m.end()
            continue
        m = _MREST_RE.match(line, i)
        if m:
            toks.append(Token("mrest", m.group(0), lineno, i, letter=m.group(1), length=Fraction(int(m.group(2) or 1))))
            i = m.end()
            continue
        if c == "(":
            m = _TUPLET_RE.match(line, i)
            if m:
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
# validation
# --------------------------------------------------------------------------------------------------


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

    @property
    def ok(self) -> bool:
        return not self.errors

    def __bool__(self) -> bool:
        return self.ok

    def raise_if_bad(self) -> None:
        if self.errors:
            raise ABCError(f"{self.label}: " + "; ".join(self.errors))


@dataclasses.dataclass
class _Voice:
    unit: Fraction
    meter: Fraction | None
    meter_num: int | None
    # one entry per closed bar: (duration, is a multi-bar rest, line, opening bar kind, closing bar kind, meter)
    bars: list[tuple[Fraction, bool, int, str, str, Fraction | None]] = dataclasses.field(default_factory=list)
    # current bar
    cur: list[Fraction] = dataclasses.field(default_factory=list)
    seg_max: Fraction = Fraction(0)
    full_rest: bool = False
    start_kind: str = "start"
    line: int = 0
    n_barlines: int = 0


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
    """
    t0 = time.perf_counter()
    res = ValidationResult(label=tune_label(tune))
    if not tune or not tune.strip():
        res.errors.append("empty tune")
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
    try:
        unit = parse_length(h["L"]) if "L" in h else default_unit_length(meter)
    except ABCError as e:
        res.errors.append(str(e))
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
    _structure(body, h.body_line, unit, meter, h.get("M"), res, check_bars, max_bad_bars, user_symbols(tune))
    if res.n_notes == 0 and not any("no notes" in e for e in res.errors):
        res.errors.append("no notes in the body")
    if use_music21 and not any(e.startswith(("no K:", "no L: or M:")) for e in res.errors):
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
               symbols: frozenset[str] = frozenset()) -> None:
    """Bracket balance, stray characters and bar durations of a body; fills ``res``."""
    voices: dict[str, _Voice] = {}
    vname = "1"
    v = voices[vname] = _Voice(unit=unit, meter=meter, meter_num=_meter_numerator(meter_text))
    depth = {"chord": 0, "grace": 0, "slur": 0}
    tuplet_left, tuplet_mult = 0, Fraction(1)
    broken_next: Fraction | None = None
    in_chord_first: Fraction | None = None
    stray: list[str] = []
    undefined: set[str] = set()

    def set_field(letter: str, value: str, line: int) -> None:
        nonlocal v, vname
        if letter == "M":
            try:
                v.meter = parse_meter(value)
                v.meter_num = _meter_numerator(value)
            except ABCError as e:
                res.errors.append(f"line {line + 1}: {e}")
        elif letter == "L":
            try:
                v.unit = parse_length(value)
            except ABCError as e:
                res.errors.append(f"line {line + 1}: {e}")
        elif letter == "V":
            name = (value.split() or ["1"])[0]
            if name != vname:
                if name not in voices:
                    voices[name] = _Voice(unit=v.unit, meter=v.meter, meter_num=v.meter_num)
                vname = name
                v = voices[name]

    def add(d: Fraction) -> None:
        v.cur.append(d)

    def close_bar(kind_end: str, line: int) -> None:
        total = max(sum(v.cur, Fraction(0)), v.seg_max)
        if total > 0 or v.full_rest:
            v.bars.append((total, v.full_rest, line, v.start_kind, kind_end, v.meter))
        v.cur = []
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
            if v.meter is not None and v.cur and sum(v.cur, Fraction(0)) == v.meter and depth["chord"] == 0:
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
            continue
        if k == "chord_end":
            depth["chord"] -= 1
            if depth["chord"] < 0:
                res.errors.append(f"line {tok.line + 1}: ']' without '['")
                depth["chord"] = 0
                continue
            if in_chord_first is not None and depth["grace"] == 0:
                d = in_chord_first * tok.length * v.unit
                d, tuplet_left, broken_next = _apply_time(d, tuplet_left, tuplet_mult, broken_next)
                add(d)
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
            if not v.cur:
                res.errors.append(
                    f"line {tok.line + 1} col {tok.col + 1}: broken rhythm {tok.text!r} without a note before it")
                continue
            nb = len(tok.text)
            short = Fraction(1, 2 ** nb)
            long_ = 2 - short
            first, second = (long_, short) if tok.text[0] == ">" else (short, long_)
            v.cur[-1] = v.cur[-1] * first
            broken_next = second
            continue
        if k in ("note", "rest"):
            if k == "note":
                res.n_notes += depth["grace"] == 0
            if depth["grace"] > 0:
                continue
            if depth["chord"] > 0:
                if in_chord_first is None:
                    in_chord_first = tok.length
                continue
            d = tok.length * v.unit
            d, tuplet_left, broken_next = _apply_time(d, tuplet_left, tuplet_mult, broken_next)
            add(d)
            continue
        if k == "mrest":
            n_bars = int(tok.length)
            v.full_rest = True
            for _ in range(max(n_bars - 1, 0)):
                close_bar("plain", tok.line)
                v.full_rest = True
            continue
        if k == "overlay":
            v.seg_max = max(v.seg_max, sum(v.cur, Fraction(0)))
            v.cur = []
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
    if not check_bars:
        return
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


# --------------------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------------------


def _collapse_spaces(line: str) -> str:
    """Strip a ``%`` comment, trailing whitespace and runs of blanks outside ``"..."``."""
    out, q = [], False
    prev_space = False
    line = _strip_comment(line).rstrip()
    for c in line:
        if c == '"':
            q = not q
        if not q and c in " \t":
            if prev_space:
                continue
            out.append(" ")
            prev_space = True
            continue
        prev_space = False
        out.append(c)
    return "".join(out).strip()


def normalize(tune: str, *, x: int | str | None = None, drop: Sequence[str] = (), explicit_length: bool = True) -> str:
    """Stable text form of one tune, used for dedup and as training text.

    Header fields come in a canonical order (``X``, ``T``..., metadata ``C O A R B D F G H N S Z W``,
    ``I U P``, ``%%`` directives, then ``Q L M V K``; repeated fields keep their order), each as ``F:value``
    with the value trimmed. ``x`` replaces the ``X:`` number (``X:1`` is added when missing); ``drop``
    lists field letters to remove (e.g. ``("Z", "N", "B")``). With ``explicit_length`` an ``L:`` equal to
    the ABC default is added when missing (so music21 can parse the tune). In the body ``%`` comments,
    trailing whitespace, blank lines and runs of blanks (outside ``"..."``) go; ``%%`` directive lines and
    line breaks stay. The result ends with a newline. Raises :class:`ABCError` if there is no ``K:``.
    """
    h = parse_header(tune, strict=False)
    if "K" not in h:
        raise ABCError(f"{tune_label(tune)}: cannot normalize: no K: field")
    fields = [(k, " ".join(v.split())) for k, v in h.fields if k not in drop]
    if x is not None:
        fields = [(k, v) for k, v in fields if k != "X"]
        fields.insert(0, ("X", str(x)))
    elif not any(k == "X" for k, _ in fields):
        fields.insert(0, ("X", "1"))
    if explicit_length and "L" not in h and "L" not in drop:
        try:
            fields.append(("L", str(default_unit_length(parse_meter(h.get("M"))))))
        except ABCError:
            pass
    order = {k: i for i, k in enumerate(_HEADER_ORDER)}
    rank = lambda kv: order.get(kv[0], order["I"] if kv[0] == "%%" else order["Z"] + 0.5)  # noqa: E731
    fields = sorted(fields, key=rank)  # stable: repeated fields keep their order
    # only the first X: and K: survive
    seen: set[str] = set()
    head = []
    for k, v in fields:
        if k in ("X", "K") and k in seen:
            continue
        seen.add(k)
        head.append(f"%%{v}" if k == "%%" else f"{k}:{v}")
    body_lines = []
    for line in h.body.split("\n"):
        if line.strip().startswith("%%"):
            body_lines.append(line.strip())
            continue
        s = _collapse_spaces(line)
        if s:
            body_lines.append(s)
    return "\n".join(head + body_lines) + "\n"


def fingerprint(tune: str) -> str:
    """SHA-1 of the music of a tune (``K``/``M``/``L`` plus the body without blanks), ignoring ``X``,
    titles, metadata, comments, spacing and line breaks. Equal fingerprints = duplicate tunes."""
    n = normalize(tune)
    h = parse_header(n)
    body = re.sub(r"\s+", "", "\n".join(ln for ln in h.body.split("\n") if not ln.startswith("%%")))
    key = f"K:{h.get('K', '')}|M:{h.get('M', '')}|L:{h.get('L', '')}|{body}"
    return hashlib.sha1(key.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# transposition
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


def _transpose_key(key: KeySpec, steps: int, semitones: int) -> KeySpec:
    """Move a key's tonic (and explicit accidentals) by ``steps`` letters and ``semitones``."""
    new = dataclasses.replace(key, modifiers=[])
    if key.tonic is not None:
        old_step = _LETTERS.index(key.tonic)
        new_step = old_step + steps
        target = _NATURAL_PC[key.tonic] + key.alter + semitones
        letter = _LETTERS[new_step % 7]
        alter = ((target - _NATURAL_PC[letter] + 6) % 12) - 6
        new.tonic, new.alter = letter, alter
        if abs(alter) > 1 or abs(new.fifths()) > 7:  # respell on the simplest enharmonic tonic
            new.tonic, new.alter = _best_tonic((target) % 12, key.mode_offset)
    for alt, letter in key.modifiers:
        st = _LETTERS.index(letter.upper()) + steps
        tgt = _NATURAL_PC[letter.upper()] + alt + semitones
        nl = _LETTERS[st % 7]
        na = ((tgt - _NATURAL_PC[nl] + 6) % 12) - 6
        new.modifiers.append((max(-2, min(2, na)), nl.lower()))
    return new


def _best_tonic(pc: int, mode_offset: int, prefer_sharp: bool = True) -> tuple[str, int]:
    """Spelling of a tonic pitch class whose key signature has the fewest accidentals."""
    cands = []
    for letter in _LETTERS:
        for alter in (-1, 0, 1):
            if (_NATURAL_PC[letter] + alter) % 12 == pc:
                f = _FIFTHS[letter] + 7 * alter + mode_offset
                cands.append((abs(f), 0 if (f >= 0) == prefer_sharp else 1, letter, alter))
    cands.sort()
    return cands[0][2], cands[0][3]


def _transpose_chord_symbol(text: str, steps: int, semitones: int) -> str:
    inner = text[1:-1]
    if not inner or inner[0] in "^_<>@":
        return text  # an annotation, not a chord symbol
    m = re.fullmatch(r"\(?([A-G])([#b]?)([^/]*?)(?:/([A-G])([#b]?))?(\)?)", inner)
    if m is None:
        return text

    def move(letter: str, acc: str) -> str:
        st = _LETTERS.index(letter) + steps
        tgt = _NATURAL_PC[letter] + {"#": 1, "b": -1, "": 0}[acc] + semitones
        nl = _LETTERS[st % 7]
        na = ((tgt - _NATURAL_PC[nl] + 6) % 12) - 6
        if abs(na) > 1:
            nl, na = _best_tonic(tgt % 12, 0, prefer_sharp=semitones >= 0)
        return nl + {1: "#", -1: "b", 0: ""}[na]

    out = ("(" if inner.startswith("(") else "") + move(m.group(1), m.group(2)) + m.group(3)
    if m.group(4):
        out += "/" + move(m.group(4), m.group(5))
    out += m.group(6)
    return f'"{out}"'


def transpose(tune: str, semitones: int, engine: str = "native") -> str:
    """Transpose one tune by ``semitones`` (positive = up).

    ``engine="native"`` (default) rewrites the text: the ``K:`` field (header, body lines and inline
    ``[K:]``; the new tonic is spelled with the fewest accidentals, so ``K:G`` + 2 -> ``K:A``, ``K:C`` + 1
    -> ``K:Db``), every note (letters move by the key's letter distance; accidentals are recomputed
    against the new key signature and the accidentals already written in the bar, so ``^``/``_``/``=``
    appear exactly where needed), chord symbols (``"Am/C"``) and explicit key accidentals. Notes in
    chords and grace groups move too; lyrics, comments and decorations are untouched. ``engine="abc2abc"``
    runs ``abc2abc -t`` instead. Raises :class:`ABCError` for a tune without ``K:`` or with a bagpipe key.
    """
    if engine == "abc2abc":
        return _transpose_abc2abc(tune, semitones)
    if engine != "native":
        raise ValueError(f"unknown transpose engine {engine!r} (native or abc2abc)")
    h = parse_header(tune)
    label = tune_label(tune)
    if semitones == 0:
        return tune
    key = parse_key(h["K"])
    if key.special:
        raise ABCError(f"{label}: cannot transpose a bagpipe key K:{h['K']}")
    ref = key if key.tonic is not None else KeySpec(tonic="C")
    nl, na = _best_tonic((_NATURAL_PC[ref.tonic] + ref.alter + semitones) % 12, ref.mode_offset,
                         prefer_sharp=semitones > 0)
    d = (_LETTERS.index(nl) - _LETTERS.index(ref.tonic)) % 7
    # choose the octave of the letter shift so that the tonic moves by exactly `semitones`
    steps = None
    for k in range(-4, 5):
        cand = d + 7 * k
        moved = _natural_midi(28 + _LETTERS.index(ref.tonic) + cand) + na
        if moved - (_natural_midi(28 + _LETTERS.index(ref.tonic)) + ref.alter) == semitones:
            steps = cand
            break
    if steps is None:  # cannot happen for A-G tonics; kept as a guard
        raise ABCError(f"{label}: cannot find a spelling for a transposition by {semitones}")

    old_key = key
    new_key = _transpose_key(key, steps, semitones)
    syms = user_symbols(tune)
    lines = tune.replace("\r\n", "\n").split("\n")
    out: list[str] = []
    old_sig, new_sig = old_key.signature(), new_key.signature()
    old_bar: dict[int, int] = {}
    new_bar: dict[int, int] = {}
    in_body = False
    for line in lines:
        if not in_body:
            m = _FIELD_RE.match(line)
            if m and m.group(1) == "K":
                out.append(f"K:{_render_key_like(m.group(2), new_key)}")
                in_body = True
            else:
                out.append(line)
            continue
        kind = _line_kind(line)
        if kind == "field":
            m = _FIELD_RE.match(line)
            if m.group(1) == "K":
                ok = parse_key(m.group(2))
                if ok.special:
                    raise ABCError(f"{label}: cannot transpose a bagpipe key K:{m.group(2)}")
                nk = _transpose_key(ok, steps, semitones)
                old_sig, new_sig = ok.signature(), nk.signature()
                old_bar.clear()
                new_bar.clear()
                out.append(f"K:{_render_key_like(m.group(2), nk)}")
            else:
                out.append(line)
            continue
        if kind != "music":
            out.append(line)
            continue
        pieces = []
        for tok in tokenize_line(line, 0, syms):
            if tok.kind == "note":
                step = _diatonic(tok.letter, tok.octave)
                written = _ACC_ALTER[tok.acc]
                if written is not None:
                    old_bar[step] = written
                alter = old_bar.get(step, old_sig[_LETTERS[step % 7]])
                pitch = _natural_midi(step) + alter + semitones
                nstep = step + steps
                nalter = pitch - _natural_midi(nstep)
                if abs(nalter) > 2:  # would need a triple accidental: respell on a neighbouring letter
                    nstep += 1 if nalter > 0 else -1
                    nalter = pitch - _natural_midi(nstep)
                implied = new_bar.get(nstep, new_sig[_LETTERS[nstep % 7]])
                acc = ""
                if written is not None or implied != nalter:
                    acc = _ALTER_ACC[nalter]
                    new_bar[nstep] = nalter
                letter, marks = _write_note(nstep)
                length = tok.text[len(tok.acc) + 1 + len(tok.octave):]
                pieces.append(acc + letter + marks + length)
            elif tok.kind == "bar":
                old_bar.clear()
                new_bar.clear()
                pieces.append(tok.text)
            elif tok.kind == "text":
                pieces.append(_transpose_chord_symbol(tok.text, steps, semitones))
            elif tok.kind == "inline_field" and tok.text[1] == "K":
                ok = parse_key(tok.text[3:-1])
                if ok.special:
                    raise ABCError(f"{label}: cannot transpose a bagpipe key [K:{tok.text[3:-1]}]")
                nk = _transpose_key(ok, steps, semitones)
                old_sig, new_sig = ok.signature(), nk.signature()
                old_bar.clear()
                new_bar.clear()
                pieces.append(f"[K:{_render_key_like(tok.text[3:-1], nk)}]")
            else:
                pieces.append(tok.text)
        out.append("".join(pieces))
    return "\n".join(out)


def _render_key_like(original: str, key: KeySpec) -> str:
    """Render ``key`` keeping the original's leading space and trailing comment."""
    lead = original[: len(original) - len(original.lstrip())]
    comment = original[len(_strip_comment(original)) :]
    return lead + key.render() + (" " + comment.strip() if comment.strip() else "")


def _transpose_abc2abc(tune: str, semitones: int) -> str:
    require_tool("abc2abc")
    label = tune_label(tune)
    with tempfile.TemporaryDirectory(prefix="abc2abc-") as td:
        src = Path(td) / "in.abc"
        src.write_text(_ensure_x(tune) + "\n")
        proc = run_tool(["abc2abc", str(src), "-t", str(int(semitones))], what=label, timeout=30)
    # abc2abc writes its bar-length complaints as "%Error : ..." comment lines into the output: drop them
    text = "\n".join(ln for ln in proc.stdout.splitlines() if not ln.startswith(("%Error", "%Warning")))
    tunes = split_tunes(text, keep_file_header=False)
    if proc.returncode != 0 or not tunes:
        raise ABCError(f"{label}: abc2abc produced no tune: {(proc.stderr or proc.stdout).strip()[:200]}")
    return tunes[0]


# --------------------------------------------------------------------------------------------------
# conversions
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


MAX_NOTE_UNITS = 256  # parse_score refuses longer notes (music21 takes minutes on lengths like 2222222)


def parse_score(tune: str):
    """Parse one tune with music21 (``converter.parse(format='abc')``) -> ``music21.stream.Score``.

    Raises :class:`ABCError` naming the tune when music21 fails (e.g. no ``L:``/``M:`` field).
    """
    from music21 import converter

    label = tune_label(tune)
    t = _single(tune)
    h = parse_header(t, strict=False)
    if "K" not in h:
        raise ABCError(f"{label}: no K: field")
    if "L" not in h and "M" not in h:
        # music21 needs a unit length; the ABC default for a tune without M: is 1/8
        t = re.sub(r"^(X:[^\n]*)", r"\1\nL:1/8", t, count=1, flags=re.MULTILINE)
    longest = max((tok.length for tok in tokenize_body(h.body) if tok.kind in ("note", "rest")), default=0)
    if longest > MAX_NOTE_UNITS:  # e.g. "C2222222" from a language model: music21 would re-bar it for minutes
        raise ABCError(f"{label}: a note lasts {longest} units of L: (more than {MAX_NOTE_UNITS}); not parsed")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            score = converter.parse(t, format="abc", forceSource=True)
    except Exception as e:  # noqa: BLE001 - music21 raises many types for bad ABC
        raise ABCError(f"{label}: music21 could not parse it: {type(e).__name__}: {str(e)[:200]}") from e
    return score


def abc_to_midi(tune: str, midi_path: str | Path, *, engine: str = "auto", strict: bool = False,
                timeout: float = 60) -> Path:
    """Write one tune as a MIDI file (atomically); returns the path.

    ``engine``: ``"abc2midi"`` (Debian ``abcmidi``), ``"music21"``, or ``"auto"`` (abc2midi when
    installed, else music21). abc2midi reports recoverable problems (a tie between different notes, a
    bar of the wrong length) as ``Error`` lines yet writes the file: with ``strict`` any such line fails
    the tune, otherwise only a missing MIDI does. ``X:1`` is added when missing.
    Raises :class:`ABCError` for bad ABC and :class:`ToolNotFoundError` if ``abc2midi`` is asked for but
    missing.
    """
    tune = _ensure_x(_single(tune))
    label = tune_label(tune)
    h = parse_header(tune, strict=False)
    if "K" not in h:
        raise ABCError(f"{label}: no K: field")
    if not h.body.strip():
        raise ABCError(f"{label}: empty body (no music after K:)")
    midi_path = Path(midi_path)
    if engine == "auto":
        engine = "abc2midi" if tool_available("abc2midi") else "music21"
    if engine == "music21":
        score = parse_score(tune)
        with atomic_path(midi_path, suffix=".mid") as tmp:
            score.write("midi", fp=str(tmp))
        return midi_path
    if engine != "abc2midi":
        raise ValueError(f"unknown engine {engine!r} (auto, abc2midi, music21)")
    require_tool("abc2midi")
    with tempfile.TemporaryDirectory(prefix="abc2midi-") as td:
        src = Path(td) / "tune.abc"
        out = Path(td) / "tune.mid"
        src.write_text(tune + "\n")
        proc = run_tool(["abc2midi", str(src), "-o", str(out)], what=label, timeout=timeout)
        msgs = (proc.stdout + "\n" + proc.stderr).splitlines()
        errors = [m for m in msgs if m.startswith("Error")]
        if errors and strict:
            more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
            raise ABCError(f"{label}: abc2midi: {errors[0]}{more}")
        if not out.exists() or out.stat().st_size == 0:
            raise ABCError(f"{label}: abc2midi wrote no MIDI file ({' | '.join(msgs[-2:])})")
        if errors:
            log.debug("%s: abc2midi reported %d error(s), first: %s", label, len(errors), errors[0])
        with atomic_path(midi_path, suffix=".mid") as tmp:
            tmp.write_bytes(out.read_bytes())
    return midi_path


def abc_to_wav(tune: str, wav_path: str | Path, *, sample_rate: int = 22050, gain: float = 0.6,
               program: int | None = None, soundfont: str | Path | None = None, engine: str = "auto",
               timeout: float = 120) -> Path:
    """ABC -> MIDI (:func:`abc_to_midi`) -> WAV (:func:`musiccore.render.midi_to_wav`, fluidsynth).

    ``program`` (0-127, General MIDI) sets the instrument via a ``%%MIDI program`` line (abc2midi) or
    the score's instruments (music21). The WAV is written atomically.
    """
    tune = _ensure_x(_single(tune))
    if program is not None:
        if not 0 <= int(program) <= 127:
            raise ValueError(f"GM program must be 0..127, got {program}")
        lines = tune.split("\n")
        h = parse_header(tune)
        lines.insert(h.body_line, f"%%MIDI program {int(program)}")
        tune = "\n".join(lines)
    with tempfile.TemporaryDirectory(prefix="abc2wav-") as td:
        mid = Path(td) / "tune.mid"
        if engine == "music21" or (engine == "auto" and not tool_available("abc2midi")):
            from musiccore.render import score_to_midi

            score_to_midi(parse_score(tune), mid, programs=program)
        else:
            abc_to_midi(tune, mid, engine=engine, timeout=timeout)
        return midi_to_wav(mid, wav_path, sample_rate=sample_rate, gain=gain, soundfont=soundfont, timeout=timeout)


def abc_to_musicxml(tune: str, xml_path: str | Path) -> Path:
    """Write one tune as MusicXML through music21 (atomically); returns the path."""
    score = parse_score(tune)
    xml_path = Path(xml_path)
    try:
        with atomic_path(xml_path, suffix=".musicxml") as tmp:
            score.write("musicxml", fp=str(tmp))
    except ABCError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ABCError(f"{tune_label(tune)}: music21 could not write MusicXML: {type(e).__name__}: {e}") from e
    return xml_path


def midi_to_abc(midi_path: str | Path, *, title: str | None = None, engine: str = "auto", timeout: float = 60) -> str:
    """Transcribe a MIDI file to ABC text (one tune).

    ``engine``: ``"midi2abc"`` (Debian ``abcmidi``; ``midi2abc -f FILE``), ``"music21"`` (parse the MIDI
    with music21 and write it with :func:`score_to_abc`), or ``"auto"`` (midi2abc when installed).
    ``title`` replaces the ``T:`` line. Raises ``FileNotFoundError`` for a missing file and
    :class:`ABCError` for a file that cannot be read as MIDI.
    """
    midi_path = Path(midi_path)
    if not midi_path.is_file():
        raise FileNotFoundError(f"{midi_path}: no such MIDI file")
    with midi_path.open("rb") as f:
        if f.read(4) != b"MThd":
            raise ABCError(f"{midi_path}: not a MIDI file (no MThd header)")
    if engine == "auto":
        engine = "midi2abc" if tool_available("midi2abc") else "music21"
    if engine == "music21":
        from music21 import converter

        try:
            score = converter.parse(str(midi_path), format="midi")
        except Exception as e:  # noqa: BLE001
            raise ABCError(f"{midi_path}: music21 could not read the MIDI: {e}") from e
        return score_to_abc(score, title=title or midi_path.stem)
    if engine != "midi2abc":
        raise ValueError(f"unknown engine {engine!r} (auto, midi2abc, music21)")
    require_tool("midi2abc")
    proc = run_tool(["midi2abc", "-f", str(midi_path)], what=str(midi_path), timeout=timeout)
    text = proc.stdout
    if proc.returncode != 0 or "K:" not in text:
        raise ABCError(f"{midi_path}: midi2abc failed: {(proc.stderr or text).strip()[:200]}")
    tunes = split_tunes(text, keep_file_header=False)
    if not tunes:
        raise ABCError(f"{midi_path}: midi2abc produced no tune")
    tune = tunes[0]
    if title is not None:
        tune = re.sub(r"^T:.*$", f"T:{title}", tune, count=1, flags=re.MULTILINE)
    return tune


def _abc_length(ql: Fraction, unit_ql: Fraction) -> str:
    r = ql / unit_ql
    if r == 1:
        return ""
    if r.denominator == 1:
        return str(r.numerator)
    if r.numerator == 1:
        return "/" + str(r.denominator)
    return f"{r.numerator}/{r.denominator}"


def score_to_abc(score, *, title: str | None = None, x: int = 1, part: int = 0) -> str:
    """A small ABC writer for a music21 stream (music21 has none): one part (``part``) as one voice.

    Writes ``X T M L K`` (meter and key from the first time/key signature; ``L:1/8``, or ``1/16`` when
    notes shorter than an eighth occur), then one bar per measure with notes, rests and chords
    (``[CEG]``), ties (``-``) and explicit accidentals computed against the key signature and the bar.
    Durations that are not a multiple of ``L`` are written as fractions (``A/3``) so the total time is
    exact. Raises :class:`ABCError` for an empty stream.
    """
    from music21 import chord, key, meter, note, stream

    parts = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]
    if part >= len(parts):
        raise ABCError(f"score has {len(parts)} part(s); part {part} does not exist")
    p = parts[part]
    flat = p.flatten()
    notes = list(flat.notesAndRests)
    if not any(isinstance(n, (note.Note, chord.Chord)) for n in notes):
        raise ABCError("cannot write ABC: the stream has no notes")
    # music21 gives a pickup bar its own short time signature (e.g. 1/16): use the most common one
    sigs = [t.ratioString for t in flat.getElementsByClass(meter.TimeSignature)]
    ts_text = max(sigs, key=sigs.count) if sigs else None
    ks = next(iter(flat.getElementsByClass(key.KeySignature)), None)
    sharps = ks.sharps if ks is not None else 0
    tonic = {-7: "Cb", -6: "Gb", -5: "Db", -4: "Ab", -3: "Eb", -2: "Bb", -1: "F", 0: "C", 1: "G", 2: "D", 3: "A",
             4: "E", 5: "B", 6: "F#", 7: "C#"}[max(-7, min(7, sharps))]
    mode = ""
    if isinstance(ks, key.Key) and ks.mode == "minor":
        tonic = ks.tonic.name.replace("-", "b")
        mode = "m"
    durs = [Fraction(n.duration.quarterLength).limit_denominator(64) for n in notes if n.duration.quarterLength > 0]
    unit_ql = Fraction(1, 4) if any(d < Fraction(1, 2) for d in durs) else Fraction(1, 2)
    sig = KeySpec(tonic=tonic[0], alter={"#": 1, "b": -1}.get(tonic[1:2], 0), mode_offset=-3 if mode else 0).signature()
    if title is None:
        title = score.metadata.title if score.metadata is not None and score.metadata.title else "Untitled"
    lines = [f"X:{x}", f"T:{title}"]
    lines.append(f"M:{ts_text}" if ts_text else "M:none")
    lines.append(f"L:1/{int(1 / (unit_ql / 4))}")
    lines.append(f"K:{tonic}{mode}")

    def pitch_text(pt, bar_acc: dict[int, int]) -> str:
        step = pt.octave * 7 + _LETTERS.index(pt.step)
        alter = int(pt.alter)
        implied = bar_acc.get(step, sig[pt.step])
        acc = ""
        if alter != implied:
            acc = _ALTER_ACC[max(-2, min(2, alter))]
            bar_acc[step] = alter
        letter, marks = _write_note(step)
        return acc + letter + marks

    measures = list(p.getElementsByClass(stream.Measure))
    groups: list[list] = []
    if measures:
        for m in measures:
            groups.append(list(m.flatten().notesAndRests))
    else:
        groups = [notes]
    body_bars = []
    for g in groups:
        bar_acc: dict[int, int] = {}
        toks = []
        for n in g:
            ql = Fraction(n.duration.quarterLength).limit_denominator(64)
            if ql == 0:
                continue  # grace notes carry no time; skip them
            ln = _abc_length(ql, unit_ql)
            tie = "-" if (n.tie is not None and n.tie.type in ("start", "continue")) else ""
            if isinstance(n, note.Rest):
                toks.append("z" + ln)
            elif isinstance(n, chord.Chord):
                toks.append("[" + "".join(pitch_text(pt, bar_acc) for pt in n.pitches) + "]" + ln + tie)
            else:
                toks.append(pitch_text(n.pitch, bar_acc) + ln + tie)
        if toks:
            body_bars.append(" ".join(toks))
    for i in range(0, len(body_bars), 4):  # four bars a line
        chunk = body_bars[i : i + 4]
        end = " |]" if i + 4 >= len(body_bars) else " |"
        lines.append(" | ".join(chunk) + end)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# batch conversion
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BatchReport:
    """Outcome of a batch job: written paths and ``(item, reason)`` for each skipped item."""

    done: list[Path] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.done)} written, {len(self.failed)} failed" + (
            "" if not self.failed else ": " + "; ".join(f"{a}: {b}" for a, b in self.failed[:5]))


_EXT = {"midi": ".mid", "wav": ".wav", "musicxml": ".musicxml"}


def convert_many(items: Iterable[str | Path], out_dir: str | Path, fmt: str = "midi", **kwargs: Any) -> BatchReport:
    """Convert ``.abc`` files (every tune in each) or folders of them to ``fmt`` (midi, wav, musicxml).

    Outputs are named ``<file stem>_<X>.<ext>`` in ``out_dir``. A bad tune or unreadable file is logged,
    recorded in the report and skipped; the rest carry on. ``kwargs`` go to the converter.
    """
    if fmt not in _EXT:
        raise ValueError(f"unknown format {fmt!r}; choose from {sorted(_EXT)}")
    conv = {"midi": abc_to_midi, "wav": abc_to_wav, "musicxml": abc_to_musicxml}[fmt]
    out_dir = Path(out_dir)
    report = BatchReport()
    files: list[Path] = []
    for it in items:
        p = Path(it)
        files.extend(sorted(p.glob("*.abc")) if p.is_dir() else [p])
    for f in files:
        try:
            tunes = split_file(f)
        except ABCError as e:
            report.failed.append((str(f), str(e)))
            log.warning("skip %s", e)
            continue
        if not tunes:
            report.failed.append((str(f), "no tunes (no X: lines)"))
            continue
        for i, t in enumerate(tunes):
            xm = re.match(r"X:\s*(\S+)", t)
            xid = re.sub(r"[^\w.-]", "_", xm.group(1)) if xm else str(i + 1)
            name = f"{f}#X:{xid}"
            try:
                report.done.append(conv(t, out_dir / f"{f.stem}_{xid}{_EXT[fmt]}", **kwargs))
            except (ABCError, ToolNotFoundError, OSError, RuntimeError) as e:
                report.failed.append((name, str(e)))
                log.warning("skip %s: %s", name, e)
    log.info("convert_many(%s): %s", fmt, report.summary())
    return report
