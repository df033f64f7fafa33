"""stitch: joins segments, in the order given, into one file without re-encoding video.

Before joining it checks that the inputs can be joined: the same video codec, size,
pixel format, time base and frame rate (and the same audio layout) in each; segments
tagged by segment must come in order with none missing, each holding the video of its
whole segment (within half a frame); and at every join the audio must continue within
half a packet. The files are laid out by their video (see plan()), so with stream copy
every packet lands at its source time. Audio is copied when the container takes it,
else encoded once here, over the whole, so joins stay seamless.
"""
import os
import re
from dataclasses import dataclass

import mp4_index
from vflowfn import (Context, FnError, Function, Param, UsageError, audio_args, audio_stream,
                     ffprobe, fits, frame_rate, parallel_map, probe_packets_by_stream, video_stream,
                     write_output)

TAG = re.compile(r"vflow-segment index=(\d+) count=(\d+) start=([\d.]+) end=([\d.]+)")
SAME_VIDEO = ["codec_name", "profile", "width", "height", "pix_fmt", "time_base", "r_frame_rate"]
SAME_AUDIO = ["codec_name", "sample_rate", "channels"]


@dataclass
class Span:
    """Where one stream's packets lie in a file: first pts, end of the last packet, and
    the typical packet duration (seconds, in the file's own timestamps)."""

    start: float
    end: float
    step: float


