"""Songs of the offline data kit: real melodies with real lyrics, sung by Festival, over a rendered accompaniment.

A *song* is built from a score with lyrics:

* **vocal** stem: the melody sung by Festival's singing mode (male ``kal`` diphone voice, 16 kHz). Every word (every
  score syllable for non-English lyrics, see :func:`_render_units`) is its own ``<SINGING>`` document, rendered in
  one ``festival`` process per song (~0.05 s per word instead of ~0.36 s per ``text2wave`` call), then
  trimmed/padded to its slot in the score, so the word timings are exact.
  Festival quirks handled here (measured, see ``shared/specs/offline-data.md`` §3):

  - octave: Festival names A5 = 440 Hz, i.e. it sings one octave below the usual note name. To sing MIDI ``m`` we
    write the name of ``m + 12`` (``C4`` for MIDI 48), see :func:`festival_note_name`;
  - tempo: Festival converts BEATS with ``BPM / 50`` beats per second (not 60), so a score tempo ``T`` is written as
    ``BPM = T * 50 / 60`` and BEATS are quarter notes, see :func:`festival_bpm`;
  - syllables: Festival uses its own lexicon's syllable count; when it differs from the score's the notes are
    regrouped (melisma ``+``, or a note split in equal parts) so the sung pitch over time still follows the score;
  - non-ASCII text crashes it (``Ä`` segfaults): German umlauts are transliterated (``ä`` -> ``ae``), other
    accents stripped, digits/punctuation dropped from the sung text (the lyrics keep the original words).

  The melody is moved by whole octaves so that its median lies in MIDI [50, 62) (a male range; the accompaniment
  stays at written pitch, as when men sing a hymn tune an octave down). Every ``midi`` in a row is the *sung* pitch.
* **accompaniment** stem: the other parts of the score (chorale alto/tenor/bass, piano, ...) or, for a bare melody,
  a bass + chord accompaniment (chord symbols of a lead sheet, else one diatonic triad per bar chosen to cover the
  melody), written as MIDI with several General MIDI programs chosen by the seed, rendered by fluidsynth with the
  TimGM6mb soundfont at 16 kHz.
* **mix**: exactly ``vocal + accompaniment`` (the accompaniment sits 0.6x the vocal's RMS; all three are scaled
  together so the mix peaks at most at 0.95).

Sources (:func:`select_song_sources`, English first): Festival's example songs (daisy, lochlomond, america =
america1 sung over america2-4, doremi; never the copyrighted spice*), the English music21 songs (Lift Every Voice and
Sing verses 1-3, A Prayer of a Tired Child, Aloha Oe in English, Alexander's Ragtime Band), then Bach chorales with
German lyrics (music21 corpus, order shuffled by the seed; Festival's English voice mispronounces German). That is
348 distinct sources (10 English + 338 chorale files with lyrics; two of the files, ``bwv18.5-lz``/``-w``, are
versions of one chorale, and some chorales share a hymn tune with other words and harmony).

Renderings (more songs than sources, documented as derived): when more songs are asked for than there are sources,
the list continues with *renderings* ``<id>-r<k>`` (k = 1..``MAX_RENDERINGS``) of every source in the same order:
the same score and words, transposed by ``transpose`` semitones (drawn by the seed from +-1..4) and, since tempo and
instruments are drawn from the song id, at another tempo with another accompaniment ensemble. A rendering keeps the
``source_id`` of its source, so all renderings of a piece share its split; its row adds ``rendering`` and
``transpose``.

Excerpt and tempo (documented rule): the tempo is drawn by the seed from the source's range. The song starts at
most one bar before the first sung word, and ends at the last phrase end that keeps it within ``max_seconds``
(else the last word end that fits). A song shorter than ``min_seconds`` is slowed down (not below 40 bpm) and, if
still short, its whole melody is repeated (strophic repeat).

Sections (documented rule):

1. Phrases end at a fermata, at a rest of at least a sixteenth note, after a word ending in ``. ; : ! ?``, or after
   a comma on a note of at least a quarter; a phrase of fewer than 3 words is merged into the next one (else the
   previous one); a phrase of more than 14 words is split at its longest note.
2. A score marking ``CHORUS``/``REFRAIN`` (or ``VERSE``) starts a region with that label; a strophic repeat starts
   a region too. Within a region, phrases are grouped two by two into sections (a lone last phrase joins the
   previous section).
3. Unlabelled sections: one whose melody (MIDI sequence) or lyric text repeats another section's is ``chorus``
   (repeated material); otherwise the last section of a song with >= 3 sections is ``outro``; a section right
   after a chorus that is followed by another section is ``bridge``; everything else is ``verse``.

Tags (YuE ``[Genre]`` text, words from YuE's ``top_200_tags.json`` except hymn/slow/moderate/fast/major/minor):
the source's genres (e.g. ``Choral classical``, ``folk Celtic``), ``hymn`` for chorales and hymns, the
accompaniment's instruments (from the GM programs), a mood from mode and tempo (minor: melancholic; major: calm
below 76 bpm, uplifting up to 120, happy above), ``male`` (the kal voice), a timbre from the sung median (bass
vocal < 50, baritone vocal < 57, else tenor vocal), the tempo word (slow < 76 <= moderate <= 120 < fast) and
the mode.

Output of :func:`build_song` ``(spec, out_dir, seed)``: the folder ``out_dir/<spec.id>/`` holding ``vocal.wav``,
``accompaniment.wav``, ``mix.wav`` (16 kHz mono PCM-16), ``lyrics.txt`` (YuE format: sections separated by a blank
line, each starting with its ``[label]`` line, one phrase per line) and ``accompaniment.mid``. The folder is built
in a temporary folder and renamed into place, so it is either complete or absent. The returned row's paths are
relative to ``out_dir.parent``: with the kit layout ``out_dir = <root>/songs`` they read ``songs/<id>/vocal.wav``,
relative to the kit root. Row fields: id, source, source_id, title, language, vocal, accompaniment, mix,
accompaniment_midi, lyrics_path, sample_rate, duration, lyrics, sections [{label, start, end, lyrics, words: [{word,
sung, start, end, midi, notes: [{start, end, midi}]}]}] (``midi`` of a word = its longest note), tags, key,
mode, meter, tempo_bpm, programs, instruments, vocal_octave_shift, excerpt_ql ([start, end] in score quarter
notes), repeats, split (``manifest.split_of(source_id)``). The kit adds ``sha256`` and ``recipe``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import shutil
import subprocess
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger("musiccore.data.songs")

#: Bumped whenever the audio or the row of a song changes for the same (spec, seed); the kit rebuilds then.
SONGS_VERSION = 1
SAMPLE_RATE = 16000
FESTIVAL_SONGS_DIR = Path("/usr/share/doc/festival/examples/songs")
DEFAULT_SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
INSTALL_HINT = "apt-get install festival festvox-kallpc16k"
TAIL_SECONDS = 1.0  # accompaniment ring-out after the last word
MIN_TEMPO = 40.0
VOCAL_RANGE = (50, 62)  # the sung melody's median is moved (by octaves) into [50, 62)
ACC_RMS_RATIO = 0.6
WORDS_PER_SECOND_TIMEOUT = 2.0


class SongError(ValueError):
    """A song source that cannot be built (no lyrics, empty words, Festival failure or timeout).

    The message names the source and the reason; the data kit skips the song and reports it.
    """


class MissingToolError(RuntimeError):
    """festival / fluidsynth / the soundfont is not installed: every song would fail, so this is not a SongError."""


@dataclass(frozen=True)
class SongSpec:
    """One song source.

    ``source`` is ``"festival:<name>"`` (a Festival example song, see ``FESTIVAL_SONGS``),
    ``"festival-xml:<path>"`` (any Festival SINGING file) or ``"music21:<corpus path>"``.
    """

    id: str  # folder name and manifest id
    source: str
    source_id: str  # the split is derived from it (shared by all verses of a work; "bach-bwv10.7" like the clips)
    title: str = ""
    verse: int = 1  # lyric line (music21 lyric number) to sing
    language: str = "en"
    style: str = "folk"  # key into STYLES: accompaniment palette and genre tags
    genres: tuple[str, ...] = ()  # extra genre tags (from YuE's top_200_tags where they fit)
    vocal_parts: tuple[str, ...] = ()  # music21 part names holding the melody, in priority order (default: most lyrics)
    tempo_range: tuple[float, float] = (60.0, 84.0)  # quarter notes per minute
    min_seconds: float = 20.0
    max_seconds: float = 60.0
    rendering: int = 0  # 0: the source as is; k >= 1: a derived rendering (see the module docstring)
    transpose: int = 0  # semitones applied to melody, accompaniment and chords (renderings only)


# ------------------------------------------------------------------------------------------------ sources
#: Festival example songs (public domain): files (first = the sung melody, others = accompaniment voices),
#: quarter notes per Festival BEAT, meter, pickup (quarter notes before the first bar line).
FESTIVAL_SONGS: dict[str, dict[str, Any]] = {
    "daisy": dict(files=("daisy.xml",), title="Daisy Bell", key=(10, "major"), ql_per_beat=3.0, meter=(3, 4),
                  pickup=0.0, tempo=(150.0, 190.0), style="folk", genres=("folk",)),
    "lochlomond": dict(files=("lochlomond.xml",), title="Loch Lomond", key=(5, "major"), ql_per_beat=1.0,
                       meter=(4, 4), pickup=1.0, tempo=(72.0, 96.0), style="folk", genres=("folk", "Celtic")),
    "america": dict(files=("america1.xml", "america2.xml", "america3.xml", "america4.xml"),
                    title="America the Beautiful", key=(8, "major"), ql_per_beat=1.0, meter=(4, 4), pickup=1.0,
                    tempo=(60.0, 80.0), style="hymn", genres=("Choral",)),
    "doremi": dict(files=("doremi.xml",), title="Do-Re-Mi (scale)", key=(7, "major"), ql_per_beat=1.0 / 0.3,
                   meter=(4, 4), pickup=0.0, tempo=(60.0, 90.0), style="folk", genres=("folk",)),
}

#: English songs of the music21 corpus (public domain): (corpus path, verses, melody parts, title, style, genres,
#: tempo range).
M21_ENGLISH: list[tuple[str, tuple[int, ...], tuple[str, ...], str, str, tuple[str, ...], tuple[float, float]]] = [
    ("johnson_j_r/lift_every_voice", (1, 2, 3), ("Soprano",), "Lift Every Voice and Sing", "hymn", ("Gospel",),
     (72.0, 96.0)),
    ("beach/prayer_of_a_tired_child", (1,), ("Soprano I",), "A Prayer of a Tired Child", "choral",
     ("Choral", "classical"), (60.0, 76.0)),
    ("liliuokalani/aloha_oe", (2,), ("Solo Voice", "Soprano"), "Aloha Oe", "folk", ("folk", "World"), (66.0, 84.0)),
    ("leadSheet/berlinAlexandersRagtime", (1,), (), "Alexander's Ragtime Band", "ragtime", ("jazz",),
     (100.0, 126.0)),
]

#: Accompaniment ensembles per style: each is a tuple of GM programs assigned to the accompaniment parts from the
#: top down (the last one plays the lowest part; extra parts reuse the middle programs).
STYLES: dict[str, list[tuple[int, ...]]] = {
    "chorale": [(19, 19, 19), (48, 48, 42), (52, 52, 19), (0, 0, 0), (56, 60, 57), (73, 68, 42), (6, 6, 42)],
    "hymn": [(19, 19, 19), (0, 0, 0), (48, 48, 42), (52, 52, 42), (6, 6, 42), (46, 46, 42)],
    "choral": [(52, 52, 0), (48, 48, 0), (19, 19, 0), (0, 0, 0)],
    "folk": [(25, 32), (0, 0), (46, 42), (24, 32), (105, 32), (48, 42), (4, 32)],
    "ragtime": [(0, 0), (105, 32), (4, 32), (6, 32)],
}
#: GM program -> instrument tag (all in YuE's top_200_tags "instrument" list).
PROGRAM_TAGS = {0: "piano", 4: "electric piano", 6: "harpsichord", 19: "organ", 24: "Nylon string guitar",
                25: "acoustic guitar", 32: "bass", 42: "cello", 46: "harp", 48: "strings", 52: "choir",
                56: "trumpet", 57: "trombone", 60: "horns", 68: "oboe", 73: "flute", 105: "banjo"}

_PC_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_FEST_PC = {"C": 0, "C#": 1, "Db": 1, "D": 2, "D#": 3, "Eb": 3, "E": 4, "E#": 5, "Fb": 4, "F": 5, "F#": 6, "Gb": 6,
            "G": 7, "G#": 8, "Ab": 8, "A": 9, "A#": 10, "Bb": 10, "B": 11, "B#": 12, "Cb": 11}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _bach_with_lyrics() -> list[str]:
    """Corpus names (``bach/bwv10.7``) of the Bach chorales whose MusicXML holds ``<lyric>`` (sorted; ~0.2 s)."""
    from music21 import corpus

    out = []
    for p in sorted(corpus.getComposer("bach"), key=lambda q: q.name):
        if p.suffix not in (".mxl", ".xml", ".musicxml"):
            continue
        try:
            if p.suffix == ".mxl":
                with zipfile.ZipFile(p) as z:
                    names = [n for n in z.namelist() if not n.startswith("META-INF")]
                    text = z.read(names[0]).decode("utf-8", "replace")
            else:
                text = p.read_text(errors="replace")
        except (OSError, zipfile.BadZipFile, IndexError):
            continue
        if "<lyric" in text:
            out.append("bach/" + p.name.rsplit(".", 1)[0])
    return out


def _rng(seed: int, *keys: Any) -> np.random.Generator:
    h = hashlib.sha256(":".join([str(seed), *map(str, keys)]).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "big"))


def english_sources() -> list[SongSpec]:
    """The English song sources, in fixed order (Festival examples, then music21 English songs)."""
    out = []
    for name, meta in FESTIVAL_SONGS.items():
        out.append(SongSpec(id=f"festival-{name}", source=f"festival:{name}", source_id=f"festival-{name}",
                            title=meta["title"], style=meta["style"], genres=meta["genres"],
                            tempo_range=meta["tempo"]))
    for path, verses, parts, title, style, genres, tempo in M21_ENGLISH:
        base = path.split("/")[-1]
        for v in verses:
            sid = base if len(verses) == 1 else f"{base}-v{v}"
            out.append(SongSpec(id=_slug(sid), source=f"music21:{path}", source_id=_slug(path.replace("/", "-")),
                                title=title, verse=v, style=style, genres=genres, vocal_parts=parts,
                                tempo_range=tempo))
    return out


def chorale_spec(corpus_name: str) -> SongSpec:
    """The spec of a Bach chorale (``bach/bwv10.7``): German lyrics, organ/strings/... accompaniment."""
    bwv = corpus_name.split("/")[-1]
    return SongSpec(id=f"bach-{bwv}", source=f"music21:{corpus_name}", source_id=f"bach-{bwv}",
                    title=f"Chorale {bwv.upper().replace('BWV', 'BWV ')}", language="de", style="chorale",
                    genres=("classical", "Choral"), vocal_parts=("Soprano",), tempo_range=(60.0, 84.0))


#: derived renderings per source at most (so at most 4 x 348 = 1392 song candidates)
MAX_RENDERINGS = 3
_TRANSPOSE_CHOICES = (-4, -3, -2, -1, 1, 2, 3, 4)


def rendering_spec(spec: SongSpec, k: int, seed: int) -> SongSpec:
    """The ``k``-th derived rendering of ``spec`` (``k >= 1``): id ``<id>-r<k>``, same ``source_id`` (same split),
    transposed by a seed-drawn number of semitones; tempo and instruments follow from the new id."""
    if k < 1:
        raise ValueError(f"rendering index must be >= 1, got {k}")
    rid = f"{spec.id}-r{k}"
    t = int(_rng(seed, "transpose", rid).choice(_TRANSPOSE_CHOICES))
    return replace(spec, id=rid, rendering=k, transpose=t)


def select_song_sources(n: int, seed: int) -> list[SongSpec]:
    """The first ``n`` song sources, deterministic in (n, seed): English sources first, in fixed order, then Bach
    chorales with lyrics in an order shuffled by ``seed`` (the first chorale of the valid split and the first of the
    test split moved to the front, so that 20 songs cover every split), then derived renderings of all of them
    (:func:`rendering_spec`, round k = 1..``MAX_RENDERINGS``, same order). Fewer than ``n`` when all run out."""
    if n <= 0:
        return []
    specs = english_sources()
    if len(specs) < n:
        from .manifest import split_of

        chorales = [chorale_spec(c) for c in _bach_with_lyrics()]
        chorales = [chorales[i] for i in _rng(seed, "chorales").permutation(len(chorales))]
        # the first valid and the first test chorale go first, so that a small kit has every split
        firsts = []
        for split in ("valid", "test"):
            k = next((i for i, c in enumerate(chorales) if split_of(c.source_id) == split), None)
            if k is not None:
                firsts.append(chorales[k])
        specs += firsts + [c for c in chorales if c not in firsts]
    base = list(specs)
    k = 1
    while len(specs) < n and k <= MAX_RENDERINGS:
        specs += [rendering_spec(s, k, seed) for s in base]
        k += 1
    return specs[:n]


# ------------------------------------------------------------------------------------------------ score model
@dataclass
class _Note:
    onset: float  # quarter notes from the piece start
    dur: float
    midi: int

    @property
    def end(self) -> float:
        return self.onset + self.dur


@dataclass
class _Word:
    text: str  # display text (original spelling, punctuation kept)
    syllables: list[list[_Note]]  # notes per score syllable (several = melisma)
    fermata: bool = False
    mark: str | None = None  # section label forced by a score marking (CHORUS...)
    region: int = 0
    syl_texts: list[str] | None = None  # text of each score syllable (music21 lyrics), None when unknown

    @property
    def notes(self) -> list[_Note]:
        return [n for s in self.syllables for n in s]

    @property
    def onset(self) -> float:
        return self.syllables[0][0].onset

    @property
    def end(self) -> float:
        return self.syllables[-1][-1].end


@dataclass
class _Piece:
    title: str
    words: list[_Word]
    parts: list[list[_Note]]  # accompaniment parts, top to bottom
    part_kinds: list[str]  # "voice" | "keyboard" | "comp" (generated)
    meter: tuple[int, int]
    pickup: float
    chords: list[tuple[float, float, int, list[int]]] = field(default_factory=list)  # (on, off, root pc, pcs)
    harmonize: bool = False  # no accompaniment in the source: make one from the melody
    key: tuple[int, str] | None = None  # (tonic pitch class, "major"/"minor") when known for the whole piece


def festival_note_name(midi: int) -> str:
    """The NOTE name that makes Festival *sing* MIDI ``midi``: the usual name of ``midi + 12`` (48 -> ``C4``)."""
    return f"{_PC_NAMES[midi % 12]}{midi // 12}"


def festival_bpm(tempo_qpm: float) -> float:
    """The SINGING BPM that makes Festival play BEATS as quarter notes at ``tempo_qpm`` (it uses BPM / 50 beats/s)."""
    return tempo_qpm * 50.0 / 60.0


def _festival_midi(name: str, where: str) -> int:
    m = re.fullmatch(r"([A-G][#b]?)(-?\d)", name.strip())
    if not m or m.group(1) not in _FEST_PC:
        raise SongError(f"{where}: bad note name {name!r}")
    return 12 * int(m.group(2)) + _FEST_PC[m.group(1)]  # Festival's own numbering: what it really sings


def _parse_festival_xml(path: Path, ql_per_beat: float, where: str) -> list[tuple[str, list[list[_Note]]]]:
    """Words of a Festival SINGING file as (text, syllables); rests only advance the time. Onsets are quantised
    to 1/12 quarter note on the cumulative time (Festival files write triplets as 0.33/0.67)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise SongError(f"{where}: cannot parse {path}: {e}") from e
    if root.tag != "SINGING":
        raise SongError(f"{where}: {path} is not a Festival SINGING document (root <{root.tag}>)")
    q = lambda beats: round(beats * ql_per_beat * 12) / 12  # noqa: E731
    t = 0.0
    words = []
    for el in root:
        if el.tag == "REST":
            t += float(el.get("BEATS", "0"))
            continue
        inner = list(el)
        dur_el = el if el.tag == "DURATION" else (inner[0] if inner and inner[0].tag == "DURATION" else None)
        pit_el = el if el.tag == "PITCH" else (inner[0] if inner and inner[0].tag == "PITCH" else None)
        if dur_el is None or pit_el is None or dur_el.get("BEATS") is None or pit_el.get("NOTE") is None:
            raise SongError(f"{where}: {path}: element <{el.tag}> lacks DURATION BEATS / PITCH NOTE")
        text = "".join(el.itertext()).strip()
        beats = [[float(b) for b in s.split("+")] for s in dur_el.get("BEATS").split(",")]
        notes = [[_festival_midi(x, where) for x in s.split("+")] for s in pit_el.get("NOTE").split(",")]
        if [len(b) for b in beats] != [len(x) for x in notes]:
            raise SongError(f"{where}: {path}: word {text!r} has {beats} beats for notes {notes}")
        syls = []
        for bs, ms in zip(beats, notes):
            syl = []
            for b, m in zip(bs, ms):
                syl.append(_Note(q(t), q(t + b) - q(t), m))
                t += b
            syls.append(syl)
        words.append((text, syls))
    return words


