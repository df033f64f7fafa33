"""Bad input: corrupt, truncated, unsupported codec, full disk, SIGTERM -> clear failure, no partial output."""
import os
import signal
import subprocess
import time

import pytest

from conftest import FN, gen_clip


def failed_cleanly(r, names):
    assert r.rc == 1, r
    assert "error:" in r.stderr and any(str(n) in r.stderr for n in names), r.stderr
    assert r.files() == [] and r.meta is None, r


@pytest.fixture(scope="module")
def broken(tmp_path_factory, clips):
    d = tmp_path_factory.mktemp("broken")
    data = clips["gop25"].read_bytes()  # moov at the end: a cut file has no index
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    fast = clips["faststart"].read_bytes()  # moov first: a cut file has an index but half the data
    (d / "truncated-faststart.mp4").write_bytes(fast[: len(fast) // 2])
    (d / "garbage.mp4").write_bytes(os.urandom(200_000))
    (d / "unsupported.mp4").write_bytes(fast.replace(b"avc1", b"zzz1").replace(b"avcC", b"zzzC"))
    return d


@pytest.mark.parametrize("name", ["truncated.mp4", "garbage.mp4", "truncated-faststart.mp4", "unsupported.mp4"])
@pytest.mark.parametrize("function, params", [("scale", {"height": 120, "preset": "ultrafast"}),
                                              ("segment", {"seconds": 2}),
                                              ("thumbnail", {}), ("detect", {})])
def test_bad_video_fails_cleanly(fn, broken, name, function, params):
    r = fn(function, [broken / name], env={"VFLOW_DETECT_BACKEND": "haar"}, **params)
    failed_cleanly(r, [broken / name])
    if name != "truncated-faststart.mp4":
        assert "ffmpeg's stderr" in r.stderr or "unsupported" in r.stderr, r.stderr


def test_unsupported_codec_is_named(fn, broken):
    r = fn("scale", [broken / "unsupported.mp4"], height=120)
    failed_cleanly(r, [broken / "unsupported.mp4"])
    assert "unsupported video codec" in r.stderr


def test_truncated_faststart_is_called_truncated(fn, broken):
    r = fn("scale", [broken / "truncated-faststart.mp4"], height=120, preset="ultrafast")
    failed_cleanly(r, [broken / "truncated-faststart.mp4"])
    assert "truncated" in r.stderr


def test_stitch_with_a_corrupt_segment(fn, clips, broken):
    r = fn("stitch", [clips["gop25"], broken / "garbage.mp4"])
    failed_cleanly(r, [broken / "garbage.mp4"])


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (needs root); without root the test fails with the reason."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs here (this test needs root): {p.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_full_output_disk(fn, clips, tiny_disk):
    r = fn("scale", [clips["gop25"]], out=tiny_disk / "out", height=360, crf=0, preset="ultrafast")
    failed_cleanly(r, [clips["gop25"]])
    assert "No space left on device" in r.stderr
    r = fn("segment", [clips["gop25"]], out=tiny_disk / "seg", seconds=1)
    failed_cleanly(r, [clips["gop25"]])
    assert sorted(os.listdir(tiny_disk)) == ["out", "seg"] and not os.listdir(tiny_disk / "seg")


def test_file_size_limit(fn, clips, tmp_path):
    """The same without root: RLIMIT_FSIZE makes writes fail (EFBIG) past 64 KiB."""
    import resource
    out, meta = tmp_path / "o", tmp_path / "m.json"
    p = subprocess.run([str(FN), "scale", "--input", str(clips["gop25"]), "--output-dir", str(out),
                        "--metadata", str(meta), "--height", "360", "--preset", "ultrafast"],
                       capture_output=True, text=True,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536)))
    assert p.returncode == 1 and "File too large" in p.stderr, p.stderr
    assert os.listdir(out) == [] and not meta.exists()


def test_sigterm_leaves_nothing(tmp_path, clips):
    long = gen_clip(tmp_path / "long.mp4", seconds=20, size="1280x720")
    out = tmp_path / "o"
    proc = subprocess.Popen([str(FN), "transcode", "--input", str(long), "--output-dir", str(out),
                             "--metadata", str(tmp_path / "m.json"), "--codec", "vp9", "--preset", "slow"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while time.time() < deadline and not any(n.startswith(".partial-") for n in (os.listdir(out) if out.exists() else [])):
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "stopped by a signal" in err
    assert os.listdir(out) == []
