"""Template exactness, released tokenisation against hand-computed ids and (with the LLaMA-2 vocabulary) against
SentencePiece per chunk, loss masking, packing equivalence."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    # distinct tokens per sample (sample i: 100*i + k) and labels that differ from the ids, so a lost, duplicated,
    # reordered or misaligned token shows
    samples = [{"input_ids": [100 * i + k for k in range(n)], "labels": [5000 + 100 * i + k for k in range(n)]}
               for i, n in enumerate((3, 4, 2, 5))]
    rows = pack_samples(samples, length=7, seed=0)
    assert all(len(r["input_ids"]) <= 7 for r in rows)
    segments = []  # (input_ids, labels) of each packed sample, in packing order; positions restart at 0 per sample
    for r in rows:
        assert len(r["labels"]) == len(r["position_ids"]) == len(r["input_ids"])
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0]
        assert starts[0] == 0
        for a, b in zip(starts, starts[1:] + [len(r["input_ids"])]):
            assert r["position_ids"][a:b] == list(range(b - a))
            segments.append((r["input_ids"][a:b], r["labels"][a:b]))
    order = list(range(len(samples)))
    random.Random(0).shuffle(order)  # the documented seeded shuffle, then greedy filling in that order
    assert segments == [(samples[i]["input_ids"], samples[i]["labels"]) for i in order]
    lens = [len(samples[i]["input_ids"]) for i in order]
    k = 0
    for r in rows[:-1]:  # greedy: a row is closed only when the next sample does not fit
        k += sum(1 for p in r["position_ids"] if p == 0)
        assert len(r["input_ids"]) + lens[k] > 7
    assert rows != [] and pack_samples(samples, length=7, seed=0) == rows  # deterministic for a seed
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


# ------------------------------------------------------------------------- released ids with the LLaMA-2 vocabulary
# The released pipeline (transformers 4.32 slow LlamaTokenizer) split the text on the special tokens and encoded every
# chunk by SentencePiece on its own, dummy prefix included (spec 2.4, pitfall 2). The reference below is written here
# from that rule with the `sentencepiece` library alone; the project's encoder must give the same ids on the training
# path (tokenize_sft / tokenize_pretrain) and on the chat path (encode_prompts, check_context).


def _llama2_dir() -> Path | None:
    """``$CHATMUSICIAN_LLAMA2_TOKENIZER``, else the handbook beside the checkout: ``<root>/../shared/assets``."""
    env = os.environ.get("CHATMUSICIAN_LLAMA2_TOKENIZER")
    cands = ([Path(env)] if env else []) + [
        p / "shared" / "assets" / "chatmusician" / "llama2" for p in Path(__file__).resolve().parents]
    return next((c for c in cands if (c / "tokenizer.model").is_file()), None)


LLAMA2_DIR = _llama2_dir()
needs_llama2 = pytest.mark.skipif(LLAMA2_DIR is None, reason="LLaMA-2 tokenizer assets absent "
                                  "(<root>/../shared/assets/chatmusician/llama2 or $CHATMUSICIAN_LLAMA2_TOKENIZER)")


@pytest.fixture(scope="module")
def llama_tok():
    from chatmusician.tokenization import load_tokenizer

    return load_tokenizer(str(LLAMA2_DIR))


@pytest.fixture(scope="module")
def sp_ref():
    """text -> ids by the released rule, with sentencepiece only: split on <unk>/<s>/</s>, each chunk encoded alone."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(LLAMA2_DIR / "tokenizer.model"))
    special = {"<unk>": 0, "<s>": 1, "</s>": 2}

    def ref(text: str) -> list[int]:
        out: list[int] = []
        for chunk in re.split(r"(<unk>|<s>|</s>)", text):
            if chunk in special:
                out.append(special[chunk])
            elif chunk:
                out += sp.encode(chunk)
        return out

    return ref


ABC_ODD = 'X:1\nT:Odd one\n%%score 1 2\nL:1/8\nM:6/8\nK:Ador\n|:^c=d_e f,g\'a ~b2:|[1 !trill!c2 "Am"A2 % a comment\n\tz4  |]\n'
TEXTS = [
    "Human: Write a jig. </s> Assistant: X:1\nK:G\nGAB| </s>",  # a template row
    "Human: a </s> Assistant: b </s> Human: c </s> Assistant: ",  # multi-turn prompt
    "the tag </s> inside text, twice</s></s>and <s> and <unk> too",
    ABC_ODD,
    "谱写一首中国民歌 Напиши мелодию 🎵🎻 ☺",  # Chinese, Cyrillic, emoji (byte fallback)
    "   leading spaces and trailing   ",
    "tabs\t\tand\n\n\nnewlines  double  spaces",
    " </s> ",
    "</s>",
]


@needs_llama2
@pytest.mark.parametrize("text", TEXTS)
def test_released_ids_on_training_and_chat_paths(llama_tok, sp_ref, text):
    from chatmusician.chat import check_context
    from chatmusician.tokenization import encode, encode_prompts

    want = sp_ref(text)
    assert encode(llama_tok, text) == want
    # training: SFT source and target are encoded separately, pretraining text gets one EOS per document
    row = {"instruction": text, "input": "", "output": "Assistant: " + text}
    s = tokenize_sft(llama_tok, row, max_src_len=1500, max_len=4000)
    out_text = row["output"] if row["output"].rstrip().endswith("</s>") else row["output"] + "</s>"
    assert s["input_ids"] == want + sp_ref(out_text)
    assert s["labels"] == [IGNORE_INDEX] * len(want) + sp_ref(out_text)
    assert tokenize_pretrain(llama_tok, text, max_len=4000)[0]["input_ids"] == want + [2]
    # chat: the padded prompt batch holds the same ids (left padding with pad id 0), and the context check counts them
    enc = encode_prompts(llama_tok, [text, text + " more words here"])
    n = len(want)
    assert enc["input_ids"][0, enc["input_ids"].shape[1] - n :].tolist() == want
    assert enc["attention_mask"][0].sum().item() == n and (enc["input_ids"][0][enc["attention_mask"][0] == 0] == 0).all()

    class _M:
        class config:
            max_position_embeddings = 4096

    assert check_context(_M, llama_tok, text, 10) == n


