"""Command line of the mert project: `mert <subcommand> --help`.

Subcommands: extract, convert, export-hf, demo (here) and train, prepare, probe (dispatched to
``mert.train.main(argv)``, ``mert.prepare.main(argv)``, ``mert.probe.main(argv)`` with the remaining arguments,
imported lazily so that extraction does not pay for the training stack).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from .model_folder import find_model_folder  # noqa: F401 (public here: `from mert.cli import find_model_folder`)

SUBCOMMANDS = "train extract probe eval convert export-hf prepare demo".split()
DISPATCHED = {"train": "mert.train", "prepare": "mert.prepare", "probe": "mert.probe", "eval": "mert.evaluate"}

logger = logging.getLogger("mert")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that describe bad input (typed, with the file and reason in the message): printed as one line."""
    from musiccore.data.manifest import DataKitError

    return (ValueError, FileNotFoundError, DataKitError)


USER_ERRORS = _user_errors()


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )


def _parse_layers(text: str | None) -> list[int] | None:
    if text is None or text.strip().lower() == "all":
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--layers must be 'all' or comma-separated integers, got {text!r}") from e


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mert", description="MERT: self-supervised music audio encoder.")
    parser.add_argument("--log-level", default="INFO", help="python logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")

    for name, help_ in (("train", "pretrain MERT (mert.train)"), ("prepare", "prepare pretraining data (mert.prepare)"),
                        ("probe", "MARBLE-style probing on extracted features (mert.probe)"),
                        ("eval", "MARBLE protocol over task configs, cached features, baselines (mert.evaluate)")):
        p = sub.add_parser(name, help=help_, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)

    p = sub.add_parser("extract", help="audio files/folders/manifests -> features (.npy/.safetensors) + index")
    p.add_argument("inputs", nargs="+", help="audio files, folders (recursive), or manifests (.jsonl/.tsv/.txt)")
    p.add_argument("--model", required=True, help="model folder: ours or a released HF folder (config.json + weights)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--layers", default="all", help="'all' or hidden-state indices, e.g. '0,6,-1' (0 = encoder input)")
    p.add_argument("--pooling", default="none", choices=["none", "mean", "window"],
                   help="none: frames [L,T,D]; mean: time average [L,D]; window: per-window average [L,K,D]")
    p.add_argument("--window-s", type=float, default=5.0, help="window length in seconds (default 5, as trained)")
    p.add_argument("--overlap-s", type=float, default=0.0, help="overlap between windows in seconds")
    p.add_argument("--min-window-s", type=float, default=1.0, help="pooling=window: drop a last window shorter than this")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--format", default="npy", choices=["npy", "safetensors"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="stored dtype")
    p.add_argument("--normalize", action="store_true",
                   help="zero-mean/unit-variance per window (HF do_normalize; MARBLE uses it for 95M and v0)")
    p.add_argument("--shard", default=None, help="i/n: process every n-th item from i (Slurm job arrays)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast dtype on GPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (also off when stderr is not a TTY)")

    p = sub.add_parser("convert", help="fairseq *_fairseq.pt or a released HF folder -> our model folder")
    p.add_argument("src", help="fairseq checkpoint file or HF model folder")
    p.add_argument("out", help="output model folder")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow reading a pickled fairseq checkpoint (can run code from the file: trusted files only)")

    p = sub.add_parser("export-hf", help="our model folder -> folder loadable by transformers.HubertModel")
    p.add_argument("src", help="our model folder")
    p.add_argument("out", help="output folder")
    p.add_argument("--weight-norm-names", default="legacy", choices=["legacy", "parametrizations"],
                   help="positional-conv key names: weight_g/weight_v (legacy) or parametrizations.weight.original0/1")
    p.add_argument("--verify", action="store_true",
                   help="load the export with transformers.HubertModel and compare every hidden state")

    p = sub.add_parser("demo", help="pretrain the tiny model briefly, extract features of data-kit clips, summarise "
                                    "them per layer and probe them")
    p.add_argument("--checkpoint", default=None,
                   help="model folder (default: the newest run of the current tiny config, "
                        "$MUSIC_RUNS_DIR/mert/tiny-<config hash>/encoder, trained first for --train-minutes when there "
                        "is none)")
    p.add_argument("--train-minutes", type=float, default=2.0,
                   help="CPU minutes of tiny pretraining when no trained model exists (0: use random weights)")
    p.add_argument("--probe-task", default="all",
                   choices=["all", "key", "meter", "instrument", "tempo", "beat", "melody", "none"],
                   help="MARBLE-style evaluation on the data kit (configs/eval/kit_*.yaml) next to the baselines "
                        "(random init, MFCC, chroma): every kit task (all), one of them, or none")
    p.add_argument("--num-clips", type=int, default=6)
    p.add_argument("--window-s", type=float, default=5.0)
    return parser


