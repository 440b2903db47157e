"""MERT data at cluster scale (issue 13): no rank of a multi-process run builds the label cache, the label store's
per-row index is numpy next to memory-mapped label arrays, and manifests are read as a stream of lines and kept as
byte ranges of the file (plus a durations column), not as a Python dict per row."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import tiny_overrides, write_clips
from mert.data import (DataError, LabelStore, ManifestRows, PretrainDataset, SecondsBatchSampler, check_manifest_row,
                       filter_rows, read_manifest, shard_bounds, write_label_shard)  # fmt: skip


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


def test_manifest_keeps_byte_ranges_not_dicts(tmp_path):
    """100k rows: what read_manifest keeps is the row index and the durations (24 bytes a row), not a dict per row
    (677 B/row measured before on such a file), and it reads back the rows the file holds."""
    n = 100_000
    m = tmp_path / "big.jsonl"
    with open(m, "w") as f:
        for i in range(n):
            f.write(json.dumps({"path": f"/data/audio/part{i // 1000:04d}/clip{i:07d}.wav",
                                "duration": 5 + i % 997 / 1000, "sample_rate": 24000,
                                "frames": 120000 + i % 997 * 24}) + "\n")  # fmt: skip
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        rows = read_manifest(m)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert isinstance(rows, ManifestRows) and len(rows) == n
    assert kept / n < 60, f"{kept / n:.0f} bytes kept per row"
    assert rows[-1] == {"path": f"/data/audio/part0099/clip{n - 1:07d}.wav", "duration": 5 + (n - 1) % 997 / 1000,
                        "sample_rate": 24000, "frames": 120000 + (n - 1) % 997 * 24}  # fmt: skip
    # what samplers need comes from the column (no row parsed): 5.0 .. 5.996 s at 24 kHz, crops of 120000 samples
    ds = PretrainDataset(rows, 24000, 120000)
    assert ds.rows is rows and ds.sizes().min() == 120000 and len(filter_rows(rows, 24000, 120001)) == n - 101


_path = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/"), min_size=1, max_size=6)
_row = st.fixed_dictionaries({
    "path": st.one_of(_path.map(lambda s: f"/abs/{s}.wav"), _path.map(lambda s: f"sub/{s}.wav"), st.just(""),
                      st.just(3)),
    "duration": st.one_of(st.floats(0, 400), st.integers(0, 10**6), st.just(-1.0), st.just("5")),
    "sample_rate": st.one_of(st.sampled_from([16000, 24000, 44100]), st.just(0)),
}, optional={"id": _path, "frames": st.integers(0, 10**8)})  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(lines=st.lists(st.one_of(_row.map(lambda r: json.dumps(r, ensure_ascii=False)),
                                st.sampled_from(["", "  ", "{bad", "[1]", "null"])), max_size=12),
       crlf=st.booleans())  # fmt: skip
def test_manifest_rows_are_the_dicts_the_file_holds(lines, crlf, tmp_path_factory):
    """Any mix of good, malformed, non-object and blank lines (paths with any Unicode, U+2028 included): the rows
    read_manifest returns are exactly the dicts a per-row parse gives (relative paths resolved), its problems
    name the other lines, and durations, sizes and batches equal those computed from the list of dicts."""
    folder = tmp_path_factory.mktemp("man")
    m = folder / "m.jsonl"
    m.write_bytes("".join(x + ("\r\n" if crlf else "\n") for x in lines).encode())
    expect, bad_lines = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = check_manifest_row(json.loads(line), "x")
        except (ValueError, DataError):
            bad_lines.append(n)
            continue
        if not row["path"].startswith("/"):
            row["path"] = str((folder / row["path"]).resolve())
        expect.append(row)
    problems: list[str] = []
    if not expect:
        with pytest.raises(DataError, match="no usable row"):
            read_manifest(m, problems)
        return
    rows = read_manifest(m, problems)
    assert list(rows) == expect and [rows[k] for k in range(-len(rows), 0)] == expect
    assert [int(p.split(": ")[0].rsplit(":", 1)[1]) for p in problems] == bad_lines
    assert rows.column("duration").tolist() == [float(r["duration"]) for r in expect]
    by_table, by_list = PretrainDataset(rows, 24000, 120000), PretrainDataset(expect, 24000, 120000)
    assert by_table.sizes().tolist() == [by_list.size(i) for i in range(len(expect))]
    assert filter_rows(rows, 24000, 72000) == filter_rows(expect, 24000, 72000)
    keep = filter_rows(rows, 16000, 1)
    if keep:
        sizes = by_table.sizes(np.asarray(keep))
        assert SecondsBatchSampler(sizes, 10**9, 3).batches == SecondsBatchSampler(
            [by_list.size(i) for i in keep], 10**9, 3).batches  # fmt: skip


def test_samples_from_a_manifest_table_equal_those_from_dicts(tmp_path):
    """Crops (audio and position) drawn through the table equal the ones drawn from the list of dicts."""
    clips = write_clips(tmp_path / "audio", 3, 2.0, seed=4)
    for r in clips:
        r["path"] = "audio/" + r["path"].rsplit("/", 1)[1]  # relative: resolved against the manifest's folder
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in clips) + "{broken\n")
    rows = read_manifest(m)
    dicts = [r | {"path": str(tmp_path / r["path"])} for r in clips]
    assert list(rows) == dicts
    a, b = PretrainDataset(rows, 24000, 24000), PretrainDataset(dicts, 24000, 24000)
    for key in ((0, 1), (1, 7), (2, 7), (2, 123)):
        x, y = a[key], b[key]
        assert np.array_equal(x["wav"], y["wav"]) and x["row"] == y["row"] and len(x["wav"]) == 24000
