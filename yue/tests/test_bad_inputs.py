"""Bad input -> typed error naming the file and the reason; batch commands skip bad items and keep going.

Every concrete file of ``tests/bad_inputs/`` is used here (``test_every_bad_input_file_is_used``); the README's
*Bad input* table names the test behind each row.
"""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import BAD_INPUTS

from yue.cli import main
from yue.codec import CodecInputError, CodecLoadError, XCodec
from yue.codec.convert import ConversionError, convert_release
from yue.codec.vocos import VocosConfig, VocosDecoder, VocosLoadError
from yue.codec_ids import CodecIdError, read_codes_npy

# code file -> the reason the error must give (regex)
CODE_FILES = {
    "codes_zero_byte.npy": r"empty file \(0 bytes\)",
    "codes_corrupt.npy": r"not a readable \.npy",
    "codes_truncated.npy": r"not a readable \.npy",
    "codes_empty_frames.npy": r"no frames",
    "codes_batch_of_2.npy": r"holds 2 clips \[2, 2, 4\]",
    "codes_float_fractional.npy": r"fractional value 0\.5",
    "codes_float_nan.npy": r"non-finite value nan",
    "codes_out_of_range.npy": r"code 1024 at codebook 1, frame 3 is outside 0\.\.1023",
    "codes_negative.npy": r"code -1 at codebook 0, frame 0 is outside",
    "codes_13_codebooks.npy": r"13 codebooks; this codec has 1\.\.12",
    "codes_1d.npy": r"expected \[K, T\] codes, got shape \[4\]",
    "codes_4d.npy": r"expected \[K, T\] codes, got shape \[1, 1, 2, 4\]",
    "codes_object.npy": r"not a readable \.npy.*allow_pickle",
    "codes_strings.npy": r"must be integers",
    "codes_npz_archive.npy": r"npz archive",
}
# file placed into a converted codec folder -> (its name there, the error, the reason)
CODEC_FOLDER_FILES = {
    "codec_config_invalid.json": ("yue_codec.json", CodecLoadError, r"yue_codec\.json: not valid JSON"),
    "codec_config_no_semantic.json": ("yue_codec.json", CodecLoadError, r"yue_codec\.json: missing .*'semantic'"),
    "codec_config_string_int.json": ("yue_codec.json", CodecLoadError, r"yue_codec\.json: D must be a positive int"),
    "codec_config_zero_heads.json": ("yue_codec.json", CodecLoadError, r"num_attention_heads must be a positive"),
    "codec_config_list.json": ("yue_codec.json", CodecLoadError, r"yue_codec\.json: expected a JSON object"),
    "weights_truncated.safetensors": ("model.safetensors", CodecLoadError, r"model\.safetensors: not a readable"),
}
VOCOS_FILES = {
    "vocos_config_invalid.yaml": ("vocos_config.yaml", r"vocos_config\.yaml: not valid YAML"),
    "vocos_config_missing_head.yaml": ("vocos_config.yaml", r"vocos_config\.yaml: not a Vocos .*'head'"),
    "vocos_config_string_dim.yaml": ("vocos_config.yaml", r"vocos_config\.yaml: dim must be a positive integer"),
    "weights_truncated.safetensors": ("vocal_upsampler.safetensors", r"vocal_upsampler\.safetensors: not a readable"),
}
# file placed into a released xcodec_mini_infer folder -> (its path there, the reason)
RELEASE_FILES = {
    "release_config_no_generator.yaml": ("final_ckpt/config.yaml", r"config\.yaml: no generator\.config section"),
    "release_config_string_ratio.yaml": ("final_ckpt/config.yaml", r"config\.yaml: generator\.config\.ratios must"),
    "hubert_config_invalid.json": ("semantic_ckpts/hf_1_325000/config.json", r"config\.json: not valid JSON"),
    "checkpoint_zero_byte.pth": ("final_ckpt/ckpt_00360000.pth", r"ckpt_00360000\.pth: empty file"),
    "checkpoint_truncated.pth": ("final_ckpt/ckpt_00360000.pth", r"ckpt_00360000\.pth: not a readable torch"),
}
LYRICS_FILES = {
    "lyrics_empty.txt": r"lyrics_empty\.txt: lyrics are empty",
    "lyrics_not_utf8.txt": r"lyrics_not_utf8\.txt: the lyrics file is not UTF-8",
    "lyrics_no_labels.txt": r"lyrics_no_labels\.txt: no section labels",
}


def test_every_bad_input_file_is_used():
    files = {p.name for p in BAD_INPUTS.iterdir() if p.suffix != ".py"}
    used = set(CODE_FILES) | set(CODEC_FOLDER_FILES) | set(VOCOS_FILES) | set(RELEASE_FILES) | set(LYRICS_FILES)
    assert files == used


