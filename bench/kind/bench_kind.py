#!/usr/bin/env python3
"""make bench-kind: vflow's figures on real pods (a kind cluster that bench.sh made).

Measured side by side in one run, on the kubelet, with the operator the chart installed:
1. A function pod's cold start, by function: scheduled -> Ready (the runtime up and its
   readiness probe passed). Each function gets a workflow of one Durable stage; its pod
   is deleted and the ReplicaSet's replacement timed, several times.
2. Warm invocation overhead through the stage's Service: a client pod in the cluster
   sends `POST /invoke` (what the run engine sends) to the probe stage's Service, one at
   a time; overhead = the client's latency minus the function process's own time.
3. A 4-stage chain (chain.yaml) with prewarm None, Speculative and JustInTime, every
   run from zero instances: overhead (end to end minus the sum of execution, from the
   run's status), cold starts (invocations that waited for an instance) and idle
   instance-seconds (each pod's Ready time inside the run, minus the time it executed).

Pod times come from one watch on the namespace's pods, stamped when each event arrives
(the API's condition times have whole seconds only). Writes results.json and REPORT.md.
"""
import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

import yaml

NS = "vflow-e2e"
FUNCTIONS = ["segment", "scale", "crop", "watermark", "transcode", "thumbnail", "sprite",
             "stitch", "probe", "extract-audio", "blur", "detect"]
# What a stage of these functions must set.
REQUIRED = {"scale": {"params": {"height": 180}}, "crop": {"params": {"w": 64, "h": 64}},
            "segment": {"fanOut": True}}
POLICIES = ["None", "Speculative", "JustInTime"]
STORAGE = {"endpoint": "http://minio.vflow-system.svc:9000", "bucket": "videos",
           "secretRef": {"name": "vflow-s3"}}
HERE = os.path.dirname(os.path.abspath(__file__))


def log(msg):
    print(f"[bench-kind {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def kubectl(*args, stdin=None, check=True):
    p = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise SystemExit(f"bench-kind: kubectl {' '.join(args)} failed: {p.stderr.strip()}")
    return p.stdout


def apply(doc):
    kubectl("-n", NS, "apply", "-f", "-", stdin=json.dumps(doc))


def pct(values, q):
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))]


