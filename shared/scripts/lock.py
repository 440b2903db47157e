#!/usr/bin/env python3
"""Lock files of the monorepo: write them (``make lock``), check them against the pyprojects (``make lock-check``).

A *lock target* is a folder whose ``requirements.lock`` pins every third-party package of one environment:

- a project folder (``mert/``, ``chatmusician/``, ``yue/``): the project and ``../shared`` with their dev extras, the
  environment ``make -C <project> install`` and ``make -C <project> handoff`` build;
- the repository root: ``shared/`` and every project with their dev extras, the root ``.venv`` of ``make setup``.

The members themselves are installed editable by ``setup.sh`` and are not listed. The lock is written by
``uv pip compile`` for CPython 3.11 on x86_64 Linux (manylinux_2_28), with torch pinned by
``shared/locks/constraints.txt`` and resolved to its CPU build (no CUDA wheel in any project lock). Where ``nvidia-smi``
works, ``setup.sh`` first installs ``shared/locks/torch-cuda.lock`` instead: the same torch version's CUDA build from
PyPI with its nvidia-*/triton wheels, locked once (it depends on the torch pin only). The format is pip's requirements
format, so the pip fallback installs the very same pins.

Each lock starts with a header holding ``input-sha256``: the hash of what decides its content (the members' names,
``requires-python``, dependencies and optional dependencies, the torch constraint and the lock settings). ``check``
recomputes it, so CI fails when a pyproject's dependencies changed without ``make lock``; edits that cannot change
the lock (descriptions, pytest options) do not count.

    python3 shared/scripts/lock.py compile [--upgrade] [TARGET ...]   # default: the root and every project
    python3 shared/scripts/lock.py check [TARGET ...]                 # exit 1 naming each stale or missing lock
    python3 shared/scripts/lock.py uv                                 # print a uv binary (bootstrapped when needed)
    .venv/bin/python shared/scripts/lock.py verify requirements.lock  # exit 1 unless .venv holds every locked pin
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

LOCK_NAME = "requirements.lock"
HERE = Path(__file__).resolve().parent
SHARED = HERE.parent
CONSTRAINTS = SHARED / "locks" / "constraints.txt"
#: torch's CUDA build (PyPI) with its nvidia-*/triton wheels: what setup.sh installs instead of the CPU torch on GPU
#: machines. The same for every target (it depends on the torch pin only).
CUDA_LOCK = SHARED / "locks" / "torch-cuda.lock"
UV_VERSION = "0.13.9"
#: What every lock is resolved for (part of the input hash: changing it makes every lock stale).
SETTINGS = {"format": 1, "python": "3.11", "platform": "x86_64-manylinux_2_28", "extras": ["dev"]}
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
LOCAL_WHEELS = Path(os.environ.get("MUSIC_WHEELS_DIR", "/opt/wheels"))


class LockError(RuntimeError):
    """A lock target or a pyproject that cannot be used (the message names the file and the reason)."""


def members(target: Path) -> list[Path]:
    """Package folders an environment of ``target`` installs editable: [shared, project] for a project folder, shared
    plus every folder beside it with a pyproject.toml for the repository root (shared first, then sorted)."""
    target = target.resolve()
    if (target / "pyproject.toml").is_file():
        shared = target.parent / "shared"
        if target == shared:
            raise LockError(f"{target}: shared/ has no lock of its own (it is a member of every lock)")
        if not (shared / "pyproject.toml").is_file():
            raise LockError(f"{target}: no ../shared/pyproject.toml beside the project")
        return [shared, target]
    if (target / "shared" / "pyproject.toml").is_file():
        projects = sorted(p.parent for p in target.glob("*/pyproject.toml") if p.parent.name != "shared")
        return [target / "shared", *projects]
    raise LockError(f"{target}: neither a project folder (pyproject.toml) nor the repository root (shared/)")


def all_targets(root: Path) -> list[Path]:
    """The repository root and every project folder (a folder with a pyproject.toml, except shared/)."""
    return [root, *(t for t in members(root)[1:])]


def dependency_tables(pyproject: Path) -> dict:
    """The parts of a pyproject.toml that decide the lock: name, requires-python, dependencies, optional extras."""
    try:
        data = tomllib.loads(pyproject.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise LockError(f"{pyproject}: cannot read: {e}") from e
    project = data.get("project")
    if not isinstance(project, dict) or "name" not in project:
        raise LockError(f"{pyproject}: no [project] table with a name")
    return {
        "name": project["name"],
        "requires-python": project.get("requires-python", ""),
        "dependencies": sorted(project.get("dependencies", [])),
        "optional-dependencies": {k: sorted(v) for k, v in sorted(project.get("optional-dependencies", {}).items())},
    }


def constraint_lines(path: Path = CONSTRAINTS) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def input_hash(target: Path) -> str:
    """sha256 of everything that decides the lock of ``target`` (see the module docstring)."""
    blob = {
        "settings": SETTINGS,
        "constraints": constraint_lines(),
        "members": [dependency_tables(m / "pyproject.toml") for m in members(target)],
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def cuda_input_hash() -> str:
    """sha256 of what decides ``torch-cuda.lock``: the torch pin and the lock settings."""
    blob = {"settings": SETTINGS, "constraints": constraint_lines(), "build": "cuda"}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def read_header(lock: Path) -> dict[str, str]:
    """``key: value`` pairs of the ``# key: value`` lines at the top of a lock."""
    out: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        if not line.startswith("#"):
            break
        m = re.match(r"#\s*([\w-]+):\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def read_pins(lock: Path) -> dict[str, str]:
    """``{normalized name: version}`` of every ``name==version`` line of a lock (the torch local tag kept)."""
    pins: dict[str, str] = {}
    for n, line in enumerate(lock.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)(\s*;.*)?", line)
        if not m:
            raise LockError(f"{lock}:{n}: not an exact pin 'name==version': {line!r}")
        pins[normalize(m.group(1))] = m.group(3)
    return pins


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def public_version(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``: the build tag says CPU or CUDA, which setup picks per machine."""
    return version.split("+", 1)[0]


def compare_installed(pins: dict[str, str], installed: dict[str, str]) -> list[str]:
    """One message per locked package that is missing from ``installed`` or has another version there.

    Both map normalized names to versions; local version tags (``+cpu``, ``+cu128``) are ignored, packages installed
    beyond the lock (the editable members, uv, pip, a GPU torch's nvidia-* wheels) are not compared.
    """
    problems = []
    for name, want in sorted(pins.items()):
        have = installed.get(name)
        if have is None:
            problems.append(f"{name}: locked {want}, not installed")
        elif public_version(have) != public_version(want):
            problems.append(f"{name}: locked {want}, installed {have}")
    return problems


def installed_versions(path: list[str] | None = None) -> dict[str, str]:
    """``{normalized name: version}`` of the distributions importable from ``path`` (default: sys.path)."""
    from importlib import metadata

    return {normalize(d.metadata["Name"]): d.version for d in metadata.distributions(path=path or sys.path)
            if d.metadata["Name"]}


def check(targets: list[Path]) -> list[str]:
    """One message per stale or missing lock among ``targets`` (empty: all locks match their pyprojects)."""
    problems = []
    if not CUDA_LOCK.is_file():
        problems.append(f"{CUDA_LOCK}: missing; run `make lock`")
    elif read_header(CUDA_LOCK).get("input-sha256") != cuda_input_hash():
        problems.append(f"{CUDA_LOCK}: stale: {CONSTRAINTS.name} changed since it was written; run `make lock`")
    for t in targets:
        lock = Path(os.path.relpath(t / LOCK_NAME))
        if not lock.is_file():
            problems.append(f"{lock}: missing; run `make lock`")
            continue
        have = read_header(lock).get("input-sha256", "")
        want = input_hash(t)
        if have != want:
            names = " ".join(os.path.relpath(m / "pyproject.toml") for m in members(t))
            problems.append(
                f"{lock}: stale (input-sha256 {have[:12] or 'missing'} != {want[:12]}): the dependencies in {names} "
                f"or shared/locks/{CONSTRAINTS.name} changed since it was written; run `make lock` and commit the lock"
            )
    return problems


def find_uv(exact: bool = False) -> str:
    """A uv binary: $UV, else uv on PATH or beside this Python, else uv==UV_VERSION installed by pip into
    $MUSIC_UV_DIR (default ~/.cache/musiccore/uv-<version>). ``exact`` (writing locks): only uv UV_VERSION, so
    ``make lock`` output does not depend on whichever uv a machine has. Raises LockError when none can be had."""
    if os.environ.get("UV"):
        if not os.access(os.environ["UV"], os.X_OK):
            raise LockError(f"UV={os.environ['UV']} is not an executable file")
        return os.environ["UV"]
    for cand in (shutil.which("uv"), str(Path(sys.executable).parent / "uv")):
        if cand and os.access(cand, os.X_OK):
            if not exact:
                return cand
            r = subprocess.run([cand, "--version"], capture_output=True, text=True)
            if r.stdout.split()[1:2] == [UV_VERSION]:
                return cand
    cache = Path(os.environ.get("MUSIC_CACHE_DIR", Path.home() / ".cache" / "musiccore")).expanduser()
    boot = Path(os.environ.get("MUSIC_UV_DIR", cache / f"uv-{UV_VERSION}")).expanduser()
    uv = boot / "bin" / "uv"
    if not uv.is_file():
        tmp = Path(tempfile.mkdtemp(prefix=".uv-", dir=boot.parent if boot.parent.exists() else None))
        r = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(tmp),
             f"uv=={UV_VERSION}"], capture_output=True, text=True)
        if r.returncode != 0 or not (tmp / "bin" / "uv").is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-3:])
            raise LockError(f"cannot install uv=={UV_VERSION} with pip: {tail}")
        boot.parent.mkdir(parents=True, exist_ok=True)
        if boot.exists():
            shutil.rmtree(boot)
        os.replace(tmp, boot)  # whole folder at once: a killed install leaves no half-bootstrapped uv
    return str(uv)


def torch_sources() -> list[str]:
    """Where the CPU build of torch comes from: the local wheel folder when it holds one, else the CPU index."""
    if any(LOCAL_WHEELS.glob("torch-*+cpu-*.whl")):
        return ["--find-links", str(LOCAL_WHEELS)]
    return ["--extra-index-url", CPU_TORCH_INDEX, "--index-strategy", "unsafe-best-match"]


def compile_lock(target: Path, uv: str, upgrade: bool = False) -> Path:
    """Write ``target/requirements.lock`` with ``uv pip compile`` (keeping existing pins unless ``upgrade``)."""
    target = target.resolve()
    lock = target / LOCK_NAME
    mem = members(target)
    digest = input_hash(target)
    with tempfile.TemporaryDirectory(prefix="lock-") as tmp:
        src = Path(tmp) / "requirements.in"
        src.write_text("".join(f"-e {m}[{','.join(SETTINGS['extras'])}]\n" for m in mem))
        out = Path(tmp) / LOCK_NAME
        if lock.is_file() and not upgrade:
            shutil.copy(lock, out)  # uv keeps the pins of the output file that still fit: minimal updates
        cmd = [uv, "pip", "compile", "-q", str(src), "-c", str(CONSTRAINTS), "-o", str(out),
               "--python-version", SETTINGS["python"], "--python-platform", SETTINGS["platform"],
               "--custom-compile-command", "make lock", *torch_sources(), *(["--upgrade"] if upgrade else [])]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        if r.returncode != 0:
            raise LockError(f"{lock}: uv pip compile failed:\n{r.stderr.strip()}")
        body = strip_members(out.read_text(), src)
    names = " ".join(dependency_tables(m / "pyproject.toml")["name"] for m in mem)
    header = (
        f"# Lock of {'the monorepo environment' if len(mem) > 2 else mem[1].name + ' (with shared/)'}: "
        "written by `make lock` (shared/scripts/lock.py); do not edit.\n"
        f"# members: {names} (installed editable with their dev extras by setup.sh; not listed below)\n"
        f"# input-sha256: {digest}\n"
        f"# resolved-for: python {SETTINGS['python']}, {SETTINGS['platform']}; torch pinned by "
        f"shared/locks/{CONSTRAINTS.name} (its CPU build here; where nvidia-smi works setup.sh installs "
        f"shared/locks/{CUDA_LOCK.name} instead)\n"
    )
    fd, tmp_lock = tempfile.mkstemp(prefix=f".{LOCK_NAME}.", dir=target)
    with os.fdopen(fd, "w") as f:
        f.write(header + body)
    os.replace(tmp_lock, lock)
    return lock


def compile_cuda_lock(uv: str, upgrade: bool = False) -> Path:
    """Write ``shared/locks/torch-cuda.lock``: the pinned torch version resolved on PyPI (its Linux build is the CUDA
    one) with its dependencies. Resolving reads metadata only: nothing of the multi-GB wheels is downloaded."""
    with tempfile.TemporaryDirectory(prefix="lock-") as tmp:
        out = Path(tmp) / CUDA_LOCK.name
        if CUDA_LOCK.is_file() and not upgrade:
            shutil.copy(CUDA_LOCK, out)
        cmd = [uv, "pip", "compile", "-q", str(CONSTRAINTS), "-o", str(out), "--no-annotate",
               "--python-version", SETTINGS["python"], "--python-platform", SETTINGS["platform"],
               "--custom-compile-command", "make lock", *(["--upgrade"] if upgrade else [])]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        if r.returncode != 0:
            raise LockError(f"{CUDA_LOCK}: uv pip compile failed:\n{r.stderr.strip()}")
        body = strip_members(out.read_text(), CONSTRAINTS)
    if not re.search(r"^nvidia-", body, re.M):
        raise LockError(f"{CUDA_LOCK}: PyPI's torch resolved without nvidia-* wheels; not a CUDA build:\n{body}")
    header = (
        "# torch's CUDA build for GPU machines: written by `make lock` (shared/scripts/lock.py); do not edit.\n"
        "# setup.sh installs it (--no-deps) where nvidia-smi works, then the project lock's other pins over it.\n"
        f"# input-sha256: {cuda_input_hash()}\n"
        f"# resolved-for: python {SETTINGS['python']}, {SETTINGS['platform']}, PyPI\n"
    )
    fd, tmp_lock = tempfile.mkstemp(prefix=f".{CUDA_LOCK.name}.", dir=CUDA_LOCK.parent)
    with os.fdopen(fd, "w") as f:
        f.write(header + body)
    os.replace(tmp_lock, CUDA_LOCK)
    return CUDA_LOCK


def strip_members(text: str, src: Path) -> str:
    """uv's output without its own header, the editable members and their annotation lines; the temporary input
    file's path in annotations becomes ``requirements.in``."""
    out, skip = [], False
    lines = text.splitlines()
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        i += 1  # uv's own header ("autogenerated by uv via ... make lock"); annotations are indented
    for line in lines[i:]:
        if line.startswith("-e "):
            skip = True
            continue
        if skip and line.startswith("    "):
            continue
        skip = False
        out.append(line.replace(str(src), "requirements.in"))
    return "\n".join(out).strip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    root = SHARED.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compile", help="write the locks of the given targets (default: root and every project)")
    c.add_argument("targets", nargs="*", type=Path)
    c.add_argument("--upgrade", action="store_true", help="newest versions the pyprojects allow, not the old pins")
    k = sub.add_parser("check", help="exit 1 when a lock is missing or older than its pyprojects")
    k.add_argument("targets", nargs="*", type=Path)
    v = sub.add_parser("verify", help="exit 1 unless the running Python has every locked package at its version")
    v.add_argument("lock", type=Path)
    sub.add_parser("uv", help="print the path of a uv binary, installing uv with pip when none is found")
    h = sub.add_parser("hash", help="print the input hash of a target")
    h.add_argument("target", type=Path)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "uv":
            print(find_uv())
        elif args.cmd == "verify":
            problems = compare_installed(read_pins(args.lock), installed_versions())
            for p in problems:
                print(f"lock-verify: {args.lock}: {p}", file=sys.stderr)
            if problems:
                return 1
            print(f"lock-verify: {sys.prefix} holds every package of {args.lock} at its locked version")
        elif args.cmd == "hash":
            print(input_hash(args.target))
        elif args.cmd == "check":
            targets = args.targets or all_targets(root)
            problems = check(targets)
            for p in problems:
                print(f"lock-check: {p}", file=sys.stderr)
            if problems:
                return 1
            print(f"lock-check: {len(targets)} lock(s) match their pyprojects")
        else:
            uv = find_uv(exact=True)
            lock = compile_cuda_lock(uv, upgrade=args.upgrade)
            print(f"lock: wrote {lock} ({len(read_pins(lock))} pins)")
            for t in args.targets or all_targets(root):
                lock = compile_lock(t, uv, upgrade=args.upgrade)
                print(f"lock: wrote {lock} ({len(read_pins(lock))} pins)")
    except LockError as e:
        print(f"lock: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