@needs_llama2
def test_hand_checked_llama2_ids(llama_tok):
    """Ids checked by hand: "▁" 29871, "▁▁" 259, ":" 29901, EOS 2; byte pieces are 3 + the byte (\\n 13, \\t 12,
    🎵 = F0 9F 8E B5 -> 243 162 145 184); a chunk after </s> gets its own dummy prefix."""
    from chatmusician.tokenization import encode, encode_prompts, prompt

    assert encode(llama_tok, "Human: hi </s> Assistant: ok </s>") == [
        12968, 29901, 7251, 29871, 2, 29871, 4007, 22137, 29901, 3431, 29871, 2]  # ▁Human : ▁hi ▁ </s> ▁ ▁Ass istant : ▁ok ▁ </s>
    assert encode(llama_tok, "🎵") == [29871, 243, 162, 145, 184]
    assert encode(llama_tok, "\t\n") == [29871, 12, 13]
    assert encode(llama_tok, "a  b") == [263, 29871, 289]  # ▁a ▁ ▁b (transformers 5 alone gives ▁a ▁▁ b)
    assert encode(llama_tok, "</s> ") == [2, 259]  # the " " after </s> is "▁" + dummy prefix = "▁▁"
    # the released SFT row ends its source with " </s> " and starts its target with "Assistant: ", so training saw
    # </s> ▁▁ ▁Ass ... while the released inference prompt "... </s> Assistant: " gives </s> ▁ ▁Ass ... ▁: kept as released
    s = tokenize_sft(llama_tok, sft_row("hi", "", "ok"))
    i = s["input_ids"].index(2)
    assert s["input_ids"][i : i + 4] == [2, 259, 4007, 22137]
    p = encode_prompts(llama_tok, [prompt("hi")])["input_ids"][0].tolist()
    assert p[p.index(2) :] == [2, 29871, 4007, 22137, 29901, 29871]
    # what transformers 5's own LlamaTokenizer gives differs (no prefix after </s>): why encode() exists
    assert llama_tok("Human: hi </s> Assistant: ok </s>", add_special_tokens=False)["input_ids"][4:6] == [2, 4007]


_ALPHABET = st.sampled_from(list("abcXKLM:|/^=_,'~[]!\"%()<>{}-.1234 ") + [" ", "  ", "\t", "\n", "</s>", "<s>",
                            "<unk>", " </s> ", "Human: ", "Assistant: ", "你", "好", "мир", "🎵", "é", "ß", "▁"])


@needs_llama2
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_ALPHABET, max_size=40).map("".join))
def test_released_ids_property(llama_tok, sp_ref, text):
    """Any mix of ABC characters, whitespace runs, special tokens, non-Latin text and a literal "▁": the training and
    chat encoders give the reference ids, and decoding them gives the text back (up to the dummy-prefix spaces)."""
    from chatmusician.tokenization import encode, encode_prompts

    want = sp_ref(text)
    assert encode(llama_tok, text) == want
    assert tokenize_pretrain(llama_tok, text, max_len=10**4)[0]["input_ids"] == want + [2]
    if want:
        assert encode_prompts(llama_tok, [text])["input_ids"][0].tolist() == want
    assert all(0 <= i < 32000 for i in want)


@needs_llama2
def test_saved_tokenizer_keeps_released_ids(llama_tok, sp_ref, tmp_path):
    """A model folder written by training/export (save_tokenizer) carries tokenizer.model, so the chat side of a trained
    model encodes like its training data; transformers' save_pretrained alone would drop it."""
    from chatmusician.tokenization import encode, load_tokenizer, save_tokenizer, sp_model_path

    save_tokenizer(llama_tok, tmp_path / "final")
    again = load_tokenizer(str(tmp_path / "final"))
    assert sp_model_path(again) == str(tmp_path / "final" / "tokenizer.model")
    assert encode(again, TEXTS[0]) == sp_ref(TEXTS[0])
    llama_tok.save_pretrained(str(tmp_path / "plain"))
    assert not (tmp_path / "plain" / "tokenizer.model").exists()


def test_trained_bpe_keeps_its_own_encoding(tok_dir):
    """The small BPE of scratch models has no SentencePiece model: encode() is the tokenizer's own encoding."""
    from chatmusician.tokenization import encode, encode_prompts, load_tokenizer, sp_model_path

    tok = load_tokenizer(str(tok_dir))
    assert sp_model_path(tok) is None
    text = "Human: Key: G major </s> Assistant: X:1\nK:G\nGAB|"
    assert encode(tok, text) == tok(text, add_special_tokens=False)["input_ids"]
    enc = encode_prompts(tok, [text, "Human: x"])
    assert enc["input_ids"][1, : enc["input_ids"].shape[1] - len(encode(tok, "Human: x"))].tolist() == \
        [tok.pad_token_id] * (enc["input_ids"].shape[1] - len(encode(tok, "Human: x")))
