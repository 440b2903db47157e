"""Flash-attention varlen boundaries for packed batches of more than one row (``musiccore.attention.varlen_kwargs``).

transformers' ``flash_attention_2`` infers the packed samples from the position ids only for a batch of one row; the
collators therefore hand the boundaries to the model (``cu_seq_lens_q/k``, ``max_length_q/k``). Here:

- the boundaries equal the ones counted by hand (2 rows, several documents, padding) and, for any packed batch
  (hypothesis), the sample starts in the flattened ``B*T`` tokens; input that is not a packed batch is a
  :class:`~musiccore.attention.PackingError` naming the row;
- through transformers' real flash-attention dispatch (``flash_attention_forward`` -> ``_flash_attention_forward``)
  with CPU kernels standing in for ``flash_attn`` (per-sample causal SDPA, written here): a micro-batch of 2 rows
  without the kwargs leaks between packed samples (the bug), with them (``packing_leak(..., varlen=True)``, the option
  the GPU leak checks use) it does not and gives the ``packed_sdpa`` logits, so the kwargs really travel from the
  model's forward to the attention function;
- the other implementations (``packed_sdpa``, ``sdpa``, ``eager``) ignore them: same logits and loss.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from musiccore.attention import PackingError, register_packed_attention, varlen_kwargs
from musiccore.testing import packing_leak

torch.set_num_threads(1)

CPU_FLASH = "test_cpu_varlen"  # no "flash" in the name: loading would look for a flash_attn kernel


def tiny_llama(attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, max_position_embeddings=128)
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg).eval()


def packed_rows(segments: list[list[int]], T: int) -> torch.Tensor:
    """Position ids [B, T] of rows holding samples of the given lengths, each row padded with its own run from 0
    (as the collators pad packed rows)."""
    rows = []
    for segs in segments:
        pos = [p for n in segs for p in range(n)]
        rows.append(pos + list(range(T - len(pos))))
    return torch.tensor(rows)


# ----------------------------------------------------------------------------------------------------- the helper
def test_varlen_kwargs_are_the_hand_counted_boundaries():
    # row 0: documents of 3 and 4 tokens, then 3 padding tokens; row 1: documents of 5, 2 and 3 tokens (T = 10)
    pos = packed_rows([[3, 4], [5, 2, 3]], 10)
    assert pos[0].tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 1, 2]
    kw = varlen_kwargs(pos)
    assert kw["cu_seq_lens_q"].tolist() == [0, 3, 7, 10, 15, 17, 20] == kw["cu_seq_lens_k"].tolist()
    assert kw["cu_seq_lens_q"].dtype == torch.int32 and kw["cu_seq_lens_k"].dtype == torch.int32
    assert kw["max_length_q"] == kw["max_length_k"] == 5 and type(kw["max_length_q"]) is int
    # rows without restarts (no document masking): one sample per row
    one = varlen_kwargs(torch.arange(6).expand(3, -1))
    assert one["cu_seq_lens_q"].tolist() == [0, 6, 12, 18] and one["max_length_q"] == 6


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, 7), min_size=1, max_size=4), min_size=1, max_size=4), st.integers(0, 3))
def test_varlen_kwargs_mark_every_sample_start(segments, extra):
    T = max(sum(s) for s in segments) + extra
    kw = varlen_kwargs(packed_rows(segments, T))
    starts = []
    for r, segs in enumerate(segments):
        off = r * T
        for n in segs:
            starts.append(off)
            off += n
        if off < (r + 1) * T:
            starts.append(off)  # the row's padding run
    cu = kw["cu_seq_lens_q"].tolist()
    assert cu == starts + [len(segments) * T]
    assert kw["max_length_q"] == max(b - a for a, b in zip(cu, cu[1:]))


@pytest.mark.parametrize("bad, match", [
    (torch.tensor([0, 1, 2, 0]), "integer tensor \\[B, T\\], got a 1-D"),
    (torch.zeros(2, 3), "got a 2-D torch.float32"),
    (torch.zeros(2, 3, dtype=torch.bool), "torch.bool"),
    ([[0, 1, 2]], "got list"),
    (torch.zeros(0, 4, dtype=torch.long), "empty"),
    (torch.tensor([[0, 1, 2], [3, 4, 5]]), "row 1 starts at position 3"),
    (torch.tensor([[0, 1, 2], [0, -1, 0]]), "row 1 token 1 has a negative position id -1"),
])  # fmt: skip
def test_varlen_kwargs_reject_what_is_not_a_packed_batch(bad, match):
    with pytest.raises(PackingError, match=match):
        varlen_kwargs(bad)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(-2, 4), min_size=3, max_size=3), min_size=1, max_size=3))
def test_varlen_kwargs_on_any_integer_ids_is_an_error_or_the_zero_offsets(rows):
    pos = torch.tensor(rows)
    try:
        kw = varlen_kwargs(pos)
    except PackingError as e:
        assert "row" in str(e)
        assert bool((pos[:, 0] != 0).any() or (pos < 0).any())
        return
    assert kw["cu_seq_lens_q"].tolist() == (pos.flatten() == 0).nonzero().flatten().tolist() + [pos.numel()]


# ------------------------------------------------------------------------------ transformers' flash dispatch on CPU
def _cpu_flash_kernels(calls: list):
    """Stand-ins for ``flash_attn_func`` / ``flash_attn_varlen_func`` (same argument names; causal attention by
    SDPA, one call per varlen sample). ``calls`` records which one ran and with which boundaries."""
    F = torch.nn.functional

    def _sdpa(q, k, v, causal, scale):  # q [..., T, H, D], k/v [..., S, Hkv, D] -> [..., T, H, D]
        k = k.repeat_interleave(q.shape[-2] // k.shape[-2], dim=-2)
        v = v.repeat_interleave(q.shape[-2] // v.shape[-2], dim=-2)
        out = F.scaled_dot_product_attention(q.transpose(-3, -2), k.transpose(-3, -2), v.transpose(-3, -2),
                                             is_causal=causal, scale=scale)  # fmt: skip
        return out.transpose(-3, -2)

    def flash_fn(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):  # q [B, T, H, D]
        calls.append(("dense", q.shape[0]))
        return _sdpa(q, k, v, causal, softmax_scale)

    def flash_varlen_fn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                        softmax_scale=None, causal=False):  # fmt: skip
        # q [N, H, D] (the batch flattened), one causal attention per sample between consecutive offsets
        calls.append(("varlen", cu_seqlens_q.tolist(), int(max_seqlen_q)))
        assert torch.equal(cu_seqlens_q, cu_seqlens_k) and q.shape[0] == int(cu_seqlens_q[-1])
        bounds = cu_seqlens_q.tolist()
        assert int(max_seqlen_q) == max(b - a for a, b in zip(bounds, bounds[1:]))
        return torch.cat([_sdpa(q[a:b], k[a:b], v[a:b], causal, softmax_scale) for a, b in zip(bounds, bounds[1:])])

    def no_padding(*a, **kw):
        raise AssertionError("packed rows carry no attention mask: the unpad path must not run")

    return flash_fn, flash_varlen_fn, no_padding


@pytest.fixture
def cpu_flash(monkeypatch):
    """Register :data:`CPU_FLASH`: transformers' own ``flash_attention_forward`` and flash mask, with the kernels
    above in place of ``flash_attn`` (``lazy_import_flash_attention`` patched). Yields the kernel call record."""
    import transformers.modeling_flash_attention_utils as fa
    from transformers import AttentionInterface
    from transformers.integrations.flash_attention import flash_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    calls: list = []
    flash_fn, varlen_fn, no_padding = _cpu_flash_kernels(calls)
    process = fa._lazy_define_process_function(varlen_fn)  # which kwargs the "kernel" takes, as for flash_attn
    monkeypatch.setattr(fa, "lazy_import_flash_attention",
                        lambda *a, **kw: ((flash_fn, varlen_fn, None, no_padding, no_padding), (process, dict)))
    AttentionInterface.register(CPU_FLASH, flash_attention_forward)
    AttentionMaskInterface.register(CPU_FLASH, ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"])
    yield calls


def _batch():
    g = torch.Generator().manual_seed(1)
    pos = packed_rows([[20, 28], [9, 22], [31]], 48)[[0, 2]]  # row 0: 20 + 28; row 1: 31 + padding run of 17
    return torch.randint(3, 97, (2, 48), generator=g), pos


def test_flash_path_keeps_packed_samples_apart_with_micro_batch_2_only_with_the_boundaries(cpu_flash):
    ids, pos = _batch()
    model = tiny_llama(CPU_FLASH)
    # without the kwargs, transformers runs one dense causal attention per row: the later samples see the first one
    leak = packing_leak(model, ids, pos)
    assert {c[0] for c in cpu_flash} == {"dense"}
    assert leak["later"] > 0.5 * leak["leak_control"] > 0.005, leak
    cpu_flash.clear()
    fixed = packing_leak(model, ids, pos, varlen=True)  # the boundaries passed as a collated batch carries them
    assert fixed["later"] < 1e-5 and fixed["first"] > 0.01 and fixed["leak_control"] > 0.01, fixed
    # the packed batch went through the varlen kernel with the collator's boundaries (the control, with continuous
    # positions, with one sample per row)
    assert ("varlen", [0, 20, 48, 79, 96], 31) in cpu_flash and ("varlen", [0, 48, 96], 48) in cpu_flash
    assert {c[0] for c in cpu_flash} == {"varlen"}
    # and gives what per-sample attention gives
    with torch.no_grad():
        flash = model(input_ids=ids, position_ids=pos, **varlen_kwargs(pos)).logits
        packed = tiny_llama(register_packed_attention())(input_ids=ids, position_ids=pos).logits
    torch.testing.assert_close(flash, packed, atol=1e-5, rtol=1e-5)


def test_flash_path_finds_the_samples_itself_in_one_row(cpu_flash):
    """The emulation follows transformers: a single row needs no kwargs (the case the 7B configs rely on)."""
    ids, pos = _batch()
    leak = packing_leak(tiny_llama(CPU_FLASH), ids[:1], pos[:1])
    assert leak["later"] < 1e-5 and leak["first"] > 0.01, leak
    assert ("varlen", [0, 20, 48], 28) in cpu_flash


@pytest.mark.parametrize("attn", ["packed_sdpa", "sdpa", "eager"])
def test_other_attentions_ignore_the_boundaries(attn):
    if attn == "packed_sdpa":
        register_packed_attention()
    ids, pos = _batch()
    labels = ids.clone()
    model = tiny_llama(attn)
    with torch.no_grad():
        plain = model(input_ids=ids, position_ids=pos, labels=labels)
        with_kw = model(input_ids=ids, position_ids=pos, labels=labels, **varlen_kwargs(pos))
    torch.testing.assert_close(with_kw.logits, plain.logits, atol=0, rtol=0)
    torch.testing.assert_close(with_kw.loss, plain.loss, atol=0, rtol=0)
