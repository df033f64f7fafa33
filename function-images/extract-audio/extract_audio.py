"""extract-audio: writes the first audio stream as audio.m4a (aac), audio.opus, audio.flac, or copied."""
from vflowfn import Context, FnError, Function, Param, audio_stream, ffmpeg, ffprobe

ENCODE = {"aac": ("m4a", ["-c:a", "aac"], "ipod"), "opus": ("opus", ["-c:a", "libopus"], "ogg"),
          "flac": ("flac", ["-c:a", "flac"], "flac")}
# For copy: a container that holds the codec as it is.
COPY = {"aac": ("m4a", "ipod"), "alac": ("m4a", "ipod"), "mp3": ("mp3", "mp3"), "opus": ("opus", "ogg"),
        "vorbis": ("ogg", "ogg"), "flac": ("flac", "flac"), "ac3": ("ac3", "ac3"), "eac3": ("eac3", "eac3")}


def run(ctx: Context) -> dict:
    src, p = ctx.inputs[0], ctx.params
    info = ffprobe(src)
    a = audio_stream(info)
    if a is None:
        raise FnError(f"input {src} has no audio stream")
    if p["codec"] == "copy":
        ext, fmt = COPY.get(a["codec_name"], ("mka", "matroska"))
        codec = ["-c:a", "copy"]
    else:
        ext, codec, fmt = ENCODE[p["codec"]]
        if p["codec"] != "flac":
            codec = codec + ["-b:a", f"{p['bitrate']}k"]
    ffmpeg(["-i", src, "-map", f"0:{a['index']}", "-vn", *codec, "-f", fmt, ctx.out(f"audio.{ext}")],
           f"extracting audio ({p['codec']})", src)
    return {"duration": float(a.get("duration") or info["format"].get("duration") or 0)}


FUNCTION = Function(
    name="extract-audio",
    params=[
        Param("codec", "String", "aac, opus or flac, or copy to keep the stream as it is.",
              default="aac", enum=["aac", "opus", "flac", "copy"]),
        Param("bitrate", "Integer", "Bitrate in kbit/s for aac and opus.", default=128, minimum=8, maximum=512),
    ],
    run=run,
    metadata=["duration"],
)
