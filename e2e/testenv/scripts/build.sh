#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, kubectl and
# (for the kind node image) kubelet, kubeadm, kube-proxy from the Go module in e2e/testenv into $VFLOW_TESTENV_CACHE/bin, in one
# `go build` (the binaries share most packages). Skips the build when the
# binaries were built from the same go.mod, go.sum, sources and Go version.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v go >/dev/null || die "go is not installed (need Go >= 1.26)"
cd "$TESTENV_SRC"

stamp="$(
	{
		go version
		cat "$TESTENV_SRC/scripts/build.sh"
		printf '%s\n' "$KUBE_VERSION" "${BINARIES[@]}"
		cat go.mod go.sum
		find cmd -type f -name '*.go' | LC_ALL=C sort | xargs cat
	} | sha256sum | cut -d' ' -f1
)"
stampfile="$BIN_DIR/.stamp"

up_to_date() {
	[[ -f $stampfile && "$(<"$stampfile")" == "$stamp" ]] || return 1
	local b
	for b in "${BINARIES[@]}"; do [[ -x $BIN_DIR/$b ]] || return 1; done
}

if [[ ${VFLOW_TESTENV_FORCE_BUILD:-} != 1 ]] && up_to_date; then
	log "binaries in $BIN_DIR are up to date"
	exit 0
fi

mkdir -p "$BIN_DIR"
rm -f "$stampfile"
minor="${KUBE_VERSION#v1.}"
minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
	ldflags+=" -X $pkg.gitTreeState=clean"
done

log "building ${BINARIES[*]} (Kubernetes $KUBE_VERSION) into $BIN_DIR; a cold build takes a while"
start=$SECONDS
# -p 2 bounds parallelism (and memory) on small machines; override with
# VFLOW_TESTENV_GO_PARALLEL. No cgo (static binaries, as Kubernetes ships them)
# and no DWARF (stripped at link anyway) save compile time.
CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -buildvcs=false" go build \
	-p "${VFLOW_TESTENV_GO_PARALLEL:-2}" -trimpath \
	-gcflags=all=-dwarf=false -ldflags="$ldflags" \
	-o "$BIN_DIR/" ./cmd/...
printf '%s\n' "$stamp" >"$stampfile"
log "built in $((SECONDS - start))s"
