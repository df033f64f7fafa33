#!/usr/bin/env bash
# make e2e-kind: vflow end to end on a kind cluster, where a Docker engine runs.
#
#  1. builds the operator image and the function images the thumbnails example uses
#     (base, segment, thumbnail, sprite) and loads them into a new kind cluster;
#  2. installs MinIO (e2e/kind/minio.yaml) and the chart (charts/vflow with
#     e2e/kind/values.yaml), creates the bucket and uploads a shared clip;
#  3. applies manifests/examples/profiles.yaml and thumbnails.yaml, creates a
#     VideoWorkflowRun (e2e/kind/run.yaml), waits for it to succeed and checks its
#     output (the sprite sheet) with ffprobe;
#  4. uploads a second clip under the workflow's trigger prefix and waits for the run
#     the S3 poller creates, checked the same way;
#  5. deletes the cluster (E2E_KIND_KEEP=1 keeps it; a failure dumps the objects and logs
#     first).
#
# Without a Docker engine it prints that it skipped and exits 0. With one, kind,
# kubectl, helm and curl (>= 7.75, for --aws-sigv4) must be installed; it fails if one
# is missing. Settings (environment): E2E_KIND_CLUSTER (vflow-e2e),
# E2E_KIND_NODE_IMAGE (kindest/node:v1.33.1), E2E_KIND_TIMEOUT (seconds per run, 900),
# E2E_KIND_MINIO_PORT (local port for MinIO, 19000), E2E_KIND_KEEP, VFLOW_TEST_VIDEOS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD

if ! docker info >/dev/null 2>&1; then
	echo "e2e-kind: SKIPPED: no Docker engine (docker info failed)"
	exit 0
fi

cluster="${E2E_KIND_CLUSTER:-vflow-e2e}"
node_image="${E2E_KIND_NODE_IMAGE:-kindest/node:v1.33.1}"
run_timeout="${E2E_KIND_TIMEOUT:-900}"
minio_port="${E2E_KIND_MINIO_PORT:-19000}"
videos="${VFLOW_TEST_VIDEOS:-$root/../shared/data/videos}"
system_ns=vflow-system
ns=vflow-e2e
tag=0.1.0
registry=ghcr.io/vflow
operator_image="$registry/vflow-operator:$tag"
base_image="$registry/fn-base:$tag"
functions=(segment thumbnail sprite)
run_clip=bbb_0-30s_720p_vp8.webm
trigger_clip=intel_car-detection.mp4
# The thumbnails example: sprite sheets of 10 columns of 160-pixel tiles.
sprite_width=1600

log() { printf '\n==> %s\n' "$*"; }
die() {
	printf 'e2e-kind: FAILED: %s\n' "$*" >&2
	exit 1
}

for tool in kind kubectl helm curl; do
	command -v "$tool" >/dev/null || die "$tool is not installed (needed with a Docker engine)"
done
for clip in "$run_clip" "$trigger_clip"; do
	[[ -f $videos/$clip ]] || die "no $videos/$clip (set VFLOW_TEST_VIDEOS to the shared clips)"
done
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
	die "a kind cluster named $cluster exists already: delete it (kind delete cluster --name $cluster) or set E2E_KIND_CLUSTER"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/vflow-e2e-kind.XXXXXX")"
kubeconfig="$work/kubeconfig"
export KUBECONFIG="$kubeconfig"
created=0
forward_pid=""
ok=0

dump() {
	log "diagnostics"
	kubectl get nodes -o wide || true
	kubectl get all,videoworkflows,videoworkflowruns,functionprofiles -A -o wide || true
	kubectl -n "$ns" get videoworkflowruns -o yaml || true
	kubectl -n "$ns" get videoworkflows -o yaml || true
	kubectl get events -A --sort-by=.lastTimestamp | tail -n 60 || true
	kubectl -n "$system_ns" logs -l app.kubernetes.io/name=vflow-operator --all-containers --tail=200 || true
	kubectl -n "$ns" logs -l app.kubernetes.io/managed-by=vflow-operator --all-containers --tail=50 --prefix || true
}
finish() {
	local rc=$?
	if [[ -n $forward_pid ]]; then
		kill "$forward_pid" 2>/dev/null || true
		wait "$forward_pid" 2>/dev/null || true
	fi
	if [[ $ok != 1 && $created == 1 ]]; then dump; fi
	if [[ $created == 1 ]]; then
		if [[ ${E2E_KIND_KEEP:-} == 1 ]]; then
			log "keeping the cluster: export KUBECONFIG=$kubeconfig; kind delete cluster --name $cluster"
		else
			log "deleting the cluster $cluster"
			kind delete cluster --name "$cluster" || true
			rm -rf "$work"
		fi
	else
		rm -rf "$work"
	fi
	exit "$rc"
}
trap finish EXIT

