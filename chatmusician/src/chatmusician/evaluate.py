"""Evaluation of generated ABC: parse rate and key/meter adherence over metadata prompts.

Protocol (``chatmusician eval``): take ``eval.num_prompts`` tunes of the valid split (deterministic order), build the
metadata-conditioned prompt each training row uses (``Create sheet music in ABC notation from the provided text.`` +
Key/Meter/Note Length/Rhythm), generate with the released sampling settings, extract the ABC with the web demo's
regex (with fallbacks), and count:

- ``parse_rate``: tunes that music21 parses into at least one note;
- ``valid_rate``: tunes that also pass ``musiccore.abc.validate`` (balanced brackets, bar durations match M:/L:);
- ``key_match`` / ``meter_match``: among all prompts, generated ``K:`` / ``M:`` headers equal to the requested ones.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from . import abctools
from .config import ChatMusicianConfig
from .data import METADATA_INSTRUCTION, clean_tune, metadata_prompt

log = logging.getLogger(__name__)


def metadata_prompts(cfg: ChatMusicianConfig, n: int) -> list[dict]:
    """``n`` prompts from valid tunes of the built corpus (falls back to train tunes when valid is short)."""
    from .data import Report, load_tunes, prepare_tunes

    tunes = prepare_tunes(load_tunes(cfg), cfg, Report())
    valid = [t for t in tunes if t["split"] == "valid"]
    pool = valid + [t for t in tunes if t["split"] != "valid"]
    return [{"text": METADATA_INSTRUCTION + "\n" + metadata_prompt(t), "key": t["header"].get("K", ""),
             "meter": t["header"].get("M", ""), "id": t["id"]} for t in pool[:n]]


def _norm_key(k: str) -> str:
    return k.replace(" ", "").lower().replace("maj", "").replace("min", "m")


def score_reply(reply: str, want_key: str, want_meter: str) -> dict:
    """Parse check and header adherence of one reply."""
    abc = abctools.extract_abc(reply)
    res = {"found": abc is not None, "parsed": False, "valid": False, "key_match": False, "meter_match": False}
    if abc is None:
        return res
    try:
        h = abctools.parse_header(clean_tune(abc))
    except abctools.ABCError:
        h = abctools.parse_header(abc)
    res["parsed"] = abctools.music21_parses(abc)
    res["valid"] = bool(abctools.validate(abc).ok)  # strict: structure and bar durations too
    res["key_match"] = _norm_key(h.get("K", "")) == _norm_key(want_key)
    res["meter_match"] = h.get("M", "").replace(" ", "") == want_meter.replace(" ", "")
    return res


def evaluate_generation(model, tokenizer, cfg: ChatMusicianConfig, n: int | None = None, max_new_tokens: int | None = None,
                        out_path: str | Path | None = None) -> dict:
    """Run the protocol above; returns rates and writes per-prompt rows to ``out_path`` (jsonl) when given."""
    from .generate import generate

    n = n or cfg.eval.num_prompts
    prompts = metadata_prompts(cfg, n)
    replies = generate(model, tokenizer, [p["text"] for p in prompts], cfg.generate, batch_size=cfg.eval.batch_size,
                       seed=cfg.run.seed, max_new_tokens=max_new_tokens)
    rows = []
    for p, r in zip(prompts, replies):
        rows.append({**p, "reply": r, **score_reply(r, p["key"], p["meter"])})
    k = max(1, len(rows))
    summary = {
        "n": len(rows),
        "parse_rate": sum(r["parsed"] for r in rows) / k,
        "valid_rate": sum(r["valid"] for r in rows) / k,
        "key_match": sum(r["key_match"] for r in rows) / k,
        "meter_match": sum(r["meter_match"] for r in rows) / k,
        "found_abc": sum(r["found"] for r in rows) / k,
    }
    if out_path:
        from musiccore.runs import atomic_path

        with atomic_path(out_path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return summary
