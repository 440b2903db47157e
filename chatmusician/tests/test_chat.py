"""Chat: prompt checks, ABC extraction, rendering, constrained decoding (automaton + LogitsProcessor), the CLI."""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from musiccore.abc import validate

from chatmusician.chat import (ContextError, PromptError, check_context, extract_tunes, parse_request,
                               process_reply)
from chatmusician.constrained import AbcAutomaton

TUNE = "X:1\nL:1/8\nM:6/8\nK:G\n|:GAB ~c2d|e>dc (3BAG F|\nG3 G3|]\n"
PROMPT = "Create sheet music in ABC notation from the provided text.\nKey: G major\nMeter: 6/8\nNote Length: 1/8\nBars: 4"
ALPHABET = sorted(set(string.ascii_letters + string.digits + "\n/|]: ^_=,'~()<>[#"))


# ------------------------------------------------------------------------------------------------ automaton


def test_automaton_accepts_a_tune_and_refuses_a_long_bar():
    a = AbcAutomaton()
    s = a.run(a.start(), TUNE)
    assert s is not None and a.can_end(s) and s.bars == 3
    # the 7th eighth of a 6/8 bar is refused, so is a bar line in a short bar and a header out of order
    assert a.run(a.start(), "X:1\nL:1/8\nM:6/8\nK:G\nGABcde") is not None
    assert a.run(a.start(), "X:1\nL:1/8\nM:6/8\nK:G\nGABcdef") is None
    assert a.run(a.start(), "X:1\nL:1/8\nM:6/8\nK:G\nGAB|") is None
    assert a.run(a.start(), "X:1\nM:6/8\n") is None
    # forced header values
    forced = AbcAutomaton(key="Ador", meter="3/4", unit="1/8")
    assert forced.run(forced.start(), "X:1\nL:1/8\nM:6/8") is None
    assert forced.run(forced.start(), "X:1\nL:1/8\nM:3/4\nK:G\n") is None
    assert forced.run(forced.start(), "X:1\nL:1/8\nM:3/4\nK:Ador\nA6|]") is not None


def test_automaton_bar_count():
    a = AbcAutomaton(min_bars=2, max_bars=3)
    head = "X:1\nL:1/4\nM:2/4\nK:C\n"
    assert a.run(a.start(), head + "C2|]") is None  # one bar < min_bars
    s = a.run(a.start(), head + "C2|D2|E2| ")  # the 3rd bar line must end the tune ("|]" or ":|")
    assert s is None
    s = a.run(a.start(), head + "C2|D2|E2|]")
    assert s is not None and a.can_end(s) and a.step(s, "\n").ended


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0, max_value=10**6), max_size=90), st.integers(1, 4), st.integers(0, 4))
def test_every_path_of_the_automaton_completes_to_a_valid_tune(choices, min_bars, extra):
    """Any text the automaton lets through, closed by its completion, passes the strict bar check and music21."""
    a = AbcAutomaton(min_bars=min_bars, max_bars=min_bars + extra)
    s, text = a.start(), ""
    for c in choices:
        opts = [ch for ch in ALPHABET if a.step(s, ch) is not None]
        assert opts or a.can_end(s), f"dead state after {text!r}"  # reachability: never stuck before the end
        if not opts:
            break
        ch = opts[c % len(opts)]
        text, s = text + ch, a.step(s, ch)
    full = text + a.completion(s)
    r = validate(full)
    assert r.ok, (full, r.errors)


# ------------------------------------------------------------------------------------------------ prompts


@pytest.mark.parametrize("text, field", [("", "empty"), ("   \n", "empty"), ("Key: H major", "Key"),
                                         ("Key: G majestic", "Key"), ("Meter: 7/0", "Meter"), ("Meter: 3/5", "Meter"),
                                         ("Meter: fast", "Meter"), ("Note Length: 1/3", "Note Length"),
                                         ("Bars: many", "Bars")])
def test_impossible_prompts_are_refused(text, field):
    with pytest.raises(PromptError, match=field):
        parse_request(text)


def test_request_fields():
    r = parse_request(PROMPT.replace("G major", "F# minor"))
    assert (r.key, r.meter, r.unit, r.bars) == ("F#m", "6/8", "1/8", 4)
    assert parse_request("Key: A dorian\nMeter: C|").key == "Ador"


@given(st.text(max_size=80))
def test_parse_request_on_any_text(text):
    """Any text: a Request or a PromptError, nothing else."""
    try:
        r = parse_request(text)
    except PromptError as e:
        assert str(e)
        return
    assert text.strip() and (r.meter is None or r.meter in ("C", "C|") or "/" in r.meter)


