"""sprite: tiles images (e.g. thumbnails from many segments) or frames of one video into sprite.jpg."""
import math
import os
import sys

from vflowfn import Context, FnError, Function, Param, UsageError, ffmpeg, ffprobe

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "thumbnail"))
from thumbnail import grab  # noqa: E402  (one sampling rule for thumbnails and sprites)

IMAGE_FORMATS = {"image2", "jpeg_pipe", "png_pipe", "webp_pipe", "bmp_pipe"}
JPEG_MAX = 65500  # largest JPEG side


def run(ctx: Context) -> dict:
    p = ctx.params
    infos = [ffprobe(path) for path in ctx.inputs]
    images = [i["format"].get("format_name") in IMAGE_FORMATS for i in infos]
    if all(images):
        tiles = list(ctx.inputs)
    elif len(ctx.inputs) == 1:
        n = grab(ctx, ctx.inputs[0], ctx.work, p["every"], p["width"])
        tiles = [os.path.join(ctx.work, f"thumb-{i:05d}.jpg") for i in range(n)]
    else:
        bad = ctx.inputs[images.index(False)]
        raise UsageError(f"sprite takes one video or any number of images; input {bad} is not an image")
    if not tiles:
        raise FnError(f"no frames could be taken from input {ctx.inputs[0]}")
    cols = min(p["columns"], len(tiles))
    rows = math.ceil(len(tiles) / cols)
    first = infos[0]["streams"][0] if all(images) else {"width": p["width"], "height": 0}
    tile_h = round(p["width"] * int(first.get("height") or p["width"]) / max(1, int(first["width"])))
    if rows * tile_h > JPEG_MAX or cols * p["width"] > JPEG_MAX:
        raise UsageError(f"{len(tiles)} tiles of {p['width']} px in {cols} columns exceed the JPEG size limit")
    listing = os.path.join(ctx.work, "tiles.txt")
    with open(listing, "w") as f:
        for t in tiles:
            f.write("file '" + os.path.abspath(t).replace("'", "'\\''") + "'\n")
    # Every tile is scaled to the same box (padded, aspect kept) so mixed sizes still tile.
    box = f"scale={p['width']}:-2"
    if all(images):
        box = (f"scale={p['width']}:{tile_h}:force_original_aspect_ratio=decrease,"
               f"pad={p['width']}:{tile_h}:(ow-iw)/2:(oh-ih)/2")
    ffmpeg(["-f", "concat", "-safe", "0", "-i", listing, "-vf", f"{box},tile={cols}x{rows}",
            "-frames:v", "1", "-q:v", "3", "-update", "1", ctx.out("sprite.jpg")],
           f"tiling {len(tiles)} frames", ctx.inputs[0], listing=True)
    return {"tiles": len(tiles), "rows": rows}


FUNCTION = Function(
    name="sprite",
    params=[
        Param("columns", "Integer", "Tiles per row.", default=5, minimum=1, maximum=32),
        Param("width", "Integer", "Width of one tile in pixels.", default=160, minimum=16, maximum=1920),
        Param("every", "Number", "Seconds between frames when the input is a video.",
              default=2, minimum=0.1, maximum=3600),
    ],
    inputs=(1, None),
    run=run,
    metadata=["tiles", "rows"],
)
