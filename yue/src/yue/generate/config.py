"""Typed settings of ``yue generate`` (YAML via :func:`musiccore.config.load_config`, ``key=value`` overrides).

Defaults are the released inference settings (``inference/infer.py``, spec ``yue.md`` §4.2/§3) except where a field
says otherwise. Every field is recorded in ``song.json`` under ``settings``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class SettingsError(ValueError):
    """A generation setting outside its valid range (names the field)."""


@dataclass
class Stage1Settings:
    """Stage-1 sampling (lyrics + genre -> interleaved vocal/instrumental codebook-0 ids, section by section).

    Attributes:
        top_p: nucleus mass (released 0.93).
        temperature: softmax temperature (released 1.0).
        top_k: top-k filter applied before top-p. Upstream called ``generate`` with transformers 4.48, whose
            ``GenerationConfig`` default is ``top_k=50``; 0 disables it.
        repetition_penalty: HF multiplicative penalty over every id of the context (released default 1.1; the
            maintainers later suggested 1.0).
        min_new_tokens: ``<EOA>`` is blocked before this many ids of a section (released 100).
        max_new_tokens: ids per section at most (released 3000 = 30 s); must be even (2 ids per frame). A section
            that reaches it is closed with ``<EOA>`` as upstream does.
        guidance_first: classifier-free guidance scale of the first section (released 1.5).
        guidance_later: scale of the later sections (released 1.2). 1.0 turns guidance off (raw logits, as HF).
        greedy: argmax instead of sampling (tests and the benchmark).
        eoa_on_frame_boundary: ``<EOA>`` only after a whole (vocal, instrumental) pair. Upstream has no such rule
            and truncates an odd tail when parsing; with it nothing is ever dropped.
        max_context: context length in tokens; ``null`` = the stage-1 model's ``max_position_embeddings``
            (released 16384). Overflow drops the oldest whole sections and keeps the head (genre + lyrics).
    """

    top_p: float = 0.93
    temperature: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.1
    min_new_tokens: int = 100
    max_new_tokens: int = 3000
    guidance_first: float = 1.5
    guidance_later: float = 1.2
    greedy: bool = False
    eoa_on_frame_boundary: bool = True
    max_context: int | None = None

    def __post_init__(self):
        if not 0.0 < self.top_p <= 1.0:
            raise SettingsError(f"stage1.top_p={self.top_p}: must be in (0, 1]")
        if self.temperature <= 0:
            raise SettingsError(f"stage1.temperature={self.temperature}: must be > 0")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise SettingsError("stage1.top_k must be >= 0 and stage1.repetition_penalty > 0")
        if self.max_new_tokens < 2 or self.max_new_tokens % 2:
            raise SettingsError(f"stage1.max_new_tokens={self.max_new_tokens}: must be even and >= 2 (2 ids per frame)")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise SettingsError(f"stage1.min_new_tokens={self.min_new_tokens}: must be in 0..max_new_tokens")
        if self.guidance_first <= 0 or self.guidance_later <= 0:
            raise SettingsError("stage1.guidance_first/guidance_later must be > 0")


@dataclass
class Stage2Settings:
    """Stage 2 (codebook 0 of one track -> codebooks 0..7), all 6 s chunks of both tracks batched.

    Attributes:
        greedy: argmax (as the exllamav2 fork; the released s2 generation_config is UNVERIFIED); false = sampling
            with ``temperature``/``top_p``.
        temperature / top_p: sampling settings when ``greedy`` is false.
        codebook_mask: step j of a frame may only emit a code of codebook j (ours). False = upstream's joint range
            of codebooks 1..7 (needed to reproduce upstream's tokens).
        chunk_frames: frames per chunk, as the stage-2 LM was trained (released: 300 = 6 s). ``null`` (default) =
            ``stage2_chunk_frames`` from the stage-2 folder's ``yue_lm.json`` (our training writes it; the tiny
            config trains on 100-frame chunks), else 300.
        batch_chunks: chunks decoded together at most (0 = all chunks of both tracks in one batch). The peak memory
            of stage 2 is bounded by this, not by the song length.
    """

    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    codebook_mask: bool = True
    chunk_frames: int | None = None
    batch_chunks: int = 0

    def __post_init__(self):
        if (self.chunk_frames is not None and self.chunk_frames < 1) or self.batch_chunks < 0:
            raise SettingsError("stage2.chunk_frames must be >= 1 and stage2.batch_chunks >= 0")
        if self.temperature <= 0 or not 0.0 < self.top_p <= 1.0:
            raise SettingsError("stage2.temperature must be > 0 and stage2.top_p in (0, 1]")


@dataclass
class ModelPaths:
    """Local folders (nothing is downloaded).

    Attributes:
        stage1: stage-1 LM folder (``yue.lm.save_lm`` output or a released ``YuE-s1-*`` folder).
        stage2: stage-2 LM folder.
        codec: converted X-Codec folder (``yue codec convert``); also encodes ICL prompts.
        upsampler: folder with ``vocos_config.yaml`` + ``{vocal,inst}_upsampler.safetensors`` (a converted codec
            folder holds them); ``null`` = write 16 kHz codec audio.
        tokenizer: tokenizer.model; ``null`` = the stage-1 folder's own, else the released one.
    """

    stage1: str | None = None
    stage2: str | None = None
    codec: str | None = None
    upsampler: str | None = None
    tokenizer: str | None = None


@dataclass
class GenerateConfig:
    """Everything ``yue generate`` needs besides the request (genre, lyrics, prompt).

    Attributes:
        models: model folders.
        stage1 / stage2: sampling settings.
        device: ``auto`` (cuda if available), ``cpu`` or ``cuda[:i]``.
        dtype: ``auto`` (bf16 on GPU, fp32 on CPU), ``bf16``, ``fp16`` or ``fp32``.
        unknown_tags: ``warn`` (default: free-form tags are allowed, the model just sees text) or ``error``: what to
            do with a tag word outside the released ``top_200_tags.json``.
        threads: torch CPU threads (0 = leave torch's default).
        log_every: plain-log progress line every N stage-1 ids / stage-2 frames when not on a TTY.
    """

    models: ModelPaths = field(default_factory=ModelPaths)
    stage1: Stage1Settings = field(default_factory=Stage1Settings)
    stage2: Stage2Settings = field(default_factory=Stage2Settings)
    device: str = "auto"
    dtype: str = "auto"
    unknown_tags: str = "warn"
    threads: int = 0
    log_every: int = 500

    def __post_init__(self):
        if self.unknown_tags not in ("warn", "error"):
            raise SettingsError(f"unknown_tags={self.unknown_tags!r}: expected 'warn' or 'error'")
        if self.dtype not in ("auto", "bf16", "fp16", "fp32"):
            raise SettingsError(f"dtype={self.dtype!r}: expected auto, bf16, fp16 or fp32")


def load_generate_config(path=None, overrides=()) -> GenerateConfig:
    """:class:`GenerateConfig` from defaults, a YAML file (``_base_`` includes) and ``key=value`` overrides."""
    from musiccore.config import load_config

    return load_config(GenerateConfig, path, overrides)
