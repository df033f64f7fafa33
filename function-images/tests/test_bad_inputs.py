"""Bad input: corrupt, truncated, unsupported codec, full disk, SIGTERM -> clear failure, no partial output."""
import os
import signal
import subprocess
import time

import pytest

from conftest import FN, ffmpeg, gen_clip


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
    r = fn(function, [broken / name], env={"VFLOW_DETECT_BACKEND": "cpu"}, **params)
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


def scale_under_file_size_limit(clip, tmp_path, limit):
    import resource
    out, meta = tmp_path / "o", tmp_path / "m.json"
    p = subprocess.run([str(FN), "scale", "--input", str(clip), "--output-dir", str(out),
                        "--metadata", str(meta), "--height", "360", "--preset", "ultrafast"],
                       capture_output=True, text=True,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert p.returncode == 1 and "File too large" in p.stderr, p.stderr
    assert os.listdir(out) == [] and not meta.exists()
    return p.stderr


def test_file_size_limit(clips, tmp_path):
    """The same without root: RLIMIT_FSIZE makes writes fail (EFBIG) past 512 KiB: the
    probe's output (~120 KB) fits, the encode's (~2.3 MB) does not."""
    err = scale_under_file_size_limit(clips["gop25"], tmp_path, 512 * 1024)
    assert "file size limit" not in err, err  # ffmpeg's own failure, not the probe's


def test_a_probe_cut_at_the_file_size_limit_is_refused_naming_the_input(clips, tmp_path):
    # ffprobe writes its JSON to a file; at 64 KiB it is cut short and ffprobe still
    # exits 0: the function refuses it instead of failing to parse half of it.
    err = scale_under_file_size_limit(clips["gop25"], tmp_path, 64 * 1024)
    assert "file size limit of 65536 bytes" in err and "gop25.mp4" in err, err


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


# ---------------------------------------------------------------- hostile media (issue 17 item 9)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, clips):
    """Inputs that would make ffmpeg open other local files, and a forged picture size."""
    import struct
    import zlib
    d = tmp_path_factory.mktemp("hostile")
    secret = clips["gop25"]  # stands for another invocation's scratch file
    (d / "playlist.m3u8").write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n"
                                     f"{secret}\n#EXT-X-ENDLIST\n")
    (d / "list.ffconcat").write_text(f"ffconcat version 1.0\nfile {secret}\n")
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48", "-frames:v", 1, d / "frame1.png")
    (d / "frame%d.png").write_bytes((d / "frame1.png").read_bytes())  # would read frame1.png too

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 9000, 9000, 8, 2, 0, 0, 0)  # 81 Mpx, over the 67 Mpx cap
    (d / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                                 + chunk(b"IDAT", zlib.compress(b"\0" * 49)) + chunk(b"IEND", b""))
    return d


@pytest.mark.parametrize("name, fmt", [("playlist.m3u8", "hls"), ("list.ffconcat", "concat")])
@pytest.mark.parametrize("function, params", [("probe", {}), ("scale", {"height": 120, "preset": "ultrafast"}),
                                              ("segment", {"seconds": 2}), ("thumbnail", {}), ("detect", {})])
def test_a_playlist_input_cannot_open_other_local_files(fn, hostile, name, fmt, function, params):
    r = fn(function, [hostile / name], env={"VFLOW_DETECT_BACKEND": "cpu"}, **params)
    failed_cleanly(r, [hostile / name])
    assert f"its format ({fmt}) is not one vflow reads" in r.stderr, r.stderr


def test_a_concat_list_is_refused_by_the_functions_that_use_concat_themselves(fn, clips, hostile):
    """stitch and sprite feed ffmpeg a concat list of their own: an input that is one is still refused."""
    for function in ("stitch", "sprite"):
        r = fn(function, [clips["gop25"], hostile / "list.ffconcat"])
        failed_cleanly(r, [hostile / "list.ffconcat"])
        assert "its format (concat) is not one vflow reads" in r.stderr, r.stderr


def test_an_image_sequence_pattern_is_refused(fn, hostile):
    r = fn("thumbnail", [hostile / "frame%d.png"])
    failed_cleanly(r, [hostile / "frame%d.png"])
    assert "numbered image sequence" in r.stderr, r.stderr


def test_a_forged_picture_size_is_refused_before_decoding(fn, hostile):
    r = fn("thumbnail", [hostile / "huge.png"])
    failed_cleanly(r, [hostile / "huge.png"])
    assert "larger than the limit of 67108864 pixels" in r.stderr, r.stderr
