"""MERT pretraining with ``transformers.Trainer`` on torch.distributed (DDP; DeepSpeed/FSDP through the Trainer).

Launch (the same entry point in all three modes)::

    # laptop / CPU, tiny config on the data kit (labels are prepared automatically)
    make train                                   # = mert train --config configs/tiny.yaml
    mert train --config configs/tiny.yaml trainer.max_steps=50
    # one node, 8 GPUs
    torchrun --standalone --nproc_per_node=8 -m mert.cli train --config configs/mert_v1_95m.yaml
    # Slurm, N nodes (shared/slurm template: srun + torchrun rendezvous); requeue on preemption resumes
    make train-slurm CONFIG=configs/mert_v1_330m.yaml

Run folder (``trainer.run_dir`` or ``$MUSIC_RUNS_DIR/mert/<run_name>-<config hash>``): ``config.yaml``, ``git.txt``,
``env.txt``, ``logs/train.log.rank<r>``, ``metrics.jsonl``, ``tb/`` (TensorBoard), ``checkpoint-<step>/`` (written
atomically: staged in ``.staging/`` and renamed; each is also a loadable encoder folder for ``mert extract``:
``config.json`` + ``model.safetensors`` with HF key names, heads included and dropped on load), ``encoder/`` (final
export without heads) and ``curves.png``. Relaunching the same config resumes from the newest checkpoint, with the
data order (seeded per epoch and batch) and the RNG state restored.

One update (spec §3): crop the batch, compute the CQT of the clean audio, mix in-batch noise, draw span masks, run
:class:`mert.modeling_mert.MERTForPretraining`, and minimise ``CE_sum / M + 10 * features_pen + cqt_mse``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from musiccore.config import ConfigError
from musiccore.runs import prepare_run_dir

# The config tree lives in mert.config (shared with mert.prepare); re-exported here for ``from mert.train import ...``.
from .config import (CONFIG_DIR, DataConfig, LossConfig, OptimConfig, TeacherConfig, TrainConfig,  # noqa: F401
                     TrainerConfig, apply_init_from, codebook_sizes_of, load_train_config, resolve_run_dir, validate)

log = logging.getLogger("mert.train")


# =====================================================================================================================
# Label tables of continued pretraining
# =====================================================================================================================
def read_fairseq_dict(path: str | Path) -> list[str]:
    """Symbols of a fairseq ``dict.<label>.txt`` in file order (lines "symbol count"; flags like #fairseq:overwrite
    ignored). Their rows in the label table start at 4, after <s>, <pad>, </s>, <unk>."""
    path = Path(path)
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or not parts[1].lstrip("-").isdigit():
            raise ConfigError(f"{path}:{n}: expected 'symbol count', got {line!r}")
        out.append(parts[0])
    return out


FAIRSEQ_SPECIALS = 4


def label_lookup(cfg: TrainConfig) -> list[np.ndarray] | None:
    """Per codebook, the label-embedding row of each teacher code ([n_codes] int64), or None for row = code.

    See ``MERTConfig.label_dicts``: rows come from the run's fairseq dictionaries, or, for a table of exactly
    codes + 4 rows loaded with ``init_from``, from the released layout (row = 4 + code).
    """
    m = cfg.model
    sizes = codebook_sizes_of(cfg)
    if m.label_dicts:
        import re

        files = sorted(Path(m.label_dicts).glob("dict.*.txt"),
                       key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])
        if len(files) != len(sizes):
            raise ConfigError(f"model.label_dicts {m.label_dicts}: {len(files)} dict.*.txt files for {len(sizes)} "
                              "codebooks")
        luts = []
        for f, n in zip(files, sizes):
            row = {sym: FAIRSEQ_SPECIALS + i for i, sym in enumerate(read_fairseq_dict(f))}
            missing = [c for c in range(n) if str(c) not in row]
            if missing:
                raise ConfigError(f"{f}: codes {missing[:5]} of the teacher are not in the dictionary")
            lut = np.array([row[str(c)] for c in range(n)], dtype=np.int64)
            if lut.max() >= m.codebook_size:
                raise ConfigError(f"{f}: row {lut.max()} >= model.codebook_size {m.codebook_size}")
            luts.append(lut)
        return luts
    if m.init_from and all(m.codebook_size == n + FAIRSEQ_SPECIALS for n in sizes):
        log.warning("model.init_from: label table of %d rows = %s codes + 4 fairseq specials; mapping code c -> row "
                    "4 + c (the released dictionaries list the codes in order; set model.label_dicts to read them)",
                    m.codebook_size, sizes)
        return [np.arange(n, dtype=np.int64) + FAIRSEQ_SPECIALS for n in sizes]
    return None


# =====================================================================================================================
# Builders
# =====================================================================================================================
def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _wait_for(path: Path, timeout_s: float = 6 * 3600) -> None:
    """Non-zero ranks wait for rank 0 to finish a file (the run folder's config.yaml, before the process group)."""
    t0 = time.time()
    while not path.exists():
        if time.time() - t0 > timeout_s:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {path}")
        time.sleep(2.0)


def build_data(cfg: TrainConfig):
    """(train dataset, batch sampler, valid dataset or None, valid sampler or None, codebook sizes,
    majority label of each codebook over the training rows)."""
    from . import prepare
    from .data import LabelStore, PretrainDataset, SecondsBatchSampler, Subset, filter_rows

    def labels_for(rows):
        out = prepare.label_dir_for(cfg, rows)
        if not (out / "teacher.json").is_file():
            from .data import DataError

            if not cfg.data.auto_prepare:
                raise DataError(f"{out}: no label cache; run `mert prepare labels --config ...` (or data.auto_prepare=true)")
            world = int(os.environ.get("WORLD_SIZE", "1"))
            if world > 1:
                # never built at train time by a multi-process run: rank 0 alone would label the whole manifest
                # while every other rank of every node polls the shared file system (for hours at scale)
                raise DataError(f"{out}: no label cache, and data.auto_prepare builds none in a {world}-process run; "
                                "build it first with `mert prepare labels --config ...` (one Slurm array task per "
                                "shard: slurm/prepare_labels.sbatch)")  # fmt: skip
            prepare.ensure_labels(cfg, rows)
        return LabelStore(out, rows)

    d = cfg.data
    rows = prepare.load_rows(d, "train")
    store = labels_for(rows)
    full = PretrainDataset(rows, cfg.model.sample_rate, d.max_sample_size, store)
    keep = filter_rows(rows, cfg.model.sample_rate, d.min_sample_size, store)
    train = Subset(full, keep)
    sampler = SecondsBatchSampler(train.sizes(), d.max_tokens, d.max_batch_size or None,
                                  seed=cfg.trainer.seed)
    valid = vsampler = None
    if cfg.trainer.eval_steps > 0:
        try:
            vrows = prepare.load_rows(d, "valid")
        except (ValueError, OSError, RuntimeError) as e:  # DataError, a missing manifest, DataKitError
            log.warning("no validation data (%s): evaluation disabled", e)
        else:
            vstore = labels_for(vrows)
            vfull = PretrainDataset(vrows, cfg.model.sample_rate, d.max_sample_size, vstore)
            vkeep = filter_rows(vrows, cfg.model.sample_rate, d.min_sample_size, vstore)
            if vkeep:
                valid = Subset(vfull, vkeep)
                vsampler = SecondsBatchSampler(valid.sizes(), d.max_tokens,
                                               d.max_batch_size or None, seed=12345, shuffle=False)
    # Majority label from at most 2000 evenly spaced training rows: exact on small sets, cheap on 160k-hour ones.
    sample = keep[:: max(1, math.ceil(len(keep) / 2000))]
    majority = [int(c.argmax()) for c in store.class_counts(sample)]
    return train, sampler, valid, vsampler, store.codebook_sizes, majority


def build_model(cfg: TrainConfig):
    """The pretraining model: fresh (seeded), or with the weights of ``model.init_from`` (heads too when it has them;
    a released HF folder has none, so its heads start fresh and the run logs that)."""
    from .modeling_mert import HEAD_PREFIXES, MERTForPretraining, load_state_dict_file, normalize_state_dict

    torch.manual_seed(cfg.trainer.seed)
    model = MERTForPretraining(cfg.model)
    if cfg.model.init_from:
        from .extract import resolve_model_folder

        folder = resolve_model_folder(cfg.model.init_from)
        state = normalize_state_dict(load_state_dict_file(folder))
        missing, unexpected = model.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.startswith(HEAD_PREFIXES)] + list(unexpected)
        if bad:
            raise ConfigError(f"model.init_from {folder}: weights do not fit the model ({bad[:6]})")
        log.info("initialised from %s%s", folder,
                 f" (no pretraining heads there: {sorted(set(k.split('.')[0] for k in missing))} start fresh)"
                 if missing else " (encoder and pretraining heads)")
    if cfg.trainer.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def build_training_args(cfg: TrainConfig, run_dir: Path):
    from transformers import TrainingArguments

    t, o = cfg.trainer, cfg.optim
    cuda = torch.cuda.is_available()
    precision = t.precision if t.precision != "auto" else ("fp16" if cuda else "fp32")
    if precision in ("fp16", "bf16") and not cuda:
        log.warning("trainer.precision=%s without CUDA: training in fp32", precision)
        precision = "fp32"
    kw: dict[str, Any] = {}
    if not cuda:
        # accelerate only builds a multi-process CPU state (gloo) when told it runs on CPU
        kw["use_cpu"] = True
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            kw["ddp_backend"] = "gloo"
    if t.tensorboard:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tb"))  # transformers 5 reads the dir from here
    if t.deepspeed:
        kw["deepspeed"] = t.deepspeed
    if t.fsdp:
        kw["fsdp"] = t.fsdp
    return TrainingArguments(
        output_dir=str(run_dir),
        max_steps=t.max_steps,
        gradient_accumulation_steps=t.update_freq,
        per_device_train_batch_size=1,  # batches come from the seconds-based batch sampler
        learning_rate=o.lr,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_epsilon=o.adam_eps,
        weight_decay=o.weight_decay,
        optim="adamw_torch",
        lr_scheduler_type="polynomial",
        lr_scheduler_kwargs={"lr_end": o.lr_end, "power": o.power},
        warmup_steps=o.warmup_steps,
        max_grad_norm=o.clip_norm if o.clip_norm > 0 else 0.0,
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        logging_steps=t.log_steps,
        report_to=["tensorboard"] if t.tensorboard else [],
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if t.eval_steps > 0 else "no",
        eval_steps=t.eval_steps if t.eval_steps > 0 else None,
        eval_on_start=t.eval_steps > 0,  # the untrained model's validation scores start the curves
        seed=t.seed,
        data_seed=t.seed,
        dataloader_num_workers=cfg.data.num_workers,
        dataloader_pin_memory=cuda,
        remove_unused_columns=False,
        ddp_find_unused_parameters=True,  # layerdrop and a disabled CQT head leave parameters without gradients
        disable_tqdm=not sys.stderr.isatty(),
        **kw,
    )


