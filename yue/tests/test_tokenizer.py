"""Tokenizer: released ids from the spec, separate marker calls, no BOS, the tiny tokenizer's configured layout."""

import pytest

from yue.tokenizer import SPECIAL_TOKEN_NAMES, TokenizerError, TokenLayout, YuETokenizer

SOS = [518, 2962, 29918, 974, 29918, 28192, 29962]
EOS = [518, 355, 29918, 974, 29918, 28192, 29962]
SOR = [518, 2962, 29918, 974, 29918, 5679, 29962]
EOR = [518, 355, 29918, 974, 29918, 5679, 29962]


def test_released_special_ids(released_tokenizer):
    tok = released_tokenizer
    assert tok.sp.get_piece_size() == 83734
    assert tok.id("<EOD>") == 32000 and tok.id("<SOA>") == 32001 and tok.id("<EOA>") == 32002
    assert tok.id("<stage_1>") == 32013 and tok.id("<xcodec>") == 32016 and tok.id("<stage_2>") == 32017
    assert tok.id("<semanticodec>") == 32021
    assert tok.vocab_size == 83738
    assert [tok.id(n) for n in ("<CLS>", "<SEP>", "<MASK>", "<PAD>")] == [83734, 83735, 83736, 83737]
    # the SP pieces of the codec block sit where the layout says
    assert tok.sp.piece_to_id("<xcodec/0/0>") == tok.layout.xcodec.offset(0)
    assert tok.sp.piece_to_id("<xcodec/11/1023>") == tok.layout.xcodec.end - 1


def test_released_marker_ids_from_spec(released_tokenizer):
    tok = released_tokenizer
    assert tok.tokenize("[start_of_segment]") == SOS
    assert tok.tokenize("[end_of_segment]") == EOS
    assert tok.tokenize("[start_of_reference]") == SOR
    assert tok.tokenize("[end_of_reference]") == EOR


def test_separate_calls_differ_from_joined(released_tokenizer):
    tok = released_tokenizer
    sep = tok.tokenize_many(["[start_of_segment]", "[verse]\nhello world\n\n"])
    joined = tok.tokenize("[start_of_segment][verse]\nhello world\n\n")
    assert sep == SOS + [518, 3901, 29962, 13, 12199, 3186, 13, 13]
    assert sep != joined


def test_special_strings_split_and_no_bos(released_tokenizer):
    tok = released_tokenizer
    ids = tok.tokenize("a<SOA><xcodec>b")
    assert ids[0] != 1 and 1 not in ids
    assert ids[1:3] == [32001, 32016]
    assert ids == tok.sp.encode("a") + [32001, 32016] + tok.sp.encode("b")
    assert tok.tokenize("") == []


def test_decode_roundtrip(any_tokenizer):
    tok = any_tokenizer
    text = "[chorus]\nla la 你好 мир\n\n"
    assert tok.decode_text(tok.tokenize(text)) == text
    assert tok.decode([tok.id("<SOA>"), tok.layout.xcodec.offset(1) + 5]) == "<SOA><xcodec/1/5>"


def test_tiny_layout_comes_from_config(tiny_tokenizer):
    lay = tiny_tokenizer.layout
    n = lay.sp_vocab_size
    assert [lay.id(name) for name in SPECIAL_TOKEN_NAMES] == list(range(n, n + len(SPECIAL_TOKEN_NAMES)))
    assert lay.xcodec.global_offset == n + len(SPECIAL_TOKEN_NAMES)
    assert lay.id("<CLS>") == lay.xcodec.end
    # the special strings are still split out, with the configured ids
    assert tiny_tokenizer.tokenize("<SOA><EOA>") == [lay.id("<SOA>"), lay.id("<EOA>")]
    assert 1 not in tiny_tokenizer.tokenize("hello")


def test_layout_json_roundtrip():
    lay = TokenLayout.released()
    assert TokenLayout.from_json(lay.to_json()) == lay


def test_missing_and_corrupt_model(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        YuETokenizer(tmp_path / "nope.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        YuETokenizer(bad)


def test_layout_mismatch_detected(released_tokenizer):
    lay = TokenLayout.released()
    lay.special_tokens["<SOA>"] = 32005
    with pytest.raises(TokenizerError, match="piece '<SOA>' has id 32001"):
        YuETokenizer(released_tokenizer.path, lay)
