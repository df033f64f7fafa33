"""Each function's output, checked with ffprobe, on generated clips and the real clips."""
import json
import math

import pytest

from conftest import astream, count_frames, ffmpeg, fps, packets, probe, pts_list, span, stream_duration, vstream


def frame_tol(path):
    return 1.0 / fps(path) + 1e-3


def test_probe_multistream(fn, videos):
    r = fn("probe", [videos["nasa"]])
    assert r.rc == 0, r
    assert r.meta["streams"] == 6 and r.meta["width"] == 320 and r.meta["codec"] == "h264"
    assert len(json.loads((r.out / "probe.json").read_text())["streams"]) == 6


def check_segments(r, src, seconds, expect_n):
    segs = sorted(r.out.iterdir())
    assert r.meta["segments"] == len(segs) == expect_n, r
    assert r.meta["duration"] == pytest.approx(float(probe(src)["format"]["duration"]), abs=1e-3)
    for s in segs:
        pk = packets(s)
        assert "K" in min(pk, key=lambda p: float(p["pts_time"]))["flags"], f"{s.name} starts without a keyframe"
    total = sum(count_frames(s) for s in segs)
    assert total == count_frames(src)
    durs = [stream_duration(s) for s in segs]
    assert sum(durs) == pytest.approx(stream_duration(src), abs=frame_tol(src) * 2)
    return segs, durs


@pytest.fixture(scope="session")
def segmented(session_fn, clips, videos):
    """segmented(clip, seconds) -> segment's Result, made once per session (the split
    tests below and the split -> stitch tests share them; nothing writes into them)."""
    cache = {}

    def get(clip, seconds):
        if (clip, seconds) not in cache:
            src = clips[clip] if clip in clips else videos[clip]
            cache[clip, seconds] = session_fn("segment", [src], seconds=seconds)
        return cache[clip, seconds]

    return get


def test_segment_stream_copy_at_keyframes(segmented, clips):
    r = segmented("gop25", 2)
    assert r.rc == 0, r
    segs, durs = check_segments(r, clips["gop25"], 2, 5)
    assert [s.name for s in segs] == [f"segment-{i:05d}.mp4" for i in range(5)]
    assert all(d == pytest.approx(2.0, abs=0.05) for d in durs)
    # stream copy keeps the source's encoding: ultrafast x264 has no B-frames and GOP 25.
    assert sum(1 for p in packets(segs[1]) if "K" in p["flags"]) == 2


def test_segment_reencodes_when_gop_too_long(fn, segmented, clips):
    r = segmented("longgop", 2)
    assert r.rc == 0, r
    segs, durs = check_segments(r, clips["longgop"], 2, 5)
    assert all(d == pytest.approx(2.0, abs=0.05) for d in durs)
    never = fn("segment", [clips["longgop"]], seconds=2, reencode="never")
    assert never.rc == 0 and never.meta["segments"] == 1


def test_segment_two_hours_in_half_second_segments(fn, tmp_path):
    """A 2-hour input cut every 0.5 s: the forced keyframe times no longer go into one
    argument (14,400 times overflowed the kernel's 128 KiB limit). Its frames are 720 s
    apart, so the test encodes 11 frames, not 2 hours."""
    src = tmp_path / "two-hours.mp4"
    ffmpeg("-f", "lavfi", "-t", 11, "-i", "testsrc=size=64x48:rate=1", "-vf", "setpts=PTS*720",
           "-c:v", "libx264", "-preset", "ultrafast", "-g", 1, "-fps_mode", "passthrough", src)
    assert float(probe(src)["format"]["duration"]) > 7200
    r = fn("segment", [src], seconds=0.5)
    assert r.rc == 0, r
    segs = sorted(r.out.iterdir())
    assert r.meta["segments"] == len(segs) == 11, r
    assert sum(count_frames(s) for s in segs) == 11


def test_segment_multistream_keeps_first_video_and_audio(fn, videos):
    r = fn("segment", [videos["nasa"]], seconds=4)
    assert r.rc == 0, r
    for s in sorted(r.out.iterdir()):
        kinds = [(x["codec_type"], x.get("width")) for x in probe(s)["streams"]]
        assert kinds == [("video", 320), ("audio", None)]


def test_segment_vp8_webm_stream_copy(segmented, videos):
    r = segmented("bbb", 5)
    assert r.rc == 0, r
    segs, _ = check_segments(r, videos["bbb"], 5, 6)
    assert all(s.suffix == ".webm" and vstream(s)["codec_name"] == "vp8" for s in segs)


