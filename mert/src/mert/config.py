"""Configuration of MERT pretraining: the typed config tree, its cross-field checks and YAML loading.

The one module that ``mert.train`` (the Trainer) and ``mert.prepare`` (manifests, k-means, label caches) both read
their settings from, so neither imports the other for its config. YAML files hold deltas from these defaults
(MERT-v1-95M); ``_base_`` includes and ``key=value`` overrides come from :func:`musiccore.config.load_config`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from musiccore.config import ConfigError, config_hash, load_config
from musiccore.runs import runs_root

from .configuration_mert import MERTConfig

log = logging.getLogger("mert.train")

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
"""The project's configs/ folder (tiny.yaml, mert_v1_95m.yaml, ...)."""


# =====================================================================================================================
# Config tree
# =====================================================================================================================
@dataclass
class TeacherConfig:
    """Acoustic teacher (discrete targets) and musical teacher (CQT) settings."""

    kind: str = "encodec"
    """``encodec`` (MERT-v1: EnCodec RVQ codes) or ``kmeans`` (MERT-v0: k-means on MFCC/log-mel/chroma/model features)."""
    sample_rate: int = 24000
    """Rate the teacher labels audio at (must equal model.sample_rate: labels are at sample_rate / 320 Hz)."""
    encodec_checkpoint: Optional[str] = None
    """Local folder of the transformers EnCodec 24 kHz checkpoint (config.json + weights). Nothing is downloaded."""
    encodec_bandwidth: float = 6.0
    """Target bandwidth in kbps: 6.0 gives 8 codebooks of 1024 codes at 75 Hz."""
    allow_random_weights: bool = False
    """Tests/smoke runs only: a randomly initialised EnCodec when no checkpoint is given (codes carry no meaning)."""
    random_encodec_overrides: Dict[str, int] = field(default_factory=dict)
    """EncodecConfig fields of that random codec (e.g. num_filters: 8 to make it fast)."""
    kmeans_features: List[str] = field(default_factory=lambda: ["mfcc"])
    """Feature set per k-means codebook: mfcc, logmel, chroma or model (one codebook each)."""
    kmeans_clusters: List[int] = field(default_factory=lambda: [500])
    """k per codebook (same length as kmeans_features)."""
    kmeans_path: str = ""
    """Fitted k-means file (.npz); empty: $MUSIC_CACHE_DIR/mert/kmeans/<teacher hash>.npz."""
    kmeans_fit_files: int = 1000
    """Training files sampled to fit k-means."""
    kmeans_max_frames: int = 500000
    """Frames per codebook used to fit (a random subset above this)."""
    kmeans_seed: int = 0
    """Seed of the file sample, the frame subset and MiniBatchKMeans."""
    model_checkpoint: Optional[str] = None
    """Encoder folder for the ``model`` feature kind (HuBERT-style refit on a trained model's layer)."""
    model_layer: int = 6
    """hidden_states index used by the ``model`` feature kind."""
    cqt_fmin: float = 32.7
    """Lowest CQT bin (C1)."""
    cqt_bins: int = 336
    """CQT bins (must equal model.cqt_bins)."""
    cqt_bins_per_octave: int = 48
    """336 // 7: seven octaves at quarter-semitone resolution."""


@dataclass
class LossConfig:
    """Loss weights and the in-batch noise mixture (masking and logit temperature live in the model config)."""

    features_pen_weight: float = 10.0
    """Weight of mean(conv_features^2) (fairseq loss_weights[0])."""
    cqt_weight: float = 1.0
    """Weight of the CQT reconstruction MSE (loss_weights[1]); 0 disables the musical teacher."""
    noise_mix: bool = True
    """In-batch noise mixture augmentation on/off."""
    mixture_prob: float = 0.5
    """An item is augmented when rand > mixture_prob (the reference's inverted test): p(augment) = 1 - mixture_prob."""
    noise_num_min: int = 1
    """Fewest noise segments per augmented item."""
    noise_num_max: int = 3
    """Most noise segments per augmented item (inclusive)."""
    noise_len_min: int = 12000
    """Shortest noise segment in samples (0.5 s)."""
    noise_len_max: int = 24000
    """Longest noise segment in samples (1.0 s for 95M, 1.5 s = 36000 for 330M)."""


