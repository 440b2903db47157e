"""Training end to end on the tiny config: run folder, checkpoints, resume after a kill, DeepSpeed ZeRO-2/3, Slurm."""

from __future__ import annotations

import json
import os
import re
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


def _checkpoint_state(ckpt: Path) -> dict:
    """The optimizer/scheduler numbers of a saved checkpoint, read from its files independently of train.py:
    AdamW steps of every parameter, float64 sums of exp_avg / exp_avg_sq, the scheduler's step and learning rate."""
    import torch

    opt = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
    sched = torch.load(ckpt / "scheduler.pt", map_location="cpu", weights_only=True)
    states = list(opt["state"].values())
    return {"adam_steps": {float(s["step"]) for s in states},
            "exp_avg_sum": sum(float(s["exp_avg"].double().sum()) for s in states),
            "exp_avg_sq_sum": sum(float(s["exp_avg_sq"].double().sum()) for s in states),
            "lr_scheduler_step": sched["last_epoch"], "lr": sched["_last_lr"][0]}


def _assert_restored(start: dict, ckpt: Path) -> None:
    """The state the relaunch started from (summary's start_state, read after the Trainer loaded the checkpoint)
    equals the checkpoint's: a restart from scratch has AdamW step 0 and zero moments."""
    want = _checkpoint_state(ckpt)
    step = int(ckpt.name.rsplit("-", 1)[1])
    assert start["global_step"] == step
    assert want["adam_steps"] == {float(step)} and start["adam_step"] == step
    assert want["exp_avg_sq_sum"] > 0 and start["exp_avg_sq_sum"] == pytest.approx(want["exp_avg_sq_sum"], rel=1e-9)
    assert start["exp_avg_sum"] == pytest.approx(want["exp_avg_sum"], rel=1e-9, abs=1e-9)
    assert start["lr_scheduler_step"] == want["lr_scheduler_step"] == step
    assert start["lr"] == pytest.approx(want["lr"], rel=1e-12)


def _loss_steps(metrics: Path, skip_rows: int = 0) -> list[int]:
    """Steps of the per-step loss rows of metrics.jsonl after its first ``skip_rows`` lines."""
    rows = [json.loads(x) for x in metrics.read_text().splitlines()[skip_rows:]]
    return [r["step"] for r in rows if "loss" in r]


def _logged_steps(stderr: str, max_steps: int) -> list[int]:
    """Steps of the one-line-per-step log lines (``step N/M | loss ...``) a launch printed."""
    return [int(m) for m in re.findall(rf"step (\d+)/{max_steps} \| loss ", stderr)]


def test_train_smoke_and_chat(cfg_on_corpus, tmp_path, capsys):
    from chatmusician.cli import main
    from chatmusician.train import train

    cfg = cfg_on_corpus("trainer.max_steps=3", "trainer.save_steps=2", "trainer.log_every=1",        "trainer.micro_batch=2")
    s = train(cfg)
    run = Path(s["run_dir"])
    assert s["global_step"] == 3 and s["final"] and s["resumed_from"] is None and s["resumed_step"] == 0
    assert s["start_state"]["adam_step"] == 0 and s["zero"] is None
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


# LoRA adapters on a random base fit one batch more slowly than full fine-tuning: a smaller (still clear) fall
@pytest.mark.parametrize("mode, factor", [([], 0.5), (["lora.enabled=true", "lora.r=8", "lora.dropout=0"], 0.9),
                                          (["data.stage=pretrain"], 0.5)], ids=["full", "lora", "pretrain"])
