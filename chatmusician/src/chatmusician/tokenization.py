"""Prompt template, tokenisation of the released recipe, packing and batch collation.

Released recipe (model/train/data_preprocess.py, spec section 2.4):
- conversation text ``Human: {x} </s> Assistant: {y} </s>``; no BOS anywhere; the literal ``</s>`` is the EOS id;
- SFT source = ``instruction + input`` (no separator), truncated to 1536 tokens; target = ``output`` with ``</s>``
  appended if missing, truncated to ``max_len - 3 - len(source)``; labels are -100 on the source;
- pretraining: ``text`` tokenised without BOS/EOS, labels = input ids (we add one EOS per document as a separator and
  split documents longer than ``max_len`` into chunks: the released script does neither, spec pitfall 7).

Packing (not in the original): several samples share one row; position ids restart at 0 for each sample and no
attention mask is passed, so transformers' masking builds a block-diagonal causal mask (SDPA/eager on CPU,
flash-attention varlen on GPU) and every sample attends only to itself. SFT samples are packed whole
(:func:`pack_rows`); pretraining documents are concatenated and cut into fixed-length blocks with the label of each
document's first token masked, so no target crosses a document boundary (:func:`pack_pretrain_blocks`). The corpus
build (``chatmusician.data``) runs both as batched ``datasets`` maps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

# packed_sdpa (per-sample attention in packed rows) lives in the shared package, used by the YuE LM trainer too
from musiccore.attention import PACKED_SDPA, register_packed_attention, varlen_kwargs  # noqa: F401

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


# ------------------------------------------------------------------------------------------ released encoding
# The released pipeline tokenised with transformers 4.32's slow LlamaTokenizer (a vendored copy, use_fast=False): the
# text is split on the special/added tokens (``<unk>``, ``<s>``, ``</s>``: AddedTokens without lstrip/rstrip, so the
# spaces around them stay in the neighbouring chunks), each special token becomes its id, and every other chunk is
# encoded by SentencePiece on its own, the model's dummy prefix "▁" included (``" Assistant: "`` -> ▁ ▁Ass istant : ▁).
# transformers 5's LlamaTokenizer (tokenizers backend) adds no prefix after a special token and merges whitespace runs
# ("a  b" -> ▁a ▁▁ b where SentencePiece gives ▁a ▁ ▁b), so it is not used to encode; it still decodes and pads.

SP_MODEL_FILE = "tokenizer.model"  # the SentencePiece model of a LLaMA tokenizer folder
_SP_CACHE: dict[str, object] = {}  # SentencePiece processors by file, shared by every tokenizer that points at one


def sp_model_path(tokenizer) -> str | None:
    """The SentencePiece model file behind a (LLaMA) tokenizer, or ``None`` for a tokenizer without one (the small BPE
    of scratch models). Set by :func:`load_tokenizer` (``sp_model_file``), else transformers' ``vocab_file``."""
    import os

    for cand in (getattr(tokenizer, "sp_model_file", None), getattr(tokenizer, "vocab_file", None)):
        if cand and str(cand).endswith(".model") and (str(cand) in _SP_CACHE or os.path.isfile(cand)):
            return str(cand)
    return None


def _sp_processor(path: str):
    if path not in _SP_CACHE:
        import sentencepiece as spm

        _SP_CACHE[path] = spm.SentencePieceProcessor(model_file=path)
    return _SP_CACHE[path]


def _special_splitter(tokenizer):
    """(regex splitting on every special/added token, {token: (id, lstrip, rstrip)}), longest token first, so the
    earliest and longest match wins as in transformers' trie."""
    import re

    table: dict[str, tuple[int, bool, bool]] = {}
    for tid, at in getattr(tokenizer, "added_tokens_decoder", {}).items():
        table[str(at)] = (int(tid), bool(getattr(at, "lstrip", False)), bool(getattr(at, "rstrip", False)))
    for t in tokenizer.all_special_tokens:
        table.setdefault(t, (tokenizer.convert_tokens_to_ids(t), False, False))
    alts = sorted(table, key=len, reverse=True)
    return re.compile("(" + "|".join(re.escape(t) for t in alts) + ")"), table


def encode(tokenizer, text: str) -> list[int]:
    """Ids of ``text`` as the released pipeline gave them, with no BOS/EOS added: ``[T]``.

    With a SentencePiece-backed tokenizer (LLaMA's ``tokenizer.model``): split on special tokens, each chunk encoded
    by SentencePiece alone (transformers 4.32 slow ``LlamaTokenizer``; spec 2.4 and pitfall 2). Other tokenizers
    (the small BPE of scratch models) encode the whole text as they are, ``add_special_tokens=False``. Used by the
    training data (:func:`tokenize_sft`, :func:`tokenize_pretrain`) and the chat prompts (:func:`encode_prompts`),
    so both give the same ids for the same text.
    """
    path = sp_model_path(tokenizer)
    if path is None:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    sp = _sp_processor(path)
    pattern, table = _special_splitter(tokenizer)
    parts = pattern.split(text)  # odd indices hold the special tokens
    for i in range(1, len(parts), 2):  # an AddedToken with lstrip/rstrip eats the spaces beside it (none in LLaMA)
        _, lstrip, rstrip = table[parts[i]]
        if lstrip:
            parts[i - 1] = parts[i - 1].rstrip()
        if rstrip:
            parts[i + 1] = parts[i + 1].lstrip()
    ids: list[int] = []
    for i, p in enumerate(parts):
        if i % 2:
            ids.append(table[p][0])
        elif p:  # an empty chunk (text starting/ending at a special token) encodes to nothing, as in 4.32
            ids.extend(sp.encode(p))  # one chunk at a time: a list call starts a thread pool (slower for short rows)
    return ids


