"""Kit manifests under generated malformed input (issue 12): rows and lines made by hypothesis, read through
``load_manifest`` and the ``python -m musiccore.data verify|info`` commands.

Promise checked: a typed :class:`ManifestError` / :class:`DataKitError` that names ``file:line`` (and the field), or
rows that keep the documented contract (ids that cannot name another folder, paths inside the kit, positive
durations and rates); the commands exit 0 or 1 with one line per problem and never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from musiccore.data.__main__ import main  # noqa: E402
from musiccore.data.manifest import (  # noqa: E402
    MANIFEST_PATHS,
    DataKitError,
    ManifestError,
    load_manifest,
    resolve,
)
from musiccore.testing import property_settings  # noqa: E402

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=6,
)
# values that sit on the edges of what a field accepts
EDGE = st.sampled_from([
    None, "", " ", "x", "ok", "a/b", "..", ".", "../../x", "/etc/passwd", "C:\\x.wav", "clips/../../x.wav",
    "clips/ok.wav", "songs/ok/mix.wav", "clips/missing.wav", "nul\x00byte", 0, -1, 1, 16000, 10**12, 1.5, -0.0,
    float("nan"), float("inf"), True, [], {}, [1], {"mix": 3}, {"mix": "0" * 64}, "train", "valid", "test", "dev",
])
VALID = {
    "tunes": {"id": "t1", "abc": "X:1\nK:C\nC|\n", "split": "train"},
    "clips": {"id": "c1", "path": "clips/ok.wav", "duration": 1.0, "sample_rate": 16000, "split": "valid"},
    "songs": {"id": "s1", "vocal": "songs/ok/mix.wav", "accompaniment": "songs/ok/mix.wav",
              "mix": "songs/ok/mix.wav", "split": "test"},
}
FIELDS = sorted({f for r in VALID.values() for f in r} | {"sha256", "sha1", "midi", "midi_sha256"})


@st.composite
def rows(draw, kind: str):
    """A valid row of ``kind`` with some fields replaced by edge or arbitrary JSON values, or dropped."""
    row = dict(VALID[kind])
    for f in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        choice = draw(st.integers(0, 2))
        if choice == 0:
            row.pop(f, None)
        else:
            row[f] = draw(EDGE if choice == 1 else JSON)
    return row


def line_of(obj) -> str:
    return json.dumps(obj, allow_nan=True)


LINES = st.one_of(
    st.sampled_from(["{oops", "[1, 2", "\"unterminated", "nul\x00l", "{\"id\": \"x\"} trailing"]),
    JSON.map(line_of),
)


@st.composite
def manifests(draw):
    kind = draw(st.sampled_from(sorted(VALID)))
    lines = draw(st.lists(st.one_of(rows(kind).map(line_of), LINES), min_size=1, max_size=5))
    return kind, lines


def _kit(d: Path, kind: str, lines: list[str]) -> Path:
    man = d / MANIFEST_PATHS[kind]
    man.parent.mkdir(parents=True, exist_ok=True)
    man.write_text("".join(ln.replace("\n", " ") + "\n" for ln in lines), encoding="utf-8")
    for rel in ("clips/ok.wav", "songs/ok/mix.wav"):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(b"RIFF-not-checked-here")
    return man


def _check_contract(kind: str, row: dict, root: Path) -> None:
    assert isinstance(row, dict)
    assert isinstance(row["id"], str) and row["id"].strip() and "/" not in row["id"] and row["id"] not in (".", "..")
    assert row.get("split", "train") in ("train", "valid", "test")
    for f in {"tunes": (), "clips": ("path", "midi"), "songs": ("vocal", "accompaniment", "mix")}[kind]:
        if row.get(f) is not None:
            p = resolve(row[f], root).resolve()
            assert p.is_relative_to(root.resolve()), (f, row[f])
    if kind == "clips":
        assert math.isfinite(row["duration"]) and row["duration"] > 0
        assert isinstance(row["sample_rate"], int) and not isinstance(row["sample_rate"], bool)
    if kind == "tunes":
        assert isinstance(row["abc"], str)


def _load(root: Path, kind: str):
    try:
        return load_manifest(kind, root=root), None
    except ManifestError as e:
        return None, e


@property_settings(40)
@given(manifests())
def test_load_manifest_gives_contract_rows_or_names_the_first_bad_line(m):
    kind, lines = m
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        man = _kit(root, kind, lines)
        got, err = _load(root, kind)
        if err is None:
            for r in got:
                _check_contract(kind, r, root)
            return
        assert str(err).startswith(f"{man}:{err.line}: ") and err.path == man
        assert "\n" not in str(err)
        # the named line is bad on its own, and every line before it is good on its own
        _kit(root, kind, [lines[err.line - 1]])
        assert _load(root, kind)[1] is not None
        if err.line > 1:
            _kit(root, kind, lines[: err.line - 1])
            assert _load(root, kind)[1] is None


def _cli(*args: str) -> tuple[int, str, str]:
    out, errs = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(errs):
        rc = main(list(args))
    return rc, out.getvalue(), errs.getvalue()


@property_settings(30)
@given(manifests())
def test_verify_exits_1_with_one_line_per_problem_or_0_when_load_succeeds(m):
    kind, lines = m
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        man = _kit(root, kind, lines)
        got, err = _load(root, kind)
        rc, out, _ = _cli("verify", "--root", str(root))
        assert rc in (0, 1)
        if err is not None:
            assert rc == 1 and f"{man}:{err.line}: " in out  # the line load_manifest refused is reported
        if rc == 0:
            assert err is None and out.strip() == f"{kind}: OK"
        else:
            listed = [ln for ln in out.splitlines() if ln.startswith("  ")]
            assert listed and all(ln.strip().startswith(f"{man}:") for ln in listed)


PARTS = st.dictionaries(st.sampled_from(["tunes", "clips"]), JSON | st.fixed_dictionaries({"params": JSON}),
                        max_size=2)
KIT_JSON = st.one_of(JSON, st.fixed_dictionaries({"kit_version": JSON, "parts": PARTS}))


@property_settings(30)
@given(KIT_JSON, st.one_of(JSON, st.just({"bad": [], "kinds": {}})), st.booleans())
def test_info_prints_a_summary_or_one_error_line_naming_the_file(kit, report, garble):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "kit.json").write_text("{not json" if garble else json.dumps(kit))
        (root / "report.json").write_text(json.dumps(report))
        rc, out, err = _cli("info", "--root", str(root))
        assert rc in (0, 1)
        if rc == 0:
            summary = json.loads(out)
            assert summary["root"] == str(root) and isinstance(summary["parts"], dict)
        else:
            assert out == "" and err.count("\n") == 1 and err.startswith("error: ")
            assert "kit.json" in err or "report.json" in err
        if garble:
            assert rc == 1 and "kit.json: not valid JSON" in err


def test_load_manifest_names_file_line_and_field(tmp_path):
    """Concrete cases of the issue: null / list / number rows, a number as path, a missing field, an escape."""
    cases = [
        ("null", r"clips/manifest.jsonl:1: row must be a JSON object, got null"),
        ("[1, 2]", r"clips/manifest.jsonl:1: row must be a JSON object, got a list"),
        ("7", r"clips/manifest.jsonl:1: row must be a JSON object, got a number"),
        (line_of(dict(VALID["clips"], path=5)), r":1: field 'path': must be a non-empty path string, got a number 5"),
        (line_of({k: v for k, v in VALID["clips"].items() if k != "duration"}), r":1: field 'duration': missing"),
        (line_of(dict(VALID["clips"], path="../../x.wav")), r":1: field 'path': must stay inside the kit root"),
        (line_of(dict(VALID["clips"], path="/etc/passwd")), r":1: field 'path': must be relative to the kit root"),
        (line_of(dict(VALID["clips"], id="../../x")), r":1: field 'id': must not contain path separators"),
        (line_of(dict(VALID["clips"], sample_rate=True)), r":1: field 'sample_rate': must be an integer"),
        (line_of(dict(VALID["clips"], split="dev")), r":1: field 'split': must be one of train, valid, test"),
    ]
    for line, want in cases:
        _kit(tmp_path, "clips", [line])
        with pytest.raises(ManifestError, match=want) as e:
            load_manifest("clips", root=tmp_path)
        assert isinstance(e.value, DataKitError) and e.value.line == 1
    # the second of two lines is named by its number; good rows come back unchanged
    _kit(tmp_path, "clips", [line_of(VALID["clips"]), "{oops"])
    with pytest.raises(ManifestError, match=r"manifest.jsonl:2: not valid JSON"):
        load_manifest("clips", root=tmp_path)
    _kit(tmp_path, "clips", [line_of(VALID["clips"])])
    assert load_manifest("clips", root=tmp_path) == [VALID["clips"]]
