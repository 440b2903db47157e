"""LM data: manifest contract, documents per track mode (and ICL), packing rules, schedule, token report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yue.lm.data import (IGNORE_INDEX, BlockStream, Collator, DataError, DocumentBuilder, PreparedData,
                         icl_span, pack_documents, parse_row, schedule_at, token_report)  # fmt: skip

EOD, PAD = 7, 0


def _docs(lengths, start=100):
    """Documents of the given lengths, ids distinct per document, each ending with EOD."""
    return [np.concatenate([np.arange(n - 1) + start + 1000 * k, [EOD]]) for k, n in enumerate(lengths)]


def test_packer_concrete_block():
    docs = _docs([3, 4])  # a b EOD | c d e EOD
    (blk,) = pack_documents(docs, 10, doc_masking=True, pad_id=PAD)
    ids = blk["input_ids"].tolist()
    assert ids == [100, 101, EOD, 1100, 1101, 1102, EOD, PAD, PAD, PAD]
    # labels: the ids, except the first token of doc 2 (would be predicted from doc 1's EOD) and the padding
    assert blk["labels"].tolist() == [100, 101, EOD, -100, 1101, 1102, EOD, -100, -100, -100]
    assert blk["position_ids"].tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 1, 2]
    (plain,) = pack_documents(docs, 10, doc_masking=False, pad_id=PAD)
    assert plain["position_ids"].tolist() == list(range(10)) and plain["labels"].tolist() == blk["labels"].tolist()


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=8), L=st.integers(16, 64), masking=st.booleans())
def test_packer_invariants(lengths, L, masking):
    docs = _docs(lengths)
    blocks = pack_documents(docs, L, doc_masking=masking, pad_id=PAD)
    stream = np.concatenate(docs)
    # every token exactly once, in order; only the last block is padded
    real = np.concatenate([b["input_ids"][b["doc_ids"] >= 0] for b in blocks])
    assert np.array_equal(real, stream)
    assert all((b["doc_ids"] >= 0).all() for b in blocks[:-1])
    for b in blocks:
        ids, lab, pos, doc = b["input_ids"], b["labels"], b["position_ids"], b["doc_ids"]
        assert ids.shape == lab.shape == pos.shape == (L,)
        assert ((lab == ids) | (lab == IGNORE_INDEX)).all()  # input_ids == labels: the shift happens in the model
        assert (lab[doc < 0] == IGNORE_INDEX).all()  # padding is never a target
        # the label after an <EOD> (the next document's first token, or padding) is never a target
        after_eod = np.nonzero(ids[:-1] == EOD)[0] + 1
        assert (lab[after_eod] == IGNORE_INDEX).all()
        # nothing else is masked: every other real position keeps its id
        starts = np.zeros(L, bool)
        starts[1:] = doc[1:] != doc[:-1]
        assert (lab[(doc >= 0) & ~starts] == ids[(doc >= 0) & ~starts]).all()
        if masking:  # positions restart at each document (and padding) start, count up inside it
            for i in range(1, L):
                assert pos[i] == (0 if starts[i] else pos[i - 1] + 1)
        else:
            assert np.array_equal(pos, np.arange(L))


def test_collator_pads_rows():
    rows = pack_documents(_docs([5]), 8, True, PAD) + [{"input_ids": np.arange(3) + 50, "labels": np.arange(3) + 50,
                                                         "position_ids": np.arange(3)}]  # fmt: skip
    b = Collator(PAD, doc_masking=True)(rows)
    assert b["input_ids"].shape == (2, 8) and b["labels"][1, 3:].eq(-100).all()
    assert b["position_ids"][1].tolist() == [0, 1, 2, 0, 1, 2, 3, 4]  # padding: its own run from 0
    b = Collator(PAD, doc_masking=False)(rows)
    assert b["position_ids"][1].tolist() == list(range(8))


def test_documents_per_mode(prepared_dir, lm_cfg):
    from yue.lyrics import Section
    from yue.sequences import Stage1Song, build_stage1, build_stage2_document, parse_stage1

    data = PreparedData(prepared_dir)
    assert not data.skipped and [s.split for s in data.songs] == ["train", "train", "train", "valid", "test"]
    b1 = DocumentBuilder(data, lm_cfg("stage1"))
    rec = data.songs[0]
    codes = data.codes(rec)
    secs = [Section(s.label, s.text) for s in rec.segments]
    v = [codes["vocal"][0, s.frame_start : s.frame_end] for s in rec.segments]
    i = [codes["accompaniment"][0, s.frame_start : s.frame_end] for s in rec.segments]
    dual = b1.document(rec, "dual")
    assert dual.tolist() == build_stage1(data.tok, Stage1Song(rec.tags, secs, v, i), eod=True)
    p = parse_stage1(data.tok, dual.tolist())
    assert p.ok and p.eod and np.array_equal(p.tracks()[0][0], np.concatenate(v))
    xc = data.tok.layout.xcodec
    for mode, key in (("mix", "mix"), ("vocal", "vocal"), ("inst", "accompaniment")):
        d = b1.document(rec, mode)
        audio = d[(d >= xc.offset(0)) & (d < xc.offset(1))]  # one codebook-0 id per frame, the mode's track
        assert np.array_equal(audio - xc.offset(0), codes[key][0, : rec.frames]) and d[-1] == data.tok.id("<EOD>")
    # ICL: a reference block from the same song, within the drawn length bounds
    ref_marker = data.tok.tokenize("[start_of_reference]")
    icl = b1.document(rec, "dual", np.random.default_rng(0))
    assert icl.size > dual.size and any(icl[k : k + len(ref_marker)].tolist() == ref_marker for k in range(60))
    pi = parse_stage1(data.tok, icl.tolist())
    assert pi.ok and pi.reference is not None and pi.reference.mode == "dual"
    # stage 2: the released teacher-forced document of the stem
    b2 = DocumentBuilder(data, lm_cfg("stage2"))
    d2 = b2.document(rec, "inst")
    ref_ids, _ = build_stage2_document(data.tok.layout, codes["accompaniment"][:8], chunk_frames=100)
    assert d2.tolist() == ref_ids and d2.size == (rec.frames // 100) * (3 + 100 + 800 + 1) + 1


def test_icl_span_rules(prepared_dir):
    data = PreparedData(prepared_dir)
    rec = data.songs[0]
    cb0 = data.codes(rec)["mix"][0]
    chorus = rec.segments[1]
    for seed in range(20):
        a, b = icl_span(rec, cb0, np.random.default_rng(seed), mean_s=2.0, std_s=0.5, min_s=1.0, max_s=3.0)
        assert 50 <= b - a <= 150 and 0 <= a and b <= rec.frames
        assert a >= min(chorus.frame_start, rec.frames - (b - a))  # starts in the chorus unless it must shift back
    # longer than the lyric span: halved until it fits
    a, b = icl_span(rec, cb0, np.random.default_rng(0), mean_s=30.0, std_s=1.0, min_s=20.0, max_s=40.0)
    assert b - a <= rec.frames and b - a >= rec.frames // 2 - 1


def test_bad_rows_are_skipped_with_reasons(tmp_path, tiny_tokenizer):
    from conftest import write_prepared

    folder = write_prepared(tmp_path / "p", tiny_tokenizer, frames=(200, 200), splits=("train", "test"))
    rows = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
    bad_seg = dict(rows[0], id="bad_seg", segments=[{"label": "verse", "text": "x", "frame_start": 150, "frame_end": 260}])
    no_seg = dict(rows[0], id="no_seg", segments=[])
    no_frames = {k: v for k, v in rows[0].items() if k != "frames"} | {"id": "no_frames"}
    text = [json.dumps(r) for r in (rows[0], bad_seg, no_seg, no_frames)] + ["{not json", json.dumps(rows[1])]
    (folder / "manifest.jsonl").write_text("\n".join(text) + "\n")
    data = PreparedData(folder)
    assert [s.id for s in data.songs] == ["s0", "s1"]
    reasons = " | ".join(r for _, r in data.skipped)
    assert len(data.skipped) == 4
    assert "segments[0]: frame range [150, 260) is not inside the song's 200 frames" in reasons
    assert "no segments" in reasons and "missing field 'frames'" in reasons and "not JSON" in reasons
    assert "manifest.jsonl:2" in reasons  # names the line
    # codes: a missing stem and unequal lengths are typed errors naming the file
    np.savez(folder / "codes" / "s1.npz", vocal=np.zeros((12, 200), np.int16), mix=np.zeros((12, 200), np.int16))
    with pytest.raises(DataError, match=r"s1\.npz: missing stem\(s\) \['accompaniment'\]"):
        data.codes(data.songs[1])
    np.savez(folder / "codes" / "s1.npz", vocal=np.zeros((12, 200), np.int16), mix=np.zeros((12, 190), np.int16),
             accompaniment=np.zeros((12, 200), np.int16))  # fmt: skip
    with pytest.raises(DataError, match="equal T"):
        data.codes(data.songs[1])
    (folder / "codes" / "s1.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="unreadable codes file"):
        data.codes(data.songs[1])


_field = st.one_of(st.none(), st.integers(-5, 400), st.text(max_size=5), st.lists(st.integers(0, 3), max_size=2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=st.fixed_dictionaries({}, optional={"id": st.one_of(st.text(max_size=4), _field), "split": _field,
       "frames": _field, "tags": _field, "segments": st.one_of(_field, st.lists(st.fixed_dictionaries({}, optional={
           "label": st.sampled_from(["verse", "chorus", "", "a b"]), "text": st.text(max_size=3),
           "frame_start": _field, "frame_end": _field}), max_size=3))}))  # fmt: skip
def test_parse_row_property(row, tmp_path):
    try:
        rec = parse_row(row, tmp_path, "manifest.jsonl:1")
    except DataError as e:
        assert str(e).startswith("manifest.jsonl:1")
        return
    assert rec.segments and all(0 <= s.frame_start < s.frame_end <= rec.frames for s in rec.segments)


def test_schedule_and_stream(prepared_dir, lm_cfg):
    from yue.lm.config import Phase

    cfg = lm_cfg("stage1", "modes.icl_share=0.0")
    cfg.modes.weights = {"dual": 1.0}  # (an override merges into the YAML's mapping: weight 0 drops a mode)
    cfg.modes.schedule = [Phase(start_step=3, weights={"vocal": 1.0}, icl_share=1.0)]
    assert schedule_at(cfg, 0) == ({"dual": 1.0}, 0.0) and schedule_at(cfg, 3) == ({"vocal": 1.0}, 1.0)
    data = PreparedData(prepared_dir)
    train = data.split("train")
    s = BlockStream(DocumentBuilder(data, cfg), train, blocks_per_step=2, seed=0)
    s.history = []
    it = iter(s)
    blocks = [next(it) for _ in range(14)]
    assert all(m == "dual" for step, _, m in s.history if step < 3)  # no ICL before its phase
    assert any(step >= 3 for step, _, _ in s.history)
    assert all(m == "vocal+icl" for step, _, m in s.history if step >= 3)
    assert {sid for _, sid, _ in s.history} == {r.id for r in train}  # held-out songs never appear
    # deterministic: a second pass gives the same blocks (what makes the resume skip land on the same data)
    it2 = iter(BlockStream(DocumentBuilder(data, cfg), train, blocks_per_step=2, seed=0))
    assert all(np.array_equal(b["input_ids"], next(it2)["input_ids"]) for b in blocks)


def test_token_report(prepared_dir, lm_cfg):
    cfg = lm_cfg("stage2")
    data = PreparedData(prepared_dir)
    rep = token_report(DocumentBuilder(data, cfg), data, ["train", "valid", "test"], ["vocal", "mix"])
    per_chunk = 3 + 100 + 800 + 1
    assert rep["train"]["vocal"] == {"songs": 3, "tokens": (2 + 2 + 3) * per_chunk + 3}
    assert rep["valid"]["mix"] == {"songs": 1, "tokens": 2 * per_chunk + 1} and rep["skipped"] == []


@pytest.mark.parametrize("name", ["tiny_stage1", "tiny_stage2", "stage1_7b", "stage1_7b_lora", "stage2_1b"])
def test_configs_load_with_headers(name):
    from pathlib import Path

    from musiccore.config import load_config, launch_section
    from yue.lm.config import LMTrainConfig

    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    head = path.read_text().split("\ntask:")[0]
    assert "Launch:" in head and "Hardware" in head
    cfg = load_config(LMTrainConfig, path)
    assert cfg.task == ("stage1" if "stage1" in name else "stage2")
    if name.startswith("tiny"):
        assert "20 songs" in head or "16 train" in head  # how many songs the tiny configs expect
    else:
        assert cfg.deepspeed.enabled and launch_section(path)["gpus_per_node"] == 8
    if name == "stage1_7b_lora":  # the released finetune recipe (spec 5.3)
        assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.optim.lr, cfg.optim.warmup_ratio) == (64, 32, 0.1, 5e-4, 0.03)
        assert (cfg.optim.weight_decay, cfg.optim.beta2, cfg.deepspeed.stage, cfg.data.block_size) == (0.01, 0.95, 2, 8192)


def test_config_errors_are_typed():
    from musiccore.config import ConfigError, load_config
    from yue.lm.config import LMTrainConfig

    with pytest.raises(ConfigError, match=r"unknown mode\(s\) \['dual'\] for stage2"):
        load_config(LMTrainConfig, None, ["task=stage2", "modes.weights={dual: 1.0}"])
    with pytest.raises(ConfigError, match="lora.enabled with deepspeed.stage 3"):
        load_config(LMTrainConfig, None, ["lora.enabled=true", "deepspeed.enabled=true", "deepspeed.stage=3"])
    with pytest.raises(ConfigError, match="ICL exists in stage 1 only"):
        load_config(LMTrainConfig, None, ["task=stage2", "modes.icl_share=0.5"])
