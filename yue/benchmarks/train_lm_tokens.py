"""Trained tokens per second of the LM trainer: packed blocks vs one song per padded sequence, same samples, one run.

Both modes train the same documents (one per training song; stage 1: dual-track CoT, stage 2: every stem) with the
same model, optimizer and tokens:

- ``packed``: documents concatenated and cut into ``--block-size`` blocks (document masking: position ids restart,
  ``packed_sdpa`` attends inside each document only), ``--batch`` blocks per step, no padding;
- ``padded``: one document per row (a document longer than the block is split into block-size pieces, as the packed
  mode must too), ``--batch`` rows per step padded to the longest row, plain causal SDPA.

Throughput counts real (non-padding) tokens per second of forward + backward + AdamW step. Usage::

    python benchmarks/train_lm_tokens.py --prepared runs/prepared/tiny [--task stage1] [--block-size 8192]
        [--batch 2] [--max-docs 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def _rows_padded(docs: list[np.ndarray], L: int) -> list[dict]:
    rows = []
    for d in docs:
        for a in range(0, d.size, L):
            piece = d[a : a + L].astype(np.int64)
            lab = piece.copy()
            rows.append({"input_ids": piece, "labels": lab, "position_ids": np.arange(piece.size)})
    return rows


def _train(model, batches, collate) -> tuple[float, int]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    # warm-up step (allocations, first-call overheads) on the first batch, not timed
    b = collate(batches[0])
    model(**b).loss.backward()
    opt.zero_grad()
    n_real, t0 = 0, time.perf_counter()
    for rows in batches:
        b = collate(rows)
        loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        n_real += int(sum(len(r["input_ids"]) if "doc_ids" not in r else int((r["doc_ids"] >= 0).sum()) for r in rows))
    return time.perf_counter() - t0, n_real


def main(argv=None) -> dict:
    from musiccore.attention import register_packed_attention
    from musiccore.config import load_config
    from yue.lm.config import LMTrainConfig
    from yue.lm.data import Collator, DocumentBuilder, PreparedData, pack_documents
    from yue.lm.model import build_lm

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prepared", default="runs/prepared/tiny", help="a `yue prepare` folder")
    ap.add_argument("--task", choices=["stage1", "stage2"], default="stage1")
    ap.add_argument("--preset", default=None, help="model preset (default tiny_<task>)")
    ap.add_argument("--block-size", type=int, default=8192, help="tokens per block / longest row (released: 8192)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--max-docs", type=int, default=16)
    ap.add_argument("--stage2-chunk-frames", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = load_config(LMTrainConfig, None, [f"task={a.task}", f"data.prepared={a.prepared}",
                                            f"data.block_size={a.block_size}",
                                            f"data.stage2_chunk_frames={a.stage2_chunk_frames}"])  # fmt: skip
    data = PreparedData(a.prepared)
    builder = DocumentBuilder(data, cfg)
    modes = ["dual"] if a.task == "stage1" else ["vocal", "inst", "mix"]
    docs = [builder.document(r, m) for r in data.split("train") for m in modes][: a.max_docs]
    pad = data.tok.id("<PAD>")
    packed = pack_documents(docs, a.block_size, True, pad)
    padded = _rows_padded(docs, a.block_size)
    register_packed_attention()
    res = {}
    for name, rows, attn, masking in (("packed", packed, "packed_sdpa", True), ("padded", padded, "sdpa", False)):
        model = build_lm(a.preset or f"tiny_{a.task}", data.tok.layout, attn_implementation=attn, seed=0)
        batches = [rows[i : i + a.batch] for i in range(0, len(rows), a.batch)]
        secs, n_real = _train(model, batches, Collator(pad, masking))
        n_slots = sum(max(len(r["input_ids"]) for r in b) * len(b) for b in batches)
        res[name] = {"steps": len(batches), "real_tokens": n_real, "padding_share": 1 - n_real / n_slots,
                     "seconds": secs, "tokens_per_s": n_real / secs}  # fmt: skip
    total = sum(int(d.size) for d in docs)
    print(f"{len(docs)} documents, {total} tokens ({a.task}, block {a.block_size}, batch {a.batch}, "
          f"{a.threads} thread(s))")  # fmt: skip
    print(f"{'mode':8} {'steps':>6} {'real tokens':>12} {'padding':>8} {'seconds':>8} {'tokens/s':>10}")
    for name, r in res.items():
        print(f"{name:8} {r['steps']:6d} {r['real_tokens']:12d} {r['padding_share']:8.1%} {r['seconds']:8.2f} "
              f"{r['tokens_per_s']:10.1f}")  # fmt: skip
    res["ratio"] = res["packed"]["tokens_per_s"] / res["padded"]["tokens_per_s"]
    print(f"ratio packed / padded tokens per second: {res['ratio']:.2f}x")
    return res


if __name__ == "__main__":
    main()
