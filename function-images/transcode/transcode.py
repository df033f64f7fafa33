"""transcode: re-encodes video to a codec at a CRF or a bitrate, into mp4, mkv or webm."""
import re

from vflowfn import (Context, Function, Param, PRESETS, UsageError, check_complete, encode_video, probe_for_encode)

CODECS = ["h264", "hevc", "vp9", "av1"]
DEFAULT_CRF = {"h264": 23, "hevc": 28, "vp9": 33, "av1": 35}


def bits_per_second(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", text.strip())
    if not m:
        raise UsageError(f"--bitrate must look like 800k or 2.5M, got {text!r}")
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()]
    if not 10e3 <= value <= 200e6:
        raise UsageError(f"--bitrate {text} is out of range: 10k to 200M")
    return int(value)


def run(ctx: Context) -> None:
    p = ctx.params
    # A quality loop's re-encode gets the first encode first, its measurement, its source
    # last: it encodes the source; skipped (its condition false), it passes on the first
    # encode (a skipped stage passes on the outputs of the first stage it comes after).
    if len(ctx.inputs) > 1 and p["source"] == "first":
        raise UsageError(f"transcode got {len(ctx.inputs)} inputs and encodes one: with several, set "
                         f"--source last (a quality loop's re-encode)")
    src = ctx.inputs[-1] if p["source"] == "last" else ctx.inputs[0]
    codec, container = p["codec"], p["container"]
    if p["crf"] is not None and p["bitrate"]:
        raise UsageError("set --crf or --bitrate, not both")
    if container == "webm" and codec not in ("vp9", "av1"):
        raise UsageError(f"container webm holds vp9 or av1, not {codec}")
    bitrate = str(bits_per_second(p["bitrate"])) if p["bitrate"] else None
    crf = None if bitrate else (p["crf"] if p["crf"] is not None else DEFAULT_CRF[codec])
    info = probe_for_encode(src)  # check_complete reads its packets
    out = encode_video(ctx, src, info, f"transcoding to {codec}/{container}", codec=codec, crf=crf,
                       preset=p["preset"], bitrate=bitrate, container=container, keyint=p["keyint"])
    check_complete(src, info, out)


FUNCTION = Function(
    name="transcode",
    params=[
        Param("codec", "String", "Video codec of the output.", default="h264", enum=CODECS),
        Param("crf", "Integer", "Constant rate factor (default per codec: h264 23, hevc 28, vp9 33, av1 35).",
              minimum=0, maximum=63),
        Param("bitrate", "String", "Target video bitrate instead of a CRF, e.g. 800k or 2.5M.", default=""),
        Param("preset", "String", "Speed preset (x264 names; mapped for vp9 and av1).",
              default="veryfast", enum=PRESETS),
        Param("container", "String", "Output container; audio is copied or re-encoded to fit it.",
              default="mp4", enum=["mp4", "mkv", "webm"]),
        Param("keyint", "Number", "Seconds between keyframes, forced at exactly these times and nowhere else "
              "(closed GOPs; aligned renditions for package); 0 lets the encoder decide.",
              default=0, minimum=0, maximum=60),
        Param("source", "String", "Which input to encode when given several: last for a re-encode in a quality loop "
              "(inputs: the first encode first, its source last; skipped, the stage passes the first encode on).",
              default="first", enum=["first", "last"]),
    ],
    inputs=(1, 3),
    run=run,
)
