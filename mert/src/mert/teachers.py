"""Teachers: the targets MERT learns to predict at masked frames.

Acoustic teachers give discrete labels ``[K, T_label]`` per file, one row per codebook, at the label rate
``sample_rate / 320`` (75 Hz at 24 kHz, 50 Hz at 16 kHz), so that label t belongs to conv frame t (spec §2.4):

- :class:`KMeansTeacher` (MERT-v0, HuBERT "simple_kmeans"): k-means (sklearn ``MiniBatchKMeans``) on frame features,
  one codebook per feature set: ``mfcc`` (13 MFCC + deltas + delta-deltas), ``logmel``, ``chroma``, or ``model``
  (hidden states of a MERT checkpoint layer: HuBERT's second-iteration refit). Centroids and the feature
  standardisation are stored in a ``.npz`` (no pickle); prediction is nearest centroid.
- :class:`EncodecTeacher` (MERT-v1): the residual VQ codes of EnCodec 24 kHz at 6 kbps, i.e. 8 codebooks of 1024
  codes at 75 Hz, from ``transformers.EncodecModel`` loaded from a LOCAL folder. Random weights are refused unless the
  caller passes ``allow_random_weights=True`` (tests only).

The musical teacher is :class:`CQTTeacher`: nnAudio's CQT with the spec's parameters (§2.3), computed on the training
device from the CLEAN waveform of the batch, before noise mixing; linear magnitude, [B, T, 336].

Frame convention for the features computed here: hop = 320 samples, ``center=True`` (frame t is centred on sample
t * 320), giving N // 320 + 1 frames; the dataset crops and truncates labels to the conv frame count.
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

HOP = 320  # total stride of the conv front end: label rate = sample_rate / HOP

FEATURE_KINDS = ("mfcc", "logmel", "chroma", "model")


class TeacherError(ValueError):
    """A teacher that cannot be built or applied (missing checkpoint, bad file, wrong sample rate)."""


# ---------------------------------------------------------------------------------------------------------------------
# Frame features for k-means
# ---------------------------------------------------------------------------------------------------------------------
def num_label_frames(num_samples: int, hop: int = HOP) -> int:
    """Frames of a centred STFT/CQT with this hop: N // hop + 1."""
    return num_samples // hop + 1


def frame_features(wav: np.ndarray, sample_rate: int, kind: str, hop: int = HOP, n_mels: int = 80) -> np.ndarray:
    """Frame-level features for k-means.

    Args:
        wav: mono waveform [N] float32.
        sample_rate: its rate.
        kind: ``mfcc`` (13 + delta + delta-delta = 39 dims), ``logmel`` (``n_mels`` dims, log(mel + 1e-6)) or
            ``chroma`` (12 dims, STFT chroma).
        hop: frame hop in samples (320: the label rate of the model).

    Returns:
        features [N // hop + 1, D] float32.
    """
    import librosa

    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    win = int(round(0.025 * sample_rate))  # 25 ms analysis window, as HuBERT's MFCC recipe
    n_fft = 1 << (max(win, hop * 2) - 1).bit_length()
    if kind == "mfcc":
        mel = librosa.feature.melspectrogram(
            y=wav, sr=sample_rate, n_fft=n_fft, win_length=win, hop_length=hop, n_mels=40, center=True, power=2.0
        )
        mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=13)
        width = min(9, mfcc.shape[1] - (1 - mfcc.shape[1] % 2)) if mfcc.shape[1] >= 3 else 0
        if width >= 3:
            d1 = librosa.feature.delta(mfcc, width=width, order=1)
            d2 = librosa.feature.delta(mfcc, width=width, order=2)
        else:
            d1 = np.zeros_like(mfcc)
            d2 = np.zeros_like(mfcc)
        feats = np.concatenate([mfcc, d1, d2], axis=0)
    elif kind == "logmel":
        mel = librosa.feature.melspectrogram(
            y=wav, sr=sample_rate, n_fft=n_fft, win_length=win, hop_length=hop, n_mels=n_mels, center=True
        )
        feats = np.log(mel + 1e-6)
    elif kind == "chroma":
        feats = librosa.feature.chroma_stft(y=wav, sr=sample_rate, n_fft=n_fft, win_length=win, hop_length=hop, center=True)
    else:
        raise TeacherError(f"unknown feature kind {kind!r}; expected one of {FEATURE_KINDS}")
    feats = feats.T.astype(np.float32)
    want = num_label_frames(len(wav), hop)
    return feats[:want] if len(feats) >= want else np.pad(feats, ((0, want - len(feats)), (0, 0)), mode="edge")


