"""Dataset adapters of the MARBLE tasks, read from local folders in their published layouts (specs/mert.md §6.3).

Every adapter returns a :class:`TaskData`: one :class:`Example` per audio item (id, audio path, split, target, track
group) plus the class names, and a list of problems (missing audio, unknown labels, empty splits, unreadable rows).
:func:`finalize` drops the bad items, keeps the problems for the report and raises :class:`DatasetError` only when
nothing usable is left (no train or no valid items). Nothing is downloaded; paths are relative to the dataset root.

=============  ===================================================================================================
adapter        layout read (root = the dataset folder, MARBLE's ``data/<NAME>``)
=============  ===================================================================================================
gtzan          ``{train,valid,test}_filtered.txt`` (``<genre>/<genre>.<idx>.wav``) + ``genres/`` audio
giantsteps     ``giantsteps_clips/meta.json`` (stem -> split, y, clip.audio_uid) + ``giantsteps_clips/wav/<stem>.wav``
mtt            ``annotations_final.csv`` (tab separated, 188 tags) + ``{train,valid,test}.tsv`` + ``mp3/`` audio
emo            ``emomusic/meta.json`` (y = [arousal, valence]) + ``emomusic/wav/<id>.wav``
nsynth         ``nsynth-data/nsynth-<split>/examples.json`` + ``.../audio/<note_str>.wav`` (family or pitch)
vocalset       ``{train,valid,test}_{s,t}.txt`` (``<technique>/<stem>_<NN>.wav``) + ``audio/`` (singer or technique)
mtg            ``mtg-jamendo-dataset/data/splits/split-0/autotagging_<subset>-<split>.tsv`` + ``audio-low/``
datakit        the offline data kit's clips (key, instrument, meter, tempo; frame-level beat and melody)
=============  ===================================================================================================
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
GTZAN_GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]
NSYNTH_FAMILIES = ["bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string", "synth_lead",
                   "vocal"]
VOCALSET_TECHNIQUES = ["belt", "breathy", "inhaled", "lip_trill", "spoken", "straight", "trill", "trillo", "vibrato",
                       "vocal_fry"]
VOCALSET_SINGERS = [f"f{i}" for i in range(1, 10)] + [f"m{i}" for i in range(1, 12)]
KEY_CLASSES = [f"{n} major" for n in "C Db D Eb E F Gb G Ab A Bb B".split()] + \
              [f"{n} minor" for n in "C Db D Eb E F Gb G Ab A Bb B".split()]


class DatasetError(ValueError):
    """A task folder that cannot be probed at all (names the folder and what is missing)."""


@dataclass
class Example:
    """One audio item: ``target`` is a class name, a list of tag names, a list of floats, or (frame tasks) a dict."""

    id: str
    path: Path
    split: str
    target: Any
    group: str = ""  # track id: windows/clips of one track are averaged before scoring (empty: the id itself)


@dataclass
class TaskData:
    """Examples of one task, its class names (empty for regression) and the problems met while reading it."""

    examples: list[Example]
    classes: list[str]
    problems: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Example]:
        return [e for e in self.examples if e.split == name]

    def counts(self) -> dict[str, int]:
        return {s: len(self.split(s)) for s in SPLITS}


def _read_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def finalize(data: TaskData, root: Path, check_audio: bool = True, label_kind: str = "class") -> TaskData:
    """Drop items with missing audio or labels outside ``classes``; report empty splits; stop when nothing is left.

    ``label_kind``: "class" (target in classes), "tags" (every tag in classes; no tag at all is allowed, as MARBLE
    keeps tagless MTT clips), "values" (finite floats) or "frames" (no check).
    """
    keep = []
    for e in data.examples:
        if check_audio and not e.path.is_file():
            data.problems.append(f"{e.id}: missing audio file {e.path}")
            continue
        if label_kind == "class" and e.target not in data.classes:
            data.problems.append(f"{e.id}: unknown label {e.target!r} (not one of the {len(data.classes)} classes)")
            continue
        if label_kind == "tags" and any(t not in data.classes for t in e.target):
            bad = [t for t in e.target if t not in data.classes]
            data.problems.append(f"{e.id}: unknown tags {bad}")
            continue
        if label_kind == "values" and not np.all(np.isfinite(np.asarray(e.target, dtype=float))):
            data.problems.append(f"{e.id}: non-finite target {e.target}")
            continue
        keep.append(e)
    data.examples = keep
    for s in SPLITS:
        if not data.split(s):
            data.problems.append(f"split {s!r} is empty")
    missing = [s for s in ("train", "valid") if not data.split(s)]
    if missing:
        more = f"; ... ({len(data.problems)} problems)" if len(data.problems) > 8 else ""
        shown = "; ".join(data.problems[:8]) + more
        raise DatasetError(f"{root}: nothing left to probe in the {' and '.join(missing)} split(s) ({shown})")
    for p in data.problems:
        log.warning("%s: %s", root, p)
    return data


# ============================================================================================ adapters


def gtzan(root: Path) -> TaskData:
    """GTZAN genre, fault-filtered split (Sturm/Kereliuk lists as MARBLE saves them)."""
    audio = root / "genres" if (root / "genres").is_dir() else root / "Data" / "genres_original"
    ex, problems = [], []
    for split in SPLITS:
        lst = root / f"{split}_filtered.txt"
        if not lst.is_file():
            problems.append(f"missing split list {lst.name}")
            continue
        for line in _read_lines(lst):
            ex.append(Example(line, audio / line, split, line.split("/")[0]))
    return finalize(TaskData(ex, list(GTZAN_GENRES), problems), root)


def giantsteps(root: Path) -> TaskData:
    """GiantSteps(-MTG) key: MARBLE/jukemir 30 s clips, predictions averaged per track (``clip.audio_uid``)."""
    from musiccore.eval.metrics import key_index

    base = root / "giantsteps_clips"
    meta_path = base / "meta.json"
    if not meta_path.is_file():
        raise DatasetError(f"{root}: no giantsteps_clips/meta.json (MARBLE's GS preprocessing output)")
    meta = json.loads(meta_path.read_text())
    ex, problems = [], []
    for stem, m in sorted(meta.items()):
        split = {"validation": "valid"}.get(m.get("split"), m.get("split"))
        if split not in SPLITS:
            problems.append(f"{stem}: unknown split {m.get('split')!r}")
            continue
        try:
            label = KEY_CLASSES[key_index(m["y"])]
        except (KeyError, ValueError) as e:
            problems.append(f"{stem}: unknown label {m.get('y')!r} ({e})")
            continue
        group = str((m.get("clip") or {}).get("audio_uid", stem))
        ex.append(Example(stem, base / "wav" / f"{stem}.wav", split, label, group))
    return finalize(TaskData(ex, list(KEY_CLASSES), problems), root)


def mtt(root: Path, top: int = 50) -> TaskData:
    """MagnaTagATune top-50 tags: the ``top`` most frequent columns of annotations_final.csv, split lists by row."""
    ann = root / "annotations_final.csv"
    if not ann.is_file():
        raise DatasetError(f"{root}: no annotations_final.csv")
    with open(ann, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    header, body = rows[0], rows[1:]
    if len(header) < 3 or header[0] != "clip_id" or header[-1] != "mp3_path":
        raise DatasetError(f"{ann}: expected columns clip_id, <tags>, mp3_path; got {header[:3]}...{header[-1:]}")
    tags = header[1:-1]
    problems = []
    mat = np.zeros((len(body), len(tags)), np.int64)
    for n, r in enumerate(body):
        if len(r) != len(header):
            problems.append(f"annotations_final.csv row {n + 2}: {len(r)} fields, expected {len(header)}")
            continue
        mat[n] = [1 if v.strip() == "1" else 0 for v in r[1:-1]]
    order = np.argsort(-mat.sum(axis=0), kind="stable")[:top]
    classes = [tags[i] for i in order]
    ex = []
    for split in SPLITS:
        lst = root / f"{split}.tsv"
        if not lst.is_file():
            problems.append(f"missing split list {lst.name}")
            continue
        for line in _read_lines(lst):
            idx, rel = line.split("\t")[:2]
            if not idx.isdigit() or int(idx) >= len(body):
                problems.append(f"{lst.name}: row index {idx!r} not in annotations_final.csv")
                continue
            tags_of = [classes[j] for j, i in enumerate(order) if mat[int(idx), i]]
            ex.append(Example(rel, root / "mp3" / rel, split, tags_of))
    return finalize(TaskData(ex, classes, problems), root, label_kind="tags")


def emo(root: Path) -> TaskData:
    """Emomusic arousal/valence: targets z-scored with the development (train + valid) songs' mean and std."""
    base = root / "emomusic"
    meta_path = base / "meta.json"
    if not meta_path.is_file():
        raise DatasetError(f"{root}: no emomusic/meta.json (MARBLE's EMO preprocessing output)")
    meta = json.loads(meta_path.read_text())
    ex, problems = [], []
    for sid, m in sorted(meta.items()):
        split = {"validation": "valid"}.get(m.get("split"), m.get("split"))
        y = m.get("y")
        if split not in SPLITS or not isinstance(y, list) or len(y) != 2:
            problems.append(f"{sid}: bad row (split {m.get('split')!r}, y {y!r}); expected y = [arousal, valence]")
            continue
        ex.append(Example(sid, base / "wav" / f"{sid}.wav", split, [float(v) for v in y]))
    dev = np.array([e.target for e in ex if e.split != "test"], dtype=np.float64)
    if len(dev):
        mu, sd = dev.mean(axis=0), dev.std(axis=0) + 1e-12
        for e in ex:
            e.target = ((np.asarray(e.target) - mu) / sd).tolist()
    return finalize(TaskData(ex, ["arousal", "valence"], problems), root, label_kind="values")


