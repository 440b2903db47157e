"""LM data at cluster scale (issue 13): a prepared folder opens without loading codes or holding per-song records,
codes are memory-mapped, documents are the ones `yue prepare` wrote, an unfinished or missing folder is refused with
the `yue prepare` command, the pre-training token report and the n-gram baselines stay bounded."""

from __future__ import annotations

import json
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yue.lm.data import (DataError, DocumentBuilder, PreparedData, PreparedFolderError, SongTable, open_codes,
                         token_report)  # fmt: skip


def _row(sid, split="train", frames=200):
    return {"id": sid, "split": split, "tags": "pop", "frames": frames,
            "segments": [{"label": "verse", "text": "la la " * 20, "frame_start": 0, "frame_end": frames // 2},
                         {"label": "chorus", "text": "sing " * 20, "frame_start": frames // 2, "frame_end": frames}]}  # fmt: skip


def _manifest(folder, lines, tok, report_rows=None):
    import shutil
    from pathlib import Path

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(Path(tok.path).parent, folder / "tokenizer", dirs_exist_ok=True)
    (folder / "manifest.jsonl").write_text("".join(x + "\n" for x in lines))
    if report_rows is not None:
        (folder / "report.json").write_text(json.dumps({"counts": {"in_manifest": report_rows}}))
    return folder


def test_codes_are_memory_mapped(prepared_dir, tmp_path):
    data = PreparedData(prepared_dir)
    rec = data.songs[0]
    codes = data.codes(rec)
    with np.load(rec.codes_path) as z:  # what the file holds
        for k in ("vocal", "accompaniment", "mix"):
            assert isinstance(codes[k], np.memmap) and codes[k].dtype == np.int16  # mapped in place, no copy
            assert np.array_equal(codes[k], z[k])
    # a compressed .npz cannot be mapped: read into memory, same values
    p = tmp_path / "c.npz"
    stems = ("vocal", "accompaniment", "mix")
    arrs = {k: np.arange(24, dtype=np.int16).reshape(2, 12) + i for i, k in enumerate(stems)}
    np.savez_compressed(p, **arrs)
    got = open_codes(p)
    assert all(not isinstance(got[k], np.memmap) and np.array_equal(got[k], arrs[k]) for k in arrs)
    # a member whose .npy header claims more data than it stores is a typed error naming the file
    bad = tmp_path / "bad.npz"
    np.savez(bad, mix=np.zeros((2, 10), np.int16))
    raw = bytearray(bad.read_bytes())
    raw[raw.find(b"(2, 10)") : raw.find(b"(2, 10)") + 7] = b"(9, 99)"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="does not fit"):
        open_codes(bad)
    (tmp_path / "garbage.npz").write_bytes(b"not a zip at all" * 10)
    with pytest.raises(zipfile.BadZipFile):
        open_codes(tmp_path / "garbage.npz")


def test_open_keeps_no_per_song_records(tmp_path, tiny_tokenizer):
    """2000 songs with lyrics: what PreparedData keeps is the row index (18 bytes a song), not ~4 KB records."""
    n = 2000
    folder = _manifest(tmp_path / "p", [json.dumps(_row(f"s{i}", "valid" if i % 10 == 0 else "train"))
                                        for i in range(n)], tiny_tokenizer, report_rows=n)  # fmt: skip
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        data = PreparedData(folder)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert isinstance(data.songs, SongTable) and len(data.songs) == n
    assert kept / n < 200, f"{kept / n:.0f} bytes kept per song"  # a parsed record with its lyrics is ~4 KB
    # the table behaves like the list it replaces: indexing, negative index, slices, splits, iteration
    assert data.songs[-1].id == f"s{n - 1}" and data.songs[5].segments[1].label == "chorus"
    valid = data.split("valid")
    assert isinstance(valid, SongTable) and [r.id for r in valid][:3] == ["s0", "s10", "s20"] and len(valid) == 200
    assert [r.id for r in data.split("train", 3)] == ["s1", "s2", "s3"] and len(data.split("nope")) == 0
    assert [r.id for r in data.songs[10:13]] == ["s10", "s11", "s12"]
    with pytest.raises(IndexError):
        data.songs[n]


def test_unfinished_or_missing_folder_is_refused(tmp_path, tiny_tokenizer, lm_cfg):
    rows = [json.dumps(_row(f"s{i}")) for i in range(3)]
    ok = _manifest(tmp_path / "ok", rows, tiny_tokenizer, report_rows=3)
    assert len(PreparedData(ok).songs) == 3
    # prepare still appending (or killed): more rows than its report counted
    stale = _manifest(tmp_path / "stale", rows + [json.dumps(_row("s3"))], tiny_tokenizer, report_rows=3)
    with pytest.raises(PreparedFolderError) as e:
        PreparedData(stale)
    msg = str(e.value)
    assert "\n" not in msg and "manifest.jsonl has 4 rows but report.json counts 3" in msg
    assert f"yue prepare -o {stale}" in msg
    bad_rep = _manifest(tmp_path / "badrep", rows, tiny_tokenizer)
    (bad_rep / "report.json").write_text("{not json")
    with pytest.raises(PreparedFolderError, match=r"report\.json: unreadable .*yue prepare -o"):
        PreparedData(bad_rep)
    with pytest.raises(PreparedFolderError, match=r"manifest\.jsonl: not found \(run `yue prepare -o "):
        PreparedData(tmp_path / "nothing")
    # training refuses it before building anything (no model, no data)
    from yue.lm.train import train

    with pytest.raises(PreparedFolderError, match="stale prepared folder"):
        train(lm_cfg("stage1", f"data.prepared={stale}"))
    assert isinstance(PreparedFolderError("x"), DataError)


def test_documents_are_the_tokens_prepare_wrote(tiny_codec, tiny_tokenizer, tmp_path, lm_cfg):
    """Documents built from the memory-mapped codes equal prepare's own stage-1 / stage-2 token files."""
    from yue.prepare import prepare_songs
    from yue.songs import synth_song

    out = tmp_path / "prep"
    rep = prepare_songs([synth_song(seed=i, seconds=7.0) for i in range(2)], tiny_codec, tiny_tokenizer, out)
    assert rep["counts"]["prepared"] == 2
    data = PreparedData(out, tokenizer=str(tiny_tokenizer.path))  # report.json matches: accepted
    b1 = DocumentBuilder(data, lm_cfg("stage1"))
    b2 = DocumentBuilder(data, lm_cfg("stage2", "data.stage2_chunk_frames=300"))
    n2 = 0
    for rec in data.songs:
        assert np.array_equal(b1.document(rec, "dual"), np.load(out / "stage1" / f"{rec.id}.npy"))
        for mode in ("vocal", "inst"):
            f = out / "stage2" / f"{rec.id}_{mode}.npy"
            if f.is_file():
                assert np.array_equal(b2.document(rec, mode), np.load(f))
                n2 += 1
    assert n2 == 4  # both stems of both songs (7 s: one 6 s chunk each) were compared


def test_token_report_sample_scales_counted_songs(prepared_dir, lm_cfg):
    cfg = lm_cfg("stage2")
    data = PreparedData(prepared_dir)
    b = DocumentBuilder(data, cfg)
    exact = token_report(b, data, ["train", "valid"], ["vocal"])
    assert exact["sampled"] == {}
    est = token_report(b, data, ["train", "valid"], ["vocal"], sample=2)
    train = data.split("train")  # 3 songs: the first and the last are counted
    counted = sum(int(b.document(train[k], "vocal").size) for k in (0, 2))
    assert est["sampled"] == {"train": {"counted": 2, "songs": 3}}
    assert est["train"]["vocal"] == {"songs": 3, "tokens": round(counted * 3 / 2)}
    assert est["valid"] == exact["valid"]  # a split no larger than the sample is exact


def test_ngram_counts_in_chunks_equal_one_pass():
    from yue.lm.train import _ngram_counts

    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 30, int(n)) for n in rng.integers(2, 60, 40)]
    uni, k, c = _ngram_counts(docs, 30, chunk_tokens=7)  # many merges
    keys = np.concatenate([d[:-1] * 30 + d[1:] for d in docs])
    k_ref, c_ref = np.unique(keys, return_counts=True)
    assert np.array_equal(k, k_ref) and np.array_equal(c, c_ref)
    assert np.array_equal(uni, np.bincount(np.concatenate([d[1:] for d in docs]), minlength=30))


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 6), st.sampled_from(["train", "valid"]),
                               st.sampled_from(["ok", "bad_frames", "not_json", "blank"])), max_size=25))  # fmt: skip
