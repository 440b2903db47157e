"""`mert eval`: the MARBLE protocol over task configs, with cached features, layer curves and baselines.

Typical use::

    mert eval --checkpoint runs/mert/tiny-XXXX/encoder                       # every offline task (configs/eval/kit_*)
    mert eval --checkpoint /models/MERT-v1-95M --tasks configs/eval/gtzan.yaml task.root=/data/GTZAN
    make -C mert eval CHECKPOINT=runs/mert/tiny-XXXX/encoder

One task = one YAML file (:class:`TaskConfig`: dataset adapter of :mod:`mert.marble`, label type, audio handling,
layer choice, probe settings). Features are extracted once per (feature source, dataset, audio setting) into
``$MUSIC_CACHE_DIR/mert/eval/<source>/<dataset>-<setting>/`` with :func:`mert.extract.extract` (so a rerun skips
every finished item and only probes) and every task on that dataset reads them. Feature sources: the checkpoint,
the same architecture with random weights (seed 0), and MFCC (20) and chroma (12) frames at the model's frame rate,
all through the same probe. Outputs in ``--out``: ``results.json``, ``results.csv``, ``results.md`` (tasks x sources)
and ``curve_<task>.png`` (score per layer, valid and test).

Label types: ``multiclass`` (accuracy), ``key`` (24 classes, MIREX weighted score), ``multilabel`` (macro ROC-AUC;
AP also reported), ``regression`` (R2), ``beat`` (frame-level; beat F-measure, 70 ms tolerance, after peak picking
with a threshold chosen on valid) and ``pitch`` (frame-level melody pitch, 129 classes = no note + MIDI 0-127;
frame accuracy).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .marble import DatasetError, Example, TaskData, load_task_data, stable_hash

log = logging.getLogger("mert.evaluate")

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "eval"
LABEL_TYPES = ("multiclass", "key", "multilabel", "regression", "beat", "pitch")
FRAME_TYPES = ("beat", "pitch")
#: adapter keyword that TaskConfig.target fills
TARGET_ARG = {"nsynth": "target", "vocalset": "target", "mtg": "subset", "datakit": "target"}


class EvalError(ValueError):
    """A task or source that cannot be evaluated (names the task/file and the reason)."""


# ============================================================================================ configs


@dataclass
class AudioConfig:
    """How audio becomes probe inputs."""

    mode: str = "clip"
    """clip: one row per item (mean over the whole clip); windows: one row per window, predictions averaged per
    track (MARBLE's scatter_mean); frames: one row per frame (frame-level tasks)."""
    window_s: float = 5.0
    """Window the encoder sees (and the windows of mode "windows"); 5 s is the training context."""
    max_s: float = 0.0
    """Use only the first max_s seconds (EMO / VocalSet: 30); 0 = all."""
    min_window_s: float = 1.0
    """A last window shorter than this is dropped (MARBLE)."""
    normalize: str = "auto"
    """Zero-mean/unit-variance input per window: auto (on for post-LN 95M/v0-style models, off for pre-LN 330M,
    as MARBLE extracts them), true or false."""
    cache: str = "windows"
    """Cached feature layout: windows ([L, K, D] window means; small) or frames ([L, T, D]; needed by frame tasks,
    and lets the data kit's clip and frame tasks share one extraction)."""


@dataclass
class ProbeSettings:
    """MARBLE's probe (one hidden layer of 512, Adam, plateau schedule, early stopping on valid)."""

    hidden_dim: int = 512
    """Hidden units (0: linear probe)."""
    dropout: float = 0.2
    """Dropout after the hidden ReLU."""
    lr: float = 1e-3
    """Adam learning rate (GTZAN 5e-3)."""
    batch_size: int = 64
    """Rows per step (frame tasks: frames)."""
    max_epochs: int = 100
    """Epoch limit (NSynth 50)."""
    early_stop_patience: int = 10
    """Epochs without a better valid score before stopping."""
    lr_patience: int = 5
    """ReduceLROnPlateau patience."""
    lr_factor: float = 0.1
    """ReduceLROnPlateau factor."""
    standardize: bool = False
    """z-score features with train statistics (MARBLE: off; on for the MFCC/chroma baselines, whose scales vary)."""
    seed: int = 1234
    """Probe seed."""
    frame_stride: int = 1
    """Frame tasks: train on every n-th frame (valid/test use all frames)."""


@dataclass
class TaskConfig:
    """One MARBLE-style task: where the data is, what the label is, how audio and layers are handled."""

    name: str = ""
    """Task name in the results table."""
    dataset: str = "datakit"
    """Adapter in mert.marble: gtzan giantsteps mtt emo nsynth vocalset mtg datakit."""
    root: str = ""
    """Local dataset folder (MARBLE's data/<NAME>); empty for datakit = MUSIC_DATA_DIR."""
    target: str = ""
    """Adapter target: nsynth family|pitch, vocalset singer|technique, mtg top50tags|genre|moodtheme|instrument,
    datakit key|instrument|meter|tempo|beat|melody."""
    label_type: str = "multiclass"
    """multiclass | key | multilabel | regression | beat | pitch."""
    layer: str = "sweep"
    """sweep: one probe per layer plus learned weights, report the best on valid; all: learned softmax weights;
    an integer: that hidden-state index (MARBLE's per-task layer)."""
    layer_330m: str = ""
    """Layer for pre-LN 330M-style models when MARBLE's configs differ there (GTZAN and EMO: 10); empty = ``layer``."""
    offline: bool = False
    """Runs without any download (the data kit's tasks): part of `make -C mert eval`."""
    audio: AudioConfig = field(default_factory=AudioConfig)
    """Audio handling."""
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    """Probe settings."""


def load_task(path: str | Path, overrides: Sequence[str] = ()) -> TaskConfig:
    """Strict YAML (``_base_`` includes) + ``key=value`` overrides -> validated :class:`TaskConfig`."""
    from musiccore.config import ConfigError, load_config

    cfg = load_config(TaskConfig, path, list(overrides))
    cfg.name = cfg.name or Path(path).stem
    if cfg.label_type not in LABEL_TYPES:
        raise ConfigError(f"{path}: label_type must be one of {LABEL_TYPES}, got {cfg.label_type!r}")
    if cfg.audio.mode not in ("clip", "windows", "frames"):
        raise ConfigError(f"{path}: audio.mode must be clip, windows or frames, got {cfg.audio.mode!r}")
    if cfg.audio.cache not in ("windows", "frames"):
        raise ConfigError(f"{path}: audio.cache must be windows or frames, got {cfg.audio.cache!r}")
    if (cfg.label_type in FRAME_TYPES) != (cfg.audio.mode == "frames"):
        raise ConfigError(f"{path}: frame-level label types (beat, pitch) go with audio.mode=frames and only they")
    if cfg.audio.mode == "frames" and cfg.audio.cache != "frames":
        raise ConfigError(f"{path}: audio.mode=frames needs audio.cache=frames")
    if cfg.audio.normalize not in ("auto", "true", "false"):
        raise ConfigError(f"{path}: audio.normalize must be auto, true or false, got {cfg.audio.normalize!r}")
    for name in ("layer", "layer_330m"):
        value = getattr(cfg, name)
        if value in ("sweep", "all") or (name == "layer_330m" and value == ""):
            continue
        try:
            int(value)
        except ValueError:
            raise ConfigError(f"{path}: {name} must be sweep, all or an integer, got {value!r}") from None
    return cfg


def offline_task_files() -> list[Path]:
    """The task configs that need no download (``offline: true``), in name order."""
    out = []
    for p in sorted(CONFIG_DIR.glob("*.yaml")):
        if p.name.startswith("_"):
            continue
        if load_task(p).offline:
            out.append(p)
    return out


# ============================================================================================ feature sources


@dataclass
class Source:
    """Where features come from: a MERT model (pretrained or random init) or a hand-made feature (mfcc, chroma)."""

    name: str
    kind: str  # "model" | "mfcc" | "chroma"
    model: Any = None  # MERTModel for kind "model"
    sample_rate: int = 24000
    frame_rate: float = 75.0
    stable_ln: bool = False  # pre-LN (330M-style): MARBLE extracts without input normalisation

    @property
    def key(self) -> str:
        if self.kind == "model":
            from .extract import model_fingerprint

            return f"{self.name}-{model_fingerprint(self.model)}"
        return f"{self.kind}-{self.sample_rate}-v1"


def model_sources(checkpoint: str | Path, random_baseline: bool = True) -> list[Source]:
    """The checkpoint and, with ``random_baseline``, the same architecture with random weights (seed 0)."""
    import torch

    from .extract import resolve_model_folder
    from .modeling_mert import MERTModel

    folder = resolve_model_folder(checkpoint)
    model = MERTModel.from_pretrained(folder).eval()
    cfg = model.config
    out = [Source("pretrained", "model", model, cfg.sample_rate, cfg.frame_rate, bool(cfg.do_stable_layer_norm))]
    if random_baseline:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            rnd = MERTModel(cfg).eval()
        out.append(Source("random-init", "model", rnd, cfg.sample_rate, cfg.frame_rate, bool(cfg.do_stable_layer_norm)))
    return out


def baseline_sources(sample_rate: int = 24000, frame_rate: float = 75.0) -> list[Source]:
    return [Source("mfcc", "mfcc", None, sample_rate, frame_rate),
            Source("chroma", "chroma", None, sample_rate, frame_rate)]


def handmade_frames(kind: str, wav: np.ndarray, sr: int) -> np.ndarray:
    """MFCC (20) or chroma (12) frames of a mono waveform at the MERT frame grid: [1, T, D], T = (N - 400) // 320 + 1.

    Hop 320 samples (75 Hz at 24 kHz) and 400-sample-centred frames line up with the encoder's frames.
    """
    import librosa

    n_frames = (len(wav) - 400) // 320 + 1
    if n_frames < 1:
        raise ValueError(f"too short: {len(wav)} samples, one frame needs 400")
    y = np.pad(wav.astype(np.float32), (0, 2048))[: len(wav) + 2048]
    if kind == "mfcc":
        f = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20, n_fft=1024, hop_length=320, center=True)
    else:
        f = librosa.feature.chroma_stft(y=y, sr=sr, n_fft=2048, hop_length=320, center=True)
    # librosa frame j is centred at j * 320; encoder frame t covers samples [320 t, 320 t + 400): centre 320 t + 200
    f = f.T[:n_frames]
    if f.shape[0] < n_frames:
        f = np.pad(f, ((0, n_frames - f.shape[0]), (0, 0)), mode="edge")
    return f[None].astype(np.float32)


