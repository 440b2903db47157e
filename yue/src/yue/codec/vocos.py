"""Vocos upsamplers of YuE: codec embeddings (50 Hz) -> 44.1 kHz audio.

Two released decoders share one config (``xcodec_mini_infer/decoders/config.yaml``): ``decoder_131000.pth`` for the
vocal track and ``decoder_151000.pth`` for the instrumental track. Their input is the **sum of the codebook vectors**
(:meth:`yue.codec.xcodec.XCodec.get_embed`, 1024 channels), not the ``fc_post2`` output.

Own modules (no ``vocos`` package) with the released state-dict names::

    backbone.embed.{weight,bias}                       Conv1d(input_channels, dim, 7, padding=3)
    backbone.norm.{weight,bias}                        LayerNorm(dim, eps=1e-6)
    backbone.convnext.{i}.dwconv / norm / pwconv1 / pwconv2 / gamma
    backbone.final_layer_norm.{weight,bias}
    head.out.{weight,bias}                             Linear(dim, n_fft + 2)
    head.istft.window                                  Hann window (buffer)

Shapes: features ``[B, C, T]`` -> audio ``[B, T * hop_length]`` (``padding="same"``: 882 samples per frame).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["VocosConfig", "VocosBackbone", "ISTFT", "ISTFTHead", "VocosDecoder", "load_released_vocos", "VocosLoadError"]


class VocosLoadError(ValueError):
    """Missing or mismatching upsampler config/weights (names the file)."""


@dataclass
class VocosConfig:
    """Upsampler hyper-parameters (released: 1024 -> 512-dim, 8 ConvNeXt layers, n_fft 3528, hop 882 = 44.1 kHz).

    Attributes:
        input_channels: width of the codec embedding sum.
        dim / intermediate_dim / num_layers: ConvNeXt backbone size.
        layer_scale_init_value: initial ``gamma`` (default ``1 / num_layers`` as upstream).
        n_fft / hop_length: ISTFT head; ``hop_length * 50`` is the output rate.
        padding: ``"same"`` (released) or ``"center"``.
    """

    input_channels: int = 1024
    dim: int = 512
    intermediate_dim: int = 1536
    num_layers: int = 8
    layer_scale_init_value: float | None = None
    n_fft: int = 3528
    hop_length: int = 882
    padding: str = "same"

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "VocosConfig":
        """Read the released ``decoders/config.yaml`` (``backbone.init_args`` + ``head.init_args``)."""
        import yaml

        p = Path(path)
        if not p.is_file():
            raise VocosLoadError(f"{p}: upsampler config not found")
        try:
            d = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise VocosLoadError(f"{p}: not valid YAML ({str(e)[:200]})") from None
        try:
            b, h = d["backbone"]["init_args"], d["head"]["init_args"]
            cfg = cls(
                b["input_channels"], b["dim"], b["intermediate_dim"], b["num_layers"],
                b.get("layer_scale_init_value"), h["n_fft"], h["hop_length"], h.get("padding", "same"),
            )  # fmt: skip
        except (KeyError, TypeError) as e:
            raise VocosLoadError(f"{p}: not a Vocos backbone/head config (missing or malformed {e})") from e
        for name in ("input_channels", "dim", "intermediate_dim", "num_layers", "n_fft", "hop_length"):
            v = getattr(cfg, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise VocosLoadError(f"{p}: {name} must be a positive integer, got {v!r}")
        ls = cfg.layer_scale_init_value
        if ls is not None and (isinstance(ls, bool) or not isinstance(ls, (int, float))):
            raise VocosLoadError(f"{p}: layer_scale_init_value must be a number, got {ls!r}")
        if cfg.padding not in ("same", "center") or cfg.hop_length > cfg.n_fft:
            raise VocosLoadError(f"{p}: padding {cfg.padding!r} / hop_length {cfg.hop_length} > n_fft {cfg.n_fft}")
        return cfg


class ConvNeXtBlock(nn.Module):
    """Depthwise conv (k=7) -> LayerNorm -> Linear -> GELU -> Linear, scaled by ``gamma``, residual. ``[B, C, T]``."""

    def __init__(self, dim: int, intermediate_dim: int, layer_scale_init_value: float):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).transpose(1, 2)  # [B, T, C]
        h = self.pwconv2(self.act(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class VocosBackbone(nn.Module):
    """``[B, input_channels, T]`` -> ``[B, T, dim]``."""

    def __init__(self, cfg: VocosConfig):
        super().__init__()
        self.embed = nn.Conv1d(cfg.input_channels, cfg.dim, kernel_size=7, padding=3)
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        scale = cfg.layer_scale_init_value or 1 / cfg.num_layers
        self.convnext = nn.ModuleList(ConvNeXtBlock(cfg.dim, cfg.intermediate_dim, scale) for _ in range(cfg.num_layers))
        self.final_layer_norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        for m in self.modules():  # upstream init: truncated normal weights, zero biases
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        for block in self.convnext:
            x = block(x)
        return self.final_layer_norm(x.transpose(1, 2))


class ISTFT(nn.Module):
    """Inverse STFT with ``"center"`` (torch.istft) or ``"same"`` padding (overlap-add trimmed so T frames give
    exactly ``T * hop_length`` samples). Input ``[B, n_fft//2+1, T]`` complex -> ``[B, samples]``."""

    def __init__(self, n_fft: int, hop_length: int, win_length: int, padding: str = "same"):
        super().__init__()
        if padding not in ("center", "same"):
            raise ValueError(f"padding must be 'center' or 'same', got {padding!r}")
        self.padding, self.n_fft, self.hop_length, self.win_length = padding, n_fft, hop_length, win_length
        self.register_buffer("window", torch.hann_window(win_length))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        if self.padding == "center":
            return torch.istft(spec, self.n_fft, self.hop_length, self.win_length, self.window, center=True)
        pad = (self.win_length - self.hop_length) // 2
        _, _, t = spec.shape
        frames = torch.fft.irfft(spec, self.n_fft, dim=1, norm="backward") * self.window[None, :, None]
        out_len = (t - 1) * self.hop_length + self.win_length
        # overlap-add of windowed frames, then divide by the summed squared window (the NOLA envelope)
        y = nn.functional.fold(frames, (1, out_len), (1, self.win_length), stride=(1, self.hop_length))[:, 0, 0]
        env = self.window.square().expand(1, t, -1).transpose(1, 2)
        env = nn.functional.fold(env, (1, out_len), (1, self.win_length), stride=(1, self.hop_length)).squeeze()
        y, env = y[:, pad : out_len - pad], env[pad : out_len - pad]
        if not bool((env > 1e-11).all()):
            raise ValueError("ISTFT window envelope has zeros (hop too large for the window)")
        return y / env


class ISTFTHead(nn.Module):
    """``[B, T, dim]`` -> magnitude (exp, clipped at 100) and phase -> ISTFT -> ``[B, T * hop]``."""

    def __init__(self, cfg: VocosConfig):
        super().__init__()
        self.out = nn.Linear(cfg.dim, cfg.n_fft + 2)
        self.istft = ISTFT(cfg.n_fft, cfg.hop_length, cfg.n_fft, cfg.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.out(x).transpose(1, 2)
        mag, phase = x.chunk(2, dim=1)
        mag = torch.exp(mag).clip(max=1e2)  # as upstream: guard against huge magnitudes
        spec = mag * (torch.cos(phase) + 1j * torch.sin(phase))
        return self.istft(spec)


class VocosDecoder(nn.Module):
    """Backbone + ISTFT head: codec embedding sum ``[B, C, T]`` -> ``[B, T * hop]`` audio (44.1 kHz released)."""

    def __init__(self, cfg: VocosConfig | None = None):
        super().__init__()
        self.cfg = cfg or VocosConfig()
        self.backbone = VocosBackbone(self.cfg)
        self.head = ISTFTHead(self.cfg)

    @property
    def sample_rate(self) -> int:
        return self.cfg.hop_length * 50

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(features))

    def load_weights(self, path: str | os.PathLike, allow_pickle: bool = False) -> "VocosDecoder":
        """Load released ``decoder_*.pth`` (``torch.load(weights_only=True)``; a legacy pickle only with
        ``allow_pickle=True``) or a ``.safetensors`` file; strict."""
        p = Path(path)
        if not p.is_file():
            raise VocosLoadError(f"{p}: upsampler weights not found")
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                state = load_file(str(p))
            except Exception as e:  # noqa: BLE001 - SafetensorError (truncated/corrupt header) names no file
                raise VocosLoadError(f"{p}: not a readable safetensors file ({type(e).__name__}: {e})") from e
        else:
            try:
                state = torch.load(p, map_location="cpu", weights_only=not allow_pickle)
            except Exception as e:  # noqa: BLE001 - re-raised with the file name and the way out
                raise VocosLoadError(
                    f"{p}: cannot load with weights_only=True ({type(e).__name__}: {str(e)[:200]}); if you trust the "
                    "file, pass allow_pickle=True (--allow-pickle)"
                ) from e
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise VocosLoadError(f"{p}: expected a state dict of tensors, got {type(state).__name__}")
        try:
            self.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError) as e:
            raise VocosLoadError(f"{p}: weights do not match the config: {' '.join(str(e).split())[:500]}") from e
        return self


def load_released_vocos(
    config_yaml: str | os.PathLike, weights: str | os.PathLike, allow_pickle: bool = False
) -> VocosDecoder:
    """Build a :class:`VocosDecoder` from the released config and load one of the released decoders."""
    return VocosDecoder(VocosConfig.from_yaml(config_yaml)).load_weights(weights, allow_pickle=allow_pickle).eval()
