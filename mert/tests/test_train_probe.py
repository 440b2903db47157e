"""`mert probe`: features from `mert extract` joined with data-kit clip labels, probed with musiccore.eval.probe."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from mert.probe import ProbeError, load_probe_data, main, probe_features

SR = 24000
KEYS = ["C major", "A minor", "G major", "E minor"]
TONIC_HZ = {"C major": 261.63, "A minor": 220.0, "G major": 392.0, "E minor": 329.63}


@pytest.fixture(scope="module")
def fake_kit(tmp_path_factory):
    """A clips manifest in the data-kit layout: 12 clips of 1 s (tonic + fifth), splits 8/2/2, labels per clip."""
    root = tmp_path_factory.mktemp("kit")
    (root / "clips").mkdir()
    rows = []
    rng = np.random.default_rng(0)
    for i in range(12):
        key = KEYS[i % 4]
        t = np.arange(SR) / SR
        f = TONIC_HZ[key]
        wav = 0.3 * np.sin(2 * np.pi * f * t) + 0.2 * np.sin(2 * np.pi * 1.5 * f * t) + 0.01 * rng.standard_normal(SR)
        sf.write(root / "clips" / f"c{i:02d}.wav", wav.astype(np.float32), SR)
        split = "train" if i < 8 else ("valid" if i < 10 else "test")
        rows.append({"id": f"c{i:02d}", "path": f"clips/c{i:02d}.wav", "duration": 1.0, "sample_rate": SR, "key": key,
                     "meter": "3/4" if i % 2 else "4/4", "tempo_bpm": 60.0 + 5 * i,
                     "instruments": ["Flute"] if i % 3 else ["Flute", "Cello"], "split": split})
    (root / "clips" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def features(fake_kit, tmp_path_factory):
    from mert.configuration_mert import MERTConfig
    from mert.extract import ExtractOptions, extract
    from mert.modeling_mert import MERTModel

    torch.manual_seed(0)
    model = MERTModel(MERTConfig.preset("tiny")).eval()
    out = tmp_path_factory.mktemp("feats")
    extract([fake_kit / "clips" / "manifest.jsonl"], out, model, ExtractOptions(pooling="mean"))
    return out


def test_probe_data_joins_features_and_labels(fake_kit, features):
    data = load_probe_data(features, "key", fake_kit)
    x, y, groups = data.splits["train"]
    assert x.shape == (8, 3, 64) and y.shape == (8,) and len(groups) == 8
    assert set(y.tolist()) == {0, 21, 7, 16}  # C major, A minor, G major, E minor (24-class key index)
    inst = load_probe_data(features, "instrument", fake_kit)
    assert inst.classes == ["Cello", "Flute"] and inst.splits["valid"][1].shape == (2, 2)


@pytest.mark.parametrize("task,metric", [("key", "mirex_key"), ("tempo", "r2")])
def test_probe_runs_and_scores(fake_kit, features, task, metric):
    res = probe_features(features, task, datakit_root=fake_kit, max_epochs=10)
    assert res["metric"] == metric and res["n"] == {"train": 8, "valid": 2, "test": 2}
    assert np.isfinite(res["valid_score"]) and res["test_score"] is not None
    if task == "key":
        assert 0.0 <= res["test_score"] <= 1.0 and len(res["layer_weights"]) == 3


def test_probe_cli_writes_json(fake_kit, features, tmp_path, capsys):
    out = tmp_path / "res.json"
    assert main(["--features", str(features), "--task", "meter", "--datakit", str(fake_kit), "--layer", "1",
                 "--max-epochs", "5", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["metric"] == "accuracy"
    assert "probe meter (accuracy)" in capsys.readouterr().out


def test_probe_errors(fake_kit, tmp_path):
    with pytest.raises(ProbeError, match="mert extract"):
        load_probe_data(tmp_path, "key", fake_kit)
    with pytest.raises(ProbeError, match="unknown task"):
        probe_features(tmp_path, "genre", datakit_root=fake_kit)
