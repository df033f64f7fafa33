"""Reads an MP4's index (its `moov` box) in this process: the format, streams and packets
that ffprobe would report for the plain files vflow's own stages write, without an
ffprobe start.

Each ffprobe start costs ~0.1 CPU s of library loading (Debian's links 215 libraries),
and stitch probed each of its inputs: 16 starts while the run waits for its last stage.
The index holds all stitch reads (per-sample times, keyframes, the sample descriptions,
the comment tag) in a few kilobytes at one end of the file.

Only the simple layout is read here: one video track and at most one audio track, each
with at most one empty edit followed by one edit at normal rate that spans all of its
samples, samples of one length (the audio's last may be shorter), no fragments. Those
are the files where ffmpeg's mov demuxer gives every sample the times this computes
(checked against ffprobe by function-images/tests/test_mp4_index.py). For anything else
read() returns None and the caller probes with ffprobe: the fast path never guesses.
"""
from __future__ import annotations

import os
import struct

import h264_sps

FORMAT_NAME = "mov,mp4,m4a,3gp,3g2,mj2"  # what ffprobe calls the demuxer of these files
MAX_MOOV = 64 << 20
# Samples per track read here (9 h of 30 fps video, 6 h of 48 kHz AAC): each becomes a
# packet in memory, so a longer file, or an index that claims more than its data can
# hold, is left to ffprobe
MAX_SAMPLES = 1 << 20
VIDEO_CODECS = {b"avc1": "h264", b"avc3": "h264", b"hvc1": "hevc", b"hev1": "hevc", b"av01": "av1",
                b"vp09": "vp9"}
AUDIO_CODECS = {b"Opus": "opus"}  # mp4a: by its esds object type (AAC_TYPES)
AAC_TYPES = {0x40: "aac", 0x66: "aac", 0x67: "aac", 0x68: "aac"}


class Unsupported(Exception):
    """A layout this reader does not handle: the caller falls back to ffprobe."""


def _boxes(data: bytes, start: int = 0, end: int | None = None):
    """(type, payload start, payload end) of each box in data[start:end]."""
    end = len(data) if end is None else end
    off = start
    while off < end:
        if data[off:end] == b"\0\0\0\0":
            return  # QuickTime's terminator after a list of child boxes
        if end - off < 8:
            raise Unsupported("truncated box header")
        size, kind = struct.unpack_from(">I4s", data, off)
        head = 8
        if size == 1:
            if end - off < 16:
                raise Unsupported("truncated box header")
            size, head = struct.unpack_from(">Q", data, off + 8)[0], 16
        elif size == 0:
            size = end - off
        if size < head or off + size > end:
            raise Unsupported(f"box {kind!r} runs past its parent")
        yield kind, off + head, off + size
        off += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int]:
    found = [(s, e) for k, s, e in _boxes(data, start, end) if k == kind]
    if len(found) != 1:
        raise Unsupported(f"{len(found)} {kind!r} boxes where one is expected")
    return found[0]


def _path(data: bytes, start: int, end: int, *kinds: bytes) -> tuple[int, int]:
    for kind in kinds:
        start, end = _child(data, start, end, kind)
    return start, end


def top_level(f) -> list[tuple[bytes, int, int, int]]:
    """(type, offset, header length, size) of each top-level box of the open file `f`;
    Unsupported unless they tile it exactly (a truncated file's last box runs past its
    end)."""
    size = f.seek(0, 2)
    boxes, off = [], 0
    while off < size:
        f.seek(off)
        head = f.read(16)
        if len(head) < 8:
            raise Unsupported("truncated top-level box")
        box, kind = struct.unpack_from(">I4s", head)
        hlen = 8
        if box == 1:
            if len(head) < 16:
                raise Unsupported("truncated top-level box")
            box, hlen = struct.unpack_from(">Q", head, 8)[0], 16
        elif box == 0:
            box = size - off
        if box < hlen or off + box > size:
            raise Unsupported(f"top-level box {kind!r} runs past the end of the file (truncated?)")
        boxes.append((kind, off, hlen, box))
        off += box
    return boxes


