"""Corpus building: cleaning, dedup and split by tune, task generators, released-file readers, bad-input counting."""

from __future__ import annotations

import json

import pytest

from musiccore.testing import require_tool

from chatmusician import abctools
from chatmusician.data import (
    Report,
    build,
    check_sft_row,
    clean_tune,
    generate_sft,
    key_text,
    mix_pretrain,
    prepare_tunes,
    read_rows,
)

from conftest import tiny_config

TUNE = """X:7
T:Test Reel
R:reel
N:some note
M:4/4
L:1/8
K:D
|:"D"DFAd "G"B2AG|"A7"FAEF D4 | % comment
"D"fdfa gfed|"A"cAGE D2D2:|
"""


def test_clean_tune_normalises():
    out = clean_tune(TUNE)
    assert out.startswith("X:1\nL:1/8\nM:4/4\nK:D\n")
    assert "T:" not in out and "N:" not in out and "%" not in out
    assert abctools.chords(out) == ["D", "G", "A7", "D", "A"]
    two = clean_tune(TUNE, max_bars=2)
    assert abctools.tune_body(two).strip() == '|:"D"DFAd "G"B2AG|"A7"FAEF D4 |'
    assert abctools.validate(out).ok


@pytest.mark.parametrize("bad", ["just some text", "X:1\nT:no key\nabc|", "X:1\nL:1/8\nK:G\n% only a comment\n"])
def test_clean_tune_rejects_non_abc(bad):
    with pytest.raises(abctools.ABCError):
        clean_tune(bad)


def test_prepare_dedup_and_split(tmp_path):
    cfg = tiny_config(tmp_path, "data.valid_fraction=0.5")
    same_body = TUNE.replace("T:Test Reel", "T:Other title").replace("X:7", "X:99")  # same music, other headers
    rows = [{"id": "a", "abc": TUNE}, {"id": "b", "abc": same_body}, {"id": "c", "abc": "no abc here"},
            {"id": "d", "abc": TUNE.replace("fdfa", "fdfb")}]
    rep = Report()
    tunes = prepare_tunes(rows, cfg, rep)
    assert [t["id"] for t in tunes] == ["a", "d"]
    assert rep["rejected/duplicate_tune"] == 1 and rep["rejected/not_abc"] == 1
    sft = generate_sft(tunes, cfg, Report())
    for t in tunes:  # every sample of a tune lands in the tune's split
        assert {r["split"] for r in sft if r["id"] == t["id"]} == {t["split"]}


def test_task_generators(tmp_path):
    cfg = tiny_config(tmp_path, "data.max_bars=0", "data.transpose_semitones=[]")
    tunes = prepare_tunes([{"id": "a", "abc": TUNE, "rhythm": "reel"}], cfg, Report())
    rows = {r["src"]: r for r in generate_sft(tunes, cfg, Report())}
    meta = rows["kit_metadata"]
    assert "Key: D major" in meta["input"] and "Meter: 4/4" in meta["input"] and "Rhythm: reel" in meta["input"]
    assert meta["output"] == "Assistant: " + tunes[0]["abc"] + " </s>"
    assert "'D', 'G', 'A7', 'D', 'A'" in rows["kit_chords"]["input"]
    cont = rows["kit_continuation"]
    assert cont["input"].count("|") < cont["output"].count("|")
    assert rows["kit_qa_key"]["output"] == "Assistant: The key is D major. </s>"
    assert rows["kit_qa_meter"]["output"] == "Assistant: The meter is 4/4. </s>"
    assert "4 bars" in rows["kit_qa_length"]["output"] or "bars" in rows["kit_qa_length"]["output"]
    assert key_text("Ador") == "A dorian" and key_text("F#m") == "F# minor" and key_text("Bb") == "Bb major"


def test_transpose_task(tmp_path):
    require_tool("abc2abc")
    cfg = tiny_config(tmp_path, "data.tasks=[transpose]", "data.transpose_semitones=[2]")
    tunes = prepare_tunes([{"id": "a", "abc": TUNE}], cfg, Report())
    (row,) = generate_sft(tunes, cfg, Report())
    out = row["output"][len("Assistant: "):-len(" </s>")]
    assert abctools.parse_header(out)["K"].startswith("E")
    assert abctools.chords(out)[:3] == ["E", "A", "B7"]