def _load_festival(spec: SongSpec) -> _Piece:
    kind, _, name = spec.source.partition(":")
    if kind == "festival":
        if name not in FESTIVAL_SONGS:
            raise SongError(f"{spec.source}: unknown Festival song {name!r} (known: {', '.join(FESTIVAL_SONGS)})")
        meta = FESTIVAL_SONGS[name]
        files = [FESTIVAL_SONGS_DIR / f for f in meta["files"]]
        qpb, meter, pickup, title = meta["ql_per_beat"], meta["meter"], meta["pickup"], meta["title"]
        key = meta["key"]
    else:
        files, qpb, meter, pickup, title = [Path(name)], 1.0, (4, 4), 0.0, spec.title or Path(name).stem
        key = None
    for f in files:
        if not f.exists():
            raise SongError(f"{spec.source}: {f} is missing ({INSTALL_HINT})")
    melody = _parse_festival_xml(files[0], qpb, spec.source)
    words = [_Word(text, syls) for text, syls in melody if text]
    parts = []
    for f in files[1:]:
        parts.append([n for _, syls in _parse_festival_xml(f, qpb, spec.source) for s in syls for n in s])
    return _Piece(title=title, words=words, parts=parts, part_kinds=["voice"] * len(parts), meter=meter,
                  pickup=pickup, harmonize=not parts, key=key)


