"""Command line of the chatmusician project: `chatmusician <subcommand> --help`.

    chatmusician data   --config configs/tiny.yaml [k=v ...]     build corpora (+ tokenizer for scratch models)
    chatmusician train  --config configs/tiny.yaml [k=v ...]     train (also under torchrun / Slurm)
    chatmusician export --adapter RUN/final --out DIR           merge a LoRA adapter into a full checkpoint
    chatmusician chat   --model DIR "Create a jig in G major"    one reply per prompt (stdin when no prompt)
    chatmusician eval   --config C --model DIR                 parse rate / key / meter adherence of generated tunes
    chatmusician demo                                          tiny model: build data, train, generate, report
"""

from __future__ import annotations

import argparse
import json
import sys

SUBCOMMANDS = "data train chat eval export demo".split()


def _add_config(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--config", default=default, help="YAML config (see configs/)")
    p.add_argument("--dump-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-3 trainer.max_steps=20")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatmusician", description="ChatMusician: an LLM that reads and writes ABC notation.")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    _add_config(sub.add_parser("data", help="build pretraining/SFT corpora (jsonl + arrow) and report rejected rows"))
    _add_config(sub.add_parser("train", help="continual pretraining or SFT (LoRA or full; DeepSpeed optional)"))
    p = sub.add_parser("chat", help="generate replies with the released template")
    p.add_argument("--model", required=True, help="local model folder (full checkpoint or LoRA adapter)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("prompts", nargs="*", help="user messages (read from stdin, one per line, when none)")
    p = sub.add_parser("eval", help="parse rate and key/meter adherence over metadata prompts")
    _add_config(p)
    p.add_argument("--model", required=True, help="local model folder (full checkpoint or LoRA adapter)")
    p.add_argument("--n", type=int, default=None, help="number of prompts (default eval.num_prompts)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--out", default=None, help="jsonl with every prompt, reply and score")
    p.add_argument("--mtb", default=None, help="local MusicTheoryBench folder: score it by the PPL protocol instead")
    p.add_argument("--few-shot", action="store_true", help="MusicTheoryBench: 5 dev exemplars (default zero-shot)")
    p = sub.add_parser("export", help="merge a LoRA adapter into a full HF checkpoint (safetensors)")
    p.add_argument("--adapter", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p = sub.add_parser("demo", help="train the tiny model on data-kit tunes, then generate and count parsable tunes")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: configs/demo.yaml)")
    p.add_argument("--n", type=int, default=20, help="metadata prompts to generate for")
    p.add_argument("--out", default=None, help="run folder (default <MUSIC_RUNS_DIR>/chatmusician/demo)")
    return parser


def _load(args):
    from musiccore.config import load_config, to_yaml

    from .config import ChatMusicianConfig

    cfg = load_config(ChatMusicianConfig, args.config, args.overrides)
    if getattr(args, "dump_config", False):
        print(to_yaml(cfg))
        sys.exit(0)
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from musiccore.hf import setup_logging

    from .train import rank_info

    setup_logging(None, rank_info()[0])  # plain lines on stderr (rank 0); `train` adds the run's log file
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    if args.command == "data":
        from .data import build

        rep = build(_load(args))
        print(json.dumps(rep["counts"], indent=1))
    elif args.command == "train":
        from .train import train

        summary = train(_load(args))
        print(json.dumps(summary, indent=1, default=str))
    elif args.command == "export":
        import torch

        from .export import export_merged

        out = export_merged(args.adapter, args.out, dtype=getattr(torch, args.dtype))
        print(f"merged checkpoint written to {out}")
    elif args.command == "chat":
        from .config import GenerateConfig
        from .generate import generate, load_model

        model, tok = load_model(args.model)
        gen = GenerateConfig()
        if args.temperature is not None:
            gen.temperature = args.temperature
        prompts = args.prompts or [ln.strip() for ln in sys.stdin if ln.strip()]
        for p, r in zip(prompts, generate(model, tok, prompts, gen, max_new_tokens=args.max_new_tokens)):
            print(f"Human: {p}\nAssistant: {r}\n")
    elif args.command == "eval":
        from .evaluate import evaluate_generation
        from .generate import load_model

        cfg = _load(args)
        model, tok = load_model(args.model)
        if args.mtb:
            from .mtb import evaluate_mtb, load_mtb

            print(json.dumps(evaluate_mtb(model, tok, load_mtb(args.mtb), few_shot=args.few_shot), indent=1))
            return 0
        res = evaluate_generation(model, tok, cfg, n=args.n, max_new_tokens=args.max_new_tokens, out_path=args.out)
        print(json.dumps(res, indent=1))
    elif args.command == "demo":
        from .demo import run_demo

        run_demo(steps=args.steps, n_prompts=args.n, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
