"""pytest plugin shared by every project (registered through the ``pytest11`` entry point).

Markers
-------
slow    long tests (real-size shapes, long audio); run with ``--runslow`` or ``MUSIC_RUN_SLOW=1``
gpu     need CUDA; skipped when ``torch.cuda.is_available()`` is false
slurm   need a running Slurm controller (``shared/scripts/slurm-local.sh start``); skipped otherwise

The default suite (``make test``) runs everything else on a CPU.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("musiccore")
    group.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long test; run with --runslow or MUSIC_RUN_SLOW=1")
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one")
    config.addinivalue_line("markers", "slurm: needs a running Slurm (shared/scripts/slurm-local.sh start)")


@functools.lru_cache(maxsize=None)
def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@functools.lru_cache(maxsize=None)
def slurm_available() -> bool:
    """True when ``sinfo`` answers and lists at least one node that is up."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    states = out.stdout.split()
    return out.returncode == 0 and any(s.rstrip("*") in {"idle", "mix", "alloc", "comp"} for s in states)


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--runslow") or os.environ.get("MUSIC_RUN_SLOW") == "1"
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: use --runslow or MUSIC_RUN_SLOW=1"))
        if "gpu" in item.keywords and not cuda_available():
            item.add_marker(pytest.mark.skip(reason="gpu: no CUDA device"))
        if "slurm" in item.keywords and not slurm_available():
            item.add_marker(pytest.mark.skip(reason="slurm: no running Slurm (shared/scripts/slurm-local.sh start)"))


def require_tool(*names: str) -> None:
    """Skip the calling test when a command-line tool is missing (a bare machine still gets a green run)."""
    for n in names:
        if shutil.which(n) is None:
            pytest.skip(f"{n} not installed (make setup installs it)")