start=$SECONDS
step() {
	log "$* (at $((SECONDS - start))s)"
}

# 1. Images.
export DOCKER_BUILDKIT=1
step "building $operator_image"
docker build -f operator/Dockerfile -t "$operator_image" .
step "building $base_image"
docker build -f function-images/base/Dockerfile -t "$base_image" .
images=("$operator_image" "$base_image")
for fn in "${functions[@]}"; do
	step "building $registry/fn-$fn:$tag"
	docker build -f "function-images/$fn/Dockerfile" --build-arg "BASE=$base_image" \
		-t "$registry/fn-$fn:$tag" .
	images+=("$registry/fn-$fn:$tag")
done

step "creating the kind cluster $cluster ($node_image)"
created=1
kind create cluster --name "$cluster" --image "$node_image" --kubeconfig "$kubeconfig" --wait 180s
step "loading ${#images[@]} images"
kind load docker-image --name "$cluster" "${images[@]}"

# 2. MinIO and the chart.
random() { head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
s3_key=vflow-e2e
s3_secret="$(random)"
kubectl create namespace "$system_ns"
kubectl create namespace "$ns"
kubectl -n "$system_ns" create secret generic minio-credentials \
	--from-literal=MINIO_ROOT_USER="$s3_key" --from-literal=MINIO_ROOT_PASSWORD="$s3_secret"
for n in "$system_ns" "$ns"; do
	kubectl -n "$n" create secret generic vflow-s3 \
		--from-literal=AWS_ACCESS_KEY_ID="$s3_key" --from-literal=AWS_SECRET_ACCESS_KEY="$s3_secret"
done
step "installing MinIO"
kubectl apply -f e2e/kind/minio.yaml
kubectl -n "$system_ns" rollout status deployment/minio --timeout=300s

step "installing the chart"
helm install vflow charts/vflow --namespace "$system_ns" -f e2e/kind/values.yaml --wait --timeout 5m
kubectl wait --for condition=Established --timeout=60s \
	crd/videoworkflows.vflow.io crd/videoworkflowruns.vflow.io crd/functionprofiles.vflow.io

kubectl -n "$system_ns" port-forward service/minio "$minio_port:9000" >"$work/port-forward.log" 2>&1 &
forward_pid=$!
s3_url="http://127.0.0.1:$minio_port"
for ((i = 0; i < 100; i++)); do
	curl -sf -o /dev/null "$s3_url/minio/health/live" && break
	kill -0 "$forward_pid" 2>/dev/null || die "kubectl port-forward exited: $(cat "$work/port-forward.log")"
	sleep 0.2
done
s3() {
	curl -sS --fail-with-body --aws-sigv4 "aws:amz:us-east-1:s3" --user "$s3_key:$s3_secret" \
		-H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@"
}
s3 -X PUT "$s3_url/videos" >/dev/null
s3 -T "$videos/$run_clip" "$s3_url/videos/inputs/$run_clip" >/dev/null

# 3. The example and a run.
step "applying the FunctionProfiles and the thumbnails workflow"
kubectl -n "$ns" apply -f manifests/examples/profiles.yaml -f manifests/examples/thumbnails.yaml
kubectl -n "$ns" wait videoworkflow/thumbnails --for=condition=Ready --timeout=120s

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

show_status() {
	if command -v cargo >/dev/null; then
		cargo run -q -p vflow-cli --bin vflow -- status -n "$ns" "$1" || true
	fi
}

step "running e2e/kind/run.yaml (thumbnails on $run_clip)"
kubectl apply -f e2e/kind/run.yaml
wait_run e2e-thumbnails
check_outputs e2e-thumbnails
show_status e2e-thumbnails

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

ok=1
log "e2e-kind: PASSED in $((SECONDS - start))s"
