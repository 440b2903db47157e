"""Stage-1 / stage-2 builders against hand-computed id lists, and build -> parse identity."""

import numpy as np
import pytest

from yue.lyrics import Section
from yue.sequences import (
    INSTRUCTION,
    Reference,
    SequenceError,
    Stage1Song,
    build_stage1,
    build_stage2_chunk,
    build_stage2_document,
    head_text,
    interleave_ids,
    parse_stage1,
    parse_stage2,
    stage1_section_prompt,
    stage2_prompt,
)
from yue.tokenizer import TokenLayout

SOS = [518, 2962, 29918, 974, 29918, 28192, 29962]
EOS = [518, 355, 29918, 974, 29918, 28192, 29962]
SOR = [518, 2962, 29918, 974, 29918, 5679, 29962]
EOR = [518, 355, 29918, 974, 29918, 5679, 29962]
VERSE_HELLO = [518, 3901, 29962, 13, 12199, 3186, 13, 13]  # "[verse]\nhello world\n\n": ▁[ verse ] \n hello ▁world \n \n


def test_interleave_hand_computed(released_tokenizer):
    assert interleave_ids(released_tokenizer, [0, 5], [1023, 7]) == [45334, 46357, 45339, 45341]


def test_stage1_hand_computed(released_tokenizer):
    tok = released_tokenizer
    sec = Section("verse", "hello world")
    song = Stage1Song("pop", [sec], [np.array([0, 5])], [np.array([1023, 7])])
    ids = build_stage1(tok, song, eod=True)
    head = tok.tokenize(f"{INSTRUCTION}\n[Genre] pop\n[verse]\nhello world\n\n")
    expected = head + SOS + VERSE_HELLO + [32001, 32016, 45334, 46357, 45339, 45341, 32002] + EOS + [32000]
    assert ids == expected
    assert head_text("pop", [sec]) == f"{INSTRUCTION}\n[Genre] pop\n[verse]\nhello world\n\n"
    assert build_stage1(tok, song, eod=False) == expected[:-1]


def test_stage1_icl_blocks_hand_computed(released_tokenizer):
    tok = released_tokenizer
    sec = Section("verse", "hello world")
    base = dict(tags="pop", sections=[sec], vocal=[np.array([1])], inst=[np.array([2])])
    head = tok.tokenize(head_text("pop", [sec]))
    dual = build_stage1(tok, Stage1Song(**base, reference=Reference("dual", np.array([3, 4]), np.array([5, 6]))))
    assert dual[: len(head) + 15] == head + SOR + [32001, 32016, 45337, 45339, 45338, 45340, 32002] + EOR[:1]
    assert dual[len(head) + 7 + 7 : len(head) + 7 + 7 + 7] == EOR
    single = build_stage1(tok, Stage1Song(**base, reference=Reference("single", np.array([3, 4]))))
    assert single[len(head) : len(head) + 7 + 5] == SOR + [32001, 32016, 45337, 45338, 32002]
    p = parse_stage1(tok, single, reference_mode="single")
    assert p.ok and p.reference.vocal.tolist() == [3, 4]


def test_section_prompts(released_tokenizer):
    tok = released_tokenizer
    sec = Section("verse", "hello world")
    assert stage1_section_prompt(tok, sec, first=True) == SOS + VERSE_HELLO + [32001, 32016]
    assert stage1_section_prompt(tok, sec, first=False) == EOS + SOS + VERSE_HELLO + [32001, 32016]


def test_stage2_hand_computed():
    lay = TokenLayout.released()
    codes = np.array([[k, 100 + k] for k in range(8)])  # codebook k: frame 0 -> k, frame 1 -> 100 + k
    ids = build_stage2_chunk(lay, codes, close=False)
    frame0 = [45334 + 1024 * k + k for k in range(8)]
    frame1 = [45334 + 1024 * k + 100 + k for k in range(8)]
    assert ids == [32001, 32013, 45334, 45434, 32017] + frame0 + frame1
    assert stage2_prompt(lay, codes[0]) == [32001, 32013, 45334, 45434, 32017]
    no_tf = build_stage2_chunk(lay, codes, teacher_forcing=False, close=True)
    assert no_tf == [32001, 32013, 45334, 45434, 32017] + frame0[1:] + frame1[1:] + [32002]


def test_stage2_full_chunk_length():
    lay = TokenLayout.released()
    codes = np.random.default_rng(0).integers(0, 1024, (12, 300))
    assert len(build_stage2_chunk(lay, codes, close=False)) == 2703  # 3 + 300 + 2400


