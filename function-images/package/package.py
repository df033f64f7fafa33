"""package: packages renditions of one video as an adaptive stream, HLS and DASH at once.

The inputs are the renditions (e.g. the ladder's 1080p, 720p, 480p), each a whole video
with the same keyframe times (scale/transcode `keyint`, or one split into segments). The
video is not re-encoded: ffmpeg's DASH muxer cuts every rendition into CMAF fMP4
segments (one init segment each, then `chunk-<rep>-<n>.m4s`), and the HLS media
playlists point at the same files, so both protocols serve one copy of the media. The
audio is the first input's (that has audio), as one rendition of its own.

A player can switch renditions only at segment boundaries that are the same in every
rendition, so after packaging every video rendition's segment timeline is compared
with the first's; any difference (keyframes at other times) fails the run, naming the
input, and nothing is written. The HLS master playlist is written here with each
rendition's peak and average bit rate measured from its segments (what HLS's BANDWIDTH
means), its resolution, frame rate and codecs; the MPD is ffmpeg's, with the same peak
bit rates, and bitstream switching off (each rendition has its own init segment).
"""
import math
import os
import re
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from vflowfn import (Context, FnError, Function, Param, audio_stream, duration, ffmpeg, ffprobe,
                     frame_rate, video_stream)

MPD_NS = {"m": "urn:mpeg:dash:schema:mpd:2011"}
CMAF_VIDEO = {"h264", "hevc", "av1", "vp9"}
CMAF_AUDIO = {"aac", "opus", "ac3", "eac3", "flac", "mp3"}
INIT = "init-$RepresentationID$.m4s"
CHUNK = "chunk-$RepresentationID$-$Number%05d$.m4s"


@dataclass
class Rendition:
    """One representation of the MPD: its segments as (start, length) in seconds."""

    rep_id: str
    kind: str  # video | audio
    codecs: str
    width: int
    height: int
    segments: list[tuple[float, float]]

    def chunk(self, n: int) -> str:
        return f"chunk-{self.rep_id}-{n + 1:05d}.m4s"


def read_mpd(path: str) -> list[Rendition]:
    root = ET.parse(path).getroot()
    out = []
    for aset in root.iterfind(".//m:AdaptationSet", MPD_NS):
        kind = aset.get("contentType", "")
        for rep in aset.iterfind("m:Representation", MPD_NS):
            tpl = rep.find("m:SegmentTemplate", MPD_NS)
            if tpl is None:
                raise FnError(f"packaging wrote an MPD without a segment template for representation {rep.get('id')}")
            scale = int(tpl.get("timescale", "1"))
            segs, t = [], 0
            for s in tpl.iterfind("m:SegmentTimeline/m:S", MPD_NS):
                t = int(s.get("t", t))
                d = int(s.get("d", "0"))
                for _ in range(int(s.get("r", "0")) + 1):
                    segs.append((t / scale, d / scale))
                    t += d
            out.append(Rendition(rep.get("id", ""), kind, rep.get("codecs", ""),
                                 int(rep.get("width", "0")), int(rep.get("height", "0")), segs))
    return out


def check_aligned(inputs: list[str], videos: list[Rendition], fps: float) -> None:
    """Every video rendition's segments start at the first one's times (within half a frame)."""
    ref = videos[0]
    for path, r in zip(inputs[1:], videos[1:]):
        starts, want = [s for s, _ in r.segments], [s for s, _ in ref.segments]
        off = next((i for i, (a, b) in enumerate(zip(starts, want)) if abs(a - b) > 0.5 / fps), None)
        if off is None and len(starts) == len(want):
            continue
        where = (f"segment {off} starts at {starts[off]:.3f} s, not {want[off]:.3f} s" if off is not None
                 else f"it has {len(starts)} segments, not {len(want)}")
        raise FnError(f"packaging failed on input {path}: its segments do not line up with those of "
                      f"{inputs[0]} ({where}): its keyframes are at other times, so a player could not "
                      f"switch between them; encode every rendition with the same keyframes (e.g. "
                      f"scale's keyint) from the same split")


def bit_rates(folder: str, r: Rendition) -> tuple[int, int]:
    """(peak, average) bits per second over the rendition's segments."""
    sizes = [os.path.getsize(os.path.join(folder, r.chunk(i))) for i in range(len(r.segments))]
    total = sum(d for _, d in r.segments) or 1.0
    peak = max((8 * b / d for b, (_, d) in zip(sizes, r.segments) if d > 0), default=0.0)
    return math.ceil(peak), math.ceil(8 * sum(sizes) / total)


def master_playlist(videos: list[Rendition], audio: Rendition | None, rates: dict[str, tuple[int, int]],
                    media: dict[str, str], fps: list[float]) -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    if audio:
        lines.append(f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="audio",DEFAULT=YES,AUTOSELECT=YES,'
                     f'URI="{media[audio.rep_id]}"')
    a_peak, a_avg = rates[audio.rep_id] if audio else (0, 0)
    for v, rate in zip(videos, fps):
        peak, avg = rates[v.rep_id]
        codecs = ",".join(c for c in (v.codecs, audio.codecs if audio else "") if c)
        attrs = [f"BANDWIDTH={peak + a_peak}", f"AVERAGE-BANDWIDTH={avg + a_avg}",
                 f"RESOLUTION={v.width}x{v.height}", f"FRAME-RATE={rate:.3f}", f'CODECS="{codecs}"']
        if audio:
            attrs.append('AUDIO="audio"')
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attrs), media[v.rep_id]]
    return "\n".join(lines) + "\n"


