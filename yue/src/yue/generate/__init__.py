"""YuE generation: lyrics + genre (+ ICL prompt) -> stage-1 ids -> stage-2 codes -> vocals, accompaniment, mix.

Entry points: :func:`generate` (folders + genre + lyrics -> output folder), :func:`generate_song` (a
:class:`SongRequest` and a :class:`GenerateConfig`), :func:`generate_batch` (a jsonl of requests). The command line is
``yue generate``. Module map: :mod:`.stage1` (one KV cache, batched CFG), :mod:`.stage2` (all chunks batched, KV
cache per chunk), :mod:`.masks`, :mod:`.lmstep`, :mod:`.upstream` (upstream's algorithm, for comparison),
:mod:`.pipeline` (output folder, resume), :mod:`.request` (checks before any model is loaded).
"""

from yue.generate.config import GenerateConfig, ModelPaths, SettingsError, Stage1Settings, Stage2Settings, load_generate_config
from yue.generate.pipeline import SONG_KEYS, Models, generate, generate_batch, generate_song, prepare_request
from yue.generate.request import AudioPrompt, GenerateInputError, SongRequest

__all__ = ["AudioPrompt", "GenerateConfig", "GenerateInputError", "ModelPaths", "Models", "SONG_KEYS", "SettingsError",
           "SongRequest", "Stage1Settings", "Stage2Settings", "generate", "generate_batch", "generate_song",
           "load_generate_config", "prepare_request"]  # fmt: skip
