"""stitch: joins segments, in the order given, into one file without re-encoding video.

Before joining it checks that the inputs can be joined: the same video codec, size,
pixel format, time base and frame rate (and the same audio layout) in each; segments
tagged by segment must come in order with none missing; and at every join the streams
must meet with no gap (within one frame or one audio packet). Audio is copied when the
container takes it, else encoded once here, over the whole, so joins stay seamless.
"""
import os
import re

from vflowfn import (Context, FnError, Function, Param, UsageError, audio_args, audio_stream, duration,
                     ffmpeg, ffprobe, fits, frame_rate, muxer_args, probe_packets, video_stream)

TAG = re.compile(r"vflow-segment index=(\d+) count=(\d+) start=([\d.]+) end=([\d.]+)")
SAME_VIDEO = ["codec_name", "profile", "width", "height", "pix_fmt", "time_base", "r_frame_rate"]
SAME_AUDIO = ["codec_name", "sample_rate", "channels"]


def span(path: str, stream: dict) -> tuple[float, float, float]:
    """(first pts, end of last packet, typical packet duration) of one stream."""
    pts, durs = [], []
    for p in probe_packets(path, stream["index"]):
        if p.get("pts_time") not in (None, "N/A"):
            pts.append(float(p["pts_time"]))
            if p.get("duration_time") not in (None, "N/A"):
                durs.append(float(p["duration_time"]))
    if not pts:
        raise FnError(f"input {path} has no packets in its {stream['codec_type']} stream")
    pts.sort()
    steps = sorted(b - a for a, b in zip(pts, pts[1:]) if b > a)
    typical = (sorted(durs)[len(durs) // 2] if durs else steps[len(steps) // 2] if steps else 0.0)
    return pts[0], pts[-1] + typical, typical


def check(inputs: list[str], infos: list[dict], check_order: bool) -> None:
    v0, a0 = video_stream(infos[0], inputs[0]), audio_stream(infos[0])
    for path, info in zip(inputs[1:], infos[1:]):
        v, a = video_stream(info, path), audio_stream(info)
        for key in SAME_VIDEO:
            if v.get(key) != v0.get(key):
                raise FnError(f"input {path} cannot be joined to {inputs[0]}: video {key} is "
                              f"{v.get(key)} instead of {v0.get(key)}")
        if (a is None) != (a0 is None):
            raise FnError(f"input {path} cannot be joined to {inputs[0]}: one has audio, the other not")
        for key in SAME_AUDIO if a else []:
            if a.get(key) != a0.get(key):
                raise FnError(f"input {path} cannot be joined to {inputs[0]}: audio {key} is "
                              f"{a.get(key)} instead of {a0.get(key)}")
    frame = 1 / frame_rate(v0)
    tags = [TAG.search(str(i.get("format", {}).get("tags", {}).get("comment")
                           or i.get("format", {}).get("tags", {}).get("COMMENT") or "")) for i in infos]
    if check_order and any(tags):
        if not all(tags):
            untagged = inputs[tags.index(None)]
            raise FnError(f"input {untagged} has no segment tag while other inputs have one")
        idx = [int(t.group(1)) for t in tags]
        count = int(tags[0].group(2))
        for i, (path, t) in enumerate(zip(inputs, tags)):
            if idx[i] != i:
                what = "out of order" if idx[i] in idx[:i] or i in idx[i + 1:] else "missing before it"
                raise FnError(f"input {path} is segment {idx[i]} but comes at place {i}: "
                              f"segments are {what} (got order {idx})")
            if i and abs(float(t.group(3)) - float(tags[i - 1].group(4))) > 1.5 * frame:
                raise FnError(f"input {path} starts at {t.group(3)} s but the previous one ends at "
                              f"{tags[i - 1].group(4)} s: a gap")
        if len(idx) != count:
            raise FnError(f"got {len(idx)} segments of {count}: segments {len(idx)}..{count - 1} are missing")
    # At every join, the time a stream leaves empty at the end of one file plus its
    # lead-in in the next must be about zero (the concat demuxer lays files end to end).
    for kind, pick in (("video", lambda i, p: video_stream(i, p)), ("audio", lambda i, p: audio_stream(i))):
        prev = None
        for path, info in zip(inputs, infos):
            s = pick(info, path)
            if s is None:
                break
            start, end, step = span(path, s)
            fstart = float(info["format"].get("start_time") or 0)
            lead, trail = start - fstart, duration(info) - (end - fstart)
            tol = 1.5 * max(step, frame if kind == "video" else 0.0) + 0.005
            if prev is not None and abs(prev[0] + lead) > max(tol, prev[1]):
                raise FnError(f"input {path} does not continue {prev[2]}: {prev[0] + lead:+.3f} s "
                              f"{'gap' if prev[0] + lead > 0 else 'overlap'} in {kind} at the join")
            prev = (trail, tol, path)


def run(ctx: Context) -> None:
    container = ctx.params["container"]
    infos = [ffprobe(p) for p in ctx.inputs]
    v0, a0 = video_stream(infos[0], ctx.inputs[0]), audio_stream(infos[0])
    if not fits(container, v0["codec_name"], None):
        raise UsageError(f"container {container} cannot hold {v0['codec_name']} video; use mkv or mp4")
    check(ctx.inputs, infos, ctx.params["checkOrder"])
    listing = os.path.join(ctx.work, "concat.txt")
    with open(listing, "w") as f:
        for p in ctx.inputs:
            f.write("file '" + os.path.abspath(p).replace("'", "'\\''") + "'\n")
    acodec = a0["codec_name"] if a0 else None
    out = ctx.out(f"output.{container}")
    ffmpeg(["-f", "concat", "-safe", "0", "-i", listing, "-map", "0:v:0", *(["-map", "0:a:0"] if a0 else []),
            "-c:v", "copy", *audio_args(acodec, container), "-metadata", "comment=",
            *muxer_args(container), out], f"joining {len(ctx.inputs)} segments", ctx.inputs[0])


FUNCTION = Function(
    name="stitch",
    params=[
        Param("container", "String", "Output container (video is never re-encoded).",
              default="mp4", enum=["mp4", "mkv", "webm"]),
        Param("checkOrder", "Boolean", "Refuse inputs whose segment tags are out of order or incomplete.",
              default=True),
    ],
    inputs=(1, None),
    run=run,
)
