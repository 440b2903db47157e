"""Property tests (hypothesis) of the codec ids, the token sequences and the batch codec commands.

Each property: a generated input gives a typed error or a valid result (and round-trips where an inverse exists);
batch commands leave only complete outputs. The example counts come from the profile loaded in ``conftest.py``
(``yue-default``: a few seconds per family; ``slow`` with ``--runslow``: 400 examples).
"""

import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import soundfile as sf
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from yue.codec_ids import RELEASED_XCODEC, CodecIdError, CodecIdLayout, read_codes_npy, repair_codes
from yue.lyrics import Section
from yue.sequences import (
    Reference,
    SequenceError,
    Stage1Song,
    build_stage1,
    build_stage2_chunk,
    build_stage2_document,
    parse_stage1,
    parse_stage2,
)

DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint64, np.float32, np.float64, np.bool_]


@st.composite
def code_arrays(draw, max_dims: int = 3):
    """Arrays of any of ``DTYPES`` with 0..max_dims axes: mostly valid codes, some out of range, fractional, NaN."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=6))
    if dtype.kind == "f":
        elements = st.one_of(st.integers(-3, 1030).map(float), st.floats(allow_nan=True, allow_infinity=True,
                                                                          width=8 * dtype.itemsize))  # fmt: skip
    elif dtype.kind == "b":
        elements = st.booleans()
    else:
        info = np.iinfo(dtype)
        elements = st.one_of(st.integers(max(info.min, -3), min(info.max, 1030)),
                             st.integers(info.min, info.max))  # fmt: skip
    return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def layouts(draw):
    return CodecIdLayout(draw(st.integers(0, 10**6)), draw(st.integers(1, 2048)), draw(st.integers(1, 12)))


# ---- codec ids ---------------------------------------------------------------------------------------------------
@given(code_arrays(), layouts(), st.integers(-2, 13))
def test_codes_to_ids_typed_error_or_round_trip(arr, lay, begin):
    try:
        ids = lay.codes_to_ids(arr, begin)
    except CodecIdError:
        return
    codes = arr.reshape(1, -1) if arr.ndim == 1 else arr
    assert codes.ndim == 2 and np.array_equal(codes, codes.astype(np.int64))  # accepted = whole numbers only
    k, t = codes.shape
    assert ids.dtype == np.int64 and ids.shape == (k * t,)
    if k:
        lo, hi = lay.id_range(begin, k)
        assert ((ids >= lo) & (ids < hi)).all()
        assert np.array_equal(lay.ids_to_codes(ids, n=k, begin=begin), codes.astype(np.int64))


ID_VALUES = st.one_of(
    st.integers(45000, 58000), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.just(None), st.text(max_size=2)
)


@given(st.lists(ID_VALUES, max_size=24), st.one_of(st.integers(-1, 13), st.just(1.5)), st.integers(-1, 12),
       st.booleans())  # fmt: skip
def test_ids_to_codes_typed_error_or_valid(ids, n, begin, strict):
    lay = RELEASED_XCODEC
    try:
        codes = lay.ids_to_codes(ids, n=n, begin=begin, strict=strict)
    except CodecIdError:
        return
    assert codes.shape == (n, len(ids) // n)
    ok = codes >= 0
    assert (codes < lay.codebook_size).all() and (ok.all() or not strict)
    flat = np.asarray(ids, dtype=np.float64).astype(np.int64)  # accepted ids are whole numbers within int64
    back = (codes + (lay.global_offset + lay.codebook_size * (begin + np.arange(n)))[:, None]).T.reshape(-1)
    assert np.array_equal(back[ok.T.reshape(-1)], flat[ok.T.reshape(-1)])


@given(code_arrays(), st.integers(-1, 1100))
def test_repair_codes_typed_error_or_all_in_range(arr, size):
    try:
        out = repair_codes(arr, size)
    except CodecIdError:
        return
    src = (arr.reshape(1, -1) if arr.ndim == 1 else arr).astype(np.int64)
    assert out.shape == src.shape and ((out >= 0) & (out < size)).all()
    valid = (src >= 0) & (src < size)
    assert np.array_equal(out[valid], src[valid])  # valid codes are never changed


@given(code_arrays(max_dims=4))
def test_read_codes_npy_typed_error_or_the_saved_codes(arr):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.npy"
        np.save(p, arr)
        try:
            codes = read_codes_npy(p)
        except CodecIdError as e:
            assert str(e).startswith(str(p))  # names the file
            return
    src = arr[0] if arr.ndim == 3 else arr
    assert codes.ndim == 2 and 1 <= codes.shape[0] <= 12 and codes.shape[1] >= 1
    assert ((codes >= 0) & (codes < 1024)).all() and np.array_equal(codes, src)


# ---- sequences ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return tiny_tokenizer


def _any_ids(tok):
    specials = [tok.id(n) for n in ("<SOA>", "<EOA>", "<xcodec>", "<EOD>", "<stage_1>", "<stage_2>")]
    marker = st.sampled_from([tok.tokenize(m) for m in ("[start_of_segment]", "[end_of_segment]",
                                                         "[start_of_reference]", "[end_of_reference]")])  # fmt: skip
    one = st.one_of(st.integers(-5, tok.vocab_size + 300), st.sampled_from(specials)).map(lambda i: [i])
    return st.lists(st.one_of(one, marker), max_size=40).map(lambda parts: [i for p in parts for i in p])


@given(data=st.data())
def test_parsers_never_raise_on_token_soup(tok, data):
    ids = data.draw(_any_ids(tok))
    for p in (parse_stage1(tok, ids), parse_stage1(tok, ids, reference_mode="single")):
        assert p.ok == (not p.errors)
        for s in p.sections:
            assert s.vocal.shape == s.inst.shape and ((s.vocal >= -1) & (s.vocal < 1024)).all()
    for tf in (True, False):
        p2 = parse_stage2(tok.layout, ids, teacher_forcing=tf)
        assert p2.ok == (not p2.errors) and all(c.codes.shape[0] == 8 for c in p2.chunks)


@given(st.one_of(st.none(), st.integers(), st.text(max_size=3), st.lists(st.floats(), max_size=3),
                 st.lists(st.lists(st.integers(0, 5), min_size=2, max_size=2), min_size=1, max_size=2)))  # fmt: skip
def test_parsers_refuse_non_sequences_with_a_typed_error(tok, ids):
    for parse in (lambda: parse_stage1(tok, ids), lambda: parse_stage2(tok.layout, ids)):
        try:
            p = parse()
        except SequenceError:
            continue
        assert isinstance(p.errors, list)


WORDS = ["la", "sing", "with", "me", "night", "moon", "road", "long", "the", "on"]
text_st = st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=4).map(" ".join), max_size=3).map("\n".join)
LABELS = ["verse", "chorus", "bridge", "intro", "outro"]


@given(data=st.data())
def test_stage1_build_parse_round_trip(tok, data):
    n = data.draw(st.integers(1, 3))
    sections = [Section(data.draw(st.sampled_from(LABELS)), data.draw(text_st)) for _ in range(n)]
    lens = [data.draw(st.integers(0, 6)) for _ in range(n)]
    codes = st.integers(0, 1023)
    vocal = [np.array(data.draw(st.lists(codes, min_size=t, max_size=t)), dtype=np.int64) for t in lens]
    inst = [np.array(data.draw(st.lists(codes, min_size=t, max_size=t)), dtype=np.int64) for t in lens]
    mode = data.draw(st.sampled_from([None, "dual", "single"]))
    ref = None
    if mode:
        r = np.array(data.draw(st.lists(codes, min_size=1, max_size=5)), dtype=np.int64)
        ref = Reference(mode, r, r[::-1].copy() if mode == "dual" else None)
    tags = " ".join(data.draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=3)))
    song = Stage1Song(tags, sections, vocal, inst, ref)
    ids = build_stage1(tok, song, eod=data.draw(st.booleans()))
    p = parse_stage1(tok, ids, reference_mode=mode or "dual")
    assert p.ok, p.errors
    assert p.tags == tags and p.head_sections == sections
    assert [s.section for s in p.sections] == sections
    for s, v, i in zip(p.sections, vocal, inst):
        assert np.array_equal(s.vocal, v) and np.array_equal(s.inst, i)
    if ref is not None:
        assert np.array_equal(p.reference.vocal, ref.vocal)


@given(st.integers(8, 12), st.integers(1, 4), st.integers(1, 6), st.booleans(), st.data())
def test_stage2_build_parse_round_trip(tok, k, n_chunks, chunk, tf, data):
    t = n_chunks * chunk + data.draw(st.integers(0, chunk - 1))  # the remainder is dropped
    arr = np.array(data.draw(st.lists(st.integers(0, 1023), min_size=k * t, max_size=k * t))).reshape(k, t)
    ids, kept = build_stage2_document(tok.layout, arr, chunk_frames=chunk, min_unique=0, teacher_forcing=tf)
    assert kept == list(range(0, n_chunks * chunk, chunk))
    p = parse_stage2(tok.layout, ids, teacher_forcing=tf)
    assert p.ok and p.eod, p.errors
    assert np.array_equal(p.codes(), arr[:8, : n_chunks * chunk])


@given(code_arrays())
def test_stage2_chunk_typed_error_or_valid(tok, arr):
    try:
        ids = build_stage2_chunk(tok.layout, arr)
    except (SequenceError, CodecIdError):
        return
    p = parse_stage2(tok.layout, ids)
    src = arr.astype(np.int64)
    assert p.ok and np.array_equal(p.codes(), src[:8])


# ---- batch commands: only complete outputs ----------------------------------------------------------------------
def _cost(divisor: int) -> settings:
    """The loaded profile's example count divided by ``divisor`` (an example runs a whole batch command)."""
    return settings(max_examples=max(3, settings().max_examples // divisor))


@_cost(5)
@given(st.lists(st.tuples(st.sampled_from(["good", "bad_range", "empty", "float_frac", "zero_byte"]), st.booleans()),
                min_size=1, max_size=5))  # fmt: skip
def test_codec_decode_leaves_only_complete_outputs(tiny_codec_dir, files):
    """Random good/bad code files, and random write failures mid-file: every file left in --out is a whole wav of a
    good input, no temporary or partial file remains, and the summary counts what was written."""
    from yue.cli import main

    real_write = sf.write
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / "codes", Path(d) / "wav"
        src.mkdir()
        expect, fail_write = {}, set()
        for j, (kind, crash) in enumerate(files):
            p = src / f"f{j}.npy"
            good = np.full((2, 3 + j), 7 * j, np.int16)
            arrays = {"good": good, "bad_range": good + 2000, "empty": good[:, :0], "float_frac": good + 0.25}
            if kind == "zero_byte":
                p.write_bytes(b"")
            else:
                np.save(p, arrays[kind])
            if kind == "good" and crash:
                fail_write.add(f"f{j}")
            elif kind == "good":
                expect[f"f{j}.wav"] = (3 + j) * 320

        def flaky_write(file, data, *a, **k):  # half a file, then a disk error
            if Path(file).name.lstrip(".").split(".")[0] in fail_write:  # the temporary name of fN.wav
                Path(file).write_bytes(b"RIFF" + b"\0" * 20)
                raise OSError(28, "No space left on device")
            return real_write(file, data, *a, **k)

        with mock.patch("soundfile.write", flaky_write):
            rc = main(["codec", "decode", str(src), "-o", str(out), "--codec", str(tiny_codec_dir)])
        left = {p.name: p for p in out.rglob("*") if p.is_file()} if out.exists() else {}
        assert set(left) == set(expect)  # no partial or temporary file
        for name, n in expect.items():
            assert sf.info(str(left[name])).frames == n
        assert rc == (0 if len(expect) == len(files) else 1)


@_cost(5)
@given(st.lists(st.booleans(), min_size=1, max_size=4))
def test_codec_encode_leaves_only_complete_outputs(tiny_codec_dir, crashes):
    """``np.save`` failing half-way for random files: the .npy files left in --out are complete, the rest absent."""
    from yue.cli import main

    real_save = np.save
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / "in", Path(d) / "codes"
        (src / "sub").mkdir(parents=True)
        t = np.arange(3200) / 16000
        names = []
        for j, crash in enumerate(crashes):
            rel = f"sub/s{j}.wav" if j % 2 else f"s{j}.wav"
            sf.write(src / rel, 0.2 * np.sin(2 * np.pi * (200 + 50 * j) * t), 16000)
            names.append((rel, crash))
        calls = iter(crashes)

        def flaky_save(fh, arr, *a, **k):  # files are encoded in sorted order; crash the chosen ones half-way
            if next(calls):
                fh.write(b"\x93NUMPY\x01\x00")
                raise OSError(5, "Input/output error")
            return real_save(fh, arr, *a, **k)

        order = sorted(names, key=lambda x: str(src / x[0]))
        calls = iter([c for _, c in order])
        with mock.patch("numpy.save", flaky_save):
            rc = main(["codec", "encode", str(src), "-o", str(out), "--codec", str(tiny_codec_dir)])
        left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) if out.exists() else []
        assert left == sorted(str(Path(r).with_suffix(".npy")) for r, c in names if not c)
        for rel in left:
            assert np.load(out / rel).shape == (12, 10)
        assert rc == (1 if any(crashes) else 0)


# ---- lyrics and section timings ------------------------------------------------------------------------------------
@given(st.one_of(st.text(max_size=40), st.none(), st.integers(), st.binary(max_size=5)), st.booleans())
def test_split_lyrics_typed_error_or_sections_that_render_back(text, allow_unknown):
    from yue.lyrics import LyricsError, parse_section_string, split_lyrics

    try:
        sections = split_lyrics(text, allow_unknown=allow_unknown)
    except LyricsError:
        return
    assert sections and all(parse_section_string(s.render()) == s for s in sections)


TIMES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**400), 10**400), st.text(max_size=3),
                  st.none())  # fmt: skip
SECTION = st.one_of(
    st.fixed_dictionaries({"label": st.sampled_from(["verse", "chorus", "", "spoken", None, 3]), "start": TIMES,
                           "end": TIMES, "lyrics": st.one_of(st.text(max_size=5), st.none())}),  # fmt: skip
    st.none(), st.integers(), st.lists(st.integers(), max_size=2),
)


@given(st.one_of(st.lists(SECTION, max_size=4), st.none(), st.integers(), st.text(max_size=3)),
       st.floats(0.5, 30.0))  # fmt: skip
def test_check_sections_typed_error_or_frames_inside_the_audio(sections, duration):
    from yue.prepare import PrepareError, check_sections

    frames = int(duration * 50)
    try:
        kept = check_sections("song", sections, duration, frames, 50)
    except PrepareError as e:
        assert str(e).startswith("song")  # names the song
        return
    assert kept and all(0 <= k["frame_start"] and k["frame_end"] <= frames and
                        k["frame_end"] - k["frame_start"] >= 50 for k in kept)  # fmt: skip
