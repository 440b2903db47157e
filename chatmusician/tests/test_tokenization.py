"""Template exactness, released tokenisation against hand-computed ids, loss masking, packing equivalence."""

from __future__ import annotations

import pytest
import torch

from chatmusician.tokenization import (
    IGNORE_INDEX,
    Collator,
    block_diagonal_mask,
    conversation,
    pack_samples,
    prompt,
    sft_row,
    tokenize_pretrain,
    tokenize_sft,
)

CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 :|/\n'.,"


@pytest.fixture(scope="module")
def char_tok():
    """A character tokenizer with a known vocabulary: <unk>=0 <s>=1 </s>=2, then CHARS in order from id 3."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    t = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s"), behavior="isolated")
    t.decoder = decoders.Fuse()
    t.add_special_tokens(["<unk>", "<s>", "</s>"])
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>")


def ids_of(text: str) -> list[int]:
    """Hand tokenisation for the char tokenizer: `</s>` -> 2, every other character -> 3 + its index in CHARS."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("</s>", i):
            out.append(2)
            i += 4
        else:
            out.append(3 + CHARS.index(text[i]))
            i += 1
    return out


def test_template_exact():
    assert prompt("Hi") == "Human: Hi </s> Assistant: "
    assert conversation("Hi", "X:1") == "Human: Hi </s> Assistant: X:1 </s>"
    assert prompt("c", [("a", "b")]) == "Human: a </s> Assistant: b </s> Human: c </s> Assistant: "
    r = sft_row("Write a jig.", "Key: G major", "X:1\nK:G\nGAB|")
    assert r["instruction"] + r["input"] + r["output"] == conversation("Write a jig.\nKey: G major", "X:1\nK:G\nGAB|")
    r = sft_row("Write a jig.", "", "GAB")
    assert r["instruction"] + r["input"] + r["output"] == "Human: Write a jig. </s> Assistant: GAB </s>"
    # the inference prompt is exactly the training source followed by the "Assistant: " head of the target
    assert (r["instruction"] + r["input"] + "Assistant: ") == prompt("Write a jig.")


def test_hand_computed_ids_and_masking(char_tok):
    row = sft_row("Key", "G", "ab")
    s = tokenize_sft(char_tok, row)
    src = ids_of("Human: Key\nG </s> ")
    tgt = ids_of("Assistant: ab </s>")
    assert s["input_ids"] == src + tgt
    assert s["labels"] == [IGNORE_INDEX] * len(src) + tgt
    assert 1 not in s["input_ids"]  # no BOS anywhere
    assert s["input_ids"].count(2) == 2  # the literal </s> in the prompt and at the end are both EOS
    assert not s["overlong"]


def test_eos_appended_and_truncation(char_tok):
    row = {"instruction": "Human: abcdef", "input": " </s> ", "output": "Assistant: xyz"}
    s = tokenize_sft(char_tok, row, max_src_len=4, max_len=12)
    assert s["input_ids"][:4] == ids_of("Huma")  # source cut at max_src_len
    assert s["overlong"]
    # target room = max_len - 3 - len(src) = 5 tokens of "Assistant: xyz</s>"
    assert s["input_ids"][4:] == ids_of("Assis")
    s = tokenize_sft(char_tok, row, max_src_len=100, max_len=200)
    assert s["input_ids"][-1] == 2 and s["labels"][-1] == 2  # </s> appended when the output lacks it


def test_pretrain_chunks(char_tok):
    chunks = tokenize_pretrain(char_tok, "abcdefg", max_len=3)
    assert [c["input_ids"] for c in chunks] == [ids_of("abc"), ids_of("def"), ids_of("g") + [2]]
    assert all(c["labels"] == c["input_ids"] for c in chunks)


