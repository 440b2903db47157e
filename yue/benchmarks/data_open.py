"""Memory and time of opening a ``yue prepare`` folder and streaming LM training blocks from it, one run.

Each phase runs in a fresh Python process (``ru_maxrss`` is a process-wide peak, so phases must not share one):

- ``open``: :class:`yue.lm.data.PreparedData` (manifest rows, tokenizer), as every rank does at start;
- ``stage1`` / ``stage2``: open + ``--blocks`` packed blocks from :class:`yue.lm.data.BlockStream` (documents built
  from the songs' codes, as training does);
- ``report``: the token report rank 0 writes to ``<run>/tokens.json`` before training (``yue.lm.train``), in the
  form train calls it (capped at ``yue.lm.data.REPORT_MAX_SONGS`` songs per split when the module has that cap).

Peak RSS is given above the process's baseline after imports (numpy, torch, the yue modules), so it shows what the
data path itself holds. ``--save FILE`` writes the numbers as JSON; ``--compare FILE`` prints a saved run's numbers
(e.g. measured before a change of the data path) side by side with this run's, with the ratio.

Usage (from yue/; the synthetic folder is built once, random codes, released-shaped songs)::

    python benchmarks/data_open.py --prepared /tmp/yue_bench --songs 300 --frames 9000 [--blocks 64]
        [--save after.json] [--compare before.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

PHASES = ("open", "stage1", "stage2", "report")


def make_folder(folder: Path, songs: int, frames: int, codebooks: int = 12, seed: int = 0) -> None:
    """A ``yue prepare``-contract folder: ``songs`` songs of ``frames`` frames, int16 codes [K, T] per stem, eight
    labelled sections each, 90/5/5 % train/valid/test, a tiny tokenizer, and the ``report.json`` prepare writes."""
    import numpy as np

    from yue.tokenizer import train_tiny_tokenizer

    rng = np.random.default_rng(seed)
    (folder / "codes").mkdir(parents=True, exist_ok=True)
    train_tiny_tokenizer(folder / "tokenizer", ["la la 你好 мир sing with me"], num_codebooks=codebooks)
    labels = ["intro", "verse", "chorus", "verse", "chorus", "bridge", "chorus", "outro"]
    rows = []
    for i in range(songs):
        bounds = np.linspace(0, frames, len(labels) + 1).astype(int)
        segs = [{"label": lab, "text": "la la la sing with me " * 4, "frame_start": int(a), "frame_end": int(b)}
                for lab, a, b in zip(labels, bounds[:-1], bounds[1:])]  # fmt: skip
        split = "valid" if i % 20 == 18 else "test" if i % 20 == 19 else "train"
        np.savez(folder / "codes" / f"song{i:06d}.npz", **{k: rng.integers(0, 1024, (codebooks, frames)).astype(np.int16)
                                                           for k in ("vocal", "accompaniment", "mix")})  # fmt: skip
        rows.append({"id": f"song{i:06d}", "split": split, "tags": "pop female vocal", "frames": frames,
                     "codebooks": codebooks, "segments": segs})  # fmt: skip
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "report.json").write_text(json.dumps({"counts": {"in_manifest": len(rows)}, "synthetic": True}))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_phase(phase: str, folder: str, blocks: int) -> dict:
    """One phase in this process; returns seconds and peak RSS (MB) above the post-import baseline."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from musiccore.config import load_config
    from yue.lm import data as D
    from yue.lm.config import LMTrainConfig

    base = _rss_mb()
    task = "stage2" if phase == "stage2" else "stage1"
    cfg = load_config(LMTrainConfig, Path(__file__).parents[1] / "configs" / f"tiny_{task}.yaml",
                      [f"data.prepared={folder}", "data.block_size=8192"]
                      + (["modes.icl_share=0.2"] if task == "stage1" else []))  # fmt: skip
    t0 = time.perf_counter()
    data = D.PreparedData(folder)
    out = {"songs": len(data.songs), "open_s": time.perf_counter() - t0}
    builder = D.DocumentBuilder(data, cfg)
    if phase in ("stage1", "stage2"):
        t1 = time.perf_counter()
        it = iter(D.BlockStream(builder, data.split("train"), blocks_per_step=1, seed=0))
        n_tok = sum(int(np.asarray(next(it)["input_ids"]).size) for _ in range(blocks))
        out.update(blocks=blocks, tokens=n_tok, iter_s=time.perf_counter() - t1)
    elif phase == "report":
        t1 = time.perf_counter()
        import inspect

        cap = {"sample": D.REPORT_MAX_SONGS} if "sample" in inspect.signature(D.token_report).parameters else {}
        D.token_report(builder, data, ["train", "valid", "test"], ["dual", "mix", "vocal", "inst"], icl_seed=0, **cap)
        out.update(report_s=time.perf_counter() - t1)
    out.update(peak_rss_mb=_rss_mb() - base, baseline_rss_mb=base)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prepared", required=True, help="folder (built when it has no manifest.jsonl)")
    ap.add_argument("--songs", type=int, default=300)
    ap.add_argument("--frames", type=int, default=9000, help="frames per song (50/s: 9000 = 3 min)")
    ap.add_argument("--blocks", type=int, default=64, help="8192-token blocks streamed per stage")
    ap.add_argument("--save", help="write this run's numbers here (JSON)")
    ap.add_argument("--compare", help="a saved run to print side by side")
    ap.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)  # internal: one phase, JSON on stdout
    a = ap.parse_args(argv)
    if a.phase:
        print(json.dumps(run_phase(a.phase, a.prepared, a.blocks)))
        return 0
    folder = Path(a.prepared)
    if not (folder / "manifest.jsonl").is_file():
        t0 = time.time()
        make_folder(folder, a.songs, a.frames)
        print(f"built {folder}: {a.songs} songs x {a.frames} frames in {time.time() - t0:.1f} s")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = {}
    for ph in PHASES:
        p = subprocess.run([sys.executable, __file__, "--prepared", str(folder), "--blocks", str(a.blocks),
                            "--phase", ph], capture_output=True, text=True, env=env)  # fmt: skip
        if p.returncode:
            print(p.stderr[-2000:], file=sys.stderr)
            return p.returncode
        res[ph] = json.loads(p.stdout.strip().splitlines()[-1])
    res["load_average"] = os.getloadavg()
    old = json.loads(Path(a.compare).read_text()) if a.compare else None
    keys = [("open", "open_s"), ("open", "peak_rss_mb"), ("stage1", "iter_s"), ("stage1", "peak_rss_mb"),
            ("stage2", "iter_s"), ("stage2", "peak_rss_mb"), ("report", "report_s"), ("report", "peak_rss_mb")]
    print(f"{res['open']['songs']} songs, {a.blocks} blocks/stage, load average {res['load_average'][0]:.2f}"
          + (f" (saved run: {old['load_average'][0]:.2f})" if old else ""))
    print(f"{'phase':8s} {'metric':12s} " + (f"{'saved':>10s} " if old else "") + f"{'this run':>10s}"
          + ("  ratio" if old else ""))
    for ph, k in keys:
        new = res[ph][k]
        line = f"{ph:8s} {k:12s} "
        if old:
            o = old[ph][k]
            line += f"{o:10.2f} {new:10.2f}  {new / o if o else float('nan'):.2f}x"
        else:
            line += f"{new:10.2f}"
        print(line)
    if a.save:
        Path(a.save).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
