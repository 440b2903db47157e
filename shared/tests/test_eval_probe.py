"""musiccore.eval.probe: the MARBLE-style probe learns what is in the features and nothing more."""

import numpy as np
import pytest
import torch

from musiccore.eval import metrics as M
from musiccore.eval.probe import ProbeConfig, probe_layers, score, train_probe

FAST = dict(hidden_dim=64, max_epochs=30, early_stop_patience=5, lr_patience=3)
CENTRES = np.random.default_rng(99).standard_normal((4, 16)) * 3.0


def blobs(n, seed, d=16):
    """4 well separated Gaussian classes in d dimensions."""
    r = np.random.default_rng(seed)
    y = r.integers(0, 4, n)
    return (CENTRES[y, :d] + r.standard_normal((n, d))).astype(np.float32), y


def noise(n, seed, d=16, k=4):
    r = np.random.default_rng(seed)
    return r.standard_normal((n, d)).astype(np.float32), r.integers(0, k, n)


def test_separable_features_reach_high_accuracy():
    r = train_probe(blobs(400, 1), blobs(100, 2), blobs(300, 3), ProbeConfig(**FAST))
    assert r.metric == "accuracy"
    assert r.test_score > 0.95 and r.valid_score > 0.95
    assert 1 <= r.best_epoch <= r.epochs_run <= 30
    assert r.history[0]["train_loss"] > r.history[r.best_epoch - 1]["train_loss"]  # it trained
    probs = r.predict(blobs(300, 3)[0])
    assert probs.shape == (300, 4) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert M.accuracy(blobs(300, 3)[1], probs) == pytest.approx(r.test_score)


def test_noise_features_stay_at_chance():
    r = train_probe(noise(400, 1), noise(100, 2), noise(400, 3), ProbeConfig(**FAST))
    assert r.test_score < 0.4  # chance is 0.25; 400 test rows keep the spread small
    # Early stopping on valid stops long before max_epochs when nothing can be learned.
    assert r.epochs_run < 30


def test_linear_probe_and_f1_metric():
    r = train_probe(blobs(400, 1), blobs(100, 2), blobs(300, 3), ProbeConfig(hidden_dim=0, max_epochs=20, metric="f1_macro"))
    assert isinstance(r.model.head, torch.nn.Linear)
    assert r.metric == "f1_macro" and r.test_score > 0.95


def test_deterministic_with_seed_and_leaves_global_rng_alone():
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    cfg = ProbeConfig(**FAST, seed=7)
    a = train_probe(noise(200, 1), noise(60, 2), noise(60, 3), cfg)
    b = train_probe(noise(200, 1), noise(60, 2), noise(60, 3), cfg)
    assert a.history == b.history and a.test_score == b.test_score
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert torch.equal(torch.random.get_rng_state(), state)
    c = train_probe(noise(200, 1), noise(60, 2), noise(60, 3), ProbeConfig(**FAST, seed=8))
    assert c.history != a.history


def multilabel(n, seed, signal=True):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, 12)).astype(np.float32)
    w = np.random.default_rng(5).standard_normal((12, 5))
    logits = x @ w if signal else r.standard_normal((n, 5))
    return x, (logits > 0.3).astype(int)


def test_multilabel_probe_roc_auc_and_ap():
    ml = dict(FAST, task="multilabel")
    r = train_probe(multilabel(400, 1), multilabel(100, 2), multilabel(300, 3), ProbeConfig(**ml))
    assert r.metric == "roc_auc" and r.test_score > 0.9
    chance = train_probe(multilabel(400, 1, False), multilabel(100, 2, False), multilabel(300, 3, False), ProbeConfig(**ml))
    assert 0.35 < chance.test_score < 0.65
    ap = train_probe(multilabel(400, 1), multilabel(100, 2), multilabel(300, 3), ProbeConfig(**ml, metric="average_precision"))
    assert ap.metric == "average_precision" and ap.test_score > 0.8


def regression(n, seed):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, 8)).astype(np.float32)
    w = np.random.default_rng(6).standard_normal((8, 2))
    return x, (x @ w + 0.1 * r.standard_normal((n, 2))).astype(np.float32)


def test_regression_probe_r2():
    cfg = ProbeConfig(task="regression", hidden_dim=0, max_epochs=60, lr=1e-2, early_stop_patience=10)
    r = train_probe(regression(400, 1), regression(100, 2), regression(300, 3), cfg)
    assert r.metric == "r2" and r.test_score > 0.95
    assert r.predict(regression(10, 4)[0]).shape == (10, 2)


def layered(n, seed, signal_layer=1, n_layers=3):
    """[N, L, D]: the class is only in ``signal_layer``; other layers are noise."""
    x, y = blobs(n, seed)
    r = np.random.default_rng(seed + 100)
    feats = r.standard_normal((n, n_layers, 16)).astype(np.float32) * 2
    feats[:, signal_layer] = x
    return feats, y