def _handmade_extract(src: Source, items: list[tuple[str, Path]], out: Path, pooling: str, window_s: float,
                      min_window_s: float) -> None:
    """Write MFCC/chroma features in the layout of :func:`mert.extract.extract` (index, failed, resumable)."""
    from musiccore.audio import load_audio
    from musiccore.runs import append_jsonl

    from .extract import _indexed_ids, write_features

    out.mkdir(parents=True, exist_ok=True)
    done = _indexed_ids(out)
    win = max(1, int(round(window_s * src.frame_rate)))
    t0, n_new = time.time(), 0
    for n, (iid, path) in enumerate(items):
        if iid in done:
            continue
        try:
            wav, _ = load_audio(path, src.sample_rate, mono=True)
            if not np.isfinite(wav).all():
                raise ValueError("non-finite samples")
            f = handmade_frames(src.kind, wav[0], src.sample_rate)  # [1, T, D]
            if pooling == "window":
                # one mean per window of `win` frames; a last window under min_window_s dropped (not the first)
                chunks = [f[:, i : i + win] for i in range(0, f.shape[1], win)]
                if len(chunks) > 1 and chunks[-1].shape[1] < min_window_s * src.frame_rate:
                    chunks = chunks[:-1]
                f = np.stack([c.mean(axis=1) for c in chunks], axis=1)  # [1, K, D]
            dest = out / f"{iid}.npy"
            dest.parent.mkdir(parents=True, exist_ok=True)
            write_features(dest, f, f.shape, "float32", "npy")
            append_jsonl(out / "index.jsonl", {"id": iid, "path": str(path), "output": f"{iid}.npy",
                                                "shape": list(f.shape), "pooling": pooling})
            n_new += 1
        except (ValueError, OSError, RuntimeError) as e:  # bad item: report, skip, keep going
            append_jsonl(out / "failed.jsonl", {"id": iid, "path": str(path), "error": f"{path}: {e}"})
        if (n + 1) % 100 == 0:
            log.info("%s features: %d/%d items (%.0f s)", src.kind, n + 1, len(items), time.time() - t0)
    if n_new:
        log.info("%s features: %d new items in %.1f s -> %s", src.kind, n_new, time.time() - t0, out)


