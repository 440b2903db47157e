"""The packing benchmark runs end to end on a few tunes (its numbers are in the README; timings are not asserted)."""

from __future__ import annotations

import importlib.util

from conftest import PROJECT


def test_train_tokens_benchmark_runs(capsys):
    spec = importlib.util.spec_from_file_location("train_tokens", PROJECT / "benchmarks" / "train_tokens.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(["--tunes", "music21", "--max-tunes", "40", "--samples", "12", "--batch", "4,8", "--rows", "1",
                          "--hidden", "32", "--layers", "1", "--max-len", "512",
                          "--modes", "pad-longest,released,pack-dense,pack-varlen"])
    out = capsys.readouterr().out
    assert set(results) == {"pad-longest/4", "pad-longest/8", "released", "pack-dense", "pack-varlen"}
    assert all(v > 0 for v in results.values())
    assert "each mode trains the same 12 samples" in out
    for base in ("pad-longest/4", "pad-longest/8", "released"):
        assert f"pack-varlen / {base} = " in out
    # padded batches hold padding, the released micro batch 1 holds none
    assert "released       attn=sdpa" in out and "(0% of positions are padding)" in out.split("released")[1].splitlines()[0]