def test_table_keeps_first_valid_row_per_id(rows, tmp_path_factory, tiny_tokenizer):
    """Any mix of valid, invalid, blank and duplicate rows: the table holds the first valid row of each id, in
    order, and every other non-blank line is in ``skipped`` with its line number."""
    lines, expect, seen, bad_lines = [], [], set(), []
    for n, (i, split, kind) in enumerate(rows, 1):
        r = _row(f"id{i}", split)
        if kind == "blank":
            lines.append("")
            continue
        if kind == "not_json":
            lines.append("{oops")
        elif kind == "bad_frames":
            lines.append(json.dumps(r | {"frames": -1}))
        else:
            lines.append(json.dumps(r))
            if r["id"] not in seen:
                seen.add(r["id"])
                expect.append((r["id"], split))
                continue
        bad_lines.append(n)
    n_json = sum(1 for x in lines if x.startswith("{\""))
    folder = _manifest(tmp_path_factory.mktemp("prop"), lines, tiny_tokenizer, report_rows=n_json)
    data = PreparedData(folder)
    assert [(r.id, r.split) for r in data.songs] == expect
    assert [int(w.rsplit(":", 1)[1]) for w, _ in data.skipped] == bad_lines
    assert all("duplicate id" in why for w, why in data.skipped if int(w.rsplit(":", 1)[1]) in
               [n for n, (i, s, k) in enumerate(rows, 1) if k == "ok"])  # fmt: skip
    for name in ("train", "valid"):
        assert [r.id for r in data.split(name)] == [i for i, s in expect if s == name]
