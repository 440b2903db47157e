"""`yue demo` end to end (synthesized songs when the kit is not built)."""

import numpy as np
import pytest


def _check(res, out, demo_dir):
    assert res["stage1_ok"] and res["stage2_ok"]
    assert "identical codes" in out and "[5/5]" in out
    assert all(np.isfinite(m["snr_db"]) for m in res["metrics"].values())
    assert (demo_dir / "mix_recon.wav").is_file()


def test_demo_with_given_codec(tmp_path, capsys, monkeypatch, tiny_codec_dir):
    monkeypatch.setenv("MUSIC_DATA_DIR", str(tmp_path / "no-kit"))
    from yue.demo import run_demo

    res = run_demo(codec_dir=str(tiny_codec_dir), out_dir=str(tmp_path / "demo"), seconds=1.0)
    _check(res, capsys.readouterr().out, tmp_path / "demo")


@pytest.mark.slow
def test_demo_trains_codec(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MUSIC_DATA_DIR", str(tmp_path / "no-kit"))
    from yue.demo import run_demo

    res = run_demo(steps=2, out_dir=str(tmp_path / "demo"), seconds=3.0)
    _check(res, capsys.readouterr().out, tmp_path / "demo")
    assert (tmp_path / "demo" / "codec-run" / "checkpoint" / "model.safetensors").is_file()