class PodWatch:
    """Every pod of the namespace, as the API reports it, stamped on arrival."""

    def __init__(self):
        self.pods = {}  # name -> {labels, created, scheduled, ready, gone}
        self.lock = threading.Lock()
        self.rv = None
        self.stop = False
        listing = json.loads(kubectl("get", "--raw", f"/api/v1/namespaces/{NS}/pods"))
        self.rv = listing["metadata"]["resourceVersion"]
        # Pods from before the bench are not measured.
        self.preexisting = {p["metadata"]["name"] for p in listing["items"]}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop:
            q = urllib.parse.urlencode({"watch": "1", "resourceVersion": self.rv,
                                        "allowWatchBookmarks": "true"})
            proc = subprocess.Popen(["kubectl", "get", "--raw", f"/api/v1/namespaces/{NS}/pods?{q}"],
                                    stdout=subprocess.PIPE, text=True)
            for line in proc.stdout:
                now = time.time()
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                obj = ev.get("object", {})
                if ev.get("type") == "ERROR":
                    # Too old a resourceVersion: list again (nothing measured is lost, the
                    # bench waits on states, and such a gap shows as a missed sample).
                    self.rv = json.loads(kubectl("get", "--raw", f"/api/v1/namespaces/{NS}/pods"))[
                        "metadata"]["resourceVersion"]
                    break
                self.rv = obj.get("metadata", {}).get("resourceVersion", self.rv)
                if ev.get("type") == "BOOKMARK":
                    continue
                self._see(ev["type"], obj, now)
            proc.kill()
            proc.wait()

    def _see(self, kind, pod, now):
        name = pod["metadata"]["name"]
        if name in self.preexisting:
            return
        with self.lock:
            p = self.pods.setdefault(name, {"labels": pod["metadata"].get("labels", {}),
                                            "created": now, "scheduled": None, "ready": None,
                                            "gone": None})
            if p["scheduled"] is None and pod.get("spec", {}).get("nodeName"):
                p["scheduled"] = now
            ready = any(c["type"] == "Ready" and c["status"] == "True"
                        for c in pod.get("status", {}).get("conditions", []))
            if ready and p["ready"] is None:
                p["ready"] = now
            terminating = pod["metadata"].get("deletionTimestamp") or kind == "DELETED"
            if p["gone"] is None and (terminating or (p["ready"] is not None and not ready)):
                p["gone"] = now

    def snapshot(self, **labels):
        with self.lock:
            return {n: dict(p) for n, p in self.pods.items()
                    if all(p["labels"].get(k) == v for k, v in labels.items())}

    def wait(self, what, pred, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = pred()
            if got:
                return got
            time.sleep(0.1)
        raise SystemExit(f"bench-kind: timed out after {timeout}s waiting for {what}")


def live_ready(watch, workflow):
    return [n for n, p in watch.snapshot(**{"vflow.io/workflow": workflow}).items()
            if p["ready"] and not p["gone"]]


def cold_workflow(fn):
    """One Durable stage of `fn`: the operator keeps one pod of it."""
    stage = {"name": "f", "function": fn, "overrides": {"cpu": "100m"}, **REQUIRED.get(fn, {})}
    return {"apiVersion": "vflow.io/v1alpha1", "kind": "VideoWorkflow", "metadata": {"name": f"cold-{fn}"},
            "spec": {"storage": STORAGE, "provisioning": "Durable", "stages": [stage]}}


def wait_workflow_ready(wf):
    """Ready, or fail with the operator's message when it says the workflow is Degraded."""
    deadline = time.time() + 180
    while time.time() < deadline:
        conds = json.loads(kubectl("-n", NS, "get", "videoworkflow", wf, "-o", "json")).get(
            "status", {}).get("conditions", [])
        by_type = {c["type"]: c for c in conds}
        if by_type.get("Ready", {}).get("status") == "True":
            return
        if by_type.get("Degraded", {}).get("status") == "True":
            raise SystemExit(f"bench-kind: workflow {wf} is Degraded: {by_type['Degraded'].get('message')}")
        time.sleep(0.5)
    raise SystemExit(f"bench-kind: workflow {wf} not Ready within 180 s")


def cold_starts(watch, samples):
    """Scheduled -> Ready of each function's pod, `samples` pods per function."""
    out = {}
    for fn in FUNCTIONS:
        wf = f"cold-{fn}"
        apply(cold_workflow(fn))
        wait_workflow_ready(wf)
        pods = []
        first = watch.wait(f"the first pod of {wf}", lambda: live_ready(watch, wf), 300)
        pods.append(first[0])
        while len(pods) < samples:
            old = pods[-1]
            kubectl("-n", NS, "delete", "pod", old, "--wait=false")
            new = watch.wait(f"a new pod of {wf} after deleting {old}",
                             lambda: [n for n in live_ready(watch, wf) if n not in pods], 300)
            pods.append(new[0])
        snap = watch.snapshot(**{"vflow.io/workflow": wf})
        secs = [snap[p]["ready"] - snap[p]["scheduled"] for p in pods]
        kubectl("-n", NS, "delete", "videoworkflow", wf, "--wait=true")
        watch.wait(f"{wf}'s pods gone",
                   lambda: not [n for n, p in watch.snapshot(**{"vflow.io/workflow": wf}).items()
                                if not p["gone"]] or None, 300)
        out[fn] = {"seconds": secs, "p50": statistics.median(secs), "max": max(secs)}
        log(f"cold start {fn}: median {out[fn]['p50']:.2f} s over {len(secs)} pods {['%.2f' % s for s in secs]}")
    return out


CLIENT = r"""
import json, os, sys, time, urllib.request
url, n, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
# The workflow's invocation token (its Secret, as the run engine sends it).
headers = {"Content-Type": "application/json",
           "Authorization": "Bearer " + os.environ["VFLOW_TOKEN"].strip()}
def call(i):
    body = json.dumps({"run": "bench-warm", "stage": "p", "inputs": [key],
                       "outputPrefix": f"s3://videos/outputs/bench-warm/{i:05d}/",
                       "params": {}}).encode()
    req = urllib.request.Request(url, body, headers)
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        resp = json.load(r)
    return time.perf_counter() - t0, resp
for i in range(5):
    call(i)
for i in range(n):
    lat, r = call(1000 + i)
    print(json.dumps({"latency": lat, "wall": r["wallSeconds"], "function": r["functionSeconds"],
                      "download": r["downloadSeconds"], "upload": r["uploadSeconds"],
                      "instance": r["instance"]}), flush=True)
print("DONE", flush=True)
"""


def warm_overhead(watch, invocations, image):
    wf = "warm-probe"
    apply({"apiVersion": "vflow.io/v1alpha1", "kind": "VideoWorkflow", "metadata": {"name": wf},
           "spec": {"storage": STORAGE, "provisioning": "Durable",
                    "stages": [{"name": "p", "function": "probe", "overrides": {"cpu": "250m"}}]}})
    wait_workflow_ready(wf)
    watch.wait(f"{wf}'s pod Ready", lambda: live_ready(watch, wf), 300)
    url = f"http://{wf}-p.{NS}.svc:8080/invoke"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bench-warm-client"},
           "spec": {"restartPolicy": "Never",
                    "containers": [{"name": "client", "image": image, "imagePullPolicy": "Never",
                                    "command": ["python3", "-c", CLIENT, url, str(invocations),
                                                "s3://videos/bench/tiny.mp4"],
                                    "env": [{"name": "VFLOW_TOKEN", "valueFrom": {"secretKeyRef": {
                                        "name": f"{wf}-vflow-invoke", "key": "token"}}}],
                                    "resources": {"requests": {"cpu": "100m"}}}]}}
    kubectl("-n", NS, "delete", "pod", "bench-warm-client", "--ignore-not-found", "--wait=true")
    apply(pod)
    deadline = time.time() + 60 + invocations * 2
    phase = ""
    while time.time() < deadline:
        phase = kubectl("-n", NS, "get", "pod", "bench-warm-client", "-o", "jsonpath={.status.phase}")
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(1)
    logs = kubectl("-n", NS, "logs", "bench-warm-client")
    if phase != "Succeeded" or "DONE" not in logs:
        raise SystemExit(f"bench-kind: the warm client ended {phase or 'not in time'}: {logs[-2000:]}")
    rows = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    if len(rows) != invocations:
        raise SystemExit(f"bench-kind: the warm client reported {len(rows)} of {invocations} invocations")
    kubectl("-n", NS, "delete", "pod", "bench-warm-client", "--wait=false")
    kubectl("-n", NS, "delete", "videoworkflow", wf, "--wait=false")
    ms = lambda xs: {"p50": pct(xs, 50) * 1000, "p99": pct(xs, 99) * 1000}
    res = {
        "invocations": len(rows),
        "latencyMs": ms([r["latency"] for r in rows]),
        "functionMs": ms([r["function"] for r in rows]),
        "overheadMs": ms([r["latency"] - r["function"] for r in rows]),
        "serviceHopMs": ms([r["latency"] - r["wall"] for r in rows]),
        "transferMs": ms([r["download"] + r["upload"] for r in rows]),
        "runtimeMs": ms([r["wall"] - r["download"] - r["function"] - r["upload"] for r in rows]),
        "instances": len({r["instance"] for r in rows}),
    }
    log(f"warm overhead: p50 {res['overheadMs']['p50']:.1f} ms, p99 {res['overheadMs']['p99']:.1f} ms "
        f"(service hop p50 {res['serviceHopMs']['p50']:.1f} ms)")
    return res


