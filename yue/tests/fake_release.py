"""Write a folder shaped like the released ``xcodec_mini_infer`` with random weights under upstream's names.

The key names and shapes are enumerated here from upstream's module structure (DAC ``Encoder``/``Decoder`` with
weight-normed convs, RepCodec ``Encoder``/``Decoder`` conv wrappers, Encodec-style ``quantizer.vq.layers``,
``fc_prior``/``fc_post1``/``fc_post2``, the HuBERT teacher with old-style ``weight_g``/``weight_v``), independently of
the converter's mapping code, so a mapping mistake shows up as a strict-load failure.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from yue.codec.config import XCodecConfig


def _wn(prefix: str, out_c: int, in_c: int, k: int, g: torch.Generator, transpose: bool = False) -> dict:
    shape = (in_c, out_c, k) if transpose else (out_c, in_c, k)
    v = torch.randn(shape, generator=g) * 0.1
    gg = torch.rand((shape[0], 1, 1), generator=g) + 0.5
    return {f"{prefix}.weight_v": v, f"{prefix}.weight_g": gg, f"{prefix}.bias": torch.randn(out_c, generator=g) * 0.01}


def _snake(prefix: str, c: int) -> dict:
    return {f"{prefix}.alpha": torch.ones(1, c, 1)}


def _res_unit(prefix: str, c: int, g) -> dict:
    d = {}
    d |= _snake(f"{prefix}.block.0", c)
    d |= _wn(f"{prefix}.block.1", c, c, 7, g)
    d |= _snake(f"{prefix}.block.2", c)
    d |= _wn(f"{prefix}.block.3", c, c, 1, g)
    return d


def upstream_state_dict(cfg: XCodecConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    from transformers import HubertConfig, HubertModel

    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    n = len(cfg.ratios)
    # DAC encoder: block.0 conv, block.1..n EncoderBlocks, block.n+1 Snake, block.n+2 conv -> D
    d = cfg.encoder_dim
    sd |= _wn("encoder.block.0", d, 1, 7, g)
    for b, stride in enumerate(cfg.ratios, 1):
        for u in range(3):
            sd |= _res_unit(f"encoder.block.{b}.block.{u}", d, g)
        sd |= _snake(f"encoder.block.{b}.block.3", d)
        sd |= _wn(f"encoder.block.{b}.block.4", 2 * d, d, 2 * stride, g)
        d *= 2
    sd |= _snake(f"encoder.block.{n + 1}", d)
    sd |= _wn(f"encoder.block.{n + 2}", cfg.D, d, 3, g)
    # DAC decoder: model.0 conv, model.1..n DecoderBlocks (Snake, ConvTranspose, 3 ResidualUnits), Snake, conv -> 1
    c = cfg.decoder_dim
    sd |= _wn("decoder_2.model.0", c, cfg.D, 7, g)
    for i, stride in enumerate(cfg.ratios):
        cin, cout = c // 2**i, c // 2 ** (i + 1)
        sd |= _snake(f"decoder_2.model.{i + 1}.block.0", cin)
        sd |= _wn(f"decoder_2.model.{i + 1}.block.1", cout, cin, 2 * stride, g, transpose=True)
        for u in range(2, 5):
            sd |= _res_unit(f"decoder_2.model.{i + 1}.block.{u}", cout, g)
    cl = c // 2**n
    sd |= _snake(f"decoder_2.model.{n + 1}", cl)
    sd |= _wn(f"decoder_2.model.{n + 2}", 1, cl, 7, g)
    # RepCodec semantic encoder/decoder (every conv wrapped: X.conv.weight), 2 blocks x 2 residual units
    s = cfg.semantic.hidden_size

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    sd["encoder_semantic.conv.conv.weight"] = w(s, s, 3)
    for b in range(2):
        for u in range(2):
            sd[f"encoder_semantic.conv_blocks.{b}.res_units.{u}.conv1.conv.weight"] = w(s, s, 3)
            sd[f"encoder_semantic.conv_blocks.{b}.res_units.{u}.conv2.conv.weight"] = w(s, s, 1)
        sd[f"encoder_semantic.conv_blocks.{b}.conv.conv.weight"] = w(s, s, 3)
        sd[f"encoder_semantic.conv_blocks.{b}.conv.conv.bias"] = w(s)
    sd["decoder_semantic.conv1.conv.weight"] = w(s, s, 3)
    for b in range(2):
        sd[f"decoder_semantic.conv_blocks.{b}.conv.conv.weight"] = w(s, s, 3)
        sd[f"decoder_semantic.conv_blocks.{b}.conv.conv.bias"] = w(s)
        for u in range(2):
            sd[f"decoder_semantic.conv_blocks.{b}.res_units.{u}.conv1.conv.weight"] = w(s, s, 3)
            sd[f"decoder_semantic.conv_blocks.{b}.res_units.{u}.conv2.conv.weight"] = w(s, s, 1)
    sd["decoder_semantic.conv2.conv.weight"] = w(s, s, 3)
    # quantizer + linear layers
    dim = cfg.D + s
    for i in range(cfg.n_q):
        p = f"quantizer.vq.layers.{i}._codebook"
        emb = torch.randn(cfg.bins, dim, generator=g)
        sd |= {f"{p}.inited": torch.tensor([1.0]), f"{p}.cluster_size": torch.ones(cfg.bins),
               f"{p}.embed": emb, f"{p}.embed_avg": emb.clone()}  # fmt: skip
    sd |= {"fc_prior.weight": w(dim, dim), "fc_prior.bias": w(dim), "fc_post1.weight": w(s, dim),
           "fc_post1.bias": w(s), "fc_post2.weight": w(cfg.D, dim), "fc_post2.bias": w(cfg.D)}  # fmt: skip
    # HuBERT teacher, saved by an older torch: positional conv as weight_g / weight_v
    hub = HubertModel(HubertConfig(**_hubert_kwargs(cfg)))
    for k, v in hub.state_dict().items():
        k = k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v")
        sd["semantic_model." + k] = v.clone()
    return sd


def _hubert_kwargs(cfg: XCodecConfig) -> dict:
    s = cfg.semantic
    return dict(
        hidden_size=s.hidden_size, num_hidden_layers=s.num_hidden_layers, num_attention_heads=s.num_attention_heads,
        intermediate_size=s.intermediate_size, conv_dim=list(s.conv_dim), conv_kernel=list(s.conv_kernel),
        conv_stride=list(s.conv_stride), num_conv_pos_embeddings=s.num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=s.num_conv_pos_embedding_groups,
    )  # fmt: skip


def write_fake_release(root: Path, cfg: XCodecConfig, vocos=None, seed: int = 0, legacy_pickle: bool = False) -> Path:
    """Create ``root/{final_ckpt,semantic_ckpts/hf_1_325000,decoders}`` like the released repo."""
    root = Path(root)
    (root / "final_ckpt").mkdir(parents=True, exist_ok=True)
    gen = {"D": cfg.D, "ratios": list(cfg.ratios), "sample_rate": cfg.sample_rate, "bins": cfg.bins,
           "target_bandwidths": list(cfg.target_bandwidths), "n_filters": 32}  # fmt: skip
    if cfg.encoder_dim != 64:
        gen["encoder_dim"] = cfg.encoder_dim
    if cfg.decoder_dim != 1024:
        gen["decoder_dim"] = cfg.decoder_dim
    (root / "final_ckpt" / "config.yaml").write_text(yaml.safe_dump({"generator": {"name": "SoundStream", "config": gen}}))
    payload = {"codec_model": upstream_state_dict(cfg, seed)}
    if legacy_pickle:
        payload["note"] = _Opaque()  # forces the unrestricted unpickler
    torch.save(payload, root / "final_ckpt" / "ckpt_00360000.pth")
    sem = root / "semantic_ckpts" / "hf_1_325000"
    sem.mkdir(parents=True, exist_ok=True)
    (sem / "config.json").write_text(json.dumps({"model_type": "hubert", **_hubert_kwargs(cfg)}))
    if vocos is not None:
        dec = root / "decoders"
        dec.mkdir(exist_ok=True)
        (dec / "config.yaml").write_text(yaml.safe_dump({
            "backbone": {"class_path": "vocos.models.VocosBackbone", "init_args": {
                "input_channels": vocos.input_channels, "dim": vocos.dim, "intermediate_dim": vocos.intermediate_dim,
                "num_layers": vocos.num_layers}},
            "head": {"class_path": "vocos.heads.ISTFTHead", "init_args": {
                "dim": vocos.dim, "n_fft": vocos.n_fft, "hop_length": vocos.hop_length, "padding": vocos.padding}},
        }))  # fmt: skip
        for i, name in enumerate(("decoder_131000.pth", "decoder_151000.pth")):
            torch.save(released_vocos_state_dict(vocos, seed + i), dec / name)
    return root


def released_vocos_state_dict(vocos, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random Vocos decoder state dict in the published layout, written out here key by key.

    Names and shapes follow the released ``vocos`` package (``VocosBackbone`` + ``ISTFTHead``, as printed by
    ``Vocos.from_hparams(decoders/config.yaml)``), not ``yue.codec.vocos``'s modules, so a naming or shape slip in
    the project's own upsampler shows up as a strict-load failure::

        backbone.embed             Conv1d(input_channels, dim, k=7)          weight [dim, in, 7], bias [dim]
        backbone.norm              LayerNorm(dim)                            weight/bias [dim]
        backbone.convnext.{i}.dwconv   Conv1d(dim, dim, k=7, groups=dim)     weight [dim, 1, 7], bias [dim]
        backbone.convnext.{i}.norm     LayerNorm(dim)
        backbone.convnext.{i}.pwconv1  Linear(dim, intermediate_dim)         weight [inter, dim], bias [inter]
        backbone.convnext.{i}.pwconv2  Linear(intermediate_dim, dim)         weight [dim, inter], bias [dim]
        backbone.convnext.{i}.gamma    layer scale                           [dim]
        backbone.final_layer_norm  LayerNorm(dim)
        head.out                   Linear(dim, n_fft + 2)                    weight [n_fft + 2, dim]
        head.istft.window          periodic Hann window                      [n_fft]
    """
    g = torch.Generator().manual_seed(seed)
    d, h, n_fft = vocos.dim, vocos.intermediate_dim, vocos.n_fft

    def rnd(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    def ln(prefix):  # LayerNorm near identity, slightly perturbed so a swapped weight/bias is visible
        return {f"{prefix}.weight": 1 + rnd(d, std=0.1), f"{prefix}.bias": rnd(d, std=0.1)}

    sd = {"backbone.embed.weight": rnd(d, vocos.input_channels, 7), "backbone.embed.bias": rnd(d)}
    sd |= ln("backbone.norm")
    for i in range(vocos.num_layers):
        p = f"backbone.convnext.{i}"
        sd |= {f"{p}.dwconv.weight": rnd(d, 1, 7, std=0.2), f"{p}.dwconv.bias": rnd(d)}
        sd |= ln(f"{p}.norm")
        sd |= {f"{p}.pwconv1.weight": rnd(h, d, std=0.2), f"{p}.pwconv1.bias": rnd(h),
               f"{p}.pwconv2.weight": rnd(d, h, std=0.2), f"{p}.pwconv2.bias": rnd(d),
               f"{p}.gamma": torch.full((d,), 1 / vocos.num_layers) + rnd(d)}  # fmt: skip
    sd |= ln("backbone.final_layer_norm")
    sd |= {"head.out.weight": rnd(n_fft + 2, d, std=0.05), "head.out.bias": rnd(n_fft + 2)}
    n = torch.arange(n_fft, dtype=torch.float64)
    sd["head.istft.window"] = (0.5 - 0.5 * torch.cos(2 * torch.pi * n / n_fft)).float()  # periodic Hann
    return sd


class _Opaque:
    """An arbitrary object: a checkpoint holding it cannot be read with weights_only=True."""