def vod_media_playlist(text: str) -> str:
    """ffmpeg's media playlist as a VOD one: no wall-clock dates (a stream on demand has
    none; they were the time of packaging), and the playlist type said."""
    lines = [line for line in text.splitlines() if not line.startswith("#EXT-X-PROGRAM-DATE-TIME")]
    at = next((i for i, line in enumerate(lines) if line.startswith("#EXT-X-TARGETDURATION")), 1)
    lines.insert(at, "#EXT-X-PLAYLIST-TYPE:VOD")
    return "\n".join(lines) + "\n"


def fix_mpd(text: str, rates: dict[str, tuple[int, int]]) -> str:
    for rep_id, (peak, _) in rates.items():
        text = re.sub(rf'(<Representation id="{re.escape(rep_id)}"[^>]*?bandwidth=")\d+(")',
                      rf"\g<1>{peak}\g<2>", text)
    # Each rendition has its own init segment (its own SPS/PPS): a player must load it on
    # a switch, which bitstreamSwitching="true" would tell it not to do.
    return text.replace('bitstreamSwitching="true"', 'bitstreamSwitching="false"')


def run(ctx: Context) -> dict:
    seconds = ctx.params["seconds"]
    infos = [ffprobe(p) for p in ctx.inputs]
    vs = [video_stream(i, p) for p, i in zip(ctx.inputs, infos)]
    for path, v in zip(ctx.inputs, vs):
        if v["codec_name"] not in CMAF_VIDEO:
            raise FnError(f"packaging failed on input {path}: its video is {v['codec_name']}, which CMAF "
                          f"segments do not carry (h264, hevc, av1 or vp9)")
    lengths = [duration(i) for i in infos]
    fps = [frame_rate(v) for v in vs]
    for path, length in zip(ctx.inputs[1:], lengths[1:]):
        if abs(length - lengths[0]) > max(0.1, 2 / fps[0]):
            raise FnError(f"packaging failed on input {path}: it lasts {length:.3f} s but {ctx.inputs[0]} "
                          f"lasts {lengths[0]:.3f} s: renditions of one video last as long")
    with_audio = next((k for k, i in enumerate(infos) if audio_stream(i)), None)
    amap = []
    if with_audio is not None:
        a = audio_stream(infos[with_audio])
        if a["codec_name"] not in CMAF_AUDIO:
            raise FnError(f"packaging failed on input {ctx.inputs[with_audio]}: its audio is {a['codec_name']}, "
                          f"which CMAF segments do not carry")
        amap = ["-map", f"{with_audio}:{a['index']}"]
    folder = os.path.join(ctx.work, "stream")
    os.makedirs(folder)
    ins = [x for p in ctx.inputs for x in ("-i", os.path.abspath(p))]
    vmap = [x for k, v in enumerate(vs) for x in ("-map", f"{k}:{v['index']}")]
    sets = "id=0,streams=v" + (" id=1,streams=a" if amap else "")
    ffmpeg([*ins, *vmap, *amap, "-c", "copy", "-f", "dash", "-seg_duration", f"{seconds:.6f}",
            "-use_template", "1", "-use_timeline", "1", "-hls_playlist", "1", "-adaptation_sets", sets,
            # fMP4 (CMAF) for every codec: left to itself the muxer writes WebM segments
            # for VP9 and Opus, which HLS cannot carry.
            "-dash_segment_type", "mp4",
            "-init_seg_name", INIT, "-media_seg_name", CHUNK, "manifest.mpd"],
           f"packaging {len(ctx.inputs)} renditions", ctx.inputs[0], cwd=folder)
    reps = read_mpd(os.path.join(folder, "manifest.mpd"))
    videos = [r for r in reps if r.kind == "video"]
    audio = next((r for r in reps if r.kind == "audio"), None)
    if len(videos) != len(ctx.inputs) or not all(v.segments for v in videos):
        raise FnError(f"packaging failed on input {ctx.inputs[0]}: the MPD lists {len(videos)} video "
                      f"renditions for {len(ctx.inputs)} inputs")
    check_aligned(ctx.inputs, videos, fps[0])
    rates = {r.rep_id: bit_rates(folder, r) for r in reps}
    # dashenc names the media playlists media_<index of the stream in the output>.
    media = {r.rep_id: f"media_{r.rep_id}.m3u8" for r in reps}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith("media_") and name.endswith(".m3u8"):
            with open(path) as f:
                text = vod_media_playlist(f.read())
            with open(ctx.out(name), "w") as f:
                f.write(text)
        elif name == "manifest.mpd":
            with open(path) as f:
                text = fix_mpd(f.read(), rates)
            with open(ctx.out(name), "w") as f:
                f.write(text)
        elif name.endswith(".m4s"):
            shutil.move(path, ctx.out(name))
    missing = [m for m in media.values() if not os.path.exists(ctx.out(m))]
    if missing:
        raise FnError(f"packaging failed on input {ctx.inputs[0]}: ffmpeg wrote no {', '.join(missing)}")
    with open(ctx.out("master.m3u8"), "w") as f:
        f.write(master_playlist(videos, audio, rates, media, fps))
    return {"renditions": len(videos), "segments": len(videos[0].segments),
            "duration": round(sum(d for _, d in videos[0].segments), 6)}


FUNCTION = Function(
    name="package",
    params=[
        Param("seconds", "Number", "Target segment length in seconds; each segment ends at the first "
              "keyframe at or after it.", default=4, minimum=1, maximum=60),
    ],
    inputs=(1, 16),
    run=run,
    metadata=["renditions", "segments", "duration"],
)
