"""blur: blurs the regions listed in a detections file (from detect) with ffmpeg filters.

Inputs: the video, then the detections JSON. A detection at frame f covers frames f to
f + everyNth - 1. Boxes that continue from frame to frame (overlapping) are merged into
one region over a frame range, so the filter graph grows with the number of objects,
not the number of frames.
"""
import json

from vflowfn import (Context, FnError, Function, Param, PRESETS, check_complete, encode_video, ffprobe,
                     video_stream)

MAX_REGIONS = 400  # each region is a crop+blur+overlay chain in one filter graph


def load(path: str) -> dict:
    try:
        with open(path) as f:
            doc = json.load(f)
        assert isinstance(doc.get("frames"), list), "no frames list"
        return doc
    except (ValueError, AssertionError, AttributeError) as e:
        raise FnError(f"input {path} is not a detections file from detect: {e}") from None


def regions(doc: dict, W: int, H: int) -> list[list[int]]:
    """[x, y, w, h, first, last] per region, in video pixels, even-aligned for 4:2:0."""
    sx, sy = W / (doc.get("width") or W), H / (doc.get("height") or H)
    step = max(1, int(doc.get("everyNth", 1)))
    open_, done = [], []
    for fr in sorted(doc["frames"], key=lambda f: f["frame"]):
        f = int(fr["frame"])
        still = []
        for r in open_:
            (still if r[5] >= f - 1 else done).append(r)
        open_ = still
        for obj in fr.get("objects", []):
            x, y, w, h = obj["box"]
            x0, y0 = max(0, int(x * sx)) & ~1, max(0, int(y * sy)) & ~1
            x1, y1 = min(W, int((x + w) * sx + 1.999)), min(H, int((y + h) * sy + 1.999))
            if x1 - x0 < 4 or y1 - y0 < 4:
                continue
            box = [x0, y0, x1, y1]
            for r in open_:  # continue a region the box overlaps, unless the union grows too much
                u = [min(r[0], x0), min(r[1], y0), max(r[0] + r[2], x1), max(r[1] + r[3], y1)]
                if (min(r[0] + r[2], x1) > max(r[0], x0) and min(r[1] + r[3], y1) > max(r[1], y0)
                        and area(u) <= 2 * max(area(box), r[2] * r[3])):
                    r[:4] = [u[0], u[1], u[2] - u[0], u[3] - u[1]]
                    r[5] = max(r[5], f + step - 1)
                    break
            else:
                open_.append([x0, y0, x1 - x0, y1 - y0, f, f + step - 1])
    out = []
    for x, y, w, h, a, b in done + open_:
        w, h = min(W - x, w + w % 2) & ~1, min(H - y, h + h % 2) & ~1
        out.append([x, y, w, h, a, b])
    return out


def area(b: list[int]) -> int:
    return (b[2] - b[0]) * (b[3] - b[1])


def run(ctx: Context) -> dict:
    src, det = ctx.inputs
    info = ffprobe(src, packets=True)  # check_complete reads its packets
    v = video_stream(info, src)
    regs = regions(load(det), int(v["width"]), int(v["height"]))
    if len(regs) > MAX_REGIONS:
        raise FnError(f"input {det} has {len(regs)} separate regions; at most {MAX_REGIONS} are supported")
    sigma = ctx.params["strength"]
    chains, last = [], "vin"
    for i, (x, y, w, h, a, b) in enumerate(regs):
        on = f"enable='between(n,{a},{b})'"
        chains.append(f"[{last}]split[m{i}][c{i}];[c{i}]crop={w}:{h}:{x}:{y},gblur=sigma={sigma}:{on}[g{i}];"
                      f"[m{i}][g{i}]overlay={x}:{y}:{on}[o{i}]")
        last = f"o{i}"
    graph = ";".join(chains) + f";[{last}]null[vout]" if chains else "[vin]null[vout]"
    out = encode_video(ctx, src, info, f"blurring {len(regs)} regions from {det}", graph=graph,
                       crf=ctx.params["crf"], preset=ctx.params["preset"])
    check_complete(src, info, out)
    return {"regions": len(regs)}


FUNCTION = Function(
    name="blur",
    params=[
        Param("strength", "Integer", "Blur radius (Gaussian sigma) in pixels.", default=20, minimum=1, maximum=100),
        Param("crf", "Integer", "x264 constant rate factor.", default=23, minimum=0, maximum=51),
        Param("preset", "String", "x264 speed preset.", default="veryfast", enum=PRESETS),
    ],
    inputs=(2, 2),
    run=run,
    metadata=["regions"],
)
