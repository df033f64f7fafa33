"""mp4_index.read: the format, streams and packets ffprobe reports, read from an MP4's
index in process, for the plain layouts vflow's stages write; None (the caller probes
with ffprobe) for every other layout, never a guess."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HERE, ffmpeg

sys.path.insert(0, str(HERE.parent / "base"))
import mp4_index  # noqa: E402


def ffprobe(path: Path) -> dict:
    return json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", "-show_format", "-show_streams", "-show_entries",
         "packet=stream_index,pts_time,duration_time,flags", str(path)],
        capture_output=True, text=True, check=True).stdout)


def by_stream(packets: list[dict], index: int) -> list[dict]:
    return sorted((p for p in packets if p["stream_index"] == index), key=lambda p: float(p["pts_time"]))


def assert_as_ffprobe(path: Path) -> dict:
    """read() gives what ffprobe gives for everything stitch uses: the format's start
    time and comment, each stream's kind, codec, time base, start, rates, and every
    packet's pts, flags and duration. One exception, where ffmpeg 5.1 is inconsistent:
    the last audio packet's duration (it shortens a track's last packet by the track's
    leading empty edit, or reports the full length where the index has a shorter one;
    stitch takes the typical packet length there either way)."""
    got, want = mp4_index.read(str(path), every_stream=True), ffprobe(path)
    assert got is not None, f"{path.name}: not read"
    assert got["format"]["start_time"] == want["format"]["start_time"]
    assert got["format"]["duration"] == want["format"]["duration"]
    assert got["format"]["format_name"] == want["format"]["format_name"]
    assert got["format"]["tags"].get("comment") == want["format"].get("tags", {}).get("comment")
    assert len(got["streams"]) == len(want["streams"])
    for g, w in zip(got["streams"], want["streams"]):
        for key in ("index", "codec_type", "codec_name", "time_base", "start_time", "sample_rate",
                    "avg_frame_rate", "r_frame_rate", "duration"):
            if key in g:
                assert g[key] == w.get(key), f"{path.name} stream {g['index']}: {key}"
        gp, wp = by_stream(got["packets"], g["index"]), by_stream(want["packets"], g["index"])
        assert len(gp) == len(wp), f"{path.name} stream {g['index']}: packet count"
        last = len(gp) - 1
        for i, (a, b) in enumerate(zip(gp, wp)):
            assert (a["pts_time"], a["flags"]) == (b["pts_time"], b["flags"]), f"{path.name} packet {i}"
            if "duration_time" in b and not (g["codec_type"] == "audio" and i == last):
                assert a["duration_time"] == b["duration_time"], f"{path.name} packet {i} duration"
    # what a function filters by, for H.264 (other codecs: not read with them)
    video = next(s for s in want["streams"] if s["codec_type"] == "video")
    facts = mp4_index.read(str(path), decoder_facts=True)
    if facts:  # as ffprobe(packets=True) without every_stream: the video's packets only
        assert {p["stream_index"] for p in facts["packets"]} == {video["index"]}
    assert (facts is not None) == (video["codec_name"] == "h264"), path.name
    if facts:
        fv = next(s for s in facts["streams"] if s["codec_type"] == "video")
        for key in ("field_order", "color_transfer"):
            assert fv.get(key) == video.get(key), f"{path.name}: {key}"
    return got


def clip(path: Path, *args, seconds: float = 2, size: str = "320x240", rate: int = 25,
         audio: str | None = "sine=frequency=440") -> Path:
    ins = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]
    if audio:
        ins += ["-f", "lavfi", "-i", f"{audio}:duration={seconds}"]
    ffmpeg(*ins, *args, *(["-shortest"] if audio else []), path)
    return path


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, request):
    """A source cut by segment (stream copy: segments whose audio starts after an empty
    edit, the first with the AAC priming packet) and one segment transcoded (B-frames:
    composition offsets and an edit list)."""
    from conftest import runner
    tmp = tmp_path_factory.mktemp("mp4index")
    fn = runner(tmp)
    src = clip(tmp / "src.mp4", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-c:a", "aac",
               "-ar", "44100", seconds=5)
    seg = fn("segment", [src], seconds=2, reencode="never")
    assert seg.rc == 0, seg
    segments = [seg.out / name for name in seg.files() if name.endswith(".mp4")]
    encoded = []
    for path in segments:
        enc = fn("transcode", [path], preset="veryfast")
        assert enc.rc == 0, enc
        encoded.append(enc.out / "output.mp4")
    return segments, encoded, src


def test_reads_segments_as_ffprobe_does(pipeline):
    segments, _, src = pipeline
    assert len(segments) >= 3
    assert_as_ffprobe(src)  # with the AAC priming packet (discarded by its edit)
    for path in segments:
        got = assert_as_ffprobe(path)
        assert got["format"]["tags"]["comment"].startswith("vflow-segment index=")


def test_reads_a_transcoded_segment_as_ffprobe_does(pipeline):
    got = assert_as_ffprobe(pipeline[1][1])
    # B-frames: in decode order (the index's) the times go back, so the composition
    # offsets and the edit that hides the encoder's delay were both read
    decode_order = [float(p["pts_time"]) for p in got["packets"] if p["stream_index"] == 0]
    assert decode_order != sorted(decode_order)
    assert got["streams"][0]["codec_name"] == "h264" and got["streams"][1]["codec_name"] == "aac"


@pytest.mark.parametrize("name,args,kw", [
    ("bframes-aac.mp4", ["-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac"], {}),
    ("faststart.mp4", ["-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac", "-movflags", "+faststart"], {}),
    ("video-only.mp4", ["-c:v", "libx264", "-preset", "ultrafast"], {"audio": None}),
    ("quicktime.mov", ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"], {}),
    ("hevc.mp4", ["-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error",
                  "-c:a", "aac"], {"seconds": 1, "size": "160x120"}),
    ("hdr-tagged.mp4", ["-c:v", "libx264", "-preset", "ultrafast", "-color_primaries", "bt2020",
                        "-color_trc", "smpte2084", "-colorspace", "bt2020nc", "-c:a", "aac"], {}),
    ("hlg-high10.mp4", ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le",
                        "-color_trc", "arib-std-b67", "-c:a", "aac"], {}),
    ("odd-rate.mp4", ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-ar", "22050"],
     {"rate": 24}),
])
def test_reads_plain_files_as_ffprobe_does(tmp_path, name, args, kw):
    assert_as_ffprobe(clip(tmp_path / name, *args, **kw))


def unread(path: Path) -> None:
    """read() declines (None): ffprobe is asked instead."""
    assert mp4_index.read(str(path)) is None


def test_declines_what_it_does_not_read(tmp_path):
    h264 = ["-c:v", "libx264", "-preset", "ultrafast"]
    # fragmented: the samples are described in moof boxes, not in moov
    unread(clip(tmp_path / "frag.mp4", *h264, "-c:a", "aac", "-movflags", "frag_keyframe+empty_moov"))
    # variable frame rate: samples of several lengths
    vfr = tmp_path / "vfr.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30:duration=2", "-vf",
           "setpts='N/30/TB+if(gte(N,20),0.5/TB,0)'", *h264, "-fps_mode", "passthrough",
           "-enc_time_base", "-1", vfr)
    unread(vfr)
    # audio only, and two audio tracks: not the one-video layout stitch joins
    audio = tmp_path / "audio.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", audio)
    unread(audio)
    two = tmp_path / "two-audio.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=1", "-f", "lavfi", "-i",
           "sine=duration=1", "-map", "0", "-map", "1", "-map", "1", *h264, "-c:a", "aac", two)
    unread(two)
    # interlaced H.264: its field order comes from decoding, so not with decoder facts
    interlaced = clip(tmp_path / "interlaced.mp4", "-vf", "setfield=tff", "-c:v", "libx264", "-preset",
                      "ultrafast", "-flags", "+ildct+ilme", "-c:a", "aac")
    assert mp4_index.read(str(interlaced)) is not None
    assert mp4_index.read(str(interlaced), decoder_facts=True) is None
    # Opus: its edit starts inside the first packet (the decoder's pre-skip), which
    # ffmpeg turns into samples to skip
    unread(clip(tmp_path / "opus.mp4", *h264, "-c:a", "libopus", "-ar", "48000"))
    # not an MP4 at all, empty, and truncated (the index first, the media cut off)
    mkv = clip(tmp_path / "a.mkv", *h264, "-c:a", "aac")
    unread(mkv)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    unread(empty)
    whole = clip(tmp_path / "whole.mp4", *h264, "-c:a", "aac", "-movflags", "+faststart")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:os.path.getsize(whole) // 2])
    unread(cut)
    # an index that claims a billion samples (as many packets in memory): not believed
    data = bytearray(whole.read_bytes())
    at = data.index(b"stts") + 12  # after the box type, version and flags, entry count
    data[at:at + 4] = (1 << 30).to_bytes(4, "big")
    forged = tmp_path / "forged.mp4"
    forged.write_bytes(bytes(data))
    unread(forged)
    # audio whose rate only decoding tells: described as SBR (HE-AAC), or with an entry
    # rate other than its timescale
    sbr = bytearray(whole.read_bytes())
    at = sbr.index(bytes([0x05, 0x80, 0x80, 0x80]))  # the DecoderSpecificInfo tag and length
    sbr[at + 5] = (5 << 3) | (sbr[at + 5] & 7)
    (tmp_path / "sbr.mp4").write_bytes(bytes(sbr))
    unread(tmp_path / "sbr.mp4")
    rate = bytearray(whole.read_bytes())
    entry = rate.index(b"mp4a")
    rate[entry + 28:entry + 30] = (22050).to_bytes(2, "big")  # the entry's rate, 16.16
    (tmp_path / "rate.mp4").write_bytes(bytes(rate))
    unread(tmp_path / "rate.mp4")
    # a non-media file with an MP4-looking header
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\xff" * 100)
    unread(junk)


def test_stitch_plans_the_same_joins_from_the_index_without_starting_ffprobe(pipeline, fn, tmp_path):
    """stitch reads vflow's own segments from their indexes: the joins it plans (each
    file's duration in the concat list, whether the audio is seamless) are the ones it
    plans from ffprobe's view, and no ffprobe process is started."""
    sys.path.insert(0, str(HERE.parent / "stitch"))
    import stitch
    from vflowfn import ffprobe as probe_with_ffprobe
    for files in pipeline[:2]:
        paths = [str(p) for p in files]
        indexed = stitch.probe_inputs(paths)
        assert all("decoder_config" in s for i in indexed for s in i["streams"])  # from the index
        probed = [probe_with_ffprobe(p, packets=True, every_stream=True) for p in paths]
        assert stitch.plan(paths, indexed, True) == stitch.plan(paths, probed, True)
    env, log = ffprobe_recorder(tmp_path)
    joined = fn("stitch", pipeline[1], env=env)
    assert joined.rc == 0, joined
    assert not log.exists(), log.read_text()
    # its index written into room reserved before the media (no faststart pass): what
    # the index did not use is the free box after it
    out = joined.out / "output.mp4"
    assert mp4_index.index_first(str(out)) and top_level(out)[:3] == [b"ftyp", b"moov", b"free"]
    assert_as_ffprobe(out)
    # and where the layout is not one it reads, it does probe (the recorder is in use)
    mkv = tmp_path / "a.mkv"
    ffmpeg("-i", pipeline[1][0], "-c", "copy", mkv)
    fn("stitch", [mkv], env=env, checkOrder=False)
    assert log.exists() and str(mkv) in log.read_text()