def span(path: str, info: dict, stream: dict, packets: list[dict]) -> Span:
    pts, ends, durs = [], [], []
    for p in packets:
        if p.get("pts_time") in (None, "N/A"):
            continue
        t = float(p["pts_time"])
        d = float(p["duration_time"]) if p.get("duration_time") not in (None, "N/A") else None
        pts.append(t)
        ends.append((t, d))
        if d:
            durs.append(d)
    if not pts:
        raise FnError(f"input {path} has no packets in its {stream['codec_type']} stream")
    pts.sort()
    steps = sorted(b - a for a, b in zip(pts, pts[1:]) if b > a)
    typical = sorted(durs)[len(durs) // 2] if durs else steps[len(steps) // 2] if steps else 0.0
    t, d = max(ends, key=lambda e: e[0])
    # ffmpeg 5.1's mov demuxer shortens the last packet of a track that starts with an
    # empty edit (a segment's audio that starts after its video) by the length of that
    # edit, though all its samples decode; in mp4 every packet of a stream has the same
    # length (AAC 1024 samples), so the typical one is right. Other containers report
    # each packet's own length (a Vorbis packet can be much shorter than the typical).
    # The same happens to video that starts after 0 (an mp4 segment of a source whose
    # video starts after its audio, as in mkv or MPEG-TS with AAC: 0.021 s): its last
    # frame comes back shorter by that start, 0.019 s instead of 0.040 s.
    mov = "mp4" in str(info.get("format", {}).get("format_name", ""))
    if d is None or (mov and stream["codec_type"] == "audio" and d < typical):
        d = typical
    elif mov and stream["codec_type"] == "video" and pts[0] > 0 and d < typical:
        d = min(typical, d + pts[0])
    return Span(pts[0], t + d, typical)


def _tags(infos: list[dict]) -> list[re.Match | None]:
    return [TAG.search(str(i.get("format", {}).get("tags", {}).get("comment")
                           or i.get("format", {}).get("tags", {}).get("COMMENT") or "")) for i in infos]


def check_same(inputs: list[str], infos: list[dict]) -> None:
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


def check_order(inputs: list[str], tags: list[re.Match], frame: float) -> None:
    idx = [int(t.group(1)) for t in tags]
    count = int(tags[0].group(2))
    for i, (path, t) in enumerate(zip(inputs, tags)):
        if idx[i] != i:
            what = "out of order" if idx[i] in idx[:i] or i in idx[i + 1:] else "missing before it"
            raise FnError(f"input {path} is segment {idx[i]} but comes at place {i}: "
                          f"segments are {what} (got order {idx})")
        # segment writes each cut's time once, as the end of one segment and the start
        # of the next: they are equal unless something else made the tag.
        if i and abs(float(t.group(3)) - float(tags[i - 1].group(4))) > 0.5 * frame:
            raise FnError(f"input {path} starts at {t.group(3)} s but the previous one ends at "
                          f"{tags[i - 1].group(4)} s: a gap")
    if len(idx) != count:
        raise FnError(f"got {len(idx)} segments of {count}: segments {len(idx)}..{count - 1} are missing")


def plan(inputs: list[str], infos: list[dict], ordered: bool) -> tuple[list[float], bool]:
    """Checks every join; returns how long each file but the last lasts in the output
    (the concat list's `duration`s) and whether the audio joins are seamless.

    The concat demuxer places each file's timestamps after the previous file's
    duration, which by default is the file's longest stream. A segment's audio runs up
    to a packet past its video (the packet that straddles the cut belongs to it) and
    the next segment's audio starts that much after its video, so laying files end to
    end by their longest stream added up to a packet of audio-ahead-of-video drift per
    join. Laying them out by their video instead, each segment's audio keeps its offset
    from its video and every audio packet lands back at its source time: the joins are
    seamless for both streams with stream copy and no audio needs trimming. `outpoint`
    would be wrong here: it ends a file at the first packet of any stream past it, so
    it would drop the straddling audio packet that the next segment does not have.

    With segment tags (checked in order) the videos are placed by the cut times, which
    also keeps a variable frame rate exact; each file's video must cover its segment's
    span to within half a frame (frames missing at the end of a segment are a gap).
    Without tags the videos are laid end to end. Then, at every join, the audio must
    continue within half a packet (stream-copied segments meet exactly). Audio that a
    per-segment stage re-encoded (e.g. to Opus for webm, to AAC for mp4) starts and
    ends on its own packet grid, with the encoder's priming before it and padding after
    it, a packet each (AAC of a Vorbis source overlapped the next segment by 0.042 s):
    within 2 packets that is not a gap but the encoder's, and `seamless` comes back
    False, so that run() re-encodes the audio over the whole, trimmed and padded at
    each join to the sample by its timestamps. More than that is a gap or an overlap,
    and refused.
    """
    frame = 1 / frame_rate(video_stream(infos[0], inputs[0]))
    tags = _tags(infos) if ordered else [None] * len(inputs)
    fst = [float(i["format"].get("start_time") or 0) for i in infos]
    has_audio = audio_stream(infos[0]) is not None

    def streams(pi: tuple[str, dict]) -> list[dict]:
        return [video_stream(pi[1], pi[0])] + ([audio_stream(pi[1])] if has_audio else [])

    def packets_of(pi: tuple[str, dict]) -> dict[int, list[dict]]:
        wanted = [s["index"] for s in streams(pi)]
        if "packets" not in pi[1]:  # a file too large to probe with its packets in one go
            return probe_packets_by_stream(pi[0], wanted)
        return {i: [p for p in pi[1]["packets"] if p.get("stream_index") == i] for i in wanted}

    # One pass over each file for all its streams, the files side by side.
    packets = parallel_map(packets_of, list(zip(inputs, infos)))
    vs = [span(p, i, video_stream(i, p), pk[video_stream(i, p)["index"]])
          for p, i, pk in zip(inputs, infos, packets)]
    if all(tags):
        for path, t, v in zip(inputs, tags, vs):
            want = float(t.group(4)) - float(t.group(3))
            if abs((v.end - v.start) - want) > 0.5 * frame + 1e-3:
                kind = "gap" if v.end - v.start < want else "overlap"
                raise FnError(f"input {path} holds {v.end - v.start:.3f} s of video but its segment was cut "
                              f"{want:.3f} s long: a {kind} in video at its end")
    durations = []
    for i in range(len(inputs) - 1):
        # the next file's video start goes where this file's video ends (or, by the
        # tags, where the next cut was), measured from each file's start_time, which is
        # the demuxer's origin for the file
        end = vs[i].start + (float(tags[i + 1].group(3)) - float(tags[i].group(3)) if all(tags) else
                             vs[i].end - vs[i].start)
        durations.append((end - fst[i]) - (vs[i + 1].start - fst[i + 1]))
    seamless = True
    if has_audio:
        offset = 0.0  # output time = file time + offset
        prev = None
        for i, (path, info) in enumerate(zip(inputs, infos)):
            a = span(path, info, audio_stream(info), packets[i][audio_stream(info)["index"]])
            if i:
                offset += durations[i - 1] + fst[i - 1] - fst[i]
            if prev is not None:
                gap = (a.start + offset) - prev[0]
                if abs(gap) > 2 * a.step + 5e-3:
                    raise FnError(f"input {path} does not continue {prev[1]}: {gap:+.3f} s "
                                  f"{'gap' if gap > 0 else 'overlap'} in audio at the join")
                seamless = seamless and abs(gap) <= 0.5 * a.step + 2e-3
            prev = (a.end + offset, path)
    return durations, seamless


def alike(infos: list[dict]) -> bool:
    """Whether the files' streams decode alike: the same kinds in the same order, each
    with the same decoder configuration (mp4_index's decoder_config), time base and
    frame rate. What check_same compares follows from that."""
    keys = ["codec_type", "codec_name", "decoder_config", "time_base", "avg_frame_rate", "sample_rate"]
    first = [[s.get(k) for k in keys] for s in infos[0]["streams"]]
    return all([[s.get(k) for k in keys] for s in i["streams"]] == first for i in infos[1:])


def probe_inputs(inputs: list[str]) -> list[dict]:
    """Each input's format, streams and every stream's packets. MP4s of the plain layout
    that vflow's stages write, alike, are read from their indexes in this process
    (mp4_index: a few milliseconds each); otherwise each is probed by ffprobe, side by
    side: ~0.1 CPU s of library loading per start, 16 of them on the path from the last
    segment to the output."""
    indexed = [mp4_index.read(p, every_stream=True) for p in inputs]
    if all(indexed) and alike(indexed):
        return indexed
    return parallel_map(lambda p: ffprobe(p, packets=True, every_stream=True), inputs)


def run(ctx: Context) -> None:
    container = ctx.params["container"]
    infos = probe_inputs(ctx.inputs)
    v0, a0 = video_stream(infos[0], ctx.inputs[0]), audio_stream(infos[0])
    if not fits(container, v0["codec_name"], None):
        raise UsageError(f"container {container} cannot hold {v0['codec_name']} video; use mkv or mp4")
    check_same(ctx.inputs, infos)
    tags = _tags(infos)
    ordered = ctx.params["checkOrder"] and any(tags)
    if ordered:
        if not all(tags):
            raise FnError(f"input {ctx.inputs[tags.index(None)]} has no segment tag while other inputs have one")
        check_order(ctx.inputs, tags, 1 / frame_rate(v0))
    durations, seamless = plan(ctx.inputs, infos, ordered)
    listing = os.path.join(ctx.work, "concat.txt")
    with open(listing, "w") as f:
        f.write("ffconcat version 1.0\n")
        for i, p in enumerate(ctx.inputs):
            f.write("file '" + os.path.abspath(p).replace("'", "'\\''") + "'\n")
            if i < len(durations):
                f.write(f"duration {durations[i]:.6f}\n")
    acodec = a0["codec_name"] if a0 else None
    if a0 and not seamless:
        # async=1 pads gaps with silence and drops overlapping samples wherever a
        # frame's timestamp and the samples so far disagree by half a sample or more.
        rate = int(a0.get("sample_rate") or 48000)
        aout = ["-af", f"aresample=async=1:min_hard_comp={0.5 / rate:.9f}",
                *audio_args(acodec, container, encode=True)]
    else:
        aout = audio_args(acodec, container)
    out = ctx.out(f"output.{container}")
    # -copyts keeps the timestamps as the concat demuxer gives them, the first file's
    # own: without it ffmpeg subtracts the input's start time, which the concat demuxer
    # takes from the first packet, an AAC priming packet at -0.023 s (hidden by mp4's
    # edit list), so everything moved by it and the priming samples became audible.
    args = ["-copyts", "-f", "concat", "-safe", "0", "-i", listing,
            "-map", "0:v:0", *(["-map", "0:a:0"] if a0 else []), "-c:v", "copy", *aout, "-metadata", "comment="]
    what = f"joining {len(ctx.inputs)} segments"
    # every input's packets known (a few from each file's audio re-encoded, at most)
    packets = (sum(len(i["packets"]) + 8 for i in infos)
               if container == "mp4" and all("packets" in i for i in infos) else None)
    write_output(args, out, container, a0, packets, what, ctx.inputs[0], listing=True)


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