def cache_folder(src: Source, task: TaskConfig, cache_root: Path | None = None) -> Path:
    from musiccore.runs import cache_dir

    a = task.audio
    norm = _normalize_for(src, task)
    setting = stable_hash({"cache": a.cache, "window_s": a.window_s, "min_window_s": a.min_window_s, "norm": norm})
    if task.dataset == "datakit":
        # the kit's manifest holds every clip's sha256: a rebuilt kit (other clips, other lengths) gets a new folder
        from musiccore.runs import data_dir

        kit = Path(task.root).expanduser() if task.root else data_dir()
        manifest = kit / "clips" / "manifest.jsonl"
        key = manifest.read_bytes() if manifest.is_file() else str(kit.resolve())
    else:  # a published dataset: keyed by its folder (delete the cache folder after changing its audio)
        key = str(Path(task.root).expanduser().resolve())
    ds = f"{task.dataset}-{stable_hash(key)}"
    return (cache_root or cache_dir() / "mert" / "eval") / src.key / f"{ds}-{a.cache}-{setting}"


def _normalize_for(src: Source, task: TaskConfig) -> bool:
    if src.kind != "model":
        return False
    if task.audio.normalize == "auto":
        return not src.stable_ln
    return task.audio.normalize == "true"


def ensure_features(src: Source, task: TaskConfig, data: TaskData, cache_root: Path | None = None) -> Path:
    """Extract (or reuse) the features of every example of ``data`` for ``src``; returns the cache folder."""
    from .extract import ExtractOptions, extract, load_index

    out = cache_folder(src, task, cache_root)
    items = sorted({(e.id, e.path) for e in data.examples})
    have = {r["id"] for r in load_index(out)} if out.is_dir() else set()
    todo = [(i, p) for i, p in items if i not in have]
    if not todo:
        log.info("%s / %s: %d items cached in %s", src.name, task.name, len(items), out)
        return out
    pooling = "none" if task.audio.cache == "frames" else "window"
    log.info("%s / %s: extracting %d of %d items -> %s", src.name, task.name, len(todo), len(items), out)
    if src.kind == "model":
        manifest = out.parent / f".{out.name}.items.jsonl"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text("".join(json.dumps({"id": i, "path": str(p)}) + "\n" for i, p in todo))
        try:
            opts = ExtractOptions(pooling=pooling, window_s=task.audio.window_s, min_window_s=task.audio.min_window_s,
                                  normalize=_normalize_for(src, task), batch_size=8)
            extract([manifest], out, src.model, opts, progress=False)
        finally:
            manifest.unlink(missing_ok=True)
    else:
        _handmade_extract(src, todo, out, pooling, task.audio.window_s, task.audio.min_window_s)
    return out


