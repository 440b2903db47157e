"""Every YAML in configs/ loads into the typed schema, validates, opens with a comment block and keeps the spec's numbers."""

from pathlib import Path

import pytest

from musiccore.config import ConfigError
from mert.train import load_train_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_documents_itself(path):
    cfg = load_train_config(path)
    head = path.read_text().splitlines()[:4]
    assert all(line.startswith("#") for line in head), "each YAML opens with a comment block"
    text = path.read_text()
    assert "Launch" in text and "Hardware" in text
    assert cfg.model.num_frames(cfg.data.max_sample_size) > 0


def test_expected_config_set():
    assert {p.stem for p in CONFIGS} >= {"tiny", "mert_v0_95m", "mert_v1_95m", "mert_v1_330m"}


def test_paper_hyperparameters():
    c95 = load_train_config(CONFIGS[0].parent / "mert_v1_95m.yaml")
    c330 = load_train_config(CONFIGS[0].parent / "mert_v1_330m.yaml")
    for c in (c95, c330):
        assert (c.optim.adam_beta1, c.optim.adam_beta2, c.optim.adam_eps, c.optim.weight_decay) == (0.9, 0.98, 1e-6, 0.01)
        assert c.optim.warmup_steps == 32000 and c.trainer.max_steps == 400000
        assert (c.model.mask_prob, c.model.mask_length, c.model.logit_temp) == (0.8, 5, 0.1)
        assert (c.loss.features_pen_weight, c.loss.cqt_weight, c.loss.mixture_prob) == (10.0, 1.0, 0.5)
        assert (c.teacher.kind, c.teacher.encodec_bandwidth, c.model.num_codebooks) == ("encodec", 6.0, 8)
        assert (c.teacher.cqt_bins, c.teacher.cqt_bins_per_octave, c.teacher.cqt_fmin) == (336, 48, 32.7)
        assert c.trainer.precision == "fp16" and c.data.min_sample_size == 72000
    assert (c95.model.hidden_size, c95.model.num_hidden_layers, c95.model.do_stable_layer_norm) == (768, 12, False)
    assert (c95.optim.lr, c95.optim.clip_norm, c95.model.final_dim, c95.model.feature_grad_mult) == (5e-4, 10.0, 64, 0.1)
    assert (c95.data.max_sample_size, c95.data.max_tokens, c95.trainer.update_freq) == (120000, 1800000, 1)
    assert (c95.model.layerdrop, c95.model.hidden_dropout, c95.loss.noise_len_max, c95.trainer.save_steps) == (0.05, 0.1, 24000, 25000)
    assert (c330.model.hidden_size, c330.model.num_hidden_layers, c330.model.do_stable_layer_norm) == (1024, 24, True)
    assert (c330.optim.lr, c330.optim.clip_norm, c330.model.final_dim, c330.model.feature_grad_mult) == (1.5e-3, 1.0, 128, 1.0)
    assert (c330.data.max_sample_size, c330.data.max_tokens, c330.trainer.update_freq) == (122880, 920000, 8)
    assert (c330.model.layerdrop, c330.model.hidden_dropout, c330.loss.noise_len_max, c330.trainer.save_steps) == (0.0, 0.0, 36000, 5000)
    assert c330.model.attention_relax == 32.0


def test_bad_overrides_fail_loudly():
    tiny = CONFIGS[0].parent / "tiny.yaml"
    with pytest.raises(ConfigError):
        load_train_config(tiny, ["optim.lrr=1.0"])  # typo
    with pytest.raises(ConfigError, match="num_codebooks"):
        load_train_config(tiny, ["model.num_codebooks=3"])
    with pytest.raises(ConfigError, match="sample_rate"):
        load_train_config(tiny, ["teacher.sample_rate=16000"])
    with pytest.raises(ConfigError, match="max_sample_size"):
        load_train_config(tiny, ["data.max_sample_size=48001"])