def nsynth(root: Path, target: str = "family") -> TaskData:
    """NSynth instrument family (11) or pitch (128 classes, class = MIDI pitch); official splits."""
    if target not in ("family", "pitch"):
        raise DatasetError(f"nsynth target must be family or pitch, got {target!r}")
    base = root / "nsynth-data" if (root / "nsynth-data").is_dir() else root
    classes = list(NSYNTH_FAMILIES) if target == "family" else [str(p) for p in range(128)]
    ex, problems = [], []
    for split in SPLITS:
        d = base / f"nsynth-{split}"
        meta = d / "examples.json"
        if not meta.is_file():
            problems.append(f"missing nsynth-{split}/examples.json")
            continue
        for note, m in sorted(json.loads(meta.read_text()).items()):
            label = m.get("instrument_family_str") if target == "family" else str(m.get("pitch"))
            ex.append(Example(note, d / "audio" / f"{note}.wav", split, label))
    return finalize(TaskData(ex, classes, problems), root)


def vocalset(root: Path, target: str = "technique") -> TaskData:
    """VocalSet singer (20) or technique (10): MARBLE's 3 s chunk lists, ``<technique>/<stem>_<NN>.wav``."""
    if target not in ("singer", "technique"):
        raise DatasetError(f"vocalset target must be singer or technique, got {target!r}")
    suffix = "s" if target == "singer" else "t"
    classes = list(VOCALSET_SINGERS if target == "singer" else VOCALSET_TECHNIQUES)
    ex, problems = [], []
    for split in SPLITS:
        lst = root / f"{split}_{suffix}.txt"
        if not lst.is_file():
            problems.append(f"missing split list {lst.name}")
            continue
        for line in _read_lines(lst):
            label = Path(line).name.split("_")[0] if target == "singer" else line.split("/")[0]
            ex.append(Example(line, root / "audio" / line, split, label))
    return finalize(TaskData(ex, classes, problems), root)