def _find_moov(path: str) -> bytes:
    """The moov box's payload, read from wherever it lies among the top-level boxes."""
    with open(path, "rb") as f:
        boxes = top_level(f)
        moovs = [(off, hlen, box) for kind, off, hlen, box in boxes if kind == b"moov"]
        if len(moovs) != 1 or moovs[0][2] > MAX_MOOV or any(kind == b"moof" for kind, *_ in boxes):
            raise Unsupported("no moov box, several or huge ones, or a fragmented file")
        off, hlen, box = moovs[0]
        f.seek(off + hlen)
        return f.read(box - hlen)


def _full(data: bytes, start: int) -> tuple[int, int]:
    """A full box's version and the offset after its version and flags."""
    return data[start], start + 4


def _table(data: bytes, start: int, end: int, fmt: str) -> list[tuple]:
    version, off = _full(data, start)
    (count,) = struct.unpack_from(">I", data, off)
    step = struct.calcsize(fmt)
    if off + 4 + count * step > end:
        raise Unsupported("sample table runs past its box")
    return list(struct.iter_unpack(fmt, data[off + 4:off + 4 + count * step]))


def _sample_sizes(data: bytes, stbl: tuple[int, int]) -> tuple[int, int]:
    """(number of samples, bytes they take) from the track's stsz."""
    start, end = _child(data, *stbl, b"stsz")
    _, off = _full(data, start)
    size, count = struct.unpack_from(">II", data, off)
    if count > MAX_SAMPLES:
        raise Unsupported("more samples than this reads")
    if size:
        return count, size * count
    if off + 8 + 4 * count > end:
        raise Unsupported("sample sizes run past their box")
    return count, sum(struct.unpack_from(f">{count}I", data, off + 8))


def _timescale_and_duration(data: bytes, start: int) -> tuple[int, int]:
    """(timescale, duration) of an mvhd or mdhd box."""
    version, off = _full(data, start)
    if version == 1:
        return struct.unpack_from(">IQ", data, off + 16)
    return struct.unpack_from(">II", data, off + 8)


