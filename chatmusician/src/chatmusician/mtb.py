"""MusicTheoryBench scored by the paper's perplexity protocol (OpenCompass configs, spec section 5).

Data: the released MusicTheoryBench rows (``id, instruction, stem, options{A,B,C,D}, subject, answer, split, abc_score``)
from a local folder of parquet/jsonl files; ``dev`` holds the 5 few-shot exemplars, ``test`` the 367 questions.

Protocol:
- loader rule: with a non-empty ``abc_score``, drop "Use the example below to answer the question that follows." from
  the stem, strip it and append ``"\\n" + abc_score``;
- zero-shot prompt per candidate X: ``{hint}\\n{input}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer: {X}``;
- few-shot: ``{hint}\\n`` + the 5 dev items as ``{input}\\nA. ..\\nD. {D}\\nAnswer: {gold}\\n`` + the test prompt;
  exemplars are dropped from the end while the prompt exceeds ``max_seq_len`` (2048) tokens;
- PPL: tokenizer defaults (so a LLaMA tokenizer adds BOS), token cross-entropy averaged over the sequence;
  the prediction is the letter with the lowest mean loss. Raw text, no Human/Assistant wrapper.
"""

from __future__ import annotations

from pathlib import Path

import torch

HINT = ("Read the following questions from the four options (A, B, C and D) given in each question. "
        "Choose the best option.")
EXAMPLE_PHRASE = "Use the example below to answer the question that follows."
LETTERS = "ABCD"


def item_input(row: dict) -> str:
    """The question text after the released loader's stem rewriting."""
    stem = row["stem"]
    if row.get("abc_score"):
        stem = stem.replace(EXAMPLE_PHRASE, "").strip() + "\n" + row["abc_score"]
    return stem


def _block(row: dict) -> str:
    o = row["options"]
    return f"{item_input(row)}\nA. {o['A']}\nB. {o['B']}\nC. {o['C']}\nD. {o['D']}\nAnswer: "


def prompts_for(row: dict, exemplars: list[dict] = (), tokenizer=None, max_seq_len: int = 2048) -> list[str]:
    """The four candidate prompts (A-D) of one question; few-shot when ``exemplars`` are given."""
    shots = list(exemplars)
    while True:
        head = HINT + "\n" + "".join(_block(e) + e["answer"] + "\n" for e in shots)
        cands = [head + _block(row) + x for x in LETTERS]
        if not shots or tokenizer is None or max(len(tokenizer(c)["input_ids"]) for c in cands) <= max_seq_len:
            return cands
        shots = shots[:-1]  # drop exemplars from the end until the prompt fits


@torch.no_grad()
def mean_losses(model, tokenizer, texts: list[str], max_seq_len: int = 2048) -> list[float]:
    """Mean next-token cross-entropy of each text (tokenizer defaults; truncated at ``max_seq_len``)."""
    out = []
    for t in texts:
        ids = tokenizer(t, return_tensors="pt", truncation=True, max_length=max_seq_len)["input_ids"].to(model.device)
        logits = model(input_ids=ids).logits[0, :-1].float()
        out.append(torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item())
    return out


def load_mtb(folder: str | Path) -> dict[str, list[dict]]:
    """``{"dev": [...], "test": [...]}`` from a local MusicTheoryBench folder (parquet/jsonl)."""
    from .data import Report, read_rows

    splits: dict[str, list[dict]] = {"dev": [], "test": []}
    for row in read_rows(folder, Report(), "MusicTheoryBench"):
        split = row.get("split") or "test"
        splits.setdefault(split, []).append(row)
    return splits


def evaluate_mtb(model, tokenizer, data: dict[str, list[dict]], few_shot: bool = False, max_seq_len: int = 2048) -> dict:
    """Accuracy per subject (``knowledge``, ``reasoning``) under the PPL protocol."""
    exemplars = data.get("dev", [])[:5] if few_shot else []
    res = {}
    for subject in ("knowledge", "reasoning"):
        items = [r for r in data.get("test", []) if r.get("subject") == subject]
        correct = 0
        for r in items:
            losses = mean_losses(model, tokenizer, prompts_for(r, exemplars, tokenizer, max_seq_len), max_seq_len)
            correct += LETTERS[losses.index(min(losses))] == r["answer"]
        res[f"{subject}_{'few' if few_shot else 'zero'}_shot"] = {"n": len(items), "accuracy": correct / max(1, len(items))}
    return res
