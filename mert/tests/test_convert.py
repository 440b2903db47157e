"""Conversion: fairseq checkpoints -> our folder (heads kept), released HF folder -> ours, ours -> HubertModel folder."""

from __future__ import annotations

import json
import re
import sys
import types

import pytest
import torch

from mert.cli import main as cli_main
from mert.configuration_mert import MERTConfig
from mert.convert import _eval_layers, convert_fairseq, convert_hf, describe, export_hf, read_fairseq_checkpoint
from mert.modeling_mert import CheckpointError, MERTForPretraining, MERTModel

from test_model import assert_hidden_states_close, released_config, waveform, write_released_folder

# ---------------------------------------------------------------------------------------------------------------------
# An independent fake of a released fairseq checkpoint. The key names and shapes below are written out from the spec
# (sections 1.2-1.6 and 5.2: the fairseq wav2vec2/HuBERT names of MERT_fairseq.pt), NOT derived from our model's
# state dict, so a key or shape of ours that drifted from the released layout fails the strict load in
# `fairseq_checkpoint` (and the conversion). The real-fairseq peer is `test_fairseq_parity_when_installed`.
# ---------------------------------------------------------------------------------------------------------------------
def spec_fairseq_layout(conv: list[tuple[int, int, int]], dim: int, ffn: int, layers: int, pos_kernel: int,
                        pos_groups: int, final_dim: int, codebooks: int, codebook_size: int, cqt_bins: int
                        ) -> dict[str, tuple[int, ...]]:
    """fairseq key -> shape of a MERT pretraining checkpoint (group-norm conv mode, untied final_proj, CQT head)."""
    shapes: dict[str, tuple[int, ...]] = {}
    c_in = 1
    for i, (c, k, _stride) in enumerate(conv):  # Sequential(conv, dropout, [GroupNorm], GELU): conv at 0, norm at 2
        shapes[f"feature_extractor.conv_layers.{i}.0.weight"] = (c, c_in, k)  # conv_bias false: no bias
        c_in = c
    shapes["feature_extractor.conv_layers.0.2.weight"] = (conv[0][0],)
    shapes["feature_extractor.conv_layers.0.2.bias"] = (conv[0][0],)
    shapes["layer_norm.weight"] = shapes["layer_norm.bias"] = (c_in,)  # LayerNorm(512) before post_extract_proj
    shapes["post_extract_proj.weight"], shapes["post_extract_proj.bias"] = (dim, c_in), (dim,)
    shapes["mask_emb"] = (dim,)
    shapes["encoder.pos_conv.0.weight_g"] = (1, 1, pos_kernel)  # weight_norm(dim=2)
    shapes["encoder.pos_conv.0.weight_v"] = (dim, dim // pos_groups, pos_kernel)
    shapes["encoder.pos_conv.0.bias"] = (dim,)
    shapes["encoder.layer_norm.weight"] = shapes["encoder.layer_norm.bias"] = (dim,)
    for i in range(layers):
        p = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}self_attn.{proj}.weight"], shapes[f"{p}self_attn.{proj}.bias"] = (dim, dim), (dim,)
        shapes[f"{p}self_attn_layer_norm.weight"] = shapes[f"{p}self_attn_layer_norm.bias"] = (dim,)
        shapes[f"{p}fc1.weight"], shapes[f"{p}fc1.bias"] = (ffn, dim), (ffn,)
        shapes[f"{p}fc2.weight"], shapes[f"{p}fc2.bias"] = (dim, ffn), (dim,)
        shapes[f"{p}final_layer_norm.weight"] = shapes[f"{p}final_layer_norm.bias"] = (dim,)
    shapes["final_proj.weight"], shapes["final_proj.bias"] = (final_dim * codebooks, dim), (final_dim * codebooks,)
    shapes["label_embs_concat"] = (codebooks * codebook_size, final_dim)
    shapes["encoder_cqt_model.fc.weight"], shapes["encoder_cqt_model.fc.bias"] = (cqt_bins, dim), (cqt_bins,)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of a sensible scale: ~1/sqrt(fan_in) matrices, norms near 1, small biases, positive g."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        x = torch.randn(shape, generator=g)
        if k.endswith("weight_g"):
            x = 1.0 + 0.1 * x.abs()
        elif len(shape) == 1:
            x = (1.0 if ("norm" in k or ".2.weight" in k) and k.endswith("weight") else 0.0) + 0.1 * x
        else:
            x = x / max(1, int(torch.tensor(shape[1:]).prod())) ** 0.5
        out[k] = x
    return out


