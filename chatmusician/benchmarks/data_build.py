"""Memory and time of the corpus build (``chatmusician data``) as the input grows: peak memory must stay flat.

Generates a synthetic MusicPile-shaped corpus once (parquet shards with ``id``, ``text``, ``src``: prose about music
and general text of varied length, and ABC tunes, under the source names of the MusicPile card), then runs the
real build (``chatmusician data --config configs/pretrain_7b.yaml``: MusicPile alone, documents + EOS cut into
2048-token blocks) in a subprocess per input size, sampling the memory of the build process and all its children
(the ``data.num_proc`` map workers) every 0.1 s. Prints one table: input size, documents, tokens, seconds, peak RSS
summed over the processes, PSS total (shared pages split between the processes that map them), PSS of anonymous pages
(memory-mapped arrow pages, which the kernel can drop at will, are file-backed and left out) and the largest RSS of a
single process, each with its ratio to the smallest size. Target (issue 13): peak memory within 2x while the input
grows 10x, judged on anonymous PSS (what can OOM); the table says which figure is judged and why.

    python benchmarks/data_build.py                       # 0.1, 0.5 and 1 GB of text (tens of minutes on 2 cores)
    python benchmarks/data_build.py --scale 0.1           # 10, 50, 100 MB: a quick run of the same shape
    python benchmarks/data_build.py --num-proc 4 --out /scratch/bench

The tokenizer is a small BPE trained on a sample of the synthetic text before the timed builds (``model.tokenizer``),
so every build only tokenises; the LLaMA tokenizer gives other token counts, not another memory shape.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
MAX_SHARD_BYTES = 25 * 10**6  # UTF-8 text per parquet shard (at most; the smallest size is 4 shards)
ROW_GROUP = 500  # rows per parquet row group
POOL = 3000  # distinct generated documents that the shards draw from
# (src, weight, kind, median characters): the MusicPile card's sources, lengths of its kind (pile documents are long)
SOURCES = [("pile", 0.10, "prose", 20000), ("falcon-refinedweb", 0.15, "prose", 4000), ("wikipedia", 0.20, "prose", 3000),
           ("music_knowledge", 0.15, "prose", 1200), ("music_summary", 0.15, "prose", 800), ("irishman", 0.20, "abc", 400),
           ("kernscores", 0.05, "abc", 1500)]
WORDS = ("the a of and to in is was for on that with as by it from at his an were which are this be or has had not "
         "music melody harmony rhythm tune song chord scale key major minor meter bar note beat tempo composer "
         "symphony sonata folk reel jig waltz dance fiddle piano violin orchestra choir counterpoint fugue motif "
         "phrase cadence interval octave fifth third tonic dominant modulation ornament grace slur tie repeat "
         "century style history tradition region instrument performance recording score notation ABC written "
         "played sung known published collection early late modern classical Irish Scottish English German "
         "Français Übung música 音楽 музыка").split()
NOTES = "CDEFGABcdefgab"


def _prose(rng: random.Random, n_chars: int) -> str:
    out, size = [], 0
    while size < n_chars:
        sent = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 24)))
        sent = sent[0].upper() + sent[1:] + rng.choice([".", ".", ".", "?", ";"])
        out.append(sent)
        size += len(sent) + 1
        if rng.random() < 0.08:
            out.append("\n\n")
    return " ".join(out)


def _abc(rng: random.Random, n_chars: int) -> str:
    key = rng.choice(["G", "D", "Ador", "Em", "A", "C", "F", "Bb", "Edor"])
    meter, unit = rng.choice([("4/4", "1/8"), ("6/8", "1/8"), ("3/4", "1/8"), ("2/4", "1/16"), ("9/8", "1/8")])
    head = f"X:1\nL:{unit}\nM:{meter}\nK:{key}\n"
    bars, size = [], len(head)
    while size < n_chars:
        bar = "".join(rng.choice(NOTES) + rng.choice(["", "", "2", "/2", "'"]) for _ in range(rng.randint(4, 8)))
        if rng.random() < 0.2:
            bar = f'"{rng.choice(["G", "D", "Am", "Em", "C", "D7"])}"' + bar
        bars.append(bar)
        size += len(bar) + 1
    body = "|".join(bars)
    return head + "|:" + "\n".join(body[i:i + 60] for i in range(0, len(body), 60)) + ":|\n"


def _doc(rng: random.Random, i: int) -> dict:
    src, _, kind, median = rng.choices(SOURCES, weights=[s[1] for s in SOURCES])[0]
    n = max(40, int(rng.lognormvariate(0, 0.8) * median))
    text = _prose(rng, n) if kind == "prose" else _abc(rng, n)
    if src.startswith("music_") and rng.random() < 0.3:  # music text quoting a tune, as the card's sets do
        text += "\n\n" + _abc(rng, 300)
    return {"id": f"syn-{i}", "text": text, "src": src}


def generate(folder: Path, total_bytes: int, shard_bytes: int, seed: int = 0) -> list[Path]:
    """Parquet shards of ~``shard_bytes`` of text each, up to ``total_bytes`` (reused when already there)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, -(-total_bytes // shard_bytes))
    shards = [folder / f"train-{shard_bytes}-{k:05d}.parquet" for k in range(n_shards)]
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("src", pa.string())])
    pool_rng = random.Random(seed)
    pool = [_doc(pool_rng, i) for i in range(POOL)]  # writing GBs word by word takes longer than the builds
    for k, path in enumerate(shards):
        if path.exists():
            continue
        rng = random.Random(seed * 100003 + k)
        tmp = path.with_suffix(".tmp")
        with pq.ParquetWriter(tmp, schema) as w:
            size, rows, i = 0, [], 0
            while size < shard_bytes:
                # a pool document with a sentence of its own: every row distinct, the pool's length/source mix
                d = rng.choice(pool)
                tail = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
                rows.append({"id": f"syn-{k}-{i}", "text": f"{d['text']}\n\n{tail} {k}-{i}.", "src": d["src"]})
                size += len(rows[-1]["text"].encode())
                i += 1
                if len(rows) == ROW_GROUP:
                    w.write_table(pa.Table.from_pylist(rows, schema))
                    rows = []
            if rows:
                w.write_table(pa.Table.from_pylist(rows, schema))
        tmp.rename(path)
        print(f"generated {path.name} ({k + 1}/{n_shards})", flush=True)
    return shards


