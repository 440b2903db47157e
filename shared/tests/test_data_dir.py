"""musiccore.runs.data_dir(): a plain shell finds the kit where `make data` builds it (issue 15, item 6)."""

from __future__ import annotations

from pathlib import Path

from musiccore import runs
from musiccore.data.manifest import kit_root

# this file is <checkout>/shared/tests/test_data_dir.py; the Makefile builds the kit into <checkout>/data/kit
CHECKOUT = Path(__file__).resolve().parents[2]


def test_default_is_the_checkouts_data_kit(monkeypatch):
    monkeypatch.delenv("MUSIC_DATA_DIR", raising=False)
    assert (CHECKOUT / "Makefile").is_file() and "data/kit" in (CHECKOUT / "Makefile").read_text()
    assert runs.checkout_root() == CHECKOUT
    assert runs.data_dir() == CHECKOUT / "data" / "kit"
    assert kit_root(None) == CHECKOUT / "data" / "kit"  # what load_manifest / yue prepare use without --root
    monkeypatch.setenv("MUSIC_DATA_DIR", "")  # empty counts as unset
    assert runs.data_dir() == CHECKOUT / "data" / "kit"


def test_environment_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("MUSIC_DATA_DIR", str(tmp_path / "elsewhere"))
    assert runs.data_dir() == tmp_path / "elsewhere"


def test_outside_a_checkout_the_cache_is_used(monkeypatch, tmp_path):
    monkeypatch.delenv("MUSIC_DATA_DIR", raising=False)
    monkeypatch.setenv("MUSIC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(runs, "checkout_root", lambda: None)  # musiccore installed as a plain package
    assert runs.data_dir() == tmp_path / "cache" / "datakit"
