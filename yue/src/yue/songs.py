"""Songs for the codec and the token caches: the data kit's ``songs`` manifest, or synthesized stand-ins.

A song is a :class:`Song`: three 16 kHz mono stems ``[N]`` (vocal, accompaniment, mix), labelled lyrics sections with
times, and tags. :func:`load_songs` reads ``musiccore.data.load_manifest("songs")``; when the kit is not built (or
the package is missing) and ``allow_synth=True``, it logs a warning and returns :func:`synth_song` songs: a sung-like
harmonic voice with vibrato over a bass/chord/percussion accompaniment, with made-up lyrics.

:func:`song_refs` gives the same songs as :class:`SongRef` rows whose audio is read only by :meth:`SongRef.load`
(``yue prepare`` walks them one at a time, so 300 songs never sit in memory together).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["Song", "SongRef", "load_songs", "song_refs", "synth_song", "SongLoadError"]

SAMPLE_RATE = 16000


class SongLoadError(ValueError):
    """A manifest row whose files are missing or unreadable (names the song and the file)."""


@dataclass
class Song:
    """One song. ``sections``: ``[{label, start, end, lyrics}]`` (seconds); stems: float32 ``[N]`` at 16 kHz."""

    id: str
    vocal: np.ndarray
    accompaniment: np.ndarray
    mix: np.ndarray
    lyrics: str
    sections: list[dict] = field(default_factory=list)
    tags: str = ""
    split: str = "train"
    synthetic: bool = False

    @property
    def duration(self) -> float:
        return self.mix.shape[-1] / SAMPLE_RATE


STEMS = ("vocal", "accompaniment", "mix")


def _load_row(row: dict, root, trim: bool = True) -> Song:
    """Read one manifest row's stems. ``trim``: cut the stems to their common length (``yue prepare`` passes False
    and checks the lengths itself, see :func:`yue.prepare.prepare_song`).

    Raises:
        SongLoadError: a stem path missing from the row, a missing file or undecodable audio (names song and stem).
    """
    from musiccore.audio import AudioError, load_audio
    from musiccore.data import resolve

    sid = row.get("id")
    stems = {}
    for key in STEMS:
        if not row.get(key):
            raise SongLoadError(f"song {sid}: missing stem: the manifest row has no {key!r} path")
        path = resolve(row[key], root)
        if not Path(path).is_file():
            raise SongLoadError(f"song {sid}: missing stem: {key} file {path} does not exist")
        try:
            wav, _ = load_audio(path, sample_rate=SAMPLE_RATE, mono=True)
        except (AudioError, OSError, RuntimeError) as e:  # soundfile raises RuntimeError subclasses on corrupt data
            raise SongLoadError(f"song {sid}: corrupt audio: {key} ({path}): {e}") from e
        stems[key] = wav[0]
    if trim:
        n = min(len(v) for v in stems.values())  # stems are rendered separately; trim to the common length
        stems = {k: v[:n] for k, v in stems.items()}
    tags = row.get("tags", "")
    if isinstance(tags, (list, tuple)):
        tags = " ".join(map(str, tags))
    return Song(
        str(sid), stems["vocal"], stems["accompaniment"], stems["mix"], row.get("lyrics", ""),
        list(row.get("sections") or []), str(tags), row.get("split", "train"),
    )  # fmt: skip


@dataclass
class SongRef:
    """A data-kit song whose audio is not read yet: the manifest ``row`` (``id``, ``split``, ``tags``, ``lyrics``,
    ``sections``, stem paths relative to ``root``). :meth:`load` reads the stems."""

    row: dict
    root: str | Path | None = None

    @property
    def id(self) -> str:
        return str(self.row.get("id"))

    @property
    def split(self) -> str:
        return str(self.row.get("split", "train"))

    @property
    def lyrics(self) -> str:
        return str(self.row.get("lyrics", ""))

    @property
    def tags(self) -> str:
        t = self.row.get("tags", "")
        return " ".join(map(str, t)) if isinstance(t, (list, tuple)) else str(t)

    def load(self, trim: bool = False) -> Song:
        """The :class:`Song` with its stems ``[N]`` (not trimmed unless ``trim``). Raises :class:`SongLoadError`."""
        return _load_row(self.row, self.root, trim=trim)


def song_refs(split: str | None = None, root: str | Path | None = None, limit: int | None = None) -> list[SongRef]:
    """The data kit's songs (``split`` None = all, the first ``limit``) as :class:`SongRef` (no audio read).

    Raises:
        SongLoadError: the kit has no songs manifest (names the folder and how to build it).
    """
    from musiccore.data import DataKitError, load_manifest
    from musiccore.data.manifest import kit_root

    try:
        rows = load_manifest("songs", split=split, root=root)
    except DataKitError as e:
        raise SongLoadError(f"no data-kit songs under {kit_root(root)} ({e}); build them with `make data`") from e
    return [SongRef(r, root) for r in rows[: limit or None]]


def load_songs(
    split: str | None = None, root: str | Path | None = None, limit: int | None = None, allow_synth: bool = True,
    synth_seconds: float = 12.0,
) -> list[Song]:  # fmt: skip
    """Songs of the data kit (``split`` None = all); synthesized ones (with a warning) when there are none.

    Bad rows (missing/corrupt stems) are skipped with a warning naming them.
    """
    refs: list[SongRef] = []
    try:
        refs = song_refs(split, root, limit)
    except ImportError:
        log.warning("musiccore.data is not available")
    except SongLoadError as e:  # kit not built
        log.warning("data kit songs not available (%s)", e)
    songs = []
    for ref in refs:
        try:
            songs.append(ref.load(trim=True))
        except SongLoadError as e:
            log.warning("skipping song %s: %s", ref.id, e)
    if songs:
        return songs
    if not allow_synth:
        raise SongLoadError(f"no usable songs in the data kit (root={root}); build it with `make data`")
    n = limit or 3
    log.warning("no data-kit songs: using %d synthesized songs (build the kit with `make data` for real ones)", n)
    return [synth_song(seed=i, seconds=synth_seconds) for i in range(n)]


_WORDS = "la sun rain light night heart road home sky fire dream run fly hold stay gold blue river".split()


def synth_song(seed: int = 0, seconds: float = 12.0, sr: int = SAMPLE_RATE) -> Song:
    """A deterministic stand-in song: harmonic "voice" with vibrato and syllable envelopes + bass, chords, hats."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    tempo = float(rng.uniform(90, 130))
    beat = 60.0 / tempo
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    root_midi = int(rng.integers(55, 64))
    # voice: one note per beat from the scale, harmonics with vibrato, syllable-shaped envelope
    f0 = np.zeros(n)
    env = np.zeros(n)
    for k in range(int(seconds / beat) + 1):
        a, b = int(k * beat * sr), min(n, int((k + 1) * beat * sr))
        if a >= n:
            break
        if rng.random() < 0.15:  # rests between phrases
            continue
        midi = root_midi + 12 + scale[rng.integers(0, len(scale))]
        f0[a:b] = 440.0 * 2 ** ((midi - 69) / 12)
        m = b - a
        env[a:b] = np.sin(np.linspace(0, np.pi, m)) ** 0.5
    vib = 1 + 0.006 * np.sin(2 * np.pi * 5.5 * t)
    phase = 2 * np.pi * np.cumsum(f0 * vib) / sr
    vocal = sum((0.5 / h) * np.sin(h * phase) for h in range(1, 6)) * env
    vocal += 0.01 * rng.standard_normal(n) * env  # breath noise
    # accompaniment: bass on beats, sustained triad per bar, hi-hat noise on off-beats
    acc = np.zeros(n)
    for k in range(int(seconds / beat) + 1):
        a = int(k * beat * sr)
        if a >= n:
            break
        b = min(n, a + int(beat * sr))
        deg = scale[[0, 3, 4, 0][(k // 4) % 4]]
        fb = 440.0 * 2 ** ((root_midi - 12 + deg - 69) / 12)
        tt = np.arange(b - a) / sr
        acc[a:b] += 0.35 * np.sin(2 * np.pi * fb * tt) * np.exp(-3 * tt)
        for iv in (0, 4, 7):
            acc[a:b] += 0.08 * np.sin(2 * np.pi * fb * 2 * 2 ** (iv / 12) * tt)
        h = a + int(beat * sr / 2)
        if h < n:
            m = min(n - h, int(0.05 * sr))
            acc[h : h + m] += 0.1 * rng.standard_normal(m) * np.exp(-np.arange(m) / (0.01 * sr))
    vocal, acc = vocal.astype(np.float32) * 0.5, acc.astype(np.float32) * 0.5
    mix = vocal + acc
    peak = float(np.abs(mix).max()) or 1.0
    vocal, acc, mix = vocal / peak * 0.9, acc / peak * 0.9, mix / peak * 0.9
    half = seconds / 2
    sections, parts = [], []
    for label, (s0, s1) in (("verse", (0.0, half)), ("chorus", (half, seconds))):
        words = " ".join(_WORDS[i] for i in rng.integers(0, len(_WORDS), 8))
        sections.append({"label": label, "start": s0, "end": s1, "lyrics": words})
        parts.append(f"[{label}]\n{words}\n")
    return Song(f"synth-{seed:03d}", vocal, acc, mix, "\n".join(parts), sections, "pop synth male", "train", True)