def encode_prompts(tokenizer, texts: list[str], padding_side: str = "left") -> dict[str, torch.Tensor]:
    """Chat prompts -> ``input_ids`` [B, T] and ``attention_mask`` [B, T], each prompt encoded by :func:`encode`
    (no BOS, the released inference) and padded with ``pad_token_id`` on ``padding_side`` (left for generation)."""
    rows = [encode(tokenizer, t) for t in texts]
    T = max((len(r) for r in rows), default=0)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(T - len(r), T) if padding_side == "left" else slice(0, len(r))
        ids[i, sl] = torch.as_tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return {"input_ids": ids, "attention_mask": mask}


def tokenize_sft(tokenizer, row: dict, max_src_len: int = 1536, max_len: int = 2048) -> dict:
    """Released SFT tokenisation of one ``{instruction, input, output}`` row.

    Returns ``{"input_ids": [T], "labels": [T], "overlong": bool}``; ``overlong`` tells that truncation cut tokens.
    """
    src = encode(tokenizer, row["instruction"] + row["input"])
    out_text = row["output"]
    if not out_text.rstrip().endswith(EOS_TEXT):
        out_text = out_text + EOS_TEXT
    tgt = encode(tokenizer, out_text)
    overlong = len(src) > max_src_len
    src = src[:max_src_len]
    room = max_len - 3 - len(src)  # the released "- 3" margin
    overlong = overlong or len(tgt) > room
    tgt = tgt[:room]
    return {"input_ids": src + tgt, "labels": [IGNORE_INDEX] * len(src) + tgt, "overlong": overlong}


def tokenize_pretrain(tokenizer, text: str, max_len: int = 2048) -> list[dict]:
    """A document -> chunks of at most ``max_len`` tokens (document + one EOS), labels = input ids."""
    ids = encode(tokenizer, text) + [tokenizer.eos_token_id]
    return [{"input_ids": ids[i : i + max_len], "labels": ids[i : i + max_len]} for i in range(0, len(ids), max_len)]


def pack_samples(samples: list[dict], length: int, seed: int = 0) -> list[dict]:
    """Greedy packing of samples (each at most ``length`` tokens) into rows of at most ``length`` tokens.

    Samples are shuffled (seeded) and appended to the current row while they fit (:func:`pack_rows`); each row
    carries ``position_ids`` restarting at 0 per sample, which is what keeps attention inside a sample.
    """
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    for i in order:
        if len(samples[i]["input_ids"]) > length:
            raise ValueError(f"sample {i} has {len(samples[i]['input_ids'])} tokens > pack length {length}")
    cols = pack_rows([samples[i]["input_ids"] for i in order], [samples[i]["labels"] for i in order], length)
    return [dict(zip(cols, vals)) for vals in zip(*cols.values())]


def pack_rows(input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], length: int) -> dict[str, list]:
    """Next-fit packing of samples in the given order: a sample joins the current row while it fits, else starts the
    next one; samples are never split. The body of the corpus build's batched ``map`` (one call per batch, so a row
    never spans two batches) and of :func:`pack_samples`.

    Args:
        input_ids, labels: ``N`` samples, ``[T_i]`` each, ``T_i <= length``.
    Returns:
        Columns ``input_ids``, ``labels``, ``position_ids``: ``R`` rows of ``[<= length]``, positions restarting at 0
        at every sample.
    """
    out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    cur_ids: list[int] = []
    cur_lab: list[int] = []
    cur_pos: list[int] = []
    for k, (ids, lab) in enumerate(zip(input_ids, labels)):
        n = len(ids)
        if n > length:
            raise ValueError(f"sample {k} has {n} tokens > pack length {length}")
        if cur_ids and len(cur_ids) + n > length:  # does not fit: close the row
            out["input_ids"].append(cur_ids)
            out["labels"].append(cur_lab)
            out["position_ids"].append(cur_pos)
            cur_ids, cur_lab, cur_pos = [], [], []
        cur_ids += list(ids)
        cur_lab += list(lab)
        cur_pos += range(n)
    if cur_ids:
        out["input_ids"].append(cur_ids)
        out["labels"].append(cur_lab)
        out["position_ids"].append(cur_pos)
    return out


