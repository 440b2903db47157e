"""``chatmusician chat``: prompts in, replies out, and every tune of a reply extracted, checked and rendered.

For each reply: the ABC tunes are extracted (the web demo's ``X:<n>`` regex, several tunes per reply, a tune cut
off by the token budget flagged ``truncated``; a reply without ABC is reported as such), each tune is validated with
``musiccore.abc.validate`` (the reason is kept when it fails) and written next to the reply as ``.abc``, ``.mid``
(abc2midi), ``.wav`` (fluidsynth, GM soundfont), ``.musicxml`` (music21) and ``.svg`` (abcm2ps). A renderer that
fails records its error in the tune's ``render_errors``; the other files are still written.

Prompts are checked before any generation: an empty prompt, a ``Key:`` that names no key, a ``Meter:`` that is no
meter or a ``Note Length:`` that is no length raise :class:`PromptError` naming the field; prompt plus
``max_new_tokens`` longer than the model context raises :class:`ContextError`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

_MODE_WORDS = {"major": "", "minor": "m", "dorian": "dor", "mixolydian": "mix", "phrygian": "phr", "lydian": "lyd",
               "locrian": "loc", "ionian": "", "aeolian": "m", "maj": "", "min": "m", "m": "m", "": "",
               "dor": "dor", "mix": "mix", "phr": "phr", "lyd": "lyd", "loc": "loc", "ion": "", "aeo": "m"}
_FIELD_LINE = re.compile(r"^\s*(Key|Meter|Note Length|Bars)\s*:\s*(.*?)\s*$", re.MULTILINE | re.IGNORECASE)


class PromptError(ValueError):
    """A prompt that cannot be answered: empty, or a Key/Meter/Note Length/Bars field with an impossible value."""


class ContextError(ValueError):
    """Prompt tokens + max_new_tokens exceed the model's context (max_position_embeddings)."""


@dataclasses.dataclass
class Request:
    """What a prompt asks for, in ABC header form (``None`` = not asked)."""

    key: str | None = None  # ABC key, e.g. "G", "Em", "Ador"
    meter: str | None = None  # e.g. "6/8", "C"
    unit: str | None = None  # e.g. "1/8"
    bars: int | None = None


def abc_key(words: str) -> str:
    """``"G major"`` -> ``G``, ``"A dorian"`` -> ``Ador``, ``"F# minor"`` -> ``F#m``; ABC spellings pass through.

    Raises:
        PromptError: no tonic A-G (with an optional # or b) or an unknown mode.
    """
    m = re.fullmatch(r"\s*([A-Ga-g])\s*([#b♯♭]?)\s*([A-Za-z]*)\s*", words)
    if not m:
        raise PromptError(f"Key: {words!r} is not a key (a tonic A-G with an optional # or b, then a mode)")
    tonic = m.group(1).upper() + m.group(2).replace("♯", "#").replace("♭", "b")
    mode = m.group(3).lower()
    if mode not in _MODE_WORDS:
        raise PromptError(f"Key: {words!r}: unknown mode {m.group(3)!r} (major, minor, dorian, mixolydian, ...)")
    return tonic + _MODE_WORDS[mode]


def check_meter(text: str) -> str:
    """A meter as ABC writes it (``6/8``, ``C``, ``C|``). Raises PromptError for e.g. ``7/0``, ``0/4``, ``3/5``."""
    t = text.replace(" ", "")
    if t in ("C", "C|"):
        return t
    m = re.fullmatch(r"(\d{1,2})/(\d{1,2})", t)
    if not m:
        raise PromptError(f"Meter: {text!r} is not a meter (N/D such as 6/8, or C, C|)")
    num, den = int(m.group(1)), int(m.group(2))
    if num == 0 or den == 0 or den & (den - 1):
        raise PromptError(f"Meter: {text!r} is impossible (numerator > 0, denominator a power of two)")
    return f"{num}/{den}"


def check_unit(text: str) -> str:
    t = text.replace(" ", "")
    m = re.fullmatch(r"1/(\d{1,2})", t)
    if not m or int(m.group(1)) == 0 or int(m.group(1)) & (int(m.group(1)) - 1):
        raise PromptError(f"Note Length: {text!r} is not a unit length (1/4, 1/8, 1/16, ...)")
    return t


