#!/usr/bin/env python3
"""The segment-parallel steps' own cost, two versions of the functions side by side.

bench_local.py measures whole runs, where a change of a second hides in the machine's
drift (several percent within minutes on shared machines). This runs the steps that
are vflow's own, split (segment, stream copy) and stitch, plus one segment's transcode,
with the function code of two commits, alternating old and new for --rounds rounds on
the same files, and prints the median wall and CPU seconds of each.

    bench/local/function_ab.py --old 5c25c7f [--new HEAD] [--rounds 5] [--out DIR]

--new defaults to the working tree. The inputs: bench_local's 1080p clip (generated
once into DIR), its segments and their transcodes (ultrafast), made with the new code.
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from bench_local import make_clip  # noqa: E402


def functions_at(rev: str | None, into: str) -> str:
    """The vflow-fn of commit `rev` (None: the working tree), compiled as the images are."""
    if rev is None:
        root = os.path.join(REPO, "function-images")
    else:
        os.makedirs(into, exist_ok=True)
        archive = subprocess.run(["git", "-C", REPO, "archive", rev, "function-images"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
        root = os.path.join(into, "function-images")
    subprocess.run([shutil.which("python3") or sys.executable, "-m", "compileall", "-q", root], check=True)
    return os.path.join(root, "vflow-fn")


def call(fn: str, name: str, inputs: list[str], out: str, **params) -> tuple[float, float]:
    """Wall and CPU seconds of one function invocation (its output folder made anew)."""
    shutil.rmtree(out, ignore_errors=True)
    argv = [fn, name, "--output-dir", out, "--metadata", out + ".json"]
    for i in inputs:
        argv += ["--input", i]
    for k, v in params.items():
        argv += [f"--{k}", str(v)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.exit(f"{name} ({fn}) failed:\n{p.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--old", required=True, help="commit whose function-images/ is the baseline")
    p.add_argument("--new", default=None, help="commit to compare (default: the working tree)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "vflow-function-ab"))
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    env_fn = {"old": functions_at(args.old, os.path.join(args.out, "old")),
              "new": functions_at(args.new, os.path.join(args.out, "new"))}
    clip = os.path.join(args.out, f"clip-{args.seconds}s-1080p.mp4")
    make_clip(clip, args.seconds)
    os.environ["VFLOW_FFMPEG_THREADS"] = "1"  # as bench_local's segment-parallel runs
    seg_dir = os.path.join(args.out, "segments")
    call(env_fn["new"], "segment", [clip], seg_dir, seconds=4, reencode="never", multipleOf=2)
    segments = sorted(os.path.join(seg_dir, n) for n in os.listdir(seg_dir) if n.endswith(".mp4"))
    encoded = []
    for i, s in enumerate(segments):
        out = os.path.join(args.out, f"encoded-{i:05d}")
        call(env_fn["new"], "transcode", [s], out, preset="ultrafast")
        encoded.append(os.path.join(out, "output.mp4"))
    steps = {
        "segment (stream copy, 4 s)": lambda fn, out: call(fn, "segment", [clip], out, seconds=4,
                                                            reencode="never", multipleOf=2),
        f"stitch ({len(encoded)} inputs)": lambda fn, out: call(fn, "stitch", encoded, out),
        "transcode (one 4 s segment, veryfast)": lambda fn, out: call(fn, "transcode", [segments[1]], out),
    }
    times = {(step, which): [] for step in steps for which in env_fn}
    for _ in range(args.rounds):
        for step, run in steps.items():
            for which, fn in env_fn.items():
                times[(step, which)].append(run(fn, os.path.join(args.out, "ab-out")))
    print(f"| step | old ({args.old}) wall | new wall | old CPU | new CPU |\n|---|---|---|---|---|")
    result = {}
    for step in steps:
        med = {w: (statistics.median(t[0] for t in times[(step, w)]),
                   statistics.median(t[1] for t in times[(step, w)])) for w in env_fn}
        result[step] = {w: {"wallSeconds": m[0], "cpuSeconds": m[1]} for w, m in med.items()}
        print(f"| {step} | {med['old'][0]:.2f} s | {med['new'][0]:.2f} s | {med['old'][1]:.2f} s "
              f"| {med['new'][1]:.2f} s |")
    print(f"\nmedians of {args.rounds} rounds, old and new alternating; inputs in {args.out}")
    with open(os.path.join(args.out, "ab.json"), "w") as f:
        json.dump({"old": args.old, "new": args.new or "working tree", "rounds": args.rounds, "steps": result},
                  f, indent=2)


if __name__ == "__main__":
    main()
