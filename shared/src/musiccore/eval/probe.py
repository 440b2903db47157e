"""MARBLE-style probing of frozen features: an MLP (or linear) head trained on feature arrays, on CPU.

Protocol (specs/mert.md §6.2): the upstream encoder is frozen and its features are pre-extracted, mean-pooled per clip
or window: ``[N, D]`` for one layer or ``[N, L, D]`` for all layers. The probe is one hidden layer of 512 units
(Linear, ReLU, Dropout(0.2), Linear), or a linear layer; with ``layer="all"`` it first takes a softmax-weighted sum over
the L layers with learned weights. It trains with Adam (lr 1e-3), batch 64, up to 100 epochs, ReduceLROnPlateau on the
validation metric and early stopping on it; the weights of the best validation epoch are restored and scored on the
test split. When windows of one track are separate rows, ``valid_groups`` / ``test_groups`` (track ids) make the
probe average its predictions per track before scoring (MARBLE's scatter_mean). Seeded, so a run is repeatable.

Tasks and default metrics: ``classification`` (int labels ``[N]``; accuracy), ``multilabel`` (``[N, K]`` in {0, 1};
macro ROC-AUC), ``regression`` (``[N]`` or ``[N, D]``; mean R2). Other metrics: ``f1_macro``, ``f1_micro``,
``mirex_key`` (24-class key indices, see :func:`musiccore.eval.metrics.key_index`), ``average_precision``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from musiccore.eval import metrics as M

log = logging.getLogger(__name__)

__all__ = ["ProbeConfig", "ProbeResult", "LayerwiseResult", "train_probe", "probe_layers", "score", "group_mean"]

TASKS = ("classification", "multilabel", "regression")
_DEFAULT_METRIC = {"classification": "accuracy", "multilabel": "roc_auc", "regression": "r2"}
_METRICS_FOR = {
    "classification": ("accuracy", "f1_macro", "f1_micro", "mirex_key"),
    "multilabel": ("roc_auc", "average_precision", "f1_macro", "f1_micro"),
    "regression": ("r2",),
}


@dataclass
class ProbeConfig:
    """Hyper-parameters of one probe (defaults: MARBLE's base configs)."""

    task: str = "classification"  # "classification" | "multilabel" | "regression"
    metric: str | None = None  # monitored on valid and reported on test; None -> the task's default
    hidden_dim: int = 512  # units of the single hidden layer; 0 -> linear probe
    dropout: float = 0.2  # after the hidden ReLU
    layer: str | int | None = "all"  # for [N, L, D] features: "all" (learned softmax weights) or a layer index
    lr: float = 1e-3  # Adam learning rate (MARBLE grid: 1e-2, 5e-3, 1e-3, 5e-4, 1e-4)
    weight_decay: float = 0.0  # Adam L2 penalty
    batch_size: int = 64
    max_epochs: int = 100
    early_stop_patience: int = 10  # epochs without a better valid metric before stopping
    lr_patience: int = 5  # ReduceLROnPlateau patience (epochs)
    lr_factor: float = 0.1  # ReduceLROnPlateau factor
    standardize: bool = False  # z-score features with train statistics (MARBLE: off)
    num_classes: int | None = None  # classification: None -> 1 + the largest label seen in any split
    seed: int = 1234  # init, shuffling and dropout
    num_threads: int | None = 1  # torch intra-op threads while training (restored after); None keeps torch's.
    # One thread is fastest for probe-sized matmuls, and on a shared CPU more threads can be 20x slower.


@dataclass
class ProbeResult:
    """Outcome of :func:`train_probe`."""

    metric: str
    valid_score: float  # best valid score (the epoch whose weights were kept)
    test_score: float | None  # test score with those weights; None without a test split
    best_epoch: int  # 1-based
    epochs_run: int
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, train_loss, valid_score, lr
    layer_weights: np.ndarray | None = None  # softmax layer weights [L] when layer="all"
    model: object = None  # the trained torch module (eval mode)
    config: ProbeConfig | None = None
    preprocess: dict = field(default_factory=dict)  # layer picked and train mean/std, applied again by predict()

    def predict(self, features) -> np.ndarray:
        """Outputs of the kept model on ``features`` (same layout as the training features): class probabilities
        ``[N, K]``, label probabilities ``[N, K]`` or regression values ``[N, D]``."""
        return _predict(self.model, _preprocess(_as_features(features, "features"), self.preprocess), self.config.task)


@dataclass
class LayerwiseResult:
    """Outcome of :func:`probe_layers`: one probe per layer."""

    metric: str
    test_scores: np.ndarray  # [L] (NaN without a test split)
    valid_scores: np.ndarray  # [L]
    best_layer: int  # argmax of the valid scores (pick layers on valid, never on test)
    results: list[ProbeResult]


# ---------------------------------------------------------------------------------------------- helpers


def _as_features(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim not in (2, 3):
        raise ValueError(f"{name} must be [N, D] or [N, L, D], got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN/inf values")
    return a


def _as_targets(y, task: str, n: int, name: str) -> np.ndarray:
    a = np.asarray(y)
    if a.shape[0] != n:
        raise ValueError(f"{name}: {a.shape[0]} targets for {n} feature rows")
    if task == "classification":
        integral = a.dtype.kind in "iu" or (a.dtype.kind == "f" and bool(np.all(a == np.round(a))))
        if a.ndim != 1 or not integral:
            raise ValueError(f"{name}: classification targets must be integer labels [N], got {a.dtype} {a.shape}")
        a = a.astype(np.int64)
        if (a < 0).any():
            raise ValueError(f"{name}: negative class labels")
    elif task == "multilabel":
        if a.ndim != 2 or not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name}: multilabel targets must be a 0/1 matrix [N, K], got shape {a.shape}")
        a = a.astype(np.float32)
    else:
        a = a.astype(np.float32)
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2 or not np.isfinite(a).all():
            raise ValueError(f"{name}: regression targets must be finite [N] or [N, D], got shape {a.shape}")
    return a


def _group_mean(values: np.ndarray, targets: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray]:
    """Average per-row predictions within each group (track); one target row per group (its first)."""
    g = np.asarray(groups)
    if g.shape[0] != values.shape[0]:
        raise ValueError(f"groups has {g.shape[0]} entries for {values.shape[0]} rows")
    uniq, first, inv = np.unique(g, return_index=True, return_inverse=True)
    sums = np.zeros((len(uniq),) + values.shape[1:], np.float64)
    np.add.at(sums, inv, values)
    counts = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    return sums / counts.reshape(-1, *([1] * (values.ndim - 1))), targets[first]


#: public name: average per-row outputs per track (MARBLE's scatter_mean) -> (per-group values, per-group targets)
group_mean = _group_mean


def _preprocess(x: np.ndarray, prep: dict) -> np.ndarray:
    """Apply the layer choice and standardisation fitted on the training split."""
    if prep.get("layer") is not None:
        if x.ndim != 3:
            raise ValueError(f"features must be [N, L, D] like the training features, got shape {x.shape}")
        x = x[:, prep["layer"], :]
    if prep.get("mean") is not None:
        x = (x - prep["mean"]) / prep["std"]
    return x


def score(metric: str, targets: np.ndarray, outputs: np.ndarray) -> float:
    """Score probe outputs (probabilities or values, see :meth:`ProbeResult.predict`) with a named metric."""
    if metric == "accuracy":
        return M.accuracy(targets, outputs)
    if metric in ("f1_macro", "f1_micro"):
        avg = metric.split("_")[1]
        if targets.ndim == 2:  # multi-label: threshold probabilities at 0.5
            return M.f1(targets, (outputs > 0.5).astype(int), average=avg)
        return M.f1(targets, outputs.argmax(axis=1), average=avg)
    if metric == "mirex_key":
        return M.mirex_key_score([int(t) for t in targets], [int(p) for p in outputs.argmax(axis=1)])
    if metric == "roc_auc":
        return M.roc_auc(targets, outputs)
    if metric == "average_precision":
        return M.average_precision(targets, outputs)
    if metric == "r2":
        return M.r2(targets, outputs)
    raise ValueError(f"unknown metric {metric!r}")


def _build(cfg: ProbeConfig, in_shape: tuple[int, ...], out_dim: int):
    import torch
    from torch import nn

    class Probe(nn.Module):
        """[B, D] or [B, L, D] -> [B, out_dim] logits (or values)."""

        def __init__(self):
            super().__init__()
            d = in_shape[-1]
            self.layer_logits = nn.Parameter(torch.zeros(in_shape[0])) if len(in_shape) == 2 else None
            if cfg.hidden_dim > 0:
                self.head = nn.Sequential(
                    nn.Linear(d, cfg.hidden_dim), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden_dim, out_dim)
                )
            else:
                self.head = nn.Linear(d, out_dim)

        def forward(self, x):
            if self.layer_logits is not None:
                w = torch.softmax(self.layer_logits, dim=0)
                x = (x * w[None, :, None]).sum(dim=1)  # [B, L, D] -> [B, D]
            return self.head(x)

    return Probe()