def _lyric_for(note, want: int, strict: bool):
    """The lyric of ``note`` to sing: line ``want``; when the measure has no line ``want`` at all (``strict`` is
    False), the lowest-numbered line. In a measure that has line ``want``, a note without it is a melisma."""
    lyrics = [ly for ly in note.lyrics if (ly.text or "").strip()]
    if not lyrics:
        return None
    for ly in lyrics:
        if ly.number == want:
            return ly
    return None if strict else min(lyrics, key=lambda ly: ly.number or 0)


def _m21_part_events(part, verse: int) -> tuple[list[tuple], list[tuple[float, str]], list, tuple[int, int], float]:
    """Expand repeats and list (onset, dur, midi, lyric|None, fermata) of the notes of ``part`` (top note of a
    chord; ties merged), the section marks (onset, label), chord symbols and the first meter and pickup."""
    from music21 import bar, expressions, harmony

    try:
        has_rep = any(isinstance(b, bar.Repeat) for b in part.recurse().getElementsByClass(bar.Barline))
        p = part.expandRepeats() if has_rep else part
    except Exception:  # malformed repeats: keep the written order
        p = part
    events, marks, chords = [], [], []
    meter, pickup = None, 0.0
    t = 0.0
    pass_no, prev_num, max_num = 1, None, None
    for mi, m in enumerate(p.getElementsByClass("Measure")):
        num = m.number
        if prev_num is not None and num < prev_num:
            pass_no += 1  # jumped back: next pass of a repeat
        if max_num is None or num > max_num:
            max_num, pass_no = num, 1
        prev_num = num
        if meter is None:
            ts = m.recurse().getElementsByClass("TimeSignature")
            if ts:
                meter = (ts[0].numerator, ts[0].denominator)
                if mi == 0 and m.duration.quarterLength < ts[0].barDuration.quarterLength:
                    pickup = float(m.duration.quarterLength)
        for te in m.recurse().getElementsByClass(expressions.TextExpression):
            c = (te.content or "").strip().lower()
            if re.match(r"(chorus|refrain)\b", c):
                marks.append((t + float(te.getOffsetInHierarchy(m)), "chorus"))
            elif re.match(r"verse\b", c):
                marks.append((t + float(te.getOffsetInHierarchy(m)), "verse"))
        flat = m.flatten()
        want = verse if pass_no == 1 else pass_no  # line ``pass_no`` inside the 2nd+ pass of a repeat
        strict = any(ly.number == want and (ly.text or "").strip() for x in flat.notes for ly in x.lyrics)
        for n in flat.notesAndRests:
            on = t + float(n.offset)
            if isinstance(n, harmony.ChordSymbol):
                if not isinstance(n, harmony.NoChord) and n.pitches:
                    chords.append((on, n.root().pitchClass, sorted({x.pitchClass for x in n.pitches})))
                else:
                    chords.append((on, None, []))
                continue
            if n.isRest or n.duration.quarterLength <= 0:
                continue
            midi = max(x.midi for x in n.pitches) if n.isChord else n.pitch.midi
            ferm = any(isinstance(e, expressions.Fermata) for e in n.expressions)
            if n.tie is not None and n.tie.type in ("stop", "continue") and events and events[-1][2] == midi:
                o, d, mm, ly, f = events[-1]
                events[-1] = (o, on + float(n.duration.quarterLength) - o, mm, ly, f or ferm)
                continue
            events.append((on, float(n.duration.quarterLength), midi, _lyric_for(n, want, strict), ferm))
        t += float(m.duration.quarterLength)
    events.sort(key=lambda e: (e[0], -e[2]))
    dedup = []
    for e in events:  # two voices in one staff: keep the top note of each onset
        if dedup and abs(dedup[-1][0] - e[0]) < 1e-6:
            continue
        dedup.append(e)
    return dedup, marks, chords, meter or (4, 4), pickup


