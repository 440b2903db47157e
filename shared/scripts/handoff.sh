#!/usr/bin/env bash
# Prove a project can be handed to another team on its own: copy <project>/ and shared/ (nothing else) into a
# temporary folder, build a fresh environment there from the project's own lock (<project>/requirements.lock, the
# same pins as in the monorepo's CI), and pass the project's tests.
#
#   bash shared/scripts/handoff.sh mert        (or: make -C mert handoff)
#
# KEEP=1 keeps the temporary folder for inspection.
set -euo pipefail
PROJECT=${1:?usage: handoff.sh <project>}
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[ -d "$REPO/$PROJECT" ] || { echo "handoff: no project folder $REPO/$PROJECT" >&2; exit 2; }
TMP=$(mktemp -d "${TMPDIR:-/tmp}/handoff-$PROJECT-XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$TMP"' EXIT

copy() {  # copy a folder without environments, runs, caches or build leftovers
  tar -C "$REPO" --exclude=.venv --exclude=runs --exclude=__pycache__ --exclude='*.egg-info' --exclude=.pytest_cache \
      --exclude=build --exclude=dist -cf - "$1" | tar -C "$TMP" -xf -
}
copy "$PROJECT"
copy shared
echo "[handoff] $PROJECT + shared copied to $TMP ($(du -sh "$TMP" | cut -f1)); building a fresh environment there"
# The copy has no .git, so the project's Makefile builds its own $TMP/$PROJECT/.venv from $PROJECT/requirements.lock
# (make test runs lock-check first: a lock older than the pyprojects fails here as in CI).
[ -f "$TMP/$PROJECT/requirements.lock" ] || echo "[handoff] WARNING: $PROJECT has no requirements.lock (make lock)" >&2
unset VENV
make -C "$TMP/$PROJECT" test
echo "[handoff] $PROJECT passes its tests outside the monorepo"
