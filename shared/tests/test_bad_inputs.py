"""The concrete bad inputs of ``tests/bad_inputs/`` (audio files and data kits), each with the behaviour and exit
code that shared/README.md's "Bad input" table promises. Every file there is used by a case below."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import pytest

from musiccore import audio as A
from musiccore.audio import AudioError
from musiccore.data import DataKitError, load_manifest
from musiccore.data.__main__ import main
from musiccore.data.manifest import ManifestError

BAD = Path(__file__).parent / "bad_inputs"

#: audio file -> what load_audio / audio_info / iter_windows say (audio_info reads only the header: None = it
#: reports the header as is).
AUDIO = {
    "zero_byte.wav": ("file is empty \\(0 bytes\\)", "file is empty"),
    "truncated.flac": ("cannot decode audio \\(.*lost sync", None),
    "text_as.wav": ("cannot decode audio \\(Format not recognised", "cannot decode audio"),
    "nan_float.wav": ("non-finite samples \\(1 NaN, 1 inf\\)", None),
    "header_only.wav": ("file has no samples", None),
    "zero_rate.wav": ("cannot decode audio", "cannot decode audio"),
    "zero_channels.wav": ("cannot decode audio \\(Channel count is zero", "cannot decode audio"),
}

#: kit folder -> (command, exit code, line the command prints; the load_manifest error for manifest cases)
KITS = {
    "invalid_json": ("verify", 1, r"clips/manifest.jsonl:2: not valid JSON"),
    "null_row": ("verify", 1, r"clips/manifest.jsonl:1: row must be a JSON object, got null"),
    "list_row": ("verify", 1, r"clips/manifest.jsonl:1: row must be a JSON object, got a list"),
    "number_row": ("verify", 1, r"clips/manifest.jsonl:1: row must be a JSON object, got a number"),
    "number_as_path": ("verify", 1, r"manifest.jsonl:1: field 'path': must be a non-empty path string, got a number"),
    "missing_field": ("verify", 1, r"clips/manifest.jsonl:1: field 'duration': missing"),
    "path_outside_kit": ("verify", 1, r"manifest.jsonl:1: field 'path': must stay inside the kit root"),
    "absolute_path": ("verify", 1, r"manifest.jsonl:1: field 'path': must be relative to the kit root"),
    "id_with_separator": ("verify", 1, r"manifest.jsonl:1: field 'id': must not contain path separators"),
    "not_utf8": ("verify", 1, r"clips/manifest.jsonl:1: not UTF-8 text"),
    "zero_byte_clip": ("verify", 1, r"clips/manifest.jsonl:1: c1: .*clips/c1.wav is empty \(0 bytes\)"),
    "kit_json_invalid": ("info", 1, r"^error: .*kit.json: not valid JSON"),
    "kit_json_wrong_shape": ("info", 1, r"^error: .*kit.json: field 'parts.clips': must be an object, got int"),
}


def test_every_bad_input_file_has_a_case():
    assert sorted(p.name for p in (BAD / "audio").iterdir()) == sorted(AUDIO)
    assert sorted(p.name for p in (BAD / "kits").iterdir()) == sorted(KITS)


@pytest.mark.parametrize("name", sorted(AUDIO))
def test_bad_audio_file_raises_audio_error_naming_it(name, tmp_path):
    path = tmp_path / name
    shutil.copy(BAD / "audio" / name, path)
    before = path.read_bytes()
    load_msg, info_msg = AUDIO[name]
    with pytest.raises(AudioError, match=re.escape(str(path)) + ": .*" + load_msg):
        A.load_audio(path, 16000)
    with pytest.raises(AudioError, match=re.escape(str(path))):
        list(A.iter_windows(path, 16000, 0.1))
    if info_msg is None:
        assert A.audio_info(path).path == str(path)
    else:
        with pytest.raises(AudioError, match=re.escape(str(path)) + ": " + info_msg):
            A.audio_info(path)
    assert path.read_bytes() == before  # inputs are never modified
    assert [p.name for p in tmp_path.iterdir()] == [name]  # and nothing is written beside them


@pytest.mark.parametrize("name", sorted(KITS))
def test_bad_kit_gives_one_line_and_exit_code(name):
    root = BAD / "kits" / name
    cmd, code, line = KITS[name]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([cmd, "--root", str(root)])
    assert rc == code
    text = out.getvalue() if cmd == "verify" else err.getvalue()
    assert "Traceback" not in text + err.getvalue()
    assert any(re.search(line, ln.strip()) for ln in text.splitlines()), text
    if cmd == "verify" and name != "zero_byte_clip":  # a readable row with an empty file loads; its file is bad
        with pytest.raises(ManifestError, match=line.replace("^", "")) as e:
            load_manifest("clips", root=root)
        assert isinstance(e.value, DataKitError) and e.value.path == root / "clips" / "manifest.jsonl"


def test_bad_kit_json_does_not_stop_a_build(tmp_path, caplog):
    """A damaged kit.json is a lost cache to `build` (warned and redone), not an error."""
    from musiccore.data import build

    shutil.copy(BAD / "kits" / "kit_json_wrong_shape" / "kit.json", tmp_path / "kit.json")
    with caplog.at_level("WARNING", logger="musiccore.data"):
        rep = build(tmp_path, tunes=0, clips=0, songs=0, workers=1)
    assert rep["kinds"] == {} and "kit.json: field 'parts.clips'" in caplog.text


@pytest.mark.parametrize("args", [["--tunes", "-3"], ["--clips", "x"], ["--clip-seconds", "nan"],
                                  ["--sample-rate", "0"], ["--workers", "0"], ["--only", "tunes,bogus"]])
def test_bad_build_arguments_exit_2_before_any_file_is_written(args, tmp_path, capsys):
    root = tmp_path / "kit"
    with pytest.raises(SystemExit) as e:
        main(["build", "--root", str(root), *args])
    assert e.value.code == 2 and f"argument {args[0]}" in capsys.readouterr().err
    assert not root.exists()
