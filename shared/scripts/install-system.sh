#!/usr/bin/env bash
# Install the Debian tools the projects use, when missing. Root: apt-get. Not root: say what to install.
# MUSIC_SKIP_APT=1 skips this step (tests that need a missing tool then skip).
set -uo pipefail
[ "${MUSIC_SKIP_APT:-0}" = 1 ] && exit 0

declare -A NEED=(
  [fluidsynth]=fluidsynth
  [abc2midi]=abcmidi
  [midi2abc]=abcmidi
  [abcm2ps]=abcm2ps
  [text2wave]="festival festvox-kallpc16k"
  [sox]=sox
)
missing=()
for tool in "${!NEED[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=(${NEED[$tool]})
done
[ -f /usr/share/sounds/sf2/TimGM6mb.sf2 ] || missing+=(timgm6mb-soundfont)
[ -d /usr/share/festival/voices/english/kal_diphone ] || missing+=(festvox-kallpc16k)
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}") >/tmp/musiccore-apt.log 2>&1 \
    || { echo "[setup] apt-get failed, see /tmp/musiccore-apt.log" >&2; tail -5 /tmp/musiccore-apt.log >&2; exit 1; }
else
  echo "[setup] missing system tools; install them with:" >&2
  echo "    sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  echo "[setup] continuing: tests that need them will skip." >&2
fi
