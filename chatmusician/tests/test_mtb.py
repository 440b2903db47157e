"""MusicTheoryBench PPL protocol: prompt text, stem rewriting, exemplar dropping, argmin-of-loss prediction."""

from __future__ import annotations

import json

import pytest
import torch

from chatmusician.mtb import HINT, evaluate_mtb, item_input, load_mtb, mean_losses, prompts_for

ROW = {"id": 13, "stem": "Use the example below to answer the question that follows. What chord is this?",
       "options": {"A": "Major seventh in third inversion", "B": "b", "C": "c", "D": "d"}, "subject": "reasoning",
       "answer": "A", "split": "dev", "abc_score": "L:1/4\nM:4/4\nK:D\n[FGBd]4 |]"}


def test_prompt_text():
    assert item_input(ROW) == "What chord is this?\nL:1/4\nM:4/4\nK:D\n[FGBd]4 |]"
    cands = prompts_for(ROW)
    assert cands[2] == (HINT + "\nWhat chord is this?\nL:1/4\nM:4/4\nK:D\n[FGBd]4 |]\nA. Major seventh in third inversion"
                        "\nB. b\nC. c\nD. d\nAnswer: C")
    few = prompts_for({**ROW, "abc_score": ""}, [ROW, ROW])
    assert few[0].count("Answer: A\n") == 2 and few[0].startswith(HINT + "\nWhat chord")


def test_exemplars_dropped_to_fit(tok_dir):
    from chatmusician.tokenization import load_tokenizer

    tok = load_tokenizer(str(tok_dir))
    full = prompts_for(ROW, [ROW] * 5, tok, max_seq_len=10**6)
    n_full = len(tok(full[0])["input_ids"])
    fit = prompts_for(ROW, [ROW] * 5, tok, max_seq_len=n_full - 1)
    assert fit[0].count("Answer: A\n") == 4


def _independent_mean_loss(model, tok, text: str) -> float:
    """The paper's per-candidate number computed here without chatmusician.mtb: HF's own causal-LM loss (mean over
    the T-1 predicted tokens of the tokenizer-default encoding, BOS included) rescaled to OpenCompass's
    sum / T real tokens."""
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    T = ids.shape[1]
    return loss * (T - 1) / T


