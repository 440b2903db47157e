"""Data-kit plumbing without rendering: jsonl manifests, first-n-good selection, progress lines, file lock."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
from dataclasses import dataclass

import pytest

from musiccore.data import builder as build_mod
from musiccore.data.manifest import (
    DataKitError,
    FileLock,
    PartialLog,
    Progress,
    read_jsonl,
    sha1_text,
    stable_hash,
    verify_rows,
    write_jsonl,
)


@dataclass(frozen=True)
class Item:
    id: str
    value: int


def square_unless_multiple_of_3(item: Item, offset: int):
    """Toy worker: items whose value is a multiple of 3 are bad."""
    if item.value % 3 == 0:
        return "bad", f"{item.value} is a multiple of 3"
    if item.value == 7:
        raise RuntimeError("boom")  # a crash inside a worker makes the item bad, it does not stop the build
    return "ok", {"id": item.id, "sq": item.value * item.value + offset}


safe_worker = square_unless_multiple_of_3


def _select(workers: int, tmp_path, cached=None, known_bad=None):
    cands = [Item(f"i{v:02d}", v) for v in range(1, 30)]
    with build_mod._Pool(workers) as pool:
        return build_mod.first_n_good("toy", cands, 10, safe_worker, (100,), cached or {}, known_bad or {}, pool,
                                      PartialLog(tmp_path / f"m{workers}.jsonl"))


def test_first_n_good_keeps_the_first_good_candidates_whatever_the_workers(tmp_path):
    rows1, bad1, c1 = _select(1, tmp_path)
    rows2, bad2, c2 = _select(2, tmp_path)
    expected = [v for v in range(1, 30) if v % 3 and v != 7][:10]
    assert [r["sq"] - 100 for r in rows1] == [v * v for v in expected]
    assert rows1 == rows2 and [b["id"] for b in bad1] == [b["id"] for b in bad2]
    assert {b["id"] for b in bad1} == {"i03", "i06", "i07", "i09", "i12", "i15"}
    assert [b["reason"] for b in bad1 if b["id"] == "i07"] == ["worker failed: RuntimeError: boom"]
    assert c1 == {"requested": 10, "built": 10, "reused": 0, "bad": 6}
    # every built row was appended to the partial log as it finished
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "m2.jsonl.partial")) == sorted(r["id"] for r in rows2)


def test_first_n_good_reuses_cached_and_skips_known_bad(tmp_path):
    rows, _, _ = _select(1, tmp_path)
    cached = {r["id"]: r for r in rows[:4]}
    calls = []

    def spy(item, offset):
        calls.append(item.id)
        return safe_worker(item, offset)

    cands = [Item(f"i{v:02d}", v) for v in range(1, 30)]
    with build_mod._Pool(1) as pool:
        rows2, bad2, counts = build_mod.first_n_good("toy", cands, 10, spy, (100,), cached, {"i03": "known"}, pool,
                                                     PartialLog(tmp_path / "x.jsonl"))
    assert rows2 == rows
    assert counts["reused"] == 4 and counts["built"] == 6
    assert "i03" not in calls and not set(cached) & set(calls)
    assert any(b["id"] == "i03" and b.get("cached") for b in bad2)


def test_first_n_good_reports_shortfall(tmp_path, caplog):
    cands = [Item("a", 3), Item("b", 1)]
    with build_mod._Pool(1) as pool, caplog.at_level(logging.WARNING, logger="musiccore.data"):
        rows, bad, counts = build_mod.first_n_good("toy", cands, 5, safe_worker, (0,), {}, {}, pool,
                                                   PartialLog(tmp_path / "y.jsonl"))
    assert len(rows) == 1 and counts["bad"] == 1
    assert "only 1 of 5" in caplog.text


def test_jsonl_roundtrip_and_truncated_partial(tmp_path):
    rows = [{"id": "b", "x": 1}, {"id": "a", "x": "é"}]
    p = write_jsonl(tmp_path / "m.jsonl", rows)
    assert read_jsonl(p) == rows
    assert not [f for f in tmp_path.iterdir() if ".tmp" in f.name]
    log = PartialLog(tmp_path / "m.jsonl")
    log.append({"id": "c"})
    with open(log.path, "a") as f:
        f.write('{"id": "d", "x"')  # a killed appender
    assert log.rows() == [{"id": "c"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n{oops\n{"id": 2}\n')
    with pytest.raises(DataKitError, match=r"bad.jsonl:2"):
        read_jsonl(bad)
    with pytest.raises(DataKitError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl")
    log.clear()
    assert not log.path.exists()


def test_verify_rows_names_missing_files_and_bad_checksums(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips/a.wav").write_bytes(b"abc")
    import hashlib

    good = hashlib.sha256(b"abc").hexdigest()
    rows = [{"id": "a", "path": "clips/a.wav", "sha256": good},
            {"id": "b", "path": "clips/b.wav", "sha256": good},
            {"id": "c", "path": "clips/a.wav", "sha256": "0" * 64}]
    probs = verify_rows("clips", rows, tmp_path)
    assert len(probs) == 2 and "b:" in probs[0] and "missing" in probs[0] and "c:" in probs[1]
    tune = {"id": "t", "abc": "X:1\nK:C\nC|\n", "sha1": sha1_text("X:1\nK:C\nC|\n")}
    assert verify_rows("tunes", [tune], tmp_path) == []
    assert verify_rows("tunes", [dict(tune, abc="X:1\nK:D\nD|\n")], tmp_path)


def test_stable_hash_is_order_independent():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_progress_logs_every_n_items_without_a_tty(caplog):
    with caplog.at_level(logging.INFO, logger="musiccore.data"):
        p = Progress(10, "clips", every=4)
        assert p.bar is None  # pytest captures stderr: not a terminal
        for _ in range(10):
            p.update()
        p.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("clips:")]
    assert [ln.split()[1] for ln in lines] == ["4/10", "8/10", "10/10"]


def _hold_lock(path, log, held, release):
    with FileLock(path):
        held.set()
        release.wait(30)
        with open(log, "a") as f:  # written while still holding the lock
            f.write("child released\n")


def test_file_lock_excludes_other_processes(tmp_path):
    """While another process holds the lock, acquiring it blocks; it succeeds only after that process let go.
    Ordering is shown by events and a shared log file, never by comparing clocks."""
    import threading

    ctx = mp.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    log = tmp_path / "order.log"
    p = ctx.Process(target=_hold_lock, args=(str(tmp_path / "x.lock"), str(log), held, release))
    p.start()
    try:
        assert held.wait(30), "the child never took the lock"
        acquired = threading.Event()

        def take():
            with FileLock(tmp_path / "x.lock"):
                with open(log, "a") as f:
                    f.write("parent acquired\n")
                acquired.set()

        t = threading.Thread(target=take, daemon=True)
        t.start()
        # a lock that excluded nothing would be taken at once; a working one keeps the thread waiting
        assert not acquired.wait(0.5), "acquired a lock another process holds"
        release.set()
        assert acquired.wait(30), "the lock was not handed over after the holder released it"
        t.join(30)
    finally:
        release.set()
        p.join(timeout=30)
    assert log.read_text().splitlines() == ["child released", "parent acquired"]
    assert p.exitcode == 0


def test_kit_json_is_valid_after_build_of_nothing(tmp_path):
    rep = build_mod.build(tmp_path, tunes=0, clips=0, songs=0, workers=1)
    assert rep["kinds"] == {}
    kit = json.loads((tmp_path / "kit.json").read_text())
    assert kit["kit_version"] == build_mod.KIT_VERSION
    assert (tmp_path / "README.md").exists()


def test_songs_step_unavailable_is_reported_not_fatal(tmp_path, monkeypatch, capsys):
    from musiccore.data.__main__ import main

    monkeypatch.setattr(build_mod, "songs_module", lambda: None)
    rep = build_mod.build(tmp_path, tunes=0, clips=0, songs=2, workers=1)
    assert rep["kinds"]["songs"]["unavailable"] is True and rep["kinds"]["songs"]["built"] == 0
    assert main(["build", "--root", str(tmp_path), "--only", "songs", "--songs", "2"]) == 0
    assert "songs step unavailable" in capsys.readouterr().out
    assert not (tmp_path / "songs/manifest.jsonl").exists()
