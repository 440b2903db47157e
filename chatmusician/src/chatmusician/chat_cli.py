"""The ``chatmusician chat`` command: single prompt, piped prompt, interactive multi-turn session, or a jsonl batch.

Every turn writes ``<out>/<id>.json`` (prompt, reply, request, tunes with validation and file paths) and the tune
files ``<out>/<id>.abc|.mid|.wav|.musicxml|.svg`` (``<id>-2.abc`` ... for further tunes of one reply); a batch also
writes ``<out>/replies.jsonl`` (one record per input record, skipped records with their reason).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from .chat import ContextError, PromptError, check_context, describe, parse_request, process_reply, read_batch
from .config import GenerateConfig

log = logging.getLogger(__name__)


def generation_config(args) -> GenerateConfig:
    """Sampling settings: ``--config``'s generate section, else the model folder's training config
    (``chatmusician.json``), else the released defaults; then the command-line overrides."""
    gen = GenerateConfig()
    if args.config:
        from musiccore.config import load_config

        from .config import ChatMusicianConfig

        gen = load_config(ChatMusicianConfig, args.config, []).generate
    else:
        for d in (args.adapter, args.model):
            meta = Path(d) / "chatmusician.json" if d else None
            if meta is not None and meta.exists():
                from .model_folder import ModelFolderError, read_json_object

                conf = read_json_object(meta).get("config") or {}
                section = conf.get("generate") if isinstance(conf, dict) else None
                if section:
                    if not isinstance(section, dict):
                        raise ModelFolderError(f"{meta}: field 'config.generate' must be an object, got "
                                               f"{type(section).__name__}")
                    unknown = sorted(set(section) - {f.name for f in dataclasses.fields(GenerateConfig)})
                    if unknown:
                        raise ModelFolderError(f"{meta}: field 'config.generate' has unknown keys {unknown}")
                    gen = GenerateConfig(**section)
                    for k, v in section.items():  # a string where a number belongs would fail mid-generation
                        if not isinstance(v, (int, float, bool)):
                            raise ModelFolderError(f"{meta}: field 'config.generate.{k}' must be a number or "
                                                   f"true/false, got {v!r}")
                    break
    for name in ("temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens"):
        v = getattr(args, name, None)
        if v is not None:
            setattr(gen, name, v)
    check_generation(gen)
    return gen


def check_generation(gen: GenerateConfig) -> GenerateConfig:
    """Sampling settings a generation can run with; raises ``ValueError`` naming the setting (``--max-new-tokens``
    etc., or the config field) before the model is asked to generate."""
    bad = [(n, v, why) for n, v, ok, why in (
        ("max-new-tokens", gen.max_new_tokens, isinstance(gen.max_new_tokens, int) and gen.max_new_tokens >= 1, ">= 1"),
        ("temperature", gen.temperature, isinstance(gen.temperature, (int, float)) and gen.temperature > 0, "> 0"),
        ("top-k", gen.top_k, isinstance(gen.top_k, int) and gen.top_k >= 0, ">= 0 (0 = off)"),
        ("top-p", gen.top_p, isinstance(gen.top_p, (int, float)) and 0 < gen.top_p <= 1, "in (0, 1]"),
        ("repetition-penalty", gen.repetition_penalty,
         isinstance(gen.repetition_penalty, (int, float)) and gen.repetition_penalty > 0, "> 0"),
    ) if not ok]
    if bad:
        n, v, why = bad[0]
        raise ValueError(f"--{n} {v!r}: must be {why}")
    return gen


class ChatSession:
    """A loaded model plus the settings of one ``chat`` invocation."""

    def __init__(self, args):
        import torch

        from .generate import load_model, resolve_device, resolve_dtype

        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar in logs and pipes
        self.args = args
        self.device = resolve_device(args.device)
        self.dtype = resolve_dtype(args.dtype, self.device)
        self.gen = generation_config(args)  # bad sampling settings fail before the model is loaded
        self.model, self.tok = load_model(args.model, dtype=self.dtype, adapter=args.adapter, device=self.device)
        from .model_folder import check_tokenizer_fits

        check_tokenizer_fits(args.model, self.tok, self.model)  # ids past the embedding would fail mid-generation
        if args.out is None:
            from musiccore.runs import runs_root

            args.out = str(runs_root() / "chatmusician" / "chat")
        self.out = Path(args.out)
        self.render = not args.no_render
        log.info("model %s on %s (%s); sampling T=%.2f top-k %d top-p %.2f rep %.2f, max_new_tokens %d%s",
                 args.model, self.device, str(self.dtype).replace("torch.", ""), self.gen.temperature, self.gen.top_k,
                 self.gen.top_p, self.gen.repetition_penalty, self.gen.max_new_tokens,
                 ", constrained" if args.constrained else "")

    def automaton(self, req):
        from .constrained import AbcAutomaton

        bars = req.bars
        return AbcAutomaton(key=req.key, meter=req.meter, unit=req.unit, min_bars=bars or 1, max_bars=bars or 64)

    def respond(self, items: list[dict]) -> list[dict]:
        """``items``: ``{"id", "prompt", "history"}``; returns one record per item (``error`` set when skipped)."""
        from .generate import generate_detailed
        from .tokenization import prompt as template

        ready, records = [], {}
        for it in items:
            try:
                req = parse_request(it["prompt"])
                hist = [tuple(h) for h in it.get("history") or []]
                check_context(self.model, self.tok, template(it["prompt"], hist), self.gen.max_new_tokens)
                auto = self.automaton(req) if self.args.constrained else None
            except (PromptError, ContextError, ValueError) as e:
                records[it["id"]] = {"id": it["id"], "prompt": it["prompt"], "error": str(e)}
                continue
            ready.append((it, req, hist, auto))
        t0 = time.time()
        if ready:
            outs = generate_detailed(
                self.model, self.tok, [r[0]["prompt"] for r in ready], self.gen, batch_size=8, seed=self.args.seed,
                histories=[r[2] for r in ready], constraints=[r[3] for r in ready] if self.args.constrained else None)
        else:
            outs = []
        secs = time.time() - t0
        from musiccore.runs import atomic_write_json

        for (it, req, hist, _), o in zip(ready, outs):
            stem = self.out / _safe(it["id"])
            rec = {"id": it["id"], "prompt": it["prompt"], "request": req.__dict__, **o,
                   **process_reply(o["reply"], stem if self.render else None, hit_budget=o["hit_budget"],
                                   audio=not self.args.no_audio)}
            rec["seconds"] = round(secs / max(1, len(ready)), 3)
            atomic_write_json(stem.with_suffix(".json"), rec)
            records[it["id"]] = rec
        return [records[it["id"]] for it in items]


def _safe(name: str) -> str:
    """A record id as a file stem inside the output folder: no separators, no leading dot (``..`` cannot escape)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))[:80].lstrip(".") or "reply"


