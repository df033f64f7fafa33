"""segment: splits a video into segments of about N seconds that decode on their own.

Cuts land on keyframes with stream copy when the GOP structure allows cuts near every
N seconds; otherwise (or with reencode=always) the video is re-encoded with keyframes
forced every N seconds. Keeps the first video and the first audio stream. Each segment
is tagged (comment: vflow-segment index=.. count=.. start=.. end=..) so that stitch can
check order and gaps after any number of per-segment stages.
"""
import csv
import os

import mp4_index
from mp4_comment import set_comment

from vflowfn import (Context, EVEN_SIZE, FnError, Function, Param, audio_args, audio_stream, check_frames,
                     duration, ffmpeg, ffprobe, frame_rate, movie_timescale, muxer_args, parallel_map, parallel_workers,
                     pick_container, probe_packets, seconds_or_zero, video_encoder_args, video_stream, FORMAT)

# A stream-copy segment may run this much longer than asked before re-encoding pays off.
SLACK = 1.5


def keyframe_times(src: str, v: dict, info: dict) -> list[float]:
    """Pts of the video's keyframes, from packet flags (no decoding): from `info` where it
    holds the packets (read from an MP4's index), else probed (a pass over the file)."""
    packets = ([p for p in info["packets"] if p["stream_index"] == v["index"]] if "packets" in info
               else probe_packets(src, v["index"]))
    return sorted(float(p["pts_time"]) for p in packets
                  if "K" in p.get("flags", "") and p.get("pts_time") not in (None, "N/A"))


def copy_cuts(keys: list[float], seconds: float) -> list[float]:
    """Where the segment muxer cuts a stream copy (the first keyframe at or after each
    k*N), on the output's timeline (from the first keyframe)."""
    t0, k, cuts = keys[0], 1, []
    for t in keys[1:]:
        if t - t0 >= k * seconds - 1e-6:
            cuts.append(t - t0)
            while t - t0 >= k * seconds - 1e-6:
                k += 1
    return cuts


def copy_cuts_fit(cuts: list[float], seconds: float, total: float) -> bool:
    """Every stream-copy segment at most SLACK x N long."""
    bounds = [0.0] + cuts + [total]
    return all(b - a <= SLACK * seconds for a, b in zip(bounds, bounds[1:]))


def balance(cuts: list[float], total: float, parallel: int, grid: list[float] | None) -> list[float]:
    """Cuts such that the number of segments is a multiple of `parallel`: the last
    segments, which would otherwise run while instances of the next stage idle, are cut
    into `parallel` pieces of about equal length instead (at keyframes of `grid` when the
    cut is a stream copy). Unchanged where that cannot be done (too few keyframes)."""
    starts = [0.0] + cuts
    rest = len(starts) % parallel
    if parallel <= 1 or rest == 0:
        return cuts
    lo = starts[len(starts) - rest]
    pieces = []
    for i in range(1, parallel):
        t = lo + (total - lo) * i / parallel
        if grid is not None:
            inside = [g for g in grid if lo < g < total]
            if not inside:
                return cuts
            t = min(inside, key=lambda g: abs(g - t))
        pieces.append(t)
    if len(set(pieces)) != len(pieces) or pieces != sorted(pieces):
        return cuts  # keyframes too sparse for that many pieces
    return starts[1:len(starts) - rest + 1] + pieces


def choose_cuts(changes: list[float], total: float, seconds: float) -> list[float]:
    """Cut times: each segment between 0.5 and SLACK x `seconds` long, ending at the scene
    change nearest `seconds` after its start where there is one in that range (and it
    leaves no tail under the minimum), else at `seconds` (a shot longer than the range
    must be cut somewhere)."""
    lo, hi = 0.5 * seconds, SLACK * seconds
    cuts, start = [], 0.0
    while total - start > hi:
        window = [c for c in changes if start + lo <= c <= start + hi]
        window = [c for c in window if total - c >= lo] or window
        cut = min(window, key=lambda c: abs(c - start - seconds)) if window else start + seconds
        cuts.append(cut)
        start = cut
    return cuts


def segment_times(src: str, times: list[float]) -> list[str]:
    """The segment muxer's option for cuts at these times (the list is one argument)."""
    listed = ",".join(f"{t:.6f}" for t in times)
    if len(listed) > 100_000:  # the kernel's limit on one argument is 128 KiB
        raise FnError(f"segmenting failed on input {src}: {len(times)} cut times are more than one ffmpeg "
                      f"argument can list; use longer segments")
    return ["-segment_times", listed]


def scene_changes(ctx: Context, src: str, v: dict, threshold: float, origin: float) -> list[float]:
    """Times (on the output's timeline, from `origin`) of the frames whose scene score,
    ffmpeg's measure of how much a frame differs from the one before, exceeds `threshold`."""
    ffmpeg(["-i", os.path.abspath(src), "-map", f"0:{v['index']}",
            "-vf", f"select='gt(scene,{threshold:.4f})',metadata=print:file=scenes.txt", "-f", "null", "-"],
           "finding scene changes", src, cwd=ctx.work)
    times = []
    with open(os.path.join(ctx.work, "scenes.txt")) as f:
        for line in f:
            for field in line.split():
                if field.startswith("pts_time:"):
                    times.append(float(field.split(":", 1)[1]) - origin)
    return sorted(times)


