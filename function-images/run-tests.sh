#!/usr/bin/env bash
# Runs the function-images test suite. Needs ffmpeg/ffprobe (Debian: apt-get install -y
# ffmpeg fonts-dejavu-core) and python3; installs the pip test deps when missing.
# Real clips are read from ../shared/data/videos beside the repo, or $VFLOW_TEST_VIDEOS.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for tool in ffmpeg ffprobe python3; do
  command -v "$tool" >/dev/null || { echo "run-tests.sh: $tool is missing (apt-get install -y ffmpeg python3)" >&2; exit 1; }
done
if ! python3 - <<'PY' 2>/dev/null
import pytest, yaml, numpy, cv2
assert hasattr(cv2, "CascadeClassifier")
PY
then
  # OpenCV 5 dropped the Haar cascades that detect's CPU fallback uses: stay on 4.x.
  python3 -m pip install -q pytest pyyaml numpy "opencv-python-headless<5"
fi
# GPU tests run only where asked (`run-tests.sh --gpu` on the GPU machine); CI has none.
if [[ "${1:-}" == "--gpu" ]]; then
  shift
  exec python3 -m pytest -q "$here/tests" -m gpu "$@"
fi
exec python3 -m pytest -q "$here/tests" -m "not gpu" "$@"