def ffprobe_recorder(tmp_path: Path) -> tuple[dict, Path]:
    """An environment whose PATH finds first an ffprobe that records each start in the
    returned log, then runs the real one."""
    wrapper, log = tmp_path / "bin", tmp_path / "ffprobe.log"
    wrapper.mkdir()
    real = subprocess.run(["sh", "-c", "command -v ffprobe"], capture_output=True, text=True).stdout.strip()
    (wrapper / "ffprobe").write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {real} "$@"\n')
    (wrapper / "ffprobe").chmod(0o755)
    return {"PATH": f"{wrapper}:{os.environ['PATH']}"}, log


def test_segment_and_transcode_read_plain_mp4s_without_starting_ffprobe(pipeline, fn, tmp_path):
    """segment reads an MP4 source's streams and keyframes from its index, transcode a
    segment's facts: the same segments and encodes, no ffprobe started. An input they
    cannot read so (here interlaced H.264, for transcode) is probed."""
    segments, _, src = pipeline
    env, log = ffprobe_recorder(tmp_path)
    again = fn("segment", [src], seconds=2, reencode="never", env=env)
    assert again.rc == 0, again
    assert [(again.out / n).read_bytes() for n in again.files() if n.endswith(".mp4")] == \
        [p.read_bytes() for p in segments]
    enc = fn("transcode", [segments[0]], preset="ultrafast", env=env)
    assert enc.rc == 0, enc
    assert not log.exists(), log.read_text()
    # the encode's index written into room reserved for it (no faststart pass)
    assert top_level(enc.out / "output.mp4")[:3] == [b"ftyp", b"moov", b"free"]
    interlaced = clip(tmp_path / "interlaced.mp4", "-vf", "setfield=tff", "-c:v", "libx264", "-preset",
                      "ultrafast", "-flags", "+ildct+ilme", "-c:a", "aac", seconds=1)
    enc = fn("transcode", [interlaced], preset="ultrafast", env=env)
    assert enc.rc == 0, enc
    assert log.exists() and str(interlaced) in log.read_text()


def top_level(path: Path) -> list[bytes]:
    data, kinds, off = path.read_bytes(), [], 0
    while off < len(data):
        size = int.from_bytes(data[off:off + 4], "big")
        kinds.append(data[off + 4:off + 8])
        off += size
    return kinds


def test_index_first_tells_a_usable_layout_from_an_index_written_over_the_media(tmp_path):
    h264 = ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"]
    first = clip(tmp_path / "first.mp4", *h264, "-movflags", "+faststart")
    last = clip(tmp_path / "last.mp4", *h264)
    reserved = tmp_path / "reserved.mp4"
    ffmpeg("-i", last, "-c", "copy", "-moov_size", 200000, reserved)
    assert mp4_index.index_first(str(first)) and mp4_index.index_first(str(reserved))
    assert not mp4_index.index_first(str(last))
    # room too small: ffmpeg 5.1 says so, exits 0, and has written the index over the
    # start of the media; stitch must not hand that on (it joins again with faststart)
    broken = tmp_path / "broken.mp4"
    ffmpeg("-i", last, "-c", "copy", "-moov_size", 1000, broken)
    assert not mp4_index.index_first(str(broken))