@pytest.fixture(scope="session")
def split_scale(session_fn, segmented):
    """split_scale(clip, seconds, height) -> (segments, scaled segments), made once."""
    cache = {}

    def get(clip, seconds, height):
        if (clip, seconds, height) not in cache:
            seg = segmented(clip, seconds)
            assert seg.rc == 0, seg
            segs = [seg.out / f for f in seg.files()]
            scaled = []
            for s in segs:
                r = session_fn("scale", [s], height=height, preset="ultrafast")
                assert r.rc == 0, r
                scaled += [r.out / f for f in r.files()]
            cache[clip, seconds, height] = segs, scaled
        return cache[clip, seconds, height]

    return get


def stitch(fn, inputs, container="mp4", **params):
    st = fn("stitch", inputs, container=container, **params)
    assert st.rc == 0, st
    return st.out / st.files()[0]


def assert_same_timeline(src, out, audio_copied=True, shifted=False):
    """The output keeps the source's timeline: the video starts where the source's did
    (within a frame), with the same frames and duration (within a frame), the audio
    lasts as long (within a packet), and nothing drifts per join: every frame, and
    every audio packet where the audio was copied, is at its source time (1 ms: webm),
    or, where a stage `shifted` the whole (matroska makes negative timestamps of audio
    priming 0), all by the same amount."""
    assert count_frames(out) == count_frames(src)
    v0, v1, frame = span(src)
    o0, o1, _ = span(out)
    assert abs(o0 - v0) <= frame + 1e-6, f"video starts at {o0} instead of {v0}"
    assert abs((o1 - o0) - (v1 - v0)) <= frame + 1e-6, f"video lasts {o1 - o0} instead of {v1 - v0}"
    a0, a1, packet = span(src, "a:0")
    b0, b1, _ = span(out, "a:0")
    assert abs((b1 - b0) - (a1 - a0)) <= packet + 1e-6, f"audio lasts {b1 - b0} instead of {a1 - a0}"
    offsets = [b - a for a, b in zip(pts_list(src), pts_list(out))]
    base = offsets[0] if shifted else 0.0
    drift = max(abs(d - base) for d in offsets)
    assert drift <= 1e-3, f"a frame is {drift:.6f} s off its source time (+{base:.6f} s)"
    if audio_copied:
        sa, oa = pts_list(src, "a:0"), pts_list(out, "a:0")
        assert len(sa) == len(oa)
        drift = max(abs(a - b) for a, b in zip(sa, oa))
        assert drift <= 1e-3, f"an audio packet is {drift:.6f} s off its source time"


# split -> stitch and split -> scale -> stitch: generated clips (stream copy cuts and,
# for a single keyframe, re-encoding cuts), the car clip (12.5 fps, AAC 48 kHz without
# priming) and Big Buck Bunny (VP8/Vorbis webm, 24 fps in ms timestamps, video at 3 ms).
@pytest.mark.parametrize("clip, seconds, height, containers", [
    ("gop25", 2, 180, ("mp4", "mp4")), ("longgop", 2, 180, ("mp4", "mp4")),
    ("intel", 9.6, 144, ("mp4", "mp4")), ("bbb", 5, 144, ("webm", "mkv"))])
def test_split_stitch_keeps_the_timeline(fn, split_scale, clips, videos, clip, seconds, height, containers):
    src = clips[clip] if clip in clips else videos[clip]
    segs, scaled = split_scale(clip, seconds, height)
    assert len(segs) >= 3
    assert_same_timeline(src, stitch(fn, segs, containers[0]))
    out = stitch(fn, scaled, containers[1])
    assert_same_timeline(src, out)
    v = vstream(out)
    assert v["height"] == height and v["codec_name"] == "h264"


def test_stitch_refuses_wrong_order_missing_and_mismatch(fn, split_scale):
    _, scaled = split_scale("gop25", 2, 180)
    swapped = fn("stitch", [scaled[0], scaled[2], scaled[1], *scaled[3:]])
    assert swapped.rc == 1 and "out of order" in swapped.stderr and swapped.files() == []
    missing = fn("stitch", [scaled[0], *scaled[2:]])
    assert missing.rc == 1 and "missing" in missing.stderr and str(scaled[2]) in missing.stderr
    other = fn("scale", [scaled[1]], height=120, preset="ultrafast")
    mixed = fn("stitch", [scaled[0], other.out / "output.mp4"], checkOrder=False)
    assert mixed.rc == 1 and "width" in mixed.stderr and "output.mp4" in mixed.stderr
    webm = fn("stitch", scaled, container="webm")
    assert webm.rc == 2 and "webm" in webm.stderr