def _predict(model, x: np.ndarray, task: str, batch: int = 4096) -> np.ndarray:
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            z = model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch])))
            if task == "classification":
                z = torch.softmax(z, dim=-1)
            elif task == "multilabel":
                z = torch.sigmoid(z)
            outs.append(z.numpy())
    return np.concatenate(outs).astype(np.float64)


def _evaluate(model, x, y, groups, cfg: ProbeConfig, metric: str) -> float:
    out = _predict(model, x, cfg.task)
    if groups is not None:
        out, y = _group_mean(out, y, groups)
    return score(metric, y, out)


# ---------------------------------------------------------------------------------------------- training


def train_probe(
    train: tuple,
    valid: tuple,
    test: tuple | None = None,
    config: ProbeConfig | None = None,
    *,
    valid_groups: Sequence | None = None,
    test_groups: Sequence | None = None,
) -> ProbeResult:
    """Train one probe on ``train = (features, targets)``, early-stop on ``valid``, score ``test``.

    Args:
        train / valid / test: ``(features [N, D] or [N, L, D], targets)``; see the module doc for target layouts.
        config: :class:`ProbeConfig` (defaults follow MARBLE).
        valid_groups / test_groups: optional track id per row; predictions are averaged per track before scoring.

    Returns:
        :class:`ProbeResult` with the best valid score, the test score of the same weights, and the history.
    """
    import torch

    cfg = copy.deepcopy(config) if config is not None else ProbeConfig()
    if cfg.task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {cfg.task!r}")
    metric = cfg.metric or _DEFAULT_METRIC[cfg.task]
    if metric not in _METRICS_FOR[cfg.task]:
        raise ValueError(f"metric {metric!r} does not fit task {cfg.task!r} (choose from {_METRICS_FOR[cfg.task]})")
    if cfg.batch_size < 1 or cfg.max_epochs < 1 or cfg.hidden_dim < 0:
        raise ValueError("batch_size and max_epochs must be >= 1 and hidden_dim >= 0")

    splits = {"train": train, "valid": valid} | ({"test": test} if test is not None else {})
    data = {}
    for name, pair in splits.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"{name} must be a (features, targets) pair")
        x = _as_features(pair[0], f"{name} features")
        data[name] = (x, _as_targets(pair[1], cfg.task, x.shape[0], f"{name} targets"))
    shapes = {n: d[0].shape[1:] for n, d in data.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"feature shapes differ between splits: {shapes}")
    if cfg.task != "classification":
        widths = {n: d[1].shape[1] for n, d in data.items()}
        if len(set(widths.values())) != 1:
            raise ValueError(f"target widths differ between splits: {widths}")

    # Pick one layer up front, or keep [N, L, D] for the learned weighted sum.
    prep: dict = {}
    if data["train"][0].ndim == 3 and cfg.layer != "all":
        n_layers = data["train"][0].shape[1]
        if cfg.layer is None or not isinstance(cfg.layer, (int, np.integer)) or not -n_layers <= cfg.layer < n_layers:
            raise ValueError(f"layer must be 'all' or an index into {n_layers} layers, got {cfg.layer!r}")
        prep["layer"] = int(cfg.layer)
    if cfg.standardize:
        x_sel = _preprocess(data["train"][0], prep)
        prep["mean"] = x_sel.mean(axis=0, keepdims=True)
        prep["std"] = x_sel.std(axis=0, keepdims=True) + 1e-6
    data = {n: (_preprocess(x, prep), y) for n, (x, y) in data.items()}

    if cfg.task == "classification":
        seen = max(int(d[1].max()) for d in data.values()) + 1
        out_dim = cfg.num_classes or seen
        if out_dim < seen:
            raise ValueError(f"num_classes={cfg.num_classes} but labels go up to {seen - 1}")
    else:
        out_dim = data["train"][1].shape[1]

    x_tr, y_tr = data["train"]
    in_shape = x_tr.shape[1:]
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        result = _fit(cfg, metric, data, in_shape, out_dim, valid_groups, test_groups)
    finally:
        torch.set_num_threads(threads)
    result.preprocess = prep
    return result