# ============================================================================================ arrays


def _failed(folder: Path) -> dict[str, str]:
    out = {}
    for p in folder.glob("failed*.jsonl"):
        for ln in p.read_text().splitlines():
            if ln.strip():
                r = json.loads(ln)
                out[r["id"]] = r.get("error", "?")
    return out


def load_features(folder: Path, data: TaskData) -> tuple[dict[str, np.ndarray], list[str]]:
    """{id: features} for every example with a feature file, and problems for the others (extraction failures)."""
    from .extract import FeatureFileError, read_features

    failed = _failed(folder)
    feats, problems = {}, []
    for e in data.examples:
        if e.id in feats:
            continue
        f = folder / f"{e.id}.npy"
        if not f.is_file():
            problems.append(f"{e.id}: no features ({failed.get(e.id, 'not extracted')})")
            continue
        try:
            feats[e.id] = read_features(f).astype(np.float32)
        except FeatureFileError as err:  # empty/truncated cache file: reported with the other problems
            problems.append(f"{e.id}: unreadable features ({err})")
    return feats, problems


def _clip_rows(f: np.ndarray, task: TaskConfig, frame_rate: float) -> np.ndarray:
    """Cached features of one item -> probe rows [R, L, D] (R = 1 for clip mode, windows for windows mode)."""
    a = task.audio
    if a.cache == "frames":  # [L, T, D] -> window means [L, K, D]
        win = max(1, int(round(a.window_s * frame_rate)))
        chunks = [f[:, i : i + win] for i in range(0, f.shape[1], win)]
        if len(chunks) > 1 and chunks[-1].shape[1] < a.min_window_s * frame_rate:
            chunks = chunks[:-1]
        f = np.stack([c.mean(axis=1) for c in chunks], axis=1)
    if a.max_s > 0:
        f = f[:, : max(1, int(math.ceil(a.max_s / a.window_s)))]
    if a.mode == "clip":
        return f.mean(axis=1)[None]  # [1, L, D]
    return f.transpose(1, 0, 2)  # [K, L, D]


