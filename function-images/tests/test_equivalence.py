"""A segmented pipeline (segment -> scale or transcode per segment -> stitch) is indistinguishable from
one run of the same function over the whole clip: the same frames and duration, the
audio where it was at every join, and the picture within 40 dB PSNR (same settings)."""
import pytest

from conftest import count_frames, packets, span, stream_duration

SETTINGS = {"scale": {"height": 240, "crf": 23, "preset": "ultrafast"},
            "transcode": {"crf": 23, "preset": "ultrafast"}}


@pytest.mark.parametrize("function", ["scale", "transcode"])
@pytest.mark.parametrize("clip", ["intel", "bbb", "nasa"])
def test_split_stage_stitch_equals_one_run_of_the_stage_over_the_whole(fn, videos, clip, function):
    src = videos[clip]
    split = fn("segment", [src], seconds=4)
    assert split.rc == 0, split
    scaled = []
    for seg in split.files():
        r = fn(function, [split.out / seg], **SETTINGS[function])
        assert r.rc == 0, r
        scaled += [r.out / f for f in r.files()]
    joined = fn("stitch", scaled, container=scaled[0].suffix[1:])
    assert joined.rc == 0, joined
    whole = fn(function, [src], **SETTINGS[function])
    assert whole.rc == 0, whole
    a, b = joined.out / joined.files()[0], whole.out / whole.files()[0]
    frame = 1 / 25 if clip != "bbb" else 1 / 24
    assert count_frames(a) == count_frames(b) == count_frames(src)
    assert stream_duration(a) == pytest.approx(stream_duration(b), abs=frame)
    # A/V: every audio packet of the segmented output where the single run has it (both
    # copy or encode the source's audio), within one audio frame, joins included.
    pa, pb = ([float(p["pts_time"]) for p in packets(x, "a:0")] for x in (a, b))
    audio_frame = span(b, "a:0")[2]
    assert len(pa) == len(pb) and pa
    drift = max(abs(x - y) for x, y in zip(pa, pb))
    assert drift <= audio_frame, f"audio moved by {drift:.4f} s against one run (a frame is {audio_frame:.4f} s)"
    # ... and the audio against the video: each output's first audio pts minus its first
    # video pts, the same within one audio frame.
    va, vb = span(a)[0], span(b)[0]
    assert abs((pa[0] - va) - (pb[0] - vb)) <= audio_frame
    q = fn("quality", [a, b])
    assert q.rc == 0, q
    print(f"{clip} {function}: PSNR {q.meta['psnr']} dB (worst frame {q.meta['psnrMin']}), SSIM {q.meta['ssim']}")
    assert q.meta["psnr"] > 40, q.meta
