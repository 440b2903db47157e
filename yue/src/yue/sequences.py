"""Token sequences of YuE's two LMs, as pure functions, with parsers that invert them.

Stage 1 (chain-of-thought / "structural progressive conditioning" layout of the released ``-cot`` checkpoints)::

    tok(head)                                   head = instruction \\n [Genre] tags \\n full lyrics
    [ICL] tok("[start_of_reference]") <SOA> <xcodec> ref ids <EOA> tok("[end_of_reference]")
    per section:
      tok("[start_of_segment]") tok("[label]\\ntext\\n\\n") <SOA> <xcodec> v0 i0 v1 i1 ... <EOA> tok("[end_of_segment]")
    [training] <EOD>

``v_t``/``i_t`` are codebook-0 ids (45334 + c in the released layout) of the vocal and instrumental stems, interleaved
per frame (vocal first). Every ``tok(...)`` is a separate tokenizer call (each adds its own "▁" prefix).

Stage 2 (one 6 s chunk = 300 frames)::

    <SOA> <stage_1> cb0_1 .. cb0_T <stage_2> (cb0_t cb1_t .. cb7_t for t = 1..T)  [<EOA> in training]

Parsers (:func:`parse_stage1`, :func:`parse_stage2`) turn any sequence (built or generated) back into sections and
per-track code arrays and list what is malformed in ``errors`` instead of raising, so a generated sequence with a
missing ``<EOA>`` or an odd number of codes is still usable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from yue.codec_ids import CodecIdError, as_int_array
from yue.lyrics import LyricsError, Section, parse_section_string
from yue.tokenizer import TokenLayout, YuETokenizer

__all__ = [
    "INSTRUCTION",
    "MARKERS",
    "SequenceError",
    "Reference",
    "Stage1Song",
    "Stage1Parse",
    "Stage2Chunk",
    "Stage2Parse",
    "head_text",
    "interleave_ids",
    "build_stage1",
    "stage1_section_prompt",
    "parse_stage1",
    "build_stage2_chunk",
    "stage2_prompt",
    "build_stage2_document",
    "parse_stage2",
]

INSTRUCTION = "Generate music from the given lyrics segment by segment."
MARKERS = {
    "start_of_segment": "[start_of_segment]",
    "end_of_segment": "[end_of_segment]",
    "start_of_reference": "[start_of_reference]",
    "end_of_reference": "[end_of_reference]",
}
STAGE2_CODEBOOKS = 8
STAGE2_CHUNK_FRAMES = 300  # 6 s at 50 frames/s


class SequenceError(ValueError):
    """Inputs that cannot form a sequence (unequal track lengths, tags with newlines, bad codes...)."""


def _id_list(ids, what: str) -> list[int]:
    """A flat id sequence as Python ints; :class:`SequenceError` for anything else (not a sequence, several
    dimensions, non-integer or fractional values, ids beyond int64)."""
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__len__") and not hasattr(ids, "__iter__"):
        raise SequenceError(f"{what}: expected a sequence of token ids, got {type(ids).__name__}")
    try:
        arr = as_int_array(list(ids) if not isinstance(ids, np.ndarray) else ids, what)
    except (CodecIdError, TypeError) as e:
        raise SequenceError(str(e)) from None
    if arr.ndim != 1:
        raise SequenceError(f"{what}: expected a flat sequence of token ids, got shape {list(arr.shape)}")
    return arr.tolist()


def _cb0(codes, what: str) -> np.ndarray:
    a = np.asarray(codes)
    if a.ndim == 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 1:
        raise SequenceError(f"{what}: expected codebook-0 codes [T] or [1, T], got shape {a.shape}")
    return a


# ---------------------------------------------------------------------------------------------------------------
# stage 1
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Reference:
    """ICL reference audio codes (codebook 0).

    Attributes:
        mode: ``"dual"`` (interleaved vocal/instrumental, 2 ids per frame) or ``"single"`` (mix, vocal or
            instrumental stem alone, 1 id per frame).
        vocal: ``[T]`` codes; for ``single`` the one track.
        inst: ``[T]`` codes for ``dual``; ``None`` for ``single``.
    """

    mode: str
    vocal: np.ndarray
    inst: np.ndarray | None = None


@dataclass
class Stage1Song:
    """Everything a stage-1 document holds.

    Attributes:
        tags: genre/instrument/mood/gender/timbre tags (one line; upstream recommends space-separated tags).
        sections: labelled lyrics sections.
        vocal / inst: per section, codebook-0 codes ``[T_i]`` of the vocal and instrumental stems (equal lengths).
        reference: optional ICL reference.
    """

    tags: str
    sections: list[Section]
    vocal: list[np.ndarray] = field(default_factory=list)
    inst: list[np.ndarray] = field(default_factory=list)
    reference: Reference | None = None


def head_text(tags: str | Sequence[str], sections: Sequence[Section]) -> str:
    """``INSTRUCTION \\n[Genre] tags\\n`` + ``"\\n".join("[label]\\ntext\\n\\n")`` as upstream writes it."""
    if not isinstance(tags, str):
        tags = " ".join(tags)
    if "\n" in tags:
        raise SequenceError(f"tags must be one line, got {tags!r}")
    full_lyrics = "\n".join(s.render() for s in sections)
    return f"{INSTRUCTION}\n[Genre] {tags}\n{full_lyrics}"


def interleave_ids(tok: YuETokenizer, vocal, inst) -> list[int]:
    """Dual-track codebook-0 ids: ``v_0 i_0 v_1 i_1 ...`` (both in the codebook-0 range)."""
    v, i = _cb0(vocal, "vocal"), _cb0(inst, "instrumental")
    if v.shape != i.shape:
        raise SequenceError(f"vocal ({v.shape[0]} frames) and instrumental ({i.shape[0]} frames) differ in length")
    xc = tok.layout.xcodec
    # both tracks use codebook 0's range; per frame: vocal then instrumental ('b n -> (n b)')
    pair = np.stack([xc.codes_to_ids(v[None], 0), xc.codes_to_ids(i[None], 0)], axis=1)
    return pair.reshape(-1).tolist()


def _reference_ids(tok: YuETokenizer, ref: Reference) -> list[int]:
    if ref.mode == "dual":
        if ref.inst is None:
            raise SequenceError("dual reference needs both vocal and inst codes")
        body = interleave_ids(tok, ref.vocal, ref.inst)
    elif ref.mode == "single":
        body = tok.layout.xcodec.codes_to_ids(_cb0(ref.vocal, "reference")[None], 0).tolist()
    else:
        raise SequenceError(f"reference mode must be 'dual' or 'single', got {ref.mode!r}")
    soa, eoa, xc = tok.id("<SOA>"), tok.id("<EOA>"), tok.id("<xcodec>")
    return (
        tok.tokenize(MARKERS["start_of_reference"]) + [soa, xc] + body + [eoa] + tok.tokenize(MARKERS["end_of_reference"])
    )


def build_stage1(tok: YuETokenizer, song: Stage1Song, eod: bool = False) -> list[int]:
    """Stage-1 document ids (training layout; ``eod=True`` appends ``<EOD>`` as ``--append-eod`` does).

    Raises:
        SequenceError / CodecIdError: mismatched section/code counts, unequal track lengths, out-of-range codes.
    """
    if len(song.vocal) != len(song.sections) or len(song.inst) != len(song.sections):
        raise SequenceError(
            f"{len(song.sections)} sections but {len(song.vocal)} vocal / {len(song.inst)} instrumental code arrays"
        )
    if not song.sections:
        raise SequenceError("a stage-1 document needs at least one section")
    soa, eoa, xc = tok.id("<SOA>"), tok.id("<EOA>"), tok.id("<xcodec>")
    ids = tok.tokenize(head_text(song.tags, song.sections))
    if song.reference is not None:
        ids += _reference_ids(tok, song.reference)
    sos, eos = tok.tokenize(MARKERS["start_of_segment"]), tok.tokenize(MARKERS["end_of_segment"])
    for sec, v, i in zip(song.sections, song.vocal, song.inst):
        # each piece is its own tokenize call: the "▁" dummy prefix is added per call, as upstream does
        ids += sos + tok.tokenize(sec.render()) + [soa, xc] + interleave_ids(tok, v, i) + [eoa] + eos
    if eod:
        ids.append(tok.id("<EOD>"))
    return ids


def stage1_section_prompt(tok: YuETokenizer, section: Section, first: bool) -> list[int]:
    """Ids appended before generating one section at inference time.

    First section: ``[start_of_segment]`` section ``<SOA><xcodec>`` (after the head, and the ICL block if any).
    Later ones: ``[end_of_segment]`` first, closing the previous section (which ended with ``<EOA>``).
    """
    ids = [] if first else tok.tokenize(MARKERS["end_of_segment"])
    return ids + tok.tokenize(MARKERS["start_of_segment"]) + tok.tokenize(section.render()) + [
        tok.id("<SOA>"), tok.id("<xcodec>")
    ]  # fmt: skip


@dataclass
class ParsedSection:
    """One section recovered from a stage-1 sequence (``vocal``/``inst``: ``[T]`` codes, -1 where an id was bad)."""

    section: Section | None
    vocal: np.ndarray
    inst: np.ndarray
    closed: bool  # saw <EOA>


@dataclass
class Stage1Parse:
    """Result of :func:`parse_stage1`. ``errors`` lists every malformed part (empty for a well-formed sequence)."""

    tags: str | None
    head_sections: list[Section]
    reference: Reference | None
    sections: list[ParsedSection]
    eod: bool
    errors: list[str]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_song(self) -> Stage1Song:
        """The :class:`Stage1Song` this sequence encodes (raises :class:`SequenceError` if it is malformed)."""
        if self.errors:
            raise SequenceError("malformed stage-1 sequence: " + "; ".join(self.errors))
        return Stage1Song(
            self.tags or "",
            [s.section for s in self.sections],
            [s.vocal for s in self.sections],
            [s.inst for s in self.sections],
            self.reference,
        )

    def tracks(self) -> tuple[np.ndarray, np.ndarray]:
        """Vocal and instrumental codebook-0 codes of all sections, concatenated: two ``[1, T]`` arrays."""
        v = np.concatenate([s.vocal for s in self.sections]) if self.sections else np.zeros(0, np.int64)
        i = np.concatenate([s.inst for s in self.sections]) if self.sections else np.zeros(0, np.int64)
        return v[None], i[None]


def _find(seq: list[int], pattern: list[int], start: int = 0) -> int:
    """Index of the first occurrence of ``pattern`` in ``seq`` at or after ``start`` (-1 if none)."""
    n = len(pattern)
    first = pattern[0]
    i = start
    while True:
        try:
            i = seq.index(first, i)
        except ValueError:
            return -1
        if seq[i : i + n] == pattern:
            return i
        i += 1


def _parse_head(tok: YuETokenizer, head: list[int], errors: list[str]) -> tuple[str | None, list[Section]]:
    try:
        text = tok.decode_text(head)
    except Exception as e:  # special or codec ids inside the head
        errors.append(f"head: {e}")
        return None, []
    prefix = f"{INSTRUCTION}\n[Genre] "
    if not text.startswith(prefix):
        errors.append(f"head does not start with the instruction and '[Genre] ': {text[:60]!r}")
        return None, []
    rest = text[len(prefix) :]
    tags, _, lyrics = rest.partition("\n")
    sections: list[Section] = []
    # full lyrics = "\n".join("[label]\ntext\n\n"): split on the section starts, then parse each block
    blocks = [b for b in _split_blocks(lyrics)]
    for b in blocks:
        try:
            sections.append(parse_section_string(b))
        except LyricsError as e:
            errors.append(f"head lyrics: {e}")
    return tags, sections


def _split_blocks(lyrics: str) -> list[str]:
    import re

    starts = [m.start() for m in re.finditer(r"(?:^|(?<=\n\n\n))\[\w+\]\n", lyrics)]
    blocks = []
    for a, b in zip(starts, starts[1:] + [len(lyrics)]):
        block = lyrics[a:b]
        if b != len(lyrics):
            block = block[:-1]  # the "\n" that joined two sections
        blocks.append(block)
    return blocks


def _codes_between(tok: YuETokenizer, ids: list[int], errors: list[str], where: str, dual: bool):
    """De-interleave codebook-0 ids (bad ids -> -1, odd length truncated), reporting problems."""
    xc = tok.layout.xcodec
    arr = np.asarray(ids, dtype=np.int64)
    if dual and arr.size % 2:
        errors.append(f"{where}: odd number of codec ids ({arr.size}); last id dropped")
        arr = arr[:-1]
    codes = xc.ids_to_codes(arr, n=1, begin=0, strict=False)[0] if arr.size else np.zeros(0, np.int64)
    nbad = int((codes < 0).sum())
    if nbad:
        errors.append(f"{where}: {nbad} ids outside codebook 0 ({xc.offset(0)}..{xc.offset(0) + xc.codebook_size - 1})")
    if dual:
        return codes[0::2], codes[1::2]
    return codes, None


def parse_stage1(tok: YuETokenizer, ids: Sequence[int], reference_mode: str = "dual") -> Stage1Parse:
    """Recover head, reference and per-section codes from a stage-1 sequence (built or generated).

    Args:
        ids: the sequence (a prompt plus generated continuation, or a training document).
        reference_mode: how to read an ICL block: ``"dual"`` (interleaved) or ``"single"``.

    Returns:
        :class:`Stage1Parse`; problems (missing ``<xcodec>``/``<EOA>``/end markers, odd code counts, ids of other
        codebooks, stray tokens, ids outside the vocabulary) are listed in ``.errors``.

    Raises:
        SequenceError: only when ``ids`` is not a flat sequence of integers at all (see :func:`_id_list`).
    """
    ids = _id_list(ids, "stage-1 ids")
    errors: list[str] = []
    soa, eoa, xc, eod_id = tok.id("<SOA>"), tok.id("<EOA>"), tok.id("<xcodec>"), tok.id("<EOD>")
    sos, eos = tok.tokenize(MARKERS["start_of_segment"]), tok.tokenize(MARKERS["end_of_segment"])
    sor, eor = tok.tokenize(MARKERS["start_of_reference"]), tok.tokenize(MARKERS["end_of_reference"])

    firsts = [p for p in (_find(ids, sos), _find(ids, sor)) if p >= 0]
    head_end = min(firsts) if firsts else len(ids)
    tags, head_sections = _parse_head(tok, ids[:head_end], errors)
    if not firsts:
        errors.append("no [start_of_segment] marker")

    def read_audio_block(pos: int, where: str) -> tuple[list[int], int, bool]:
        """At ``pos`` expect <SOA> <xcodec>; return (codec ids, position after <EOA>, closed)."""
        if pos >= len(ids) or ids[pos] != soa:
            errors.append(f"{where}: expected <SOA> at position {pos}")
        else:
            pos += 1
        if pos < len(ids) and ids[pos] == xc:
            pos += 1
        else:
            errors.append(f"{where}: missing <xcodec> after <SOA>")
        try:
            end = ids.index(eoa, pos)
            closed = True
        except ValueError:
            end, closed = len(ids), False
            errors.append(f"{where}: no <EOA> (sequence ends inside the audio block)")
        # an unterminated block must not swallow a following section
        nxt = _find(ids, sos, pos)
        if 0 <= nxt < end:
            errors.append(f"{where}: [start_of_segment] before <EOA>")
            end, closed = nxt, False
        body = ids[pos:end]
        return body, (end + 1 if closed else end), closed

    reference = None
    sections: list[ParsedSection] = []
    pos = head_end
    while pos < len(ids):
        if ids[pos : pos + len(sor)] == sor:
            body, pos, _ = read_audio_block(pos + len(sor), "reference")
            v, i = _codes_between(tok, body, errors, "reference", dual=reference_mode == "dual")
            reference = Reference(reference_mode, v, i)
            if ids[pos : pos + len(eor)] == eor:
                pos += len(eor)
            else:
                errors.append("reference: missing [end_of_reference]")
        elif ids[pos : pos + len(sos)] == sos:
            k = len(sections)
            where = f"section {k}"
            pos += len(sos)
            try:
                text_end = ids.index(soa, pos)
            except ValueError:
                text_end = len(ids)
            section = None
            try:
                section = parse_section_string(tok.decode_text(ids[pos:text_end]))
            except (LyricsError, ValueError) as e:
                errors.append(f"{where}: {e}")
            body, pos, closed = read_audio_block(text_end, where)
            v, i = _codes_between(tok, body, errors, where, dual=True)
            sections.append(ParsedSection(section, v, i, closed))
            if ids[pos : pos + len(eos)] == eos:
                pos += len(eos)
            elif closed and pos < len(ids) and ids[pos] != eod_id:
                errors.append(f"{where}: missing [end_of_segment]")
            elif closed and pos < len(ids):
                errors.append(f"{where}: missing [end_of_segment] before <EOD>")
        elif ids[pos] == eod_id:
            pos += 1
            if pos != len(ids):
                errors.append(f"{len(ids) - pos} tokens after <EOD>")
            return Stage1Parse(tags, head_sections, reference, sections, True, errors)
        else:
            nxt = _find(ids, sos, pos)
            stop = nxt if nxt >= 0 else len(ids)
            errors.append(f"unexpected tokens at positions {pos}..{stop - 1}")
            pos = stop
    if head_sections and sections and [s.section for s in sections] != head_sections[: len(sections)]:
        errors.append("section texts differ from the lyrics in the head")
    return Stage1Parse(tags, head_sections, reference, sections, False, errors)


# ---------------------------------------------------------------------------------------------------------------
# stage 2
# ---------------------------------------------------------------------------------------------------------------
def stage2_prompt(layout: TokenLayout, cb0) -> list[int]:
    """Inference prompt of one chunk: ``<SOA> <stage_1> cb0 ids <stage_2>``."""
    c0 = _cb0(cb0, "stage-2 codebook 0")
    return (
        [layout.id("<SOA>"), layout.id("<stage_1>")]
        + layout.xcodec.codes_to_ids(c0[None], 0).tolist()
        + [layout.id("<stage_2>")]
    )


def build_stage2_chunk(layout: TokenLayout, codes, teacher_forcing: bool = True, close: bool = True) -> list[int]:
    """One stage-2 chunk: prompt + frame-major ``cb0..cb7`` per frame (+ ``<EOA>`` when ``close``).

    Args:
        codes: ``[K>=8, T]`` codes; codebooks 0..7 are used (8..11 never are).
        teacher_forcing: True (the released layout, matching inference): the tail holds all 8 codebooks per frame;
            False: only codebooks 1..7 per frame (upstream's non-teacher-forcing training variant).
    """
    arr = layout.xcodec.check_codes(codes)
    if arr.shape[0] < STAGE2_CODEBOOKS:
        raise SequenceError(f"stage 2 needs {STAGE2_CODEBOOKS} codebooks, got {arr.shape[0]}")
    arr = arr[:STAGE2_CODEBOOKS]
    tail = layout.xcodec.codes_to_ids(arr, 0) if teacher_forcing else layout.xcodec.codes_to_ids(arr[1:], 1)
    ids = stage2_prompt(layout, arr[0]) + tail.tolist()
    if close:
        ids.append(layout.id("<EOA>"))
    return ids


def build_stage2_document(
    layout: TokenLayout,
    codes,
    chunk_frames: int = STAGE2_CHUNK_FRAMES,
    min_unique: int = 25,
    teacher_forcing: bool = True,
    eod: bool = True,
) -> tuple[list[int], list[int]]:
    """Training document of one track: exact ``chunk_frames`` chunks (remainder dropped), each closed by ``<EOA>``.

    Chunks whose codebook 0 has fewer than ``min_unique`` distinct codes are skipped (upstream filter).

    Returns:
        ``(ids, kept_chunk_starts)`` where starts are frame indices of the kept chunks.
    """
    arr = layout.xcodec.check_codes(codes)
    ids: list[int] = []
    kept = []
    for s in range(0, arr.shape[1] - chunk_frames + 1, chunk_frames):
        chunk = arr[:, s : s + chunk_frames]
        if len(np.unique(chunk[0])) < min_unique:
            continue  # near-silent/repetitive chunk: upstream drops it
        ids += build_stage2_chunk(layout, chunk, teacher_forcing=teacher_forcing, close=True)
        kept.append(s)
    if eod and ids:
        ids.append(layout.id("<EOD>"))
    return ids, kept


@dataclass
class Stage2Chunk:
    """A parsed stage-2 chunk: ``prompt`` ``[T]`` cb0 of the prompt, ``codes`` ``[8, T']`` (-1 where bad)."""

    prompt: np.ndarray
    codes: np.ndarray
    closed: bool


@dataclass
class Stage2Parse:
    chunks: list[Stage2Chunk]
    eod: bool
    errors: list[str]

    @property
    def ok(self) -> bool:
        return not self.errors

    def codes(self) -> np.ndarray:
        """All chunks' ``[8, T]`` codes concatenated along time."""
        if not self.chunks:
            return np.zeros((STAGE2_CODEBOOKS, 0), np.int64)
        return np.concatenate([c.codes for c in self.chunks], axis=1)


def parse_stage2(layout: TokenLayout, ids: Sequence[int], teacher_forcing: bool = True) -> Stage2Parse:
    """Split a stage-2 sequence (one or more chunks, generated or built) into per-chunk ``[8, T]`` codes.

    Checks: ``<SOA> <stage_1>`` start, ``<stage_2>`` separator, frame completeness, each position's codebook range,
    and that the tail's cb0 repeats the prompt's cb0. Problems go to ``errors``; bad ids become -1
    (:func:`yue.codec_ids.repair_codes` applies upstream's fix).

    Raises:
        SequenceError: only when ``ids`` is not a flat sequence of integers at all.
    """
    ids = _id_list(ids, "stage-2 ids")
    soa, eoa, s1, s2, eod_id = (layout.id(n) for n in ("<SOA>", "<EOA>", "<stage_1>", "<stage_2>", "<EOD>"))
    xc = layout.xcodec
    errors: list[str] = []
    chunks: list[Stage2Chunk] = []
    pos = 0
    eod = False
    while pos < len(ids):
        k = len(chunks)
        if ids[pos] == eod_id:
            eod = True
            if pos + 1 != len(ids):
                errors.append(f"{len(ids) - pos - 1} tokens after <EOD>")
            break
        if ids[pos : pos + 2] != [soa, s1]:
            errors.append(f"chunk {k}: expected <SOA> <stage_1> at position {pos}")
            try:
                pos = ids.index(soa, pos + 1)
                continue
            except ValueError:
                break
        pos += 2
        try:
            sep = ids.index(s2, pos)
        except ValueError:
            errors.append(f"chunk {k}: no <stage_2>")
            break
        prompt = xc.ids_to_codes(ids[pos:sep], 1, 0, strict=False)[0]
        if (prompt < 0).any():
            errors.append(f"chunk {k}: {int((prompt < 0).sum())} prompt ids outside codebook 0")
        pos = sep + 1
        end = pos
        while end < len(ids) and ids[end] not in (eoa, soa, eod_id):
            end += 1
        closed = end < len(ids) and ids[end] == eoa
        tail = ids[pos:end]
        n = STAGE2_CODEBOOKS if teacher_forcing else STAGE2_CODEBOOKS - 1
        if len(tail) % n:
            errors.append(f"chunk {k}: {len(tail)} tail ids is not a whole number of {n}-code frames; tail truncated")
            tail = tail[: len(tail) - len(tail) % n]
        codes = xc.ids_to_codes(tail, n, 0 if teacher_forcing else 1, strict=False)
        if not teacher_forcing:
            codes = np.concatenate([prompt[None, : codes.shape[1]], codes], axis=0)
        if (codes < 0).any():
            errors.append(f"chunk {k}: {int((codes < 0).sum())} tail ids outside their codebook")
        t = min(codes.shape[1], prompt.shape[0])
        if teacher_forcing and not np.array_equal(codes[0, :t], prompt[:t]):
            errors.append(f"chunk {k}: tail codebook 0 differs from the prompt")
        if codes.shape[1] != prompt.shape[0]:
            errors.append(f"chunk {k}: {codes.shape[1]} frames generated for a {prompt.shape[0]}-frame prompt")
        chunks.append(Stage2Chunk(prompt, codes, closed))
        pos = end + 1 if closed else end
    return Stage2Parse(chunks, eod, errors)


__all__ += ["ParsedSection", "CodecIdError", "STAGE2_CODEBOOKS", "STAGE2_CHUNK_FRAMES"]
