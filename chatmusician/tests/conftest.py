"""Shared fixtures: a small corpus built from music21's public-domain ABC tunes, and the tiny config pointed at it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from musiccore.config import load_config

from chatmusician.config import ChatMusicianConfig

# one intra-op thread: on 2 cores shared with other jobs, two threads thrash (measured 8x slower)
torch.set_num_threads(1)

PROJECT = Path(__file__).resolve().parents[1]
CONFIGS = PROJECT / "configs"

# small and fast: 80 tunes, 4 bars each, one transposition
SMALL = ["data.tunes=music21", "data.music21_collections=[ryansMammoth]", "data.max_tunes=80", "data.valid_fraction=0.2",
         "tokenizer.vocab_size=200"]


def tiny_config(tmp: Path, *overrides: str) -> ChatMusicianConfig:
    return load_config(ChatMusicianConfig, CONFIGS / "tiny.yaml",
                       [f"data.out_dir={tmp / 'data'}", f"run.dir={tmp / 'run'}", *SMALL, *overrides])


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """A built tiny corpus (sft + pretrain + tokenizer); the same data config as `tiny_config(tmp)`."""
    from chatmusician.data import build

    tmp = tmp_path_factory.mktemp("corpus")
    build(tiny_config(tmp))
    return tmp


@pytest.fixture
def cfg_on_corpus(corpus_dir, tmp_path):
    """Factory: tiny config reading the session corpus, writing its run into tmp_path/run."""
    def make(*overrides: str) -> ChatMusicianConfig:
        return tiny_config(corpus_dir, f"run.dir={tmp_path / 'run'}", *overrides)

    return make


@pytest.fixture(scope="session")
def tok_dir(corpus_dir) -> Path:
    return corpus_dir / "data" / "tokenizer"


def subprocess_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.setdefault("MUSIC_RUNS_DIR", "/tmp/chatmusician-test-runs")
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra})
    return env