def parse_request(text: str) -> Request:
    """Check a prompt and read the header values it asks for.

    Raises:
        PromptError: empty prompt, or an impossible Key/Meter/Note Length/Bars value (the message names the field).
    """
    if not text or not text.strip():
        raise PromptError("empty prompt: write what to compose, e.g. 'Key: G major\\nMeter: 6/8'")
    req = Request()
    for name, value in _FIELD_LINE.findall(text):
        name = name.lower()
        if name == "key":
            req.key = abc_key(value)
        elif name == "meter":
            req.meter = check_meter(value)
        elif name == "note length":
            req.unit = check_unit(value)
        elif name == "bars":
            if not re.fullmatch(r"\d{1,3}", value) or not 1 <= int(value) <= 256:
                raise PromptError(f"Bars: {value!r} is not a number of bars (1-256)")
            req.bars = int(value)
    return req


# ------------------------------------------------------------------------------------------------ extraction


@dataclasses.dataclass
class Tune:
    abc: str
    truncated: bool  # the reply stopped inside this tune (no final bar line / the token budget ran out)
    valid: bool = False
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    n_bars: int = 0
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    render_errors: dict[str, str] = dataclasses.field(default_factory=dict)


_TUNE_START = re.compile(r"(?m)^X:\s*\d+\s*$")


_MUSIC_LINE = re.compile(r"[A-Ga-gzZxy0-9/,'^_=~.()<>\[\]{}|: \t\-!+\"#&$%]*")


def _cut_prose(chunk: str) -> str:
    """Drop the text after a tune: the body ends at the first line after ``K:`` that is neither a field line, nor
    holds a bar line, nor is made of ABC music characters only."""
    lines = chunk.splitlines()
    body = next((i + 1 for i, ln in enumerate(lines) if ln.startswith("K:")), None)
    if body is None:
        return chunk
    for j in range(body, len(lines)):
        ln = lines[j]
        if not (re.match(r"^[A-Za-z]:", ln) or "|" in ln or _MUSIC_LINE.fullmatch(ln.strip())):
            return "\n".join(lines[:j])
    return chunk


def extract_tunes(reply: str, hit_budget: bool = False) -> list[Tune]:
    """Every ``X:<n>`` tune in a reply, in order (the web demo's regex keeps only the first; spec 4).

    Falls back to a reply holding a ``K:`` line without ``X:`` (``X:1`` prepended). A tune whose last line ends in no
    bar line, or the last tune of a reply that used up its token budget, is ``truncated``. ``[]`` when there is no
    ABC."""
    text = reply.replace("\r\n", "\n")
    starts = [m.start() for m in _TUNE_START.finditer(text)]
    chunks: list[str] = []
    if starts:
        for a, b in zip(starts, starts[1:] + [len(text)]):
            chunk = text[a:b].split("\n\n")[0].strip("\n")  # a blank line ends a tune in ABC
            chunks.append(_cut_prose(chunk))
    elif re.search(r"(?m)^K:", text):
        chunks.append("X:1\n" + text.strip("\n"))
    tunes = []
    for i, c in enumerate(chunks):
        lines = [ln for ln in c.splitlines() if ln.strip()]
        body_started = any(ln.startswith("K:") for ln in lines)
        ends_bar = bool(lines) and bool(re.search(r"(\|\]?|:\||\|\||::)\s*$", lines[-1]))
        truncated = not body_started or not ends_bar or (hit_budget and i == len(chunks) - 1)
        tunes.append(Tune(abc=c + "\n", truncated=truncated))
    return tunes


def check_tune(t: Tune) -> Tune:
    """Fill ``valid``/``errors``/``warnings``/``n_bars`` from ``musiccore.abc.validate`` (strict bar check)."""
    from musiccore.abc import ABCError, validate

    try:
        r = validate(t.abc)
    except (ABCError, ArithmeticError) as e:  # e.g. no K: line, a zero note length: the tune is invalid, with why
        t.valid, t.errors, t.warnings, t.n_bars = False, [f"{type(e).__name__}: {e}"], [], 0
        return t
    t.valid, t.errors, t.warnings, t.n_bars = r.ok, list(r.errors), list(r.warnings), r.n_bars
    return t


