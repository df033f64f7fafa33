"""quality: PSNR and SSIM of an encode against its source."""
import json

import pytest

from conftest import ffmpeg, gen_clip


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return gen_clip(tmp_path_factory.mktemp("q") / "src.mp4", seconds=2, size="320x240")


def test_an_identical_copy_scores_the_maximum(fn, src):
    r = fn("quality", [src, src])
    assert r.rc == 0, r
    assert r.meta == {"psnr": 100.0, "psnrMin": 100.0, "ssim": 1.0, "vmaf": None, "frames": 50}
    detail = json.loads((r.out / "quality.json").read_text())
    assert len(detail["perFrame"]["psnr"]) == len(detail["perFrame"]["ssim"]) == 50


def test_worse_encodes_score_lower_and_a_smaller_rendition_is_compared_at_the_source_size(fn, src, tmp_path):
    scores = {}
    for name, args in {"crf18": ["-crf", "18"], "crf45": ["-crf", "45"],
                       "small": ["-vf", "scale=160:120", "-crf", "18"]}.items():
        out = tmp_path / f"{name}.mp4"
        ffmpeg("-i", src, "-c:v", "libx264", "-preset", "ultrafast", *args, "-an", out)
        r = fn("quality", [out, src])
        assert r.rc == 0, r
        scores[name] = r.meta
    assert 35 < scores["crf18"]["psnr"] < 60 and scores["crf18"]["ssim"] > 0.95
    assert scores["crf45"]["psnr"] < scores["crf18"]["psnr"] - 8 and scores["crf45"]["ssim"] < scores["crf18"]["ssim"]
    assert scores["small"]["psnr"] < scores["crf18"]["psnr"] and scores["small"]["frames"] == 50
    assert all(s["psnrMin"] <= s["psnr"] for s in scores.values())


def test_frames_that_cannot_be_paired_are_refused(fn, src, tmp_path):
    short = tmp_path / "short.mp4"
    ffmpeg("-i", src, "-t", "1", "-c:v", "libx264", "-preset", "ultrafast", short)
    r = fn("quality", [short, src])
    assert r.rc == 1 and str(short) in r.stderr and "25 frames" in r.stderr and "50" in r.stderr, r
    assert r.files() == [] and r.meta is None


def test_one_input_is_a_usage_error(fn, src):
    r = fn("quality", [src])
    assert r.rc == 2 and r.files() == [], r


def test_the_source_in_consecutive_parts_is_compared_as_one(fn, src, tmp_path):
    """A join stage gets a rendition and every segment of the split: the same figures as
    against the whole source."""
    split = fn("segment", [src], seconds=1, reencode="never")  # stream copy: the source's own frames
    assert split.rc == 0 and len(split.files()) == 2, split
    enc = tmp_path / "enc.mp4"
    ffmpeg("-i", src, "-c:v", "libx264", "-preset", "ultrafast", "-crf", "30", enc)
    whole = fn("quality", [enc, src])
    parts = fn("quality", [enc, *[split.out / f for f in split.files()]])
    assert whole.rc == 0 and parts.rc == 0, parts
    assert parts.meta["frames"] == 50 and parts.meta["psnr"] == pytest.approx(whole.meta["psnr"], abs=0.01)
    assert parts.meta["ssim"] == pytest.approx(whole.meta["ssim"], abs=1e-4)
