# shellcheck shell=bash disable=SC2034
# Settings for the kind tests (node-image/build.sh, images.sh, run.sh); sourced, not run.
# Every version the kind cluster is built from is pinned here, once. Nothing is pulled
# from a container registry: the node image, the images kubeadm expects and every image
# the tests run are built on this machine from Debian packages and Go modules.

KIND_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$KIND_SRC/../.." && pwd)"
# shellcheck source=e2e/testenv/scripts/lib.sh
source "$REPO_ROOT/e2e/testenv/scripts/lib.sh" # KUBE_VERSION, the Kubernetes binaries
TESTENV_BIN="$BIN_DIR"

# Tools and components, each from its Go module.
KIND_VERSION=v0.33.0
CONTAINERD_VERSION=v2.3.4 # 2.x: Debian's 1.6/1.7 is too old for Kubernetes 1.36+
RUNC_VERSION=v1.4.3
CRICTL_VERSION=v1.36.0
CNI_PLUGINS_VERSION=v1.9.1
COREDNS_VERSION=v1.14.6
# MinIO's community edition is published as source only; a pseudo-version of its module.
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
# NetworkPolicy on the kind nodes (node-image/default-cni.yaml).
KUBE_NETWORK_POLICIES_VERSION=v0.8.0
# The tags kubeadm $KUBE_VERSION expects (`kubeadm config images list`).
ETCD_TAG=3.7.0-0
PAUSE_TAG=3.10.2

# Debian, from its archive: the node's root file system and the stand-ins for the public
# base images the project's Dockerfiles name.
DEBIAN_MIRROR="${VFLOW_KIND_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

KIND_CACHE="${VFLOW_KIND_CACHE:-${HOME:-/root}/.cache/vflow-kind}"
NODE_IMAGE="vflow.local/kind-node:$KUBE_VERSION"
# kind runs `docker run --privileged`; this front replaces that flag (see docker-front.sh).
SHIM_DIR="$KIND_CACHE/shim"
KIND="$SHIM_DIR/kind"
KUBECTL="$TESTENV_BIN/kubectl"

# The Docker CLI that comes with the engine (Debian's docker.io, which builds with
# BuildKit on its own): a newer client first on PATH, as these machines have, wants the
# buildx plugin for BuildKit, and that is not installed.
if [[ -x /usr/bin/docker ]] && dpkg -S /usr/bin/docker 2>/dev/null | grep -q "^docker.io:"; then
	mkdir -p "$KIND_CACHE/docker-cli"
	ln -sf /usr/bin/docker "$KIND_CACHE/docker-cli/docker"
	PATH="$KIND_CACHE/docker-cli:$PATH"
fi

kind_log() { printf '[kind] %s\n' "$*" >&2; }
kind_die() {
	printf '[kind] ERROR: %s\n' "$*" >&2
	exit 1
}

# stamp_of WORDS...: a hash of the words and of the files among them.
stamp_of() {
	local w
	for w in "$@"; do
		if [[ -f $w ]]; then sha256sum <"$w"; else printf '%s\n' "$w"; fi
	done | sha256sum | cut -d' ' -f1
}

# fresh STAMPFILE STAMP: whether STAMPFILE holds STAMP (the step's inputs did not change).
fresh() { [[ -f $1 && "$(<"$1")" == "$2" ]]; }

# ensure_docker: a running Docker engine, started here (in the background) when it is
# installed but not running; fails loudly when there is none.
ensure_docker() {
	docker info >/dev/null 2>&1 && return 0
	command -v dockerd >/dev/null || kind_die "no Docker engine: apt-get install -y docker.io"
	kind_log "starting dockerd (log in $KIND_CACHE/dockerd.log)"
	mkdir -p "$KIND_CACHE"
	setsid dockerd >"$KIND_CACHE/dockerd.log" 2>&1 </dev/null &
	local i
	for ((i = 0; i < 120; i++)); do
		docker info >/dev/null 2>&1 && return 0
		sleep 0.5
	done
	tail -n 20 "$KIND_CACHE/dockerd.log" >&2
	kind_die "dockerd did not come up in 60 s"
}

# need_disk DIR...: fails unless each DIR's file system has KIND_DISK_GB free. A full disk
# otherwise fails midway, inside `kind load` ("no space left on device" in docker save).
# The cluster with the images loaded into its worker took 6.6 GB at its peak (measured
# 2026-12-06, sampling df through `make e2e-kind`: the nodes, docker save's export,
# kind's tar, the worker's containerd); the rest is room for the runs' files.
KIND_DISK_GB="${VFLOW_KIND_DISK_GB:-10}"
need_disk() {
	local dir free
	for dir in "$@"; do
		free="$(df -Pk "$dir" | awk 'NR == 2 { print int($4 / 1048576) }')"
		((free >= KIND_DISK_GB)) ||
			kind_die "$dir has $free GB free; a kind cluster with vflow's images needs about $KIND_DISK_GB GB there (VFLOW_KIND_DISK_GB)"
	done
}

# go_install GOBIN ARGS...: `go install` of a module at a version, outside any module.
go_install() {
	local gobin="$1"
	shift
	mkdir -p "$gobin"
	(cd /tmp && GOBIN="$gobin" GOFLAGS="-buildvcs=false -trimpath" nice -n 10 go install -p "${VFLOW_KIND_GO_PARALLEL:-2}" "$@")
}

# MinIO's image, built by images.sh from MINIO_VERSION; e2e/kind/minio.yaml names it.
MINIO_IMAGE="vflow.local/minio:${MINIO_VERSION##*-}"
