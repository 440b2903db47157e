"""Two ``torchrun`` processes (gloo, CPU, one thread each) split MERT's training batches without overlap.

Each rank builds the real trainer (:func:`mert.train.build_trainer` on the tiny config and the synthetic clips), takes
``trainer.get_train_dataloader()`` (the :class:`mert.data.SecondsBatchSampler` prepared by accelerate) and walks
two epochs, recording every ``(row, batch seed)`` the dataset is asked for. The parent asserts, per epoch: the
ranks' rows are disjoint, together they are every training row, the batch seeds of the two ranks differ (masks and
noise are drawn per batch), and epoch 1 visits the batches in another order than epoch 0.

When the number of batches is odd, accelerate tops the last round up with the first batch of the epoch (so both
ranks run the same number of steps); that repeat is the only overlap allowed, and the test checks it.

This file is also the rank script: ``torchrun ... test_dist_sampler.py <out_dir> <overrides.json>``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORLD = 2
CASES = {"even": 48000, "odd": 96000}  # data.max_tokens: 2 clips of 1 s per batch (6 batches), or 4 (3 batches)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------- rank side
def _rank_main(out_dir: str, overrides_file: str) -> None:
    import torch

    torch.set_num_threads(1)
    from mert import data as mdata
    from mert.train import CONFIG_DIR, build_trainer, load_train_config

    rank = int(os.environ["RANK"])
    seen: list = []
    real_getitem = mdata.Subset.__getitem__

    def recording_getitem(self, key):  # what the DataLoader of this rank really fetches
        seen.append([int(key[0]), int(key[1])])
        return real_getitem(self, key)

    mdata.Subset.__getitem__ = recording_getitem
    cases = json.loads(Path(overrides_file).read_text())
    for name, overrides in cases.items():
        cfg = load_train_config(CONFIG_DIR / "tiny.yaml", overrides)
        trainer, _, _ = build_trainer(cfg)
        dl = trainer.get_train_dataloader()
        epochs = []
        for epoch in (0, 1):
            trainer.train_sampler.set_epoch(epoch)  # what EpochCallback does at each epoch start
            seen.clear()
            batches = 0
            for batch in dl:
                assert batch["input_values"].shape[0] >= 1
                batches += 1
            epochs.append({"items": list(seen), "batches": batches, "num_rows": len(trainer.train_dataset),
                           "num_batches": len(trainer.train_sampler)})
        (Path(out_dir) / f"{name}.rank{rank}.json").write_text(json.dumps(epochs))


# ------------------------------------------------------------------------------------------------------- parent side
@pytest.fixture(scope="module")
def launched(synth_data, tiny_cache, tmp_path_factory) -> Path:
    """One two-process launch running both cases; the folder of the per-rank files."""
    from conftest import tiny_overrides

    out = tmp_path_factory.mktemp("mert_dist")
    cases = {name: tiny_overrides(synth_data, out / f"run-{name}", tiny_cache, **{
        "data.max_tokens": tokens, "data.min_sample_size": 16000, "data.max_sample_size": 24000,
        "trainer.eval_steps": 0, "trainer.plot": "false"}) for name, tokens in CASES.items()}
    (out / "overrides.json").write_text(json.dumps(cases))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="",
               MUSIC_RUNS_DIR=str(out / "runs"))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={WORLD}", "--nnodes=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", str(Path(__file__)), str(out),
           str(out / "overrides.json")]
    r = subprocess.run(cmd, cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_seconds_batch_sampler_splits_rows_between_two_ranks(launched, case):
    ranks = [json.loads((launched / f"{case}.rank{r}.json").read_text()) for r in range(WORLD)]
    n_rows, n_batches = ranks[0][0]["num_rows"], ranks[0][0]["num_batches"]
    assert n_rows == 12 and n_batches == {"even": 6, "odd": 3}[case]
    orders = []
    for epoch in (0, 1):
        r0, r1 = (ranks[r][epoch] for r in range(WORLD))
        assert r0["batches"] == r1["batches"] == -(-n_batches // WORLD)  # same number of steps on both ranks
        rows = [[row for row, _ in r["items"]] for r in (r0, r1)]
        seeds = [{seed for _, seed in r["items"]} for r in (r0, r1)]
        assert set(rows[0]) | set(rows[1]) == set(range(n_rows))
        if n_batches % WORLD == 0:
            assert not set(rows[0]) & set(rows[1]), f"epoch {epoch}: rows on both ranks {sorted(set(rows[0]) & set(rows[1]))}"
            assert len(rows[0]) + len(rows[1]) == n_rows and not seeds[0] & seeds[1]
        else:
            # the odd batch out is topped up with the epoch's first batch: rank 1's last batch repeats rank 0's first
            per_batch = len(r0["items"]) // r0["batches"]
            first0, last1 = r0["items"][:per_batch], r1["items"][-per_batch:]
            assert sorted(map(tuple, first0)) == sorted(map(tuple, last1))
            body1 = [row for row, _ in r1["items"][:-per_batch]]
            assert not set(rows[0]) & set(body1) and len(rows[0]) + len(body1) == n_rows
        orders.append([tuple(x) for x in r0["items"] + r1["items"]])
    assert orders[0] != orders[1]  # a new epoch, a new batch order and new batch seeds


if __name__ == "__main__":
    _rank_main(sys.argv[1], sys.argv[2])
