"""A tiny distributed job for checking a Slurm set-up end to end (used by the ``slurm`` tests).

Run as ``torchrun -m musiccore.slurm.selftest --out DIR --steps N --step-seconds S``: every rank joins a gloo
process group, all-reduces its rank, and counts steps. The count is saved to ``DIR/state.json`` only when a SIGTERM
arrives (what the sbatch template sends on Slurm's warning signal) or at the end, so a relaunch that resumes
from the middle proves that the signal reached the ranks and they saved before being stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..runs import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--step-seconds", type=float, default=0.0)
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.tensor([float(rank)])
    dist.all_reduce(t)

    state_path = out / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"step": 0, "launches": 0}
    state["launches"] += 1
    if rank == 0:
        atomic_write_json(out / f"started-{state['launches']}.json", state)
    while state["step"] < a.steps:
        time.sleep(a.step_seconds)
        state["step"] += 1
        if stop["flag"]:
            state["saved_at"] = state["step"]
            print(f"rank {rank}: SIGTERM, saving at step {state['step']}", flush=True)
            break
    if rank == 0:
        atomic_write_json(state_path, state)
        if state["step"] >= a.steps:
            atomic_write_json(out / "result.json", {
                "world_size": world, "resumed_from": state.get("saved_at"), "rank_sum": t.item(), "steps": state["step"], "launches": state["launches"],
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
            })
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
