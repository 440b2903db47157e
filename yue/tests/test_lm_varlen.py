"""The LM collator's flash-attention varlen boundaries (``Collator(varlen=True)``, issue 13 item 4 follow-up).

- the boundaries equal the ones counted by hand for 2 packed blocks (several documents, a document cut by the block
  end, padding) and are one sample per row without document masking; off by default (the Trainer's stream
  dispatcher slices every tensor of a batch along dim 0, see ``Collator``);
- a forward of the YuE LM with such a batch hands them to every attention call unchanged;
- a real training run (:func:`yue.lm.train.train`, micro-batches of 2 blocks) hands every attention call of every step
  all the boundaries of its own 2 blocks: the trainer turns ``varlen`` on and keeps accelerate's stream dispatcher
  (which would cut ``cu_seq_lens`` to its first 2 entries) out of the way.
(That flash-attention then keeps the documents apart: shared/tests/test_varlen.py.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from yue.lm.data import Collator, PreparedData, pack_documents
from yue.lm.model import build_lm

EOD, PAD = 7, 0
VARLEN = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def _blocks(doc_masking: bool):
    docs = [np.concatenate([np.arange(n - 1) + 100 + 1000 * k, [EOD]]) for k, n in enumerate([3, 4, 5, 2])]
    # block 0: doc 1 (3) | doc 2 (4) | first token of doc 3; block 1: rest of doc 3 (4) | doc 4 (2) | padding (2)
    return pack_documents(docs, 8, doc_masking, PAD)


def test_collator_boundaries_are_the_hand_counted_ones():
    b = Collator(PAD, doc_masking=True, varlen=True)(_blocks(True))
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 0, 1, 0, 1]]
    assert b["cu_seq_lens_q"].tolist() == [0, 3, 7, 8, 12, 14, 16] == b["cu_seq_lens_k"].tolist()
    assert b["cu_seq_lens_q"].dtype == torch.int32 and b["max_length_q"] == b["max_length_k"] == 4
    # a shorter row: the padding run is a sample of its own
    first, second = _blocks(True)
    short = Collator(PAD, doc_masking=True, varlen=True)([first, {k: v[:5] for k, v in second.items()}])
    assert short["cu_seq_lens_q"].tolist() == [0, 3, 7, 8, 12, 13, 16]
    plain = Collator(PAD, doc_masking=False, varlen=True)(_blocks(False))  # no masking: each row one sequence
    assert plain["cu_seq_lens_q"].tolist() == [0, 8, 16] and plain["max_length_q"] == 8
    assert not set(Collator(PAD, doc_masking=True)(_blocks(True))) & set(VARLEN)  # off by default


def test_boundaries_reach_every_attention_call(tiny_tokenizer):
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    from musiccore.attention import register_packed_attention

    real = AttentionInterface()[register_packed_attention()]
    seen: list[dict] = []

    def watched(module, query, key, value, attention_mask, *a, **kw):
        seen.append({k: kw.get(k) for k in VARLEN})
        return real(module, query, key, value, attention_mask, *a, **kw)

    AttentionInterface.register("test_watch_varlen", watched)
    AttentionMaskInterface.register("test_watch_varlen", ALL_MASK_ATTENTION_FUNCTIONS["packed_sdpa"])
    eod = tiny_tokenizer.id("<EOD>")
    docs = [np.concatenate([np.arange(n - 1) + 10 + 7 * k, [eod]]) for k, n in enumerate([5, 9, 4])]
    blocks = pack_documents(docs, 12, True, tiny_tokenizer.id("<PAD>"))
    batch = Collator(tiny_tokenizer.id("<PAD>"), doc_masking=True, varlen=True)(blocks)
    model = build_lm("tiny_stage1", tiny_tokenizer.layout, attn_implementation="test_watch_varlen", seed=0)
    out = model(**batch)
    assert torch.isfinite(out.loss)
    assert len(seen) == model.config.num_hidden_layers
    for kw in seen:
        assert kw["cu_seq_lens_q"] is batch["cu_seq_lens_q"] and kw["cu_seq_lens_k"] is batch["cu_seq_lens_k"]
        assert kw["max_length_q"] == kw["max_length_k"] == batch["max_length_q"] == 7  # 9-token doc 2 is cut at 7
    assert batch["cu_seq_lens_q"].tolist() == [0, 5, 12, 14, 18, 24]



# ------------------------------------------------------------------------------------------- real training runs
WATCH = "test_train_varlen"


def watch_boundaries() -> list:
    """Register :data:`WATCH`: ``packed_sdpa`` that first records, per call, ``(batch rows, cu_seq_lens_q,
    max_length_q, cu_seq_lens_k)`` as the call got them (lists; None when absent). Returns the record."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    from musiccore.attention import register_packed_attention

    real = AttentionInterface()[register_packed_attention()]
    seen: list[tuple] = []

    def watched(module, query, key, value, attention_mask, *a, **kw):
        cu_q, cu_k = kw.get("cu_seq_lens_q"), kw.get("cu_seq_lens_k")
        seen.append((query.shape[0], None if cu_q is None else cu_q.tolist(), kw.get("max_length_q"),
                     None if cu_k is None else cu_k.tolist()))
        return real(module, query, key, value, attention_mask, *a, **kw)

    AttentionInterface.register(WATCH, watched)
    AttentionMaskInterface.register(WATCH, ALL_MASK_ATTENTION_FUNCTIONS["packed_sdpa"])
    return seen


