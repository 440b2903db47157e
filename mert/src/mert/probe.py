"""`mert probe`: MARBLE-style probes on features extracted by `mert extract`, labelled from the data kit's clips.

Typical use (the tiny model pretrained by `make train`, probed for key and instruments)::

    mert extract $MUSIC_DATA_DIR/clips/manifest.jsonl --model runs/mert/tiny-XXXX/encoder --pooling mean --out feats/
    mert probe --features feats/ --task key
    mert probe --features feats/ --task instrument --layer 2 --out probe_instrument.json

Tasks (labels read from the data kit's ``clips/manifest.jsonl``; the kit's train/valid/test splits are kept):

=============  ==============================  ==================================
task           target                          metric
=============  ==============================  ==================================
key            24-class key (12 x major/minor)  MIREX weighted key score
meter          time signature classes          accuracy
instrument     GM instruments present          macro ROC-AUC (multi-label)
tempo          tempo in BPM                    R2
=============  ==============================  ==================================

Features are ``[L, D]`` per clip (``--pooling mean``) or ``[L, K, D]`` (``--pooling window``: one row per window,
predictions averaged per clip as MARBLE does). ``--layer all`` learns softmax layer weights; an integer probes that
hidden-state index; ``--layerwise`` probes every layer and reports the best one on the validation split.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

TASKS = {
    "key": ("classification", "mirex_key"),
    "meter": ("classification", "accuracy"),
    "instrument": ("multilabel", "roc_auc"),
    "tempo": ("regression", "r2"),
}


class ProbeError(ValueError):
    """Features and labels that cannot be probed (missing files, empty split, unknown task)."""


@dataclass
class ProbeData:
    """Arrays of one probing task: per split (features [N, L, D], targets, groups [N] clip ids)."""

    splits: dict[str, tuple[np.ndarray, np.ndarray, list[str]]]
    classes: list[str]


def _targets(task: str, rows: Sequence[dict]) -> tuple[np.ndarray, list[str]]:
    from musiccore.eval.metrics import key_index

    if task == "key":
        return np.array([key_index(r["key"]) for r in rows], dtype=np.int64), []
    if task == "meter":
        classes = sorted({str(r["meter"]) for r in rows})
        return np.array([classes.index(str(r["meter"])) for r in rows], dtype=np.int64), classes
    if task == "instrument":
        classes = sorted({i for r in rows for i in r["instruments"]})
        y = np.zeros((len(rows), len(classes)), dtype=np.float32)
        for n, r in enumerate(rows):
            for i in r["instruments"]:
                y[n, classes.index(i)] = 1.0
        return y, classes
    if task == "tempo":
        return np.array([float(r["tempo_bpm"]) for r in rows], dtype=np.float32), []
    raise ProbeError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")


def load_probe_data(features_dir: str | Path, task: str, datakit_root: str | Path | None = None) -> ProbeData:
    """Join `mert extract` outputs with the data kit's clip labels, split by the kit's splits."""
    from musiccore.data.manifest import load_manifest

    from .extract import FeatureFileError, load_index, read_features

    features_dir = Path(features_dir)
    index = load_index(features_dir)
    if not index:
        raise ProbeError(f"{features_dir}: no index*.jsonl (run `mert extract ... --out {features_dir}` first)")
    clips = {r["id"]: r for r in load_manifest("clips", root=datakit_root)}
    rows, feats = [], []
    for entry in index:
        cid = entry["id"]
        if cid not in clips:
            continue
        files = [p for p in (features_dir / f"{cid}.npy", features_dir / f"{cid}.safetensors") if p.is_file()]
        if not files:
            raise ProbeError(f"{features_dir}: index lists {cid} but its feature file is missing")
        try:
            feats.append(read_features(files[0]).astype(np.float32))
        except FeatureFileError as e:  # an empty or truncated file: skip the clip, say which, keep probing
            log.warning("skipping %s: %s", cid, e)
            continue
        rows.append(clips[cid])
    if not rows:
        raise ProbeError(f"{features_dir}: none of the {len(index)} extracted ids is a data-kit clip")
    y, classes = _targets(task, rows)
    splits: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}
    for split in ("train", "valid", "test"):
        sel = [n for n, r in enumerate(rows) if r.get("split") == split]
        if not sel:
            continue
        xs, ys, gs = [], [], []
        for n in sel:
            f = feats[n]
            if f.ndim == 2:  # [L, D]: one row per clip
                xs.append(f[None])
                ys.append(y[n][None])
                gs.append(rows[n]["id"])
            elif f.ndim == 3:  # [L, K, D]: one row per window, grouped by clip
                xs.append(f.transpose(1, 0, 2))
                ys.append(np.repeat(y[n][None], f.shape[1], axis=0))
                gs += [rows[n]["id"]] * f.shape[1]
            else:
                raise ProbeError(f"{rows[n]['id']}: features of shape {f.shape}; extract with --pooling mean or window")
        splits[split] = (np.concatenate(xs), np.concatenate(ys), gs)
    for need in ("train", "valid"):
        if need not in splits:
            raise ProbeError(f"no extracted clips in the {need!r} split (extract the whole clips manifest)")
    return ProbeData(splits, classes)


def probe_features(features_dir: str | Path, task: str, layer: str | int = "all", layerwise: bool = False,
                   datakit_root: str | Path | None = None, max_epochs: int = 100, seed: int = 1234) -> dict:
    """Train the probe of ``task`` on extracted features; returns a JSON-able result dict."""
    from musiccore.eval.probe import ProbeConfig, probe_layers, train_probe

    if task not in TASKS:
        raise ProbeError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    kind, metric = TASKS[task]
    data = load_probe_data(features_dir, task, datakit_root)
    tr, va = data.splits["train"], data.splits["valid"]
    te = data.splits.get("test")
    cfg = ProbeConfig(task=kind, metric=metric, layer=layer, max_epochs=max_epochs, seed=seed,
                      num_classes=24 if task == "key" else None)
    kw = dict(valid_groups=va[2], test_groups=te[2] if te else None)
    result = {"task": task, "metric": metric, "features": str(features_dir), "layer": layer,
              "n": {k: len(set(v[2])) for k, v in data.splits.items()}, "classes": data.classes}
    if layerwise:
        r = probe_layers(tr[:2], va[:2], te[:2] if te else None, cfg, **kw)
        result.update(valid_scores=r.valid_scores.tolist(), test_scores=r.test_scores.tolist(), best_layer=r.best_layer,
                      valid_score=float(r.valid_scores[r.best_layer]), test_score=float(r.test_scores[r.best_layer]))
    else:
        r = train_probe(tr[:2], va[:2], te[:2] if te else None, cfg, **kw)
        result.update(valid_score=r.valid_score, test_score=r.test_score, best_epoch=r.best_epoch,
                      layer_weights=None if r.layer_weights is None else np.asarray(r.layer_weights).tolist())
    return result


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--features", required=True, help="output folder of `mert extract` (pooling mean or window)")
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--layer", default="all", help="'all' (learned layer weights) or a hidden-state index")
    parser.add_argument("--layerwise", action="store_true", help="one probe per layer; report the best on valid")
    parser.add_argument("--datakit", default=None, help="data kit root (default MUSIC_DATA_DIR)")
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    return parser


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Entry point of ``mert probe`` (a parsed Namespace from ``mert.cli`` or an argv list)."""
    if args is None or isinstance(args, (list, tuple)):
        args = add_arguments(argparse.ArgumentParser(prog="mert probe")).parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    layer: str | int = args.layer if args.layer == "all" else int(args.layer)
    res = probe_features(args.features, args.task, layer, args.layerwise, args.datakit, args.max_epochs, args.seed)
    test = "n/a" if res.get("test_score") is None else f"{res['test_score']:.4f}"
    print(f"probe {res['task']} ({res['metric']}) on {res['features']}: valid {res['valid_score']:.4f}, test {test}; "
          f"clips {res['n']}" + (f", best layer {res['best_layer']}" if "best_layer" in res else ""))
    if args.out:
        from musiccore.runs import atomic_write_json

        atomic_write_json(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
