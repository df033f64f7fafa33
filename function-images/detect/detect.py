"""detect: finds objects in video frames and writes them per frame to detections.json.

Backends: a torchvision detector on the GPU (weights from $VFLOW_MODEL_DIR/<model>.pth,
or random weights for throughput tests), or, where torch or a GPU is absent, OpenCV's
bundled Haar cascade for frontal faces on the CPU. VFLOW_DETECT_BACKEND=torch|haar
forces one (torch then also runs on a CPU). Frames are decoded by ffmpeg (rawvideo
pipe), or by OpenCV where ffmpeg is not installed.

detections.json: {"version": 1, "input", "backend", "decoder" (nvdec, software or opencv),
"width", "height", "fps",
"everyNth", "threshold", "classes", "frames": [{"frame", "time", "objects":
[{"label", "score", "box": [x, y, w, h]}]}]} with one entry per frame examined.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

from vflowfn import (MAX_ALLOC, Context, FnError, Function, Param, UsageError, _refusal, _tail, ffmpeg_threads,
                     ffprobe, input_guard, frame_rate, video_stream, write_json_atomic)

MODELS = ["fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
          "ssdlite320_mobilenet_v3_large"]
WEIGHTS = {"fasterrcnn_mobilenet_v3_large_320_fpn": "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights",
           "fasterrcnn_mobilenet_v3_large_fpn": "FasterRCNN_MobileNet_V3_Large_FPN_Weights",
           "ssdlite320_mobilenet_v3_large": "SSDLite320_MobileNet_V3_Large_Weights"}


def model_dir() -> str:
    return os.environ.get("VFLOW_MODEL_DIR", "/models")


def pick_backend() -> str:
    forced = os.environ.get("VFLOW_DETECT_BACKEND", "auto")
    if forced not in ("auto", "torch", "haar"):
        raise UsageError(f"VFLOW_DETECT_BACKEND must be auto, torch or haar, got {forced!r}")
    if forced == "haar":
        return "haar"
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as e:
        if forced == "torch":
            raise FnError(f"VFLOW_DETECT_BACKEND=torch but torch is not usable: {e}") from None
        return "haar"
    return "torch" if forced == "torch" or torch.cuda.is_available() else "haar"


class TorchDetector:
    def __init__(self, name: str, random_weights: bool):
        import torch
        import torchvision.models.detection as D
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.labels = getattr(D, WEIGHTS[name]).COCO_V1.meta["categories"]
        torch.manual_seed(0)  # random weights are the same in every process
        # weights=None and weights_backbone=None: nothing is fetched from the network.
        model = getattr(D, name)(weights=None, weights_backbone=None, num_classes=len(self.labels))
        if not random_weights:
            path = os.path.join(model_dir(), name + ".pth")
            if not os.path.isfile(path):
                raise FnError(f"model weights {path} not found: mount them under VFLOW_MODEL_DIR, "
                              f"or pass --randomWeights true for throughput tests")
            try:
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            except Exception as e:
                raise FnError(f"model weights {path} could not be loaded into {name}: {e}") from None
        self.model = model.eval().to(self.device)
        self.name = f"torch:{name}" + (":random" if random_weights else "")

    def __call__(self, frames: list) -> list[list[tuple[str, float, list[float]]]]:
        torch = self.torch
        with torch.inference_mode():
            batch = [torch.from_numpy(f).to(self.device).permute(2, 0, 1).float().div_(255) for f in frames]
            results = self.model(batch)
        out = []
        for r in results:
            boxes, scores, labels = (r[k].tolist() for k in ("boxes", "scores", "labels"))
            out.append([(self.labels[lab], s, [x0, y0, x1 - x0, y1 - y0])
                        for (x0, y0, x1, y1), s, lab in zip(boxes, scores, labels)])
        return out


class HaarDetector:
    labels = ["face"]
    name = "haar:frontalface_default"

    def __init__(self):
        try:
            import cv2
        except ImportError as e:
            raise FnError(f"no detector available: torch with a GPU is absent and OpenCV is missing ({e})") from None
        self.cv2 = cv2
        if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 moved the Haar cascades out
            raise FnError(f"OpenCV {cv2.__version__} has no Haar cascades; install opencv-python-headless<5")
        self.cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades,
                                                          "haarcascade_frontalface_default.xml"))
        if self.cascade.empty():
            raise FnError("OpenCV's bundled face cascade could not be loaded")

    def __call__(self, frames: list) -> list:
        out = []
        for f in frames:
            gray = self.cv2.cvtColor(f, self.cv2.COLOR_RGB2GRAY)
            rects, _, weights = self.cascade.detectMultiScale3(gray, scaleFactor=1.1, minNeighbors=5,
                                                               outputRejectLevels=True)
            # Haar gives a stage weight, not a probability: squash it into 0..1 for the threshold.
            out.append([("face", 1 / (1 + math.exp(-float(w))), [float(v) for v in r])
                        for r, w in zip(rects, weights)])
        return out


# Detectors loaded by this process, by (backend, model, random weights): a resident
# worker (FunctionProfile worker: Resident) loads in its warm-up and then never again.
_LOADED: dict = {}


def make_detector(backend: str, model: str, random_weights: bool):
    """The detector, and the seconds spent loading it now (0 when this process has it)."""
    key = (backend, model, random_weights)
    if key in _LOADED:
        return _LOADED[key], 0.0
    started = time.monotonic()
    det = TorchDetector(model, random_weights) if backend == "torch" else HaarDetector()
    _LOADED[key] = det
    return det, time.monotonic() - started


def pick_decoder(backend: str) -> str:
    """nvdec (ffmpeg -hwaccel cuda: H100/H200 decode on the GPU, encode on CPUs) where the
    detector runs on a GPU, else software; VFLOW_DETECT_DECODE=auto|nvdec|software."""
    forced = os.environ.get("VFLOW_DETECT_DECODE", "auto")
    if forced not in ("auto", "nvdec", "software"):
        raise UsageError(f"VFLOW_DETECT_DECODE must be auto, nvdec or software, got {forced!r}")
    if forced != "auto":
        return forced
    if backend == "torch":
        import torch
        if torch.cuda.is_available():
            return "nvdec"
    return "software"


def frames_decoded(src: str, width: int, height: int, every: int, decoder: str, used: dict):
    """frames(), on NVDEC when asked and it works: a hardware decode that fails before
    its first frame (no NVDEC, a codec it lacks) falls back to software; `used` says
    which decoded."""
    if decoder == "nvdec" and shutil.which("ffmpeg"):
        first = True
        try:
            for item in frames(src, width, height, every, hwaccel=True):
                first = False
                used["decoder"] = "nvdec"
                yield item
            if not first:
                return
        except FnError as e:
            if not first or os.environ.get("VFLOW_DETECT_DECODE") == "nvdec":
                raise
            print(f"vflow-fn detect: note: NVDEC decode failed, decoding in software: {e}", file=sys.stderr)
    used["decoder"] = "software" if shutil.which("ffmpeg") else "opencv"
    yield from frames(src, width, height, every)


def frames(src: str, width: int, height: int, every: int, hwaccel: bool = False):
    """Yields (frame index, RGB array) for every Nth frame."""
    import numpy as np
    if shutil.which("ffmpeg"):
        threads = ffmpeg_threads()
        t = ["-threads", str(threads)] if threads else []
        hw = ["-hwaccel", "cuda"] if hwaccel else []
        cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-max_alloc", str(MAX_ALLOC),
               *input_guard(), *t, *hw, "-i", src, "-map", "0:v:0",
               "-vf", f"select=not(mod(n\\,{every}))", "-fps_mode", "passthrough", "-f", "rawvideo",
               "-pix_fmt", "rgb24", "-"]
        size = width * height * 3
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
            i = 0
            try:
                while True:
                    buf = proc.stdout.read(size)
                    if len(buf) < size:
                        break
                    yield i * every, np.frombuffer(buf, np.uint8).reshape(height, width, 3)
                    i += 1
            finally:
                proc.stdout.close()
                rc = proc.wait()
            err.seek(0)
            text = err.read().decode("utf-8", "replace")
            if rc != 0 or ": partial file" in text:
                why = (_refusal(text) or f"ffmpeg exit status {rc}") if rc else "the input is truncated (shorter than its index says)"
                raise FnError(f"decoding failed on input {src}: {why}", _tail(text))
        return
    import cv2  # no ffmpeg here (e.g. a bare GPU host): OpenCV's own decoder
    cap = cv2.VideoCapture(src)
    if not cap.isOpened():
        raise FnError(f"decoding failed on input {src}: OpenCV cannot open it")
    n = 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        if n % every == 0:
            yield n, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        n += 1
    cap.release()


def video_facts(src: str) -> tuple[int, int, float]:
    if shutil.which("ffprobe"):
        info = ffprobe(src)
        v = video_stream(info, src)
        return int(v["width"]), int(v["height"]), frame_rate(v)
    import cv2
    cap = cv2.VideoCapture(src)
    if not cap.isOpened():
        raise FnError(f"reading failed on input {src}: OpenCV cannot open it")
    facts = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return facts[0], facts[1], facts[2] or 25.0


def run(ctx: Context) -> dict:
    src, p = ctx.inputs[0], ctx.params
    backend = pick_backend()
    det, load_seconds = make_detector(backend, p["model"], p["randomWeights"])
    wanted = [c.strip() for c in p["classes"].split(",") if c.strip()]
    if backend == "torch":
        unknown = [c for c in wanted if c not in det.labels]
        if unknown:
            raise UsageError(f"--classes has names {backend} does not know: {', '.join(unknown)}")
    elif wanted and "face" not in wanted:
        print(f"vflow-fn detect: note: the CPU fallback finds faces only; classes {wanted} give no detections",
              file=sys.stderr)
    width, height, fps = video_facts(src)
    keep = set(wanted)
    out_frames, batch, idx = [], [], []

    def flush():
        for n, found in zip(idx, det(batch)):
            objs = [{"label": lab, "score": round(s, 4), "box": [round(v, 1) for v in box]}
                    for lab, s, box in found if s >= p["threshold"] and (not keep or lab in keep)]
            out_frames.append({"frame": n, "time": round(n / fps, 4), "objects": objs})
        batch.clear()
        idx.clear()

    used = {}
    for n, frame in frames_decoded(src, width, height, p["everyNth"], pick_decoder(backend), used):
        batch.append(frame)
        idx.append(n)
        if len(batch) >= p["batch"]:
            flush()
    if batch:
        flush()
    if not out_frames:
        raise FnError(f"decoding failed on input {src}: no frames could be read")
    objects = sum(len(f["objects"]) for f in out_frames)
    write_json_atomic(ctx.out("detections.json"), {
        "version": 1, "input": os.path.basename(src), "backend": det.name, "decoder": used.get("decoder"),
        "width": width, "height": height,
        "fps": fps, "everyNth": p["everyNth"], "threshold": p["threshold"], "classes": wanted,
        "frames": out_frames})
    return {"objects": objects, "frames": len(out_frames), "loadSeconds": round(load_seconds, 4)}


def warmup() -> None:
    """Loads the detector once (CUDA context, weights from disk) and runs it on one blank frame."""
    import numpy as np
    random = os.environ.get("VFLOW_DETECT_RANDOM_WEIGHTS", "") in ("1", "true")
    det, _ = make_detector(pick_backend(), os.environ.get("VFLOW_DETECT_MODEL", MODELS[0]), random)
    det([np.zeros((320, 320, 3), np.uint8)])
    print(f"vflow-fn detect: warm-up done with {det.name}", file=sys.stderr)


FUNCTION = Function(
    name="detect",
    params=[
        Param("threshold", "Number", "Smallest detection score kept.", default=0.5, minimum=0, maximum=1),
        Param("classes", "String", "Comma-separated class names to keep, e.g. car,person; empty keeps all.",
              default=""),
        Param("everyNth", "Integer", "Run the detector on every Nth frame.", default=1, minimum=1, maximum=100),
        Param("model", "String", "torchvision detector; weights are read from $VFLOW_MODEL_DIR/<model>.pth.",
              default=MODELS[0], enum=MODELS),
        Param("randomWeights", "Boolean", "Use random weights (throughput tests; detections are meaningless).",
              default=False),
        Param("batch", "Integer", "Frames per detector call.", default=8, minimum=1, maximum=64),
    ],
    run=run,
    metadata=["objects", "frames", "loadSeconds"],
    warmup=warmup,
)
