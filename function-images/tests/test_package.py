"""package: an adaptive stream (HLS and DASH on the same CMAF segments) from renditions
made the way the ladder example makes them: split -> scale per segment -> stitch."""
import re
import subprocess
from pathlib import Path

import pytest

from conftest import count_frames, ffmpeg, gen_clip, packets, vstream

HEIGHTS = [240, 144]


@pytest.fixture(scope="module")
def ladder(tmp_path_factory, session_fn):
    """A 6 s clip whose own keyframes (every 2.5 s) are not where the split cuts: split
    re-encodes at 2 s; two renditions, each segment scaled with keyint 2, stitched."""
    d = tmp_path_factory.mktemp("ladder")
    src = gen_clip(d / "src.mp4", seconds=6, size="320x240", gop=62)
    split = session_fn("segment", [src], seconds=2)
    assert split.rc == 0, split
    segments = [split.out / f for f in split.files()]
    renditions = []
    for h in HEIGHTS:
        scaled = []
        for s in segments:
            r = session_fn("scale", [s], height=h, preset="ultrafast", keyint=2)
            assert r.rc == 0, r
            scaled.append(r.out / "output.mp4")
        st = session_fn("stitch", scaled)
        assert st.rc == 0, st
        renditions.append(st.out / "output.mp4")
    pk = session_fn("package", renditions, seconds=2)
    assert pk.rc == 0, pk
    return src, renditions, pk


def playlist_segments(path: Path) -> list[tuple[float, str]]:
    """(EXTINF duration, URI) of a media playlist."""
    lines = path.read_text().splitlines()
    return [(float(re.match(r"#EXTINF:([\d.]+)", a).group(1)), b) for a, b in zip(lines, lines[1:])
            if a.startswith("#EXTINF:")]


def test_master_playlist_and_mpd_list_every_rendition(ladder):
    src, renditions, pk = ladder
    assert pk.meta == {"renditions": 2, "segments": 3, "duration": pytest.approx(6.0, abs=0.05)}
    master = (pk.out / "master.m3u8").read_text()
    infs = re.findall(r"#EXT-X-STREAM-INF:(.*)\n(\S+)", master)
    assert len(infs) == 2, master
    for (attrs, uri), h in zip(infs, HEIGHTS):
        assert re.search(rf"RESOLUTION=\d+x{h}\b", attrs) and 'CODECS="avc1.' in attrs and "mp4a.40.2" in attrs
        assert int(re.search(r"BANDWIDTH=(\d+)", attrs).group(1)) >= int(
            re.search(r"AVERAGE-BANDWIDTH=(\d+)", attrs).group(1)) > 10_000
        assert (pk.out / uri).is_file()
    assert '#EXT-X-MEDIA:TYPE=AUDIO' in master
    # ffprobe reads both entry points (the dash demuxer wants an absolute path) and
    # finds every rendition and the audio.
    for entry in ("master.m3u8", "manifest.mpd"):
        out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,height",
                              "-of", "csv=p=0", str((pk.out / entry).resolve())],
                             capture_output=True, text=True, check=True).stdout.split()
        heights = sorted({int(x.split(",")[1]) for x in out if x.startswith("video")})
        assert heights == sorted(HEIGHTS), (entry, out)
        assert any(x.startswith("audio") for x in out), (entry, out)
    mpd = (pk.out / "manifest.mpd").read_text()
    assert "PROGRAM-DATE-TIME" not in (pk.out / "media_0.m3u8").read_text()
    assert 'bitstreamSwitching="true"' not in mpd and mpd.count("<Representation ") == 3


def test_every_rendition_cuts_on_the_same_times_at_keyframes(ladder):
    src, renditions, pk = ladder
    lists = [playlist_segments(pk.out / f"media_{i}.m3u8") for i in range(2)]
    assert [d for d, _ in lists[0]] == [d for d, _ in lists[1]]
    assert sum(d for d, _ in lists[0]) == pytest.approx(6.0, abs=0.05)
    for i, segs in enumerate(lists):
        init = (pk.out / f"init-{i}.m4s").read_bytes()
        for _, uri in segs:
            joined = pk.out.parent / f"probe-{i}-{uri}.mp4"
            joined.write_bytes(init + (pk.out / uri).read_bytes())
            first = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                                    "packet=flags", "-read_intervals", "%+#1", "-of", "csv=p=0", str(joined)],
                                   capture_output=True, text=True, check=True).stdout.split()
            assert first and first[0].startswith("K"), (uri, first)


