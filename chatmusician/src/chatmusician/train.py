"""ChatMusician training: continual pretraining and SFT of a LLaMA-family causal LM, LoRA or full, with
``transformers.Trainer`` and optional DeepSpeed ZeRO-2/3.

Launch (the same entry point in every mode)::

    chatmusician train --config configs/tiny.yaml                                   # one process (CPU or 1 GPU)
    torchrun --standalone --nproc_per_node=8 -m chatmusician.cli train --config configs/sft_7b_lora.yaml
    python -m musiccore.slurm submit --project chatmusician --config configs/sft_7b_lora.yaml   # Slurm (srun+torchrun)

The run folder (``<MUSIC_RUNS_DIR>/chatmusician/<run.name>-<config hash>`` or ``run.dir``) holds config.yaml,
deepspeed.json (when enabled), logs/, metrics.jsonl, tb/ (TensorBoard), checkpoints/checkpoint-<step>/ and
final/ (the adapter or the full model, safetensors, plus the tokenizer). Relaunching the same config resumes from the
newest complete checkpoint; SIGUSR1/SIGTERM saves a checkpoint and stops (Slurm requeue).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import time
from pathlib import Path

import torch

from musiccore.config import config_hash, to_dict
from musiccore.hf import deepspeed_setup, rank_info
from musiccore.hf import resolve_precision as _resolve_precision
from musiccore.runs import atomic_write_json, prepare_run_dir, runs_root

from .config import ChatMusicianConfig, DeepSpeedConfig, LoraConfig

log = logging.getLogger(__name__)


def run_dir_of(cfg: ChatMusicianConfig) -> Path:
    if cfg.run.dir:
        return Path(cfg.run.dir)
    return runs_root() / "chatmusician" / f"{cfg.run.name}-{config_hash(cfg, exclude=('logging', 'num_workers', 'fresh', 'dir'))}"


def resolve_precision(cfg: ChatMusicianConfig) -> str:
    """``trainer.precision``, with ``auto`` resolved (bf16 on a GPU that supports it, fp16 otherwise, fp32 on CPU)."""
    return _resolve_precision(cfg.trainer.precision)


def resolve_attention(cfg: ChatMusicianConfig) -> str:
    """``auto``: packed rows need attention kept inside each sample, and the stock SDPA path does that with a dense
    [B, 1, T, T] block mask that computes every cross-sample block (slower than padding: benchmarks/train_tokens.py),
    so packing gets flash-attention varlen on CUDA when ``flash_attn`` is installed, else ``packed_sdpa``; unpacked
    batches get ``sdpa``."""
    a = cfg.model.attn_implementation
    if a != "auto":
        return a
    if not cfg.pack.enabled:
        return "sdpa"
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "packed_sdpa"


# ---------------------------------------------------------------------------------------------------------------
# Builders


def build_model(cfg: ChatMusicianConfig, tokenizer):
    """A ``LlamaForCausalLM`` (scratch) or any local HF causal LM (pretrained); never ``trust_remote_code``."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    m = cfg.model
    attn = resolve_attention(cfg)
    if attn == "packed_sdpa":
        from .tokenization import register_packed_attention

        register_packed_attention()
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(m.dtype)
    if m.dtype == "auto":
        # LoRA keeps the frozen base in the training precision; full fine-tuning keeps fp32 master weights
        prec = resolve_precision(cfg)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec) if cfg.lora.enabled else None
        dtype = dtype or torch.float32
    if m.init == "scratch":
        conf = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
            num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads, intermediate_size=m.intermediate_size,
            max_position_embeddings=m.max_position_embeddings, rms_norm_eps=m.rms_norm_eps, tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        conf._attn_implementation = attn
        torch.manual_seed(cfg.run.seed)
        model = LlamaForCausalLM(conf).to(dtype)
    else:
        if not m.name_or_path or not Path(m.name_or_path).is_dir():
            raise FileNotFoundError(f"model.name_or_path={m.name_or_path!r}: not a local model folder (nothing is downloaded)")
        model = AutoModelForCausalLM.from_pretrained(
            m.name_or_path, dtype=dtype, attn_implementation=attn, trust_remote_code=False
        )
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
    model.config.use_cache = False
    return model


