#!/usr/bin/env bash
# Set up everything a project needs on a fresh Debian machine; idempotent and quick when already done.
#
#   bash shared/scripts/setup.sh --venv .venv --lock requirements.lock shared mert chatmusician yue
#
# 1. System tools (fluidsynth + GM soundfont, abcmidi, festival + voice, sox) with apt-get when missing
#    (as root; otherwise a message names what to install and the tests that need them skip).
# 2. One virtual environment holding exactly the lock (shared/scripts/lock.py writes it; `make lock`), installed by uv:
#    torch at the locked version: its CPU build on machines without a working nvidia-smi (the local wheel folder,
#    else the PyTorch CPU index; never PyPI's multi-GB CUDA build), its CUDA build where nvidia-smi works
#    (shared/locks/torch-cuda.lock: PyPI's build with its nvidia-* wheels); TORCH_SPEC overrides both. Then every
#    other locked package with --no-deps, DeepSpeed built with DS_BUILD_OPS=0 --no-build-isolation against that
#    torch, then the given package folders editable (--no-deps), then `uv pip check`.
#    uv is $UV, else found on PATH, else installed with pip (lock.py uv); when that fails, pip installs the same
#    pins (the old, slower path). MUSIC_WHEELS_DIR: the local wheel folder (default /opt/wheels).
#    Without a lock file the old way runs: pip and the pyprojects' version ranges.
# The venv records which lock it holds in $VENV/.musiccore-lock (musiccore.runs.env_info copies it into env.txt).
# A stamp holding the hash of these scripts, the pyprojects, the lock and the torch build skips step 2 when nothing
# changed.
set -euo pipefail

VENV=.venv
LOCK=
PKGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) VENV="$2"; shift 2 ;;
    --lock) LOCK="$2"; shift 2 ;;
    *) PKGS+=("$(cd "$1" && pwd)"); shift ;;
  esac
