#!/usr/bin/env bash
# make chart-lint: the chart, offline.
#  1. charts/vflow/crds/ is the same as crds/;
#  2. helm lint --strict and helm template on the default values and every
#     charts/vflow/ci/*-values.yaml; each rendering validated object by object
#     (check.py validate: Kubernetes 1.37 schemas, strict; CRD-typed objects against
#     their CRDs) and the operator Deployment checked (check.py deployment);
#  3. the chart's ClusterRole and Role have exactly the rules of
#     manifests/rbac/operator.yaml; with operator.watchNamespace, those rules are a Role
#     in that namespace and nothing is cluster-wide;
#  4. the PrometheusRule and dashboards are the files under charts/vflow/files/, verbatim;
#  5. every e2e/chart/bad-values/*.yaml fails with the message its "# expect:" line names;
#  6. the packaged chart renders the same as the directory;
#  7. shellcheck on these scripts;
#  8. every variable the operator reads is set by the chart (or listed with a reason).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
start=$SECONDS

ensure_helm
ensure_pyenv
PY="$PYENV/bin/python"
prom_crds="$(prom_operator_crds)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failures=0
failed() {
	log "FAILED: $*"
	failures=$((failures + 1))
}

log "helm $("$HELM" version --short), kubernetes-validate schemas $KUBE_SCHEMA_VERSION, prometheus-operator CRDs $PROM_OPERATOR_VERSION"

# 1. CRDs
log "charts/vflow/crds/ against crds/"
diff -r "$REPO_ROOT/crds" "$CHART/crds" || failed "charts/vflow/crds/ differs from crds/: run 'make crds' (it copies them) and commit"

