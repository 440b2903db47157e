"""`mert prepare`: manifests, the k-means teacher and the teacher-label cache.

Commands::

    # 1. a manifest of every audio file under some folders (bad files are reported and skipped)
    mert prepare manifest --audio /data/music1 /data/music2 --out manifests/train.jsonl
    # 2. (k-means teachers only) fit the codebooks on a sample of the manifest
    mert prepare kmeans --config configs/mert_v0_95m.yaml
    # 3. teacher labels, one shard per Slurm array task (resumable: finished shards are skipped)
    mert prepare labels --config configs/mert_v1_95m.yaml --shard $SLURM_ARRAY_TASK_ID --num-shards 64

The label cache lives in ``data.label_dir`` (default: ``$MUSIC_CACHE_DIR/mert/labels/<manifest>-<teacher>``), so
every run with the same manifest and teacher shares it. ``mert train`` prepares a missing cache itself when
``data.auto_prepare`` is true (the tiny config); paper configs expect it precomputed (``slurm/prepare_labels.sbatch``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from musiccore.config import config_hash, to_dict
from musiccore.runs import atomic_write_json, cache_dir

from .config import codebook_sizes_of, load_train_config  # noqa: F401 (codebook_sizes_of: public name here too)
from .data import (DataError, LabelStore, load_mono, manifest_digest, read_manifest, shard_bounds, shard_name,
                   write_label_shard, write_manifest)
from .teachers import KMeansTeacher, TeacherError, build_acoustic_teacher

log = logging.getLogger(__name__)

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


# ---------------------------------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------------------------------
def scan_audio(folders: Sequence[str | Path], exts: Sequence[str] = AUDIO_EXTS) -> tuple[list[dict], list[dict]]:
    """Rows (path, duration, sample_rate, frames, channels) for every audio file under ``folders``.

    Returns:
        (rows sorted by path, bad files as dicts {path, reason}); a file that cannot be read is skipped.
    """
    from musiccore.audio import AudioError, audio_info

    rows, bad = [], []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder")
        for p in sorted(folder.rglob("*")):
            if not p.is_file() or p.suffix.lower() not in exts:
                continue
            try:
                info = audio_info(p)
                if info.frames <= 0:
                    raise AudioError(f"{p}: file has no samples")
            except (AudioError, OSError) as e:
                bad.append({"path": str(p), "reason": str(e)})
                log.warning("skipping %s: %s", p, e)
                continue
            rows.append({"path": str(p.resolve()), "duration": round(info.duration, 6), "sample_rate": info.sample_rate,
                         "frames": info.frames, "channels": info.channels})
    return rows, bad


def datakit_rows(split: str, root: str | Path | None = None) -> list[dict]:
    """Manifest rows of the data kit's clips of one split (``musiccore.data``, built by ``make data``)."""
    from musiccore.data.manifest import load_manifest, resolve

    rows = []
    for r in load_manifest("clips", split=split, root=root):
        rows.append({"path": str(resolve(r["path"], root)), "duration": float(r["duration"]),
                     "sample_rate": int(r["sample_rate"]), "id": r["id"]})
    if not rows:
        raise DataError(f"data kit has no clips in split {split!r} (root {root or 'MUSIC_DATA_DIR'})")
    return rows


def load_rows(data_cfg, split: str = "train") -> Sequence[dict]:
    """Manifest rows of a :class:`mert.config.DataConfig`: ``{split}_manifest`` if set, else the data kit's clips."""
    path = data_cfg.train_manifest if split == "train" else data_cfg.valid_manifest
    if path:
        return read_manifest(path)
    root = data_cfg.datakit_root or None
    return datakit_rows(data_cfg.datakit_train_split if split == "train" else data_cfg.datakit_valid_split, root)


# ---------------------------------------------------------------------------------------------------------------------
# Teacher and label cache
# ---------------------------------------------------------------------------------------------------------------------
def teacher_id(teacher_cfg) -> str:
    return config_hash(teacher_cfg, exclude=("device",))


def label_dir_for(cfg, rows: Sequence[dict]) -> Path:
    """Label cache folder of (manifest rows, teacher): ``data.label_dir`` or a default under the cache dir."""
    if cfg.data.label_dir:
        return Path(cfg.data.label_dir) / f"{manifest_digest(rows)}-{teacher_id(cfg.teacher)}"
    return cache_dir() / "mert" / "labels" / f"{manifest_digest(rows)}-{teacher_id(cfg.teacher)}"


