"""ABC tunes of the offline data kit, read straight from music21's bundled corpus.

Files are read as text and split on ``X:`` (parsing whole collections with music21 is slow: one Essen opus takes
~13 s), every tune is checked with :func:`musiccore.abc.validate`, and the first ``n`` valid tunes of a seeded
shuffle become ``tunes/tunes.jsonl``. Exact duplicates (the same tune body in two files, e.g. O'Neill's
``_bs``/``_mh`` transcriptions) are kept once so that no tune sits in two splits.

Collections (music21 corpus folders) and their status:

=================  =======  ==============================================================================
collection         default  provenance / licence
=================  =======  ==============================================================================
ryansMammoth       yes      Ryan's Mammoth Collection (Boston, 1883): public domain
oneills1850        yes      O'Neill's Music of Ireland (Chicago, 1903; "1850 melodies"): public domain
airdsAirs          yes      Aird's Selection of Scotch, English, Irish and Foreign Airs (1778-1803): public domain
miscFolk           yes      American fife music and Northumbrian minstrelsy (18th/19th c., traditional)
josquin            yes      Josquin des Prez (d. 1521), multi-voice ABC with Latin/French text
essenFolksong      no       Essen Folksong Collection: distributed for NON-COMMERCIAL use only (``--essen``)
=================  =======  ==============================================================================
"""

from __future__ import annotations

import functools
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .manifest import sha1_text, split_of

log = logging.getLogger("musiccore.data")

#: collection -> (included by default, licence note)
COLLECTIONS: dict[str, tuple[bool, str]] = {
    "ryansMammoth": (True, "public domain (Ryan's Mammoth Collection, Boston 1883)"),
    "oneills1850": (True, "public domain (O'Neill's Music of Ireland, Chicago 1903)"),
    "airdsAirs": (True, "public domain (Aird's Selection of Airs, Glasgow 1778-1803)"),
    "miscFolk": (True, "public domain melodies (18th/19th-century fife and Northumbrian tunes)"),
    "josquin": (True, "public domain music (Josquin des Prez, d. 1521)"),
    "essenFolksong": (False, "NON-COMMERCIAL use only (Essen Folksong Collection, see essenFolksong/license.txt)"),
}
PUBLIC_COLLECTIONS = tuple(c for c, (default, _) in COLLECTIONS.items() if default)


def corpus_root() -> Path:
    """Folder of music21's bundled corpus (raises ImportError with a hint when music21 is missing)."""
    try:
        import music21.corpus
    except ImportError as e:  # pragma: no cover - music21 is a hard dependency of musiccore
        raise ImportError("the data kit needs music21 (pip install music21)") from e
    return Path(music21.corpus.__file__).parent


def collections_for(essen: bool) -> tuple[str, ...]:
    return PUBLIC_COLLECTIONS + (("essenFolksong",) if essen else ())


@dataclass(frozen=True)
class TuneSource:
    """One tune as found in the corpus, before validation."""

    id: str
    collection: str
    source: str  # path relative to the corpus root
    x: str  # the X: number as written
    abc: str


_ID_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # older ABC files are Latin-1


def _x_number(tune: str) -> str:
    m = re.search(r"^X:\s*(\S*)", tune, flags=re.M)
    return m.group(1) if m and m.group(1) else "0"


def _body_key(tune: str) -> str:
    """Dedup key: ``K``/``M``/``L`` plus the body without whitespace, i.e. the same music whatever its ``X:``,
    titles and bookkeeping fields. (:func:`musiccore.abc.fingerprint` also normalises the text, which costs ~10 ms
    per tune; exact duplicates in the corpus are caught without it.)"""
    from ..abc import parse_header

    h = parse_header(tune, strict=False)
    body = re.sub(r"\s+", "", h.body)
    return f"K:{h.get('K', '')}|M:{h.get('M', '')}|L:{h.get('L', '')}|{body}" if body else re.sub(r"\s+", "", tune)