# ============================================================================================ subcommands


def cmd_extract(args: argparse.Namespace) -> int:
    import torch

    from .extract import ExtractOptions, extract

    opts = ExtractOptions(
        layers=_parse_layers(args.layers), pooling=args.pooling, window_s=args.window_s, overlap_s=args.overlap_s,
        min_window_s=args.min_window_s, batch_size=args.batch_size, fmt=args.format, dtype=args.dtype,
        normalize=args.normalize,
    )
    autocast = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    summary = extract(args.inputs, args.out, args.model, opts, shard=args.shard, device=args.device,
                      autocast_dtype=autocast, progress=False if args.no_progress else None)
    print(summary.line())
    for iid, why in sorted(summary.redone.items()):
        print(f"  redone {iid}: {why}")
    for iid, err in sorted(summary.failed.items()):
        print(f"  failed {iid}: {err}")
    return 0 if not summary.failed else 3


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert_fairseq, convert_hf, describe

    src = Path(args.src)
    out = convert_hf(src, args.out) if src.is_dir() else convert_fairseq(src, args.out, allow_pickle=args.allow_pickle)
    print(f"wrote {out}: {describe(out)}")
    return 0


def cmd_export_hf(args: argparse.Namespace) -> int:
    from .convert import export_hf

    out = export_hf(args.src, args.out, weight_norm_names=args.weight_norm_names)
    print(f"wrote {out} (transformers.HubertModel.from_pretrained loads it; no remote code)")
    if args.verify:
        diff = verify_export(args.src, out)
        print(f"verify: max |ours - HubertModel| over all hidden states = {diff:.3g}")
        if diff > 1e-4:
            print("verify FAILED (> 1e-4)", file=sys.stderr)
            return 4
    return 0


def verify_export(src: str | Path, exported: str | Path, seconds: float = 1.0) -> float:
    """Largest difference between our model and ``transformers.HubertModel`` loaded from the export."""
    import torch
    from transformers import HubertModel

    from .modeling_mert import MERTModel

    ours = MERTModel.from_pretrained(src)
    hf = HubertModel.from_pretrained(str(exported)).eval()
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(1, int(seconds * ours.config.sample_rate), generator=g)
    with torch.no_grad():
        a = ours(x, output_hidden_states=True).hidden_states
        b = hf(x, output_hidden_states=True).hidden_states
    if len(a) != len(b):
        return float("inf")
    return max(float((p - q).abs().max()) for p, q in zip(a, b))


