"""A built-in music-theory question set, generated offline from the corpus tunes with computed ground truth.

Same row layout as MusicTheoryBench (``id, instruction, stem, options{A..D}, subject, answer, split, abc_score,
analysis``) plus ``topic``, so ``chatmusician.mtb`` scores it with the same harness (PPL / gen / CoT) and the same
files. Topics (answers computed, never guessed):

- ``key``: the key of a tune (its ``K:`` field, in words); distractors are other keys;
- ``meter``: its ``M:`` field;
- ``interval``: the interval between the first two distinct pitches of the tune (music21 ``interval.Interval``);
- ``chord``: the quality of a chord written as an ABC chord ``[..]`` built on a pitch of the tune (major, minor,
  diminished, augmented triad, dominant seventh; music21 ``Chord.commonName`` checks it);
- ``roman``: the Roman numeral of a diatonic triad in the tune's key (built on scale degree n of the key;
  music21 ``roman.romanNumeralFromChord`` confirms the figure).

``subject`` is ``knowledge`` for key/meter (reading a header) and ``reasoning`` for the rest (working on the notes).
The first item of each topic goes to ``dev`` (the few-shot exemplars), the others to ``test``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .data import key_text
from .mtb import HINT, LETTERS

TOPICS = ("key", "meter", "interval", "chord", "roman")
_KEYS = ["C major", "G major", "D major", "A major", "E major", "F major", "Bb major", "Eb major", "A minor",
         "E minor", "D minor", "B minor", "G minor", "A dorian", "D dorian", "E dorian", "G mixolydian",
         "A mixolydian", "D mixolydian"]
_METERS = ["2/4", "3/4", "4/4", "6/8", "9/8", "12/8", "2/2", "3/8", "C", "C|"]
_QUALITIES = {"major triad": [0, 4, 7], "minor triad": [0, 3, 7], "diminished triad": [0, 3, 6],
              "augmented triad": [0, 4, 8], "dominant seventh chord": [0, 4, 7, 10]}
_COMMON = {"major triad": "major triad", "minor triad": "minor triad", "diminished triad": "diminished triad",
           "augmented triad": "augmented triad", "dominant seventh chord": "dominant seventh chord"}


def _options(rng: random.Random, right: str, pool: list[str]) -> tuple[dict, str]:
    wrong = rng.sample([p for p in pool if p != right], 3)
    opts = wrong + [right]
    rng.shuffle(opts)
    return dict(zip(LETTERS, opts)), LETTERS[opts.index(right)]


def _abc_pitch(p) -> str:
    """A music21 pitch as an ABC note (explicit accidental, octave marks around C4 = ``C``)."""
    acc = {1: "^", -1: "_", 0: "=", 2: "^^", -2: "__"}.get(int(p.accidental.alter) if p.accidental else 0, "=")
    octave = p.octave if p.octave is not None else 4
    letter = p.step if octave <= 4 else p.step.lower()
    marks = "," * max(0, 4 - octave) if octave <= 4 else "'" * max(0, octave - 5)
    return acc + letter + marks


def _item(rng, topic: str, tune: dict, k: int) -> dict | None:
    from music21 import chord, interval, key as m21key, pitch, roman

    from musiccore.abc import parse_score

    h = tune["header"]
    excerpt = tune["abc"].strip()
    if topic == "key":
        right = key_text(h.get("K", ""))
        if right not in _KEYS:
            return None
        stem, (opts, ans) = "What is the key of this tune?", _options(rng, right, _KEYS)
        why = f"The K: field says {h.get('K')}, i.e. {right}."
    elif topic == "meter":
        right = h.get("M", "")
        if right not in _METERS:
            return None
        stem, (opts, ans) = "What is the meter of this tune?", _options(rng, right, _METERS)
        why = f"The M: field is {right}."
    elif topic == "interval":
        try:
            notes = [n for n in parse_score(tune["abc"]).recurse().notes if n.isNote]
        except Exception:  # noqa: BLE001 - a tune music21 cannot read gives no interval question
            return None
        pair = next(((a, b) for a, b in zip(notes, notes[1:]) if a.pitch.ps != b.pitch.ps), None)
        if pair is None:
            return None
        iv = interval.Interval(pair[0].pitch, pair[1].pitch)
        right = iv.niceName.lower()
        pool = ["minor second", "major second", "minor third", "major third", "perfect fourth", "augmented fourth",
                "diminished fifth", "perfect fifth", "minor sixth", "major sixth", "minor seventh", "major seventh",
                "perfect octave"]
        if right not in pool:
            return None
        stem = "What is the interval between the first two different notes of this tune?"
        opts, ans = _options(rng, right, pool)
        why = f"The first two different notes are {pair[0].pitch.nameWithOctave} and {pair[1].pitch.nameWithOctave}."
    elif topic == "chord":
        name = rng.choice(list(_QUALITIES))
        root = pitch.Pitch(rng.choice(["C4", "D4", "E4", "F4", "G4", "A4", "B4", "B-3", "E-4", "F#4"]))
        ps = [root.transpose(s) for s in _QUALITIES[name]]
        c = chord.Chord(ps)
        if _COMMON[name] not in c.commonName.lower() and not (name == "dominant seventh chord" and c.isDominantSeventh()):
            return None
        excerpt = "X:1\nL:1/4\nM:4/4\nK:C\n[" + "".join(_abc_pitch(p) for p in ps) + "]4 |]"
        stem = "What is the quality of this chord?"
        opts, ans = _options(rng, name, list(_QUALITIES))
        right = name
        why = f"Root {root.name}; the notes lie {', '.join(str(s) for s in _QUALITIES[name][1:])} semitones above it."
    elif topic == "roman":
        words = key_text(h.get("K", ""))
        if words not in _KEYS or not words.endswith(("major", "minor")):
            return None
        tonic, mode = words.split()
        k_obj = m21key.Key(tonic.replace("b", "-") if len(tonic) > 1 else tonic, mode)
        degree = rng.randint(1, 7)
        c = chord.Chord([k_obj.pitchFromDegree(degree + i).transpose(0) for i in (0, 2, 4)])
        for i, p in enumerate(c.pitches):  # stack the triad upwards from octave 4
            p.octave = 4 + (1 if i and c.pitches[i].ps < c.pitches[0].ps else 0)
        rn = roman.romanNumeralFromChord(c, k_obj).figure
        pool = ["I", "ii", "iii", "IV", "V", "vi", "vii°", "i", "ii°", "III", "iv", "v", "VI", "VII", "bVII", "#vii°"]
        rn = rn.replace("o", "°")
        if rn not in pool:
            return None
        excerpt = f"X:1\nL:1/4\nM:4/4\nK:{h.get('K')}\n[" + "".join(_abc_pitch(p) for p in c.pitches) + "]4 |]"
        stem = f"In {words}, what is the Roman numeral of this chord?"
        opts, ans = _options(rng, rn, pool)
        right = rn
        why = f"The chord is built on scale degree {degree} of {words}."
    else:
        raise ValueError(f"unknown topic {topic!r}")
    return {"id": f"{topic}-{k}", "instruction": HINT, "stem": "Use the example below to answer the question that "
            "follows. " + stem, "options": opts, "answer": ans, "subject": "knowledge" if topic in ("key", "meter")
            else "reasoning", "topic": topic, "abc_score": excerpt, "analysis": why, "source": tune.get("id", "")}


def build_theory_set(tunes: list[dict], per_topic: int = 40, seed: int = 0) -> dict[str, list[dict]]:
    """``{"dev": [...], "test": [...]}`` with up to ``per_topic`` questions per topic (one per topic in dev).

    ``tunes``: prepared corpus tunes (``chatmusician.data.prepare_tunes``), valid split first."""
    rng = random.Random(seed)
    pool = sorted(tunes, key=lambda t: t["split"] != "valid")
    data: dict[str, list[dict]] = {"dev": [], "test": []}
    for topic in TOPICS:
        made = 0
        for k, t in enumerate(pool):
            if made >= per_topic:
                break
            item = _item(rng, topic, t, k)
            if item is None:
                continue
            split = "dev" if made == 0 else "test"
            data[split].append({**item, "split": split})
            made += 1
    return data


def write_theory_set(data: dict[str, list[dict]], folder: str | Path) -> Path:
    """Write ``dev.jsonl`` and ``test.jsonl`` (the layout ``chatmusician.mtb.load_mtb`` reads)."""
    from musiccore.runs import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("dev", "test"):
        with atomic_path(folder / f"{split}.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in data[split]))
    return folder