@dataclass
class DataConfig:
    """Where the audio is and how it is cropped and batched."""

    train_manifest: str = ""
    """jsonl manifest of the training audio (`mert prepare manifest`); empty: the data kit's clips."""
    valid_manifest: str = ""
    """jsonl manifest of held-out audio for validation; empty: the data kit's clips of datakit_valid_split."""
    datakit_root: str = ""
    """Data kit root when the manifests are empty (default MUSIC_DATA_DIR)."""
    datakit_train_split: str = "train"
    """Data kit split used for training."""
    datakit_valid_split: str = "valid"
    """Data kit split used for validation."""
    label_dir: str = ""
    """Root of the label caches; empty: $MUSIC_CACHE_DIR/mert/labels."""
    label_shards: int = 1
    """Shards of the label cache (one Slurm array task each)."""
    auto_prepare: bool = False
    """Compute a missing label cache (and fit k-means) at the start of training (tiny config); else it is an error."""
    max_sample_size: int = 120000
    """Crop length in samples (120000 = 5 s for 95M; 122880 = 5.12 s = 384 frames for 330M)."""
    min_sample_size: int = 72000
    """Files shorter than this (3 s) are not used."""
    max_tokens: int = 1800000
    """Samples per GPU batch (after cropping): 1.8M = 75 s for 95M, 920k for 330M."""
    max_batch_size: int = 0
    """Cap on clips per batch (0: no cap)."""
    num_workers: int = 4
    """DataLoader worker processes per rank."""
    valid_batches: int = 20
    """Validation batches per evaluation (fixed crops and masks, so curves are comparable)."""


