"""crop: cuts a w x h rectangle at (x, y) out of the video, checked against the input's size."""
from vflowfn import (Context, Function, Param, PRESETS, UsageError, check_complete, encode_video, ffprobe,
                     video_stream)


def run(ctx: Context) -> None:
    src, p = ctx.inputs[0], ctx.params
    info = ffprobe(src, packets=True)  # check_complete reads its packets
    v = video_stream(info, src)
    W, H = int(v["width"]), int(v["height"])
    w, h, x, y = p["w"], p["h"], p["x"], p["y"]
    if x + w > W or y + h > H:
        raise UsageError(f"crop {w}x{h} at ({x},{y}) does not fit input {src} of {W}x{H}")
    if w % 2 or h % 2:  # 4:2:0 chroma needs even sizes
        raise UsageError(f"crop size {w}x{h} must be even for 4:2:0 video")
    out = encode_video(ctx, src, info, f"cropping {w}x{h} at ({x},{y})", vfilter=f"crop={w}:{h}:{x}:{y}",
                       crf=p["crf"], preset=p["preset"])
    check_complete(src, info, out)


FUNCTION = Function(
    name="crop",
    params=[
        Param("w", "Integer", "Width of the rectangle in pixels (even).", required=True, minimum=2, maximum=8192),
        Param("h", "Integer", "Height of the rectangle in pixels (even).", required=True, minimum=2, maximum=8192),
        Param("x", "Integer", "Left edge of the rectangle.", default=0, minimum=0, maximum=8192),
        Param("y", "Integer", "Top edge of the rectangle.", default=0, minimum=0, maximum=8192),
        Param("crf", "Integer", "x264 constant rate factor.", default=23, minimum=0, maximum=51),
        Param("preset", "String", "x264 speed preset.", default="veryfast", enum=PRESETS),
    ],
    run=run,
)