class ModelLayerFeatures:
    """Hidden states of one layer of a MERT encoder checkpoint (HuBERT-style second-iteration targets).

    Args:
        checkpoint: folder of an exported encoder (``config.json`` + ``model.safetensors``).
        layer: index into ``hidden_states`` (0 = transformer input, L = last layer).
        device: where to run the encoder.
        chunk_s: audio is encoded in windows of this many seconds (the model was trained on 5 s).
    """

    def __init__(self, checkpoint: str | Path, layer: int, device: str = "cpu", chunk_s: float = 5.0):
        from .modeling_mert import MERTModel

        path = Path(checkpoint)
        if not (path / "config.json").is_file():
            raise TeacherError(f"{path}: not an exported MERT encoder folder (config.json missing)")
        self.model = MERTModel.from_pretrained(str(path)).to(device).eval()
        self.layer = layer
        self.device = device
        self.sample_rate = int(getattr(self.model.config, "sample_rate", 24000))
        self.chunk = int(chunk_s * self.sample_rate) // HOP * HOP

    @torch.no_grad()
    def __call__(self, wav: np.ndarray) -> np.ndarray:
        """[N] -> [T_conv, D] (conv-frame count of the whole file; chunks are concatenated)."""
        x = torch.as_tensor(np.asarray(wav, np.float32).reshape(-1))
        pieces = []
        for s in range(0, len(x), self.chunk):
            seg = x[s : s + self.chunk]
            if len(seg) < 400:
                break
            out = self.model(seg[None].to(self.device), output_hidden_states=True)
            h = out.hidden_states[self.layer][0].float().cpu().numpy()
            if len(seg) < self.chunk:
                pieces.append(h)
                break
            # a full chunk yields chunk/320 - 1 conv frames: repeat its last frame so chunk k starts at label
            # frame k * chunk / 320 and the labels stay aligned with the audio across chunks
            want = self.chunk // HOP
            pieces.append(np.concatenate([h, np.repeat(h[-1:], want - len(h), axis=0)]) if len(h) < want else h[:want])
        if not pieces:
            raise TeacherError(f"audio of {len(x)} samples is shorter than one conv frame (400 samples)")
        return np.concatenate(pieces, axis=0)


# ---------------------------------------------------------------------------------------------------------------------
# K-means teacher
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class KMeansCodebook:
    """One fitted k-means codebook: feature kind, centroids [k, D] and the standardisation of its input."""

    kind: str
    centers: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    def predict(self, feats: np.ndarray) -> np.ndarray:
        """features [T, D] -> labels [T] (nearest centroid in the standardised space)."""
        z = torch.from_numpy((feats - self.mean) / self.std)
        c = torch.from_numpy(self.centers)
        d = (z * z).sum(1, keepdim=True) - 2 * z @ c.t() + (c * c).sum(1)[None]
        return d.argmin(1).numpy().astype(np.int64)