MTG_SUBSETS = ("top50tags", "genre", "moodtheme", "instrument")


def mtg(root: Path, subset: str = "top50tags") -> TaskData:
    """MTG-Jamendo split-0: tags "category---tag", vocabulary = union over the three files in first-seen order."""
    if subset not in MTG_SUBSETS:
        raise DatasetError(f"mtg subset must be one of {MTG_SUBSETS}, got {subset!r}")
    splits_dir = root / "mtg-jamendo-dataset" / "data" / "splits" / "split-0"
    ex, problems, vocab = [], [], {}
    for split, name in (("train", "train"), ("valid", "validation"), ("test", "test")):
        f = splits_dir / f"autotagging_{subset}-{name}.tsv"
        if not f.is_file():
            problems.append(f"missing {f.name}")
            continue
        lines = f.read_text().replace("\r\n", "\n").split("\n")
        for n, line in enumerate(lines[1:], 2):
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) < 6:
                problems.append(f"{f.name}:{n}: {len(cols)} columns, expected TRACK_ID .. TAGS")
                continue
            tags = [t for t in cols[5:] if t]
            for t in tags:
                vocab.setdefault(t, len(vocab))
            rel = re.sub(r"\.mp3$", ".low.mp3", cols[3])
            ex.append(Example(cols[0], root / "audio-low" / rel, split, tags))
    return finalize(TaskData(ex, list(vocab), problems), root, label_kind="tags")


