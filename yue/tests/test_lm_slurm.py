"""Stage-1 LM training through the shared sbatch template on a (local) Slurm: a run, and USR1 -> requeue -> resume.

Run with ``make -C yue test-slurm`` after ``bash shared/scripts/slurm-local.sh start``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


def _overrides(prepared_dir, run, *extra):
    return [f"data.prepared={prepared_dir}", f"run.dir={run}", "data.block_size=128", "trainer.micro_batch=1",
            "trainer.cpu_threads=1", "eval.max_blocks=2", *extra]  # fmt: skip


def _logs(folder: Path) -> str:
    return "".join(p.read_text() for p in folder.glob("*.out"))


@pytest.mark.slurm
def test_slurm_tiny_stage1(prepared_dir, tmp_path):
    from musiccore import slurm

    run = tmp_path / "run"
    spec = slurm.train_job("yue", "configs/tiny_stage1.yaml", _overrides(prepared_dir, run, "trainer.max_steps=3"),
                           project_dir=PROJECT, log_dir=str(tmp_path / "slurm"), time="00:20:00")  # fmt: skip
    job = slurm.submit(spec)
    state = slurm.wait(job, timeout=900)
    assert state == "COMPLETED", _logs(tmp_path / "slurm")[-3000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["global_step"] == 3 and s["final"] and (run / "eval.json").is_file()


@pytest.mark.slurm
def test_slurm_preempt_requeue_resume(prepared_dir, tmp_path):
    """USR1 (Slurm's warning signal) -> checkpoint and stop -> requeue -> the same run resumes and finishes."""
    from musiccore import slurm

    run = tmp_path / "run"
    ov = _overrides(prepared_dir, run, "trainer.max_steps=300", "trainer.save_steps=1000", "trainer.log_every=1")
    spec = slurm.train_job("yue", "configs/tiny_stage1.yaml", ov, project_dir=PROJECT,
                           log_dir=str(tmp_path / "slurm"), time="00:20:00")  # fmt: skip
    job = slurm.submit(spec)
    metrics = run / "metrics.jsonl"
    t0 = time.monotonic()
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):  # training is under way
        assert time.monotonic() - t0 < 600, "job did not start training: " + _logs(tmp_path / "slurm")[-2000:]
        time.sleep(0.5)
    slurm.signal_job(job, "USR1")
    state = slurm.wait(job, timeout=900)
    logs = _logs(tmp_path / "slurm")
    assert state == "COMPLETED", logs[-3000:]
    assert "USR1: checkpoint and requeue" in logs
    s = json.loads((run / "summary.json").read_text())
    n = int(s["resumed_from"].rsplit("-", 1)[1])
    assert s["global_step"] == 300 and 3 <= n < 300  # the checkpoint written on USR1, mid-run
    assert s["start_state"]["global_step"] == n and s["start_state"]["adam_step"] == float(n)