def test_ppl_prediction_is_argmin(tmp_path, tok_dir):
    """Each prediction is the letter whose candidate has the lowest mean loss, per item: 12 questions with different
    stems, whose gold answer is set to the independently computed argmin on even items and to another letter on odd
    ones. Accuracy must be exactly 1/2 per subject and each predicted letter the argmin; a constant pick, the gold
    letter, or the argmax would not give that."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatmusician.tokenization import load_tokenizer

    tok = load_tokenizer(str(tok_dir))
    torch.manual_seed(0)
    # large initial weights: the answer letter's probability depends on the question (with the default 0.02 init a
    # random model prefers one letter everywhere)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=64, initializer_range=1.0)).eval()
    base = [{**ROW, "id": i, "split": "test", "subject": ("knowledge", "reasoning")[(i // 2) % 2],
             "stem": f"Question {i}: which {'chord ' * (i % 4)}is this? {'BAGFEDC'[: i % 7]}",
             "options": {"A": f"option a{i}", "B": "Major seventh", "C": f"c {'G' * (i % 3)}", "D": "d" * (1 + i % 5)}}
            for i in range(12)]
    indep = [[_independent_mean_loss(model, tok, c) for c in prompts_for(r)] for r in base]
    argmin = ["ABCD"[ls.index(min(ls))] for ls in indep]
    assert len(set(argmin)) >= 3, "the fixture must make different letters win (else a constant pick passes)"
    rows = [{**r, "answer": a if i % 2 == 0 else "ABCD"[("ABCD".index(a) + 1) % 4]}
            for i, (r, a) in enumerate(zip(base, argmin))]
    (tmp_path / "mtb.jsonl").write_text("\n".join(json.dumps(r) for r in rows + [ROW]) + "\n")
    data = load_mtb(tmp_path)
    assert len(data["dev"]) == 1 and len(data["test"]) == 12
    pred = tmp_path / "pred.jsonl"
    res = evaluate_mtb(model, tok, data, predictions=pred)
    assert res["knowledge_zero_shot"] == {"n": 6, "accuracy": 0.5}
    assert res["reasoning_zero_shot"] == {"n": 6, "accuracy": 0.5}
    got = {r["id"]: r for r in map(json.loads, pred.read_text().splitlines())}
    for i, ls in enumerate(indep):
        assert got[i]["losses"] == pytest.approx(ls, abs=1e-4)
        assert got[i]["pred"] == argmin[i] and got[i]["correct"] == (i % 2 == 0)
    # the same scoring through mean_losses (candidate by candidate) agrees with the independent numbers
    assert mean_losses(model, tok, prompts_for(rows[0])) == pytest.approx(indep[0], abs=1e-4)


# ------------------------------------------------------------------------------------------------ batched scoring,
# released layout checks, gen/CoT modes, the built-in theory set


def _tiny_model(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=2, intermediate_size=64)).eval()


def _rows(n: int) -> list[dict]:
    return [{**ROW, "id": i, "split": "test", "answer": "ABCD"[i % 4], "subject": ("knowledge", "reasoning")[i % 2],
             "stem": f"Question {i}: " + "which one? " * (i % 5), "abc_score": "" if i % 3 else ROW["abc_score"]}
            for i in range(n)]


def test_batched_shared_prefix_scoring_equals_one_at_a_time(tok_dir):
    """question_losses (one forward per question, several questions per forward) gives the paper's per-candidate mean
    losses: the same numbers (float rounding) and the same answers as scoring each candidate alone."""
    from chatmusician.mtb import question_losses
    from chatmusician.tokenization import load_tokenizer

    tok = load_tokenizer(str(tok_dir))
    model = _tiny_model(tok)
    cands = [prompts_for(r) for r in _rows(9)]
    alone = [mean_losses(model, tok, c) for c in cands]
    fast = question_losses(model, tok, cands, batch_size=4)
    slow_batched = question_losses(model, tok, cands, batch_size=4, share_prefix=False)
    for a, b, c in zip(alone, fast, slow_batched):
        assert a == pytest.approx(b, abs=1e-5) and a == pytest.approx(c, abs=1e-5)
        assert a.index(min(a)) == b.index(min(b))


def test_missing_field_names_the_row(tmp_path):
    from chatmusician.mtb import MTBFormatError

    rows = _rows(3)
    del rows[2]["answer"]
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(MTBFormatError, match=r"test.jsonl row 3 \(id 2\): missing field 'answer'"):
        load_mtb(tmp_path)
    rows = _rows(2)
    rows[1]["options"] = {"A": "x", "B": "y"}
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(MTBFormatError, match="row 2 .*'options'"):
        load_mtb(tmp_path)


def test_cli_bad_benchmark_is_one_line(tmp_path, capsys):
    from chatmusician.cli import main

    (tmp_path / "mtb").mkdir()
    (tmp_path / "mtb" / "test.jsonl").write_text(json.dumps({"id": 1, "stem": "q", "options": ROW["options"]}) + "\n")
    assert main(["eval", "--model", str(tmp_path / "nomodel"), "--mtb", str(tmp_path / "mtb")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "row 1 (id 1): missing field 'subject'" in err[0]


def test_counts_missing_split_modes_and_predictions(tmp_path, tok_dir):
    from chatmusician.mtb import count_checks, extract_letter
    from chatmusician.tokenization import load_tokenizer

    tok = load_tokenizer(str(tok_dir))
    model = _tiny_model(tok)
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in _rows(6)) + "\n")
    data = load_mtb(tmp_path)
    checks = count_checks(data)
    assert "dev: 0 items, the released set has 5" in checks and "test: 6 items, the released set has 367" in checks
    few = evaluate_mtb(model, tok, data, few_shot=True)
    assert "needs the dev split" in few["skipped"] and "knowledge_few_shot" not in few
    pred = tmp_path / "pred.jsonl"
    res = evaluate_mtb(model, tok, data, predictions=pred, batch_size=4)
    assert res["knowledge_zero_shot"]["n"] == 3 and res["reasoning_zero_shot"]["n"] == 3
    rows = [json.loads(x) for x in pred.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(6)) and all(len(r["losses"]) == 4 for r in rows)
    assert res["all_zero_shot"]["accuracy"] == sum(r["correct"] for r in rows) / 6
    for mode in ("gen", "cot"):
        r = evaluate_mtb(model, tok, data, mode=mode, max_new_tokens=4, predictions=pred)
        assert r[f"all_zero_shot_{mode}"]["n"] == 6
        assert all("reply" in json.loads(x) for x in pred.read_text().splitlines())
    assert extract_letter("I think B. Answer: C") == "C" and extract_letter("the answer is (D)") == "D"
    assert extract_letter("B is right") == "B" and extract_letter("none") is None


def test_theory_set_ground_truth(corpus_dir, tmp_path):
    """The built-in set: MTB layout, every topic, answers that match the tune headers / music21's analysis."""
    from music21 import chord, converter

    from conftest import tiny_config
    from chatmusician.evaluate import corpus_tunes
    from chatmusician.theory import TOPICS, build_theory_set, write_theory_set

    tunes = corpus_tunes(tiny_config(corpus_dir))
    data = load_mtb(write_theory_set(build_theory_set(tunes, per_topic=4), tmp_path / "theory"))
    assert {r["topic"] for r in data["dev"]} == set(TOPICS) and len(data["dev"]) == 5
    by_id = {t["id"]: t for t in tunes}
    for r in data["test"]:
        right = r["options"][r["answer"]]
        if r["topic"] == "meter":
            assert f"M:{right}\n" in by_id[r["source"]]["abc"]
        if r["topic"] == "chord":
            c = chord.Chord(list(converter.parse(r["abc_score"], format="abc").recurse().notes)[0].pitches)
            assert right.split()[0] in c.commonName.lower() or (right.startswith("dominant") and c.isDominantSeventh())
        assert sorted(r["options"]) == list("ABCD") and len(set(r["options"].values())) == 4
