"""Shared pieces of the GPU smoke suite (``make test-gpu``).

- :func:`musiccore.testing.packing_leak`, the check the LM projects' GPU tests use, must tell a leaking attention
  from a per-sample one: on a CPU in the default suite, with ``packed_sdpa`` against a plain causal attention that
  ignores the sample boundaries.
- On CUDA (marked gpu): ``packed_sdpa`` in bf16 and, when ``flash_attn`` imports, transformers' ``flash_attention_2``
  keep attention inside each sample of packed rows, in a batch of 2 rows, called as the LM collators call them (the
  sample boundaries passed, ``packing_leak(..., varlen=True)``: flash needs them for more than one row);
  ``resolve_precision("auto")`` is bf16 on a GPU that supports it.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from musiccore.testing import packing_leak


def tiny_llama(attn: str, device: str = "cpu"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, max_position_embeddings=128)
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg).to(device)


def packed_batch(device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of 48 tokens: samples of 20 + 28 and 31 + 17 tokens (position ids restart at each sample)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (2, 48), generator=g)
    pos = torch.cat([torch.cat([torch.arange(a), torch.arange(48 - a)])[None] for a in (20, 31)])
    return ids.to(device), pos.to(device)


def register_leaky() -> str:
    """A causal attention that ignores sample boundaries (what a packing bug does)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    def leaky(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kw):
        k = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
        v = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
        out = torch.nn.functional.scaled_dot_product_attention(query, k, v, is_causal=True, scale=scaling)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("test_leaky", leaky)
    AttentionMaskInterface.register("test_leaky", lambda *a, **kw: None)
    return "test_leaky"


def test_packing_leak_tells_a_leak_from_per_sample_attention():
    from musiccore.attention import register_packed_attention

    torch.set_num_threads(1)
    ids, pos = packed_batch()
    good = packing_leak(tiny_llama(register_packed_attention()), ids, pos)
    assert good["later"] < 1e-5 and good["first"] > 0.01 and good["leak_control"] > 0.01, good
    bad = packing_leak(tiny_llama(register_leaky()), ids, pos)
    assert bad["later"] > 0.5 * bad["leak_control"] > 0.005, bad  # the leak moves the later samples like the control
    with pytest.raises(ValueError, match="second sample"):
        packing_leak(tiny_llama("sdpa"), ids, torch.arange(48).expand(2, -1))


@pytest.mark.gpu
@pytest.mark.parametrize("attn", ["packed_sdpa", "flash_attention_2"])
def test_packed_rows_do_not_leak_on_cuda_bf16(attn):
    if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash_attn not installed (the LM trainers then use packed_sdpa)")
    if attn == "packed_sdpa":
        from musiccore.attention import register_packed_attention

        register_packed_attention()
    model = tiny_llama(attn, "cuda").to(torch.bfloat16)
    leak = packing_leak(model, *packed_batch("cuda"), varlen=True)
    assert leak["first"] > 0.01 and leak["leak_control"] > 0.01, leak
    assert leak["later"] < 0.02 * leak["leak_control"], leak


@pytest.mark.gpu
def test_auto_precision_is_bf16_on_a_bf16_gpu():
    from musiccore.hf import resolve_precision

    assert resolve_precision("auto") == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