def run_overrides(prepared, run_dir, steps: int) -> list[str]:
    return [f"data.prepared={prepared}", f"run.dir={run_dir}", "data.block_size=256", "trainer.micro_batch=2",
            "trainer.log_every=1", f"trainer.max_steps={steps}", "eval.enabled=false", "data.doc_masking=true",
            f"model.attn_implementation={WATCH}"]  # fmt: skip


def expected_calls(cfg, steps: int, world: int) -> list[list[tuple]]:
    """Per rank, per step: the record every attention call of that step must show. The batches are rebuilt from the
    deterministic stream: each step takes the next ``world`` x 2 blocks, rank r the r-th pair."""
    from yue.lm.data import BlockStream, DocumentBuilder, PreparedData

    data = PreparedData(cfg.data.prepared)
    it = iter(BlockStream(DocumentBuilder(data, cfg), data.split("train"), 2 * world, cfg.run.seed))
    out: list[list[tuple]] = [[] for _ in range(world)]
    for _ in range(steps):
        for r in range(world):
            pos = np.stack([next(it)["position_ids"], next(it)["position_ids"]])  # [2, T]
            cu = np.flatnonzero(pos.reshape(-1) == 0).tolist() + [pos.size]  # every document start, then B*T
            out[r].append((2, cu, int(np.diff(cu).max()), cu))
    return out


def check_calls(seen: list, want: list[tuple], layers: int) -> int:
    """Every attention call of step k (``layers`` calls, forward only) got ``want[k]``; returns the number of
    document starts inside blocks (beyond each row's first) that the check covered."""
    assert len(seen) == len(want) * layers  # no eval, no recomputation; final/ is exported with sdpa
    for step, w in enumerate(want):
        assert seen[step * layers : (step + 1) * layers] == [w] * layers, (step, seen[step * layers], w)
    return sum(len(w[1]) - 3 for w in want)


def test_training_run_hands_each_micro_batch_its_own_boundaries(lm_cfg):
    """One process, micro-batches of 2 blocks. Fails without ``varlen`` (no call gets boundaries) and with
    accelerate's stream dispatcher, its default for an IterableDataset (they arrive cut to ``[0, T]``)."""
    from yue.lm.train import train

    seen = watch_boundaries()
    steps = 3
    cfg = lm_cfg("stage1", f"trainer.max_steps={steps}", "eval.enabled=false", "data.doc_masking=true",
                 f"model.attn_implementation={WATCH}")  # fmt: skip
    assert train(cfg)["global_step"] == steps
    layers = build_lm("tiny_stage1", PreparedData(cfg.data.prepared).tok.layout).config.num_hidden_layers
    assert check_calls(seen, expected_calls(cfg, steps, 1)[0], layers) >= 2  # documents do end inside the blocks


def _rank_main(out_dir: str, prepared: str, steps: int) -> None:
    """One rank of :func:`test_two_ranks_train_on_their_own_blocks_with_their_own_boundaries` (under torchrun)."""
    import json
    import os
    from pathlib import Path

    from musiccore.config import load_config
    from yue.lm.config import LMTrainConfig
    from yue.lm.train import train

    torch.set_num_threads(1)
    seen = watch_boundaries()
    cfg = load_config(LMTrainConfig, Path(__file__).parents[1] / "configs" / "tiny_stage1.yaml",
                      run_overrides(prepared, Path(out_dir) / "run", steps))  # fmt: skip
    assert train(cfg)["global_step"] == steps
    (Path(out_dir) / f"rank{os.environ['RANK']}.json").write_text(json.dumps(seen))


@pytest.mark.slow
def test_two_ranks_train_on_their_own_blocks_with_their_own_boundaries(prepared_dir, tmp_path):
    """Two ``torchrun`` processes (gloo, CPU) of a real training run: at step k rank r trains on blocks
    4k + 2r and 4k + 2r + 1 of the stream (disjoint shares, nothing skipped: each rank reads the stream and keeps its
    own pair) and every attention call gets exactly their boundaries. ~15 s (two processes start)."""
    import json
    import os
    import socket
    import subprocess
    import sys

    from musiccore.config import load_config
    from yue.lm.config import LMTrainConfig

    steps = 3
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--nnodes=1", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{port}", __file__, str(tmp_path), str(prepared_dir), str(steps)]  # fmt: skip
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    cfg = load_config(LMTrainConfig, Path(__file__).parents[1] / "configs" / "tiny_stage1.yaml",
                      run_overrides(prepared_dir, tmp_path / "run", steps))  # fmt: skip
    layers = build_lm("tiny_stage1", PreparedData(prepared_dir).tok.layout).config.num_hidden_layers
    want = expected_calls(cfg, steps, 2)
    got = [[tuple(c) for c in json.loads((tmp_path / f"rank{k}.json").read_text())] for k in range(2)]
    assert sum(check_calls(got[k], want[k], layers) for k in range(2)) >= 2


if __name__ == "__main__":
    _rank_main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
