"""Shared helpers for the vflow video functions.

The runtime runs a function as argv, never through a shell:

    vflow-fn <function> --output-dir DIR --metadata FILE [--input PATH]... [--<param> VALUE]...

This module parses that argv against the function's declared params (the same list as
its profile.yaml, kept equal by a test), runs ffmpeg/ffprobe keeping the tail of their
stderr, and makes outputs atomic: a function writes into a staging folder inside the
output folder, and only a successful run moves the files into place. Exit codes: 0 ok,
1 the work failed (message names the input, then ffmpeg's stderr tail), 2 usage or
param error (one line).
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import mp4_index

EXIT_FAIL = 1
EXIT_USAGE = 2
TAIL_LINES = 20


class UsageError(Exception):
    """Bad argv or param value: exit 2 with one line."""


class FnError(Exception):
    """The work failed: exit 1 with the message and the tool's stderr tail."""

    def __init__(self, message: str, tail: list[str] | None = None):
        super().__init__(message)
        self.tail = tail or []


@dataclass
class Param:
    """One parameter, mirroring a FunctionProfile param (name, type, default, ...)."""

    name: str
    type: str  # Integer | Number | String | Boolean
    description: str = ""
    default: Any = None
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    enum: list[str] = field(default_factory=list)

    def parse(self, raw: str) -> Any:
        flag = f"--{self.name}"
        if self.type == "Boolean":
            if raw not in ("true", "false"):
                raise UsageError(f"{flag} must be true or false, got {raw!r}")
            return raw == "true"
        if self.type in ("Integer", "Number"):
            try:
                value = float(raw)
            except ValueError:
                raise UsageError(f"{flag} must be a number, got {raw!r}") from None
            if not math.isfinite(value):
                raise UsageError(f"{flag} must be a finite number, got {raw!r}")
            if self.type == "Integer":
                if not value.is_integer():
                    raise UsageError(f"{flag} must be an integer, got {raw!r}")
                value = int(value)
            if self.minimum is not None and value < self.minimum:
                raise UsageError(f"{flag} {raw} is out of range: minimum is {_num(self.minimum)}")
            if self.maximum is not None and value > self.maximum:
                raise UsageError(f"{flag} {raw} is out of range: maximum is {_num(self.maximum)}")
            return value
        if self.enum and raw not in self.enum:
            raise UsageError(f"{flag} must be one of {', '.join(self.enum)}; got {raw!r}")
        return raw


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass
class Context:
    """What a function's run() gets: validated inputs and params, and where to write."""

    function: str
    inputs: list[str]
    params: dict[str, Any]
    output_dir: str
    stage: str  # staging folder: write outputs here; moved into output_dir on success
    work: str  # scratch for intermediate files; always removed

    def out(self, name: str) -> str:
        return os.path.join(self.stage, name)


@dataclass
class Function:
    """A function module's declaration, collected by the dispatcher."""

    name: str
    params: list[Param]
    run: Callable[[Context], dict[str, Any] | None]
    inputs: tuple[int, int | None] = (1, 1)  # (fewest, most; None = no limit)
    metadata: list[str] = field(default_factory=list)
    warmup: Callable[[], None] | None = None


# ---------------------------------------------------------------- argv