# Segments one ffmpeg tags at most (each an open input and output).
TAG_BATCH = 32


def run(ctx: Context) -> dict:
    src = ctx.inputs[0]
    seconds, mode = ctx.params["seconds"], ctx.params["reencode"]
    # An MP4 of the plain layout is read from its index, its keyframes with it: two
    # ffprobe starts and a pass over the whole input spared while the run waits for
    # the segments (0.4 s of CPU on a 742 MB 1080p minute); anything else is probed.
    info = mp4_index.read(src) or ffprobe(src)
    v, a = video_stream(info, src), audio_stream(info)
    total = duration(info)
    fps = frame_rate(v)
    acodec = a["codec_name"] if a else None
    maps = ["-map", f"0:{v['index']}"] + (["-map", f"0:{a['index']}"] if a else [])
    scene = ctx.params["cutAt"] == "scene"
    parallel = ctx.params["multipleOf"]
    # The keyframes decide whether to copy (auto) and where the finer last cuts go
    # (multipleOf); a plain stream copy needs none (a pass over the whole input spared).
    need_keys = not scene and (mode == "auto" or (mode == "never" and parallel > 1))
    keys = keyframe_times(src, v, info) if need_keys else []
    copied = copy_cuts(keys, seconds) if keys else []
    copy = not scene and (mode == "never" or (mode == "auto" and bool(keys)
                                              and copy_cuts_fit(copied, seconds, total - (keys[0] if keys else 0))))
    if copy:
        container = pick_container(v["codec_name"], acodec)
        codecs = ["-c", "copy"]
        cuts = ["-segment_time", str(seconds)]
        if parallel > 1 and keys:
            times = balance(copied, total - keys[0], parallel, [k - keys[0] for k in keys])
            if times != copied:
                cuts = segment_times(src, times)
    else:
        container = pick_container("h264", acodec)
        # Keyframes forced at k*N make every cut land where it was asked for; no cut in
        # the last half segment, so the tail is never a sliver. An expression, not a list
        # of times: a long input (or a forged duration) with short segments made a list
        # longer than the kernel's 128 KiB limit on one argument. No other keyframes (no
        # scene cuts, no GOP limit), so the muxer's cut at each k*N finds only these.
        last = total - seconds / 2
        force = f"expr:lt(n_forced*{seconds:.6f},{last:.6f})*gte(t,n_forced*{seconds:.6f})"
        if scene:
            # Keyframes at the chosen scene changes only, half a frame early so that a time
            # rounded up still lands on the shot's first frame.
            origin = seconds_or_zero(info["format"].get("start_time"))
            times = [t - 0.5 / fps for t in choose_cuts(
                scene_changes(ctx, src, v, ctx.params["sceneThreshold"], origin), total, seconds)]
            force = ",".join(["0"] + [f"{t:.6f}" for t in times])
            if len(force) > 100_000:  # the kernel's limit on one argument is 128 KiB
                raise FnError(f"segmenting failed on input {src}: {len(times)} cuts at scene changes are "
                              f"more than one ffmpeg argument can list; use longer segments")
        # (EVEN_SIZE: x264's 4:2:0 needs even sizes; a 1921x1081 source loses a column and a row)
        codecs = (video_encoder_args("h264", 18, "veryfast") + ["-vf", EVEN_SIZE, "-force_key_frames", force]
                  + ["-g", str(1 << 30), "-sc_threshold", "0"]
                  + ["-fps_mode", "passthrough", "-enc_time_base:v", "-1"] + audio_args(acodec, container))
        cuts = ["-segment_time", str(seconds)]
        if scene:
            cuts = (["-segment_times", force.split(",", 1)[1]] if times
                    else ["-segment_time", f"{total + seconds:.6f}"])
        elif parallel > 1:
            every = [k * seconds for k in range(1, int(total / seconds) + 2) if k * seconds < last]
            times = balance(every, total, parallel, None)
            if times != every:
                cuts = segment_times(src, times)
                force = ",".join(["0"] + [f"{t:.6f}" for t in times])
                codecs[codecs.index("-force_key_frames") + 1] = force
    seg_list = os.path.join(ctx.work, "list.csv")
    # Timestamps. The segment muxer cuts the interleaved packets at each cut's video
    # keyframe, so every audio packet lands in exactly one segment (the one that
    # straddles a cut stays with the earlier one), and -reset_timestamps shifts all
    # streams of a segment by its keyframe's pts: the audio keeps its exact offset from
    # the video, and stitch, placing the videos by the cut times in the tags, puts every
    # audio packet back at its source time, with stream copy and no trimming. For that:
    # - -avoid_negative_ts disabled: else ffmpeg shifts the streams to start at >= 0
    #   before the segment muxer (which does not declare that it takes negative ones).
    #   An AAC track's priming packet has a negative pts (mp4 hides it with an edit
    #   list), so the whole first segment moved by its length (video at 0.022 s) and
    #   the priming samples became audible. Handed through, the mp4 muxer writes the
    #   edit list again; matroska shifts a segment within itself, which keeps A/V.
    # - the mp4 movie timescale is the sample rate (muxer_args): a segment's audio
    #   starts a fraction of a packet after its video, an edit that ms would round.
    # - re-encoding keeps each frame's pts (-enc_time_base -1) instead of rounding it
    #   to the frame grid, which moved the video against the copied audio.
    mux_opts = movie_timescale(container, a)
    if mux_opts:
        mux_opts = ["-segment_format_options", f"movie_timescale={mux_opts[1]}"]
    ffmpeg(["-i", src, *maps, *codecs, "-f", "segment", *cuts,
            "-segment_time_delta", f"{0.5 / fps:.6f}", "-reset_timestamps", "1",
            "-avoid_negative_ts", "disabled", "-segment_format", FORMAT[container], *mux_opts,
            "-segment_list", seg_list, "-segment_list_type", "csv",
            os.path.join(ctx.work, f"seg-%05d.{container}")],
           "segmenting" + (" (stream copy)" if copy else " (re-encoding)"), src)
    with open(seg_list, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows:
        raise FnError(f"segmenting failed on input {src}: no segments were written")
    # The tag's start is the pts of the segment's first video frame on ffmpeg's output
    # timeline (the source's, less its start_time), its end the end of its last frame.
    # The segment list says 0 for the first segment whatever its first frame's pts
    # (0.003 s in a webm whose audio starts at 0): take that from the source.
    first = seconds_or_zero(v.get("start_time")) - seconds_or_zero(info["format"].get("start_time"))
    rows[0][1] = str(max(0.0, first))
    if not copy:  # decoding a damaged input can lose frames: a hole that no duration shows
        check_frames(src, info, [(os.path.join(ctx.work, name), float(start)) for name, start, _ in rows])
    def tag_of(i: int, start: str, end: str) -> str:
        return f"vflow-segment index={i} count={len(rows)} start={float(start):.6f} end={float(end):.6f}"

    # Each segment is tagged with its place in the whole. An mp4 (its index last, as the
    # segment muxer writes it) in place: its index rewritten, not its 50 MB of media.
    numbered = []
    for i, (name, start, end) in enumerate(rows):
        path = os.path.join(ctx.work, name)
        if container == "mp4" and set_comment(path, tag_of(i, start, end)):
            os.replace(path, ctx.out(f"segment-{i:05d}.{container}"))
        else:
            numbered.append((i, (name, start, end)))
    # Others by a remux (stream copy). One ffmpeg tags a batch of segments, its inputs to
    # its outputs one for one: a process start (~0.1 s of library loading) cost as much
    # as remuxing a 50 MB segment. The batches side by side.
    def tag(batch: list[tuple[int, list[str]]]) -> None:
        args = [x for _, (name, _, _) in batch for x in ("-i", os.path.join(ctx.work, name))]
        for k, (i, (_, start, end)) in enumerate(batch):
            tag = tag_of(i, start, end)
            # each output's metadata and chapters from its own input (ffmpeg's default: the first's)
            args += ["-map", str(k), "-map_metadata", str(k), "-map_chapters", str(k), "-c", "copy",
                     "-metadata", f"comment={tag}", *muxer_args(container, a), ctx.out(f"segment-{i:05d}.{container}")]
        ffmpeg(args, "tagging segments", src)

    if numbered:
        batches = max(parallel_workers(len(numbered)), -(-len(numbered) // TAG_BATCH))
        parallel_map(tag, [numbered[b::batches] for b in range(batches)])
    return {"segments": len(rows), "duration": round(total, 6)}


FUNCTION = Function(
    name="segment",
    params=[
        Param("seconds", "Number", "Target segment length in seconds; cuts land on keyframes.",
              default=4, minimum=0.5, maximum=600),
        Param("reencode", "String", "Re-encode when keyframes are too far apart (auto), always, or never.",
              default="auto", enum=["auto", "always", "never"]),
        Param("cutAt", "String", "Cut every `seconds` (time), or at the scene change nearest each "
              "`seconds` within 0.5x to 1.5x of it (scene; always re-encodes).",
              default="time", enum=["time", "scene"]),
        Param("sceneThreshold", "Number", "Scene score (0..1, ffmpeg's) above which a frame starts a new shot.",
              default=0.3, minimum=0.05, maximum=1),
        Param("multipleOf", "Integer", "Make the number of segments a multiple of this (how many the next "
              "stage encodes at once): the last ones are cut finer, so no instance idles at the end.",
              default=1, minimum=1, maximum=256),
    ],
    run=run,
    metadata=["segments", "duration"],
)