# ---- code files ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CODE_FILES))
def test_bad_code_file_gives_typed_error_naming_it(name):
    with pytest.raises(CodecIdError, match=CODE_FILES[name]) as e:
        read_codes_npy(BAD_INPUTS / name)
    assert str(e.value).startswith(str(BAD_INPUTS / name))


def test_code_file_accepted_forms(tmp_path):
    good = np.array([[1, 2, 3], [4, 5, 6]], np.int16)
    for name, arr in {"int16": good, "float": good.astype(np.float32), "batch1": good[None]}.items():
        np.save(tmp_path / f"{name}.npy", arr)
        codes = read_codes_npy(tmp_path / f"{name}.npy")
        assert codes.dtype == np.int64 and codes.tolist() == good.tolist()
    with pytest.raises(CodecIdError, match="cannot read"):
        read_codes_npy(tmp_path / "missing.npy")


def test_codec_decode_folder_skips_every_bad_file_and_decodes_the_rest(tmp_path, tiny_codec_dir, capsys):
    src = tmp_path / "codes"
    (src / "x").mkdir(parents=True)
    (src / "y").mkdir()
    good = np.random.default_rng(0).integers(0, 1024, (12, 6)).astype(np.int16)
    np.save(src / "x" / "song.npy", good)  # same name in two folders: two outputs (relative paths kept)
    np.save(src / "y" / "song.npy", good[:4])
    np.save(src / "z_float_whole.npy", good.astype(np.float32))  # integral floats are accepted
    for name in CODE_FILES:
        shutil.copy(BAD_INPUTS / name, src / name)  # the empty [12, 0] file sorts before the good ones
    out = tmp_path / "wav"
    rc = main(["codec", "decode", str(src), "-o", str(out), "--codec", str(tiny_codec_dir)])
    text = capsys.readouterr().out
    assert rc == 1
    n = len(CODE_FILES)
    assert f"decoded 3/{n + 3} files, {n} failed" in text
    for name, why in CODE_FILES.items():  # each bad file is named with its reason
        line = next(ln for ln in text.splitlines() if ln.startswith(f"  skipped {src / name}"))
        assert pytest.importorskip("re").search(why, line), line
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["x/song.wav", "y/song.wav", "z_float_whole.wav"]
    for rel, frames in (("x/song.wav", 6), ("y/song.wav", 6), ("z_float_whole.wav", 6)):
        y, sr = sf.read(out / rel)
        assert sr == 16000 and y.shape == (frames * 320,)


def test_codec_decode_refuses_colliding_outputs_before_any_work(tmp_path, tiny_codec_dir):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    np.save(a / "s.npy", np.zeros((1, 3), np.int16))
    np.save(b / "s.npy", np.zeros((1, 3), np.int16))
    out = tmp_path / "wav"
    rc = main(["codec", "decode", str(a / "s.npy"), str(b / "s.npy"), "-o", str(out), "--codec", str(tiny_codec_dir)])
    assert rc == 2 and not out.exists()  # refused before the codec is even loaded: nothing written


def test_xcodec_decode_refuses_fractional_and_empty_codes(tiny_codec):
    codes = torch.tensor([[[1, 2, 3]]])
    with pytest.raises(CodecInputError, match="fractional value 1.5"):
        tiny_codec.decode(codes.float() + 0.5)
    with pytest.raises(CodecInputError, match="no frames"):
        tiny_codec.decode(torch.zeros(1, 12, 0, dtype=torch.long))
    with pytest.raises(CodecInputError, match="non-finite"):
        tiny_codec.get_embed(np.array([[np.nan]]))
    assert torch.equal(tiny_codec.decode(codes.float()), tiny_codec.decode(codes))  # whole floats: same audio


# ---- codec encode: output names ----------------------------------------------------------------------------------
def _tone(path, seconds=0.2, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.3 * np.sin(2 * np.pi * 220 * t), sr)


def test_codec_encode_keeps_relative_paths(tmp_path, tiny_codec_dir, capsys):
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    for p in ("a/song.wav", "b/song.wav", "song.wav"):
        _tone(src / p)
    out = tmp_path / "codes"
    rc = main(["codec", "encode", str(src), str(src / "a" / "song.wav"), "-o", str(out), "--codec",
               str(tiny_codec_dir)])  # fmt: skip
    text = capsys.readouterr().out
    # a/song.wav given again directly is the same file (taken once); its folder copy keeps the relative path
    assert rc == 0 and "encoded 3/3 files" in text
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.npy")) == ["a/song.npy", "b/song.npy", "song.npy"]


