import json
from dataclasses import dataclass

import pytest

from musiccore.runs import append_jsonl, atomic_path, atomic_write_json, prepare_run_dir


def test_atomic_path_success_and_failure(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"abc")
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_bytes() == b"abc"

    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"abc"  # old content kept
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]  # no temp file left


@dataclass
class C:
    lr: float = 0.1


def test_prepare_run_dir_resume_and_conflict(tmp_path):
    run = prepare_run_dir(tmp_path / "run", C())
    for name in ("config.yaml", "git.txt", "env.txt"):
        assert (run / name).is_file()
    assert "torch:" in (run / "env.txt").read_text()
    prepare_run_dir(run, C())  # same config: resume
    with pytest.raises(RuntimeError, match="another config"):
        prepare_run_dir(run, C(lr=0.2))
    (run / "marker").write_text("x")
    prepare_run_dir(run, C(lr=0.2), fresh=True)
    assert not (run / "marker").exists()


def test_jsonl_and_json(tmp_path):
    append_jsonl(tmp_path / "m.jsonl", {"step": 1, "loss": 2.5})
    append_jsonl(tmp_path / "m.jsonl", {"step": 2, "loss": 2.0})
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}


def test_sibling_imports_detects_cross_project_imports(tmp_path):
    from musiccore.testing import sibling_imports

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "ok.py").write_text("import os\nfrom musiccore import audio\nfrom . import x\n")
    (tmp_path / "pkg" / "bad.py").write_text("import yue.codec\nfrom chatmusician.data import build\n")
    assert sibling_imports(tmp_path, "mert") == {"pkg/bad.py": ["chatmusician", "yue"]}
    assert sibling_imports(tmp_path, "yue") == {"pkg/bad.py": ["chatmusician"]}
