"""Stage-1 / stage-2 LM training with ``transformers.Trainer`` (full or LoRA, optional DeepSpeed ZeRO-2/3).

Launch (the same entry point everywhere)::

    yue train --config configs/tiny_stage1.yaml                                        # one process (CPU or 1 GPU)
    torchrun --standalone --nproc_per_node=8 -m yue.cli train --config configs/stage1_7b_lora.yaml
    python -m musiccore.slurm submit --project yue --config configs/stage1_7b.yaml     # Slurm (srun + torchrun)

Run folder (``run.dir`` or ``<MUSIC_RUNS_DIR>/yue/<run.name>-<config hash>``)::

    config.yaml git.txt env.txt   resolved config and provenance (a relaunch with another config is refused)
    tokens.json                   documents and tokens per split and mode (also logged; estimated from at most
                                  REPORT_MAX_SONGS evenly spaced songs per split, see its "sampled" key)
    deepspeed.json                when deepspeed.enabled
    logs/ metrics.jsonl tb/       one line per log step; TensorBoard
    checkpoints/checkpoint-<N>/   safetensors weights + optimizer/scheduler/RNG/trainer state
    final/                        LM folder (yue.lm.save_lm): model, tokenizer, yue_lm.json {"task": ...}
    eval.json summary.json        held-out evaluation of final/ against n-gram baselines; the run summary

Relaunching the same config resumes from the newest complete checkpoint (the data stream is deterministic, so the
Trainer's skip of the trained batches lands on the same blocks). SIGUSR1/SIGTERM saves a checkpoint at the step
boundary and exits cleanly (Slurm requeue).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from musiccore.config import config_hash, to_dict
from musiccore.hf import deepspeed_setup, rank_info
from musiccore.hf import resolve_precision as _resolve_precision
from musiccore.runs import atomic_write_json, prepare_run_dir, runs_root
from yue.lm.config import LMTrainConfig
from yue.lm.data import (IGNORE_INDEX, REPORT_MAX_SONGS, BlockStream, Collator, DocumentBuilder, PreparedData,
                         eval_blocks, schedule_at, token_report, training_documents)  # fmt: skip
from yue.lm.model import LMLoadError, build_lm, check_vocab

log = logging.getLogger(__name__)

BASELINE_MAX_SONGS = 2000  # training songs the held-out n-gram baselines are fitted on (evenly spaced)

__all__ = ["train", "evaluate_lm", "run_dir_of", "deepspeed_dict", "build_model", "check_init_from", "ngram_scores"]


def run_dir_of(cfg: LMTrainConfig) -> Path:
    if cfg.run.dir:
        return Path(cfg.run.dir)
    name = cfg.run.name or f"yue-{cfg.task}"
    return runs_root() / "yue" / f"{name}-{config_hash(cfg, exclude=('fresh', 'dir', 'cpu_threads'))}"


def resolve_precision(cfg: LMTrainConfig) -> str:
    """``trainer.precision``, with ``auto`` resolved (bf16 on a GPU that supports it, fp16 otherwise, fp32 on CPU)."""
    return _resolve_precision(cfg.trainer.precision)


def resolve_attention(cfg: LMTrainConfig) -> str:
    """``auto``: with document masking, flash-attention varlen on CUDA when ``flash_attn`` is installed, else
    ``packed_sdpa`` (one causal SDPA per document); without document masking, plain causal ``sdpa``."""
    a = cfg.model.attn_implementation
    if a == "auto":
        if not cfg.data.doc_masking:
            a = "sdpa"
        elif torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
            a = "flash_attention_2"
        else:
            a = "packed_sdpa"
    if a == "packed_sdpa":
        from musiccore.attention import register_packed_attention

        register_packed_attention()
    return a


def deepspeed_dict(cfg: LMTrainConfig, precision: str) -> dict:
    """The DeepSpeed config (``"auto"`` values are filled in by the Trainer from the run config).

    ZeRO-2 follows the released ``ds_config_zero2.json`` (spec 5.3): no offload, overlap_comm false, contiguous
    gradients, gradient clipping 1.0 (``optim.max_grad_norm``). The optimizer and the warmup + cosine schedule are the
    Trainer's (torch AdamW, no DeepSpeed op to JIT-compile); the released file's WarmupCosineLR has the same shape.
    """
    ds = cfg.deepspeed
    zero: dict = {"stage": ds.stage, "overlap_comm": ds.overlap_comm, "contiguous_gradients": True,
                  "reduce_bucket_size": int(ds.bucket_size)}  # fmt: skip
    if ds.stage == 2:
        zero.update(allgather_partitions=True, allgather_bucket_size=int(ds.bucket_size), reduce_scatter=True)
    else:
        zero.update(stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto",
                    stage3_max_live_parameters=int(1e9), stage3_max_reuse_distance=int(1e9),
                    stage3_gather_16bit_weights_on_model_save=True)  # fmt: skip
    if ds.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.offload_param == "cpu":
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    out = {
        "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
        "gradient_clipping": "auto", "zero_optimization": zero, "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9, "wall_clock_breakdown": False,
    }  # fmt: skip
    if precision == "bf16":
        out["bf16"] = {"enabled": True}
    elif precision == "fp16":
        out["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return out


def check_init_from(folder: str | Path, tok) -> None:
    """Before training: ``folder``'s vocabulary must hold the tokenizer layout and its special ids must agree.

    Raises:
        LMLoadError: naming the model's and the layout's numbers (vocab size, or a special token's two ids).
    """
    from yue.tokenizer import TokenLayout

    folder = Path(folder)
    conf_p = folder / "config.json"
    if not conf_p.is_file():
        raise LMLoadError(f"model.init_from={folder}: no config.json (a local Hugging Face LM folder is needed; "
                          "nothing is downloaded)")  # fmt: skip
    try:
        conf = json.loads(conf_p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LMLoadError(f"{conf_p}: unreadable ({e})") from e
    if conf.get("model_type") != "llama":
        raise LMLoadError(f"{conf_p}: model_type {conf.get('model_type')!r}, expected 'llama'")
    check_vocab(int(conf.get("vocab_size", 0)), tok.layout, where=str(conf_p))
    lay_p = folder / "layout.json"
    theirs = TokenLayout.from_json(json.loads(lay_p.read_text())) if lay_p.is_file() else TokenLayout.released()
    ours = tok.layout
    for name, i in {**ours.special_tokens, **ours.wrapper_tokens}.items():
        j = {**theirs.special_tokens, **theirs.wrapper_tokens}.get(name)
        if j != i:
            raise LMLoadError(f"{folder}: special token {name} has id {j} in the model's layout but {i} in the "
                              f"tokenizer's ({tok.path})")  # fmt: skip
    if (theirs.xcodec.global_offset, theirs.xcodec.codebook_size) != (ours.xcodec.global_offset, ours.xcodec.codebook_size):
        raise LMLoadError(f"{folder}: codec ids start at {theirs.xcodec.global_offset} in the model's layout but "
                          f"{ours.xcodec.global_offset} in the tokenizer's")  # fmt: skip


def build_model(cfg: LMTrainConfig, tok, attn: str, dtype: torch.dtype):
    """A preset ``LlamaForCausalLM`` (random, seeded) or the ``init_from`` folder, checked against ``tok.layout``."""
    from transformers import LlamaForCausalLM

    from yue.lm.model import PRESETS, LMShape

    m = cfg.model
    if m.init_from:
        check_init_from(m.init_from, tok)
        model = LlamaForCausalLM.from_pretrained(m.init_from, dtype=dtype, attn_implementation=attn)
    else:
        if m.preset not in PRESETS:
            raise LMLoadError(f"model.preset {m.preset!r}: unknown (known: {', '.join(PRESETS)})")
        shape = LMShape(**{**PRESETS[m.preset].__dict__, "vocab_size": m.vocab_size or None})
        model = build_lm(shape, tok.layout, attn_implementation=attn, seed=cfg.run.seed).to(dtype)
    model.config.use_cache = False
    return model


def _callbacks(run_dir: Path, items: int, start_state: dict):
    from musiccore.hf import LineLogCallback, PreemptionCallback, StartStateCallback

    preempt = PreemptionCallback()
    return [LineLogCallback(items_per_step=items, unit="tokens", metrics_file=run_dir / "metrics.jsonl"), preempt,
            StartStateCallback(start_state, moments=False)], preempt  # fmt: skip


def train(cfg: LMTrainConfig) -> dict:
    """Train per ``cfg``; returns the summary (also ``<run>/summary.json``)."""
    from transformers import Trainer, TrainingArguments

    from musiccore.hf import last_checkpoint, setup_logging, zero_info

    rank, local_rank, world = rank_info()
    if cfg.trainer.cpu_threads > 0 and not torch.cuda.is_available():
        torch.set_num_threads(cfg.trainer.cpu_threads)
    if not os.isatty(2):
        import transformers

        transformers.utils.logging.disable_progress_bar()
    if not cfg.data.prepared:
        raise ValueError("data.prepared: the `yue prepare` folder to train on is required")
    run_dir = run_dir_of(cfg)
    prepare_run_dir(run_dir, cfg, fresh=cfg.run.fresh, rank=rank)  # rank 0 writes it, the others wait for it
    setup_logging(run_dir, rank)
    log.info("%s training, run folder %s (rank %d/%d)", cfg.task, run_dir, rank, world)

    data = PreparedData(cfg.data.prepared, cfg.data.tokenizer or None)
    tok = data.tok
    builder = DocumentBuilder(data, cfg)
    train_songs = data.split(cfg.data.train_split, cfg.data.max_songs)
    precision = resolve_precision(cfg)
    attn = resolve_attention(cfg)
    # LoRA keeps the frozen base in the training precision; full training keeps fp32 master weights
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32) if cfg.lora.enabled else torch.float32
    model = build_model(cfg, tok, attn, dtype)  # vocabulary / special ids checked here, before any training
    if rank == 0:
        used = sorted({m for m, w in cfg.base_weights().items() if w > 0}
                      | {m for p in cfg.modes.schedule for m, w in p.weights.items() if w > 0} | set(cfg.eval_modes()))
        any_icl = cfg.modes.icl_share > 0 or any(p.icl_share > 0 for p in cfg.modes.schedule)
        # bounded: the other ranks wait for rank 0 at the first collective (an O(corpus) pass would time them out)
        rep = token_report(builder, data, [cfg.data.train_split, *cfg.data.eval_splits], used,
                           icl_seed=cfg.run.seed if any_icl else None, max_songs=cfg.data.max_songs,
                           sample=REPORT_MAX_SONGS)  # fmt: skip
        rep["skipped_rows"] = [list(x) for x in data.skipped]
        atomic_write_json(run_dir / "tokens.json", rep)
        for split in [cfg.data.train_split, *cfg.data.eval_splits]:
            est = rep["sampled"].get(split)
            log.info("tokens %s%s: %s", split,
                     f" (estimated from {est['counted']} of {est['songs']} songs)" if est else "",
                     ", ".join(f"{m} {v['tokens']:,} ({v['songs']} songs)" for m, v in rep[split].items()))  # fmt: skip
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    base_path = cfg.model.init_from
    if cfg.lora.enabled:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        if not base_path:  # the adapter needs its (random) base: keep it beside the run
            base_path = str(run_dir / "base")
            if rank == 0 and not (run_dir / "base" / "config.json").exists():
                model.save_pretrained(base_path)
        lc = cfg.lora
        model = get_peft_model(model, PeftLoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                     target_modules=list(lc.target_modules), bias="none",
                                                     task_type="CAUSAL_LM"))  # fmt: skip
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info("model: %.2fM parameters, %.2fM trainable (%s), attention %s, %s", n_all / 1e6, n_train / 1e6,
             "LoRA" if cfg.lora.enabled else "full", attn, precision)  # fmt: skip

    t = cfg.trainer
    blocks_per_step = t.micro_batch * t.grad_accum * world
    stream = BlockStream(builder, train_songs, blocks_per_step, cfg.run.seed)
    ds_config = deepspeed_setup(run_dir, deepspeed_dict(cfg, precision), rank) if cfg.deepspeed.enabled else None
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tb")  # this run's folder (not one of an earlier call)
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=t.micro_batch,
        gradient_accumulation_steps=t.grad_accum,
        max_steps=t.max_steps,
        learning_rate=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        adam_beta1=cfg.optim.beta1,
        adam_beta2=cfg.optim.beta2,
        adam_epsilon=cfg.optim.eps,
        max_grad_norm=cfg.optim.max_grad_norm,
        lr_scheduler_type=cfg.optim.schedule,
        warmup_steps=cfg.optim.warmup_ratio,  # a float < 1 is a ratio of max_steps
        optim="adamw_torch_fused" if torch.cuda.is_available() else "adamw_torch",
        logging_steps=t.log_every,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        seed=cfg.run.seed,
        dataloader_num_workers=0,  # the stream is generated in the main process (workers would duplicate it)
        # every rank reads the deterministic stream and keeps its own share of each round of world x micro_batch
        # blocks (accelerate's IterableDatasetShard). The default for an IterableDataset (rank 0 reads, then
        # dispatches a dim-0 slice of every tensor to each rank, even in one process) would cut the collator's
        # flash-attention boundaries (cu_seq_lens [N + 1] -> its first B entries)
        accelerator_config={"dispatch_batches": False},
        remove_unused_columns=False,
        report_to=["tensorboard"] if t.tensorboard and rank == 0 else "none",
        deepspeed=ds_config,
        disable_tqdm=not os.isatty(2),
        ddp_find_unused_parameters=False if world > 1 else None,
        save_only_model=False,
    )
    start_state: dict = {}
    callbacks, preempt = _callbacks(run_dir, cfg.data.block_size * blocks_per_step, start_state)
    trainer = Trainer(model=model, args=args, train_dataset=stream,
                      # varlen: the document boundaries flash_attention_2 needs for micro-batches of more than one
                      # block (packed_sdpa / sdpa / eager ignore them, so always on: one data path for every backend)
                      data_collator=Collator(tok.layout.id("<PAD>"), cfg.data.doc_masking, varlen=True),
                      callbacks=callbacks)  # fmt: skip
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # LineLogCallback prints one line per log step instead
    resume = last_checkpoint(args.output_dir)
    if resume:
        log.info("resuming from %s", resume)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    w_end, icl_end = schedule_at(cfg, trainer.state.global_step)
    summary = {
        "run_dir": str(run_dir), "task": cfg.task, "global_step": trainer.state.global_step,
        "train_loss": result.training_loss, "resumed_from": resume, "preempted": preempt.preempted,
        "seconds": time.time() - t0, "start_state": start_state, "zero": zero_info(trainer),
        "train_songs": len(train_songs), "documents_by_mode": dict(stream.mode_counts),
        "final_mix": {"weights": w_end, "icl_share": icl_end},
    }  # fmt: skip
    if not preempt.preempted:
        final = _export_final(trainer, cfg, tok, run_dir, base_path, rank, precision)
        if final is not None:
            summary["final"] = str(final)
            if cfg.eval.enabled:
                ev = evaluate_lm(final, cfg, data, builder)
                atomic_write_json(run_dir / "eval.json", ev)
                summary["eval"] = {s: {k: v for k, v in r.items() if k in ("model", "unigram", "bigram")}
                                   for s, r in ev["splits"].items()}  # fmt: skip
    if rank == 0:
        atomic_write_json(run_dir / "summary.json", summary)
    log.info("done: step %d, loss %.4f, %s", summary["global_step"], summary["train_loss"] or float("nan"),
             summary.get("final", "preempted: no final folder"))  # fmt: skip
    return summary


def _export_final(trainer, cfg: LMTrainConfig, tok, run_dir: Path, base_path: str, rank: int, precision: str):
    """``<run>/final`` via :func:`yue.lm.save_lm` (LoRA merged into its base; the adapter kept in ``final_adapter``)."""
    from transformers import LlamaForCausalLM

    raw = run_dir / ("final_adapter" if cfg.lora.enabled else ".final_export")
    dtype = torch.bfloat16 if precision == "bf16" else None
    if cfg.deepspeed.enabled and cfg.deepspeed.stage == 3:
        # ZeRO-3 partitions every parameter: gather the full 16-bit weights (collective), then load them into a
        # plain model outside DeepSpeed's zero.Init (training is over)
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        state = trainer.model_wrapped._zero3_consolidated_16bit_state_dict()
        if rank != 0:
            return None
        unset_hf_deepspeed_config()
        conf = trainer.accelerator.unwrap_model(trainer.model_wrapped).config
        model = LlamaForCausalLM(conf).to(dtype or torch.float32)
        model.load_state_dict({k: v.to(dtype or torch.float32) for k, v in state.items()}, strict=True)
        return _save_final(model, trainer, cfg, tok, run_dir, base_path)
    trainer.save_model(str(raw))
    if rank != 0:
        return None
    if cfg.lora.enabled:
        from peft import PeftModel

        base = LlamaForCausalLM.from_pretrained(base_path, dtype=dtype, attn_implementation="sdpa")
        model = PeftModel.from_pretrained(base, str(raw)).merge_and_unload()
    else:
        model = LlamaForCausalLM.from_pretrained(str(raw), dtype=dtype, attn_implementation="sdpa")
    final = _save_final(model, trainer, cfg, tok, run_dir, base_path)
    if not cfg.lora.enabled:
        shutil.rmtree(raw, ignore_errors=True)
    return final


def _save_final(model, trainer, cfg: LMTrainConfig, tok, run_dir: Path, base_path: str) -> Path:
    from yue.lm.model import save_lm

    model.config.use_cache = True
    model.config._attn_implementation = "sdpa"
    info = {"task": cfg.task, "block_size": cfg.data.block_size, "doc_masking": cfg.data.doc_masking,
            "stage2_chunk_frames": cfg.data.stage2_chunk_frames, "lora": cfg.lora.enabled, "base": base_path,
            "steps": trainer.state.global_step, "config": to_dict(cfg)}  # fmt: skip
    return save_lm(model, tok, run_dir / "final", info)


# ---------------------------------------------------------------------------------------------------------------
# held-out evaluation
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def score_blocks(model, blocks: list[dict], layout, batch_size: int = 2, device: str = "cpu") -> dict:
    """Teacher-forced scores of every scored position of ``blocks`` (label != -100 after the shift).

    Returns arrays over those positions: ``target``, ``prev`` (the input token before it), ``logp`` (model
    log-probability of the target) and ``hit`` (for codec targets of codebooks 1..7: the argmax over that codebook's
    1024 ids equals the target; -1 elsewhere).
    """
    xc = layout.xcodec
    collate = Collator(layout.id("<PAD>"))
    out = {k: [] for k in ("target", "prev", "logp", "hit")}
    model.eval()
    for i in range(0, len(blocks), batch_size):
        b = collate(blocks[i : i + batch_size])
        ids, pos = b["input_ids"].to(device), b["position_ids"].to(device)
        hidden = model.model(input_ids=ids, position_ids=pos).last_hidden_state[:, :-1]
        tgt = b["labels"][:, 1:].to(device)
        mask = tgt != IGNORE_INDEX
        h, t, prev = hidden[mask], tgt[mask], ids[:, :-1][mask]
        for s in range(0, h.shape[0], 2048):  # logits in chunks: [n, V] of a big vocabulary is large
            logits = model.lm_head(h[s : s + 2048]).float()
            tt = t[s : s + 2048]
            out["logp"].append(torch.log_softmax(logits, -1).gather(1, tt[:, None])[:, 0].cpu())
            k = (tt - xc.global_offset).div(xc.codebook_size, rounding_mode="floor")
            in_res = (tt >= xc.offset(1)) & (tt < xc.offset(8))
            idx = (xc.global_offset + k.clamp(0, xc.num_codebooks - 1) * xc.codebook_size)[:, None] + torch.arange(
                xc.codebook_size, device=logits.device)  # fmt: skip
            pred = logits.gather(1, idx).argmax(1) + idx[:, 0]
            out["hit"].append(torch.where(in_res, (pred == tt).long(), torch.full_like(tt, -1)).cpu())
        out["target"].append(t.cpu())
        out["prev"].append(prev.cpu())
    return {k: torch.cat(v).numpy() if v else np.zeros(0) for k, v in out.items()}


def _merge_counts(k1: np.ndarray, c1: np.ndarray, k2: np.ndarray, c2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum two (sorted unique keys [N], counts [N]) tables into one."""
    k, inv = np.unique(np.concatenate([k1, k2]), return_inverse=True)
    c = np.zeros(k.size, dtype=np.int64)
    np.add.at(c, inv, np.concatenate([c1, c2]))
    return k, c


def _ngram_counts(docs, V: int, chunk_tokens: int = 1 << 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unigram counts of targets (every token but a document's first) and sorted unique bigram keys + counts.

    Memory is bounded by the distinct bigrams plus ``chunk_tokens`` keys (int64): the keys of every
    ``chunk_tokens`` tokens are counted and merged into the table, never the keys of the whole corpus at once.
    """
    uni = np.zeros(V, dtype=np.int64)
    bk, bc = np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys: list[np.ndarray] = []
    n = 0
    for d in docs:
        d = d.astype(np.int64)
        uni += np.bincount(d[1:], minlength=V)[:V]
        keys.append(d[:-1] * V + d[1:])
        n += keys[-1].size
        if n >= chunk_tokens:  # fold this chunk into the table (bounded memory on a large training set)
            bk, bc = _merge_counts(bk, bc, *np.unique(np.concatenate(keys), return_counts=True))
            keys, n = [], 0
    if keys:
        bk, bc = _merge_counts(bk, bc, *np.unique(np.concatenate(keys), return_counts=True))
    return uni, bk, bc


def ngram_scores(uni: np.ndarray, bkeys: np.ndarray, bcounts: np.ndarray, prev: np.ndarray, target: np.ndarray,
                 layout) -> dict:  # fmt: skip
    """Cross-entropy (nats/token) of an add-k unigram and an interpolated bigram on the held-out pairs, with k and
    the interpolation weight chosen on the held-out set itself (optimistic baselines), plus their codebook 1..7
    accuracies (most frequent code of the target's codebook, overall / after the previous token)."""
    V = uni.size
    N = uni.sum()
    ctx = np.zeros(V, dtype=np.int64)
    np.add.at(ctx, bkeys // V, bcounts)
    q = prev.astype(np.int64) * V + target
    c_ab = np.zeros(q.size, dtype=np.int64)
    if bkeys.size:
        j = np.searchsorted(bkeys, q).clip(0, bkeys.size - 1)
        c_ab = np.where(bkeys[j] == q, bcounts[j], 0)
    c_a = ctx[prev]
    best_u = min(((k, -np.mean(np.log((uni[target] + k) / (N + k * V)))) for k in (1e-3, 1e-2, 0.1, 1.0)), key=lambda x: x[1])
    pu = (uni[target] + best_u[0]) / (N + best_u[0] * V)
    ml = np.where(c_a > 0, c_ab / np.maximum(c_a, 1), 0.0)
    best_b = min(((lam, -np.mean(np.log(np.where(c_a > 0, lam * ml + (1 - lam) * pu, pu))))
                  for lam in (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)), key=lambda x: x[1])  # fmt: skip
    out = {"unigram": {"ce": float(best_u[1]), "add_k": best_u[0]},
           "bigram": {"ce": float(best_b[1]), "lambda": best_b[0]}}  # fmt: skip
    # codebook 1..7 accuracy of the n-gram argmax restricted to the target's codebook
    xc = layout.xcodec
    res = (target >= xc.offset(1)) & (target < xc.offset(8))
    if res.any():
        kb = (target - xc.global_offset) // xc.codebook_size
        uni_best = np.array([xc.offset(k) + np.argmax(uni[xc.offset(k) : xc.offset(k) + xc.codebook_size])
                             for k in range(xc.num_codebooks)])  # fmt: skip
        a_k, b_k = bkeys // V, bkeys % V
        kk = (b_k - xc.global_offset) // xc.codebook_size
        okb = (b_k >= xc.global_offset) & (b_k < xc.end)
        # most frequent next id per (previous id, codebook of the next id)
        sel = np.nonzero(okb)[0]
        order = sel[np.lexsort((-bcounts[sel], kk[sel], a_k[sel]))]
        pair = a_k[order] * xc.num_codebooks + kk[order]
        first = np.ones(order.size, dtype=bool)
        first[1:] = pair[1:] != pair[:-1]
        table_k, table_v = pair[first], b_k[order][first]
        qk = prev[res].astype(np.int64) * xc.num_codebooks + kb[res]
        big = uni_best[kb[res]]  # unseen previous id: fall back to the unigram choice
        if table_k.size:
            jj = np.searchsorted(table_k, qk).clip(0, table_k.size - 1)
            big = np.where(table_k[jj] == qk, table_v[jj], big)
        out["unigram"]["acc_cb1_7"] = float(np.mean(uni_best[kb[res]] == target[res]))
        out["bigram"]["acc_cb1_7"] = float(np.mean(big == target[res]))
    return out


def evaluate_lm(folder: str | Path, cfg: LMTrainConfig, data: PreparedData, builder: DocumentBuilder,
                device: str | None = None) -> dict:  # fmt: skip
    """Held-out cross-entropy of the LM folder on ``cfg.data.eval_splits`` (and stage-2 codebook 1..7 accuracy given
    codebook 0, teacher-forced), next to unigram/bigram models fitted on the training documents of the same modes."""
    from yue.lm.model import load_lm

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    attn = "packed_sdpa" if cfg.data.doc_masking else "sdpa"
    if attn == "packed_sdpa":
        from musiccore.attention import register_packed_attention

        register_packed_attention()
    model, tok = load_lm(folder, tokenizer=data.tok, device=device, attn_implementation=attn)
    layout = tok.layout
    modes = cfg.eval_modes()
    train_songs = data.split(cfg.data.train_split, cfg.data.max_songs)
    # baselines from at most BASELINE_MAX_SONGS evenly spaced training songs: exact on small sets, minutes instead of
    # hours (rebuilding every document) after a cluster-sized run
    fit_songs = train_songs[:: max(1, math.ceil(len(train_songs) / BASELINE_MAX_SONGS))]
    uni, bk, bc = _ngram_counts(training_documents(builder, fit_songs, modes), layout.vocab_size)
    xc = layout.xcodec
    res: dict = {"task": cfg.task, "modes": modes, "train_songs": len(train_songs), "baseline_songs": len(fit_songs),
                 "train_tokens": int(uni.sum()),
                 "baselines": "unigram (add-k) and interpolated bigram fitted on the training documents of the same "
                              "modes (train_tokens: of the baseline_songs, at most BASELINE_MAX_SONGS evenly spaced); "
                              "k and the interpolation weight picked on the held-out set (optimistic)",
                 "splits": {}}  # fmt: skip
    every = {k: [] for k in ("target", "prev", "logp", "hit")}
    for split in list(cfg.data.eval_splits) + ["all"]:
        if split == "all":
            if len(cfg.data.eval_splits) < 2 or not every["target"]:  # one split, or no held-out song at all
                break
            sc = {k: np.concatenate(v) for k, v in every.items()}
            n_songs = sum(len(data.split(s)) for s in cfg.data.eval_splits)
        else:
            songs = data.split(split)
            blocks = eval_blocks(builder, songs, modes, cfg.eval.max_blocks)
            if not blocks:
                continue
            sc = score_blocks(model, blocks, layout, cfg.eval.batch_size, device)
            for k in every:
                every[k].append(sc[k])
            n_songs = len(songs)
        if sc["target"].size == 0:
            continue
        codec = (sc["target"] >= xc.global_offset) & (sc["target"] < xc.end)
        r = {"songs": n_songs, "tokens": int(sc["target"].size), "model": {"ce": float(-sc["logp"].mean())}}
        if codec.any():
            r["model"]["ce_codec"] = float(-sc["logp"][codec].mean())
        r.update(ngram_scores(uni, bk, bc, sc["prev"], sc["target"], layout))
        if codec.any():
            sub = ngram_scores(uni, bk, bc, sc["prev"][codec], sc["target"][codec], layout)
            r["unigram"]["ce_codec"], r["bigram"]["ce_codec"] = sub["unigram"]["ce"], sub["bigram"]["ce"]
        res17 = (sc["target"] >= xc.offset(1)) & (sc["target"] < xc.offset(8))
        if res17.any():  # stage 2's task proper: the residual codebooks 1..7
            r["model"]["ce_cb1_7"] = float(-sc["logp"][res17].mean())
            sub = ngram_scores(uni, bk, bc, sc["prev"][res17], sc["target"][res17], layout)
            r["unigram"]["ce_cb1_7"], r["bigram"]["ce_cb1_7"] = sub["unigram"]["ce"], sub["bigram"]["ce"]
        hits = sc["hit"][sc["hit"] >= 0]
        if hits.size:
            r["model"]["acc_cb1_7"] = float(hits.mean())
            kb = (sc["target"] - xc.global_offset) // xc.codebook_size
            r["model"]["acc_per_codebook"] = {int(k): float(sc["hit"][(kb == k) & (sc["hit"] >= 0)].mean())
                                              for k in range(1, 8) if ((kb == k) & (sc["hit"] >= 0)).any()}  # fmt: skip
        res["splits"][split] = r
        log.info("eval %s (%d songs, %d tokens): model ce %.3f | unigram %.3f | bigram %.3f%s", split, n_songs,
                 r["tokens"], r["model"]["ce"], r["unigram"]["ce"], r["bigram"]["ce"],
                 (f" | acc cb1-7 model {r['model']['acc_cb1_7']:.3f} unigram {r['unigram']['acc_cb1_7']:.3f} "
                  f"bigram {r['bigram']['acc_cb1_7']:.3f}") if "acc_cb1_7" in r["model"] else "")  # fmt: skip
    return res