def _words_from_events(events: list[tuple]) -> list[_Word]:
    """Join syllables into words with the lyric ``syllabic`` info; notes without a lyric that follow without a
    rest are melisma of the current syllable; a note without lyric after a rest is not sung."""
    words: list[_Word] = []
    cur: _Word | None = None
    open_word = False  # the current word expects more syllables (begin/middle seen)
    last_end = None
    for on, dur, midi, ly, ferm in events:
        note = _Note(on, dur, midi)
        gap = last_end is None or on - last_end > 1e-6
        if ly is not None:
            text = re.sub(r"^\d+\.\s*", "", ly.text.strip())  # verse numbers ("1. Allein") are not sung
            syl = ly.syllabic or "single"
            if cur is not None and open_word and syl in ("middle", "end"):
                cur.syllables.append([note])
                cur.text += text
                cur.syl_texts.append(text)
            else:
                cur = _Word(text, [[note]], syl_texts=[text])
                words.append(cur)
            open_word = syl in ("begin", "middle")
            cur.fermata = cur.fermata or ferm
        elif cur is not None and not gap:
            cur.syllables[-1].append(note)
            cur.fermata = cur.fermata or ferm
        else:
            cur, open_word = None, False
        last_end = on + dur
    return words


def _load_music21(spec: SongSpec) -> _Piece:
    from music21 import corpus

    name = spec.source.partition(":")[2]
    try:
        score = corpus.parse(name)
    except Exception as e:
        raise SongError(f"{spec.source}: cannot parse the music21 corpus work {name!r}: {e}") from e
    parts = list(score.parts)
    if not parts:
        raise SongError(f"{spec.source}: the score has no parts")
    per_part = []
    for p in parts:
        ev, marks, chords, meter, pickup = _m21_part_events(p, spec.verse)
        per_part.append((p, ev, marks, chords, meter, pickup))
    lyric_count = [sum(1 for e in ev if e[3] is not None) for _, ev, *_ in per_part]
    if spec.vocal_parts:
        names = [p.partName for p in parts]
        vocal_idx = [names.index(n) for n in spec.vocal_parts if n in names]
        if not vocal_idx:
            raise SongError(f"{spec.source}: none of the melody parts {spec.vocal_parts} is in the score ({names})")
    else:
        vocal_idx = [int(np.argmax(lyric_count))]
    if sum(lyric_count[i] for i in vocal_idx) == 0:
        raise SongError(f"{spec.source}: no lyrics (verse {spec.verse}) in the melody part(s) "
                        f"{[parts[i].partName for i in vocal_idx]}")
    # melody = words of the listed parts in priority order, dropping words that overlap an accepted one
    words: list[_Word] = []
    for i in vocal_idx:
        for w in _words_from_events(per_part[i][1]):
            if all(w.end <= u.onset + 1e-6 or w.onset >= u.end - 1e-6 for u in words):
                words.append(w)
    words.sort(key=lambda w: w.onset)
    marks = sorted(m for i in vocal_idx for m in per_part[i][2])
    for w in words:
        lab = [lab for at, lab in marks if at <= w.onset + 1e-6]
        w.mark = lab[-1] if lab else None
    acc, kinds = [], []
    for i, (p, ev, *_rest) in enumerate(per_part):
        if i in vocal_idx or not ev:
            continue
        acc.append([_Note(on, dur, midi) for on, dur, midi, _, _ in ev])
        inst = p.getInstrument(returnDefault=True)
        is_kbd = "piano" in (p.partName or "").lower() or "piano" in (inst.instrumentName or "").lower()
        kinds.append("keyboard" if is_kbd else "voice")
    chord_syms = per_part[vocal_idx[0]][3]
    chords = []
    for k, (on, root, pcs) in enumerate(chord_syms):
        off = chord_syms[k + 1][0] if k + 1 < len(chord_syms) else max([w.end for w in words] + [on + 4.0])
        if root is not None and off > on:
            chords.append((on, off, root, pcs))
    meter, pickup = per_part[vocal_idx[0]][4], per_part[vocal_idx[0]][5]
    title = spec.title or (score.metadata.title if score.metadata and score.metadata.title else name)
    try:
        k = score.analyze("key")
        key = (k.tonic.pitchClass, k.mode)
    except Exception:  # no pitched content to analyse: fall back to the excerpt's notes
        key = None
    return _Piece(title=title, words=words, parts=acc, part_kinds=kinds, meter=meter, pickup=pickup,
                  chords=chords, harmonize=not acc and not chords, key=key)


# ------------------------------------------------------------------------------------------------ harmony
_MAJOR = [0, 2, 4, 5, 7, 9, 11]
_MINOR = [0, 2, 3, 5, 7, 8, 10]


def _analyze_key(notes: Sequence[_Note]) -> tuple[int, str, str]:
    """(tonic pc, mode, name like "Bb major") of a note list with music21's key analysis."""
    from music21 import note as m21note
    from music21 import stream

    s = stream.Stream()
    for n in notes:
        x = m21note.Note(midi=n.midi, quarterLength=max(n.dur, 1 / 12))
        s.insert(n.onset, x)
    k = s.analyze("key")
    tonic = k.tonic.pitchClass
    return tonic, k.mode, f"{_PC_NAMES[tonic]} {k.mode}"


def _beat_len(meter: tuple[int, int]) -> float:
    num, den = meter
    return 1.5 * 4 / den if den == 8 and num % 3 == 0 and num > 3 else 4.0 / den


