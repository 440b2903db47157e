"""Two ``torchrun`` processes (gloo, CPU, one thread each) split the Trainer's training data without overlap.

The LM trainers (ChatMusician, YuE) hand their data to ``transformers.Trainer``, which builds the sampler and lets
accelerate shard it over the ranks. This test runs that real code path with a world size of 2: each rank builds a
``Trainer``, takes ``trainer.get_train_dataloader()``, walks one epoch and writes the sample indices it received; the
parent process asserts the two sets are disjoint and their union is the whole dataset.

- map-style dataset (ChatMusician: a ``datasets.Dataset`` of packed rows): the Trainer's random sampler, sharded
  batch by batch (``BatchSamplerShard``); both ranks must draw the same permutation, or they would overlap.
- iterable dataset (YuE: ``BlockStream``), with YuE's ``accelerator_config={"dispatch_batches": False}`` (accelerate's
  dispatcher would slice the flash-attention boundaries of a batch): every rank reads the whole deterministic stream
  and keeps its own slice of each round (``IterableDatasetShard``); the test also checks that both ranks read it all.

When the data does not fill the last round of batches, accelerate (``even_batches``) tops it up with samples from
the start of the epoch so every rank runs the same number of steps (DDP needs that); that padding is the only
overlap allowed, and the test checks its exact size.

This file is also the rank script: ``torchrun ... test_dist_sampler.py <out_dir> <kind>:<n> ...`` (one launch runs
every case, so the processes start once).
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
BATCH = 2  # per device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(script: Path, args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """Start ``script`` in ``WORLD`` CPU processes (gloo) on a free local port; returns the finished process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="",
               TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={WORLD}", "--nnodes=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", str(script), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def read_ranks(out_dir: Path, case: str) -> list[list[list[int]]]:
    """Per rank, the batches it received in order, each a list of sample indices (``<case>.rank<r>.json``)."""
    return [json.loads((out_dir / f"{case}.rank{r}.json").read_text()) for r in range(WORLD)]


# ---------------------------------------------------------------------------------------------------------- rank side
def _rank_main(out_dir: str, cases: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    import datasets
    from transformers import Trainer, TrainingArguments

    rank = int(os.environ["RANK"])
    torch.manual_seed(1000 + rank)  # different global RNG per rank: the Trainer must not depend on it

    class Stream(torch.utils.data.IterableDataset):
        """Samples 0..n-1 once, like a finite pass of YuE's block stream; counts what this process read."""

        def __init__(self, n: int):
            self.n, self.read = n, 0

        def __iter__(self):
            for i in range(self.n):
                self.read += 1
                yield {"idx": i}

    def collate(rows):  # the projects' collators stack rows; this one keeps the sample index
        return {"idx": torch.tensor([int(r["idx"]) for r in rows])}

    # the TrainingArguments the LM trainers use on CPU (use_cpu -> gloo process group over torchrun's env)
    common = dict(output_dir=str(Path(out_dir) / "trainer"), per_device_train_batch_size=BATCH, use_cpu=True, seed=0,
                  dataloader_num_workers=0, remove_unused_columns=False, report_to="none", disable_tqdm=True,
                  max_steps=1)  # fmt: skip
    args = TrainingArguments(**common)
    assert args.world_size == WORLD, f"world size {args.world_size}"
    # YuE's setting for its block stream (yue.lm.train): no batch dispatcher, every rank reads the stream itself
    stream_args = TrainingArguments(**common, accelerator_config={"dispatch_batches": False})
    for case in cases:
        kind, n = case.split(":")[0], int(case.split(":")[1])
        if kind == "map":
            train = datasets.Dataset.from_dict({"idx": list(range(n))})
        elif kind == "iterable":
            train = Stream(n)
        else:
            raise ValueError(f"case {case!r}: expected map:<n> or iterable:<n>")
        trainer = Trainer(model=torch.nn.Linear(1, 1), args=stream_args if kind == "iterable" else args,
                          train_dataset=train, data_collator=collate)  # fmt: skip
        got = [batch["idx"].tolist() for batch in trainer.get_train_dataloader()]
        (Path(out_dir) / f"{case}.rank{rank}.json").write_text(json.dumps(got))
        if kind == "iterable":
            (Path(out_dir) / f"{case}.rank{rank}.read").write_text(str(train.read))


# ------------------------------------------------------------------------------------------------------- parent side
CASES = ["map:24", "map:21", "iterable:24", "iterable:21"]


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Path:
    """One two-process launch that runs every case; the folder of the per-rank index files."""
    out = tmp_path_factory.mktemp("dist_sampler")
    r = run_torchrun(Path(__file__), [str(out), *CASES], cwd=out)
    assert r.returncode == 0, r.stderr[-4000:]
    return out


@pytest.mark.parametrize("case", CASES)
def test_trainer_sampler_splits_data_between_two_ranks(launched, case):
    """Disjoint and complete for 24 samples (6 rounds of 2 ranks x 2); with 21, complete, both ranks run the same
    number of batches, and the only repeats are in the last round, topped up from the start (even_batches)."""
    n = int(case.split(":")[1])
    ranks = read_ranks(launched, case)
    assert len(ranks[0]) == len(ranks[1]) == -(-n // (WORLD * BATCH))  # same number of steps on every rank
    flat = [[i for b in batches for i in b] for batches in ranks]
    assert set(flat[0]) | set(flat[1]) == set(range(n)), f"not covered: {sorted(set(range(n)) - set(flat[0] + flat[1]))}"
    if n % (WORLD * BATCH) == 0:
        assert not set(flat[0]) & set(flat[1]), f"overlap: {sorted(set(flat[0]) & set(flat[1]))}"
        assert len(flat[0] + flat[1]) == n  # and nothing twice on one rank
    else:
        # all rounds but the last: disjoint and no repeats; the last round holds the n % 4 leftovers plus top-up
        body = [i for batches in ranks for b in batches[:-1] for i in b]
        assert len(body) == len(set(body)) == n - n % (WORLD * BATCH)
        last = [i for batches in ranks for i in batches[-1]]
        assert set(range(n)) - set(body) <= set(last)
        assert len(last) - len(set(last) - set(body)) < WORLD * BATCH  # top-up samples never fill a whole round
    if case.startswith("iterable"):  # no dispatcher: each rank read the whole stream and kept its own share
        assert [int((launched / f"{case}.rank{r}.read").read_text()) for r in range(WORLD)] == [n] * WORLD


if __name__ == "__main__":
    _rank_main(sys.argv[1], sys.argv[2:])
