"""Issue 12 (MERT): bad input -> a typed error naming the file/row/field, or a skipped-and-reported item; nothing is
written outside the output folder; "already done" only for a valid output of the same settings.

The concrete files live in ``tests/bad_inputs/`` (copied to a temporary folder before use, so nothing is ever
written next to them). The README's "Bad input" table points at the tests here by name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mert.cli import main as cli_main
from mert.configuration_mert import MERTConfig, MERTConfigError
from mert.extract import (ExtractError, ExtractOptions, FeatureFileError, check_item_id, collect_items, extract,
                          load_index, read_features)
from mert.modeling_mert import MERTModel

BAD = Path(__file__).resolve().parent / "bad_inputs"


@pytest.fixture(scope="module")
def model() -> MERTModel:
    torch.manual_seed(0)
    return MERTModel(MERTConfig.preset("tiny")).eval()


@pytest.fixture()
def kit(tmp_path, monkeypatch) -> Path:
    """A private copy of tests/bad_inputs (cwd = the copy: escape.tsv's root line is '.')."""
    dst = tmp_path / "work" / "kit"
    shutil.copytree(BAD, dst)
    monkeypatch.chdir(dst)
    return dst


def files_outside(root: Path, out: Path) -> list[Path]:
    """Feature files under ``root`` (and the two folders above it) that are not inside ``out``."""
    found = []
    for base in (root, root.parent, root.parent.parent):
        for p in list(base.glob("*.npy")) + list(base.glob("*.safetensors")):
            found.append(p)
    for p in root.rglob("*"):
        if p.suffix in (".npy", ".safetensors") and out not in p.parents and "bad_inputs" not in p.parts \
                and "features" not in p.parts and "labels" not in p.parts:
            found.append(p)
    return found


# ============================================================================================ ids and manifest rows


def test_manifest_ids_cannot_escape_the_output_folder(model, kit, tmp_path):
    out = tmp_path / "work" / "out"
    s = extract([kit / "manifests" / "escape_ids.jsonl", kit / "manifests" / "escape.tsv"], out, model,
                ExtractOptions(pooling="mean"), progress=False)
    man = kit / "manifests" / "escape_ids.jsonl"
    # every unsafe id is refused and reported by file:line, naming the field; the safe rows are extracted
    assert sorted(s.done) == ["audio/ok", "fine/ok"]
    expect_lines = {1: "'..' part", 2: "absolute path", 3: "is empty", 4: "'..' part", 5: "'.' or '..' part",
                    6: "empty, '.' or '..' part", 7: "NUL or control"}
    for line, why in expect_lines.items():
        msg = s.failed[f"{man}:{line}"]
        assert "field 'id'" in msg and why in msg, (line, msg)
    tsv = kit / "manifests" / "escape.tsv"
    assert "'..' part" in s.failed[f"{tsv}:2"]
    assert len(s.failed) == 8
    assert not files_outside(tmp_path, out), files_outside(tmp_path, out)
    assert not (tmp_path.parent / "escaped.npy").exists()
    failed = [json.loads(x) for x in (out / "failed.jsonl").read_text().splitlines()]
    assert {r["id"] for r in failed} == set(s.failed)
    # the CLI: same outcome, exit code 3 (some inputs failed), each bad row printed
    assert cli_main(["extract", str(man), "--model", str(_saved(model, tmp_path)), "--out", str(tmp_path / "o2"),
                     "--pooling", "mean", "--no-progress"]) == 3


def _saved(model: MERTModel, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    if not folder.exists():
        model.save_pretrained(folder)
    return folder


def test_malformed_manifest_rows_are_skipped_and_reported(model, kit, tmp_path, capsys):
    man = kit / "manifests" / "malformed_rows.jsonl"
    with pytest.raises(ExtractError, match=r"malformed_rows.jsonl:1: row must be a JSON object"):
        collect_items([man])  # the API without a `bad` list: the first bad row is a typed error
    rc = cli_main(["extract", str(man), "--model", str(_saved(model, tmp_path)), "--out", str(tmp_path / "o"),
                   "--pooling", "mean", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 3
    assert [r["id"] for r in load_index(tmp_path / "o")] == ["good"]
    failed = {r["id"]: r["error"] for r in map(json.loads, (tmp_path / "o" / "failed.jsonl").read_text().splitlines())}
    obj = "row must be a JSON object with a 'path' field, got"
    expect = {1: f"{obj} NoneType", 2: f"{obj} list", 3: "field 'path' must be a non-empty string, got int 5",
              4: "has no 'path'", 5: "field 'path' must be a non-empty string, got list",
              6: "field 'id' must be a string, got int 7", 7: "not valid JSON", 8: f"{obj} str",
              9: "field 'path' must be a non-empty string, got str ''"}
    assert set(failed) == {f"{man}:{n}" for n in expect}
    for n, why in expect.items():
        assert why in failed[f"{man}:{n}"], (n, failed[f"{man}:{n}"])
        assert f"failed {man}:{n}" in printed


@pytest.mark.parametrize("iid, ok", [
    ("a", True), ("a/b/c", True), ("song.v2", True), ("..x", True), ("x..", True),
    ("", False), ("..", False), ("../x", False), ("a/../../x", False), ("/etc/x", False), ("a//b", False),
    ("a/./b", False), ("a\x00b", False), ("a\nb", False), ("x" * 201, False), (7, False), (None, False),
])
def test_check_item_id(iid, ok):
    if ok:
        assert check_item_id(iid, "m.jsonl:3") == iid
    else:
        with pytest.raises(ExtractError, match=r"m.jsonl:3: field 'id'"):
            check_item_id(iid, "m.jsonl:3")


# ============================================================================================ "already done"


def test_invalid_existing_output_is_redone_and_reported(model, kit, tmp_path, capsys):
    audio = kit / "audio"
    (tmp_path / "in").mkdir()
    for name in ("a", "b", "c", "d"):
        shutil.copy(audio / "ok.wav", tmp_path / "in" / f"{name}.wav")
    out = tmp_path / "out"
    opts = ExtractOptions(pooling="mean")
    first = extract([tmp_path / "in"], out, model, opts, progress=False)
    assert sorted(first.done) == ["a", "b", "c", "d"]
    good = read_features(out / "a.npy")
    (out / "a.npy").write_bytes(b"garbage that happens to carry the output's name")
    (out / "b.npy").write_bytes(b"")  # zero bytes (a full disk)
    np.save(out / "c.npy", np.zeros((3, 7), np.float32))  # a valid .npy, wrong shape for these settings
    raw = (out / "d.npy").read_bytes()
    (out / "d.npy").write_bytes(raw[:-8])  # truncated
    again = extract([tmp_path / "in"], out, model, opts, progress=False)
    assert sorted(again.redone) == ["a", "b", "c", "d"] and sorted(again.done) == ["a", "b", "c", "d"]
    assert "not a .npy array" in again.redone["a"] and "0 bytes" in again.redone["b"]
    assert "shape [3, 7]" in again.redone["c"] and "truncated" in again.redone["d"]
    assert "redone (invalid earlier output) 4" in again.line()
    for name in "abcd":
        np.testing.assert_array_equal(read_features(out / f"{name}.npy"), good)
    rows = load_index(out)
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"] and all("redone" in r for r in rows)
    # a third run: everything valid now, nothing recomputed
    third = extract([tmp_path / "in"], out, model, opts, progress=False)
    assert sorted(third.skipped) == ["a", "b", "c", "d"] and not third.redone and third.windows == 0
    # the CLI prints what it redid
    (out / "a.npy").write_bytes(b"")
    assert cli_main(["extract", str(tmp_path / "in"), "--model", str(_saved(model, tmp_path)), "--out",
                     str(tmp_path / "o2"), "--pooling", "mean", "--no-progress"]) == 0
    (tmp_path / "o2" / "b.npy").write_bytes(b"")
    assert cli_main(["extract", str(tmp_path / "in"), "--model", str(_saved(model, tmp_path)), "--out",
                     str(tmp_path / "o2"), "--pooling", "mean", "--no-progress"]) == 0
    assert "redone b:" in capsys.readouterr().out


def test_safetensors_output_of_other_layers_is_redone(model, tmp_path, kit):
    shutil.copy(kit / "audio" / "ok.wav", tmp_path / "x.wav")
    opts = ExtractOptions(pooling="mean", fmt="safetensors", layers=[0, 2])
    extract([tmp_path / "x.wav"], tmp_path / "o", model, opts, progress=False)
    # same file name, a header claiming other layers (e.g. copied in from another extraction)
    from safetensors.numpy import save_file

    save_file({"features": np.zeros((2, 64), np.float32)}, str(tmp_path / "o" / "x.safetensors"),
              metadata={"layers": "[0, 1]", "pooling": "mean"})
    s = extract([tmp_path / "x.wav"], tmp_path / "o", model, opts, progress=False)
    assert list(s.redone) == ["x"] and "layers [0, 1]" in s.redone["x"]


# ============================================================================================ feature / label files


@pytest.mark.parametrize("name, why", [
    ("zero_bytes.npy", "0 bytes"), ("truncated.npy", "truncated"), ("pickled.npy", "pickle"),
    ("garbage.npy", "not a .npy array"), ("zero_bytes.safetensors", "0 bytes"),
    ("garbage.safetensors", "header length"),
])
def test_unreadable_feature_files_are_typed_errors(name, why):
    with pytest.raises(FeatureFileError, match=why) as e:
        read_features(BAD / "features" / name)
    assert name in str(e.value)


def test_probe_and_eval_skip_unreadable_feature_files(tmp_path, caplog):
    """`mert probe` / `mert eval` read cached features: a zero-byte file is skipped and reported, not a traceback."""
    from mert.evaluate import load_features
    from mert.marble import Example, TaskData

    np.save(tmp_path / "good.npy", np.ones((2, 8), np.float32))
    shutil.copy(BAD / "features" / "zero_bytes.npy", tmp_path / "bad.npy")
    examples = [Example(id="good", path=tmp_path / "g.wav", split="train", target="x"),
                Example(id="bad", path=tmp_path / "b.wav", split="train", target="y")]
    data = TaskData(examples=examples, classes=["x", "y"])
    feats, problems = load_features(tmp_path, data)
    assert list(feats) == ["good"] and len(problems) == 1 and "bad: unreadable features" in problems[0]
    assert "0 bytes" in problems[0]


def test_zero_byte_label_shard_is_a_typed_error(tmp_path):
    from mert.data import DataError, LabelStore

    shutil.copytree(BAD / "labels" / "zero_npy", tmp_path / "labels")
    with pytest.raises(DataError, match=r"shard-00000-of-00001.npy: empty file \(0 bytes\)"):
        LabelStore(tmp_path / "labels", [{"path": "x.wav"}])


def test_zero_byte_kmeans_teacher_is_a_typed_error():
    from mert.teachers import KMeansTeacher, TeacherError

    with pytest.raises(TeacherError, match="zero_bytes_kmeans.npz: not a k-means teacher file"):
        KMeansTeacher.load(BAD / "teachers" / "zero_bytes_kmeans.npz")


def test_training_manifest_rows_are_checked_per_field(kit, caplog):
    from mert.data import DataError, check_manifest_row, read_manifest

    man = kit / "manifests" / "train_malformed.jsonl"
    problems: list[str] = []
    rows = read_manifest(man, problems)
    assert len(rows) == 1 and rows[0]["path"] == str((kit / "manifests" / "audio" / "ok.wav").resolve())
    expect = ["1: row must be a JSON object", "2: field 'path'", "3: field 'duration'", "4: field 'sample_rate'",
              "5: row lacks 'sample_rate'"]
    assert len(problems) == len(expect)
    for p, e in zip(problems, expect):
        assert f"train_malformed.jsonl:{e}" in p, (p, e)
    assert "5 malformed row(s) skipped" in caplog.text
    with pytest.raises(DataError, match="m.jsonl:9: field 'duration'"):
        check_manifest_row({"path": "a.wav", "duration": float("inf"), "sample_rate": 24000}, "m.jsonl:9")


# ============================================================================================ model config.json


@pytest.mark.parametrize("name, why", [
    ("heads_zero", "field 'num_attention_heads' must be >= 1, got 0"),
    ("string_int", "field 'hidden_size': expected an integer, got str '768'"),
    ("not_divisible", "hidden_size 770 is not divisible by num_attention_heads 12"),
    ("bool_for_int", "field 'num_hidden_layers': expected an integer, got bool True"),
    ("list_of_strings", "field 'conv_dim': expected a list of integers"),
    ("probability_out_of_range", "field 'layerdrop' must be in [0, 1], got 1.5"),
    ("negative_sizes", "field 'intermediate_size' must be >= 1, got -3"),
    ("not_json", "not valid JSON"),
    ("not_object", "expected a JSON object"),
])
def test_bad_model_config_json_is_a_typed_error_naming_file_and_field(name, why, tmp_path, capsys):
    folder = BAD / "configs" / name
    with pytest.raises(MERTConfigError) as e:
        MERTConfig.from_json(folder)
    assert why in str(e.value) and str(folder / "config.json") in str(e.value)
    # through the CLI: one line, exit 2, no output folder (the model is checked before anything is written)
    model_dir = tmp_path / "m"
    shutil.copytree(folder, model_dir)
    (model_dir / "model.safetensors").write_bytes(b"")
    rc = cli_main(["extract", str(BAD / "audio" / "ok.wav"), "--model", str(model_dir), "--out", str(tmp_path / "o")])
    assert rc == 2 and not (tmp_path / "o").exists()


def test_concrete_bad_audio_files_are_reported_and_skipped(model, tmp_path):
    s = extract([BAD / "audio"], tmp_path / "o", model, ExtractOptions(pooling="mean"), progress=False)
    assert s.done == ["ok"]
    assert set(s.failed) == {"corrupt", "empty", "nan", "too_short"}
    assert "too short" in s.failed["too_short"] and "non-finite" in s.failed["nan"]
    assert all(name in s.failed[name] for name in s.failed)  # each message names its file
    assert not any((tmp_path / "o").rglob("*.part")) and not any((tmp_path / "o").rglob("*.tmp*"))