def render_tune(t: Tune, stem: Path, audio: bool = True) -> Tune:
    """Write ``stem.abc`` and, when the tune parses, ``.mid``, ``.wav``, ``.musicxml``, ``.svg`` next to it."""
    from musiccore.abc import abc_to_midi, abc_to_musicxml
    from musiccore.render import abc_to_svg, midi_to_wav
    from musiccore.runs import atomic_path

    stem.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(stem.with_suffix(".abc")) as tmp:
        tmp.write_text(t.abc)
    t.files["abc"] = str(stem.with_suffix(".abc"))
    steps = [("svg", lambda p: abc_to_svg(t.abc, p)), ("mid", lambda p: abc_to_midi(t.abc, p)),
             ("musicxml", lambda p: abc_to_musicxml(t.abc, p))]
    if audio:
        steps.append(("wav", lambda p: midi_to_wav(stem.with_suffix(".mid"), p)))
    for ext, fn in steps:
        if ext == "wav" and "mid" not in t.files:
            t.render_errors[ext] = "no MIDI to render"
            continue
        path = stem.with_suffix("." + ext)
        try:
            fn(path)
            t.files[ext] = str(path)
        except Exception as e:  # noqa: BLE001 - one renderer failing never stops the others (reason recorded)
            t.render_errors[ext] = f"{type(e).__name__}: {str(e)[:300]}"
    return t


def process_reply(reply: str, stem: Path | None, hit_budget: bool = False, render: bool = True,
                  audio: bool = True) -> dict:
    """Extract, validate and (with ``stem``) render every tune of a reply; returns a JSON-able record."""
    tunes = extract_tunes(reply, hit_budget)
    for i, t in enumerate(tunes):
        check_tune(t)
        if stem is not None and render:
            render_tune(t, stem.with_name(stem.name + ("" if i == 0 else f"-{i + 1}")), audio=audio)
    note = "no ABC in the reply" if not tunes else ""
    return {"n_tunes": len(tunes), "note": note, "tunes": [dataclasses.asdict(t) for t in tunes]}


def describe(rec: dict) -> str:
    """One line per tune for the terminal."""
    if not rec["tunes"]:
        return "[no ABC in the reply]"
    out = []
    for i, t in enumerate(rec["tunes"], 1):
        state = "valid" if t["valid"] else "INVALID: " + "; ".join(t["errors"])[:200]
        trunc = " (truncated)" if t["truncated"] else ""
        files = " ".join(Path(p).name for p in t["files"].values())
        errs = "".join(f" [{k} failed: {v[:80]}]" for k, v in t["render_errors"].items())
        out.append(f"[tune {i}: {t['n_bars']} bars, {state}{trunc}] {files}{errs}")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ model side


def check_context(model, tokenizer, prompt_text: str, max_new_tokens: int) -> int:
    """Prompt length in tokens; raises :class:`ContextError` when prompt + new tokens exceed the context."""
    from .tokenization import encode

    n = len(encode(tokenizer, prompt_text))  # the ids generation will feed (released per-chunk encoding)
    ctx = getattr(model.config, "max_position_embeddings", None)
    if ctx and n + max_new_tokens > ctx:
        raise ContextError(f"prompt is {n} tokens + max_new_tokens {max_new_tokens} = {n + max_new_tokens} > the "
                           f"model context {ctx}; shorten the prompt/history or pass --max-new-tokens {max(ctx - n, 0)}")
    return n


def read_batch(path: str | Path) -> tuple[list[dict], list[str]]:
    """Records of a jsonl batch (``{"prompt": str, "id"?: str, "history"?: [[q, a], ...]}``) and one message per
    skipped line (not UTF-8, bad JSON, no prompt, empty or impossible prompt, a malformed history, an id that is
    not text or repeats an earlier one), naming the line."""
    good, bad, seen = [], [], set()
    for i, raw in enumerate(Path(path).read_bytes().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:  # never replaced silently: the record is skipped and reported
            bad.append(f"{path}:{i}: not UTF-8 text (byte {e.start} of the line)")
            continue
        except json.JSONDecodeError as e:
            bad.append(f"{path}:{i}: not JSON ({e.msg})")
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
            bad.append(f"{path}:{i}: no 'prompt' string field")
            continue
        hist = rec.get("history")
        if hist is not None and not (isinstance(hist, list) and all(
                isinstance(h, (list, tuple)) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in hist)):
            bad.append(f"{path}:{i}: field 'history' must be a list of [question, answer] string pairs")
            continue
        rid = rec.get("id", str(i))
        if not isinstance(rid, (str, int)) or isinstance(rid, bool) or str(rid) in seen:
            why = "repeats an earlier record's id" if str(rid) in seen else "must be text or an integer"
            bad.append(f"{path}:{i}: field 'id' {rid!r} {why}")
            continue
        try:
            parse_request(rec["prompt"])
        except PromptError as e:
            bad.append(f"{path}:{i}: {e}")
            continue
        seen.add(str(rid))
        rec["id"] = str(rid)
        good.append(rec)
    return good, bad
