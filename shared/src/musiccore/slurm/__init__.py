"""Slurm launch: render the shared sbatch template and submit it; wait for jobs (used by tests).

Cluster facts come from flags or the environment, never from code:

=================  ===============================  =====================================
flag               environment variable             meaning
=================  ===============================  =====================================
``--partition``    ``SLURM_PARTITION``              partition (omitted when unset)
``--account``      ``SLURM_ACCOUNT``                account (omitted when unset)
``--time``         ``MUSIC_SLURM_TIME``             time limit (default 24:00:00)
``--nodes``        ``MUSIC_SLURM_NODES``            nodes (default 1)
``--gpus-per-node````MUSIC_SLURM_GPUS_PER_NODE``     GPUs per node (default: see below)
``--nproc-per-node````MUSIC_SLURM_NPROC_PER_NODE``   CPU processes per node when no GPUs (default 1)
``--cpus-per-task````MUSIC_SLURM_CPUS_PER_TASK``     CPUs per node task (default 8 per GPU, else 2)
=================  ===============================  =====================================

A config file may also carry a ``slurm:`` section (``nodes``, ``gpus_per_node``, ``nproc_per_node``,
``cpus_per_task``, ``time``): what the recipe needs, e.g. ``gpus_per_node: 8`` in a 7B config. Each value comes from,
in this order: the flag, the environment variable, the config's ``slurm:`` section, the default. GPUs per node are
never silently none: without a flag, variable or config value, the launcher asks ``sinfo`` how many GPUs a node of
the partition (the default partition when none is named) offers and takes all of them; the choice and where it
came from are written into the script as a comment and logged. Only a partition without GPUs gives a CPU job.

Logs go to ``$MUSIC_RUNS_DIR/slurm/<job-name>-<jobid>.out``. The job runs
``torchrun -m <project>.cli train --config <config> key=value ...`` from the project folder, so a relaunch or a
requeue of the same config resumes the same run folder.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template

from ..runs import atomic_write_text, runs_root

log = logging.getLogger(__name__)


class SlurmError(RuntimeError):
    """sbatch/scontrol missing or failing (the message holds Slurm's own words)."""


@dataclass
class JobSpec:
    """Everything the sbatch template needs; see the module docstring for defaults from the environment."""

    module: str  # python module run by torchrun, e.g. "mert.cli"
    args: list[str] = field(default_factory=list)  # arguments after the module
    workdir: str = "."
    job_name: str = "music"
    nodes: int = 1
    gpus_per_node: int = 0
    nproc_per_node: int = 1
    cpus_per_task: int | None = None
    time: str = "24:00:00"
    partition: str | None = None
    account: str | None = None
    signal_lead_s: int = 120  # seconds before the time limit at which USR1 asks for a checkpoint
    extra_sbatch: list[str] = field(default_factory=list)  # raw "#SBATCH ..." option strings, e.g. "--mem=0"
    log_dir: str | None = None
    python: str = sys.executable
    gpu_source: str = ""  # where gpus_per_node came from (written into the script as a comment)

    @classmethod
    def from_env(cls, module: str, args: list[str], launch: dict | None = None, **kw) -> "JobSpec":
        """A spec from flags (``kw``, ``None`` = not given), then the environment, then ``launch`` (a config's
        ``slurm:`` section), then defaults; GPUs per node fall back to what the partition offers (:func:`partition_gpus`)."""
        env, launch = os.environ, dict(launch or {})
        kw = {k: v for k, v in kw.items() if v is not None}
        env_keys = {"nodes": "MUSIC_SLURM_NODES", "gpus_per_node": "MUSIC_SLURM_GPUS_PER_NODE",
                    "nproc_per_node": "MUSIC_SLURM_NPROC_PER_NODE", "cpus_per_task": "MUSIC_SLURM_CPUS_PER_TASK",
                    "time": "MUSIC_SLURM_TIME"}  # fmt: skip
        sources = {}
        for key, var in env_keys.items():
            if key in kw:
                sources[key] = "flag"
            elif env.get(var):
                kw[key] = env[var] if key == "time" else int(env[var])
                sources[key] = f"${var}"
            elif key in launch:
                kw[key] = launch[key]
                sources[key] = "config slurm section"
        kw.setdefault("partition", env.get("SLURM_PARTITION"))
        kw.setdefault("account", env.get("SLURM_ACCOUNT"))
        if "gpus_per_node" in kw:
            kw["gpu_source"] = sources.get("gpus_per_node", "flag")
        else:
            try:
                found, why = partition_gpus(kw.get("partition")), "sinfo not found"
            except SlurmError as e:  # controller down, unknown partition: sbatch will say more; do not guess GPUs
                found, why = None, f"sinfo failed: {e}"
            if found is None:
                kw["gpus_per_node"] = 0
                kw["gpu_source"] = (f"{why}, so NO GPUs requested: give a count with the gpus-per-node flag, "
                                    "MUSIC_SLURM_GPUS_PER_NODE or slurm.gpus_per_node in the config")  # fmt: skip
                log.warning("slurm: %s", kw["gpu_source"])
            else:
                n, part = found
                kw["gpus_per_node"] = n
                kw["gpu_source"] = f"all GPUs of a node of partition {part!r} (sinfo)" if n else (
                    f"partition {part!r} offers no GPUs (sinfo): CPU processes")  # fmt: skip
            log.info("slurm: %d GPUs per node (%s)", kw["gpus_per_node"], kw["gpu_source"])
        return cls(module=module, args=args, **kw)


_GRES_GPU = re.compile(r"^gpu(?::[^:(]+)?:(\d+)")


def partition_gpus(partition: str | None = None) -> tuple[int, str] | None:
    """``(GPUs per node, partition)`` that ``sinfo`` reports for ``partition`` (the default one when ``None``).

    Reads the generic resources (``%G``, e.g. ``gpu:8``, ``gpu:a100:4(S:0-1)``, ``(null)``) and returns the largest
    GPU count of the partition's nodes (0 when it has none). ``None`` when ``sinfo`` is not installed (e.g. a
    ``--dry-run`` on a laptop).

    Raises:
        SlurmError: ``sinfo`` fails, or the named partition (or a default one) does not exist.
    """
    if shutil.which("sinfo") is None:
        return None
    cmd = ["sinfo", "-h", "-o", "%P|%G"] + (["-p", partition] if partition else [])
    rows = [line.split("|", 1) for line in _run(cmd).splitlines() if "|" in line]
    if partition is None:  # the default partition is marked with '*'
        rows = [r for r in rows if r[0].endswith("*")]
    else:
        rows = [r for r in rows if r[0].rstrip("*") == partition]
    if not rows:
        raise SlurmError(f"sinfo lists no {'partition ' + repr(partition) if partition else 'default partition'}")
    best = 0
    for _, gres in rows:
        for item in gres.split(","):
            m = _GRES_GPU.match(item.strip())
            if m:
                best = max(best, int(m.group(1)))
    return best, rows[0][0].rstrip("*")


def render(spec: JobSpec) -> str:
    """The sbatch script for ``spec`` (a string; nothing is submitted)."""
    extra = list(spec.extra_sbatch)
    if spec.partition:
        extra.append(f"--partition={spec.partition}")
    if spec.account:
        extra.append(f"--account={spec.account}")
    if spec.gpus_per_node > 0:
        extra.append(f"--gpus-per-node={spec.gpus_per_node}")
    nproc = spec.gpus_per_node if spec.gpus_per_node > 0 else spec.nproc_per_node
    cpus = spec.cpus_per_task or (8 * spec.gpus_per_node if spec.gpus_per_node > 0 else max(1, nproc))
    log_dir = Path(spec.log_dir or runs_root() / "slurm").resolve()
    text = resources.files(__package__).joinpath("train.sbatch").read_text()
    return Template(text).substitute(
        job_name=spec.job_name,
        nodes=spec.nodes,
        cpus_per_task=cpus,
        time=spec.time,
        log_dir=log_dir,
        workdir=Path(spec.workdir).resolve(),
        signal_lead_s=spec.signal_lead_s,
        extra_sbatch="\n".join([f"#SBATCH {e}" for e in extra]
                                + [f"# GPUs per node: {spec.gpus_per_node} ({spec.gpu_source or 'given'})"]),
        python=shlex.quote(spec.python),
        nproc_per_node=nproc,
        module=spec.module,
        args=" ".join(shlex.quote(a) for a in spec.args),
    )


def _run(cmd: list[str], timeout: float = 30) -> str:
    if shutil.which(cmd[0]) is None:
        raise SlurmError(f"{cmd[0]} not found: install Slurm, or start a local one with shared/scripts/slurm-local.sh start")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise SlurmError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def submit(spec: JobSpec, script_path: str | Path | None = None) -> str:
    """Write the rendered script (beside the logs unless ``script_path``) and ``sbatch`` it; returns the job id."""
    text = render(spec)
    log_dir = Path(spec.log_dir or runs_root() / "slurm").resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    path = Path(script_path) if script_path else log_dir / f"{spec.job_name}.sbatch"
    atomic_write_text(path, text)
    out = _run(["sbatch", "--parsable", str(path)])
    return out.strip().split(";")[0]


def job_state(job_id: str) -> str | None:
    """Slurm's state of the job (``PENDING``, ``RUNNING``, ``COMPLETED``...), ``None`` once it is forgotten."""
    try:
        out = _run(["scontrol", "show", "job", "-o", str(job_id)])
    except SlurmError as e:
        if "Invalid job id" in str(e):
            return None
        raise
    m = re.search(r"JobState=(\S+)", out)
    return m.group(1) if m else None


FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def wait(job_id: str, timeout: float = 600, poll: float = 1.0, until: set[str] | None = None) -> str | None:
    """Block until the job reaches one of ``until`` (default: a final state) and return that state."""
    until = until or FINAL_STATES
    deadline = time.monotonic() + timeout
    state = job_state(job_id)
    while state is not None and state not in until:
        if time.monotonic() > deadline:
            raise TimeoutError(f"slurm job {job_id} still {state} after {timeout:.0f} s")
        time.sleep(poll)
        state = job_state(job_id)
    return state


def signal_job(job_id: str, sig: str = "USR1") -> None:
    """Send ``sig`` to the batch script, as Slurm does before the time limit (tests use it to force a requeue)."""
    _run(["scancel", f"--signal={sig}", "--batch", str(job_id)])


def train_job(project: str, config: str, overrides: list[str] | None = None, project_dir: str | Path | None = None, **kw) -> JobSpec:
    """The JobSpec running ``<project>.cli train --config <config> <overrides>`` from the project folder.

    Resources come from ``kw`` (flags), the environment, then the config's ``slurm:`` section (see the module docstring).
    """
    from ..config import launch_section

    name = kw.pop("job_name", None) or f"{project}-{Path(config).stem}"
    cfg_path = Path(project_dir or ".") / config
    launch = launch_section(cfg_path) if cfg_path.is_file() else {}
    return JobSpec.from_env(
        module=f"{project}.cli",
        args=["train", "--config", str(config), *(overrides or [])],
        workdir=str(project_dir or "."),
        job_name=name,
        launch=launch,
        **kw,
    )