def test_a_player_switching_rendition_mid_stream_decodes_every_frame(ladder, tmp_path):
    """Player-style: the first segment from 240p, the rest from 144p (a new init segment at
    the switch, as a player loads it), decoded by ffmpeg's HLS demuxer with errors fatal."""
    src, renditions, pk = ladder
    hi, lo = (playlist_segments(pk.out / f"media_{i}.m3u8") for i in range(2))
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-TARGETDURATION:3", "#EXT-X-PLAYLIST-TYPE:VOD",
             '#EXT-X-MAP:URI="init-0.m4s"', f"#EXTINF:{hi[0][0]:.6f},", hi[0][1], '#EXT-X-MAP:URI="init-1.m4s"']
    for d, uri in lo[1:]:
        lines += [f"#EXTINF:{d:.6f},", uri]
    switched = pk.out / "switched.m3u8"
    switched.write_text("\n".join(lines + ["#EXT-X-ENDLIST"]) + "\n")
    try:
        out = subprocess.run(["ffmpeg", "-v", "error", "-xerror", "-i", str(switched.resolve()), "-map", "0:v",
                              "-vf", "scale=160:120", "-f", "framemd5", "-"], capture_output=True, text=True)
    finally:
        switched.unlink()
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
    frames = [x for x in out.stdout.splitlines() if not x.startswith("#")]
    assert len(frames) == count_frames(src) == 150


def test_renditions_with_keyframes_at_other_times_are_refused(fn, tmp_path):
    a = gen_clip(tmp_path / "a.mp4", seconds=4, size="160x120", gop=50)
    b = gen_clip(tmp_path / "b.mp4", seconds=4, size="160x120", gop=30)
    r = fn("package", [a, b], seconds=2)
    assert r.rc == 1 and str(b) in r.stderr and "do not line up" in r.stderr, r
    assert r.files() == [] and r.meta is None


def test_a_codec_cmaf_does_not_carry_is_refused(fn, tmp_path):
    a = tmp_path / "mpeg4.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=2", "-c:v", "mpeg4", a)
    r = fn("package", [a])
    assert r.rc == 1 and str(a) in r.stderr and "mpeg4" in r.stderr, r
    assert r.files() == [] and r.meta is None


def test_renditions_of_different_lengths_are_refused(fn, tmp_path):
    a = gen_clip(tmp_path / "a.mp4", seconds=4, size="160x120", gop=50)
    b = gen_clip(tmp_path / "b.mp4", seconds=3, size="160x120", gop=50)
    r = fn("package", [a, b], seconds=2)
    assert r.rc == 1 and str(b) in r.stderr and "lasts" in r.stderr, r
    assert vstream(a)["height"] == 120 and r.files() == []


@pytest.mark.parametrize("function", ["scale", "transcode"])
def test_keyint_puts_keyframes_at_exactly_its_times_and_not_at_scene_cuts(fn, tmp_path, function):
    """A clip with two scene cuts (1.32 s, 2.72 s): the encoder alone puts keyframes there
    (they differ between renditions of other sizes); keyint 1 puts them at 0, 1, 2, ... only."""
    cuts = tmp_path / "cuts.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=1.3", "-f", "lavfi", "-i",
           "mandelbrot=size=320x240:rate=25", "-f", "lavfi", "-i", "smptebars=size=320x240:rate=25:duration=1.5",
           "-filter_complex", "[1]trim=duration=1.4,setpts=PTS-STARTPTS[m];[0][m][2]concat=n=3:v=1:a=0",
           "-c:v", "libx264", "-preset", "ultrafast", "-g", "1000", cuts)
    args = {"height": 120} if function == "scale" else {}

    def keyframes(keyint):
        r = fn(function, [cuts], preset="veryfast", keyint=keyint, **args)
        assert r.rc == 0, r
        return [round(float(p["pts_time"]), 2) for p in packets(r.out / "output.mp4") if "K" in p["flags"]]

    assert keyframes(0) == [0.0, 1.32, 2.72]
    assert keyframes(1) == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_vp9_and_opus_renditions_are_packaged_as_cmaf_too(fn, tmp_path):
    """Left to itself ffmpeg's DASH muxer writes WebM segments for VP9/Opus, which HLS
    cannot carry: every rendition is fMP4 here, and the master playlist lists both."""
    webms = []
    for h in HEIGHTS:
        out = tmp_path / f"v{h}.webm"
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=4", "-f", "lavfi", "-i",
               "sine=duration=4", "-vf", f"scale=-2:{h}", "-c:v", "libvpx-vp9", "-deadline", "realtime",
               "-cpu-used", "8", "-force_key_frames", "expr:gte(t,n_forced*2)", "-c:a", "libopus", "-shortest", out)
        webms.append(out)
    r = fn("package", webms, seconds=2)
    assert r.rc == 0, r
    assert (r.out / "init-0.m4s").read_bytes()[4:8] == b"ftyp"
    master = (r.out / "master.m3u8").read_text()
    assert master.count('CODECS="vp09.') == 2 and "opus" in master, master
    heights = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=height", "-of", "csv=p=0",
                              str((r.out / "media_1.m3u8").resolve())], capture_output=True, text=True).stdout
    assert set(heights.split()) == {"144"}, heights