# fairseq name -> our name (the spec's mapping table, written out here, independent of the converter's rules)
_FROM_FAIRSEQ = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.", r"feature_extractor.conv_layers.\1.conv."),
    (r"^feature_extractor\.conv_layers\.0\.2\.", "feature_extractor.conv_layers.0.layer_norm."),
    (r"^layer_norm\.", "feature_projection.layer_norm."),
    (r"^post_extract_proj\.", "feature_projection.projection."),
    (r"^mask_emb$", "masked_spec_embed"),
    (r"^encoder\.pos_conv\.0\.", "encoder.pos_conv_embed.conv."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.", r"encoder.layers.\1.attention."),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"encoder.layers.\1.layer_norm."),
    (r"^encoder\.layers\.(\d+)\.fc1\.", r"encoder.layers.\1.feed_forward.intermediate_dense."),
    (r"^encoder\.layers\.(\d+)\.fc2\.", r"encoder.layers.\1.feed_forward.output_dense."),
    (r"^encoder_cqt_model\.fc\.", "cqt_head."),
]


def from_fairseq(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for pat, rep in _FROM_FAIRSEQ:
            if re.match(pat, k):
                k = re.sub(pat, rep, k)
                break
        out[k] = v.clone()
    return out


class FairseqEnum:  # stands in for fairseq's ChoiceEnum values inside a pickled cfg
    def __init__(self, value):
        self.value = value


def fairseq_checkpoint(tmp_path, model: MERTForPretraining, layer_norm_first: bool, unimportable: bool = True):
    """A fairseq-style checkpoint file: {"model": fairseq-named state, "cfg": {"model", "task"}} plus CQT kernels.

    The state is built from the spec's key list and shapes (:func:`spec_fairseq_layout`) with random values, then
    loaded into ``model`` through the spec's name mapping with ``strict=True`` (so ``model`` holds the checkpoint's
    weights and any key or shape of ours that left the released layout fails here).
    """
    cfg = model.config
    conv = list(zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride))
    state = random_state(spec_fairseq_layout(
        conv, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_conv_pos_embeddings,
        cfg.num_conv_pos_embedding_groups, cfg.final_dim, cfg.num_codebooks, cfg.codebook_size, cfg.cqt_bins))
    model.load_state_dict(from_fairseq(state), strict=True)
    state["encoder_cqt_model.cqt.cqt_kernels_real"] = torch.randn(4, 1, 16)  # nnAudio buffers: skipped
    state["encoder_cqt_model.cqt.cqt_kernels_imag"] = torch.randn(4, 1, 16)
    layers = "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"
    model_cfg = {
        "_name": "mert", "extractor_mode": "default", "encoder_layers": cfg.num_hidden_layers,
        "encoder_embed_dim": cfg.hidden_size, "encoder_ffn_embed_dim": cfg.intermediate_size,
        "encoder_attention_heads": cfg.num_attention_heads, "activation_fn": "gelu",
        "layer_norm_first": layer_norm_first, "conv_feature_layers": layers, "conv_bias": False,
        "conv_pos": cfg.num_conv_pos_embeddings, "conv_pos_groups": cfg.num_conv_pos_embedding_groups,
        "final_dim": cfg.final_dim, "untie_final_proj": True, "feature_grad_mult": 0.1, "logit_temp": 0.1,
        "mask_prob": 0.8, "mask_length": 5, "dropout": 0.1, "attention_dropout": 0.1, "encoder_layerdrop": 0.05,
        "dropout_input": 0.1, "deepnorm": False, "attention_relax": 32.0 if layer_norm_first else -1.0,
        "feature_extractor_cqt": False,
    }
    task_cfg = {"_name": "mert_pretraining", "sample_rate": 24000, "label_rate": 75, "normalize": False}
    if unimportable:
        # a class from a module that will not exist when the checkpoint is read (like fairseq without fairseq)
        mod = types.ModuleType("fake_fairseq_dataclass")
        mod.FairseqEnum = type("FairseqEnum", (FairseqEnum,), {"__module__": "fake_fairseq_dataclass"})
        sys.modules["fake_fairseq_dataclass"] = mod
        model_cfg["activation_fn"] = mod.FairseqEnum("gelu")
    path = tmp_path / "MERT_fairseq.pt"
    torch.save({"model": state, "cfg": {"model": model_cfg, "task": task_cfg}, "optimizer_history": []}, path)
    sys.modules.pop("fake_fairseq_dataclass", None)
    return path


