"""Typed run config of ChatMusician: one dataclass tree, YAML deltas in ``configs/``, ``key=value`` overrides.

Load with ``musiccore.config.load_config(ChatMusicianConfig, "configs/tiny.yaml", ["optim.lr=1e-3"])``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class RunConfig:
    name: str = "chatmusician"  # run name; the folder is <MUSIC_RUNS_DIR>/chatmusician/<name>-<config hash>
    dir: str = ""  # explicit run folder (overrides the name/hash rule)
    fresh: bool = False  # clear the run folder before starting instead of resuming
    seed: int = 1234  # released seed


@dataclass
class ModelConfig:
    """The causal LM. ``init=pretrained`` loads ``name_or_path`` (any local HF causal-LM folder, e.g. LLaMA2-7B or
    ChatMusician-Base); ``init=scratch`` builds a random ``LlamaForCausalLM`` from the size fields below."""

    init: str = "pretrained"  # pretrained | scratch
    name_or_path: str = ""  # local HF folder (init=pretrained); never downloaded
    tokenizer: str = ""  # tokenizer folder; "" = name_or_path, or <data.out_dir>/tokenizer for scratch models
    hidden_size: int = 4096  # scratch model sizes (defaults: LLaMA2-7B)
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    intermediate_size: int = 11008
    max_position_embeddings: int = 2048  # the released ChatMusician context
    rms_norm_eps: float = 1e-5
    # auto: with pack.enabled, flash_attention_2 on CUDA when flash-attn is installed, else packed_sdpa (per-sample
    # attention in packed rows); without packing, sdpa. Or name one: sdpa | eager | packed_sdpa | flash_attention_2
    attn_implementation: str = "auto"
    dtype: str = "auto"  # weights dtype when loading: auto (follows trainer.precision) | float32 | bfloat16 | float16
    gradient_checkpointing: bool = False  # released: on


@dataclass
class TokenizerConfig:
    """The small BPE trained by ``chatmusician data`` for scratch models (ABC-friendly: whitespace isolated)."""

    train: bool = False  # train a tokenizer on the corpus into <data.out_dir>/tokenizer
    vocab_size: int = 512


@dataclass
class DataConfig:
    """Corpus building (``chatmusician data``, run once, e.g. as its own Slurm job) and what training opens.

    Training only opens ``<out_dir>`` (memory-mapped) and refuses a missing or stale one (fingerprint of these
    fields, the tokenizer and ``pack.length``) with the ``chatmusician data`` command that builds it."""

    stage: str = "sft"  # sft | pretrain: which corpus training uses (both are built)
    out_dir: str = "runs/data/chatmusician"  # built corpora (relative: to the launch folder; runs/ is git-ignored): <out_dir>/{sft,pretrain}/{tokenized,packed} (arrow) + {train,valid}.jsonl, report.json
    tunes: str = "kit"  # kit (musiccore.data tunes manifest) | music21 (its bundled ABC corpus) | none (released data only)
    kit_root: str = ""  # data kit root ("" = MUSIC_DATA_DIR)
    music21_collections: list[str] = field(default_factory=lambda: ["ryansMammoth", "oneills1850", "airdsAirs"])
    max_tunes: int = 0  # cap on input tunes (0 = all)
    musicpile_dir: str = ""  # local folder with MusicPile parquet/jsonl (pretraining text)
    musicpile_sft_dir: str = ""  # local folder with MusicPile-sft parquet/jsonl (SFT rows)
    text_files: list[str] = field(default_factory=list)  # extra music text (.txt paragraphs or jsonl with "text")
    # pretraining with kit tunes: target share of characters that are kit ABC, reached by subsampling or repeating the
    # kit's ABC documents; text (MusicPile, text_files) is never subsampled. 0 = no kit ABC, 1 = kit ABC only
    abc_text_ratio: float = 0.5
    tasks: list[str] = field(
        default_factory=lambda: ["metadata", "continuation", "chords", "transpose", "qa_key", "qa_meter", "qa_length"]
    )
    transpose_semitones: list[int] = field(default_factory=lambda: [2, -3])
    continuation_bars: int = 4  # bars given as the prompt of the continuation task
    max_bars: int = 0  # crop every tune to its first N bars (0 = whole tune); the tiny config uses short tunes
    prompt_bars: bool = False  # metadata prompts also say "Bars: N" (the tune's bar count; not in the released data)
    strip_annotations: bool = False  # drop fingerings/"^text"/!decorations! (chord symbols kept)
    valid_fraction: float = 0.05  # held-out share: of kit tunes (by tune) and of released rows/documents (by text hash); 0 = none
    max_src_len: int = 1536  # released source truncation
    max_len: int = 2048  # released max_len (source + target)
    overlong: str = "drop"  # drop | truncate (released): SFT samples longer than max_len (counted either way)
    seed: int = 1234  # shuffle of documents/samples before packing and of the kit ABC selection
    num_proc: int = 0  # worker processes of the batched tokenise/pack maps (0 = the CPUs available, at most 16)


@dataclass
class PackConfig:
    enabled: bool = False  # pack several samples per row; attention stays inside each sample (position ids)
    length: int = 2048  # tokens per packed row


@dataclass
class LoraConfig:
    enabled: bool = True  # false = full fine-tuning
    r: int = 64
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj", "gate_proj", "up_proj"]
    )
    modules_to_save: list[str] = field(default_factory=list)  # e.g. [embed_tokens, lm_head] (README claim, see spec 3.3)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    schedule: str = "released"  # released (log warmup 0.1*lr->lr, linear decay to 0.1*lr) | cosine | constant
    warmup_ratio: float = 0.1  # released script: 0.1 (README says 5%)
    min_lr_ratio: float = 0.1  # released: warmup_min_lr = 0.1 * lr, decay floor


@dataclass
class TrainerConfig:
    epochs: float = 2.0
    max_steps: int = -1  # > 0 overrides epochs
    micro_batch: int = 1  # per device
    grad_accum: int = 1
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    save_steps: int = 2000
    save_total_limit: int = 3
    log_every: int = 50
    eval_steps: int = 0  # 0 = no periodic eval
    num_workers: int = 2
    tensorboard: bool = True
    cpu_threads: int = 0  # torch intra-op threads on CPU (0 = torch default); 1 avoids thread thrash on shared cores


@dataclass
class DeepSpeedConfig:
    """Rendered into the DeepSpeed dict at startup and saved as <run>/deepspeed.json.

    Defaults are the released values: ZeRO-2 as ``ds_zero2_no_offload.json`` (it sets only the stage, so DeepSpeed's
    defaults apply: buckets 5e8, no overlap), the ``stage3_*``/``sub_group_size`` fields as ``ds_zero3_offload.json``.
    The ZeRO-3 file also sets ``reduce_bucket_size`` 1e7, a field shared with ZeRO-2: the stage-3 recipe
    (``configs/sft_7b_full.yaml``) sets it.
    """

    enabled: bool = False
    stage: int = 2  # 2 (released default ds_zero2_no_offload) | 3 (ds_zero3_offload)
    offload_optimizer: str = "none"  # none | cpu (released ZeRO-3 file: "auto"; its name says offload)
    offload_param: str = "none"  # none | cpu (stage 3 only)
    # overlap gradient reduction with backward; null = DeepSpeed's default for the stage (off at 2, on at 3: released)
    overlap_comm: Optional[bool] = None
    allgather_bucket_size: float = 5e8  # ZeRO-2 (DeepSpeed default, released)
    reduce_bucket_size: float = 5e8  # ZeRO-2: 5e8 (DeepSpeed default, released); ZeRO-3 released: 1e7
    stage3_max_live_parameters: float = 1e9  # released ZeRO-3
    stage3_max_reuse_distance: float = 1e9  # released ZeRO-3
    stage3_prefetch_bucket_size: float = 1e7  # released ZeRO-3
    stage3_param_persistence_threshold: float = 1e5  # released ZeRO-3 (parameters below it stay unpartitioned)
    sub_group_size: float = 1e9  # released ZeRO-3 (optimizer step granularity)
    loss_scale_window: int = 100  # fp16 dynamic loss scale window (released)


@dataclass
class GenerateConfig:
    """Released generation defaults (predict.py)."""

    temperature: float = 0.2
    top_k: int = 40
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    max_new_tokens: int = 1536
    min_new_tokens: int = 10
    do_sample: bool = True


@dataclass
class EvalConfig:
    num_prompts: int = 50  # metadata prompts (from valid tunes) for the parse/key/meter adherence eval
    batch_size: int = 25


@dataclass
class ChatMusicianConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pack: PackConfig = field(default_factory=PackConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        checks = [
            (self.model.init in {"pretrained", "scratch"}, f"model.init must be pretrained|scratch, got {self.model.init}"),
            (self.data.stage in {"sft", "pretrain"}, f"data.stage must be sft|pretrain, got {self.data.stage}"),
            (self.data.tunes in {"kit", "music21", "none"}, f"data.tunes must be kit|music21|none, got {self.data.tunes}"),
            (self.data.overlong in {"drop", "truncate"}, f"data.overlong must be drop|truncate, got {self.data.overlong}"),
            (0 < self.data.max_src_len < self.data.max_len, "data.max_src_len must be in (0, data.max_len)"),
            (0.0 <= self.data.abc_text_ratio <= 1.0, "data.abc_text_ratio must be in [0, 1]"),
            (0.0 <= self.data.valid_fraction < 1.0, "data.valid_fraction must be in [0, 1)"),
            (self.data.num_proc >= 0, "data.num_proc must be >= 0 (0 = the CPUs available)"),
            (self.optim.schedule in {"released", "cosine", "constant"}, f"optim.schedule: unknown {self.optim.schedule}"),
            (self.trainer.precision in {"auto", "fp32", "bf16", "fp16"}, f"trainer.precision: unknown {self.trainer.precision}"),
            (self.deepspeed.stage in {2, 3}, "deepspeed.stage must be 2 or 3"),
            (not self.pack.enabled or self.pack.length >= self.data.max_len, "pack.length must be >= data.max_len"),
            (self.deepspeed.offload_optimizer in {"none", "cpu"}, "deepspeed.offload_optimizer must be none|cpu"),
            (self.deepspeed.offload_param in {"none", "cpu"}, "deepspeed.offload_param must be none|cpu"),
            (not (self.deepspeed.offload_param == "cpu" and self.deepspeed.stage != 3), "offload_param needs stage 3"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
