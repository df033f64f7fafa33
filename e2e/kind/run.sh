#!/usr/bin/env bash
# make e2e-kind: vflow end to end on a real kind cluster (one control plane, one
# worker), everything built on this machine, no registry:
#  1-2. cluster.sh: the node image and the images loaded into a new kind cluster, MinIO
#     and the chart installed, the bucket made; then a clip is uploaded;
#  3. applies manifests/examples/profiles.yaml and thumbnails.yaml, creates a
#     VideoWorkflowRun (e2e/kind/run.yaml), waits for it to succeed and checks its
#     output (the sprite sheet) with ffprobe;
#  4. uploads a second clip under the workflow's trigger prefix and waits for the run
#     the S3 poller creates, checked the same way;
#  5. deletes the cluster (E2E_KIND_KEEP=1 keeps it; a failure dumps the objects and logs
#     first).
#
# A Docker engine must be installed (apt-get install -y docker.io); dockerd is started
# when it is not running. Only where no Docker engine can run at all (neither docker nor
# dockerd) it says that it skipped and exits 0. Settings (environment):
# E2E_KIND_CLUSTER (vflow-e2e), E2E_KIND_TIMEOUT (seconds per run, 900),
# E2E_KIND_MINIO_PORT (local port for MinIO, 19000), E2E_KIND_KEEP, VFLOW_TEST_VIDEOS.
set -euo pipefail
if ! command -v dockerd >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
	echo "e2e-kind: SKIPPED: no Docker engine can run here (no dockerd, and docker info failed)"
	exit 0
fi
run_timeout="${E2E_KIND_TIMEOUT:-900}"
videos="${VFLOW_TEST_VIDEOS:-$(dirname "${BASH_SOURCE[0]}")/../../../shared/data/videos}"
tag=0.1.0
registry=ghcr.io/vflow
base_image="$registry/fn-base:$tag"
run_clip=bbb_0-30s_720p_vp8.webm
trigger_clip=intel_car-detection.mp4
# The thumbnails example: sprite sheets of 10 columns of 160-pixel tiles.
sprite_width=1600
for clip in "$run_clip" "$trigger_clip"; do
	[[ -f $videos/$clip ]] || {
		echo "e2e-kind: FAILED: no $videos/$clip (set VFLOW_TEST_VIDEOS to the shared clips)" >&2
		exit 1
	}
done
videos="$(cd "$videos" && pwd)"
export E2E_KIND_CLUSTER="${E2E_KIND_CLUSTER:-vflow-e2e}" KIND_TEST_NAME=e2e-kind
# shellcheck source=e2e/kind/cluster.sh
source "$(dirname "${BASH_SOURCE[0]}")/cluster.sh"
kind_cluster_up
s3 -T "$videos/$run_clip" "$s3_url/videos/inputs/$run_clip" >/dev/null
# detect's run: the parking lot, where cars come and go
s3 -T "$videos/$trigger_clip" "$s3_url/videos/inputs/$trigger_clip" >/dev/null

# 3. The examples and a run. The kind nodes have this machine's CPUs and no GPU: the
# examples' profiles and workflows as they are, but with CPU requests of at most 250m
# (limits stay unset) and no GPU request (detect runs its CPU variant); thumbnails scales
# to zero 30 s after its last invocation.
step "applying the FunctionProfiles and the examples (CPU requests capped, no GPU)"
cap_cpu thumbnails=30s vertical=10s manifests/examples/{profiles,thumbnails,transcode-ladder,detect,vertical}.yaml >"$work/examples.yaml"
"$vflow_cli" validate "$work/examples.yaml" || die "the kind variant of the examples is invalid"
kubectl -n "$ns" apply -f "$work/examples.yaml"
for wf in thumbnails transcode-ladder detect vertical; do
	kubectl -n "$ns" wait "videoworkflow/$wf" --for=condition=Ready --timeout=180s
done