def s3_get(args, key, path):
    subprocess.run(["curl", "-sS", "--fail-with-body", "--aws-sigv4", "aws:amz:us-east-1:s3",
                    "--user", f"{args.s3_key}:{os.environ['BENCH_S3_SECRET']}",
                    "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "-o", path,
                    f"{args.s3_url}/videos/{key}"], check=True)


def run_chain(args, watch, wf, run):
    """One run of workflow `wf` from zero instances; its figures."""
    # Every chain pod gone, of every policy: the runs do not share the node's CPUs with
    # the last run's instances, kept for scaleToZeroAfter.
    watch.wait("the chain workflows at zero", lambda: not [
        n for n, p in watch.snapshot().items()
        if p["labels"].get("vflow.io/workflow", "").startswith("chain-") and not p["gone"]] or None, 300)
    created = time.time()
    kubectl("-n", NS, "create", "-f", "-", stdin=json.dumps({
        "apiVersion": "vflow.io/v1alpha1", "kind": "VideoWorkflowRun", "metadata": {"name": run},
        "spec": {"workflowRef": {"name": wf}, "input": "s3://videos/bench/chain-input.mp4"}}))
    deadline = time.time() + 900
    while True:
        st = json.loads(kubectl("-n", NS, "get", "videoworkflowrun", run, "-o", "json")).get("status", {})
        if st.get("phase") in ("Succeeded", "Failed", "Cancelled"):
            break
        if time.time() > deadline:
            raise SystemExit(f"bench-kind: run {run} did not end in 900 s")
        time.sleep(0.5)
    if st["phase"] != "Succeeded":
        raise SystemExit(f"bench-kind: run {run} ended {st['phase']}: {st.get('message')}")
    path = os.path.join(args.work, f"{run}.json")
    s3_get(args, f"outputs/chain/{run}/_vflow-run.json", path)
    record = json.load(open(path))
    attempts = [a for u in record["units"] for a in u.get("attempts", []) if not a.get("error")]
    # Busy: from when the function's instance began the work (download) to its end.
    busy = {}
    for a in attempts:
        work = a["downloadSeconds"] + a["functionSeconds"] + a["uploadSeconds"]
        busy.setdefault(a["instance"], []).append((a["finishedAt"] - work, a["finishedAt"]))
    begin, end = created, record["finishedAt"]
    idle_before = idle_after = 0.0
    pods = watch.snapshot(**{"vflow.io/workflow": wf})
    for name, p in pods.items():
        if p["ready"] is None or p["created"] < created - 1:
            continue
        lo, hi = max(p["ready"], begin), min(p["gone"] or end, end)
        if hi <= lo:
            continue
        spans = sorted((max(a, lo), min(b, hi)) for a, b in busy.get(name, []) if min(b, hi) > max(a, lo))
        # Before its first invocation the pod waited for work (what pre-warming costs);
        # after it, it is kept until the run ends (the same under every policy).
        first = spans[0][0] if spans else hi
        idle_before += first - lo
        idle_after += (hi - first) - sum(b - a for a, b in spans)
    idle = idle_before + idle_after
    exec_sum = sum(s.get("execSeconds", 0.0) for s in st.get("stages", []))
    started = [p for p in pods.values() if p["created"] >= created - 1]
    t = st.get("timings", {})
    res = {"run": run, "totalSeconds": t.get("totalSeconds"), "execSeconds": exec_sum,
           "overheadSeconds": t.get("overheadSeconds"), "coldStartSeconds": t.get("coldStartSeconds"),
           "coldStarts": sum(s.get("coldStarts", 0) for s in st.get("stages", [])),
           "idleInstanceSeconds": idle, "idleBeforeUseSeconds": idle_before,
           "idleAfterUseSeconds": idle_after, "podsStarted": len(started),
           "stageExecSeconds": {s["name"]: s.get("execSeconds") for s in st.get("stages", [])}}
    log(f"{run}: total {res['totalSeconds']:.1f} s, overhead {res['overheadSeconds']:.1f} s, "
        f"cold starts {res['coldStarts']}, idle {idle:.1f} instance-s ({idle_before:.1f} before use), "
        f"{len(started)} pods")
    return res


