#!/usr/bin/env python3
"""Set-up part of `make test`, old script vs new, side by side in one run (issue 14).

Both run from the same fresh-clone-like copy of the checkout (the files git tracks plus untracked, not ignored ones:
no .venv, no egg-info, no data kit) into fresh temporary venvs, with the machine's package caches as they are (warm
after the warm-up round):

- old: ``shared/scripts/setup.sh`` as of ``--old-rev`` (pip, version ranges, torch first, DeepSpeed, editables), run
  with the arguments the root Makefile gave it (``--venv V shared mert chatmusician yue``);
- new: ``make setup VENV=V`` of the current checkout (the root ``requirements.lock`` installed by uv). uv itself is
  bootstrapped into a fresh folder every round (``MUSIC_UV_DIR``), so its ``pip install uv`` is part of the time.

    python3 shared/benchmarks/setup_speed.py [--rounds 1] [--no-warmup] [--keep]

Prints each round's wall time and the load average before it, then the ratio old/new of the medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: The last commit whose setup.sh is the pip/version-range installer (before the locks).
OLD_REV = "1c3e307"
PACKAGES = ["shared", "mert", "chatmusician", "yue"]


def fresh_clone(dst: Path) -> Path:
    """Copy what a clone would hold (tracked files, plus untracked ones git does not ignore) into ``dst``."""
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():  # deleted-but-tracked files are listed too
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def timed(cmd: list[str], env: dict[str, str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        r = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        tail = log.read_text()[-2000:]
        sys.exit(f"setup_speed: {' '.join(cmd[:3])}... failed (rc {r.returncode}); log: {log}\n{tail}")
    return dt


def check_venv(venv: Path) -> str:
    r = subprocess.run([str(venv / "bin" / "python"), "-c",
                        "import torch, transformers, deepspeed, musiccore, mert, chatmusician, yue; "
                        "print(torch.__version__, transformers.__version__, deepspeed.__version__)"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode != 0:
        sys.exit(f"setup_speed: {venv} does not import the stack:\n{r.stderr[-1500:]}")
    return r.stdout.strip().splitlines()[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=1, help="timed rounds of each (old, new alternating)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed first round that warms the caches")
    ap.add_argument("--old-rev", default=OLD_REV, help="git revision holding the old setup.sh")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="setup-speed-"))
    try:
        clone = fresh_clone(work / "clone")
        old = subprocess.run(["git", "show", f"{args.old_rev}:shared/scripts/setup.sh"], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout
        assert "--lock" not in old, f"{args.old_rev}: its setup.sh already installs a lock"
        (clone / "shared" / "scripts" / "setup_old.sh").write_text(old)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("VENV", None)
        env.pop("UV", None)

        def run(kind: str, i: int) -> tuple[float, str, str]:
            venv = work / f"{kind}-{i}"
            la = loadavg()
            if kind == "old":
                cmd = ["bash", str(clone / "shared/scripts/setup_old.sh"), "--venv", str(venv),
                       *(str(clone / p) for p in PACKAGES)]
                e = env
            else:
                cmd = ["make", "--no-print-directory", "-C", str(clone), "setup", f"VENV={venv}"]
                e = {**env, "MUSIC_UV_DIR": str(work / f"uv-{i}")}
            dt = timed(cmd, e, work / f"{kind}-{i}.log")
            versions = check_venv(venv)
            return dt, la, versions  # the venvs go with the work folder at the end (deleting 2 GB is slow here)

        times: dict[str, list[float]] = {"old": [], "new": []}
        rounds = ([0] if not args.no_warmup else []) + list(range(1, args.rounds + 1))
        print(f"setup_speed: fresh clone copy in {clone}; old = setup.sh@{args.old_rev}, new = make setup (lock + uv)")
        for i in rounds:
            for kind in ("old", "new"):
                dt, la, versions = run(kind, i)
                tag = "warm-up" if i == 0 else f"round {i}"
                print(f"  {tag:8s} {kind}: {dt:7.1f} s   (load average before: {la}; torch/transformers/deepspeed "
                      f"{versions})", flush=True)
                if i > 0:
                    times[kind].append(dt)
        o, n = statistics.median(times["old"]), statistics.median(times["new"])
        print(f"setup_speed: old {o:.1f} s, new {n:.1f} s, ratio old/new {o / n:.1f}x "
              f"(medians of {args.rounds}; load average now {loadavg()}; {os.cpu_count()} cores)")
    finally:
        if args.keep:
            print(f"setup_speed: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
