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

import re
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


RELEASED_SIZES = {"dev": 5, "test": 367, "knowledge": 269, "reasoning": 98}
REQUIRED = ("stem", "options", "subject", "answer")
COT_SUFFIX = "Let's think step by step, then end with \"Answer: <letter>\"."


class MTBFormatError(ValueError):
    """A MusicTheoryBench row without a required field (the message names the file, row and field)."""


def _sequence_losses(model, ids: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """OpenCompass ``_get_ppl``: summed next-token cross-entropy over real tokens / number of real tokens.

    ids, mask: [B, T] (right padding, mask 1 on real tokens). Returns B floats."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # [B, T-1, V]
    target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")
    return (ce.sum(1) / mask.sum(1).clamp(min=1)).tolist()


@torch.no_grad()
def mean_losses(model, tokenizer, texts: list[str], max_seq_len: int = 2048, batch_size: int = 1) -> list[float]:
    """Mean token loss of each text by the paper's protocol (tokenizer defaults, so BOS for LLaMA; truncated at
    ``max_seq_len``). ``batch_size`` > 1 scores texts of similar length together (right padding, masked), which gives
    the same numbers up to float rounding."""
    enc = [tokenizer(t, truncation=True, max_length=max_seq_len)["input_ids"] for t in texts]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))  # similar lengths per batch: little padding
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = [0.0] * len(enc)
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        T = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), T), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), T), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : len(enc[i])] = torch.tensor(enc[i])
            mask[r, : len(enc[i])] = 1
        for i, v in zip(idx, _sequence_losses(model, ids.to(model.device), mask.to(model.device))):
            out[i] = v
    return out


@torch.no_grad()
def question_losses(model, tokenizer, cand_lists: list[list[str]], max_seq_len: int = 2048, batch_size: int = 8,
                    share_prefix: bool = True) -> list[list[float]]:
    """Mean token losses of every candidate of every question (the paper's numbers), computed fast.

    The four candidates of a question differ only in their last token (the letter) when the tokenizer splits them
    so; then one forward of ``prompt + "A"`` gives all four: the summed loss of the shared prefix plus the loss of
    each letter at the last position, over the same token count. ``batch_size`` questions go in one forward (right
    padding, masked). Questions whose candidates do not share a prefix, or that are longer than ``max_seq_len``,
    are scored candidate by candidate (:func:`mean_losses`). Returns one list of 4 floats per question."""
    enc = [[tokenizer(c)["input_ids"] for c in cands] for cands in cand_lists]
    shared, rest = [], []
    for qi, ids in enumerate(enc):
        n = len(ids[0])
        same = all(len(x) == n and x[:-1] == ids[0][:-1] for x in ids) and n <= max_seq_len
        (shared if share_prefix and same else rest).append(qi)
    out: list[list[float]] = [[] for _ in enc]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    shared.sort(key=lambda q: len(enc[q][0]))  # similar lengths per batch: little padding
    for k in range(0, len(shared), batch_size):
        qs = shared[k : k + batch_size]
        T = max(len(enc[q][0]) for q in qs)
        ids = torch.full((len(qs), T), pad, dtype=torch.long)
        mask = torch.zeros((len(qs), T), dtype=torch.long)
        for r, q in enumerate(qs):
            ids[r, : len(enc[q][0])] = torch.tensor(enc[q][0])
            mask[r, : len(enc[q][0])] = 1
        ids, mask = ids.to(model.device), mask.to(model.device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()  # [B, T, V]
        target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), target, ignore_index=-100,
                                               reduction="none")  # [B, T-1]
        for r, q in enumerate(qs):
            n = len(enc[q][0])
            prefix = ce[r, : n - 2].sum()  # every token but the letter
            logp = torch.log_softmax(logits[r, n - 2], -1)  # [V]: the letter's distribution
            out[q] = [((prefix - logp[enc[q][j][-1]]) / n).item() for j in range(len(enc[q]))]
    if rest:
        flat = mean_losses(model, tokenizer, [c for q in rest for c in cand_lists[q]], max_seq_len, batch_size)
        pos = 0
        for q in rest:
            out[q] = flat[pos : pos + len(cand_lists[q])]
            pos += len(cand_lists[q])
    return out


def _check_row(row: dict, where: str) -> dict:
    for f in REQUIRED:
        if f not in row or row[f] is None or (isinstance(row[f], str) and not row[f].strip() and f != "abc_score"):
            raise MTBFormatError(f"{where}: missing field {f!r}")
    for f in ("stem", "subject", "abc_score"):
        if f in row and row[f] is not None and not isinstance(row[f], str):
            raise MTBFormatError(f"{where}: field {f!r} must be text, got {type(row[f]).__name__}")
    opts = row["options"]
    if not isinstance(opts, dict) or any(not isinstance(opts.get(x), str) for x in LETTERS):
        raise MTBFormatError(f"{where}: field 'options' must map A, B, C and D to text")
    if row["answer"] not in tuple(LETTERS):
        raise MTBFormatError(f"{where}: field 'answer' must be one of A-D, got {row['answer']!r}")
    return row


def _file_rows(p: Path) -> list[tuple[int, object]]:
    """(row number, decoded row) of one MTB file; a file that cannot be read at all raises MTBFormatError, a line
    that is not UTF-8 or not JSON comes back as an ``MTBFormatError`` instance in place of its row."""
    import json

    if p.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return list(enumerate(pq.read_table(p).to_pylist(), 1))
        except (pa.ArrowException, OSError) as e:
            raise MTBFormatError(f"{p}: not a readable parquet file ({type(e).__name__}: {str(e)[:200]})") from e
    raw = p.read_bytes()
    if p.suffix == ".json" and raw.lstrip().startswith(b"["):
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise MTBFormatError(f"{p}: not UTF-8 text (byte {e.start})") from e
        except json.JSONDecodeError as e:
            raise MTBFormatError(f"{p}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
        return list(enumerate(data, 1))
    rows: list[tuple[int, object]] = []
    for ln, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append((ln, json.loads(line.decode("utf-8"))))
        except UnicodeDecodeError as e:  # never kept as replacement characters: the row is reported instead
            rows.append((ln, MTBFormatError(f"{p} row {ln}: not UTF-8 text (byte {e.start} of the line)")))
        except json.JSONDecodeError as e:
            rows.append((ln, MTBFormatError(f"{p} row {ln}: not JSON ({e.msg})")))
    return rows


def load_mtb(folder: str | Path, skipped: list[str] | None = None) -> dict[str, list[dict]]:
    """``{"dev": [...], "test": [...]}`` from a local MusicTheoryBench folder in its released layout (parquet/jsonl/json
    files; the split from each row's ``split`` field, else from a file name containing ``dev``/``test``).

    ``skipped``: when a list is given, a bad row (or an unreadable file) is appended there as one message naming
    the file, row and reason, and loading goes on (what ``chatmusician eval --mtb`` does); without it the first bad
    row raises.

    Raises:
        FileNotFoundError: no folder or no data file in it.
        MTBFormatError: a row misses a field (``stem``, ``options`` A-D, ``subject``, ``answer``), is not JSON or not
            UTF-8, or a file is unreadable (only without ``skipped``); the message names the file and the row.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: MusicTheoryBench folder not found")
    files = sorted(p for p in folder.rglob("*") if p.suffix in {".parquet", ".jsonl", ".json"} and p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder}: no .parquet/.jsonl/.json files")

    def bad(err: MTBFormatError) -> None:
        if skipped is None:
            raise err
        skipped.append(str(err))

    splits: dict[str, list[dict]] = {}
    for p in files:
        try:
            rows = _file_rows(p)
        except MTBFormatError as e:
            bad(e)
            continue
        for ln, row in rows:
            if isinstance(row, MTBFormatError):
                bad(row)
                continue
            where = f"{p} row {ln}" + (f" (id {row.get('id')})" if isinstance(row, dict) and "id" in row else "")
            try:
                if not isinstance(row, dict):
                    raise MTBFormatError(f"{where}: not an object")
                _check_row(row, where)
                split = row.get("split") or ("dev" if "dev" in p.name else "test")
                if not isinstance(split, str):
                    raise MTBFormatError(f"{where}: field 'split' must be text, got {split!r}")
            except MTBFormatError as e:
                bad(e)
                continue
            splits.setdefault(split, []).append(row)
    splits.setdefault("dev", [])
    splits.setdefault("test", [])
    return splits


def count_checks(data: dict[str, list[dict]]) -> list[str]:
    """Differences from the released sizes (5 dev; 367 test = 269 knowledge + 98 reasoning), one line each."""
    have = {"dev": len(data.get("dev", [])), "test": len(data.get("test", []))}
    for subj in ("knowledge", "reasoning"):
        have[subj] = sum(r.get("subject") == subj for r in data.get("test", []))
    return [f"{k}: {have[k]} items, the released set has {v}" for k, v in RELEASED_SIZES.items() if have[k] != v]


_ANSWER_RE = re.compile(r"[Aa]nswer(?:\s+is)?\s*:?\s*\(?([ABCD])\b")


def extract_letter(text: str) -> str | None:
    """The answer letter of a generated reply: ``Answer: X`` when present, else the first capital A-D
    (OpenCompass ``first_capital_postprocess``)."""
    m = list(_ANSWER_RE.finditer(text))
    if m:
        return m[-1].group(1)
    m2 = re.search(r"[ABCD]", text)
    return m2.group(0) if m2 else None


@torch.no_grad()
def _generate(model, tokenizer, texts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy continuations (raw text prompts, tokenizer defaults, left padding)."""
    tokenizer.padding_side = "left"
    out = []
    for k in range(0, len(texts), batch_size):
        enc = tokenizer(texts[k : k + batch_size], return_tensors="pt", padding=True)
        enc = {n: v.to(model.device) for n, v in enc.items() if n in ("input_ids", "attention_mask")}
        ids = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        out += tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def evaluate_mtb(model, tokenizer, data: dict[str, list[dict]], few_shot: bool = False, max_seq_len: int = 2048,
                 mode: str = "ppl", batch_size: int = 8, max_new_tokens: int = 100,
                 predictions: str | Path | None = None, released: bool = True) -> dict:
    """Accuracy per subject (``knowledge``, ``reasoning``) and overall.

    ``mode``: ``ppl`` (the paper: lowest mean loss of the four ``Answer: X`` prompts), ``gen`` (greedy continuation of
    ``Answer:``, letter extracted), ``cot`` (the question + a step-by-step instruction, ``Answer: X`` extracted; with
    ``few_shot`` the dev items' ``analysis`` is the worked exemplar). Few-shot without a dev split is not run: the
    result says so (``skipped``). ``predictions``: jsonl with one row per item (id, subject, gold, pred, correct,
    losses or reply). Count differences from the released sizes are listed under ``count_checks`` (``released``
    False, e.g. for the built-in theory set: not checked).
    """
    import json

    if mode not in ("ppl", "gen", "cot"):
        raise ValueError(f"mode must be ppl, gen or cot, got {mode!r}")
    tag = f"{'few' if few_shot else 'zero'}_shot" + ("" if mode == "ppl" else f"_{mode}")
    res: dict = {"mode": mode, "few_shot": few_shot, "count_checks": count_checks(data) if released else []}
    exemplars = data.get("dev", [])[:5] if few_shot else []
    if few_shot and not exemplars:
        res["skipped"] = "few-shot needs the dev split (5 exemplars) and this copy has none; nothing scored"
        return res
    items = [r for r in data.get("test", []) if r.get("subject") in ("knowledge", "reasoning")]
    rows = []
    if mode == "ppl":
        cands = [prompts_for(r, exemplars, tokenizer, max_seq_len) for r in items]
        for ls in question_losses(model, tokenizer, cands, max_seq_len, batch_size=batch_size):
            rows.append({"pred": LETTERS[ls.index(min(ls))], "losses": ls})
    else:
        texts = []
        for r in items:
            if mode == "gen":
                texts.append(prompts_for(r, exemplars, tokenizer, max_seq_len)[0][:-1].rstrip())  # ends "Answer:"
            else:
                shots = "".join(_block(e).rstrip() + "\n" + (e.get("analysis") or "").strip() + f"\nAnswer: {e['answer']}\n\n"
                                for e in exemplars)
                texts.append(HINT + "\n" + shots + _block(r)[: -len("Answer: ")] + COT_SUFFIX + "\n")
        replies = _generate(model, tokenizer, texts, max_new_tokens if mode == "gen" else max(max_new_tokens, 256),
                            batch_size)
        rows = [{"pred": extract_letter(t), "reply": t} for t in replies]
    for r, row in zip(items, rows):
        row.update({"id": r.get("id"), "subject": r["subject"], "topic": r.get("topic"), "gold": r["answer"],
                    "correct": row["pred"] == r["answer"]})
    for subject in ("knowledge", "reasoning"):
        sel = [x for x in rows if x["subject"] == subject]
        res[f"{subject}_{tag}"] = {"n": len(sel), "accuracy": sum(x["correct"] for x in sel) / max(1, len(sel))}
    res[f"all_{tag}"] = {"n": len(rows), "accuracy": sum(x["correct"] for x in rows) / max(1, len(rows))}
    topics = sorted({x["topic"] for x in rows if x["topic"]})
    if topics:  # the built-in theory set (chatmusician.theory) tags every item with its topic
        res[f"per_topic_{tag}"] = {t: {"n": sum(x["topic"] == t for x in rows),
                                       "accuracy": sum(x["correct"] for x in rows if x["topic"] == t)
                                       / max(1, sum(x["topic"] == t for x in rows))} for t in topics}
    if predictions:
        from musiccore.runs import atomic_path

        with atomic_path(predictions) as tmp:
            tmp.write_text("".join(json.dumps({"mode": mode, "few_shot": few_shot, **x}) + "\n" for x in rows))
    return res