@dataclass
class KMeansTeacher:
    """K-means labels on frame features, one codebook per feature set.

    Args:
        kinds: feature set per codebook (``mfcc``, ``logmel``, ``chroma`` or ``model``).
        num_clusters: k per codebook (same length as ``kinds``).
        sample_rate: audio rate the features are computed at.
        model_checkpoint / model_layer: for the ``model`` kind only.
    """

    kinds: Sequence[str]
    num_clusters: Sequence[int]
    sample_rate: int = 24000
    model_checkpoint: str | None = None
    model_layer: int = 6
    codebooks: list[KMeansCodebook] = field(default_factory=list)
    _model: ModelLayerFeatures | None = field(default=None, repr=False)

    def __post_init__(self):
        if len(self.kinds) != len(self.num_clusters):
            raise TeacherError(f"kinds {list(self.kinds)} and num_clusters {list(self.num_clusters)} differ in length")
        for k in self.kinds:
            if k not in FEATURE_KINDS:
                raise TeacherError(f"unknown feature kind {k!r}; expected one of {FEATURE_KINDS}")
        if "model" in self.kinds and not self.model_checkpoint:
            raise TeacherError("the 'model' feature kind needs model_checkpoint (an exported encoder folder)")

    @property
    def num_codebooks(self) -> int:
        return len(self.kinds)

    @property
    def codebook_sizes(self) -> list[int]:
        return [int(k) for k in self.num_clusters]

    def features(self, wav: np.ndarray, kind: str) -> np.ndarray:
        if kind == "model":
            if self._model is None:
                self._model = ModelLayerFeatures(self.model_checkpoint, self.model_layer)  # type: ignore[arg-type]
            return self._model(wav)
        return frame_features(wav, self.sample_rate, kind)

    def fit(self, waves: Iterable[np.ndarray], max_frames: int = 200_000, seed: int = 0, batch_size: int = 4096) -> "KMeansTeacher":
        """Fit every codebook on frames of ``waves`` (mono [N] arrays at ``sample_rate``).

        Frames are pooled until ``max_frames`` per codebook (a random subset above that), standardised per
        dimension, then clustered with MiniBatchKMeans (k-means++ init, fixed seed).
        """
        from sklearn.cluster import MiniBatchKMeans

        pools: list[list[np.ndarray]] = [[] for _ in self.kinds]
        for wav in waves:
            for i, kind in enumerate(self.kinds):
                pools[i].append(self.features(wav, kind))
        rng = np.random.default_rng(seed)
        self.codebooks = []
        for kind, k, pool in zip(self.kinds, self.num_clusters, pools):
            if not pool:
                raise TeacherError("k-means fit: no audio given")
            x = np.concatenate(pool, axis=0).astype(np.float32)
            if len(x) > max_frames:
                x = x[rng.choice(len(x), max_frames, replace=False)]
            if len(x) < k:
                raise TeacherError(f"k-means fit: {len(x)} frames of {kind} features for k={k}; give more audio")
            mean, std = x.mean(0), x.std(0) + 1e-5
            km = MiniBatchKMeans(
                n_clusters=int(k), batch_size=min(batch_size, len(x)), n_init=3, max_iter=100,
                random_state=seed, init="k-means++", reassignment_ratio=0.0,
            ).fit((x - mean) / std)
            inertia = float(km.inertia_) / len(x)
            log.info("k-means %s: k=%d on %d frames, mean inertia %.3f", kind, k, len(x), inertia)
            self.codebooks.append(KMeansCodebook(kind, km.cluster_centers_.astype(np.float32), mean.astype(np.float32), std.astype(np.float32)))
        return self

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        """Labels of one file: mono [N] at ``sample_rate`` -> [K, N // 320 + 1] int64."""
        if len(self.codebooks) != len(self.kinds):
            raise TeacherError("k-means teacher is not fitted (call fit() or load())")
        rows = [cb.predict(self.features(wav, cb.kind)) for cb in self.codebooks]
        t = min(len(r) for r in rows)
        return np.stack([r[:t] for r in rows])

    def save(self, path: str | Path) -> Path:
        """Write centroids and standardisation to ``path`` (.npz, atomically; loadable without pickle)."""
        from musiccore.runs import atomic_path

        arrays = {}
        for i, cb in enumerate(self.codebooks):
            arrays[f"centers_{i}"], arrays[f"mean_{i}"], arrays[f"std_{i}"] = cb.centers, cb.mean, cb.std
        meta = {"kinds": list(self.kinds), "num_clusters": self.codebook_sizes, "sample_rate": self.sample_rate,
                "model_checkpoint": self.model_checkpoint, "model_layer": self.model_layer}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "KMeansTeacher":
        path = Path(path)
        if not path.is_file():
            raise TeacherError(f"{path}: k-means teacher file not found")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                t = cls(meta["kinds"], meta["num_clusters"], meta["sample_rate"], meta["model_checkpoint"], meta["model_layer"])
                t.codebooks = [KMeansCodebook(k, z[f"centers_{i}"], z[f"mean_{i}"], z[f"std_{i}"]) for i, k in enumerate(meta["kinds"])]
        except (KeyError, ValueError, OSError, EOFError, TypeError, zipfile.BadZipFile) as e:  # e.g. a 0-byte file
            raise TeacherError(f"{path}: not a k-means teacher file ({type(e).__name__}: {e})") from e
        return t


