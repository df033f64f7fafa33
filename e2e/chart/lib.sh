# shellcheck shell=bash disable=SC2034
# Settings and tools for the chart tests (lint.sh, test.sh); sourced, not run.
# Every tool is pinned here and installed into a cache on first use; a missing
# prerequisite (go, python3) fails loudly.

CHART_TESTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CHART_TESTS/../.." && pwd)"
# VFLOW_CHART_DIR: another copy of the chart (to see a test fail on a broken one).
CHART="${VFLOW_CHART_DIR:-$REPO_ROOT/charts/vflow}"

# Helm, built from its Go module (no release download: only the Go proxy is reachable).
HELM_VERSION="v4.3.1"
HELM_CACHE="${VFLOW_HELM_CACHE:-${HOME:-/root}/.cache/vflow-helm}"
HELM="$HELM_CACHE/bin/helm"

# Python tools (kubernetes-validate with the Kubernetes JSON schemas up to 1.37,
# jsonschema, PyYAML, shellcheck) in the project's one venv, pinned in
# function-images/requirements.txt.
PYENV="${VFLOW_PYENV:-${HOME:-/root}/.cache/vflow-pyenv}"
KUBE_SCHEMA_VERSION="1.37.0"

# prometheus-operator's CRDs (ServiceMonitor, PodMonitor, PrometheusRule), from its Go
# module at a pinned version (the module zip carries example/prometheus-operator-crd/).
PROM_OPERATOR_MODULE="github.com/prometheus-operator/prometheus-operator"
PROM_OPERATOR_VERSION="v0.85.0"

log() { printf '[chart] %s\n' "$*" >&2; }
die() {
	printf '[chart] ERROR: %s\n' "$*" >&2
	exit 1
}

# ensure_helm: builds helm $HELM_VERSION into $HELM_CACHE/bin unless the stamp says it
# is there (go install of the tagged module: its own go.sum, checked against the
# checksum database).
ensure_helm() {
	command -v go >/dev/null || die "go is not installed (need Go >= 1.26 to build helm $HELM_VERSION)"
	local stamp stampfile="$HELM_CACHE/bin/.stamp"
	stamp="$(printf '%s\n' "$HELM_VERSION" "$(go version)" | sha256sum | cut -d' ' -f1)"
	if [[ -x $HELM && -f $stampfile && "$(<"$stampfile")" == "$stamp" ]]; then
		return 0
	fi
	mkdir -p "$HELM_CACHE/bin"
	rm -f "$stampfile"
	log "building helm $HELM_VERSION from helm.sh/helm/v4 into $HELM_CACHE/bin (a cold build takes a few minutes)"
	local start=$SECONDS
	GOBIN="$HELM_CACHE/bin" CGO_ENABLED=0 GOFLAGS="-buildvcs=false" go install \
		-p "${VFLOW_HELM_GO_PARALLEL:-2}" -trimpath -ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
		"helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
	"$HELM" version >/dev/null || die "the helm just built does not run"
	printf '%s\n' "$stamp" >"$stampfile"
	log "helm built in $((SECONDS - start))s"
}

# ensure_pyenv: the project's venv (function-images/pyenv.sh), made or refreshed.
ensure_pyenv() {
	VFLOW_PYENV="$PYENV" "$REPO_ROOT/function-images/pyenv.sh" >/dev/null || die "function-images/pyenv.sh failed"
}

# prom_operator_crds: prints the directory with prometheus-operator's CRDs.
prom_operator_crds() {
	local dir
	dir="$(go mod download -json "$PROM_OPERATOR_MODULE@$PROM_OPERATOR_VERSION" | "$PYENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')" ||
		die "could not download $PROM_OPERATOR_MODULE@$PROM_OPERATOR_VERSION from the Go module proxy"
	[[ -f $dir/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml ]] ||
		die "$dir has no example/prometheus-operator-crd/"
	printf '%s\n' "$dir/example/prometheus-operator-crd"
}
