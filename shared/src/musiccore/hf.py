"""transformers.Trainer plumbing shared by the three projects.

- :class:`LineLogCallback`: one plain line per logging step (reads well in a Slurm ``.out`` file) and a
  ``metrics.jsonl`` row per log, on the main process only.
- :class:`PreemptionCallback`: on SIGUSR1/SIGTERM (Slurm's warning signal, or torchrun forwarding a
  SIGTERM) finish the current step, save a checkpoint and stop, so the requeued job resumes.
- :func:`last_checkpoint`: the newest complete ``checkpoint-<step>`` folder, for ``resume_from_checkpoint``.
- :func:`rank_info`, :func:`resolve_precision`: the process's place in a torchrun/Slurm job, and ``auto`` precision.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from pathlib import Path

from transformers import TrainerCallback

from .runs import append_jsonl

log = logging.getLogger(__name__)


def _fmt(v: float) -> str:
    if isinstance(v, float) and (abs(v) < 1e-2 or abs(v) >= 1e4) and v != 0:
        return f"{v:.3e}"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


class LineLogCallback(TrainerCallback):
    """Log ``step N/M | loss .. | lr .. | grad_norm .. | <rate> <unit>/s`` at each Trainer log event.

    Args:
        items_per_step: how many ``unit`` one optimizer step consumes over all ranks (e.g. audio seconds or
            tokens); ``None`` uses samples = per-device batch x accumulation x world size.
        unit: name of the throughput unit in the log line.
        metrics_file: jsonl file for the rows (default ``<output_dir>/metrics.jsonl``).
    """

    def __init__(self, items_per_step: float | None = None, unit: str = "samples", metrics_file: str | Path | None = None):
        self.items_per_step = items_per_step
        self.unit = unit
        self.metrics_file = Path(metrics_file) if metrics_file else None
        self._last_step = 0
        self._last_time = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_step = state.global_step
        self._last_time = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.perf_counter()
        steps = state.global_step - self._last_step
        per_step = self.items_per_step
        if per_step is None:
            per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
        rate = steps * per_step / max(now - self._last_time, 1e-9) if steps > 0 else float("nan")
        self._last_step, self._last_time = state.global_step, now
        parts = [f"step {state.global_step}/{state.max_steps}"]
        for key, name in (("loss", "loss"), ("eval_loss", "eval_loss"), ("learning_rate", "lr"), ("grad_norm", "grad_norm")):
            if key in logs and logs[key] is not None:
                parts.append(f"{name} {_fmt(float(logs[key]))}")
        for key, val in logs.items():
            if key not in {"loss", "eval_loss", "learning_rate", "grad_norm", "epoch", "total_flos"} and isinstance(val, (int, float)):
                if not key.endswith(("_runtime", "_per_second")):
                    parts.append(f"{key} {_fmt(float(val))}")
        if not math.isnan(rate):
            parts.append(f"{rate:.1f} {self.unit}/s")
        log.info(" | ".join(parts))
        row = {"step": state.global_step, "time": time.time(), **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
        if not math.isnan(rate):
            row[f"{self.unit}_per_s"] = rate
        append_jsonl(self.metrics_file or Path(args.output_dir) / "metrics.jsonl", row)


class PreemptionCallback(TrainerCallback):
    """Save and stop at the end of the current step after SIGUSR1 or SIGTERM.

    Slurm sends the job's warning signal (``--signal=B:USR1@120``) to the batch script, which forwards a
    SIGTERM through ``srun`` and ``torchrun`` to every rank; each rank sets a flag here, the Trainer saves a
    checkpoint at the step boundary (all ranks together, so ZeRO/FSDP shards stay consistent) and returns.
    ``preempted`` tells the entry point to exit without writing final artifacts.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGUSR1, signal.SIGTERM)):
        self.preempted = False
        self._signals = signals
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame):
        if not self.preempted:
            log.warning("received %s: saving a checkpoint at the end of this step, then stopping", signal.Signals(signum).name)
        self.preempted = True

    def on_train_begin(self, args, state, control, **kwargs):
        for s in self._signals:
            try:
                self._previous[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread (e.g. a notebook worker): nothing to install
                pass

    def on_step_end(self, args, state, control, **kwargs):
        if self.preempted:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for s, h in self._previous.items():
            signal.signal(s, h)  # type: ignore[arg-type]
        self._previous.clear()


def last_checkpoint(output_dir: str | Path) -> str | None:
    """Newest ``checkpoint-<step>`` folder holding a readable trainer state; a half-written one is skipped.

    The Trainer writes ``trainer_state.json`` last, so a folder without it, or with one that is empty or not a JSON
    object (a save killed while writing it), is an interrupted save: skipped with a warning naming it.
    """
    import json

    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    ckpts = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    for ckpt in sorted(ckpts, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        state = ckpt / "trainer_state.json"
        try:
            ok = isinstance(json.loads(state.read_text(encoding="utf-8")), dict)
            why = "trainer_state.json is not a JSON object"
        except FileNotFoundError:
            ok, why = False, "no trainer_state.json"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            ok, why = False, f"unreadable trainer_state.json ({e})"
        if ok:
            return str(ckpt)
        log.warning("ignoring incomplete checkpoint %s: %s", ckpt, why)
    return None


def setup_logging(run_dir: str | Path | None = None, rank: int = 0, level: int = logging.INFO) -> None:
    """Plain ``time level name: message`` lines on stderr (rank 0) and in ``<run_dir>/logs/train.log.rank<r>``."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    root = logging.getLogger()
    root.setLevel(level)
    for h in list(root.handlers):
        if getattr(h, "_musiccore", False):
            root.removeHandler(h)
    if rank == 0:
        sh = logging.StreamHandler()
        sh.setFormatter(fmt)
        sh._musiccore = True  # type: ignore[attr-defined]
        root.addHandler(sh)
    if run_dir is not None:
        p = Path(run_dir) / "logs" / f"train.log.rank{rank}"
        p.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(p)
        fh.setFormatter(fmt)
        fh._musiccore = True  # type: ignore[attr-defined]
        root.addHandler(fh)


def rank_info() -> tuple[int, int, int]:
    """(global rank, local rank, world size) from torchrun's or Slurm's environment ((0, 0, 1) when alone)."""
    env = os.environ
    rank = int(env.get("RANK", env.get("SLURM_PROCID", 0)))
    local = int(env.get("LOCAL_RANK", env.get("SLURM_LOCALID", 0)))
    world = int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", 1)))
    return rank, local, world


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` on a GPU that supports it, ``fp16`` on an older GPU, ``fp32`` on a CPU; else unchanged."""
    if precision != "auto":
        return precision
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def optimizer_state_summary(optimizer, lr_scheduler, moments: bool = True) -> dict:
    """What a resume restores, in a few numbers: AdamW's step count (first parameter with state), the scheduler's
    step, and with ``moments`` the float64 sums of ``exp_avg``/``exp_avg_sq`` over every parameter and the current
    learning rate.

    Tests compute the same numbers from a checkpoint's ``optimizer.pt``/``scheduler.pt``: equal numbers at the start
    of a relaunch prove the optimizer and scheduler were restored (a fresh start has AdamW step 0 and zero moments)."""
    opt = getattr(optimizer, "optimizer", optimizer)  # accelerate / DeepSpeed wrap the torch optimizer
    states = [s for s in getattr(opt, "state", {}).values() if isinstance(s, dict) and "step" in s]
    out: dict = {"adam_step": float(states[0]["step"]) if states else 0.0,
                 "lr_scheduler_step": getattr(lr_scheduler, "last_epoch", None)}  # fmt: skip
    if moments:
        adam = [s for s in states if "exp_avg" in s]
        out["exp_avg_sum"] = float(sum(s["exp_avg"].double().sum() for s in adam)) if adam else 0.0
        out["exp_avg_sq_sum"] = float(sum(s["exp_avg_sq"].double().sum() for s in adam)) if adam else 0.0
        lrs = lr_scheduler.get_last_lr() if lr_scheduler is not None and hasattr(lr_scheduler, "get_last_lr") else None
        out["lr"] = float(lrs[0]) if lrs else None
    return out


class StartStateCallback(TrainerCallback):
    """Fills ``start_state`` at ``on_train_begin``, i.e. after the Trainer restored the checkpoint of
    ``train(resume_from_checkpoint=...)``: ``global_step`` and :func:`optimizer_state_summary`. What a run records
    here is what only a real resume can show (a restart from scratch starts at step 0 with empty AdamW state)."""

    def __init__(self, start_state: dict, moments: bool = True):
        self.start_state = start_state
        self.moments = moments

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        self.start_state.update(optimizer_state_summary(optimizer, lr_scheduler, self.moments),
                                global_step=int(state.global_step))  # fmt: skip
        log.info("training starts at step %d (AdamW step %d, scheduler step %s)", state.global_step,
                 self.start_state["adam_step"], self.start_state["lr_scheduler_step"])  # fmt: skip


def zero_info(trainer) -> dict | None:
    """Stage of the DeepSpeed engine, its optimizer class, the fp32 elements that optimizer holds in its partition and
    whether it offloads (None without DeepSpeed): evidence that ZeRO engaged, not just that a config was written."""
    eng = getattr(trainer, "model_wrapped", None)
    if eng is None or not hasattr(eng, "zero_optimization_stage"):
        return None
    opt = eng.optimizer
    flat = getattr(opt, "single_partition_of_fp32_groups", None) or getattr(opt, "fp32_partitioned_groups_flat", None)
    return {"stage": int(eng.zero_optimization_stage()), "optimizer": type(opt).__name__,
            "partitioned_fp32_numel": int(sum(t.numel() for t in flat)) if flat else 0,
            "offload_optimizer": bool(getattr(opt, "cpu_offload", False) or getattr(opt, "offload_optimizer", False))}


def deepspeed_setup(run_dir: str | Path, ds_config: dict, rank: int) -> dict:
    """Prepare a DeepSpeed run: returns ``ds_config`` for ``TrainingArguments(deepspeed=...)`` (every rank renders
    the same dict from the same config, so no rank waits for another's file); global rank 0 saves it as
    ``<run_dir>/deepspeed.json``, the run's record. DeepSpeed JIT-compiles its ops on first use (34-113 s on 2 cores),
    so they are compiled once into ``$MUSIC_CACHE_DIR/torch_extensions`` unless ``TORCH_EXTENSIONS_DIR`` is set."""
    from .runs import atomic_write_json, cache_dir

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_dir() / "torch_extensions"))
    if rank == 0:
        atomic_write_json(Path(run_dir) / "deepspeed.json", ds_config)
    return ds_config