# =====================================================================================================================
# Trainer
# =====================================================================================================================
def _trainer_class():
    from transformers import Trainer, TrainerCallback

    class TimeLimitCallback(TrainerCallback):
        """Save and stop after ``max_minutes`` of training (Slurm time slices, the CPU demo)."""

        def __init__(self, minutes: float):
            self.limit_s = minutes * 60.0
            self.t0 = time.time()

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = time.time()

        def on_step_end(self, args, state, control, **kwargs):
            if self.limit_s > 0 and time.time() - self.t0 > self.limit_s:
                log.info("time limit of %.1f min reached at step %d: saving and stopping", self.limit_s / 60, state.global_step)
                control.should_save = True
                control.should_training_stop = True
            return control

    class EpochCallback(TrainerCallback):
        """Tell the batch sampler its epoch (accelerate's skip wrapper does not always forward set_epoch)."""

        def __init__(self, sampler, steps_per_epoch: int):
            self.sampler, self.steps_per_epoch = sampler, max(steps_per_epoch, 1)

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.sampler.set_epoch(state.global_step // self.steps_per_epoch)

    class MERTPretrainer(Trainer):
        """Trainer with MERT's loss, seconds-based batches, clean-audio CQT targets and atomic checkpoints."""

        def __init__(self, *a, mert_cfg: TrainConfig, train_sampler, collater, valid_data=None, valid_sampler=None,
                     codebook_sizes=(), majority_labels=(), **kw):
            super().__init__(*a, **kw)
            self.mert_cfg = mert_cfg
            self.codebook_sizes = list(codebook_sizes) or [mert_cfg.model.codebook_size]
            # most frequent TRAINING label per codebook: the "majority class" baseline of the validation accuracy
            self.majority_labels = list(majority_labels)
            luts = label_lookup(mert_cfg)
            # [K, max codes] table; codebooks with fewer codes are padded with their last row (never indexed)
            self.label_lut = None if luts is None else torch.stack(
                [torch.from_numpy(np.pad(x, (0, max(map(len, luts)) - len(x)), mode="edge")) for x in luts])
            if self.label_lut is not None and self.majority_labels:
                self.majority_labels = [int(self.label_lut[j][c]) for j, c in enumerate(self.majority_labels)]
            self.train_sampler = train_sampler
            self.collater = collater
            self.valid_data, self.valid_sampler = valid_data, valid_sampler
            self._cqt = None
            self._staging: str | None = None
            self._acc: dict[str, float] = {}
            self._acc_n = 0
            self._eval_cache: tuple[int, dict] = (-1, {})
            self._saved_step = -1

        # ---------------------------------------------------------------- data
        def get_train_dataloader(self):
            from torch.utils.data import DataLoader

            dl = DataLoader(self.train_dataset, batch_sampler=self.train_sampler, collate_fn=self.collater,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory,
                            persistent_workers=False)
            return self.accelerator.prepare(dl)

        # ---------------------------------------------------------------- loss
        def cqt_teacher(self, device):
            from .teachers import CQTParams, CQTTeacher

            if self._cqt is None:
                t = self.mert_cfg.teacher
                self._cqt = CQTTeacher(CQTParams(self.mert_cfg.model.sample_rate, int(self.mert_cfg.model.frame_rate),
                                                 t.cqt_fmin, t.cqt_bins, t.cqt_bins_per_octave))
            return self._cqt.to(device)

        def mert_step(self, model, inputs, train: bool):
            """Forward one batch; returns (:class:`mert.loss.LossOutput`, baseline hits).

            Baseline hits (validation only, else empty): ``{"majority": [K], "copy": [K]}``, correct predictions on the
            masked frames of the training-majority label and of the nearest unmasked frame's label
            (:func:`mert.loss.baseline_hits`).
            """
            from .loss import baseline_hits, compute_span_mask, inbatch_noise_mix, mert_loss

            cfg = self.mert_cfg
            wav = inputs["input_values"].float()
            labels = inputs["labels"]
            if self.label_lut is not None:  # teacher codes -> rows of the (released) label tables
                lut = self.label_lut.to(labels.device)
                labels = torch.stack([lut[j][labels[:, j]] for j in range(labels.shape[1])], dim=1)
            seed = int(inputs["seed"].reshape(-1)[0])
            rng = np.random.default_rng([seed, 7])  # masks and noise: a function of the batch seed only
            mcfg = cfg.model
            t = mcfg.num_frames(wav.shape[1])
            t = min(t, labels.shape[-1])  # labels shorter than the conv frames: trim the features (spec §2.4)
            cqt = self.cqt_teacher(wav.device)(wav)[:, :t] if cfg.loss.cqt_weight > 0 else None  # CLEAN audio
            x = wav
            if train and cfg.loss.noise_mix:
                x, _ = inbatch_noise_mix(wav, cfg.loss.mixture_prob, (cfg.loss.noise_num_min, cfg.loss.noise_num_max),
                                         (cfg.loss.noise_len_min, cfg.loss.noise_len_max), rng)
            full_t = mcfg.num_frames(wav.shape[1])
            mask = compute_span_mask(wav.shape[0], full_t, mcfg.mask_prob, mcfg.mask_length, mcfg.mask_min_masks, rng)
            mask = torch.from_numpy(mask).to(wav.device)
            out = model(input_values=x, mask_time_indices=mask)
            m = mask[:, :t]
            proj = out.projections[:, :t]
            res = mert_loss(
                proj.reshape(proj.shape[0], t, -1), list(out.label_embeddings), labels[:, :, :t], m, out.features_pen,
                out.cqt_pred[:, :t][m] if cqt is not None else None, cqt[m] if cqt is not None else None,
                logit_temp=mcfg.logit_temp, features_pen_weight=cfg.loss.features_pen_weight, cqt_weight=cfg.loss.cqt_weight,
            )
            hits = {}
            if not train:
                # The majority label comes from the training labels: the per-batch mode of the held-out targets
                # would be an oracle that peeks at the answers (and overstates the baseline).
                maj = self.majority_labels or [0] * labels.shape[1]
                hits["majority"], hits["copy"] = baseline_hits(labels[:, :, :t], m, maj)
            return res, hits

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            res, _ = self.mert_step(model, inputs, train=True)
            for k, v in res.metrics().items():
                self._acc[k] = self._acc.get(k, 0.0) + v
            self._acc_n += 1
            return (res.loss, None) if return_outputs else res.loss

        def log(self, logs, start_time=None):
            if "loss" in logs and self._acc_n:
                for k, v in self._acc.items():
                    if k != "num_masked":
                        logs[f"train_{k}"] = v / self._acc_n
                self._acc, self._acc_n = {}, 0
            super().log(logs, start_time)

        # ---------------------------------------------------------------- validation
        @torch.no_grad()
        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            if self.valid_data is None:
                return {}
            if self._eval_cache[0] == self.state.global_step:
                return self._eval_cache[1]  # the Trainer asks again at an epoch end that is also an eval step
            model = self.model
            was_training = model.training
            model.eval()
            tot = {"loss": 0.0, "ce": 0.0, "cqt_mse": 0.0, "features_pen": 0.0}
            correct = majority = copy = masked = n = 0
            for bi, batch in enumerate(self.valid_sampler):
                if bi >= self.mert_cfg.data.valid_batches:
                    break
                inputs = self._prepare_inputs(self.collater([self.valid_data[key] for key in batch]))
                with self.compute_loss_context_manager():
                    res, hits = self.mert_step(model, inputs, train=False)
                tot["loss"] += float(res.loss)
                tot["ce"] += float(res.ce_sum) / max(res.num_masked, 1)
                tot["cqt_mse"] += float(res.cqt_mse)
                tot["features_pen"] += float(res.features_pen)
                correct += sum(res.correct)
                majority += sum(hits["majority"])
                copy += sum(hits["copy"])
                masked += res.num_masked * len(res.correct)
                n += 1
            if was_training:
                model.train()
            if n == 0:
                return {}
            metrics = {f"{metric_key_prefix}_{k}": v / n for k, v in tot.items()}
            metrics[f"{metric_key_prefix}_acc"] = correct / max(masked, 1)
            if self.majority_labels:
                metrics[f"{metric_key_prefix}_acc_majority"] = majority / max(masked, 1)
            metrics[f"{metric_key_prefix}_acc_copy"] = copy / max(masked, 1)
            metrics[f"{metric_key_prefix}_acc_uniform"] = float(np.mean([1.0 / k for k in self.codebook_sizes]))
            self.log(metrics)
            self._eval_cache = (self.state.global_step, metrics)
            return metrics

        # ---------------------------------------------------------------- checkpoints
        def _get_output_dir(self, trial):
            return self._staging or super()._get_output_dir(trial)

        def _save_checkpoint(self, model, trial):
            """Write the checkpoint into ``.staging/`` and rename it into place: never a half-written checkpoint."""
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            if self._saved_step == self.state.global_step:
                return  # already saved at this step (step end and epoch end can both ask)
            name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            root = Path(self.args.output_dir)
            staging = root / ".staging"
            if self.args.should_save and (staging / name).exists():
                shutil.rmtree(staging / name)  # left by a save that was killed
            self.accelerator.wait_for_everyone()
            self._staging = str(staging)
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging = None
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                final = root / name
                if final.exists():
                    shutil.rmtree(final)
                os.replace(staging / name, final)
                with contextlib.suppress(OSError):
                    staging.rmdir()  # only when empty
                fd = os.open(root, os.O_RDONLY)
                try:
                    os.fsync(fd)  # make the rename durable before later checkpoints are rotated away
                finally:
                    os.close(fd)
                from transformers.trainer_utils import rotate_checkpoints

                rotate_checkpoints(output_dir=str(root), save_total_limit=self.args.save_total_limit,
                                   best_model_checkpoint=None, use_mtime=False)
            self.accelerator.wait_for_everyone()
            self._saved_step = self.state.global_step

        def _save(self, output_dir=None, state_dict=None):
            """config.json + model.safetensors with HF key names: a checkpoint is also an encoder folder."""
            from safetensors.torch import save_file

            from musiccore.runs import atomic_path, atomic_write_text

            out = Path(output_dir or self.args.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            model = self.accelerator.unwrap_model(self.model)
            state = state_dict if state_dict is not None else model.state_dict()
            state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
            with atomic_path(out / "model.safetensors") as tmp:
                save_file(state, str(tmp), metadata={"format": "pt", "model": type(model).__name__})
            atomic_write_text(out / "config.json", model.config.to_json_string())
            torch.save(self.args, out / "training_args.bin")

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            from .modeling_mert import load_state_dict_file

            model = model or self.accelerator.unwrap_model(self.model)
            model.load_checkpoint_state(load_state_dict_file(resume_from_checkpoint), source=str(resume_from_checkpoint))

    return MERTPretrainer, TimeLimitCallback, EpochCallback


# =====================================================================================================================
# Entry points
# =====================================================================================================================
def export_encoder(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Encoder-only folder (no pretraining heads, HF key names) from a training checkpoint, for `mert extract`."""
    from .modeling_mert import MERTModel

    model = MERTModel.from_pretrained(checkpoint)
    model.save_pretrained(out_dir)
    return Path(out_dir)


def plot_curves(run_dir: str | Path) -> Path | None:
    """curves.png in the run folder: training loss, validation accuracy (vs majority/copy/uniform peers), CQT MSE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    mpath = run_dir / "metrics.jsonl"
    if not mpath.is_file():
        return None
    rows: dict[tuple[int, str], dict] = {}
    for line in mpath.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            kind = "eval" if "eval_loss" in r else "train"
            rows[(r["step"], kind)] = r  # a resumed run re-logs some steps: keep the last
    train = sorted((s, r) for (s, k), r in rows.items() if k == "train" and "loss" in r)
    ev = sorted((s, r) for (s, k), r in rows.items() if k == "eval")
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    if train:
        ax[0].plot([s for s, _ in train], [r["loss"] for _, r in train], label="train loss")
        if "train_cqt_mse" in train[0][1]:
            ax[2].plot([s for s, _ in train], [r["train_cqt_mse"] for _, r in train], label="train CQT MSE", alpha=0.6)
    if ev:
        st = [s for s, _ in ev]
        ax[0].plot(st, [r["eval_loss"] for _, r in ev], "o-", label="valid loss")
        ax[1].plot(st, [r["eval_acc"] for _, r in ev], "o-", label="valid masked acc")
        if all("eval_acc_majority" in r for _, r in ev):
            ax[1].plot(st, [r["eval_acc_majority"] for _, r in ev], "--", label="majority class (training labels)")
        if all("eval_acc_copy" in r for _, r in ev):
            ax[1].plot(st, [r["eval_acc_copy"] for _, r in ev], "-.", label="copy nearest unmasked label")
        ax[1].plot(st, [r["eval_acc_uniform"] for _, r in ev], ":", label="uniform chance")
        ax[2].plot(st, [r["eval_cqt_mse"] for _, r in ev], "o-", label="valid CQT MSE")
    for a, title in zip(ax, ("loss", "masked-prediction accuracy", "CQT reconstruction")):
        a.set_title(title)
        a.set_xlabel("update")
        a.legend()
    fig.tight_layout()
    out = run_dir / "curves.png"
    from musiccore.runs import atomic_path

    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return out


def build_trainer(cfg: TrainConfig):
    """Run folder, data, model and the configured Trainer: ``(trainer, run_dir, preemption callback)``."""
    from musiccore.hf import LineLogCallback, PreemptionCallback, setup_logging
    from transformers.trainer_callback import PrinterCallback

    from .data import Collater

    from . import prepare

    run_dir = resolve_run_dir(cfg)
    rank = _rank()
    # Before any folder exists: a missing data kit or manifest is a one-line error, not an empty run folder.
    prepare.load_rows(cfg.data, "train")
    if rank == 0:
        # the folder records the config with fresh=false, so a later plain relaunch resumes it
        saved = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, fresh=False))
        prepare_run_dir(run_dir, saved, fresh=cfg.trainer.fresh)
    else:
        _wait_for(run_dir / "config.yaml", 600)
    root = logging.getLogger()
    for h in list(root.handlers):  # a CLI's basicConfig handler would print every line twice
        if type(h) is logging.StreamHandler and not getattr(h, "_musiccore", False):
            root.removeHandler(h)
    setup_logging(run_dir, rank)
    log.info("run folder %s", run_dir)
    train, sampler, valid, vsampler, sizes, majority = build_data(cfg)
    log.info("data: %d training clips in %d batches (%.0f s of audio per epoch), %s validation clips",
             len(train), len(sampler), sampler.seconds_per_epoch(cfg.model.sample_rate), len(valid) if valid else 0)
    model = build_model(cfg)
    log.info("model: %.2fM parameters", sum(p.numel() for p in model.parameters()) / 1e6)
    args = build_training_args(cfg, run_dir)
    Trainer, TimeLimit, EpochCb = _trainer_class()
    preempt = PreemptionCallback()
    world = max(args.world_size, 1)
    steps_per_epoch = math.ceil(math.ceil(len(sampler) / world) / cfg.trainer.update_freq)
    seconds_per_update = sampler.seconds_per_epoch(cfg.model.sample_rate) / max(len(sampler), 1) * world * cfg.trainer.update_freq
    callbacks = [LineLogCallback(items_per_step=seconds_per_update, unit="audio_s", metrics_file=run_dir / "metrics.jsonl"),
                 preempt, EpochCb(sampler, steps_per_epoch)]
    if cfg.trainer.max_minutes > 0:
        callbacks.append(TimeLimit(cfg.trainer.max_minutes))
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=valid,
                      callbacks=callbacks, mert_cfg=cfg, train_sampler=sampler, collater=Collater(),
                      valid_data=valid, valid_sampler=vsampler, codebook_sizes=sizes,
                      majority_labels=majority)
    trainer.remove_callback(PrinterCallback)  # LineLogCallback prints the log lines
    if valid is None and args.eval_strategy != "no":
        trainer.args.eval_strategy = "no"
    return trainer, run_dir, preempt


