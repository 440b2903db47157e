"""Configuration of the X-Codec used by YuE (``xcodec_mini_infer``) and of its tiny CPU sibling."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["XCodecConfig", "SemanticConfig", "released_config", "tiny_config"]


@dataclass
class SemanticConfig:
    """The HuBERT-style semantic teacher (frozen; its hidden states, averaged over ALL layers, feed the codec).

    Attributes:
        hidden_size: feature width (released in-house HuBERT: 768).
        num_hidden_layers / num_attention_heads / intermediate_size: transformer size (released: HuBERT-base 12/12/3072).
        conv_dim / conv_kernel / conv_stride: the waveform feature encoder (total stride must equal the codec hop, 320).
        num_conv_pos_embeddings / num_conv_pos_embedding_groups: convolutional position embedding.
        extra: any other ``transformers.HubertConfig`` fields (the converter copies them from the released
            ``semantic_ckpts/hf_1_325000/config.json``, e.g. ``feat_extract_norm``, ``conv_bias``).
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: list[int] = field(default_factory=lambda: [512] * 7)
    conv_kernel: list[int] = field(default_factory=lambda: [10, 3, 3, 3, 3, 2, 2])
    conv_stride: list[int] = field(default_factory=lambda: [5, 2, 2, 2, 2, 2, 2])
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    extra: dict = field(default_factory=dict)


@dataclass
class XCodecConfig:
    """X-Codec hyper-parameters (field names follow the released ``final_ckpt/config.yaml`` where one exists).

    Attributes:
        sample_rate: input rate (16 kHz).
        ratios: encoder downsampling (and decoder upsampling) factors; hop = prod = 320 -> 50 frames/s.
        D: acoustic latent width (released 256); the quantizer works on ``D + semantic.hidden_size`` channels.
        bins: codes per codebook (1024).
        target_bandwidths: kbps choices; the last one fixes the number of codebooks (6 kbps -> 12).
        encoder_dim: DAC encoder base width (released 64, hard-coded upstream).
        decoder_dim: DAC decoder base width (released 1024, hard-coded upstream).
        semantic: the semantic teacher.
    """

    sample_rate: int = 16000
    ratios: list[int] = field(default_factory=lambda: [8, 5, 4, 2])
    D: int = 256
    bins: int = 1024
    target_bandwidths: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0, 4.0, 6.0])
    encoder_dim: int = 64
    decoder_dim: int = 1024
    semantic: SemanticConfig = field(default_factory=SemanticConfig)

    @property
    def hop_length(self) -> int:
        return int(math.prod(self.ratios))

    @property
    def frame_rate(self) -> int:
        return math.ceil(self.sample_rate / self.hop_length)

    @property
    def n_q(self) -> int:
        """Number of codebooks: ``1000 * max_bw // (frame_rate * log2(bins))`` (12 for the released codec)."""
        return int(1000 * self.target_bandwidths[-1] // (self.frame_rate * math.ceil(math.log2(self.bins))))

    def n_q_for_bandwidth(self, bw: float | None) -> int:
        """Codebooks used at ``bw`` kbps (each costs ``frame_rate * log2(bins) / 1000`` kbps: 0.5 -> 1 codebook)."""
        if bw is None:
            return self.n_q
        per_q = math.log2(self.bins) * self.frame_rate / 1000
        return max(1, min(self.n_q, int(math.floor(bw / per_q + 1e-9))))

    def to_hf(self):
        """The equivalent ``transformers.XcodecConfig``."""
        from transformers import HubertConfig, XcodecConfig as HFXcodecConfig

        s = self.semantic
        hubert = HubertConfig(
            hidden_size=s.hidden_size,
            num_hidden_layers=s.num_hidden_layers,
            num_attention_heads=s.num_attention_heads,
            intermediate_size=s.intermediate_size,
            conv_dim=list(s.conv_dim),
            conv_kernel=list(s.conv_kernel),
            conv_stride=list(s.conv_stride),
            num_conv_pos_embeddings=s.num_conv_pos_embeddings,
            num_conv_pos_embedding_groups=s.num_conv_pos_embedding_groups,
            **s.extra,
        )
        acoustic = {
            "encoder_hidden_size": self.encoder_dim,
            "decoder_hidden_size": self.decoder_dim,
            "downsampling_ratios": list(self.ratios),
            "upsampling_ratios": list(self.ratios),
            "hidden_size": self.D,
            "sampling_rate": self.sample_rate,
        }
        return HFXcodecConfig(
            target_bandwidths=list(self.target_bandwidths),
            sample_rate=self.sample_rate,
            codebook_size=self.bins,
            acoustic_model_config=acoustic,
            semantic_model_config=hubert.to_dict(),
        )


def released_config() -> XCodecConfig:
    """``xcodec_mini_infer`` shapes: D=256, HuBERT-base teacher, 12 x 1024 codebooks, 16 kHz, hop 320."""
    return XCodecConfig()


def tiny_config() -> XCodecConfig:
    """A CPU-trainable codec with the same hop (320), frame rate and code layout (12 x 1024 ids), small widths."""
    return XCodecConfig(
        D=32,
        encoder_dim=8,
        decoder_dim=64,
        semantic=SemanticConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            conv_dim=[32] * 7,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
        ),
    )
