"""Rewriting ABC text: :func:`normalize` (canonical text for dedup and training), :func:`fingerprint` and
:func:`transpose` (own text transposer, or ``abc2abc -t``).

The transposer is written here rather than done by music21 because music21's ABC reader ignores ABC 2.1's
bar-long accidentals and inline ``[K:]`` changes (it would move the wrong pitches) and has no ABC writer;
abc2abc is the external alternative (``engine="abc2abc"``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tempfile
from pathlib import Path
from typing import Sequence

from musiccore.abc.limits import MAX_TUNE_CHARS, ABCError, check_tune_size
from musiccore.abc.parse import (
    _ACC_ALTER,
    _ALTER_ACC,
    _FIELD_RE,
    _FIFTHS,
    _HEADER_ORDER,
    _LETTERS,
    _NATURAL_PC,
    KeySpec,
    _diatonic,
    _ensure_x,
    _line_kind,
    _natural_midi,
    _strip_comment,
    _write_note,
    default_unit_length,
    parse_header,
    parse_key,
    parse_meter,
    split_tunes,
    tokenize_line,
    tune_label,
    user_symbols,
)
from musiccore.render import require_tool, run_tool

__all__ = ["normalize", "fingerprint", "transpose"]


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
    line breaks stay. The result ends with a newline. Raises :class:`ABCError` if there is no ``K:`` and
    :class:`ABCLimitError` for a tune longer than :data:`~musiccore.abc.limits.MAX_TUNE_CHARS`.
    """
    check_tune_size(tune, tune_label(tune[:MAX_TUNE_CHARS]))
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
    runs ``abc2abc -t`` instead. Raises :class:`ABCError` for a tune without ``K:``, with a bagpipe key or
    with an unreadable note length (``A/0``, naming the line), and :class:`ABCLimitError` for a tune over a
    bound of :mod:`musiccore.abc.limits`.
    """
    check_tune_size(tune, tune_label(tune[:MAX_TUNE_CHARS]))
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
    for lineno, line in enumerate(lines):
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
        try:
            toks = tokenize_line(line, lineno, syms)
        except ABCError as e:
            raise type(e)(f"{label}: {e}") from e
        for tok in toks:
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
