"""Odd inputs (issue 19 item 5): each input below, made here with ffmpeg, goes through
probe, segment (1 s) -> scale (every segment) -> stitch, thumbnail and transcode. Each
function either writes correct outputs (checked: streams, sizes, aspect, rotation, colour,
frame counts and timestamps against the source) or refuses: exit 1 with a message that
names its input, and nothing in the output folder, no metadata file. What happens to
each input is tabled in README.md, "Odd inputs"."""
import functools
import json
import random
import re
import subprocess
from fractions import Fraction
from unittest import mock

import pytest

import conftest
from conftest import ffmpeg

SIZE = "160x120"
X264 = ("-c:v", "libx264", "-preset", "ultrafast", "-g", 25, "-keyint_min", 25, "-sc_threshold", 0)
HEIGHT = 96  # scale's height for the segments


def lavfi_video(seconds=2, size=SIZE, rate=25, src="testsrc2"):
    return ("-f", "lavfi", "-i", f"{src}=size={size}:rate={rate}:duration={seconds}")


def lavfi_audio(seconds=2, rate=48000, freq=440):
    return ("-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate={rate}:duration={seconds}")


def plain(path, extra=(), seconds=2):
    ffmpeg(*lavfi_video(seconds), *lavfi_audio(seconds), *X264, "-pix_fmt", "yuv420p", "-c:a", "aac",
           *extra, path)


def overwrite(src, path, which, keep=0):
    """A copy of src whose video packets at these indexes (pts order) are overwritten with
    random bytes after the first `keep` bytes of each (the index, at the end, stays)."""
    out = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,pos,size",
         "-of", "json", str(src)], capture_output=True, text=True, check=True).stdout)["packets"]
    out.sort(key=lambda p: float(p["pts_time"]))
    data, rng = bytearray(src.read_bytes()), random.Random(19)
    for i in which:
        pos, size = int(out[i]["pos"]), int(out[i]["size"])
        data[pos + keep:pos + size] = bytes(rng.randrange(256) for _ in range(size - keep))
    path.write_bytes(bytes(data))


def make_rotated(d, path):
    plain(d / "upright.mp4")
    ffmpeg("-i", d / "upright.mp4", "-map", 0, "-c", "copy", "-metadata:s:v:0", "rotate=90", path)


def make_vfr(d, path):
    # 30 fps for a second, then 15 fps: the frames keep their own timestamps
    ffmpeg(*lavfi_video(2, rate=30), *lavfi_audio(2),
           "-vf", "select='lt(n,30)+not(mod(n,2))',setpts='if(lt(N,30),N/30,1+(N-30)/15)/TB'",
           "-fps_mode", "passthrough", *X264, "-pix_fmt", "yuv420p", "-c:a", "aac", path)


def make_long(d, path):
    # 2.5 hours in 6 frames 30 min apart: cheap to encode, long to cut (the segment
    # times are an expression, not a list; test_functions cuts 2 h into 0.5 s segments)
    ffmpeg("-f", "lavfi", "-t", 6, "-i", "testsrc=size=64x48:rate=1", "-vf", "setpts=PTS*1800",
           "-c:v", "libx264", "-preset", "ultrafast", "-g", 1, "-pix_fmt", "yuv420p", "-fps_mode", "passthrough",
           path)