def test_loss_falls_on_tiny_overfit_batch(cfg_on_corpus, monkeypatch, mode, factor):
    """train() on one packed row repeated (every step sees the same batch), full fine-tuning, LoRA and the
    pretraining stage: the loss must fall well below its first value. A trainer that never steps, or steps with a
    zero learning rate or frozen adapters, keeps it flat."""
    import datasets

    import chatmusician.train as tr

    real = tr.load_split

    def one_row(cfg, split):
        return datasets.Dataset.from_list([real(cfg, split)[0]] * 64)

    monkeypatch.setattr(tr, "load_split", one_row)
    s = tr.train(cfg_on_corpus("trainer.max_steps=12", "trainer.log_every=1", "trainer.micro_batch=2",
                               "optim.schedule=constant", "trainer.save_steps=1000", *mode))
    losses = [json.loads(x)["loss"] for x in (Path(s["run_dir"]) / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in x]
    assert len(losses) == 12 and all(v == v for v in losses)
    assert losses[-1] < factor * losses[0], losses
    assert s["global_step"] == 12


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
    from musiccore.hf import last_checkpoint

    ckpt = Path(last_checkpoint(run / "checkpoints"))
    n = int(ckpt.name.rsplit("-", 1)[1])
    assert 2 <= n < 40
    rows_before = (run / "metrics.jsonl").read_text().count("\n")
    r = subprocess.run(cmd, cwd=PROJECT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["global_step"] == 40 and s["resumed_from"] == str(ckpt) and s["resumed_step"] == n
    # only a resume shows these: the relaunch trained steps n+1..40 (a restart from scratch logs 1..40) ...
    assert _logged_steps(r.stderr, 40) == list(range(n + 1, 41))
    assert _loss_steps(run / "metrics.jsonl", rows_before) == list(range(n + 1, 41))
    # ... starting from the checkpoint's AdamW moments and scheduler step
    _assert_restored(s["start_state"], ckpt)
    state = json.loads((run / "checkpoints" / "checkpoint-40" / "trainer_state.json").read_text())
    assert state["global_step"] == 40


def _run_until_sigterm(cmd: list[str], run: Path, min_new_rows: int) -> tuple[dict, str]:
    """Start training, wait for `min_new_rows` new metrics rows, send SIGTERM; return the summary it wrote and its
    stderr."""
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
    return json.loads((run / "summary.json").read_text()), err


def test_sigterm_saves_and_relaunch_resumes(corpus_dir, tmp_path):
    """SIGTERM (what torchrun forwards on preemption) -> checkpoint at the step boundary and a clean exit;
    relaunching the same command resumes from that checkpoint."""
    run = tmp_path / "run"
    cmd = _train_cmd(corpus_dir, run, "trainer.max_steps=5000", "trainer.save_steps=100000")
    s1, err1 = _run_until_sigterm(cmd, run, 3)
    n = s1["global_step"]
    assert s1["preempted"] and "final" not in s1 and s1["resumed_from"] is None and 3 <= n < 5000
    assert s1["resumed_step"] == 0 and s1["start_state"]["adam_step"] == 0  # a fresh start: no AdamW state
    assert _logged_steps(err1, 5000) == list(range(1, n + 1))
    ckpt = run / "checkpoints" / f"checkpoint-{n}"
    assert (ckpt / "trainer_state.json").exists()
    want = _checkpoint_state(ckpt)  # read now: save_total_limit may prune it during the relaunch
    s2, err2 = _run_until_sigterm(cmd, run, 2)
    assert s2["resumed_from"] == str(ckpt) and s2["resumed_step"] == n
    assert s2["preempted"] and s2["global_step"] > n
    # the relaunch trained steps n+1.. only (per-step log lines and metrics rows: no step repeated across launches)
    assert _logged_steps(err2, 5000) == list(range(n + 1, s2["global_step"] + 1))
    assert _loss_steps(run / "metrics.jsonl") == list(range(1, s2["global_step"] + 1))
    st = s2["start_state"]
    assert st["adam_step"] == n and want["adam_steps"] == {float(n)} and st["lr_scheduler_step"] == n
    assert st["exp_avg_sq_sum"] == pytest.approx(want["exp_avg_sq_sum"], rel=1e-9) and want["exp_avg_sq_sum"] > 0
    assert st["exp_avg_sum"] == pytest.approx(want["exp_avg_sum"], rel=1e-9, abs=1e-9)
    assert st["lr"] == pytest.approx(want["lr"], rel=1e-12)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_two_steps(corpus_dir, tmp_path, stage):
    """ZeRO-2 / ZeRO-3 (with CPU offload of the optimizer) on CPU over gloo, one process.

    The first run JIT-compiles DeepSpeed's shm_comm op into <MUSIC_CACHE_DIR>/torch_extensions (34-113 s on 2 cores),
    later runs reuse it."""
    pytest.importorskip("deepspeed")
    run = tmp_path / "run"
    extra = ["deepspeed.offload_optimizer=cpu"] if stage == 3 else []
    cmd = _train_cmd(corpus_dir, run, "trainer.max_steps=2", "trainer.save_steps=2", "deepspeed.enabled=true",
                     f"deepspeed.stage={stage}", *extra)
    env = subprocess_env(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                         MASTER_PORT=str(29500 + os.getpid() % 1000 + stage))
    r = subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["global_step"] == 2
    ds = json.loads((run / "deepspeed.json").read_text())
    assert ds["zero_optimization"]["stage"] == stage
    # ZeRO engaged (not just a config file written): the engine ran at this stage, its optimizer is DeepSpeed's ZeRO
    # optimizer holding the fp32 partition (offloaded to CPU for stage 3), and the checkpoint holds ZeRO shards
    z = s["zero"]
    assert z is not None, "the Trainer did not wrap the model in a DeepSpeed engine"
    assert z["stage"] == stage and z["partitioned_fp32_numel"] > 0
    assert z["optimizer"] == {2: "DeepSpeedZeroOptimizer", 3: "DeepSpeedZeroOptimizer_Stage3"}[stage]
    assert z["offload_optimizer"] == (stage == 3)
    ckpt = run / "checkpoints" / "checkpoint-2"
    assert list(ckpt.rglob("*zero_pp_rank_0_*optim_states.pt")), "no ZeRO optimizer shard in the checkpoint"
    model_states = "zero_pp_rank_0_mp_rank_00_model_states.pt" if stage == 3 else "mp_rank_00_model_states.pt"
    assert list(ckpt.rglob(model_states)), f"no {model_states} in the checkpoint"
    assert not (ckpt / "optimizer.pt").exists()  # the plain torch optimizer file is not what was saved
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
    assert 3 <= first_ckpt < 200 and s["resumed_step"] == first_ckpt  # the checkpoint written on USR1, mid-run
    # the requeued job trained steps first_ckpt+1..200 only (a restart from scratch repeats 1..first_ckpt) ...
    assert _loss_steps(run / "metrics.jsonl") == list(range(1, 201))
    # ... from the checkpoint's optimizer and scheduler state (save_steps=1000: nothing pruned it)
    _assert_restored(s["start_state"], Path(s["resumed_from"]))
