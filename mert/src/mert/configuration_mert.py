"""Configuration of the MERT encoder (HuBERT-style backbone) and of its optional pretraining heads.

One plain dataclass, readable from the released ``config.json`` files (MERT-v1-95M, MERT-v1-330M, MERT-v0; their
``model_type`` is ``mert_model`` or ``hubert``) and written back as our own ``config.json``. Field names follow the
Hugging Face ``HubertConfig``/``MERTConfig`` names so that a released config maps one to one. Keys we do not use
(``auto_map``, ``vocab_size``, ``ctc_*``, ...) are ignored on read.

Nothing here imports transformers: the model must keep loading when transformers changes (spec section 8.1).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MODEL_TYPE = "mert_model"
CONFIG_NAME = "config.json"
ACTIVATIONS = ("gelu", "relu", "silu", "swish", "gelu_new", "gelu_pytorch_tanh")


#: MERTConfig fields used by training only (not written to config.json)
TRAINING_ONLY = ("init_from", "label_dicts")
#: fields that fix the state-dict shapes and the forward computation (taken from ``init_from``'s config)
ARCHITECTURE_FIELDS = (
    "sample_rate", "conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm", "feat_extract_activation",
    "feat_proj_layer_norm", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "layer_norm_eps", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "conv_pos_batch_norm",
    "do_stable_layer_norm", "final_dim", "num_codebooks", "codebook_size", "cqt_bins",
)


#: declared type of each checked field (annotations are strings under ``from __future__ import annotations``)
_FIELD_KINDS = {"int": "int", "float": "float", "bool": "bool", "str": "str", "list[int]": "list[int]"}
#: integer fields that must be >= 1 (sizes, counts, lengths)
_POSITIVE_INTS = (
    "sample_rate", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "mask_time_length", "mask_length",
    "feature_extractor_cqt_bins", "final_dim", "num_codebooks", "codebook_size", "cqt_bins",
)
#: fields that are probabilities
_PROBABILITIES = (
    "feat_proj_dropout", "hidden_dropout", "attention_dropout", "activation_dropout", "layerdrop", "mask_time_prob",
    "mask_feature_prob", "mask_prob",
)


class MERTConfigError(ValueError):
    """A config that the model cannot be built from (inconsistent sizes, unsupported option)."""


@dataclass
class MERTConfig:
    """Every hyperparameter of :class:`mert.modeling_mert.MERTModel` (and of the pretraining heads).

    Defaults are MERT-v1-95M (spec section 5.1); :meth:`preset` gives the other released sizes and a tiny one.
    """

    # ---- input
    sample_rate: int = 24000
    """Waveform rate the model was trained at: 24000 for v1 (75 Hz frames), 16000 for v0 (50 Hz)."""

    # ---- conv feature extractor (7 layers, total stride 320, receptive field 400 samples)
    conv_dim: list[int] = field(default_factory=lambda: [512] * 7)
    """Output channels of each conv layer."""
    conv_kernel: list[int] = field(default_factory=lambda: [10, 3, 3, 3, 3, 2, 2])
    """Kernel size of each conv layer."""
    conv_stride: list[int] = field(default_factory=lambda: [5, 2, 2, 2, 2, 2, 2])
    """Stride of each conv layer."""
    conv_bias: bool = False
    """Conv layers have a bias (false in every MERT release)."""
    feat_extract_norm: str = "group"
    """"group": GroupNorm(C, C) after conv 0 only (MERT, fairseq "default" mode); "layer": LayerNorm after every conv."""
    feat_extract_activation: str = "gelu"
    """Activation of the conv layers and of the positional conv."""

    # ---- feature projection
    feat_proj_layer_norm: bool = True
    """LayerNorm over the conv channels before the projection (true for MERT)."""
    feat_proj_dropout: float = 0.1
    """Dropout after the projection (fairseq dropout_input)."""

    # ---- transformer encoder
    hidden_size: int = 768
    """Model width D."""
    num_hidden_layers: int = 12
    """Number of transformer layers L; ``hidden_states`` has L + 1 entries."""
    num_attention_heads: int = 12
    """Attention heads (head_dim = hidden_size / heads = 64 in every release)."""
    intermediate_size: int = 3072
    """FFN inner width."""
    hidden_act: str = "gelu"
    """FFN activation (exact erf GELU for MERT)."""
    do_stable_layer_norm: bool = False
    """False: post-LN layers, encoder LayerNorm before the stack (95M). True: pre-LN layers, LayerNorm after (330M)."""
    num_conv_pos_embeddings: int = 128
    """Kernel of the positional conv (even: the last output frame is dropped)."""
    num_conv_pos_embedding_groups: int = 16
    """Groups of the positional conv."""
    conv_pos_batch_norm: bool = False
    """BatchNorm before a plain positional conv instead of weight norm (mHuBERT-25Hz; false for MERT)."""
    layer_norm_eps: float = 1e-5
    """Epsilon of every LayerNorm."""

    # ---- regularisation (training-time values; inference runs in eval mode)
    hidden_dropout: float = 0.1
    """Dropout on residual branches and after the positional embedding."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities."""
    activation_dropout: float = 0.0
    """Dropout after the FFN activation."""
    layerdrop: float = 0.05
    """Probability of skipping a whole layer in training."""

    # ---- masking
    mask_time_prob: float = 0.05
    """HF field; a value > 0 (as released) means the checkpoint has ``masked_spec_embed``. Not used at inference."""
    mask_time_length: int = 10
    """HF field, kept for round trips."""
    mask_feature_prob: float = 0.0
    """HF field; > 0 also creates ``masked_spec_embed``."""
    mask_prob: float = 0.8
    """Pretraining span-mask probability (fairseq mask_prob): about mask_prob * T / mask_length span starts."""
    mask_length: int = 5
    """Pretraining span length in frames."""
    mask_min_masks: int = 2
    """Minimum number of spans per item."""

    # ---- MERT-specific fields of the released config (must be off: they are off in every release)
    feature_extractor_cqt: bool = False
    """CQT input branch (false in all releases; not supported)."""
    feature_extractor_cqt_bins: int = 336
    """Bins of that CQT branch."""
    deepnorm: bool = False
    """DeepNorm residual scaling (false in all releases; not supported)."""
    attention_relax: float = -1.0
    """fp16 guard of 330M; mathematically a no-op for softmax attention, so accepted and ignored."""

    # ---- pretraining heads (MERTForPretraining only; absent from released HF checkpoints)
    final_dim: int = 64
    """Projection size per codebook (64 for 95M, 128 for 330M)."""
    num_codebooks: int = 8
    """Number of EnCodec codebooks predicted (8 at 6 kbps)."""
    codebook_size: int = 1024
    """Classes per codebook (label embeddings per codebook). fairseq checkpoints have 1024 + 4 specials."""
    cqt_bins: int = 336
    """Output size of the CQT reconstruction head."""
    feature_grad_mult: float = 0.1
    """Gradient scale into the conv feature extractor in pretraining (0.1 for 95M, 1.0 for 330M)."""
    logit_temp: float = 0.1
    """Temperature of the cosine logits (used by the loss)."""

    # ---- continued pretraining (read by mert.train only; never written to a saved config.json)
    init_from: str = ""
    """Local model folder to start pretraining from: ours (`mert convert` of a fairseq checkpoint: heads included) or
    a released HF folder (encoder only: heads start fresh). Its architecture fields replace this section's."""
    label_dicts: str = ""
    """Folder with the run's fairseq dictionaries ``dict.<label>.txt`` (one per codebook, natural name order): code c
    of codebook k is trained against label-embedding row 4 + (line of "c" in that file), after the 4 specials
    (<s>, <pad>, </s>, <unk>). Empty with ``init_from``: a table with 4 rows more than the teacher has codes is read
    as the released layout (codes listed 0..N-1 in order, row = 4 + c); otherwise row = code."""

    def __post_init__(self) -> None:
        self.check_types()
        self.conv_dim = [int(x) for x in self.conv_dim]
        self.conv_kernel = [int(x) for x in self.conv_kernel]
        self.conv_stride = [int(x) for x in self.conv_stride]
        self.validate()

    def check_types(self) -> None:
        """Every field has its declared type (a ``config.json`` with ``"hidden_size": "768"`` or ``true`` where a
        number belongs is refused here, naming the field, instead of failing later inside torch)."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            kind = _FIELD_KINDS.get(str(f.type))
            if kind is None:
                continue
            ok = {
                "int": lambda x: isinstance(x, int) and not isinstance(x, bool),
                "float": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x),
                "bool": lambda x: isinstance(x, bool),
                "str": lambda x: isinstance(x, str),
                "list[int]": lambda x: isinstance(x, (list, tuple)) and all(
                    isinstance(y, int) and not isinstance(y, bool) for y in x),
            }[kind](v)
            if not ok:
                want = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a string",
                        "list[int]": "a list of integers"}[kind]
                raise MERTConfigError(f"field {f.name!r}: expected {want}, got {type(v).__name__} {v!r}")

    # ------------------------------------------------------------------ derived
    @property
    def num_feat_extract_layers(self) -> int:
        return len(self.conv_dim)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def has_mask_embedding(self) -> bool:
        """Whether the model holds ``masked_spec_embed`` (same rule as HubertModel)."""
        return self.mask_time_prob > 0.0 or self.mask_feature_prob > 0.0

    @property
    def total_stride(self) -> int:
        s = 1
        for x in self.conv_stride:
            s *= x
        return s

    @property
    def receptive_field(self) -> int:
        """Samples seen by one output frame (400 for the released conv stack)."""
        rf, jump = 1, 1
        for k, s in zip(self.conv_kernel, self.conv_stride):
            rf += (k - 1) * jump
            jump *= s
        return rf

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.total_stride

    def num_frames(self, num_samples: int) -> int:
        """Frames for an input of ``num_samples`` (T = floor((N - 400) / 320) + 1 for the released stack; 0 if too short)."""
        n = int(num_samples)
        for k, s in zip(self.conv_kernel, self.conv_stride):
            if n < k:
                return 0
            n = (n - k) // s + 1
        return n

    def validate(self) -> None:
        """Value ranges and cross-field consistency; raises :class:`MERTConfigError` naming the field."""
        for name in _POSITIVE_INTS:
            if getattr(self, name) < 1:
                raise MERTConfigError(f"field {name!r} must be >= 1, got {getattr(self, name)!r}")
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            if any(x < 1 for x in getattr(self, name)):
                raise MERTConfigError(f"field {name!r}: every entry must be >= 1, got {getattr(self, name)}")
        for name in _PROBABILITIES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise MERTConfigError(f"field {name!r} must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("layer_norm_eps", "logit_temp"):
            if not getattr(self, name) > 0:
                raise MERTConfigError(f"field {name!r} must be > 0, got {getattr(self, name)!r}")
        if self.mask_min_masks < 0 or self.feature_grad_mult < 0:
            raise MERTConfigError("fields 'mask_min_masks' and 'feature_grad_mult' must be >= 0")
        n = len(self.conv_dim)
        if not (len(self.conv_kernel) == len(self.conv_stride) == n) or n == 0:
            raise MERTConfigError(
                f"conv_dim, conv_kernel and conv_stride must have the same (non-zero) length, got "
                f"{len(self.conv_dim)}, {len(self.conv_kernel)}, {len(self.conv_stride)}"
            )
        if self.feat_extract_norm not in ("group", "layer"):
            raise MERTConfigError(f"feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}")
        if self.hidden_size % self.num_attention_heads:
            raise MERTConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise MERTConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_conv_pos_embedding_groups "
                f"{self.num_conv_pos_embedding_groups}"
            )
        for name in ("hidden_act", "feat_extract_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise MERTConfigError(f"{name} {getattr(self, name)!r} is not supported (one of {ACTIVATIONS})")
        if self.deepnorm:
            raise MERTConfigError("deepnorm=true is not supported (it is false in every released MERT config)")
        if self.feature_extractor_cqt:
            raise MERTConfigError(
                "feature_extractor_cqt=true (CQT input branch) is not supported (false in every released MERT config)"
            )
        if self.sample_rate <= 0:
            raise MERTConfigError(f"sample_rate must be positive, got {self.sample_rate}")

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "MERTConfig":
        """Named sizes: ``mert-v1-95m``, ``mert-v1-330m``, ``mert-v0`` (16 kHz 95M), ``tiny`` (tests, demo)."""
        name = name.lower()
        if name in ("mert-v1-95m", "95m"):
            kw: dict[str, Any] = {}
        elif name in ("mert-v1-330m", "330m"):
            kw = dict(
                hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                do_stable_layer_norm=True, feat_proj_dropout=0.0, hidden_dropout=0.0, attention_dropout=0.0,
                activation_dropout=0.0, layerdrop=0.0, attention_relax=32.0, mask_time_prob=0.075,
                final_dim=128, feature_grad_mult=1.0,
            )
        elif name in ("mert-v0", "mert-v0-public", "v0"):
            kw = dict(sample_rate=16000)
        elif name == "tiny":
            kw = dict(
                conv_dim=[32] * 7, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, final_dim=16, codebook_size=64,
                cqt_bins=84,
            )
        else:
            raise MERTConfigError(f"unknown preset {name!r} (mert-v1-95m, mert-v1-330m, mert-v0, tiny)")
        kw.update(overrides)
        return cls(**kw)

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "MERTConfig":
        """Build from a released (MERT or Hubert) or our own config dict; unknown keys are ignored."""
        names = cls.field_names()
        kw = {k: v for k, v in d.items() if k in names}
        unknown = sorted(set(d) - names)
        if unknown:
            logger.debug("%s: ignoring config keys %s", source, unknown)
        try:
            return cls(**kw)
        except TypeError as e:
            raise MERTConfigError(f"{source}: {e}") from e
        except MERTConfigError as e:
            raise MERTConfigError(f"{source}: {e}") from e

    @classmethod
    def from_json(cls, path: str | Path) -> "MERTConfig":
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no config.json (a model folder needs config.json + weights)")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise MERTConfigError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(d, dict):
            raise MERTConfigError(f"{path}: expected a JSON object")
        mt = d.get("model_type", MODEL_TYPE)
        if mt not in (MODEL_TYPE, "hubert", "mert"):
            raise MERTConfigError(f"{path}: model_type {mt!r} is not a MERT/HuBERT config")
        return cls.from_dict(d, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """Our config.json: every field plus model_type/architectures (no auto_map: no remote code)."""
        d = dataclasses.asdict(self)
        for k in TRAINING_ONLY:  # where a run started from is not part of the model
            d.pop(k, None)
        d["model_type"] = MODEL_TYPE
        d["architectures"] = ["MERTModel"]
        return d

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_hubert_dict(self) -> dict[str, Any]:
        """kwargs/config.json of an equivalent ``transformers.HubertConfig`` (plain HubertModel, no remote code).

        ``tie_last_hidden_states`` makes transformers >= 5 return the final-LayerNorm output as the last hidden
        state of a pre-LN model, as the released MERT code does (transformers 5 would otherwise return the
        un-normalised residual stream there). ``conv_pos_batch_norm`` is written explicitly (spec section 8.1).
        """
        keys = [
            "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
            "hidden_dropout", "activation_dropout", "attention_dropout", "feat_proj_dropout", "feat_proj_layer_norm",
            "layerdrop", "layer_norm_eps", "feat_extract_norm", "feat_extract_activation", "conv_dim", "conv_stride",
            "conv_kernel", "conv_bias", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups",
            "conv_pos_batch_norm", "do_stable_layer_norm", "mask_time_prob", "mask_time_length", "mask_feature_prob",
        ]
        d = {k: getattr(self, k) for k in keys}
        d["conv_dim"] = list(self.conv_dim)
        d["conv_stride"] = list(self.conv_stride)
        d["conv_kernel"] = list(self.conv_kernel)
        d["mask_time_min_masks"] = self.mask_min_masks
        d["tie_last_hidden_states"] = True
        d["sample_rate"] = self.sample_rate
        return d