def parse_argv(fn: Function, argv: list[str]) -> tuple[list[str], dict[str, Any], str, str]:
    specs = {p.name: p for p in fn.params}
    inputs: list[str] = []
    raw: dict[str, str] = {}
    output_dir = metadata = None
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--") or len(tok) < 3:
            raise UsageError(f"unexpected argument {tok!r} (arguments are --name value)")
        name, eq, value = tok[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise UsageError(f"--{name} needs a value")
            value = argv[i + 1]
            i += 1
        i += 1
        if name == "input":
            inputs.append(value)
        elif name == "output-dir":
            output_dir = value
        elif name == "metadata":
            metadata = value
        elif name in specs:
            if name in raw:
                raise UsageError(f"--{name} given twice")
            raw[name] = value
        else:
            known = ", ".join(p.name for p in fn.params) or "none"
            raise UsageError(f"unknown parameter --{name} (parameters of {fn.name}: {known})")
    if not output_dir:
        raise UsageError("--output-dir is required")
    if not metadata:
        raise UsageError("--metadata is required")
    lo, hi = fn.inputs
    if len(inputs) < lo or (hi is not None and len(inputs) > hi):
        want = f"{lo}" if lo == hi else f"{lo} to {hi}" if hi is not None else f"at least {lo}"
        raise UsageError(f"{fn.name} takes {want} --input, got {len(inputs)}")
    params: dict[str, Any] = {}
    for p in fn.params:
        if p.name in raw:
            params[p.name] = p.parse(raw[p.name])
        elif p.required:
            raise UsageError(f"missing required parameter --{p.name}")
        else:
            params[p.name] = p.default
    return inputs, params, output_dir, metadata


# ---------------------------------------------------------------- running tools


def ffmpeg_threads() -> int | None:
    value = os.environ.get("VFLOW_FFMPEG_THREADS", "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"VFLOW_FFMPEG_THREADS must be a positive integer, got {value!r}")
    return int(value)


def _tail(text: str, n: int = TAIL_LINES) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()][-n:]


# What an input may be. Only local files (no http, no pipes to other protocols), only
# single-file media containers: a playlist (hls, dash) or a concat list would make
# ffmpeg open other files it names, e.g. another invocation's scratch. `mov` covers
# mp4/m4a/3gp, `matroska` webm. image2 reads one still image, as long as the name has
# no '%' (a sequence pattern): main() refuses such names.
MEDIA_FORMATS = ("mov,matroska,avi,mpegts,mpeg,flv,ogg,asf,mxf,m4v,h264,hevc,ivf,yuv4mpegpipe,"
                 "wav,w64,mp3,aac,flac,gif,image2,png_pipe,jpeg_pipe,webp_pipe,bmp_pipe,tiff_pipe")
# Caps against forged headers: pictures beyond 8192x8192 and single allocations beyond
# 1 GiB are refused by the decoder instead of exhausting the pod's memory.
MAX_PIXELS = 8192 * 8192
MAX_ALLOC = 1 << 30
# Bounds on what a tool's output may cost the function: the stderr tail is read from
# the end of a file, and stdout (ffprobe's JSON) is refused beyond this size.
STDERR_TAIL_BYTES = 64 * 1024
MAX_STDOUT_BYTES = 256 * 1024 * 1024


def input_guard(formats: str = MEDIA_FORMATS) -> list[str]:
    """Input options (they go before each -i) that confine what ffmpeg/ffprobe may open."""
    return ["-protocol_whitelist", "file", "-format_whitelist", formats, "-max_pixels", str(MAX_PIXELS)]


def ffmpeg(args: list[str], what: str, on: str, cwd: str | None = None, listing: bool = False) -> None:
    """Run ffmpeg; the last arg must be the output. Raises FnError naming `on`.

    `listing` allows a concat list as input; only for lists the function wrote itself,
    of inputs it has probed already (the list's files inherit the whitelist).
    """
    threads = ffmpeg_threads()
    guard = input_guard(MEDIA_FORMATS + ",concat" if listing else MEDIA_FORMATS)
    # -threads before each -i sets the decoder's, before the output the encoder's.
    t = ["-threads", str(threads)] if threads else []
    out = []
    for a in args[:-1]:
        out += guard + t + [a] if a == "-i" else [a]
    if threads:
        out = ["-filter_threads", str(threads), "-filter_complex_threads", str(threads)] + out + t
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y",
           "-max_alloc", str(MAX_ALLOC)] + out + args[-1:]
    stderr = _run(cmd, what, on, cwd=cwd, want="stderr")
    # ffmpeg exits 0 on a cut-off mp4 whose index comes first, or a cut-off mkv; their
    # demuxers say so, though.
    truncated = _truncated(stderr)
    if truncated:
        raise FnError(f"{what} failed on input {on}: {truncated}", _tail(stderr))


def _truncated(stderr: str) -> str | None:
    if ": partial file" in stderr:
        return "the input is truncated (shorter than its index says)"
    if "File ended prematurely" in stderr:
        return "the input is truncated (it ends in the middle of its data)"
    return None


def _read_tail(f, limit: int) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - limit))
    return f.read().decode("utf-8", "replace")


def _refusal(stderr: str) -> str | None:
    """A plain reason when ffmpeg stopped at one of the input guards."""
    m = re.search(r"\[(\w+) @ [^\]]*\] Format not on whitelist", stderr)
    if m or "Format not on whitelist" in stderr:
        fmt = m.group(1) if m else "unknown"
        return (f"its format ({fmt}) is not one vflow reads: playlists, concat lists and image "
                f"sequences are refused, as they make ffmpeg open other files")
    if "Protocol not on whitelist" in stderr:
        return "it refers to a protocol other than a local file, which vflow refuses"
    if "exceeds specified max pixel count" in stderr:
        return f"its pictures are larger than the limit of {MAX_PIXELS} pixels"
    if "moov atom not found" in stderr:
        return "it is truncated or not a complete mp4/mov: its index (moov) is missing"
    return None


def _run(cmd: list[str], what: str, on: str, cwd: str | None = None, want: str = "stdout") -> str:
    debug = bool(os.environ.get("VFLOW_FN_DEBUG"))
    if debug:
        print("+ " + " ".join(cmd), file=sys.stderr)
        began = time.monotonic()
    # Output goes to files, not pipes, so that a flood of warnings or a huge JSON costs
    # disk that the scratch limit bounds rather than this process's memory.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            # No preexec_fn: tools run from several threads (parallel_map), where a
            # Python callback between fork and exec may deadlock. SIGXFSZ is ignored by
            # main() and stays ignored across exec unless subprocess restores it (it
            # would, with SIGPIPE: the tools write to files, not pipes).
            proc = subprocess.run(cmd, stdout=out, stderr=err, cwd=cwd, restore_signals=False)
        except FileNotFoundError:
            raise FnError(f"{what} failed on input {on}: {cmd[0]} is not installed") from None
        stderr = _read_tail(err, STDERR_TAIL_BYTES)
        if debug:  # where a function's time goes: each tool's wall time
            print(f"  {cmd[0]} took {time.monotonic() - began:.3f} s", file=sys.stderr)
        if proc.returncode != 0:
            missing = re.search(r"Unknown encoder '([^']+)'", stderr)
            if missing:  # a deployment's ffmpeg without the codec: no retry helps
                raise UsageError(f"{what} needs the {missing.group(1)} encoder, which this ffmpeg build lacks")
            reason = _refusal(stderr)
            if reason:
                raise FnError(f"{what} failed on input {on}: {reason}", _tail(stderr))
            how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                   else f"exit status {proc.returncode}")
            raise FnError(f"{what} failed on input {on}: {cmd[0]} {how}", _tail(stderr))
        if want == "stderr":
            return stderr
        size = out.seek(0, os.SEEK_END)
        # A tool whose output file hit RLIMIT_FSIZE (EFBIG) may exit 0 with its output cut
        # short: refuse it rather than parse half of it.
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and size >= limit:
            raise FnError(f"{what} failed on input {on}: {cmd[0]}'s output reached this process's file size "
                          f"limit of {limit} bytes: File too large")
        if size > MAX_STDOUT_BYTES:
            raise FnError(f"{what} failed on input {on}: {cmd[0]} wrote {size} bytes, more than the "
                          f"{MAX_STDOUT_BYTES} vflow reads")
        out.seek(0)
        return out.read().decode("utf-8", "replace")


