"""YuE's two language models (plain ``transformers.LlamaForCausalLM``): shapes, checkpoint folders, data, training.

- :mod:`yue.lm.model`: model presets (tiny CPU shapes, the released 7B stage-1 shape, a ~1B stage-2 shape) and the
  "LM folder" contract shared by training and generation (:func:`save_lm`, :func:`load_lm`, :func:`check_vocab`).
- :mod:`yue.lm.config`, :mod:`yue.lm.data`, :mod:`yue.lm.train`: ``yue train`` with ``task: stage1 | stage2``
  (documents per track mode from a ``yue prepare`` folder, packed blocks, Trainer/DeepSpeed, held-out eval).
"""

from yue.lm.model import (LMLoadError, LMShape, PRESETS, build_lm, check_vocab, lm_info, load_lm, load_tokenizer_for,
                           save_lm)  # fmt: skip

__all__ = ["LMShape", "LMLoadError", "PRESETS", "build_lm", "check_vocab", "lm_info", "load_lm", "load_tokenizer_for", "save_lm"]
