"""detect: finds objects in video frames and writes them per frame to detections.json.

Backends: a torchvision detector on the GPU (COCO classes; weights from
$VFLOW_MODEL_DIR/<model>.pth, or random weights for throughput tests), or, where torch
or a GPU is absent, an SSD MobileNetV2 trained on Open Images V4 (23 classes: car,
vehicle, person, bicycle, ...) run by OpenCV's DNN module on the CPU; its weights come
from an npm package (detect/fetch-model.sh) and sit in detect/models/ beside this file
or in $VFLOW_MODEL_DIR. VFLOW_DETECT_BACKEND=torch|cpu forces one (torch then also runs
on a CPU). Frames are decoded by ffmpeg (rawvideo pipe), or by OpenCV where ffmpeg is
not installed. Labels are lower case on both backends.

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
    if forced not in ("auto", "torch", "cpu"):
        raise UsageError(f"VFLOW_DETECT_BACKEND must be auto, torch or cpu, got {forced!r}")
    if forced == "cpu":
        return "cpu"
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as e:
        if forced == "torch":
            raise FnError(f"VFLOW_DETECT_BACKEND=torch but torch is not usable: {e}") from None
        return "cpu"
    return "torch" if forced == "torch" or torch.cuda.is_available() else "cpu"


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


CPU_MODEL = "ssd_mobilenetv2_oidv4_fp16.tflite"
CPU_LABELS = "oidv4_labels.txt"


def cpu_model_file(name: str) -> str:
    """$VFLOW_MODEL_DIR/<name>, else detect/models/<name> beside this file (an image and
    a checkout after fetch-model.sh)."""
    for folder in (os.environ.get("VFLOW_MODEL_DIR"), os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                   "models")):
        if folder and os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FnError(f"detect's CPU model file {name} is missing from $VFLOW_MODEL_DIR and detect/models/: "
                  f"run function-images/detect/fetch-model.sh")


def ssd_anchors():
    """The anchors of the TensorFlow Object Detection API's SSD on a 300x300 input, in
    the order of the model's outputs (feature map row, column, box): six feature maps
    (19, 10, 5, 3, 2, 1 cells), scales from 0.2 to 0.95, aspect ratios 1, 2, 1/2, 3, 1/3
    and one more square box between this scale and the next; the first map has three
    boxes only (0.1 square, 0.2 at 2 and 1/2). Rows of (y centre, x centre, h, w), in
    fractions of the frame: 1917 in all."""
    import numpy as np
    scales = [0.2 + 0.15 * i for i in range(6)] + [1.0]
    rows = []
    for i, cells in enumerate((19, 10, 5, 3, 2, 1)):
        if i == 0:
            boxes = [(0.1, 1.0), (scales[0], 2.0), (scales[0], 0.5)]
        else:
            boxes = [(scales[i], r) for r in (1.0, 2.0, 0.5, 3.0, 1 / 3)]
            boxes.append((math.sqrt(scales[i] * scales[i + 1]), 1.0))
        for y in range(cells):
            for x in range(cells):
                rows += [((y + 0.5) / cells, (x + 0.5) / cells, s / math.sqrt(r), s * math.sqrt(r))
                         for s, r in boxes]
    return np.array(rows, np.float32)


class CpuDetector:
    """SSD MobileNetV2 on Open Images V4 classes, by OpenCV's DNN module."""

    name = "cpu:ssd_mobilenetv2_oidv4"
    SIZE = 300
    # Candidates kept for non-maximum suppression; the function's threshold applies
    # after (a box above it is only ever suppressed by a higher one, so this floor
    # changes nothing above it). Scores below it are never reported, as torchvision's
    # detectors drop theirs below 0.05.
    FLOOR = 0.05
    OVERLAP = 0.45  # IoU above which the lower-scoring box of two goes, whatever their classes

    def __init__(self):
        try:
            import cv2
            import numpy as np
        except ImportError as e:
            raise FnError(f"no detector available: torch with a GPU is absent and OpenCV is missing ({e})") from None
        self.cv2, self.np = cv2, np
        threads = ffmpeg_threads()
        if threads:
            cv2.setNumThreads(threads)
        with open(cpu_model_file(CPU_LABELS)) as f:
            # index 0 is the background ("???"); names as the torch backend's: lower case
            self.labels = [ln.strip().lower() for ln in f if ln.strip()][1:]
        try:
            self.net = cv2.dnn.readNet(cpu_model_file(CPU_MODEL))
        except cv2.error as e:
            raise FnError(f"detect's CPU model could not be loaded by OpenCV {cv2.__version__}: {e}") from None
        layers = self.net.getLayerNames()
        # The six per-scale box and class heads, read before the model's own reshape and
        # concat: OpenCV's TFLite import lays those out as NCHW where the graph meant
        # NHWC, which scrambles the boxes; per head, (C, H, W) -> (H, W, C) is the order
        # the anchors follow.
        self.heads = []
        for kind in ("BoxEncoding", "Class"):
            for k in range(6):
                found = [n for n in layers if n.startswith(f"BoxPredictor_{k}/{kind}Predictor/BiasAdd")]
                if not found:
                    raise FnError(f"detect's CPU model has no BoxPredictor_{k}/{kind}Predictor layer")
                self.heads.append(found[0])
        self.anchors = ssd_anchors()
        # A model or label map other than the pair fetch-model.sh cuts (another file in
        # $VFLOW_MODEL_DIR) would misread every box: check the heads' shapes once.
        self.net.setInput(np.zeros((1, 3, self.SIZE, self.SIZE), np.float32))
        try:
            outs = self.net.forward(self.heads)
        except cv2.error as e:
            raise FnError(f"detect's CPU model ({cpu_model_file(CPU_MODEL)}) does not run in OpenCV "
                          f"{cv2.__version__}: {e}") from None
        boxes = sum(o[0].size // 4 for o in outs[:6])
        classes = sum(o[0].size for o in outs[6:]) // max(boxes, 1)
        if boxes != len(self.anchors) or classes != len(self.labels) + 1:
            raise FnError(f"detect's CPU model ({cpu_model_file(CPU_MODEL)}) gives {boxes} boxes of {classes} "
                          f"classes, but its anchors are {len(self.anchors)} and {cpu_model_file(CPU_LABELS)} "
                          f"names {len(self.labels)} classes and the background: not the pair fetch-model.sh makes")

    def __call__(self, frames: list) -> list:
        np, cv2 = self.np, self.cv2
        results = []
        # One frame per pass: the graph reshapes to a batch of one.
        for frame in frames:
            # RGB, stretched to 300x300, scaled to [-1, 1], NCHW
            x = cv2.resize(frame, (self.SIZE, self.SIZE), interpolation=cv2.INTER_LINEAR)
            x = (x.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]
            self.net.setInput(np.ascontiguousarray(x))
            outs = self.net.forward(self.heads)
            boxes = np.concatenate([o[0].transpose(1, 2, 0).reshape(-1, 4) for o in outs[:6]])
            logits = np.concatenate([o[0].transpose(1, 2, 0).reshape(-1, len(self.labels) + 1) for o in outs[6:]])
            results.append(self.decode(boxes, logits, frame.shape[1], frame.shape[0]))
        return results

    def decode(self, boxes, logits, width: int, height: int) -> list:
        """Box offsets (y, x scaled by 10; h, w log-scaled by 5) against the anchors, class
        scores by sigmoid (column 0 is the background), one class per box, then NMS."""
        np, a = self.np, self.anchors
        yc = boxes[:, 0] / 10 * a[:, 2] + a[:, 0]
        xc = boxes[:, 1] / 10 * a[:, 3] + a[:, 1]
        h = np.exp(boxes[:, 2] / 5) * a[:, 2]
        w = np.exp(boxes[:, 3] / 5) * a[:, 3]
        scores = 1 / (1 + np.exp(-logits[:, 1:]))
        cls = scores.argmax(1)
        best = scores[np.arange(len(cls)), cls]
        keep = np.nonzero(best >= self.FLOOR)[0]
        if not len(keep):
            return []
        rects = np.stack([(xc - w / 2) * width, (yc - h / 2) * height, w * width, h * height], 1)[keep]
        chosen = np.array(self.cv2.dnn.NMSBoxes(rects.tolist(), best[keep].tolist(), self.FLOOR,
                                                self.OVERLAP)).reshape(-1)
        out = []
        for i in chosen:
            x0, y0, bw, bh = rects[i]
            # clipped to the frame (an anchor near the edge can reach past it); a box
            # left with nothing inside the frame is no detection
            x1, y1 = min(float(x0 + bw), width), min(float(y0 + bh), height)
            x0, y0 = max(float(x0), 0.0), max(float(y0), 0.0)
            if x1 - x0 >= 1 and y1 - y0 >= 1:
                out.append((self.labels[cls[keep[i]]], float(best[keep[i]]), [x0, y0, x1 - x0, y1 - y0]))
        return sorted(out, key=lambda d: -d[1])


# Detectors loaded by this process, by (backend, model, random weights): a resident
# worker (FunctionProfile worker: Resident) loads in its warm-up and then never again.
_LOADED: dict = {}


def make_detector(backend: str, model: str, random_weights: bool):
    """The detector, and the seconds spent loading it now (0 when this process has it)."""
    key = (backend, model, random_weights)
    if key in _LOADED:
        return _LOADED[key], 0.0
    started = time.monotonic()
    det = TorchDetector(model, random_weights) if backend == "torch" else CpuDetector()
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
    unknown = [c for c in wanted if c not in det.labels]
    if unknown:
        raise UsageError(f"--classes has names the {det.name} detector does not know: {', '.join(unknown)} "
                         f"(it knows {', '.join(sorted(set(det.labels)))})")
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
