"""Sets an MP4 file's comment (iTunes-style `©cmt` item) by rewriting only its `moov` box.

A remux to change one tag reads and writes the whole file (twice with faststart): for
the segments of a 700 MB video that was 0.6 s on two cores before the first segment
could go anywhere. When `moov` is the file's last box (the segment muxer writes it
there), the media data and every chunk offset stay where they are, so the box can be
rebuilt with the item and written over the old one: a few kilobytes. Any other layout
(faststart, fragmented, a 64-bit moov, a malformed box) is left alone and reported, so
that the caller remuxes instead.
"""
import struct

from mp4_index import Unsupported, top_level

COMMENT = b"\xa9cmt"
# ilst's `data` box: type indicator 1 is UTF-8 text, locale 0.
UTF8 = 1


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _children(data: bytes) -> list[tuple[bytes, bytes]] | None:
    """(type, whole box) for each box in `data`; None unless they tile it exactly with
    32-bit sizes."""
    out, off = [], 0
    while off < len(data):
        if len(data) - off < 8:
            return None
        size, kind = struct.unpack(">I4s", data[off:off + 8])
        if size < 8 or off + size > len(data):
            return None  # 0 (to the end), 1 (64-bit) or out of bounds: not rewritten here
        out.append((kind, data[off:off + size]))
        off += size
    return out


def _with_comment_item(ilst_payload: bytes, text: bytes) -> bytes | None:
    """The items with any comment replaced by `text`; None if they are not boxes."""
    items = _children(ilst_payload)
    if items is None:
        return None
    item = _box(COMMENT, _box(b"data", struct.pack(">II", UTF8, 0) + text))
    return b"".join(box for kind, box in items if kind != COMMENT) + item


def _new_udta(text: bytes) -> bytes:
    # meta is a full box (version and flags); its handler says the items are iTunes-style
    hdlr = _box(b"hdlr", struct.pack(">II4s12x", 0, 0, b"mdir") + b"\0")
    ilst = _box(b"ilst", _with_comment_item(b"", text))
    return _box(b"udta", _box(b"meta", b"\0\0\0\0" + hdlr + ilst))


def _with_comment(moov_payload: bytes, text: bytes) -> bytes | None:
    """moov's payload with the comment set; None where its udta is not laid out as
    expected (one meta full box whose ilst holds the items)."""
    boxes = _children(moov_payload)
    if boxes is None:
        return None
    udtas = [i for i, (kind, _) in enumerate(boxes) if kind == b"udta"]
    if not udtas:
        return b"".join(box for _, box in boxes) + _new_udta(text)
    if len(udtas) > 1:
        return None
    udta = _children(boxes[udtas[0]][1][8:])
    if udta is None:
        return None
    metas = [i for i, (kind, _) in enumerate(udta) if kind == b"meta"]
    if not metas:
        udta.append((b"meta", _new_udta(text)[8:]))  # the new udta's meta box
    else:
        if len(metas) > 1:
            return None
        meta = udta[metas[0]][1]
        inner = _children(meta[12:])
        if meta[8:12] != b"\0\0\0\0" or inner is None:
            return None
        ilsts = [i for i, (kind, _) in enumerate(inner) if kind == b"ilst"]
        if len(ilsts) != 1:
            return None
        payload = _with_comment_item(inner[ilsts[0]][1][8:], text)
        if payload is None:
            return None
        inner[ilsts[0]] = (b"ilst", _box(b"ilst", payload))
        udta[metas[0]] = (b"meta", _box(b"meta", meta[8:12] + b"".join(b for _, b in inner)))
    boxes[udtas[0]] = (b"udta", _box(b"udta", b"".join(b for _, b in udta)))
    return b"".join(box for _, box in boxes)


def set_comment(path: str, text: str) -> bool:
    """Sets the comment of the MP4 at `path` in place; False (the file untouched) when
    its layout is not one this rewrites: the caller remuxes then."""
    value = text.encode()
    with open(path, "r+b") as f:
        try:
            boxes = top_level(f)
        except (Unsupported, struct.error):
            return False
        size = f.seek(0, 2)
        kind, off, head, box_size = boxes[-1] if boxes else (None, 0, 0, 0)
        if kind != b"moov" or head != 8 or off + box_size != size or box_size > 64 << 20:
            return False
        moov = (off, box_size)
        f.seek(moov[0] + 8)
        payload = _with_comment(f.read(moov[1] - 8), value)
        if payload is None or 8 + len(payload) >= 1 << 32:
            return False
        # Longer than before: the new box runs past the old end; shorter: cut the rest.
        f.seek(moov[0])
        f.write(_box(b"moov", payload))
        f.truncate()
    return True
