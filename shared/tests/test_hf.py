"""Trainer callbacks: log lines + metrics rows, preemption saves and stops, last complete checkpoint."""

import json
import logging
import os
import signal

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import Trainer, TrainingArguments  # noqa: E402

from musiccore.hf import LineLogCallback, PreemptionCallback, last_checkpoint  # noqa: E402


class TinyRegression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)

    def forward(self, x, y):
        loss = torch.nn.functional.mse_loss(self.lin(x).squeeze(-1), y)
        return {"loss": loss}


class Data(torch.utils.data.Dataset):
    def __init__(self, n=64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def _trainer(tmp_path, callbacks, max_steps=8):
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=8, logging_steps=2, save_steps=4,
        learning_rate=0.05, report_to=[], use_cpu=True, disable_tqdm=True,
    )
    return Trainer(model=TinyRegression(), args=args, train_dataset=Data(), callbacks=callbacks)


def test_line_log_callback_writes_lines_and_rows(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="musiccore.hf")
    _trainer(tmp_path, [LineLogCallback(items_per_step=8.0, unit="examples")]).train()
    lines = [r.getMessage() for r in caplog.records if r.name == "musiccore.hf"]
    assert lines and lines[0].startswith("step 2/8 | loss ")
    assert " lr " in lines[0] and "examples/s" in lines[0]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    loss_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in loss_rows] == [2, 4, 6, 8]
    assert loss_rows[-1]["loss"] < loss_rows[0]["loss"]


def test_preemption_saves_and_stops(tmp_path):
    pre = PreemptionCallback()

    class KillAt3(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGUSR1)

    trainer = _trainer(tmp_path, [pre, KillAt3()], max_steps=50)
    trainer.train()
    assert pre.preempted
    assert trainer.state.global_step == 3
    ckpt = last_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.endswith("checkpoint-3")
    assert signal.getsignal(signal.SIGUSR1) is not pre._handler  # handlers restored

    # resume continues from step 3 and finishes
    t2 = _trainer(tmp_path, [], max_steps=6)
    t2.train(resume_from_checkpoint=ckpt)
    assert t2.state.global_step == 6


def test_last_checkpoint_skips_incomplete(tmp_path):
    assert last_checkpoint(tmp_path / "none") is None
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-10").mkdir()  # interrupted save: no trainer_state.json
    assert last_checkpoint(tmp_path).endswith("checkpoint-4")


def test_last_checkpoint_skips_a_truncated_trainer_state(tmp_path, caplog):
    """A save killed while writing trainer_state.json (empty, cut JSON, not an object) is not resumed from."""
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4}')
    for step, text in ((8, ""), (12, '{"global_step": 1'), (16, "[]")):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(text)
    with caplog.at_level("WARNING"):
        assert last_checkpoint(tmp_path).endswith("checkpoint-4")
    assert "checkpoint-16: trainer_state.json is not a JSON object" in caplog.text
    assert "checkpoint-12: unreadable trainer_state.json" in caplog.text


def test_rank_info_and_precision(monkeypatch):
    from musiccore.hf import rank_info, resolve_precision

    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    assert rank_info() == (0, 0, 1)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert rank_info() == (5, 1, 8)
    monkeypatch.setenv("RANK", "3")  # torchrun's variables win over Slurm's
    assert rank_info()[0] == 3
    assert resolve_precision("fp16") == "fp16"
    import torch

    assert resolve_precision("auto") == ("fp32" if not torch.cuda.is_available() else resolve_precision("auto"))
