"""MusicTheoryBench PPL protocol: prompt text, stem rewriting, exemplar dropping, argmin-of-loss prediction."""

from __future__ import annotations

import json

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


def test_ppl_prediction_is_argmin(tmp_path, tok_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatmusician.tokenization import load_tokenizer

    tok = load_tokenizer(str(tok_dir))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=64)).eval()
    rows = [{**ROW, "split": "test", "answer": x, "id": i} for i, x in enumerate("ABCD")]
    (tmp_path / "mtb.jsonl").write_text("\n".join(json.dumps(r) for r in rows + [ROW]) + "\n")
    data = load_mtb(tmp_path)
    assert len(data["dev"]) == 1 and len(data["test"]) == 4
    losses = mean_losses(model, tok, prompts_for(rows[0]))
    best = "ABCD"[losses.index(min(losses))]
    res = evaluate_mtb(model, tok, data)
    # the four test rows differ only in the gold letter: exactly one is right
    assert res["reasoning_zero_shot"] == {"n": 4, "accuracy": 0.25}
    assert res["knowledge_zero_shot"]["n"] == 0
    assert best in "ABCD"