# ============================================================================================ data kit


def _midi_notes(path: Path) -> tuple[list[list[tuple[float, float, int]]], float]:
    """Notes per track [(start_s, end_s, pitch)] and the first tempo (quarter notes per minute) of a MIDI file.

    Uses music21's low-level MIDI reader (no score conversion) and the file's tempo map.
    """
    from music21 import midi

    mf = midi.MidiFile()
    mf.open(str(path))
    try:
        mf.read()
    finally:
        mf.close()
    tpq = mf.ticksPerQuarterNote
    tempos: list[tuple[int, float]] = []  # (tick, microseconds per quarter)
    tracks = []
    for tr in mf.tracks:
        tick, on, notes = 0, {}, []
        for e in tr.events:
            if e.type == "DeltaTime":
                tick += e.time
                continue
            name = getattr(e.type, "name", str(e.type))
            if name == "SET_TEMPO":
                data = e.data if isinstance(e.data, (bytes, bytearray)) else bytes(e.data, "latin-1")
                tempos.append((tick, float(int.from_bytes(data[:3], "big"))))
            elif name == "NOTE_ON" and e.velocity:
                on[(e.channel, e.pitch)] = tick
            elif name in ("NOTE_OFF", "NOTE_ON") and (e.channel, e.pitch) in on:
                notes.append((on.pop((e.channel, e.pitch)), tick, e.pitch))
        tracks.append(notes)
    tempos = sorted(tempos) or [(0, 500000.0)]

    def secs(t: int) -> float:
        # integrate the tempo map up to tick t (why: MIDI times are in ticks, tempo may change)
        s, last_tick, us = 0.0, 0, tempos[0][1]
        for tk, u in tempos:
            if tk >= t:
                break
            s += (tk - last_tick) / tpq * us / 1e6
            last_tick, us = tk, u
        return s + (t - last_tick) / tpq * us / 1e6

    out = [[(secs(a), secs(b), p) for a, b, p in notes] for notes in tracks]
    return [n for n in out if n], 60e6 / tempos[0][1]


