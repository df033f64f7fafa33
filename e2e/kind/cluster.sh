# shellcheck shell=bash disable=SC2034
# A kind cluster with vflow installed, for run.sh (make e2e-kind) and bench/kind/bench.sh
# (make bench-kind); sourced, not run. `kind_cluster_up` does, in order:
#  1. the node image (node-image/build.sh) and the images (images.sh: the operator, every
#     function, MinIO), loaded into a new kind cluster (kind-config.yaml: one control
#     plane, one worker) that kind creates through the docker front (docker-front.sh);
#  2. MinIO (minio.yaml) and the chart (charts/vflow with values.yaml, the project's
#     helm), the bucket `videos`, and MinIO on a local port through kubectl port-forward.
# On exit the cluster is deleted (E2E_KIND_KEEP=1 keeps it); when the caller has not set
# ok=1 by then, the objects and logs are dumped first.
#
# Settings (environment): E2E_KIND_CLUSTER (the caller's default), E2E_KIND_MINIO_PORT
# (local port for MinIO, 19000), E2E_KIND_KEEP.
# After kind_cluster_up: KUBECONFIG, $work (a scratch directory, removed on exit),
# $vflow_cli, $s3_url, $s3_key, $s3_secret, and `s3 CURL-ARGS...` (signed requests).
# shellcheck source=e2e/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT" || exit 1
root=$PWD
# shellcheck source=e2e/chart/lib.sh
source e2e/chart/lib.sh # helm, built from its Go module

cluster="${E2E_KIND_CLUSTER:?set E2E_KIND_CLUSTER before sourcing cluster.sh}"
minio_port="${E2E_KIND_MINIO_PORT:-19000}"
system_ns=vflow-system
ns=vflow-e2e

log() { printf '\n==> %s\n' "$*"; }
die() {
	printf '%s: FAILED: %s\n' "${KIND_TEST_NAME:-kind}" "$*" >&2
	exit 1
}
start=$SECONDS
step() {
	log "$* (at $((SECONDS - start))s)"
}

for tool in curl ffprobe; do
	command -v "$tool" >/dev/null || die "$tool is not installed"
done
ensure_docker
ensure_helm
ensure_pyenv
cargo build -q -p vflow-cli --bin vflow
vflow_cli="$root/target/debug/vflow"
# kind must find the docker front first on PATH; kubectl is the testenv's build.
mkdir -p "$KIND_CACHE/path"
ln -sf "$KUBECTL" "$KIND_CACHE/path/kubectl"
ln -sf "$HELM" "$KIND_CACHE/path/helm"
export PATH="$SHIM_DIR:$KIND_CACHE/path:$PATH"

work="$(mktemp -d "${TMPDIR:-/tmp}/vflow-kind.XXXXXX")"
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

random() { head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
s3_key=vflow-e2e
s3_secret="$(random)"
s3_url="http://127.0.0.1:$minio_port"
s3() {
	curl -sS --fail-with-body --aws-sigv4 "aws:amz:us-east-1:s3" --user "$s3_key:$s3_secret" \
		-H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@"
}

kind_cluster_up() {
	# 1. The node image, the images, the cluster.
	need_disk "$(docker info -f '{{.DockerRootDir}}')" "${TMPDIR:-/tmp}"
	step "the node image $NODE_IMAGE"
	e2e/kind/node-image/build.sh
	step "the images (stand-in bases, the project's Dockerfiles, MinIO)"
	e2e/kind/images.sh >"$work/images.txt"
	local images
	mapfile -t images <"$work/images.txt"
	((${#images[@]} > 0)) || die "images.sh built nothing"
	kind get clusters 2>/dev/null | grep -qx "$cluster" &&
		die "a kind cluster named $cluster exists already: delete it (PATH=$SHIM_DIR:\$PATH kind delete cluster --name $cluster) or set E2E_KIND_CLUSTER"

	step "creating the kind cluster $cluster"
	created=1
	kind create cluster --name "$cluster" --image "$NODE_IMAGE" --config e2e/kind/kind-config.yaml \
		--kubeconfig "$kubeconfig" --wait 180s
	kubectl -n kube-system rollout status deployment/coredns --timeout=180s
	# Into the workers only: the control plane keeps its NoSchedule taint (kind lifts it
	# only where there is no worker), so no pod of these images runs there, and a copy
	# there would cost a second import's time and disk.
	local workers
	workers="$(kind get nodes --name "$cluster" | grep -v -- '-control-plane$' | paste -sd, -)"
	[[ -n $workers ]] || die "kind lists no worker node in $cluster"
	step "loading ${#images[@]} images into $workers"
	kind load docker-image --name "$cluster" --nodes "$workers" "${images[@]}"

	# 2. MinIO and the chart.
	kubectl create namespace "$system_ns"
	kubectl create namespace "$ns"
	kubectl -n "$system_ns" create secret generic minio-credentials \
		--from-literal=MINIO_ROOT_USER="$s3_key" --from-literal=MINIO_ROOT_PASSWORD="$s3_secret"
	local n
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
	local i
	for ((i = 0; i < 100; i++)); do
		curl -sf -o /dev/null "$s3_url/minio/health/live" && break
		kill -0 "$forward_pid" 2>/dev/null || die "kubectl port-forward exited: $(cat "$work/port-forward.log")"
		sleep 0.2
	done
	s3 -X PUT "$s3_url/videos" >/dev/null
}

# cap_cpu [WORKFLOW=DURATION...] FILES...: the manifests on stdout as the kind nodes can
# run them: the kind nodes have this machine's CPUs and no GPU, so CPU requests (and
# profiles' minCpu) of at most 250m (limits stay unset), no pod of more than 500m
# (each profile's bounds.maxCpu: a packed pod grows with the cores its invocations were
# seen to use, and two cores hold every stage's pods) and no GPU request (detect runs
# its CPU variant). WORKFLOW=DURATION sets that workflow's scaleToZeroAfter.
cap_cpu() {
	"$PYENV/bin/python" - "$@" <<'EOF'
import json, sys, yaml
from decimal import Decimal
def cap(r, key="cpu"):
    if not r:
        return
    r.pop("gpu", None)
    cpu = str(r.get(key, ""))
    if cpu:
        cores = Decimal(cpu[:-1]) / 1000 if cpu.endswith("m") else Decimal(cpu)
        if cores > Decimal("0.25"):
            r[key] = "250m"
stz = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
paths = [a for a in sys.argv[1:] if "=" not in a]
docs = [d for path in paths for d in yaml.safe_load_all(open(path)) if d]
for d in docs:
    if d["kind"] == "FunctionProfile":
        cap(d["spec"].get("resources"))
        cap(d["spec"].get("bounds"), "minCpu")
        bounds = d["spec"].setdefault("bounds", {})
        bounds["maxCpu"] = "500m"
    elif d["kind"] == "VideoWorkflow":
        if d["metadata"]["name"] in stz:
            d["spec"]["scaleToZeroAfter"] = stz[d["metadata"]["name"]]
        for stage in d["spec"]["stages"]:
            cap(stage.get("overrides"))
# JSON documents: plain YAML scalars such as `y` mean true to some YAML 1.1 readers.
print("\n---\n".join(json.dumps(d, indent=1) for d in docs))
EOF
}
