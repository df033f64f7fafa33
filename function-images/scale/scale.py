"""scale: scales video to a height (width keeps the aspect ratio, rounded to even) and encodes it."""
from vflowfn import Context, Function, Param, PRESETS, check_complete, encode_video, ffprobe

CODECS = ["h264", "hevc", "vp9", "av1"]


def run(ctx: Context) -> None:
    src, p = ctx.inputs[0], ctx.params
    info = ffprobe(src, packets=True)  # check_complete reads its packets
    out = encode_video(ctx, src, info, f"scaling to {p['height']}p ({p['codec']})",
                       vfilter=f"scale=-2:{p['height']}", codec=p["codec"], crf=p["crf"], preset=p["preset"],
                       keyint=p["keyint"])
    check_complete(src, info, out)


FUNCTION = Function(
    name="scale",
    params=[
        Param("height", "Integer", "Output height in pixels; width keeps the aspect ratio.",
              required=True, minimum=32, maximum=4320),
        Param("codec", "String", "Video codec of the output.", default="h264", enum=CODECS),
        Param("crf", "Integer", "Constant rate factor; lower is better quality (h264/hevc up to 51).",
              default=23, minimum=0, maximum=63),
        Param("preset", "String", "Speed preset (x264 names; mapped for vp9 and av1).",
              default="veryfast", enum=PRESETS),
        Param("keyint", "Number", "Seconds between keyframes, forced at exactly these times and nowhere else "
              "(closed GOPs; aligned renditions for package); 0 lets the encoder decide.",
              default=0, minimum=0, maximum=60),
    ],
    run=run,
)