PACKET_ENTRIES = "packet=stream_index,pts_time,duration_time,flags"
# Files up to this size are probed with their packets in one pass (see ffprobe).
INLINE_PACKETS_MAX = 512 * 1024 * 1024


def ffprobe(path: str, extra: list[str] | None = None, packets: bool = False,
            every_stream: bool = False) -> dict:
    """Format and streams of a media file, or FnError saying the input is unreadable.

    `packets` adds the video streams' packets (stream_index, pts_time, duration_time,
    flags; no decoding) under "packets", from the same process: each ffprobe start
    costs ~0.1 s of library loading, which a per-segment function pays per call;
    `every_stream` keeps the other streams' packets too. Only for files up to
    INLINE_PACKETS_MAX bytes: every stream's packets pass through this process's
    memory at once (a segment's are a few thousand; a whole film's, with its audio, are
    hundreds of thousands), so a larger file gets none here and video_pts probes its
    video alone."""
    cmd = ["ffprobe", "-hide_banner", "-v", "error", "-max_alloc", str(MAX_ALLOC), *input_guard(),
           "-of", "json", "-show_format", "-show_streams"]
    packets = packets and os.path.getsize(path) <= INLINE_PACKETS_MAX
    if packets:
        cmd += ["-show_entries", PACKET_ENTRIES]
    out = _run(cmd + (extra or []) + [path], "reading", path)
    info = json.loads(out or "{}")
    if not info.get("streams"):
        raise FnError(f"reading failed on input {path}: no audio or video streams found")
    if packets:
        keep = {st.get("index") for st in info["streams"] if every_stream or st.get("codec_type") == "video"}
        info["packets"] = [{k: p[k] for k in ("stream_index", "pts_time", "duration_time", "flags") if k in p}
                           for p in info.get("packets", []) if p.get("stream_index") in keep]
    return info


def probe_for_encode(path: str) -> dict:
    """ffprobe(path, packets=True) for a function that encodes its input with
    encode_video and checks the result with check_complete: from the MP4's index where
    mp4_index gives every fact those two use (an H.264 segment as segment writes it),
    which spares a segment's function an ffprobe start (~0.1 CPU s); else probed."""
    return mp4_index.read(path, decoder_facts=True) or ffprobe(path, packets=True)


def _packets(path: str, select: list[str]) -> list[dict]:
    """Packets (stream_index, pts_time, duration_time, flags), without decoding."""
    cmd = ["ffprobe", "-hide_banner", "-v", "error", "-max_alloc", str(MAX_ALLOC), *input_guard(),
           "-of", "json", *select, "-show_entries", PACKET_ENTRIES, path]
    return json.loads(_run(cmd, "reading packets", path) or "{}").get("packets", [])


def probe_packets(path: str, stream_index: int | str) -> list[dict]:
    """The packets of one stream (an index or a specifier such as a:0)."""
    return _packets(path, ["-select_streams", str(stream_index)])


def probe_packets_by_stream(path: str, stream_indices: list[int]) -> dict[int, list[dict]]:
    """probe_packets for several streams of one file in one pass over it (each pass reads
    the whole file: a segment of 1080p at high bit rate is tens of MB)."""
    by_stream: dict[int, list[dict]] = {i: [] for i in stream_indices}
    for p in _packets(path, []):
        if p.get("stream_index") in by_stream:
            by_stream[p["stream_index"]].append(p)
    return by_stream