def datakit_beats(row: dict) -> np.ndarray:
    """Beat times (s) of a kit clip: the score's beat grid (beat_bpm beats from the piece start; the clip starts
    ``start_ql`` quarter notes in), exact because the clip was rendered from that score at one tempo."""
    tempo, beat_bpm = float(row["tempo_bpm"]), float(row["beat_bpm"])
    beat_ql = tempo / beat_bpm
    start_ql = float(row.get("start_ql", 0.0))
    first = (np.ceil(start_ql / beat_ql - 1e-9) * beat_ql - start_ql) * 60.0 / tempo
    period = 60.0 / beat_bpm
    return np.arange(first, float(row["duration"]) + 1e-9, period)


def datakit_melody(midi_path: Path) -> list[tuple[float, float, int]]:
    """Notes (start_s, end_s, MIDI pitch) of the kit clip's first part (the melody / top voice)."""
    tracks, _ = _midi_notes(midi_path)
    if not tracks:
        raise DatasetError(f"{midi_path}: no notes")
    return sorted(tracks[0])


DATAKIT_TARGETS = ("key", "instrument", "meter", "tempo", "beat", "melody")


def datakit(root: Path | None, target: str) -> TaskData:
    """The offline data kit's clips with one of its exact labels (``DATAKIT_TARGETS``)."""
    from musiccore.data.manifest import load_manifest, resolve
    from musiccore.eval.metrics import key_index

    if target not in DATAKIT_TARGETS:
        raise DatasetError(f"datakit target must be one of {DATAKIT_TARGETS}, got {target!r}")
    rows = load_manifest("clips", root=root)
    ex, problems = [], []
    for r in rows:
        path = Path(resolve(r["path"], root))
        split = r.get("split")
        try:
            if target == "key":
                y: Any = KEY_CLASSES[key_index(r["key"])]
            elif target == "instrument":
                y = list(r["instruments"])
            elif target == "meter":
                y = str(r["meter"])
            elif target == "tempo":
                y = [float(r["tempo_bpm"])]
            elif target == "beat":
                y = {"beats": datakit_beats(r).tolist(), "duration": float(r["duration"])}
            else:
                y = {"notes": datakit_melody(Path(resolve(r["midi"], root))), "duration": float(r["duration"])}
        except (KeyError, ValueError, OSError) as e:
            problems.append(f"{r.get('id')}: no {target} label ({type(e).__name__}: {e})")
            continue
        ex.append(Example(r["id"], path, split, y))
    if target == "instrument":
        classes = sorted({t for e in ex for t in e.target})
    elif target == "meter":
        classes = sorted({e.target for e in ex})
    elif target == "key":
        classes = list(KEY_CLASSES)
    else:
        classes = []
    kind = {"key": "class", "meter": "class", "instrument": "tags", "tempo": "values"}.get(target, "frames")
    return finalize(TaskData(ex, classes, problems), Path(root or "MUSIC_DATA_DIR"), label_kind=kind)


ADAPTERS: dict[str, Callable[..., TaskData]] = {
    "gtzan": gtzan, "giantsteps": giantsteps, "mtt": mtt, "emo": emo, "nsynth": nsynth, "vocalset": vocalset,
    "mtg": mtg, "datakit": datakit,
}


def load_task_data(dataset: str, root: str | Path | None, **options) -> TaskData:
    """Run the adapter ``dataset`` on ``root`` (None: the data kit at MUSIC_DATA_DIR) with its options."""
    if dataset not in ADAPTERS:
        raise DatasetError(f"unknown dataset {dataset!r}; expected one of {sorted(ADAPTERS)}")
    if dataset == "datakit":
        return datakit(Path(root) if root else None, **options)
    if not root:
        raise DatasetError(f"dataset {dataset!r} needs a local folder (task.root=/path/to/{dataset})")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found (nothing is downloaded; point task.root at it)")
    return ADAPTERS[dataset](root, **options)


def stable_hash(obj: Any) -> str:
    """12 hex digits of sha256 over bytes, or over the sorted JSON of anything else."""
    data = obj if isinstance(obj, bytes) else json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(data).hexdigest()[:12]
