"""Evaluation metrics for probing and generation, in plain numpy (equal to scikit-learn's; tested against it).

Shapes: single-label classification takes ``y_true [N]`` (int labels) and ``y_pred [N]`` (labels) or ``[N, K]``
(scores; argmax is taken). Multi-label takes ``y_true [N, K]`` in {0, 1} and ``y_score [N, K]`` (any monotone score:
logits or probabilities). Regression takes ``[N]`` or ``[N, D]``.

Keys: :func:`parse_key` reads labels such as ``"C major"``, ``"a minor"``, ``"Bb major"``, ``"F# minor"``,
``"B- major"`` (music21 spelling), ``"A:min"`` / ``"Eb:maj"`` (mir_eval/JAMS), ``"Ebm"`` and bare tonics (upper case
= major, lower case = minor, music21's convention). Class index ``12 * is_minor + pitch_class`` is used for 24-way
key classification (:func:`key_index`, :func:`key_name`).
"""

from __future__ import annotations

import logging
import re
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)
_WARNED: set[str] = set()

__all__ = [
    "accuracy",
    "f1",
    "roc_auc",
    "average_precision",
    "r2",
    "parse_key",
    "key_index",
    "key_name",
    "key_score",
    "mirex_key_score",
    "beat_f_measure",
]


# ------------------------------------------------------------------------------------ classification


def _labels_1d(y, name: str) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim == 2:
        a = a.argmax(axis=1)
    if a.ndim != 1:
        raise ValueError(f"{name} must be [N] labels or [N, K] scores, got shape {a.shape}")
    return a


def _check_len(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"y_true and y_pred have different lengths: {a.shape[0]} vs {b.shape[0]}")
    if a.shape[0] == 0:
        raise ValueError("metrics need at least one sample")


def accuracy(y_true, y_pred) -> float:
    """Fraction of exact matches. ``y_pred`` may be ``[N]`` labels or ``[N, K]`` scores (argmax)."""
    t = _labels_1d(y_true, "y_true")
    p = _labels_1d(y_pred, "y_pred")
    _check_len(t, p)
    return float(np.mean(t == p))


def f1(y_true, y_pred, average: str = "macro", threshold: float = 0.5) -> float:
    """F1 score.

    Single-label (``y_true [N]``): per-class one-vs-rest F1 over the classes present in ``y_true`` or ``y_pred``.
    Multi-label (``y_true [N, K]`` binary): ``y_pred`` is binary, or scores thresholded at ``threshold``
    (``> threshold`` is positive); classes are the K columns.
    ``average``: "macro" (unweighted mean over classes; a class with no true and no predicted sample scores 0, as
    in scikit-learn) or "micro" (F1 of the pooled counts).
    """
    if average not in ("macro", "micro"):
        raise ValueError(f"average must be 'macro' or 'micro', got {average!r}")
    t = np.asarray(y_true)
    if t.ndim == 2:  # multi-label indicator matrix
        p = np.asarray(y_pred)
        if p.shape != t.shape:
            raise ValueError(f"multi-label y_pred must have shape {t.shape}, got {p.shape}")
        _check_len(t, p)
        t = t.astype(bool)
        p = p > threshold if not np.isin(p, (0, 1)).all() else p.astype(bool)
        tp = (t & p).sum(axis=0).astype(np.float64)
        fp = (~t & p).sum(axis=0).astype(np.float64)
        fn = (t & ~p).sum(axis=0).astype(np.float64)
    else:
        t = _labels_1d(t, "y_true")
        p = _labels_1d(y_pred, "y_pred")
        _check_len(t, p)
        classes = np.union1d(t, p)
        tp = np.array([np.sum((t == c) & (p == c)) for c in classes], np.float64)
        fp = np.array([np.sum((t != c) & (p == c)) for c in classes], np.float64)
        fn = np.array([np.sum((t == c) & (p != c)) for c in classes], np.float64)
    if average == "micro":
        tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
    denom = 2 * tp + fp + fn
    scores = np.divide(2 * tp, denom, out=np.zeros_like(np.asarray(denom, np.float64)), where=denom > 0)
    return float(np.mean(scores))


