"""Shared fixtures: the vflow-fn runner, generated clips and the real clips in shared/."""
import json
import os
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FN = HERE.parent / "vflow-fn"
REPO = HERE.parent.parent


class Result:
    def __init__(self, proc, out: Path, meta: Path):
        self.rc, self.stderr, self.out = proc.returncode, proc.stderr, out
        self.meta = json.loads(meta.read_text()) if meta.exists() else None

    def files(self):
        return sorted(os.listdir(self.out)) if self.out.exists() else []

    def __repr__(self):
        return f"rc={self.rc} files={self.files()} stderr:\n{self.stderr}"


@pytest.fixture
def fn(tmp_path):
    """fn("scale", [input], height=240) -> Result; params as the runtime passes them."""
    return runner(tmp_path)


@pytest.fixture(scope="session")
def session_fn(tmp_path_factory):
    """fn for session fixtures (outputs shared by several tests)."""
    return runner(tmp_path_factory.mktemp("shared"))


def runner(tmp_path):
    counter = iter(range(10000))

    def call(name, inputs, out=None, env=None, **params):
        n = next(counter)
        out = Path(out) if out else tmp_path / f"out{n}"
        meta = tmp_path / f"meta{n}.json"
        argv = [str(FN), name, "--output-dir", str(out), "--metadata", str(meta)]
        for i in inputs:
            argv += ["--input", str(i)]
        for k, v in params.items():
            argv += [f"--{k}", ("true" if v else "false") if isinstance(v, bool) else str(v)]
        proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)
        return Result(proc, out, meta)

    return call


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)], check=True)


def probe(path, *entries):
    out = subprocess.run(["ffprobe", "-v", "error", "-of", "json", "-show_format", "-show_streams", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def vstream(path):
    return next(s for s in probe(path)["streams"] if s["codec_type"] == "video")


def astream(path):
    return next((s for s in probe(path)["streams"] if s["codec_type"] == "audio"), None)


def count_frames(path):
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
                          "stream=nb_read_packets", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip().rstrip(","))


def packets(path, stream="v:0"):
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", stream, "-show_entries",
                          "packet=pts_time,duration_time,flags", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["packets"]


def span(path, stream="v:0"):
    """(first pts, end of the last packet, typical packet duration) from packets; where
    ffprobe gives no duration (x264 with B-frames in a time base other than 1/fps) the
    last packet lasts the typical pts step."""
    pk = [p for p in packets(path, stream) if p.get("pts_time") not in (None, "N/A")]
    pts = sorted(float(p["pts_time"]) for p in pk)
    steps = sorted(b - a for a, b in zip(pts, pts[1:]) if b > a)
    durs = sorted(float(p["duration_time"]) for p in pk if p.get("duration_time") not in (None, "N/A"))
    typical = durs[len(durs) // 2] if durs else steps[len(steps) // 2] if steps else 0.0
    last = max(pk, key=lambda p: float(p["pts_time"]))
    d = float(last["duration_time"]) if last.get("duration_time") not in (None, "N/A") else typical
    return pts[0], pts[-1] + d, typical


def stream_duration(path, stream="v:0"):
    """End of the last packet minus the first pts, from packets (works for mkv/webm too)."""
    start, end, _ = span(path, stream)
    return end - start


def pts_list(path, stream="v:0"):
    return sorted(float(p["pts_time"]) for p in packets(path, stream) if p.get("pts_time") not in (None, "N/A"))


def fps(path):
    return float(Fraction(vstream(path)["r_frame_rate"]))


def gen_clip(path, seconds=10, size="640x360", rate=25, gop=25, extra=()):
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}",
           "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
           "-c:v", "libx264", "-preset", "ultrafast", "-g", gop, "-keyint_min", gop, "-sc_threshold", 0,
           "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k", *extra, "-shortest", path)
    return path


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return {
        "gop25": gen_clip(d / "gop25.mp4"),  # a keyframe every second
        "longgop": gen_clip(d / "longgop.mp4", gop=250),  # one keyframe: needs re-encoding
        "faststart": gen_clip(d / "faststart.mp4", seconds=6, extra=("-movflags", "+faststart")),
    }


@pytest.fixture(scope="session")
def videos():
    d = Path(os.environ.get("VFLOW_TEST_VIDEOS") or REPO.parent / "shared" / "data" / "videos")
    names = ["intel_car-detection.mp4", "bbb_0-30s_720p_vp8.webm", "nasa_13013_multistream.mp4"]
    missing = [n for n in names if not (d / n).is_file()]
    if missing:
        pytest.fail(f"test videos missing in {d}: {missing} (set VFLOW_TEST_VIDEOS to their folder)")
    return {n.split("_")[0]: d / n for n in names}  # intel, bbb, nasa


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs torch and a CUDA GPU (run-tests.sh --gpu)")
