"""ABC helpers used by the data builder and the evaluator.

The shared package owns ABC handling (``musiccore.abc``: split, headers, normalise, transpose, validate); this module
re-exports what the project uses and adds the project-specific parts: chord-symbol extraction, cropping a tune to its
first bars, the body key used for deduplication, and ABC extraction from model replies.
"""

from __future__ import annotations

import re

from musiccore.abc import (  # noqa: F401  (re-exported: the data builder and evaluator import them from here)
    ABCError,
    normalize,
    parse_header,
    parse_score,
    split_tunes,
    transpose,
    tune_body,
    validate,
)

BACKEND = "musiccore.abc"  # part of the corpus fingerprint

_CHORD_RE = re.compile(r'"([A-G][b#]?(?:maj|min|m|dim|aug|sus|add)?\d*(?:[b#]\d+)?(?:/[A-G][b#]?)?)"')
_QUOTED_RE = re.compile(r'"[^"]*"')
_DECORATION_RE = re.compile(r"![^!\n]*!|\+[^+\n]*\+")
_NOTE_RE = re.compile(r"[A-Ga-gz]")


def music21_parses(tune: str) -> bool:
    """True when music21 parses the tune into at least one note (the lenient "parses" criterion).

    :func:`validate` is the strict one: it also checks balanced brackets and every bar's duration."""
    try:
        return any(True for _ in parse_score(tune).recurse().notes)
    except ABCError:
        return False


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
