"""`yue demo` end to end: codec -> prepare -> stage-1/stage-2 LMs -> a generated song -> yue eval (synthesized
songs when the kit is not built)."""

import json

import numpy as np
import pytest
import soundfile as sf


def _check(res, out: str, demo_dir, sections: int):
    for k in range(1, 7):
        assert f"[{k}/6]" in out
    assert np.isfinite(res["codec"]["snr_db"])
    for stage in ("stage1", "stage2"):  # both LMs trained and saved a folder generation could load
        assert res[stage]["global_step"] >= 1 and (demo_dir / stage / "final" / "model.safetensors").is_file()
    song = json.loads((demo_dir / "song" / "song.json").read_text())
    assert [s["label"] for s in song["sections"]] == [s["label"] for s in song["request"]["sections"]][:sections]
    for name in ("mix.wav", "vocals.wav", "instrumental.wav"):  # something to listen to, as long as the sections
        info = sf.info(demo_dir / "song" / name)
        assert abs(info.frames / info.samplerate - song["sections"][-1]["end_s"]) < 0.1
    assert res["eval"]["summary"]["sections_present"] == sections
    assert (demo_dir / "eval" / "eval.md").is_file()


def test_demo_with_given_codec(tmp_path, capsys, monkeypatch, tiny_codec_dir):
    monkeypatch.setenv("MUSIC_DATA_DIR", str(tmp_path / "no-kit"))
    from yue.demo import run_demo

    res = run_demo(codec_dir=str(tiny_codec_dir), out_dir=str(tmp_path / "demo"), seconds=1.0, lm_steps=2,
                   sections=2, section_tokens=24)  # fmt: skip
    _check(res, capsys.readouterr().out, tmp_path / "demo", 2)


@pytest.mark.slow
def test_demo_trains_codec(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MUSIC_DATA_DIR", str(tmp_path / "no-kit"))
    from yue.demo import run_demo

    res = run_demo(steps=2, out_dir=str(tmp_path / "demo"), seconds=3.0, lm_steps=2, section_tokens=24)
    _check(res, capsys.readouterr().out, tmp_path / "demo", 2)
    assert (tmp_path / "demo" / "codec-run" / "checkpoint" / "model.safetensors").is_file()
