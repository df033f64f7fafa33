"""The argv contract: params from the profile, exit codes, metadata, warm-up, threads, profiles."""
import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import FN, HERE

ROOT = HERE.parent
FUNCTIONS = sorted(d.name for d in ROOT.iterdir() if (d / "profile.yaml").is_file())
sys.path.insert(0, str(ROOT / "base"))


def load(name):
    spec = importlib.util.spec_from_file_location("t_" + name.replace("-", "_"),
                                                  ROOT / name / (name.replace("-", "_") + ".py"))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m.FUNCTION


def test_all_functions_present():
    assert FUNCTIONS == sorted(["probe", "segment", "scale", "crop", "transcode", "thumbnail", "sprite",
                                "watermark", "extract-audio", "stitch", "blur", "detect", "package", "quality"])


@pytest.mark.parametrize("name", FUNCTIONS)
def test_profile_matches_function(name):
    doc = yaml.safe_load((ROOT / name / "profile.yaml").read_text())
    spec, fn = doc["spec"], load(name)
    assert doc["kind"] == "FunctionProfile" and doc["metadata"]["name"] == name
    assert spec["command"] == ["/usr/local/bin/vflow-fn", name]
    assert spec["image"].startswith(f"ghcr.io/vflow/fn-{name}:")
    if fn.warmup:
        assert spec["warmupCommand"] == ["/usr/local/bin/vflow-fn", name, "--warmup"]
    declared = [{k: v for k, v in p.items() if k != "description"} for p in spec.get("params") or []]
    accepted = []
    for p in fn.params:
        d = {"name": p.name, "type": p.type}
        if p.required:
            d["required"] = True
        if p.default is not None:
            d["default"] = p.default
        if p.minimum is not None:
            d["minimum"] = p.minimum
        if p.maximum is not None:
            d["maximum"] = p.maximum
        if p.enum:
            d["enum"] = p.enum
        accepted.append(d)
    assert declared == accepted
    meta = [m["name"] for m in (spec.get("produces") or {}).get("metadata", [])]
    assert meta == fn.metadata
    assert (ROOT / name / "Dockerfile").is_file()


def test_the_examples_profiles_declare_what_each_function_declares():
    # manifests/examples/profiles.yaml (what `vflow run` and the examples use) carries its
    # own resources and priors, but the params and metadata are the function's: a stale
    # copy refused a param the function takes (blur's preset) and hid metadata.
    docs = [d for d in yaml.safe_load_all((ROOT.parent / "manifests/examples/profiles.yaml").read_text()) if d]
    assert docs
    for doc in docs:
        name = doc["metadata"]["name"]
        own = yaml.safe_load((ROOT / name / "profile.yaml").read_text())["spec"]
        for key in ("params", "produces"):
            assert doc["spec"].get(key) == own.get(key), f"{name}: {key} differs from function-images/{name}"


def test_the_cpu_model_is_readable_by_the_images_user():
    # The images copy detect/models/ in as it is and run detect as uid 10001: a model
    # file only its owner could read failed every detect pod's warm-up on kind.
    models = ROOT / "detect" / "models"
    files = sorted(models.iterdir())
    assert [f.name for f in files] == ["oidv4_labels.txt", "ssd_mobilenetv2_oidv4_fp16.tflite"], files
    for f in files:
        assert f.stat().st_mode & 0o004, f"{f} is not readable by others: {oct(f.stat().st_mode)}"


