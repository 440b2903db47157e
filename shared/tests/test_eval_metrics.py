"""musiccore.eval.metrics against scikit-learn (the peer), plus the MIREX key score and key parsing."""

import numpy as np
import pytest
from sklearn import metrics as skm

from musiccore.eval import metrics as M


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_accuracy_and_f1_equal_sklearn(rng):
    y = rng.integers(0, 5, 300)
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, 6, 300))  # class 5 only predicted, never true
    assert M.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p))
    for avg in ("macro", "micro"):
        assert M.f1(y, p, average=avg) == pytest.approx(skm.f1_score(y, p, average=avg, zero_division=0))
    # [N, K] scores are argmax-ed.
    scores = np.eye(6)[p] + 0.01 * rng.random((300, 6))
    assert M.accuracy(y, scores) == M.accuracy(y, p)
    assert M.accuracy([1, 2, 3], [1, 2, 0]) == pytest.approx(2 / 3)


def test_multilabel_f1_equals_sklearn(rng):
    y = (rng.random((200, 7)) < 0.3).astype(int)
    s = np.clip(y * 0.6 + rng.random((200, 7)) * 0.6, 0, 1)
    yhat = (s > 0.5).astype(int)
    for avg in ("macro", "micro"):
        ref = skm.f1_score(y, yhat, average=avg, zero_division=0)
        assert M.f1(y, yhat, average=avg) == pytest.approx(ref)
        assert M.f1(y, s, average=avg) == pytest.approx(ref)  # scores thresholded at 0.5


def test_roc_auc_and_ap_equal_sklearn_with_ties(rng):
    y = (rng.random((150, 6)) < 0.35).astype(int)
    s = np.round(y * 0.5 + rng.random((150, 6)), 1)  # rounding makes many ties
    assert M.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s, average="macro"))
    assert M.roc_auc(y, s, average="micro") == pytest.approx(skm.roc_auc_score(y, s, average="micro"))
    np.testing.assert_allclose(M.roc_auc(y, s, average=None), skm.roc_auc_score(y, s, average=None))
    assert M.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s, average="macro"))
    assert M.average_precision(y, s, average="micro") == pytest.approx(
        skm.average_precision_score(y, s, average="micro")
    )
    # Binary [N] input.
    assert M.roc_auc(y[:, 0], s[:, 0]) == pytest.approx(skm.roc_auc_score(y[:, 0], s[:, 0]))
    assert M.average_precision(y[:, 0], s[:, 0]) == pytest.approx(skm.average_precision_score(y[:, 0], s[:, 0]))
    # Perfect and inverted rankings.
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert M.roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0


def test_ranking_metrics_skip_single_class_labels(rng):
    y = (rng.random((80, 4)) < 0.5).astype(int)
    y[:, 2] = 0  # no positives: undefined, skipped
    s = rng.random((80, 4))
    keep = [0, 1, 3]
    assert M.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y[:, keep], s[:, keep]))
    assert M.average_precision(y, s) == pytest.approx(skm.average_precision_score(y[:, keep], s[:, keep]))
    assert np.isnan(M.roc_auc(y, s, average=None)[2])
    with pytest.raises(ValueError, match="no label"):
        M.roc_auc(np.zeros((5, 2)), rng.random((5, 2)))
    with pytest.raises(ValueError, match="binary"):
        M.roc_auc(np.full((5, 2), 2), rng.random((5, 2)))
    with pytest.raises(ValueError, match="NaN"):
        M.average_precision(y, np.full((80, 4), np.nan))
    with pytest.raises(ValueError, match=r"must both be \[N, K\]"):
        M.roc_auc(y, s[:, :3])


def test_r2_equals_sklearn(rng):
    t = rng.standard_normal((100, 2))
    p = t + 0.5 * rng.standard_normal((100, 2))
    assert M.r2(t, p) == pytest.approx(skm.r2_score(t, p))
    np.testing.assert_allclose(M.r2(t, p, multioutput="raw_values"), skm.r2_score(t, p, multioutput="raw_values"))
    assert M.r2(t[:, 0], p[:, 0]) == pytest.approx(skm.r2_score(t[:, 0], p[:, 0]))
    const = np.ones(10)
    assert M.r2(const, const) == 1.0 and M.r2(const, const + 1) == 0.0  # sklearn's force_finite convention
    assert M.r2(t[:, 0], np.full(100, t[:, 0].mean())) == pytest.approx(0.0)


def test_bad_metric_inputs():
    with pytest.raises(ValueError, match="lengths"):
        M.accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="at least one"):
        M.accuracy([], [])
    with pytest.raises(ValueError, match="average"):
        M.f1([1, 2], [1, 2], average="weighted")
    with pytest.raises(ValueError, match="shapes"):
        M.r2([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="NaN"):
        M.r2([1.0, 2.0], [1.0, np.nan])


@pytest.mark.parametrize(
    "label, expected",
    [
        ("C major", (0, "major")),
        ("a minor", (9, "minor")),
        ("Bb major", (10, "major")),
        ("bb minor", (10, "minor")),
        ("F# minor", (6, "minor")),
        ("B- major", (10, "major")),  # music21 spelling
        ("Eb:maj", (3, "major")),
        ("A:min", (9, "minor")),
        ("Ebm", (3, "minor")),
        ("C#", (1, "major")),
        ("f#", (6, "minor")),
        ("c Major", (0, "major")),  # the mode word wins over the letter's case
        ("Cb major", (11, "major")),
        ("G♯ minor", (8, "minor")),
        (21, (9, "minor")),
    ],
)
def test_parse_key(label, expected):
    assert M.parse_key(label) == expected


@pytest.mark.parametrize("bad", ["", "N", "H major", "D dorian", "C majorr", "C# minor!", 24, -1, None, 3.5])
def test_parse_key_rejects(bad):
    with pytest.raises(ValueError):
        M.parse_key(bad)


def test_key_index_roundtrip():
    for i in range(24):
        assert M.key_index(M.key_name(i)) == i
    assert M.key_index("C major") == 0 and M.key_index("A minor") == 21
    assert M.key_name(10) == "Bb major" and M.key_name(18) == "F# minor"


def test_mirex_weighted_key_score():
    ks = M.key_score
    assert ks("C major", "C major") == 1.0
    assert ks("C major", "G major") == 0.5  # fifth above
    assert ks("a minor", "e minor") == 0.5
    assert ks("C major", "F major") == 0.0  # a fifth below does not count (mir_eval / MIREX definition)
    assert ks("C major", "a minor") == 0.3  # relative minor
    assert ks("a minor", "C major") == 0.3  # relative major
    assert ks("C major", "c minor") == 0.2  # parallel
    assert ks("c minor", "C major") == 0.2
    assert ks("C major", "D major") == 0.0
    assert ks("C major", "e minor") == 0.0
    refs = ["C major", "C major", "a minor", "C major", "F# minor"]
    ests = ["C major", "G major", "C major", "c minor", "Bb major"]
    assert M.mirex_key_score(refs, ests) == pytest.approx((1 + 0.5 + 0.3 + 0.2 + 0) / 5)
    # Class indices and [N, 24] scores.
    idx = [M.key_index(k) for k in ests]
    assert M.mirex_key_score(refs, idx) == pytest.approx(0.4)
    assert M.mirex_key_score([M.key_index(k) for k in refs], np.eye(24)[idx]) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="lengths"):
        M.mirex_key_score(refs, ests[:2])
    with pytest.raises(ValueError, match="parse"):
        M.mirex_key_score(["C major"], ["C lydian"])
