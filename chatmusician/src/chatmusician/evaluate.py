"""Evaluation of generated ABC: parse rate and key/meter adherence over metadata prompts.

Protocol (``chatmusician eval``): take ``eval.num_prompts`` tunes of the valid split (deterministic order), build the
metadata-conditioned prompt each training row uses (``Create sheet music in ABC notation from the provided text.`` +
Key/Meter/Note Length/Rhythm), generate with the released sampling settings, extract the ABC with the web demo's
regex (with fallbacks), and count:

- ``parse_rate``: tunes that music21 parses into at least one note;
- ``valid_rate``: tunes that also pass ``musiccore.abc.validate`` (balanced brackets, bar durations match M:/L:);
- ``key_match`` / ``meter_match``: among all prompts, generated ``K:`` / ``M:`` headers equal to the requested ones;
- ``metrics``: ``musiccore.eval.abc_stats.abc_generation_metrics`` (bars as asked, bars per tune, pitch range,
  repetition, novelty against the training split).

``constrained=True`` decodes with :mod:`chatmusician.constrained` (the prompt's key, meter, unit and bar count forced).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from . import abctools
from .config import ChatMusicianConfig
from .data import METADATA_INSTRUCTION, clean_tune, metadata_prompt

log = logging.getLogger(__name__)


def corpus_tunes(cfg: ChatMusicianConfig) -> list[dict]:
    from .data import Report, load_tunes, prepare_tunes

    return prepare_tunes(load_tunes(cfg), cfg, Report())


def metadata_prompts(cfg: ChatMusicianConfig, n: int, tunes: list[dict] | None = None, bars: int | None = None) -> list[dict]:
    """``n`` prompts from valid tunes of the built corpus (falls back to train tunes when valid is short); with
    ``data.prompt_bars`` the prompt asks for the tune's bar count, or for ``bars`` when given."""
    tunes = corpus_tunes(cfg) if tunes is None else tunes
    if bars:
        tunes = [{**t, "n_bars": bars} for t in tunes]
    valid = [t for t in tunes if t["split"] == "valid"]
    pool = valid + [t for t in tunes if t["split"] != "valid"]
    return [{"text": METADATA_INSTRUCTION + "\n" + metadata_prompt(t, cfg.data.prompt_bars), "key": t["header"].get("K", ""),
             "meter": t["header"].get("M", ""), "unit": t["header"].get("L", ""), "id": t["id"],
             "bars": t.get("n_bars") if cfg.data.prompt_bars else None} for t in pool[:n]]


def _norm_key(k: str) -> str:
    """One spelling per key: ``G``, ``Gmaj``, ``G major`` -> ``g``; ``A Mixolydian``, ``Amix`` -> ``amix``."""
    from .chat import PromptError, abc_key

    try:
        return abc_key(k).lower()
    except PromptError:
        return k.replace(" ", "").lower().replace("maj", "").replace("min", "m")


def score_reply(reply: str, want_key: str, want_meter: str) -> dict:
    """Parse check and header adherence of one reply."""
    abc = abctools.extract_abc(reply)
    res = {"found": abc is not None, "parsed": False, "valid": False, "key_match": False, "meter_match": False}
    if abc is None:
        return res
    try:
        try:
            h = abctools.parse_header(clean_tune(abc))
        except abctools.ABCError:
            h = abctools.parse_header(abc)
        res["parsed"] = abctools.music21_parses(abc)
        res["valid"] = bool(abctools.validate(abc).ok)  # strict: structure and bar durations too
    except (abctools.ABCError, ArithmeticError) as e:  # a malformed reply scores as not valid, with the reason
        res["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        return res
    res["key_match"] = _norm_key(h.get("K", "")) == _norm_key(want_key)
    res["meter_match"] = h.get("M", "").replace(" ", "") == want_meter.replace(" ", "")
    return res


def automaton_for(p: dict):
    """The constrained-decoding automaton of one eval prompt: its key, meter, unit and bar count forced; a header value
    the automaton does not support is left free (and counted by the caller through ``key_match``/``meter_match``)."""
    from .constrained import AbcAutomaton

    from .chat import PromptError, abc_key

    key = p["key"] or None
    try:
        key = abc_key(key) if key else None  # "A Mixolydian" -> "Amix"
    except PromptError:
        key = None
    kw = {"key": key, "meter": p["meter"] or None, "unit": p.get("unit") or None}
    for name in ("key", "meter", "unit"):
        try:
            AbcAutomaton(**{name: kw[name]})
        except ValueError:
            kw[name] = None
    bars = p.get("bars")
    return AbcAutomaton(**kw, min_bars=bars or 1, max_bars=bars or 64)


def evaluate_generation(model, tokenizer, cfg: ChatMusicianConfig, n: int | None = None, max_new_tokens: int | None = None,
                        out_path: str | Path | None = None, constrained: bool = False, bars: int | None = None,
                        novelty: bool = True) -> dict:
    """Run the protocol above; returns rates and writes per-prompt rows to ``out_path`` (jsonl) when given.

    ``constrained``: decode with :mod:`chatmusician.constrained` (header values and bar count of the prompt forced).
    Also reports ``musiccore.eval.abc_stats.abc_generation_metrics`` (bars per tune, pitch range, repetition, and with
    ``novelty``, copies and 4-bar overlap against the training split) under ``"metrics"``; ``bars``: ask every
    prompt for that many bars (with ``data.prompt_bars``)."""
    from musiccore.eval.abc_stats import abc_generation_metrics

    from .generate import generate_detailed

    n = n or cfg.eval.num_prompts
    tunes = corpus_tunes(cfg)
    prompts = metadata_prompts(cfg, n, tunes, bars)
    train_tunes = [t["abc"] for t in tunes if t["split"] == "train"] if novelty else None
    autos = [automaton_for(p) for p in prompts] if constrained else None
    outs = generate_detailed(model, tokenizer, [p["text"] for p in prompts], cfg.generate, batch_size=cfg.eval.batch_size,
                             seed=cfg.run.seed, max_new_tokens=max_new_tokens, constraints=autos)
    rows = []
    for p, o in zip(prompts, outs):
        rows.append({**p, **o, **score_reply(o["reply"], p["key"], p["meter"])})
    k = max(1, len(rows))
    summary = {
        "n": len(rows),
        "constrained": constrained,
        "parse_rate": sum(r["parsed"] for r in rows) / k,
        "valid_rate": sum(r["valid"] for r in rows) / k,
        "key_match": sum(r["key_match"] for r in rows) / k,
        "meter_match": sum(r["meter_match"] for r in rows) / k,
        "found_abc": sum(r["found"] for r in rows) / k,
        "hit_budget": sum(r["hit_budget"] for r in rows) / k,
    }
    if constrained:
        summary["forced_end"] = sum(r["forced"] for r in rows) / k
    tunes = [abctools.extract_abc(r["reply"]) for r in rows]
    requested = [{"key": p["key"], "meter": p["meter"], "bars": p.get("bars")} for p in prompts]
    summary["metrics"] = abc_generation_metrics(tunes, requested, train_tunes)
    if out_path:
        from musiccore.runs import atomic_path

        with atomic_path(out_path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return summary
