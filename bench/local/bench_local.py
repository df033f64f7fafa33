#!/usr/bin/env python3
"""make bench-local: the local mode on real video, measured side by side in one run.

1. Segment-parallel transcode of a 60 s 1080p clip: `vflow run` with K single-threaded
   workers (split and stitch included) against one ffmpeg on the whole file, single-
   threaded (T1, for the efficiency T1 / (K * TK)) and multi-threaded (the plain
   alternative).
2. A 4-stage chain from cold with pre-warming None / Speculative / JustInTime:
   end-to-end minus the sum of execution times.
3. Durable from observed rates: the same chain run back to back with
   `provisioning: Auto`, no pre-warm schedule and a 2 s keep-alive, each run a new
   `vflow run` learning into the same profiles: cold starts per run before and after the
   planner makes the stages durable (their minimum started with the run).
5. A mispredicted branch: a chain whose 0.7 branch never runs and whose 0.3 branch
   always does, JustInTime re-planned as the run goes against the start-of-run
   schedule (`--no-replan`): cold starts and instance-seconds ready but unused before
   a first invocation (or before being stopped unused), per run.
4. Fusion: the chain with `fusion: Auto` (the planner fuses where its model shows a
   gain; the record says which stages ran fused) against `fusion: Disabled`, emulated
   instance starts: end-to-end, bytes written to and read from the store, cold starts.
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
FUNCTIONS = ["segment", "transcode", "stitch", "scale", "crop", "watermark"]


def sh(cmd, env=None, quiet=True):
    started = time.monotonic()
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    took = time.monotonic() - started
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return took, out.stdout


def children_cpu():
    """CPU seconds (user + system) of every finished process under this one so far: a
    vflow run's engine, runtimes and functions once it has ended."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def frames(path):
    _, out = sh(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets",
                 "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", path])
    return int(out.strip())


def profiles_file(work):
    path = os.path.join(work, "profiles.yaml")
    with open(path, "w") as f:
        for name in FUNCTIONS:
            with open(os.path.join(REPO, "function-images", name, "profile.yaml")) as p:
                f.write("---\n" + p.read())
    return path


def vflow_run(vflow, workflow, clip, profiles, store, extra_env=None, max_instances=None, extra_args=()):
    env = dict(os.environ, VFLOW_FN=os.path.join(REPO, "function-images", "vflow-fn"), **(extra_env or {}))
    cmd = [vflow, "run", workflow, "--input", clip, "--profiles", profiles, "--store", store, "--quiet"]
    if max_instances:
        cmd += ["--max-instances", str(max_instances)]
    cmd += list(extra_args)
    took, out = sh(cmd, env=env)
    report_path = next(l.split("report: ", 1)[1] for l in out.splitlines() if l.startswith("report: "))
    with open(report_path) as f:
        report = json.load(f)
    return took, report


def make_clip(clip, seconds):
    """The segment-parallel clip: 1080p30 testsrc2 with noise (x264 ultrafast, 2 s GOPs) and a
    440 Hz tone (AAC); made once, kept."""
    if not os.path.exists(clip):
        print(f"generating {clip} ...", flush=True)
        sh(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
            f"testsrc2=size=1920x1080:rate=30:duration={seconds}",
            "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
            "-vf", "noise=alls=12:allf=t", "-c:v", "libx264", "-preset", "ultrafast", "-g", "60",
            "-c:a", "aac", "-shortest", clip])


