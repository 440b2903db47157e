"""Manifests, the sharded label cache, frame-aligned crops and seconds-based batching (spec §2.4, §4)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from mert.data import (Collater, DataError, LabelStore, PretrainDataset, SecondsBatchSampler, filter_rows,
                       read_manifest, write_label_shard, write_manifest)
from mert.prepare import scan_audio, write_teacher_meta

SR = 24000


def ramp_file(path, n):
    """Float WAV whose sample i holds i * 1e-6, so a crop reveals its offset."""
    sf.write(path, (np.arange(n) * 1e-6).astype(np.float32), SR, subtype="FLOAT")
    return {"path": str(path), "duration": n / SR, "sample_rate": SR, "frames": n}


META_CFG = SimpleNamespace(teacher=SimpleNamespace(kind="kmeans", sample_rate=SR))  # what write_teacher_meta reads


def make_cache(tmp_path, rows, num_shards=2, k=2):
    """Labels whose value at frame f is f (codebook 0) and f + 1000 (codebook 1)."""
    out = tmp_path / "labels"
    for s in range(num_shards):
        lo, hi = len(rows) * s // num_shards, len(rows) * (s + 1) // num_shards
        labs = [np.stack([np.arange(int(r["frames"]) // 320 + 1) + 1000 * j for j in range(k)]) for r in rows[lo:hi]]
        write_label_shard(out, s, num_shards, rows[lo:hi], labs, [None] * len(labs))
    write_teacher_meta(META_CFG, rows, num_shards, [2000] * k, out)
    return out


def test_manifest_roundtrip_and_errors(tmp_path):
    rows = [ramp_file(tmp_path / "a.wav", 48000)]
    write_manifest(rows, tmp_path / "m.jsonl")
    assert read_manifest(tmp_path / "m.jsonl")[0]["path"] == rows[0]["path"]
    with pytest.raises(DataError, match="not found"):
        read_manifest(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"path": "x"\n')
    with pytest.raises(DataError, match="bad.jsonl:1"):
        read_manifest(tmp_path / "bad.jsonl")
    (tmp_path / "nokey.jsonl").write_text('{"path": "x", "duration": 1}\n')
    with pytest.raises(DataError, match="sample_rate"):
        read_manifest(tmp_path / "nokey.jsonl")


def test_scan_audio_skips_and_reports_bad_files(tmp_path):
    ramp_file(tmp_path / "good.wav", 24000)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00junk")
    (tmp_path / "empty.flac").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not audio")
    rows, bad = scan_audio([tmp_path])
    assert [r["path"].split("/")[-1] for r in rows] == ["good.wav"]
    assert rows[0]["duration"] == 1.0 and rows[0]["sample_rate"] == SR
    assert sorted(b["path"].split("/")[-1] for b in bad) == ["corrupt.wav", "empty.flac"]
    assert all(b["reason"] for b in bad)


def test_label_store_shards_and_checks(tmp_path):
    rows = [ramp_file(tmp_path / f"{i}.wav", 24000 + 3200 * i) for i in range(5)]
    out = make_cache(tmp_path, rows, num_shards=2)
    store = LabelStore(out, rows)
    assert store.num_codebooks == 2
    for i, r in enumerate(rows):
        lab = store.get(i)
        assert lab.shape == (2, r["frames"] // 320 + 1)
        assert (lab[0] == np.arange(lab.shape[1])).all() and (lab[1] == lab[0] + 1000).all()
    assert (store.get(3, 10, 5)[0] == np.arange(10, 15)).all()
    other = rows[::-1]
    with pytest.raises(DataError, match="manifest"):
        LabelStore(out, other)
    (out / "shard-00001-of-00002.json").unlink()
    with pytest.raises(DataError, match="missing"):
        LabelStore(out, rows)


def test_bad_rows_recorded_and_filtered(tmp_path):
    rows = [ramp_file(tmp_path / f"{i}.wav", 80000) for i in range(3)]
    out = tmp_path / "labels"
    labs = [np.zeros((1, 251), np.int64), None, np.zeros((1, 251), np.int64)]
    write_label_shard(out, 0, 1, rows, labs, [None, "AudioError: corrupt", None])
    idx = json.loads((out / "shard-00000-of-00001.json").read_text())
    assert idx["rows"][1]["error"].startswith("AudioError")
    write_teacher_meta(META_CFG, rows, 1, [4], out)
    store = LabelStore(out, rows)
    assert filter_rows(rows, SR, 72000, store) == [0, 2]
    assert filter_rows(rows, SR, 96000, store) == []


def test_crops_are_frame_aligned_with_labels(tmp_path):
    rows = [ramp_file(tmp_path / f"{i}.wav", n) for i, n in enumerate([96000, 72000, 64000, 120000])]
    store = LabelStore(make_cache(tmp_path, rows), rows)
    ds = PretrainDataset(rows, SR, 48000, store)
    items = [ds[(i, 11)] for i in range(4)]
    for it in items:
        start = int(round(it["wav"][0] * 1e6))
        assert start % 320 == 0 and len(it["wav"]) == 48000
        assert it["labels"][0, 0] * 320 == start  # label t belongs to the frame starting at sample t * 320
    assert (ds[(0, 11)]["wav"] == items[0]["wav"]).all()  # crops are a function of (row, seed)
    starts = {int(round(ds[(3, s)]["wav"][0] * 1e6)) for s in range(8)}
    assert len(starts) > 1  # and random across seeds
    # shorter items force the batch crop: everything cut to the shortest, still aligned
    ds2 = PretrainDataset(rows, SR, 120000, store)
    batch = Collater()([ds2[(i, 5)] for i in range(4)])
    assert batch["input_values"].shape == (4, 64000) and batch["labels"].shape == (4, 2, 200)
    for b in range(4):
        start = int(round(float(batch["input_values"][b, 0]) * 1e6))
        assert int(batch["labels"][b, 0, 0]) * 320 == start
        assert int(batch["labels"][b, 1, 0]) == 1000 + start // 320
    assert batch["seed"].tolist() == [5]


def test_seconds_batch_sampler():
    rng = np.random.default_rng(0)
    sizes = rng.integers(72000, 120001, size=50).tolist()
    s = SecondsBatchSampler(sizes, max_tokens=400000, seed=3)
    first = list(s)
    seen = sorted(i for b in first for i, _ in b)
    assert seen == list(range(50))  # every clip once per epoch
    for b in first:
        assert len(b) * max(sizes[i] for i, _ in b) <= 400000
        assert len({seed for _, seed in b}) == 1  # one seed per batch
    assert len({b[0][1] for b in first}) == len(first)  # different seeds per batch
    assert [b for b in s] == first  # same epoch -> same order (resume)
    s.set_epoch(1)
    second = list(s)
    assert sorted(map(lambda b: sorted(i for i, _ in b), second)) == sorted(map(lambda b: sorted(i for i, _ in b), first))
    assert second != first  # new order and seeds each epoch
    with pytest.raises(DataError):
        SecondsBatchSampler([200000], max_tokens=100000)
    capped = SecondsBatchSampler(sizes, max_tokens=10**9, max_batch_size=4)
    assert max(len(b) for b in capped.batches) == 4
