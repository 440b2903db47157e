"""The lock files (shared/scripts/lock.py, setup.sh, `make lock-check`) and the lock record in run folders."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from musiccore.runs import LOCK_MARKER, env_info, lock_info, prepare_run_dir

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
REPO = SCRIPTS.parents[1]


def _load_lock_module():
    spec = importlib.util.spec_from_file_location("musiccore_lock_script", SCRIPTS / "lock.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


lock = _load_lock_module()


def _mini_repo(tmp_path: Path) -> Path:
    """shared/ (pyproject + scripts) and mert/ (pyproject + its committed lock), as `make handoff` copies them."""
    root = tmp_path / "repo"
    (root / "shared").mkdir(parents=True)
    shutil.copy(REPO / "shared" / "pyproject.toml", root / "shared")
    shutil.copytree(SCRIPTS, root / "shared" / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(SCRIPTS.parent / "locks", root / "shared" / "locks")
    (root / "mert").mkdir()
    for name in ("pyproject.toml", "requirements.lock"):
        shutil.copy(REPO / "mert" / name, root / "mert")
    return root


def _check(root: Path, *targets: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(root / "shared" / "scripts" / "lock.py"), "check", *map(str, targets)],
                          capture_output=True, text=True, timeout=60)


def test_committed_locks_match_their_pyprojects():
    """The locks in the checkout were written from the pyprojects as they are (what `make lock-check` enforces)."""
    assert lock.check(lock.all_targets(REPO)) == []
    targets = [t.name for t in lock.all_targets(REPO)[1:]]
    assert set(targets) >= {"mert", "chatmusician", "yue"}
    for t in lock.all_targets(REPO):
        pins = lock.read_pins(t / lock.LOCK_NAME)
        # torch's version is pinned by the constraint; its build here is the CPU one (no CUDA wheels in any lock)
        assert lock.public_version(pins["torch"]) == lock.constraint_lines()[0].split("==")[1]
        assert not any(name.startswith("nvidia-") or name == "triton" for name in pins), t
    # the CUDA build of the same torch version is locked once, with its nvidia-* wheels, for GPU machines
    cuda = lock.read_pins(lock.CUDA_LOCK)
    assert cuda["torch"] == lock.public_version(pins["torch"]) and any(n.startswith("nvidia-") for n in cuda)


def test_check_fails_when_dependencies_change_without_the_lock(tmp_path):
    root = _mini_repo(tmp_path)
    mert = root / "mert"
    assert _check(root, mert).returncode == 0

    # an edit that cannot change the lock (description) keeps it valid
    text = (mert / "pyproject.toml").read_text()
    (mert / "pyproject.toml").write_text(text.replace('description = "', 'description = "Edited. ', 1))
    assert _check(root, mert).returncode == 0

    # a new dependency in the project makes its lock stale; the message names the lock and the pyproject
    (mert / "pyproject.toml").write_text(text.replace('dependencies = [\n', 'dependencies = [\n  "rich>=13",\n', 1))
    r = _check(root, mert)
    assert r.returncode == 1
    assert "mert/requirements.lock: stale" in r.stderr and "mert/pyproject.toml" in r.stderr

    # a change in shared/ (a path dependency of every project) also makes the project's lock stale
    (mert / "pyproject.toml").write_text(text)
    shared = root / "shared" / "pyproject.toml"
    shared.write_text(shared.read_text().replace('"tqdm>=4.66,<5"', '"tqdm>=4.67,<5"'))
    assert _check(root, mert).returncode == 1

    # so does the torch pin; a missing lock is named as missing
    shutil.copy(REPO / "shared" / "pyproject.toml", shared)
    assert _check(root, mert).returncode == 0
    cons = root / "shared" / "locks" / "constraints.txt"
    cons.write_text(cons.read_text().replace("torch==", "torch==9.9.9\n#"))
    r = _check(root, mert)
    assert r.returncode == 1 and "torch-cuda.lock: stale" in r.stderr and "mert/requirements.lock: stale" in r.stderr
    (mert / "requirements.lock").unlink()
    r = _check(root, mert)
    assert r.returncode == 1 and "missing" in r.stderr


def test_members_of_each_target(tmp_path):
    assert [p.name for p in lock.members(REPO / "yue")] == ["shared", "yue"]
    root_members = [p.name for p in lock.members(REPO)]
    assert root_members[0] == "shared" and {"mert", "chatmusician", "yue"} <= set(root_members)
    with pytest.raises(lock.LockError, match="neither a project folder"):
        lock.members(tmp_path)
    with pytest.raises(lock.LockError, match="no lock of its own"):
        lock.members(REPO / "shared")
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "pyproject.toml").write_text("[project]\nname='p'\n")
    with pytest.raises(lock.LockError, match="no ../shared/pyproject.toml"):
        lock.members(tmp_path / "proj")


def test_bad_pyproject_and_bad_lock_lines_name_the_file(tmp_path):
    bad = tmp_path / "pyproject.toml"
    bad.write_text("[project\n")
    with pytest.raises(lock.LockError, match="pyproject.toml: cannot read"):
        lock.dependency_tables(bad)
    bad.write_text("[tool.x]\na = 1\n")
    with pytest.raises(lock.LockError, match="no \\[project\\] table"):
        lock.dependency_tables(bad)
    lk = tmp_path / "requirements.lock"
    lk.write_text("# header\nnumpy==2.4.6\n    # via x\nscipy>=1\n")
    with pytest.raises(lock.LockError, match=r"requirements.lock:4: not an exact pin"):
        lock.read_pins(lk)


def test_read_pins_round_trip_property():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    name = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,8}([-_.][A-Za-z0-9]{1,5}){0,2}", fullmatch=True)
    version = st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){0,3}(\+[a-z0-9]{1,6})?", fullmatch=True)

    @hypothesis.settings(max_examples=40, deadline=None)
    @hypothesis.given(st.dictionaries(name, version, max_size=8))
    def prop(pins):
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "requirements.lock"
            path.write_text("# input-sha256: x\n" + "".join(f"{n}=={v}\n    # via y\n" for n, v in pins.items()))
            got = lock.read_pins(path)
        want = {}
        for n, v in pins.items():
            want[lock.normalize(n)] = v  # the last of two names that normalize alike wins, as in the file
        assert got == want

    prop()


def test_compare_installed_reports_missing_and_other_versions():
    pins = {"numpy": "2.4.6", "torch": "2.13.0+cpu", "peft": "0.21.2"}
    # the CUDA build of the locked torch version counts as the locked torch; extra packages are not compared
    assert lock.compare_installed(pins, {"numpy": "2.4.6", "torch": "2.13.0+cu130", "peft": "0.21.2", "uv": "1"}) == []
    problems = lock.compare_installed(pins, {"numpy": "2.4.5", "torch": "2.14.1"})
    assert problems == ["numpy: locked 2.4.6, installed 2.4.5", "peft: locked 0.21.2, not installed",
                        "torch: locked 2.13.0+cpu, installed 2.14.1"]


def test_installed_environment_holds_the_lock_it_was_built_from():
    """Two installs from one lock are identical: every locked package is here at its locked version."""
    info = lock_info()
    if info is None:
        pytest.skip(f"{sys.prefix} was not installed from a lock by setup.sh (no {LOCK_MARKER})")
    if info["state"] != "matches":
        pytest.skip(f"{info['lock']} {info['state']} since this venv was installed; `make setup` re-installs it")
    problems = lock.compare_installed(lock.read_pins(Path(info["lock"])), lock.installed_versions())
    assert problems == []


def test_strip_members_drops_editables_and_temp_paths(tmp_path):
    src = tmp_path / "requirements.in"
    text = (f"# This file was autogenerated by uv via the following command:\n#    make lock\n"
            f"-e {tmp_path}/mert\n    # via -r {src}\n-e {tmp_path}/shared\n    # via\n    #   -r {src}\n    #   mert\n"
            f"accelerate==1.15.0\n    # via mert\nnumpy==2.4.6\n    # via -r {src}\n")
    out = lock.strip_members(text, src)
    assert out == "accelerate==1.15.0\n    # via mert\nnumpy==2.4.6\n    # via -r requirements.in\n"


@dataclass
class _Cfg:
    lr: float = 0.1


def test_run_folder_env_txt_names_the_lock_and_its_hash(tmp_path, monkeypatch):
    import hashlib

    venv = tmp_path / "venv"
    venv.mkdir()
    lk = tmp_path / "requirements.lock"
    lk.write_text("# input-sha256: abc\nnumpy==2.4.6\n")
    sha = hashlib.sha256(lk.read_bytes()).hexdigest()
    marker = f"lock={lk}\nsha256={sha}\ninput-sha256=abc\ntorch-build=cpu\ninstaller=uv 0.13.9\n"
    (venv / LOCK_MARKER).write_text(marker)
    monkeypatch.setattr(sys, "prefix", str(venv))

    run = prepare_run_dir(tmp_path / "run", _Cfg())
    env = (run / "env.txt").read_text()
    assert f"lock: {lk}\n" in env
    assert f"lock-sha256: {sha} (matches; input-sha256 abc, torch build cpu, installed by uv 0.13.9)" in env

    lk.write_text("# input-sha256: abc\nnumpy==2.4.7\n")  # the lock moved on after this venv was installed
    assert "(changed;" in env_info()
    lk.unlink()
    assert lock_info()["state"] == "missing"
    (venv / LOCK_MARKER).unlink()
    assert "lock: none" in env_info()


@pytest.mark.slow
def test_setup_installs_exactly_the_lock_into_a_fresh_venv(tmp_path):
    """`make -C yue install` from nothing: the venv holds every pin of yue's lock and records the lock's sha256; a
    second run is a no-op (stamp)."""
    import hashlib
    import os

    venv = tmp_path / "venv"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUSIC_SKIP_APT": "1"}
    env.pop("VENV", None)
    cmd = ["bash", str(SCRIPTS / "setup.sh"), "--venv", str(venv), "--lock", str(REPO / "yue" / lock.LOCK_NAME),
           str(REPO / "shared"), str(REPO / "yue")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    py = str(venv / "bin" / "python")
    v = subprocess.run([py, str(SCRIPTS / "lock.py"), "verify", str(REPO / "yue" / lock.LOCK_NAME)],
                       capture_output=True, text=True, timeout=120)
    assert v.returncode == 0, v.stderr
    marker = dict(ln.split("=", 1) for ln in (venv / LOCK_MARKER).read_text().splitlines())
    assert marker["sha256"] == hashlib.sha256((REPO / "yue" / lock.LOCK_NAME).read_bytes()).hexdigest()
    assert marker["torch-build"] in ("cpu", "cuda")
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "[setup]" not in again.stdout + again.stderr  # the stamp: nothing re-installed
