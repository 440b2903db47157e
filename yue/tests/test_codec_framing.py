"""X-Codec framing: codes exactly as upstream makes them, for every input length (issue 15, item 7).

Upstream (``SoundStream.encode``, reproduced by ``transformers.XcodecModel.encode``) pads nothing of its own for the
acoustic branch unless the two branches disagree: HuBERT sees the clip with 160 samples per side, the DAC encoder the
bare clip, and when their frame counts differ the DAC encoder is re-run on the 160-padded clip. For a clip of
``N = 320 q + r`` samples this gives, by hand from the strides (HuBERT: kernel 400 / stride 320 on N + 320 samples;
DAC: strides 8, 5, 4, 2 with kernel 2s and padding ceil(s/2)):

    r in 0..79    -> q frames      (DAC on the bare clip)
    r in 80..311  -> q + 1 frames  (DAC on the 160-padded clip)
    r in 312..319 -> q + 1 frames  (DAC on the bare clip)

The table below is that rule written out, not computed by the wrapper.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yue.codec import CodecInputError

# residue r -> (frames added to q, acoustic branch runs on the 160-padded clip)
RULE = {0: (0, False), 1: (0, False), 79: (0, False), 80: (1, True), 160: (1, True), 311: (1, True),
        312: (1, False), 319: (1, False)}  # fmt: skip


def _clip(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 0.1


@pytest.mark.parametrize("r", sorted(RULE))
@pytest.mark.parametrize("q", [1, 6])
def test_frame_count_table(tiny_codec, q, r):
    n = 320 * q + r
    expected = q + RULE[r][0]
    assert tiny_codec.num_frames(n) == expected
    codes = tiny_codec.encode(_clip(n, n))
    assert codes.shape == (1, 12, expected)


@pytest.mark.parametrize("r", sorted(RULE))
def test_codes_equal_transformers_on_the_unpadded_clip(tiny_codec, r):
    """Our codes are XcodecModel.encode of the clip as it is (what upstream does), at every residue."""
    x = _clip(320 * 9 + r, r)
    peer = tiny_codec.model.encode(x[None, None], bandwidth=6.0, return_dict=False)
    assert torch.equal(tiny_codec.encode(x, 6.0), peer)


def test_branch_choice_matches_the_rule(tiny_codec):
    """Which acoustic input upstream uses (bare or 160-padded) follows the table: checked on the DAC encoder."""
    m = tiny_codec.model
    for r, (extra, padded) in RULE.items():
        n = 320 * 5 + r
        bare = int(m._get_conv1d_output_lengths(n, m.acoustic_encoder))
        assert (bare != 5 + extra) == padded, r


def test_unaligned_clip_differs_from_right_padding(tiny_codec):
    """The old behaviour (right-pad to a multiple of 320) changes the codes of a 32,123-sample clip (r = 123: same
    101 frames, but upstream runs the acoustic branch on the 160-padded clip) and the frame count at r = 1..79."""
    x = _clip(32123, 5)
    ours = tiny_codec.encode(x)
    padded = tiny_codec.model.encode(torch.nn.functional.pad(x, (0, 197))[None, None], return_dict=False)
    assert ours.shape[-1] == padded.shape[-1] == 101
    assert (ours != padded).float().mean() > 0.1
    short = _clip(320 * 20 + 50, 6)
    assert tiny_codec.encode(short).shape[-1] == 20  # right-padding would have given 21


def test_too_short_clip_is_rejected(tiny_codec):
    assert tiny_codec.num_frames(79) == 0 and tiny_codec.num_frames(80) == 1
    with pytest.raises(CodecInputError, match="too short"):
        tiny_codec.encode(_clip(79))
    assert tiny_codec.encode(_clip(80)).shape == (1, 12, 1)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(80, 40_000))
def test_frame_count_formula_any_length(tiny_codec, n):
    assert tiny_codec.num_frames(n) == (n + 240) // 320 == n // 320 + (n % 320 >= 80)


@pytest.mark.parametrize("n", [16000 * 3 + 40, 16000 * 3 + 100, 16000 * 3 + 315])
def test_encode_long_keeps_the_one_shot_frames(tiny_codec, n):
    """Chunk windows start on frame boundaries with the clip's residue, so they take the one-shot branch: same
    frame count, same alignment. (48040, 48100, 48315 samples: r = 40, 100, 315, one per branch.)"""
    x = _clip(n, 7)
    one = tiny_codec.encode(x)[0]
    assert one.shape == (12, n // 320 + (n % 320 >= 80))
    # context wider than the tiny codec's receptive field: the chunked codes are the one-shot codes, up to float
    # near-ties in the nearest-code search (convolutions over inputs of other lengths may round differently)
    wide = tiny_codec.encode_long(x, chunk_s=1.0, context_s=1.0)
    assert wide.shape == one.shape and (wide == one).float().mean() >= 0.99
    # short context: edge effects change some codes, never the frame count or the alignment (a one-frame shift
    # agrees on ~23 % of the codes, these on > 80 %)
    chunked = tiny_codec.encode_long(x, chunk_s=0.4, context_s=0.3)
    assert chunked.shape == one.shape
    assert (chunked == one).float().mean() > 0.8
    assert torch.equal(tiny_codec.encode_long(x, chunk_s=10.0), one)  # one chunk: the very same call


@pytest.mark.slow
def test_released_shapes_follow_the_same_rule():
    from yue.codec import XCodec, released_config

    codec = XCodec(released_config())
    for r, (extra, _) in RULE.items():
        assert codec.num_frames(320 * 11 + r) == 11 + extra
    assert codec.encode(_clip(32123)).shape == (1, 12, 101)
