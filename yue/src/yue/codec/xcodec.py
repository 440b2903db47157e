"""X-Codec (YuE's ``xcodec_mini_infer``) on top of ``transformers.XcodecModel``.

transformers ships the same architecture (DAC acoustic encoder/decoder, RepCodec-style semantic encoder/decoder over a
HuBERT teacher whose hidden states are averaged over all layers after padding 160 samples per side, ``fc``/``fc1``/
``fc2`` = upstream ``fc_prior``/``fc_post1``/``fc_post2``, EMA RVQ codebooks), so :class:`XCodec` wraps it and adds
what YuE needs around it:

- input normalisation: any rate / channel count -> mono 16 kHz (channels averaged, soxr resampling), checks for empty,
  non-finite and silent input (:class:`CodecInputError`);
- upstream's framing for every input length (no padding of our own): the clip goes to ``XcodecModel.encode`` as it
  is, so the codes equal upstream's. HuBERT sees the clip padded by 160 samples per side and gives
  ``floor((N - 80) / 320) + 1`` frames; when the acoustic (DAC) encoder's frame count on the bare clip differs, it is
  re-run on the 160-padded clip (as upstream does). So a clip of ``N = 320 q + r`` samples gives

      T = floor((N + 240) / 320)   =  q      for r in 0..79     (acoustic branch on the bare clip)
                                   =  q + 1  for r in 80..311   (acoustic branch on the 160-padded clip)
                                   =  q + 1  for r in 312..319  (acoustic branch on the bare clip)

  frames, and clips shorter than 80 samples give none (:class:`CodecInputError`). The frame count is computed from
  the networks' convolutions (:meth:`XCodec.num_frames`), so it holds for every preset with this hop;
- ``target_bw`` -> number of codebooks (0.5 kbps = codebook 0 only, 4 kbps = 8 codebooks, 6 kbps = all 12);
- :meth:`XCodec.get_embed` (the quantizer sum that the Vocos upsamplers consume);
- chunked encoding of long audio with context on both sides of each chunk (:meth:`XCodec.encode_long`);
- ``save_pretrained`` / ``from_pretrained`` in safetensors (``model.safetensors`` + ``config.json`` + ``yue_codec.json``).

Shapes: waveforms ``[B, 1, N]`` float32 at 16 kHz; codes ``[B, K, T]`` int64 (``[K, T]`` for one clip).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from yue.codec.config import SemanticConfig, XCodecConfig

log = logging.getLogger(__name__)

__all__ = ["XCodec", "CodecInputError", "CodecLoadError", "prepare_waveform"]


class CodecInputError(ValueError):
    """Audio the codec cannot encode (empty, non-finite, silent, wrong shape) or codes it cannot decode."""


class CodecLoadError(ValueError):
    """A codec checkpoint folder that is missing files or does not match the model (names the path)."""


def prepare_waveform(
    wav, sample_rate: int, target_rate: int = 16000, where: str = "audio", allow_silence: bool = False
) -> np.ndarray:
    """Normalise audio for the codec: ``[C, N]``/``[N]`` at any rate -> mono float32 ``[N]`` at ``target_rate``.

    Documented normalisations: channels are averaged (stereo -> mono, as upstream); other rates (e.g. 48 kHz) are
    resampled with soxr. Errors: empty input, NaN/inf samples, and (unless ``allow_silence``) digital silence
    (peak < 1e-5), which would only produce the codec's silence codes.
    """
    a = wav.detach().cpu().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav)
    if a.ndim == 1:
        a = a[None]
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise CodecInputError(f"{where}: expected [channels, samples] audio, got shape {a.shape}")
    if a.shape[0] > a.shape[1] >= 1 and a.shape[1] <= 8:
        a = a.T  # [N, C] (soundfile layout) -> [C, N]
    a = a.astype(np.float32)
    if a.size == 0:
        raise CodecInputError(f"{where}: no samples")
    if not np.isfinite(a).all():
        raise CodecInputError(f"{where}: NaN or inf samples")
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise CodecInputError(f"{where}: invalid sample rate {sample_rate!r}")
    mono = a.mean(axis=0)
    if sample_rate != target_rate:
        import soxr

        mono = soxr.resample(mono, sample_rate, target_rate, quality="HQ").astype(np.float32)
    if mono.size == 0:
        raise CodecInputError(f"{where}: too short to resample from {sample_rate} Hz")
    if not allow_silence and float(np.abs(mono).max()) < 1e-5:
        raise CodecInputError(f"{where}: audio is silent (peak < 1e-5); pass allow_silence=True to encode it anyway")
    return mono


def _codec_config_from_dict(d, where) -> XCodecConfig:
    """:class:`XCodecConfig` from the ``yue_codec.json`` dict, checking every field's type.

    Raises:
        CodecLoadError: naming ``where`` and the field: not an object, a missing ``semantic`` section, unknown or
            missing fields, wrong types (a string where an int belongs), non-positive sizes.
    """
    if not isinstance(d, dict):
        raise CodecLoadError(f"{where}: expected a JSON object, got {type(d).__name__}")
    sem = d.get("semantic")
    if not isinstance(sem, dict):
        raise CodecLoadError(f"{where}: missing or malformed 'semantic' section (got {type(sem).__name__})")

    def build(klass, fields: dict, prefix: str):
        defaults = klass()  # each field's type is the type of its default
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(klass)})
        if unknown:
            raise CodecLoadError(f"{where}: unknown field(s) {[prefix + u for u in unknown]}")
        for k, v in fields.items():
            default = getattr(defaults, k)
            if k == "extra":
                if not isinstance(v, dict):
                    raise CodecLoadError(f"{where}: {prefix}{k} must be an object, got {type(v).__name__}")
            elif isinstance(default, list):
                ok = isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                       and x > 0 for x in v)  # fmt: skip
                if not ok:
                    raise CodecLoadError(f"{where}: {prefix}{k} must be a non-empty list of positive numbers, got {v!r}")
            elif isinstance(default, int):
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise CodecLoadError(f"{where}: {prefix}{k} must be a positive integer, got {v!r}")
        return fields

    sem_fields = build(SemanticConfig, sem, "semantic.")
    top = build(XCodecConfig, {k: v for k, v in d.items() if k != "semantic"}, "")
    try:
        cfg = XCodecConfig(**top, semantic=SemanticConfig(**sem_fields))
        _ = cfg.n_q, cfg.hop_length  # derived sizes must be computable
    except (TypeError, ValueError, ZeroDivisionError, OverflowError) as e:
        raise CodecLoadError(f"{where}: invalid codec config ({type(e).__name__}: {e})") from e
    if cfg.n_q < 1:
        raise CodecLoadError(f"{where}: target_bandwidths {cfg.target_bandwidths} give no codebook")
    return cfg


class XCodec(nn.Module):
    """YuE's X-Codec. ``model`` is a ``transformers.XcodecModel`` with upstream's weights (after conversion).

    Args:
        cfg: :class:`XCodecConfig` (released or tiny preset).
        model: an existing ``XcodecModel``; built from ``cfg`` with random weights when omitted.
    """

    def __init__(self, cfg: XCodecConfig, model: nn.Module | None = None):
        super().__init__()
        from transformers import XcodecModel

        self.cfg = cfg
        self.model = model if model is not None else XcodecModel(cfg.to_hf())
        self.model.eval()

    # ---- properties ---------------------------------------------------------------------------------------------
    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def n_q(self) -> int:
        return self.cfg.n_q

    def num_frames(self, num_samples: int) -> int:
        """Frames that :meth:`encode` gives for a clip of ``num_samples`` samples (0: too short to encode).

        Computed as ``XcodecModel.encode`` frames it: the semantic branch (HuBERT feature extractor on the clip
        padded by ``hop/2`` per side, then the semantic encoder) sets the count; the acoustic branch must match it
        on the bare clip or on the ``hop/2``-padded one. With hop 320 (every preset) this is
        ``floor((N + 240) / 320)`` for ``N >= 80`` (see the module docstring), not ``ceil(N / 320)``.

        Raises:
            CodecInputError: neither acoustic framing matches the semantic one (a config whose branches disagree).
        """
        n = int(num_samples)
        pad = self.model.pad
        sem_model = self.model.semantic_model
        try:
            s = int(sem_model._get_feat_extract_output_lengths(torch.tensor(n + 2 * pad)))
        except RuntimeError:
            s = 0
        if s <= 0:
            return 0
        s = int(self.model._get_conv1d_output_lengths(s, self.model.encoder_semantic))
        for m in (n, n + 2 * pad):  # upstream: bare clip first, the hop/2-padded clip when the counts differ
            if int(self.model._get_conv1d_output_lengths(m, self.model.acoustic_encoder)) == s:
                return s
        raise CodecInputError(f"acoustic and semantic branches give different frame counts for {n} samples")

    def _check_bw(self, target_bw: float | None) -> float:
        bw = self.cfg.target_bandwidths[-1] if target_bw is None else float(target_bw)
        if bw not in [float(b) for b in self.cfg.target_bandwidths]:
            raise CodecInputError(f"target_bw {bw} kbps not among {list(self.cfg.target_bandwidths)}")
        return bw

    # ---- encode / decode ----------------------------------------------------------------------------------------
    def _as_batch(self, wav) -> torch.Tensor:
        x = torch.as_tensor(wav, dtype=torch.float32)
        if x.ndim == 1:
            x = x[None, None]
        elif x.ndim == 2:
            x = x[:, None]
        if x.ndim != 3 or x.shape[1] != 1:
            raise CodecInputError(f"expected mono waveform [B, 1, N], got shape {tuple(x.shape)} (use prepare_waveform)")
        if x.shape[-1] == 0:
            raise CodecInputError("empty waveform")
        return x.to(next(self.model.parameters()).device)

    @torch.no_grad()
    def encode(self, wav, target_bw: float | None = None) -> torch.Tensor:
        """Waveform ``[B, 1, N]`` (or ``[N]``) at 16 kHz -> codes ``[B, K, T]``, ``T = floor((N + 240) / 320)``.

        The clip is encoded exactly as upstream encodes it (no padding of ours; see :meth:`num_frames`).
        ``target_bw`` (kbps) picks the codebooks: 0.5 -> 1, 1 -> 2, ..., 4 -> 8, 6 -> 12 (default: all).

        Raises:
            CodecInputError: a clip shorter than 80 samples (no frame), a bad shape, an unknown bandwidth.
        """
        bw = self._check_bw(target_bw)
        x = self._as_batch(wav)
        n = x.shape[-1]
        t = self.num_frames(n)
        if t < 1:
            raise CodecInputError(f"{n} samples is too short to encode (at least 80 samples = 5 ms give one frame)")
        codes = self.model.encode(x, bandwidth=bw, return_dict=False)
        if codes.shape[-1] != t:  # num_frames mirrors XcodecModel.encode; a mismatch means a config mistake
            raise CodecInputError(f"codec produced {codes.shape[-1]} frames for {n} samples, expected {t}")
        return codes

    @torch.no_grad()
    def encode_long(
        self, wav, target_bw: float | None = None, chunk_s: float = 30.0, context_s: float = 2.0
    ) -> torch.Tensor:
        """Encode one long clip ``[N]`` in chunks -> codes ``[K, T]`` with the ``T`` of a one-shot :meth:`encode`.

        Each chunk of ``chunk_s`` seconds is encoded with up to ``context_s`` seconds of real audio on both sides
        (the HuBERT teacher and the convolutions see past the chunk edge); only the chunk's own frames are kept.
        Every window starts on a frame boundary (a multiple of 320 samples) and has the same length modulo 320 as
        the whole clip (it ends ``N mod 320`` samples after a frame boundary), so each window takes the same
        framing branch as the one-shot encode (bare or 160-padded acoustic input, see :meth:`num_frames`) and its
        frame ``j`` is frame ``start + j`` of the clip: chunking never changes the frame count or the alignment.
        With ``chunk_s >= duration`` this equals :meth:`encode`.
        """
        x = self._as_batch(wav)
        if x.shape[0] != 1:
            raise CodecInputError("encode_long takes one clip")
        hop = self.hop_length
        n = x.shape[-1]
        t_total = self.num_frames(n)
        chunk_f = max(1, int(round(chunk_s * self.cfg.frame_rate)))
        ctx_f = max(0, int(round(context_s * self.cfg.frame_rate)))
        if chunk_f >= t_total:
            return self.encode(x, target_bw)[0]
        q, r = divmod(n, hop)
        pieces = []
        for f0 in range(0, t_total, chunk_f):  # frame-aligned chunks, each with context frames either side
            f1 = min(t_total, f0 + chunk_f)
            # window [a*hop, e*hop + r): starts on a frame boundary, same residue r as the clip, ends inside it
            a, e = max(0, f0 - ctx_f), min(q, f1 + ctx_f)
            codes = self.encode(x[..., a * hop : e * hop + r], target_bw)[0]
            piece = codes[:, f0 - a : f1 - a]
            if piece.shape[-1] != f1 - f0:  # cannot happen by the rule above; never return misaligned codes
                raise CodecInputError(f"chunk [{f0}, {f1}) of {t_total} frames got {piece.shape[-1]} frames")
            pieces.append(piece)
        return torch.cat(pieces, dim=-1)

    def check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Validate codes for :meth:`decode` / :meth:`get_embed`: ``[K, T]`` or ``[B, K, T]`` -> int64 ``[B, K, T]``.

        Raises:
            CodecInputError: not integers (fractional or non-finite floats are refused, never truncated), a wrong
                shape, no frames (``T = 0``), more than ``n_q`` codebooks, or a code outside ``0..bins-1``.
        """
        from yue.codec_ids import CodecIdError, as_int_array

        tensor = isinstance(codes, torch.Tensor)
        if not tensor or codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            try:  # numpy, lists and non-integer tensors: whole numbers only, never a silent truncation
                codes = as_int_array(codes.detach().cpu().numpy() if tensor else codes)
            except CodecIdError as e:
                raise CodecInputError(str(e)) from None
        c = torch.as_tensor(codes)
        if c.ndim == 2:
            c = c[None]
        if c.ndim != 3:
            raise CodecInputError(f"expected codes [B, K, T], got shape {tuple(c.shape)}")
        if c.shape[1] < 1 or c.shape[1] > self.n_q:
            raise CodecInputError(f"{c.shape[1]} codebooks; this codec has 1..{self.n_q}")
        if c.shape[0] == 0 or c.shape[2] == 0:
            raise CodecInputError(f"no frames to decode: codes of shape {list(c.shape)}")
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.cfg.bins):
            raise CodecInputError(f"codes outside 0..{self.cfg.bins - 1} (min {int(c.min())}, max {int(c.max())})")
        return c.long().to(next(self.model.parameters()).device)

    @torch.no_grad()
    def decode(self, codes) -> torch.Tensor:
        """Codes ``[B, K, T]`` (any K <= n_q: the first K codebooks) -> waveform ``[B, 1, T*320]`` at 16 kHz."""
        c = self.check_codes(codes)
        return self.model.decode(c, return_dict=False)

    @torch.no_grad()
    def get_embed(self, codes) -> torch.Tensor:
        """Sum of the codebook vectors of ``codes [B, K, T]`` -> ``[B, D+768, T]`` (the Vocos upsampler input)."""
        c = self.check_codes(codes)
        return self.model.quantizer.decode(c.transpose(0, 1))

    # ---- persistence --------------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (transformers layout) and ``yue_codec.json``."""
        from musiccore.runs import atomic_write_json

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        atomic_write_json(out / "yue_codec.json", dataclasses.asdict(self.cfg))
        return out

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str = "cpu") -> "XCodec":
        """Load a folder written by :meth:`save_pretrained` or the converter; every tensor must match (strict)."""
        from safetensors.torch import load_file

        p = Path(path)
        cfg_file, weights = p / "yue_codec.json", p / "model.safetensors"
        for f in (cfg_file, weights):
            if not f.is_file():
                raise CodecLoadError(f"{p}: missing {f.name} (convert released files with `yue codec convert`)")
        try:
            d = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CodecLoadError(f"{cfg_file}: not valid JSON ({e})") from None
        cfg = _codec_config_from_dict(d, cfg_file)
        try:  # a config whose numbers are absurd (0 heads, negative widths) fails while building the networks
            codec = cls(cfg)
        except (ValueError, TypeError, ZeroDivisionError, RuntimeError) as e:
            raise CodecLoadError(f"{cfg_file}: cannot build the codec from this config ({type(e).__name__}: {e})") from e
        try:
            state = load_file(str(weights), device="cpu")
        except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError (truncated/corrupt header)
            raise CodecLoadError(f"{weights}: not a readable safetensors file ({type(e).__name__}: {e})") from e
        try:
            result = codec.model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatch
            raise CodecLoadError(f"{weights}: does not match {cfg_file.name}: {' '.join(str(e).split())[:500]}") from e
        if result.missing_keys or result.unexpected_keys:
            raise CodecLoadError(
                f"{weights}: does not match the config: missing {result.missing_keys[:5]} "
                f"({len(result.missing_keys)}), unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)})"
            )
        return codec.to(device).eval()