def parallel_workers(items: int) -> int:
    """How many threads parallel_map runs for `items` items."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2
    return min(items, cores, 4)


def parallel_map(fn, items: list) -> list:
    """fn over items on up to as many threads as this process may use cores (at most 4):
    for the work a join or a split does per file (ffprobe, remux: I/O and a process
    start each), which runs while nothing else of the run does. Exceptions propagate
    (the first, in order)."""
    items = list(items)
    workers = parallel_workers(len(items))
    if workers <= 1:
        return [fn(i) for i in items]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


_LISTED: dict[str, set[str]] = {}


def _ffmpeg_has(kind: str, name: str, line: str) -> bool:
    """Whether this ffmpeg lists `name` among its `kind` (encoders, filters); each list is
    read once. `line` matches the flag columns before a name."""
    if kind not in _LISTED:
        out = _run(["ffmpeg", "-hide_banner", f"-{kind}"], f"listing {kind}", "-")
        _LISTED[kind] = {ln.split()[1] for ln in out.splitlines()
                         if len(ln.split()) > 1 and re.match(line, ln)}
    return name in _LISTED[kind]


def has_encoder(name: str) -> bool:
    return _ffmpeg_has("encoders", name, r"^ [VAS][.A-Z]{5} ")


def has_filter(name: str) -> bool:
    return _ffmpeg_has("filters", name, r"^ [.TSC]{3} ")


def video_pts(path: str, stream: int | str, info: dict | None = None) -> tuple[list[float], float | None]:
    """Sorted pts of one stream's packets (no decoding) and the pts of its first keyframe.
    `stream` is an index or "v:0"; from `info`'s packets when it has them
    (ffprobe(packets=True)), else from a probe of its own."""
    if info is not None and "packets" in info and (stream == "v:0" or isinstance(stream, int)):
        if stream == "v:0":
            stream = video_stream(info, path)["index"]
        packets = [p for p in info["packets"] if p.get("stream_index") == stream]
    else:
        packets = probe_packets(path, stream)
    pts, key = [], None
    for p in packets:
        try:
            t = float(p.get("pts_time"))
        except (TypeError, ValueError):  # absent or N/A
            continue
        pts.append(t)
        if "K" in p.get("flags", "") and (key is None or t < key):
            key = t
    return sorted(pts), key


def check_not_truncated(path: str, info: dict) -> None:
    """Reads (without decoding) the packets of the input's last seconds: a file cut off
    after an index that comes first (mp4 faststart) or a header that declares its
    duration (mkv) describes more than it holds, and ffprobe's header alone says nothing."""
    end = duration(info)
    cmd = ["ffprobe", "-hide_banner", "-v", "error", "-max_alloc", str(MAX_ALLOC), *input_guard(),
           "-read_intervals", f"{max(0.0, end - 2):.3f}%", "-of", "csv=p=0", "-show_entries", "packet=pts_time",
           path]
    stderr = _run(cmd, "reading", path, want="stderr")
    truncated = _truncated(stderr)
    if truncated:
        raise FnError(f"reading failed on input {path}: {truncated}", _tail(stderr))


# ---------------------------------------------------------------- media facts


def video_stream(info: dict, on: str, required: bool = True) -> dict | None:
    """The first real video stream (cover art is skipped), checked to be decodable."""
    for s in info["streams"]:
        if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic"):
            if s.get("codec_name") in (None, "none", "unknown"):
                tag = s.get("codec_tag_string", "?")
                raise FnError(f"unsupported video codec (tag {tag!r}) in input {on}: ffmpeg cannot decode it")
            return s
    if required:
        only = " (it holds only audio)" if audio_stream(info) else ""
        raise FnError(f"input {on} has no video stream{only}: this function needs video")
    return None


def audio_stream(info: dict) -> dict | None:
    for s in info["streams"]:
        if s.get("codec_type") == "audio" and s.get("codec_name") not in (None, "none", "unknown"):
            return s
    return None


def frame_rate(stream: dict) -> float:
    for key in ("avg_frame_rate", "r_frame_rate"):
        num, _, den = stream.get(key, "0/0").partition("/")
        try:
            if float(den or 1) > 0 and float(num) > 0:
                return float(num) / float(den or 1)
        except ValueError:
            pass
    return 25.0


def duration(info: dict) -> float:
    try:
        return float(info["format"]["duration"])
    except (KeyError, ValueError):
        return 0.0


MP4_VIDEO = {"h264", "hevc", "av1", "vp9", "mpeg4"}
MP4_AUDIO = {"aac", "mp3", "opus", "ac3", "eac3", "alac", "flac"}
WEBM_VIDEO = {"vp8", "vp9", "av1"}
WEBM_AUDIO = {"opus", "vorbis"}


def fits(container: str, vcodec: str | None, acodec: str | None) -> bool:
    """Whether stream copies of these codecs can go into the container."""
    if container == "mkv":
        return True
    v_ok, a_ok = (MP4_VIDEO, MP4_AUDIO) if container == "mp4" else (WEBM_VIDEO, WEBM_AUDIO)
    return (vcodec is None or vcodec in v_ok) and (acodec is None or acodec in a_ok)


def pick_container(vcodec: str | None, acodec: str | None) -> str:
    """mp4 where the codecs allow it (most players), then webm, else mkv (holds anything)."""
    for c in ("mp4", "webm"):
        if fits(c, vcodec, acodec):
            return c
    return "mkv"


EXT = {"mp4": "mp4", "mkv": "mkv", "webm": "webm"}
FORMAT = {"mp4": "mp4", "mkv": "matroska", "webm": "webm"}


def muxer_args(container: str, audio: dict | None = None, packets: int | None = None) -> list[str]:
    """Output format options; `audio` is the audio stream that goes into the file, if any.

    An mp4 has its index (moov) first, so that it can be read while streaming. With
    `packets`, at least as many as the file will hold, the index is written into room
    reserved for it before the media (index_room); without, faststart moves it there by
    a second pass that reads and writes the whole file again (0.16 s on a 538 MB join,
    ~0.03 s per 36 MB segment). write_output checks a file written with the room."""
    if container == "mp4":
        first = ["-moov_size", str(index_room(packets))] if packets else ["-movflags", "+faststart"]
        args = ["-f", "mp4", *first]
    else:
        args = {"mkv": ["-f", "matroska"], "webm": ["-f", "webm"]}[container]
    return args + movie_timescale(container, audio)