# Waits for a run to end; fails unless it succeeded.
wait_run() {
	local run=$1 deadline=$((SECONDS + run_timeout)) phase=""
	while ((SECONDS < deadline)); do
		phase="$(kubectl -n "$ns" get videoworkflowrun "$run" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
		case "$phase" in
		Succeeded) return 0 ;;
		Failed | Cancelled)
			kubectl -n "$ns" get videoworkflowrun "$run" -o yaml
			die "run $run ended $phase"
			;;
		esac
		sleep 5
		kubectl -n "$ns" get videoworkflowrun "$run" --no-headers 2>/dev/null || true
	done
	die "run $run did not end within ${run_timeout}s (phase: ${phase:-none})"
}

# Fetches a run's outputs and checks the sprite sheet with ffprobe (the host's, else the
# one in the base image).
check_outputs() {
	local run=$1 uri key file n=0 probe
	mkdir -p "$work/out/$run"
	while read -r uri; do
		[[ -n $uri ]] || continue
		[[ $uri == s3://videos/* ]] || die "run $run: output $uri is not in the videos bucket"
		key="${uri#s3://videos/}"
		file="$work/out/$run/$(basename "$key")"
		s3 -o "$file" "$s3_url/videos/$key"
		[[ -s $file ]] || die "run $run: output $uri is empty"
		n=$((n + 1))
		if [[ $(basename "$key") == sprite.jpg ]]; then
			if command -v ffprobe >/dev/null; then
				probe="$(ffprobe -v error -select_streams v:0 -show_entries stream=codec_name,width,height -of csv=p=0 "$file")"
			else
				probe="$(docker run --rm --entrypoint ffprobe -v "$work/out/$run:/data:ro" "$base_image" \
					-v error -select_streams v:0 -show_entries stream=codec_name,width,height -of csv=p=0 \
					/data/sprite.jpg </dev/null)"
			fi
			echo "run $run: $uri: $probe"
			IFS=, read -r codec width height <<<"$probe"
			[[ $codec == mjpeg && $width == "$sprite_width" && $height -gt 0 ]] ||
				die "run $run: sprite.jpg is '$probe', expected mjpeg $sprite_width pixels wide"
		fi
	done < <(kubectl -n "$ns" get videoworkflowrun "$run" -o jsonpath='{range .status.outputs[*]}{.uri}{"\n"}{end}')
	((n > 0)) || die "run $run lists no outputs"
	[[ -f $work/out/$run/sprite.jpg ]] || die "run $run wrote no sprite.jpg"
}

# The CLI against the cluster: `vflow status RUN` must show the run Succeeded.
show_status() {
	local out
	out="$("$vflow_cli" status -n "$ns" "$1")" || die "vflow status $1 failed"
	echo "$out"
	grep -q Succeeded <<<"$out" || die "vflow status $1 does not say Succeeded"
}

step "running e2e/kind/run.yaml (thumbnails on $run_clip)"
kubectl apply -f e2e/kind/run.yaml
wait_run e2e-thumbnails
check_outputs e2e-thumbnails
show_status e2e-thumbnails

# A fused chain on real pods: the vertical example's plan fuses crop -> scale, the
# operator runs both in one pod (two runtime containers, two images), and a run goes
# through it as one invocation per segment; the cropped segments never reach the bucket.
# (Early, before the ladder teaches the scale profile its 1080p times; its pods scale
# to zero 10 s after the run, so the node has room for the next ones.)
step "vertical: crop -> scale fused into one pod"
fused_with="$(kubectl -n "$ns" get videoworkflow vertical -o jsonpath='{.status.stages[?(@.name=="scale")].fusedWith}')"
[[ $fused_with == crop ]] ||
	die "the vertical plan does not fuse scale into crop (fusedWith '$fused_with'): $(kubectl -n "$ns" get videoworkflow vertical -o jsonpath='{.status.stages[?(@.name=="scale")].reason}')"
containers="$(kubectl -n "$ns" get deployment vertical-crop -o jsonpath='{range .spec.template.spec.containers[*]}{.name}={.image} {end}')"
echo "vertical-crop: $containers"
[[ $containers == "function=ghcr.io/vflow/fn-crop:0.1.0 fused-1=ghcr.io/vflow/fn-scale:0.1.0 metrics="* ]] ||
	die "vertical-crop's containers are '$containers'"
if kubectl -n "$ns" get deployment vertical-scale >/dev/null 2>&1; then die "scale has a Deployment of its own"; fi
kubectl -n "$ns" create -f - <<EOF
apiVersion: vflow.io/v1alpha1
kind: VideoWorkflowRun
metadata: {name: e2e-vertical}
spec:
  workflowRef: {name: vertical}
  input: s3://videos/inputs/$run_clip
EOF
wait_run e2e-vertical
show_status e2e-vertical
s3 -o "$work/vertical-record.json" "$s3_url/videos/outputs/vertical/e2e-vertical/_vflow-run.json"
# (The prefix URL-encoded: MinIO signs the canonical query with "/" as %2F.)
s3 "$s3_url/videos?list-type=2&prefix=outputs%2Fvertical%2Fe2e-vertical%2Fcrop%2F" >"$work/vertical-crop-keys.xml"
"$PYENV/bin/python" - "$work/vertical-record.json" "$work/vertical-crop-keys.xml" <<'EOF' || die "the vertical run did not go through the fused pod (above)"
import json, re, sys
units = json.load(open(sys.argv[1]))["units"]
keys = re.findall(r"<Key>([^<]+)</Key>", open(sys.argv[2]).read())
crop = {u.get("segment"): u for u in units if u["stage"] == "crop"}
scale = {u.get("segment"): u for u in units if u["stage"] == "scale"}
problems = []
if not crop or set(crop) != set(scale):
    problems.append(f"crop ran on segments {sorted(crop)}, scale on {sorted(scale)}")
for seg, c in sorted(crop.items()):
    ran_c = [a for a in c["attempts"] if not a.get("error")]
    ran_s = [a for a in scale.get(seg, {}).get("attempts", []) if not a.get("error")]
    if c.get("outputs"):
        problems.append(f"crop segment {seg} stored outputs {c['outputs']}")
    if len(ran_c) != 1 or len(ran_s) != 1 or ran_s[0].get("instance") != ran_c[0].get("instance") \
            or not ran_c[0].get("instance", "").startswith("vertical-crop-"):
        problems.append(f"segment {seg}: crop ran on {[a.get('instance') for a in ran_c]}, "
                        f"scale on {[a.get('instance') for a in ran_s]}: not one invocation in one crop pod")
stored = [k for k in keys if not k.endswith("_vflow-complete.json")]
if stored or not keys:
    problems.append(f"under crop/ the bucket has {keys}: want only the chains' completion records")
print(f"vertical: {len(crop)} segments, each one invocation of a crop pod running crop then scale; "
      f"{len(keys)} completion records under crop/ and no cropped segment")
for p in problems:
    print(f"e2e-kind: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
vertical_out="$(kubectl -n "$ns" get videoworkflowrun e2e-vertical -o jsonpath='{.status.outputs[0].uri}')"
[[ $vertical_out == s3://videos/* ]] || die "the vertical run lists no output"
s3 -o "$work/out/vertical.mp4" "$s3_url/videos/${vertical_out#s3://videos/}"
vprobe="$(ffprobe -v error -select_streams v:0 -count_packets -show_entries stream=width,height,nb_read_packets -of csv=p=0 "$work/out/vertical.mp4")"
echo "vertical output: $vprobe"
IFS=, read -r vwidth vheight vframes <<<"$vprobe"
[[ $vwidth == 360 && $vheight == 640 ]] || die "the vertical output is ${vwidth}x$vheight, want 360x640"
vinput="$(ffprobe -v error -select_streams v:0 -count_packets -show_entries stream=nb_read_packets -of csv=p=0 "$videos/$run_clip")"
python3 -c 'import sys; a, b = map(float, sys.argv[1:]); sys.exit(abs(a - b) > 0.02 * b)' "$vframes" "$vinput" ||
	die "the vertical output has $vframes frames, the input $vinput"

# Scale to zero: every stage of thumbnails at zero replicas and no pod left, once
# scaleToZeroAfter has passed since the last invocation.
at_zero() {
	local replicas pods
	replicas="$(kubectl -n "$ns" get deployments -l vflow.io/workflow=thumbnails -o jsonpath='{range .items[*]}{.spec.replicas}{" "}{end}')"
	pods="$(kubectl -n "$ns" get pods -l vflow.io/workflow=thumbnails -o name)"
	[[ -n $replicas && -z ${replicas//[0 ]/} && -z $pods ]]
}
wait_zero() {
	local i
	for ((i = 0; i < 60; i++)); do
		at_zero && return 0
		sleep 2
	done
	kubectl -n "$ns" get deployments,pods -l vflow.io/workflow=thumbnails
	die "thumbnails did not scale to zero within 120 s ($1)"
}
step "thumbnails scales to zero after its run"
wait_zero "after e2e-thumbnails"
zero_at="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

# 4. The S3 trigger: the poller's first look at the workflow happened long ago (it
# polls every 5 s here), so a new object under the prefix starts a run.
step "uploading $trigger_clip under the trigger prefix"
s3 -T "$videos/$trigger_clip" "$s3_url/videos/incoming/thumbnails/$trigger_clip" >/dev/null
triggered=""
for ((i = 0; i < 60; i++)); do
	triggered="$(kubectl -n "$ns" get videoworkflowruns -l vflow.io/workflow=thumbnails,vflow.io/trigger=s3-poll \
		-o jsonpath='{.items[0].metadata.name}' 2>/dev/null || true)"
	[[ -n $triggered ]] && break
	sleep 2
done
[[ -n $triggered ]] || die "no run was created for s3://videos/incoming/thumbnails/$trigger_clip within 120s"
echo "the trigger created run $triggered"
wait_run "$triggered"
check_outputs "$triggered"
show_status "$triggered"
# It ran from zero: the kubelets started function containers for it (pre-warmed ones
# too: the run counts a cold start only where an invocation waited for one), then the
# stages went back to zero.
started="$(kubectl -n "$ns" get events --field-selector reason=Started \
	-o jsonpath='{range .items[*]}{.involvedObject.name} {.lastTimestamp}{"\n"}{end}' |
	awk -v t="$zero_at" '$1 ~ /^thumbnails-/ && $2 >= t' | wc -l)"
echo "containers started for thumbnails since it reached zero at $zero_at: $started"
((started > 0)) || die "no function container started for $triggered, though thumbnails was at zero"
wait_zero "after $triggered"

# 4b. The stage pods' NetworkPolicy, enforced by kube-network-policies on every node.
# Every run above went from the operator's pod to the stage pods through it. A pod in
# another namespace reaches a pod on the runtime's port that no policy covers, and not
# one that carries thumbnails' stage labels (its policy admits only the operator).
step "NetworkPolicy: a pod in another namespace cannot reach a stage's port; a stage reaches only DNS and storage"
kubectl -n kube-system rollout status daemonset/kube-network-policies --timeout=120s ||
	die "kube-network-policies is not running on every node"
policy=thumbnails-vflow-stages
labels="$(kubectl -n "$ns" get networkpolicy "$policy" -o json |
	jq -r '.spec.podSelector.matchLabels | to_entries | map("\(.key)=\(.value)") | join(",")')"
[[ -n $labels ]] || die "no NetworkPolicy $policy over thumbnails' stage pods"
serve=(--image "$base_image" --image-pull-policy=Never --restart=Never --command -- python3 -m http.server 8080)
kubectl -n "$ns" run np-stage --labels "$labels" "${serve[@]}" >/dev/null
kubectl -n "$ns" run np-control --labels app=np-control "${serve[@]}" >/dev/null
kubectl -n "$ns" wait pod/np-stage pod/np-control --for=condition=Ready --timeout=120s >/dev/null ||
	die "the stand-in pods did not start"
stage_ip="$(kubectl -n "$ns" get pod np-stage -o jsonpath='{.status.podIP}')"
control_ip="$(kubectl -n "$ns" get pod np-control -o jsonpath='{.status.podIP}')"
kubectl create namespace np-outsider >/dev/null
kubectl -n np-outsider run np-probe --image "$base_image" --image-pull-policy=Never --restart=Never --command -- \
	python3 -c '
import socket, sys
def reach(ip):
    try:
        socket.create_connection((ip, 8080), 5).close()
        return "reached"
    except OSError as e:
        return f"refused ({e})"
print(f"control {reach(sys.argv[1])}; stage {reach(sys.argv[2])}")
' "$control_ip" "$stage_ip" >/dev/null
kubectl -n np-outsider wait pod/np-probe --for=jsonpath='{.status.phase}'=Succeeded --timeout=120s >/dev/null ||
	die "the probe pod did not finish: $(kubectl -n np-outsider logs np-probe 2>&1)"
probed="$(kubectl -n np-outsider logs np-probe)"
echo "from namespace np-outsider: $probed"
[[ $probed == "control reached; stage refused"* ]] ||
	die "NetworkPolicy $policy is not enforced as written: $probed"
# Out of a stage pod: DNS and the storage endpoint's port (MinIO, by its Service name),
# and nothing else (the control pod's 8080).
went="$(kubectl -n "$ns" exec np-stage -- python3 -c '
import socket, sys
def reach(host, port):
    try:
        socket.create_connection((host, port), 5).close()
        return "reached"
    except OSError as e:
        return f"refused ({e})"
storage, control = reach("minio.vflow-system.svc", 9000), reach(sys.argv[1], 8080)
print(f"storage {storage}; control {control}")
' "$control_ip" 2>&1)" || die "the egress probe in np-stage failed: $went"
echo "from a stage pod: $went"
[[ $went == "storage reached; control refused"* ]] ||
	die "NetworkPolicy $policy's egress is not enforced as written: $went"
kubectl delete namespace np-outsider --wait=false >/dev/null
kubectl -n "$ns" delete pod np-stage np-control --wait=true >/dev/null

# 4c. An invocation killed at its memory limit, run once more in a pod whose limit was
# raised in place (the pod's resize subresource; docs/runs.md). probe-hog is probe
# behind a wrapper that first holds 360 MiB: at the profile's 300Mi the container's
# OOM killer takes that process, not the function's own, so the runtime learns it from
# its cgroup's count; at the plan's raise (x1.5: 450Mi) the same invocation fits.
# retries: 0, so a retry of the unit's own would fail the run.
step "OOM retry: killed at 300Mi, run again in a pod raised in place to 450Mi"
kubectl -n "$ns" apply -f - >/dev/null <<'EOF'
apiVersion: vflow.io/v1alpha1
kind: FunctionProfile
metadata:
  name: probe-hog
spec:
  description: probe, after holding 360 MiB (e2e/kind/run.sh, the OOM retry)
  image: ghcr.io/vflow/fn-probe:0.1.0
  command: ["bash", "-c", "python3 -c 'b = \"x\" * (360 << 20)' && exec \"$0\" probe \"$@\"", "/usr/local/bin/vflow-fn"]
  params: []
  resources: {cpu: 250m, memory: 300Mi}
  bounds: {maxMemory: 1Gi}
  sizing: "Off"
---
apiVersion: vflow.io/v1alpha1
kind: VideoWorkflow
metadata:
  name: oom-retry
spec:
  storage:
    endpoint: http://minio.vflow-system.svc:9000
    bucket: videos
    secretRef: {name: vflow-s3}
  outputPrefix: outputs/oom-retry/
  prewarm: None
  stages:
    - {name: probe, function: probe-hog, overrides: {retries: 0}}
EOF
kubectl -n "$ns" wait videoworkflow/oom-retry --for=condition=Ready --timeout=180s >/dev/null ||
	die "workflow oom-retry is not Ready: $(kubectl -n "$ns" get videoworkflow oom-retry -o yaml)"
kubectl -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: vflow.io/v1alpha1
kind: VideoWorkflowRun
metadata:
  name: e2e-oom
spec:
  workflowRef: {name: oom-retry}
  input: s3://videos/inputs/$run_clip
EOF
wait_run e2e-oom
s3 -o "$work/oom-record.json" "$s3_url/videos/outputs/oom-retry/e2e-oom/_vflow-run.json"
raised_pod="$("$PYENV/bin/python" - "$work/oom-record.json" <<'EOF'
import json, sys
units = [u for u in json.load(open(sys.argv[1]))["units"] if u["stage"] == "probe"]
attempts = units[0]["attempts"] if len(units) == 1 else []
shape = [(bool(a.get("oomKilled")), bool(a.get("error"))) for a in attempts]
if shape != [(True, True), (False, False)]:
    sys.exit(f"probe's attempts, (killed for memory, failed): want an OOM kill then a success, got {shape}: {attempts}")
print(attempts[1]["instance"])
EOF
)" || die "the OOM retry did not go as it should (above)"
limit="$(kubectl -n "$ns" get pod "$raised_pod" -o jsonpath='{.status.containerStatuses[?(@.name=="function")].resources.limits.memory}')"
request="$(kubectl -n "$ns" get pod "$raised_pod" -o jsonpath='{.spec.containers[?(@.name=="function")].resources.requests.memory}')"
echo "the retry ran in pod $raised_pod: memory limit $limit (applied by the kubelet), request $request"
[[ $limit == 471859200 || $limit == 450Mi ]] || die "pod $raised_pod runs with a memory limit of '$limit', not the raised 450Mi"
[[ $request == 300Mi ]] || die "pod $raised_pod's memory request changed to '$request'"
kubectl -n "$ns" delete videoworkflow oom-retry --wait=false >/dev/null

# 5. The transcode ladder through `vflow submit`: fan-out, three renditions stitched,
# each checked with ffprobe against the input (codec, height, duration, frames).
step "vflow submit transcode-ladder (three renditions)"
submitted="$("$vflow_cli" submit transcode-ladder -n "$ns" --input "s3://videos/inputs/$run_clip" --name e2e-ladder)" ||
	die "vflow submit failed"
echo "submitted $submitted"
# The operator pod deleted while the run goes (after the split, before the joins): the
# new leader resumes the run from its record.
for ((i = 0; i < 300; i++)); do
	split_done="$(kubectl -n "$ns" get videoworkflowrun e2e-ladder -o jsonpath='{.status.stages[?(@.name=="split")].done}' 2>/dev/null || true)"
	[[ ${split_done:-0} -ge 1 ]] && break
	sleep 1
done
[[ ${split_done:-0} -ge 1 ]] || die "the ladder's split did not finish within 300 s"
step "deleting the operator pod in the middle of e2e-ladder"
kubectl -n "$system_ns" delete pod -l app.kubernetes.io/name=vflow-operator --wait=false
wait_run e2e-ladder
show_status e2e-ladder
kubectl -n "$system_ns" get pods -l app.kubernetes.io/name=vflow-operator
# No finished invocation ran twice. The engine's record (in the bucket, beside the
# outputs) must show a second session (the restart resumed it) and at most one
# invocation that ran per unit: an executed attempt, or a reused one (an invocation in
# flight when the operator went, finished by its pod and taken from its completion
# record by the new session, which names the pod that ran it); and every function pod
# still up must have run exactly the invocations that the record attributes to it (its
# runtime's counter, read inside the pod), so none ran unrecorded
# either.
s3 -o "$work/ladder-record.json" "$s3_url/videos/outputs/ladder/e2e-ladder/_vflow-run.json"
counters="$work/ladder-counters.txt"
: >"$counters"
# (Pods that never started, e.g. Pending for CPU, have no address and ran nothing.)
for pod in $(kubectl -n "$ns" get pods -l vflow.io/workflow=transcode-ladder --field-selector=status.phase=Running -o name); do
	name="${pod#pod/}"
	# Read inside the pod: its NetworkPolicy admits only the operator on 8080, not the
	# API server's pod proxy.
	if ! metrics="$(kubectl -n "$ns" exec "$name" -c function -- python3 -c \
		'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:8080/metrics", timeout=10).read().decode())')"; then
		# The stage scaling down after the run can take a pod away while it is read;
		# only the pods that stay up are checked.
		going="$(kubectl -n "$ns" get pod "$name" -o jsonpath='{.metadata.deletionTimestamp}' 2>/dev/null || echo gone)"
		[[ -n $going ]] || die "could not read the runtime counter of pod $name, which is still up"
		echo "pod $name went away while it was read (scaled down): not checked"
		continue
	fi
	n="$(awk '/^vflow_runtime_invocations_total\{.*outcome="succeeded"/ { print $NF }' <<<"$metrics")"
	echo "$name ${n:-0}" >>"$counters"
done
"$PYENV/bin/python" - "$work/ladder-record.json" "$counters" <<'EOF' || die "the ladder's record shows an invocation that ran twice (above)"
import collections, json, sys
record = json.load(open(sys.argv[1]))
problems = []
if record.get("sessions", 0) < 2:
    problems.append(f"{record.get('sessions')} engine session(s): the restarted operator did not resume the run")
by_instance = collections.Counter()
reused = 0
for unit in record["units"]:
    ran = [a for a in unit.get("attempts", []) if not a.get("error")]
    for a in ran:
        by_instance[a.get("instance", "")] += 1
    reused += sum(1 for a in ran if a.get("reused"))
    if len(ran) > 1:
        problems.append(f"{unit['stage']} segment {unit.get('segment')}: ran {len(ran)} times "
                        f"({sum(1 for a in ran if a.get('reused'))} of them reused)")
for line in open(sys.argv[2]):
    pod, count = line.split()
    if int(count) != by_instance[pod]:
        problems.append(f"pod {pod}: its runtime ran {count} invocations, the record says {by_instance[pod]}")
print(f"record: {record.get('sessions')} sessions, {sum(by_instance.values())} invocations that ran "
      f"({reused} finished while the operator was away and reused) for "
      f"{len(record['units'])} units; {sum(1 for _ in open(sys.argv[2]))} pods still up checked")
for p in problems:
    print(f"e2e-kind: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
near() { python3 -c 'import sys; a, b = map(float, sys.argv[1:]); sys.exit(abs(a - b) > 0.02 * b)' "$1" "$2"; }
# An HLS playlist is also a program: ffprobe lists its stream under the program and again
# on its own, so each key is kept once (its first value).
probe() { ffprobe -v error -select_streams v:0 -count_packets \
	-show_entries stream=codec_name,height,nb_read_packets:format=duration -of default=nw=1 "$1" |
	awk -F= '!seen[$1]++'; }
input_duration="$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$videos/$run_clip")"
input_frames="$(ffprobe -v error -select_streams v:0 -count_packets -show_entries stream=nb_read_packets -of csv=p=0 "$videos/$run_clip")"
# The ladder ends in one adaptive stream (package): every file of it is fetched into
# one folder, as a CDN would serve it, and read through its playlists.
mkdir -p "$work/out/ladder"
while read -r uri; do
	s3 -o "$work/out/ladder/$(basename "$uri")" "$s3_url/videos/${uri#s3://videos/}"
done < <(kubectl -n "$ns" get videoworkflowrun e2e-ladder -o jsonpath='{range .status.outputs[*]}{.uri}{"\n"}{end}')
[[ -f $work/out/ladder/master.m3u8 && -f $work/out/ladder/manifest.mpd ]] ||
	die "the ladder run wrote no master.m3u8 and manifest.mpd: $(ls "$work/out/ladder")"
renditions=0
for playlist in "$work"/out/ladder/media_*.m3u8; do
	p="$(probe "$playlist")"
	height="$(sed -n 's/^height=//p' <<<"$p")"
	[[ -n $height ]] || continue # the audio rendition
	echo "$(basename "$playlist"): $(tr '\n' ' ' <<<"$p")"
	codec="$(sed -n 's/^codec_name=//p' <<<"$p")"
	frames="$(sed -n 's/^nb_read_packets=//p' <<<"$p")"
	[[ $codec == h264 ]] || die "$playlist: codec $codec, want h264"
	[[ $height =~ ^(1080|720|480)$ ]] || die "$playlist: height $height, want 1080, 720 or 480"
	# Within 2% of the input: segment joins may still add or drop a frame.
	near "$frames" "$input_frames" || die "$playlist: $frames frames, the input has $input_frames"
	# A player switches renditions at segment boundaries: the same in every rendition.
	grep '^#EXTINF' "$playlist" >"$playlist.lengths"
	cmp -s "$playlist.lengths" "$work/out/ladder/media_0.m3u8.lengths" ||
		die "$playlist: its segments are not cut where media_0.m3u8's are"
	renditions=$((renditions + 1))
done
((renditions == 3)) || die "the ladder's stream has $renditions video renditions, want 3"
variants="$(grep -c '^#EXT-X-STREAM-INF:.*RESOLUTION=' "$work/out/ladder/master.m3u8")"
((variants == 3)) || die "master.m3u8 lists $variants renditions, want 3"
stream_duration="$(awk -F'[:,]' '/^#EXTINF/ { s += $2 } END { print s }' "$work/out/ladder/media_0.m3u8")"
near "$stream_duration" "$input_duration" || die "the stream lasts $stream_duration s, the input $input_duration s"

# 6. detect on the CPU with its condition, on the parking lot: where it finds a car or a
# person the segment is blurred, where it finds none the blur is skipped and the segment
# passes through (the clip has both); the output has the input's frames.
step "detect (CPU variant) with its blur condition"
kubectl -n "$ns" create -f - <<EOF
apiVersion: vflow.io/v1alpha1
kind: VideoWorkflowRun
metadata: {name: e2e-detect}
spec:
  workflowRef: {name: detect}
  input: s3://videos/inputs/$trigger_clip
EOF
wait_run e2e-detect
show_status e2e-detect
# The condition `detect.objects > 0`, per segment, from the run's record: blur ran
# exactly where detect found objects and was skipped elsewhere.
s3 -o "$work/detect-record.json" "$s3_url/videos/outputs/detect/e2e-detect/_vflow-run.json"
"$PYENV/bin/python" - "$work/detect-record.json" <<'EOF' || die "the blur condition was not applied per segment (above)"
import json, sys
units = json.load(open(sys.argv[1]))["units"]
found = {u.get("segment"): u.get("metadata", {}).get("objects") for u in units if u["stage"] == "detect"}
blur = {u.get("segment"): u["status"] for u in units if u["stage"] == "blur"}
problems = [f"segment {s}: {n} objects, blur {blur.get(s)}" for s, n in sorted(found.items())
            if n is None or blur.get(s) != ("Done" if n > 0 else "Skipped")]
if not found or set(found) != set(blur):
    problems.append(f"detect ran on segments {sorted(found)}, blur has {sorted(blur)}")
# cars in some segments and an empty lot in others: both branches taken, for a reason
if not any(n for n in found.values()) or all(n for n in found.values()):
    problems.append(f"want segments with and without objects on the car clip, got {dict(sorted(found.items()))}")
print(f"detect: objects per segment {dict(sorted(found.items()))}; blur {dict(sorted(blur.items()))}")
for p in problems:
    print(f"e2e-kind: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
# `vflow logs` reads the function containers' logs through the kubelet. The stage's
# pod may be replaced right after the run (seen: the stitch Deployment scaled 1 -> 0 ->
# 1 within seconds of the run's end, and the new pod was still being scheduled), so
# this waits up to 90 s for a stitch runtime's log line, from whichever pod is up.
step "vflow logs e2e-detect --stage stitch"
deadline=$((SECONDS + 90))
while :; do
	logs="$("$vflow_cli" logs e2e-detect -n "$ns" --stage stitch --tail 200 2>&1)" || logs="vflow logs failed: $logs"
	grep -q '"function":"stitch"' <<<"$logs" && break
	((SECONDS < deadline)) || die "vflow logs printed no log line of the stitch runtime in 90 s: $logs"
	sleep 3
done
head -n 5 <<<"$logs"
detect_out="$(kubectl -n "$ns" get videoworkflowrun e2e-detect -o jsonpath='{.status.outputs[0].uri}')"
[[ $detect_out == s3://videos/* ]] || die "the detect run lists no output"
s3 -o "$work/out/detect.mp4" "$s3_url/videos/${detect_out#s3://videos/}"
frames="$(ffprobe -v error -select_streams v:0 -count_packets -show_entries stream=nb_read_packets -of csv=p=0 "$work/out/detect.mp4")"
car_frames="$(ffprobe -v error -select_streams v:0 -count_packets -show_entries stream=nb_read_packets -of csv=p=0 "$videos/$trigger_clip")"
near "$frames" "$car_frames" || die "detect's output has $frames frames, the input $car_frames"

ok=1
log "e2e-kind: PASSED in $((SECONDS - start))s"
