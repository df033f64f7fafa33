"""check_complete: an output the encoder took every source frame into needs no probe;
anything less goes to the full check (a probe of the output and its frames)."""
import os
import shutil
import sys
from pathlib import Path

from conftest import HERE, count_frames
from test_odd_inputs import overwrite, plain

sys.path.insert(0, str(HERE.parent / "base"))
import vflowfn  # noqa: E402


def probe_logging_path(tmp_path: Path) -> tuple[dict, Path]:
    """An environment whose ffprobe logs the file it reads (its last argument) to a log."""
    real = shutil.which("ffprobe")
    shim = tmp_path / "shim"
    shim.mkdir()
    log = tmp_path / "ffprobe.log"
    (shim / "ffprobe").write_text(f'#!/bin/sh\nfor a; do last=$a; done\necho "$last" >> {log}\n'
                                  f'exec {real} "$@"\n')
    (shim / "ffprobe").chmod(0o755)
    return {"PATH": f"{shim}{os.pathsep}{os.environ['PATH']}"}, log


def test_a_complete_encode_is_not_probed_again(fn, clips, tmp_path):
    from conftest import ffmpeg
    env, log = probe_logging_path(tmp_path)
    # an mkv source is probed (its packets with it), the complete output is not
    mkv = tmp_path / "gop25.mkv"
    ffmpeg("-i", clips["gop25"], "-c", "copy", mkv)
    r = fn("transcode", [mkv], env=env, preset="ultrafast")
    assert r.rc == 0, r
    probed = log.read_text().split()
    assert probed == [str(mkv)], probed
    assert count_frames(r.out / "output.mp4") == count_frames(clips["gop25"])
    # a plain H.264 mp4 is read from its index (mp4_index): no ffprobe at all
    log.unlink()
    r = fn("transcode", [clips["gop25"]], env=env, preset="ultrafast")
    assert r.rc == 0, r
    assert not log.exists(), log.read_text()
    assert count_frames(r.out / "output.mp4") == count_frames(clips["gop25"])


def test_a_damaged_source_still_gets_the_full_check(fn, tmp_path):
    # A keyframe and the 5 frames after it overwritten: the decoder loses frames, the
    # encoder takes fewer than the source has packets, the output is probed and refused.
    plain(tmp_path / "clean.mp4")
    overwrite(tmp_path / "clean.mp4", tmp_path / "damaged.mp4", range(25, 31))
    env, log = probe_logging_path(tmp_path)
    r = fn("transcode", [tmp_path / "damaged.mp4"], env=env, preset="ultrafast")
    assert r.rc == 1 and "is damaged" in r.stderr, r
    # the source's index is intact (it is read, not probed); the output is probed
    probed = log.read_text().split()
    assert len(probed) == 1 and probed[0].endswith("output.mp4"), probed


def info(pts, key_at=0, declared=None):
    packets = [{"stream_index": 0, "pts_time": f"{t:.6f}", "flags": "K_" if i == key_at else "__"}
               for i, t in enumerate(pts)]
    stream = {"index": 0, "codec_type": "video", "codec_name": "h264", "avg_frame_rate": "25/1",
              "duration": f"{declared if declared is not None else len(pts) / 25:.6f}"}
    return {"streams": [stream], "format": {}, "packets": packets}


def test_every_frame_encoded_only_when_the_counts_and_the_span_agree():
    pts = [i / 25 for i in range(100)]
    vflowfn.ENCODED_FRAMES["out.mp4"] = 100
    assert vflowfn._every_frame_encoded("src", info(pts), "out.mp4")
    # fewer frames than packets: a lost GOP or field-coded video
    vflowfn.ENCODED_FRAMES["out.mp4"] = 99
    assert not vflowfn._every_frame_encoded("src", info(pts), "out.mp4")
    # packets before the first keyframe: which frames were kept is not known by count
    vflowfn.ENCODED_FRAMES["out.mp4"] = 100
    assert not vflowfn._every_frame_encoded("src", info(pts, key_at=3), "out.mp4")
    # the source declares 10 s and its packets span 4
    assert not vflowfn._every_frame_encoded("src", info(pts, declared=10.0), "out.mp4")
    # no count (ffmpeg's progress did not end)
    del vflowfn.ENCODED_FRAMES["out.mp4"]
    assert not vflowfn._every_frame_encoded("src", info(pts), "out.mp4")


def test_encoded_frames_reads_the_last_block_of_a_finished_progress_file(tmp_path):
    p = tmp_path / "progress.txt"
    p.write_text("frame=10\nfps=0.0\nprogress=continue\nframe=250\nfps=99\nprogress=end\n")
    assert vflowfn.encoded_frames(str(p)) == 250
    p.write_text("frame=10\nprogress=continue\n")
    assert vflowfn.encoded_frames(str(p)) is None
    assert vflowfn.encoded_frames(str(tmp_path / "missing.txt")) is None