def parallel(args, work, profiles):
    clip = os.path.join(work, f"clip-{args.seconds}s-1080p.mp4")
    make_clip(clip, args.seconds)
    encode = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-c:a", "copy"]
    print("T1: one single-threaded ffmpeg ...", flush=True)
    t1, _ = sh(["ffmpeg", "-v", "error", "-y", "-threads", "1", "-i", clip, *encode, "-threads", "1",
                os.path.join(work, "t1.mp4")])
    def multi_threaded():
        """One multi-threaded ffmpeg: wall and CPU seconds."""
        cpu = children_cpu()
        took, _ = sh(["ffmpeg", "-v", "error", "-y", "-i", clip, *encode, os.path.join(work, "tm.mp4")])
        return took, children_cpu() - cpu

    # The machine drifts (the same encode's CPU ranged over 10% within minutes here), so
    # each balanced run is compared with the multi-threaded ffmpeg measured just before
    # and just after it: TM, plain, then (balanced, TM) `pairs` times, and the median of
    # those ratios is the figure.
    print("TM: one multi-threaded ffmpeg ...", flush=True)
    tm_runs = [multi_threaded()]

    def tk_run(name, parallel, label):
        print(f"TK ({label}): vflow run with K={args.k} single-threaded workers, multipleOf {parallel} ...",
              flush=True)
        store = os.path.join(work, f"store-parallel-{name}")
        shutil.rmtree(store, ignore_errors=True)
        # A state of its own, new each time: with the working directory's (.vflow), each
        # run learned into the next one's plan (after the plain run, 0.73 cores measured
        # per 2-CPU slot packed two encodes per instance: 4 at once, not K).
        state = os.path.join(work, f"state-parallel-{name}")
        shutil.rmtree(state, ignore_errors=True)
        workflow = os.path.join(work, f"parallel-transcode-{name}.yaml")
        with open(os.path.join(HERE, "parallel-transcode.yaml")) as f:
            text = f.read()
        with open(workflow, "w") as f:
            f.write(text.replace("multipleOf: 1", f"multipleOf: {parallel}"))
        cpu = children_cpu()
        tk, report = vflow_run(args.vflow, workflow, clip, profiles, store,
                               {"VFLOW_FFMPEG_THREADS": "1", "VFLOW_STATE_DIR": state}, args.k)
        run_cpu = children_cpu() - cpu
        out = report["outputs"][0].removeprefix("file://")
        stages = {s["stage"]: s for s in report["stages"]}
        result = {
            "tkSeconds": tk, "efficiency": t1 / (args.k * tk),
            "segments": stages["transcode"]["units"],
            # Where the time goes: the split and the stitch run alone (one core busy at
            # most); the transcodes' CPU over K cores is the parallel part; the rest is
            # waiting (the last round's idle cores) and per-invocation overhead.
            "splitSeconds": stages["split"]["execMaxSeconds"],
            "stitchSeconds": stages["stitch"]["execMaxSeconds"],
            "transcodeCpuSeconds": stages["transcode"]["cpuSeconds"],
            # All of the run's CPU (engine, runtimes, functions) over K cores: what TK
            # could be if nothing ever waited, the bound that overlap cannot beat.
            "runCpuSeconds": run_cpu,
            "runCpuOverK": run_cpu / args.k,
            "transcodeExecP50": stages["transcode"]["execP50Seconds"],
            "transcodeExecMax": stages["transcode"]["execMaxSeconds"],
            "framesPreserved": frames(out) == frames(clip),
        }
        segments = [u.removeprefix("file://") for u in
                    next(x for x in report_units(store) if x["stage"] == "split")["outputs"]]
        return result, segments

    plain, _ = tk_run("plain", 1, "plain")
    pairs = []
    for i in range(args.pairs):
        run, segments = tk_run(f"balanced-{i}", args.k, f"balanced, {i + 1} of {args.pairs}")
        print("TM: one multi-threaded ffmpeg ...", flush=True)
        tm_runs.append(multi_threaded())
        run["multiThreadedAround"] = statistics.mean(w for w, _ in tm_runs[-2:])
        run["multiThreadedCpuAround"] = statistics.mean(c for _, c in tm_runs[-2:])
        run["tkOverMultiThreaded"] = run["tkSeconds"] / run["multiThreadedAround"]
        pairs.append((run, segments))
    # The balanced figures are those of the run with the median ratio (an odd number of
    # pairs: one of them; even: the lower middle).
    order = sorted(range(len(pairs)), key=lambda i: pairs[i][0]["tkOverMultiThreaded"])
    balanced, segs = pairs[order[(len(order) - 1) // 2]]
    balanced["pairs"] = [{k: r[k] for k in ("tkSeconds", "multiThreadedAround", "tkOverMultiThreaded",
                                             "efficiency", "runCpuSeconds", "transcodeCpuSeconds")}
                         for r, _ in pairs]
    # TP: the median balanced run's own segments encoded by K plain ffmpegs side by side,
    # largest first: no vflow, no split, no stitch, no per-invocation checks. What any
    # segment-parallel run of these segments with single-threaded encoders could reach at
    # best; TK / TP is vflow's part. Then the last TM, for TP's neighbour.
    print(f"TP: the same segments, {args.k} plain single-threaded ffmpegs side by side ...", flush=True)
    segs = sorted(segs, key=os.path.getsize, reverse=True)
    cpu = children_cpu()
    tp = side_by_side([["ffmpeg", "-v", "error", "-y", "-threads", "1", "-i", seg, *encode, "-threads", "1",
                        os.path.join(work, f"tp-{i:05d}.mp4")] for i, seg in enumerate(segs)], args.k)
    tp_cpu = children_cpu() - cpu
    for i in range(len(segs)):
        os.remove(os.path.join(work, f"tp-{i:05d}.mp4"))
    tm = statistics.mean(w for w, _ in tm_runs)
    tm_cpu = statistics.mean(c for _, c in tm_runs)
    # plain ran between the first two TMs
    plain["tkOverMultiThreaded"] = plain["tkSeconds"] / statistics.mean(w for w, _ in tm_runs[:2])
    return {
        "clip": f"{args.seconds} s 1920x1080 30 fps (testsrc2 + noise), x264 veryfast CRF 23",
        "k": args.k, "t1Seconds": t1, "multiThreadedSeconds": tm, "multiThreadedCpuSeconds": tm_cpu,
        "multiThreadedRuns": [{"seconds": w, "cpuSeconds": c} for w, c in tm_runs],
        **plain, "balanced": balanced,
        "tpSeconds": tp, "tpCpuSeconds": tp_cpu, "tpOverMultiThreaded": tp / tm_runs[-1][0],
        "balancedTkOverTp": balanced["tkSeconds"] / tp,
    }


def report_units(store):
    """The units of the one run recorded under `store` (its _vflow-run.json)."""
    for folder, _, names in os.walk(store):
        if "_vflow-run.json" in names:
            with open(os.path.join(folder, "_vflow-run.json")) as f:
                return json.load(f)["units"]
    sys.exit(f"no _vflow-run.json under {store}")


def side_by_side(commands, k):
    """Runs the commands k at a time, in order, each starting as one ends; the wall time."""
    started, pending, running = time.monotonic(), list(commands), []
    while pending or running:
        while pending and len(running) < k:
            cmd = pending.pop(0)
            err = tempfile.TemporaryFile()  # a file, not a pipe: a chatty ffmpeg never blocks on it
            running.append((cmd, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err), err))
        time.sleep(0.02)
        for item in list(running):
            cmd, proc, err = item
            if proc.poll() is not None:
                running.remove(item)
                if proc.returncode != 0:
                    for _, other, _ in running:
                        other.kill()
                    err.seek(0)
                    sys.exit(f"{' '.join(cmd)} failed:\n{err.read().decode(errors='replace')}")
                err.close()
    return time.monotonic() - started


def with_start_delay(profiles, work, seconds):
    """The profiles with a warm-up command that sleeps: every instance then takes about
    `seconds` to become ready, like a container that has to start (local instances are
    ready in milliseconds, which leaves pre-warming nothing to hide)."""
    if seconds <= 0:
        return profiles
    path = os.path.join(work, f"profiles-start-{seconds:g}s.yaml")
    with open(profiles) as f, open(path, "w") as out:
        for line in f:
            if line.startswith("  coldStartPrior:"):
                continue  # replaced below
            out.write(line)
            if line.rstrip() == "spec:":
                out.write(f'  warmupCommand: ["sleep", "{seconds:g}"]\n')
                out.write(f"  coldStartPrior: {int(seconds * 1000)}ms\n")
    return path


def chain_clip(work):
    """3 s of 640x360 test pattern: the chain's input."""
    clip = os.path.join(work, "chain-input.mp4")
    if not os.path.exists(clip):
        sh(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=3",
            "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", clip])
    return clip


