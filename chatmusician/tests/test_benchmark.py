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


def test_eval_speed_benchmark_runs(corpus_dir, capsys):
    """benchmarks/eval_speed.py: both modes score the same questions, answers asserted identical, ratio printed."""
    from conftest import SMALL

    spec = importlib.util.spec_from_file_location("eval_speed", PROJECT / "benchmarks" / "eval_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--questions", "8", "--batch", "4", "--hidden", "32", "--layers", "1",
                      f"data.out_dir={corpus_dir / 'data'}", *SMALL])
    out = capsys.readouterr().out
    assert res["n"] == 8 and res["one"] > 0 and res["batched"] > 0 and res["max_diff"] < 1e-4
    assert "batched / one at a time = " in out and "identical answers for all 8 questions" in out