def kmeans_path_for(cfg) -> Path:
    if cfg.teacher.kmeans_path:
        return Path(cfg.teacher.kmeans_path)
    return cache_dir() / "mert" / "kmeans" / f"{teacher_id(cfg.teacher)}.npz"


def fit_kmeans(cfg, rows: Sequence[dict] | None = None, out: str | Path | None = None) -> Path:
    """Fit the k-means teacher of ``cfg`` on up to ``teacher.kmeans_fit_files`` training files and save it."""
    t = cfg.teacher
    if t.kind != "kmeans":
        raise TeacherError(f"teacher.kind is {t.kind!r}: only k-means teachers are fitted")
    # a manifest table (musiccore.data.RowTable) is indexed lazily: no list of every row's dict
    rows = rows if rows is not None else load_rows(cfg.data, "train")
    rng = np.random.default_rng(t.kmeans_seed)
    pick = rng.permutation(len(rows))[: t.kmeans_fit_files]
    teacher = build_acoustic_teacher(t)

    def waves():
        for i in pick:
            try:
                yield load_mono(rows[i]["path"], t.sample_rate)
            except ValueError as e:  # AudioError: skip and report, keep fitting
                log.warning("k-means fit: skipping %s: %s", rows[i]["path"], e)

    t0 = time.time()
    teacher.fit(waves(), max_frames=t.kmeans_max_frames, seed=t.kmeans_seed)
    out = Path(out) if out else kmeans_path_for(cfg)
    teacher.save(out)
    log.info("k-means teacher (%s) fitted on %d files in %.1f s -> %s", "+".join(t.kmeans_features), len(pick), time.time() - t0, out)
    return out


def load_teacher(cfg, device: str = "cpu"):
    """The acoustic teacher of ``cfg``, ready to label audio (k-means loaded from its fitted file)."""
    if cfg.teacher.kind == "kmeans":
        return KMeansTeacher.load(kmeans_path_for(cfg))
    return build_acoustic_teacher(cfg.teacher, device=device)


def compute_label_shard(cfg, rows: Sequence[dict], shard: int, num_shards: int, teacher=None, device: str = "cpu",
                        out_dir: str | Path | None = None) -> Path:
    """Label the rows of one shard and write it (skipped when the shard already exists: resumable arrays)."""
    out_dir = Path(out_dir) if out_dir else label_dir_for(cfg, rows)
    name = shard_name(shard, num_shards)
    if (out_dir / f"{name}.json").is_file():
        log.info("labels %s: already done", name)
        return out_dir / f"{name}.json"
    teacher = teacher if teacher is not None else load_teacher(cfg, device)
    start, end = shard_bounds(len(rows), shard, num_shards)
    labels, errors = [], []
    t0, seconds = time.time(), 0.0
    last_log = t0
    for i in range(start, end):
        # progress in a Slurm log: one line per 100 files or per minute
        if i > start and ((i - start) % 100 == 0 or time.time() - last_log > 60):
            last_log = time.time()
            log.info("labels %s: %d/%d files, %.0f s of audio in %.0f s", name, i - start, end - start, seconds,
                     last_log - t0)
        try:
            wav = load_mono(rows[i]["path"], cfg.teacher.sample_rate)
            labels.append(np.asarray(teacher(wav), dtype=np.int64))
            errors.append(None)
            seconds += len(wav) / cfg.teacher.sample_rate
        except (ValueError, OSError, RuntimeError) as e:  # bad file: record, skip, keep going
            log.warning("labels: skipping %s: %s", rows[i]["path"], e)
            labels.append(None)
            errors.append(f"{type(e).__name__}: {e}")
    path = write_label_shard(out_dir, shard, num_shards, rows[start:end], labels, errors)
    n_bad = sum(e is not None for e in errors)
    log.info("labels %s: %d files (%d bad), %.0f s of audio in %.1f s", name, end - start, n_bad, seconds, time.time() - t0)
    return path


def write_teacher_meta(cfg, rows: Sequence[dict], num_shards: int, codebook_sizes: Sequence[int], out_dir: Path) -> None:
    atomic_write_json(out_dir / "teacher.json", {
        "teacher": to_dict(cfg.teacher) if dataclasses.is_dataclass(cfg.teacher) else dict(vars(cfg.teacher)),
        "num_shards": num_shards, "codebook_sizes": list(map(int, codebook_sizes)),
        "num_rows": len(rows), "manifest_digest": manifest_digest(rows), "label_rate": cfg.teacher.sample_rate / 320,
    })