def cmd_demo(args: argparse.Namespace) -> int:
    import tempfile
    import time

    import numpy as np
    import torch

    from musiccore.runs import runs_root

    from .configuration_mert import MERTConfig
    from .extract import ExtractOptions, extract, load_index, read_features
    from .modeling_mert import MERTModel

    if args.checkpoint:
        ckpt_dir = Path(args.checkpoint)
        folder = find_model_folder(ckpt_dir)
    else:
        # `mert train --config configs/tiny.yaml` writes $MUSIC_RUNS_DIR/mert/tiny-<config hash>/encoder; only runs of
        # the current tiny config count (a run of an older config would show numbers the code no longer produces)
        from .train import tiny_run_dirs

        ckpt_dir = runs_root() / "mert" / "tiny-*"
        current = tiny_run_dirs(args.train_minutes if args.train_minutes > 0 else 2.0)
        runs = sorted((r for r in current if r.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
        folder = next((f for f in map(find_model_folder, runs) if f is not None), None)
        stale = [r for r in runs_root().glob("mert/tiny-*") if r not in current]
        if folder is None and stale:
            print(f"ignoring {len(stale)} tiny run(s) of an older tiny config under {ckpt_dir.parent} "
                  "(pass --checkpoint to use one)")
    if folder is None and not args.checkpoint and args.train_minutes > 0:
        from .train import train_tiny_for_demo

        print(f"no trained tiny model yet: pretraining one on the data kit's clips for {args.train_minutes:g} min")
        folder = train_tiny_for_demo(minutes=args.train_minutes)
    if folder is not None:
        model = MERTModel.from_pretrained(folder)
        print(f"model: {folder} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters)")
        print(f"tiny model: {folder}  (use it: mert extract AUDIO --model {folder} --out FEATS)")
    else:
        if args.checkpoint:
            print(f"error: {ckpt_dir} holds no model folder (config.json + model.safetensors)", file=sys.stderr)
            return 2
        torch.manual_seed(0)
        model = MERTModel(MERTConfig.preset("tiny")).eval()
        print(f"WARNING: no trained tiny model under {ckpt_dir} (run `make train` first); using RANDOM weights, "
              "so the similarities below describe an untrained network")
    sr = model.config.sample_rate

    work = Path(tempfile.mkdtemp(prefix="mert-demo-"))
    paths: list[Path] = []
    names: list[str] = []
    try:
        from musiccore.data import load_manifest, resolve

        rows = load_manifest("clips")[: args.num_clips]
        paths = [resolve(r["path"]) for r in rows]
        names = [f"{r['id']} ({', '.join(r.get('instruments', [])[:2]) or r.get('source', '')}, key {r.get('key', '?')})"
                 for r in rows]
        print(f"data: {len(paths)} clips from the data kit")
    except Exception as e:  # noqa: BLE001 - the demo still runs without the kit
        print(f"WARNING: data kit unavailable ({e}); using synthesized tones instead")
    if not paths:
        import soundfile as sf

        t = np.arange(int(4.0 * sr)) / sr
        for i in range(args.num_clips):
            f0 = 110.0 * 2 ** (i / 3)
            wav = 0.3 * np.sin(2 * np.pi * f0 * t) * (1 + 0.5 * np.sin(2 * np.pi * (1 + i) * t))
            p = work / f"tone{i}.wav"
            sf.write(p, wav.astype(np.float32), sr, subtype="FLOAT")
            paths.append(p)
            names.append(f"tone{i} ({f0:.0f} Hz)")

    out = work / "features"
    t0 = time.perf_counter()
    summary = extract(paths, out, model, ExtractOptions(pooling="none", window_s=args.window_s), progress=False)
    print(summary.line() + f" [{time.perf_counter() - t0:.1f} s]")
    rows = {r["id"]: r for r in load_index(out)}
    feats = []
    for p, name in zip(paths, names):
        r = rows.get(p.stem)
        if r is None:
            print(f"  {name}: FAILED {summary.failed.get(p.stem)}")
            continue
        x = read_features(out / r["output"])  # [L, T, D]
        print(f"  {name}: {r['duration_s']:.1f} s -> features {tuple(x.shape)} (layers x frames x dim), "
              f"{x.shape[1] / r['duration_s']:.1f} frames/s")
        feats.append(x)
    if len(feats) < 2:
        print("need at least two clips for the similarity summary")
        return 0 if feats else 1

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))

    means = np.stack([f.mean(axis=1) for f in feats])  # [N, L, D]
    n_states = means.shape[1]
    print("\nper-layer summary (0 = encoder input):")
    print("  layer | cos(clip_i, clip_j) mean | cos(frame t, t+1) mean | cos(layer l, l-1) of clip means | feat std")
    for layer in range(n_states):
        pair = [cos(means[i, layer], means[j, layer]) for i in range(len(feats)) for j in range(i + 1, len(feats))]
        adj = [cos(f[layer, t], f[layer, t + 1]) for f in feats for t in range(0, f.shape[1] - 1, 7)]
        prev = [cos(means[i, layer], means[i, layer - 1]) for i in range(len(feats))] if layer else [1.0]
        std = float(np.mean([f[layer].std() for f in feats]))
        print(f"  {layer:5d} | {np.mean(pair):24.3f} | {np.mean(adj):22.3f} | {np.mean(prev):31.3f} | {std:8.3f}")
    print("\nlower clip-to-clip similarity = more discriminative clip embeddings; frame-to-frame similarity shows "
          "temporal smoothness.")
    print(f"features written under {out}")
    if args.probe_task != "none" and len(names) and not names[0].startswith("tone"):
        if folder is None:  # random weights: the evaluation reads a model folder
            folder = model.save_pretrained(work / "random-model")
        _demo_eval(folder, args.probe_task)
    return 0


