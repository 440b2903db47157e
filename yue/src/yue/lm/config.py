"""Typed config of stage-1 / stage-2 LM training (``yue train --config configs/tiny_stage1.yaml``).

One dataclass tree; YAML files in ``configs/`` hold deltas (``_base_`` includes allowed) and ``key=value`` overrides
come last (:func:`musiccore.config.load_config`). The resolved config is saved as ``<run>/config.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STAGE1_MODES = ("dual", "mix", "vocal", "inst")  # dual-track (released), single-track mixture, vocal-only, inst-only
STAGE2_MODES = ("vocal", "inst", "mix")  # stage-2 documents per stem and for the mix
CODE_KEYS = {"vocal": "vocal", "inst": "accompaniment", "mix": "mix"}  # mode -> key in codes/<id>.npz


@dataclass
class RunConfig:
    name: str = ""  # run name ("" = "yue-<task>"); the folder is <MUSIC_RUNS_DIR>/yue/<name>-<config hash>
    dir: str = ""  # explicit run folder (overrides the name/hash rule)
    fresh: bool = False  # clear the run folder before starting instead of resuming
    seed: int = 1234  # released finetune seed


@dataclass
class ModelConfig:
    """The LM: a random ``LlamaForCausalLM`` of a :data:`yue.lm.model.PRESETS` shape, or ``init_from`` a local folder."""

    preset: str = "tiny_stage1"  # tiny_stage1 | tiny_stage2 | stage1_7b | stage2_1b (ignored with init_from)
    init_from: str = ""  # local LM folder (released YuE-s1/s2 or ours); vocab and special ids checked first
    vocab_size: int = 0  # embedding rows of a preset model (0 = the tokenizer layout's model_vocab_size)
    attn_implementation: str = "auto"  # auto (packed_sdpa with doc masking on CPU, flash-attn on CUDA if present, else sdpa) | sdpa | eager | packed_sdpa | flash_attention_2
    gradient_checkpointing: bool = False  # recompute activations in backward (7B: on)


@dataclass
class Phase:
    """One curriculum phase: from optimizer step ``start_step`` on, these weights / ICL share apply."""

    start_step: int = 0
    weights: dict[str, float] = field(default_factory=dict)  # mode -> weight; empty = keep the previous weights
    icl_share: float = -1.0  # share of stage-1 documents with an ICL reference; < 0 = keep the previous share


@dataclass
class ModesConfig:
    """Track modes and their mixture (stage 1: dual|mix|vocal|inst; stage 2: vocal|inst|mix) and the ICL share.

    Each document draws its mode with probability proportional to the weights in force at the step it is trained
    at; ``schedule`` changes them by step (e.g. ICL share 0 until step N: the paper's delayed ICL activation).
    """

    weights: dict[str, float] = field(default_factory=dict)  # {} = {dual: 1} (stage 1) / every stem equally (stage 2)
    icl_share: float = 0.0  # stage 1 only
    schedule: list[Phase] = field(default_factory=list)
    # ICL reference length in seconds (spec 2.3: normal, mean 30, variance 3, truncated to [20, 40]); halved while
    # longer than the song's lyric span; the start prefers a chorus segment
    icl_mean_s: float = 30.0
    icl_std_s: float = 1.7320508  # sqrt(3)
    icl_min_s: float = 20.0
    icl_max_s: float = 40.0


@dataclass
class DataConfig:
    """What training reads: a ``yue prepare`` folder (manifest.jsonl, codes/, tokenizer/)."""

    prepared: str = ""  # the prepared folder (relative: to the launch folder); required
    tokenizer: str = ""  # tokenizer.model ("" = <prepared>/tokenizer/, else report.json's, else the released one)
    block_size: int = 8192  # tokens per packed block (released finetune: 8192)
    doc_masking: bool = True  # position ids restart and attention stays inside each document of a block
    train_split: str = "train"
    eval_splits: list[str] = field(default_factory=lambda: ["valid", "test"])
    max_songs: int = 0  # cap on training songs (0 = all)
    stage2_chunk_frames: int = 300  # stage-2 chunk length (released: 300 frames = 6 s)
    stage2_min_unique: int = 25  # skip stage-2 chunks whose codebook 0 has fewer distinct codes (released)
    fps: int = 50  # codec frames per second


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 64  # released finetune recipe (spec 5.3): r 64, alpha 32, dropout 0.1, q/k/v/o
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class OptimConfig:
    lr: float = 5e-4  # released finetune defaults (core/arguments.py)
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    schedule: str = "cosine"  # cosine | linear | constant_with_warmup (transformers scheduler names)
    warmup_ratio: float = 0.03


@dataclass
class TrainerConfig:
    max_steps: int = 150  # optimizer steps (the data stream is endless: epochs over the songs)
    micro_batch: int = 1  # blocks per device per micro step (released: 1)
    grad_accum: int = 1
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    save_steps: int = 50
    save_total_limit: int = 3
    log_every: int = 10
    cpu_threads: int = 1  # torch intra-op threads on CPU (0 = torch default)
    tensorboard: bool = True


@dataclass
class DeepSpeedConfig:
    """Rendered into ``<run>/deepspeed.json`` (ZeRO-2 mirrors the released ds_config_zero2.json, spec 5.3)."""

    enabled: bool = False
    stage: int = 2  # 2 | 3
    offload_optimizer: str = "none"  # none | cpu
    offload_param: str = "none"  # none | cpu (stage 3 only)
    overlap_comm: bool = False  # released zero2: false
    bucket_size: float = 5e8  # allgather / reduce bucket sizes


@dataclass
class EvalConfig:
    enabled: bool = True  # held-out evaluation of <run>/final into <run>/eval.json
    modes: list[str] = field(default_factory=list)  # modes scored ([] = dual for stage 1, all stems for stage 2)
    max_blocks: int = 64  # cap on held-out blocks per split
    batch_size: int = 2


@dataclass
class LMTrainConfig:
    task: str = "stage1"  # stage1 | stage2 (task: codec is the codec trainer's config)
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    modes: ModesConfig = field(default_factory=ModesConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def mode_names(self) -> tuple[str, ...]:
        return STAGE1_MODES if self.task == "stage1" else STAGE2_MODES

    def base_weights(self) -> dict[str, float]:
        """Mode weights at step 0 (the documented default when ``modes.weights`` is empty)."""
        if self.modes.weights:
            return dict(self.modes.weights)
        return {"dual": 1.0} if self.task == "stage1" else {m: 1.0 for m in STAGE2_MODES}

    def eval_modes(self) -> list[str]:
        return list(self.eval.modes) or (["dual"] if self.task == "stage1" else list(STAGE2_MODES))

    def __post_init__(self):
        known = STAGE1_MODES if self.task == "stage1" else STAGE2_MODES
        checks = [
            (self.task in {"stage1", "stage2"}, f"task must be stage1|stage2 here, got {self.task!r}"),
            (self.trainer.max_steps > 0, "trainer.max_steps must be > 0 (the data stream has no end)"),
            (self.data.block_size >= 16, f"data.block_size must be >= 16, got {self.data.block_size}"),
            (self.trainer.precision in {"auto", "fp32", "bf16", "fp16"}, f"trainer.precision: unknown {self.trainer.precision}"),
            (self.deepspeed.stage in {2, 3}, "deepspeed.stage must be 2 or 3"),
            (self.deepspeed.offload_optimizer in {"none", "cpu"}, "deepspeed.offload_optimizer must be none|cpu"),
            (self.deepspeed.offload_param in {"none", "cpu"}, "deepspeed.offload_param must be none|cpu"),
            (not (self.deepspeed.offload_param == "cpu" and self.deepspeed.stage != 3), "offload_param needs stage 3"),
            (self.optim.schedule in {"cosine", "linear", "constant_with_warmup"}, f"optim.schedule: unknown {self.optim.schedule}"),
            (0.0 <= self.modes.icl_share <= 1.0, "modes.icl_share must be in [0, 1]"),
            (self.task == "stage1" or self.modes.icl_share == 0.0, "modes.icl_share: ICL exists in stage 1 only"),
            (0 < self.modes.icl_min_s <= self.modes.icl_max_s, "modes.icl_min_s must be in (0, icl_max_s]"),
            (self.data.stage2_chunk_frames > 0, "data.stage2_chunk_frames must be > 0"),
            (not (self.lora.enabled and self.deepspeed.enabled and self.deepspeed.stage == 3),
             "lora.enabled with deepspeed.stage 3 is not supported (the released LoRA recipe uses ZeRO-2)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        phases = [("modes.weights", self.modes.weights)] + [
            (f"modes.schedule[{i}].weights", p.weights) for i, p in enumerate(self.modes.schedule)]  # fmt: skip
        for where, w in phases:
            bad = sorted(set(w) - set(known))
            if bad:
                raise ValueError(f"{where}: unknown mode(s) {bad} for {self.task} (known: {', '.join(known)})")
            if any(v < 0 for v in w.values()):
                raise ValueError(f"{where}: weights must be >= 0, got {dict(w)}")
        if self.modes.weights and not any(v > 0 for v in self.modes.weights.values()):
            raise ValueError(f"modes.weights: no mode has a positive weight ({dict(self.modes.weights)})")
        for i, p in enumerate(self.modes.schedule):
            if p.weights and not any(v > 0 for v in p.weights.values()):
                raise ValueError(f"modes.schedule[{i}].weights: no mode has a positive weight")
            if p.icl_share > 1.0 or (p.icl_share > 0 and self.task != "stage1"):
                raise ValueError(f"modes.schedule[{i}].icl_share must be <= 1 (and stage 1 only)")
        bad = sorted(set(self.eval.modes) - set(known))
        if bad:
            raise ValueError(f"eval.modes: unknown mode(s) {bad} for {self.task} (known: {', '.join(known)})")


__all__ = ["LMTrainConfig", "RunConfig", "ModelConfig", "Phase", "ModesConfig", "DataConfig", "LoraConfig",
           "OptimConfig", "TrainerConfig", "DeepSpeedConfig", "EvalConfig", "STAGE1_MODES", "STAGE2_MODES", "CODE_KEYS"]


def config_task(path, overrides=()) -> str:
    """The ``task`` a config file (with its ``_base_`` chain) and ``task=...`` overrides select (default codec)."""
    from pathlib import Path

    from musiccore.config import _read_yaml

    task = _read_yaml(Path(path)).get("task", "codec")
    for ov in overrides:
        if ov.startswith("task="):
            task = ov.split("=", 1)[1].strip()
    return str(task)


__all__ += ["config_task"]