def index_room(packets: int) -> int:
    """Bytes to reserve for an mp4 index of `packets` packets: one takes 12 to 30 bytes
    per sample (size, time, composition offset, chunk offset), so 64 plus 64 KiB for the
    rest is room to spare; what is left stays a free box (0.06% of a 1080p join)."""
    return 65536 + 64 * packets


def write_output(args: list[str], out: str, container: str, audio: dict | None, packets: int | None,
                 what: str, on: str, cwd: str | None = None, listing: bool = False) -> None:
    """ffmpeg `args` (inputs, maps, codecs) into `out` with muxer_args(container, audio,
    packets). An mp4 written into reserved room is checked after: where the index
    outgrew it, ffmpeg 5.1 says so and exits 0, having written the index over the start
    of the media, so the file is written again with faststart (not expected: the room is
    several times what an index takes)."""
    mux = muxer_args(container, audio, packets)
    ffmpeg([*args, *mux, out], what, on, cwd=cwd, listing=listing)
    if "-moov_size" in mux and not mp4_index.index_first(out):
        os.unlink(out)
        ffmpeg([*args, *muxer_args(container, audio), out], what, on, cwd=cwd, listing=listing)


def movie_timescale(container: str, audio: dict | None) -> list[str]:
    """mp4: the edit lists in the movie timescale of the audio's sample rate.

    A segment's audio starts a fraction of a packet after its video (the packet that
    straddles the cut belongs to the previous segment), and mp4 stores that delay as an
    empty edit in the movie timescale, 1/1000 s by default. Rounded to milliseconds, each
    segment's audio would move by up to 0.5 ms against its video; in the sample rate
    the delay is exact, so stitch puts every audio packet back where it was.
    """
    try:
        rate = int((audio or {}).get("sample_rate") or 0)
    except ValueError:
        rate = 0
    return ["-movie_timescale", str(rate)] if container == "mp4" and rate > 0 else []


def audio_args(acodec: str | None, container: str, encode: bool = False) -> list[str]:
    """Copy audio where the container takes it (keeps joins gap-free), else (or when
    `encode`) encode it: Opus for webm, else AAC."""
    if acodec is None:
        return []
    if fits(container, None, acodec) and not encode:
        return ["-c:a", "copy"]
    return ["-c:a", "libopus", "-b:a", "128k"] if container == "webm" else ["-c:a", "aac", "-b:a", "160k"]


PRESETS = ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"]
CRF_MAX = {"h264": 51, "hevc": 51, "vp9": 63, "av1": 63}


def video_encoder_args(codec: str, crf: int | None, preset: str, bitrate: str | None = None) -> list[str]:
    """Encoder options for one of h264|hevc|vp9|av1, with speed mapped from the x264 preset."""
    speed = PRESETS.index(preset)  # 0 fastest .. 8 slowest
    if crf is not None and crf > CRF_MAX[codec]:
        raise UsageError(f"--crf {crf} is out of range for {codec}: maximum is {CRF_MAX[codec]}")
    rate = ["-b:v", bitrate] if bitrate else ["-crf", str(crf)]
    if codec in ("h264", "hevc"):
        # A build without the encoder: ffmpeg refuses, and _run says which (every codec).
        enc = "libx264" if codec == "h264" else "libx265"
        extra = ["-x265-params", "log-level=error"] if codec == "hevc" else []
        tag = ["-tag:v", "hvc1"] if codec == "hevc" else []  # hvc1 plays in Apple players
        return ["-c:v", enc, "-preset", preset, *rate, *extra, *tag, "-pix_fmt", "yuv420p"]
    if codec == "vp9":
        cpu_used = [8, 8, 7, 6, 5, 4, 3, 2, 1][speed]
        deadline = "realtime" if speed <= 2 else "good"
        rate = rate if bitrate else rate + ["-b:v", "0"]  # -b:v 0 makes crf constant quality
        return ["-c:v", "libvpx-vp9", *rate, "-deadline", deadline, "-cpu-used", str(cpu_used),
                "-row-mt", "1", "-pix_fmt", "yuv420p"]
    if codec == "av1":
        if has_encoder("libsvtav1"):
            svt = [12, 12, 11, 10, 9, 8, 6, 4, 2][speed]
            return ["-c:v", "libsvtav1", *rate, "-preset", str(svt), "-pix_fmt", "yuv420p"]
        cpu_used = [8, 8, 7, 6, 5, 4, 3, 2, 1][speed]
        return ["-c:v", "libaom-av1", *rate, "-cpu-used", str(cpu_used), "-row-mt", "1",
                *(["-usage", "realtime"] if speed <= 2 else []), "-pix_fmt", "yuv420p"]
    raise UsageError(f"unsupported codec {codec!r}")


def keyframe_args(codec: str, keyint: float) -> list[str]:
    """Keyframes at exactly 0, keyint, 2*keyint, ... seconds of the input's timeline and
    nowhere else: no scene-cut keyframes, no GOP-length ones. Renditions of one source
    encoded so (per segment or whole) have their keyframes at the same times whatever
    their size, which is what lets a packager cut them into segments a player can switch
    between. Empty for keyint 0 (the encoder decides)."""
    if keyint <= 0:
        return []
    force = ["-force_key_frames", f"expr:gte(t,n_forced*{keyint:.6f})"]
    if codec == "h264":
        return force + ["-g", str(1 << 30), "-sc_threshold", "0", "-forced-idr", "1"]
    if codec == "hevc":
        return force + ["-g", str(1 << 30), "-forced-idr", "1", "-x265-params", "log-level=error:scenecut=0"]
    # vp9 and av1 take the forced keyframes; their encoders may add others of their own.
    return force