def _fit(cfg, metric, data, in_shape, out_dim, valid_groups, test_groups) -> ProbeResult:
    import torch

    x_tr, y_tr = data["train"]
    with torch.random.fork_rng(devices=[]):  # do not disturb the caller's global RNG
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        model = _build(cfg, in_shape, out_dim)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience)
        if cfg.task == "classification":
            loss_fn = torch.nn.CrossEntropyLoss()
        elif cfg.task == "multilabel":
            loss_fn = torch.nn.BCEWithLogitsLoss()
        else:
            loss_fn = torch.nn.MSELoss()
        xt, yt = torch.from_numpy(np.ascontiguousarray(x_tr)), torch.from_numpy(y_tr)

        best_score, best_state, best_epoch, bad = -np.inf, None, 0, 0
        history = []
        for epoch in range(1, cfg.max_epochs + 1):
            model.train()
            perm = torch.randperm(len(xt), generator=gen)
            total, count = 0.0, 0
            for i in range(0, len(perm), cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                loss = loss_fn(model(xt[idx]), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                count += len(idx)
            v = _evaluate(model, *data["valid"], valid_groups, cfg, metric)
            sched.step(v)
            history.append({"epoch": epoch, "train_loss": total / count, "valid_score": v, "lr": opt.param_groups[0]["lr"]})
            # Strictly better only: on a plateau the earliest epoch wins, as in Lightning's EarlyStopping.
            if v > best_score:
                best_score, best_epoch, bad = v, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad += 1
                if bad >= cfg.early_stop_patience:
                    break
        if best_state is None:
            raise ValueError(f"probe: the valid {metric} was never a number (all NaN); check the valid split")
        model.load_state_dict(best_state)
        model.eval()
        test_score = _evaluate(model, *data["test"], test_groups, cfg, metric) if "test" in data else None

    layer_w = None
    if getattr(model, "layer_logits", None) is not None:
        layer_w = torch.softmax(model.layer_logits.detach(), dim=0).numpy()
    log.info(
        "probe %s/%s: valid %.4f (epoch %d of %d), test %s",
        cfg.task, metric, best_score, best_epoch, len(history), "n/a" if test_score is None else f"{test_score:.4f}",
    )
    return ProbeResult(
        metric=metric,
        valid_score=float(best_score),
        test_score=None if test_score is None else float(test_score),
        best_epoch=best_epoch,
        epochs_run=len(history),
        history=history,
        layer_weights=layer_w,
        model=model,
        config=cfg,
    )


def probe_layers(
    train: tuple,
    valid: tuple,
    test: tuple | None = None,
    config: ProbeConfig | None = None,
    *,
    layers: Sequence[int] | None = None,
    valid_groups: Sequence | None = None,
    test_groups: Sequence | None = None,
) -> LayerwiseResult:
    """Layer-wise probing: one probe per layer of ``[N, L, D]`` features (same seed and settings for each).

    Returns per-layer valid and test scores (indexed by layer; layers not in ``layers`` are NaN) and the best layer by
    valid score.
    """
    x = _as_features(train[0], "train features")
    if x.ndim != 3:
        raise ValueError(f"probe_layers needs [N, L, D] features, got shape {x.shape}")
    n_layers = x.shape[1]
    layers = list(range(n_layers)) if layers is None else [int(i) for i in layers]
    if not layers or any(not 0 <= i < n_layers for i in layers):
        raise ValueError(f"layers must be indices in 0..{n_layers - 1}, got {layers}")
    base = copy.deepcopy(config) if config is not None else ProbeConfig()
    valid_scores = np.full(n_layers, np.nan)
    test_scores = np.full(n_layers, np.nan)
    results = []
    for i in layers:
        cfg = dataclasses.replace(base, layer=i)
        r = train_probe(train, valid, test, cfg, valid_groups=valid_groups, test_groups=test_groups)
        valid_scores[i] = r.valid_score
        if r.test_score is not None:
            test_scores[i] = r.test_score
        results.append(r)
        log.info("layer %d: valid %.4f test %.4f", i, r.valid_score, test_scores[i])
    best = int(np.nanargmax(valid_scores))
    return LayerwiseResult(results[0].metric, test_scores, valid_scores, best, results)

