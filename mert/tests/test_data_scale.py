"""MERT data at cluster scale (issue 13): no rank of a multi-process run builds the label cache, the label store's
per-row index is numpy next to memory-mapped label arrays, and manifests are read as a stream of lines."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from conftest import tiny_overrides
from mert.data import DataError, LabelStore, read_manifest, shard_bounds, write_label_shard


def test_auto_prepare_is_refused_in_a_multi_process_run(synth_data, tmp_path, monkeypatch):
    from mert.train import CONFIG_DIR, build_data, load_train_config

    labels = tmp_path / "nolabels"
    cfg = load_train_config(CONFIG_DIR / "tiny.yaml", tiny_overrides(synth_data, tmp_path / "run", labels))
    assert cfg.data.auto_prepare  # the tiny config builds a missing cache in a single process
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")  # even rank 0 (formerly the one that built it while the others polled)
    with pytest.raises(DataError) as e:
        build_data(cfg)
    msg = str(e.value)
    assert "2-process run" in msg and "mert prepare labels --config" in msg and "\n" not in msg
    assert not list(labels.rglob("*.npy")) and not list(labels.rglob("teacher.json"))  # nothing was built


def _cache(folder, rows, labels, shards):
    for s in range(shards):
        a, b = shard_bounds(len(rows), s, shards)
        write_label_shard(folder, s, shards, rows[a:b], labels[a:b], [None if lab is not None else "unreadable"
                                                                      for lab in labels[a:b]])  # fmt: skip
    (folder / "teacher.json").write_text(json.dumps({"num_shards": shards, "codebook_sizes": [50, 7]}))


def test_label_store_index_is_compact_and_labels_are_mapped(tmp_path):
    n, shards = 5000, 3
    rng = np.random.default_rng(0)
    rows = [{"path": f"/data/clip{i:06d}.wav", "duration": 5.0, "sample_rate": 24000} for i in range(n)]
    labels = [None if i % 97 == 5 else np.stack([rng.integers(0, 50, 4 + i % 5), rng.integers(0, 7, 4 + i % 5)])
              for i in range(n)]  # fmt: skip
    _cache(tmp_path / "lab", rows, labels, shards)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = LabelStore(tmp_path / "lab", rows)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept / n < 40, f"{kept / n:.0f} bytes kept per row"  # a tuple per row was ~100
    assert all(isinstance(a, np.memmap) for a in store._arrays) and len(store._arrays) == shards
    for i in (0, 1, 5, 102, 1666, 1667, n - 1):  # across shard boundaries, rows without labels
        if labels[i] is None:
            assert not store.has(i) and store.length(i) == 0
            with pytest.raises(DataError, match=f"row {i}: no labels"):
                store.get(i)
        else:
            assert store.has(i) and store.length(i) == labels[i].shape[1]
            assert np.array_equal(store.get(i), labels[i]) and store.get(i).dtype == np.int64
            assert np.array_equal(store.get(i, 1, 2), labels[i][:, 1:3])
    counts = store.class_counts()
    assert counts[1].sum() == sum(lab.shape[1] for lab in labels if lab is not None)
    # an index whose offset is not a number is a typed error naming the shard and the row
    idx_path = tmp_path / "lab" / "shard-00001-of-00003.json"
    idx = json.loads(idx_path.read_text())
    idx["rows"][3]["offset"] = "x"
    idx_path.write_text(json.dumps(idx))
    with pytest.raises(DataError, match=r"shard-00001-of-00003: row 1669: bad offset/length"):
        LabelStore(tmp_path / "lab", rows)


def test_manifest_is_read_as_lines_of_json(tmp_path):
    """A manifest is read line by line ('\\n'), so a path holding a Unicode line separator (U+2028, valid inside a
    JSON string, a line break to ``str.splitlines``) stays one row with the right line numbers after it."""
    rows = [{"path": "/a/odd\u2028name.wav", "duration": 3.0, "sample_rate": 24000},
            {"path": "/a/b.wav", "duration": 3.0, "sample_rate": 24000}]  # fmt: skip
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps(rows[0], ensure_ascii=False) + "\n" + json.dumps(rows[1]) + "\n{bad\n", encoding="utf-8")
    problems: list[str] = []
    got = read_manifest(m, problems)
    assert [r["path"] for r in got] == ["/a/odd\u2028name.wav", "/a/b.wav"]
    assert len(problems) == 1 and problems[0].startswith(f"{m}:3: not valid JSON")
    m.write_bytes(b'{"path": "/a/\xff.wav", "duration": 1, "sample_rate": 1}\n')
    with pytest.raises(DataError, match="cannot read manifest"):
        read_manifest(m)