# 7. shellcheck (first: it is quick)
log "shellcheck"
"$PYENV/bin/shellcheck" -x "$CHART_TESTS"/*.sh "$REPO_ROOT"/e2e/testenv/scripts/*.sh "$REPO_ROOT"/e2e/operator/run.sh \
	"$REPO_ROOT"/operator/runs/testenv.sh "$REPO_ROOT"/function-images/*.sh "$REPO_ROOT"/.ci/{run,fresh,egress-watch} ||
	failed "shellcheck"

# 2. lint and template each combination
template() { # NAME ARGS...: renders into $work/NAME.yaml
	local name="$1"
	shift
	"$HELM" template vflow "$CHART" --namespace vflow-system --kube-version 1.37.0 --include-crds "$@" >"$work/$name.yaml"
}
base_kinds=(CustomResourceDefinition ServiceAccount ClusterRole ClusterRoleBinding Role RoleBinding Service Deployment)
# With operator.watchNamespace the operator's rules are a Role there: nothing cluster-wide.
scoped_kinds=(CustomResourceDefinition ServiceAccount Role RoleBinding Service Deployment)
declare -A kinds=(
	[default]="${base_kinds[*]} NetworkPolicy"
	[ha]="${base_kinds[*]} NetworkPolicy PodDisruptionBudget"
	[monitoring]="${base_kinds[*]} NetworkPolicy ServiceMonitor PodMonitor PrometheusRule ConfigMap"
	[gpu-storage-webhook]="${scoped_kinds[*]} NetworkPolicy PodMonitor"
	[gpu-modes]="${base_kinds[*]}"
)
declare -A env=(
	[default]='VFLOW_OPERATOR_GPU_SHARING={"mode":"whole"} VFLOW_OPERATOR_LEADER_ELECT=true VFLOW_OPERATOR_LOG_FORMAT=json VFLOW_OBSERVE_SECONDS=30 VFLOW_RUNS_POLL_SECONDS=15 VFLOW_OPERATOR_POD_SELECTOR=app.kubernetes.io/instance=vflow,app.kubernetes.io/name=vflow-operator VFLOW_OPERATOR_STAGE_METRICS_FROM=<unset> VFLOW_RUNS_DRAIN_SECONDS=20 VFLOW_RUNS_MAX_ACTIVE=200 VFLOW_RUNS_MAX_ACTIVE_PER_WORKFLOW=50 VFLOW_OPERATOR_LEASE_NAME=vflow-operator VFLOW_OPERATOR_NAMESPACE=<unset> VFLOW_S3_CREDENTIALS_DIR=<unset> VFLOW_RUNS_WEBHOOK_ADDR=<unset> VFLOW_RUNS_PRICE_GPU_SECOND=<unset>'
	[ha]='VFLOW_OPERATOR_LEASE_SECONDS=20 VFLOW_OPERATOR_RENEW_SECONDS=5'
	[monitoring]=''
	[gpu-storage-webhook]='VFLOW_OPERATOR_GPU_SHARING={"gpuMemoryBytes":85899345920,"mode":"mps","slices":8} VFLOW_OPERATOR_NAMESPACE=videos VFLOW_OPERATOR_LOG_FORMAT=text RUST_LOG=debug,kube=info VFLOW_OBSERVE_SECONDS=15 VFLOW_OPERATOR_POD_ANNOTATIONS=sidecar.istio.io/inject=false VFLOW_RUNS_PRICE_CPU_CORE_SECOND=1.12e-05 VFLOW_RUNS_PRICE_GPU_SECOND=0 VFLOW_RUNS_CURRENCY=EUR VFLOW_RUNS_DEFAULT_TTL_SECONDS=3600 VFLOW_RUNS_ACTIVATION_TIMEOUT_SECONDS=120 VFLOW_RUNS_POLL_SECONDS=0 VFLOW_RUNS_WEBHOOK_ADDR=0.0.0.0:8081 VFLOW_RUNS_WEBHOOK_TOKEN=<secret:vflow-webhook/token> VFLOW_S3_ENDPOINT=http://minio.minio.svc:9000 VFLOW_S3_REGION=eu-west-1 VFLOW_S3_PATH_STYLE=true VFLOW_S3_CREDENTIALS_DIR=/var/run/secrets/vflow/s3'
	[gpu-modes]='VFLOW_OPERATOR_GPU_SHARING={"mode":"mig","profiles":[{"resource":"nvidia.com/mig-1g.10gb"},{"resource":"nvidia.com/mig-3g.40gb"}]} VFLOW_OPERATOR_LEASE_NAME=video-operator'
)
combos=(default)
for f in "$CHART"/ci/*-values.yaml; do
	name="$(basename "$f" -values.yaml)"
	[[ -n ${kinds[$name]+x} ]] || failed "$f: add its expected kinds and env to e2e/chart/lint.sh"
	combos+=("$name")
done
for name in "${combos[@]}"; do
	args=()
	[[ $name == default ]] || args=(--values "$CHART/ci/$name-values.yaml")
	log "combination $name: helm lint --strict, helm template, validate"
	"$HELM" lint --strict --namespace vflow-system "$CHART" "${args[@]}" >"$work/lint-$name.txt" 2>&1 ||
		{
			cat "$work/lint-$name.txt" >&2
			failed "helm lint --strict ($name)"
			continue
		}
	template "$name" "${args[@]}" || {
		failed "helm template ($name)"
		continue
	}
	read -ra expect <<<"${kinds[$name]:-}"
	"$PY" "$CHART_TESTS/check.py" validate "$work/$name.yaml" --crds "$REPO_ROOT/crds" \
		"$prom_crds"/monitoring.coreos.com_{servicemonitors,podmonitors,prometheusrules}.yaml \
		--kube-version "$KUBE_SCHEMA_VERSION" --expect "${expect[@]}" || failed "validate ($name)"
	read -ra envs <<<"${env[$name]:-}"
	"$PY" "$CHART_TESTS/check.py" deployment "$work/$name.yaml" "${envs[@]}" || failed "deployment ($name)"
done

# 3. RBAC: the same rules as manifests/rbac/operator.yaml
log "RBAC rules against manifests/rbac/operator.yaml"
"$PY" "$CHART_TESTS/check.py" rbac "$work/default.yaml" "$REPO_ROOT/manifests/rbac/operator.yaml" || failed "rbac"
"$PY" "$CHART_TESTS/check.py" rbac-scoped "$work/gpu-storage-webhook.yaml" "$REPO_ROOT/manifests/rbac/operator.yaml" videos ||
	failed "rbac (watchNamespace)"

# 4. The observability files, verbatim
if [[ -f $work/monitoring.yaml ]]; then
	log "PrometheusRule and dashboards against charts/vflow/files/"
	"$PY" "$CHART_TESTS/check.py" files "$work/monitoring.yaml" "$CHART" || failed "files"
fi

# 5. Bad values fail, with the message a person needs
log "bad values (each must fail with its message)"
for f in "$CHART_TESTS"/bad-values/*.yaml; do
	want="$(sed -n 's/^# expect: //p' "$f" | head -n1)"
	[[ -n $want ]] || {
		failed "$f: no '# expect: MESSAGE' line"
		continue
	}
	if out="$("$HELM" template vflow "$CHART" --namespace vflow-system --values "$f" 2>&1)"; then
		failed "$(basename "$f"): rendered, but must fail with: $want"
	elif [[ $out != *"$want"* ]]; then
		printf '%s\n' "$out" >&2
		failed "$(basename "$f"): failed without the message: $want"
	else
		printf '  ok  %-32s %s\n' "$(basename "$f")" "$(printf '%s\n' "$out" | grep -F -m1 -- "$want" | cut -c1-150)"
	fi
done

# 6. The package
log "helm package, and the package renders as the directory does"
"$HELM" package "$CHART" --destination "$work" >/dev/null || failed "helm package"
for name in default monitoring; do
	args=()
	[[ $name == default ]] || args=(--values "$CHART/ci/$name-values.yaml")
	if ! "$HELM" template vflow "$work/vflow-0.1.0.tgz" --namespace vflow-system --kube-version 1.37.0 --include-crds "${args[@]}" >"$work/pkg-$name.yaml" ||
		! cmp -s "$work/pkg-$name.yaml" "$work/$name.yaml"; then
		failed "the packaged chart renders $name differently"
	fi
done

# 8. Every operator setting has a value: each variable the operator reads
# (operator/controller/src/config.rs, operator/runs/src/config.rs, the S3 settings) is
# set by templates/deployment.yaml, or listed here with the reason it is not.
log "every operator environment variable is set by the chart"
declare -A not_in_chart=(
	[VFLOW_OPERATOR_IDENTITY]="the pod name (POD_NAME) is the identity"
	[VFLOW_OPERATOR_LEASE_NAMESPACE]="the pod's namespace (POD_NAMESPACE) holds the Lease"
	[VFLOW_RUNS_NAMESPACE]="falls back to VFLOW_OPERATOR_NAMESPACE (operator.watchNamespace)"
	[VFLOW_S3_MULTIPART_THRESHOLD]="tuning, through operator.extraEnv"
	[VFLOW_S3_PART_SIZE]="tuning, through operator.extraEnv"
)
mapfile -t operator_vars < <(
	{
		grep -ho 'env = "[A-Z_]*"' "$REPO_ROOT/operator/controller/src/config.rs" | cut -d'"' -f2
		grep -ho '"VFLOW_RUNS_[A-Z_]*"' "$REPO_ROOT/operator/runs/src/config.rs" | tr -d '"'
		grep -ho '"VFLOW_S3_[A-Z_]*"' "$REPO_ROOT/operator/storage/src/settings.rs" | tr -d '"'
	} | sort -u
)
((${#operator_vars[@]} > 20)) || failed "found only ${#operator_vars[@]} operator variables: is this check still reading the right files?"
for var in "${operator_vars[@]}"; do
	if grep -q "name: $var\$" "$CHART/templates/deployment.yaml"; then
		continue
	elif [[ -n ${not_in_chart[$var]+x} ]]; then
		printf '  --  %-42s not in the chart: %s\n' "$var" "${not_in_chart[$var]}"
	else
		failed "the operator reads $var but the chart never sets it: add a value (values.yaml, values.schema.json, README.md) or list it in lint.sh"
	fi
done
printf '  ok  %d operator variables\n' "${#operator_vars[@]}"

if ((failures > 0)); then
	die "chart-lint: $failures check(s) failed ($((SECONDS - start))s)"
fi
log "chart-lint: all checks passed ($((SECONDS - start))s)"
