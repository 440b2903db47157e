"""Prompt template, tokenisation of the released recipe, packing and batch collation.

Released recipe (model/train/data_preprocess.py, spec section 2.4):
- conversation text ``Human: {x} </s> Assistant: {y} </s>``; no BOS anywhere; the literal ``</s>`` is the EOS id;
- SFT source = ``instruction + input`` (no separator), truncated to 1536 tokens; target = ``output`` with ``</s>``
  appended if missing, truncated to ``max_len - 3 - len(source)``; labels are -100 on the source;
- pretraining: ``text`` tokenised without BOS/EOS, labels = input ids (we add one EOS per document as a separator and
  split documents longer than ``max_len`` into chunks: the released script does neither, spec pitfall 7).

Packing (not in the original): several samples share one row; position ids restart at 0 for each sample and no
attention mask is passed, so transformers' masking builds a block-diagonal causal mask (SDPA/eager on CPU,
flash-attention varlen on GPU) and every sample attends only to itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable

import torch

# packed_sdpa (per-sample attention in packed rows) lives in the shared package, used by the YuE LM trainer too
from musiccore.attention import PACKED_SDPA, register_packed_attention  # noqa: F401

IGNORE_INDEX = -100
EOS_TEXT = "</s>"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in LLaMA; pad = <unk> (id 0), like the released config


def prompt(user_text: str, history: Iterable[tuple[str, str]] = ()) -> str:
    """Inference prompt: ``Human: {q} </s> Assistant: {a} </s> `` per past turn, then ``Human: {x} </s> Assistant: ``."""
    past = "".join(f"Human: {q} </s> Assistant: {a} </s> " for q, a in history)
    return past + "Human: " + user_text + " </s> Assistant: "


def conversation(user_text: str, reply: str) -> str:
    """One training conversation, exactly ``Human: {x} </s> Assistant: {y} </s>``."""
    return f"Human: {user_text} </s> Assistant: {reply} </s>"


def sft_row(instruction: str, input_text: str, reply: str, src: str = "", id: str = "") -> dict:
    """A row in the released MusicPile-sft layout, split so that ``instruction + input + output`` is the conversation.

    ``instruction`` opens with ``Human: `` and ends with a newline when an input follows; ``input`` ends with
    `` </s> ``; ``output`` is ``Assistant: {y} </s>``.
    """
    ins = "Human: " + instruction + ("\n" if input_text else "")
    return {"instruction": ins, "input": input_text + " </s> ", "output": "Assistant: " + reply + " </s>", "src": src, "id": id}


def tokenize_sft(tokenizer, row: dict, max_src_len: int = 1536, max_len: int = 2048) -> dict:
    """Released SFT tokenisation of one ``{instruction, input, output}`` row.

    Returns ``{"input_ids": [T], "labels": [T], "overlong": bool}``; ``overlong`` tells that truncation cut tokens.
    """
    src = tokenizer(row["instruction"] + row["input"], add_special_tokens=False)["input_ids"]
    out_text = row["output"]
    if not out_text.rstrip().endswith(EOS_TEXT):
        out_text = out_text + EOS_TEXT
    tgt = tokenizer(out_text, add_special_tokens=False)["input_ids"]
    overlong = len(src) > max_src_len
    src = src[:max_src_len]
    room = max_len - 3 - len(src)  # the released "- 3" margin
    overlong = overlong or len(tgt) > room
    tgt = tgt[:room]
    return {"input_ids": src + tgt, "labels": [IGNORE_INDEX] * len(src) + tgt, "overlong": overlong}


def tokenize_pretrain(tokenizer, text: str, max_len: int = 2048) -> list[dict]:
    """A document -> chunks of at most ``max_len`` tokens (document + one EOS), labels = input ids."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return [{"input_ids": ids[i : i + max_len], "labels": ids[i : i + max_len]} for i in range(0, len(ids), max_len)]


def pack_samples(samples: list[dict], length: int, seed: int = 0) -> list[dict]:
    """Greedy packing of samples (each at most ``length`` tokens) into rows of at most ``length`` tokens.

    Samples are shuffled (seeded) and appended to the current row while they fit; each row carries
    ``position_ids`` restarting at 0 per sample, which is what keeps attention inside a sample.
    """
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    rows, cur = [], {"input_ids": [], "labels": [], "position_ids": []}
    for i in order:
        s = samples[i]
        n = len(s["input_ids"])
        if n > length:
            raise ValueError(f"sample {i} has {n} tokens > pack length {length}")
        if cur["input_ids"] and len(cur["input_ids"]) + n > length:
            rows.append(cur)
            cur = {"input_ids": [], "labels": [], "position_ids": []}
        cur["input_ids"] += list(s["input_ids"])
        cur["labels"] += list(s["labels"])
        cur["position_ids"] += list(range(n))
    if cur["input_ids"]:
        rows.append(cur)
    return rows


@dataclass
class Collator:
    """Right-pads a list of samples into a batch.

    Unpacked samples: ``input_ids`` [B, T] padded with ``pad_id``, ``labels`` [B, T] padded with -100 and an
    ``attention_mask`` [B, T]. Packed rows (with ``position_ids``): no attention mask; the padding gets its own
    position run starting at 0 so it forms a separate block that no real token attends to.
    """

    pad_id: int = 0
    pad_to_multiple_of: int = 1

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        T = max(len(b["input_ids"]) for b in batch)
        T = -(-T // self.pad_to_multiple_of) * self.pad_to_multiple_of
        packed = "position_ids" in batch[0]
        ids = torch.full((len(batch), T), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), T), IGNORE_INDEX, dtype=torch.long)
        out: dict[str, torch.Tensor] = {}
        if packed:
            pos = torch.zeros((len(batch), T), dtype=torch.long)
        else:
            mask = torch.zeros((len(batch), T), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.as_tensor(b["input_ids"])
            labels[i, :n] = torch.as_tensor(b["labels"])
            if packed:
                pos[i, :n] = torch.as_tensor(b["position_ids"])
                pos[i, n:] = torch.arange(T - n)
            else:
                mask[i, :n] = 1
        out["input_ids"], out["labels"] = ids, labels
        if packed:
            out["position_ids"] = pos
        else:
            out["attention_mask"] = mask
        return out


def block_diagonal_mask(position_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Explicit 4D additive mask [B, 1, T, T] equivalent to packing by ``position_ids`` [B, T]: causal and
    block-diagonal (0 where attention is allowed, the dtype's min elsewhere). For code paths that want a mask."""
    B, T = position_ids.shape
    seq = (position_ids == 0).cumsum(-1)  # [B, T] sample index of every token
    same = seq[:, :, None] == seq[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=position_ids.device).tril()
    allowed = same & causal
    mask = torch.zeros(B, 1, T, T, dtype=dtype, device=position_ids.device)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """A small BPE for scratch models: whitespace characters are isolated tokens (so ``</s> Assistant: `` tokenises
    the same in training rows and in the inference prompt), merges learn ABC fragments, ``</s>`` is the EOS.

    Returns a ``transformers`` fast tokenizer (unk/pad id 0, bos id 1, eos id 2; no BOS/EOS added automatically).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # whitespace isolated; a field label ends a word ("K:" | "G"), so a key or meter in the prompt and in the header
    # are the same token and generating the header is a copy
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"\s"), behavior="isolated"), pre_tokenizers.Split(":", behavior="merged_with_previous")]
    )
    tok.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>"
    )


def load_tokenizer(path: str):
    """A tokenizer from a local folder, with ``pad`` set to id 0 (``<unk>``) when missing (spec pitfall 11)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return tok