def _mem_kb(pid: int) -> tuple[int, int, int]:
    """(Rss, Pss, Pss_Anon) of one process in kB from /proc/PID/smaps_rollup, zeros when it is gone. RSS counts every
    page the process maps, shared ones (libraries, memory-mapped arrow files, pages a forked worker shares with its
    parent) in full; PSS splits a shared page between the processes that map it, so the sum over the tree counts it
    once; Pss_Anon leaves out file-backed pages (memory-mapped arrow, libraries)."""
    vals = {"Rss:": 0, "Pss:": 0, "Pss_Anon:": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key = line.split(maxsplit=1)[0] if line else ""
            if key in vals:
                vals[key] = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return vals["Rss:"], vals["Pss:"], vals["Pss_Anon:"]


def _tree(pid: int) -> list[int]:
    import psutil

    try:
        p = psutil.Process(pid)
        return [pid] + [c.pid for c in p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def run_build(cmd: list[str], env: dict, log_path: Path) -> dict:
    """Run ``cmd``; peaks over its process tree, sampled every 0.1 s: RSS summed over the processes (``rss_kb``), PSS
    total (``pss_kb``), anonymous PSS (``anon_kb``) and the largest RSS of a single process (``max1_kb``)."""
    peak = {"rss_kb": 0, "pss_kb": 0, "anon_kb": 0, "max1_kb": 0, "procs": 0}
    with open(log_path, "w") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=PROJECT)
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                pids = _tree(proc.pid)
                mem = [_mem_kb(p) for p in pids]
                peak["rss_kb"] = max(peak["rss_kb"], sum(m[0] for m in mem))
                peak["pss_kb"] = max(peak["pss_kb"], sum(m[1] for m in mem))
                peak["anon_kb"] = max(peak["anon_kb"], sum(m[2] for m in mem))
                peak["max1_kb"] = max([peak["max1_kb"]] + [m[0] for m in mem])
                peak["procs"] = max(peak["procs"], len(pids))
                stop.wait(0.1)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        rc = proc.wait()
        stop.set()
        th.join()
        peak["seconds"] = time.monotonic() - t0
    peak["rc"] = rc
    return peak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-gb", type=float, nargs="+", default=[0.1, 0.5, 1.0], help="input sizes (GB of UTF-8 text)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every size (0.1: a quick run of the same shape)")
    ap.add_argument("--num-proc", type=int, default=0, help="data.num_proc of the builds (0 = the CPUs available)")
    ap.add_argument("--out", default=None, help="work folder (default: a temporary folder, removed unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the generated corpus and the built folders")
    args = ap.parse_args(argv)

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="cm-data-build-"))
    sizes = [s * args.scale for s in args.sizes_gb]
    load0 = os.getloadavg()
    print(f"work folder {work}; sizes {', '.join(f'{s:g}' for s in sizes)} GB of text; load average "
          f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; {os.cpu_count()} CPUs", flush=True)
    shard_bytes = int(min(MAX_SHARD_BYTES, min(sizes) * 1e9 / 4))
    shards = generate(work / "shards", int(max(sizes) * 1e9), shard_bytes)

    # a small BPE trained once on the first shard's text (outside the timed builds)
    tok_dir = work / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        import pyarrow.parquet as pq

        sys.path.insert(0, str(PROJECT / "src"))
        from chatmusician.tokenization import train_tokenizer

        texts = pq.read_table(shards[0], columns=["text"]).column("text").to_pylist()[:3000]
        train_tokenizer(texts, 1024).save_pretrained(str(tok_dir))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    results = []
    for size in sizes:
        n = max(1, round(size * 1e9 / shard_bytes))
        inp = work / f"input-{size:g}GB"
        if inp.exists():
            shutil.rmtree(inp)
        inp.mkdir()
        for s in shards[:n]:
            (inp / s.name).symlink_to(s)
        out = work / f"built-{size:g}GB"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "chatmusician.cli", "data", "--config", "configs/pretrain_7b.yaml", "--force",
               f"data.out_dir={out}", f"data.musicpile_dir={inp}", f"model.tokenizer={tok_dir}",
               f"data.num_proc={args.num_proc}"]
        print(f"building {size:g} GB ({n} shards) ...", flush=True)
        r = run_build(cmd, env, work / f"build-{size:g}GB.log")
        if r["rc"] != 0:
            print((work / f"build-{size:g}GB.log").read_text()[-3000:])
            raise SystemExit(f"build of {size:g} GB failed (rc {r['rc']}); log: {work / f'build-{size:g}GB.log'}")
        counts = json.loads((out / "report.json").read_text())["counts"]
        r.update(size_gb=size, text_bytes=n * shard_bytes, docs=counts.get("pretrain/train/docs", 0),
                 tokens=counts.get("pretrain/train/tokens", 0), blocks=counts.get("pretrain/train/packed_rows", 0),
                 load=os.getloadavg()[0])
        results.append(r)
        print(f"  {r['seconds']:.0f} s, peak RSS (sum) {r['rss_kb'] / 1024:.0f} MB, PSS {r['pss_kb'] / 1024:.0f} MB, "
              f"PSS anon {r['anon_kb'] / 1024:.0f} MB, largest process RSS {r['max1_kb'] / 1024:.0f} MB", flush=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)

    b = results[0]
    load1 = os.getloadavg()
    print(f"\n=== chatmusician data: MusicPile-shaped synthetic corpus, data.num_proc={args.num_proc} ===")
    cols = [("rss_kb", "RSS sum"), ("pss_kb", "PSS"), ("anon_kb", "PSS anon*"), ("max1_kb", "1-proc RSS")]
    print(f"{'input':>8s}{'docs':>9s}{'tokens':>12s}{'blocks':>9s}{'seconds':>9s}{'x':>6s}"
          + "".join(f"{name + ' MB':>15s}{'x':>6s}" for _, name in cols) + f"{'procs':>7s}{'load':>6s}")
    for r in results:
        print(f"{r['size_gb']:>6g}GB{r['docs']:>9d}{r['tokens']:>12d}{r['blocks']:>9d}{r['seconds']:>9.0f}"
              f"{r['seconds'] / b['seconds']:>6.1f}"
              + "".join(f"{r[k] / 1024:>15.0f}{r[k] / max(1, b[k]):>6.2f}" for k, _ in cols)
              + f"{r['procs']:>7d}{r['load']:>6.1f}")
    grow = sizes[-1] / sizes[0]
    ratio = {k: max(r[k] for r in results) / max(1, b[k]) for k, _ in cols}
    print(f"input grew {grow:.0f}x; peak growth: " + ", ".join(f"{name.rstrip('*')} {ratio[k]:.2f}x" for k, name in cols)
          + f"; load average {load0[0]:.2f} at start, {load1[0]:.2f} at end")
    print(f"* the 2x target is judged on PSS anon ({ratio['anon_kb']:.2f}x: "
          f"{'met' if ratio['anon_kb'] <= 2 else 'NOT met'}): anonymous pages are what a memory cgroup (Slurm --mem) "
          "cannot reclaim and what gets a build OOM-killed; RSS and PSS also count clean file-backed pages of the "
          "memory-mapped arrow files (and libraries), which the kernel drops under pressure. RSS sum counts a page "
          "once per process mapping it; 1-proc RSS is the largest single process.")
    (work / "results.json").write_text(json.dumps(results, indent=1))
    if not args.out and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