# ------------------------------------------------------------------------------------------------ extraction


def test_extract_several_truncated_and_none():
    two = "Here:\nX:1\nL:1/8\nM:2/4\nK:D\nDEFG|A4|]\nand another\nX:2\nL:1/8\nM:2/4\nK:G\nGABc|d2"
    tunes = extract_tunes(two)
    assert len(tunes) == 2 and not tunes[0].truncated and tunes[1].truncated
    assert tunes[1].abc.startswith("X:2\n")
    assert extract_tunes("The key is G major.") == []
    only_k = extract_tunes("L:1/8\nM:2/4\nK:D\nDEFG|A4|]")
    assert len(only_k) == 1 and only_k[0].abc.startswith("X:1\nL:1/8")
    assert extract_tunes("X:1\nL:1/8\nM:2/4\nK:D\nDEFG|A4|]", hit_budget=True)[0].truncated
    rec = process_reply("no music here", None)
    assert rec["n_tunes"] == 0 and rec["note"] == "no ABC in the reply"


@pytest.mark.skipif(not (shutil.which("abcm2ps") and shutil.which("abc2midi") and shutil.which("fluidsynth")),
                    reason="abcm2ps/abcmidi/fluidsynth not installed (shared/scripts/setup.sh)")
def test_reply_rendered_next_to_it(tmp_path):
    rec = process_reply("Sure.\n" + TUNE + "\nX:2\nL:1/8\nM:6/8\nK:G\nGAB cde|fgab agf|fga b", tmp_path / "r1")
    t1, t2 = rec["tunes"]
    assert t1["valid"] and not t1["errors"] and not t1["render_errors"]
    for ext in ("abc", "mid", "wav", "musicxml", "svg"):
        f = tmp_path / f"r1.{ext}"
        assert f.stat().st_size > 40 and t1["files"][ext] == str(f)
    assert (tmp_path / "r1.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    assert (tmp_path / "r1.mid").read_bytes()[:4] == b"MThd"
    assert not t2["valid"] and t2["truncated"] and t2["errors"]  # the reason is kept
    assert (tmp_path / "r1-2.abc").exists()


# ------------------------------------------------------------------------------------------------ model side


@pytest.fixture(scope="module")
def random_model(tok_dir, tmp_path_factory):
    """An untrained tiny LLaMA with the corpus tokenizer, saved as a local folder (it knows no ABC at all)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatmusician.tokenization import load_tokenizer

    tok = load_tokenizer(str(tok_dir))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()
    d = tmp_path_factory.mktemp("random_model")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return model, tok, d


def test_constrained_decoding_makes_every_tune_valid(random_model):
    """A random model writes no ABC unconstrained; constrained, every tune parses, passes the strict bar check and
    has the asked key, meter and bar count, even when the budget runs out (forced completion)."""
    from chatmusician.config import GenerateConfig
    from chatmusician.generate import generate_detailed

    model, tok, _ = random_model
    gen = GenerateConfig(temperature=1.0, max_new_tokens=70)
    prompts = [PROMPT, PROMPT.replace("G major", "D dorian").replace("6/8", "3/4"), "Write a reel", "Key: Bb major"]
    free = generate_detailed(model, tok, prompts, gen, seed=1)
    assert sum(validate(t.abc).ok for r in free for t in extract_tunes(r["reply"])) == 0
    autos = []
    for p in prompts:
        r = parse_request(p)
        autos.append(AbcAutomaton(key=r.key, meter=r.meter, unit=r.unit, min_bars=r.bars or 1, max_bars=r.bars or 64))
    out = generate_detailed(model, tok, prompts, gen, seed=1, constraints=autos)
    for p, o in zip(prompts, out):
        tunes = extract_tunes(o["reply"])
        assert len(tunes) == 1, o["reply"]
        res = validate(tunes[0].abc)
        assert res.ok, (o["reply"], res.errors)
        assert o["new_tokens"] <= 70
        req = parse_request(p)
        if req.key:
            assert f"\nK:{req.key}\n" in tunes[0].abc
        if req.meter:
            assert f"\nM:{req.meter}\n" in tunes[0].abc
    assert any(o["forced"] for o in out)  # the random model never ends by itself: the budget closed the tune


def test_context_checked_before_generating(random_model):
    model, tok, _ = random_model
    assert check_context(model, tok, "Human: hi </s> Assistant: ", 100) > 0
    with pytest.raises(ContextError, match="model context 256"):
        check_context(model, tok, "Human: hi </s> Assistant: ", 300)


def test_cli_missing_model_is_one_line(tmp_path, capsys):
    from chatmusician.cli import main

    assert main(["chat", "--model", str(tmp_path / "nope"), "--out", str(tmp_path), PROMPT]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"chatmusician chat: error: {tmp_path / 'nope'}: model folder does not exist"]
    assert main(["chat", "--model", str(tmp_path / "nope"), "--out", str(tmp_path), "Meter: 7/0"]) == 2
    assert "Meter" in capsys.readouterr().err and "Traceback" not in capsys.readouterr().err


def test_cli_batch_constrained(random_model, tmp_path, capsys):
    """A jsonl batch: multi-line prompts are whole records, bad records are skipped with their line, every constrained
    reply is a valid tune rendered to .abc/.mid/.musicxml/.svg next to its json."""
    from chatmusician.cli import main

    _, _, model_dir = random_model
    batch = tmp_path / "in.jsonl"
    recs = [{"id": "a", "prompt": PROMPT}, {"prompt": ""}, {"id": "b", "prompt": "Key: E minor\nMeter: 2/4\nBars: 2",
            "history": [["Write a tune", "X:1\nL:1/8\nM:2/4\nK:G\nGABc|d4|]"]]}, {"id": "c", "prompt": "Key: Q"}, "oops"]
    batch.write_text("\n".join(json.dumps(r) for r in recs) + "\n{broken\n")
    out = tmp_path / "out"
    assert main(["chat", "--model", str(model_dir), "--batch", str(batch), "--out", str(out), "--constrained",
                 "--max-new-tokens", "60", "--no-audio", "--temperature", "1.0"]) == 0
    rows = [json.loads(x) for x in (out / "replies.jsonl").read_text().splitlines()]
    done = [r for r in rows if "reply" in r]
    skipped = [r["error"] for r in rows if "error" in r]
    assert [r["id"] for r in done] == ["a", "b"]
    assert len(skipped) == 4 and any(":2: empty prompt" in m for m in skipped) and any(":4: Key" in m for m in skipped)
    assert any(":6: not JSON" in m for m in skipped)
    for r in done:
        assert r["n_tunes"] == 1 and r["tunes"][0]["valid"], r
        if shutil.which("abcm2ps") and shutil.which("abc2midi"):
            assert set(r["tunes"][0]["files"]) == {"abc", "mid", "musicxml", "svg"}
        assert (out / f"{r['id']}.json").exists()
    assert "M:2/4" in done[1]["reply"] and done[1]["tunes"][0]["n_bars"] == 2
    assert "2 replies, 2 tunes (2 valid), 4 records skipped" in capsys.readouterr().out


def test_generation_never_passes_the_context(random_model):
    """A budget larger than the context is capped before generating; the constrained tune still closes well-formed."""
    from chatmusician.config import GenerateConfig
    from chatmusician.generate import generate_detailed
    from chatmusician.tokenization import prompt

    model, tok, _ = random_model
    n_prompt = len(tok(prompt(PROMPT), add_special_tokens=False)["input_ids"])
    req = parse_request(PROMPT)
    auto = AbcAutomaton(key=req.key, meter=req.meter, unit=req.unit, min_bars=64, max_bars=64)  # cannot finish
    o = generate_detailed(model, tok, [PROMPT], GenerateConfig(temperature=1.0, max_new_tokens=1000), seed=2,
                          constraints=[auto])[0]
    assert n_prompt + o["new_tokens"] <= 256 and o["forced"]
    assert validate(extract_tunes(o["reply"])[0].abc).ok


def test_interactive_multi_turn(random_model, tmp_path, monkeypatch, capsys):
    """On a terminal: multi-line messages ended by an empty line, the history grows per turn, /reset clears it."""
    import builtins
    import sys

    import chatmusician.chat_cli as chat_cli
    from chatmusician.cli import main

    _, _, model_dir = random_model
    lines = iter(["Key: G major", "Meter: 2/4", "Bars: 2", "", "Key: Q", "", "Bars: 2", "", "/reset", "Bars: 2", "",
                  "/quit"])
    monkeypatch.setattr(builtins, "input", lambda _p="": next(lines))
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    seen = []
    real = chat_cli.ChatSession.respond
    monkeypatch.setattr(chat_cli.ChatSession, "respond", lambda self, items: seen.append((items[0]["prompt"], len(items[0]["history"]))) or real(self, items))
    assert main(["chat", "--model", str(model_dir), "--out", str(tmp_path), "--constrained", "--no-render",
                 "--max-new-tokens", "40"]) == 0
    assert [p for p, _ in seen] == ["Key: G major\nMeter: 2/4\nBars: 2", "Key: Q", "Bars: 2", "Bars: 2"]
    assert [n for _, n in seen] == [0, 1, 1, 0]  # history grows; the bad turn is not kept; /reset empties it
    err = capsys.readouterr().err
    assert "Key: 'Q' is not a key" in err


def test_generation_metrics():
    from musiccore.eval.abc_stats import abc_generation_metrics

    rep = "X:1\nL:1/8\nM:6/8\nK:G\n|:GAB c2d|GAB c2d|e>dc (3BAG F|\nG3 G3:|\n"
    short = "X:1\nL:1/8\nM:2/4\nK:D\nDEFG|A4|]\n"
    m = abc_generation_metrics([rep, None, short], [{"key": "G major", "meter": "6/8", "bars": 4}, {"key": "G"},
                                                    {"key": "Dmaj", "meter": "6/8"}], train_tunes=[rep])
    assert m["found"] == pytest.approx(2 / 3) and m["valid_rate"] == pytest.approx(2 / 3)
    assert m["key_match"] == pytest.approx(2 / 3) and m["meter_match"] == 0.5 and m["bars_match"] == 1.0
    assert m["bars_per_tune"] == 3.0 and m["repeated_bar_share"] == pytest.approx((1 / 4 + 0) / 2)
    assert m["copied"] == 0.5 and m["ngram_overlap"] == 1.0  # the first tune is a training tune
    assert m["pitch_range"] == pytest.approx((11 + 7) / 2)  # F4..e5 / D4..A4 in semitones (key signature ignored)


def test_absurd_note_length_fails_fast():
    """A model's "C2222222" made music21 re-bar for minutes; parse_score now refuses it at once."""
    import time

    t0 = time.perf_counter()
    r = validate("X:1\nL:1/8\nM:6/8\nK:G\nGAB cde|C2222222 C|]\n")
    assert not r.ok and any("units of L:" in e for e in r.errors) and time.perf_counter() - t0 < 10


def test_tight_budgets_still_close_every_tune(random_model):
    """Budgets just above the minimum, hot sampling, bar counts the budget cannot reach: every tune is valid; a budget
    below the shortest complete tune is refused before generating."""
    from chatmusician.config import GenerateConfig
    from chatmusician.generate import generate_detailed

    model, tok, _ = random_model
    gen = GenerateConfig(temperature=1.5, top_k=0, top_p=1.0)
    for budget in (35, 50):
        autos = [AbcAutomaton(min_bars=4, max_bars=8), AbcAutomaton(meter="12/8", unit="1/16", min_bars=2, max_bars=3),
                 AbcAutomaton(key="Bm", meter="3/4"), AbcAutomaton(min_bars=64, max_bars=64)]
        outs = generate_detailed(model, tok, ["Write a tune"] * 4, gen, seed=budget, max_new_tokens=budget,
                                 constraints=autos)
        for o in outs:
            assert o["new_tokens"] <= budget and validate(extract_tunes(o["reply"])[0].abc).ok, o["reply"]
    with pytest.raises(ValueError, match="too small for constrained decoding"):
        generate_detailed(model, tok, ["x"], gen, max_new_tokens=20, constraints=[AbcAutomaton()])


# ------------------------------------------------------------------------------------------------ LLaMA-2 vocabulary


def _llama2_tokenizer_dir() -> Path | None:
    """The released LLaMA-2 tokenizer folder: ``$CHATMUSICIAN_LLAMA2_TOKENIZER``, else the handbook's assets beside
    the checkout (``<root>/../shared/assets/chatmusician/llama2``); None when absent."""
    import os

    env = os.environ.get("CHATMUSICIAN_LLAMA2_TOKENIZER")
    candidates = [Path(env)] if env else []
    candidates += [p / "shared" / "assets" / "chatmusician" / "llama2" for p in Path(__file__).resolve().parents]
    return next((c for c in candidates if (c / "tokenizer.model").is_file()), None)


LLAMA2 = _llama2_tokenizer_dir()
needs_llama2 = pytest.mark.skipif(LLAMA2 is None, reason="LLaMA-2 tokenizer not found (shared/assets/chatmusician/llama2"
                                                         " or $CHATMUSICIAN_LLAMA2_TOKENIZER)")


@pytest.fixture(scope="module")
def llama2_tok():
    from chatmusician.tokenization import load_tokenizer

    return load_tokenizer(str(LLAMA2))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0, max_value=10**6), max_size=60), st.text(min_size=1, max_size=30),
       st.sampled_from([None, "Ador", "F#m"]))