@dataclass
class OptimConfig:
    """Adam + polynomial decay with warmup (fairseq adam / polynomial_decay)."""

    lr: float = 5e-4
    """Peak learning rate (5e-4 for 95M, 1.5e-3 for 330M)."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.98
    """Adam beta2."""
    adam_eps: float = 1e-6
    """Adam epsilon."""
    weight_decay: float = 0.01
    """Decoupled weight decay (fairseq's Adam decays every parameter; transformers exempts biases and norms)."""
    warmup_steps: int = 32000
    """Linear warmup updates."""
    lr_end: float = 0.0
    """Final learning rate of the polynomial decay."""
    power: float = 1.0
    """Power of the polynomial decay (1.0 = linear)."""
    clip_norm: float = 10.0
    """Gradient-norm clipping (10.0 for 95M, 1.0 for 330M; 0 disables)."""


@dataclass
class TrainerConfig:
    """Loop length, precision, checkpoints, logging and distributed engine."""

    run_name: str = "mert"
    """Run folder name prefix: $MUSIC_RUNS_DIR/mert/<run_name>-<config hash>."""
    run_dir: str = ""
    """Explicit run folder (overrides the naming above)."""
    fresh: bool = False
    """Clear the run folder instead of resuming."""
    seed: int = 1
    """Seed of model init, data order, crops, masks, noise and dropout."""
    max_steps: int = 400000
    """Optimizer updates."""
    max_minutes: float = 0.0
    """Stop (with a checkpoint) after this many minutes of training (0: no limit); used by the demo."""
    update_freq: int = 1
    """Gradient accumulation steps (fairseq update_freq: 1 for 95M, 8 for 330M)."""
    precision: str = "auto"
    """fp16, bf16, fp32 or auto (fp16 on CUDA as in the paper runs, fp32 on CPU)."""
    save_steps: int = 25000
    """Checkpoint every N updates (25k for 95M, 5k for 330M)."""
    save_total_limit: int = 3
    """Keep the newest N checkpoints."""
    log_steps: int = 100
    """One log line (and metrics.jsonl row) every N updates."""
    eval_steps: int = 5000
    """Validation every N updates (0: never)."""
    deepspeed: str = ""
    """DeepSpeed JSON config path (empty: DDP)."""
    fsdp: str = ""
    """transformers FSDP option string, e.g. "full_shard auto_wrap" (empty: off)."""
    gradient_checkpointing: bool = False
    """Recompute transformer activations in the backward pass."""
    tensorboard: bool = True
    """Write TensorBoard events to <run_dir>/tb."""
    plot: bool = True
    """Write curves.png (training loss, validation accuracy and CQT loss) at the end."""


@dataclass
class TrainConfig:
    """Everything a MERT pretraining run needs (YAML files hold deltas from these defaults = MERT-v1-95M)."""

    model: MERTConfig = field(default_factory=MERTConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def apply_init_from(cfg: TrainConfig) -> TrainConfig:
    """With ``model.init_from``: take the architecture fields from that folder's config.json (logged when they differ);
    training fields (dropouts, masking, feature_grad_mult) stay as configured."""
    from .configuration_mert import ARCHITECTURE_FIELDS
    from .extract import resolve_model_folder

    m = cfg.model
    if not m.init_from:
        return cfg
    try:
        folder = resolve_model_folder(m.init_from)
        src = MERTConfig.from_json(folder)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"model.init_from: {e}") from e
    changed = {f: (getattr(m, f), getattr(src, f)) for f in ARCHITECTURE_FIELDS if getattr(m, f) != getattr(src, f)}
    if changed:
        log.info("model.init_from %s: architecture from its config.json: %s", folder,
                 ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(m, **{k: b for k, (_, b) in changed.items()}))
    return cfg


def validate(cfg: TrainConfig) -> TrainConfig:
    """Cross-section checks that a dataclass cannot express; raises ConfigError naming the fields."""
    cfg = apply_init_from(cfg)
    m, t = cfg.model, cfg.teacher
    if t.sample_rate != m.sample_rate:
        raise ConfigError(f"teacher.sample_rate {t.sample_rate} != model.sample_rate {m.sample_rate}")
    if t.kind == "kmeans":
        if len(t.kmeans_features) != len(t.kmeans_clusters):
            raise ConfigError("teacher.kmeans_features and teacher.kmeans_clusters must have the same length")
        if m.num_codebooks != len(t.kmeans_features):
            raise ConfigError(f"model.num_codebooks {m.num_codebooks} != {len(t.kmeans_features)} k-means codebooks")
        if m.codebook_size < max(t.kmeans_clusters):
            raise ConfigError(f"model.codebook_size {m.codebook_size} < largest k {max(t.kmeans_clusters)}")
    elif t.kind == "encodec":
        k = int(round(t.encodec_bandwidth * 1000 / (75 * 10)))
        if m.num_codebooks != k:
            raise ConfigError(f"model.num_codebooks {m.num_codebooks} != {k} EnCodec codebooks at {t.encodec_bandwidth} kbps")
        if m.codebook_size < 1024:
            raise ConfigError(f"model.codebook_size {m.codebook_size} < 1024 EnCodec codes")
        if t.sample_rate != 24000:
            raise ConfigError("the EnCodec teacher is the 24 kHz model: use sample_rate 24000")
    else:
        raise ConfigError(f"teacher.kind {t.kind!r}: expected encodec or kmeans")
    if cfg.loss.cqt_weight > 0 and t.cqt_bins != m.cqt_bins:
        raise ConfigError(f"teacher.cqt_bins {t.cqt_bins} != model.cqt_bins {m.cqt_bins}")
    if t.cqt_fmin * 2 ** (t.cqt_bins / t.cqt_bins_per_octave) >= m.sample_rate / 2:
        raise ConfigError("CQT top bin is above Nyquist: lower teacher.cqt_bins or raise the sample rate")
    d = cfg.data
    if d.max_sample_size % 320 or d.max_sample_size < d.min_sample_size or d.min_sample_size < 800:
        raise ConfigError("data.max_sample_size must be a multiple of 320 and >= data.min_sample_size >= 800")
    if d.max_tokens < d.max_sample_size:
        raise ConfigError(f"data.max_tokens {d.max_tokens} < data.max_sample_size {d.max_sample_size}")
    if cfg.loss.noise_mix and cfg.loss.noise_len_min >= d.min_sample_size:
        raise ConfigError("loss.noise_len_min must be shorter than data.min_sample_size")
    if cfg.trainer.precision not in ("auto", "fp16", "bf16", "fp32"):
        raise ConfigError(f"trainer.precision {cfg.trainer.precision!r}: expected auto, fp16, bf16 or fp32")
    if not m.has_mask_embedding:
        raise ConfigError("model.mask_time_prob must be > 0 (the pretraining model needs masked_spec_embed)")
    return cfg


def load_train_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """YAML + ``key=value`` overrides -> validated :class:`TrainConfig`."""
    cfg = load_config(TrainConfig, path, list(overrides or ()))
    return validate(cfg)


def resolve_run_dir(cfg: TrainConfig) -> Path:
    """``trainer.run_dir``, or ``$MUSIC_RUNS_DIR/mert/<run_name>-<hash of the config>``."""
    if cfg.trainer.run_dir:
        return Path(cfg.trainer.run_dir)
    return runs_root() / "mert" / f"{cfg.trainer.run_name}-{config_hash(cfg, exclude=('run_dir', 'fresh', 'num_workers'))}"


def codebook_sizes_of(cfg: TrainConfig) -> list[int]:
    """Codes per codebook of the acoustic teacher of ``cfg``: the k-means sizes, or 8 x 1024 EnCodec codes at 6 kbps."""
    t = cfg.teacher
    if t.kind == "kmeans":
        return list(map(int, t.kmeans_clusters))
    return [1024] * int(round(t.encodec_bandwidth * 1000 / (75 * 10)))

