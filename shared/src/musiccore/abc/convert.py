"""Converting ABC: to MIDI (abc2midi or music21), WAV (fluidsynth), MusicXML (music21), from MIDI
(midi2abc or music21 + :func:`score_to_abc`), and :func:`convert_many` for batches.

music21 reads ABC and writes MIDI/MusicXML; it has no ABC writer (``write('abc')`` writes the object's
repr), hence the small :func:`score_to_abc`. Renders are checked (:mod:`musiccore.render`): abc2midi's MIDI
against the tune's :func:`~musiccore.abc.tune_extent`, fluidsynth's WAV for length and silence.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

from musiccore.abc.limits import MAX_TUNE_CHARS, ABCError
from musiccore.abc.parse import (
    _ALTER_ACC,
    _LETTERS,
    KeySpec,
    _ensure_x,
    _single,
    _write_note,
    parse_header,
    split_file,
    split_tunes,
    tune_label,
)
from musiccore.abc.validate import parse_score, tune_extent
from musiccore.render import (
    RenderError,
    ToolNotFoundError,
    check_midi_complete,
    midi_to_wav,
    require_tool,
    run_tool,
    tool_available,
)
from musiccore.runs import atomic_path

log = logging.getLogger("musiccore.abc")

__all__ = ["BatchReport", "abc_to_midi", "abc_to_wav", "abc_to_musicxml", "midi_to_abc", "score_to_abc", "convert_many"]

def abc_to_midi(tune: str, midi_path: str | Path, *, engine: str = "auto", strict: bool = False,
                timeout: float = 60, check_complete: bool = True) -> Path:
    """Write one tune as a MIDI file (atomically); returns the path.

    ``engine``: ``"abc2midi"`` (Debian ``abcmidi``), ``"music21"``, or ``"auto"`` (abc2midi when
    installed, else music21). abc2midi reports recoverable problems (a tie between different notes, a
    bar of the wrong length) as ``Error`` lines yet writes the file: with ``strict`` any such line fails
    the tune, otherwise only a missing MIDI does. ``X:1`` is added when missing.

    abc2midi also succeeds (exit 0, or 1 with a file written) with a MIDI that stops early (an unclosed ``[``
    folds the rest of the tune into one chord) or holds nothing (``C/3``: "not a power of 2"). So its MIDI
    is compared with :func:`~musiccore.abc.tune_extent` (notes struck, when the last note starts; repeats
    only add to both) and a shorter one raises :class:`RenderError` naming the tune, what is missing and abc2midi's first
    error line. The check is skipped for tunes with a ``P:`` header field (abc2midi plays only the parts
    it lists, in its order) and with ``check_complete=False``. Over the 12,978 tunes of music21's ABC corpus
    it fails 10, each one where abc2midi dropped or shortened music after an error of its own ("Malformed
    note", "Guitar chord does not start with A-G", "Cannot apply broken rhythm") or an unreadable ``M: 2/2]``:
    from a quarter note to more than half of the tune.

    Raises :class:`ABCError` for bad ABC (:class:`ABCLimitError` over a bound of
    :mod:`musiccore.abc.limits`, before any tool runs), :class:`RenderError` for a failed or truncated
    render and :class:`ToolNotFoundError` if ``abc2midi`` is asked for but missing.
    """
    tune = _ensure_x(_single(tune))
    label = tune_label(tune[:MAX_TUNE_CHARS])
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
    extent = tune_extent(tune)  # bounds first (ABCLimitError), and what abc2midi's MIDI must at least hold
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
        if check_complete and "P" not in h:
            try:
                check_midi_complete(out, min_notes=extent.struck_notes,
                                    min_onset_quarters=extent.last_onset_quarters, what=label, tool="abc2midi")
            except RenderError as e:
                raise RenderError(f"{e}" + (f" (abc2midi: {errors[0]})" if errors else "")) from e
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
    the score's instruments (music21). The WAV is written atomically. A truncated MIDI (see
    :func:`abc_to_midi`) or a WAV that is silent or shorter than the MIDI raises :class:`RenderError` naming
    the tune and the reason, and no WAV is written.
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
        try:
            return midi_to_wav(mid, wav_path, sample_rate=sample_rate, gain=gain, soundfont=soundfont,
                               timeout=timeout)
        except RenderError as e:  # name the tune, not the temporary MIDI
            raise RenderError(f"{tune_label(tune[:MAX_TUNE_CHARS])}: {str(e).replace(f'{mid}: ', '')}") from e


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
