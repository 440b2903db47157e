"""The `yue` command line: codec encode/decode over folders (bad files skipped and reported), prepare, train help."""

import json

import numpy as np
import pytest
import soundfile as sf

from yue.cli import build_parser, main


def test_help_says_what_exists(capsys):
    text = build_parser().format_help()
    for cmd in ("codec", "prepare", "train", "generate", "eval", "demo"):
        assert cmd in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "task: stage1 | stage2" in capsys.readouterr().out


def test_codec_encode_decode_folder(tmp_path, tiny_codec_dir, capsys):
    src = tmp_path / "in"
    src.mkdir()
    t = np.arange(int(0.3 * 48000)) / 48000
    sf.write(src / "stereo48k.wav", np.stack([np.sin(2 * np.pi * 220 * t)] * 2, axis=1) * 0.3, 48000)
    sf.write(src / "silent.wav", np.zeros(8000), 16000)
    (src / "broken.wav").write_bytes(b"RIFF....not audio")
    codes_dir = tmp_path / "codes"
    rc = main(["codec", "encode", str(src), "-o", str(codes_dir), "--codec", str(tiny_codec_dir)])
    out = capsys.readouterr().out
    assert rc == 1  # two bad files reported, the good one encoded
    assert "encoded 1/3 files, 2 failed" in out
    codes = np.load(codes_dir / "stereo48k.npy")
    assert codes.shape == (12, 15) and codes.dtype == np.int16  # 0.3 s -> 4800 samples at 16 kHz -> 15 frames
    assert not (codes_dir / "silent.npy").exists() and not (codes_dir / "broken.npy").exists()

    np.save(codes_dir / "bad_range.npy", np.full((2, 5), 2000, dtype=np.int16))
    wav_dir = tmp_path / "wav"
    rc = main(["codec", "decode", str(codes_dir), "-o", str(wav_dir), "--codec", str(tiny_codec_dir)])
    assert rc == 1
    y, sr = sf.read(wav_dir / "stereo48k.wav")
    assert sr == 16000 and y.shape == (15 * 320,)
    assert not (wav_dir / "bad_range.wav").exists()
    rc = main(["codec", "decode", str(codes_dir / "stereo48k.npy"), "-o", str(tmp_path / "up"),
               "--codec", str(tiny_codec_dir), "--upsampler", "vocal", "--postprocess"])  # fmt: skip
    assert rc == 0
    y, sr = sf.read(tmp_path / "up" / "stereo48k.wav")
    assert sr == 44100 and abs(len(y) - 15 * 882) <= 1


def test_prepare_writes_cache(tmp_path, tiny_codec_dir, monkeypatch):
    from yue.songs import synth_song

    monkeypatch.setattr("yue.songs.song_refs", lambda *a, **k: [synth_song(0, 7.0), synth_song(1, 0.5)])
    out = tmp_path / "cache"
    rc = main(["prepare", "-o", str(out), "--codec", str(tiny_codec_dir), "--tokenizer", "tiny"])
    assert rc == 1  # the 0.5 s song has no section >= 1 s: reported, the other one prepared
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["synth-000"]
    assert "synth-001" in (out / "failures.jsonl").read_text()
    codes = np.load(out / "codes" / "synth-000.npz")
    assert codes["mix"].shape == (12, 350)
    s1 = np.load(out / "stage1" / "synth-000.npy")
    assert s1.size == rows[0]["stage1_len"]
    s2 = np.load(out / "stage2" / "synth-000_vocal.npy")
    assert s2.size in (0, 2704 + 1)  # one 6 s chunk + <EOD> (unless dropped as repetitive)
    from yue.sequences import parse_stage1
    from yue.tokenizer import YuETokenizer

    tok = YuETokenizer(out / "tokenizer" / "tokenizer.model")
    p = parse_stage1(tok, s1)
    assert p.ok and p.eod and [s.label for s in p.head_sections] == ["verse", "chorus"]
    v, i = p.tracks()
    assert np.array_equal(v[0], codes["vocal"][0, : v.shape[1]])
    # a second run skips the done song
    rc = main(["prepare", "-o", str(out), "--codec", str(tiny_codec_dir), "--tokenizer", "tiny"])
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 1
