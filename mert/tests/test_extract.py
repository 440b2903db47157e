"""Feature extraction: windowing exactness, pooling, outputs/index/resume/shards, bad inputs, bounded memory."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch

from mert.cli import main as cli_main
from mert.configuration_mert import MERTConfig
from mert.extract import (
    ExtractError,
    ExtractOptions,
    FeatureExtractor,
    collect_items,
    extract,
    extract_waveform,
    load_index,
    parse_shard,
    read_features,
)
from mert.modeling_mert import MERTModel

SR = 24000


@pytest.fixture(scope="module")
def model() -> MERTModel:
    torch.manual_seed(0)
    return MERTModel(MERTConfig.preset("tiny")).eval()


def noise(seconds: float, seed: int = 0, sr: int = SR) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * sr))).astype(np.float32)


def write(path, wav, sr=SR):
    sf.write(path, wav.T if wav.ndim == 2 else wav, sr, subtype="FLOAT")
    return path


def full_forward(model, wav) -> np.ndarray:
    with torch.no_grad():
        hs = model(torch.from_numpy(wav)[None], output_hidden_states=True).hidden_states
    return torch.stack(hs)[:, 0].numpy()  # [L+1, T, D]


# ============================================================================================ windowing


def test_single_window_equals_whole_forward(model):
    wav = noise(3.3)
    ref = full_forward(model, wav)
    got = extract_waveform(model, wav, SR, ExtractOptions(window_s=10.0))
    assert got.shape == ref.shape == (3, model.num_frames(len(wav)), 64)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("overlap", [0.0, 0.5, 1.0])
def test_windowed_frame_count_and_content(model, overlap):
    wav = noise(7.77, seed=1)
    got = extract_waveform(model, wav, SR, ExtractOptions(window_s=2.0, overlap_s=overlap, batch_size=3))
    # exactly the frames of a whole-file forward, no frame lost or duplicated at window edges
    assert got.shape[1] == model.num_frames(len(wav))
    fx = FeatureExtractor(model, ExtractOptions(window_s=2.0, overlap_s=overlap))
    plan = fx.plan
    first = full_forward(model, wav[: plan.win_samples])
    keep = plan.hop_frames + plan.overlap_frames // 2  # frames the first window owns
    np.testing.assert_allclose(got[:, :keep], first[:, :keep], atol=1e-5)
    # the second window's owned frames come from a forward over the second window alone
    second = full_forward(model, wav[plan.hop_samples : plan.hop_samples + plan.win_samples])
    lo = plan.overlap_frames // 2
    np.testing.assert_allclose(got[:, keep : keep + 10], second[:, lo : lo + 10], atol=1e-5)


def test_pooling_modes_and_layers(model):
    wav = noise(5.5, seed=2)
    frames = extract_waveform(model, wav, SR, ExtractOptions(window_s=2.0))
    mean = extract_waveform(model, wav, SR, ExtractOptions(window_s=2.0, pooling="mean"))
    np.testing.assert_allclose(mean, frames.mean(axis=1), atol=1e-5)
    win = extract_waveform(model, wav, SR, ExtractOptions(window_s=2.0, pooling="window", min_window_s=1.0))
    assert win.shape == (3, 3, 64)  # windows of 2 s: [0,2) [2,4) and a 1.5 s tail, kept (>= 1 s)
    win = extract_waveform(model, noise(4.5), SR, ExtractOptions(window_s=2.0, pooling="window", min_window_s=1.0))
    assert win.shape == (3, 2, 64)  # 0.5 s tail dropped (MARBLE)
    sel = extract_waveform(model, wav, SR, ExtractOptions(window_s=2.0, layers=[0, -1]))
    np.testing.assert_array_equal(sel, frames[[0, 2]])
    with pytest.raises(ExtractError, match="out of range"):
        extract_waveform(model, wav, SR, ExtractOptions(layers=[3]))
    with pytest.raises(ExtractError, match="overlap_s"):
        extract_waveform(model, wav, SR, ExtractOptions(window_s=2.0, overlap_s=2.0))


# ============================================================================================ files, index, resume


def test_extract_files_index_resume_and_formats(model, tmp_path):
    d = tmp_path / "audio"
    (d / "sub").mkdir(parents=True)
    a = noise(4.2, seed=3)
    write(d / "a.wav", a)
    write(d / "sub" / "b.wav", noise(1.1, seed=4))
    out = tmp_path / "out"
    opts = ExtractOptions(window_s=2.0, batch_size=4)
    s = extract([d], out, model, opts, progress=False)
    assert sorted(s.done) == ["a", "sub/b"] and not s.failed
    np.testing.assert_allclose(read_features(out / "a.npy"), extract_waveform(model, a, SR, opts), atol=1e-6)
    rows = {r["id"]: r for r in load_index(out)}
    assert rows["a"]["shape"] == [3, model.num_frames(len(a)), 64] and rows["a"]["num_windows"] == 3
    assert rows["sub/b"]["output"] == "sub/b.npy" and (out / "sub" / "b.npy").is_file()
    assert not list(out.rglob("*.part")) and not list(out.rglob("*.tmp*"))  # no leftovers
    # re-run: nothing recomputed; a lost index line is recovered
    (out / "index.jsonl").write_text(json.dumps(rows["a"]) + "\n")
    s2 = extract([d], out, model, opts, progress=False)
    assert sorted(s2.skipped) == ["a", "sub/b"] and not s2.done and s2.windows == 0
    assert {r["id"] for r in load_index(out)} == {"a", "sub/b"}
    # other settings into the same folder are refused
    with pytest.raises(ExtractError, match="other settings"):
        extract([d], out, model, ExtractOptions(window_s=3.0), progress=False)
    torch.manual_seed(1)
    other = MERTModel(MERTConfig.preset("tiny")).eval()  # same config, other weights
    with pytest.raises(ExtractError, match="another model"):
        extract([d], out, other, opts, progress=False)
    # safetensors + float16 + mean pooling
    from safetensors.numpy import load_file

    s3 = extract([d / "a.wav"], tmp_path / "st", model,
                 ExtractOptions(pooling="mean", fmt="safetensors", dtype="float16", layers=[1]), progress=False)
    x = load_file(str(tmp_path / "st" / "a.safetensors"))["features"]
    assert x.dtype == np.float16 and x.shape == (1, 64) and s3.done == ["a"]


def test_manifest_and_shards(model, tmp_path):
    paths = [write(tmp_path / f"c{i}.wav", noise(0.5, seed=i)) for i in range(5)]
    man = tmp_path / "clips" / "manifest.jsonl"
    man.parent.mkdir()
    # data-kit style: paths relative to the kit root (one level above the manifest)
    man.write_text("".join(json.dumps({"id": f"clip{i}", "path": p.name}) + "\n" for i, p in enumerate(paths)))
    items = collect_items([man])
    assert [it.id for it in items] == [f"clip{i}" for i in range(5)] and items[0].path == paths[0]
    out = tmp_path / "out"
    done = []
    for i in range(2):
        s = extract([man], out, model, ExtractOptions(pooling="mean"), shard=f"{i}/2", progress=False)
        done += s.done
        assert (out / f"index-{i}-of-2.jsonl").is_file()
    assert sorted(done) == [f"clip{i}" for i in range(5)]
    assert len(load_index(out)) == 5
    for bad in ("2/2", "x", "1/0"):
        with pytest.raises(ExtractError):
            parse_shard(bad)
    (tmp_path / "x1").mkdir()
    (tmp_path / "x2").mkdir()
    write(tmp_path / "x1" / "same.wav", noise(0.5))
    write(tmp_path / "x2" / "same.wav", noise(0.5))
    with pytest.raises(ExtractError, match="duplicate output ids"):
        collect_items([tmp_path / "x1" / "same.wav", tmp_path / "x2" / "same.wav"])


# ============================================================================================ bad inputs


def test_bad_inputs_are_reported_and_skipped(model, tmp_path, caplog):
    d = tmp_path / "in"
    d.mkdir()
    base = noise(1.5, seed=7)
    write(d / "good.wav", base)
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    (d / "empty.wav").write_bytes(b"")
    write(d / "short.wav", base[:300])  # < 400 samples: not one frame
    write(d / "silent.wav", np.zeros(SR, np.float32))
    write(d / "rate16k.wav", noise(2.0, seed=8, sr=16000), sr=16000)
    stereo = np.stack([base, 0.5 * base[::-1].copy()])
    write(d / "stereo.wav", stereo)
    write(d / "quad.wav", np.stack([base, base, -base, 0.5 * base]))
    with caplog.at_level(logging.WARNING, logger="mert.extract"):
        s = extract([d, tmp_path / "missing.wav"], tmp_path / "out", model, ExtractOptions(window_s=1.0),
                    progress=False)
    assert set(s.failed) == {"corrupt", "empty", "short", "missing"}
    assert "too short" in s.failed["short"] and "400" in s.failed["short"] and "short.wav" in s.failed["short"]
    assert "missing.wav" in s.failed["missing"] and "not found" in s.failed["missing"]
    assert "empty.wav" in s.failed["empty"]
    failed_rows = [json.loads(x) for x in (tmp_path / "out" / "failed.jsonl").read_text().splitlines()]
    assert {r["id"] for r in failed_rows} == set(s.failed)
    assert "16000 Hz input resampled" in caplog.text
    rows = {r["id"]: r for r in load_index(tmp_path / "out")}
    assert rows["silent"]["silent"] is True and np.isfinite(read_features(tmp_path / "out" / "silent.npy")).all()
    assert rows["rate16k"]["shape"][1] == model.num_frames(2 * SR)  # resampled to 24 kHz first
    # multichannel input = the model run on the channel average
    for name, wav in (("stereo", stereo), ("quad", np.stack([base, base, -base, 0.5 * base]))):
        ref = extract_waveform(model, wav.mean(axis=0), SR, ExtractOptions(window_s=1.0))
        np.testing.assert_allclose(read_features(tmp_path / "out" / f"{name}.npy"), ref, atol=1e-5)
    # NaN samples in memory
    with pytest.raises(ExtractError, match="non-finite"):
        extract_waveform(model, np.full(1000, np.nan, np.float32), SR)


def test_cli_extract_exit_codes(model, tmp_path, capsys):
    model.save_pretrained(tmp_path / "m")
    write(tmp_path / "ok.wav", noise(1.0))
    (tmp_path / "bad.wav").write_bytes(b"nope")
    rc = cli_main(["extract", str(tmp_path / "ok.wav"), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o"),
                   "--layers", "0,-1", "--pooling", "mean", "--no-progress"])
    assert rc == 0 and read_features(tmp_path / "o" / "ok.npy").shape == (2, 64)
    rc = cli_main(["extract", str(tmp_path / "ok.wav"), str(tmp_path / "bad.wav"), "--model", str(tmp_path / "m"),
                   "--out", str(tmp_path / "o2"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 3 and "failed bad" in out
    rc = cli_main(["extract", str(tmp_path / "ok.wav"), "--model", str(tmp_path / "nomodel"), "--out",
                   str(tmp_path / "o3")])
    assert rc == 2


# ============================================================================================ long inputs


def test_long_file_is_streamed_in_bounded_windows(model, tmp_path):
    """90 s at 44.1 kHz stereo: windows of fixed size, their number as planned, frames exact."""
    path = tmp_path / "long.wav"
    seconds, sr_in = 90, 44100
    with sf.SoundFile(path, "w", sr_in, 2, subtype="PCM_16") as f:
        rng = np.random.default_rng(0)
        for _ in range(seconds // 10):
            f.write((0.1 * rng.standard_normal((10 * sr_in, 2))).astype(np.float32))
    s = extract([path], tmp_path / "out", model, ExtractOptions(window_s=5.0, batch_size=8), progress=False)
    fx = FeatureExtractor(model, ExtractOptions(window_s=5.0))
    n = seconds * SR
    assert s.done == ["long"]
    assert s.windows == -(-(n - fx.plan.win_samples) // fx.plan.hop_samples) + 1  # ceil: windows until the end
    assert s.max_window_samples == fx.plan.win_samples == 120080  # never more than one 5 s window per item
    x = np.load(tmp_path / "out" / "long.npy", mmap_mode="r")
    assert x.shape == (3, model.num_frames(n), 64)


@pytest.mark.slow
def test_twenty_minute_file_bounded_memory(tmp_path):
    """A 20-minute file: peak RSS of the extraction grows by far less than the decoded audio (230 MB float32 x2)."""
    script = textwrap.dedent(f"""
        import resource, sys, numpy as np, soundfile as sf, torch
        from mert.configuration_mert import MERTConfig
        from mert.modeling_mert import MERTModel
        from mert.extract import ExtractOptions, extract
        path = "{tmp_path}/long.wav"
        with sf.SoundFile(path, "w", 48000, 2, subtype="PCM_16") as f:
            rng = np.random.default_rng(0)
            for _ in range(120):
                f.write((0.1 * rng.standard_normal((480000, 2))).astype(np.float32))
        torch.manual_seed(0)
        m = MERTModel(MERTConfig.preset("tiny")).eval()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        s = extract([path], "{tmp_path}/out", m, ExtractOptions(window_s=5.0, batch_size=4), progress=False)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(s.windows, s.max_window_samples, (after - before) / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    windows, max_win, grew_mb = out.stdout.split()
    assert int(windows) == 240 and int(max_win) == 120080
    assert float(grew_mb) < 200, f"peak RSS grew by {grew_mb} MB"
    x = np.load(tmp_path / "out" / "long.npy", mmap_mode="r")
    assert x.shape == (3, (20 * 60 * SR - 400) // 320 + 1, 64)


# ============================================================================================ demo


def test_demo_on_data_kit_clips(model, tmp_path, monkeypatch, capsys, datakit):
    model.save_pretrained(tmp_path / "m")
    monkeypatch.setenv("MUSIC_DATA_DIR", str(datakit))
    monkeypatch.setenv("MUSIC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MUSIC_RUNS_DIR", str(tmp_path / "runs"))
    assert cli_main(["demo", "--checkpoint", str(tmp_path / "m"), "--num-clips", "3", "--probe-task", "key"]) == 0
    out = capsys.readouterr().out
    assert "3 clips from the data kit" in out and "per-layer summary" in out
    assert "features (3, 374, 64)" in out  # 5 s kit clips at 24 kHz -> 374 frames, 3 hidden states
    assert f"tiny model: {tmp_path / 'm'}" in out  # where the model is, for `mert extract --model`
    # the MARBLE-style table: the model next to its baselines, through the same probe
    assert "| task | metric | pretrained | random-init | mfcc | chroma |" in out and "| kit_key | MIREX key score |" in out
    assert list((tmp_path / "runs" / "mert" / "eval").glob("demo-*/results.md"))


def test_demo_fallbacks(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MUSIC_DATA_DIR", str(tmp_path / "no-kit"))
    monkeypatch.setenv("MUSIC_RUNS_DIR", str(tmp_path / "no-runs"))
    assert cli_main(["demo", "--num-clips", "2", "--train-minutes", "0"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM weights" in out and "synthesized" in out and "per-layer summary" in out
    assert cli_main(["demo", "--checkpoint", str(tmp_path / "nothing")]) == 2


def test_find_model_folder(model, tmp_path):
    from mert.cli import find_model_folder

    assert find_model_folder(tmp_path) is None
    model.save_pretrained(tmp_path / "run" / "checkpoint-50")
    model.save_pretrained(tmp_path / "run" / "checkpoint-100")
    (tmp_path / "run" / "checkpoint-200").mkdir()  # incomplete: skipped
    assert find_model_folder(tmp_path / "run") == tmp_path / "run" / "checkpoint-100"
    model.save_pretrained(tmp_path / "run" / "encoder")  # what `mert train` exports
    assert find_model_folder(tmp_path / "run") == tmp_path / "run" / "encoder"


def test_demo_finds_the_tiny_training_run(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MUSIC_DATA_DIR", str(tmp_path / "no-kit"))
    monkeypatch.setenv("MUSIC_RUNS_DIR", str(tmp_path / "runs"))
    from mert.train import tiny_run_dirs

    # a run of an older tiny config (another hash) is ignored: its numbers are not what the current code produces
    model.save_pretrained(tmp_path / "runs" / "mert" / "tiny-0123abcd" / "encoder")
    assert cli_main(["demo", "--num-clips", "2", "--train-minutes", "0"]) == 0
    out = capsys.readouterr().out
    assert "ignoring 1 tiny run(s) of an older tiny config" in out and "RANDOM weights" in out
    current = tiny_run_dirs()
    assert len(set(current)) == 2 and all(d.parent == tmp_path / "runs" / "mert" and d.name.startswith("tiny-") for d in current)
    model.save_pretrained(current[0] / "encoder")  # what `mert train --config configs/tiny.yaml` exports
    assert cli_main(["demo", "--num-clips", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{current[0].name}/encoder" in out and "RANDOM" not in out and "ignoring" not in out
