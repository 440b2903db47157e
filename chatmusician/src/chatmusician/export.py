"""``chatmusician export``: merge a LoRA adapter into its base and write a full HF checkpoint (safetensors).

Mirrors the released merge.py (load the base, apply the adapter, ``merge_and_unload`` on CPU, save in shards), but
writes into a temporary folder renamed at the end, so a killed export never leaves a half checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .generate import load_model
from .tokenization import save_tokenizer


def export_merged(adapter_dir: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32,
                  max_shard_size: str = "2GB") -> Path:
    """Merge ``adapter_dir`` (a peft adapter folder from ``train``) and save to ``out_dir``.

    Raises:
        FileNotFoundError: ``adapter_dir`` holds no ``adapter_config.json``.
        FileExistsError: ``out_dir`` exists already.
    """
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (not a LoRA adapter folder)")
    if out_dir.exists():
        raise FileExistsError(f"{out_dir}: exists; choose a new folder")
    model, tok = load_model(adapter_dir, dtype=dtype, merge=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), max_shard_size=max_shard_size)
    save_tokenizer(tok, tmp)  # + tokenizer.model (released encoding)
    tmp.rename(out_dir)
    return out_dir