def run(cfg: TrainConfig) -> Path:
    """Train (or resume) the run described by ``cfg``; returns the run folder."""
    from musiccore.hf import last_checkpoint

    trainer, run_dir, preempt = build_trainer(cfg)
    resume = None if cfg.trainer.fresh else last_checkpoint(run_dir)
    if resume:
        log.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    if preempt.preempted:
        log.warning("preempted: checkpoint saved, exiting for the requeue")
        return run_dir
    ckpt = last_checkpoint(run_dir)
    if ckpt is None or int(Path(ckpt).name.split("-")[-1]) != trainer.state.global_step:
        trainer._save_checkpoint(trainer.model_wrapped, None)  # every rank: the save has barriers
        ckpt = last_checkpoint(run_dir)
    if trainer.is_world_process_zero():
        export_encoder(ckpt, run_dir / "encoder")
        log.info("encoder exported to %s (load with `mert extract --model %s`)", run_dir / "encoder", run_dir / "encoder")
        if cfg.trainer.plot:
            p = plot_curves(run_dir)
            log.info("curves: %s", p)
    return run_dir


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    """``mert train --config X.yaml key=value ...`` (a Namespace with ``config`` and ``overrides``, or an argv list)."""
    if args is None or isinstance(args, (list, tuple)):
        p = argparse.ArgumentParser(prog="mert train")
        p.add_argument("--config", default=str(CONFIG_DIR / "tiny.yaml"))
        p.add_argument("--dump-config", action="store_true", help="print the resolved config and exit")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=50")
        args = p.parse_args(args)
    cfg = load_train_config(args.config, list(getattr(args, "overrides", None) or []))
    if getattr(args, "dump_config", False):
        from musiccore.config import to_yaml

        print(to_yaml(cfg))
        return 0
    run(cfg)
    return 0


