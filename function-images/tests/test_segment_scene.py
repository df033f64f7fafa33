"""segment with cutAt=scene: cuts at shot changes within 0.5x..1.5x of `seconds`."""
import re

import pytest

from conftest import count_frames, ffmpeg, probe

SHOTS = [2.6, 5.2, 7.4]  # where the clip below changes shot; 10 s in all


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    path = tmp_path_factory.mktemp("shots") / "shots.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=2.6", "-f", "lavfi", "-i",
           "mandelbrot=size=320x240:rate=25", "-f", "lavfi", "-i", "smptebars=size=320x240:rate=25:duration=2.2",
           "-f", "lavfi", "-i", "rgbtestsrc=size=320x240:rate=25:duration=2.6",
           "-filter_complex", "[1]trim=duration=2.6,setpts=PTS-STARTPTS[m];[0][m][2][3]concat=n=4:v=1:a=0",
           "-c:v", "libx264", "-preset", "ultrafast", "-g", "1000", path)
    return path


def starts(out):
    tags = [probe(out / f)["format"]["tags"]["comment"] for f in sorted(out.iterdir())]
    return [float(re.search(r"start=([\d.]+)", t).group(1)) for t in tags]


def test_cuts_land_within_a_frame_of_the_shot_changes(fn, shots):
    r = fn("segment", [shots], seconds=2.5, cutAt="scene")
    assert r.rc == 0, r
    got = starts(r.out)
    assert len(got) == 4 and got[0] == 0, got
    assert all(abs(a - b) <= 1 / 25 + 1e-6 for a, b in zip(got[1:], SHOTS)), got
    assert sum(count_frames(r.out / f) for f in r.files()) == count_frames(shots) == 250
    # by time, the same clip is cut mid-shot: at the first frames at or after 2.5, 5, 7.5
    t = fn("segment", [shots], seconds=2.5)
    assert starts(t.out)[1:] == pytest.approx([2.52, 5.0, 7.52], abs=1e-3)


def test_a_shot_longer_than_the_range_is_cut_by_time_and_the_joins_keep_every_frame(fn, shots):
    """seconds 1.5: the range is 0.75..2.25 s, shorter than the 2.6 s shots: the cuts fall
    back to every 1.5 s where no change is near, and stitch puts every frame back."""
    r = fn("segment", [shots], seconds=1.5, cutAt="scene")
    assert r.rc == 0, r
    got = starts(r.out)
    lengths = [b - a for a, b in zip(got, got[1:] + [10.0])]
    assert all(0.75 - 0.04 <= x <= 2.25 + 0.04 for x in lengths), got
    assert any(abs(g - s) <= 0.04 for g in got for s in SHOTS), got
    st = fn("stitch", [r.out / f for f in r.files()])
    assert st.rc == 0, st
    assert count_frames(st.out / "output.mp4") == 250


@pytest.mark.parametrize("clip, seconds, parallel, want", [
    ("gop25", 4, 2, [0, 4, 8, 9]),  # copy: 4+4+2 s; the last 2 s cut in two at the 9 s keyframe
    ("longgop", 4, 3, [0, 3.36, 6.68]),  # re-encoded: 4+6 s becomes three of a third each (first frames at or after)
    ("gop25", 5, 2, [0, 5]),  # already a multiple: unchanged
])
def test_multiple_of_cuts_the_last_round_finer(fn, clips, clip, seconds, parallel, want):
    r = fn("segment", [clips[clip]], seconds=seconds, multipleOf=parallel)
    assert r.rc == 0, r
    assert starts(r.out) == pytest.approx(want, abs=0.021), starts(r.out)
    assert len(r.files()) % parallel == 0
    assert sum(count_frames(r.out / f) for f in r.files()) == count_frames(clips[clip])
