"""Two `torchrun` ranks (gloo, CPU, one thread each) open one prepared corpus; neither builds it (issue 13).

Training only opens the folder `chatmusician data` wrote: both ranks must read the very same arrow files, leave every
file of the folder untouched (same inode and mtime, nothing added), and on a missing corpus both must stop at once with
the one-line message naming the `chatmusician data` command, before writing anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import subprocess_env

WORKER = r'''
import json, sys
from pathlib import Path

import torch
import torch.distributed as dist

torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])  # the tests folder: tiny_config
from conftest import tiny_config

from chatmusician.data import CorpusError
from chatmusician.train import load_split, train

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
cfg = tiny_config(Path(sys.argv[2]), f"run.dir={sys.argv[4]}/run-ok")
ds = load_split(cfg, "train")  # what train() reads: the packed rows, memory-mapped
info = {"rank": rank, "world": world, "rows": len(ds), "tokens": sum(len(r) for r in ds["input_ids"]),
        "files": sorted(f["filename"] for f in ds.cache_files)}
print(f"rank {rank} loaded {info['rows']} rows / {info['tokens']} tokens from {info['files']}", flush=True)
seen = [None] * world
dist.all_gather_object(seen, info)
if rank == 0:
    print("GATHERED " + json.dumps(seen), flush=True)
dist.barrier()
# a missing corpus: train() stops on every rank before it writes anything
try:
    train(tiny_config(Path(sys.argv[3]), f"run.dir={sys.argv[4]}/run-missing"))
    print(f"rank {rank} TRAINED WITHOUT A CORPUS", flush=True)
except CorpusError as e:
    print(f"rank {rank} REFUSED: {e}", flush=True)
dist.destroy_process_group()
'''


def _snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and folder under ``folder``: (inode, mtime_ns, size)."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
            for p in [folder, *folder.rglob("*")]}


def test_two_ranks_open_the_prepared_corpus_and_neither_builds(corpus_dir, tmp_path):
    data = corpus_dir / "data"
    before = _snapshot(data)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    tests = Path(__file__).resolve().parent
    missing = tmp_path / "nothing-here"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tests), str(corpus_dir), str(missing), str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=tests.parent)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    seen = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("GATHERED "))[len("GATHERED "):])
    assert [s["rank"] for s in seen] == [0, 1] and {s["world"] for s in seen} == {2}
    # both ranks read the same rows from the same arrow files, inside the prepared folder
    assert seen[0]["rows"] > 0 and seen[0]["rows"] == seen[1]["rows"] and seen[0]["tokens"] == seen[1]["tokens"]
    assert seen[0]["files"] == seen[1]["files"] and all(f.startswith(str(data / "sft" / "packed")) for f in seen[0]["files"])
    # neither built it: every file is the same inode with the same mtime and size, and nothing was added
    assert _snapshot(data) == before
    # the missing corpus: both ranks refused with the command, and nothing was written for it
    refused = [ln for ln in r.stdout.splitlines() if " REFUSED: " in ln]
    assert sorted(ln.split()[1] for ln in refused) == ["0", "1"], out[-3000:]
    assert all("no prepared corpus" in ln and "build it with: chatmusician data " in ln for ln in refused)
    assert "TRAINED WITHOUT A CORPUS" not in out
    assert not missing.exists() and not (tmp_path / "run-missing").exists()
