"""Property tests (hypothesis) of MERT's inputs (issue 12): generated manifests, ids and waveforms through the extract
path give a typed error or a valid result, never a file outside the output folder, never a partial file.

Default suite: a few seconds per family (``musiccore.testing.property_settings``); ``--runslow`` runs 20x more.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import event, given
from hypothesis import strategies as st

from musiccore.testing import property_settings

from mert.configuration_mert import MERTConfig, MERTConfigError
from mert.extract import (ExtractError, ExtractOptions, check_item_id, collect_items, extract, extract_waveform,
                          read_features)
from mert.modeling_mert import MERTModel

SR = 24000


@pytest.fixture(scope="module")
def model() -> MERTModel:
    torch.manual_seed(0)
    return MERTModel(MERTConfig.preset("tiny")).eval()


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("prop_audio")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        sf.write(d / f"{name}.wav", (0.1 * rng.standard_normal(2400)).astype(np.float32), SR)
    return d


# ids: path-like text with the dangerous pieces over-represented
_id_parts = st.sampled_from(["", ".", "..", "a", "b", "x.y", "..z", "\x00", "\n", "/", "//", "ü", "a" * 210])
ids = st.one_of(st.text(max_size=12), st.lists(_id_parts, max_size=5).map("/".join), st.lists(_id_parts, max_size=3).map("".join),
                st.integers(), st.none(), st.lists(st.integers(), max_size=2))
paths = st.one_of(st.sampled_from(["a.wav", "b.wav", "missing.wav", "", "../a.wav"]), st.text(max_size=8),
                  st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2), st.floats())
rows = st.one_of(
    st.fixed_dictionaries({"path": paths}, optional={"id": ids, "duration": st.floats(), "x": st.integers()}),
    st.none(), st.integers(), st.lists(st.integers(), max_size=2), st.text(max_size=5),
    st.fixed_dictionaries({}, optional={"audio": paths, "mix": paths, "id": ids}),
)
lines = st.one_of(rows.map(json.dumps), st.text(alphabet=string.printable, max_size=20))


def _inside(out: Path, iid: str, fmt: str = "npy") -> bool:
    return (out / f"{iid}.{fmt}").resolve().is_relative_to(out.resolve())


@property_settings(200)
@given(st.lists(lines, max_size=12))
def test_manifest_rows_give_items_inside_out_or_reported_rows(tmp_path_factory, manifest_lines):
    """Any jsonl text: every accepted item's output lies inside --out; every other non-blank line is a reported bad
    row naming its file:line; or the whole manifest is refused with a typed error (colliding ids)."""
    d = tmp_path_factory.mktemp("m")
    man = d / "m.jsonl"
    man.write_text("\n".join(x.replace("\n", " ") for x in manifest_lines) + "\n", encoding="utf-8",
                   errors="surrogateescape")
    bad = []
    try:
        items = collect_items([man], bad)
    except ExtractError as e:
        assert "duplicate output ids" in str(e)
        return
    out = d / "out"
    for it in items:
        assert check_item_id(it.id, "x") == it.id and _inside(out, it.id)
    nonblank = {n for n, x in enumerate(man.read_text(errors="replace").splitlines(), 1) if x.strip()}
    assert all(b.where.startswith(f"{man}:") for b in bad)
    assert {int(b.where.rsplit(":", 1)[1]) for b in bad} <= nonblank
    assert len(items) + len(bad) <= len(nonblank)  # identical (id, path) rows collapse into one item


@property_settings(60)
@given(st.one_of(ids, st.text(max_size=30)))
def test_item_ids_are_accepted_only_inside_out(tmp_path_factory, iid):
    out = tmp_path_factory.getbasetemp() / "ids_out"
    try:
        got = check_item_id(iid, "row")
    except ExtractError as e:
        assert str(e).startswith("row: field 'id'")
        return
    assert got == iid and _inside(out, iid) and "\x00" not in iid and ".." not in iid.split("/")


@property_settings(6)
@given(st.lists(st.fixed_dictionaries({"path": st.sampled_from(["a.wav", "b.wav", "missing.wav", 5, None]),
                                       "id": st.one_of(st.sampled_from(["x", "y/z", "../esc", "", "/abs"]), st.none())}),
                min_size=1, max_size=4))
def test_extract_on_generated_manifests_writes_only_inside_out(model, audio_dir, tmp_path_factory, manifest_rows):
    """End to end: done + failed account for every row, outputs are complete feature files inside --out, nothing
    is left half-written, and nothing appears next to the output folder."""
    d = tmp_path_factory.mktemp("e2e")
    man = audio_dir / f"m-{d.name}.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in manifest_rows))
    out = d / "deep" / "out"
    try:
        s = extract([man], out, model, ExtractOptions(pooling="mean"), progress=False)
    except ExtractError as e:
        assert "duplicate output ids" in str(e)
        return
    finally:
        man.unlink()
    event(f"extracted {min(len(s.done), 2)}+, failed {min(len(s.failed), 2)}+")
    for iid in s.done:
        assert read_features(out / f"{iid}.npy").shape == (3, 64)
    assert not [p for p in d.rglob("*") if p.is_file() and out not in p.parents]
    assert not [p for p in out.rglob("*") if p.name.endswith((".part", ".tmp")) or ".tmp" in p.name]


# waveforms: any dtype, 1-3 dims, channel layouts both ways, NaN/inf/huge values injected now and then
WILD_DTYPES = [np.float32, np.float64, np.float16, np.int16, np.int32, np.uint8, np.bool_, np.complex64, np.object_]


@st.composite
def waves(draw, dtypes=tuple(WILD_DTYPES), layouts=("[N]", "[C, N]", "[N, C]", "[A, B, C]", "empty")):
    """(array, injected special value or None)."""
    dt = draw(st.sampled_from(dtypes))
    layout = draw(st.sampled_from(layouts))
    n = draw(st.one_of(st.integers(400, 3000), st.integers(0, 3000)))
    c = draw(st.integers(1, 3))
    shape = {"[N]": (n,), "[C, N]": (c, n), "[N, C]": (n, c), "[A, B, C]": (2, c, n // 4), "empty": (c, 0)}[layout]
    x = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).uniform(-0.5, 0.5, shape)
    special = draw(st.sampled_from([None, None, None, np.nan, np.inf, -np.inf, 1e30, 1e300]))
    if special is not None and x.size:
        x.reshape(-1)[draw(st.integers(0, x.size - 1))] = special
    else:
        special = None
    if np.dtype(dt).kind in "iub":
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(x * 1000, posinf=0, neginf=0).astype(dt), None
    with np.errstate(over="ignore"):  # 1e300 -> inf in float32/float16: one of the cases under test
        return x.astype(dt), special


@property_settings(30)
@given(waves(), st.sampled_from([24000, 16000, 44100, 0, -5, 999, 10**7, 24000.0]))
def test_any_array_gives_a_typed_error_or_finite_features(model, wav_special, sample_rate):
    wav, _ = wav_special
    try:
        x = extract_waveform(model, wav, sample_rate, ExtractOptions(pooling="mean", window_s=1.0))
    except ExtractError as e:
        assert str(e)  # a message, not an empty error
        return
    assert x.shape == (3, 64) and x.dtype == np.float32 and np.isfinite(x).all()
    assert wav.ndim in (1, 2) and np.isfinite(wav.astype(np.float64)).all()


@property_settings(25)
@given(waves(dtypes=(np.float32, np.float64, np.float16, np.int16), layouts=("[N]", "[C, N]")),
       st.sampled_from([24000, 16000, 44100]))
def test_plausible_waveforms_give_features_unless_non_finite_or_too_short(model, wav_special, sample_rate):
    """[N] / [C, N] arrays of common dtypes: features whenever the samples are finite and, at 24 kHz, at least one
    frame long; a NaN/inf/overflowing sample is a typed error naming the reason."""
    wav, special = wav_special
    n24 = int(wav.shape[-1] * 24000 / sample_rate)
    try:
        x = extract_waveform(model, wav, sample_rate, ExtractOptions(pooling="mean", window_s=1.0))
    except ExtractError as e:
        event("typed error")
        assert special is not None or n24 < 402 or wav.dtype == np.float16 and not np.isfinite(wav).all(), e
        assert any(w in str(e) for w in ("non-finite", "too short", "empty")), e
        return
    event("features")
    assert x.shape == (3, 64) and np.isfinite(x).all()
    assert special is None or abs(special) < np.inf and special <= 1e30


@property_settings(8)
@given(st.integers(1, 3), st.sampled_from([8000, 24000, 48000]), st.integers(0, 3000),
       st.sampled_from(["PCM_16", "FLOAT", "PCM_U8"]), st.sampled_from(["normal", "nan", "huge", "silent"]))
def test_audio_files_give_a_reported_failure_or_a_complete_output(model, tmp_path_factory, channels, rate, frames,
                                                                   subtype, content):
    d = tmp_path_factory.mktemp("f")
    rng = np.random.default_rng(frames)
    x = (0.1 * rng.standard_normal((frames, channels))).astype(np.float32)
    if content == "nan" and frames and subtype == "FLOAT":
        x[frames // 2, 0] = np.nan
    elif content == "huge" and subtype == "FLOAT":
        x *= 1e30
    elif content == "silent":
        x[:] = 0
    sf.write(d / "x.wav", x, rate, subtype=subtype)
    s = extract([d / "x.wav"], d / "out", model, ExtractOptions(pooling="mean"), progress=False)
    assert len(s.done) + len(s.failed) == 1
    event("done" if s.done else "failed")
    if s.done:
        assert np.isfinite(read_features(d / "out" / "x.npy")).all()
    else:
        assert "x.wav" in s.failed["x"] and not (d / "out" / "x.npy").exists()
    assert not [p for p in (d / "out").rglob("*") if ".part" in p.name or ".tmp" in p.name]


# model config.json: generated field values of the wrong type or range
_fields = ["hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "conv_dim", "layerdrop",
           "do_stable_layer_norm", "layer_norm_eps", "sample_rate", "feat_extract_norm"]
_values = st.one_of(st.integers(-3, 3000), st.floats(allow_nan=True), st.booleans(), st.text(max_size=4), st.none(),
                    st.lists(st.integers(-2, 600), max_size=8), st.lists(st.text(max_size=2), max_size=3))


@property_settings(100)
@given(st.dictionaries(st.sampled_from(_fields), _values, min_size=1, max_size=3))
def test_config_json_values_give_a_typed_error_naming_the_file_or_a_valid_config(tmp_path_factory, over):
    d = tmp_path_factory.mktemp("cfg")
    (d / "config.json").write_text(json.dumps({"model_type": "mert_model", **over}))
    try:
        cfg = MERTConfig.from_json(d)
    except MERTConfigError as e:
        assert str(d / "config.json") in str(e)
        return
    assert cfg.hidden_size % cfg.num_attention_heads == 0 and cfg.num_hidden_layers >= 1
    assert all(isinstance(c, int) and c >= 1 for c in cfg.conv_dim)