def frame_centres(n_frames: int, sample_rate: int, stride: int = 320, rf: int = 400) -> np.ndarray:
    """Centre time (s) of each encoder frame: frame t covers samples [t * stride, t * stride + rf)."""
    return (np.arange(n_frames) * stride + rf / 2) / sample_rate


def beat_targets(beats: Sequence[float], n_frames: int, frame_rate: float, widen: bool) -> np.ndarray:
    """[T] 0/1: the frame a beat time rounds to is 1 (MARBLE); ``widen`` also sets its ±1 neighbours (training)."""
    y = np.zeros(n_frames, np.float32)
    idx = np.round(np.asarray(beats, dtype=np.float64) * frame_rate).astype(int)
    idx = idx[(idx >= 0) & (idx < n_frames)]
    y[idx] = 1.0
    if widen:
        for d in (-1, 1):
            j = idx + d
            y[j[(j >= 0) & (j < n_frames)]] = 1.0
    return y


def pitch_targets(notes: Sequence[tuple[float, float, int]], n_frames: int, sample_rate: int) -> np.ndarray:
    """[T] int: 0 = no melody note at the frame centre, else 1 + the sounding MIDI pitch (the later onset wins)."""
    t = frame_centres(n_frames, sample_rate)
    y = np.zeros(n_frames, np.int64)
    for s, e, p in sorted(notes):
        y[(t >= s) & (t < e)] = 1 + int(p)
    return y


def build_arrays(task: TaskConfig, data: TaskData, feats: dict[str, np.ndarray], src: Source) -> dict:
    """Per split: X [R, L, D], y, groups [R] (track ids) and, for frame tasks, per-item frame ranges."""
    out = {}
    classes = data.classes
    for split in ("train", "valid", "test"):
        xs, ys, gs, spans = [], [], [], []
        start = 0
        for e in data.split(split):
            if e.id not in feats:
                continue
            f = feats[e.id]
            if task.audio.mode == "frames":
                x = f.transpose(1, 0, 2)  # [T, L, D]
                if task.audio.max_s > 0:
                    x = x[: int(task.audio.max_s * src.frame_rate)]
                n = x.shape[0]
                if task.label_type == "beat":
                    y = beat_targets(e.target["beats"], n, src.frame_rate, widen=split == "train")[:, None]
                else:
                    y = pitch_targets(e.target["notes"], n, src.sample_rate)
                if split == "train" and task.probe.frame_stride > 1:
                    x, y = x[:: task.probe.frame_stride], y[:: task.probe.frame_stride]
                spans.append((e.id, start, start + len(x), e.target))
                start += len(x)
                xs.append(x)
                ys.append(y)
                gs += [e.id] * len(x)
                continue
            x = _clip_rows(f, task, src.frame_rate)
            if task.label_type in ("multiclass", "key"):
                y = np.full(len(x), classes.index(e.target), np.int64)
            elif task.label_type == "multilabel":
                row = np.zeros(len(classes), np.float32)
                row[[classes.index(t) for t in e.target]] = 1.0
                y = np.repeat(row[None], len(x), axis=0)
            else:
                y = np.repeat(np.asarray(e.target, np.float32)[None], len(x), axis=0)
            xs.append(x)
            ys.append(y)
            gs += [e.group or e.id] * len(x)
        if xs:
            out[split] = {"x": np.concatenate(xs), "y": np.concatenate(ys), "groups": gs, "spans": spans}
    for need in ("train", "valid"):
        if need not in out:
            raise EvalError(f"task {task.name}: no {need} items with features left")
    if task.label_type == "regression":
        # z-score targets with train statistics: R2 is unchanged, and the probe's MSE starts on a unit scale
        mu, sd = out["train"]["y"].mean(axis=0), out["train"]["y"].std(axis=0) + 1e-8
        for d in out.values():
            d["y"] = ((d["y"] - mu) / sd).astype(np.float32)
    return out


# ============================================================================================ probing