def _bar_len(meter: tuple[int, int]) -> float:
    return meter[0] * 4.0 / meter[1]


def _harmonize(words: list[_Word], tonic: int, mode: str, meter, pickup: float, end: float):
    """One diatonic triad per bar (I IV V vi ii / i iv V VI III), the one whose tones cover most melody duration,
    with a small prior for the primary chords; the final bar is the tonic."""
    scale = _MAJOR if mode == "major" else _MINOR
    degrees = [(0, 1.0), (4, 0.8), (3, 0.7), (5, 0.5), (1, 0.4)] if mode == "major" else \
        [(0, 1.0), (4, 0.8), (3, 0.7), (5, 0.5), (2, 0.4)]
    cands = []
    for deg, prior in degrees:
        root = (tonic + scale[deg]) % 12
        pcs = [(tonic + scale[(deg + k) % 7]) % 12 for k in (0, 2, 4)]
        if mode != "major" and deg == 4:
            pcs[1] = (root + 4) % 12  # harmonic-minor dominant
        cands.append((root, pcs, prior))
    notes = [n for w in words for n in w.notes]
    bar = _bar_len(meter)
    starts = [0.0] if pickup > 0 else []
    b = pickup if pickup > 0 else 0.0
    while b < end - 1e-6:
        starts.append(b)
        b += bar
    chords = []
    for i, s in enumerate(starts):
        e = starts[i + 1] if i + 1 < len(starts) else end
        if i == len(starts) - 1:
            best = cands[0]
        else:
            def cover(c):
                return sum(max(0.0, min(n.end, e) - max(n.onset, s)) for n in notes if n.midi % 12 in c[1])
            best = max(cands, key=lambda c: cover(c) + 0.25 * c[2])
        chords.append((s, e, best[0], best[1]))
    return chords


def _comp_parts(chords, meter) -> tuple[list[_Note], list[_Note]]:
    """Chord list -> (chord part, bass part): bass root on the first beat of each bar (fifth on beat 3 of 4),
    block chord on the other beats, voiced in [55, 67)."""
    beat = _beat_len(meter)
    upper, bass = [], []
    for on, off, root, pcs in chords:
        bass_root = 40 + (root - 40) % 12
        t, k = on, 0
        while t < off - 1e-6:
            d = min(beat, off - t)
            if k % 4 == 0 or (k % 4 == 2 and meter[0] >= 4):
                pitch = bass_root if k % 4 == 0 else 40 + ((root + 7) - 40) % 12
                bass.append(_Note(t, d * 0.95, pitch))
            else:
                for pc in pcs:
                    upper.append(_Note(t, d * 0.9, 55 + (pc - 55) % 12))
            t += beat
            k += 1
    return upper, bass


# ------------------------------------------------------------------------------------------------ sections
def _phrases(words: list[_Word]) -> list[list[int]]:
    out, cur = [], []
    for i, w in enumerate(words):
        cur.append(i)
        nxt = words[i + 1] if i + 1 < len(words) else None
        brk = (nxt is None or w.fermata or nxt.onset - w.end >= 0.25 - 1e-6
               or re.search(r"[.;:!?]['’\"]?$", w.text)
               or (re.search(r",['’\"]?$", w.text) and w.notes[-1].dur >= 1.0)
               or nxt.region != w.region or nxt.mark != w.mark)
        if brk:
            out.append(cur)
            cur = []
    # merge short phrases into the next phrase of the same region (else into the previous one)
    def same(i: int, j: int) -> bool:
        return (words[i].region, words[i].mark) == (words[j].region, words[j].mark)

    merged: list[list[int]] = []
    carry: list[int] = []
    for k, ph in enumerate(out):
        ph = carry + ph
        carry = []
        nxt = out[k + 1] if k + 1 < len(out) else None
        if len(ph) < 3 and nxt is not None and same(ph[-1], nxt[0]):
            carry = ph
        elif len(ph) < 3 and merged and same(merged[-1][-1], ph[0]):
            merged[-1] = merged[-1] + ph
        else:
            merged.append(ph)
    final: list[list[int]] = []
    for ph in merged:  # split long phrases at their longest note
        stack = [ph]
        while stack:
            p = stack.pop(0)
            if len(p) <= 14:
                final.append(p)
                continue
            cut = max(range(3, len(p) - 3), key=lambda j: words[p[j]].end - words[p[j]].onset)
            stack[:0] = [p[:cut + 1], p[cut + 1:]]
    return final


def _sections(words: list[_Word]) -> list[dict]:
    """Group phrases into labelled sections (rule in the module docstring). Returns [{label, phrases}]."""
    phrases = _phrases(words)
    secs: list[dict] = []
    i = 0
    while i < len(phrases):
        key = (words[phrases[i][0]].region, words[phrases[i][0]].mark)
        group = [phrases[i]]
        if i + 1 < len(phrases) and (words[phrases[i + 1][0]].region, words[phrases[i + 1][0]].mark) == key:
            group.append(phrases[i + 1])
        i += len(group)
        # a lone last phrase of a region joins the previous section of the same region
        if len(group) == 1 and secs and secs[-1]["key"] == key and (
                i >= len(phrases) or (words[phrases[i][0]].region, words[phrases[i][0]].mark) != key):
            secs[-1]["phrases"].append(group[0])
            continue
        secs.append({"key": key, "phrases": group, "label": words[group[0][0]].mark})

    def sig(s):
        return tuple(n.midi for ph in s["phrases"] for j in ph for n in words[j].notes)

    def text(s):
        return re.sub(r"[^a-z ]", "", " ".join(words[j].text.lower() for ph in s["phrases"] for j in ph))

    for a, s in enumerate(secs):
        if s["label"]:
            continue
        rep = any(b != a and (sig(t) == sig(s) or text(t) == text(s)) for b, t in enumerate(secs))
        s["rep"] = rep
    for a, s in enumerate(secs):
        if s["label"]:
            continue
        if s.get("rep"):
            s["label"] = "chorus"
        elif a == len(secs) - 1 and len(secs) >= 3:
            s["label"] = "outro"
        elif a > 0 and secs[a - 1]["label"] == "chorus" and a + 1 < len(secs):
            s["label"] = "bridge"
        else:
            s["label"] = "verse"
    return [{"label": s["label"], "phrases": s["phrases"]} for s in secs]


# ------------------------------------------------------------------------------------------------ plan
def _excerpt(piece: _Piece, spec: SongSpec, tempo: float) -> tuple[float, float, list[_Word]]:
    """(start ql, end ql, words) of the excerpt at ``tempo`` (rule in the module docstring)."""
    words = piece.words
    first = words[0].onset
    start = max(0.0, first - min(first, _bar_len(piece.meter)))
    sec = lambda a, b: (b - a) * 60.0 / tempo  # noqa: E731
    if sec(start, words[-1].end) + TAIL_SECONDS <= spec.max_seconds:
        return start, words[-1].end, words
    phrase_ends = [ph[-1] for ph in _phrases(words)]
    fits = [j for j in phrase_ends if sec(start, words[j].end) + TAIL_SECONDS <= spec.max_seconds]
    if not fits:
        fits = [j for j in range(len(words)) if sec(start, words[j].end) + TAIL_SECONDS <= spec.max_seconds]
    if not fits:
        raise SongError(f"{spec.source}: the first word alone is longer than {spec.max_seconds} s")
    j = fits[-1]
    return start, words[j].end, words[:j + 1]


def _sanitize(text: str) -> str:
    """Sung text for Festival: ASCII letters and inner apostrophes only (umlauts transliterated)."""
    t = text.replace("’", "'").replace("‘", "'")
    for a, b in (("ä", "ae"), ("ö", "oe"), ("ü", "ue"), ("Ä", "Ae"), ("Ö", "Oe"), ("Ü", "Ue"), ("ß", "ss")):
        t = t.replace(a, b)
    t = unicodedata.normalize("NFKD", t).encode("ascii", "ignore").decode()
    t = re.sub(r"[^A-Za-z']", "", t)
    return t.strip("'")


