#!/usr/bin/env python3
"""GPU figures for detect (issue 18), measured in one run on the machine it runs on:

1. cold start to first result, and warm per-invocation latency, with resident workers
   (`--worker resident`: the model loads once, in the warm-up) and with a process per
   invocation (the model loads on every call);
2. throughput of 1, 2, 4, 8 resident instances sharing one GPU (time-slicing: several
   processes on one device), and the same under MPS where `nvidia-cuda-mps-control` is
   installed.

Each instance is a real `vflow-runtime serve` running `vflow-fn detect` (torch, random
weights: no weights are downloaded) on a generated clip, invoked over HTTP on loopback
with local paths, as the local backend does. Writes REPORT.md and results.json to --out.
`--cpu` runs the same steps on the CPU with short durations, to check the script where
no GPU is lent; its figures are not GPU figures and go to another folder.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VFLOW_FN = ROOT / "function-images" / "vflow-fn"


def post(url: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url + "/invoke", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise SystemExit(f"invocation failed ({e.code}): {e.read().decode(errors='replace')}")


class Instance:
    """One `vflow-runtime serve` of detect; `started` is when its process was spawned."""

    def __init__(self, runtime: str, work: Path, mode: str, env: dict, name: str):
        self.dir = work / name
        self.dir.mkdir(parents=True)
        port_file = self.dir / "port"
        command = [sys.executable, str(VFLOW_FN), "detect"]
        full_env = {**os.environ, **env, "VFLOW_COMMAND": json.dumps(command)}
        if mode == "per-invocation":
            full_env["VFLOW_WARMUP_COMMAND"] = json.dumps(command + ["--warmup"])
        self.log = open(self.dir / "runtime.log", "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [runtime, "serve", "--port", "0", "--port-file", str(port_file), "--bind", "127.0.0.1",
             "--scratch-dir", str(self.dir / "scratch"), "--function", "detect", "--allow-local-paths",
             "--worker", mode, "--timeout", "10m"],
            env=full_env, stdout=self.log, stderr=subprocess.STDOUT)
        while not port_file.exists():
            if self.proc.poll() is not None:
                raise SystemExit(f"{name}: the runtime exited; see {self.dir / 'runtime.log'}")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{port_file.read_text().strip()}"
        self.calls = 0

    def wait_ready(self) -> float:
        while True:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5) as r:
                    if r.status == 200:
                        return time.monotonic() - self.started
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"the runtime exited while warming up; see {self.dir / 'runtime.log'}")
            time.sleep(0.05)

    def invoke(self, clip: Path, params: dict) -> tuple[float, dict]:
        self.calls += 1
        out = self.dir / f"out-{self.calls}"
        body = {"run": "bench", "stage": "detect", "inputs": [str(clip)],
                "outputPrefix": str(out) + "/", "params": params}
        t = time.monotonic()
        answer = post(self.url, body)
        return time.monotonic() - t, answer

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def device_name(cpu: bool) -> str:
    if cpu:
        return "CPU (no GPU): a check of the script, not GPU figures"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        return out or "unknown GPU"
    except OSError:
        return "unknown (no nvidia-smi)"


def cold_and_warm(runtime, work, clip, params, env, mode, warm_calls):
    inst = Instance(runtime, work, mode, env, f"latency-{mode}")
    try:
        ready = inst.wait_ready()
        first, answer = inst.invoke(clip, params)
        cold_to_first = time.monotonic() - inst.started
        warm = [inst.invoke(clip, params) for _ in range(warm_calls)]
        loads = [a["metadata"].get("loadSeconds") for _, a in warm]
        return {"mode": mode, "ready_seconds": round(ready, 3),
                "cold_to_first_result_seconds": round(cold_to_first, 3),
                "first_invocation_seconds": round(first, 3),
                "warm_p50_seconds": round(statistics.median(t for t, _ in warm), 3),
                "warm_load_seconds_p50": statistics.median(loads) if loads else None,
                "decoder": json.loads((inst.dir / f"out-{inst.calls}" / "detections.json").read_text()).get("decoder"),
                "frames": answer["metadata"].get("frames")}
    finally:
        inst.stop()


def throughput(runtime, work, clip, params, env, k, seconds, label):
    insts = [Instance(runtime, work, "resident", env, f"{label}-{k}-{i}") for i in range(k)]
    try:
        for inst in insts:
            inst.wait_ready()
        import threading
        counts = [0] * k
        frames = [0] * k
        deadline = time.monotonic() + seconds

        def loop(i):
            while time.monotonic() < deadline:
                _, a = insts[i].invoke(clip, params)
                counts[i] += 1
                frames[i] += a["metadata"].get("frames", 0)

        started = time.monotonic()
        threads = [threading.Thread(target=loop, args=(i,)) for i in range(k)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        return {"instances": k, "sharing": label, "seconds": round(elapsed, 2),
                "invocations_per_second": round(sum(counts) / elapsed, 3),
                "frames_per_second": round(sum(frames) / elapsed, 1)}
    finally:
        for inst in insts:
            inst.stop()


def start_mps(work: Path):
    control = shutil.which("nvidia-cuda-mps-control")
    if not control:
        return None
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(work / "mps-pipe"), "CUDA_MPS_LOG_DIRECTORY": str(work / "mps-log")}
    for d in env.values():
        Path(d).mkdir(parents=True, exist_ok=True)
    subprocess.run([control, "-d"], env={**os.environ, **env}, check=True)
    return env


def stop_mps(env):
    subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, env={**os.environ, **env})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtime", default=str(ROOT / "target" / "release" / "vflow-runtime"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "gpu"))
    ap.add_argument("--cpu", action="store_true", help="check the script on the CPU (short runs)")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each throughput run")
    args = ap.parse_args()
    seconds = 5.0 if args.cpu else args.seconds
    warm_calls = 3 if args.cpu else 10
    counts = [1, 2] if args.cpu else [1, 2, 4, 8]
    work = Path(tempfile.mkdtemp(prefix="vflow-bench-gpu-"))
    clip = work / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25",
                    "-t", "4", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(clip)], check=True)
    env = {"VFLOW_DETECT_RANDOM_WEIGHTS": "1"}
    if args.cpu:
        env["VFLOW_DETECT_BACKEND"] = "cpu"
    else:
        env["VFLOW_DETECT_BACKEND"] = "torch"
    params = {"randomWeights": not args.cpu, "threshold": 0.5, "batch": 8}
    results = {"device": device_name(args.cpu), "clip": "testsrc2 1280x720, 25 fps, 4 s (100 frames)",
               "latency": [], "throughput": []}
    for mode in ("per-invocation", "resident"):
        results["latency"].append(cold_and_warm(args.runtime, work, clip, params, env, mode, warm_calls))
        print(json.dumps(results["latency"][-1]), flush=True)
    for k in counts:
        results["throughput"].append(throughput(args.runtime, work, clip, params, env, k, seconds, "time-slicing"))
        print(json.dumps(results["throughput"][-1]), flush=True)
    mps = None if args.cpu else start_mps(work)
    results["mps"] = "measured" if mps else ("not on the CPU" if args.cpu else "nvidia-cuda-mps-control not installed")
    if mps:
        try:
            for k in counts:
                r = throughput(args.runtime, work, clip, params, {**env, **mps}, k, seconds, "mps")
                results["throughput"].append(r)
                print(json.dumps(r), flush=True)
        finally:
            stop_mps(mps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# detect on {results['device']}", "",
             f"Repeat: `make bench-gpu` ({'--cpu: a check of the script' if args.cpu else 'on the GPU machine'}). "
             f"Clip: {results['clip']}; "
             + ("the CPU detector (Open Images SSD, OpenCV DNN)" if args.cpu
                else "torch detector with random weights (no weights can be downloaded)") + "; one run.", "",
             "| workers | ready (s) | cold start to first result (s) | warm p50 (s) | load per warm call (s) | decoder |",
             "|---|---|---|---|---|---|"]
    for r in results["latency"]:
        lines.append(f"| {r['mode']} | {r['ready_seconds']} | {r['cold_to_first_result_seconds']} | "
                     f"{r['warm_p50_seconds']} | {r['warm_load_seconds_p50']} | {r['decoder']} |")
    lines += ["", "| resident instances | sharing | invocations/s | frames/s |", "|---|---|---|---|"]
    for r in results["throughput"]:
        lines.append(f"| {r['instances']} | {r['sharing']} | {r['invocations_per_second']} | {r['frames_per_second']} |")
    lines += ["", f"MPS: {results['mps']}."]
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out / 'REPORT.md'}")


if __name__ == "__main__":
    main()