def run(*args, env=None):
    return subprocess.run([str(FN), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def usage(tmp_path, *args):
    p = run(args[0], "--output-dir", tmp_path / "o", "--metadata", tmp_path / "m.json", *args[1:])
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "usage error" in lines[0], p.stderr
    assert not (tmp_path / "o").exists() or not os.listdir(tmp_path / "o")
    return lines[0]


@pytest.mark.parametrize("args, says", [
    (["scale", "--input", "x.mp4", "--height", "240", "--bogus", "1"], "unknown parameter --bogus"),
    (["scale", "--input", "x.mp4"], "missing required parameter --height"),
    (["scale", "--input", "x.mp4", "--height", "10"], "minimum is 32"),
    (["scale", "--input", "x.mp4", "--height", "240.5"], "must be an integer"),
    (["scale", "--input", "x.mp4", "--height", "abc"], "must be a number"),
    (["scale", "--input", "x.mp4", "--height", "240", "--codec", "mpeg2"], "must be one of"),
    (["segment", "--input", "x.mp4", "--seconds", "0.1"], "minimum is 0.5"),
    (["thumbnail", "--input", "x.mp4", "--sceneChange", "yes"], "true or false"),
    (["scale", "--height", "240"], "takes 1 --input, got 0"),
    (["blur", "--input", "x.mp4"], "takes 2 --input"),
    (["detect", "--input", "x.mp4", "--threshold", "1.5"], "maximum is 1"),
    (["scale", "--input", "x.mp4", "--height", "240", "--height", "360"], "given twice"),
])
def test_usage_errors_exit_2(tmp_path, args, says):
    assert says in usage(tmp_path, *args)


def test_param_checked_against_codec(tmp_path, clips):
    assert "maximum is 51" in usage(tmp_path, "scale", "--input", clips["gop25"], "--height", "240", "--crf", "60")


def test_unknown_function_and_missing_dirs(tmp_path):
    assert run("nope").returncode == 2
    assert run("probe", "--input", "x").returncode == 2


def test_missing_input_exits_1_naming_it(tmp_path, fn):
    r = fn("scale", [tmp_path / "absent.mp4"], height=240)
    assert r.rc == 1 and "absent.mp4" in r.stderr and r.files() == [] and r.meta is None


def test_warmup(tmp_path):
    for name in ("scale", "detect"):
        p = run(name, "--warmup", env={"VFLOW_DETECT_BACKEND": "cpu"})
        assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("codec,encoder", [("h264", "libx264"), ("vp9", "libvpx-vp9")])
def test_an_ffmpeg_without_the_encoder_is_a_usage_error_naming_it(fn, clips, tmp_path, codec, encoder):
    # The encoder is not listed beforehand (a process start per encode): ffmpeg's own
    # refusal is read instead, for every codec. A stand-in ffmpeg that lacks the
    # encoder; ffprobe is real.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ffmpeg").write_text(f"#!/bin/sh\necho \"Unknown encoder '{encoder}'\" >&2\nexit 8\n")
    (fake / "ffmpeg").chmod(0o755)
    r = fn("transcode", [clips["gop25"]], codec=codec, env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert r.rc == 2 and f"{encoder} encoder, which this ffmpeg build lacks" in r.stderr, r
    assert r.files() == []


def test_threads_env_reaches_ffmpeg(fn, clips):
    r = fn("scale", [clips["gop25"]], height=120, preset="ultrafast",
           env={"VFLOW_FFMPEG_THREADS": "1", "VFLOW_FN_DEBUG": "1"})
    assert r.rc == 0, r
    cmd = next(ln for ln in r.stderr.splitlines() if ln.startswith("+ ffmpeg") and "libx264" in ln)
    assert "-threads 1 -i" in cmd and cmd.count("-threads 1") >= 2
    bad = fn("scale", [clips["gop25"]], height=120, env={"VFLOW_FFMPEG_THREADS": "many"})
    assert bad.rc == 2


def test_metadata_is_only_declared_keys(fn, clips):
    r = fn("probe", [clips["gop25"]])
    assert r.rc == 0, r
    assert r.meta == {"duration": pytest.approx(10.0, abs=0.05), "width": 640, "height": 360,
                      "codec": "h264", "streams": 2}
    assert r.files() == ["probe.json"]
    r = fn("scale", [clips["gop25"]], height=120, preset="ultrafast")
    assert r.meta == {}


class Resident:
    """`vflow-fn <name> --resident`: the runtime's resident protocol, spoken by hand."""

    def __init__(self, name, env=None):
        self.proc = subprocess.Popen([str(FN), name, "--resident"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.ready = self.proc.stdout.readline()

    def call(self, argv, env=None):
        self.proc.stdin.write(json.dumps({"argv": [str(a) for a in argv], "env": env or {}}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        rc = self.proc.wait(timeout=30)
        return rc, self.proc.stderr.read()


def test_a_resident_detect_loads_once_and_answers_every_invocation(tmp_path, videos):
    worker = Resident("detect")
    try:
        assert json.loads(worker.ready) == {"ready": True}
        for i in range(2):
            out, meta = tmp_path / f"out{i}", tmp_path / f"meta{i}.json"
            answer = worker.call(["--output-dir", out, "--metadata", meta, "--input", videos["intel"],
                                  "--everyNth", "50"], env={"VFLOW_STAGE": "detect"})
            assert answer["exit"] == 0, answer
            doc = json.loads(meta.read_text())
            # Loaded by the warm-up in this process: nothing to load per invocation.
            assert doc["loadSeconds"] == 0, doc
            assert doc["frames"] > 0 and (out / "detections.json").is_file()
        # A usage error is the invocation's, answered with its message; the worker goes on.
        answer = worker.call(["--output-dir", tmp_path / "bad", "--metadata", tmp_path / "bad.json",
                              "--input", videos["intel"], "--everyNth", "0"])
        assert answer["exit"] == 2 and "everyNth" in answer["stderr"], answer
        answer = worker.call(["--output-dir", tmp_path / "again", "--metadata", tmp_path / "again.json",
                              "--input", videos["intel"], "--everyNth", "50"])
        assert answer["exit"] == 0, answer
    finally:
        rc, stderr = worker.close()
    assert rc == 0, stderr


def test_a_per_process_detect_pays_the_load_on_every_invocation(fn, videos):
    loads = []
    for _ in range(2):
        r = fn("detect", [videos["intel"]], everyNth=50)
        assert r.rc == 0, r
        loads.append(r.meta["loadSeconds"])
    assert all(load > 0 for load in loads), loads


def test_detect_falls_back_to_software_decode_where_nvdec_fails(videos, monkeypatch):
    # No GPU here: ffmpeg's -hwaccel cuda fails before the first frame.
    spec = importlib.util.spec_from_file_location("t_detect_decode", ROOT / "detect" / "detect.py")
    detect = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(detect)
    monkeypatch.delenv("VFLOW_DETECT_DECODE", raising=False)
    used = {}
    got = list(detect.frames_decoded(videos["intel"], 768, 432, 100, "nvdec", used))
    assert got and used == {"decoder": "software"}
    # Asked for NVDEC and nothing else: the failure is the invocation's, naming the input.
    monkeypatch.setenv("VFLOW_DETECT_DECODE", "nvdec")
    with pytest.raises(detect.FnError, match="intel_car-detection.mp4"):
        list(detect.frames_decoded(videos["intel"], 768, 432, 100, "nvdec", {}))


def test_metadata_into_a_pipe_is_written_to_it_not_replaced(tmp_path, clips):
    """--metadata naming something other than a regular file (/dev/null, a pipe) is
    written to: replacing it by rename had put a regular file in place of /dev/null."""
    import threading
    fifo = tmp_path / "meta.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()), daemon=True)
    reader.start()
    out = tmp_path / "out"
    r = subprocess.run([str(FN), "segment", "--output-dir", str(out), "--metadata", str(fifo),
                        "--input", str(clips["gop25"]), "--seconds", "5"], capture_output=True, text=True, timeout=120)
    reader.join(timeout=30)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert json.loads(got[0])["segments"] == 2