# 4:2:0 encoders (x264, x265, libvpx, SVT-AV1 in yuv420p) need even sizes: an odd
# width or height (1921x1081, or scale's height 121) loses its last column or row.
EVEN_SIZE = "crop=trunc(iw/2)*2:trunc(ih/2)*2:0:0"
HDR_TRANSFERS = {"smpte2084": "PQ", "arib-std-b67": "HLG"}


def source_filters(v: dict) -> list[str]:
    """Filters that every re-encoding function puts first, by what the source is:

    - interlaced (field order tt/bb/tb/bt): deinterlaced with bwdif, one frame per frame
      (the field rate is not doubled, so the frame count and timestamps stay), only the
      frames flagged interlaced; the outputs are progressive.
    - HDR (PQ or HLG transfer): tone-mapped to SDR BT.709 (zscale + tonemap hable), as
      the outputs are 8-bit yuv420p, where PQ or HLG would band and look washed out in
      players that show them as SDR. Without zscale in this ffmpeg the HDR tags are kept.
    Rotation (a display matrix) needs nothing here: ffmpeg's autorotate turns the frames
    upright before these filters and writes no matrix on the output. A 10-bit SDR source
    becomes 8-bit; a non-square SAR is kept (the output has the same display aspect).
    """
    return [f for f in (deinterlace_filter(v), tonemap_filter(v)) if f]


def deinterlace_filter(v: dict) -> str | None:
    if v.get("field_order") in ("tt", "bb", "tb", "bt"):
        return "bwdif=mode=send_frame:parity=auto:deint=interlaced"
    return None


def tonemap_filter(v: dict) -> str | None:
    if v.get("color_transfer") in HDR_TRANSFERS and has_filter("zscale") and has_filter("tonemap"):
        return ("zscale=t=linear:npl=100,format=gbrpf32le,zscale=p=bt709,tonemap=tonemap=hable:desat=0,"
                "zscale=t=bt709:m=bt709:r=tv,format=yuv420p")
    return None


def encode_video(ctx: "Context", src: str, info: dict, what: str, *, vfilter: str | None = None,
                 graph: str | None = None, extra_inputs: tuple[str, ...] = (), codec: str = "h264",
                 crf: int | None = 23, preset: str = "veryfast", bitrate: str | None = None,
                 container: str | None = None, cwd: str | None = None, keyint: float = 0) -> str:
    """Filter and re-encode the first video stream, copy the first audio stream.

    `keyint` > 0 puts a keyframe (an IDR: the GOPs are closed) exactly every `keyint`
    seconds from the input's start and nowhere else (see keyframe_args).

    `graph` is a filter_complex chain reading [vin] and ending in [vout]; the output is
    output.<mp4|webm|mkv> in the staging folder. Frames pass through one for one
    (-fps_mode passthrough) with their timestamps (-enc_time_base -1), so per-segment
    stages keep the frame count, the start time and the A/V alignment of a segment.
    """
    v, a = video_stream(info, src), audio_stream(info)
    acodec = a["codec_name"] if a else None
    container = container or pick_container(codec, acodec)
    enc = video_encoder_args(codec, crf, preset, bitrate) + keyframe_args(codec, keyint)
    ins = ["-i", src] + [x for p in extra_inputs for x in ("-i", p)]
    # Around the function's own filters: deinterlacing and HDR tone-mapping before
    # (source_filters), the crop to even sizes that 4:2:0 encoders need after.
    pre = ",".join(source_filters(v))
    if graph:
        head = f"[0:{v['index']}]{pre}[vin];" if pre else ""
        graph = graph if pre else graph.replace("[vin]", f"[0:{v['index']}]")
        graph = head + graph.replace("[vout]", "[vfit]") + f";[vfit]{EVEN_SIZE}[vout]"
        vmap = ["-filter_complex", graph, "-map", "[vout]"]
    else:
        vmap = ["-map", f"0:{v['index']}", "-vf", ",".join(f for f in (pre, vfilter, EVEN_SIZE) if f)]
    amap = (["-map", f"0:{a['index']}"] + audio_args(acodec, container)) if a else []
    out = ctx.out(f"output.{EXT[container]}")
    progress = os.path.join(ctx.work, f"progress-{os.path.basename(out)}.txt")
    # -enc_time_base -1 encodes in the input's time base, so every frame keeps its exact
    # pts. With the default (1/frame rate) each pts was rounded to the frame grid: a
    # first frame at 0.022 s went to 0.040 s, webm's millisecond timestamps moved by up
    # to half a frame, each against the audio, which is copied as it is. (The mp4 is the
    # same either way; ffprobe merely shows no packet durations for x264 with B-frames.)
    args = ["-progress", progress, *ins, *vmap, *enc, *amap, "-fps_mode", "passthrough", "-enc_time_base:v", "-1"]
    audio = a if amap else None
    write_output(args, out, container, audio, packets_through(info, v, audio), what, src, cwd=cwd)
    frames = encoded_frames(progress)
    if frames is not None:
        ENCODED_FRAMES[out] = frames
    return out