def tiny_run_dirs(demo_minutes: float = 2.0) -> list[Path]:
    """Run folders of the *current* tiny config: ``mert train --config configs/tiny.yaml`` and the time-limited run of
    ``mert demo`` (the folder name holds the config hash, so runs of an older tiny config are not among them)."""
    variants = ([], [f"trainer.max_minutes={demo_minutes}"])
    return [resolve_run_dir(load_train_config(CONFIG_DIR / "tiny.yaml", ov)) for ov in variants]


def train_tiny_for_demo(minutes: float = 2.0, run_dir: str | Path | None = None, data_root: str | Path | None = None,
                        overrides: list[str] | None = None) -> Path:
    """Pretrain the tiny model on the data kit's clips for about ``minutes`` on CPU; returns the encoder folder.

    Used by ``mert demo``. The run resumes if ``run_dir`` already holds it; the returned folder
    (``<run_dir>/encoder``) loads with :meth:`mert.modeling_mert.MERTModel.from_pretrained`.
    """
    ov = [f"trainer.max_minutes={minutes}"]
    if run_dir is not None:
        ov.append(f"trainer.run_dir={run_dir}")
    if data_root is not None:
        ov.append(f"data.datakit_root={data_root}")
    cfg = load_train_config(CONFIG_DIR / "tiny.yaml", ov + list(overrides or []))
    return run(cfg) / "encoder"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
