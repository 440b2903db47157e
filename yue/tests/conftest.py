"""Fixtures of the yue tests: tokenizers (released one if present, tiny one always) and a converted tiny codec."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # fake_release helper


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