def apply_lora(model, lcfg: LoraConfig):
    """Wrap with peft LoRA on the configured projections (released: r 64, alpha 16, dropout 0.1, all 7 projections)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    pc = PeftLoraConfig(
        r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout, target_modules=list(lcfg.target_modules),
        modules_to_save=list(lcfg.modules_to_save) or None, bias="none", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, pc)


def deepspeed_dict(ds: DeepSpeedConfig, precision: str) -> dict:
    """The DeepSpeed config rendered from the ``deepspeed`` section ("auto" values are filled by the Trainer).

    Stage 2 mirrors the released ds_zero2_no_offload.json (which sets only the stage: DeepSpeed's defaults written
    out), stage 3 ds_zero3_offload.json (buckets 1e7, 1e9 live/reuse, persistence threshold 1e5, sub-groups 1e9) with
    the values taken from the ``deepspeed`` section, never "auto", so the run does not depend on the Trainer's
    hidden-size-based fill-ins. The optimizer is the Trainer's torch AdamW (no ``optimizer`` block), so no DeepSpeed
    op is JIT-compiled for it; the released schedule is the Trainer's (``optim.schedule=released``).
    """
    zero: dict = {
        "stage": ds.stage,
        "overlap_comm": ds.overlap_comm if ds.overlap_comm is not None else ds.stage == 3,  # DeepSpeed's default
        "contiguous_gradients": True,
        "reduce_bucket_size": int(ds.reduce_bucket_size),
    }
    if ds.stage == 2:
        zero["allgather_partitions"] = True
        zero["allgather_bucket_size"] = int(ds.allgather_bucket_size)
        zero["reduce_scatter"] = True
    else:
        zero["stage3_max_live_parameters"] = int(ds.stage3_max_live_parameters)
        zero["stage3_max_reuse_distance"] = int(ds.stage3_max_reuse_distance)
        zero["stage3_prefetch_bucket_size"] = int(ds.stage3_prefetch_bucket_size)
        zero["stage3_param_persistence_threshold"] = int(ds.stage3_param_persistence_threshold)
        zero["sub_group_size"] = int(ds.sub_group_size)
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # consolidated weights on save (released)
    if ds.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.offload_param == "cpu":
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    out = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
        "zero_force_ds_cpu_optimizer": False,  # a torch optimizer with CPU offload is fine (and needs no JIT op)
        "prescale_gradients": False,  # released
        "steps_per_print": 10**9,  # released 20; the LineLogCallback logs instead
        "wall_clock_breakdown": False,
    }
    if precision == "fp16":
        out["fp16"] = {"enabled": True, "loss_scale": 0, "loss_scale_window": ds.loss_scale_window,
                       "initial_scale_power": 16, "hysteresis": 2, "min_loss_scale": 1}
    elif precision == "bf16":
        out["bf16"] = {"enabled": True}
    return out


def released_lr_lambda(total_steps: int, warmup_ratio: float, min_ratio: float):
    """LR factor of the released DeepSpeed ``WarmupDecayLR`` (warmup_type "cosine" is unknown to DeepSpeed, which
    falls back to log warmup): log warmup from ``min_ratio`` to 1 over ``warmup_ratio`` of the steps, then linear
    decay back to ``min_ratio`` at the last step (spec pitfall 9)."""
    warm = max(1, int(warmup_ratio * total_steps))
    inv_log = 1.0 / math.log(warm) if warm > 1 else 1.0

    def f(step: int) -> float:
        if step < warm:
            gamma = inv_log * math.log(step + 1) if warm > 1 else 1.0
        else:
            gamma = max(0.0, (total_steps - step) / max(1.0, total_steps - warm))
        return min_ratio + (1.0 - min_ratio) * min(gamma, 1.0)

    return f


def cosine_lr_lambda(total_steps: int, warmup_ratio: float, min_ratio: float = 0.0):
    """README intent: linear warmup over ``warmup_ratio`` of the steps, cosine decay to ``min_ratio``."""
    warm = max(1, int(warmup_ratio * total_steps))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        p = min(1.0, (step - warm) / max(1, total_steps - warm))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))

    return f


def _trainer_class():
    from transformers import Trainer

    class ChatMusicianTrainer(Trainer):
        """``Trainer`` with the released LR schedule (or the README's cosine) built from the run config."""

        cm_cfg: ChatMusicianConfig | None = None

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            if self.lr_scheduler is None:
                o = self.cm_cfg.optim
                if o.schedule == "released":
                    fn = released_lr_lambda(num_training_steps, o.warmup_ratio, o.min_lr_ratio)
                elif o.schedule == "cosine":
                    fn = cosine_lr_lambda(num_training_steps, o.warmup_ratio)
                else:
                    fn = lambda step: 1.0  # noqa: E731
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, fn)
                self._created_lr_scheduler = True
            return self.lr_scheduler

    return ChatMusicianTrainer


# ---------------------------------------------------------------------------------------------------------------
# Data


def load_split(cfg: ChatMusicianConfig, split: str):
    """Rows of ``data.stage`` prepared by ``chatmusician data`` (packed when ``pack.enabled``), memory-mapped.
    Raises ``CorpusError`` (missing or stale corpus, with the command that builds it); never builds."""
    from .data import open_split

    return open_split(cfg, split)


# ---------------------------------------------------------------------------------------------------------------
# Entry point


