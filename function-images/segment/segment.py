"""segment: splits a video into segments of about N seconds that decode on their own.

Cuts land on keyframes with stream copy when the GOP structure allows cuts near every
N seconds; otherwise (or with reencode=always) the video is re-encoded with keyframes
forced every N seconds. Keeps the first video and the first audio stream. Each segment
is tagged (comment: vflow-segment index=.. count=.. start=.. end=..) so that stitch can
check order and gaps after any number of per-segment stages.
"""
import csv
import os

from vflowfn import (Context, FnError, Function, Param, audio_args, audio_stream, duration, ffmpeg,
                     ffprobe, frame_rate, muxer_args, pick_container, probe_packets, video_encoder_args,
                     video_stream, FORMAT)

# A stream-copy segment may run this much longer than asked before re-encoding pays off.
SLACK = 1.5


def copy_cuts_fit(src: str, v: dict, seconds: float, total: float) -> bool:
    """Simulates the segment muxer's cuts (first keyframe at or after k*N) on the keyframes."""
    keys = sorted(float(p["pts_time"]) for p in probe_packets(src, v["index"])
                  if "K" in p.get("flags", "") and p.get("pts_time") not in (None, "N/A"))
    if not keys:
        return False
    t0, start, k = keys[0], keys[0], 1
    for t in keys[1:]:
        if t - t0 >= k * seconds - 1e-6:
            if t - start > SLACK * seconds:
                return False
            start = t
            while t - t0 >= k * seconds - 1e-6:
                k += 1
    return total - (start - t0) <= SLACK * seconds


def run(ctx: Context) -> dict:
    src = ctx.inputs[0]
    seconds, mode = ctx.params["seconds"], ctx.params["reencode"]
    info = ffprobe(src)
    v, a = video_stream(info, src), audio_stream(info)
    total = duration(info)
    fps = frame_rate(v)
    acodec = a["codec_name"] if a else None
    maps = ["-map", f"0:{v['index']}"] + (["-map", f"0:{a['index']}"] if a else [])
    copy = mode == "never" or (mode == "auto" and copy_cuts_fit(src, v, seconds, total))
    if copy:
        container = pick_container(v["codec_name"], acodec)
        codecs = ["-c", "copy"]
        cuts = ["-segment_time", str(seconds)]
    else:
        container = pick_container("h264", acodec)
        # Keyframes forced at the cut times make every cut land where it was asked for;
        # no cut in the last half segment, so the tail is never a sliver.
        times = ",".join(f"{k * seconds:.6f}" for k in range(1, int(total / seconds) + 1)
                         if k * seconds < total - seconds / 2) or f"{total + 1:.6f}"
        codecs = (video_encoder_args("h264", 18, "veryfast") + ["-force_key_frames", times]
                  + audio_args(acodec, container))
        cuts = ["-segment_times", times]
    seg_list = os.path.join(ctx.work, "list.csv")
    ffmpeg(["-i", src, *maps, *codecs, "-f", "segment", *cuts,
            "-segment_time_delta", f"{0.5 / fps:.6f}", "-reset_timestamps", "1",
            "-segment_format", FORMAT[container], "-segment_list", seg_list,
            "-segment_list_type", "csv", os.path.join(ctx.work, f"seg-%05d.{container}")],
           "segmenting" + (" (stream copy)" if copy else " (re-encoding)"), src)
    with open(seg_list, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows:
        raise FnError(f"segmenting failed on input {src}: no segments were written")
    # Remux (stream copy) to tag each segment with its place in the whole.
    for i, (name, start, end) in enumerate(rows):
        tag = f"vflow-segment index={i} count={len(rows)} start={float(start):.6f} end={float(end):.6f}"
        ffmpeg(["-i", os.path.join(ctx.work, name), "-map", "0", "-c", "copy", "-metadata", f"comment={tag}",
                *muxer_args(container), ctx.out(f"segment-{i:05d}.{container}")], "tagging segment", src)
    return {"segments": len(rows), "duration": round(total, 6)}


FUNCTION = Function(
    name="segment",
    params=[
        Param("seconds", "Number", "Target segment length in seconds; cuts land on keyframes.",
              default=4, minimum=0.5, maximum=600),
        Param("reencode", "String", "Re-encode when keyframes are too far apart (auto), always, or never.",
              default="auto", enum=["auto", "always", "never"]),
    ],
    run=run,
    metadata=["segments", "duration"],
)
