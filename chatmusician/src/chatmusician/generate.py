"""Loading a trained model and generating replies with the released template and sampling defaults."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .config import GenerateConfig
from .tokenization import load_tokenizer, prompt

log = logging.getLogger(__name__)


def adapter_base(path: Path) -> str:
    """Base model folder of a LoRA adapter folder (our ``chatmusician.json``, else peft's adapter_config)."""
    meta = path / "chatmusician.json"
    if meta.exists():
        base = json.loads(meta.read_text()).get("base")
        if base:
            return base
    return json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, merge: bool = False):
    """(model, tokenizer) from a local folder: a full HF checkpoint, or a LoRA adapter on its base.

    Raises:
        FileNotFoundError: the folder holds neither ``config.json`` nor ``adapter_config.json``.
    """
    from transformers import AutoModelForCausalLM

    from .tokenization import register_packed_attention

    register_packed_attention()  # a model trained with attn_implementation=packed_sdpa keeps it in its config
    path = Path(path)
    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        base_dir = adapter_base(path)
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, trust_remote_code=False)
        model = PeftModel.from_pretrained(base, str(path))
        if merge:
            model = model.merge_and_unload()
        tok_dir = path if (path / "tokenizer_config.json").exists() else Path(base_dir)
    elif (path / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False)
        tok_dir = path
    else:
        raise FileNotFoundError(f"{path}: not a model folder (no config.json or adapter_config.json)")
    model.eval()
    return model, load_tokenizer(str(tok_dir))


@torch.no_grad()
def generate(model, tokenizer, user_texts: list[str], gen: GenerateConfig, batch_size: int = 16, seed: int = 0,
             max_new_tokens: int | None = None) -> list[str]:
    """Replies to ``user_texts`` (one turn each): prompt ``Human: {x} </s> Assistant: ``, no BOS, left padding,
    released sampling (temperature 0.2, top-k 40, top-p 0.9, repetition penalty 1.1); only new tokens decoded."""
    torch.manual_seed(seed)
    max_new = max_new_tokens or gen.max_new_tokens
    tokenizer.padding_side = "left"
    out: list[str] = []
    for i in range(0, len(user_texts), batch_size):
        texts = [prompt(u) for u in user_texts[i : i + batch_size]]
        enc = tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True)
        enc = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        ids = model.generate(
            **enc, do_sample=gen.do_sample, temperature=gen.temperature, top_k=gen.top_k, top_p=gen.top_p,
            repetition_penalty=gen.repetition_penalty, max_new_tokens=max_new,
            min_new_tokens=min(gen.min_new_tokens, max_new), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
        )
        new = ids[:, enc["input_ids"].shape[1] :]
        out += tokenizer.batch_decode(new, skip_special_tokens=True)
    return out