def make_truncated(src_maker, d, path):
    whole = d / f"whole-{path.name}"
    src_maker(whole)
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# name -> (file name, maker(d, path)); facts and outcomes below
INPUTS = {
    "rotate90": ("phone.mp4", make_rotated),
    "vfr": ("vfr.mp4", make_vfr),
    "10bit": ("tenbit.mp4", lambda d, p: plain(p, ("-pix_fmt", "yuv420p10le"))),
    "hdr-pq": ("hdr.mp4", lambda d, p: ffmpeg(
        *lavfi_video(), *lavfi_audio(), "-c:v", "libx265", "-preset", "ultrafast",
        "-x265-params", "log-level=error:keyint=25:min-keyint=25:hdr10=1:repeat-headers=1", "-tag:v", "hvc1",
        "-pix_fmt", "yuv420p10le", "-color_primaries", "bt2020", "-color_trc", "smpte2084",
        "-colorspace", "bt2020nc", "-c:a", "aac", p)),
    # two fields from two moments (50 fps woven into 25 interlaced frames): combing where moving
    "interlaced": ("interlaced.mp4", lambda d, p: ffmpeg(
        *lavfi_video(rate=50), *lavfi_audio(), "-vf", "tinterlace=mode=interleave_top,setfield=tff", *X264,
        "-flags", "+ildct+ilme", "-x264opts", "tff=1", "-field_order", "tt", "-pix_fmt", "yuv420p",
        "-c:a", "aac", p)),
    "anamorphic": ("pal-16x9.mp4", lambda d, p: ffmpeg(
        *lavfi_video(size="720x576"), *lavfi_audio(), *X264, "-vf", "setsar=64/45", "-pix_fmt", "yuv420p",
        "-c:a", "aac", p)),
    "audio-only": ("audio.m4a", lambda d, p: ffmpeg(*lavfi_audio(), "-c:a", "aac", p)),
    "no-audio": ("silent.mp4", lambda d, p: ffmpeg(*lavfi_video(), *X264, "-pix_fmt", "yuv420p", p)),
    "multi-audio": ("two-tracks.mkv", lambda d, p: ffmpeg(
        *lavfi_video(), *lavfi_audio(), *lavfi_audio(rate=44100, freq=880), "-map", 0, "-map", 1, "-map", 2,
        *X264, "-pix_fmt", "yuv420p", "-c:a:0", "aac", "-c:a:1", "libopus", "-ac:a:1", 1, p)),
    "subtitles-mkv": ("subs.mkv", lambda d, p: ffmpeg(
        *lavfi_video(), *lavfi_audio(), "-i", srt(d), "-map", 0, "-map", 1, "-map", 2, *X264,
        "-pix_fmt", "yuv420p", "-c:a", "aac", "-c:s", "srt", p)),
    "subtitles-mp4": ("subs.mp4", lambda d, p: ffmpeg(
        *lavfi_video(), *lavfi_audio(), "-i", srt(d), "-map", 0, "-map", 1, "-map", 2, *X264,
        "-pix_fmt", "yuv420p", "-c:a", "aac", "-c:s", "mov_text", p)),
    # x264 refuses odd sizes in 4:2:0; VP9 takes them (testsrc: testsrc2 rounds to even)
    "odd-size": ("odd-1921x1081.webm", lambda d, p: ffmpeg(
        *lavfi_video(size="1921x1081", rate=10, src="testsrc"), *lavfi_audio(), "-c:v", "libvpx-vp9",
        "-deadline", "realtime", "-cpu-used", 8, "-g", 10, "-pix_fmt", "yuv420p", "-c:a", "libopus", p)),
    "very-short": ("short.mp4", lambda d, p: plain(p, seconds=0.3)),
    "long": ("long.mp4", make_long),
    "mkv-h264": ("h264.mkv", lambda d, p: plain(p)),
    "mov": ("camera.mov", lambda d, p: plain(p)),
    "webm-vp9": ("vp9.webm", lambda d, p: ffmpeg(
        *lavfi_video(), *lavfi_audio(), "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", 8,
        "-g", 25, "-pix_fmt", "yuv420p", "-c:a", "libopus", p)),
    "webm-av1": ("av1.webm", lambda d, p: ffmpeg(
        *lavfi_video(), *lavfi_audio(), "-c:v", "libsvtav1", "-preset", 12, "-g", 25, "-pix_fmt", "yuv420p",
        "-c:a", "libopus", p)),
    "mpegts": ("broadcast.ts", lambda d, p: plain(p)),  # starts at 1.4 s, as TS does
    # one P-frame's data overwritten (its first 16 bytes kept): the decoder conceals it
    "damaged-concealed": ("damaged-frame.mp4", lambda d, p: (plain(d / "clean1.mp4"),
                                                            overwrite(d / "clean1.mp4", p, [10], keep=16))),
    # the keyframe at 1 s and the 5 frames after it overwritten whole: frames are lost
    "damaged-lost": ("damaged-gop.mp4", lambda d, p: (plain(d / "clean2.mp4"),
                                                      overwrite(d / "clean2.mp4", p, range(25, 31)))),
    "truncated-mp4": ("cut.mp4", lambda d, p: make_truncated(plain, d, p)),  # index (moov) at the end: gone
    "truncated-faststart": ("cut-faststart.mp4", lambda d, p: make_truncated(
        lambda q: plain(q, ("-movflags", "+faststart")), d, p)),  # index first, half the data
    "truncated-mkv": ("cut.mkv", lambda d, p: make_truncated(plain, d, p)),
    "zero-length": ("empty.mp4", lambda d, p: p.write_bytes(b"")),
}


