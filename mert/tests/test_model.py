"""MERTModel: parity with transformers.HubertModel, released-layout strict loading, hidden-state semantics, heads.

The helpers at the top (released-layout config and folders) are imported by test_convert.py and test_extract.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mert.configuration_mert import MERTConfig, MERTConfigError
from mert.modeling_mert import (
    CheckpointError,
    MERTForPretraining,
    MERTModel,
    compute_span_mask,
)

# ============================================================================================ released-layout fixture

# config.json of MERT-v1-95M as released (spec section 5.1), including the HF-only and MERT-specific fields.
RELEASED_95M = {
    "_name_or_path": "m-a-p/MERT-v1-95M",
    "activation_dropout": 0.0,
    "apply_spec_augment": True,
    "architectures": ["MERTModel"],
    "attention_dropout": 0.1,
    "attention_relax": -1.0,
    "auto_map": {"AutoConfig": "configuration_MERT.MERTConfig", "AutoModel": "modeling_MERT.MERTModel"},
    "bos_token_id": 1,
    "classifier_proj_size": 256,
    "conv_bias": False,
    "conv_dim": [512, 512, 512, 512, 512, 512, 512],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_pos_batch_norm": False,
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "ctc_loss_reduction": "sum",
    "ctc_zero_infinity": False,
    "deepnorm": False,
    "do_stable_layer_norm": False,
    "eos_token_id": 2,
    "feat_extract_activation": "gelu",
    "feat_extract_dropout": 0.0,
    "feat_extract_norm": "group",
    "feat_proj_dropout": 0.1,
    "feat_proj_layer_norm": True,
    "feature_extractor_cqt": False,
    "feature_extractor_cqt_bins": 336,
    "final_dropout": 0.1,
    "gradient_checkpointing": False,
    "hidden_act": "gelu",
    "hidden_dropout": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "layerdrop": 0.05,
    "mask_feature_length": 10,
    "mask_feature_prob": 0.0,
    "mask_time_length": 10,
    "mask_time_prob": 0.05,
    "model_type": "mert_model",
    "num_attention_heads": 12,
    "num_conv_pos_embedding_groups": 16,
    "num_conv_pos_embeddings": 128,
    "num_feat_extract_layers": 7,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "sample_rate": 24000,
    "torch_dtype": "float32",
    "transformers_version": "4.25.1",
    "use_weighted_layer_sum": False,
    "vocab_size": 32,
}
RELEASED_330M_DIFF = {
    "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
    "do_stable_layer_norm": True, "feat_proj_dropout": 0.0, "hidden_dropout": 0.0, "attention_dropout": 0.0,
    "activation_dropout": 0.0, "layerdrop": 0.0, "attention_relax": 32.0, "mask_time_prob": 0.075,
    "_name_or_path": "m-a-p/MERT-v1-330M",
}
# Reduced width/depth for the default suite; the conv stack keeps the released kernels/strides (stride 320, rf 400)
# and the positional conv keeps kernel 128 / 16 groups.
REDUCED = {"conv_dim": [64] * 7, "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
           "intermediate_size": 128}


def released_config(size: str = "95m", reduced: bool = True, **overrides) -> dict:
    """A released-style config.json dict (MERT-v1-95M/330M or MERT-v0 at 16 kHz), optionally at reduced size."""
    cfg = dict(RELEASED_95M)
    if size == "330m":
        cfg.update(RELEASED_330M_DIFF)
    elif size == "v0":
        cfg.update(sample_rate=16000, architectures=["HubertModel"], model_type="hubert", _name_or_path="m-a-p/MERT-v0")
        cfg.pop("auto_map")
    if reduced:
        cfg.update(REDUCED)
    cfg.update(overrides)
    return cfg


def hubert_peer(cfg: dict, seed: int = 0):
    """transformers.HubertModel configured like ``cfg`` with random (perturbed, non-trivial) weights, eval mode."""
    from transformers import HubertConfig, HubertModel

    kw = {k: v for k, v in cfg.items() if k not in ("auto_map", "model_type", "architectures", "_name_or_path")}
    kw["tie_last_hidden_states"] = True  # released semantics: last hidden state = final LN output (pre-LN)
    torch.manual_seed(seed)
    model = HubertModel(HubertConfig(**kw)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias") or "masked_spec_embed" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def released_state_dict(hf_model, weight_norm: str = "legacy") -> dict[str, torch.Tensor]:
    """HubertModel state dict with the key names of the released files (weight_g/weight_v or parametrizations)."""
    sd = {k: v.detach().clone().contiguous() for k, v in hf_model.state_dict().items()}
    if weight_norm == "legacy":
        sd = {k.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v"): v for k, v in sd.items()}
    return sd


def write_released_folder(folder: Path, cfg: dict, fmt: str = "safetensors", weight_norm: str = "legacy",
                          seed: int = 0):
    """Write config.json + model.safetensors / pytorch_model.bin in the released layout; returns the HF peer."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    hf = hubert_peer(cfg, seed)
    sd = released_state_dict(hf, weight_norm)
    if fmt == "safetensors":
        save_file(sd, str(folder / "model.safetensors"))
    else:
        torch.save(sd, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return hf


def assert_hidden_states_close(ours, theirs, atol: float = 1e-4) -> None:
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape, f"hidden state {i}: {a.shape} vs {b.shape}"
        err = float((a - b).abs().max())
        assert err <= atol, f"hidden state {i}: max abs diff {err:.3g} > {atol}"


def waveform(seconds: float, sr: int = 24000, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, int(seconds * sr), generator=g)


# ============================================================================================ parity


@pytest.mark.parametrize("size", ["95m", "330m"])
def test_parity_with_hubert_model_reduced(size):
    cfg = released_config(size)
    hf = hubert_peer(cfg)
    ours = MERTModel(MERTConfig.from_dict(cfg))
    ours.load_checkpoint_state(hf.state_dict())  # transformers 5 names: parametrizations.weight.original0/1
    ours.eval()
    x = waveform(1.0, batch=2)
    with torch.no_grad():
        a = ours(x, output_hidden_states=True)
        b = hf(x, output_hidden_states=True)
    assert len(a.hidden_states) == cfg["num_hidden_layers"] + 1
    assert_hidden_states_close(a.hidden_states, b.hidden_states)
    assert float((a.last_hidden_state - b.last_hidden_state).abs().max()) <= 1e-4
    assert a.last_hidden_state.shape == (2, 74, 64)  # 1 s at 24 kHz -> 74 frames


@pytest.mark.parametrize("size", ["95m", "330m"])
def test_parity_with_padding_mask(size):
    cfg = released_config(size)
    hf = hubert_peer(cfg, seed=1)
    ours = MERTModel(MERTConfig.from_dict(cfg))
    ours.load_checkpoint_state(hf.state_dict())
    ours.eval()
    x = waveform(0.6, batch=2, seed=3)
    mask = torch.ones_like(x, dtype=torch.long)
    mask[1, 9000:] = 0
    x[1, 9000:] = 0
    with torch.no_grad():
        a = ours(x, attention_mask=mask, output_hidden_states=True)
        b = hf(x, attention_mask=mask, output_hidden_states=True)
    real = a.frame_mask  # compare real frames (padded frames are not meaningful)
    assert real[1].sum() == ours.num_frames(9000) and bool(real[0].all())
    for i, (p, q) in enumerate(zip(a.hidden_states, b.hidden_states)):
        err = float((p - q)[real].abs().max())
        assert err <= 1e-4, f"hidden state {i}: {err}"


@pytest.mark.slow
@pytest.mark.parametrize("size", ["95m", "330m"])
def test_parity_with_hubert_model_real_size(size):
    cfg = released_config(size, reduced=False)
    hf = hubert_peer(cfg)
    ours = MERTModel(MERTConfig.from_dict(cfg))
    ours.load_checkpoint_state(hf.state_dict())
    ours.eval()
    x = waveform(2.0)
    with torch.no_grad():
        a = ours(x, output_hidden_states=True)
        b = hf(x, output_hidden_states=True)
    assert len(a.hidden_states) == {"95m": 13, "330m": 25}[size]
    assert_hidden_states_close(a.hidden_states, b.hidden_states)


# ============================================================================================ released folders


@pytest.mark.parametrize("size", ["95m", "330m", "v0"])
@pytest.mark.parametrize("fmt,weight_norm", [("safetensors", "legacy"), ("bin", "legacy"), ("safetensors", "parametrizations")])
def test_released_layout_loads_strict_and_matches(tmp_path, size, fmt, weight_norm):
    cfg = released_config(size)
    hf = write_released_folder(tmp_path / "released", cfg, fmt=fmt, weight_norm=weight_norm)
    model = MERTModel.from_pretrained(tmp_path / "released")
    assert not model.training
    assert model.config.sample_rate == (16000 if size == "v0" else 24000)
    assert model.config.frame_rate == (50.0 if size == "v0" else 75.0)
    assert model.config.do_stable_layer_norm is (size == "330m")
    # strict: every released tensor is a model tensor and vice versa
    sd = released_state_dict(hf, "legacy")
    assert set(model.state_dict()) == set(sd)
    x = waveform(0.5, sr=model.config.sample_rate)
    with torch.no_grad():
        assert_hidden_states_close(model(x, output_hidden_states=True).hidden_states,
                                   hf(x, output_hidden_states=True).hidden_states)


def test_released_config_fields_are_read():
    cfg = MERTConfig.from_dict(released_config("330m", reduced=False))
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (1024, 24, 16, 4096)
    assert cfg.do_stable_layer_norm and cfg.attention_relax == 32.0 and cfg.has_mask_embedding
    assert cfg.receptive_field == 400 and cfg.total_stride == 320
    assert cfg.num_frames(120000) == 374 and cfg.num_frames(24000) == 74 and cfg.num_frames(400) == 1
    assert cfg.num_frames(399) == 0
    with pytest.raises(MERTConfigError, match="deepnorm"):
        MERTConfig.from_dict(released_config("95m", deepnorm=True))
    with pytest.raises(MERTConfigError, match="feature_extractor_cqt"):
        MERTConfig.from_dict(released_config("95m", feature_extractor_cqt=True))
    with pytest.raises(MERTConfigError, match="divisible"):
        MERTConfig.from_dict(released_config("95m", num_attention_heads=5))


def test_wrong_checkpoint_is_a_clear_error(tmp_path):
    write_released_folder(tmp_path / "m", released_config("95m"))
    # config says 330M-style pre-LN widths: shapes no longer match the weights
    (tmp_path / "m" / "config.json").write_text(json.dumps(released_config("95m", hidden_size=128, num_attention_heads=4)))
    with pytest.raises(CheckpointError, match="shapes do not match"):
        MERTModel.from_pretrained(tmp_path / "m")
    # a missing tensor
    from safetensors.torch import load_file, save_file

    write_released_folder(tmp_path / "m2", released_config("95m"))
    sd = load_file(str(tmp_path / "m2" / "model.safetensors"))
    sd.pop("encoder.layers.0.attention.q_proj.weight")
    save_file(sd, str(tmp_path / "m2" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing 1"):
        MERTModel.from_pretrained(tmp_path / "m2")
    with pytest.raises(CheckpointError, match="not a model folder"):
        MERTModel.from_pretrained(tmp_path / "nothing")
    (tmp_path / "m3").mkdir()
    (tmp_path / "m3" / "config.json").write_text(json.dumps(released_config("95m")))
    with pytest.raises(CheckpointError, match="no weights"):
        MERTModel.from_pretrained(tmp_path / "m3")
    (tmp_path / "m3" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        MERTModel.from_pretrained(tmp_path / "m3")


def test_pickle_bin_is_not_executed(tmp_path):
    """pytorch_model.bin is read weights-only: a pickle holding arbitrary objects is refused."""
    write_released_folder(tmp_path / "m", released_config("95m"), fmt="bin")
    import argparse

    torch.save({"x": argparse.Namespace(a=1)}, tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        MERTModel.from_pretrained(tmp_path / "m")


# ============================================================================================ semantics


def test_hidden_state_semantics_pre_and_post_ln():
    for stable in (False, True):
        cfg = MERTConfig.from_dict(released_config("330m" if stable else "95m"))
        m = MERTModel(cfg).eval()
        x = waveform(0.5)
        with torch.no_grad():
            out = m(x, output_hidden_states=True)
            hs = out.hidden_states
            feats = m.feature_projection(out.extract_features)
            emb = feats + m.encoder.pos_conv_embed(feats)
            if stable:
                assert torch.allclose(hs[0], emb, atol=1e-6)  # raw proj + posconv
                raw_last = m.encoder.layers[-1](hs[-2])
                assert torch.allclose(hs[-1], m.encoder.layer_norm(raw_last), atol=1e-5)
            else:
                assert torch.allclose(hs[0], m.encoder.layer_norm(emb), atol=1e-6)
                assert torch.allclose(hs[-1], m.encoder.layers[-1](hs[-2]), atol=1e-5)
            assert torch.equal(hs[-1], out.last_hidden_state)
            # running fewer layers gives the same early states
            part = m(x, output_hidden_states=True, num_layers=1).hidden_states
            assert len(part) == 2 and torch.allclose(part[1], hs[1], atol=1e-6)


def test_too_short_input_is_a_clear_error():
    m = MERTModel(MERTConfig.preset("tiny")).eval()
    with pytest.raises(ValueError, match="shorter than one frame"):
        m(torch.zeros(1, 399))
    assert m(torch.zeros(1, 400)).last_hidden_state.shape == (1, 1, 64)
    out = m(torch.zeros(1, 4000)).last_hidden_state  # silence: finite output
    assert torch.isfinite(out).all()


def test_save_and_reload_round_trip(tmp_path):
    m = MERTForPretraining(MERTConfig.preset("tiny")).eval()
    m.save_pretrained(tmp_path / "ours")
    back = MERTForPretraining.from_pretrained(tmp_path / "ours")
    for k, v in m.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    enc = MERTModel.from_pretrained(tmp_path / "ours")  # heads dropped, encoder identical
    x = waveform(0.3)
    with torch.no_grad():
        assert torch.equal(enc(x).last_hidden_state, m(x, apply_mask=False).last_hidden_state)
    cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert cfg["model_type"] == "mert_model" and "auto_map" not in cfg


# ============================================================================================ pretraining heads


def test_pretraining_forward_outputs_and_gradients():
    cfg = MERTConfig.preset("tiny", num_codebooks=3, codebook_size=10, final_dim=8, cqt_bins=12,
                            feature_grad_mult=0.1, layerdrop=0.0, hidden_dropout=0.0, attention_dropout=0.0,
                            feat_proj_dropout=0.0)
    m = MERTForPretraining(cfg).train()
    x = waveform(1.0, batch=2)
    torch.manual_seed(0)
    out = m(x)
    t = cfg.num_frames(x.shape[1])
    assert out.projections.shape == (2, t, 3, 8)
    assert out.label_embeddings.shape == (3, 10, 8)
    assert out.cqt_pred.shape == (2, t, 12)
    assert out.extract_features.shape == (2, t, 32)
    assert out.mask_time_indices.shape == (2, t) and out.mask_time_indices.any()
    assert torch.allclose(out.features_pen, out.extract_features.pow(2).mean())
    loss = out.projections.pow(2).mean() + out.cqt_pred.mean() + out.features_pen
    loss.backward()
    assert m.label_embs_concat.grad is None  # not used by this toy loss
    assert m.feature_extractor.conv_layers[0].conv.weight.grad is not None
    assert m.masked_spec_embed.grad is not None and m.masked_spec_embed.grad.abs().sum() > 0

    # feature_grad_mult scales the gradient reaching the conv stack (features_pen excluded: it is not scaled)
    m.eval()
    grads = []
    for mult in (1.0, 0.1):
        m.config.feature_grad_mult = mult
        m.train()
        m.zero_grad()
        mask = torch.zeros(2, t, dtype=torch.bool)
        mask[:, 5:10] = True
        out = m(x, mask_time_indices=mask)
        out.last_hidden_state.sum().backward()
        grads.append(m.feature_extractor.conv_layers[-1].conv.weight.grad.clone())
    assert torch.allclose(grads[1], 0.1 * grads[0], rtol=1e-3, atol=1e-7)


def test_mask_replaces_frames_with_mask_embedding():
    m = MERTForPretraining(MERTConfig.preset("tiny")).eval()
    x = waveform(0.5)
    t = m.num_frames(x.shape[1])
    mask = torch.zeros(1, t, dtype=torch.bool)
    mask[0, 3:8] = True
    with torch.no_grad():
        a = m(x, mask_time_indices=mask, output_hidden_states=True)
        b = m(x, output_hidden_states=True)  # eval: no mask drawn
    assert b.mask_time_indices is None
    assert not torch.allclose(a.last_hidden_state, b.last_hidden_state)


def test_compute_span_mask():
    import numpy as np

    from mert import loss, modeling_mert

    # one span-mask function: the model's forward and training draw masks with the same code
    assert modeling_mert.compute_span_mask is loss.compute_span_mask
    rng = np.random.default_rng(0)
    mask = compute_span_mask(4, 374, 0.8, 5, 2, rng)
    frac = mask.mean()
    assert 0.4 < frac < 0.8  # overlapping spans: below mask_prob
    assert len(set(mask.sum(1).tolist())) == 1  # require_same_masks
    mask = compute_span_mask(2, 100, 0.8, 5, 2, rng, lengths=[100, 40])
    assert not mask[1, 40:].any() and mask[1, :40].any()
    assert mask[0].sum() == mask[1].sum()  # padded row: equal counts still hold
    mask = compute_span_mask(1, 20, 0.0, 5, 2, rng)
    assert 5 <= mask.sum() <= 10  # min_masks spans of 5 frames


def test_pretraining_forward_masks_respect_padding_and_torch_seed():
    cfg = MERTConfig.preset("tiny")
    torch.manual_seed(0)
    m = MERTForPretraining(cfg).train()
    x = torch.randn(2, 24000)
    am = torch.ones(2, 24000, dtype=torch.long)
    am[1, 12000:] = 0
    torch.manual_seed(5)
    a = m(x, attention_mask=am).mask_time_indices
    torch.manual_seed(5)
    b = m(x, attention_mask=am).mask_time_indices
    assert torch.equal(a, b)  # masks follow torch's seed
    t_real = int(a.shape[1] * 12000 / 24000) - 1
    assert not a[1, t_real + 1 :].any() and a[1].any()


def test_gradient_checkpointing_same_result():
    cfg = MERTConfig.preset("tiny", hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0)
    m = MERTModel(cfg).train()
    x = waveform(0.3)
    a = m(x).last_hidden_state
    a.sum().backward()
    g1 = m.encoder.layers[0].attention.q_proj.weight.grad.clone()
    m.zero_grad()
    m.gradient_checkpointing_enable()
    b = m(x).last_hidden_state
    b.sum().backward()
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(g1, m.encoder.layers[0].attention.q_proj.weight.grad, atol=1e-6)


def test_bf16_autocast_keeps_group_norm_in_fp32():
    m = MERTModel(MERTConfig.preset("tiny")).eval()
    x = waveform(0.5)
    gn = m.feature_extractor.conv_layers[0].layer_norm
    seen = {}
    gn.register_forward_hook(lambda mod, inp, out: seen.update(dtype=out.dtype))
    with torch.no_grad():
        ref = m(x).last_hidden_state
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(x).last_hidden_state
    assert seen["dtype"] == torch.bfloat16  # output cast back to the input dtype (conv output is bf16) ...
    assert torch.isfinite(low).all()
    rel = float((low.float() - ref).norm() / ref.norm())
    assert rel < 0.05, rel  # ... while the statistics were computed in fp32


def test_missing_mask_embedding_is_tolerated(tmp_path, caplog):
    """An inference checkpoint without masked_spec_embed loads (the vector is only used for masking)."""
    from safetensors.torch import load_file, save_file

    hf = write_released_folder(tmp_path / "m", released_config("95m"))
    sd = load_file(str(tmp_path / "m" / "model.safetensors"))
    sd.pop("masked_spec_embed")
    save_file(sd, str(tmp_path / "m" / "model.safetensors"))
    m = MERTModel.from_pretrained(tmp_path / "m")
    assert "no masked_spec_embed" in caplog.text
    x = waveform(0.3)
    with torch.no_grad():
        assert_hidden_states_close(m(x, output_hidden_states=True).hidden_states,
                                   hf(x, output_hidden_states=True).hidden_states)
