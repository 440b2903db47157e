#!/usr/bin/env bash
# Set up everything a project needs on a fresh Debian machine; idempotent and quick when already done.
#
#   bash shared/scripts/setup.sh --venv .venv shared mert chatmusician yue
#
# 1. System tools (fluidsynth + GM soundfont, abcmidi, festival + voice, sox) with apt-get when missing
#    (as root; otherwise a message names what to install and the tests that need them skip).
# 2. One virtual environment: torch first (the CPU build on machines without a GPU, so nothing pulls a
#    multi-GB CUDA wheel; TORCH_SPEC overrides), DeepSpeed without compiled ops when a project asks for it,
#    then every given package folder installed editable with its dev extras.
# A stamp holding the hash of the pyproject files skips step 2 when nothing changed.
set -euo pipefail

VENV=.venv
PKGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) VENV="$2"; shift 2 ;;
    *) PKGS+=("$(cd "$1" && pwd)"); shift ;;
  esac
done
[ ${#PKGS[@]} -gt 0 ] || { echo "usage: setup.sh --venv DIR PACKAGE_DIR..." >&2; exit 2; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# ---------------------------------------------------------------- system tools
bash "$HERE/install-system.sh"

# ---------------------------------------------------------------- python environment
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install -q)

stamp_of() { cat "$HERE/setup.sh" "$HERE/install-system.sh" "$@" | sha1sum | cut -c1-16; }
pyprojects=()
for p in "${PKGS[@]}"; do pyprojects+=("$p/pyproject.toml"); done
want=$(stamp_of "${pyprojects[@]}")
stamp="$VENV/.setup-$(printf '%s\n' "${PKGS[@]}" | sha1sum | cut -c1-8)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

quiet() { "$@" 2>&1 | grep -v -e "is ignored: it is neither" -e "^$" || true; return "${PIPESTATUS[0]}"; }

if ! "$VPY" -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    quiet "${PIP[@]}" "$TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null 2>&1; then
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

args=()
for p in "${PKGS[@]}"; do args+=(-e "$p[dev]"); done
echo "[setup] installing ${PKGS[*]##*/} into $VENV"
quiet "${PIP[@]}" "${args[@]}"
echo "$want" > "$stamp"
echo "[setup] done"
