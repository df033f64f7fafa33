#!/usr/bin/env bash
# Runs the function-images test suite in the project's venv (function-images/pyenv.sh:
# the pinned packages of requirements.txt). Needs ffmpeg/ffprobe (Debian: apt-get
# install -y ffmpeg fonts-dejavu-core) and python3 with venv.
# Real clips are read from ../shared/data/videos beside the repo, or $VFLOW_TEST_VIDEOS.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for tool in ffmpeg ffprobe python3; do
  command -v "$tool" >/dev/null || { echo "run-tests.sh: $tool is missing (apt-get install -y ffmpeg python3)" >&2; exit 1; }
done
venv="$("$here/pyenv.sh")"
# The tests start vflow-fn (#!/usr/bin/env python3): it must find the venv's python3.
export PATH="$venv/bin:$PATH"
# GPU tests run only where asked (`run-tests.sh --gpu` on the GPU machine); CI has none.
if [[ "${1:-}" == "--gpu" ]]; then
  shift
  exec python3 -m pytest -q "$here/tests" -m gpu "$@"
fi
exec python3 -m pytest -q "$here/tests" -m "not gpu" "$@"