# ------------------------------------------------------------------------------------------------ festival
def _festival_bin() -> str:
    exe = shutil.which("festival")
    if exe is None or shutil.which("text2wave") is None:
        raise MissingToolError(f"festival/text2wave not found: {INSTALL_HINT}")
    return exe


def _run_festival(script: Path, cwd: Path, timeout: float, where: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([_festival_bin(), "--batch", script.name], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise SongError(f"{where}: festival timed out after {timeout:.0f} s") from e


def _syllable_counts(words: list[str], tmp: Path, where: str) -> list[int]:
    """Festival's own syllable count of each word (lexicon, else letter-to-sound rules)."""
    lines = ['(voice_kal_diphone)']
    for w in words:
        lines.append(f'(format t "SYL %d\\n" (length (car (cdr (cdr (lex.lookup "{w}" nil))))))')
    script = tmp / "lookup.scm"
    script.write_text("\n".join(lines) + "\n")
    res = _run_festival(script, tmp, 20 + len(words) * 0.2, where)
    counts = [int(x) for x in re.findall(r"^SYL (\d+)$", res.stdout, re.M)]
    if len(counts) != len(words):
        err = (res.stderr or res.stdout).strip().splitlines()[-3:]
        if any("voice_kal_diphone" in e for e in err):
            raise MissingToolError(f"festival has no kal voice: {INSTALL_HINT}")
        raise SongError(f"{where}: festival lexicon lookup failed (rc {res.returncode}): {' | '.join(err)}")
    return counts


def _fit_syllables(syls: list[list[tuple[float, int]]], n_fest: int) -> list[list[tuple[float, int]]]:
    """Regroup a word's (duration, midi) notes into ``n_fest`` syllables keeping their order (so the pitch over
    time is unchanged): extra score syllables become a melisma of the last one; missing ones split the longest
    note in two."""
    if n_fest <= 0 or n_fest == len(syls):
        return syls
    flat = [n for s in syls for n in s]
    if n_fest < len(syls):
        return [[n] for n in flat[:n_fest - 1]] + [flat[n_fest - 1:]] if len(flat) >= n_fest else syls
    while len(flat) < n_fest:
        k = max(range(len(flat)), key=lambda j: flat[j][0])
        d, m = flat[k]
        flat[k:k + 1] = [(d / 2, m), (d / 2, m)]
    return [[n] for n in flat[:n_fest - 1]] + [flat[n_fest - 1:]]


def _word_doc(sung: str, syls: list[list[tuple[float, int]]], tempo: float) -> str:
    beats = ",".join("+".join(f"{d:.4f}" for d, _ in s) for s in syls)
    notes = ",".join("+".join(festival_note_name(m) for _, m in s) for s in syls)
    return ('<?xml version="1.0"?>\n<!DOCTYPE SINGING PUBLIC "-//SINGING//DTD SINGING mark up//EN" '
            '"Singing.v0_1.dtd" []>\n'
            f'<SINGING BPM="{festival_bpm(tempo):.4f}"><DURATION BEATS="{beats}"><PITCH NOTE="{notes}">{sung}'
            '</PITCH></DURATION></SINGING>\n')


def _sing_words(items: list[tuple[str, list[list[tuple[float, int]]]]], tempo: float, tmp: Path,
                where: str) -> list[np.ndarray]:
    """Render each (sung text, syllables of (duration ql, midi)) as its own SINGING document in one festival
    process; returns float32 waveforms at 16 kHz."""
    import soundfile as sf

    uniq = sorted({w for w, _ in items})
    counts = dict(zip(uniq, _syllable_counts(uniq, tmp, where)))
    header = [
        "(voice_kal_diphone)",
        "(define (mc_render infile outfile)",
        "  (set! mc_waves nil)",
        "  (set! tts_hooks (list utt.synth (lambda (utt) (set! mc_waves (cons (utt.wave utt) mc_waves)))))",
        "  (tts_file infile 'singing)",
        "  (if mc_waves (wave.save (car mc_waves) outfile 'riff)))",
    ]
    for i, (sung, syls) in enumerate(items):
        (tmp / f"w{i}.xml").write_text(_word_doc(sung, _fit_syllables(syls, counts[sung]), tempo))
    total = sum(d for _, s in items for n in s for d, _ in n) * 60.0 / tempo

    def done(i: int) -> bool:
        p = tmp / f"w{i}.wav"
        return p.exists() and p.stat().st_size > 44

    # One process renders all words. Festival segfaults on a few inputs, which kills the rest of the batch: some
    # exact durations (any word sung for 0.417-0.421 s) and some syllable patterns ("hier" as hh-ay | er on two
    # notes). Then the word is rendered again 3 % longer (the slot trim removes the excess), then also as one
    # syllable carrying all its notes (melisma, same pitch over time), then 4 % shorter; the batch resumes after it.
    fallbacks = [(1.03, False), (1.03, True), (0.96, True)]
    pending, tries, res = 0, {}, None
    while pending < len(items):
        lines = header + [f'(mc_render "w{i}.xml" "w{i}.wav")' for i in range(pending, len(items))]
        script = tmp / "sing.scm"
        script.write_text("\n".join(lines) + "\n")
        res = _run_festival(script, tmp, 30 + WORDS_PER_SECOND_TIMEOUT * (len(items) - pending) + total, where)
        while pending < len(items) and done(pending):
            pending += 1
        if pending >= len(items):
            break
        k = tries.get(pending, 0)
        if k >= len(fallbacks):
            err = " | ".join((res.stderr or "").strip().splitlines()[-3:])
            raise SongError(f"{where}: festival failed on word {pending} {items[pending][0]!r} "
                            f"(rc {res.returncode}){': ' + err if err else ''}")
        tries[pending] = k + 1
        scale, melisma = fallbacks[k]
        sung, syls = items[pending]
        syls = [[n for s in syls for n in s]] if melisma else _fit_syllables(syls, counts[sung])
        syls = [[(d * scale, m) for d, m in s] for s in syls]
        (tmp / f"w{pending}.xml").write_text(_word_doc(sung, syls, tempo))
        log.debug("%s: festival crashed on %r; retry %d", where, sung, k + 1)
    waves = []
    for i, (sung, _) in enumerate(items):
        p = tmp / f"w{i}.wav"
        if not p.exists() or p.stat().st_size <= 44:
            err = " | ".join((res.stderr or "").strip().splitlines()[-3:])
            raise SongError(f"{where}: festival wrote no audio for word {i} {sung!r} (rc {res.returncode})"
                            f"{': ' + err if err else ''}")
        x, sr = sf.read(str(p), dtype="float32", always_2d=True)
        x = x.mean(axis=1)
        if sr != SAMPLE_RATE:
            import soxr

            x = soxr.resample(x, sr, SAMPLE_RATE).astype(np.float32)
        waves.append(x)
    return waves


# ------------------------------------------------------------------------------------------------ midi
def _vlq(v: int) -> bytes:
    out = [v & 0x7F]
    v >>= 7
    while v:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    return bytes(reversed(out))


def write_midi(path: Path, parts: Sequence[Sequence[_Note]], programs: Sequence[int], tempo: float,
               meter: tuple[int, int] = (4, 4), tpq: int = 480) -> None:
    """A format-1 standard MIDI file: one track per part (channel i, skipping drums), onsets in quarter notes."""
    tracks = []
    tempo_us = int(round(60_000_000 / tempo))
    den_pow = int(round(math.log2(meter[1])))
    meta = (b"\x00\xff\x51\x03" + tempo_us.to_bytes(3, "big")
            + b"\x00\xff\x58\x04" + bytes([meter[0], den_pow, 24, 8]) + b"\x00\xff\x2f\x00")
    tracks.append(meta)
    for i, (notes, prog) in enumerate(zip(parts, programs)):
        ch = i if i < 9 else i + 1
        if ch > 15:
            raise ValueError("at most 15 accompaniment parts")
        ev = []
        vel = 84 if i == len(parts) - 1 else 72
        for n in notes:
            a, b = int(round(n.onset * tpq)), int(round(n.end * tpq))
            if b <= a or not 0 <= n.midi <= 127:
                continue
            ev.append((b, 0, bytes([0x80 | ch, n.midi, 0])))
            ev.append((a, 1, bytes([0x90 | ch, n.midi, vel])))
        ev.sort(key=lambda e: (e[0], e[1]))
        data = bytearray(b"\x00" + bytes([0xC0 | ch, prog & 0x7F]))
        t = 0
        for tick, _, msg in ev:
            data += _vlq(tick - t) + msg
            t = tick
        data += b"\x00\xff\x2f\x00"
        tracks.append(bytes(data))
    out = bytearray(b"MThd" + (6).to_bytes(4, "big") + (1).to_bytes(2, "big") + len(tracks).to_bytes(2, "big")
                    + tpq.to_bytes(2, "big"))
    for tr in tracks:
        out += b"MTrk" + len(tr).to_bytes(4, "big") + tr
    path.write_bytes(bytes(out))


def _soundfont() -> Path:
    try:
        from musiccore.render import find_soundfont

        return Path(find_soundfont())
    except Exception:
        if DEFAULT_SOUNDFONT.exists():
            return DEFAULT_SOUNDFONT
        raise MissingToolError(f"no General MIDI soundfont ({DEFAULT_SOUNDFONT}): apt-get install timgm6mb-soundfont")


def _render_midi(mid: Path, wav: Path, n_samples: int, where: str) -> np.ndarray:
    import soundfile as sf

    exe = shutil.which("fluidsynth")
    if exe is None:
        raise MissingToolError("fluidsynth not found: apt-get install fluidsynth timgm6mb-soundfont")
    cmd = [exe, "-ni", "-q", "-g", "0.6", "-r", str(SAMPLE_RATE), "-F", str(wav), str(_soundfont()), str(mid)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        raise SongError(f"{where}: fluidsynth timed out") from e
    if res.returncode != 0 or not wav.exists():
        raise SongError(f"{where}: fluidsynth failed (rc {res.returncode}): {res.stderr.strip()[-300:]}")
    x, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != SAMPLE_RATE:
        import soxr

        x = soxr.resample(x, sr, SAMPLE_RATE).astype(np.float32)
    out = np.zeros(n_samples, np.float32)
    out[:min(n_samples, len(x))] = x[:n_samples]
    return out


def _write_wav(path: Path, x: np.ndarray) -> None:
    try:
        from musiccore.audio import write_audio
    except ImportError:  # pragma: no cover - only before musiccore.audio exists
        import soundfile as sf

        from musiccore.runs import atomic_path

        with atomic_path(path) as tmp:
            sf.write(str(tmp), x, SAMPLE_RATE, subtype="PCM_16")
        return
    write_audio(path, x[None, :], SAMPLE_RATE)


# ------------------------------------------------------------------------------------------------ build
def _load_piece(spec: SongSpec) -> _Piece:
    kind = spec.source.partition(":")[0]
    if kind in ("festival", "festival-xml"):
        return _load_festival(spec)
    if kind == "music21":
        return _load_music21(spec)
    raise SongError(f"{spec.source}: unknown source kind {kind!r} (festival:, festival-xml:, music21:)")


def _tags(spec: SongSpec, mode: str, tempo: float, programs: Sequence[int], median_midi: float) -> list[str]:
    genres = list(spec.genres)
    instruments = []
    for p in programs:
        t = PROGRAM_TAGS.get(p)
        if t and t not in instruments:
            instruments.append(t)
    if mode == "minor":
        mood = "melancholic"
    else:
        mood = "calm" if tempo < 76 else ("happy" if tempo > 120 else "uplifting")
    timbre = "bass vocal" if median_midi < 50 else ("baritone vocal" if median_midi < 57 else "tenor vocal")
    speed = "slow" if tempo < 76 else ("fast" if tempo > 120 else "moderate")
    extra = ["hymn"] if spec.style in ("chorale", "hymn") else []
    return genres + extra + instruments + [mood, "male", timbre, speed, mode]


_Unit = tuple[str, list[list[tuple[float, int]]], float, float]


def _render_units(words: list[_Word], per_syllable: bool) -> list[_Unit]:
    """What Festival renders, one SINGING document each: (sung text, syllables of (duration ql, midi), slot start
    ql, slot end ql). Note durations follow the onsets (no gaps inside a word), so a unit fills its slot.

    English: one unit per word. Other languages (German chorales) with syllable texts: one unit per score
    syllable, because Festival's English lexicon splits German words into other syllables than the score, which
    moves the notes inside a word (measured: 73 % of chorale notes within 50 cents per word, vs ~90 % in English).
    """
    units = []
    for w in words:
        flat = w.notes
        ds = [flat[j + 1].onset - flat[j].onset for j in range(len(flat) - 1)] + [flat[-1].dur]
        syls, k = [], 0
        for s in w.syllables:
            syls.append([(ds[k + j], n.midi) for j, n in enumerate(s)])
            k += len(s)
        texts = [_sanitize(t) for t in (w.syl_texts or [])]
        if per_syllable and len(w.syllables) > 1 and len(texts) == len(w.syllables) and all(texts):
            for t, s, notes in zip(texts, syls, w.syllables):
                units.append((t, [s], notes[0].onset, notes[0].onset + sum(d for d, _ in s)))
        else:
            units.append((_sanitize(w.text), syls, w.onset, w.onset + sum(d for s in syls for d, _ in s)))
    return units


def _place_words(slots: list[tuple[float, float]], waves: list[np.ndarray], tempo: float,
                 n_samples: int) -> np.ndarray:
    """Vocal track [T]: each rendering cut/padded to its (start, end) slot in quarter notes (3 ms fade-in, 12 ms
    fade-out)."""
    vocal = np.zeros(n_samples, np.float32)
    fade_in, fade_out = int(0.003 * SAMPLE_RATE), int(0.012 * SAMPLE_RATE)
    for (on, off), x in zip(slots, waves):
        a = int(round(on * 60.0 / tempo * SAMPLE_RATE))
        b = min(n_samples, int(round(off * 60.0 / tempo * SAMPLE_RATE)))
        seg = np.zeros(max(0, b - a), np.float32)
        m = min(len(seg), len(x))
        seg[:m] = x[:m]
        if m > 2 * (fade_in + fade_out):
            seg[:fade_in] *= np.linspace(0, 1, fade_in, dtype=np.float32)
            seg[m - fade_out:m] *= np.linspace(1, 0, fade_out, dtype=np.float32)
        vocal[a:a + len(seg)] += seg
    return vocal


def _section_rows(words: list[_Word], tempo: float) -> tuple[list[dict], str]:
    """Manifest sections (times in seconds, one row per word with its notes) and the YuE-format lyrics text."""
    sec = lambda ql: round(ql * 60.0 / tempo, 4)  # noqa: E731
    rows, blocks = [], []
    for s in _sections(words):
        lines = [" ".join(words[j].text for j in ph) for ph in s["phrases"]]
        wrows = []
        for j in (j for ph in s["phrases"] for j in ph):
            w = words[j]
            main = max(w.notes, key=lambda n: n.dur)
            wrows.append({"word": w.text, "sung": _sanitize(w.text), "start": sec(w.onset), "end": sec(w.end),
                          "midi": main.midi,
                          "notes": [{"start": sec(n.onset), "end": sec(n.end), "midi": n.midi} for n in w.notes]})
        rows.append({"label": s["label"], "start": wrows[0]["start"], "end": wrows[-1]["end"],
                     "lyrics": "\n".join(lines), "words": wrows})
        blocks.append(f"[{s['label']}]\n" + "\n".join(lines))
    return rows, "\n\n".join(blocks) + "\n"


def _transpose(piece: _Piece, semitones: int) -> None:
    """Move every note (melody and accompaniment), chord and the key of ``piece`` by ``semitones`` (in place)."""
    for w in piece.words:
        for s in w.syllables:
            for n in s:
                n.midi += semitones
    for part in piece.parts:
        for n in part:
            n.midi += semitones
    piece.chords = [(on, off, (root + semitones) % 12, [(p + semitones) % 12 for p in pcs])
                    for on, off, root, pcs in piece.chords]
    if piece.key is not None:
        piece.key = ((piece.key[0] + semitones) % 12, piece.key[1])


def build_song(spec: SongSpec, out_dir: Path, seed: int) -> dict:
    """Build one song into ``out_dir/<spec.id>/`` and return its manifest row (see the module docstring).

    Raises :class:`SongError` for a source that cannot be built and :class:`MissingToolError` when festival,
    fluidsynth or the soundfont is missing.
    """
    where = spec.source
    _festival_bin()
    out_dir = Path(out_dir).resolve()
    piece = _load_piece(spec)
    if spec.transpose:
        _transpose(piece, spec.transpose)
    if not piece.words:
        raise SongError(f"{where}: no lyrics (no sung words)")
    sung_words = [(w, _sanitize(w.text)) for w in piece.words]
    piece.words = [w for w, s in sung_words if s]
    if not piece.words:
        raise SongError(f"{where}: every word is empty after cleaning the lyrics "
                        f"({[w.text for w, _ in sung_words][:8]})")
    rng = _rng(seed, spec.id)
    lo, hi = spec.tempo_range
    tempo = float(round(lo + (hi - lo) * rng.random()))
    start, end, words = _excerpt(piece, spec, tempo)
    # too short: slow down, then repeat the whole melody
    span = end - start
    reps = 1
    if span * 60.0 / tempo + TAIL_SECONDS < spec.min_seconds:
        tempo = max(MIN_TEMPO, float(math.floor(span * 60.0 / max(spec.min_seconds - TAIL_SECONDS, 1e-3))))
        while span * reps * 60.0 / tempo + TAIL_SECONDS < spec.min_seconds:
            reps += 1
    bar = _bar_len(piece.meter)
    period = math.ceil(span / bar - 1e-6) * bar if reps > 1 else span
    rel = lambda n, k: _Note(n.onset - start + k * period, n.dur, n.midi)  # noqa: E731
    song_words: list[_Word] = []
    for k in range(reps):
        for w in words:
            song_words.append(_Word(w.text, [[rel(n, k) for n in s] for s in w.syllables], w.fermata, w.mark,
                                    region=k, syl_texts=w.syl_texts))
    total_ql = (reps - 1) * period + span
    acc_parts: list[list[_Note]] = []
    for part in piece.parts:
        notes = []
        for k in range(reps):
            for n in part:
                if n.onset >= start - 1e-6 and n.onset < end - 1e-6:
                    r = rel(n, k)
                    notes.append(_Note(r.onset, min(r.dur, total_ql + 2.0 - r.onset), r.midi))
        acc_parts.append(notes)
    # key on the excerpt (melody + accompaniment)
    all_notes = [n for w in song_words for n in w.notes] + [n for p in acc_parts for n in p]
    if piece.key is not None and piece.key[1] in ("major", "minor"):
        tonic, mode = piece.key
        key_name = f"{_PC_NAMES[tonic]} {mode}"
    else:
        tonic, mode, key_name = _analyze_key(all_notes)
    chords = []
    if piece.chords:
        for k in range(reps):
            for on, off, root, pcs in piece.chords:
                if off > start and on < end:
                    chords.append((max(on, start) - start + k * period, min(off, end) - start + k * period, root, pcs))
    elif piece.harmonize:
        first_bar_pickup = (piece.pickup - start) % bar if piece.pickup else 0.0
        chords = _harmonize(song_words, tonic, mode, piece.meter, first_bar_pickup, total_ql)
    kinds = list(piece.part_kinds)
    if chords:
        upper, bass = _comp_parts(chords, piece.meter)
        acc_parts += [upper, bass]
        kinds += ["comp", "comp"]
    if not any(acc_parts):
        raise SongError(f"{where}: no accompaniment notes in the excerpt")
    # programs: one ensemble per song drawn by the seed; keyboard parts of the score stay keyboard-like
    ensemble = STYLES.get(spec.style, STYLES["folk"])[int(rng.integers(len(STYLES.get(spec.style, STYLES["folk"]))))]
    programs = []
    nonkbd = [i for i, k in enumerate(kinds) if k != "keyboard"]
    for i, k in enumerate(kinds):
        if k == "keyboard":
            programs.append(0 if ensemble[-1] != 0 else 46)
            continue
        j = nonkbd.index(i)
        if j == len(nonkbd) - 1:
            programs.append(ensemble[-1])
        else:
            programs.append(ensemble[min(j, len(ensemble) - 2)])
    # vocal octave: median of the melody into VOCAL_RANGE
    mel = [n.midi for w in song_words for n in w.notes]
    median = float(np.median(mel))
    shift = 0
    while median + shift >= VOCAL_RANGE[1]:
        shift -= 12
    while median + shift < VOCAL_RANGE[0]:
        shift += 12
    for w in song_words:
        for s in w.syllables:
            for n in s:
                n.midi += shift
    sec = lambda ql: ql * 60.0 / tempo  # noqa: E731
    duration = sec(total_ql) + TAIL_SECONDS
    n_samples = int(round(duration * SAMPLE_RATE))
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / spec.id
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.id}.", suffix=".tmp", dir=out_dir))
    try:
        work = tmp / "work"
        work.mkdir()
        units = _render_units(song_words, per_syllable=spec.language != "en")
        waves = _sing_words([(sung, syls) for sung, syls, _, _ in units], tempo, work, where)
        vocal = _place_words([(a, b) for _, _, a, b in units], waves, tempo, n_samples)
        if not np.any(vocal):
            raise SongError(f"{where}: festival produced silence")
        write_midi(tmp / "accompaniment.mid", acc_parts, programs, tempo, piece.meter)
        acc = _render_midi(tmp / "accompaniment.mid", work / "acc.wav", n_samples, where)
        v_rms = float(np.sqrt(np.mean(vocal ** 2)))
        a_rms = float(np.sqrt(np.mean(acc ** 2)))
        if a_rms > 0:
            acc *= ACC_RMS_RATIO * v_rms / a_rms
        mix = vocal + acc
        g = 0.95 / max(float(np.abs(mix).max()), 1e-9)
        vocal, acc, mix = vocal * g, acc * g, mix * g
        sec_rows, lyrics = _section_rows(song_words, tempo)
        _write_wav(tmp / "vocal.wav", vocal)
        _write_wav(tmp / "accompaniment.wav", acc)
        _write_wav(tmp / "mix.wav", mix)
        (tmp / "lyrics.txt").write_text(lyrics)
        shutil.rmtree(work)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    from .manifest import split_of

    rel_dir = f"{out_dir.name}/{spec.id}"
    derived = {"rendering": spec.rendering, "transpose": spec.transpose} if spec.rendering else {}
    return derived | {
        "id": spec.id,
        "source": spec.source,
        "source_id": spec.source_id,
        "title": piece.title,
        "language": spec.language,
        "vocal": f"{rel_dir}/vocal.wav",
        "accompaniment": f"{rel_dir}/accompaniment.wav",
        "mix": f"{rel_dir}/mix.wav",
        "accompaniment_midi": f"{rel_dir}/accompaniment.mid",
        "lyrics_path": f"{rel_dir}/lyrics.txt",
        "sample_rate": SAMPLE_RATE,
        "duration": round(n_samples / SAMPLE_RATE, 4),
        "lyrics": lyrics,
        "sections": sec_rows,
        "tags": _tags(spec, mode, tempo, programs, median + shift),
        "key": key_name,
        "mode": mode,
        "meter": f"{piece.meter[0]}/{piece.meter[1]}",
        "tempo_bpm": tempo,
        "programs": programs,
        "instruments": [PROGRAM_TAGS.get(p, f"program {p}") for p in programs],
        "vocal_octave_shift": shift,
        "excerpt_ql": [start, end],
        "repeats": reps,
        "split": split_of(spec.source_id),
    }


__all__ = ["MAX_RENDERINGS", "SONGS_VERSION", "SAMPLE_RATE", "MissingToolError", "SongError", "SongSpec", "build_song",
           "chorale_spec", "english_sources", "festival_bpm", "festival_note_name", "rendering_spec",
           "select_song_sources", "write_midi"]