def tiny_pretraining_model(stable: bool, seed: int = 0) -> MERTForPretraining:
    torch.manual_seed(seed)
    cfg = MERTConfig.preset("tiny", do_stable_layer_norm=stable, num_codebooks=4, codebook_size=12, final_dim=16,
                            cqt_bins=20)
    m = MERTForPretraining(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return m


@pytest.mark.parametrize("stable", [False, True])
def test_convert_fairseq_keeps_heads_and_outputs(tmp_path, stable):
    m = tiny_pretraining_model(stable)
    src = fairseq_checkpoint(tmp_path, m, layer_norm_first=stable)
    with pytest.raises(CheckpointError, match="allow-pickle"):
        convert_fairseq(src, tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()
    out = convert_fairseq(src, tmp_path / "out", allow_pickle=True)
    conv = MERTForPretraining.from_pretrained(out)
    assert conv.config.do_stable_layer_norm is stable
    assert (conv.config.num_codebooks, conv.config.codebook_size, conv.config.final_dim) == (4, 12, 16)
    assert conv.config.conv_dim == [32] * 7 and conv.config.conv_kernel == [10, 3, 3, 3, 3, 2, 2]
    for k, v in m.state_dict().items():
        assert torch.equal(v, conv.state_dict()[k]), k
    x = waveform(0.4)
    with torch.no_grad():
        a, b = m(x, output_hidden_states=True), conv(x, output_hidden_states=True)
    assert_hidden_states_close(a.hidden_states, b.hidden_states, atol=0)
    assert torch.equal(a.cqt_pred, b.cqt_pred) and torch.equal(a.projections, b.projections)
    info = describe(out)
    assert info["heads"] == ["cqt_head", "final_proj", "label_embs_concat"] and info["pre_ln"] is stable


def test_convert_fairseq_errors(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a fairseq checkpoint"):
        read_fairseq_checkpoint(tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="file not found"):
        read_fairseq_checkpoint(tmp_path / "missing.pt")
    m = tiny_pretraining_model(False)
    src = fairseq_checkpoint(tmp_path, m, layer_norm_first=False, unimportable=False)
    ck = torch.load(src, weights_only=True)  # plain dicts only: readable without pickle
    ck["model"]["encoder.some_new_module.weight"] = torch.zeros(2)
    torch.save(ck, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="unrecognised fairseq keys"):
        convert_fairseq(tmp_path / "odd.pt", tmp_path / "o")
    ck["model"].pop("encoder.some_new_module.weight")
    ck.pop("cfg")
    torch.save(ck, tmp_path / "nocfg.pt")
    with pytest.raises(CheckpointError, match="pre-LN from post-LN"):
        convert_fairseq(tmp_path / "nocfg.pt", tmp_path / "o")


def test_cli_convert_requires_allow_pickle(tmp_path, capsys):
    src = fairseq_checkpoint(tmp_path, tiny_pretraining_model(False), layer_norm_first=False)
    assert cli_main(["convert", str(src), str(tmp_path / "o")]) == 2
    assert cli_main(["convert", str(src), str(tmp_path / "o"), "--allow-pickle"]) == 0
    assert "final_proj" in capsys.readouterr().out


def test_eval_conv_layers_expression():
    assert _eval_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == (
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    )
    with pytest.raises(ValueError):
        _eval_layers("__import__('os').system('true')")


def test_convert_released_hf_folder(tmp_path):
    hf = write_released_folder(tmp_path / "released", released_config("95m"), fmt="bin")
    out = convert_hf(tmp_path / "released", tmp_path / "ours")
    assert (out / "model.safetensors").is_file() and not (out / "pytorch_model.bin").exists()
    ours = MERTModel.from_pretrained(out)
    x = waveform(0.5)
    with torch.no_grad():
        assert_hidden_states_close(ours(x, output_hidden_states=True).hidden_states,
                                   hf(x, output_hidden_states=True).hidden_states)


@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("names", ["legacy", "parametrizations"])
def test_export_loads_in_plain_hubert_model(tmp_path, stable, names):
    from transformers import HubertModel

    m = tiny_pretraining_model(stable)
    m.save_pretrained(tmp_path / "ours")
    out = export_hf(tmp_path / "ours", tmp_path / "hf", weight_norm_names=names)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "hubert" and "auto_map" not in cfg and cfg["conv_pos_batch_norm"] is False
    hf, info = HubertModel.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    hf.eval()
    x = waveform(0.5)
    with torch.no_grad():
        assert_hidden_states_close(m(x, output_hidden_states=True, apply_mask=False).hidden_states,
                                   hf(x, output_hidden_states=True).hidden_states)


def test_cli_export_verify(tmp_path, capsys):
    MERTForPretraining(MERTConfig.preset("tiny")).save_pretrained(tmp_path / "ours")
    assert cli_main(["export-hf", str(tmp_path / "ours"), str(tmp_path / "hf"), "--verify"]) == 0
    assert "verify: max" in capsys.readouterr().out


@pytest.mark.fairseq
def test_fairseq_parity_when_installed(tmp_path):
    """With the optional fairseq extra: fairseq's HubertModel and ours agree after conversion, both layouts, every
    hidden state. ``label_rate`` must be set: HubertConfig's default is the interpolation string
    "${task.label_rate}" that only hydra resolves, and fairseq's constructor divides by it (TypeError)."""
    pytest.importorskip("fairseq")
    from fairseq.models.hubert.hubert import HubertConfig as FsConfig
    from fairseq.models.hubert.hubert import HubertModel as FsHubert

    for stable in (False, True):
        fcfg = FsConfig(
            extractor_mode="default", encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
            encoder_attention_heads=4, layer_norm_first=stable, conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
            conv_pos=16, conv_pos_groups=4, final_dim=16, untie_final_proj=True, dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0, encoder_layerdrop=0.0, dropout_input=0.0, dropout_features=0.0, label_rate=75,
        )
        task = types.SimpleNamespace(sample_rate=24000, label_rate=75, fine_tuning=False, labels=["km"])
        dicts = [list(range(12))]
        fs = FsHubert(fcfg, task, dicts).eval()
        state = dict(fs.state_dict())
        path = tmp_path / f"fs{stable}.pt"
        cfg_dict = {k: getattr(fcfg, k) for k in fcfg.__dataclass_fields__}
        torch.save({"model": state, "cfg": {"model": cfg_dict, "task": {"sample_rate": 24000}}}, path)
        out = convert_fairseq(path, tmp_path / f"ours{stable}", allow_pickle=True)
        ours = MERTModel.from_pretrained(out)
        x = waveform(0.5)
        with torch.no_grad():
            ref, _ = fs.extract_features(x, padding_mask=None, mask=False)
            out = ours(x, output_hidden_states=True)
            # intermediate layers: fairseq's output_layer is 1-based and never applies the final LayerNorm
            inner = [fs.extract_features(x, padding_mask=None, mask=False, output_layer=i)[0] for i in (1,)]
        assert float((ref - out.last_hidden_state).abs().max()) <= 1e-4
        for i, r in zip((1,), inner):
            assert float((r - out.hidden_states[i]).abs().max()) <= 1e-4
