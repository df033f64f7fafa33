#!/usr/bin/env bash
# make check-observability: keeps the chart's alerts and Grafana dashboard honest.
#
#  1. the dashboard JSON is what e2e/observability/dashboard.py generates;
#  2. checkobs (main.go, built with Prometheus' own rule loader and PromQL parser and
#     cached in ~/.cache/vflow-observability) loads the alerts, parses every dashboard
#     target and variable query, checks Grafana's required fields, and checks every
#     vflow_* name and label against the metrics the Rust code registers;
#  3. the runtime and the metrics sidecar run here for real (one rejected and one
#     successful invocation with a stand-in function on local files) and their /metrics
#     answers are given to checkobs, which checks its source scan against them; and
#     checkobs must report every problem planted in testdata/;
#  4. every alert's expression, evaluated by Prometheus' engine on synthetic series
#     (alerts_test.go), fires when it should and not otherwise.
#
# Needs go (>= 1.26), cargo, python3 and curl. Set VFLOW_RUNTIME_BIN to use a
# vflow-runtime binary that is already built.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD

log() { printf '==> %s\n' "$*"; }
die() {
	printf 'check-observability: %s\n' "$*" >&2
	exit 1
}
for tool in go python3 curl; do
	command -v "$tool" >/dev/null || die "$tool is not installed"
done
start_all=$SECONDS

# 1. The dashboard is generated.
python3 e2e/observability/dashboard.py --check

