"""Fixtures of the yue tests: tokenizers (released one if present, tiny one always) and a converted tiny codec."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # fake_release helper

BAD_INPUTS = Path(__file__).parent / "bad_inputs"  # concrete malformed files (see bad_inputs/make_bad_inputs.py)


def pytest_configure(config):
    """Hypothesis profiles of the yue property tests (``test_properties.py``, ``test_bad_inputs.py``).

    ``yue-default``: 25 examples per property, so each family runs in a few seconds in the default suite.
    ``slow``: 400 examples; picked by ``--runslow`` / ``MUSIC_RUN_SLOW=1`` (or ``HYPOTHESIS_PROFILE=slow``).
    Tests that set ``max_examples`` themselves keep it; a test whose example is costly divides the profile's
    count (so it also grows under ``slow``).
    """
    import os

    from hypothesis import HealthCheck, settings

    common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    settings.register_profile("yue-default", max_examples=25, **common)
    settings.register_profile("slow", max_examples=400, **common)
    slow = config.getoption("--runslow", default=False) or os.environ.get("MUSIC_RUN_SLOW") == "1"
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("slow" if slow else "yue-default"))


@pytest.fixture(scope="session")
def released_tokenizer():
    """The released YuE tokenizer ($YUE_TOKENIZER or ../shared/assets/yue/tokenizer.model); skip if absent."""
    from yue.tokenizer import YuETokenizer, find_released_tokenizer

    path = find_released_tokenizer()
    if path is None:
        pytest.skip("released tokenizer.model not found (set $YUE_TOKENIZER)")
    return YuETokenizer(path)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from yue.tokenizer import YuETokenizer, train_tiny_tokenizer

    return YuETokenizer(train_tiny_tokenizer(tmp_path_factory.mktemp("tinytok"), ["la la 你好 мир"]))


@pytest.fixture(scope="session", params=["released", "tiny"])
def any_tokenizer(request):
    return request.getfixturevalue(f"{request.param}_tokenizer")


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory):
    """A fake xcodec_mini_infer folder (tiny shapes, upstream names, random weights) with Vocos decoders."""
    from fake_release import write_fake_release

    from yue.codec import tiny_config
    from yue.codec.vocos import VocosConfig

    cfg = tiny_config()
    vc = VocosConfig(input_channels=cfg.D + cfg.semantic.hidden_size, dim=32, intermediate_dim=48, num_layers=2)
    return write_fake_release(tmp_path_factory.mktemp("release"), cfg, vocos=vc)


@pytest.fixture(scope="session")
def tiny_codec_dir(tiny_release, tmp_path_factory):
    from yue.codec.convert import convert_release

    return convert_release(tiny_release, tmp_path_factory.mktemp("converted"))


@pytest.fixture(scope="session")
def tiny_codec(tiny_codec_dir):
    from yue.codec import XCodec

    return XCodec.from_pretrained(tiny_codec_dir)


# ---- LM training: a `yue prepare`-contract folder with random codes (manifest, codes/, tokenizer/) -------------
LM_SPLITS = ("train", "train", "train", "valid", "test")


def write_prepared(folder, tok, frames=(260, 280, 300, 240, 250), splits=LM_SPLITS, seed=0):
    """A prepared folder: songs ``s0..`` with random int16 codes [12, T] per stem and two segments each."""
    import json
    import shutil

    import numpy as np

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    (folder / "codes").mkdir(parents=True, exist_ok=True)
    shutil.copytree(Path(tok.path).parent, folder / "tokenizer", dirs_exist_ok=True)
    rows = []
    for i, (t, split) in enumerate(zip(frames, splits)):
        np.savez(folder / "codes" / f"s{i}.npz", **{k: rng.integers(0, 1024, (12, t)).astype(np.int16)
                                                   for k in ("vocal", "accompaniment", "mix")})  # fmt: skip
        segs = [{"label": "verse", "text": "la la la", "frame_start": 0, "frame_end": t // 2},
                {"label": "chorus", "text": "sing with me", "frame_start": t // 2, "frame_end": t}]
        rows.append({"id": f"s{i}", "split": split, "tags": "pop female", "frames": t, "segments": segs})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="session")
def prepared_dir(tiny_tokenizer, tmp_path_factory):
    return write_prepared(tmp_path_factory.mktemp("prepared"), tiny_tokenizer)


@pytest.fixture
def lm_cfg(prepared_dir, tmp_path):
    """Factory: the tiny stage-1/2 config on the fixture folder, small blocks, run folder in tmp_path/run."""
    from musiccore.config import load_config
    from yue.lm.config import LMTrainConfig

    def make(task="stage1", *overrides):
        return load_config(LMTrainConfig, Path(__file__).parents[1] / "configs" / f"tiny_{task}.yaml",
                           [f"data.prepared={prepared_dir}", f"run.dir={tmp_path / 'run'}", "data.block_size=256",
                            "trainer.micro_batch=2", "trainer.log_every=1", "eval.max_blocks=4",
                            "data.stage2_chunk_frames=100", *overrides])  # fmt: skip

    return make
