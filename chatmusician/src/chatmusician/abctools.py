"""ABC helpers used by the data builder and the evaluator.

The shared package owns ABC handling (``musiccore.abc``: split, headers, normalise, transpose, validate). This module
re-exports it and, while that module is not installed, falls back to small local versions with the same names and
return types, so the project runs on its own. Everything project-specific lives here too: chord-symbol extraction,
cropping a tune to its first bars, the body key used for deduplication, and ABC extraction from model replies.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

try:  # the shared implementation, when present
    from musiccore import abc as _shared  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the monorepo state
    _shared = None


class ABCError(ValueError):
    """Text that is not usable ABC (names the reason)."""


if _shared is not None and hasattr(_shared, "ABCError"):
    ABCError = _shared.ABCError  # type: ignore[misc,assignment]  # noqa: F811

_HEADER_RE = re.compile(r"^([A-Za-z]):\s?(.*)$")
# Header letters whose values we keep when rebuilding a tune (others, e.g. N:/Z:/B:/S:, are free text).
_MUSIC_HEADERS = ("X", "T", "L", "M", "R", "O", "K")
_CHORD_RE = re.compile(r'"([A-G][b#]?(?:maj|min|m|dim|aug|sus|add)?\d*(?:[b#]\d+)?(?:/[A-G][b#]?)?)"')
_QUOTED_RE = re.compile(r'"[^"]*"')
_DECORATION_RE = re.compile(r"![^!\n]*!|\+[^+\n]*\+")
_NOTE_RE = re.compile(r"[A-Ga-gz]")


@dataclass
class ValidationResult:
    """What :func:`validate` found: ``ok`` when music21 parsed the tune into at least one note."""

    ok: bool
    errors: list[str] = field(default_factory=list)
    n_notes: int = 0
    key: str | None = None
    meter: str | None = None


def _local_split_tunes(text: str) -> list[str]:
    """Split a multi-tune ABC file on ``X:`` lines; text before the first ``X:`` (file header) is dropped."""
    tunes, cur = [], None
    for line in text.splitlines():
        if line.startswith("X:"):
            if cur:
                tunes.append("\n".join(cur).strip() + "\n")
            cur = [line]
        elif cur is not None:
            cur.append(line)
    if cur:
        tunes.append("\n".join(cur).strip() + "\n")
    return tunes


def _header_lines(tune: str) -> tuple[list[str], list[str]]:
    lines = [ln.rstrip() for ln in tune.splitlines()]
    head, body, in_body = [], [], False
    for ln in lines:
        if not in_body and _HEADER_RE.match(ln) and not ln.startswith("|"):
            head.append(ln)
            if ln.startswith("K:"):
                in_body = True
        elif not in_body and (ln.startswith("%") or not ln.strip()):
            continue
        else:
            in_body = True
            body.append(ln)
    return head, body


def _local_parse_header(tune: str) -> dict:
    """``{"X": "1", "T": "...", "M": "6/8", "L": "1/8", "K": "G", ...}``: first value of each header field."""
    head, _ = _header_lines(tune)
    out: dict[str, str] = {}
    for ln in head:
        m = _HEADER_RE.match(ln)
        if m and m.group(1) not in out:
            out[m.group(1)] = m.group(2).strip()
    return out


def _local_tune_body(tune: str) -> str:
    _, body = _header_lines(tune)
    return "\n".join(body).strip() + "\n" if body else ""


def _local_normalize(tune: str) -> str:
    """Canonical text: ``X:1`` first, music headers in a fixed order, comments and free-text fields dropped,
    continuation backslashes joined, trailing spaces and blank lines removed."""
    header = _local_parse_header(tune)
    if "K" not in header:
        raise ABCError("no K: header")
    lines = ["X:1"] + [f"{k}:{header[k]}" for k in _MUSIC_HEADERS[1:] if k in header and header[k]]
    body = _local_tune_body(tune).replace("\\\n", " ")
    for ln in body.splitlines():
        ln = re.sub(r"%.*$", "", ln).rstrip()
        if ln and not _HEADER_RE.match(ln):
            lines.append(re.sub(r"[ \t]+", " ", ln))
        elif ln and ln[0] in "KLMPV":  # inline field changes inside the body are music, keep them
            lines.append(ln)
    return "\n".join(lines) + "\n"


def _local_transpose(tune: str, semitones: int) -> str:
    """Transpose with ``abc2abc -t`` (abcmidi); keeps chord symbols in step with the notes."""
    if semitones == 0:
        return tune
    if shutil.which("abc2abc") is None:
        raise ABCError("abc2abc (abcmidi) is not installed; cannot transpose")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.abc"
        p.write_text(tune)
        r = subprocess.run(["abc2abc", str(p), "-t", str(semitones)], capture_output=True, text=True, timeout=20)
    out = r.stdout
    if r.returncode != 0 or "K:" not in out:
        raise ABCError(f"abc2abc failed: {r.stderr.strip()[:200]}")
    # abc2abc reports problems inline as "%Error..." comments: treat them as failures, not as music.
    if "%Error" in out:
        raise ABCError("abc2abc: " + out[out.index("%Error"):].splitlines()[0])
    return out


def _local_validate(tune: str) -> ValidationResult:
    """Parse with music21; ``ok`` when it yields at least one note."""
    import music21

    try:
        s = music21.converter.parse(tune, format="abc")
        notes = list(s.recurse().notes)
    except Exception as e:  # music21 raises many exception types on bad ABC
        return ValidationResult(False, [f"{type(e).__name__}: {str(e)[:200]}"])
    if not notes:
        return ValidationResult(False, ["no notes"])
    ks = next(iter(s.recurse().getElementsByClass("KeySignature")), None)
    ts = next(iter(s.recurse().getElementsByClass("TimeSignature")), None)
    return ValidationResult(True, [], len(notes), str(ks) if ks else None, ts.ratioString if ts else None)


BACKEND = "musiccore.abc" if _shared is not None else "local"  # part of the corpus fingerprint


def _pick(name: str, local):
    fn = getattr(_shared, name, None) if _shared is not None else None
    return fn if fn is not None else local


split_tunes = _pick("split_tunes", _local_split_tunes)
parse_header = _pick("parse_header", _local_parse_header)
tune_body = _pick("tune_body", _local_tune_body)
normalize = _pick("normalize", _local_normalize)
transpose = _pick("transpose", _local_transpose)
_validate_impl = _pick("validate", _local_validate)


def validate(tune: str):
    """``musiccore.abc.validate`` (or the local music21 check): a result with ``.ok`` and ``.errors``.

    The shared validator is strict: besides music21 parsing it checks balanced brackets and every bar's duration
    against ``M:``/``L:``."""
    return _validate_impl(tune)


def music21_parses(tune: str) -> bool:
    """True when music21 parses the tune into at least one note (the lenient "parses" criterion)."""
    return _local_validate(tune).ok


# ---------------------------------------------------------------------------------------------------------------
# Project-specific helpers


def chords(tune: str) -> list[str]:
    """Chord symbols of the body in order (``"Am"``, ``"D7"``...); fingerings and text annotations are skipped."""
    return _CHORD_RE.findall(tune_body(tune))


def strip_annotations(body: str, keep_chords: bool = True) -> str:
    """Remove quoted annotations (fingerings, ``"^text"``) and ``!deco!`` decorations; keep chord symbols."""
    def repl(m: re.Match) -> str:
        return m.group(0) if keep_chords and _CHORD_RE.fullmatch(m.group(0)) else ""

    body = _QUOTED_RE.sub(repl, body)
    body = _DECORATION_RE.sub("", body)
    body = re.sub(r"\\[ \t]*\n", "\n", body)  # line-continuation backslashes
    body = re.sub(r"[uv](?=[(A-Ga-g^_=\[.~z])", "", body)  # up/down-bow marks before a note
    body = re.sub(r"\((?!\d)|\)", "", body)  # slurs (tuplets "(3" stay); cropping would unbalance them
    body = re.sub(r"\.(?=[A-Ga-g^_=\[])", "", body)  # staccato dots
    return re.sub(r"[ \t]+", " ", body)


def first_bars(body: str, n: int) -> tuple[str, str]:
    """Split a body after its ``n``-th bar line: (head, rest). Bar lines are ``|``, ``||``, ``|]``, ``:|``, ``|:``."""
    count, i = 0, 0
    while i < len(body):
        if body[i] == "|":
            j = i + 1
            while j < len(body) and body[j] in "|]:1234":
                j += 1
            if i > 0 or count > 0:  # a leading "|:" opens the tune, it ends no bar
                count += 1
            if count >= n:
                return body[:j].rstrip(), body[j:].lstrip()
            i = j
        else:
            i += 1
    return body.rstrip(), ""


def count_bars(body: str) -> int:
    """Number of bar lines in a body (a cheap "length" answered by the QA task)."""
    return len(re.findall(r"\|+[\]:]?|:\|", body))


def body_key(tune: str) -> str:
    """Deduplication key: the normalised body with all whitespace removed."""
    return re.sub(r"\s+", "", tune_body(normalize(tune)))


def has_notes(text: str) -> bool:
    return bool(_NOTE_RE.search(text))


_EXTRACT_RE = re.compile(r"(X:\d+\n(?:[^\n]*\n)+)")


def extract_abc(reply: str) -> str | None:
    """ABC in a model reply: the web demo's regex ``X:<n>\\n`` + lines; falls back to a reply holding ``K:``
    without ``X:`` (prepends ``X:1``). ``None`` when no tune is found."""
    m = _EXTRACT_RE.search(reply + "\n")
    if m:
        return m.group(1)
    if re.search(r"(^|\n)K:", reply):
        return "X:1\n" + reply.strip() + "\n"
    return None