def test_stitch_refuses_gaps(fn, split_scale, tmp_path):
    from conftest import ffmpeg
    _, scaled = split_scale("gop25", 2, 180)
    # a segment that lost its last 3 frames (its tag still says 2 s): a gap in video
    short = tmp_path / "short.mp4"
    ffmpeg("-i", scaled[1], "-map", "0", "-c", "copy", "-frames:v", 47, short)
    r = fn("stitch", [scaled[0], short, *scaled[2:]])
    assert r.rc == 1 and "gap in video" in r.stderr and "short.mp4" in r.stderr and r.files() == []
    # a segment whose audio stops 0.2 s early: a gap in audio at the next join
    early = tmp_path / "early.mp4"
    ffmpeg("-i", scaled[1], "-map", "0", "-c:v", "copy", "-af", "atrim=end=1.8", "-c:a", "aac", early)
    r = fn("stitch", [scaled[0], early, *scaled[2:]])
    assert r.rc == 1 and "gap in audio" in r.stderr and str(scaled[2]) in r.stderr and r.files() == []


def test_stitch_joins_audio_encoded_per_segment(fn, clips, split_scale, tmp_path):
    """Audio that a per-segment stage re-encoded (here Opus) is off its source packet
    grid at every join by up to a packet: stitch encodes it once over the whole, joined
    to the sample by timestamps, instead of letting it drift."""
    from conftest import ffmpeg
    _, scaled = split_scale("gop25", 2, 180)
    opus = []
    for i, s in enumerate(scaled):
        opus.append(tmp_path / f"opus{i}.mkv")
        ffmpeg("-i", s, "-map", "0", "-c:v", "copy", "-c:a", "libopus", "-b:a", "64k", opus[-1])
    out = stitch(fn, opus, "mp4")
    assert astream(out)["codec_name"] == "aac"
    assert_same_timeline(clips["gop25"], out, audio_copied=False, shifted=True)


def test_scale_codecs(fn, clips):
    for codec in ("hevc", "vp9", "av1"):
        r = fn("scale", [clips["faststart"]], height=144, codec=codec, preset="ultrafast", crf=40)
        assert r.rc == 0, r
        out = r.out / r.files()[0]
        v = vstream(out)
        assert (v["codec_name"], v["height"], v["width"]) == (codec, 144, 256)
        assert count_frames(out) == count_frames(clips["faststart"])


def test_crop(fn, clips):
    r = fn("crop", [clips["faststart"]], w=320, h=180, x=100, y=50, preset="ultrafast")
    assert r.rc == 0, r
    v = vstream(r.out / "output.mp4")
    assert (v["width"], v["height"]) == (320, 180)
    bad = fn("crop", [clips["faststart"]], w=600, h=180, x=100, y=0)
    assert bad.rc == 2 and "640x360" in bad.stderr and "faststart.mp4" in bad.stderr


def test_transcode_bitrate_webm_and_both_rates(fn, clips):
    r = fn("transcode", [clips["faststart"]], codec="vp9", bitrate="300k", container="webm", preset="ultrafast")
    assert r.rc == 0, r
    out = r.out / "output.webm"
    assert vstream(out)["codec_name"] == "vp9" and astream(out)["codec_name"] == "opus"
    assert stream_duration(out) == pytest.approx(6.0, abs=0.05)
    r = fn("transcode", [clips["faststart"]], codec="hevc", crf=30, container="mkv", preset="ultrafast")
    assert r.rc == 0 and vstream(r.out / "output.mkv")["codec_name"] == "hevc"
    assert fn("transcode", [clips["faststart"]], crf=20, bitrate="1M").rc == 2
    assert fn("transcode", [clips["faststart"]], bitrate="fast").rc == 2
    assert fn("transcode", [clips["faststart"]], codec="h264", container="webm").rc == 2


def test_thumbnails_every_n_seconds(fn, clips):
    r = fn("thumbnail", [clips["gop25"]], every=3, width=160)
    assert r.rc == 0, r
    assert r.files() == [f"thumb-{i:05d}.jpg" for i in range(4)]  # 0, 3, 6, 9 s
    assert r.meta == {"thumbnails": 4}
    v = vstream(r.out / "thumb-00003.jpg")
    assert (v["width"], v["height"]) == (160, 90)


