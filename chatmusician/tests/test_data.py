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