# ------------------------------------------------------------------------------------ ranking (multi-label)


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (what the Mann-Whitney U statistic needs)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # Group equal values; every member of a group gets the mean of the group's positions.
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def _binary_auc(t: np.ndarray, s: np.ndarray) -> float:
    n_pos = int(t.sum())
    n_neg = len(t) - n_pos
    r = _ranks(s)
    return float((r[t].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _binary_ap(t: np.ndarray, s: np.ndarray) -> float:
    # Step-wise area under the precision-recall curve, one step per distinct score (scikit-learn's definition).
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(t)[last_of_value].astype(np.float64)
    fps = (last_of_value + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _multilabel(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true)
    s = np.asarray(y_score, dtype=np.float64)
    if t.ndim == 1:
        t, s = t[:, None], (s[:, None] if s.ndim == 1 else s)
    if t.shape != s.shape or t.ndim != 2:
        raise ValueError(f"y_true and y_score must both be [N, K] (or [N]); got {t.shape} and {s.shape}")
    if t.shape[0] == 0:
        raise ValueError("metrics need at least one sample")
    if not np.isin(t, (0, 1)).all():
        raise ValueError("y_true must be binary (0/1) for ROC-AUC / average precision")
    if not np.isfinite(s).all():
        raise ValueError("y_score has NaN/inf values")
    return t.astype(bool), s


def _per_label(fn, y_true, y_score, average: str | None, need_neg: bool, name: str):
    t, s = _multilabel(y_true, y_score)
    if average == "micro":
        t, s = t.reshape(-1, 1), s.reshape(-1, 1)
    elif average not in ("macro", None):
        raise ValueError(f"average must be 'macro', 'micro' or None, got {average!r}")
    scores = np.full(t.shape[1], np.nan)
    for k in range(t.shape[1]):
        n_pos = t[:, k].sum()
        # A label without positives (or, for AUC, without negatives) has no defined score: skip it, as MARBLE's
        # small test splits would otherwise crash on rare tags.
        if n_pos == 0 or (need_neg and n_pos == len(t)):
            continue
        scores[k] = fn(t[:, k], s[:, k])
    valid = ~np.isnan(scores)
    if not valid.any():
        raise ValueError(f"{name}: no label has both positive and negative samples")
    if average is None:
        return scores
    if (~valid).any():
        why = "no positive or no negative sample" if need_neg else "no positive sample"
        msg = f"{name}: {int((~valid).sum())} of {len(scores)} labels skipped ({why})"
        if msg not in _WARNED:  # a probe evaluates every epoch on the same split: say it once
            _WARNED.add(msg)
            log.warning(msg)
    return float(scores[valid].mean())


def roc_auc(y_true, y_score, average: str | None = "macro"):
    """Area under the ROC curve (exact, tie-aware rank statistic).

    ``average``: "macro" (mean over labels), "micro" (all label decisions pooled) or ``None`` (``[K]`` array, NaN
    for labels with a single class). Labels with only one class in ``y_true`` are skipped (a warning names how many).
    """
    return _per_label(_binary_auc, y_true, y_score, average, need_neg=True, name="roc_auc")


def average_precision(y_true, y_score, average: str | None = "macro"):
    """Average precision (area under the step precision-recall curve), per label then averaged like :func:`roc_auc`.
    Labels without positives are skipped."""
    return _per_label(_binary_ap, y_true, y_score, average, need_neg=False, name="average_precision")


# ------------------------------------------------------------------------------------ regression


def r2(y_true, y_pred, multioutput: str = "uniform_average"):
    """Coefficient of determination per output dimension, averaged (``"uniform_average"``) or as an array
    (``"raw_values"``). A constant target scores 1.0 if predicted exactly, else 0.0 (scikit-learn's convention)."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred shapes differ: {t.shape} vs {p.shape}")
    if t.ndim == 1:
        t, p = t[:, None], p[:, None]
    if t.ndim != 2 or t.shape[0] < 2:
        raise ValueError(f"r2 needs [N] or [N, D] with N >= 2, got {np.asarray(y_true).shape}")
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        raise ValueError("r2: inputs have NaN/inf values")
    ss_res = ((t - p) ** 2).sum(axis=0)
    ss_tot = ((t - t.mean(axis=0)) ** 2).sum(axis=0)
    scores = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.where(ss_res == 0, 1.0, 0.0))
    if multioutput == "raw_values":
        return scores
    if multioutput != "uniform_average":
        raise ValueError(f"multioutput must be 'uniform_average' or 'raw_values', got {multioutput!r}")
    return float(scores.mean())


# ------------------------------------------------------------------------------------ keys

_PC = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
_NAMES = ["C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
_KEY_RE = re.compile(r"^\s*(?P<tonic>[A-Ga-g])(?P<acc>[#b\-♯♭]*)\s*[:_]?\s*(?P<mode>[A-Za-z]*)\s*$")
_MAJOR = {"major", "maj", "ionian"}
_MINOR = {"minor", "min", "aeolian"}


def parse_key(label) -> tuple[int, str]:
    """Key label -> ``(tonic pitch class 0..11, "major" | "minor")``.

    Accepted: ``"C major"``, ``"a minor"``, ``"Bb major"``, ``"F# minor"``, ``"B- major"`` (music21), ``"Eb:maj"``,
    ``"A:min"``, ``"Ebm"``, ``"C#"`` (upper-case bare tonic = major), ``"f#"`` (lower-case bare tonic = minor), and
    class indices 0..23 (``12 * is_minor + pitch_class``). A mode word always wins over the letter's case.
    Anything else (modal keys such as "D dorian", "N", "") raises ``ValueError``.
    """
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        if not 0 <= int(label) < 24:
            raise ValueError(f"key index must be in 0..23, got {label}")
        return int(label) % 12, ("minor" if label >= 12 else "major")
    if not isinstance(label, str):
        raise ValueError(f"cannot parse key label {label!r}")
    m = _KEY_RE.match(label)
    if m is None:
        raise ValueError(f"cannot parse key label {label!r} (expected e.g. 'C major', 'a minor', 'Bb:maj')")
    tonic, acc, word = m.group("tonic"), m.group("acc"), m.group("mode")
    pc = _PC[tonic.lower()]
    for ch in acc:
        pc += 1 if ch in "#♯" else -1
    if word == "":
        mode = "minor" if tonic.islower() else "major"
    elif word == "M" or word.lower() in _MAJOR:
        mode = "major"
    elif word == "m" or word.lower() in _MINOR:
        mode = "minor"
    else:
        raise ValueError(f"cannot parse key label {label!r}: mode {word!r} is neither major nor minor")
    return pc % 12, mode


def key_index(label) -> int:
    """24-class index of a key label: ``12 * is_minor + pitch_class`` (C major 0, A minor 21)."""
    pc, mode = parse_key(label)
    return pc + (12 if mode == "minor" else 0)


def key_name(index: int) -> str:
    """Inverse of :func:`key_index`: 0 -> "C major", 21 -> "A minor" (flats for black keys except F#)."""
    pc, mode = parse_key(int(index))
    return f"{_NAMES[pc]} {mode}"


def key_score(reference, estimate) -> float:
    """MIREX weighted score of one estimated key against the reference (mir_eval's definition).

    1.0 same key; 0.5 estimate a perfect fifth ABOVE the reference in the same mode; 0.3 relative key (reference
    major and estimate its relative minor a minor third below, or reference minor and estimate its relative major a
    minor third above); 0.2 parallel key (same tonic, other mode); 0.0 otherwise.
    """
    rpc, rmode = parse_key(reference)
    epc, emode = parse_key(estimate)
    if (rpc, rmode) == (epc, emode):
        return 1.0
    if rmode == emode and (epc - rpc) % 12 == 7:
        return 0.5
    if rmode == "major" and emode == "minor" and (epc - rpc) % 12 == 9:
        return 0.3
    if rmode == "minor" and emode == "major" and (epc - rpc) % 12 == 3:
        return 0.3
    if rpc == epc:
        return 0.2
    return 0.0


def mirex_key_score(references: Sequence, estimates) -> float:
    """Mean :func:`key_score` over paired labels (strings, or 24-class indices, or ``[N, 24]`` scores)."""
    if isinstance(estimates, np.ndarray) and estimates.ndim == 2:
        estimates = estimates.argmax(axis=1)  # [N, 24] scores -> class indices
    est = estimates
    refs = list(references)
    ests = list(est)
    if len(refs) != len(ests):
        raise ValueError(f"references and estimates have different lengths: {len(refs)} vs {len(ests)}")
    if not refs:
        raise ValueError("mirex_key_score needs at least one pair")
    norm = lambda v: int(v) if isinstance(v, (np.integer, int)) and not isinstance(v, bool) else v  # noqa: E731
    return float(np.mean([key_score(norm(r), norm(e)) for r, e in zip(refs, ests)]))


# ------------------------------------------------------------------------------------ beats


def beat_f_measure(reference, estimated, tolerance: float = 0.07) -> float:
    """Beat-tracking F-measure (mir_eval ``beat.f_measure``): an estimated beat is correct when it lies within
    ``tolerance`` seconds (default 70 ms) of a reference beat, each reference matched at most once (maximum bipartite
    matching). Inputs are beat times in seconds ``[N]`` / ``[M]``. Both empty -> 1.0 (nothing to find, nothing
    found); exactly one empty -> 0.0.
    """
    ref = np.sort(np.asarray(reference, dtype=np.float64).reshape(-1))
    est = np.sort(np.asarray(estimated, dtype=np.float64).reshape(-1))
    if not (np.isfinite(ref).all() and np.isfinite(est).all()):
        raise ValueError("beat times must be finite")
    if tolerance <= 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    if ref.size == 0 and est.size == 0:
        return 1.0
    if ref.size == 0 or est.size == 0:
        return 0.0
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    hits = np.abs(ref[:, None] - est[None, :]) <= tolerance  # [N, M] candidate pairs
    if hits.sum() == 0:
        return 0.0
    match = maximum_bipartite_matching(csr_matrix(hits), perm_type="column")
    n_match = int((match >= 0).sum())
    precision, recall = n_match / est.size, n_match / ref.size
    return 0.0 if n_match == 0 else float(2 * precision * recall / (precision + recall))
