# shellcheck shell=bash disable=SC2034
# Common settings for the testenv scripts; sourced, not run.
#
# Every path and port can be overridden from the environment (see README.md).

TESTENV_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The Kubernetes release that go.mod pins; stamped into the binaries.
KUBE_VERSION="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v1[.]/ { print $2 }' "$TESTENV_SRC/go.mod")"

CACHE_DIR="${VFLOW_TESTENV_CACHE:-${HOME:-/root}/.cache/vflow-testenv}"
BIN_DIR="${VFLOW_TESTENV_BIN:-$CACHE_DIR/bin}"
STATE_DIR="${VFLOW_TESTENV_DIR:-/tmp/vflow-testenv}"

ETCD_PORT="${VFLOW_TESTENV_ETCD_PORT:-23790}"
ETCD_PEER_PORT="${VFLOW_TESTENV_ETCD_PEER_PORT:-23800}"
APISERVER_PORT="${VFLOW_TESTENV_APISERVER_PORT:-26443}"
KCM_PORT="${VFLOW_TESTENV_KCM_PORT:-20257}"
SCHEDULER_PORT="${VFLOW_TESTENV_SCHEDULER_PORT:-20259}"

NODE_COUNT="${VFLOW_TESTENV_NODES:-3}"
POD_READY_DELAY="${VFLOW_TESTENV_POD_READY_DELAY:-2s}"

KUBECONFIG_PATH="$STATE_DIR/kubeconfig"
API_URL="https://127.0.0.1:$APISERVER_PORT"

# Start order; stop order is the reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok kubectl kubelet kubeadm kube-proxy)

log() { printf '[testenv] %s\n' "$*" >&2; }
die() { printf '[testenv] ERROR: %s\n' "$*" >&2; exit 1; }

kubectl_() { "$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

# pid_of NAME: prints the recorded PID of a component if that process is alive
# and is still the binary we started; fails otherwise.
pid_of() {
	local pidfile="$STATE_DIR/pids/$1.pid" pid exe
	[[ -f $pidfile ]] || return 1
	pid="$(<"$pidfile")"
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
	[[ $exe == "$BIN_DIR/$1" || $exe == "$BIN_DIR/$1 (deleted)" ]] || return 1
	printf '%s\n' "$pid"
}

# wait_for DESCRIPTION TIMEOUT_SECONDS COMMAND...: polls COMMAND every 0.5s.
wait_for() {
	local what="$1" timeout="$2" deadline
	shift 2
	deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			log "timed out after ${timeout}s waiting for $what"
			return 1
		fi
		sleep 0.5
	done
}