def chain(args, work, profiles, start_delay):
    profiles = with_start_delay(profiles, work, start_delay)
    tag = f"start{start_delay:g}"
    clip = chain_clip(work)
    with open(os.path.join(HERE, "chain.yaml")) as f:
        template = f.read()
    results = {}
    # One calibration run first: the profiles learn local cold starts and run times,
    # so the JIT schedule is computed from what this machine does.
    learned = os.path.join(work, f"chain-profiles-{tag}")
    shutil.rmtree(learned, ignore_errors=True)
    os.makedirs(learned)
    shutil.copy(profiles, os.path.join(learned, "profiles.yaml"))
    wf = os.path.join(work, "chain-JustInTime.yaml")
    with open(wf, "w") as f:
        f.write(template)
    vflow_run(args.vflow, wf, clip, learned, os.path.join(work, f"store-chain-calibrate-{tag}"))
    for mode in ["None", "Speculative", "JustInTime"]:
        wf = os.path.join(work, f"chain-{mode}.yaml")
        with open(wf, "w") as f:
            f.write(template.replace("prewarm: JustInTime", f"prewarm: {mode}"))
        overheads, totals, colds, waits = [], [], [], []
        for i in range(args.repeats):
            store = os.path.join(work, f"store-chain-{tag}-{mode}-{i}")
            shutil.rmtree(store, ignore_errors=True)
            # A new process each time: every instance starts cold.
            _, report = vflow_run(args.vflow, wf, clip, learned, store)
            totals.append(report["totalSeconds"])
            overheads.append(report["totalSeconds"] - report["execSeconds"])
            colds.append(report["coldStarts"])
            waits.append(sum(s["coldStartSeconds"] for s in report["stages"]))
        results[mode] = {"overheadSecondsMedian": statistics.median(overheads),
                         "totalSecondsMedian": statistics.median(totals), "coldStarts": colds,
                         "coldStartWaitSecondsMedian": statistics.median(waits)}
    return results


