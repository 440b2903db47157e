"""Shapes of YuE's LMs and the "LM folder" that training writes and generation reads.

Both stages are plain ``transformers.LlamaForCausalLM`` (released checkpoints load with ``from_pretrained``).

An **LM folder** is a Hugging Face model folder plus the tokenizer it was trained with::

    config.json  model.safetensors  generation_config.json     (LlamaForCausalLM.save_pretrained)
    tokenizer.model  layout.json                               (optional: YuE SentencePiece model + TokenLayout)
    yue_lm.json                                                (optional: {"task": "stage1"|"stage2", ...})

Released checkpoints carry no tokenizer: :func:`load_lm` then takes the one passed in, or the released one
(``$YUE_TOKENIZER`` / the shared assets). The model's ``vocab_size`` must cover every id of the tokenizer's
:class:`~yue.tokenizer.TokenLayout` (:func:`check_vocab`); ids ``>= layout.vocab_size`` (the released padding rows
83738..83967) are never valid and generation masks them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from yue.tokenizer import TokenLayout, YuETokenizer, find_released_tokenizer

__all__ = ["LMShape", "LMLoadError", "PRESETS", "build_lm", "check_vocab", "save_lm", "load_lm"]


class LMLoadError(ValueError):
    """A model folder that is missing, unreadable, not a LLaMA, or whose vocabulary does not fit the tokenizer."""


@dataclass
class LMShape:
    """Architecture of one LM (``transformers.LlamaConfig`` fields under their LLaMA names).

    Attributes:
        hidden_size: model width (released stage 1: 4096).
        num_layers: decoder layers (released stage 1: 32).
        num_heads: attention heads (released stage 1: 32, head_dim 128).
        num_kv_heads: key/value heads; fewer than ``num_heads`` = grouped-query attention (released stage 1: 4).
        intermediate_size: SwiGLU MLP width (released stage 1: 11008).
        max_position_embeddings: context length (released stage 1: 16384).
        rms_norm_eps: RMSNorm epsilon (1e-5).
        rope_theta: RoPE base (10000, no scaling).
        vocab_size: embedding rows; ``None`` = the tokenizer layout's ``model_vocab_size`` (released 83968).
    """

    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 4
    intermediate_size: int = 11008
    max_position_embeddings: int = 16384
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    vocab_size: int | None = None


#: Named shapes. ``stage1_7b`` is the released ``YuE-s1-7B-*`` architecture (spec 5.1). ``stage2_1b`` is a ~1.2B
#: LLaMA for stage 2 (the released s2 config was not read: UNVERIFIED dims; load the real folder with ``init_from``).
PRESETS: dict[str, LMShape] = {
    "tiny_stage1": LMShape(128, 4, 4, 2, 352, 8192),
    "tiny_stage2": LMShape(128, 4, 4, 2, 352, 4096),
    "stage1_7b": LMShape(4096, 32, 32, 4, 11008, 16384),
    "stage2_1b": LMShape(2048, 16, 16, 16, 5632, 8192),
}


def check_vocab(vocab_size: int, layout: TokenLayout, where: str = "model") -> None:
    """Raise :class:`LMLoadError` unless ``vocab_size`` embedding rows hold every valid id of ``layout``."""
    need = layout.vocab_size
    if int(vocab_size) < need:
        raise LMLoadError(
            f"{where}: vocab_size {vocab_size} does not fit the tokenizer layout, which needs {need} ids "
            f"(codec ids up to {layout.xcodec.end - 1}, special/wrapper ids up to {need - 1})"
        )


def build_lm(shape: LMShape | str, layout: TokenLayout, attn_implementation: str = "sdpa", seed: int | None = None):
    """A randomly initialised ``LlamaForCausalLM`` of ``shape`` for ``layout`` (untied embeddings, no biases)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if isinstance(shape, str):
        if shape not in PRESETS:
            raise LMLoadError(f"unknown model preset {shape!r} (known: {', '.join(PRESETS)})")
        shape = PRESETS[shape]
    vocab = shape.vocab_size or layout.model_vocab_size
    check_vocab(vocab, layout, where="model shape")
    if shape.num_heads % shape.num_kv_heads or shape.hidden_size % shape.num_heads:
        raise LMLoadError(f"model shape {shape}: heads must divide hidden_size and kv heads must divide heads")
    conf = LlamaConfig(
        vocab_size=vocab, hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_kv_heads,
        intermediate_size=shape.intermediate_size, max_position_embeddings=shape.max_position_embeddings,
        rms_norm_eps=shape.rms_norm_eps, rope_theta=shape.rope_theta, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False, hidden_act="silu", bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    conf._attn_implementation = attn_implementation
    if seed is not None:
        torch.manual_seed(seed)
    return LlamaForCausalLM(conf)


def save_lm(model, tok: YuETokenizer | None, folder: str | os.PathLike, info: dict | None = None) -> Path:
    """Write an LM folder atomically (a temporary sibling renamed into place): model, tokenizer, ``yue_lm.json``."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tok is not None:
            shutil.copyfile(tok.path, tmp / "tokenizer.model")
            (tmp / "layout.json").write_text(json.dumps(tok.layout.to_json(), indent=2) + "\n")
        (tmp / "yue_lm.json").write_text(json.dumps(info or {}, indent=2, sort_keys=True, default=str) + "\n")
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LMLoadError(f"{path}: unreadable JSON ({e})") from e
    if not isinstance(d, dict):
        raise LMLoadError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def lm_info(folder: str | os.PathLike) -> dict:
    """``yue_lm.json`` of an LM folder (``{}`` for a released checkpoint that has none)."""
    p = Path(folder) / "yue_lm.json"
    return _read_json(p) if p.is_file() else {}


def load_tokenizer_for(folder: str | os.PathLike, tokenizer: str | os.PathLike | YuETokenizer | None = None) -> YuETokenizer:
    """The tokenizer for an LM folder: ``tokenizer`` if given, else the folder's own, else the released one."""
    if isinstance(tokenizer, YuETokenizer):
        return tokenizer
    if tokenizer is not None:
        return YuETokenizer(tokenizer)
    own = Path(folder) / "tokenizer.model"
    if own.is_file():
        return YuETokenizer(own)
    rel = find_released_tokenizer()
    if rel is None:
        raise LMLoadError(f"{folder}: holds no tokenizer.model and the released one was not found "
                          "(pass a tokenizer or set $YUE_TOKENIZER)")  # fmt: skip
    return YuETokenizer(rel)


def load_lm(
    folder: str | os.PathLike,
    tokenizer: str | os.PathLike | YuETokenizer | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
):
    """Load an LM folder (ours or a released ``YuE-s1-*`` / ``YuE-s2-*`` folder) for inference.

    Returns:
        ``(model, tokenizer)``: an eval-mode ``LlamaForCausalLM`` on ``device`` and its :class:`YuETokenizer`.

    Raises:
        LMLoadError: missing folder or ``config.json``, not a LLaMA, vocabulary too small for the tokenizer layout.
    """
    from transformers import LlamaForCausalLM

    folder = Path(folder)
    if not folder.is_dir():
        raise LMLoadError(f"{folder}: model folder not found (nothing is downloaded; pass a local folder)")
    conf = _read_json(folder / "config.json") if (folder / "config.json").is_file() else None
    if conf is None:
        raise LMLoadError(f"{folder}: no config.json (not a Hugging Face model folder)")
    if conf.get("model_type") != "llama":
        raise LMLoadError(f"{folder}/config.json: model_type {conf.get('model_type')!r}, expected 'llama'")
    tok = load_tokenizer_for(folder, tokenizer)
    check_vocab(conf.get("vocab_size", 0), tok.layout, where=str(folder / "config.json"))
    try:
        model = LlamaForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=attn_implementation)
    except (OSError, ValueError, RuntimeError) as e:
        raise LMLoadError(f"{folder}: cannot load the weights ({e})") from e
    return model.to(device).eval(), tok


__all__ += ["lm_info", "load_tokenizer_for"]