def chain(args, watch):
    base = yaml.safe_load(open(os.path.join(HERE, "chain.yaml")))
    names = {}
    for policy in POLICIES:
        wf = copy.deepcopy(base)
        wf["metadata"] = {"name": f"chain-{policy.lower()}"}
        wf["spec"]["prewarm"] = policy
        for st in wf["spec"]["stages"]:
            st["overrides"] = {"cpu": "100m"}
        apply(wf)
        names[policy] = wf["metadata"]["name"]
    for wf in names.values():
        wait_workflow_ready(wf)
    # Calibration: one run, so that the profiles learn the stages' run times and pod
    # starts (the observer scrapes Ready pods every 30 s; they stay 30 s after a run).
    run_chain(args, watch, names["None"], "chain-calibrate")
    fns = {s["function"] for s in base["spec"]["stages"]}
    def learned():
        ok = True
        for fn in fns:
            st = json.loads(kubectl("-n", NS, "get", "functionprofile", fn, "-o", "json")).get("status", {})
            ok = ok and st.get("invocations", 0) > 0
        return ok or None
    watch.wait("the chain's profiles to learn from the calibration run", learned, 180)
    out = {p: [] for p in POLICIES}
    for i in range(args.repeats):
        for policy in POLICIES:  # interleaved, so that drift on the machine hits all three
            out[policy].append(run_chain(args, watch, names[policy], f"chain-{policy.lower()}-{i}"))
    plans = {}
    for policy, wf in names.items():
        status = json.loads(kubectl("-n", NS, "get", "videoworkflow", wf, "-o", "json")).get("status", {})
        plans[policy] = {s["name"]: s.get("prewarmAfterSeconds") for s in status.get("stages", [])}
    return {"runs": out, "prewarmAfterSeconds": plans}