def _edits(data: bytes, trak: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """(segment duration in movie units, media time, rate integer, rate fraction) per edit."""
    edts = [(s, e) for k, s, e in _boxes(data, *trak) if k == b"edts"]
    if not edts:
        return []
    if len(edts) > 1:
        raise Unsupported("several edts boxes")
    start, end = _child(data, *edts[0], b"elst")
    version, off = _full(data, start)
    (count,) = struct.unpack_from(">I", data, off)
    fmt = ">Qqhh" if version == 1 else ">Iihh"
    step = struct.calcsize(fmt)
    if off + 4 + count * step > end:
        raise Unsupported("edit list runs past its box")
    return list(struct.iter_unpack(fmt, data[off + 4:off + 4 + count * step]))


def _sample_entry(data: bytes, stbl: tuple[int, int]) -> tuple[bytes, int, int]:
    """The track's one sample description: (format, start, end of the whole entry)."""
    start, end = _child(data, *stbl, b"stsd")
    _, off = _full(data, start)
    (count,) = struct.unpack_from(">I", data, off)
    if count != 1:
        raise Unsupported(f"{count} sample descriptions")
    entries = list(_boxes(data, off + 4, end))
    kind, s, e = entries[0]
    return kind, s - 8, e


def _descriptors(body: bytes, pos: int, end: int):
    """(tag, start, end) of each MPEG-4 descriptor in body[pos:end] (esds)."""
    while pos < end:
        tag, pos = body[pos], pos + 1
        length = 0
        for _ in range(4):
            b = body[pos]
            pos += 1
            length = (length << 7) | (b & 0x7F)
            if not b & 0x80:
                break
        yield tag, pos, pos + length
        pos += length


def _esds(body: bytes) -> tuple[int | None, bytes]:
    """An esds's objectTypeIndication and DecoderSpecificInfo (AudioSpecificConfig)."""
    for tag, pos, end in _descriptors(body, 0, len(body)):
        if tag != 3:  # ES_Descriptor
            continue
        flags = body[pos + 2]
        pos += 3 + (2 if flags & 0x80 else 0)
        if flags & 0x40:
            pos += 1 + body[pos]
        if flags & 0x20:
            pos += 2
        for tag, dpos, dend in _descriptors(body, pos, end):
            if tag == 4:  # DecoderConfigDescriptor: object type, then 12 bytes of rates
                info = [body[s:e] for t, s, e in _descriptors(body, dpos + 13, dend) if t == 5]
                return body[dpos], info[0] if info else b""
    return None, b""


# Children of a sample entry that describe the stream, not how the file was written:
# btrt holds the encoder's bit rates, different in every segment of one encode.
NOT_DECODING = {b"btrt"}


def _describe(data: bytes, kind: str, fourcc: bytes, start: int, end: int) -> tuple[str | None, bytes, dict]:
    """The codec name, what a decoder is configured with (the fields and child boxes of
    the sample entry that ffprobe reads codec, profile, size, pixel format, rate and
    channels from: two files with equal ones decode as one stream), and those child
    boxes' payloads by type."""
    if kind == "video":
        fixed, children = data[start + 32:start + 36], start + 86  # width, height
        codec = VIDEO_CODECS.get(fourcc)
    else:
        # QuickTime's sound description version 1 has 16 more bytes before its children
        (version,) = struct.unpack_from(">H", data, start + 16)
        if version > 1:
            raise Unsupported(f"sound description version {version}")
        fixed, children = data[start + 24:start + 26] + data[start + 32:start + 36], start + 36 + 16 * version
        codec = AUDIO_CODECS.get(fourcc)
    config, boxes = [fourcc, fixed], {}

    def children_of(start: int, end: int) -> None:
        nonlocal codec
        for box, s, e in _boxes(data, start, end):
            if box == b"esds" and fourcc == b"mp4a":
                object_type, info = _esds(data[s + 4:e])
                codec = AAC_TYPES.get(object_type or 0)
                config.extend([box, info])
            elif box == b"wave":  # QuickTime puts the codec's boxes in a wave box
                children_of(s, e)
            elif box not in NOT_DECODING:
                config.extend([box, data[s:e]])
            boxes.setdefault(box, data[s:e])

    children_of(children, end)
    return codec, b"".join(struct.pack(">I", len(c)) + c for c in config), boxes


def _audio_object_type(boxes: dict) -> int | None:
    """The AAC audioObjectType of an mp4a entry's AudioSpecificConfig (5: SBR, 29: PS)."""
    esds = boxes.get(b"esds")
    if not esds:
        return None
    _, info = _esds(esds[4:])
    if not info:
        return None
    kind = info[0] >> 3
    if kind == 31 and len(info) > 1:  # escape: 32 + the next 6 bits
        kind = 32 + (((info[0] & 7) << 3) | (info[1] >> 5))
    return kind


def _decoder_facts(codec: str, boxes: dict) -> dict:
    """field_order and color_transfer of an H.264 track, as ffprobe reports them after
    decoding, from its SPS and its colr box (h264_sps); Unsupported for other codecs,
    for QuickTime's field box, and where the two disagree."""
    if codec != "h264" or b"avcC" not in boxes or b"fiel" in boxes:
        raise Unsupported("decoder facts of anything but a plain H.264 track")
    try:
        found = h264_sps.facts(boxes[b"avcC"])
    except ValueError as e:
        raise Unsupported(str(e)) from e
    if found["field_order"] is None:
        raise Unsupported("H.264 that may hold interlaced pictures")
    colr = boxes.get(b"colr", b"")
    if colr[:4] in (b"nclx", b"nclc") and len(colr) >= 10:
        (code,) = struct.unpack_from(">H", colr, 6)
        named = h264_sps.TRANSFERS.get(code)
        if found["color_transfer"] is None:
            found["color_transfer"] = named
        elif named not in (None, found["color_transfer"]):
            raise Unsupported("colr and SPS disagree on the transfer")
    elif colr:
        raise Unsupported("a colr box with an ICC profile")
    return found


def _ratio(num: int, den: int) -> str:
    from math import gcd
    g = gcd(num, den) or 1
    return f"{num // g}/{den // g}"


def _track(data: bytes, trak: tuple[int, int], index: int, movie_scale: int, file_size: int,
           decoder_facts: bool, every_stream: bool) -> tuple[dict, list[dict]]:
    mdia = _child(data, *trak, b"mdia")
    hdlr, _ = _child(data, *mdia, b"hdlr")
    handler = data[hdlr + 8:hdlr + 12]
    kind = {b"vide": "video", b"soun": "audio"}.get(handler)
    if kind is None:
        raise Unsupported(f"a {handler!r} track")
    scale, _ = _timescale_and_duration(data, _child(data, *mdia, b"mdhd")[0])
    if not scale:
        raise Unsupported("a track with timescale 0")
    stbl = _path(data, *mdia, b"minf", b"stbl")
    fourcc, es, ee = _sample_entry(data, stbl)
    codec, config, boxes = _describe(data, kind, fourcc, es, ee)
    if codec is None:
        raise Unsupported(f"sample format {fourcc!r}")
    stts = _table(data, *_child(data, *stbl, b"stts"), ">II")
    count, size = _sample_sizes(data, stbl)
    if sum(n for n, _ in stts) != count or size > file_size:
        raise Unsupported("sample counts that disagree, or more sample data than the file holds")
    deltas = [d for n, d in stts for _ in range(n)]
    if not deltas or not deltas[0]:
        raise Unsupported("a track without samples, or with samples of no length")
    # One sample length (the last may be shorter: a muxer trims the audio to its edit)
    if len({d for d in deltas[:-1]}) > 1 or deltas[-1] > deltas[0] or (kind == "video" and deltas[-1] != deltas[0]):
        raise Unsupported("samples of several lengths")
    ctts_box = [(s, e) for k, s, e in _boxes(data, *stbl) if k == b"ctts"]
    offsets = [0] * len(deltas)
    if ctts_box:
        runs = _table(data, *ctts_box[0], ">Ii")
        if sum(n for n, _ in runs) != len(deltas):
            raise Unsupported("composition offsets for another number of samples")
        offsets = [o for n, o in runs for _ in range(n)]
    stss_box = [(s, e) for k, s, e in _boxes(data, *stbl) if k == b"stss"]
    sync = {n - 1 for (n,) in _table(data, *stss_box[0], ">I")} if stss_box else None
    dts, t = [], 0
    for d in deltas:
        dts.append(t)
        t += d
    cts = [a + o for a, o in zip(dts, offsets)]
    # Edits: at most one empty one (a delay before the track starts), then one at normal
    # rate covering every sample, which is what ffmpeg maps without dropping or reordering.
    # Audio samples wholly before the edit (an AAC encoder's priming) stay, flagged
    # discard ("KD", as ffprobe shows them); one the edit starts inside is not read here.
    edits = _edits(data, trak)
    delay, media = 0, 0
    if edits:
        if edits[0][1] == -1:
            delay = edits[0][0] * scale // movie_scale
            if edits[0][0] * scale % movie_scale:
                raise Unsupported("an empty edit between two track time units")
            edits = edits[1:]
        if len(edits) != 1 or edits[0][1] < 0 or edits[0][2:] != (1, 0):
            raise Unsupported("an edit list other than [delay], span")
        media = edits[0][1]
        if kind == "video" and min(cts) != media:
            raise Unsupported("a video edit that does not start at the first frame")
        if any(c < media < c + d for c, d in zip(cts, deltas)) or media < min(cts):
            raise Unsupported("an edit that starts inside a sample")
        if media + edits[0][0] * scale / movie_scale < max(c + d for c, d in zip(cts, deltas)) - 1e-9:
            raise Unsupported("an edit that ends before the last sample")
    elif min(cts) != 0:
        raise Unsupported("composition times without an edit list")
    if kind == "audio" and any(o for o in offsets):
        raise Unsupported("audio with composition offsets")
    shift, unit = delay - media, 1 / scale  # ffprobe prints a time as ticks * (1 / timescale)
    packets, kept = [], []
    wanted = every_stream or kind == "video"
    for i, (c, d) in enumerate(zip(cts, deltas)):
        key = sync is None or i in sync
        discard = c + d <= media
        if wanted:
            packets.append({"stream_index": index, "pts_time": f"{(c + shift) * unit:.6f}",
                            "duration_time": f"{d * unit:.6f}",
                            "flags": ("K" if key else "_") + ("D" if discard else "_")})
        if not discard:
            kept.append(c)
    if not kept:
        raise Unsupported("every sample before the edit")
    first = (min(kept) + shift) * unit
    stream = {"index": index, "codec_type": kind, "codec_name": codec, "time_base": f"1/{scale}",
              "start_time": f"{first:.6f}",
              "nb_frames": str(len(deltas)), "decoder_config": config.hex()}
    if kind == "video":
        rate = _ratio(scale, deltas[0])
        stream.update(avg_frame_rate=rate, r_frame_rate=rate, duration=f"{t * unit:.6f}")
        if decoder_facts:
            stream.update(_decoder_facts(codec, boxes))
    else:
        (rate,) = struct.unpack_from(">I", data, es + 32)  # 16.16 fixed point (0 above 65535 Hz)
        # ffprobe reports the decoder's rate. A muxer writes the track's timescale and
        # the entry's rate as the stream's; where they differ (an SBR or PS stream
        # described by its core rate) the decoder's is known only by decoding.
        if rate >> 16 not in (0, scale) or _audio_object_type(boxes) in (5, 29):
            raise Unsupported("an audio rate that only decoding tells")
        stream["sample_rate"] = str(scale)
    return stream, packets


def index_first(path: str) -> bool:
    """Whether the MP4 at `path` is laid out index first: its top-level boxes tile the
    file exactly, are of the kinds a plain file has, and its moov comes before its
    media (mdat)."""
    try:
        with open(path, "rb") as f:
            order = [kind for kind, *_ in top_level(f)]
    except (Unsupported, struct.error, OSError):
        return False
    plain = {b"ftyp", b"moov", b"free", b"mdat", b"skip", b"uuid"}
    return (set(order) <= plain and b"moov" in order and b"mdat" in order
            and order.index(b"moov") < order.index(b"mdat"))


def _comment(data: bytes) -> str | None:
    for kind, s, e in _boxes(data):
        if kind != b"udta":
            continue
        for mk, ms, me in _boxes(data, s, e):
            if mk != b"meta":
                continue
            for ik, is_, ie in _boxes(data, ms + 4, me):
                if ik != b"ilst":
                    continue
                for ck, cs, ce in _boxes(data, is_, ie):
                    if ck == b"\xa9cmt":
                        for dk, ds, de in _boxes(data, cs, ce):
                            if dk == b"data" and struct.unpack_from(">I", data, ds)[0] == 1:
                                return data[ds + 8:de].decode("utf-8", "replace")
    return None


def read(path: str, every_stream: bool = False, decoder_facts: bool = False) -> dict | None:
    """ffprobe's view of the MP4 at `path` (vflowfn.ffprobe(path, packets=True,
    every_stream)): format, streams, the video's packets (`every_stream`: every
    stream's), or None where its layout is not the simple one this reads.
    `decoder_facts` adds the video's field_order and color_transfer (what a function
    filters by), which only plain H.264 tracks give here: other files come back None
    with it."""
    try:
        moov = _find_moov(path)
        mvhd = _child(moov, 0, len(moov), b"mvhd")
        movie_scale, movie_length = _timescale_and_duration(moov, mvhd[0])
        if not movie_scale or not movie_length or any(k == b"mvex" for k, _, _ in _boxes(moov)):
            raise Unsupported("fragmented, or no movie timescale or duration")
        traks = [(s, e) for k, s, e in _boxes(moov) if k == b"trak"]
        streams, packets = [], []
        for i, trak in enumerate(traks):
            stream, pk = _track(moov, trak, i, movie_scale, os.path.getsize(path), decoder_facts, every_stream)
            streams.append(stream)
            packets += pk
        kinds = [s["codec_type"] for s in streams]
        if kinds not in (["video"], ["video", "audio"], ["audio", "video"]):
            raise Unsupported(f"tracks {kinds}")
        comment = _comment(moov)
    except (Unsupported, struct.error, IndexError, OSError, RecursionError):
        return None
    start = min(float(s["start_time"]) for s in streams)
    # the movie header's duration is the one ffprobe reports for these files
    fmt = {"format_name": FORMAT_NAME, "start_time": f"{start:.6f}",
           "duration": f"{movie_length / movie_scale:.6f}",
           "tags": {"comment": comment} if comment is not None else {}}
    return {"format": fmt, "streams": streams, "packets": packets}