def test_readers_and_bad_rows(tmp_path):
    d = tmp_path / "sft"
    d.mkdir()
    good = {"instruction": "Human: Write a reel.\n", "input": " </s> ", "output": "Assistant: X:1\nL:1/8\nK:D\nDFA|\n </s>", "src": "IrishMAN"}
    lines = [json.dumps(good), "{not json", json.dumps([1, 2]), json.dumps({**good, "output": "Assistant:  </s>"}),
             json.dumps({**good, "output": "Assistant: a lovely tune </s>"}),
             json.dumps({**good, "src": "music_knowledge", "output": "Assistant: The tonic is D. </s>"})]
    (d / "part.jsonl").write_text("\n".join(lines) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([good]), d / "part.parquet")
    rep = Report()
    kept = [r for i, row in enumerate(read_rows(d, rep, "sft")) if (r := check_sft_row(row, rep, str(i)))]
    assert len(kept) == 3  # two good score rows (jsonl + parquet) and the verbal one
    assert rep["rejected/malformed_jsonl"] == 2
    assert rep["rejected/empty_output"] == 1
    assert rep["rejected/non_abc_output"] == 1
    with pytest.raises(FileNotFoundError):
        list(read_rows(tmp_path / "missing", rep, "sft"))


def test_mix_ratio():
    abc = ["a" * 100] * 10
    text = ["t" * 10] * 1000
    docs = mix_pretrain(abc, text, 0.5, seed=0)
    a = sum(len(d) for d in docs if d[0] == "a")
    t = sum(len(d) for d in docs if d[0] == "t")
    assert abs(a / (a + t) - 0.5) < 0.02
    docs = mix_pretrain(abc, ["t" * 10] * 5, 0.5, seed=0)  # too little text: the ABC side is subsampled
    a = sum(len(d) for d in docs if d[0] == "a")
    assert a <= 150