def _probe_config(task: TaskConfig, src: Source, layer: Any, n_classes: int | None):
    from musiccore.eval.probe import ProbeConfig

    p = task.probe
    kind = {"multiclass": "classification", "key": "classification", "pitch": "classification",
            "multilabel": "multilabel", "beat": "multilabel", "regression": "regression"}[task.label_type]
    metric = {"multiclass": "accuracy", "key": "mirex_key", "pitch": "accuracy", "multilabel": "roc_auc",
              "beat": "roc_auc", "regression": "r2"}[task.label_type]
    return ProbeConfig(task=kind, metric=metric, hidden_dim=p.hidden_dim, dropout=p.dropout, layer=layer, lr=p.lr,
                       batch_size=p.batch_size, max_epochs=p.max_epochs, early_stop_patience=p.early_stop_patience,
                       lr_patience=p.lr_patience, lr_factor=p.lr_factor, seed=p.seed, num_classes=n_classes,
                       standardize=p.standardize or src.kind != "model")


def pick_beats(prob: np.ndarray, frame_rate: float, threshold: float, min_gap_s: float = 0.2) -> np.ndarray:
    """Beat times (s) from per-frame beat probabilities [T]: local maxima above ``threshold``, at least
    ``min_gap_s`` apart (the stronger peak wins)."""
    p = np.asarray(prob, dtype=np.float64)
    if p.size == 0:
        return np.zeros(0)
    left = np.concatenate([[-np.inf], p[:-1]])
    right = np.concatenate([p[1:], [-np.inf]])
    cand = np.flatnonzero((p >= left) & (p > right) & (p > threshold))
    gap = max(1, int(round(min_gap_s * frame_rate)))
    keep: list[int] = []
    for i in cand[np.argsort(-p[cand], kind="stable")]:
        if all(abs(i - j) >= gap for j in keep):
            keep.append(int(i))
    return np.sort(np.asarray(keep, dtype=np.float64)) / frame_rate


def _beat_f(prob: np.ndarray, split: dict, frame_rate: float, threshold: float) -> float:
    """Mean beat F-measure over the items of a split, from frame probabilities [R] of the whole split."""
    from musiccore.eval.metrics import beat_f_measure

    fs = [beat_f_measure(t["beats"], pick_beats(prob[a:b], frame_rate, threshold)) for _, a, b, t in split["spans"]]
    return float(np.mean(fs))


def _score_probe(task: TaskConfig, src: Source, res, arrays: dict) -> tuple[float, float | None, dict]:
    """(valid score, test score, extras) of a trained probe in the task's reported metric."""
    extras: dict = {}
    if task.label_type != "beat":
        if task.label_type == "multilabel" and "test" in arrays:
            from musiccore.eval.probe import group_mean as _group_mean, score

            out, y = _group_mean(res.predict(arrays["test"]["x"]), arrays["test"]["y"], arrays["test"]["groups"])
            try:
                extras["test_average_precision"] = score("average_precision", y, out)
            except ValueError as e:
                extras["test_average_precision_error"] = str(e)
        return res.valid_score, res.test_score, extras
    # beats: threshold picked on valid (grid), F-measure on valid and test with it
    grid = np.round(np.arange(0.1, 0.95, 0.1), 2)
    pv = res.predict(arrays["valid"]["x"])[:, 0]
    valid_f = [_beat_f(pv, arrays["valid"], src.frame_rate, t) for t in grid]
    th = float(grid[int(np.argmax(valid_f))])
    extras["beat_threshold"] = th
    extras["valid_frame_auc"] = res.valid_score
    test = None
    if "test" in arrays:
        test = _beat_f(res.predict(arrays["test"]["x"])[:, 0], arrays["test"], src.frame_rate, th)
    return float(max(valid_f)), test, extras