def durable_stream(args, work, profiles, start_delay):
    profiles = with_start_delay(profiles, work, start_delay)
    clip = chain_clip(work)
    with open(os.path.join(HERE, "chain.yaml")) as f:
        template = f.read()
    wf = os.path.join(work, "chain-auto.yaml")
    with open(wf, "w") as f:
        f.write(template.replace("prewarm: JustInTime", "prewarm: None\n  provisioning: Auto\n  scaleToZeroAfter: 2s"))
    learned = os.path.join(work, "durable-profiles")
    shutil.rmtree(learned, ignore_errors=True)
    os.makedirs(learned)
    shutil.copy(profiles, os.path.join(learned, "profiles.yaml"))
    runs = []
    for i in range(args.stream_runs):
        store = os.path.join(work, f"store-durable-{i}")
        shutil.rmtree(store, ignore_errors=True)
        _, report = vflow_run(args.vflow, wf, clip, learned, store)
        runs.append({"coldStarts": report["coldStarts"], "totalSeconds": report["totalSeconds"],
                     "waitedSeconds": sum(s["coldStartSeconds"] for s in report["stages"])})
        shutil.rmtree(store, ignore_errors=True)
    first, rest = runs[:1], runs[5:]
    return {"runs": runs,
            "firstRun": first[0],
            "runs6OnMedianColdStarts": statistics.median(r["coldStarts"] for r in rest) if rest else None,
            "runs6OnMedianWaitedSeconds": statistics.median(r["waitedSeconds"] for r in rest) if rest else None,
            "runs6OnMedianTotalSeconds": statistics.median(r["totalSeconds"] for r in rest) if rest else None}


def store_traffic(store, record):
    """Bytes the run wrote to its store (every file but vflow's JSON records) and read
    from it (inputs of invocations that came from the store, not from a fused step)."""
    written = 0
    for root, _, files in os.walk(store):
        for name in files:
            if not name.startswith("_vflow-"):
                written += os.path.getsize(os.path.join(root, name))
    read = sum(a.get("bytesIn", 0) for u in record["units"] for a in u["attempts"]
               if "-fused-" not in a.get("instance", ""))
    return written, read


def fusion(args, work, profiles, start_delay):
    profiles = with_start_delay(profiles, work, start_delay)
    clip = chain_clip(work)
    with open(os.path.join(HERE, "chain.yaml")) as f:
        template = f.read()
    results = {}
    for policy in ["Disabled", "Auto"]:
        wf = os.path.join(work, f"chain-fusion-{policy}.yaml")
        with open(wf, "w") as f:
            f.write(template.replace("fusion: Disabled", f"fusion: {policy}"))
        learned = os.path.join(work, f"fusion-profiles-{policy}")
        shutil.rmtree(learned, ignore_errors=True)
        os.makedirs(learned)
        shutil.copy(profiles, os.path.join(learned, "profiles.yaml"))
        # One calibration run: the plan then comes from this machine's own figures.
        vflow_run(args.vflow, wf, clip, learned, os.path.join(work, f"store-fusion-calibrate-{policy}"))
        totals, colds, written, read, fused = [], [], [], [], set()
        for i in range(args.repeats):
            store = os.path.join(work, f"store-fusion-{policy}-{i}")
            shutil.rmtree(store, ignore_errors=True)
            _, report = vflow_run(args.vflow, wf, clip, learned, store)
            run_dir = os.path.dirname(os.path.dirname(os.path.dirname(
                report["outputs"][0].removeprefix("file://"))))
            with open(os.path.join(run_dir, "_vflow-run.json")) as f:
                record = json.load(f)
            w, r = store_traffic(store, record)
            totals.append(report["totalSeconds"])
            colds.append(report["coldStarts"])
            written.append(w)
            read.append(r)
            fused |= {u["stage"] for u in record["units"]
                      if any("-fused-" in a.get("instance", "") for a in u["attempts"])}
        results[policy] = {"totalSecondsMedian": statistics.median(totals), "coldStarts": colds,
                           "bytesWrittenMedian": statistics.median(written),
                           "bytesReadMedian": statistics.median(read),
                           "stagesRunFused": sorted(fused)}
    return results