def test_stage2_document_drops_remainder_and_repetitive_chunks():
    lay = TokenLayout.released()
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 1024, (8, 700))
    codes[0, 300:600] = 7  # a silent-like chunk: 1 unique code < 25
    ids, kept = build_stage2_document(lay, codes)
    assert kept == [0]
    assert len(ids) == 2703 + 1 + 1  # one chunk + <EOA> + <EOD>
    assert ids[-2:] == [32002, 32000]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stage1_build_parse_identity(any_tokenizer, seed):
    tok = any_tokenizer
    rng = np.random.default_rng(seed)
    words = ["la", "sun", "夜", "мир", "rain", "", "heart"]
    labels = ["verse", "chorus", "bridge", "outro", "inst"]
    n = int(rng.integers(1, 5))
    secs = [Section(labels[int(rng.integers(len(labels)))], " ".join(rng.choice(words, int(rng.integers(0, 6)))).strip())
            for _ in range(n)]
    lens = [int(rng.integers(0, 40)) for _ in range(n)]
    song = Stage1Song("pop male bright", secs, [rng.integers(0, 1024, t) for t in lens],
                      [rng.integers(0, 1024, t) for t in lens],
                      Reference("dual", rng.integers(0, 1024, 9), rng.integers(0, 1024, 9)) if seed % 2 else None)
    for eod in (False, True):
        ids = build_stage1(tok, song, eod=eod)
        p = parse_stage1(tok, ids)
        assert p.ok, p.errors
        assert p.eod == eod and p.tags == song.tags and p.head_sections == secs
        back = p.to_song()
        assert back.sections == secs
        assert all(np.array_equal(a, b) for a, b in zip(back.vocal, song.vocal))
        assert all(np.array_equal(a, b) for a, b in zip(back.inst, song.inst))
        assert build_stage1(tok, back, eod=eod) == ids
        v, i = p.tracks()
        assert v.shape == (1, sum(lens)) and np.array_equal(i[0], np.concatenate(song.inst))


@pytest.mark.parametrize("seed", [0, 1])
def test_stage2_build_parse_identity(seed):
    lay = TokenLayout.released()
    rng = np.random.default_rng(seed)
    chunks = [rng.integers(0, 1024, (8, int(rng.integers(1, 50)))) for _ in range(3)]
    ids = sum((build_stage2_chunk(lay, c) for c in chunks), []) + [lay.id("<EOD>")]
    p = parse_stage2(lay, ids)
    assert p.ok and p.eod
    assert all(np.array_equal(a.codes, b) for a, b in zip(p.chunks, chunks))
    assert np.array_equal(p.codes(), np.concatenate(chunks, axis=1))


def test_parse_generated_stage1_reports_problems(released_tokenizer):
    tok = released_tokenizer
    song = Stage1Song("pop", [Section("verse", "hello world"), Section("chorus", "la")],
                      [np.array([1, 2]), np.array([3])], [np.array([4, 5]), np.array([6])])
    ids = build_stage1(tok, song)
    # a generated continuation: the second section stops without <EOA>, its last id is a codebook-1 id
    cut = ids[: len(ids) - len(EOS) - 1 - 1] + [46358]
    p = parse_stage1(tok, cut)
    assert not p.ok
    msgs = " | ".join(p.errors)
    assert "no <EOA>" in msgs and "outside codebook 0" in msgs
    assert p.sections[0].vocal.tolist() == [1, 2]  # the intact first section is still recovered
    assert p.sections[1].vocal.tolist() == [3] and p.sections[1].inst.tolist() == [-1]
    with pytest.raises(SequenceError, match="malformed"):
        p.to_song()


def test_parse_missing_xcodec_and_stray_tokens(released_tokenizer):
    tok = released_tokenizer
    song = Stage1Song("pop", [Section("verse", "hello world")], [np.array([1])], [np.array([2])])
    ids = build_stage1(tok, song)
    i = ids.index(32016)
    p = parse_stage1(tok, ids[:i] + ids[i + 1 :] + [5, 6])
    assert any("missing <xcodec>" in e for e in p.errors)
    assert any("unexpected tokens" in e for e in p.errors)
    assert p.sections[0].vocal.tolist() == [1]


def test_parse_garbage_head(released_tokenizer):
    p = parse_stage1(released_tokenizer, released_tokenizer.tokenize("hello"))
    assert any("instruction" in e for e in p.errors) and any("no [start_of_segment]" in e for e in p.errors)


def test_parse_stage2_reports_bad_ids():
    lay = TokenLayout.released()
    codes = np.arange(16).reshape(8, 2)
    ids = build_stage2_chunk(lay, codes, close=False)
    ids[-1] = 45334  # codebook-7 position holding a codebook-0 id
    p = parse_stage2(lay, ids[:-3] + ids[-1:] + [1])  # also a truncated frame and a text id
    assert not p.ok
    assert any("outside their codebook" in e or "whole number" in e for e in p.errors)


def test_builder_input_errors(released_tokenizer):
    tok = released_tokenizer
    sec = Section("verse", "x")
    with pytest.raises(SequenceError, match="differ in length"):
        build_stage1(tok, Stage1Song("pop", [sec], [np.array([1, 2])], [np.array([1])]))
    with pytest.raises(SequenceError, match="sections but"):
        build_stage1(tok, Stage1Song("pop", [sec], [], []))
    with pytest.raises(SequenceError, match="one line"):
        build_stage1(tok, Stage1Song("pop\nrock", [sec], [np.array([1])], [np.array([1])]))
    from yue.codec_ids import CodecIdError

    with pytest.raises(CodecIdError, match="outside 0..1023"):
        build_stage1(tok, Stage1Song("pop", [sec], [np.array([1024])], [np.array([1])]))
    with pytest.raises(SequenceError, match="8 codebooks"):
        build_stage2_chunk(TokenLayout.released(), np.zeros((4, 3), dtype=int))
