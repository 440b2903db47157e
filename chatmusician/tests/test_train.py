"""Training end to end on the tiny config: run folder, checkpoints, resume after a kill, DeepSpeed ZeRO-2/3, Slurm."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CONFIGS, PROJECT, SMALL, subprocess_env


def _train_cmd(corpus_dir: Path, run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "chatmusician.cli", "train", "--config", str(CONFIGS / "tiny.yaml"),
            f"data.out_dir={corpus_dir / 'data'}", f"run.dir={run_dir}", *SMALL, "trainer.log_every=1",
            "trainer.micro_batch=2", *overrides]


def test_train_smoke_and_chat(cfg_on_corpus, tmp_path, capsys):
    from chatmusician.cli import main
    from chatmusician.train import train

    cfg = cfg_on_corpus("trainer.max_steps=3", "trainer.save_steps=2", "trainer.log_every=1",        "trainer.micro_batch=2")
    s = train(cfg)
    run = Path(s["run_dir"])
    assert s["global_step"] == 3 and s["final"] and s["resumed_from"] is None
    for f in ("config.yaml", "git.txt", "env.txt", "summary.json", "metrics.jsonl", "logs/train.log.rank0",
              "final/model.safetensors", "final/tokenizer.json", "checkpoints/checkpoint-2/trainer_state.json"):
        assert (run / f).exists(), f
    assert any((run / "tb").rglob("events.out.tfevents*"))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert all(r["loss"] == r["loss"] and r["loss"] > 0 for r in rows if "loss" in r)
    assert "step 3/3" in (run / "logs" / "train.log.rank0").read_text()
    # chat on the trained folder: the reply is printed after the template
    assert main(["chat", "--model", str(run / "final"), "--max-new-tokens", "8", "--out", str(tmp_path / "chat"),
                 "--no-audio", "Key: G major"]) == 0
    out = capsys.readouterr().out
    assert "Human: Key: G major\nAssistant: " in out
    # eval over 3 metadata prompts, per-prompt rows written
    gens = tmp_path / "gens.jsonl"
    args = ["eval", "--config", str(CONFIGS / "tiny.yaml"), "--model", str(run / "final"), "--n", "3",
            "--max-new-tokens", "16", "--out", str(gens), *[o for o in cfg_overrides(cfg)]]
    assert main(args) == 0
    rows = [json.loads(x) for x in gens.read_text().splitlines()]
    assert len(rows) == 3 and all({"parsed", "valid", "key_match", "meter_match", "reply"} <= set(r) for r in rows)
    assert '"parse_rate"' in capsys.readouterr().out


def cfg_overrides(cfg) -> list[str]:
    return [f"data.out_dir={cfg.data.out_dir}", *SMALL]


def test_pretrain_stage(cfg_on_corpus):
    from chatmusician.train import train

    s = train(cfg_on_corpus("data.stage=pretrain", "trainer.max_steps=2", "trainer.micro_batch=2"))
    assert s["global_step"] == 2 and s["train_loss"] > 0


def test_lora_train_and_export(cfg_on_corpus, tmp_path):
    from chatmusician.export import export_merged
    from chatmusician.train import train

    cfg = cfg_on_corpus("trainer.max_steps=2", "lora.enabled=true", "lora.r=4", "trainer.micro_batch=2")
    s = train(cfg)
    final = Path(s["final"])
    assert (final / "adapter_config.json").exists() and (final / "adapter_model.safetensors").exists()
    out = export_merged(final, tmp_path / "merged")
    assert (out / "model.safetensors").exists()


def test_resume_after_kill(corpus_dir, tmp_path):
    run = tmp_path / "run"
    # 40 steps: the kill lands right after checkpoint-2, far from the end (with 6 steps a fast machine finished the
    # whole run between two polls and the kill hit a process that had already written its summary)
    cmd = _train_cmd(corpus_dir, run, "trainer.max_steps=40", "trainer.save_steps=2", "trainer.save_total_limit=50")
    p = subprocess.Popen(cmd, cwd=PROJECT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    t0 = time.monotonic()
    while not ckpt.exists():
        assert p.poll() is None, "training exited before its first checkpoint"
        assert time.monotonic() - t0 < 400, "no checkpoint within 400 s"
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)  # a hard kill: no chance to save anything else
    p.wait()
    assert not (run / "summary.json").exists()
    r = subprocess.run(cmd, cwd=PROJECT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["global_step"] == 40
    assert s["resumed_from"] and 2 <= int(s["resumed_from"].rsplit("-", 1)[1]) < 40
    state = json.loads((run / "checkpoints" / "checkpoint-40" / "trainer_state.json").read_text())
    assert state["global_step"] == 40


def _run_until_sigterm(cmd: list[str], run: Path, min_new_rows: int) -> dict:
    """Start training, wait for `min_new_rows` new metrics rows, send SIGTERM, return the summary it wrote."""
    metrics = run / "metrics.jsonl"
    before = metrics.read_text().count("\n") if metrics.exists() else 0
    p = subprocess.Popen(cmd, cwd=PROJECT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (metrics.exists() and metrics.read_text().count("\n") >= before + min_new_rows):
        assert p.poll() is None, "training exited early"
        assert time.monotonic() - t0 < 400, "training did not progress"
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    return json.loads((run / "summary.json").read_text())


def test_sigterm_saves_and_relaunch_resumes(corpus_dir, tmp_path):
    """SIGTERM (what torchrun forwards on preemption) -> checkpoint at the step boundary and a clean exit;
    relaunching the same command resumes from that checkpoint."""
    run = tmp_path / "run"
    cmd = _train_cmd(corpus_dir, run, "trainer.max_steps=5000", "trainer.save_steps=100000")
    s1 = _run_until_sigterm(cmd, run, 3)
    assert s1["preempted"] and "final" not in s1 and s1["resumed_from"] is None and 3 <= s1["global_step"] < 5000
    assert (run / "checkpoints" / f"checkpoint-{s1['global_step']}" / "trainer_state.json").exists()
    s2 = _run_until_sigterm(cmd, run, 2)
    assert s2["resumed_from"].endswith(f"checkpoint-{s1['global_step']}")
    assert s2["preempted"] and s2["global_step"] > s1["global_step"]


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_two_steps(corpus_dir, tmp_path, stage):
    """ZeRO-2 / ZeRO-3 (with CPU offload of the optimizer) on CPU over gloo, one process.

    The first run JIT-compiles DeepSpeed's shm_comm op into <MUSIC_CACHE_DIR>/torch_extensions (34-113 s on 2 cores),
    later runs reuse it."""
    pytest.importorskip("deepspeed")
    run = tmp_path / "run"
    extra = ["deepspeed.offload_optimizer=cpu"] if stage == 3 else []
    cmd = _train_cmd(corpus_dir, run, "trainer.max_steps=2", "deepspeed.enabled=true", f"deepspeed.stage={stage}", *extra)
    env = subprocess_env(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                         MASTER_PORT=str(29500 + os.getpid() % 1000 + stage))
    r = subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["global_step"] == 2
    ds = json.loads((run / "deepspeed.json").read_text())
    assert ds["zero_optimization"]["stage"] == stage
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(losses) == 2 and all(v > 0 for v in losses)
    assert (run / "final").exists()


@pytest.mark.slurm
def test_slurm_tiny(corpus_dir, tmp_path):
    """Submit the tiny config through the shared sbatch template and check that the run trained."""
    from musiccore import slurm

    run = tmp_path / "run"
    overrides = [f"data.out_dir={corpus_dir / 'data'}", f"run.dir={run}", *SMALL, "trainer.max_steps=3", "trainer.micro_batch=2"]
    spec = slurm.train_job("chatmusician", "configs/tiny.yaml", overrides, project_dir=PROJECT,
                           log_dir=str(tmp_path / "slurm"), time="00:20:00")
    job = slurm.submit(spec)
    state = slurm.wait(job, timeout=900)
    logs = "".join(p.read_text() for p in (tmp_path / "slurm").glob("*.out"))
    assert state == "COMPLETED", logs[-3000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["global_step"] == 3 and s["final"]


@pytest.mark.slurm
def test_slurm_preempt_requeue_resume(corpus_dir, tmp_path):
    """USR1 (Slurm's warning signal) -> checkpoint and stop -> requeue -> the same run resumes and finishes."""
    from musiccore import slurm

    run = tmp_path / "run"
    overrides = [f"data.out_dir={corpus_dir / 'data'}", f"run.dir={run}", *SMALL, "trainer.max_steps=200",
                 "trainer.save_steps=1000", "trainer.micro_batch=2", "trainer.log_every=1"]
    spec = slurm.train_job("chatmusician", "configs/tiny.yaml", overrides, project_dir=PROJECT,
                           log_dir=str(tmp_path / "slurm"), time="00:20:00")
    job = slurm.submit(spec)
    metrics = run / "metrics.jsonl"
    t0 = time.monotonic()
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):  # training is under way
        assert time.monotonic() - t0 < 600, "job did not start training"
        time.sleep(0.5)
    slurm.signal_job(job, "USR1")
    state = slurm.wait(job, timeout=900)
    logs = "".join(p.read_text() for p in (tmp_path / "slurm").glob("*.out"))
    assert state == "COMPLETED", logs[-3000:]
    assert "USR1: checkpoint and requeue" in logs
    s = json.loads((run / "summary.json").read_text())
    assert s["global_step"] == 200 and s["resumed_from"], s
    first_ckpt = int(s["resumed_from"].rsplit("-", 1)[1])
    assert 3 <= first_ckpt < 200  # the checkpoint written on USR1, mid-run