done
[ ${#PKGS[@]} -gt 0 ] || { echo "usage: setup.sh --venv DIR [--lock FILE] PACKAGE_DIR..." >&2; exit 2; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -n "$LOCK" ]; then
  if [ -f "$LOCK" ]; then
    LOCK="$(cd "$(dirname "$LOCK")" && pwd)/$(basename "$LOCK")"
  else
    echo "[setup] no lock file $LOCK (make lock writes it): installing from the pyproject version ranges" >&2
    LOCK=
  fi
fi

# ---------------------------------------------------------------- system tools
bash "$HERE/install-system.sh"

# ---------------------------------------------------------------- python environment
PY=${PYTHON:-python3}
# Which torch build this machine gets: CUDA only where a GPU answers (nvidia-smi -L), else the CPU build.
if [ -n "${TORCH_SPEC:-}" ]; then BUILD="spec:$TORCH_SPEC"
elif nvidia-smi -L >/dev/null 2>&1; then BUILD=cuda
else BUILD=cpu; fi

stamp_of() { { cat "$HERE/setup.sh" "$HERE/install-system.sh" "$@"; echo "$BUILD"; } | sha1sum | cut -c1-16; }
pyprojects=()
for p in "${PKGS[@]}"; do pyprojects+=("$p/pyproject.toml"); done
want=$(stamp_of "${pyprojects[@]}" ${LOCK:+"$LOCK"})
stamp="$VENV/.setup-$(printf '%s\n' "${PKGS[@]}" | sha1sum | cut -c1-8)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
quiet() { "$@" 2>&1 | grep -v -e "is ignored: it is neither" -e "^$" || true; return "${PIPESTATUS[0]}"; }

# ---------------------------------------------------------------- old way: pip and version ranges (no lock)
install_ranges() {
  local PIP=("$VPY" -m pip install -q)
  quiet "$VPY" -m pip install -q --upgrade pip
  if ! "$VPY" -c "import torch" 2>/dev/null; then
    if [ -n "${TORCH_SPEC:-}" ]; then
      quiet "${PIP[@]}" "$TORCH_SPEC"
    elif [ "$BUILD" = cuda ]; then
      quiet "${PIP[@]}" "torch>=2.4"
    else
      # CPU machine: a local wheelhouse (find-links) first, else the official CPU index.
      echo "[setup] installing the CPU build of torch"
      quiet "${PIP[@]}" --no-index --no-deps "torch>=2.4,<2.15" \
        || quiet "${PIP[@]}" --no-deps "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu
      quiet "${PIP[@]}" "torch>=2.4"
    fi
  fi
  if grep -q '"deepspeed' "${pyprojects[@]}" && ! "$VPY" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('deepspeed') is None)"; then
    # Only an sdist exists; its setup imports torch, so build against ours and compile no ops ahead of time.
    echo "[setup] installing deepspeed (DS_BUILD_OPS=0)"
    DS_BUILD_OPS=0 quiet "${PIP[@]}" --no-build-isolation "deepspeed>=0.16,<1" ninja py-cpuinfo hjson msgpack
  fi
  local args=()
  for p in "${PKGS[@]}"; do args+=(-e "$p[dev]"); done
  echo "[setup] installing ${PKGS[*]##*/} into $VENV"
  quiet "${PIP[@]}" "${args[@]}"
}

# ---------------------------------------------------------------- the lock, with uv (or pip)
install_lock() {
  local torch_pin torch_ver ds_pin inst editables=() p
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/setup-lock-XXXXXX")   # global: the EXIT trap removes it
  trap 'rm -rf "$tmp"' EXIT
  if ! python3 "$HERE/lock.py" check "$(dirname "$LOCK")" >"$tmp/check" 2>&1; then
    echo "[setup] WARNING: $(sed 's/^lock-check: //' "$tmp/check")" >&2
    echo "[setup] installing the lock as it is; \`make lock\` updates it (CI fails until then)" >&2
  fi
  local pyv lockpy
  pyv=$("$VPY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  lockpy=$(sed -n 's/^# resolved-for: python \([0-9.]*\),.*/\1/p' "$LOCK")
  if [ -n "$lockpy" ] && [ "$pyv" != "$lockpy" ]; then
    echo "[setup] WARNING: $VENV has Python $pyv, the lock was resolved for $lockpy (wheels may not fit)" >&2
  fi
  torch_pin=$(grep -i -m1 '^torch==' "$LOCK" | awk '{print $1}' || true)
  ds_pin=$(grep -i -m1 '^deepspeed==' "$LOCK" | awk '{print $1}' || true)
  grep -v -i -E '^(torch|deepspeed)==' "$LOCK" >"$tmp/rest.txt"
  torch_ver=${torch_pin#*==}; torch_ver=${torch_ver%%+*}   # 2.13.0+cpu -> 2.13.0
  for p in "${PKGS[@]}"; do editables+=(-e "$p"); done

  local UVBIN="" TORCH_SRC=()
  if UVBIN=$("$VPY" "$HERE/lock.py" uv 2>"$tmp/uv.err"); then   # the venv's pip: no PEP 668 block
    inst=("$UVBIN" pip install -q --python "$VPY")
    echo "[setup] installing $LOCK into $VENV with $("$UVBIN" --version | cut -d' ' -f1-2) (torch: $BUILD)"
  else
    echo "[setup] WARNING: uv is unavailable ($(tail -1 "$tmp/uv.err"))" >&2
    echo "[setup] falling back to pip for the same pins (the old, slower path)" >&2
    UVBIN=""
    quiet "$VPY" -m pip install -q --upgrade pip
    inst=("$VPY" -m pip install -q --disable-pip-version-check)
  fi

  # torch first (its version from the lock, its build per machine); deepspeed's build imports it.
  if [ -n "$torch_pin" ]; then
    if [ "$BUILD" = cpu ]; then
      local wheels="${MUSIC_WHEELS_DIR:-/opt/wheels}"
      if ls "$wheels"/torch-"$torch_ver"+cpu-*.whl >/dev/null 2>&1; then
        TORCH_SRC=(--find-links "$wheels")
        [ -n "$UVBIN" ] || TORCH_SRC+=(--no-index)   # pip: only the local wheel, never a build from the mirrors
      else
        TORCH_SRC=(--index-url https://download.pytorch.org/whl/cpu)
      fi
      quiet "${inst[@]}" --no-deps "${TORCH_SRC[@]}" "torch==$torch_ver+cpu"
    elif [ "$BUILD" = cuda ]; then
      # PyPI's Linux build of this version is the CUDA one: torch-cuda.lock pins it with its nvidia-*/triton wheels
      # (the lock's other pins are installed over it next). --reinstall: a CPU torch of that version satisfies ==.
      local cuda_lock="$HERE/../locks/torch-cuda.lock"
      if [ -f "$cuda_lock" ] && grep -q "^torch==$torch_ver\$" "$cuda_lock"; then
        local again=(--force-reinstall)
        [ -z "$UVBIN" ] || again=(--reinstall-package torch)
        quiet "${inst[@]}" --no-deps "${again[@]}" -r "$cuda_lock"
      else
        echo "[setup] WARNING: no torch-cuda.lock for torch $torch_ver; resolving its CUDA build on PyPI" >&2
        quiet "${inst[@]}" "torch==$torch_ver"
      fi
    else
      quiet "${inst[@]}" "$TORCH_SPEC"
    fi
  fi
  quiet "${inst[@]}" --no-deps -r "$tmp/rest.txt"
  if [ -n "$ds_pin" ]; then
    # Only an sdist exists; its setup imports torch, so build against ours and compile no ops ahead of time.
    DS_BUILD_OPS=0 quiet "${inst[@]}" --no-deps --no-build-isolation "$ds_pin"
  fi
  quiet "${inst[@]}" --no-deps "${editables[@]}"
  if [ -n "$UVBIN" ]; then
    "$UVBIN" pip check -q --python "$VPY" >"$tmp/pipcheck" 2>&1 || { cat "$tmp/pipcheck" >&2; return 1; }
  fi
  {
    echo "lock=$LOCK"
    echo "sha256=$(sha256sum "$LOCK" | cut -d' ' -f1)"
    echo "input-sha256=$(python3 "$HERE/lock.py" hash "$(dirname "$LOCK")" 2>/dev/null || echo unknown)"
    echo "torch-build=$BUILD"
    if [ -n "$UVBIN" ]; then echo "installer=$("$UVBIN" --version)"; else echo "installer=pip"; fi
  } >"$VENV/.musiccore-lock"
}

if [ -n "$LOCK" ]; then
  install_lock
else
  rm -f "$VENV/.musiccore-lock"
  install_ranges
fi
echo "$want" > "$stamp"
echo "[setup] done"