def probe_task(task: TaskConfig, src: Source, arrays: dict, n_classes: int | None) -> dict:
    """Probe one task on one source per the task's layer choice; returns scores per layer and the reported one."""
    from musiccore.eval.probe import train_probe

    n_states = arrays["train"]["x"].shape[1]
    if src.stable_ln and task.layer_330m:  # MARBLE's 330M configs pick other layers for some tasks
        task = dataclasses.replace(task, layer=task.layer_330m)
    if task.layer == "sweep":
        layers: list[Any] = (list(range(n_states)) + ["all"]) if n_states > 1 else [0]
    elif task.layer == "all":
        layers = ["all"] if n_states > 1 else [0]
    else:
        li = int(task.layer)
        layers = [li if src.kind == "model" else 0]
        if not -n_states <= layers[0] < n_states:
            raise EvalError(f"task {task.name}: layer {li} out of range for {n_states} hidden states")
    tr, va, te = arrays["train"], arrays["valid"], arrays.get("test")
    per_layer: dict[str, dict] = {}
    for layer in layers:
        cfg = _probe_config(task, src, layer, n_classes)
        frame = task.audio.mode == "frames"
        res = train_probe((tr["x"], tr["y"]), (va["x"], va["y"]), (te["x"], te["y"]) if te else None, cfg,
                          valid_groups=None if frame else va["groups"],
                          test_groups=None if (frame or not te) else te["groups"])
        valid, test, extras = _score_probe(task, src, res, arrays)
        per_layer[str(layer)] = {"valid": valid, "test": test, "epochs": res.epochs_run, **extras}
        if res.layer_weights is not None:
            per_layer[str(layer)]["layer_weights"] = [round(float(w), 4) for w in res.layer_weights]
    best = max(per_layer, key=lambda k: (per_layer[k]["valid"], k == "all"))  # choose on valid, never on test
    return {"layers": per_layer, "reported_layer": best, "valid": per_layer[best]["valid"],
            "test": per_layer[best]["test"], **{k: v for k, v in per_layer[best].items()
                                                  if k not in ("valid", "test", "epochs", "layer_weights")}}


METRIC_NAMES = {"multiclass": "accuracy", "key": "MIREX key score", "multilabel": "ROC-AUC", "regression": "R2",
                "beat": "beat F (70 ms)", "pitch": "frame accuracy"}


def run_task(task: TaskConfig, sources: Sequence[Source], cache_root: Path | None = None) -> dict:
    """Load the task's data (problems reported), cache features per source, probe each source."""
    t0 = time.time()
    opts = {TARGET_ARG[task.dataset]: task.target} if task.dataset in TARGET_ARG and task.target else {}
    data = load_task_data(task.dataset, task.root or None, **opts)
    n_classes = {"multiclass": len(data.classes), "key": len(data.classes), "pitch": 129}.get(task.label_type)
    out = {"task": task.name, "dataset": task.dataset, "label_type": task.label_type,
           "metric": METRIC_NAMES[task.label_type], "counts": data.counts(), "problems": list(data.problems),
           "sources": {}}
    for src in sources:
        folder = ensure_features(src, task, data, cache_root)
        feats, problems = load_features(folder, data)
        out["problems"] += [f"{src.name}: {p}" for p in problems]
        arrays = build_arrays(task, data, feats, src)
        r = probe_task(task, src, arrays, n_classes)
        out["sources"][src.name] = r
        log.info("%s / %s: %s test %s (layer %s, valid %.3f)", task.name, src.name, out["metric"],
                 "n/a" if r["test"] is None else f"{r['test']:.3f}", r["reported_layer"], r["valid"])
    out["seconds"] = round(time.time() - t0, 1)
    return out


# ============================================================================================ outputs


