"""Fault tolerance: what only a resume can show.

1. SIGKILL after a checkpoint, relaunch: the relaunch starts at the checkpoint's step with the checkpoint's AdamW
   moments and scheduler state, trains only the steps after it, and its losses equal an uninterrupted run's.
2. Slurm requeue: the warning signal (SIGUSR1, what ``--signal=B:USR1@120`` delivers) makes the run save a checkpoint
   at the end of the current step and exit without final artifacts; the requeued launch (the same command) resumes
   there in the same way.

A restart from scratch would reproduce the seeded losses too (every random draw is a function of the seed, epoch and
batch), so the loss comparison alone proves nothing; the first-step / optimizer / scheduler / logged-steps checks do.
All runs train the tiny model on the synthetic clips for 8 updates (3 batches per epoch, so the kill lands in the
middle of epoch 1 and the resumed run must restore the epoch's batch order, crops, masks and noise).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from conftest import tiny_overrides
from mert.train import CONFIG_DIR

STEPS, SAVE = 8, 4


def _overrides(synth, cache, run_dir):
    return tiny_overrides(synth, run_dir, cache, **{
        "trainer.max_steps": STEPS, "trainer.save_steps": SAVE, "trainer.eval_steps": 0, "trainer.plot": "false",
        "model.hidden_dropout": 0.1, "model.layerdrop": 0.1,  # exercise the restored RNG state as well
    })


def _cmd(synth, cache, run_dir):
    return [sys.executable, "-m", "mert.train", "--config", str(CONFIG_DIR / "tiny.yaml"),
            *_overrides(synth, cache, run_dir)]


def _env(tmp):
    return dict(os.environ, MUSIC_CACHE_DIR=str(tmp / "cache"), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def _loss_rows(run_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _losses(run_dir: Path) -> dict[int, float]:
    # a resumed run re-logs the steps after its checkpoint: keep the last
    return {r["step"]: r["loss"] for r in _loss_rows(run_dir)}


class ResumeProbe(TrainerCallback):
    """Trainer callback: the state the Trainer starts from (after it loaded a checkpoint) and the steps it trains."""

    def __init__(self):
        self.begin_step = None
        self.optimizer = None
        self.scheduler = None
        self.steps: list[int] = []

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kw):
        import copy

        self.begin_step = state.global_step
        self.optimizer = copy.deepcopy(optimizer.state_dict())
        self.scheduler = copy.deepcopy(lr_scheduler.state_dict())

    def on_step_end(self, args, state, control, **kw):
        self.steps.append(state.global_step)


def _relaunch_in_process(overrides, monkeypatch, tmp_path, extra_callback=None) -> ResumeProbe:
    """``mert train --config tiny.yaml <overrides>`` in this process, with a :class:`ResumeProbe` attached."""
    from mert import train

    monkeypatch.setenv("MUSIC_CACHE_DIR", str(tmp_path / "cache"))
    probe = ResumeProbe()
    real = train.build_trainer

    def build_with_probe(cfg):
        trainer, run_dir, preempt = real(cfg)
        trainer.add_callback(probe)
        if extra_callback is not None:
            trainer.add_callback(extra_callback)
        return trainer, run_dir, preempt

    monkeypatch.setattr(train, "build_trainer", build_with_probe)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same kernels as the OMP_NUM_THREADS=1 reference process
    try:
        assert train.main(["--config", str(CONFIG_DIR / "tiny.yaml"), *overrides]) == 0
    finally:
        torch.set_num_threads(threads)
    return probe


def assert_state_is_the_checkpoints(probe: ResumeProbe, ckpt: Path):
    """AdamW moments and step counts, and the LR scheduler, as the Trainer starts == what the checkpoint saved."""
    saved_opt = torch.load(ckpt / "optimizer.pt", weights_only=True)
    saved_sched = torch.load(ckpt / "scheduler.pt", weights_only=True)
    live = probe.optimizer["state"]
    assert saved_opt["state"] and set(live) == set(saved_opt["state"]), "optimizer state not restored"
    for idx, saved in saved_opt["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(live[idx][key]), torch.as_tensor(saved[key])), (idx, key)
    assert int(torch.as_tensor(next(iter(live.values()))["step"])) == probe.begin_step  # moments of n updates
    assert probe.scheduler["last_epoch"] == saved_sched["last_epoch"] == probe.begin_step
    assert probe.scheduler["_last_lr"] == saved_sched["_last_lr"]


@pytest.fixture(scope="module")
def reference(synth_data, tiny_cache, tmp_path_factory):
    """An uninterrupted run in a subprocess, started once for the module; ``.losses()`` waits for it."""
    tmp = tmp_path_factory.mktemp("ref")
    proc = subprocess.Popen(_cmd(synth_data, tiny_cache, tmp / "ref"), env=_env(tmp), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)

    class Ref:
        def losses(self) -> dict[int, float]:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err.decode()[-3000:]
            return _losses(tmp / "ref")

    yield Ref()
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def assert_same_losses(a: dict[int, float], b: dict[int, float]):
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-4 * max(1.0, abs(a[step])), (step, a[step], b[step])
    assert len(set(a.values())) > 1  # the losses move, so the comparison means something


# Two training processes plus an in-process relaunch: ~45 s on the shared 2-core machine (3 min when heavily loaded).
def test_sigkill_then_relaunch_resumes_from_the_checkpoint(synth_data, tiny_cache, reference, tmp_path, monkeypatch):
    kill_dir = tmp_path / "killed"
    victim = subprocess.Popen(_cmd(synth_data, tiny_cache, kill_dir), env=_env(tmp_path), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    ckpt_state = kill_dir / f"checkpoint-{SAVE}" / "trainer_state.json"
    while not ckpt_state.exists():
        assert victim.poll() is None, "training ended before its first checkpoint"
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    assert victim.returncode == -signal.SIGKILL
    # atomic checkpoints: every checkpoint folder left behind is complete
    for ckpt in kill_dir.glob("checkpoint-*"):
        assert (ckpt / "trainer_state.json").is_file() and (ckpt / "model.safetensors").is_file(), ckpt
    assert not (kill_dir / f"checkpoint-{STEPS}").exists()
    logged_before = len(_loss_rows(kill_dir))
    probe = _relaunch_in_process(_overrides(synth_data, tiny_cache, kill_dir), monkeypatch, tmp_path)
    # what only a resume shows: it starts at the checkpoint with its optimizer and scheduler, trains the rest only
    assert probe.begin_step == SAVE
    assert probe.steps == list(range(SAVE + 1, STEPS + 1))
    assert [r["step"] for r in _loss_rows(kill_dir)[logged_before:]] == list(range(SAVE + 1, STEPS + 1))
    assert_state_is_the_checkpoints(probe, kill_dir / f"checkpoint-{SAVE}")
    assert "resuming from" in (kill_dir / "logs" / "train.log.rank0").read_text()
    assert_same_losses(reference.losses(), _losses(kill_dir))


def test_requeue_signal_saves_then_the_relaunch_resumes(synth_data, tiny_cache, reference, tmp_path, monkeypatch):
    """SIGUSR1 at step 3 (not a save step): checkpoint-3 is written, no encoder/ (the job is only paused); the
    requeued launch starts at step 3 with checkpoint-3's optimizer/scheduler and trains steps 4..8 only."""
    run_dir = tmp_path / "requeued"
    ov = _overrides(synth_data, tiny_cache, run_dir)

    class SlurmWarning(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 2:  # during update 3: the handler flags it, the save comes at its end
                os.kill(os.getpid(), signal.SIGUSR1)

    first = _relaunch_in_process(ov, monkeypatch, tmp_path, extra_callback=SlurmWarning())
    assert first.begin_step == 0 and first.steps == [1, 2, 3]
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-3"]
    assert not (run_dir / "encoder").exists()  # preempted: no final artifacts until the run really ends
    assert "received SIGUSR1" in (run_dir / "logs" / "train.log.rank0").read_text()
    monkeypatch.undo()
    second = _relaunch_in_process(ov, monkeypatch, tmp_path)
    assert second.begin_step == 3 and second.steps == [4, 5, 6, 7, 8]
    assert_state_is_the_checkpoints(second, run_dir / "checkpoint-3")
    assert (run_dir / "encoder" / "config.json").is_file()
    assert [r["step"] for r in _loss_rows(run_dir)] == list(range(1, STEPS + 1))  # each step logged once
    assert_same_losses(reference.losses(), _losses(run_dir))