def mispredicted_branch(args, work, profiles, start_delay):
    profiles = with_start_delay(profiles, work, start_delay)
    clip = chain_clip(work)
    wf = os.path.join(HERE, "branch.yaml")
    results = {}
    for mode, extra in [("start-of-run schedule (--no-replan)", ["--no-replan"]),
                        ("JustInTime re-planned", [])]:
        learned = os.path.join(work, "branch-profiles-" + ("fixed" if extra else "replan"))
        shutil.rmtree(learned, ignore_errors=True)
        os.makedirs(learned)
        shutil.copy(profiles, os.path.join(learned, "profiles.yaml"))
        # One calibration run: the schedule comes from this machine's own figures. The
        # branch outcomes it records are not given to the next plans (its file goes),
        # so every run expects the 0.7 branch, as a first run of a workflow does.
        vflow_run(args.vflow, wf, clip, learned, os.path.join(work, "store-branch-calibrate"), extra_args=extra)
        colds, idles, totals = [], [], []
        for i in range(args.repeats):
            for f in os.listdir(os.path.join(learned, "learned")):
                if f.endswith(".branches.json"):
                    os.remove(os.path.join(learned, "learned", f))
            store = os.path.join(work, f"store-branch-{i}")
            shutil.rmtree(store, ignore_errors=True)
            _, report = vflow_run(args.vflow, wf, clip, learned, store, extra_args=extra)
            colds.append(report["coldStarts"])
            idles.append(report.get("idleBeforeUseSeconds", 0.0))
            totals.append(report["totalSeconds"])
        results[mode] = {"coldStarts": colds, "idleBeforeUseSecondsMedian": statistics.median(idles),
                         "totalSecondsMedian": statistics.median(totals)}
    return results


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--vflow", required=True)
    p.add_argument("--out", default=HERE)
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--k", type=int, default=os.cpu_count() or 2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pairs", type=int, default=3,
                   help="balanced vflow runs, each followed by a multi-threaded ffmpeg (the median ratio is reported)")
    p.add_argument("--skip-parallel", action="store_true")
    p.add_argument("--only-parallel", action="store_true",
                   help="run only the segment-parallel transcode; the other sections keep the figures of "
                        "the run that made results.json (the report says when that was)")
    p.add_argument("--stream-runs", type=int, default=30,
                   help="runs back to back in the durable-from-rates experiment")
    p.add_argument("--start-delay", type=float, default=1.5,
                   help="emulated instance start for the second chain experiment (seconds)")
    p.add_argument("--report-only", action="store_true",
                   help="write REPORT.md from the results.json already there, running nothing")
    args = p.parse_args()
    if args.report_only:
        with open(os.path.join(args.out, "results.json")) as f:
            write_report(args, json.load(f))
        return
    work = os.path.join(args.out, "work")
    os.makedirs(work, exist_ok=True)
    # The function images hold their Python modules compiled; where the environment sets
    # PYTHONDONTWRITEBYTECODE (these machines do) every invocation would otherwise compile
    # vflowfn.py and its function's module again (~20 ms of CPU per segment).
    subprocess.run([shutil.which("python3") or sys.executable, "-m", "compileall", "-q",
                    os.path.join(REPO, "function-images")], check=True)
    profiles = profiles_file(work)
    results = {"machine": {"cpus": os.cpu_count()}}
    if args.only_parallel:
        with open(os.path.join(args.out, "results.json")) as f:
            results = json.load(f)
        earlier = results.get("parallel", {}).get("measuredAt", "an earlier run")
        results.setdefault("othersMeasuredAt", earlier)
        results["parallel"] = parallel(args, work, profiles)
        results["parallel"]["measuredAt"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        write_report(args, results)
        return
    if not args.skip_parallel:
        results["parallel"] = parallel(args, work, profiles)
        results["parallel"]["measuredAt"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    else:
        # Keep the last parallel figures (their own side-by-side run) in the report.
        try:
            with open(os.path.join(args.out, "results.json")) as f:
                previous = json.load(f).get("parallel")
            if previous:
                results["parallel"] = previous
        except (OSError, ValueError):
            pass
    results["chain"] = chain(args, work, profiles, 0)
    results["chainEmulatedStart"] = chain(args, work, profiles, args.start_delay)
    results["durableStream"] = durable_stream(args, work, profiles, args.start_delay)
    results["fusion"] = fusion(args, work, profiles, args.start_delay)
    results["mispredictedBranch"] = mispredicted_branch(args, work, profiles, args.start_delay)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    write_report(args, results)


def write_report(args, results):
    lines = ["# vflow local mode benchmark", "",
             "Repeat: `make bench-local` (release `vflow`; figures from one run, side by side; "
             f"{os.cpu_count()} CPUs, shared and noisy). A change to vflow's own steps (split, stitch, a "
             "segment's function) is smaller than this machine's drift over a whole run: "
             "`bench/local/function_ab.py --old REV` times them alone, two versions alternating.", ""]
    if "parallel" in results:
        r = results["parallel"]
        lines += ["## Segment-parallel transcode", "",
                  r["clip"] + f"; measured {r.get('measuredAt', 'in this run')}, one after the other in one "
                  "run: T1, the multi-threaded ffmpeg (TM), TK plain, then "
                  + (f"{len(r['balanced']['pairs'])} times TK with `multipleOf: K` followed by TM (each of those "
                     "compared with the TMs just before and after it: the machine drifts by several percent "
                     "within minutes), then TP." if r.get("balanced", {}).get("pairs") else
                     "TK with `multipleOf: K`, TP and TM again."), "",
                  "| figure | measured | target |", "|---|---|---|",
                  f"| T1: one single-threaded ffmpeg | {r['t1Seconds']:.1f} s | |",
                  f"| one multi-threaded ffmpeg (mean of its runs: "
                  + (", ".join(f"{m['seconds']:.1f} s" for m in r["multiThreadedRuns"]) if "multiThreadedRuns" in r else "one run")
                  + f") | {r['multiThreadedSeconds']:.1f} s | |",
                  f"| TK: `vflow run`, K = {r['k']} single-threaded workers, {r['segments']} segments, split and stitch included | {r['tkSeconds']:.1f} s | |",
                  f"| parallel efficiency T1 / (K * TK) | {r['efficiency']:.2f} | >= 0.85 at K = cores: {'met' if r['efficiency'] >= 0.85 else 'NOT met'} |",
                  f"| TK / multi-threaded ffmpeg | {r['tkOverMultiThreaded']:.2f} | <= 1.0 on 2 cores: {'met' if r['tkOverMultiThreaded'] <= 1.0 else 'NOT met'} |",
                  f"| frames preserved | {r['framesPreserved']} | |", ""]
        b = r.get("balanced")
        if b and b.get("pairs"):
            ratios = [x["tkOverMultiThreaded"] for x in b["pairs"]]
            # T1 ran once, just before the first TM: scaled by how TM moved since, it
            # estimates what T1 would have taken beside each run.
            tm_first = r["multiThreadedRuns"][0]["seconds"]
            lines += [f"Each run with `multipleOf: {r['k']}` against the TMs around it:", "",
                      "| run | TK | TM around it (mean) | TK / TM | parallel efficiency | the same, T1 scaled by "
                      "TM's drift |", "|---|---|---|---|---|---|"]
            lines += [f"| {i + 1} | {x['tkSeconds']:.1f} s | {x['multiThreadedAround']:.1f} s | "
                      f"{x['tkOverMultiThreaded']:.3f} | {x['efficiency']:.2f} | "
                      f"{x['efficiency'] * x['multiThreadedAround'] / tm_first:.2f} |"
                      for i, x in enumerate(b["pairs"])]
            lines += ["", f"Median TK / TM: **{statistics.median(ratios):.3f}** (range {min(ratios):.3f} to "
                      f"{max(ratios):.3f}); target <= 1.0 on 2 cores: "
                      f"{'met' if statistics.median(ratios) <= 1.0 else 'NOT met'}"
                      + (f", in {sum(x <= 1.0 for x in ratios)} of {len(ratios)} runs" if len(ratios) > 1 else "")
                      + ". The tables below show the median run. (T1 was measured once, first, just before "
                      "the first TM: the plain efficiencies move with the machine's drift, and above 1.0 they "
                      "say only that it ran faster later than during T1; the last column scales T1 by "
                      "TM around the run / the first TM.)", ""]
        if b:
            lines += [f"With the split's `multipleOf: {r['k']}` (the last segments cut finer so that no worker "
                      "idles at the end)" + (", the median run" if b.get("pairs") else "") + ", in the same run:", "",
                      "| figure | plain | multipleOf K |", "|---|---|---|",
                      f"| segments | {r['segments']} | {b['segments']} |",
                      f"| TK | {r['tkSeconds']:.1f} s | {b['tkSeconds']:.1f} s |",
                      f"| parallel efficiency | {r['efficiency']:.2f} | {b['efficiency']:.2f} |",
                      f"| TK / multi-threaded ffmpeg | {r['tkOverMultiThreaded']:.2f} | {b['tkOverMultiThreaded']:.2f} |",
                      f"| split (alone) | {r['splitSeconds']:.1f} s | {b['splitSeconds']:.1f} s |",
                      f"| stitch (alone) | {r['stitchSeconds']:.1f} s | {b['stitchSeconds']:.1f} s |",
                      f"| transcode CPU / K (the parallel part at best) | {r['transcodeCpuSeconds'] / r['k']:.1f} s | "
                      f"{b['transcodeCpuSeconds'] / r['k']:.1f} s |",
                      f"| frames preserved | {r['framesPreserved']} | {b['framesPreserved']} |", ""]
            if "runCpuOverK" in b and "multiThreadedCpuSeconds" in r:
                tm_cpu = b.get("multiThreadedCpuAround", r["multiThreadedCpuSeconds"])
                encoder_ratio = tm_cpu / b["transcodeCpuSeconds"]
                lines += ["CPU, where no amount of overlap helps: all of a run's CPU (engine, runtimes, "
                          "split, transcodes, stitch) over K cores is the least TK can be; the multi-threaded "
                          "ffmpeg's CPU over K, the least it can be:", "",
                          "| figure | plain | multipleOf K |", "|---|---|---|",
                          f"| run CPU / K | {r['runCpuOverK']:.1f} s | {b['runCpuOverK']:.1f} s |",
                          f"| the multi-threaded ffmpeg's CPU / K | {r['multiThreadedCpuSeconds'] / r['k']:.1f} s | |",
                          f"| (run CPU / K) / multi-threaded ffmpeg | {r['runCpuOverK'] / r['multiThreadedSeconds']:.2f} | "
                          f"{b['runCpuOverK'] / b.get('multiThreadedAround', r['multiThreadedSeconds']):.2f} |", "",
                          f"Reading: the multi-threaded ffmpeg keeps the {r['k']} cores "
                          f"{100 * r['multiThreadedCpuSeconds'] / (r['k'] * r['multiThreadedSeconds']):.0f}% busy, and "
                          f"its CPU is {encoder_ratio:.2f}x the segment encodes' (each with its function's start and checks): "
                          + ("on this few cores, splitting gains no encoder efficiency, so a segment-parallel run can "
                             "at best tie it, and only " if encoder_ratio < 1.02 else
                             f"the single-threaded encoders do the same work with {100 * (1 - 1 / encoder_ratio):.0f}% "
                             "less CPU (run to run, the encoders' CPU varies by about 5% here), a margin a "
                             "segment-parallel run keeps only ")
                          + "with its own work (split, stitch, the runtime's copies and process starts: "
                          f"{b['runCpuSeconds'] - b['transcodeCpuSeconds']:.1f} CPU s here) hidden. Of the balanced "
                          f"run's {b['tkSeconds']:.1f} s, {b['tkSeconds'] - b['runCpuOverK']:.1f} s are cores left "
                          "idle, mostly while the split and the stitch run alone.", ""]
        if "tpSeconds" in r:
            lines += ["Where the bound is: after the runs above, the (median) balanced run's own segments encoded by "
                      f"K = {r['k']} plain single-threaded ffmpegs side by side, largest first (TP: no vflow, no "
                      "split, no stitch, no per-invocation checks), the best any segment-parallel run of these "
                      "segments with single-threaded encoders can do:", "",
                      "| figure | measured |", "|---|---|",
                      f"| TP | {r['tpSeconds']:.1f} s |",
                      f"| TP / multi-threaded ffmpeg | {r['tpOverMultiThreaded']:.2f} |",
                      f"| TK (multipleOf K) / TP: vflow's own part | {r['balancedTkOverTp']:.2f} |"]
            if "tpCpuSeconds" in r and b:
                lines += [f"| TP's CPU (the bare encodes) | {r['tpCpuSeconds']:.1f} s |",
                          f"| the balanced run's CPU beyond it: vflow's own work | "
                          f"{b['runCpuSeconds'] - r['tpCpuSeconds']:.1f} s "
                          f"({100 * (b['runCpuSeconds'] / r['tpCpuSeconds'] - 1):.1f}%) |",
                          f"| the multi-threaded ffmpeg's CPU against TP's | "
                          f"{b.get('multiThreadedCpuAround', r['multiThreadedCpuSeconds']) / r['tpCpuSeconds']:.3f} |",
                          "", "On K cores no overlap makes a run take less than its CPU over K: the segment-parallel "
                          "run can beat the multi-threaded ffmpeg only by less than the single-threaded encodes save "
                          "(the last line, less 1) minus vflow's own work (the line before it)."]
                if b["runCpuSeconds"] < r["tpCpuSeconds"]:
                    tms = [p["multiThreadedAround"] for p in b.get("pairs", [])] or [r["multiThreadedSeconds"]]
                    lines += ["", "Here vflow's own work comes out negative: TP ran last, and the same encodes took "
                              "more CPU then than inside the balanced run, so this difference is below the noise of "
                              f"this machine (the TMs around the runs took {min(tms):.1f} to {max(tms):.1f} s)."]
            lines += [""]
    if results.get("othersMeasuredAt"):
        lines += [f"The sections below were measured on {results['othersMeasuredAt']} (a later run with "
                  "`--only-parallel` measured only the section above).", ""]
    lines += ["## 4-stage chain from cold", "",
              f"Median of {args.repeats} runs each, each in a new process (every instance cold); "
              "overhead = end-to-end minus the sum of execution times (download, function, upload); "
              "cold starts = invocations that waited for an instance, and how long in all. "
              "The schedule is the planner's, from profiles learned in one calibration run.", ""]
    for key, title in [("chain", "Local instances as they are (a `vflow-runtime serve` process is ready in milliseconds)"),
                       ("chainEmulatedStart", f"Instances that take {args.start_delay:g} s to start "
                        "(a warm-up command that sleeps, standing in for a container start)")]:
        lines += [f"### {title}", "",
                  "| pre-warming | overhead | end-to-end | cold starts | waited for instances |",
                  "|---|---|---|---|---|"]
        for mode, r in results[key].items():
            lines.append(f"| {mode} | {r['overheadSecondsMedian']:.3f} s | {r['totalSecondsMedian']:.3f} s "
                         f"| {r['coldStarts']} | {r['coldStartWaitSecondsMedian']:.3f} s |")
        lines.append("")
    e = results["chainEmulatedStart"]
    base = e["None"]["coldStartWaitSecondsMedian"]
    lines += ["### Reading", "",
              f"With {args.start_delay:g} s starts, no pre-warming waits {base:.2f} s for instances "
              f"(every stage cold); Speculative waits {e['Speculative']['coldStartWaitSecondsMedian']:.2f} s and "
              f"JustInTime {e['JustInTime']['coldStartWaitSecondsMedian']:.2f} s: the first stage's start, which "
              "nothing can hide for a run that arrives unannounced, is most of it. JustInTime decides each later "
              "stage's request from the run's progress, accepting a 10% chance of a late instance; the calibration "
              "run taught it these stages' times with almost no spread, so it asks for each instance about one "
              "start before the input is due, and the local jitter leaves small waits at the later stages "
              f"(counted as cold starts: the invocation waited for its instance at all), "
              f"{e['JustInTime']['coldStartWaitSecondsMedian'] - e['Speculative']['coldStartWaitSecondsMedian']:.2f} s "
              "in all more than Speculative, which starts everything at once and idles instead (the planner bench "
              "and the mispredicted branch below measure that idle time). Local instances as they are start in "
              "milliseconds, so pre-warming them changes little.", ""]
    d = results["durableStream"]
    lines += ["## Durable from observed rates", "",
              f"The chain with `provisioning: Auto`, `prewarm: None`, a 2 s keep-alive and {args.start_delay:g} s "
              f"instance starts, run {args.stream_runs} times back to back, each a new `vflow run` that learns "
              "into the same profiles (invocations per 10 s bucket). Once the observed rate makes a "
              "warm instance pay (it would avoid at least 3 cold starts per 60 s window), the plan "
              "makes the stage durable and the local mode starts its minimum with the run.", "",
              "| | cold starts | waited for instances | end-to-end |", "|---|---|---|---|",
              f"| run 1 (no rate yet) | {d['firstRun']['coldStarts']} | {d['firstRun']['waitedSeconds']:.2f} s | {d['firstRun']['totalSeconds']:.2f} s |",
              f"| runs 6 to {args.stream_runs}, median | {d['runs6OnMedianColdStarts']} | {d['runs6OnMedianWaitedSeconds']:.2f} s | {d['runs6OnMedianTotalSeconds']:.2f} s |",
              "", "Per run (cold starts): " + ", ".join(str(r["coldStarts"]) for r in d["runs"]), ""]
    fz = results["fusion"]
    lines += ["## Fusion", "",
              f"The chain with `fusion: Disabled` and with `fusion: Auto`, prewarm JustInTime, "
              f"{args.start_delay:g} s instance starts, after one calibration run each; median of "
              f"{args.repeats} runs, each a new `vflow run`. Bytes through the store: files the run "
              "wrote (vflow's JSON records aside) and inputs read by invocations that were not a fused step.", "",
              "| fusion | stages run fused | end-to-end | cold starts | bytes written | bytes read |",
              "|---|---|---|---|---|---|"]
    for policy in ["Disabled", "Auto"]:
        r = fz[policy]
        lines.append(f"| {policy} | {', '.join(r['stagesRunFused']) or 'none'} | {r['totalSecondsMedian']:.2f} s "
                     f"| {r['coldStarts']} | {r['bytesWrittenMedian'] / 1e6:.2f} MB | {r['bytesReadMedian'] / 1e6:.2f} MB |")
    lines.append("")
    mb = results["mispredictedBranch"]
    lines += ["## A mispredicted branch", "",
              f"split, then a 0.7 branch (scale, crop) that never runs and a 0.3 branch (scale, crop) "
              f"that always does; {args.start_delay:g} s instance starts, median of {args.repeats} runs after one "
              "calibration run, each plan expecting the 0.7 branch (no branch outcomes kept between runs). "
              "Idle = instance-seconds ready but unused before a first invocation, or before being stopped "
              "unused (the local backend's count).", "",
              "| pre-warming | cold starts | idle before use | end-to-end |", "|---|---|---|---|"]
    for mode, r in mb.items():
        lines.append(f"| {mode} | {r['coldStarts']} | {r['idleBeforeUseSecondsMedian']:.2f} s | {r['totalSecondsMedian']:.2f} s |")
    lines.append("")
    with open(os.path.join(args.out, "REPORT.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