def results_table(results: Sequence[dict], fmt: str = "markdown") -> str:
    """Tasks x sources table of test scores (the layer picked on valid in brackets)."""
    names: list[str] = []
    for r in results:
        names += [n for n in r["sources"] if n not in names]
    rows = []
    for r in results:
        cells = []
        for n in names:
            s = r["sources"].get(n)
            if s is None or s["test"] is None:
                cells.append("n/a")
            else:
                cells.append(f"{s['test']:.3f}" + (f" (L{s['reported_layer']})" if fmt == "markdown" and
                                                    n not in ("mfcc", "chroma") else ""))
        rows.append((r["task"], r["metric"], cells))
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["task", "metric"] + names)
        for t, m, c in rows:
            w.writerow([t, m] + c)
        return buf.getvalue()
    lines = ["| task | metric | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    lines += [f"| {t} | {m} | " + " | ".join(c) + " |" for t, m, c in rows]
    return "\n".join(lines)


def plot_layer_curve(result: dict, path: Path) -> Path | None:
    """Score per hidden-state index (valid dashed, test solid) for the model sources; baselines as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from musiccore.runs import atomic_path

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, (name, r) in enumerate(result["sources"].items()):
        color = f"C{i}"
        ls = [k for k in r["layers"] if k != "all"]
        if len(ls) > 1:
            xs = [int(k) for k in ls]
            ax.plot(xs, [r["layers"][k]["test"] for k in ls], "o-", color=color, label=f"{name} test")
            ax.plot(xs, [r["layers"][k]["valid"] for k in ls], "x--", color=color, alpha=0.6, label=f"{name} valid")
            if "all" in r["layers"] and r["layers"]["all"]["test"] is not None:
                ax.axhline(r["layers"]["all"]["test"], color=color, ls=":", lw=1, label=f"{name} learned weights")
        elif r["test"] is not None:
            ax.axhline(r["test"], color=color, ls="-.", lw=1.5, label=f"{name} test")
    ax.set_xlabel("hidden state (0 = encoder input)")
    ax.set_ylabel(result["metric"])
    ax.set_title(f"{result['task']} ({result['dataset']})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    else:  # no test split: say so on the plot instead of an empty axis
        ax.text(0.5, 0.5, "no test scores", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return path


def write_results(results: Sequence[dict], out_dir: Path, meta: dict) -> dict[str, Path]:
    from musiccore.runs import atomic_write_json, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": atomic_write_json(out_dir / "results.json", {"meta": meta, "tasks": list(results)}),
             "csv": atomic_write_text(out_dir / "results.csv", results_table(results, "csv")),
             "md": atomic_write_text(out_dir / "results.md", results_table(results) + "\n")}
    for r in results:
        plot_layer_curve(r, out_dir / f"curve_{r['task']}.png")
    return paths


def evaluate(checkpoint: str | Path, task_files: Sequence[str | Path], out_dir: str | Path | None = None,
             overrides: Sequence[str] = (), baselines: bool = True, cache_root: Path | None = None) -> list[dict]:
    """Evaluate ``checkpoint`` (and the baselines) on every task; bad tasks are reported and skipped."""
    tasks = [load_task(p, overrides) for p in task_files]
    sources = model_sources(checkpoint, random_baseline=baselines)
    if baselines:
        sources += baseline_sources(sources[0].sample_rate, sources[0].frame_rate)
    results, skipped = [], []
    for task in tasks:
        try:
            results.append(run_task(task, sources, cache_root))
        except (DatasetError, EvalError) as e:  # one unusable task must not stop the others
            log.error("task %s skipped: %s", task.name, e)
            skipped.append({"task": task.name, "error": str(e)})
    if out_dir is not None and results:
        write_results(results, Path(out_dir), {"checkpoint": str(checkpoint), "skipped": skipped,
                                               "sources": [s.name for s in sources]})
    if not results:
        raise EvalError("no task could be evaluated: " + "; ".join(f"{s['task']}: {s['error']}" for s in skipped))
    return results


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--checkpoint", required=True, help="model folder (ours, converted or released HF) or a run folder")
    p.add_argument("--tasks", nargs="*", default=None,
                   help="task YAML files (default: the offline tasks of configs/eval, offline: true)")
    p.add_argument("--out", default=None,
                   help="results folder (default: $MUSIC_RUNS_DIR/mert/eval/<model folder name>)")
    p.add_argument("--no-baselines", action="store_true", help="probe the checkpoint only (no random init/MFCC/chroma)")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every task, e.g. probe.max_epochs=20")
    return p


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    if args is None or isinstance(args, (list, tuple)):
        args = add_arguments(argparse.ArgumentParser(prog="mert eval")).parse_args(args)
    from musiccore.runs import runs_root

    # `--tasks a.yaml key=value`: argparse hands the overrides to --tasks; move them back
    tasks = [t for t in (args.tasks or []) if "=" not in t]
    overrides = [t for t in (args.tasks or []) if "=" in t] + list(args.overrides)
    files = tasks or offline_task_files()
    out = Path(args.out) if args.out else runs_root() / "mert" / "eval" / Path(args.checkpoint).resolve().name
    results = evaluate(args.checkpoint, files, out, overrides, baselines=not args.no_baselines)
    print(results_table(results))
    print(f"results: {out}/results.{{md,csv,json}}, layer curves: {out}/curve_<task>.png")
    for r in results:
        for p in r["problems"][:5]:
            print(f"  {r['task']}: {p}")
        if len(r["problems"]) > 5:
            print(f"  {r['task']}: ... {len(r['problems'])} problems in results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