def list_sources(collections: tuple[str, ...] | list[str]) -> tuple[list[TuneSource], int]:
    """All tunes of ``collections`` in corpus order (sorted files, then file order), exact duplicates removed.

    Returns ``(sources, n_duplicates)`` (a fresh list; the scan itself is cached per process, since the tunes and
    the clips steps both need it). Ids look like ``oneills1850-0001-0050-x3`` and are stable across runs.
    """
    sources, dups = _list_sources_cached(tuple(collections))
    return list(sources), dups


@functools.lru_cache(maxsize=8)
def _list_sources_cached(collections: tuple[str, ...]) -> tuple[tuple[TuneSource, ...], int]:
    from ..abc import split_tunes

    root = corpus_root()
    out: list[TuneSource] = []
    seen_ids: set[str] = set()
    seen_bodies: set[str] = set()
    dups = 0
    for coll in collections:
        if coll not in COLLECTIONS:
            raise ValueError(f"unknown ABC collection {coll!r}; known: {', '.join(COLLECTIONS)}")
        folder = root / coll
        if not folder.is_dir():
            log.warning("music21 corpus folder %s is missing; skipping collection %s", folder, coll)
            continue
        for path in sorted(folder.glob("*.abc")):
            for tune in split_tunes(_read_text(path)):
                tune = tune.strip() + "\n"
                if not re.search(r"^K:", tune, flags=re.M) and not re.search(r"[A-Ga-g]", tune.split("\n", 1)[-1]):
                    continue  # an X: line with nothing after it
                body = _body_key(tune)
                if body in seen_bodies:
                    dups += 1
                    continue
                seen_bodies.add(body)
                x = _x_number(tune)
                base = _ID_BAD.sub("_", f"{coll}-{path.stem}-x{x}")
                tid, k = base, 1
                while tid in seen_ids:  # repeated X: numbers inside one file
                    k += 1
                    tid = f"{base}-{k}"
                seen_ids.add(tid)
                out.append(TuneSource(tid, coll, str(path.relative_to(root)), x, tune))
    return tuple(out), dups


def shuffled(sources: list[TuneSource], seed: int, salt: str = "tunes") -> list[TuneSource]:
    """Seeded order in which candidates are tried (the first ``n`` valid ones are kept)."""
    order = list(sources)
    random.Random(f"{seed}|{salt}").shuffle(order)
    return order


def _get(h: dict, *names: str) -> Any:
    for n in names:
        v = h.get(n)
        if v not in (None, "", []):
            return v
    return None


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return str(v[0]) if v else ""
    return str(v)


def make_row(src: TuneSource, music21_check: bool = False) -> tuple[str, Any]:
    """Validate one tune and build its manifest row: ``("ok", row)`` or ``("bad", reason)``.

    :func:`musiccore.abc.validate` checks the structure (fields, brackets, characters, bar durations against
    ``M:``/``L:``); ``music21_check`` also parses every tune with music21 (~0.1 s per tune, so off by default:
    on a 100-tune sample of the default collections it rejected nothing that the structural checks accepted).
    Runs in a worker process (top-level function, picklable arguments).
    """
    from ..abc import parse_header, validate

    try:
        res = validate(src.abc, use_music21=music21_check)
    except Exception as e:  # a crash of the validator is a bad item, not a failed build
        return "bad", f"validator crashed: {type(e).__name__}: {e}"
    if not res.ok:
        errs = list(getattr(res, "errors", []) or [])
        return "bad", "invalid ABC: " + ("; ".join(map(str, errs[:3])) or "unknown error")
    h = parse_header(src.abc, strict=False)
    key = _text(_get(h, "K"))
    if not key:
        return "bad", "invalid ABC: no K: field"
    row = {
        "id": src.id,
        "collection": src.collection,
        "source": src.source,
        "x": src.x,
        "title": _text(_get(h, "T")),
        "key": key.strip(),
        "meter": _text(_get(h, "M")).strip(),
        "unit_length": _text(_get(h, "L")).strip(),
        "rhythm": _text(_get(h, "R")).strip(),
        "origin": _text(_get(h, "O")).strip(),
        "license": COLLECTIONS[src.collection][1],
        "abc": src.abc,
        "split": split_of(src.id),
        "sha1": sha1_text(src.abc),
    }
    return "ok", row
