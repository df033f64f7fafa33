#!/usr/bin/env bash
# Smoke test of the testenv: starts it, checks that Deployments, scaling,
# kwok pods, garbage collection and the project's CRDs work, stops it.
# Every wait is bounded ($VFLOW_TESTENV_SMOKE_TIMEOUT seconds, default 90).
# A failed check dumps the cluster's objects and the component logs.
# Last line: "N passed, M failed"; the exit status is non-zero if M > 0.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPO_ROOT="$(cd "$TESTENV_SRC/../.." && pwd)"
CRD_DIR="${VFLOW_SMOKE_CRDS:-$REPO_ROOT/crds}"
EXAMPLES_DIR="${VFLOW_SMOKE_EXAMPLES:-$REPO_ROOT/manifests/examples}"
TIMEOUT="${VFLOW_TESTENV_SMOKE_TIMEOUT:-90}"
NS=vflow-smoke
# A cold start long enough to be measured, short enough to keep CI quick.
export VFLOW_TESTENV_POD_READY_DELAY="${VFLOW_TESTENV_POD_READY_DELAY:-3s}"

passed=0
failed=0
summary() { echo "$passed passed, $failed failed"; }

k() { kubectl_ --request-timeout=30s "$@"; }

dump() {
	echo "----- dump after failed check: $1"
	k get nodes -o wide
	k get deployments,replicasets,pods,configmaps -A -o wide
	k get crd 2>/dev/null
	k get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -n 40
	k describe pods -n "$NS" 2>/dev/null | tail -n 80
	local c
	for c in "${COMPONENTS[@]}"; do
		echo "----- last lines of $STATE_DIR/logs/$c.log"
		tail -n 15 "$STATE_DIR/logs/$c.log" 2>/dev/null
	done
	echo "----- end of dump"
}

# check DESCRIPTION COMMAND...: runs one check and records its result.
check() {
	local what="$1"
	shift
	local start=$SECONDS
	if "$@"; then
		passed=$((passed + 1))
		echo "ok   - $what ($((SECONDS - start))s)"
	else
		failed=$((failed + 1))
		echo "FAIL - $what ($((SECONDS - start))s)"
		dump "$what" >&2
	fi
}

# ------------------------------------------------------------------ helpers
# pods_ready N: exactly N pods of the smoke app, all Running and Ready on
# kwok nodes.
pods_ready() {
	local want="$1" out total good
	out="$(k get pods -n "$NS" -l app=smoke -o jsonpath='{range .items[*]}{.status.phase} {.spec.nodeName} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}')" || return 1
	total="$(grep -c . <<<"$out")"
	good="$(grep -cE '^Running kwok-node-[0-9]+ True$' <<<"$out")"
	((total == want && good == want))
}

no_pods() {
	local out
	out="$(k get pods -n "$NS" -l app=smoke -o name)" || return 1
	[[ -z $out ]]
}

# gone KIND SELECTOR...: no object of KIND matches.
gone() {
	local out
	out="$(k get "$@" -o name 2>&1)" || return 1
	[[ -z $out ]]
}

nodes_ready() {
	local out
	out="$(k get nodes -l type=kwok -o jsonpath='{range .items[*]}{.metadata.annotations.kwok\.x-k8s\.io/node} {.status.allocatable.nvidia\.com/gpu} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}')" || return 1
	(($(grep -cE '^fake [1-9][0-9]* True$' <<<"$out") == NODE_COUNT))
}

deployment() {
	k apply -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: smoke
  namespace: $NS
spec:
  replicas: $1
  selector:
    matchLabels: {app: smoke}
  template:
    metadata:
      labels: {app: smoke}
    spec:
      containers:
      - name: app
        image: registry.k8s.io/pause:3.10
        resources:
          requests: {cpu: 100m, memory: 64Mi, nvidia.com/gpu: "1"}
          limits: {nvidia.com/gpu: "1"}
EOF
}

# -------------------------------------------------------------------- checks
check_up() {
	"$TESTENV_SRC/scripts/up.sh"
}

check_nodes() {
	wait_for "$NODE_COUNT Ready kwok nodes with GPUs" "$TIMEOUT" nodes_ready
}

check_deployment_ready() {
	k create namespace "$NS" >/dev/null &&
		deployment 3 >/dev/null &&
		wait_for "3 Running and Ready pods" "$TIMEOUT" pods_ready 3
}

# kwok gives pods loopback addresses: whatever dials a pod IP stays on this machine.
check_pod_ips() {
	local ips ip
	ips="$(k get pods -n "$NS" -l app=smoke -o jsonpath='{.items[*].status.podIP}')" || return 1
	[[ -n $ips ]] || { echo "no pod IPs" >&2; return 1; }
	for ip in $ips; do
		[[ $ip == 127.* ]] || { echo "pod IP $ip is not in 127.0.0.0/8" >&2; return 1; }
	done
}

# The egress guard (egress-guard.sh) is installed while the testenv is up.
check_egress_guard() {
	[[ ${VFLOW_TESTENV_EGRESS_GUARD:-on} != off ]] || { echo "VFLOW_TESTENV_EGRESS_GUARD=off" >&2; return 1; }
	iptables -C OUTPUT -j VFLOW_EGRESS
}