def test_layerwise_probing_finds_the_informative_layer():
    res = probe_layers(layered(300, 1), layered(100, 2), layered(200, 3), ProbeConfig(**FAST))
    assert res.test_scores.shape == (3,) and res.best_layer == 1
    assert res.test_scores[1] > 0.9 and res.test_scores[0] < 0.5 and res.test_scores[2] < 0.5
    # A subset of layers leaves the others NaN.
    sub = probe_layers(layered(300, 1), layered(100, 2), None, ProbeConfig(**FAST), layers=[1])
    assert np.isnan(sub.valid_scores[[0, 2]]).all() and sub.valid_scores[1] > 0.9 and np.isnan(sub.test_scores).all()


def test_layer_all_learns_softmax_weights():
    r = train_probe(layered(300, 1), layered(100, 2), layered(200, 3), ProbeConfig(**FAST, layer="all"))
    assert r.layer_weights.shape == (3,) and r.layer_weights.sum() == pytest.approx(1.0)
    assert int(np.argmax(r.layer_weights)) == 1
    assert r.test_score > 0.9
    one = train_probe(layered(300, 1), layered(100, 2), layered(200, 3), ProbeConfig(**FAST, layer=0))
    assert one.layer_weights is None and one.test_score < 0.5
    # predict() takes [N, L, D] like training and applies the same layer choice and standardisation.
    std = train_probe(layered(300, 1), layered(100, 2), layered(200, 3), ProbeConfig(**FAST, layer=1, standardize=True))
    x, y = layered(200, 3)
    assert std.test_score > 0.9
    assert M.accuracy(y, std.predict(x)) == pytest.approx(std.test_score)
    assert std.preprocess["mean"].shape == (1, 16)


def test_track_level_averaging_of_window_predictions():
    x, y = blobs(300, 3)
    groups = np.repeat(np.arange(100), 3)  # 3 windows per track
    y = y[::3].repeat(3)  # one label per track
    x = (CENTRES[y] + 2.5 * np.random.default_rng(0).standard_normal((300, 16))).astype(np.float32)
    r = train_probe(blobs(400, 1), blobs(100, 2), (x, y), ProbeConfig(**FAST), test_groups=groups)
    probs = r.predict(x)
    track_probs = probs.reshape(100, 3, 4).mean(axis=1)
    assert r.test_score == pytest.approx(M.accuracy(y[::3], track_probs))
    assert r.test_score >= M.accuracy(y, probs) - 0.02  # averaging windows helps (or at least does not hurt much)


def test_mirex_key_metric_on_key_classes():
    x, y = blobs(200, 3)
    cfg = ProbeConfig(**FAST, metric="mirex_key", num_classes=24)
    r = train_probe(blobs(400, 1), blobs(100, 2), (x, y), cfg)
    assert r.predict(x).shape == (200, 24)
    assert r.test_score == pytest.approx(M.mirex_key_score(list(y), list(r.predict(x).argmax(1))))
    assert score("mirex_key", np.array([0, 21]), np.eye(24)[[7, 0]]) == pytest.approx((0.5 + 0.3) / 2)


def test_bad_probe_inputs():
    tr, va = blobs(50, 1), blobs(20, 2)
    bad = tr[0].copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="train features contains NaN"):
        train_probe((bad, tr[1]), va)
    with pytest.raises(ValueError, match="49 targets for 50"):
        train_probe((tr[0], tr[1][:-1]), va)
    with pytest.raises(ValueError, match="feature shapes differ"):
        train_probe(tr, (va[0][:, :8], va[1]))
    with pytest.raises(ValueError, match="does not fit task"):
        train_probe(tr, va, config=ProbeConfig(metric="r2"))
    with pytest.raises(ValueError, match="task must be"):
        train_probe(tr, va, config=ProbeConfig(task="ranking"))
    with pytest.raises(ValueError, match="integer labels"):
        train_probe((tr[0], tr[1] + 0.5), va)
    with pytest.raises(ValueError, match="0/1 matrix"):
        train_probe(tr, va, config=ProbeConfig(task="multilabel"))
    with pytest.raises(ValueError, match="num_classes"):
        train_probe(tr, va, config=ProbeConfig(num_classes=2))
    with pytest.raises(ValueError, match="layer must be"):
        train_probe(layered(50, 1), layered(20, 2), config=ProbeConfig(layer=5))
    with pytest.raises(ValueError, match=r"\[N, L, D\]"):
        probe_layers(tr, va)
    with pytest.raises(ValueError, match="groups has"):
        train_probe(tr, va, config=ProbeConfig(max_epochs=1), valid_groups=np.arange(3))
