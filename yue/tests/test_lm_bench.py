"""Smoke test of benchmarks/train_lm_tokens.py (tiny sizes; timings are printed, never asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "train_lm_tokens.py"


def test_train_lm_tokens_benchmark_smoke(prepared_dir, capsys):
    spec = importlib.util.spec_from_file_location("train_lm_tokens", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--prepared", str(prepared_dir), "--task", "stage1", "--block-size", "512", "--batch", "2",
                    "--max-docs", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert "ratio packed / padded tokens per second" in out
    # the same samples: both modes trained every real token once; only the padded mode has padding
    assert res["packed"]["real_tokens"] == res["padded"]["real_tokens"] > 0
    assert all(0 <= res[m]["padding_share"] < 1 and res[m]["tokens_per_s"] > 0 for m in ("packed", "padded"))
    assert res["ratio"] > 0