def ensure_labels(cfg, rows: Sequence[dict], device: str = "cpu", num_shards: int | None = None) -> LabelStore:
    """Label cache of ``rows`` under ``cfg``; computed here (k-means fitted first if needed) when missing."""
    out_dir = label_dir_for(cfg, rows)
    num_shards = num_shards or cfg.data.label_shards
    if not (out_dir / "teacher.json").is_file():
        if cfg.teacher.kind == "kmeans" and not kmeans_path_for(cfg).is_file():
            fit_kmeans(cfg, load_rows(cfg.data, "train"))
        teacher = load_teacher(cfg, device)
        for s in range(num_shards):
            compute_label_shard(cfg, rows, s, num_shards, teacher=teacher, out_dir=out_dir)
        write_teacher_meta(cfg, rows, num_shards, codebook_sizes_of(cfg), out_dir)
    return LabelStore(out_dir, rows)


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the ``mert prepare`` sub-subcommands on ``parser``."""
    sub = parser.add_subparsers(dest="prepare_command", metavar="{manifest,kmeans,labels}")
    m = sub.add_parser("manifest", help="jsonl manifest of the audio files under some folders")
    m.add_argument("--audio", nargs="+", required=True, help="folders to scan (recursively)")
    m.add_argument("--out", required=True, help="manifest to write (jsonl)")
    m.add_argument("--ext", nargs="*", default=list(AUDIO_EXTS), help="file extensions to include")
    for name, hlp in (("kmeans", "fit the k-means teacher of a config"),
                      ("labels", "compute teacher labels into the cache (one shard, or all)")):
        p = sub.add_parser(name, help=hlp)
        p.add_argument("--config", required=True, help="training YAML (its data and teacher sections are used)")
        p.add_argument("overrides", nargs="*", help="key=value overrides")
        if name == "labels":
            p.add_argument("--split", default="train", choices=("train", "valid"))
            p.add_argument("--shard", type=int, default=None, help="shard index (default: all shards, then meta)")
            p.add_argument("--num-shards", type=int, default=None, help="default: data.label_shards")
            p.add_argument("--device", default="cpu")
    return parser


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Entry point of ``mert prepare`` (a parsed Namespace from ``mert.cli`` or an argv list)."""
    if args is None or isinstance(args, (list, tuple)):
        args = add_arguments(argparse.ArgumentParser(prog="mert prepare")).parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cmd = getattr(args, "prepare_command", None)
    if cmd == "manifest":
        rows, bad = scan_audio(args.audio, tuple(e if e.startswith(".") else "." + e for e in args.ext))
        if not rows:
            print(f"no readable audio under {args.audio} ({len(bad)} bad files)", file=sys.stderr)
            return 1
        write_manifest(rows, args.out)
        hours = sum(r["duration"] for r in rows) / 3600
        print(f"{args.out}: {len(rows)} files, {hours:.2f} h; {len(bad)} bad files skipped")
        for b in bad:
            print(f"  bad: {b['path']}: {b['reason']}")
        return 0
    if cmd in ("kmeans", "labels"):
        cfg = load_train_config(args.config, args.overrides)
        if cmd == "kmeans":
            print(fit_kmeans(cfg))
            return 0
        rows = load_rows(cfg.data, args.split)
        n = args.num_shards or cfg.data.label_shards
        out_dir = label_dir_for(cfg, rows)
        if cfg.teacher.kind == "kmeans" and not kmeans_path_for(cfg).is_file():
            raise TeacherError(f"{kmeans_path_for(cfg)}: k-means teacher not fitted; run `mert prepare kmeans` first")
        shards = range(n) if args.shard is None else [args.shard]
        teacher = load_teacher(cfg, args.device)
        for s in shards:
            compute_label_shard(cfg, rows, s, n, teacher=teacher, out_dir=out_dir)
        done = all((out_dir / f"{shard_name(s, n)}.json").is_file() for s in range(n))
        if done:
            write_teacher_meta(cfg, rows, n, codebook_sizes_of(cfg), out_dir)
        print(json.dumps({"label_dir": str(out_dir), "shards_done": sum((out_dir / f"{shard_name(s, n)}.json").is_file() for s in range(n)),
                          "num_shards": n, "complete": done}))
        return 0
    print("usage: mert prepare {manifest,kmeans,labels} ... (see --help)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
