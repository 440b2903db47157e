"""Orchestration of the offline data kit: ``build()`` runs the tunes, clips and songs steps.

Every step follows the same contract:

- **Deterministic**: candidates are tried in a seeded order and the first ``n`` good ones are kept, whatever the
  number of worker processes (each item's randomness comes from ``(seed, item id)`` only).
- **Resumable**: an item whose manifest row is there, whose recipe (kit version, seed, sizes, tool versions)
  matches and whose files exist with the recorded sha256 is reused, not rebuilt (the recipe includes a hash of the
  code that makes the item, so a kit built by older code is rebuilt rather than mixed). Deleting one file and re-running
  rebuilds that item only. A step whose whole manifest is intact and whose parameters did not change is skipped.
  Finished rows are appended to ``<manifest>.partial`` while a step runs, so a killed build loses nothing finished.
- **Robust**: a bad item (invalid ABC, a render that fails or is silent, an ambiguous key) is skipped, counted and
  listed in ``report.json`` with its reason, and the next candidate takes its place. Known-bad items of a previous
  build with the same recipe are not retried (``retry_bad=True`` retries them).
- **Atomic**: every file is written to a temporary name and renamed, so no partial file is ever visible.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Sequence

from ..runs import atomic_write_json, atomic_write_text
from . import clips as clips_mod
from . import tunes as tunes_mod
from .manifest import (
    KINDS,
    MANIFEST_PATHS,
    DataKitError,
    FileLock,
    PartialLog,
    Progress,
    kit_root,
    read_jsonl,
    row_problems,
    sha1_text,
    sha256_file,
    stable_hash,
    verify_manifest,
    verify_rows,
    write_jsonl,
)

log = logging.getLogger("musiccore.data")

#: bump when the content of any kit item changes for the same parameters (invalidates every cached item)
KIT_VERSION = 1
DEFAULTS = {"tunes": 1000, "clips": 200, "songs": 20, "seed": 0, "clip_seconds": 10.0, "sample_rate": 24000}


def code_hash(*names: str) -> str:
    """Hash of the source of musiccore modules (``"render.py"``, ``"data/clips.py"``): part of each step's recipe, so
    that a kit built by other code is rebuilt rather than silently mixed with new items."""
    import hashlib

    base = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for n in names:
        p = base / n
        h.update(n.encode())
        h.update(p.read_bytes() if p.exists() else b"missing")
    return h.hexdigest()[:12]


TUNES_CODE = ("abc.py", "data/tunes.py")
CLIPS_CODE = ("abc.py", "render.py", "audio.py", "data/clips.py")


def default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def songs_module():
    """The songs step (``musiccore.data.songs``), or None with the reason logged when it is unavailable."""
    try:
        from . import songs
    except ImportError as e:
        log.warning("songs step unavailable: musiccore.data.songs cannot be imported (%s)", e)
        return None
    if not (hasattr(songs, "select_song_sources") and hasattr(songs, "build_song")):
        log.warning("songs step unavailable: musiccore.data.songs lacks select_song_sources/build_song")
        return None
    return songs


# ----------------------------------------------------------------------------------------------- helpers
def _item_id(c: Any) -> str:
    if isinstance(c, dict):
        return str(c["id"])
    return str(getattr(c, "id"))


class _Pool:
    """A process pool when ``workers > 1``, else inline calls (same results either way)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.ex: ProcessPoolExecutor | None = None

    def __enter__(self) -> "_Pool":
        if self.workers > 1:
            import multiprocessing as mp

            ctx = mp.get_context("fork") if sys.platform.startswith("linux") else None
            self.ex = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        return self

    def __exit__(self, *exc) -> None:
        if self.ex is not None:
            self.ex.shutdown(wait=True, cancel_futures=True)

    def run(self, fn: Callable, items: list, args: tuple, on_done: Callable[[int, Any], None]) -> list:
        """Results of ``fn(item, *args)`` in item order; ``on_done(index, result)`` as each one finishes."""
        results: list = [None] * len(items)
        if self.ex is None or len(items) <= 1:
            for i, it in enumerate(items):
                try:
                    results[i] = fn(it, *args)
                except Exception as e:  # same contract as a worker process: the item is bad, the build goes on
                    results[i] = ("bad", f"worker failed: {type(e).__name__}: {e}")
                on_done(i, results[i])
            return results
        futs = {self.ex.submit(fn, it, *args): i for i, it in enumerate(items)}
        for f in as_completed(futs):
            i = futs[f]
            try:
                results[i] = f.result()
            except Exception as e:  # a worker that died (e.g. killed for memory) marks its item bad
                results[i] = ("bad", f"worker failed: {type(e).__name__}: {e}")
            on_done(i, results[i])
        return results


