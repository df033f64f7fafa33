"""thumbnail: writes a JPEG every N seconds (thumb-00000.jpg at 0 s, then N s, ...) or at scene changes."""
import os

from vflowfn import Context, Function, Param, deinterlace_filter, ffmpeg, ffprobe, tonemap_filter, video_stream

EVERY_HELP = "Seconds between thumbnails."


def grab(ctx: Context, src: str, folder: str, every: float, width: int, scene: float | None = None) -> int:
    """Writes thumb-%05d.jpg into folder; returns how many. Shared with sprite."""
    v = video_stream(ffprobe(src), src)
    # selected_n counts frames already taken: the first frame at or after k*N seconds is
    # taken for k = 0, 1, ..., so the grid does not drift over long inputs.
    pick = (f"eq(n\\,0)+gt(scene\\,{scene})" if scene is not None else f"gte(t\\,selected_n*{every})")
    # Pictures as a viewer should see them: upright (ffmpeg's autorotate applies a
    # display matrix), deinterlaced (before select: bwdif needs the neighbouring frames),
    # HDR tone-mapped to SDR (after select: only the frames taken), and square pixels
    # (JPEG viewers ignore a sample aspect ratio, so an anamorphic frame is scaled to
    # its display aspect: 720x576 at 16:9 gives 320x180).
    square = f"scale={width}:max(2\\,round({width}/dar/2)*2),setsar=1"
    chain = [deinterlace_filter(v), f"select={pick}", tonemap_filter(v), square]
    ffmpeg(["-i", src, "-map", f"0:{v['index']}", "-vf", ",".join(f for f in chain if f), "-fps_mode", "vfr",
            "-q:v", "3", "-start_number", "0", "-f", "image2", os.path.join(folder, "thumb-%05d.jpg")],
           "writing thumbnails", src)
    return len([n for n in os.listdir(folder) if n.startswith("thumb-")])


def run(ctx: Context) -> dict:
    p = ctx.params
    scene = p["sceneThreshold"] if p["sceneChange"] else None
    return {"thumbnails": grab(ctx, ctx.inputs[0], ctx.stage, p["every"], p["width"], scene)}


FUNCTION = Function(
    name="thumbnail",
    params=[
        Param("every", "Number", EVERY_HELP, default=2, minimum=0.1, maximum=3600),
        Param("width", "Integer", "Thumbnail width in pixels; height keeps the aspect ratio.",
              default=320, minimum=16, maximum=3840),
        Param("sceneChange", "Boolean", "Take thumbnails at scene changes instead of every N seconds.",
              default=False),
        Param("sceneThreshold", "Number", "Scene-change score (0-1) above which a frame is taken.",
              default=0.3, minimum=0.01, maximum=1),
    ],
    run=run,
    metadata=["thumbnails"],
)