def test_thumbnails_on_scene_change(fn, videos):
    r = fn("thumbnail", [videos["bbb"]], sceneChange=True, width=128)
    assert r.rc == 0, r
    assert 2 <= r.meta["thumbnails"] == len(r.files()) < 30


def test_sprite_from_thumbnails_and_from_video(fn, clips):
    th = fn("thumbnail", [clips["gop25"]], every=2, width=160)
    imgs = [th.out / f for f in th.files()]
    r = fn("sprite", imgs, columns=3, width=100)
    assert r.rc == 0, r
    v = vstream(r.out / "sprite.jpg")
    assert r.meta == {"tiles": 5, "rows": 2} and (v["width"], v["height"]) == (300, 2 * 56)
    r = fn("sprite", [clips["gop25"]], columns=4, width=64, every=1)
    assert r.rc == 0, r
    assert r.meta == {"tiles": 10, "rows": 3} and vstream(r.out / "sprite.jpg")["width"] == 256
    assert fn("sprite", [clips["gop25"], imgs[0]]).rc == 2


def test_watermark_text_and_image(fn, clips, tmp_path):
    src = clips["faststart"]
    r = fn("watermark", [src], text="it's 100%: [vflow], ok", position="topLeft", preset="ultrafast")
    assert r.rc == 0, r
    out = r.out / "output.mp4"
    assert count_frames(out) == count_frames(src) and vstream(out)["width"] == 640
    th = fn("thumbnail", [src], every=5, width=64)
    r = fn("watermark", [src, th.out / "thumb-00000.jpg"], position="center", opacity=0.5, preset="ultrafast")
    assert r.rc == 0, r
    assert count_frames(r.out / "output.mp4") == count_frames(src)
    assert fn("watermark", [src]).rc == 2  # neither text nor image


@pytest.mark.parametrize("codec, name, acodec", [("aac", "audio.m4a", "aac"), ("opus", "audio.opus", "opus"),
                                                 ("flac", "audio.flac", "flac"), ("copy", "audio.ogg", "vorbis")])
def test_extract_audio(fn, videos, codec, name, acodec):
    r = fn("extract-audio", [videos["bbb"]], codec=codec)
    assert r.rc == 0, r
    assert r.files() == [name]
    out = r.out / name
    assert astream(out)["codec_name"] == acodec and not any(
        s["codec_type"] == "video" for s in probe(out)["streams"])
    # within an audio packet (plus codec priming) of the source's audio
    assert float(probe(out)["format"]["duration"]) == pytest.approx(30.0, abs=0.1)


def test_extract_audio_without_audio(fn, tmp_path):
    from conftest import ffmpeg
    silent = tmp_path / "silent.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x90:duration=1", "-c:v", "libx264", "-preset", "ultrafast", silent)
    r = fn("extract-audio", [silent])
    assert r.rc == 1 and "no audio stream" in r.stderr and "silent.mp4" in r.stderr


