"""Errors of :mod:`musiccore.abc` and the documented bounds on the work one tune may cause.

Every entry point that parses ABC (:func:`~musiccore.abc.validate`, :func:`~musiccore.abc.parse_score`,
:func:`~musiccore.abc.transpose`, :func:`~musiccore.abc.normalize`, the converters) stays within these
bounds: a tune beyond one of them gets an :class:`ABCLimitError` (or, from :func:`~musiccore.abc.validate`,
a failed result carrying the same message) that names the field or line, the value and the limit. The
bounds sit far above real music: the 12,978 tunes of music21's ABC corpus have at most 2,438 characters, 127
bars and 715 notes, and notes of at most 32 units of ``L:`` but for one of 442 units (Essen ``han2.abc``
X:374, which music21 was already not asked to parse and ``abc_to_midi`` now refuses too).

Why each bound exists (measured on this package before the bounds, 2 cores):

- ``M:999999999/1`` made music21 allocate > 3 GB building bars of a billion whole notes;
- ``Z99999999`` (a multi-bar rest) made the bar check close 10^8 bars (MemoryError after 39 s);
- a 10,000-bar tune took minutes in music21 (its ABC reader grows faster than linearly: 500 bars of 8 notes
  ~20 s, 1,000 bars ~70 s), and a 1 MB line took 6.5 s and 320 MB just to tokenize;
- ``A/0`` raised ``ZeroDivisionError`` and ``A`` followed by 5,000 digits a ``ValueError`` from ``int()``.
"""

from __future__ import annotations

__all__ = [
    "ABCError",
    "ABCLimitError",
    "MAX_TUNE_CHARS",
    "MAX_BARS",
    "MAX_NOTES",
    "MAX_METER_NUMERATOR",
    "MAX_METER_DENOMINATOR",
    "MAX_UNIT_NUMERATOR",
    "MAX_UNIT_DENOMINATOR",
    "MAX_NOTE_UNITS",
    "MAX_NOTE_DENOMINATOR",
    "MAX_NUMBER_DIGITS",
    "MAX_LENGTH_SLASHES",
    "MAX_BROKEN",
    "check_tune_size",
]


class ABCError(ValueError):
    """Malformed or unusable ABC. The message names the tune (``X:``/``T:``) or the file."""


class ABCLimitError(ABCError):
    """A tune exceeds one of the bounds of :mod:`musiccore.abc.limits`; the message names the field or line,
    the value and the limit (e.g. ``M:999999999/1: meter numerator 999999999 is above MAX_METER_NUMERATOR=64``)."""


MAX_TUNE_CHARS = 50_000
"""Characters in one tune (header and body). Corpus maximum: 2,438; tokenizing 50 KB takes ~0.3 s."""

MAX_BARS = 500
"""Bars in one tune, all voices together, multi-bar rests counted bar by bar. Corpus maximum: 127."""

MAX_NOTES = 4_000
"""Notes in one tune (chord members and grace notes included). music21's time grows faster than linearly with
them (4,000 notes in 500 bars: ~20 s), so a 50 KB run of notes in one bar is refused too. Corpus maximum: 715."""

MAX_METER_NUMERATOR = 64
"""Largest ``M:`` numerator (after adding ``2+3+2/8``-style parts)."""

MAX_METER_DENOMINATOR = 64
"""Largest ``M:`` denominator."""

MAX_UNIT_NUMERATOR = 64
"""Largest ``L:`` numerator."""

MAX_UNIT_DENOMINATOR = 512
"""Largest ``L:`` denominator (``L:1/512``)."""

MAX_NOTE_UNITS = 256
"""Longest note or rest, in units of ``L:`` (``C2222222`` from a language model made music21 re-bar for minutes)."""

MAX_NOTE_DENOMINATOR = 512
"""Shortest note or rest: ``1/512`` of ``L:`` (``A/1024`` and shorter are refused)."""

MAX_NUMBER_DIGITS = 9
"""Digits of any number written in a body (note lengths, tuplets, multi-bar rests): keeps ``int()`` cheap."""

MAX_LENGTH_SLASHES = 8
"""Slashes in one note length (``A////////`` = 1/256 of ``L:``)."""

MAX_BROKEN = 3
"""Longest broken-rhythm sign (``>>>``, as in ABC 2.1)."""


def check_tune_size(tune: str, label: str) -> None:
    """Raise :class:`ABCLimitError` when ``tune`` is longer than :data:`MAX_TUNE_CHARS` (checked before any work)."""
    if len(tune) > MAX_TUNE_CHARS:
        raise ABCLimitError(f"{label}: the tune has {len(tune):,} characters (limit MAX_TUNE_CHARS={MAX_TUNE_CHARS:,})")
