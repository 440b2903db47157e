import json
from dataclasses import dataclass

import pytest

from musiccore.runs import RunDirError, append_jsonl, atomic_path, atomic_write_json, prepare_run_dir


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
    append_jsonl(run / "metrics.jsonl", {"step": 1, "loss": 2.0})  # the run did work (issue 12: see below)
    with pytest.raises(RuntimeError, match="another config"):
        prepare_run_dir(run, C(lr=0.2))
    (run / "marker").write_text("x")
    prepare_run_dir(run, C(lr=0.2), fresh=True)
    assert not (run / "marker").exists()


@dataclass
class Nested:
    data: dict = None
    lr: float = 0.1

    def __post_init__(self):
        self.data = self.data or {"root": "/bad/kit", "split": "train"}


def test_corrected_relaunch_takes_over_a_folder_without_work(tmp_path, caplog):
    """Issue 12: a launch whose data check fails after prepare_run_dir leaves only config.yaml/git.txt/env.txt/logs;
    the relaunch with the corrected setting is accepted (not refused as "another config"), and says what changed."""
    run = prepare_run_dir(tmp_path / "run", Nested())
    (run / "logs" / "train.log").write_text("data root /bad/kit not found\n")  # the failed launch's log
    (run / ".config.yaml.abc.tmp.yaml").write_text("")  # a killed atomic write counts as no work either
    with caplog.at_level("WARNING", logger="musiccore.runs"):
        prepare_run_dir(run, Nested(data={"root": "/good/kit", "split": "train"}))
    assert "/good/kit" in (run / "config.yaml").read_text()
    assert (run / "logs" / "train.log").exists()  # the failed launch's log is kept
    assert "data.root: '/bad/kit' -> '/good/kit'" in caplog.text

    # once the run has produced something (a checkpoint), another config is refused, naming the key and the work
    (run / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    with pytest.raises(RunDirError, match=r"data.root: '/good/kit' -> '/other'.*checkpoints"):
        prepare_run_dir(run, Nested(data={"root": "/other", "split": "train"}))
    assert "/good/kit" in (run / "config.yaml").read_text()  # refused: nothing rewritten
    prepare_run_dir(run, Nested(data={"root": "/good/kit", "split": "train"}))  # same config: resume
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="not a folder"):
        prepare_run_dir(tmp_path / "file", Nested())


def test_other_ranks_wait_for_rank_zeros_config(tmp_path):
    """A rank other than 0 writes nothing and returns only once config.yaml is this run's config: a stale config of
    an earlier run (which rank 0 is about to clear with fresh=true) does not release it; rank 0 never comes -> error."""
    import threading
    import time

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("lr: 0.5\n")  # an earlier run's config
    done = threading.Event()
    t = threading.Thread(target=lambda: (prepare_run_dir(run, C(), rank=1, timeout=60), done.set()))
    t.start()
    time.sleep(1.0)
    assert not done.is_set() and sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    prepare_run_dir(run, C(), fresh=True)  # rank 0
    t.join(30)
    assert done.is_set()
    with pytest.raises(RunDirError, match=r"rank 3 waited 1 s for rank 0"):
        prepare_run_dir(tmp_path / "never", C(), rank=3, timeout=1)
    assert not (tmp_path / "never").exists()


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
