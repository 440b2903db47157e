"""Slurm: the tiny config trains through musiccore.slurm (sbatch -> srun -> torchrun -> mert.cli train), and the
label-preparation array script fills a sharded cache. Marked ``slurm``: needs a running Slurm (skipped otherwise)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_overrides
from mert.train import CONFIG_DIR

PROJECT_DIR = Path(__file__).resolve().parents[1]


@pytest.mark.slurm
def test_tiny_config_trains_under_slurm(synth_data, tiny_cache, tmp_path):
    from musiccore.slurm import submit, train_job, wait

    run_dir = tmp_path / "run"
    ov = tiny_overrides(synth_data, run_dir, tiny_cache, **{"trainer.max_steps": 4, "trainer.save_steps": 2,
                                                            "trainer.eval_steps": 2, "trainer.plot": "false"})
    spec = train_job("mert", str(CONFIG_DIR / "tiny.yaml"), ov, project_dir=PROJECT_DIR, time="00:30:00",
                     log_dir=str(tmp_path / "slurm"), job_name="mert-tiny-test", python=sys.executable)
    job = submit(spec)
    state = wait(job, timeout=1200, poll=2.0)
    logs = "\n".join(p.read_text()[-3000:] for p in (tmp_path / "slurm").glob("*.out"))
    assert state == "COMPLETED", logs
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "eval_acc" in r] == [0, 2, 4]
    assert (run_dir / "checkpoint-4" / "model.safetensors").is_file()
    assert (run_dir / "encoder" / "config.json").is_file()


@pytest.mark.slurm
def test_label_array_job_fills_the_sharded_cache(synth_data, tmp_path):
    from mert import prepare
    from mert.data import LabelStore
    from mert.train import load_train_config

    cache = tmp_path / "labels"
    ov = tiny_overrides(synth_data, tmp_path / "run", cache)
    cfg = load_train_config(CONFIG_DIR / "tiny.yaml", ov)
    prepare.fit_kmeans(cfg, out=cfg.teacher.kmeans_path)  # the k-means step runs once, before the array
    env = dict(os.environ, MERT_PYTHON=sys.executable)
    out = subprocess.run(["sbatch", "--wait", "--parsable", "--array=0-2", "--cpus-per-task=1", f"--output={tmp_path}/lab-%a.out",
                          str(PROJECT_DIR / "slurm" / "prepare_labels.sbatch"), str(CONFIG_DIR / "tiny.yaml"), *ov],
                         cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=1200)
    logs = "\n".join(p.read_text()[-2000:] for p in tmp_path.glob("lab-*.out"))
    assert out.returncode == 0, out.stderr + logs
    rows = prepare.load_rows(cfg.data, "train")
    store = LabelStore(prepare.label_dir_for(cfg, rows), rows)
    assert store.meta["num_shards"] == 3 and all(store.has(i) for i in range(len(rows)))


@pytest.mark.slurm
def test_warning_signal_requeues_and_the_job_resumes(synth_data, tiny_cache, tmp_path):
    """Slurm's warning signal (USR1 to the batch script) mid-run: the ranks save at the end of the step, the job
    requeues itself, and the requeued job resumes there: every update is logged exactly once (a restart from scratch
    would log steps 1.. again), the second launch logs "resuming from checkpoint-n" with n the step of the signal."""
    import time

    from musiccore.slurm import signal_job, submit, train_job, wait

    run_dir = tmp_path / "run"
    steps = 40
    ov = tiny_overrides(synth_data, run_dir, tiny_cache, **{"trainer.max_steps": steps, "trainer.save_steps": 1000,
                                                            "trainer.eval_steps": 0, "trainer.plot": "false"})
    spec = train_job("mert", str(CONFIG_DIR / "tiny.yaml"), ov, project_dir=PROJECT_DIR, time="00:30:00",
                     log_dir=str(tmp_path / "slurm"), job_name="mert-requeue-test", python=sys.executable)
    job = submit(spec)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if metrics.exists() and sum('"loss"' in line for line in metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the job never logged two updates")
    signal_job(job, "USR1")
    state = wait(job, timeout=1200, poll=2.0)
    logs = "\n".join(p.read_text()[-3000:] for p in (tmp_path / "slurm").glob("*.out"))
    assert state == "COMPLETED", logs
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, steps + 1)), logs  # each update once
    saved = sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*"))
    assert len(saved) == 2 and saved[-1] == steps and 2 <= saved[0] < steps, saved  # the signal's save + the end
    train_log = (run_dir / "logs" / "train.log.rank0").read_text()
    assert train_log.count("resuming from") == 1 and f"checkpoint-{saved[0]}" in train_log
    assert (run_dir / "encoder" / "config.json").is_file()
