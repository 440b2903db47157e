"""MERT encoder: a self-contained HuBERT-style model whose state-dict names equal the released checkpoints.

Layout (spec section 1; key names spec section 5.1, no prefix because MERTModel is the base model)::

    feature_extractor.conv_layers.{i}.conv / .layer_norm      7 convs, stride 320, GroupNorm on conv 0 only
    feature_projection.layer_norm / .projection               LayerNorm(512) -> Linear(512, D)
    masked_spec_embed                                         [D], replaces masked frames (pretraining only)
    encoder.pos_conv_embed.conv.{weight_g, weight_v, bias}    grouped conv, weight norm over dim 2
    encoder.layer_norm                                        before the layers (post-LN, 95M) or after (pre-LN, 330M)
    encoder.layers.{i}.attention.{q,k,v,out}_proj / layer_norm / feed_forward.{intermediate,output}_dense /
    final_layer_norm

``hidden_states`` has L + 1 entries like the released model: index 0 is the encoder input (after the encoder
LayerNorm for post-LN, raw ``proj + posconv`` for pre-LN), entry i the output of layer i, and for pre-LN the last
entry is the final-LayerNorm output (= ``last_hidden_state``).

:class:`MERTForPretraining` adds the pretraining heads (``final_proj``, ``label_embs_concat``, ``cqt_head``) and
returns everything the loss needs; the loss itself lives in the pretraining code.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .configuration_mert import CONFIG_NAME, MERTConfig, MERTConfigError
from .loss import compute_span_mask  # the one span-mask function (training uses it too)

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
HEAD_PREFIXES = ("final_proj.", "label_embs_concat", "cqt_head.")


class CheckpointError(ValueError):
    """A model folder or checkpoint that cannot be loaded (missing files, wrong keys or shapes)."""


def _activation(name: str):
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    if name in ("silu", "swish"):
        return F.silu
    raise MERTConfigError(f"unsupported activation {name!r}")


# ============================================================================================ feature extractor


class Fp32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in fp32 whatever the input dtype (as fairseq's Fp32GroupNorm; spec pitfall 4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


class MERTConvLayer(nn.Module):
    """Conv1d [B, C_in, N] -> [B, C_out, T], then the optional norm, then the activation."""

    def __init__(self, config: MERTConfig, layer_id: int):
        super().__init__()
        c_in = config.conv_dim[layer_id - 1] if layer_id > 0 else 1
        c_out = config.conv_dim[layer_id]
        self.conv = nn.Conv1d(
            c_in, c_out, kernel_size=config.conv_kernel[layer_id], stride=config.conv_stride[layer_id],
            bias=config.conv_bias,
        )
        self.norm_kind = None
        if config.feat_extract_norm == "group" and layer_id == 0:
            # One group per channel: per-channel normalisation over time (named layer_norm in the checkpoints).
            self.layer_norm = Fp32GroupNorm(num_groups=c_out, num_channels=c_out, affine=True)
            self.norm_kind = "group"
        elif config.feat_extract_norm == "layer":
            self.layer_norm = nn.LayerNorm(c_out, elementwise_affine=True)
            self.norm_kind = "layer"
        self.activation = _activation(config.feat_extract_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm_kind == "group":
            x = self.layer_norm(x)
        elif self.norm_kind == "layer":
            x = self.layer_norm(x.transpose(-2, -1)).transpose(-2, -1)
        return self.activation(x)


class MERTFeatureEncoder(nn.Module):
    """Waveform [B, N] -> conv features [B, C, T] with T = floor((N - 400) / 320) + 1."""

    def __init__(self, config: MERTConfig):
        super().__init__()
        self.conv_layers = nn.ModuleList([MERTConvLayer(config, i) for i in range(config.num_feat_extract_layers)])

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        x = input_values[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class MERTFeatureProjection(nn.Module):
    """Conv features [B, T, C] -> [B, T, D]: LayerNorm(C), Linear(C, D), dropout."""

    def __init__(self, config: MERTConfig):
        super().__init__()
        self.feat_proj_layer_norm = config.feat_proj_layer_norm
        if self.feat_proj_layer_norm:
            self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)
        self.dropout = nn.Dropout(config.feat_proj_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.feat_proj_layer_norm:
            x = self.layer_norm(x)
        return self.dropout(self.projection(x))


# ============================================================================================ encoder


class WeightNormConv1d(nn.Module):
    """Conv1d whose weight is ``g * v / ||v||`` with the norm over dims (0, 1), i.e. per kernel position (dim=2).

    Parameters keep the classic ``weight_g`` [1, 1, K] / ``weight_v`` [C_out, C_in/groups, K] / ``bias`` names of
    ``torch.nn.utils.weight_norm`` (what the released pytorch_model.bin files hold).
    """

    def __init__(self, channels: int, kernel_size: int, groups: int):
        super().__init__()
        self.padding = kernel_size // 2
        self.groups = groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel_size))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))

    @property
    def weight(self) -> torch.Tensor:
        if hasattr(torch, "_weight_norm"):  # fused kernel behind torch.nn.utils weight norm
            return torch._weight_norm(self.weight_v, self.weight_g, 2)
        v = self.weight_v
        return v * (self.weight_g / v.norm(dim=(0, 1), keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight, self.bias, padding=self.padding, groups=self.groups)


class MERTPositionalConvEmbedding(nn.Module):
    """Relative position by a grouped conv: [B, T, D] -> [B, T, D] (conv, drop last frame if K even, activation)."""

    def __init__(self, config: MERTConfig):
        super().__init__()
        d, k, g = config.hidden_size, config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups
        self.batch_norm = None
        if config.conv_pos_batch_norm:
            self.batch_norm = nn.BatchNorm1d(d)
            self.conv = nn.Conv1d(d, d, kernel_size=k, padding=k // 2, groups=g)
        else:
            self.conv = WeightNormConv1d(d, k, g)
        self.num_pad_remove = 1 if k % 2 == 0 else 0
        self.activation = _activation(config.feat_extract_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)
        if self.batch_norm is not None:
            x = self.batch_norm(x)
        x = self.conv(x)
        if self.num_pad_remove:
            x = x[:, :, : -self.num_pad_remove]
        return self.activation(x).transpose(1, 2)


class MERTAttention(nn.Module):
    """Bidirectional multi-head attention with biased q/k/v/out projections, via SDPA."""

    def __init__(self, config: MERTConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, D]; attn_mask bool [B, 1, 1, T] (True = attend) or None."""
        b, t, d = x.shape
        shape = (b, t, self.num_heads, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        # attention_relax (330M) is a numerical no-op for softmax, so plain SDPA is weight-compatible.
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class MERTFeedForward(nn.Module):
    """Linear(D, F), activation, dropout, Linear(F, D), dropout."""

    def __init__(self, config: MERTConfig):
        super().__init__()
        self.intermediate_dropout = nn.Dropout(config.activation_dropout)
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = _activation(config.hidden_act)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.intermediate_dropout(self.intermediate_act_fn(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class MERTEncoderLayer(nn.Module):
    """One transformer layer [B, T, D] -> [B, T, D]; post-LN (95M) or pre-LN (330M, ``do_stable_layer_norm``)."""

    def __init__(self, config: MERTConfig):
        super().__init__()
        self.pre_ln = config.do_stable_layer_norm
        self.attention = MERTAttention(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = MERTFeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pre_ln:
            x = x + self.dropout(self.attention(self.layer_norm(x), attn_mask))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.dropout(self.attention(x, attn_mask)))
        return self.final_layer_norm(x + self.feed_forward(x))


class MERTEncoder(nn.Module):
    """Positional conv + L layers, with the encoder LayerNorm before (post-LN) or after (pre-LN) the stack."""

    def __init__(self, config: MERTConfig):
        super().__init__()
        self.config = config
        self.pos_conv_embed = MERTPositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList([MERTEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        num_layers: int | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """x [B, T, D]; frame_mask bool [B, T] (True = real frame) or None.

        ``num_layers`` < L runs only the first layers (the final LayerNorm of a pre-LN model is then not applied):
        a cheap way to extract shallow layers. Returns (last [B, T, D], hidden_states tuple or None).
        """
        cfg = self.config
        n_run = cfg.num_hidden_layers if num_layers is None else max(0, min(int(num_layers), cfg.num_hidden_layers))
        attn_mask = None
        if frame_mask is not None:
            x = x.masked_fill(~frame_mask[..., None], 0.0)  # padded frames are zero before the positional conv
            attn_mask = frame_mask[:, None, None, :]
        x = x + self.pos_conv_embed(x)
        if not cfg.do_stable_layer_norm:
            x = self.layer_norm(x)
        x = self.dropout(x)
        hidden: list[torch.Tensor] | None = [x] if output_hidden_states else None
        for i, layer in enumerate(self.layers[:n_run]):
            # LayerDrop: skip a whole layer in training (spec 1.4; 0.05 for 95M).
            if self.training and cfg.layerdrop > 0.0 and torch.rand(()) < cfg.layerdrop:
                if hidden is not None:
                    hidden.append(x)
                continue
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, attn_mask, use_reentrant=False)
            else:
                x = layer(x, attn_mask)
            if hidden is not None:
                hidden.append(x)
        if cfg.do_stable_layer_norm and n_run == cfg.num_hidden_layers:
            x = self.layer_norm(x)
            if hidden is not None:
                hidden[-1] = x  # the released pre-LN model reports the normalised output as the last state
        return x, (tuple(hidden) if hidden is not None else None)


# ============================================================================================ models


@dataclass
class MERTOutput:
    """Outputs of :class:`MERTModel`.

    last_hidden_state: [B, T, D].
    hidden_states: L + 1 tensors [B, T, D] when requested (index 0 = encoder input), else None.
    extract_features: conv features [B, T, C] before the projection LayerNorm.
    frame_mask: bool [B, T] (True = real frame) when an attention_mask was given, else None.
    """

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    extract_features: torch.Tensor | None = None
    frame_mask: torch.Tensor | None = None


class MERTModel(nn.Module):
    """The MERT encoder: waveform [B, N] at ``config.sample_rate`` -> frames [B, T, D] at 75 Hz (v1) / 50 Hz (v0).

    Load released weights with :meth:`from_pretrained` (a folder with ``config.json`` and ``model.safetensors`` or
    ``pytorch_model.bin``; no remote code). Run in eval mode for inference.
    """

    def __init__(self, config: MERTConfig):
        super().__init__()
        self.config = config
        self.feature_extractor = MERTFeatureEncoder(config)
        self.feature_projection = MERTFeatureProjection(config)
        if config.has_mask_embedding:
            self.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size))
        self.encoder = MERTEncoder(config)
        self.init_weights()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self) -> None:
        """Fresh random init (HF/fairseq style); loading a checkpoint overwrites it."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d)):
                if m.weight is not None:
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, WeightNormConv1d):
                k, c = m.weight_v.shape[-1], m.weight_v.shape[0]
                nn.init.normal_(m.weight_v, mean=0.0, std=math.sqrt(4.0 / (k * c)))
                m.weight_g.copy_(m.weight_v.norm(dim=(0, 1), keepdim=True))
                nn.init.zeros_(m.bias)
        if hasattr(self, "masked_spec_embed"):
            nn.init.uniform_(self.masked_spec_embed)

    def gradient_checkpointing_enable(self) -> None:
        self.encoder.gradient_checkpointing = True

    # ------------------------------------------------------------------ helpers
    def num_frames(self, num_samples: int) -> int:
        return self.config.num_frames(num_samples)

    def frame_mask_from_attention_mask(self, attention_mask: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Sample-level mask [B, N] (1 = real sample, right padding) -> frame-level bool mask [B, T]."""
        lengths = attention_mask.long().sum(-1)
        for k, s in zip(self.config.conv_kernel, self.config.conv_stride):
            lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
        return torch.arange(num_frames, device=lengths.device)[None, :] < lengths[:, None]

    def _embed(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None,
        mask_time_indices: torch.Tensor | None,
        feature_grad_mult: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if input_values.dim() == 1:
            input_values = input_values[None]
        if input_values.dim() != 2:
            raise ValueError(f"input_values must be [B, N] or [N], got shape {tuple(input_values.shape)}")
        n_min = self.config.receptive_field
        if input_values.shape[-1] < n_min:
            raise ValueError(
                f"input of {input_values.shape[-1]} samples is shorter than one frame ({n_min} samples = "
                f"{1000 * n_min / self.config.sample_rate:.1f} ms at {self.config.sample_rate} Hz)"
            )
        if feature_grad_mult == 0.0 or not torch.is_grad_enabled():
            with torch.no_grad():
                feats = self.feature_extractor(input_values)
        else:
            feats = self.feature_extractor(input_values)
            if feature_grad_mult != 1.0:
                feats = _GradMultiply.apply(feats, feature_grad_mult)
        feats = feats.transpose(1, 2)  # [B, T, C]
        frame_mask = None
        if attention_mask is not None:
            frame_mask = self.frame_mask_from_attention_mask(attention_mask, feats.shape[1])
        x = self.feature_projection(feats)
        if mask_time_indices is not None:
            if not hasattr(self, "masked_spec_embed"):
                raise ValueError("mask_time_indices given but the model has no masked_spec_embed (mask_time_prob=0)")
            x = torch.where(mask_time_indices[..., None].bool(), self.masked_spec_embed.to(x.dtype), x)
        return feats, x, frame_mask

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        num_layers: int | None = None,
    ) -> MERTOutput:
        """Encode a waveform.

        Args:
            input_values: [B, N] float waveform at ``config.sample_rate`` (mono).
            attention_mask: optional [B, N] (1 = real sample) for right-padded batches. GroupNorm statistics still
                include the padding, so padded items differ slightly from unpadded ones (spec pitfall 8).
            mask_time_indices: optional bool [B, T]: frames replaced by ``masked_spec_embed`` (pretraining).
            output_hidden_states: return the L + 1 hidden states.
            num_layers: run only the first ``num_layers`` layers (extraction of shallow layers).
        """
        feats, x, frame_mask = self._embed(input_values, attention_mask, mask_time_indices)
        last, hidden = self.encoder(x, frame_mask, output_hidden_states, num_layers)
        return MERTOutput(last_hidden_state=last, hidden_states=hidden, extract_features=feats, frame_mask=frame_mask)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        map_location: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        config: MERTConfig | None = None,
    ) -> "MERTModel":
        """Load a model folder (ours, or a released HF folder) with ``strict=True`` after key normalisation.

        Accepted weights: ``model.safetensors``, a sharded ``model.safetensors.index.json`` or ``pytorch_model.bin``
        (read with ``torch.load(weights_only=True)``). Released weight-norm names
        (``parametrizations.weight.original0/1``) and a ``hubert.`` prefix are normalised. Pretraining-head keys
        are dropped when loading the base class, and required by :class:`MERTForPretraining`.
        """
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: not a model folder (expected a folder with config.json and weights)")
        config = config or MERTConfig.from_json(path / CONFIG_NAME)
        state = load_state_dict_file(path)
        model = cls(config)
        model.load_checkpoint_state(state, source=str(path))
        if dtype is not None:
            model = model.to(dtype)
        model.to(map_location)
        model.eval()
        return model

    def load_checkpoint_state(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Normalise key names, drop/keep head keys for this class, and ``load_state_dict(strict=True)``."""
        state = normalize_state_dict(state)
        own = set(self.state_dict())
        heads = [k for k in state if k.startswith(HEAD_PREFIXES) and k not in own]
        if heads:
            logger.info("%s: not loading %d pretraining-head tensors into %s", source, len(heads), type(self).__name__)
            state = {k: v for k, v in state.items() if k not in heads}
        if "masked_spec_embed" in state and "masked_spec_embed" not in own:
            state.pop("masked_spec_embed")  # an extra mask vector is harmless for inference
        if "masked_spec_embed" in own and "masked_spec_embed" not in state:
            # only used when masking (pretraining); keep the fresh init rather than refuse an inference checkpoint
            logger.warning("%s: no masked_spec_embed in the checkpoint; keeping a random one", source)
            state = {**state, "masked_spec_embed": self.masked_spec_embed.detach().clone()}
        missing = sorted(own - set(state))
        unexpected = sorted(set(state) - own)
        if missing or unexpected:
            raise CheckpointError(
                f"{source}: state dict does not match {type(self).__name__} "
                f"(missing {len(missing)}: {missing[:6]}, unexpected {len(unexpected)}: {unexpected[:6]})"
            )
        ref = self.state_dict()
        bad = [f"{k} {tuple(v.shape)} vs {tuple(ref[k].shape)}" for k, v in state.items() if v.shape != ref[k].shape]
        if bad:
            raise CheckpointError(f"{source}: tensor shapes do not match the config: {bad[:6]}")
        self.load_state_dict(state, strict=True)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (atomic, HF key names; heads included if present)."""
        from safetensors.torch import save_file

        from musiccore.runs import atomic_path, atomic_write_text

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(path / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", "model": type(self).__name__})
        atomic_write_text(path / CONFIG_NAME, self.config.to_json_string())
        return path


class _GradMultiply(torch.autograd.Function):
    """Identity forward, gradient scaled by ``scale`` (fairseq feature_grad_mult)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


@dataclass
class MERTPretrainingOutput:
    """Outputs of :class:`MERTForPretraining` (everything the MERT loss needs).

    last_hidden_state: [B, T, D]. hidden_states: L + 1 x [B, T, D] or None.
    extract_features: conv features [B, T, C]. features_pen: scalar mean(extract_features^2) (fp32).
    mask_time_indices: bool [B, T] (None when no masking). frame_mask: bool [B, T] or None.
    projections: [B, T, K, final_dim] (one slice per codebook, untied projection).
    label_embeddings: [K, codebook_size, final_dim].
    cqt_pred: [B, T, cqt_bins] (the loss selects the masked frames).
    """

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    extract_features: torch.Tensor
    features_pen: torch.Tensor
    mask_time_indices: torch.Tensor | None
    frame_mask: torch.Tensor | None
    projections: torch.Tensor
    label_embeddings: torch.Tensor
    cqt_pred: torch.Tensor


class MERTForPretraining(MERTModel):
    """MERTModel plus the pretraining heads (kept by ``mert convert`` from fairseq checkpoints).

    Heads: ``final_proj`` Linear(D, final_dim * K), ``label_embs_concat`` [K * codebook_size, final_dim]
    (codeword embeddings, split per codebook), ``cqt_head`` Linear(D, cqt_bins) (fairseq ``encoder_cqt_model.fc``).
    """

    def __init__(self, config: MERTConfig):
        if not config.has_mask_embedding:
            raise MERTConfigError("MERTForPretraining needs masked_spec_embed: set mask_time_prob > 0")
        nn.Module.__init__(self)
        self.config = config
        self.feature_extractor = MERTFeatureEncoder(config)
        self.feature_projection = MERTFeatureProjection(config)
        self.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size))
        self.encoder = MERTEncoder(config)
        self.final_proj = nn.Linear(config.hidden_size, config.final_dim * config.num_codebooks)
        self.label_embs_concat = nn.Parameter(torch.empty(config.num_codebooks * config.codebook_size, config.final_dim))
        self.cqt_head = nn.Linear(config.hidden_size, config.cqt_bins)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        super().init_weights()
        if hasattr(self, "label_embs_concat"):
            nn.init.uniform_(self.label_embs_concat)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict without the heads (what a released HF checkpoint holds)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(HEAD_PREFIXES)}

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        apply_mask: bool | None = None,
    ) -> MERTPretrainingOutput:  # type: ignore[override]
        """Encode with span masking and run the heads.

        Args:
            input_values: [B, N] waveform (equal lengths, or right padding with ``attention_mask`` [B, N]).
            mask_time_indices: bool [B, T]; when None and ``apply_mask`` (default: ``self.training``), drawn with
                :func:`compute_span_mask` (``config.mask_prob``, ``mask_length``, ``mask_min_masks``).
        """
        cfg = self.config
        mult = cfg.feature_grad_mult if self.training else 1.0
        apply_mask = self.training if apply_mask is None else apply_mask
        feats, x, frame_mask = self._embed(input_values, attention_mask, None, feature_grad_mult=mult)
        features_pen = feats.float().pow(2).mean()
        if mask_time_indices is None and apply_mask and cfg.mask_prob > 0:
            # numpy draw seeded from torch's RNG, so torch.manual_seed makes the masks repeatable
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
            lengths = None if frame_mask is None else frame_mask.long().sum(-1).tolist()
            mask_time_indices = torch.from_numpy(compute_span_mask(
                x.shape[0], x.shape[1], cfg.mask_prob, cfg.mask_length, cfg.mask_min_masks, rng, lengths,
            )).to(x.device)
        if mask_time_indices is not None:
            mask_time_indices = mask_time_indices.to(x.device).bool()
            x = torch.where(mask_time_indices[..., None], self.masked_spec_embed.to(x.dtype), x)
        last, hidden = self.encoder(x, frame_mask, output_hidden_states)
        b, t, _ = last.shape
        proj = self.final_proj(last).view(b, t, cfg.num_codebooks, cfg.final_dim)
        return MERTPretrainingOutput(
            last_hidden_state=last,
            hidden_states=hidden,
            extract_features=feats,
            features_pen=features_pen,
            mask_time_indices=mask_time_indices,
            frame_mask=frame_mask,
            projections=proj,
            label_embeddings=self.label_embs_concat.view(cfg.num_codebooks, cfg.codebook_size, cfg.final_dim),
            cqt_pred=self.cqt_head(last),
        )


# ============================================================================================ state-dict files


def normalize_state_dict(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Map released/HF key variants onto our names.

    - ``hubert.`` / ``mert.`` prefixes (HubertFor* heads, wrappers) are stripped;
    - ``...conv.parametrizations.weight.original0/1`` (torch parametrizations, transformers >= 4.3x) become
      ``...conv.weight_g/weight_v``;
    - a fully materialised positional-conv ``weight`` is not accepted (g and v cannot be recovered uniquely).
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        for prefix in ("hubert.", "mert.", "module."):
            if k.startswith(prefix):
                k = k[len(prefix):]
                break
        k = k.replace("parametrizations.weight.original0", "weight_g")
        k = k.replace("parametrizations.weight.original1", "weight_v")
        out[k] = v
    return out


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a model folder or single weights file (safetensors, sharded safetensors, or a weights-only .bin)."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        for name in (WEIGHTS_NAME, "model.safetensors.index.json", "pytorch_model.bin"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(
                f"{path}: no weights (expected model.safetensors, model.safetensors.index.json or pytorch_model.bin)"
            )
    try:
        if path.name.endswith(".index.json"):
            index = json.loads(path.read_text())
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(index["weight_map"].values())):
                state.update(load_file(str(path.parent / shard)))
            return state
        if path.suffix == ".safetensors":
            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - every reader error becomes one typed error naming the file
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a flat state dict of tensors")
    return obj


def load_model(path: str | Path, map_location: str | torch.device = "cpu", pretraining: bool = False) -> MERTModel:
    """Load a model folder as :class:`MERTModel` (or :class:`MERTForPretraining`), in eval mode."""
    cls = MERTForPretraining if pretraining else MERTModel
    return cls.from_pretrained(path, map_location=map_location)
