"""Rendered music clips with exact labels taken from the score.

Two kinds of source, interleaved one by one in a seeded order:

- ``chorale``: a Bach chorale of music21's corpus (four voices). Key label: music21's ``analyze('key')`` of the whole
  chorale; an excerpt that analyses to another key (a modulation, or an ambiguous opening) is skipped and reported
  as a bad item, so the label is what the clip sounds like.
- ``abc``: a public-domain ABC tune (same candidates as ``tunes``), melody plus, for most clips, a tonic drone part.
  Key label: the tune's ``K:`` field as music21 reads it (modes map to their major/minor family: dorian, phrygian,
  aeolian, locrian -> minor; ionian, lydian, mixolydian -> major; the exact mode is kept in ``mode``).

Each clip: a seeded tempo (``tempo_bpm``: quarter notes per minute, the only tempo event of the MIDI file;
``beat_bpm``: beats of the time signature per minute, e.g. dotted quarters in 6/8), one General MIDI program
per part drawn from a seeded instrumentation scheme, the first ``clip_seconds`` of the piece (looped when shorter)
rendered by fluidsynth, mixed to mono, cut to exactly ``clip_seconds`` and peak-normalised to 0.9. The MIDI file is
kept beside the WAV (``clips/<id>.mid``) as the symbolic ground truth.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .manifest import sha256_file, split_of

log = logging.getLogger("musiccore.data")

#: General MIDI names of the programs the kit uses (program number, 0-based -> name)
GM_NAMES: dict[int, str] = {
    0: "Acoustic Grand Piano", 4: "Electric Piano 1", 6: "Harpsichord", 11: "Vibraphone", 16: "Drawbar Organ",
    19: "Church Organ", 21: "Accordion", 22: "Harmonica", 24: "Acoustic Guitar (nylon)", 25: "Acoustic Guitar (steel)",
    32: "Acoustic Bass", 33: "Electric Bass (finger)", 40: "Violin", 41: "Viola", 42: "Cello", 43: "Contrabass",
    46: "Orchestral Harp", 48: "String Ensemble 1", 52: "Choir Aahs", 53: "Voice Oohs", 56: "Trumpet",
    57: "Trombone", 58: "Tuba", 60: "French Horn", 61: "Brass Section", 64: "Soprano Sax", 65: "Alto Sax",
    66: "Tenor Sax", 68: "Oboe", 70: "Bassoon", 71: "Clarinet", 73: "Flute", 74: "Recorder", 75: "Pan Flute",
    79: "Ocarina", 105: "Banjo", 109: "Bagpipe", 110: "Fiddle",
}
#: programs that suit a melody / an upper voice
HIGH_PROGRAMS = (0, 4, 6, 11, 21, 22, 24, 25, 40, 46, 52, 53, 56, 64, 65, 68, 71, 73, 74, 75, 79, 105, 110)
#: programs that suit a bass / lower voice or a drone
LOW_PROGRAMS = (0, 6, 16, 19, 24, 32, 33, 42, 43, 48, 52, 57, 58, 60, 66, 70)
#: fixed ensembles for four-voice music (soprano, alto, tenor, bass)
ENSEMBLES: dict[str, tuple[int, int, int, int]] = {
    "organ": (19, 19, 19, 19),
    "choir": (52, 52, 53, 52),
    "string quartet": (40, 40, 41, 42),
    "brass": (56, 56, 60, 58),
    "woodwinds": (73, 68, 71, 70),
    "piano": (0, 0, 0, 0),
    "choir and organ": (52, 19, 19, 19),
    "saxophones": (64, 65, 66, 66),
}
MIN_PEAK = 1e-3  # a render quieter than this is treated as silent (bad item)


@dataclass(frozen=True)
class ClipSource:
    """One candidate clip: which piece, which excerpt (``k``-th clip of that piece) and everything needed to
    render it in a worker process."""

    id: str  # clip id, also the file stem
    kind: str  # "chorale" or "abc"
    source: str  # corpus path of a chorale ("bach/bwv10.7") or a tune id
    source_id: str  # id the split is derived from (a tune id, or "bach-bwv10.7")
    k: int  # excerpt index: the clip starts k * (clip length) into the piece
    abc: str = ""  # tune text for kind "abc"


def chorale_paths() -> list[str]:
    """Corpus names of the Bach chorales (``bach/bwv10.7``) in sorted order."""
    from .tunes import corpus_root

    folder = corpus_root() / "bach"
    return sorted(f"bach/{p.name[:-4]}" for p in folder.glob("bwv*.mxl"))


def list_candidates(n: int, seed: int, tune_sources: list) -> list[ClipSource]:
    """Seeded candidate order: chorales and ABC tunes alternate; pieces repeat (with a later excerpt) only after
    every piece was used once, so the list is long enough for ``n`` clips plus failures."""
    rng = random.Random(f"{seed}|clips")
    chorales = chorale_paths()
    rng.shuffle(chorales)
    tunes = list(tune_sources)
    rng.shuffle(tunes)
    per_round = min(len(chorales), len(tunes)) if chorales and tunes else max(len(chorales), len(tunes), 1)
    rounds = math.ceil(n / per_round) + 1  # later rounds take later excerpts of the same pieces
    ch: list[ClipSource] = []
    tu: list[ClipSource] = []
    for k in range(rounds):
        for c in chorales:
            sid = "bach-" + c.split("/", 1)[1]
            ch.append(ClipSource(f"{sid}-c{k}", "chorale", c, sid, k))
        for t in tunes:
            tu.append(ClipSource(f"{t.id}-c{k}", "abc", t.id, t.id, k, t.abc))
        if len(ch) + len(tu) >= 3 * n + 50:
            break
    out: list[ClipSource] = []
    for i in range(max(len(ch), len(tu))):
        if i < len(ch):
            out.append(ch[i])
        if i < len(tu):
            out.append(tu[i])
    return out


# ----------------------------------------------------------------------------------------------- labels
def key_label(tonic_name: str, mode: str) -> str:
    """24-class key label, e.g. ``"F# minor"``, ``"Bb major"`` (music21 ``-`` flats become ``b``)."""
    family = "minor" if mode in ("minor", "dorian", "phrygian", "aeolian", "locrian") else "major"
    return f"{tonic_name.replace('-', 'b')} {family}"


def _score_key(score) -> tuple[Any, Any]:
    """(first key.Key of the score or None, first KeySignature or None)."""
    from music21 import key as m21key

    k = ks = None
    for el in score.recurse().getElementsByClass(m21key.KeySignature):
        if ks is None:
            ks = el
        if isinstance(el, m21key.Key) and k is None:
            k = el
        if k is not None and ks is not None:
            break
    return k, ks


def _meter(score) -> tuple[str, float]:
    """(first time signature as text, e.g. ``"6/8"``, and its beat in quarter notes: 1.5 for 6/8, 2 for 2/2);
    ``("", 1.0)`` when the score has none."""
    from music21 import meter

    for ts in score.recurse().getElementsByClass(meter.TimeSignature):
        return ts.ratioString, float(ts.beatDuration.quarterLength)
    return "", 1.0


# ----------------------------------------------------------------------------------------------- excerpt
def excerpt(score, start_ql: float, length_ql: float):
    """New score with the sounding notes of ``score`` in ``[start_ql, start_ql + length_ql)``, shifted to 0.

    Each part keeps only notes and chords (no rests, chord symbols, grace notes, tempo or instrument objects), so
    tempo and programs are set by the renderer alone. A piece shorter than the window is looped.
    Returns ``(score, n_notes)``.
    """
    from music21 import harmony, stream

    out = stream.Score()
    n_total = 0
    for part in score.parts:
        notes = [n for n in part.flatten().notes
                 if not isinstance(n, harmony.ChordSymbol) and n.duration.quarterLength > 0]
        if not notes:
            continue
        period = float(part.highestTime) or max(float(n.offset + n.quarterLength) for n in notes)
        newp = stream.Part()
        end = start_ql + length_ql
        lap = math.floor(start_ql / period) if period > 0 else 0
        while period > 0 and lap * period < end:
            base = lap * period
            for n in notes:
                off = base + float(n.offset)
                if off < start_ql:
                    continue
                if off >= end:
                    break
                m = copy.deepcopy(n)
                for attr in ("expressions", "articulations"):
                    setattr(m, attr, [])  # fermatas would stretch the MIDI timing in some writers
                newp.insert(off - start_ql, m)
                n_total += 1
            lap += 1
        if len(newp.notes):
            out.insert(0, newp)
    return out, n_total


def _drone_part(tonic_name: str, length_ql: float, bar_ql: float):
    """A bass drone: the tonic (octave 2) and its fifth, one chord per bar."""
    from music21 import chord, pitch, stream

    part = stream.Part()
    root = pitch.Pitch(tonic_name)
    root.octave = 2
    fifth = root.transpose(7)
    t = 0.0
    bar_ql = bar_ql if bar_ql > 0 else 4.0
    while t < length_ql:
        c = chord.Chord([root, fifth])
        c.quarterLength = min(bar_ql, length_ql - t)
        part.insert(t, c)
        t += bar_ql
    return part


def _bar_ql(meter_str: str) -> float:
    try:
        num, den = meter_str.split("/")
        return 4.0 * int(num) / int(den)
    except (ValueError, ZeroDivisionError):
        return 4.0


def choose_programs(rng: random.Random, n_parts: int, kind: str) -> tuple[list[int], str]:
    """Seeded instrumentation: ``(programs per part, scheme name)``."""
    if kind == "chorale" and n_parts == 4 and rng.random() < 0.5:
        name = rng.choice(sorted(ENSEMBLES))
        return list(ENSEMBLES[name]), name
    progs = [rng.choice(HIGH_PROGRAMS if i < max(1, n_parts // 2) else LOW_PROGRAMS) for i in range(n_parts)]
    return progs, "mixed"


# ----------------------------------------------------------------------------------------------- render
@dataclass(frozen=True)
class ClipSpec:
    """Per-build constants handed to every worker."""

    root: str
    seed: int
    clip_seconds: float
    sample_rate: int
    recipe: str


def render_clip(src: ClipSource, spec: ClipSpec) -> tuple[str, Any]:
    """Render one clip: ``("ok", row)`` or ``("bad", reason)``. Runs in a worker process."""
    try:
        return _render_clip(src, spec)
    except Exception as e:  # one bad piece must not stop the build
        return "bad", f"{type(e).__name__}: {e}"


def _render_clip(src: ClipSource, spec: ClipSpec) -> tuple[str, Any]:
    from music21 import corpus

    from ..abc import parse_score
    from ..audio import crop_or_pad, load_audio, peak_normalize, write_audio
    from ..render import midi_to_wav, score_to_midi
    from ..runs import atomic_path

    rng = random.Random(f"{spec.seed}|{src.id}")
    if src.kind == "chorale":
        score = corpus.parse(src.source)
        tempo = rng.randint(60, 100)
    else:
        score = parse_score(src.abc)
        tempo = rng.randint(70, 130)
    length_ql = spec.clip_seconds * tempo / 60.0 + 1.0  # one extra beat, cut off after rendering
    start_ql = src.k * spec.clip_seconds * tempo / 60.0
    meter_str, beat_ql = _meter(score)
    k_obj, _ = _score_key(score)

    if src.kind == "chorale":
        piece_key = score.analyze("key")
        ex, n_notes = excerpt(score, start_ql, length_ql)
        if n_notes == 0:
            return "bad", "excerpt has no notes"
        ex_key = ex.analyze("key")
        if (ex_key.tonic.name, ex_key.mode) != (piece_key.tonic.name, piece_key.mode):
            return "bad", f"excerpt key {ex_key} differs from the chorale's key {piece_key}"
        tonic, mode = piece_key.tonic.name, piece_key.mode
        roles = [p.partName or f"part{i}" for i, p in enumerate(score.parts) if len(p.flatten().notes)]
        if len(roles) != len(ex.parts):
            roles = [f"part{i}" for i in range(len(ex.parts))]
        title = src.source
    else:
        if k_obj is None:
            return "bad", "the tune has no K: key that music21 understands (e.g. K:HP or K:none)"
        tonic, mode = k_obj.tonic.name, k_obj.mode
        ex, n_notes = excerpt(score, start_ql, length_ql)
        if n_notes == 0:
            return "bad", "excerpt has no notes"
        roles = ["melody"] if len(ex.parts) == 1 else [f"voice{i + 1}" for i in range(len(ex.parts))]
        if len(ex.parts) == 1 and rng.random() < 0.7:
            ex.insert(0, _drone_part(tonic, length_ql, _bar_ql(meter_str)))
            roles.append("drone")
        title = ""
        if score.metadata is not None and score.metadata.title:
            title = score.metadata.title

    programs, scheme = choose_programs(rng, len(ex.parts), src.kind)
    root = Path(spec.root)
    wav_path = root / "clips" / f"{src.id}.wav"
    mid_path = root / "clips" / f"{src.id}.mid"
    with atomic_path(mid_path) as tmp_mid:
        score_to_midi(ex, tmp_mid, programs=programs, tempo_bpm=tempo)
    with tempfile.TemporaryDirectory(prefix="musiccore-clip-") as td:
        raw = Path(td) / "raw.wav"
        midi_to_wav(mid_path, raw, sample_rate=spec.sample_rate)
        wav, _ = load_audio(raw, sample_rate=spec.sample_rate, mono=True)
    n = int(round(spec.clip_seconds * spec.sample_rate))
    wav = crop_or_pad(wav, n)
    peak = float(abs(wav).max())
    if peak < MIN_PEAK:
        mid_path.unlink(missing_ok=True)
        return "bad", f"rendered audio is silent (peak {peak:.2e})"
    wav = peak_normalize(wav, 0.9)
    write_audio(wav_path, wav, spec.sample_rate)
    row = {
        "id": src.id,
        "path": f"clips/{src.id}.wav",
        "midi": f"clips/{src.id}.mid",
        "duration": n / spec.sample_rate,
        "sample_rate": spec.sample_rate,
        "key": key_label(tonic, mode),
        "mode": mode,
        "tonic": tonic.replace("-", "b"),
        "meter": meter_str,
        "tempo_bpm": float(tempo),
        "beat_bpm": round(tempo / beat_ql, 4),
        "programs": programs,
        "instruments": [GM_NAMES.get(p, f"GM program {p}") for p in programs],
        "parts": roles,
        "scheme": scheme,
        "source": src.source,
        "source_kind": src.kind,
        "source_id": src.source_id,
        "title": title,
        "start_ql": start_ql,
        "n_notes": n_notes,
        "split": split_of(src.source_id),
        "recipe": spec.recipe,
        "sha256": sha256_file(wav_path),
        "midi_sha256": sha256_file(mid_path),
    }
    return "ok", row