def srt(d):
    path = d / "subs.srt"
    path.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n\n2\n00:00:01,000 --> 00:00:02,000\nworld\n")
    return path


# Refusals: (input, step) -> words the message has (besides the input's path). The
# steps are probe, segment, scale (on the segments; directly on the input where segment
# refuses), stitch (directly on the input where segment refuses), thumbnail, transcode.
NO_VIDEO = "has no video stream (it holds only audio)"
NO_INDEX = "its index (moov) is missing"
REFUSED = {
    **{("audio-only", s): NO_VIDEO for s in ("segment", "scale", "stitch", "thumbnail", "transcode")},
    **{("damaged-lost", s): "is damaged" for s in ("segment", "scale", "transcode")},
    **{("truncated-mp4", s): NO_INDEX for s in ("probe", "segment", "scale", "stitch", "thumbnail", "transcode")},
    **{(t, s): "truncated" for t in ("truncated-faststart", "truncated-mkv")
       for s in ("probe", "segment", "scale", "thumbnail", "transcode")},
    **{("zero-length", s): "is empty" for s in ("probe", "segment", "scale", "stitch", "thumbnail", "transcode")},
}
# How the outputs look, where not as the source: (width, height) upright after transcode
# (h264, the source's size cropped to even) and after scale to 96 (width by the storage
# aspect, even); the sample aspect ratio kept; the thumbnails' size (square pixels).
SHAPES = {
    "rotate90": {"transcode": (120, 160), "scale": (72, 96), "thumb": (320, 426)},
    "anamorphic": {"transcode": (720, 576), "scale": (120, 96), "thumb": (320, 180), "sar": "64:45"},
    "odd-size": {"transcode": (1920, 1080), "scale": (170, 96), "thumb": (320, 180)},
}
SEGMENTS = {"very-short": 1, "long": 6}
# segment cuts by stream copy, without decoding, where the keyframe flags allow: then the
# damage reaches scale, which refuses the segment that holds it (ffprobe lost the damaged
# keyframe's flag here, so segment re-encodes and refuses the input itself)
SEGMENT_MAY_COPY = {"damaged-lost"}


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """odd(name) -> the input's path, made on first use."""
    d = tmp_path_factory.mktemp("odd")
    made = {}

    def get(name):
        if name not in made:
            filename, maker = INPUTS[name]
            maker(d, d / filename)
            made[name] = d / filename
        return made[name]

    return get


def refused(r, src, words):
    assert r.rc == 1, r
    assert "error: " in r.stderr and str(src) in r.stderr and words in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert r.files() == [] and r.meta is None, r


# The checks read each file many times: once per file (outputs are never rewritten).
@functools.lru_cache(maxsize=None)
def probe(path):
    return conftest.probe(path)


_packets = conftest.packets


@functools.lru_cache(maxsize=None)
def packets(path, stream="v:0"):
    return _packets(path, stream)


def span(path, stream="v:0"):
    """conftest.span on the cached packets."""
    with mock.patch.object(conftest, "packets", packets):
        return conftest.span(path, stream)


def pts_list(path, stream="v:0"):
    return sorted(float(p["pts_time"]) for p in packets(path, stream) if p.get("pts_time") not in (None, "N/A"))


def vstream(path):
    return next(s for s in probe(path)["streams"] if s["codec_type"] == "video")


def streams(path, kind):
    return [s for s in probe(path)["streams"] if s["codec_type"] == kind]


def rotation(stream):
    return next((sd.get("rotation") for sd in stream.get("side_data_list", []) if "rotation" in sd), 0)


