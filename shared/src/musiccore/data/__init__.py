"""The offline data kit (``make data``): real music with exact labels, built from registry packages only.

Build it with ``python -m musiccore.data build --root DIR`` (default root: :func:`musiccore.runs.data_dir`, env
``MUSIC_DATA_DIR``) or :func:`build`. Layout (every path in a row is relative to the root; :func:`resolve` makes it
absolute)::

    tunes/tunes.jsonl       {id, collection, title, key, meter, unit_length, rhythm, origin, abc, split, sha1, ...}
    clips/manifest.jsonl    {id, path, midi, duration, sample_rate, key, mode, meter, tempo_bpm, programs,
                             instruments, source, split, sha256, ...}; clips/<id>.wav (mono) and clips/<id>.mid
    songs/manifest.jsonl    {id, vocal, accompaniment, mix, sample_rate, duration, lyrics, sections, tags, key,
                             tempo_bpm, split, sha256: {vocal, accompaniment, mix}}
    kit.json, report.json, README.md

Splits ("train", "valid", "test", ~80/10/10) come from a hash of the tune/piece id, so every clip of a piece and
the tune itself share a split. Read a part with :func:`load_manifest`.
"""

from .builder import DEFAULTS, KIT_VERSION, build, info, verify
from .manifest import KINDS, SPLITS, DataKitError, ManifestError, load_manifest, resolve, split_of
from .rowtable import BadRow, RowTable, RowTableError, ScanResult

__all__ = [
    "BadRow",
    "DEFAULTS",
    "KINDS",
    "KIT_VERSION",
    "SPLITS",
    "DataKitError",
    "ManifestError",
    "RowTable",
    "RowTableError",
    "ScanResult",
    "build",
    "info",
    "load_manifest",
    "resolve",
    "split_of",
    "verify",
]
