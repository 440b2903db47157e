"""Command line of the chatmusician project: `chatmusician <subcommand> --help`.

    chatmusician data   --config configs/tiny.yaml [k=v ...]     build corpora (+ tokenizer for scratch models)
    chatmusician train  --config configs/tiny.yaml [k=v ...]     train (also under torchrun / Slurm)
    chatmusician export --adapter RUN/final --out DIR           merge a LoRA adapter into a full checkpoint
    chatmusician chat   --model DIR ["prompt"] [--batch in.jsonl] chat; tunes extracted, validated, rendered
    chatmusician eval   --config C --model DIR                 parse rate / key / meter adherence of generated tunes
    chatmusician demo                                          tiny model: build data, train, generate, report
    chatmusician web    --model DIR [--port N]                  Gradio page on 127.0.0.1: prompt, reply, audio, sheet
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger("chatmusician")

SUBCOMMANDS = "data train chat eval export demo web".split()


def _add_config(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--config", default=default, help="YAML config (see configs/)")
    p.add_argument("--dump-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-3 trainer.max_steps=20")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatmusician", description="ChatMusician: an LLM that reads and writes ABC notation.")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    p = sub.add_parser("data", help="build pretraining/SFT corpora (arrow, tokenised and packed) once, for training "
                       "to open; skipped when the folder already matches the config and inputs")
    _add_config(p)
    p.add_argument("--force", action="store_true", help="rebuild even when the corpus is up to date")
    _add_config(sub.add_parser("train", help="continual pretraining or SFT (LoRA or full; DeepSpeed optional)"))
    p = sub.add_parser("chat", help="chat with the released template; every reply's ABC extracted, checked, rendered")
    p.add_argument("--model", required=True, help="local model folder (full checkpoint or LoRA adapter)")
    p.add_argument("--adapter", default=None, help="LoRA adapter folder applied on top of --model")
    p.add_argument("--config", default=None, help="YAML whose generate: section sets the sampling defaults "
                   "(default: the model folder's chatmusician.json, else the released defaults)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--constrained", action="store_true",
                   help="constrained decoding: well-formed ABC, every bar exactly M:/L:, Key/Meter/Note Length/Bars "
                        "of the prompt forced into the header")
    p.add_argument("--out", default=None, help="folder for replies and rendered tunes "
                   "(default <MUSIC_RUNS_DIR>/chatmusician/chat)")
    p.add_argument("--no-render", action="store_true", help="extract and validate only (no files but the jsonl)")
    p.add_argument("--no-audio", action="store_true", help="skip the .wav (fluidsynth)")
    p.add_argument("--batch", default=None, help="jsonl of records {prompt, id?, history?}; replies to <out>/replies.jsonl")
    p.add_argument("prompt", nargs="?", help="one prompt (several lines allowed); none: stdin as one prompt when "
                   "piped, an interactive multi-turn session on a terminal")
    p = sub.add_parser("eval", help="parse rate and key/meter adherence over metadata prompts")
    _add_config(p)
    p.add_argument("--model", required=True, help="local model folder (full checkpoint or LoRA adapter)")
    p.add_argument("--n", type=int, default=None, help="number of prompts (default eval.num_prompts)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--out", default=None, help="jsonl with every prompt, reply and score")
    p.add_argument("--mtb", default=None, help="local MusicTheoryBench folder: score it by the PPL protocol instead")
    p.add_argument("--few-shot", action="store_true", help="MusicTheoryBench: 5 dev exemplars (default zero-shot)")
    p.add_argument("--theory", action="store_true", help="score the built-in theory set generated from the corpus "
                   "(key, meter, interval, chord quality, Roman numeral; written to <data.out_dir>/theory) instead")
    p.add_argument("--mtb-mode", default="ppl", choices=["ppl", "gen", "cot"],
                   help="ppl: the paper's perplexity ranking; gen: greedy answer, letter extracted; cot: step by step")
    p.add_argument("--batch-size", type=int, default=8, help="sequences scored per forward (MusicTheoryBench)")
    p.add_argument("--predictions", default=None, help="MusicTheoryBench: per-item predictions (jsonl)")
    p.add_argument("--constrained", action="store_true", help="generation eval with constrained decoding")
    p.add_argument("--bars", type=int, default=None, help="ask every prompt for this many bars (data.prompt_bars)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16")
    p = sub.add_parser("export", help="merge a LoRA adapter into a full HF checkpoint (safetensors)")
    p.add_argument("--adapter", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p = sub.add_parser("demo", help="train the tiny model on data-kit tunes, then generate and count parsable tunes")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: configs/demo.yaml)")
    p.add_argument("--n", type=int, default=20, help="metadata prompts to generate for")
    p.add_argument("--out", default=None, help="run folder (default <MUSIC_RUNS_DIR>/chatmusician/demo)")
    from .web import add_arguments as add_web_arguments

    add_web_arguments(sub.add_parser("web", help="Gradio page bound to 127.0.0.1: prompt fields, constrained on/off, "
                                      "reply, audio player and sheet (needs the web extra)"))
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
    if getattr(args, "dump_config", False):
        _load(args)  # prints the fully resolved config (YAML, _base_ chain and overrides applied) and exits
    from musiccore.hf import setup_logging

    from musiccore.hf import rank_info

    setup_logging(None, rank_info()[0])  # plain lines on stderr (rank 0); `train` adds the run's log file
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    if args.command == "data":
        from .data import build, up_to_date

        cfg = _load(args)
        rep = None if args.force else up_to_date(cfg)
        if rep is not None:
            log.info("corpus in %s is up to date (fingerprint %s); --force rebuilds it", cfg.data.out_dir, rep["fingerprint"])
        else:
            try:
                rep = build(cfg)
            except (FileNotFoundError, ValueError) as e:  # a missing input folder, a bad task name: one line
                print(f"chatmusician data: error: {e}", file=sys.stderr)
                return 2
        print(json.dumps(rep["counts"], indent=1))
    elif args.command == "train":
        from .data import CorpusError
        from .train import train

        try:
            summary = train(_load(args))
        except CorpusError as e:  # no or stale prepared corpus: the command that builds it, no traceback
            print(f"chatmusician train: error: {e}", file=sys.stderr)
            return 2
        print(json.dumps(summary, indent=1, default=str))
    elif args.command == "export":
        import torch

        from .export import export_merged

        try:
            out = export_merged(args.adapter, args.out, dtype=getattr(torch, args.dtype))
        except (FileNotFoundError, FileExistsError, ValueError) as e:  # bad adapter folder, existing --out: one line
            print(f"chatmusician export: error: {e}", file=sys.stderr)
            return 2
        print(f"merged checkpoint written to {out}")
    elif args.command == "chat":
        from .chat import ContextError, PromptError
        from .chat_cli import run_chat

        try:
            return run_chat(args)
        except (FileNotFoundError, PromptError, ContextError, ValueError) as e:
            print(f"chatmusician chat: error: {e}", file=sys.stderr)  # one line, no traceback
            return 2
    elif args.command == "eval":
        from .evaluate import evaluate_generation
        from .generate import load_model, resolve_device, resolve_dtype
        from .mtb import MTBFormatError

        cfg = _load(args)
        try:
            data = None
            skipped: list[str] = []
            if args.mtb:
                from .mtb import load_mtb

                data = load_mtb(args.mtb, skipped)  # bad rows are skipped and reported, the others scored
                if not data["test"]:  # nothing to score: one line (the first reason), before the model is loaded
                    why = f"; first: {skipped[0]}" if skipped else ""
                    raise MTBFormatError(f"{args.mtb}: no usable test row ({len(skipped)} skipped{why})")
                for msg in skipped:
                    log.warning("skipped %s", msg)
            elif args.theory:
                from pathlib import Path

                from .evaluate import corpus_tunes
                from .mtb import load_mtb
                from .theory import build_theory_set, write_theory_set

                folder = write_theory_set(build_theory_set(corpus_tunes(cfg)), Path(cfg.data.out_dir) / "theory")
                log.info("built-in theory set written to %s", folder)
                data = load_mtb(folder)
            dev = resolve_device(args.device)
            model, tok = load_model(args.model, dtype=resolve_dtype(args.dtype, dev), device=dev)
            from .model_folder import check_tokenizer_fits

            check_tokenizer_fits(args.model, tok, model)  # ids past the embedding would fail mid-evaluation
        except (FileNotFoundError, MTBFormatError, ValueError) as e:
            print(f"chatmusician eval: error: {e}", file=sys.stderr)
            return 2
        if data is not None:
            from .mtb import evaluate_mtb

            res = evaluate_mtb(model, tok, data, few_shot=args.few_shot, mode=args.mtb_mode,
                               batch_size=args.batch_size, predictions=args.predictions, released=bool(args.mtb))
            for line in res["count_checks"]:
                log.warning("MusicTheoryBench count check: %s", line)
            res["skipped_rows"] = skipped
            print(json.dumps(res, indent=1))
            return 0
        res = evaluate_generation(model, tok, cfg, n=args.n, max_new_tokens=args.max_new_tokens, out_path=args.out,
                                  constrained=args.constrained, bars=args.bars)
        print(json.dumps(res, indent=1))
    elif args.command == "demo":
        from .demo import run_demo

        run_demo(steps=args.steps, n_prompts=args.n, out=args.out)
    elif args.command == "web":
        from .web import run_web

        try:
            return run_web(args)
        except (FileNotFoundError, ValueError) as e:
            print(f"chatmusician web: error: {e}", file=sys.stderr)  # one line, no traceback
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