def pack_pretrain_blocks(input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]],
                         doc_start: Sequence[bool], length: int) -> dict[str, list]:
    """Pretraining pieces (documents + EOS, or consecutive chunks of one document) concatenated in order and cut into
    blocks of exactly ``length`` tokens (the last block of the call may be shorter), document-aware:

    - ``position_ids`` restart at 0 at every document start and at every block start, so (with packed attention)
      a document attends only to itself;
    - the label of a document's first token is ``-100``: the model's shifted loss would otherwise score "the previous
      document's last token (its EOS) predicts this document's first token", a target across the boundary.

    Args:
        input_ids, labels: ``N`` pieces, ``[T_i]`` each; ``doc_start``: ``[N]``, True where a piece opens a document
            (False for the second and later chunks of a long document, which continue its positions).
    Returns:
        Columns ``input_ids``, ``labels``, ``position_ids``: ``R`` rows of ``[length]`` (the last ``[<= length]``).
    """
    out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    cur_ids: list[int] = []
    cur_lab: list[int] = []
    cur_pos: list[int] = []
    pos = 0  # position of the next token inside its document segment
    for ids, lab, start in zip(input_ids, labels, doc_start):
        lab = list(lab)
        if start:
            pos = 0
            if lab:
                lab[0] = IGNORE_INDEX  # never a target of the previous document's last token
        i = 0
        while i < len(ids):
            if len(cur_ids) == length:  # block full: the document goes on in the next block, positions from 0
                out["input_ids"].append(cur_ids)
                out["labels"].append(cur_lab)
                out["position_ids"].append(cur_pos)
                cur_ids, cur_lab, cur_pos = [], [], []
                pos = 0
            take = min(length - len(cur_ids), len(ids) - i)
            cur_ids += list(ids[i : i + take])
            cur_lab += lab[i : i + take]
            cur_pos += range(pos, pos + take)
            pos += take
            i += take
    if cur_ids:
        out["input_ids"].append(cur_ids)
        out["labels"].append(cur_lab)
        out["position_ids"].append(cur_pos)
    return out


@dataclass
class Collator:
    """Right-pads a list of samples into a batch.

    Unpacked samples: ``input_ids`` [B, T] padded with ``pad_id``, ``labels`` [B, T] padded with -100 and an
    ``attention_mask`` [B, T]. Packed rows (with ``position_ids``): no attention mask; the padding gets its own
    position run starting at 0 so it forms a separate block that no real token attends to. With ``varlen`` (the
    default) packed batches also carry the sample boundaries for flash-attention varlen (``cu_seq_lens_q/k`` int32
    [N + 1] over the flattened B*T tokens, ``max_length_q/k``: :func:`musiccore.attention.varlen_kwargs`):
    transformers' ``flash_attention_2`` finds them from the position ids only for a batch of one row, so without them
    a micro-batch > 1 lets every packed sample attend to the ones before it. The Trainer hands them to the model's
    forward, which passes them to the attention function; the other implementations (``packed_sdpa``, ``sdpa``,
    ``eager``) ignore them. The batch must reach the model as collated (a map-style dataset: the Trainer moves it to
    the device unchanged; a dispatcher that slices every tensor along dim 0 would cut ``cu_seq_lens``).
    """

    pad_id: int = 0
    pad_to_multiple_of: int = 1
    varlen: bool = True  # packed batches: add the flash-attention varlen boundaries (see above)

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor | int]:
        T = max(len(b["input_ids"]) for b in batch)
        T = -(-T // self.pad_to_multiple_of) * self.pad_to_multiple_of
        packed = "position_ids" in batch[0]
        ids = torch.full((len(batch), T), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), T), IGNORE_INDEX, dtype=torch.long)
        out: dict[str, torch.Tensor | int] = {}
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
            if self.varlen:
                out.update(varlen_kwargs(pos))
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
    """A tokenizer from a local folder, with ``pad`` set to id 0 (``<unk>``) when missing (spec pitfall 11), and the
    folder's ``tokenizer.model`` (if any) recorded as ``sp_model_file`` for :func:`encode` (released ids)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    sp_file = Path(path) / SP_MODEL_FILE
    if sp_file.is_file():
        tok.sp_model_file = str(sp_file)  # encode() uses it: the released per-chunk SentencePiece ids
    elif "llama" in type(tok).__name__.lower():
        import logging

        logging.getLogger(__name__).warning(
            "%s: LLaMA tokenizer without %s: ids are transformers' own, which differ from the released "
            "pipeline's around </s> and in whitespace runs (copy the base model's tokenizer.model here)", path, SP_MODEL_FILE)
    return tok


def save_tokenizer(tokenizer, folder) -> None:
    """``tokenizer.save_pretrained(folder)`` plus its SentencePiece model (transformers 5 writes only tokenizer.json),
    so a model folder saved by training or export encodes like the data it was trained on."""
    import shutil
    from pathlib import Path

    tokenizer.save_pretrained(str(folder))
    src = sp_model_path(tokenizer)
    if src is not None and Path(src).resolve() != (Path(folder) / SP_MODEL_FILE).resolve():
        shutil.copyfile(src, Path(folder) / SP_MODEL_FILE)