def frame_step(path):
    pts = pts_list(path)
    steps = sorted(b - a for a, b in zip(pts, pts[1:]) if b > a)
    return steps[len(steps) // 2] if steps else 1.0


def start_time(path):
    return float(probe(path)["format"].get("start_time") or 0)


def assert_same_frames(src, out):
    """Every frame of the source, at its time: the same count, each frame where the
    source's was relative to the first (1 ms: webm's unit; so also a VFR source), the
    first where the source's was (within a frame) on each file's own timeline (its pts
    less its start_time: MPEG-TS starts at 1.4 s), and as long (within a frame)."""
    s, o = pts_list(src), pts_list(out)
    assert len(o) == len(s), f"{out.name}: {len(o)} frames, the source {len(s)}"
    drift = max(abs((b - o[0]) - (a - s[0])) for a, b in zip(s, o))
    assert drift <= 1.5e-3, f"{out.name}: a frame is {drift:.4f} s off its source time"
    want = s[0] - start_time(src)
    assert abs((o[0] - start_time(out)) - want) <= frame_step(src) + 1e-3, (o[0], want)
    v0, v1, _ = span(src)
    w0, w1, _ = span(out)
    assert abs((w1 - w0) - (v1 - v0)) <= frame_step(src) + 1e-3, f"{out.name} lasts {w1 - w0}, source {v1 - v0}"


def assert_audio(src, out):
    """Audio iff the source had some: one track, the source's first, as long (a packet)."""
    a = streams(src, "audio")
    b = streams(out, "audio")
    assert len(b) == min(1, len(a)), f"{out.name} has {len(b)} audio tracks, the source {len(a)}"
    if a:
        assert (b[0]["sample_rate"], b[0]["channels"]) == (a[0]["sample_rate"], a[0]["channels"])
        s0, s1, packet = span(src, "a:0")
        o0, o1, _ = span(out, "a:0")
        assert abs((o1 - o0) - (s1 - s0)) <= packet + 1e-3


def assert_picture(name, src, out, step):
    """Upright (no display matrix left), progressive, SDR 8-bit, the expected size and SAR."""
    v, sv = vstream(out), vstream(src)
    assert rotation(v) == 0 and v["pix_fmt"] == "yuv420p", v
    assert v.get("field_order", "progressive") in ("progressive", "unknown"), v["field_order"]
    size = SHAPES.get(name, {}).get(step)
    if size is None:  # the source's size, or scaled to HEIGHT by the aspect of its storage
        w, h = int(sv["width"]), int(sv["height"])
        size = (w, h) if step == "transcode" else (round(HEIGHT * w / h / 2) * 2, HEIGHT)
    assert (v["width"], v["height"]) == size, (v["width"], v["height"], size)
    # the display aspect is kept: scale sets the SAR that keeps it exactly, so a width
    # rounded to even can leave it a hair off 1:1 (1921x1081 -> 170x96: SAR 5424:5405)
    sar = Fraction(SHAPES.get(name, {}).get("sar", "1:1").replace(":", "/"))
    got = Fraction(v.get("sample_aspect_ratio", "1:1").replace(":", "/").replace("0/1", "1/1"))
    assert abs(got / sar - 1) < 0.01, v.get("sample_aspect_ratio")
    if sv.get("color_transfer") in ("smpte2084", "arib-std-b67"):  # tone-mapped to SDR
        assert (v.get("color_transfer"), v.get("color_primaries")) == ("bt709", "bt709"), v
    # deinterlaced, not just tagged progressive (idet, at the source's size: after a
    # downscale by 0.8 it calls even bwdif's clean frames interlaced)
    if sv.get("field_order") in ("tt", "bb", "tb", "bt") and step == "transcode":
        assert interlaced_frames(src) > 0.8 * len(pts_list(src))
        assert interlaced_frames(out) < 0.3 * len(pts_list(out)), "the output still has combing"


def interlaced_frames(path):
    """Frames that ffmpeg's idet finds interlaced (combing between the fields)."""
    err = subprocess.run(["ffmpeg", "-hide_banner", "-i", str(path), "-map", "0:v:0", "-vf", "idet", "-f", "null", "-"],
                         capture_output=True, text=True, check=True).stderr
    m = re.search(r"Multi frame detection: TFF: *(\d+) BFF: *(\d+)", err)
    return int(m.group(1)) + int(m.group(2))


STEPS = ["probe", "split-scale-stitch", "thumbnail", "transcode"]


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("name", list(INPUTS))
def test_odd_input(fn, odd, name, step):
    src = odd(name)
    {"probe": check_probe, "split-scale-stitch": check_split_scale_stitch, "thumbnail": check_thumbnail,
     "transcode": check_transcode}[step](fn, name, src)


def check_probe(fn, name, src):
    r = fn("probe", [src])
    if (name, "probe") in REFUSED:
        return refused(r, src, REFUSED[name, "probe"])
    assert r.rc == 0, r
    info = probe(src)
    v = next((s for s in info["streams"] if s["codec_type"] == "video"), None)
    assert r.meta["streams"] == len(info["streams"]) == len(json.loads((r.out / "probe.json").read_text())["streams"])
    assert r.meta["duration"] == pytest.approx(float(info["format"]["duration"]), abs=1e-3)
    assert (r.meta["width"], r.meta["height"]) == ((v["width"], v["height"]) if v else (0, 0))
    assert r.meta["codec"] == (v or info["streams"][0])["codec_name"]


def check_split_scale_stitch(fn, name, src):
    seg = fn("segment", [src], seconds=1, env={"VFLOW_FN_DEBUG": "1"})
    # the commands stay short whatever the input's length (the kernel's limit on one
    # argument is 128 KiB; a list of 9000 keyframe times would be 100 KiB)
    commands = [ln for ln in seg.stderr.splitlines() if ln.startswith("+ ")]
    assert seg.rc != 0 or commands and max(map(len, commands)) < 4096, max(map(len, commands), default=0)
    seg.stderr = "\n".join(ln for ln in seg.stderr.splitlines() if not ln.startswith("+ "))
    words = REFUSED.get((name, "segment"))
    if words and (seg.rc != 0 or name not in SEGMENT_MAY_COPY):
        refused(seg, src, words)
        # the other stages refuse it as well, directly
        refused(fn("scale", [src], height=HEIGHT, preset="ultrafast"), src, REFUSED[name, "scale"])
        if (name, "stitch") in REFUSED:
            refused(fn("stitch", [src]), src, REFUSED[name, "stitch"])
        return
    assert seg.rc == 0, seg
    segs = [seg.out / f for f in seg.files()]
    if not words:
        assert len(segs) == seg.meta["segments"] == SEGMENTS.get(name, 2), seg
    sv = vstream(src)
    for s in segs:  # each segment is the source's video (stream copies) and its first audio track
        v = vstream(s)
        assert (v["codec_name"], v["pix_fmt"], v["width"], v["height"], rotation(v)) == (
            sv["codec_name"], sv["pix_fmt"], sv["width"], sv["height"], rotation(sv)), v
        kinds = [x["codec_type"] for x in probe(s)["streams"]]
        assert kinds == ["video"] + ["audio"] * min(1, len(streams(src, "audio"))), kinds
    assert sum(len(pts_list(s)) for s in segs) == len(pts_list(src))
    scaled = []
    for s in segs:
        r = fn("scale", [s], height=HEIGHT, preset="ultrafast")
        if words and r.rc != 0:  # the damage that segment copied: scale decodes it and refuses
            return refused(r, s, words)
        assert r.rc == 0, r
        scaled.append(r.out / r.files()[0])
    assert not words, f"{name} went through segment and scale: {words!r} expected"
    st = fn("stitch", scaled)
    assert st.rc == 0, st
    out = st.out / "output.mp4"
    assert_picture(name, src, out, "scale")
    assert_same_frames(src, out)
    assert_audio(src, out)


def check_thumbnail(fn, name, src):
    r = fn("thumbnail", [src])
    if (name, "thumbnail") in REFUSED:
        return refused(r, src, REFUSED[name, "thumbnail"])
    assert r.rc == 0, r
    # the first frame at or after 0, 2, 4 ... s (the default every=2)
    origin = start_time(src)
    n = 0
    for t in pts_list(src):
        if t - origin >= 2 * n - 1e-6:
            n += 1
    assert r.meta["thumbnails"] == len(r.files()) == n, r
    sv = vstream(src)
    dar = Fraction(sv["width"], sv["height"]) * Fraction(sv.get("sample_aspect_ratio", "1:1").replace(":", "/"))
    if rotation(sv) % 180:
        dar = 1 / dar
    v = vstream(r.out / "thumb-00000.jpg")
    want = SHAPES.get(name, {}).get("thumb", (320, round(320 / dar / 2) * 2))
    assert (v["width"], v["height"]) == want and v.get("sample_aspect_ratio", "1:1") in ("1:1", "0:1"), v


def check_transcode(fn, name, src):
    r = fn("transcode", [src], preset="ultrafast")
    if (name, "transcode") in REFUSED:
        return refused(r, src, REFUSED[name, "transcode"])
    assert r.rc == 0, r
    out = r.out / "output.mp4"
    assert r.files() == ["output.mp4"] and vstream(out)["codec_name"] == "h264"
    assert not streams(out, "subtitle")
    assert_picture(name, src, out, "transcode")
    assert_same_frames(src, out)
    assert_audio(src, out)

