"""ABC notation utilities: split, headers, validation, normalisation, transposition and conversion.

An ABC *tune* is text that starts with an ``X:`` line, has header fields up to and including the ``K:``
line, then a body of music lines (plus field lines such as ``w:``/``M:``/``K:``/``V:`` and ``%`` comments).

The package is split by role; every public name is re-exported here (``from musiccore.abc import X``):

- :mod:`~musiccore.abc.limits`: :class:`ABCError`, :class:`ABCLimitError` and the documented bounds
  (``MAX_TUNE_CHARS``, ``MAX_BARS``, ``MAX_NOTES``, meter, unit and note lengths) that keep every function's
  work bounded;
- :mod:`~musiccore.abc.parse`: splitting, header fields, meters, lengths, keys and the body tokenizer;
- :mod:`~musiccore.abc.validate`: :func:`validate`, :func:`validate_many`, :func:`tune_extent`,
  :func:`parse_score` (music21);
- :mod:`~musiccore.abc.transform`: :func:`normalize`, :func:`fingerprint`, :func:`transpose`;
- :mod:`~musiccore.abc.convert`: MIDI, WAV, MusicXML and back, :func:`convert_many`.

Everything here works on plain strings. Conversions go through external tools when they are installed
(``abc2midi``, ``midi2abc``, ``abc2abc`` from the Debian ``abcmidi`` package; ``fluidsynth``) and fall back
to music21 where it can do the job (ABC -> MIDI, ABC -> MusicXML, score -> ABC via :func:`score_to_abc`).

Semantics follow ABC 2.1 (as abc2midi does): an accidental carries to the end of its bar and inline
``[K:]`` changes apply. music21's ABC reader does neither (``K:C`` ``B _B B|`` gives B, Bb, B there), so
compare pitches with abc2midi's MIDI when a tune relies on them.

Errors: malformed tunes raise :class:`ABCError` (a ``ValueError``) whose message names the tune
(``X:``/``T:``) or file; a tune beyond a bound raises its subclass :class:`ABCLimitError` naming the field
or line and the limit; a missing tool raises :class:`musiccore.render.ToolNotFoundError` (a
``RuntimeError``) that says how to install it; a renderer that fails or stops early raises
:class:`musiccore.render.RenderError`. Batch helpers (:func:`validate_many`, :func:`convert_many`) never
raise for one bad item: they record it and carry on.
"""

from __future__ import annotations

from musiccore.abc.convert import (
    BatchReport,
    abc_to_midi,
    abc_to_musicxml,
    abc_to_wav,
    convert_many,
    midi_to_abc,
    score_to_abc,
)
from musiccore.abc.limits import (
    MAX_BARS,
    MAX_BROKEN,
    MAX_NOTES,
    MAX_LENGTH_SLASHES,
    MAX_METER_DENOMINATOR,
    MAX_METER_NUMERATOR,
    MAX_NOTE_DENOMINATOR,
    MAX_NOTE_UNITS,
    MAX_NUMBER_DIGITS,
    MAX_TUNE_CHARS,
    MAX_UNIT_DENOMINATOR,
    MAX_UNIT_NUMERATOR,
    ABCError,
    ABCLimitError,
)
from musiccore.abc.parse import (
    Header,
    KeySpec,
    Token,
    default_unit_length,
    parse_header,
    parse_key,
    parse_length,
    parse_meter,
    split_file,
    split_tunes,
    tokenize_body,
    tokenize_line,
    tune_body,
    tune_label,
    user_symbols,
)
from musiccore.abc.transform import fingerprint, normalize, transpose
from musiccore.abc.validate import TuneExtent, ValidationResult, parse_score, tune_extent, validate, validate_many
# tool_available was a module attribute before the split (tests call musiccore.abc.tool_available)
from musiccore.render import RenderError, ToolNotFoundError, tool_available  # noqa: F401

__all__ = [
    "ABCError",
    "ABCLimitError",
    "RenderError",
    "ToolNotFoundError",
    "Header",
    "Token",
    "ValidationResult",
    "TuneExtent",
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
    "tune_extent",
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
]