def test_characters_outside_the_alphabet_are_never_accepted(choices, others, key):
    """The processor's trie keeps only tokens spelled from ``AbcAutomaton.alphabet``: that is exact only if no state
    accepts any other character (checked along random accepted paths, with random unicode)."""
    a = AbcAutomaton(key=key, min_bars=2, max_bars=3)
    outside = {c for c in others + "".join(map(chr, range(32, 127))) + "\t\r€♯" if c not in a.alphabet}
    s = a.start()
    for c in choices:
        assert all(a.step(s, ch) is None for ch in outside), s
        opts = [ch for ch in sorted(a.alphabet) if a.step(s, ch) is not None]
        if not opts:
            break
        s = a.step(s, opts[c % len(opts)])


@needs_llama2
def test_token_strings_of_the_llama2_vocabulary(llama2_tok):
    """Token texts as decoding writes them: runs of "▁" are that many spaces, byte pieces are their character, and a
    tune's ids join back to the decoded text (what the automaton reads is what the reply holds)."""
    from chatmusician.constrained import token_strings

    strings = token_strings(llama2_tok)
    assert len(strings) == 32000 and strings[2] is None  # </s> is special
    ids = {p: llama2_tok.convert_tokens_to_ids(p) for p in ("▁", "▁▁▁▁", "<0x0A>", "▁G", "AB")}
    assert [strings[i] for i in ids.values()] == [" ", "    ", "\n", " G", "AB"]
    tune = "X:1\nL:1/8\nM:6/8\nK:G\n|:GAB ~c2d|e>dc (3BAG F|\nG3 G3:|\n"
    enc = llama2_tok(tune, add_special_tokens=False)["input_ids"][1:]  # without the dummy-prefix "▁X"
    assert "".join(strings[i] for i in enc) == llama2_tok.decode(enc) == tune[1:]


