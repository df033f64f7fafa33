"""watermark: draws text (drawtext) or overlays an image (second input) on the video."""
import os

from vflowfn import (Context, Function, Param, PRESETS, UsageError, check_complete, encode_video, ffprobe)

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"  # fonts-dejavu-core
POSITIONS = ["topLeft", "topRight", "bottomLeft", "bottomRight", "center"]


def place(position: str, m: int, w: str, h: str, W: str = "W", H: str = "H") -> tuple[str, str]:
    x = {"topLeft": f"{m}", "bottomLeft": f"{m}", "center": f"({W}-{w})/2"}.get(position, f"{W}-{w}-{m}")
    y = {"topLeft": f"{m}", "topRight": f"{m}", "center": f"({H}-{h})/2"}.get(position, f"{H}-{h}-{m}")
    return x, y


def run(ctx: Context) -> None:
    src, p = ctx.inputs[0], ctx.params
    info = ffprobe(src, packets=True)  # check_complete reads its packets
    m, alpha = p["margin"], p["opacity"]
    if len(ctx.inputs) == 2:
        ffprobe(ctx.inputs[1])  # a clear error if the image is unreadable
        x, y = place(p["position"], m, "w", "h")
        graph = (f"[1:v]format=rgba,colorchannelmixer=aa={alpha}[wm];"
                 f"[vin][wm]overlay=x={x}:y={y}:format=auto,format=yuv420p[vout]")
        what = f"overlaying {ctx.inputs[1]}"
    elif p["text"]:
        # The text goes through a file, read relative to the working folder: no escaping
        # of user text or of paths inside the filter graph.
        with open(os.path.join(ctx.work, "text.txt"), "w") as f:
            f.write(p["text"])
        x, y = place(p["position"], m, "tw", "th", "w", "h")
        font = f"fontfile={FONT}:" if os.path.exists(FONT) else ""
        graph = (f"[vin]drawtext={font}textfile=text.txt:expansion=none:fontsize={p['fontSize']}:x={x}:y={y}:"
                 f"fontcolor=white@{alpha}:borderw=2:bordercolor=black@{alpha}[vout]")
        what = "drawing text"
    else:
        raise UsageError("give --text or a second --input with the image to overlay")
    out = encode_video(ctx, os.path.abspath(src), info, what, graph=graph,
                       extra_inputs=tuple(os.path.abspath(i) for i in ctx.inputs[1:]),
                       crf=p["crf"], preset=p["preset"], cwd=ctx.work)
    check_complete(src, info, out)


FUNCTION = Function(
    name="watermark",
    params=[
        Param("text", "String", "Text to draw; ignored when an image is given as the second input.", default=""),
        Param("position", "String", "Where to place the mark.", default="bottomRight", enum=POSITIONS),
        Param("margin", "Integer", "Distance from the edges in pixels.", default=16, minimum=0, maximum=2000),
        Param("fontSize", "Integer", "Text size in pixels.", default=32, minimum=6, maximum=512),
        Param("opacity", "Number", "Opacity of the mark, 0 to 1.", default=0.8, minimum=0, maximum=1),
        Param("crf", "Integer", "x264 constant rate factor.", default=23, minimum=0, maximum=51),
        Param("preset", "String", "x264 speed preset.", default="veryfast", enum=PRESETS),
    ],
    inputs=(1, 2),
    run=run,
)
