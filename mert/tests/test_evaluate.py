"""`mert eval`: task configs, feature cache (a rerun only probes), baselines, outputs, frame-level tasks, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from mert import evaluate as E
from mert.configuration_mert import MERTConfig
from mert.modeling_mert import MERTModel
from musiccore.config import ConfigError
from musiccore.eval.metrics import beat_f_measure

SR = 24000
FAST = ["probe.max_epochs=3", "probe.hidden_dim=32"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("m") / "encoder"
    MERTModel(MERTConfig.preset("tiny")).save_pretrained(d)
    return d


def make_gtzan(root, per_split=(("train", 6), ("valid", 3), ("test", 3)), seconds=1.0):
    """A GTZAN-layout folder: genres differ by tone pitch, so a probe has something to find."""
    rng = np.random.default_rng(0)
    genres = ["blues", "classical", "rock"]
    n = 0
    for split, count in per_split:
        lines = []
        for i in range(count):
            g = genres[i % 3]
            line = f"{g}/{g}.{n:05d}.wav"
            t = np.arange(int(seconds * SR)) / SR
            x = 0.3 * np.sin(2 * np.pi * (220 * (1 + genres.index(g))) * t) + 0.01 * rng.standard_normal(len(t))
            (root / "genres" / g).mkdir(parents=True, exist_ok=True)
            sf.write(root / "genres" / line, x.astype(np.float32), SR)
            lines.append(line)
            n += 1
        (root / f"{split}_filtered.txt").write_text("\n".join(lines) + "\n")
    return root


def test_every_task_config_loads_and_bad_ones_are_refused(tmp_path):
    files = [p for p in E.CONFIG_DIR.glob("*.yaml") if not p.name.startswith("_")]
    tasks = {p.stem: E.load_task(p) for p in files}
    assert {"gtzan", "giantsteps", "mtt", "emo", "nsynth_instrument", "nsynth_pitch", "vocalset_singer",
            "vocalset_technique", "mtg_top50tags", "mtg_genre", "mtg_moodtheme", "mtg_instrument"} <= set(tasks)
    assert tasks["gtzan"].probe.lr == 5e-3 and tasks["gtzan"].layer == "7"  # MARBLE's per-task settings
    assert tasks["gtzan"].layer_330m == "10" and tasks["emo"].layer_330m == "10" and tasks["mtt"].layer_330m == ""
    assert tasks["emo"].audio.mode == "windows" and tasks["emo"].audio.max_s == 30
    assert {p.stem for p in E.offline_task_files()} == {f"kit_{t}" for t in
                                                         ("key", "instrument", "meter", "tempo", "beat", "melody")}
    with pytest.raises(ConfigError, match="frame-level"):
        E.load_task(E.CONFIG_DIR / "kit_key.yaml", ["label_type=beat"])
    with pytest.raises(ConfigError, match="layer must be"):
        E.load_task(E.CONFIG_DIR / "kit_key.yaml", ["layer=middle"])
    with pytest.raises(ConfigError):
        E.load_task(E.CONFIG_DIR / "kit_key.yaml", ["probe.learning_rate=1"])  # strict: unknown key


def test_normalisation_follows_marble_per_model():
    task = E.load_task(E.CONFIG_DIR / "gtzan.yaml")
    post_ln = E.Source("p", "model", None, stable_ln=False)
    pre_ln = E.Source("p", "model", None, stable_ln=True)
    assert E._normalize_for(post_ln, task) and not E._normalize_for(pre_ln, task)  # 95M/v0 on, 330M off
    # and the layer: MARBLE's GTZAN probe reads layer 7 of 95M but layer 10 of 330M
    x = np.zeros((3, 25, 4), np.float32)
    arrays = {s: {"x": x, "y": np.array([0, 1, 2]), "groups": ["a", "b", "c"], "spans": []} for s in ("train", "valid")}
    task = E.load_task(E.CONFIG_DIR / "gtzan.yaml", ["probe.max_epochs=1", "probe.hidden_dim=4"])
    assert E.probe_task(task, pre_ln, arrays, 3)["reported_layer"] == "10"
    assert E.probe_task(task, post_ln, arrays, 3)["reported_layer"] == "7"


def test_end_to_end_with_baselines_outputs_and_cache(tmp_path, model_dir, monkeypatch):
    root = make_gtzan(tmp_path / "GTZAN")
    cache = tmp_path / "cache"
    ov = [f"root={root}", "layer=2", *FAST]  # MARBLE's layer 7 does not exist in the 2-layer tiny model
    res = E.evaluate(model_dir, [E.CONFIG_DIR / "gtzan.yaml"], tmp_path / "out", ov, cache_root=cache)
    r = res[0]
    assert set(r["sources"]) == {"pretrained", "random-init", "mfcc", "chroma"}
    assert r["counts"] == {"train": 6, "valid": 3, "test": 3}
    assert r["sources"]["pretrained"]["reported_layer"] == "2" and r["sources"]["mfcc"]["reported_layer"] == "0"
    for name in ("results.json", "results.csv", "results.md", "curve_gtzan.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| gtzan | accuracy |" in md and "mfcc" in md
    # the rerun reads the cache: no extraction at all, same scores
    import mert.extract

    def no_extract(*a, **k):
        raise AssertionError("features should come from the cache")

    monkeypatch.setattr(mert.extract, "extract", no_extract)
    monkeypatch.setattr(E, "_handmade_extract", no_extract)
    again = E.evaluate(model_dir, [E.CONFIG_DIR / "gtzan.yaml"], None, ov, cache_root=cache)
    assert {k: v["test"] for k, v in again[0]["sources"].items()} == {k: v["test"] for k, v in r["sources"].items()}


def test_layer_sweep_scores_every_hidden_state(tmp_path, model_dir):
    root = make_gtzan(tmp_path / "GTZAN")
    res = E.evaluate(model_dir, [E.CONFIG_DIR / "gtzan.yaml"], None, [f"root={root}", "layer=sweep", *FAST],
                     baselines=False, cache_root=tmp_path / "c")
    layers = res[0]["sources"]["pretrained"]["layers"]
    assert set(layers) == {"0", "1", "2", "all"}  # tiny: 2 layers + encoder input, and learned weights
    assert len(layers["all"]["layer_weights"]) == 3
    best = res[0]["sources"]["pretrained"]["reported_layer"]
    assert layers[best]["valid"] == max(v["valid"] for v in layers.values())  # picked on valid


def test_bad_items_are_reported_and_the_rest_is_probed(tmp_path, model_dir):
    root = make_gtzan(tmp_path / "GTZAN")
    (root / "genres/blues/blues.00000.wav").unlink()  # missing file
    with open(root / "train_filtered.txt", "a") as f:
        f.write("polka/polka.00099.wav\n")  # unknown label
    (root / "genres/rock/rock.00002.wav").write_bytes(b"not audio")  # unreadable: extraction fails, item skipped
    res = E.evaluate(model_dir, [E.CONFIG_DIR / "gtzan.yaml"], tmp_path / "out", [f"root={root}", "layer=2", *FAST],
                     baselines=False, cache_root=tmp_path / "c")
    probs = "\n".join(res[0]["problems"])
    assert "blues/blues.00000.wav: missing audio" in probs and "polka" in probs
    assert "rock/rock.00002.wav: no features" in probs
    assert res[0]["sources"]["pretrained"]["test"] is not None
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["tasks"][0]["problems"] == res[0]["problems"]


def test_nothing_left_stops_with_a_clear_message(tmp_path, model_dir):
    root = make_gtzan(tmp_path / "GTZAN", per_split=(("train", 3), ("valid", 0), ("test", 1)))
    with pytest.raises(E.EvalError, match="no task could be evaluated.*nothing left to probe in the valid split"):
        E.evaluate(model_dir, [E.CONFIG_DIR / "gtzan.yaml"], None, [f"root={root}", "layer=2", *FAST],
                   cache_root=tmp_path / "c")


def test_frame_labels_peak_picking_and_beat_f():
    beats = [0.5, 1.0, 1.5]
    y = E.beat_targets(beats, 150, 75.0, widen=False)
    assert np.flatnonzero(y).tolist() == [38, 75, 112]  # round(t * 75)
    assert np.flatnonzero(E.beat_targets(beats, 150, 75.0, widen=True)).tolist() == [37, 38, 39, 74, 75, 76, 111, 112, 113]
    prob = np.full(150, 0.05)
    prob[[38, 75, 112]] = 0.9
    prob[[39, 76]] = 0.8  # a shoulder next to a peak is not a second beat
    est = E.pick_beats(prob, 75.0, 0.5)
    assert np.allclose(est, np.array([38, 75, 112]) / 75.0)
    assert beat_f_measure(beats, est) == 1.0
    assert beat_f_measure(beats, [0.5, 1.2]) == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert beat_f_measure([], []) == 1.0 and beat_f_measure([1.0], []) == 0.0
    # each reference matches one estimate only
    assert beat_f_measure([1.0], [0.98, 1.02]) == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    p = E.pitch_targets([(0.0, 0.5, 60), (0.5, 1.0, 62)], 75, 24000)
    centres = E.frame_centres(75, 24000)
    assert (p[centres < 0.5] == 61).all() and (p[(centres >= 0.5) & (centres < 1.0)] == 63).all()


def test_kit_frame_and_clip_tasks_share_one_extraction(tmp_path, model_dir, datakit, monkeypatch):
    monkeypatch.setenv("MUSIC_DATA_DIR", str(datakit))
    files = [E.CONFIG_DIR / f"kit_{t}.yaml" for t in ("beat", "melody", "key")]
    res = E.evaluate(model_dir, files, tmp_path / "out", FAST + ["layer=all"], baselines=False,
                     cache_root=tmp_path / "c")
    assert [r["task"] for r in res] == ["kit_beat", "kit_melody", "kit_key"]
    assert 0.0 <= res[0]["sources"]["pretrained"]["valid"] <= 1.0 and "beat_threshold" in res[0]["sources"]["pretrained"]
    folders = list((tmp_path / "c").glob("pretrained-*/*"))
    assert len(folders) == 1 and folders[0].name.startswith("datakit-") and "-frames-" in folders[0].name


# ============================================================================================ properties

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

times = st.lists(st.floats(0.0, 30.0, allow_nan=False), max_size=40)


@settings(max_examples=60, deadline=None)
@given(ref=times, est=times, shift=st.floats(-0.05, 0.05))
def test_beat_f_measure_properties(ref, est, shift):
    f = beat_f_measure(ref, est)
    assert 0.0 <= f <= 1.0
    assert f == pytest.approx(beat_f_measure(est, ref))  # symmetric: precision and recall swap
    assert f == pytest.approx(beat_f_measure(ref[::-1], est[::-1]))  # order does not matter
    if ref:
        assert beat_f_measure(ref, [t + shift for t in ref]) == 1.0  # within 70 ms: all found


@settings(max_examples=60, deadline=None)
@given(prob=st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=0, max_size=300),
       threshold=st.floats(0.0, 0.95), gap=st.floats(0.02, 1.0))
def test_pick_beats_respects_threshold_and_gap(prob, threshold, gap):
    p = np.asarray(prob)
    beats = E.pick_beats(p, 75.0, threshold, min_gap_s=gap)
    idx = np.round(beats * 75.0).astype(int)
    assert (p[idx] > threshold).all()
    assert (np.diff(idx) >= max(1, int(round(gap * 75.0)))).all()


@settings(max_examples=60, deadline=None)
@given(data=st.data(), b=st.integers(1, 4), t=st.integers(2, 120), prob=st.floats(0.0, 0.9), seed=st.integers(0, 99))
def test_span_mask_with_lengths_stays_inside_and_equal(data, b, t, prob, seed):
    from mert.loss import compute_span_mask

    lengths = data.draw(st.lists(st.integers(0, t), min_size=b, max_size=b))
    m = compute_span_mask(b, t, prob, 5, 2, np.random.default_rng(seed), lengths=lengths)
    for row, n in zip(m, lengths):
        assert not row[n:].any()
    counts = {int(row.sum()) for row, n in zip(m, lengths) if n >= 2}
    assert len(counts) <= 1 and all(c > 0 for c in counts)
    with pytest.raises(ValueError, match="lengths must be"):
        compute_span_mask(b, t, prob, 5, 2, np.random.default_rng(seed), lengths=[t + 1] * b)