def train(cfg: ChatMusicianConfig) -> dict:
    """Train per ``cfg``; returns a summary (run dir, steps, final loss, path of the saved model)."""
    from musiccore.hf import (LineLogCallback, PreemptionCallback, StartStateCallback, last_checkpoint, setup_logging,
                             zero_info)
    from transformers import TrainingArguments

    from .data import check_corpus, tokenizer_source
    from .tokenization import Collator, load_tokenizer, save_tokenizer

    rank, local_rank, world = rank_info()
    # every rank checks the prepared corpus before anything is written: a missing or stale one is a one-line error
    # naming the `chatmusician data` command (no rank builds data: that is its own step, e.g. a Slurm job)
    check_corpus(cfg)
    if cfg.trainer.cpu_threads > 0 and not torch.cuda.is_available():
        torch.set_num_threads(cfg.trainer.cpu_threads)
    if not os.isatty(2):  # no progress bars in Slurm .out files
        import transformers

        transformers.utils.logging.disable_progress_bar()
    run_dir = run_dir_of(cfg)
    prepare_run_dir(run_dir, cfg, fresh=cfg.run.fresh, rank=rank)  # rank 0 writes it, the others wait for it
    setup_logging(run_dir, rank)
    log.info("run folder %s (rank %d/%d)", run_dir, rank, world)

    tok = load_tokenizer(tokenizer_source(cfg))
    precision = resolve_precision(cfg)
    model = build_model(cfg, tok)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    base_path = cfg.model.name_or_path
    if cfg.lora.enabled:
        if cfg.model.init == "scratch":  # the adapter needs its (random) base: keep it beside the run
            base_path = str(run_dir / "base")
            if rank == 0 and not (run_dir / "base" / "config.json").exists():
                model.save_pretrained(base_path)
                save_tokenizer(tok, base_path)  # + tokenizer.model: released encoding
        model = apply_lora(model, cfg.lora)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info("model: %.2fM parameters, %.2fM trainable (%s)", n_all / 1e6, n_train / 1e6, "LoRA" if cfg.lora.enabled else "full")

    train_ds = load_split(cfg, "train")
    eval_ds = load_split(cfg, "valid") if cfg.trainer.eval_steps > 0 else None
    if len(train_ds) == 0:
        raise RuntimeError(f"{cfg.data.out_dir}: no {cfg.data.stage} training samples (see report.json)")

    ds_config = None
    if cfg.deepspeed.enabled:
        ds_config = deepspeed_setup(run_dir, deepspeed_dict(cfg.deepspeed, precision), rank)
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tb"))
    t = cfg.trainer
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=t.micro_batch,
        per_device_eval_batch_size=t.micro_batch,
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        adam_beta1=cfg.optim.beta1,
        adam_beta2=cfg.optim.beta2,
        adam_epsilon=cfg.optim.eps,
        max_grad_norm=cfg.optim.max_grad_norm,
        logging_steps=t.log_every,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if eval_ds is not None else "no",
        eval_steps=t.eval_steps if eval_ds is not None else None,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        seed=cfg.run.seed,
        dataloader_num_workers=t.num_workers,
        remove_unused_columns=False,
        report_to=["tensorboard"] if t.tensorboard and rank == 0 else "none",
        deepspeed=ds_config,
        disable_tqdm=not os.isatty(2),
        ddp_find_unused_parameters=False if world > 1 else None,
        save_only_model=False,
    )
    items = cfg.pack.length * t.micro_batch * t.grad_accum * world if cfg.pack.enabled else None
    preempt = PreemptionCallback()
    start_state: dict = {}
    cls = _trainer_class()
    trainer = cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=Collator(pad_id=tok.pad_token_id),
        callbacks=[LineLogCallback(items_per_step=items, unit="tokens" if items else "samples",
                                   metrics_file=run_dir / "metrics.jsonl"), preempt, StartStateCallback(start_state)],
    )
    trainer.cm_cfg = cfg
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # LineLogCallback prints the one line per log step instead
    resume = last_checkpoint(args.output_dir)
    if resume:
        log.info("resuming from %s", resume)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    summary = {
        "run_dir": str(run_dir),
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        # what the Trainer actually restored (read at on_train_begin), not what was found on disk before training
        "resumed_from": resume if start_state.get("global_step", 0) > 0 else None,
        "resumed_step": start_state.get("global_step", 0),
        "start_state": start_state,
        "zero": zero_info(trainer),
        "preempted": preempt.preempted,
        "seconds": time.time() - t0,
    }
    if not preempt.preempted:
        final = run_dir / "final"
        trainer.save_model(str(final))
        if rank == 0:
            save_tokenizer(tok, final)  # + tokenizer.model: chat encodes like the training data
            atomic_write_json(final / "chatmusician.json", {"lora": cfg.lora.enabled, "base": base_path,
                                                              "config": to_dict(cfg)})
        summary["final"] = str(final)
    if rank == 0:
        atomic_write_json(run_dir / "summary.json", summary)
    log.info("done: %s", summary)
    return summary