# 2. checkobs, built once per source, Go version and this script.
cache="${VFLOW_OBSERVABILITY_CACHE:-$HOME/.cache/vflow-observability}"
bin="$cache/bin/checkobs"
stamp="$(
	{
		go version
		cat e2e/observability/go.mod e2e/observability/go.sum e2e/observability/*.go
	} | sha256sum | cut -d' ' -f1
)"
if [[ -x $bin && -f $bin.stamp && "$(<"$bin.stamp")" == "$stamp" ]]; then
	log "checkobs is up to date ($bin)"
else
	log "building checkobs (Prometheus' rule loader and PromQL parser) into $bin"
	t=$SECONDS
	mkdir -p "$cache/bin"
	rm -f "$bin.stamp"
	(cd e2e/observability && CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -buildvcs=false -mod=readonly" \
		go build -p "${VFLOW_OBSERVABILITY_GO_PARALLEL:-2}" -trimpath -ldflags="-s -w" -o "$bin" .)
	printf '%s\n' "$stamp" >"$bin.stamp"
	log "built in $((SECONDS - t))s"
fi

# 3. Real /metrics answers from the runtime and the sidecar.
runtime="${VFLOW_RUNTIME_BIN:-}"
if [[ -z $runtime ]]; then
	t=$SECONDS
	log "cargo build -p vflow-runtime --bin vflow-runtime"
	cargo build -q -p vflow-runtime --bin vflow-runtime
	runtime="$root/target/debug/vflow-runtime"
	log "built in $((SECONDS - t))s"
fi
[[ -x $runtime ]] || die "no vflow-runtime at $runtime"

work="$(mktemp -d "${TMPDIR:-/tmp}/vflow-obs.XXXXXX")"
pids=()
cleanup() {
	local pid
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

wait_port() { # file pid what
	local i
	for ((i = 0; i < 200; i++)); do
		if [[ -s $1 ]]; then
			cat "$1"
			return
		fi
		kill -0 "$2" 2>/dev/null || die "$3 exited: $(cat "$work"/*.log)"
		sleep 0.05
	done
	die "$3 did not bind a port: $(cat "$work"/*.log)"
}

printf 'clip' >"$work/input.bin"
# A warm-up of one second so that an invocation sent at once is turned away
# (vflow_runtime_rejected_total{reason="warming_up"}).
"$runtime" serve --bind 127.0.0.1 --port 0 --port-file "$work/serve.port" \
	--function testfn --scratch-dir "$work/scratch" --allow-local-paths \
	--command "[\"$root/operator/runtime/tests/fixtures/testfn\"]" \
	--warmup-command '["sleep", "1"]' >"$work/serve.log" 2>&1 &
pids+=($!)
serve_port="$(wait_port "$work/serve.port" "${pids[0]}" "vflow-runtime serve")"
"$runtime" metrics --bind 127.0.0.1 --port 0 --port-file "$work/sidecar.port" \
	--pid "${pids[0]}" --interval 100ms >"$work/sidecar.log" 2>&1 &
pids+=($!)
sidecar_port="$(wait_port "$work/sidecar.port" "${pids[1]}" "vflow-runtime metrics")"

invoke() {
	curl -s -o "$work/answer.json" -w '%{http_code}' -H 'content-type: application/json' \
		--data "{\"run\": \"r\", \"stage\": \"s\", \"inputs\": [\"$work/input.bin\"], \"outputPrefix\": \"file://$work/out/\", \"params\": {\"mode\": \"copy\"}}" \
		"http://127.0.0.1:$serve_port/invoke"
}
code="$(invoke)"
[[ $code == 503 ]] || die "an invocation during warm-up answered $code, not 503: $(cat "$work/answer.json")"
for ((i = 0; i < 100; i++)); do
	[[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$serve_port/readyz")" == 200 ]] && break
	sleep 0.1
done
code="$(invoke)"
[[ $code == 200 ]] || die "the invocation answered $code: $(cat "$work/answer.json") $(cat "$work/serve.log")"
sleep 0.3 # a few sidecar samples
curl -sf "http://127.0.0.1:$serve_port/metrics" >"$work/runtime.prom" || die "no /metrics from the runtime"
curl -sf "http://127.0.0.1:$sidecar_port/metrics" >"$work/sidecar.prom" || die "no /metrics from the sidecar"

# The checker must fail where it should: a broken alerts file and dashboard
# (testdata/) must produce each of these problems.
log "checkobs on testdata/ (deliberately broken)"
if "$bin" -alerts e2e/observability/testdata/bad-alerts.yaml \
	-dashboards e2e/observability/testdata/bad-dashboards \
	-sources operator -runbooks docs/troubleshooting.md >"$work/bad.out" 2>&1; then
	die "checkobs accepted testdata/: $(cat "$work/bad.out")"
fi
# shellcheck disable=SC2016 # literal $ in checkobs' messages
expected=(
	'MISSING METRIC vflow_runs_finishd_total'
	'vflow_operator_stages has no label "phase"'
	'rate() of vflow_runs_active, a gauge'
	'severity must be critical, warning or info, not "page"'
	'runbook_url anchor #no-such-anchor is not a heading'
	'parse error: unclosed left parenthesis'
	'bad.json: no uid'
	'vflow_run_duration_seconds is a histogram'
	'unknown variable $undefined_var'
	'panel "no targets": id missing or not unique'
	'panel "no targets": datasource must be'
	'panel "no targets": no targets'
)
for e in "${expected[@]}"; do
	grep -qF -- "$e" "$work/bad.out" || die "checkobs did not report '$e' on testdata/: $(cat "$work/bad.out")"
done
echo "all ${#expected[@]} planted problems reported"

log "checkobs on the chart's alerts and dashboards"
"$bin" -alerts charts/vflow/files/alerts.yaml \
	-dashboards charts/vflow/files/dashboards \
	-sources operator \
	-runbooks docs/troubleshooting.md \
	-exposition "$work/runtime.prom" \
	-exposition "$work/sidecar.prom"

# 4. The alerts fire on the series they are about and stay quiet otherwise: each alert's
# expression evaluated by Prometheus' engine on synthetic series (alerts_test.go; Go
# caches the result until the alerts or the test change).
log "go test: the alerts on synthetic series"
t=$SECONDS
(cd e2e/observability && CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -buildvcs=false -mod=readonly" \
	go test -p "${VFLOW_OBSERVABILITY_GO_PARALLEL:-2}" -trimpath ./...)
log "go test took $((SECONDS - t))s"
log "check-observability took $((SECONDS - start_all))s"