def test_build_reports_everything(tmp_path):
    d = tmp_path / "pile-sft"
    d.mkdir()
    long_out = "Assistant: X:1\nL:1/8\nK:D\n" + "DFAd " * 400 + " </s>"
    rows = [{"instruction": "Human: hi\n", "input": " </s> ", "output": long_out, "src": "irishman"},
            {"instruction": "Human: hi\n", "input": " </s> ", "output": "", "src": "music_summary"}]
    (d / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    cfg = tiny_config(tmp_path, f"data.musicpile_sft_dir={d}", "data.max_tunes=30")
    rep = build(cfg)
    c = rep["counts"]
    assert c["rejected/malformed_jsonl"] == 1 and c["rejected/empty_output"] == 1 and c["rejected/overlong"] >= 1
    assert c["sft/train/samples"] > 0 and c["pretrain/train/samples"] > 0
    out = tmp_path / "data"
    assert (out / "report.json").exists() and (out / "tokenizer" / "tokenizer.json").exists()
    from chatmusician.data import resolve_num_proc

    # pack batch boundaries follow the worker count: the manifest records it so a corpus can be rebuilt identically
    assert json.loads((out / "report.json").read_text())["num_proc"] == resolve_num_proc(cfg.data.num_proc) >= 1
    for stage in ("sft", "pretrain"):
        assert (out / stage / "train.jsonl").exists() and (out / stage / "tokenized" / "dataset_dict.json").exists()
    import datasets

    ds = datasets.load_from_disk(str(out / "sft" / "tokenized"))["train"]
    assert max(len(x) for x in ds["input_ids"]) <= cfg.data.max_len


def test_extract_abc():
    assert abctools.extract_abc("Here:\nX:1\nL:1/8\nK:G\nGAB|") == "X:1\nL:1/8\nK:G\nGAB|\n"
    assert abctools.extract_abc("L:1/8\nK:G\nGAB|").startswith("X:1\nL:1/8")
    assert abctools.extract_abc("no music") is None


def test_score_reply():
    from chatmusician.evaluate import score_reply

    good = "Here you go:\nX:1\nL:1/8\nM:6/8\nK:G\nGAB cBA|GAB c2d|\n"
    r = score_reply(good, "G", "6/8")
    assert r["found"] and r["parsed"] and r["key_match"] and r["meter_match"]
    r = score_reply(good, "D", "3/4")
    assert r["parsed"] and not r["key_match"] and not r["meter_match"]
    r = score_reply("I cannot write music.", "G", "6/8")
    assert not r["found"] and not r["parsed"]
    r = score_reply("X:1\nL:1/8\nM:6/8\nK:Am\nGAB|\n", "A minor".replace(" minor", "m"), "6/8")
    assert r["key_match"]


def test_kit_manifest_is_the_tune_source(tmp_path):
    from chatmusician.data import load_tunes

    kit = tmp_path / "kit" / "tunes"
    kit.mkdir(parents=True)
    rows = [{"id": "k1", "abc": TUNE, "rhythm": "reel", "split": "train"}, {"id": "k2", "abc": "not abc", "split": "train"}]
    (kit / "tunes.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = tiny_config(tmp_path, "data.tunes=kit", f"data.kit_root={tmp_path / 'kit'}", "data.max_tunes=0")
    got = load_tunes(cfg)
    assert [r["id"] for r in got] == ["k1", "k2"]
    rep = Report()
    assert [t["id"] for t in prepare_tunes(got, cfg, rep)] == ["k1"] and rep["rejected/not_abc"] == 1
    # a kit that was not built: the music21 corpus stands in (logged), so `make demo` works before `make data`
    cfg = tiny_config(tmp_path, "data.tunes=kit", f"data.kit_root={tmp_path / 'nokit'}", "data.max_tunes=5")
    assert len(load_tunes(cfg)) == 5


# ---------------------------------------------------------------------------------------------------------------
# Corpus on disk (issue 13): streamed build, document-aware packing, released recipe, refusal of a missing/stale corpus

from hypothesis import given
from hypothesis import strategies as st

from musiccore.testing import property_settings

from chatmusician.data import CorpusError, check_corpus, data_command, open_split, read_text_files
from chatmusician.tokenization import IGNORE_INDEX, pack_pretrain_blocks


def _scored_pairs(block_ids, block_labels):
    """(input token, target token) pairs the causal-LM loss scores in one packed row: logits at t predict label t+1."""
    return [(block_ids[t], block_labels[t + 1]) for t in range(len(block_ids) - 1) if block_labels[t + 1] != IGNORE_INDEX]


def test_pretrain_blocks_document_aware_by_hand():
    # three documents (2 = EOS closes each), blocks of 4: the stream 10 11 2 | 12 13 14 2 | 15 2 is cut as
    # [10 11 2 12] [13 14 2 15] [2]
    docs = [[10, 11, 2], [12, 13, 14, 2], [15, 2]]
    out = pack_pretrain_blocks(docs, docs, [True, True, True], length=4)
    assert out["input_ids"] == [[10, 11, 2, 12], [13, 14, 2, 15], [2]]
    # the first token of every document is no target (-100); everything else is scored, EOS included
    assert out["labels"] == [[-100, 11, 2, -100], [13, 14, 2, -100], [2]]
    # positions restart at each document start and at each block start
    assert out["position_ids"] == [[0, 1, 2, 0], [0, 1, 2, 0], [0]]
    pairs = [p for i, l in zip(out["input_ids"], out["labels"]) for p in _scored_pairs(i, l)]
    assert pairs == [(10, 11), (11, 2), (13, 14), (14, 2)]  # hand-listed: no "EOS of A -> first token of B"
    assert (2, 12) not in pairs and (2, 15) not in pairs
    # a long document in two chunks (doc_start False on the second) is one segment: positions go on, labels kept
    out = pack_pretrain_blocks([[20, 21], [22, 2], [30, 2]], [[20, 21], [22, 2], [30, 2]], [True, False, True], 8)
    assert out == {"input_ids": [[20, 21, 22, 2, 30, 2]], "labels": [[-100, 21, 22, 2, -100, 2]],
                   "position_ids": [[0, 1, 2, 3, 0, 1]]}


@property_settings(40)
@given(docs=st.lists(st.lists(st.integers(3, 50), min_size=0, max_size=12), min_size=1, max_size=8),
       length=st.integers(1, 16))
def test_pretrain_blocks_properties(docs, length):
    docs = [d + [2] for d in docs]  # every document ends with EOS
    out = pack_pretrain_blocks(docs, docs, [True] * len(docs), length)
    flat = [t for d in docs for t in d]
    assert [t for b in out["input_ids"] for t in b] == flat  # nothing lost, nothing reordered
    assert all(len(b) == length for b in out["input_ids"][:-1]) and 0 < len(out["input_ids"][-1]) <= length
    owner = [k for k, d in enumerate(docs) for _ in d]  # document of every token of the stream
    first = {sum(map(len, docs[:k])) for k in range(len(docs))}
    i = 0
    for ids, labels, pos in zip(out["input_ids"], out["labels"], out["position_ids"]):
        for t in range(len(ids)):
            g = i + t
            assert (labels[t] == IGNORE_INDEX) == (g in first)
            assert pos[t] == (0 if t == 0 or g in first else pos[t - 1] + 1)
            if t + 1 < len(ids) and labels[t + 1] != IGNORE_INDEX:
                assert owner[g] == owner[g + 1]  # every scored target stays inside its document
        i += len(ids)


def test_packed_pretraining_loss_is_the_sum_of_document_losses():
    """The model's loss on a packed block equals the documents' own losses added up: with the boundary label masked
    and positions restarting, packing adds no cross-document target (unmasked, the sum would have one more term)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from chatmusician.tokenization import Collator, register_packed_attention

    register_packed_attention()
    torch.manual_seed(0)
    conf = LlamaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=64, max_position_embeddings=64, use_cache=False)
    conf._attn_implementation = "packed_sdpa"
    model = LlamaForCausalLM(conf).eval()
    docs = [[5, 6, 7, 2], [8, 9, 2], [10, 11, 12, 13, 2]]
    out = pack_pretrain_blocks(docs, docs, [True] * 3, length=32)
    batch = Collator()([dict(zip(out, v)) for v in zip(*out.values())])
    with torch.no_grad():
        n_packed = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        packed = model(**batch).loss * n_packed
        alone = sum(model(input_ids=torch.tensor([d]), labels=torch.tensor([d])).loss * (len(d) - 1) for d in docs)
    assert n_packed == sum(len(d) - 1 for d in docs)
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-5)


def _parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


def test_bad_corpus_files_are_skipped_and_reported(tmp_path, tok_dir):
    pile = tmp_path / "pile"
    pile.mkdir()
    good = [{"id": str(i), "text": f"Music text number {i}. X:1\nL:1/8\nK:G\nGABc dedB|", "src": "irishman"} for i in range(6)]
    _parquet(pile / "a.parquet", good[:3])
    _parquet(pile / "b.parquet", good[3:])
    whole = (pile / "b.parquet").read_bytes()
    (pile / "b.parquet").write_bytes(whole[: len(whole) // 2])  # truncated: no footer
    (pile / "c.parquet").write_bytes(b"PAR1 this is not parquet")
    (pile / "d.jsonl").write_bytes(b'{"text": "caf\xe9 au lait"}\n{"text": "fine text"}\n{"text": "bad \xff\xfe"}\n')
    txt = tmp_path / "notes.txt"
    txt.write_bytes(b"A good paragraph.\n\nA bad \xc3\x28 paragraph.\n\nAnother good one.\n")
    cfg = tiny_config(tmp_path, "data.tunes=none", f"data.musicpile_dir={pile}", f"data.text_files=[{txt}]",
                      f"model.tokenizer={tok_dir}", "data.valid_fraction=0.0")
    rep = build(cfg)
    c, files = rep["counts"], rep["files"]
    assert c["rejected/corrupt_file"] == 2  # b (truncated) and c (garbage); the build went on
    assert "unreadable parquet" in files[str(pile / "b.parquet")]["error"] and str(pile / "c.parquet") in files
    assert files[str(pile / "d.jsonl")]["invalid_utf8"] == 2 and files[str(txt)]["invalid_utf8"] == 1
    assert c["rejected/invalid_utf8"] == 3
    assert str(pile / "a.parquet") not in files  # a clean file has no entry
    texts = [json.loads(x)["text"] for x in (tmp_path / "data" / "pretrain" / "train.jsonl").read_text().splitlines()]
    assert sorted(texts) == sorted([r["text"] for r in good[:3]] + ["fine text", "A good paragraph.", "Another good one."])
    assert not any("\ufffd" in t for t in texts)  # nothing decoded with replacement characters
    assert c["pretrain/train/docs"] == 6 and c.get("pretrain/valid/docs", 0) == 0  # valid_fraction 0: no hold-out
    # the packed blocks hold exactly the tokens of those documents, each followed by EOS
    ds = open_split(tiny_config(tmp_path, "data.tunes=none", f"data.musicpile_dir={pile}", f"data.text_files=[{txt}]",
                                f"model.tokenizer={tok_dir}", "data.valid_fraction=0.0", "data.stage=pretrain"), "train")
    assert sum(len(r) for r in ds["input_ids"]) == c["pretrain/train/tokens"]
    assert sum(r.count(2) for r in ds["input_ids"]) == 6


def test_text_reader_counts_invalid_utf8_per_file(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"ok one\n\n\xff bad\n\nok two\n")
    rep = Report()
    assert list(read_text_files([str(p)], rep)) == ["ok one", "ok two"]
    assert rep.files[str(p)]["invalid_utf8"] == 1 and rep["rejected/invalid_utf8"] == 1


@property_settings(30)
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".parquet"]))
def test_corpus_reader_never_crashes_on_garbage(tmp_path_factory, data, suffix):
    d = tmp_path_factory.mktemp("garbage")
    (d / f"x{suffix}").write_bytes(data)
    rep = Report()
    rows = list(read_rows(d, rep, "MusicPile"))
    assert all(isinstance(r, dict) for r in rows)  # a valid result: only object rows come out
    fc = rep.files[str(d / f"x{suffix}")]
    if suffix == ".parquet" and data:
        assert rows == [] and "error" in fc and rep["rejected/corrupt_file"] == 1  # random bytes are never parquet
    assert fc["rows"] == len(rows)


def test_released_sft_recipe_truncates_keeps_null_input_and_holds_out_nothing(tmp_path, tok_dir):
    d = tmp_path / "pile-sft"
    d.mkdir()
    long_out = "Assistant: X:1\nL:1/8\nK:D\n" + "DFAd " * 400 + " </s>"
    rows = [{"instruction": "Human: Write a reel.\n", "input": None, "output": long_out, "src": "irishman", "id": "long"},
            {"instruction": "Human: What is a jig?", "input": None, "output": "Assistant: A dance in 6/8. </s>",
             "src": "music_knowledge", "id": "null-input"}]
    _parquet(d / "part.parquet", rows)
    over = [f"data.musicpile_sft_dir={d}", "data.tunes=none", f"model.tokenizer={tok_dir}"]
    rep = build(tiny_config(tmp_path, *over, "data.overlong=truncate", "data.valid_fraction=0.0"))
    c = rep["counts"]
    assert c["sft/train/samples"] == 2 and c["truncated/overlong"] == 1 and "rejected/overlong" not in c
    assert c.get("sft/valid/samples", 0) == 0 and "rejected/malformed_row" not in c
    import datasets

    tok = datasets.load_from_disk(str(tmp_path / "data" / "sft" / "tokenized"))["train"]
    assert len(tok["input_ids"][0]) <= 256 - 3 or len(tok["input_ids"][1]) <= 256 - 3
    assert max(len(x) for x in tok["input_ids"]) <= 256 - 3  # released: source + target <= max_len - 3
    jl = [json.loads(x) for x in (tmp_path / "data" / "sft" / "train.jsonl").read_text().splitlines()]
    assert {r["id"]: r["input"] for r in jl}["null-input"] == ""  # null input read as empty
    # the drop mode (tiny default) rejects and counts it instead
    rep = build(tiny_config(tmp_path, *over, "data.overlong=drop", "data.valid_fraction=0.0"))
    assert rep["counts"]["rejected/overlong"] == 1 and rep["counts"]["sft/train/samples"] == 1


def test_pretraining_keeps_all_text_and_mixes_kit_abc_only_when_asked(tmp_path, tok_dir):
    pile = tmp_path / "pile"
    pile.mkdir()
    _parquet(pile / "p.parquet", [{"id": str(i), "text": "general text " * 20 + str(i), "src": "pile"} for i in range(40)])
    base = [f"data.musicpile_dir={pile}", f"model.tokenizer={tok_dir}", "data.valid_fraction=0.0", "data.max_tunes=20"]
    alone = build(tiny_config(tmp_path / "a", *base, "data.tunes=none"))["counts"]
    assert alone["pretrain/train/docs"] == 40 and "tunes/read" not in alone  # MusicPile alone, every document
    mixed = build(tiny_config(tmp_path / "m", *base, "data.abc_text_ratio=0.5"))["counts"]
    # kit tunes asked for: all 40 text documents kept (never subsampled), plus the kit's ABC and music text
    jl = [json.loads(x)["text"] for x in (tmp_path / "m" / "data" / "pretrain" / "train.jsonl").read_text().splitlines()]
    assert sum(t.startswith("general text") for t in jl) == 40
    abc = sum(len(t) for t in jl if t.startswith("X:1"))
    assert abs(abc / sum(map(len, jl)) - 0.5) < 0.05 and mixed["pretrain/train/docs"] > 40


def test_training_refuses_a_missing_or_stale_corpus(tmp_path, corpus_dir):
    cfg = tiny_config(corpus_dir)  # the session corpus: opens
    assert check_corpus(cfg)["fingerprint"] and len(open_split(cfg, "train")) > 0
    missing = tiny_config(tmp_path)
    with pytest.raises(CorpusError, match=r"no prepared corpus .*build it with: chatmusician data "):
        open_split(missing, "train")
    assert not (tmp_path / "data").exists()  # opening never builds
    with pytest.raises(CorpusError, match=r"stale corpus, built from another data config.*chatmusician data"):
        check_corpus(tiny_config(corpus_dir, "data.max_bars=3"))
    # the message names the user's own command with `data` in place of `train`
    argv = ["/x/bin/chatmusician", "train", "--config", "configs/tiny.yaml", "trainer.max_steps=3", "data.max_bars=3"]
    assert data_command(missing, argv) == "chatmusician data --config configs/tiny.yaml trainer.max_steps=3 data.max_bars=3"
    # from Python: the data-relevant fields that differ from the defaults, as overrides that rebuild the same corpus
    cmd = data_command(missing, ["python"])
    assert cmd.startswith("chatmusician data ") and "data.max_tunes=80" in cmd and f"data.out_dir={tmp_path / 'data'}" in cmd
    from musiccore.config import load_config

    import shlex

    from chatmusician.config import ChatMusicianConfig
    from chatmusician.data import data_fingerprint

    again = load_config(ChatMusicianConfig, None, shlex.split(cmd)[2:])
    assert data_fingerprint(again) == data_fingerprint(missing)


def test_stale_when_the_tokenizer_changes(tmp_path, tok_dir):
    import shutil

    tok = tmp_path / "tok"
    shutil.copytree(tok_dir, tok)
    cfg = tiny_config(tmp_path, f"model.tokenizer={tok}", "data.tunes=music21", "data.max_tunes=5")
    build(cfg)
    check_corpus(cfg)
    cfg_json = json.loads((tok / "tokenizer_config.json").read_text())
    (tok / "tokenizer_config.json").write_text(json.dumps({**cfg_json, "model_max_length": 77}))
    with pytest.raises(CorpusError, match="tokenized with another tokenizer"):
        check_corpus(cfg)


def test_data_command_skips_an_up_to_date_corpus(tmp_path, capsys):
    from chatmusician.cli import main

    args = ["data", "--config", "configs/tiny.yaml", f"data.out_dir={tmp_path / 'data'}", "data.tunes=music21",
            "data.music21_collections=[ryansMammoth]", "data.max_tunes=10", "tokenizer.vocab_size=120"]
    assert main(args) == 0
    rep = tmp_path / "data" / "report.json"
    first = (rep.stat().st_mtime_ns, (tmp_path / "data" / "sft" / "packed").stat().st_ino)
    assert main(args) == 0  # up to date: nothing rebuilt
    assert (rep.stat().st_mtime_ns, (tmp_path / "data" / "sft" / "packed").stat().st_ino) == first
    assert main(args + ["--force"]) == 0
    assert (tmp_path / "data" / "sft" / "packed").stat().st_ino != first[1]
    assert '"sft/train/samples"' in capsys.readouterr().out  # every run prints the counts
    assert not list((tmp_path / "data").glob(".build-*"))  # the temporary build folders are gone


def test_cli_missing_inputs_and_missing_corpus_are_one_line_exit_2(tmp_path, capsys):
    from chatmusician.cli import main

    base = ["--config", "configs/tiny.yaml", f"data.out_dir={tmp_path / 'data'}", f"run.dir={tmp_path / 'run'}"]
    assert main(["data", *base, "data.tunes=none", f"data.musicpile_dir={tmp_path / 'no-pile'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"chatmusician data: error: {tmp_path / 'no-pile'}: MusicPile folder not found"
    assert not (tmp_path / "data" / "report.json").exists()
    assert main(["train", *base, "trainer.max_steps=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"chatmusician train: error: {tmp_path / 'data'}: no prepared corpus")
    assert "; build it with: chatmusician data " in err and f"data.out_dir={tmp_path / 'data'}" in err
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


# ---------------------------------------------------------------------------------------------------------------
# Pretraining corpus built in windows (issue 13: memory flat as the corpus grows): the same rows as one map over the
# whole corpus, and the build process never maps the tokenised corpus itself


def _varied_pile(folder, n=150, seed=3):
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    # lengths from a few tokens to several max_len chunks, so documents split into chunks and blocks span documents
    rows = [{"id": str(i), "text": " ".join(f"w{rng.randint(0, 60)}" for _ in range(rng.choice([3, 40, 150, 700]))),
             "src": "pile"} for i in range(n)]
    _parquet(folder / "p.parquet", rows)
    return folder


def _built_rows(root):
    import datasets

    out = {"jsonl": (root / "data" / "pretrain" / "train.jsonl").read_text()}
    for part in ("tokenized", "packed"):
        ds = datasets.load_from_disk(str(root / "data" / "pretrain" / part))["train"]
        out[part] = ds.to_dict()
    return out


@pytest.mark.parametrize("n_rows, num_proc", [(0, 2), (1, 1), (999, 2), (2000, 2), (2001, 3), (5000, 1), (12345, 4)])
def test_pack_windows_are_whole_batches_of_one_map(n_rows, num_proc):
    import datasets

    from chatmusician.data import MAP_BATCH, pack_windows

    # reference: where Dataset.map(batch_size=MAP_BATCH, num_proc=p) starts its batches (p contiguous shards)
    p = num_proc if num_proc > 1 and n_rows >= 2 * MAP_BATCH else 1
    ds = datasets.Dataset.from_dict({"i": list(range(n_rows))})
    want = []
    for r in range(p):
        shard = ds.shard(num_shards=p, index=r, contiguous=True)["i"] if n_rows else []
        want += [(shard[k], shard[min(len(shard), k + MAP_BATCH) - 1] + 1) for k in range(0, len(shard), MAP_BATCH)]
    for batches in (1, 2, 5):
        windows = pack_windows(n_rows, num_proc, batches)
        got = [(b, min(hi, b + MAP_BATCH)) for lo, hi in windows for b in range(lo, hi, MAP_BATCH)]
        assert got == want
        assert all(hi - lo <= batches * MAP_BATCH for lo, hi in windows)


def test_pretraining_windows_give_the_rows_of_one_map(tmp_path, tok_dir, monkeypatch):
    import pyarrow.parquet as pq

    from chatmusician import data as cm_data
    from chatmusician.tokenization import load_tokenizer, pack_pretrain_blocks, tokenize_pretrain

    pile = _varied_pile(tmp_path / "pile")
    over = ["data.tunes=none", f"data.musicpile_dir={pile}", f"model.tokenizer={tok_dir}", "data.valid_fraction=0.0"]
    monkeypatch.setattr(cm_data, "MAP_BATCH", 16)  # many pack batches (and two workers' shards) on a small corpus
    one = build(tiny_config(tmp_path / "one", *over, "data.num_proc=2"))  # one tokenising window (2000 documents)
    monkeypatch.setattr(cm_data, "PRETRAIN_WINDOW_DOCS", 7)
    monkeypatch.setattr(cm_data, "PACK_WINDOW_BATCHES", 1)
    many = build(tiny_config(tmp_path / "many", *over, "data.num_proc=2"))  # 22 tokenising, ~15 packing windows
    assert many["counts"] == one["counts"] and many["fingerprint"] == one["fingerprint"]
    a, b = _built_rows(tmp_path / "one"), _built_rows(tmp_path / "many")
    assert a == b
    # and both are what tokenising the shuffled documents and one 2-worker map of MAP_BATCH rows give
    tok = load_tokenizer(str(tok_dir))
    docs = [json.loads(x)["text"] for x in a["jsonl"].splitlines()]
    assert sorted(docs) == sorted(pq.read_table(pile / "p.parquet").column("text").to_pylist())  # every one, once
    chunks = [(c, j == 0) for d in docs for j, c in enumerate(tokenize_pretrain(tok, d, 256))]
    assert a["tokenized"]["input_ids"] == [c["input_ids"] for c, _ in chunks]
    assert a["tokenized"]["labels"] == [c["labels"] for c, _ in chunks]
    n = len(chunks)
    assert n >= 2 * 16 and one["counts"]["pretrain/chunked_docs"] > 0
    want = {"input_ids": [], "labels": [], "position_ids": []}
    for s in (0, n // 2 + n % 2):  # datasets' two contiguous shards, batches of 16 from each shard's start
        e = n // 2 + n % 2 if s == 0 else n
        for lo in range(s, e, 16):
            part = chunks[lo:min(e, lo + 16)]
            got = pack_pretrain_blocks([c["input_ids"] for c, _ in part], [c["labels"] for c, _ in part],
                                       [st for _, st in part], 256)
            for k in want:
                want[k] += got[k]
    assert a["packed"] == want and one["counts"]["pretrain/train/packed_rows"] == len(want["input_ids"])


def test_the_build_process_never_maps_the_tokenised_pretraining_corpus(tmp_path, tok_dir, monkeypatch):
    import os

    import pyarrow as pa
    import pyarrow.ipc

    from chatmusician import data as cm_data

    pile = _varied_pile(tmp_path / "pile", n=60)
    opened, me, real = [], os.getpid(), pa.memory_map

    def spy(path, *a, **k):  # the columns of what the build process itself maps (forked window workers are not us)
        if os.getpid() == me:
            with pa.OSFile(str(path)) as f:  # a datasets arrow file is an IPC stream: its schema comes first
                opened.append((str(path), pa.ipc.open_stream(f).schema.names))
        return real(path, *a, **k)

    monkeypatch.setattr(pa, "memory_map", spy)
    monkeypatch.setattr(cm_data, "PRETRAIN_WINDOW_DOCS", 9)
    rep = build(tiny_config(tmp_path, "data.tunes=none", f"data.musicpile_dir={pile}", f"model.tokenizer={tok_dir}",
                            "data.valid_fraction=0.0", "data.num_proc=2"))
    assert rep["counts"]["pretrain/train/tokens"] > 0 and opened  # it did map its documents (and indices)
    assert any("text" in names for _, names in opened)
    for path, names in opened:
        assert "input_ids" not in names, f"the build process mapped tokens: {path}"
    # the corpus it wrote is complete: load_from_disk opens every window's file
    import datasets

    tok = datasets.load_from_disk(str(tmp_path / "data" / "pretrain" / "tokenized"))["train"]
    assert sum(map(len, tok["input_ids"])) == rep["counts"]["pretrain/train/tokens"]
    assert len(list((tmp_path / "data" / "pretrain" / "tokenized" / "train").glob("*.arrow"))) == 7