def _demo_eval(folder: Path, task: str) -> None:
    """The data kit's MARBLE-style tasks for the model in ``folder`` next to random init, MFCC and chroma."""
    import time

    from .evaluate import CONFIG_DIR, EvalError, evaluate, offline_task_files, results_table

    files = offline_task_files() if task == "all" else [CONFIG_DIR / f"kit_{task}.yaml"]
    from musiccore.runs import runs_root

    out = runs_root() / "mert" / "eval" / f"demo-{Path(folder).parent.name or Path(folder).name}"
    t0 = time.perf_counter()
    print(f"\nevaluation on the data kit ({', '.join(p.stem for p in files)}); features cached under "
          "$MUSIC_CACHE_DIR/mert/eval, so a rerun only probes")
    try:
        # layer=all (learned layer weights, one probe per source and task) keeps the demo short; the full layer sweep
        # with curves is `make -C mert eval`
        results = evaluate(folder, files, out, ["layer=all"])
    except (EvalError, ValueError) as e:
        print(f"evaluation skipped: {e}")
        return
    print(results_table(results))
    print(f"test scores with learned layer weights (Lall; per-layer curves: make -C mert eval); "
          f"{time.perf_counter() - t0:.0f} s. Results and layer curves: {out}")


def _dispatched(argv: list[str]) -> tuple[str, list[str], str] | None:
    """(module, its argv, log level) when the first subcommand is train/prepare/probe."""
    level, i = "INFO", 0
    while i < len(argv):
        a = argv[i]
        if a == "--log-level" and i + 1 < len(argv):
            level, i = argv[i + 1], i + 2
        elif a.startswith("--log-level="):
            level, i = a.split("=", 1)[1], i + 1
        else:
            return (DISPATCHED[a], argv[i + 1 :], level) if a in DISPATCHED else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    target = _dispatched(argv)
    if target is not None:
        # train/prepare/probe own their arguments: they get everything after the subcommand.
        module, rest, level = target
        _setup_logging(level)
        try:
            return int(importlib.import_module(module).main(rest) or 0)
        except USER_ERRORS as e:  # a missing data kit, a bad config or manifest: one readable line, no traceback
            logger.error("%s", e)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    if args.command is None:
        parser.print_help()
        return 0
    handlers = {"extract": cmd_extract, "convert": cmd_convert, "export-hf": cmd_export_hf, "demo": cmd_demo}
    try:
        return handlers[args.command](args)
    except USER_ERRORS as e:  # typed input errors: one readable line, no traceback
        logger.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