def test_pack_and_collate():
    samples = [{"input_ids": [5] * n, "labels": [6] * n} for n in (3, 4, 2, 5)]
    rows = pack_samples(samples, length=7, seed=0)
    assert sum(len(r["input_ids"]) for r in rows) == 14
    assert all(len(r["input_ids"]) <= 7 for r in rows)
    for r in rows:  # positions restart at 0 for every sample
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0]
        lens = [b - a for a, b in zip(starts, starts[1:] + [len(r["position_ids"])])]
        assert sorted(lens) == sorted(lens) and all(r["position_ids"][s + k] == k for s, n in zip(starts, lens) for k in range(n))
    with pytest.raises(ValueError):
        pack_samples([{"input_ids": [1] * 9, "labels": [1] * 9}], length=7)
    b = Collator(pad_id=0)(rows)
    assert "attention_mask" not in b and b["position_ids"].shape == b["input_ids"].shape
    pad = b["labels"] == IGNORE_INDEX
    assert (b["input_ids"][pad] == 0).all()
    b2 = Collator(pad_id=0)(samples[:2])
    assert b2["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert b2["labels"][0, 3].item() == IGNORE_INDEX


def _tiny_llama(attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    conf = LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=64, max_position_embeddings=64, use_cache=False)
    conf._attn_implementation = attn
    return LlamaForCausalLM(conf).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager", "packed_sdpa"])
def test_packed_logits_equal_unpacked(attn):
    from chatmusician.tokenization import register_packed_attention

    register_packed_attention()
    model = _tiny_llama(attn)
    g = torch.Generator().manual_seed(1)
    samples = [torch.randint(3, 50, (n,), generator=g) for n in (5, 9, 4)]
    rows = pack_samples([{"input_ids": s.tolist(), "labels": s.tolist()} for s in samples], length=30, seed=0)
    assert len(rows) == 1
    batch = Collator(pad_id=0, pad_to_multiple_of=8)(rows)  # adds 6 pad tokens: their own block
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        explicit = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                         attention_mask=block_diagonal_mask(batch["position_ids"])).logits[0]
        pos = batch["position_ids"][0]
        starts = [i for i in range(len(rows[0]["input_ids"])) if pos[i] == 0]
        for st in starts:
            n = int(pos[st:].tolist().index(0, 1)) if 0 in pos[st + 1 :].tolist() else len(pos) - st
            ids = batch["input_ids"][0, st : st + n]
            alone = model(input_ids=ids[None]).logits[0]
            torch.testing.assert_close(packed[st : st + n], alone, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(explicit[st : st + n], alone, atol=1e-5, rtol=1e-4)
    # without restarting positions the same row leaks attention across samples: the check above can fail
    model.config._attn_implementation = "sdpa"
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"]).logits[0]
    second = starts[1]
    assert not torch.allclose(leaky[second : second + 3], packed[second : second + 3], atol=1e-4)


def test_packed_sdpa_gradients_equal_dense_block_mask():
    """Two packed rows with several samples each: loss and every parameter gradient of ``packed_sdpa`` equal those of
    eager attention under the explicit block-diagonal mask (the backward of the per-sample split/cat is right)."""
    from chatmusician.tokenization import register_packed_attention

    register_packed_attention()
    g = torch.Generator().manual_seed(2)
    samples = [torch.randint(3, 50, (n,), generator=g).tolist() for n in (7, 3, 11, 6, 9, 2)]
    rows = pack_samples([{"input_ids": s, "labels": s} for s in samples], length=20, seed=0)
    assert len(rows) >= 2 and any(len(r["position_ids"]) > max(len(s) for s in samples) for r in rows)
    batch = Collator(pad_id=0, pad_to_multiple_of=8)(rows)
    grads = {}
    for attn in ("packed_sdpa", "eager"):
        model = _tiny_llama(attn).train()
        extra = {} if attn == "packed_sdpa" else {"attention_mask": block_diagonal_mask(batch["position_ids"])}
        loss = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"], **extra).loss
        loss.backward()
        grads[attn] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(grads["packed_sdpa"][0], grads["eager"][0], atol=1e-5, rtol=1e-5)
    for name, grad in grads["eager"][1].items():
        torch.testing.assert_close(grads["packed_sdpa"][1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_trained_tokenizer_roundtrip(tok_dir):
    from chatmusician.tokenization import load_tokenizer

    tok = load_tokenizer(str(tok_dir))
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 0)
    text = "Human: Key: G major </s> Assistant: X:1\nL:1/8\nM:6/8\nK:G\nGAB c2d|"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] != 1 and ids.count(2) == 1
    assert tok.decode(ids) == text
    # training source + target tokenise exactly like the inference prompt followed by the reply
    row = sft_row("Key: G major", "", "X:1")
    s = tokenize_sft(tok, row)
    p = tok(prompt("Key: G major"), add_special_tokens=False)["input_ids"]
    assert s["input_ids"][: len(p)] == p
