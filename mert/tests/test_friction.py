"""New-user friction (issue 16 item 7): readable one-line errors that leave nothing behind, Slurm-log progress."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from mert.cli import main as cli_main
from mert.configuration_mert import MERTConfig
from mert.extract import SETTINGS_NAME, ExtractError, ExtractOptions, extract, load_index
from mert.modeling_mert import MERTModel

SR = 24000


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_model") / "run"
    MERTModel(MERTConfig.preset("tiny")).save_pretrained(d / "encoder")
    return d


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    d = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(d / f"a{i}.wav", (0.1 * rng.standard_normal(SR)).astype(np.float32), SR)
    return d


def test_model_name_that_is_not_a_folder_says_how_to_get_one(tmp_path, wavs, capsys):
    out = tmp_path / "feats"
    with pytest.raises(ExtractError) as e:
        extract([wavs], out, "m-a-p/MERT-v1-95M")
    msg = str(e.value)
    assert "not a local folder" in msg and "mert convert" in msg and "mert demo" in msg
    assert not out.exists()
    rc = cli_main(["extract", str(wavs), "--model", "m-a-p/MERT-v1-95M", "--out", str(out)])
    assert rc == 2 and not out.exists()


def test_run_folder_resolves_to_its_encoder(tmp_path, wavs, model_dir):
    # a `mert train` run folder works as --model: its encoder/ is used
    s = extract([wavs], tmp_path / "f", str(model_dir), ExtractOptions(pooling="mean"), progress=False)
    assert len(s.done) == 3


def test_wrong_argument_leaves_no_settings_that_refuse_the_rerun(tmp_path, wavs, model_dir):
    out = tmp_path / "feats"
    with pytest.raises(ExtractError, match="layer 99 out of range"):
        extract([wavs], out, model_dir / "encoder", ExtractOptions(layers=[99], pooling="mean"), progress=False)
    assert not (out / SETTINGS_NAME).exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExtractError, match="no audio inputs"):
        extract([tmp_path / "empty"], out, model_dir / "encoder", ExtractOptions(pooling="mean"), progress=False)
    assert not (out / SETTINGS_NAME).exists()
    s = extract([wavs], out, model_dir / "encoder", ExtractOptions(layers=[0, 1], pooling="mean"), progress=False)
    assert len(s.done) == 3 and (out / SETTINGS_NAME).exists()


def test_cuda_device_without_cuda_is_one_line_error(tmp_path, wavs, model_dir, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "feats"
    with pytest.raises(ExtractError, match="CUDA is not available"):
        extract([wavs], out, model_dir / "encoder", device="cuda")
    assert not out.exists()
    rc = cli_main(["extract", str(wavs), "--model", str(model_dir), "--out", str(out), "--device", "cuda"])
    assert rc == 2 and not out.exists()


def test_train_and_probe_without_data_kit_are_one_line_errors(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MUSIC_DATA_DIR", str(tmp_path / "no_kit"))
    monkeypatch.setenv("MUSIC_RUNS_DIR", str(tmp_path / "runs"))
    with caplog.at_level(logging.ERROR, logger="mert"):
        assert cli_main(["train", "trainer.max_steps=1"]) == 2
    assert not (tmp_path / "runs").exists()  # no run folder for a run that could not start
    assert any("build the kit first" in r.getMessage() for r in caplog.records)
    feats = tmp_path / "feats"
    feats.mkdir()
    (feats / "index.jsonl").write_text('{"id": "x", "output": "x.npy"}\n')
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="mert"):
        assert cli_main(["probe", "--features", str(feats), "--task", "key"]) == 2
    assert any("build the kit first" in r.getMessage() for r in caplog.records)


def test_progress_lines_when_not_on_a_tty(tmp_path, wavs, model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="mert.extract"):
        extract([wavs], tmp_path / "f", model_dir / "encoder", ExtractOptions(pooling="mean"), progress=False)
    lines = [r.getMessage() for r in caplog.records if "files read" in r.getMessage()]
    assert lines and "3/3 files read" in lines[-1]
    assert len(load_index(tmp_path / "f")) == 3
