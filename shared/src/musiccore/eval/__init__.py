"""Evaluation helpers shared by the three projects.

Modules
-------
metrics    accuracy, F1, ROC-AUC, average precision, R2, MIREX key score, beat F-measure (numpy; = scikit-learn)
probe      MARBLE-style MLP/linear probe on frozen feature arrays, layer-wise probing (torch, CPU)
frechet    Fréchet distance between two embedding sets (FAD-style)
pitch      sung-pitch accuracy of a vocal track against its score notes (librosa pYIN)
abc_stats  validity statistics over a set of ABC tunes (musiccore.abc.validate)

Heavy dependencies (torch, scipy, librosa) are imported inside the functions that need them.
"""

from musiccore.eval import abc_stats, frechet, metrics, pitch, probe
from musiccore.eval.abc_stats import AbcStats, abc_validity_stats
from musiccore.eval.frechet import embedding_stats, frechet_distance, frechet_distance_from_stats
from musiccore.eval.metrics import (
    accuracy,
    average_precision,
    beat_f_measure,
    f1,
    key_index,
    key_name,
    key_score,
    mirex_key_score,
    parse_key,
    r2,
    roc_auc,
)
from musiccore.eval.pitch import PitchResult, pitch_accuracy
from musiccore.eval.probe import LayerwiseResult, ProbeConfig, ProbeResult, probe_layers, train_probe

__all__ = [
    "abc_stats", "frechet", "metrics", "pitch", "probe",
    "AbcStats", "abc_validity_stats",
    "embedding_stats", "frechet_distance", "frechet_distance_from_stats",
    "accuracy", "average_precision", "beat_f_measure", "f1", "key_index", "key_name", "key_score", "mirex_key_score",
    "parse_key", "r2", "roc_auc",
    "PitchResult", "pitch_accuracy",
    "LayerwiseResult", "ProbeConfig", "ProbeResult", "probe_layers", "train_probe",
]
