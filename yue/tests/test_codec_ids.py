"""Codec id layout: offsets, frame-major flatten, inverse, validation."""

import numpy as np
import pytest

from yue.codec_ids import RELEASED_XCODEC, CodecIdError, CodecIdLayout, repair_codes


def test_released_offsets_match_spec():
    assert RELEASED_XCODEC.offset(0) == 45334
    assert RELEASED_XCODEC.offset(1) == 46358
    assert RELEASED_XCODEC.offset(11) == 45334 + 11 * 1024
    assert RELEASED_XCODEC.id_range(0, 1) == (45334, 46358)  # stage-1 allowed range
    assert RELEASED_XCODEC.id_range(1, 7) == (46358, 53526)  # stage-2 generation range
    assert RELEASED_XCODEC.end == 57622


def test_frame_major_flatten_hand_computed():
    codes = np.array([[1, 2, 3], [10, 20, 30]])
    ids = RELEASED_XCODEC.codes_to_ids(codes)
    # c0_t0 c1_t0 c0_t1 c1_t1 ...
    assert ids.tolist() == [45335, 46368, 45336, 46378, 45337, 46388]
    assert RELEASED_XCODEC.ids_to_codes(ids, n=2).tolist() == codes.tolist()


def test_begin_offset_and_config_layout():
    lay = CodecIdLayout(global_offset=1000, codebook_size=16, num_codebooks=3)
    assert lay.codes_to_ids(np.array([[0, 15]]), begin=2).tolist() == [1032, 1047]
    assert lay.ids_to_codes([1032, 1047], n=1, begin=2).tolist() == [[0, 15]]


def test_roundtrip_random():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 1024, (8, 57))
    ids = RELEASED_XCODEC.codes_to_ids(codes)
    assert ids.shape == (8 * 57,)
    assert np.array_equal(RELEASED_XCODEC.ids_to_codes(ids, n=8), codes)


@pytest.mark.parametrize("bad", [[[1024]], [[-1]], [[3.5]]])
def test_out_of_range_codes_rejected(bad):
    with pytest.raises(CodecIdError, match="code|integers"):
        RELEASED_XCODEC.codes_to_ids(np.array(bad))


def test_too_many_codebooks_rejected():
    with pytest.raises(CodecIdError, match="exceed"):
        RELEASED_XCODEC.codes_to_ids(np.zeros((13, 2), dtype=int))


def test_ids_of_wrong_codebook_rejected_with_position():
    ids = [45334, 45334]  # second position of a 2-codebook frame must be codebook 1
    with pytest.raises(CodecIdError, match="frame 0, position 1 is not a code of codebook 1"):
        RELEASED_XCODEC.ids_to_codes(ids, n=2)
    lenient = RELEASED_XCODEC.ids_to_codes(ids, n=2, strict=False)
    assert lenient.tolist() == [[0], [-1]]


def test_wrong_length_rejected():
    with pytest.raises(CodecIdError, match="multiple"):
        RELEASED_XCODEC.ids_to_codes([45334, 46358, 45334], n=2)


def test_text_ids_rejected():
    with pytest.raises(CodecIdError):
        RELEASED_XCODEC.ids_to_codes([32001], n=1)


def test_repair_codes_uses_row_mode():
    codes = np.array([[5, 5, 7, -1], [1, 2000, 2, 2]])
    assert repair_codes(codes).tolist() == [[5, 5, 7, 5], [1, 2, 2, 2]]