def test_codec_encode_refuses_colliding_names_before_any_work(tmp_path, tiny_codec_dir, caplog):
    src = tmp_path / "in"
    src.mkdir()
    _tone(src / "tune.wav")
    sf.write(src / "tune.flac", np.full(3200, 0.1), 16000)
    _tone(src / "other.wav")
    out = tmp_path / "codes"
    rc = main(["codec", "encode", str(src), "-o", str(out), "--codec", str(tiny_codec_dir)])
    assert rc == 2 and not out.exists()  # nothing encoded, not even other.wav
    assert "tune.npy" in caplog.text and "tune.flac" in caplog.text and "tune.wav" in caplog.text


def test_codec_encode_with_no_matching_input_is_an_error(tmp_path, tiny_codec_dir, caplog):
    (tmp_path / "empty").mkdir()
    rc = main(["codec", "encode", str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "--codec", str(tiny_codec_dir)])
    assert rc == 2 and "no input files" in caplog.text


# ---- broken codec folders -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CODEC_FOLDER_FILES))
def test_broken_codec_folder_names_the_file(name, tmp_path, tiny_codec_dir):
    target, err, why = CODEC_FOLDER_FILES[name]
    bad = tmp_path / "codec"
    shutil.copytree(tiny_codec_dir, bad)
    shutil.copy(BAD_INPUTS / name, bad / target)
    with pytest.raises(err, match=why):
        XCodec.from_pretrained(bad)


def test_codec_folder_with_a_misshaped_tensor(tmp_path, tiny_codec_dir, caplog):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "codec"
    shutil.copytree(tiny_codec_dir, bad)
    state = load_file(str(bad / "model.safetensors"))
    state["fc.bias"] = state["fc.bias"][:-1].clone()
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(CodecLoadError, match=r"model\.safetensors: does not match.*fc\.bias"):
        XCodec.from_pretrained(bad)
    np.save(tmp_path / "c.npy", np.zeros((1, 2), np.int16))
    rc = main(["codec", "decode", str(tmp_path / "c.npy"), "-o", str(tmp_path / "o"), "--codec", str(bad)])
    assert rc == 2 and "model.safetensors" in caplog.text  # one line, exit 2, no traceback


@pytest.mark.parametrize("name", sorted(VOCOS_FILES))
def test_broken_upsampler_files_name_the_file(name, tmp_path, tiny_codec_dir):
    target, why = VOCOS_FILES[name]
    bad = tmp_path / "codec"
    shutil.copytree(tiny_codec_dir, bad)
    shutil.copy(BAD_INPUTS / name, bad / target)
    with pytest.raises(VocosLoadError, match=why):
        VocosDecoder(VocosConfig.from_yaml(bad / "vocos_config.yaml")).load_weights(bad / "vocal_upsampler.safetensors")


