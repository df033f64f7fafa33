"""probe: describes a media file (ffprobe's format and streams) as probe.json."""
from vflowfn import (Context, Function, audio_stream, check_not_truncated, duration, ffprobe, video_stream,
                     write_json_atomic)


def run(ctx: Context) -> dict:
    src = ctx.inputs[0]
    info = ffprobe(src)
    # The header alone describes a cut-off mp4 (index first) or mkv as whole: read its end.
    check_not_truncated(src, info)
    v = video_stream(info, src, required=False)
    a = audio_stream(info)
    write_json_atomic(ctx.out("probe.json"), info)
    main = v or a or {}
    return {
        "duration": round(duration(info), 6),
        "width": int(v.get("width", 0)) if v else 0,
        "height": int(v.get("height", 0)) if v else 0,
        "codec": main.get("codec_name", ""),
        "streams": len(info["streams"]),
    }


FUNCTION = Function(
    name="probe",
    params=[],
    run=run,
    metadata=["duration", "width", "height", "codec", "streams"],
)