def sharpness(path, frame, box):
    import cv2
    cap = cv2.VideoCapture(str(path))
    cap.set(cv2.CAP_PROP_POS_FRAMES, frame)
    ok, img = cap.read()
    assert ok
    x, y, w, h = box
    return cv2.Laplacian(cv2.cvtColor(img[y:y + h, x:x + w], cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()


def test_blur_regions_from_detections(fn, clips, tmp_path):
    src = clips["gop25"]
    det = {"version": 1, "width": 640, "height": 360, "everyNth": 5, "frames": [
        {"frame": n, "time": n / 25, "objects": [{"label": "face", "score": 0.9, "box": [100, 100, 200, 120]}]}
        for n in range(0, 100, 5)] + [{"frame": n, "time": n / 25, "objects": []} for n in range(100, 250, 5)]}
    (tmp_path / "det.json").write_text(json.dumps(det))
    r = fn("blur", [src, tmp_path / "det.json"], strength=10, preset="ultrafast")
    assert r.rc == 0, r
    out = r.out / "output.mp4"
    assert r.meta == {"regions": 1} and count_frames(out) == 250
    inside = (120, 120, 150, 80)
    assert sharpness(out, 50, inside) < 0.3 * sharpness(src, 50, inside)  # blurred while detected
    assert sharpness(out, 150, inside) > 0.7 * sharpness(src, 150, inside)  # untouched after
    (tmp_path / "bad.json").write_text("{not json")
    bad = fn("blur", [src, tmp_path / "bad.json"])
    assert bad.rc == 1 and "bad.json" in bad.stderr and bad.files() == []


def test_detect_cpu_writes_per_frame_json(fn, videos):
    r = fn("detect", [videos["intel"]], everyNth=10, threshold=0.0, env={"VFLOW_DETECT_BACKEND": "cpu"})
    assert r.rc == 0, r
    doc = json.loads((r.out / "detections.json").read_text())
    n = count_frames(videos["intel"])
    assert doc["backend"] == "cpu:ssd_mobilenetv2_oidv4" and doc["width"] == 768 and doc["height"] == 432
    assert doc["decoder"] == "software"  # no GPU: no NVDEC
    assert [f["frame"] for f in doc["frames"]] == list(range(0, n, 10))
    assert {k: r.meta[k] for k in ("objects", "frames")} == {
        "objects": sum(len(f["objects"]) for f in doc["frames"]), "frames": math.ceil(n / 10)}
    assert r.meta["loadSeconds"] > 0  # a process per invocation loads its detector
    for f in doc["frames"]:
        for o in f["objects"]:
            x, y, w, h = o["box"]
            assert 0 <= o["score"] <= 1 and 0 <= x and 0 <= y and x + w <= 768 and y + h <= 432, o
    # the detections feed blur, which keeps the frame count
    b = fn("blur", [videos["intel"], r.out / "detections.json"], preset="ultrafast")
    assert b.rc == 0 and count_frames(b.out / "output.mp4") == n


def iou(a, b):
    """Intersection over union of two [x, y, w, h] boxes."""
    w = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


def test_detect_on_the_cpu_finds_the_cars_and_nothing_where_the_lot_is_empty(fn, videos):
    # intel_car-detection.mp4: a parking lot from above, one or two cars in view from
    # about 4 to 8.5 s, 14.5 to 19 s and 25 to 28 s, none from 9 to 14 s and 20 to 25 s
    # (seen frame by frame). Every 3rd frame of 377 (12.5 fps): the OIDv4 model kept 13
    # cars in 12 frames at 0.6, boxes 124 to 219 px wide and 91 to 324 px high.
    # A model that finds nothing, calls everything a car, or decodes its boxes wrong
    # fails one of these.
    r = fn("detect", [videos["intel"]], everyNth=3, threshold=0.6, classes="car",
           env={"VFLOW_DETECT_BACKEND": "cpu"})
    assert r.rc == 0, r
    doc = json.loads((r.out / "detections.json").read_text())
    cars = [(f["time"], o) for f in doc["frames"] for o in f["objects"]]
    assert all(o["label"] == "car" for _, o in cars)
    with_car = sorted({t for t, _ in cars})
    assert len(with_car) >= 8, with_car
    assert not [t for t in with_car if 9 <= t < 14 or 20 <= t < 25], with_car
    assert any(4 <= t < 9 for t in with_car) and any(14.5 <= t < 20 for t in with_car), with_car
    for _, o in cars:  # a car from above in a 768x432 frame, not the whole frame or a speck
        assert 60 <= o["box"][2] <= 400 and 60 <= o["box"][3] <= 400, o
    # where the car is: at 26.4 s (frame 330) one white car, alone in view, fills x
    # 141..309, y 15..317 (the box was drawn on the frame and looked at): one box there.
    # Boxes decoded against the wrong anchors land elsewhere, or several times over.
    white = [o["box"] for t, o in cars if abs(t - 26.4) < 0.01]
    assert len(white) == 1 and iou(white[0], [141, 15, 168, 302]) >= 0.85, white
    # a class this model does not know is refused, naming it
    bad = fn("detect", [videos["intel"]], everyNth=50, classes="car,zebra", env={"VFLOW_DETECT_BACKEND": "cpu"})
    assert bad.rc == 2 and "zebra" in bad.stderr and bad.files() == []


@pytest.mark.gpu
def test_detect_torch_random_weights(fn, clips):
    # Selected only with `-m gpu` (run-tests.sh --gpu, on the GPU machine); there a
    # missing torch or GPU is a failure, not a skip.
    import torch
    import torchvision  # noqa: F401
    assert torch.cuda.is_available(), "no GPU visible to torch"
    r = fn("detect", [clips["faststart"]], randomWeights=True, threshold=0.0, everyNth=2)
    assert r.rc == 0, r
    doc = json.loads((r.out / "detections.json").read_text())
    assert doc["backend"].startswith("torch:") and r.meta["frames"] == len(doc["frames"]) == 75
    assert doc["decoder"] == "nvdec", doc["decoder"]  # H100/H200 decode H.264 on NVDEC
    assert r.meta["objects"] == sum(len(f["objects"]) for f in doc["frames"])