# The pods became Ready no sooner than the configured delay after creation
# (timestamps have whole seconds, hence the one second of slack).
check_ready_delay() {
	local delay_s out created ready
	delay_s="${VFLOW_TESTENV_POD_READY_DELAY%s}"
	[[ $delay_s =~ ^[0-9]+$ ]] || { echo "(delay not in whole seconds; skipped)"; return 0; }
	out="$(k get pods -n "$NS" -l app=smoke -o jsonpath='{range .items[*]}{.metadata.creationTimestamp} {.status.conditions[?(@.type=="Ready")].lastTransitionTime}{"\n"}{end}')" || return 1
	[[ -n $out ]] || return 1
	while read -r created ready; do
		created="$(date -d "$created" +%s)" && ready="$(date -d "$ready" +%s)" || return 1
		if ((ready - created < delay_s - 1)); then
			echo "pod Ready after $((ready - created))s, want >= ${delay_s}s" >&2
			return 1
		fi
	done <<<"$out"
}

check_scale_to_zero() {
	k scale deployment/smoke -n "$NS" --replicas=0 >/dev/null &&
		wait_for "pods to go" "$TIMEOUT" no_pods
}

check_deployment_gc() {
	k scale deployment/smoke -n "$NS" --replicas=2 >/dev/null &&
		wait_for "2 Running and Ready pods" "$TIMEOUT" pods_ready 2 &&
		k delete deployment/smoke -n "$NS" --wait=false >/dev/null &&
		wait_for "ReplicaSets to be collected" "$TIMEOUT" gone replicasets -n "$NS" &&
		wait_for "pods to be collected" "$TIMEOUT" gone pods -n "$NS"
}

check_configmap_gc() {
	local uid i
	k create configmap gc-owner -n "$NS" --from-literal=role=owner >/dev/null || return 1
	uid="$(k get configmap gc-owner -n "$NS" -o jsonpath='{.metadata.uid}')" || return 1
	for i in 1 2; do
		k apply -f - >/dev/null <<EOF || return 1
apiVersion: v1
kind: ConfigMap
metadata:
  name: gc-dependent-$i
  namespace: $NS
  labels: {gc: smoke}
  ownerReferences:
  - {apiVersion: v1, kind: ConfigMap, name: gc-owner, uid: "$uid"}
data: {role: dependent}
EOF
	done
	[[ "$(k get configmaps -n "$NS" -l gc=smoke -o name | grep -c .)" == 2 ]] || return 1
	k delete configmap gc-owner -n "$NS" --wait=true >/dev/null &&
		wait_for "dependents to be collected" "$TIMEOUT" gone configmaps -n "$NS" -l gc=smoke
}

check_crd() {
	local file="$1" names
	k apply --server-side -f "$file" >/dev/null || return 1
	names="$(k get -f "$file" -o name)" || return 1
	# shellcheck disable=SC2086 # one name per word
	k wait --for=condition=Established --timeout="${TIMEOUT}s" $names >/dev/null
}

check_example() {
	local file="$1" ns
	# Create the namespaces the example names, if any: a line per document (kubectl
	# prints each object's jsonpath with nothing between them; eleven profiles without a
	# namespace made "defaultdefault...", too long a name).
	for ns in $(k create --dry-run=client -f "$file" -o jsonpath='{.metadata.namespace}{"\n"}' 2>/dev/null | sort -u); do
		k get namespace "$ns" >/dev/null 2>&1 || k create namespace "$ns" >/dev/null || return 1
	done
	k apply --server-side -f "$file" >/dev/null && k get -f "$file" >/dev/null
}

check_down() {
	"$TESTENV_SRC/scripts/down.sh"
}

# ---------------------------------------------------------------------- main
for c in "${COMPONENTS[@]}"; do
	if pid_of "$c" >/dev/null; then
		echo "the testenv is already up ($c runs): stop it first (make testenv-down)" >&2
		failed=1
		summary
		exit 1
	fi
done

# Stop the control plane whatever happens (the normal path stops it as a check).
# down.sh fails when anything tried to leave the machine (the egress guard): so do we.
stop_on_exit() {
	local rc=$?
	"$TESTENV_SRC/scripts/down.sh" >/dev/null || rc=1
	exit "$rc"
}
trap stop_on_exit EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

check "control plane starts (etcd, kube-apiserver, controller-manager, scheduler, kwok)" check_up
if ((failed > 0)); then
	summary
	exit 1
fi
check "$NODE_COUNT kwok nodes are Ready with nvidia.com/gpu allocatable" check_nodes
check "a Deployment of 3 replicas gets 3 Running and Ready pods on kwok nodes" check_deployment_ready
check "pods get loopback addresses (kwok --cidr in 127.0.0.0/8)" check_pod_ips
check "the egress guard refuses traffic to private addresses while the testenv is up" check_egress_guard
check "pods become Ready after the configured delay ($VFLOW_TESTENV_POD_READY_DELAY)" check_ready_delay
check "scaling the Deployment to 0 removes its pods" check_scale_to_zero
check "deleting the Deployment garbage-collects its ReplicaSets and pods" check_deployment_gc
check "deleting a ConfigMap owner garbage-collects its dependents" check_configmap_gc

shopt -s nullglob
crds=("$CRD_DIR"/*.yaml "$CRD_DIR"/*.yml)
examples=("$EXAMPLES_DIR"/*.yaml "$EXAMPLES_DIR"/*.yml)
shopt -u nullglob
if ((${#crds[@]} == 0)); then
	echo "SKIPPED: no CRDs in $CRD_DIR, so no CRD or example object was applied"
else
	for f in "${crds[@]}"; do
		check "CRD ${f#"$REPO_ROOT"/} applies and is Established" check_crd "$f"
	done
	if ((${#examples[@]} == 0)); then
		echo "SKIPPED: no example objects in $EXAMPLES_DIR"
	fi
	for f in "${examples[@]}"; do
		check "example ${f#"$REPO_ROOT"/} applies and reads back" check_example "$f"
	done
fi

check "control plane stops and leaves no process behind" check_down
trap - EXIT
summary
((failed == 0))