# ---------------------------------------------------------------------------------------------------------------------
# EnCodec teacher
# ---------------------------------------------------------------------------------------------------------------------
class EncodecTeacher:
    """EnCodec RVQ codes (MERT-v1's acoustic teacher): 24 kHz mono in, [K=8, ceil(N/320)] codes out at 6 kbps.

    Args:
        checkpoint: local folder of a ``transformers`` EnCodec 24 kHz checkpoint (config.json + weights). Nothing is
            downloaded.
        bandwidth: target bandwidth in kbps (6.0 -> 8 codebooks of 1024 codes).
        device: where to run the codec.
        allow_random_weights: with ``checkpoint=None``, build a randomly initialised codec (tests and smoke runs
            only; its codes carry no acoustic meaning). Without this flag a missing checkpoint is an error.
        config_overrides: EncodecConfig fields for the random codec (e.g. smaller ``num_filters`` in tests).
    """

    sample_rate = 24000

    def __init__(self, checkpoint: str | Path | None, bandwidth: float = 6.0, device: str = "cpu",
                 allow_random_weights: bool = False, config_overrides: dict | None = None, seed: int = 0):
        from transformers import EncodecConfig, EncodecModel

        if checkpoint is None:
            if not allow_random_weights:
                raise TeacherError(
                    "EnCodec teacher needs a local checkpoint folder (teacher.encodec_checkpoint); random weights are "
                    "only allowed with teacher.allow_random_weights=true (tests)"
                )
            torch.manual_seed(seed)
            self.model = EncodecModel(EncodecConfig(**(config_overrides or {})))
            log.warning("EnCodec teacher with RANDOM weights (allow_random_weights): codes are not acoustic units")
        else:
            path = Path(checkpoint)
            if not (path / "config.json").is_file():
                raise TeacherError(f"{path}: not an EnCodec checkpoint folder (config.json missing)")
            self.model = EncodecModel.from_pretrained(str(path), local_files_only=True)
        self.model = self.model.to(device).eval()
        cfg = self.model.config
        if int(cfg.sampling_rate) != self.sample_rate or int(np.prod(cfg.upsampling_ratios)) != HOP:
            raise TeacherError(f"EnCodec checkpoint must be the 24 kHz model with hop {HOP}; got {cfg.sampling_rate} Hz, "
                               f"hop {int(np.prod(cfg.upsampling_ratios))}")
        if bandwidth not in cfg.target_bandwidths:
            raise TeacherError(f"bandwidth {bandwidth} not in the codec's {list(cfg.target_bandwidths)}")
        self.bandwidth = bandwidth
        self.device = device
        frame_rate = self.sample_rate / HOP
        self.num_codebooks = int(1000 * bandwidth // (frame_rate * np.log2(cfg.codebook_size)))
        self.codebook_sizes = [int(cfg.codebook_size)] * self.num_codebooks

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """[B, N] 24 kHz mono -> codes [B, K, ceil(N / 320)] (int64)."""
        out = self.model.encode(wav[:, None].to(self.device), bandwidth=self.bandwidth)
        codes = out.audio_codes  # [chunks, B, K, T] (one chunk for the 24 kHz model)
        if codes.dim() == 4:
            codes = codes[0] if codes.shape[0] == 1 else torch.cat(list(codes), dim=-1)
        return codes.long().cpu()

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        """Labels of one file: mono [N] at 24 kHz -> [K, ceil(N / 320)] int64."""
        return self.encode(torch.as_tensor(np.asarray(wav, np.float32).reshape(1, -1)))[0].numpy()


# ---------------------------------------------------------------------------------------------------------------------
# CQT teacher
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class CQTParams:
    """nnAudio CQT parameters of the musical teacher (defaults: the released configs, spec §2.3)."""

    sample_rate: int = 24000
    label_rate: int = 75
    fmin: float = 32.7  # C1
    n_bins: int = 336
    bins_per_octave: int = 48  # 336 // 7: seven octaves at quarter-semitone resolution

    @property
    def hop_length(self) -> int:
        return self.sample_rate // self.label_rate


class CQTTeacher(nn.Module):
    """Linear-magnitude CQT of the clean waveform: [B, N] -> [B, N // hop + 1, n_bins] (not log-compressed).

    The kernels are fixed buffers (trainable=False), so the module moves to the training device with ``.to()`` and is
    never saved in checkpoints (``persistent=False`` semantics: the trainer excludes it from the model).
    """

    def __init__(self, params: CQTParams | None = None):
        super().__init__()
        from nnAudio.features.cqt import CQT

        self.params = params or CQTParams()
        p = self.params
        self.cqt = CQT(
            sr=p.sample_rate, hop_length=p.hop_length, fmin=p.fmin, fmax=None, n_bins=p.n_bins,
            bins_per_octave=p.bins_per_octave, filter_scale=1, norm=1, window="hann", center=True,
            pad_mode="constant", trainable=False, output_format="Magnitude", verbose=False,
        )

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.cqt(wav.float()).transpose(1, 2).contiguous()


def librosa_cqt(wav: np.ndarray, params: CQTParams | None = None) -> np.ndarray:
    """The same CQT with librosa on the CPU ([N] -> [N // hop + 1, n_bins]): the reference of the benchmark.

    librosa scales its CQT differently from nnAudio (length normalisation), so values are comparable up to a per-bin
    factor; the benchmark compares speed and frame/bin counts.
    """
    import librosa

    p = params or CQTParams()
    c = librosa.cqt(np.asarray(wav, np.float32), sr=p.sample_rate, hop_length=p.hop_length, fmin=p.fmin,
                    n_bins=p.n_bins, bins_per_octave=p.bins_per_octave, filter_scale=1, norm=1, window="hann",
                    pad_mode="constant")
    return np.abs(c).T.astype(np.float32)


def build_acoustic_teacher(cfg, device: str = "cpu"):
    """Teacher object from a :class:`mert.train.TeacherConfig` (``kind`` = ``kmeans`` or ``encodec``)."""
    if cfg.kind == "encodec":
        return EncodecTeacher(cfg.encodec_checkpoint, bandwidth=cfg.encodec_bandwidth, device=device,
                              allow_random_weights=cfg.allow_random_weights,
                              config_overrides=dict(cfg.random_encodec_overrides) or None)
    if cfg.kind == "kmeans":
        return KMeansTeacher(list(cfg.kmeans_features), list(cfg.kmeans_clusters), cfg.sample_rate,
                             cfg.model_checkpoint, cfg.model_layer)
    raise TeacherError(f"unknown teacher kind {cfg.kind!r}; expected kmeans or encodec")
