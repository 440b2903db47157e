"""Lyrics with section labels -> the per-section strings of YuE's stage-1 prompt.

Upstream splits with the regex ``\\[(\\w+)\\](.*?)(?=\\[|\\Z)`` (DOTALL) and turns every match into
``"[label]\\n{text.strip()}\\n\\n"``. This module does the same and adds checks that upstream lacks:

- no section label at all -> :class:`LyricsError` (upstream would silently generate nothing);
- text before the first label -> :class:`LyricsError` (upstream drops it silently);
- a label outside :data:`KNOWN_LABELS` (case-insensitive) -> :class:`LyricsError` naming it, unless
  ``allow_unknown=True``; labels with spaces or hyphens (``[pre-chorus]``) never match ``\\w+`` upstream, so they are
  reported as malformed instead of being glued to the previous section;
- an **empty section is allowed** and kept as ``"[label]\\n\\n\\n"``: this is the documented upstream way to ask for an
  instrumental part (issues #18/#112);
- any script (Latin, CJK, Cyrillic, ...) is accepted in the lyric text; labels themselves must be ASCII words.
- ``\\r\\n`` line ends are normalised to ``\\n``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["LyricsError", "Section", "KNOWN_LABELS", "split_lyrics", "section_string", "parse_section_string"]

#: Section labels seen in YuE's prompts and data (MSA labels); others need ``allow_unknown=True``.
KNOWN_LABELS = frozenset(
    "verse chorus bridge intro outro inst instrumental prechorus pre_chorus hook break interlude refrain solo end "
    "start".split()
)

_SECTION_RE = re.compile(r"\[(\w+)\](.*?)(?=\[|\Z)", re.DOTALL)
_ANY_LABEL_RE = re.compile(r"\[([^\[\]\n]*)\]")


class LyricsError(ValueError):
    """Lyrics that cannot be turned into labelled sections (the message says why and where)."""


@dataclass(frozen=True)
class Section:
    """One lyrics section: ``label`` (ASCII word, case kept) and its text (stripped; may be empty)."""

    label: str
    text: str

    def render(self) -> str:
        """The upstream prompt string ``"[label]\\ntext\\n\\n"``."""
        return section_string(self.label, self.text)


def section_string(label: str, text: str) -> str:
    """``"[label]\\n{text.strip()}\\n\\n"`` exactly as upstream formats a section."""
    return f"[{label}]\n{text.strip()}\n\n"


def parse_section_string(s: str) -> Section:
    """Inverse of :func:`section_string` (raises :class:`LyricsError` on anything else)."""
    if not isinstance(s, str):
        raise LyricsError(f"not a section string: got {type(s).__name__}")
    m = re.fullmatch(r"\[(\w+)\]\n(.*)\n\n", s, re.DOTALL)
    if m is None:
        raise LyricsError(f"not a section string ('[label]\\n...\\n\\n'): {s[:60]!r}")
    return Section(m.group(1), m.group(2))


def split_lyrics(lyrics: str, allow_unknown: bool = False, source: str = "lyrics") -> list[Section]:
    """Split labelled lyrics into sections (see the module docstring for the rules).

    Args:
        lyrics: text such as ``"[verse]\\nline one\\nline two\\n\\n[chorus]\\n..."``.
        allow_unknown: accept labels outside :data:`KNOWN_LABELS`.
        source: name used in error messages (e.g. the lyrics file).

    Raises:
        LyricsError: empty lyrics, no labels, text before the first label, malformed or unknown labels.
    """
    if not isinstance(lyrics, str):
        raise LyricsError(f"{source}: lyrics must be a str, got {type(lyrics).__name__}")
    text = lyrics.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise LyricsError(f"{source}: lyrics are empty")
    for m in _ANY_LABEL_RE.finditer(text):
        if not re.fullmatch(r"\w+", m.group(1)) or not m.group(1).isascii():
            raise LyricsError(
                f"{source}: malformed section label [{m.group(1)}] (labels are single ASCII words such as "
                f"[verse] or [chorus]; upstream would not recognise it)"
            )
    matches = list(_SECTION_RE.finditer(text))
    if not matches:
        raise LyricsError(f"{source}: no section labels found; write e.g. '[verse]\\n...\\n\\n[chorus]\\n...'")
    head = text[: matches[0].start()]
    if head.strip():
        raise LyricsError(f"{source}: text before the first section label would be dropped: {head.strip()[:60]!r}")
    sections = []
    for m in matches:
        label = m.group(1)  # kept as written: the label's case changes its tokens
        if not allow_unknown and label.lower() not in KNOWN_LABELS:
            raise LyricsError(
                f"{source}: unknown section label [{m.group(1)}]; known: {', '.join(sorted(KNOWN_LABELS))} "
                f"(pass allow_unknown=True to accept it)"
            )
        sections.append(Section(label, m.group(2).strip()))
    return sections
