"""`python -m musiccore.slurm submit --project mert --config configs/tiny.yaml [--nodes 2 --gpus-per-node 8] -- k=v ...`

Renders the shared sbatch template for ``<project>.cli train`` and submits it (``--dry-run`` prints the script).
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..config import ConfigError
from . import SlurmError, render, submit, train_job


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m musiccore.slurm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("submit", help="render and sbatch a training job")
    s.add_argument("--project", required=True)
    s.add_argument("--config", required=True)
    s.add_argument("--nodes", type=int)
    s.add_argument("--gpus-per-node", type=int)
    s.add_argument("--nproc-per-node", type=int)
    s.add_argument("--cpus-per-task", type=int)
    s.add_argument("--time")
    s.add_argument("--partition")
    s.add_argument("--account")
    s.add_argument("--job-name")
    s.add_argument("--sbatch", action="append", default=[], help="extra sbatch option, e.g. --sbatch=--mem=0 (repeatable)")
    s.add_argument("--dry-run", action="store_true", help="print the script instead of submitting it")
    s.add_argument("overrides", nargs="*", help="key=value config overrides (after --)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        spec = _spec(a)
    except (SlurmError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if a.dry_run:
        print(render(spec))
        return 0
    try:
        job = submit(spec)
    except SlurmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"submitted {spec.job_name} as job {job} ({spec.nodes} node(s) x {spec.gpus_per_node} GPU(s): {spec.gpu_source}); "
          f"log: {spec.log_dir or '$MUSIC_RUNS_DIR/slurm'}/{spec.job_name}-{job}.out")
    return 0


def _spec(a):
    return train_job(
        a.project, a.config, a.overrides, nodes=a.nodes, gpus_per_node=a.gpus_per_node, nproc_per_node=a.nproc_per_node,
        cpus_per_task=a.cpus_per_task, time=a.time, partition=a.partition, account=a.account, job_name=a.job_name,
        extra_sbatch=a.sbatch or None,
    )


if __name__ == "__main__":
    sys.exit(main())