@needs_llama2
def test_constrained_decoding_with_the_llama2_vocabulary(llama2_tok):
    """A random tiny LLaMA with a 32000-row embedding and the released vocabulary: every constrained tune parses, passes
    the strict bar check and has the asked key, meter and bar count; the pruned trie walk admits exactly the tokens a
    brute-force run of the automaton over all 32000 token texts admits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatmusician.config import GenerateConfig
    from chatmusician.constrained import AbcLogitsProcessor
    from chatmusician.generate import generate_detailed

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=32, max_position_embeddings=512,
                                         eos_token_id=2, pad_token_id=0)).eval()
    prompts = [PROMPT, "Key: D dorian\nMeter: 3/4\nBars: 2", "Key: Bb major\nMeter: 2/4\nNote Length: 1/16\nBars: 3",
               "Key: E minor\nMeter: 12/8\nBars: 2"]
    reqs = [parse_request(p) for p in prompts]
    autos = [AbcAutomaton(key=r.key, meter=r.meter, unit=r.unit, min_bars=r.bars, max_bars=r.bars) for r in reqs]
    outs = generate_detailed(model, llama2_tok, prompts, GenerateConfig(temperature=1.0, max_new_tokens=160), seed=3,
                             constraints=autos, batch_size=4)
    for r, o in zip(reqs, outs):
        tunes = extract_tunes(o["reply"])
        assert len(tunes) == 1 and not o["forced"], o
        res = validate(tunes[0].abc)
        assert res.ok and res.n_bars == r.bars, (o["reply"], res.errors)
        assert f"\nK:{r.key}\n" in tunes[0].abc and f"\nM:{r.meter}\n" in tunes[0].abc
        assert "  " not in tunes[0].abc.split("K:")[1].rstrip()  # single spaces inside the body
    # exactness of the pruned walk, on states along the first reply (header, notes being spelled, bar lines, the end)
    a = AbcAutomaton(key="G", meter="6/8", unit="1/8", min_bars=4, max_bars=4)
    proc = AbcLogitsProcessor(llama2_tok, [a], 200)
    text = outs[0]["reply"]
    for cut in sorted({0, 12, 22, 24, len(text) // 2, len(text) - 3}):
        s = a.run(a.start(), text[:cut])
        brute = {i for i, t in enumerate(proc.strings) if t and a.run(s, t) is not None} | (
            {proc.eos} if a.can_end(s) else set())
        assert set(proc._allowed(0, s)) == brute, repr(text[:cut])