def _print_turn(rec: dict) -> None:
    if "error" in rec:
        print(f"[skipped: {rec['error']}]", file=sys.stderr)
        return
    print(f"Human: {rec['prompt']}\nAssistant: {rec['reply']}\n")
    print(describe(rec) + "\n", flush=True)


def _interactive(session: ChatSession) -> int:
    print("Multi-turn chat. End a message with an empty line; /reset clears the history, /quit leaves.")
    history: list[tuple[str, str]] = []
    turn = 0
    while True:
        lines: list[str] = []
        try:
            while True:
                line = input("you> " if not lines else "...> ")
                if line.strip() in ("/quit", "/exit"):
                    return 0
                if line.strip() == "/reset":
                    history, lines = [], []
                    print("[history cleared]")
                    continue
                if not line.strip() and lines:
                    break
                if line.strip() or lines:
                    lines.append(line)
        except EOFError:
            return 0
        turn += 1
        rec = session.respond([{"id": f"turn{turn:03d}", "prompt": "\n".join(lines), "history": history}])[0]
        _print_turn(rec)
        if "error" not in rec:
            history.append((rec["prompt"], rec["reply"].strip()))


def run_chat(args) -> int:
    """Entry point of ``chatmusician chat`` (see the module docstring)."""
    if args.batch:
        items, bad = read_batch(args.batch)  # a bad record is skipped and reported, the batch goes on
        stems: dict[str, str] = {}
        for it in list(items):  # two ids with one file name would overwrite each other's files: keep the first
            first = stems.setdefault(_safe(it["id"]), it["id"])
            if first != it["id"]:
                items.remove(it)
                bad.append(f"{args.batch}: record id {it['id']!r} has the same file name as id {first!r} "
                           f"({_safe(it['id'])}); skipped")
        for msg in bad:
            log.warning("skipped %s", msg)
        if not items:
            raise ValueError(f"{args.batch}: no usable record ({len(bad)} skipped)")
        session = ChatSession(args)
        recs = session.respond(items)
        from musiccore.runs import atomic_path

        out = session.out / "replies.jsonl"
        with atomic_path(out) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in recs)
                           + "".join(json.dumps({"error": m}) + "\n" for m in bad))
        n_t = sum(r.get("n_tunes", 0) for r in recs)
        n_v = sum(t["valid"] for r in recs for t in r.get("tunes", []))
        n_skip = len(bad) + sum("error" in r for r in recs)
        print(f"{len(recs) - sum('error' in r for r in recs)} replies, {n_t} tunes ({n_v} valid), {n_skip} records "
              f"skipped -> {out}")
        return 0
    if args.prompt is None and sys.stdin.isatty():
        return _interactive(ChatSession(args))
    text = args.prompt if args.prompt is not None else sys.stdin.read()  # piped: the whole input is one prompt
    parse_request(text)  # bad prompt: fail before loading the model
    session = ChatSession(args)
    rec = session.respond([{"id": time.strftime("%Y%m%d-%H%M%S"), "prompt": text.strip("\n"), "history": []}])[0]
    if "error" in rec:
        raise ValueError(rec["error"])
    _print_turn(rec)
    return 0