def report(res, args):
    lines = ["# vflow on real pods (kind)", "",
             f"Repeat: `make bench-kind` (kind v0.33.0, Kubernetes {res['kubernetes']}, one control plane "
             "and one worker on this machine; every figure from one run, side by side; "
             f"{os.cpu_count()} CPUs, shared and noisy). Measured {res['measured']}.", "",
             "## Pod cold start, by function", "",
             "Scheduled -> Ready: the kubelet creates the sandbox and the containers (runtime and "
             "metrics sidecar, images already on the node), the runtime starts and runs the "
             "function's warm-up, and the 1 s readiness probe passes. "
             f"{args.cold_samples} pods per function (the operator's first, then the ReplicaSet's "
             "replacements of a deleted pod), stamped as the watch events arrive.", "",
             "| function | median | max | samples (s) |", "|---|---|---|---|"]
    for fn, r in res["coldStart"].items():
        lines.append(f"| {fn} | {r['p50']:.2f} s | {r['max']:.2f} s | "
                     f"{', '.join('%.2f' % s for s in r['seconds'])} |")
    w = res["warm"]
    lines += ["", "## Warm invocation overhead through the stage Service", "",
              f"{w['invocations']} sequential `POST /invoke` from a client pod to the probe stage's "
              "Service (ClusterIP, kube-proxy iptables), after 5 unmeasured; the input is a 1 s "
              "160x120 clip in the in-cluster MinIO. Overhead = client latency minus the function "
              "process's own time (spawn to exit).", "",
              "| figure | p50 | p99 |", "|---|---|---|"]
    for key, label in [("latencyMs", "client latency"), ("functionMs", "function process (ffprobe)"),
                       ("overheadMs", "**overhead** (latency - function)"),
                       ("transferMs", "of which S3 download + upload (MinIO)"),
                       ("serviceHopMs", "of which the Service hop and HTTP (latency - runtime wall)"),
                       ("runtimeMs", "of which the runtime's own work (scratch, hashes, completion record)")]:
        lines.append(f"| {label} | {w[key]['p50']:.1f} ms | {w[key]['p99']:.1f} ms |")
    lines += ["", "## 4-stage chain from zero instances", "",
              f"`bench/kind/chain.yaml` (scale, crop, watermark, transcode on a 20 s 720p clip), "
              f"{args.repeats} runs per policy, interleaved, each from zero instances, after one "
              "calibration run. Overhead = the run's end to end minus the sum of its execution "
              "(download, function, upload); cold starts = invocations that waited for an instance, "
              "and how long they waited in all (the run's `timings.coldStartSeconds`); "
              "idle instance-seconds = for every pod started for the run, its time Ready between "
              "the run's creation and its end, minus the time it executed; *before first use* is "
              "the part before its first invocation (what pre-warming costs), the rest is the "
              "pod kept while later stages run (the same under every policy). The keep-alive "
              "after the run (scaleToZeroAfter, 30 s) is not counted. All chain stages request "
              "100m CPU so that the 12 pods of three policies never wait for the node's CPUs, "
              "and each run starts once every chain pod is gone.", "",
              "| pre-warming | overhead (median) | end to end | cold starts | waited for instances | idle instance-s before first use | idle instance-s in all | pods |",
              "|---|---|---|---|---|---|---|---|"]
    runs = res["chain"]["runs"]
    med = {}
    for policy in POLICIES:
        rs = runs[policy]
        med[policy] = {k: statistics.median(r[k] for r in rs)
                       for k in ("overheadSeconds", "totalSeconds", "idleInstanceSeconds",
                                 "idleBeforeUseSeconds", "coldStartSeconds")}
        lines.append(f"| {policy} | {med[policy]['overheadSeconds']:.1f} s | "
                     f"{med[policy]['totalSeconds']:.1f} s | {[r['coldStarts'] for r in rs]} | "
                     f"{med[policy]['coldStartSeconds']:.1f} s | {med[policy]['idleBeforeUseSeconds']:.1f} | {med[policy]['idleInstanceSeconds']:.1f} | "
                     f"{[r['podsStarted'] for r in rs]} |")
    lines += ["", "Pre-warm offsets the operator planned (seconds after a run starts, per stage): " +
              "; ".join(f"{p}: {json.dumps(v)}" for p, v in res["chain"]["prewarmAfterSeconds"].items()),
              "", "### Reading", ""]
    n, s, j = med["None"], med["Speculative"], med["JustInTime"]
    colds = statistics.median(r["coldStarts"] for r in runs["None"]) or 1
    pod_start = statistics.median(r["p50"] for r in res["coldStart"].values())
    lines.append(
        f"No pre-warming pays {n['overheadSeconds']:.1f} s of overhead per run; Speculative "
        f"{s['overheadSeconds']:.1f} s and JustInTime {j['overheadSeconds']:.1f} s. Idle before "
        f"first use (instance-seconds): Speculative {s['idleBeforeUseSeconds']:.1f}, JustInTime "
        f"{j['idleBeforeUseSeconds']:.1f}, None {n['idleBeforeUseSeconds']:.1f}. "
        f"JustInTime keeps Speculative's overhead ({j['overheadSeconds'] / max(s['overheadSeconds'], 1e-9):.2f}x "
        f"of it: what is left is the first stage's cold start, which nothing can hide for a run that "
        f"arrives unannounced) at {j['idleBeforeUseSeconds'] / max(s['idleBeforeUseSeconds'], 1e-9):.2f}x "
        f"of its idle time before use; None's own idle before use "
        f"({n['idleBeforeUseSeconds']:.1f}) is the gap between a pod's Ready and the first "
        "invocation that reaches it. This is Xanadu's headline, measured on a real kubelet with "
        "the operator users run.")
    lines += ["", "## Found on real pods, fixed before these figures", "",
              "- A Ready pod is not yet routed to: its Service's endpoints and kube-proxy follow a "
              "second or more later, and every invocation sent in that gap was refused and spent a "
              "retry (in the first runs a stage spent up to two of its three tries on it). The "
              "activator now resends a refused request in place for up to 15 s and counts the wait "
              "as cold start (`operator/runs/src/backend.rs`, `route_grace`).",
              "- The profiles learned a cold start of 0.1 s (the runtime process's start) for pods "
              "that took 1-3 s, so JustInTime warmed each stage too late and paid nearly every cold "
              "start. The observer now takes a new pod's creation to Ready "
              "(`operator/controller/src/observer.rs`, `pod_start_seconds`).", ""]
    lines += [f"A cold start as an invocation waits for it (None: {n['coldStartSeconds']:.1f} s "
              f"for {colds:g} cold starts, {n['coldStartSeconds'] / colds:.1f} s each) is much longer "
              f"than the pod's own start (scheduled -> Ready, median {pod_start:.2f} s over the "
              "functions above): it adds the in-flight signal reaching the workflow controller, the "
              "Deployment and ReplicaSet controllers, scheduling, and the Service's endpoints and "
              "kube-proxy catching up with the Ready pod."]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--work")
    ap.add_argument("--s3-url")
    ap.add_argument("--s3-key")
    ap.add_argument("--image", default="ghcr.io/vflow/fn-base:0.1.0")
    ap.add_argument("--cold-samples", type=int, default=5)
    ap.add_argument("--invocations", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["cold", "warm", "chain"], action="append")
    ap.add_argument("--report-only", action="store_true",
                    help="write REPORT.md from OUT/results.json without measuring")
    args = ap.parse_args()
    if args.report_only:
        res = json.load(open(os.path.join(args.out, "results.json")))
        args.cold_samples = len(next(iter(res["coldStart"].values()))["seconds"])
        args.repeats = len(res["chain"]["runs"]["None"])
        with open(os.path.join(args.out, "REPORT.md"), "w") as f:
            f.write(report(res, args))
        return 0
    if not (args.work and args.s3_url and args.s3_key and os.environ.get("BENCH_S3_SECRET")):
        ap.error("measuring needs --work, --s3-url, --s3-key and BENCH_S3_SECRET (bench.sh sets them)")
    only = set(args.only or ["cold", "warm", "chain"])
    watch = PodWatch()
    res = {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "kubernetes": json.loads(kubectl("version", "-o", "json"))["serverVersion"]["gitVersion"]}
    if "cold" in only:
        res["coldStart"] = cold_starts(watch, args.cold_samples)
    if "warm" in only:
        res["warm"] = warm_overhead(watch, args.invocations, args.image)
    if "chain" in only:
        res["chain"] = chain(args, watch)
    watch.stop = True
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    if only == {"cold", "warm", "chain"}:
        with open(os.path.join(args.out, "REPORT.md"), "w") as f:
            f.write(report(res, args))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
