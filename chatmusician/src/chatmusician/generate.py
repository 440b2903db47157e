"""Loading a trained model and generating replies with the released template and sampling defaults."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .config import GenerateConfig
from .tokenization import encode_prompts, load_tokenizer, prompt

log = logging.getLogger(__name__)


def adapter_base(path: Path) -> str:
    """Base model folder of a LoRA adapter folder (our ``chatmusician.json``, else peft's adapter_config)."""
    meta = path / "chatmusician.json"
    if meta.exists():
        base = json.loads(meta.read_text()).get("base")
        if base:
            return base
    return json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else as torch spells it (``cuda:1``, ``cpu``)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device on this machine")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 on a GPU that supports it (fp16 on older GPUs), fp32 on CPU; or float32/bfloat16/float16."""
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r} (auto, float32, bfloat16, float16)")
    return names[dtype]


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, merge: bool = False,
               adapter: str | Path | None = None, device: str | torch.device = "cpu"):
    """(model, tokenizer) from a local folder: a full HF checkpoint, or a LoRA adapter on its base; ``adapter``
    applies a LoRA adapter folder on top of the full checkpoint ``path``. The model is moved to ``device``.

    Raises:
        FileNotFoundError: the folder does not exist or holds neither ``config.json`` nor ``adapter_config.json``.
        ModelFolderError: (a ``ValueError``) a file in the folder is invalid: wrong types in ``config.json``, not a
            causal LM, truncated weights, no tokenizer, a tokenizer larger than the embedding; the message names the
            file and field (:mod:`chatmusician.model_folder`).
    """
    from .model_folder import ModelFolderError, check_model_folder, read_json_object

    path = Path(path)
    check_model_folder(path)  # small files only: one clear error before transformers is asked to load anything
    if adapter is not None:
        if not (Path(adapter) / "adapter_config.json").exists():
            raise FileNotFoundError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
        read_json_object(Path(adapter) / "adapter_config.json")
    try:
        model, tok = _load(path, dtype, merge)
    except (OSError, RuntimeError, TypeError, ValueError) as e:
        if isinstance(e, (ModelFolderError, FileNotFoundError)):
            raise
        # what the checks above cannot see (e.g. a tensor shape that disagrees with config.json): the folder named
        raise ModelFolderError(f"{path}: cannot load the model ({type(e).__name__}: {str(e).splitlines()[0][:300]})") from e
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
        if merge:
            model = model.merge_and_unload()
        model.eval()
    return model.to(device), tok


def _load(path: Path, dtype: torch.dtype, merge: bool):
    from transformers import AutoModelForCausalLM

    from .tokenization import register_packed_attention

    register_packed_attention()  # a model trained with attn_implementation=packed_sdpa keeps it in its config
    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        base_dir = adapter_base(path)
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, trust_remote_code=False)
        model = PeftModel.from_pretrained(base, str(path))
        if merge:
            model = model.merge_and_unload()
        tok_dir = path if (path / "tokenizer_config.json").exists() else Path(base_dir)
    elif (path / "config.json").exists():
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False,
                                                           output_loading_info=True)
        if info.get("missing_keys"):  # weights of another architecture: transformers would leave them random
            from .model_folder import ModelFolderError

            miss = sorted(info["missing_keys"])
            raise ModelFolderError(f"{path}: the weights do not fit config.json ({type(model).__name__}): "
                                   f"{len(miss)} tensors missing, e.g. {', '.join(miss[:3])}")
        tok_dir = path
    else:
        raise FileNotFoundError(f"{path}: not a model folder (no config.json or adapter_config.json)")
    model.eval()
    return model, load_tokenizer(str(tok_dir))


@torch.no_grad()
def generate(model, tokenizer, user_texts: list[str], gen: GenerateConfig, batch_size: int = 16, seed: int = 0,
             max_new_tokens: int | None = None, histories: list[list[tuple[str, str]]] | None = None,
             constraints: list | None = None) -> list[str]:
    """Replies to ``user_texts`` (one turn each, or after ``histories``): prompt ``Human: {x} </s> Assistant: ``,
    no BOS, left padding, released sampling (temperature 0.2, top-k 40, top-p 0.9, repetition penalty 1.1); only new
    tokens decoded. ``constraints``: one :class:`chatmusician.constrained.AbcAutomaton` per text (constrained
    decoding)."""
    return [r["reply"] for r in generate_detailed(model, tokenizer, user_texts, gen, batch_size, seed, max_new_tokens,
                                                  histories, constraints)]


@torch.no_grad()
def generate_detailed(model, tokenizer, user_texts: list[str], gen: GenerateConfig, batch_size: int = 16,
                      seed: int = 0, max_new_tokens: int | None = None,
                      histories: list[list[tuple[str, str]]] | None = None, constraints: list | None = None) -> list[dict]:
    """Like :func:`generate`; one dict per text: ``reply``, ``new_tokens``, ``hit_budget`` (stopped by
    max_new_tokens, not EOS) and, when constrained, ``forced`` (the budget ran out and the tune was closed).
    A batch whose prompts + ``max_new_tokens`` exceed the model context gets a smaller budget (logged); ``chat``
    refuses such a prompt before generating instead (:func:`chatmusician.chat.check_context`)."""
    from transformers import LogitsProcessorList

    torch.manual_seed(seed)
    max_new = max_new_tokens or gen.max_new_tokens
    tokenizer.padding_side = "left"
    histories = histories or [[] for _ in user_texts]
    out: list[dict] = []
    for i in range(0, len(user_texts), batch_size):
        texts = [prompt(u, h) for u, h in zip(user_texts[i : i + batch_size], histories[i : i + batch_size])]
        enc = encode_prompts(tokenizer, texts, padding_side="left")  # the training data's ids (spec pitfall 2)
        enc = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        budget = max_new
        ctx = getattr(model.config, "max_position_embeddings", None)
        if ctx and enc["input_ids"].shape[1] + budget > ctx:  # never generate past the context: cap and say so
            budget = max(1, ctx - enc["input_ids"].shape[1])
            log.warning("prompts of %d tokens + max_new_tokens %d exceed the context %d: capped to %d new tokens",
                        enc["input_ids"].shape[1], max_new, ctx, budget)
        procs, min_new = None, min(gen.min_new_tokens, budget)
        if constraints is not None:
            from .constrained import AbcLogitsProcessor

            proc = AbcLogitsProcessor(tokenizer, constraints[i : i + batch_size], budget)
            procs, min_new = LogitsProcessorList([proc]), 0  # the grammar decides when the tune may end
        ids = model.generate(
            **enc, do_sample=gen.do_sample, temperature=gen.temperature, top_k=gen.top_k, top_p=gen.top_p,
            repetition_penalty=gen.repetition_penalty, max_new_tokens=budget, logits_processor=procs,
            min_new_tokens=min_new, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
        )
        new = ids[:, enc["input_ids"].shape[1] :]
        for j, row in enumerate(new):
            ended = bool((row == tokenizer.eos_token_id).any())
            n_new = int((row != tokenizer.pad_token_id).sum()) if tokenizer.pad_token_id != tokenizer.eos_token_id \
                else len(row)
            rec = {"reply": tokenizer.decode(row, skip_special_tokens=True), "new_tokens": n_new, "hit_budget": not ended}
            if constraints is not None:
                rec["forced"] = proc.forced[j] is not None
            out.append(rec)
    return out
