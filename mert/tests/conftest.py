"""Fixtures of the pretraining tests: small synthetic music-like clips (note sequences with harmonics)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

SR = 24000


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "fairseq: needs the optional fairseq extra (fairseq-fixed); CI runs them with `make test-fairseq`")


def synth_clip(rng: np.random.Generator, seconds: float, sr: int = SR) -> np.ndarray:
    """A melody of harmonic notes (random MIDI pitches 45-80, 0.2-0.5 s each) plus a little noise, peak 0.5."""
    n = int(seconds * sr)
    out = np.zeros(n, np.float32)
    pos = 0
    while pos < n:
        dur = int(rng.uniform(0.2, 0.5) * sr)
        f0 = 440.0 * 2 ** ((rng.integers(45, 81) - 69) / 12)
        t = np.arange(min(dur, n - pos)) / sr
        env = np.minimum(1.0, t * 50) * np.exp(-3 * t)
        note = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in (1, 2, 3, 4) if f0 * h < sr / 2)
        out[pos : pos + len(t)] += (env * note).astype(np.float32)
        pos += dur
    out += 0.01 * rng.standard_normal(n).astype(np.float32)
    return (0.5 * out / (np.abs(out).max() + 1e-9)).astype(np.float32)


def write_clips(folder: Path, count: int, seconds: float, seed: int, sr: int = SR) -> list[dict]:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        p = folder / f"clip{i:03d}.wav"
        wav = synth_clip(rng, seconds, sr)
        sf.write(p, wav, sr)
        rows.append({"path": str(p), "duration": len(wav) / sr, "sample_rate": sr, "frames": len(wav)})
    return rows


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> dict:
    """{'train': manifest path, 'valid': manifest path, 'dir': folder}: 12 + 4 clips of 3 s at 24 kHz."""
    root = tmp_path_factory.mktemp("mert_synth")
    out = {"dir": root}
    for split, count, seed in (("train", 12, 0), ("valid", 4, 1)):
        rows = write_clips(root / split, count, 3.0, seed)
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[split] = root / f"{split}.jsonl"
    return out


def tiny_overrides(synth: dict, run_dir: Path, cache: Path | None = None, **extra) -> list[str]:
    """Overrides that turn configs/tiny.yaml into a seconds-long run on the synthetic clips."""
    ov = {
        "data.train_manifest": str(synth["train"]),
        "data.valid_manifest": str(synth["valid"]),
        "data.max_sample_size": 24000,
        "data.min_sample_size": 16000,
        "data.max_tokens": 96000,
        "data.valid_batches": 1,
        "teacher.kmeans_clusters": "[16,8]",
        "teacher.kmeans_fit_files": 12,
        "loss.noise_len_min": 4000,
        "loss.noise_len_max": 8000,
        "trainer.run_dir": str(run_dir),
        "trainer.max_steps": 6,
        "trainer.save_steps": 3,
        "trainer.log_steps": 1,
        "trainer.eval_steps": 3,
        "trainer.tensorboard": "false",
    }
    if cache is not None:
        ov["data.label_dir"] = str(cache)
        ov["teacher.kmeans_path"] = str(cache / "kmeans.npz")
    ov.update(extra)
    return [f"{k}={v}" for k, v in ov.items()]


@pytest.fixture(scope="session")
def tiny_cache(synth_data, tmp_path_factory) -> Path:
    """Label cache (k-means fitted once) shared by the training tests; pass it as ``cache`` to tiny_overrides."""
    from mert import prepare
    from mert.train import CONFIG_DIR, load_train_config

    cache = tmp_path_factory.mktemp("mert_labels")
    cfg = load_train_config(CONFIG_DIR / "tiny.yaml", tiny_overrides(synth_data, cache / "unused", cache))
    for split in ("train", "valid"):
        prepare.ensure_labels(cfg, prepare.load_rows(cfg.data, split))
    return cache