def packets_through(info: dict, v: dict, a: dict | None) -> int | None:
    """How many packets an encode_video output of this input holds at most: a frame
    per source video packet (frames pass one for one), the audio's packets (copied, or
    re-encoded into about as many); None where the source does not say."""
    video = (sum(1 for p in info["packets"] if p.get("stream_index") == v["index"]) if "packets" in info
             else int(v.get("nb_frames") or 0))
    audio = int(a.get("nb_frames") or 0) if a else 0
    if not video or (a and not audio):
        return None
    return video + audio + audio // 8  # Opus packets (960 samples) are 7% more than AAC's


# Frames ffmpeg reported encoding into each output encode_video wrote (its -progress
# file's last "frame="): check_complete needs no probe of an output that has them all.
ENCODED_FRAMES: dict[str, int] = {}


def encoded_frames(progress: str) -> int | None:
    """The last `frame=` of an ffmpeg -progress file whose last block ends the run
    (`progress=end`); None when it is missing or did not finish."""
    try:
        with open(progress) as f:
            lines = f.read().split()
    except OSError:
        return None
    if not lines or lines[-1] != "progress=end":
        return None
    frames = [ln.split("=", 1)[1] for ln in lines if ln.startswith("frame=")]
    return int(frames[-1]) if frames and frames[-1].isdigit() else None


def _every_frame_encoded(src: str, info: dict, out: str) -> bool:
    """Whether `out` holds every source frame, known without probing it: the encoder took
    as many frames as the source has video packets, none before its first keyframe
    (frames pass one for one), and those packets span the duration the source declares
    (a source cut off where its packets end is left to the full check). Anything else
    (a lost GOP, field-coded video, a short source) goes to the full check."""
    frames = ENCODED_FRAMES.get(out)
    if frames is None or "packets" not in info:
        return False
    v = video_stream(info, src)
    pts, key = video_pts(src, v["index"], info)
    if not pts or frames != len(pts) or key is None or key > pts[0] + 1e-6:
        return False
    fps = frame_rate(v)
    want = float(v.get("duration") or duration(info) or 0)
    return pts[-1] - pts[0] + 1 / fps >= want - max(0.5, 3 / fps)


def check_complete(src: str, info: dict, out: str) -> None:
    """A truncated or damaged input can decode "successfully" to a shorter output: refuse it."""
    if _every_frame_encoded(src, info, out):
        return
    want = float(video_stream(info, src).get("duration") or duration(info) or 0)
    got_info = ffprobe(out, packets=True)
    got = float(video_stream(got_info, out).get("duration") or duration(got_info) or 0)
    fps = frame_rate(video_stream(info, src))
    if want and got < want - max(0.5, 3 / fps):
        raise FnError(f"input {src} looks truncated or damaged: it declares {want:.3f} s of video "
                      f"but only {got:.3f} s could be decoded")
    check_frames(src, info, [(out, None)], {out: got_info})