@pytest.mark.parametrize("name", sorted(RELEASE_FILES))
def test_broken_release_folder_names_the_file(name, tmp_path, tiny_release):
    target, why = RELEASE_FILES[name]
    rel = tmp_path / "rel"
    shutil.copytree(tiny_release, rel)
    shutil.copy(BAD_INPUTS / name, rel / target)
    with pytest.raises(ConversionError, match=why):
        convert_release(rel, tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_release_config_with_zero_heads_is_a_conversion_error(tmp_path, tiny_release):
    rel = tmp_path / "rel"
    shutil.copytree(tiny_release, rel)
    f = rel / "semantic_ckpts" / "hf_1_325000" / "config.json"
    f.write_text(json.dumps(dict(json.loads(f.read_text()), num_attention_heads=0)))
    with pytest.raises(ConversionError, match=r"config\.json: num_attention_heads must be a positive integer"):
        convert_release(rel, tmp_path / "out")
    f.write_text(json.dumps(dict(json.loads(f.read_text()), num_attention_heads=3)))  # 32 % 3 != 0
    with pytest.raises(ConversionError, match="no buildable codec"):
        convert_release(rel, tmp_path / "out")


# ---- lyrics ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LYRICS_FILES))
def test_bad_lyrics_files_name_the_file(name):
    from yue.generate import GenerateInputError, SongRequest
    from yue.generate.request import parse_sections

    with pytest.raises(GenerateInputError, match=LYRICS_FILES[name]):
        parse_sections(SongRequest("pop", str(BAD_INPUTS / name)))


def test_lyrics_path_that_is_missing_or_a_folder(tmp_path):
    from yue.generate import GenerateInputError
    from yue.generate.request import read_lyrics

    with pytest.raises(GenerateInputError, match=r"lyrics\.txt: lyrics file not found"):
        read_lyrics(str(tmp_path / "lyrics.txt"))
    with pytest.raises(GenerateInputError, match="is a folder"):
        read_lyrics(str(tmp_path))
    with pytest.raises(GenerateInputError, match="got int"):
        read_lyrics(5)
    assert read_lyrics("[verse]\nla la") == ("[verse]\nla la", "lyrics")  # text is still text


# ---- rows of the README's bad-input table that no other test backed (helper K, issue 12) ----------------------
def test_prepare_skips_silent_and_unknown_label_songs_and_builds_the_rest(tmp_path, tiny_codec, tiny_tokenizer):
    from dataclasses import replace

    from yue.prepare import prepare_songs
    from yue.songs import synth_song

    good = synth_song(seed=0, seconds=3.0)
    silent = replace(synth_song(seed=1, seconds=3.0), id="silent-stem")
    silent.vocal = np.zeros_like(silent.vocal)
    unknown = replace(synth_song(seed=2, seconds=3.0), id="unknown-label")
    unknown.sections = [dict(unknown.sections[0], label="spoken")] + unknown.sections[1:]
    rep = prepare_songs([silent, good, unknown], tiny_codec, tiny_tokenizer, tmp_path / "out")
    reasons = {f["id"]: f["reason"] for f in rep["failures"]}
    assert set(reasons) == {"silent-stem", "unknown-label"} and rep["prepared"] == [good.id]
    assert "silent-stem/vocal" in reasons["silent-stem"] and "silent" in reasons["silent-stem"]
    assert "unknown section label 'spoken'" in reasons["unknown-label"]
    assert not (tmp_path / "out" / "codes" / "silent-stem.npz").exists()


def test_codec_encode_allow_silence_flag(tmp_path, tiny_codec_dir, caplog):
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "silent.wav", np.zeros(8000), 16000)
    argv = ["codec", "encode", str(tmp_path / "in"), "--codec", str(tiny_codec_dir), "-o"]
    assert main(argv + [str(tmp_path / "a")]) == 1 and "silent" in caplog.text  # skipped, named, exit 1
    assert not (tmp_path / "a" / "silent.npy").exists()
    assert main(argv + [str(tmp_path / "b"), "--allow-silence"]) == 0
    assert np.load(tmp_path / "b" / "silent.npy").shape == (12, 25)  # 0.5 s at 50 frames/s


def test_codec_convert_refuses_a_legacy_pickle_unless_allowed(tmp_path, caplog):
    from fake_release import write_fake_release

    from yue.codec import tiny_config

    rel = write_fake_release(tmp_path / "rel", tiny_config(), legacy_pickle=True)
    assert main(["codec", "convert", str(rel), "-o", str(tmp_path / "out")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "--allow-pickle" in errors[0] and "ckpt_00360000.pth" in errors[0]
    assert not (tmp_path / "out" / "model.safetensors").exists()
    assert main(["codec", "convert", str(rel), "-o", str(tmp_path / "out"), "--allow-pickle"]) == 0
    assert XCodec.from_pretrained(tmp_path / "out").n_q == 12


def test_cli_eval_skips_a_broken_song_folder_and_exits_1(tmp_path, capsys):
    from test_eval import write_song

    one = (("verse", "la la", 1.0),)  # one short section: the check stays fast
    write_song(tmp_path / "gen" / "good", sections=one)
    write_song(tmp_path / "gen" / "bad", sections=one).joinpath("song.json").write_text("{not json")
    assert main(["eval", str(tmp_path / "gen"), "--out", str(tmp_path / "rep")]) == 1
    rep = json.loads((tmp_path / "rep" / "eval.json").read_text())
    assert [s["song"] for s in rep["songs"]] == ["good"]
    assert "cannot read JSON" in rep["skipped"][0]["reason"] and "skipped" in capsys.readouterr().out


def test_readme_bad_input_rows_name_existing_tests():
    """Every row of the README's bad-input table names at least one test, as ``file::name``, and each exists."""
    import re
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    text = (tests.parent / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Bad input", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("| ") and not r.startswith("| bad input |")]
    assert len(rows) >= 30, "the bad-input table is missing"
    for row in rows:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        assert len(cells) == 4 and cells[2] in {"0", "1", "2", "-", "0 / 2"}, row
        named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", cells[3])
        assert named and len(named) == cells[3].count("`") // 2, f"row without a test, or a name without its file: {row}"
        for file, name in named:
            assert re.search(rf"^def {name}\(", (tests / file).read_text(), re.M), f"{file}::{name} does not exist"
