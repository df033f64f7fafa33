"""quality: how close an encode is to its source, frame by frame: PSNR and SSIM always,
VMAF where this ffmpeg has libvmaf (Debian 12's ffmpeg 5.1 does not: `vmaf` is null).

Inputs: the encode, then its source (a segment and the segment it was made from, or a
rendition and the video it was made from), or the source in consecutive parts (e.g. the
split's segments, in order). The encode is scaled to the source's size (bicubic), as
VMAF's own practice is, and frames are paired in order, by index: both must have the
same number of frames. Writes quality.json with the summary
and every frame's figures; the metadata (psnr, psnrMin, ssim, vmaf, frames) is what
`when` conditions read, e.g. a re-encode `when: quality.psnr < 38`.
"""
import json
import math
import os

from vflowfn import Context, FnError, Function, ffmpeg, ffprobe, has_filter, video_stream


def read_log(path: str, key: str) -> list[float]:
    """One figure per frame from the psnr/ssim filters' stats files (`key:value` pairs)."""
    values = []
    with open(path) as f:
        for line in f:
            fields = dict(p.split(":", 1) for p in line.split() if ":" in p)
            if key in fields:
                v = fields[key]
                values.append(math.inf if v == "inf" else float(v))
    return values


def mean_psnr(values: list[float]) -> float:
    """The mean of per-frame MSEs as a PSNR: a few bad frames weigh as they look, and
    identical frames (inf) do not make the whole infinite unless all are."""
    mses = [10 ** (-v / 10) for v in values if v != math.inf] + [0.0] * sum(v == math.inf for v in values)
    mse = sum(mses) / len(mses)
    return math.inf if mse == 0 else -10 * math.log10(mse)


def capped(x: float) -> float:
    """PSNR of identical frames is infinite; JSON has no infinity: 100 dB says identical."""
    return 100.0 if x == math.inf else round(x, 4)


def run(ctx: Context) -> dict:
    enc, parts = ctx.inputs[0], ctx.inputs[1:]
    src = parts[0] if len(parts) == 1 else f"{parts[0]} .. {parts[-1]} ({len(parts)} parts)"
    # Packets counted (no decoding): mkv and webm declare no frame count.
    ve = video_stream(ffprobe(enc, ["-count_packets"]), enc)
    vparts = [video_stream(ffprobe(p, ["-count_packets"]), p) for p in parts]
    vs = vparts[0]
    frames = [int(ve.get("nb_read_packets") or 0), sum(int(v.get("nb_read_packets") or 0) for v in vparts)]
    if frames[0] != frames[1]:
        raise FnError(f"comparing failed on input {enc}: it has {frames[0]} frames but its source {src} has "
                      f"{frames[1]}: frames cannot be paired")
    w, h = int(vs["width"]), int(vs["height"])
    # The filters write their logs in the scratch folder, named relative to it (ffmpeg
    # runs there): a path in a filter graph would need escaping of : and '.
    psnr_log, ssim_log, vmaf_log = "psnr.log", "ssim.log", "vmaf.json"
    vmaf = has_filter("libvmaf")
    # Frames paired in order, not by time: each frame's pts becomes its index (a segment's
    # encode keeps the segment's timestamps, a source may start later, parts joined by
    # the concat demuxer sit where their durations put them).
    prep = "settb=AVTB,setpts=N,format=yuv420p"
    # One chain, the encode passed through each metric in turn (each passes its first
    # input on), its end the one output: filters that feed only null sinks are not
    # always run by ffmpeg.
    graph = (f"[0:v:0]scale={w}:{h}:flags=bicubic,{prep}[e];[1:v:0]{prep},split=3[r1][r2][r3];"
             f"[e][r1]psnr=stats_file={psnr_log}[p];[p][r2]ssim=stats_file={ssim_log}[s];")
    graph += f"[s][r3]libvmaf=log_fmt=json:log_path={vmaf_log}[out]" if vmaf else "[r3]nullsink;[s]null[out]"
    if len(parts) == 1:
        reference = ["-i", os.path.abspath(parts[0])]
    else:  # the parts one after the other (a list of our own, of probed files)
        with open(os.path.join(ctx.work, "parts.txt"), "w") as f:
            f.write("ffconcat version 1.0\n")
            for p in parts:
                f.write("file '" + os.path.abspath(p).replace("'", "'\\''") + "'\n")
        reference = ["-f", "concat", "-safe", "0", "-i", "parts.txt"]
    ffmpeg(["-i", os.path.abspath(enc), *reference, "-filter_complex", graph,
            "-map", "[out]", "-f", "null", "-"], f"comparing with {src}", enc, cwd=ctx.work,
           listing=len(parts) > 1)
    psnr_log, ssim_log, vmaf_log = (os.path.join(ctx.work, n) for n in (psnr_log, ssim_log, vmaf_log))
    psnr, ssim = read_log(psnr_log, "psnr_avg"), read_log(ssim_log, "All")
    if not psnr or len(psnr) != len(ssim):
        raise FnError(f"comparing failed on input {enc}: no frames were compared with {src}")
    vmaf_frames = []
    if vmaf:
        with open(vmaf_log) as f:
            vmaf_frames = [fr["metrics"]["vmaf"] for fr in json.load(f).get("frames", [])]
    summary = {
        "psnr": capped(mean_psnr(psnr)),
        "psnrMin": capped(min(psnr)),
        "ssim": round(sum(ssim) / len(ssim), 6),
        "vmaf": round(sum(vmaf_frames) / len(vmaf_frames), 4) if vmaf_frames else None,
        "frames": len(psnr),
    }
    with open(ctx.out("quality.json"), "w") as f:
        json.dump({**summary, "encode": os.path.basename(enc), "source": [os.path.basename(p) for p in parts],
                   "perFrame": {"psnr": [capped(v) for v in psnr], "ssim": ssim, "vmaf": vmaf_frames or None}},
                  f, indent=1)
    return summary


FUNCTION = Function(
    name="quality",
    params=[],
    inputs=(2, None),
    run=run,
    metadata=["psnr", "psnrMin", "ssim", "vmaf", "frames"],
)