def first_n_good(
    kind: str,
    candidates: Sequence[Any],
    n: int,
    fn: Callable,
    args: tuple,
    cached: dict[str, dict],
    known_bad: dict[str, str],
    pool: _Pool,
    partial: PartialLog,
) -> tuple[list[dict], list[dict], dict[str, int]]:
    """Keep the first ``n`` good candidates, in order, building only what is not cached.

    Invariant: before each batch every candidate ahead of the cursor is decided (good or bad), and the batch holds
    exactly as many undecided candidates as good items are still missing; so the result is the first ``n`` good
    ones whatever the number of workers. Returns ``(rows, bad, counts)``.
    """
    rows: list[dict] = []
    bad: list[dict] = []
    counts = {"requested": n, "built": 0, "reused": 0, "bad": 0}
    prog = Progress(n, f"{kind}", every=max(1, min(100, n // 10 or 1)))
    i = 0
    try:
        while len(rows) < n and i < len(candidates):
            batch: list[Any] = []
            while len(rows) + len(batch) < n and i < len(candidates):
                c = candidates[i]
                i += 1
                cid = _item_id(c)
                if cid in cached:
                    rows.append(cached[cid])
                    counts["reused"] += 1
                    prog.update()
                elif cid in known_bad:
                    bad.append({"kind": kind, "id": cid, "reason": known_bad[cid], "cached": True})
                else:
                    batch.append(c)
            if not batch:
                continue

            def done(j: int, res: Any) -> None:
                status, payload = res
                if status == "ok":
                    partial.append(payload)
                    prog.update()

            for c, (status, payload) in zip(batch, pool.run(fn, batch, args, done)):
                if status == "ok":
                    rows.append(payload)
                    counts["built"] += 1
                else:
                    bad.append({"kind": kind, "id": _item_id(c), "reason": str(payload)})
                    # the first few at INFO, the rest at DEBUG: report.json lists them all
                    log.log(logging.INFO if len(bad) <= 5 else logging.DEBUG, "%s: skipped %s: %s%s", kind,
                            _item_id(c), payload, " (further skips: see report.json)" if len(bad) == 5 else "")
    finally:
        prog.close()
    counts["bad"] = len(bad)
    if len(rows) < n:
        log.warning("%s: only %d of %d requested items could be built (%d candidates, %d bad)",
                    kind, len(rows), n, len(candidates), len(bad))
    return rows, bad, counts


def _cached_rows(kind: str, root: Path, valid: Callable[[dict], bool]) -> dict[str, dict]:
    """Rows of the last manifest and of an interrupted build's partial log that are still valid."""
    manifest = root / MANIFEST_PATHS[kind]
    out: dict[str, dict] = {}
    # bad lines (not JSON, malformed rows) are skipped with a warning: the build redoes those items
    rows = read_jsonl(manifest, missing_ok=True, kind=kind, on_bad="skip")
    rows += [r for r in PartialLog(manifest).rows() if not row_problems(kind, r)]
    for r in rows:
        if r["id"] not in out and valid(r):
            out[r["id"]] = r
    return out


def _files_ok(kind: str, row: dict, root: Path) -> bool:
    return not verify_rows(kind, [row], root)


def _manifest_intact(kind: str, root: Path, params: dict, kit: dict) -> list[dict] | None:
    """The manifest rows when the last build of ``kind`` used ``params`` and every item verifies, else None."""
    prev = kit.get("parts", {}).get(kind)
    path = root / MANIFEST_PATHS[kind]
    if not prev or prev.get("params") != params or not path.exists():
        return None
    if prev.get("manifest_sha256") != sha256_file(path):
        return None
    try:
        rows = read_jsonl(path, kind=kind)
    except DataKitError as e:  # a damaged manifest is rebuilt from the items that still verify
        log.warning("%s; rebuilding the %s manifest", e, kind)
        return None
    if len(rows) != prev.get("count") or verify_rows(kind, rows, root):
        return None
    return rows


def _prune(kind: str, root: Path, keep: set[str]) -> int:
    """Remove item files of ``kind`` that no longer belong to the manifest, and stale temporary files."""
    removed = 0
    folder = root / kind
    if not folder.is_dir():
        return 0
    for p in folder.iterdir():
        if p.name.startswith(".") and ".tmp" in p.name:
            p.unlink(missing_ok=True) if p.is_file() else shutil.rmtree(p, ignore_errors=True)
            removed += 1
        elif kind == "clips" and p.is_file() and p.suffix in (".wav", ".mid") and p.stem not in keep:
            p.unlink()
            removed += 1
        elif kind == "songs" and p.is_dir() and p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)
            removed += 1
    return removed


# ----------------------------------------------------------------------------------------------- steps
def _up_to_date(kind: str, n: int, rows: list[dict], prev_report: dict) -> dict:
    """Result of a step whose manifest is intact: nothing built; the last build's bad items are carried over."""
    bad = [dict(b, cached=True) for b in prev_report.get("bad", []) if b.get("kind") == kind]
    return {"counts": {"requested": n, "built": 0, "reused": len(rows), "bad": len(bad)}, "bad": bad}


def _known_bad(prev_report: dict, kind: str, recipe: str) -> dict[str, str]:
    return {
        b["id"]: b["reason"]
        for b in prev_report.get("bad", [])
        if b.get("kind") == kind and b.get("recipe") == recipe
    }


def _finish(kind: str, root: Path, rows: list[dict], params: dict, kit: dict, extra: dict | None = None) -> None:
    rows = sorted(rows, key=lambda r: r["id"])
    path = write_jsonl(root / MANIFEST_PATHS[kind], rows)
    PartialLog(path).clear()
    kit.setdefault("parts", {})[kind] = {
        "params": params,
        "count": len(rows),
        "manifest_sha256": sha256_file(path),
        "splits": {s: sum(r.get("split") == s for r in rows) for s in ("train", "valid", "test")},
        **(extra or {}),
    }


def build_tunes(root: Path, n: int, seed: int, essen: bool, pool: _Pool, kit: dict, prev_report: dict,
                retry_bad: bool, music21_check: bool = False) -> dict:
    params = {"n": n, "seed": seed, "essen": essen, "kit_version": KIT_VERSION, "music21_check": music21_check,
              "code": code_hash(*TUNES_CODE)}
    recipe = stable_hash(params | {"n": None})
    intact = _manifest_intact("tunes", root, params, kit)
    if intact is not None:
        log.info("tunes: %d tunes up to date, nothing to do", len(intact))
        return _up_to_date("tunes", n, intact, prev_report)
    sources, dups = tunes_mod.list_sources(tunes_mod.collections_for(essen))
    log.info("tunes: %d candidate tunes (%d exact duplicates dropped) from %s",
             len(sources), dups, ", ".join(tunes_mod.collections_for(essen)))
    order = tunes_mod.shuffled(sources, seed)
    want = {s.id: sha1_text(s.abc) for s in sources}
    # rows of an earlier build are reused only when the validating code is the same (and the tune text)
    prev_params = kit.get("parts", {}).get("tunes", {}).get("params")
    same_code = prev_params is None or prev_params.get("code") == params["code"]
    cached = _cached_rows("tunes", root, lambda r: same_code and want.get(r["id"]) == r.get("sha1"))
    known_bad = {} if retry_bad else _known_bad(prev_report, "tunes", recipe)
    # structural validation takes ~2 ms per tune: inline beats the pool's per-item overhead; music21 parsing
    # (~0.1 s per tune) is worth spreading over the workers
    rows, bad, counts = first_n_good("tunes", order, n, tunes_mod.make_row, (music21_check,), cached, known_bad,
                                     pool if music21_check else _Pool(1), PartialLog(root / MANIFEST_PATHS["tunes"]))
    for b in bad:
        b["recipe"] = recipe
    counts["duplicates_dropped"] = dups
    _finish("tunes", root, rows, params, kit,
            {"collections": sorted({r["collection"] for r in rows})})
    return {"counts": counts, "bad": bad}


def _soundfont_id() -> str:
    """Name and size of the soundfont; raises ToolNotFoundError (before any work) when fluidsynth or a soundfont
    is missing, since every clip would fail."""
    from ..render import find_soundfont, require_tool

    require_tool("fluidsynth")
    sf = Path(find_soundfont())
    return f"{sf.name}:{sf.stat().st_size}"


def build_clips(root: Path, n: int, seed: int, clip_seconds: float, sample_rate: int, pool: _Pool, kit: dict,
                prev_report: dict, retry_bad: bool) -> dict:
    import music21

    params = {"n": n, "seed": seed, "clip_seconds": clip_seconds, "sample_rate": sample_rate,
              "kit_version": KIT_VERSION, "code": code_hash(*CLIPS_CODE)}
    recipe = stable_hash({k: v for k, v in params.items() if k != "n"}
                         | {"soundfont": _soundfont_id(), "music21": music21.__version__})
    intact = _manifest_intact("clips", root, params | {"recipe": recipe}, kit)
    if intact is not None:
        log.info("clips: %d clips up to date, nothing to do", len(intact))
        return _up_to_date("clips", n, intact, prev_report)
    sources, _ = tunes_mod.list_sources(tunes_mod.PUBLIC_COLLECTIONS)
    # single-voice tunes only: multi-voice ABC (V:) is slower to parse and often fails in music21
    sources = [s for s in sources if "\nV:" not in s.abc]
    candidates = clips_mod.list_candidates(n, seed, sources)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    cached = _cached_rows("clips", root, lambda r: r.get("recipe") == recipe and _files_ok("clips", r, root))
    known_bad = {} if retry_bad else _known_bad(prev_report, "clips", recipe)
    spec = clips_mod.ClipSpec(str(root), seed, float(clip_seconds), int(sample_rate), recipe)
    rows, bad, counts = first_n_good("clips", candidates, n, clips_mod.render_clip, (spec,), cached, known_bad,
                                     pool, PartialLog(root / MANIFEST_PATHS["clips"]))
    for b in bad:
        b["recipe"] = recipe
    _finish("clips", root, rows, params | {"recipe": recipe}, kit,
            {"sources": {k: sum(r["source_kind"] == k for r in rows) for k in ("chorale", "abc")}})
    counts["pruned"] = _prune("clips", root, {r["id"] for r in rows})
    return {"counts": counts, "bad": bad}


def _song_worker(spec: Any, out_dir: str, seed: int) -> tuple[str, Any]:
    """Build one song through ``musiccore.data.songs.build_song`` and checksum its files."""
    from . import songs

    try:
        row = dict(songs.build_song(spec, Path(out_dir), seed))
    except Exception as e:
        return "bad", f"{type(e).__name__}: {e}"
    root = Path(out_dir).parent
    sums = {}
    for f in ("vocal", "accompaniment", "mix"):
        if not row.get(f):
            return "bad", f"build_song returned no {f!r} path"
        p = Path(row[f])
        if p.is_absolute():
            p = p.relative_to(root)
        elif not (root / p).exists() and (Path(out_dir) / p).exists():
            p = Path("songs") / p  # the songs helper may return paths relative to the songs folder
        row[f] = str(p)
        if not (root / p).exists():
            return "bad", f"build_song did not write {root / p}"
        sums[f] = sha256_file(root / p)
    row["sha256"] = sums
    return "ok", row


def build_songs(root: Path, n: int, seed: int, pool: _Pool, kit: dict, prev_report: dict, retry_bad: bool) -> dict:
    songs = songs_module()
    missing = [t for t in ("festival", "text2wave", "fluidsynth") if shutil.which(t) is None]
    if songs is not None and missing:
        log.warning("songs step unavailable: %s not installed (apt-get install festival festvox-kallpc16k "
                    "fluidsynth)", ", ".join(missing))
    if songs is None or missing:
        return {"counts": {"requested": n, "built": 0, "reused": 0, "bad": 0, "unavailable": True}, "bad": []}
    params = {"n": n, "seed": seed, "kit_version": KIT_VERSION,
              "songs_version": getattr(songs, "SONGS_VERSION", None)}
    recipe = stable_hash({k: v for k, v in params.items() if k != "n"})
    intact = _manifest_intact("songs", root, params, kit)
    if intact is not None:
        log.info("songs: %d songs up to date, nothing to do", len(intact))
        return _up_to_date("songs", n, intact, prev_report)
    # ask for spare candidates so that bad songs can be replaced
    candidates = list(songs.select_song_sources(n + max(4, n // 2), seed))
    out_dir = root / "songs"
    out_dir.mkdir(parents=True, exist_ok=True)
    cached = _cached_rows("songs", root, lambda r: r.get("recipe") == recipe and _files_ok("songs", r, root))
    known_bad = {} if retry_bad else _known_bad(prev_report, "songs", recipe)

    rows, bad, counts = first_n_good("songs", candidates, n, _song_worker_with_recipe, (str(out_dir), seed, recipe),
                                     cached, known_bad, pool, PartialLog(root / MANIFEST_PATHS["songs"]))
    for b in bad:
        b["recipe"] = recipe
    _finish("songs", root, rows, params, kit)
    counts["pruned"] = _prune("songs", root, {r["id"] for r in rows})
    return {"counts": counts, "bad": bad}


def _song_worker_with_recipe(spec: Any, out_dir: str, seed: int, recipe: str) -> tuple[str, Any]:
    status, payload = _song_worker(spec, out_dir, seed)
    if status == "ok":
        payload["recipe"] = recipe
        payload.setdefault("id", _item_id(spec))
        if "split" not in payload:
            from .manifest import split_of

            payload["split"] = split_of(str(payload.get("source_id", payload["id"])))
    return status, payload


# ----------------------------------------------------------------------------------------------- build
def _cpu_seconds() -> float:
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def read_kit_json(path: Path) -> dict:
    """``kit.json`` or ``report.json`` of a kit root as a dict (``{}`` when the file does not exist), checked for the
    shape the builder writes: ``parts``/``kinds`` are objects of objects, ``bad`` a list of objects.

    Raises :class:`DataKitError` naming the file (and field) when it is not UTF-8 JSON or has another shape.
    """
    import json

    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError as e:
        raise DataKitError(f"{path}: not UTF-8 text (byte {e.start})") from e
    except (json.JSONDecodeError, RecursionError) as e:
        raise DataKitError(f"{path}: not valid JSON ({e})") from e
    except OSError as e:
        raise DataKitError(f"{path}: cannot read ({e.strerror or e})") from e
    if not isinstance(obj, dict):
        raise DataKitError(f"{path}: top level must be a JSON object, got {type(obj).__name__}")
    for key in ("parts", "kinds", "seconds", "cpu_seconds"):
        sec = obj.get(key)
        if sec is None:
            continue
        if not isinstance(sec, dict):
            raise DataKitError(f"{path}: field {key!r}: must be an object, got {type(sec).__name__}")
        if key in ("parts", "kinds"):
            for k, v in sec.items():
                if not isinstance(v, dict):
                    raise DataKitError(f"{path}: field '{key}.{k}': must be an object, got {type(v).__name__}")
                if key == "parts" and v.get("params") is not None and not isinstance(v["params"], dict):
                    raise DataKitError(f"{path}: field '{key}.{k}.params': must be an object")
    bad = obj.get("bad")
    if bad is not None and (not isinstance(bad, list) or not all(isinstance(b, dict) for b in bad)):
        raise DataKitError(f"{path}: field 'bad': must be a list of objects")
    return obj


def _load_json(path: Path) -> dict:
    """:func:`read_kit_json` for a build: a damaged file is only a lost cache (the build redoes that work)."""
    try:
        return read_kit_json(path)
    except DataKitError as e:
        log.warning("%s; ignoring it (this build re-checks every item)", e)
        return {}


def build(
    root: str | Path | None = None,
    *,
    tunes: int = DEFAULTS["tunes"],
    clips: int = DEFAULTS["clips"],
    songs: int | None = None,
    seed: int = DEFAULTS["seed"],
    clip_seconds: float = DEFAULTS["clip_seconds"],
    sample_rate: int = DEFAULTS["sample_rate"],
    essen: bool = False,
    only: Sequence[str] | None = None,
    workers: int | None = None,
    retry_bad: bool = False,
    music21_check: bool = False,
) -> dict:
    """Build (or bring up to date) the offline data kit under ``root`` and return the report.

    Args:
        root: kit folder (default :func:`musiccore.runs.data_dir`, env ``MUSIC_DATA_DIR``).
        tunes / clips / songs: how many items of each kind (0 skips the kind). ``songs=None``: as many songs as
            the kit already has (so a plain ``make data`` never shrinks a ``make data SONGS=300`` kit), else
            ``DEFAULTS["songs"]``.
        seed: selects and orders candidates and draws tempi and instruments; the same seed gives the same kit.
        clip_seconds / sample_rate: clip length and rate (mono).
        essen: add the Essen folk songs (non-commercial licence) to the ABC candidates.
        only: build only these kinds (others keep what they have).
        workers: worker processes (default: the usable CPUs, at most 8; 1 runs inline).
        retry_bad: retry items that a previous build with the same recipe reported bad.
        music21_check: also parse every tune with music21 when validating (slower; see ``tunes.make_row``).

    Returns the report (also written to ``<root>/report.json``): per-kind counts, bad items, seconds.
    """
    root = kit_root(root)
    kinds = list(only) if only else list(KINDS)
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown kind {k!r} in only=; expected some of {', '.join(KINDS)}")
    sizes = {"tunes": tunes, "clips": clips, "songs": songs}
    for k, v in sizes.items():
        if v is None and k == "songs":
            continue  # resolved under the lock (a build running now may be growing the kit)
        if int(v) != v or v < 0:
            raise ValueError(f"{k}: the number of items must be a non-negative integer, got {v!r}")
    if clip_seconds <= 0 or sample_rate <= 0:
        raise ValueError(f"clip_seconds and sample_rate must be positive (got {clip_seconds}, {sample_rate})")
    root.mkdir(parents=True, exist_ok=True)
    workers = workers or default_workers()
    t_start = time.time()
    cpu_start = _cpu_seconds()
    with FileLock(root / ".build.lock"):
        kit = _load_json(root / "kit.json")
        if songs is None:
            songs = int(kit.get("parts", {}).get("songs", {}).get("params", {}).get("n", DEFAULTS["songs"]))
            sizes["songs"] = songs
        prev_report = _load_json(root / "report.json")
        report: dict[str, Any] = {"root": str(root), "seed": seed, "workers": workers, "kinds": {}, "bad": [],
                                  "seconds": {}}
        # keep the previous report of kinds that this build does not touch
        for k in KINDS:
            if k not in kinds or sizes[k] == 0:
                if k in prev_report.get("kinds", {}):
                    report["kinds"][k] = prev_report["kinds"][k]
                    report["bad"] += [b for b in prev_report.get("bad", []) if b.get("kind") == k]
        report["cpu_seconds"] = {}
        for k in kinds:
            if sizes[k] == 0:
                continue
            t0, c0 = time.time(), _cpu_seconds()
            log.info("%s: building %d items into %s (seed %d, %d workers)", k, sizes[k], root / k, seed, workers)
            # one pool per step: its workers are reaped at the end, so the step's CPU time can be measured
            with _Pool(workers) as pool:
                if k == "tunes":
                    res = build_tunes(root, tunes, seed, essen, pool, kit, prev_report, retry_bad, music21_check)
                elif k == "clips":
                    res = build_clips(root, clips, seed, clip_seconds, sample_rate, pool, kit, prev_report,
                                      retry_bad)
                else:
                    res = build_songs(root, songs, seed, pool, kit, prev_report, retry_bad)
            report["kinds"][k] = res["counts"]
            report["bad"] += res["bad"]
            report["seconds"][k] = round(time.time() - t0, 2)
            # CPU time of this process, its workers and their tools: the cost of the step whatever the load
            report["cpu_seconds"][k] = round(_cpu_seconds() - c0, 2)
            c = res["counts"]
            log.info("%s: %d built, %d reused, %d bad in %.1f s (%.1f s CPU)", k, c.get("built", 0),
                     c.get("reused", 0), c.get("bad", 0), report["seconds"][k], report["cpu_seconds"][k])
        report["seconds"]["total"] = round(time.time() - t_start, 2)
        report["cpu_seconds"]["total"] = round(_cpu_seconds() - cpu_start, 2)
        kit["kit_version"] = KIT_VERSION
        kit["root"] = str(root)
        atomic_write_json(root / "kit.json", kit)
        atomic_write_json(root / "report.json", report)
        _write_readme(root, kit, essen=essen or bool(kit.get("parts", {}).get("tunes", {}).get("params", {})
                                                      .get("essen")))
    return report


def _write_readme(root: Path, kit: dict, essen: bool) -> None:
    parts = kit.get("parts", {})

    def count(k: str) -> str:
        p = parts.get(k)
        if not p:
            return "not built"
        sp = p.get("splits", {})
        return f"{p['count']} (train {sp.get('train', 0)} / valid {sp.get('valid', 0)} / test {sp.get('test', 0)})"

    colls = ", ".join(parts.get("tunes", {}).get("collections", [])) or "-"
    lines = [
        "# Offline music data kit",
        "",
        "Built by `python -m musiccore.data build` from the music21 corpus, fluidsynth with a General MIDI",
        "soundfont and Festival's singing mode. Regenerate it any time; it is deterministic for a given seed.",
        "",
        "| part | items | manifest |",
        "|---|---|---|",
        f"| ABC tunes | {count('tunes')} | `tunes/tunes.jsonl` |",
        f"| rendered clips | {count('clips')} | `clips/manifest.jsonl` (+ `clips/<id>.wav`, `.mid`) |",
        f"| songs | {count('songs')} | `songs/manifest.jsonl` (+ `songs/<id>/{{vocal,accompaniment,mix}}.wav`) |",
        "",
        "Paths in the manifests are relative to this folder (`musiccore.data.resolve`). `report.json` lists",
        "skipped (bad) items with their reasons; `kit.json` the parameters, counts and manifest checksums.",
        "",
        "## Licences",
        "",
        f"- ABC collections in this kit: {colls}.",
    ]
    for c, (_, note) in tunes_mod.COLLECTIONS.items():
        if c != "essenFolksong" or essen:
            lines.append(f"  - `{c}`: {note}")
    lines += [
        "- Bach chorales (music21 corpus): public-domain music; the encodings are distributed with music21 under the",
        "  corpus terms (\"out of copyright in the US or licensed for use, may restrict commercial use\").",
        "- Audio rendered with the soundfont found by `musiccore.render.find_soundfont()` (TimGM6mb: GPL-2).",
        "- Songs: Festival's example songs (Daisy Bell, Loch Lomond, America the Beautiful, a scale), public-domain",
        "  English songs and Bach chorales of the music21 corpus; sung by Festival / festvox-kallpc16k (X11-style",
        "  permissive licences).",
    ]
    if essen:
        lines += [
            "",
            "## NON-COMMERCIAL DATA INSIDE",
            "",
            "This kit was built with `--essen`: it contains tunes of the Essen Folksong Collection, which were",
            "distributed with music21 with permission for **non-commercial use only**. Do not use this kit (or models",
            "trained on it) commercially. See `LICENSE-essen.txt`.",
        ]
        src = tunes_mod.corpus_root() / "essenFolksong" / "license.txt"
        if src.exists():
            atomic_write_text(root / "LICENSE-essen.txt", src.read_text(encoding="utf-8", errors="replace"))
    else:
        (root / "LICENSE-essen.txt").unlink(missing_ok=True)  # a rebuild without --essen drops the Essen tunes
    atomic_write_text(root / "README.md", "\n".join(lines) + "\n")


def verify(root: str | Path | None = None, kinds: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Check every built manifest: each line is a valid row (:func:`~musiccore.data.manifest.row_problems`), its
    files exist, are not empty and match their checksums. Returns problems per kind (``file:line: ...`` each);
    kinds without a manifest are left out."""
    root = kit_root(root)
    out: dict[str, list[str]] = {}
    for k in kinds or KINDS:
        path = root / MANIFEST_PATHS[k]
        if not path.exists():
            continue
        out[k] = verify_manifest(k, path, root)
    return out


def info(root: str | Path | None = None) -> dict:
    """Summary of a kit: counts per kind and split, parameters, last report's bad-item counts.

    Raises :class:`DataKitError` naming the file and field when ``kit.json`` or ``report.json`` is damaged."""
    root = kit_root(root)
    kit = read_kit_json(root / "kit.json")
    rep = read_kit_json(root / "report.json")
    return {
        "root": str(root),
        "kit_version": kit.get("kit_version"),
        "parts": {k: {"count": v.get("count"), "splits": v.get("splits"), "params": v.get("params")}
                  for k, v in kit.get("parts", {}).items()},
        "last_build": {"kinds": rep.get("kinds"), "seconds": rep.get("seconds"),
                       "cpu_seconds": rep.get("cpu_seconds"), "bad": len(rep.get("bad", []))},
    }