def check_frames(src: str, info: dict, outputs: list[tuple[str, float | None]],
                 probed: dict[str, dict] | None = None) -> None:
    """Damaged packets: a decoder conceals what it can, but a frame it cannot decode (a
    lost keyframe takes the frames that refer to it along) is simply missing from the
    output, a hole in the middle that no duration shows. Every source frame (its
    packets' pts, from the first keyframe on, no decoding) must be in the outputs, each
    output placed at `start` on the source's timeline (ffmpeg's: pts less the input's
    start_time), or, for None, aligned by its first frame. Two or more consecutive
    frames missing is a failure; a lone one is not (field-coded video has a packet per
    field but a frame per pair). Packets come from `info` and `probed` (path -> info)
    where those were probed with packets=True."""
    v = video_stream(info, src)
    pts, key = video_pts(src, v["index"], info)
    origin = seconds_or_zero(info.get("format", {}).get("start_time"))
    want = [t - origin for t in pts if key is None or t >= key - 1e-6]
    steps = sorted(b - a for a, b in zip(want, want[1:]) if b > a)
    if not steps:
        return
    tol = max(0.25 * steps[len(steps) // 2], 0.0015)
    got = []
    for path, start in outputs:
        o, _ = video_pts(path, "v:0", (probed or {}).get(path))
        if o:
            first = start if start is not None else min(want, key=lambda t: abs(t - o[0]))
            got += [t + first - o[0] for t in o]
    got.sort()
    missing, j = [], 0
    for t in want:
        while j < len(got) and got[j] < t - tol:
            j += 1
        missing.append(not (j < len(got) and got[j] <= t + tol))
    run = 0
    for i, lost in enumerate(missing + [False]):
        if lost:
            run += 1
            continue
        if run >= 2:
            a, b = want[i - run] + origin, want[i - 1] + origin
            raise FnError(f"input {src} is damaged: {run} frames (pts {a:.3f} s to {b:.3f} s) could not be "
                          f"decoded, {sum(missing)} of {len(want)} in all")
        run = 0


def seconds_or_zero(value) -> float:
    """A time ffprobe gives as text, 0 where it gives none."""
    try:
        return float(value)
    except (TypeError, ValueError):  # absent or "N/A"
        return 0.0


# ---------------------------------------------------------------- the run


def _say(fn: str, kind: str, message: str) -> None:
    print(f"vflow-fn {fn}: {kind}: {message}", file=sys.stderr)


def _on_sigterm(signum, frame):  # turn SIGTERM into an exception so cleanup runs
    raise SystemExit(128 + signum)


def write_json_atomic(path: str, obj: Any) -> None:
    # Something other than a regular file (/dev/null, a pipe) is written to as it is:
    # replacing it by rename put a regular file in place of /dev/null (run as root), and
    # every later write to /dev/null on the machine landed in it.
    if os.path.exists(path) and not os.path.isfile(path):
        with open(path, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
        return
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _warm_up(fn: Function) -> int:
    try:
        if fn.warmup:
            fn.warmup()
        return 0
    except Exception as e:  # the instance must not report ready: say why
        _say(fn.name, "warm-up failed", str(e) if isinstance(e, (UsageError, FnError))
             else f"{type(e).__name__}: {e}")
        return EXIT_FAIL


class _StderrTail:
    """Writes through to the real stderr and keeps the last lines: one invocation's
    stderr for the resident worker's answer."""

    def __init__(self, real, lines: int = 40):
        self.real, self.lines, self.partial = real, [], ""
        self.keep = lines

    def write(self, text: str) -> int:
        self.real.write(text)
        self.partial += text
        *done, self.partial = self.partial.split("\n")
        self.lines = (self.lines + [d[:2048] for d in done])[-self.keep:]
        return len(text)

    def flush(self) -> None:
        self.real.flush()

    def text(self) -> str:
        return "\n".join(self.lines + ([self.partial[:2048]] if self.partial else []))


def serve_resident(fn: Function) -> int:
    """The resident worker (FunctionProfile `worker: Resident`; the protocol is the
    runtime's, see operator/runtime/src/resident.rs): loads once (the warm-up, in this
    process), says ready, then runs one invocation per request line and answers its
    exit status and stderr. What it or its tools print goes to stderr: stdout is the
    protocol's."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    code = _warm_up(fn)
    if code:
        return code
    answers.write(json.dumps({"ready": True}) + "\n")
    base_env = dict(os.environ)
    for line in sys.stdin:
        request = json.loads(line)
        os.environ.clear()
        os.environ.update(base_env)
        os.environ.update(request.get("env", {}))
        real, sys.stderr = sys.stderr, _StderrTail(sys.stderr)
        try:
            code = run_once(fn, list(request["argv"]))
        finally:
            tail, sys.stderr = sys.stderr, real
        sys.stderr.flush()
        answers.write(json.dumps({"exit": code, "stderr": tail.text()}) + "\n")
    return 0


def main(fn: Function, argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    # A file-size limit reads as a write error (EFBIG, reported) here and in every tool
    # this process runs, instead of a kill by SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if argv == ["--resident"]:
        return serve_resident(fn)
    if "--warmup" in argv:
        return _warm_up(fn)
    return run_once(fn, argv)


def run_once(fn: Function, argv: list[str]) -> int:
    """One invocation: parse argv, run the function, commit its outputs and metadata;
    the exit status of the contract (0, 1 failed, 2 usage)."""
    stage = work = None
    moved: list[str] = []
    ok = False
    ENCODED_FRAMES.clear()  # this invocation's encodes only (a resident worker runs many)
    try:
        inputs, params, output_dir, metadata_path = parse_argv(fn, argv)
        for path in inputs:
            if not os.path.isfile(path):
                raise FnError(f"input {path} does not exist or is not a file")
            if os.path.getsize(path) == 0:
                raise FnError(f"input {path} is empty")
            if "%" in os.path.basename(path):
                raise FnError(f"input {path}: a '%' in the file name makes ffmpeg read it as a "
                              f"numbered image sequence (other files); rename it")
        output_dir = os.path.abspath(output_dir)
        os.makedirs(output_dir, exist_ok=True)
        stage = tempfile.mkdtemp(prefix=".partial-", dir=output_dir)
        work = tempfile.mkdtemp(prefix=".work-", dir=output_dir)
        ctx = Context(fn.name, inputs, params, output_dir, stage, work)
        meta = fn.run(ctx) or {}
        missing = [k for k in fn.metadata if k not in meta]
        if missing:
            raise RuntimeError(f"metadata keys {missing} were not produced")
        # Commit: each rename is atomic and stays inside the output folder.
        for name in sorted(os.listdir(stage)):
            os.replace(os.path.join(stage, name), os.path.join(output_dir, name))
            moved.append(os.path.join(output_dir, name))
        write_json_atomic(metadata_path, {k: meta[k] for k in fn.metadata})
        ok = True
        return 0
    except UsageError as e:
        _say(fn.name, "usage error", str(e))
        return EXIT_USAGE
    except FnError as e:
        _say(fn.name, "error", str(e))
        if e.tail:
            print(f"--- last {len(e.tail)} lines of ffmpeg's stderr ---", file=sys.stderr)
            for line in e.tail:
                print(line, file=sys.stderr)
        return EXIT_FAIL
    except OSError as e:  # e.g. ENOSPC while writing JSON or moving files
        _say(fn.name, "error", f"{e.strerror or e} ({e.filename or 'output'})")
        return EXIT_FAIL
    except SystemExit as e:
        _say(fn.name, "error", f"stopped by a signal (exit {e.code}); outputs removed")
        return int(e.code) if isinstance(e.code, int) else EXIT_FAIL
    except Exception as e:  # a bug: say so plainly, with the trace for the logs
        traceback.print_exc()
        _say(fn.name, "internal error", f"{type(e).__name__}: {e}")
        return EXIT_FAIL
    finally:
        for d in (stage, work):
            if d:
                shutil.rmtree(d, ignore_errors=True)
        if not ok:  # a failure after some renames must not leave half a result
            for path in moved:
                _unlink(path)
