"""mp4_comment.set_comment: the comment set by rewriting the index only, or the file left
untouched where its layout is not one it rewrites (and segment then remuxes)."""
import hashlib
import struct
import subprocess
import sys
from pathlib import Path

from conftest import HERE, ffmpeg, probe

sys.path.insert(0, str(HERE.parent / "base"))
from mp4_comment import set_comment  # noqa: E402


def packets(path: Path) -> str:
    """Every packet's stream, pts, dts, size and data hash: the media, not the index."""
    return subprocess.run(["ffprobe", "-v", "error", "-show_packets", "-show_data_hash", "sha256",
                           "-show_entries", "packet=stream_index,pts,dts,size,data_hash", "-of", "csv",
                           str(path)], capture_output=True, text=True, check=True).stdout


def comment(path: Path):
    return probe(path)["format"].get("tags", {}).get("comment")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def clip(path: Path, *extra) -> Path:
    """1 s of video and audio, the index last (no faststart)."""
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=1", "-f", "lavfi",
           "-i", "sine=duration=1", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
           "-shortest", *extra, path)
    return path


def test_sets_the_comment_and_keeps_every_packet(tmp_path):
    path = clip(tmp_path / "a.mp4")
    before = packets(path)
    assert set_comment(str(path), "vflow-segment index=3 count=9 start=12.000000 end=16.000000")
    assert comment(path) == "vflow-segment index=3 count=9 start=12.000000 end=16.000000"
    assert probe(path)["format"]["tags"]["encoder"].startswith("Lavf")  # other items kept
    assert packets(path) == before
    ffmpeg("-v", "error", "-xerror", "-i", path, "-f", "null", "-")


def test_replaces_a_comment_longer_or_shorter(tmp_path):
    path = clip(tmp_path / "a.mp4", "-metadata", "comment=" + "x" * 300, "-metadata", "title=kept")
    before = packets(path)
    assert set_comment(str(path), "short")  # the index shrinks: the file is cut
    assert comment(path) == "short"
    assert set_comment(str(path), "y" * 1000)  # and grows past the old end
    assert comment(path) == "y" * 1000
    assert probe(path)["format"]["tags"]["title"] == "kept"
    assert packets(path) == before


def top_boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset, size) of each top-level box."""
    out, off = [], 0
    while off < len(data):
        size, kind = struct.unpack(">I4s", data[off:off + 8])
        out.append((kind, off, size))
        off += size
    return out


def with_udta(path: Path, udta: bytes | None) -> Path:
    """The file with its moov's udta replaced by `udta` (None: removed)."""
    data = path.read_bytes()
    (kind, off, size), = [b for b in top_boxes(data) if b[0] == b"moov"]
    assert off + size == len(data), "the index must be last"
    children = [data[off + 8 + o:off + 8 + o + n] for k, o, n in top_boxes(data[off + 8:off + size])
                if k != b"udta"]
    payload = b"".join(children) + (udta or b"")
    path.write_bytes(data[:off] + struct.pack(">I4s", 8 + len(payload), b"moov") + payload)
    return path


def test_a_file_without_metadata_gets_it(tmp_path):
    # no udta at all; a udta without meta (only a free box in it); an empty ilst
    bare = with_udta(clip(tmp_path / "a.mp4"), None)
    other = with_udta(clip(tmp_path / "b.mp4"), struct.pack(">I4s", 16, b"udta") + struct.pack(">I4s", 8, b"free"))
    empty = clip(tmp_path / "c.mp4", "-map_metadata", "-1", "-fflags", "+bitexact")
    for path in (bare, other, empty):
        assert comment(path) is None, path
        before = packets(path)
        assert set_comment(str(path), "added"), path
        assert comment(path) == "added", path
        assert packets(path) == before, path


def test_other_layouts_are_left_untouched(tmp_path):
    faststart = clip(tmp_path / "fast.mp4", "-movflags", "+faststart")
    fragmented = clip(tmp_path / "frag.mp4", "-movflags", "+frag_keyframe+empty_moov")
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(clip(tmp_path / "whole.mp4").read_bytes()[:-100])
    for path in (faststart, fragmented, truncated):
        before = digest(path)
        assert not set_comment(str(path), "never written"), path
        assert digest(path) == before, path


def test_segment_tags_in_place_and_stitch_reads_them(fn, tmp_path):
    src = tmp_path / "src.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=6", "-f", "lavfi",
           "-i", "sine=duration=6", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
           "-c:a", "aac", "-shortest", src)
    seg = fn("segment", [src], seconds=2, reencode="never")
    assert seg.rc == 0, seg
    names = seg.files()
    assert names == ["segment-00000.mp4", "segment-00001.mp4", "segment-00002.mp4"], names
    for n in names:  # tagged in place: the index stays last (a remux writes it first)
        assert top_boxes((seg.out / n).read_bytes())[-1][0] == b"moov", n
    assert [comment(seg.out / n).split(" end=")[0] for n in names] == [
        f"vflow-segment index={i} count=3 start={2 * i:.6f}" for i in range(3)]
    joined = fn("stitch", [seg.out / n for n in names])
    assert joined.rc == 0, joined
    assert packets(joined.out / "output.mp4").count("\n") == packets(src).count("\n")
