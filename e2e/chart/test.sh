#!/usr/bin/env bash
# make chart-test: the chart on a private e2e/testenv (ports VFLOW_CHART_PORT_BASE+1..+5,
# default 31101-31105, +8 the operator, +9 S3; state in /tmp/vflow-testenv-chart; fails at once if a port is
# taken), with the API server's audit log on for the operator's ServiceAccount.
#
#  1. every ci/*-values.yaml rendering is accepted by the real API server (server-side
#     dry run; prometheus-operator's CRDs installed);
#  2. helm install (namespace enforcing the "restricted" Pod Security Standard) -> the
#     operator Deployment Available (kwok plays the pods); helm upgrade to 2 replicas;
#  3. the real vflow-operator ($VFLOW_OPERATOR_BIN) runs here with a token of the chart's
#     ServiceAccount and the environment of the chart's Deployment: it takes the Lease,
#     reconciles an example workflow (stage Deployments and Services, Ready), deletes the
#     children of removed stages, reports an invalid workflow with an Event; its run
#     controller (S3: s3s-fs on loopback) runs a VideoWorkflowRun up to its first stage,
#     creates a run from an S3 object and deletes a failed run after its TTL; no
#     "forbidden" in its log;
#  4. the audit log: every request of the ServiceAccount was allowed, and every granted
#     (group, resource, verb) was used or is listed with its reason in unused-grants.txt;
#     kubectl auth can-i says no to what it must not do;
#  5. helm uninstall removes everything but the CRDs, and the token stops working.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
start=$SECONDS

operator_bin="${VFLOW_OPERATOR_BIN:-}"
[[ -x $operator_bin ]] || die "VFLOW_OPERATOR_BIN=$operator_bin: not an executable (make chart-test builds it)"
s3s_fs="${VFLOW_S3S_FS:-${HOME:-/root}/.cache/vflow-s3s/bin/s3s-fs}"
[[ -x $s3s_fs ]] || die "$s3s_fs: no s3s-fs (make s3-server installs it; VFLOW_S3S_FS points elsewhere)"
ensure_helm
ensure_pyenv
PY="$PYENV/bin/python"
prom_crds="$(prom_operator_crds)"
"$REPO_ROOT/e2e/testenv/scripts/build.sh"
KUBECTL="${VFLOW_TESTENV_BIN:-${VFLOW_TESTENV_CACHE:-${HOME:-/root}/.cache/vflow-testenv}/bin}/kubectl"

base="${VFLOW_CHART_PORT_BASE:-31100}"
export VFLOW_TESTENV_DIR="${VFLOW_CHART_TESTENV_DIR:-/tmp/vflow-testenv-chart}"
export VFLOW_TESTENV_ETCD_PORT=$((base + 1)) VFLOW_TESTENV_ETCD_PEER_PORT=$((base + 2))
export VFLOW_TESTENV_APISERVER_PORT=$((base + 3)) VFLOW_TESTENV_KCM_PORT=$((base + 4))
export VFLOW_TESTENV_SCHEDULER_PORT=$((base + 5)) VFLOW_TESTENV_NODES=2
operator_http="127.0.0.1:$((base + 8))"
s3_port=$((base + 9))
for port in $((base + 1)) $((base + 2)) $((base + 3)) $((base + 4)) $((base + 5)) $((base + 8)) $s3_port; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		die "port $port on 127.0.0.1 is taken (another testenv, or a leftover of this one: VFLOW_TESTENV_DIR=$VFLOW_TESTENV_DIR e2e/testenv/scripts/down.sh); pick other ports with VFLOW_CHART_PORT_BASE"
	fi
done

NS=vflow-system
RELEASE=vflow
SA=vflow-operator
USER_NAME="system:serviceaccount:$NS:$SA"
APPS=videos
work="$(mktemp -d)"
operator_pid=""
s3_pid=""
cleanup() {
	local rc=$? pid
	for pid in "$operator_pid" "$s3_pid"; do
		if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
			kill "$pid" 2>/dev/null || true
			wait "$pid" 2>/dev/null || true
		fi
	done
	if ((rc != 0)); then
		log "failed; what there is:"
		"$KUBECTL" get deploy,rs,pods,svc,lease,vwf,vwr,fprof -A -o wide >&2 2>&1 || true
		"$KUBECTL" get events -A --sort-by=.lastTimestamp 2>&1 | tail -n 30 >&2 || true
		[[ -f $work/operator.log ]] && {
			log "operator log (last 40 lines):"
			tail -n 40 "$work/operator.log" >&2
		}
	fi
	# down.sh fails when anything tried to leave the machine (the egress guard).
	"$REPO_ROOT/e2e/testenv/scripts/down.sh" >&2 || rc=1
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT

cat >"$work/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    users: ["$USER_NAME"]
  - level: None
EOF
export VFLOW_TESTENV_AUDIT_POLICY="$work/audit-policy.yaml"
"$REPO_ROOT/e2e/testenv/scripts/up.sh" >/dev/null
export KUBECONFIG="$VFLOW_TESTENV_DIR/kubeconfig"
k() { "$KUBECTL" "$@"; }
h() { "$HELM" "$@"; }
audit_log="$VFLOW_TESTENV_DIR/logs/audit.log"
step() { log "[$((SECONDS - start))s] $*"; }
check() { # DESCRIPTION COMMAND...: runs COMMAND, fails the test with DESCRIPTION
	local what="$1"
	shift
	"$@" >/dev/null || die "$what"
	printf '  ok  %s\n' "$what"
}
# until_ok DESCRIPTION TIMEOUT COMMAND...
until_ok() {
	local what="$1" timeout="$2" deadline
	shift 2
	deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || die "timed out after ${timeout}s: $what"
		sleep 0.5
	done
	printf '  ok  %s\n' "$what"
}

# ---------------------------------------------------------------- 1. server-side dry runs
step "prometheus-operator $PROM_OPERATOR_VERSION CRDs (ServiceMonitor, PodMonitor, PrometheusRule); namespaces"
for crd in servicemonitors podmonitors prometheusrules; do
	k apply --server-side -f "$prom_crds/monitoring.coreos.com_$crd.yaml" >/dev/null
done
k apply --server-side -f "$CHART/crds/" >/dev/null
k wait --for=condition=Established crd --all --timeout=60s >/dev/null
# The operator's namespace enforces the restricted Pod Security Standard.
k create namespace "$NS" >/dev/null
k label namespace "$NS" pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/enforce-version=latest >/dev/null
k create namespace monitoring >/dev/null
k create namespace "$APPS" >/dev/null
check "Pod Security admission is enforcing in $NS (a privileged pod is refused)" \
	bash -c "! '$KUBECTL' -n '$NS' run psa-probe --image=busybox --privileged --dry-run=server >/dev/null 2>&1"

step "every combination accepted by the API server (server-side dry run)"
for f in "" "$CHART"/ci/*-values.yaml; do
	args=()
	[[ -z $f ]] || args=(--values "$f")
	h template "$RELEASE" "$CHART" --namespace "$NS" "${args[@]}" >"$work/render.yaml"
	check "dry run: ${f:+$(basename "$f")}${f:-default values}" \
		k apply --server-side --dry-run=server --field-manager=helm -f "$work/render.yaml" -o name >/dev/null
done

# ---------------------------------------------------------------- 2. install, upgrade
# A 2 s S3 poll that also runs objects already there, so the trigger check is quick.
printf 'runs: {pollSeconds: 2, pollRunExisting: true}\n' >"$work/test-values.yaml"
step "helm install (with the monitoring objects)"
h install "$RELEASE" "$CHART" --namespace "$NS" --values "$CHART/ci/monitoring-values.yaml" \
	--values "$work/test-values.yaml" --wait --timeout 120s >"$work/install.txt"
grep -q "rollout status deployment/$SA" "$work/install.txt" || die "helm install printed no NOTES"
check "operator Deployment Available" k -n "$NS" wait deploy/"$SA" --for=condition=Available --timeout=60s
check "its pod is Ready (admitted under the restricted standard)" \
	k -n "$NS" wait pod -l app.kubernetes.io/instance="$RELEASE" --for=condition=Ready --timeout=60s
for kind in servicemonitor podmonitor prometheusrule networkpolicy service serviceaccount role rolebinding; do
	check "$kind installed" bash -c "'$KUBECTL' -n '$NS' get '$kind' -l app.kubernetes.io/instance=$RELEASE -o name | grep -q ."
done
check "dashboards ConfigMap in namespace monitoring" k -n monitoring get configmap "$SA-dashboards" -o name

step "helm upgrade to 2 replicas"
h upgrade "$RELEASE" "$CHART" --namespace "$NS" --values "$CHART/ci/monitoring-values.yaml" \
	--values "$CHART/ci/ha-values.yaml" --values "$work/test-values.yaml" --wait --timeout 120s >/dev/null
check "2 ready replicas" bash -c "[[ \$('$KUBECTL' -n '$NS' get deploy/'$SA' -o jsonpath='{.status.readyReplicas}') == 2 ]]"
check "Available after the upgrade" k -n "$NS" wait deploy/"$SA" --for=condition=Available --timeout=60s
check "PodDisruptionBudget made" k -n "$NS" get pdb "$SA" -o name
check "release at revision 2, deployed" bash -c "'$HELM' -n '$NS' status '$RELEASE' -o json | '$PY' -c 'import json,sys; s=json.load(sys.stdin); sys.exit(not (s[\"version\"] == 2 and s[\"info\"][\"status\"] == \"deployed\"))'"
h -n "$NS" get manifest "$RELEASE" >"$work/manifest.yaml"

# ---------------------------------------------------------------- 3. the operator as the SA
step "the real operator with the chart's ServiceAccount token and the Deployment's environment"
# kwok only pretends to run the chart's pods; scale them to zero so the one operator
# that really runs is this one (and it finds the Lease free).
k -n "$NS" scale deploy/"$SA" --replicas=0 >/dev/null
token="$(k -n "$NS" create token "$SA" --duration=1h)"
server="$(k config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')"
ca="$(k config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
sa_kubeconfig="$work/sa.kubeconfig"
cat >"$sa_kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: testenv, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: $SA, user: {token: "$token"}}]
contexts: [{name: sa, context: {cluster: testenv, user: $SA, namespace: $NS}}]
current-context: sa
EOF
chmod 600 "$sa_kubeconfig"
check "the token is the ServiceAccount's" bash -c "'$KUBECTL' --kubeconfig '$sa_kubeconfig' auth whoami -o jsonpath='{.status.userInfo.username}' | grep -qx '$USER_NAME'"
# The container's environment as the chart renders it (values, not downward API or
# Secret references, none of which this release uses), here.
k -n "$NS" get deploy/"$SA" -o json | "$PY" "$CHART_TESTS/check.py" env >"$work/env.sh"
grep -q VFLOW_OPERATOR_LEADER_ELECT=true "$work/env.sh" || die "the chart's Deployment does not turn leader election on"
(
	# shellcheck disable=SC1091
	source "$work/env.sh"
	export POD_NAME=chart-test-operator POD_NAMESPACE="$NS" VFLOW_OPERATOR_HTTP_ADDR="$operator_http"
	export KUBECONFIG="$sa_kubeconfig" VFLOW_OPERATOR_LOG_FORMAT=text
	exec "$operator_bin" --leader-elect=true
) >"$work/operator.log" 2>&1 &
operator_pid=$!
until_ok "operator /readyz" 60 curl -sf "http://$operator_http/readyz"
until_ok "the operator holds the Lease $NS/$SA" 30 \
	bash -c "[[ \$('$KUBECTL' -n '$NS' get lease '$SA' -o jsonpath='{.spec.holderIdentity}') == chart-test-operator ]]"

step "S3 on loopback (s3s-fs on $s3_port) for the run controller; the workflows' Secret"
mkdir -p "$work/s3/videos/inputs" "$work/s3/videos/incoming/thumbnails"
head -c 4096 /dev/urandom >"$work/s3/videos/inputs/bbb_0-30s_720p_vp8.webm"
head -c 4096 /dev/urandom >"$work/s3/videos/incoming/thumbnails/clip.mp4"
"$s3s_fs" --host 127.0.0.1 --port "$s3_port" --access-key vflow-test --secret-key vflow-test-secret \
	"$work/s3" >"$work/s3s.log" 2>&1 &
s3_pid=$!
until_ok "s3s-fs listening" 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$s3_port"
k -n "$APPS" create secret generic vflow-s3 --from-literal=AWS_ACCESS_KEY_ID=vflow-test \
	--from-literal=AWS_SECRET_ACCESS_KEY=vflow-test-secret >/dev/null
# The examples, with their bucket on this S3 server.
example() { sed "s|http://minio.vflow-system.svc:9000|http://127.0.0.1:$s3_port|" "$REPO_ROOT/manifests/examples/$1"; }

step "an example workflow and its profiles (namespace $APPS)"
k -n "$APPS" apply -f "$REPO_ROOT/manifests/examples/profiles.yaml" >/dev/null
example transcode-ladder.yaml | k -n "$APPS" apply -f - >/dev/null
until_ok "VideoWorkflow transcode-ladder Ready" 60 k -n "$APPS" wait vwf/transcode-ladder --for=condition=Ready --timeout=2s
stages=(split scale-1080p scale-720p scale-480p stitch-1080p stitch-720p stitch-480p package)
for s in "${stages[@]}"; do
	k -n "$APPS" get deploy/"transcode-ladder-$s" svc/"transcode-ladder-$s" -o name >/dev/null || die "no Deployment/Service transcode-ladder-$s"
done
printf '  ok  %s\n' "${#stages[@]} stage Deployments and Services"
until_ok "a FunctionProfile status written (profile controller)" 30 \
	bash -c "[[ -n \$('$KUBECTL' -n '$APPS' get fprof scale -o jsonpath='{.status.conditions}') ]]"

step "removing two stages deletes their children"
# (package, stage 7, takes stitch-480p as its third input: that goes first)
k -n "$APPS" patch vwf transcode-ladder --type=json \
	-p '[{"op":"remove","path":"/spec/stages/7/after/2"},{"op":"remove","path":"/spec/stages/6"},{"op":"remove","path":"/spec/stages/3"}]' >/dev/null
until_ok "Deployments and Services of scale-480p and stitch-480p deleted" 30 \
	bash -c "[[ -z \$('$KUBECTL' -n '$APPS' get deploy,svc -o name | grep 480p) ]]"

step "an invalid workflow gets an Event"
example transcode-ladder.yaml | sed -e 's/name: transcode-ladder/name: broken-ladder/' -e 's/function: stitch/function: stich/' |
	k -n "$APPS" apply -f - >/dev/null
until_ok "a Warning Event on broken-ladder" 30 \
	bash -c "'$KUBECTL' -n '$APPS' get events.events.k8s.io --field-selector regarding.name=broken-ladder,type=Warning -o name | grep -q ."

step "the run controller: a VideoWorkflowRun, a run from an S3 object, TTL deletion"
# Runs cannot finish here (kwok's pods run nothing; the stage Services do not resolve
# from this machine), but they get as far as invoking their first stage.
k -n "$APPS" apply -f "$REPO_ROOT/manifests/examples/run.yaml" >/dev/null
example thumbnails.yaml | k -n "$APPS" apply -f - >/dev/null
k -n "$APPS" apply -f - >/dev/null <<EOF
apiVersion: vflow.io/v1alpha1
kind: VideoWorkflowRun
metadata: {name: broken-run}
spec: {workflowRef: {name: broken-ladder}, input: inputs/bbb_0-30s_720p_vp8.webm, ttlSecondsAfterFinished: 0}
EOF
until_ok "run ladder-bbb Running (status written)" 45 \
	bash -c "[[ \$('$KUBECTL' -n '$APPS' get vwr ladder-bbb -o jsonpath='{.status.phase}') == Running ]]"
until_ok "its first stage asked for capacity: the operator scaled transcode-ladder-split up" 45 \
	bash -c "(( \$('$KUBECTL' -n '$APPS' get deploy transcode-ladder-split -o jsonpath='{.spec.replicas}') >= 1 ))"
check "the run side left the user's workflow unannotated" \
	bash -c "[[ -z \$('$KUBECTL' -n '$APPS' get vwf transcode-ladder -o jsonpath='{.metadata.annotations.vflow\\.io/in-flight}') ]]"
until_ok "a run created by the S3 poller for incoming/thumbnails/clip.mp4" 30 \
	bash -c "'$KUBECTL' -n '$APPS' get vwr -l vflow.io/trigger=s3-poll,vflow.io/workflow=thumbnails -o name | grep -q ."
until_ok "the run of the invalid workflow failed and was deleted at once (TTL 0)" 45 \
	grep -q "deleted a finished run after its TTL.*broken-run" "$work/operator.log"
check "broken-run is gone" bash -c "! '$KUBECTL' -n '$APPS' get vwr broken-run >/dev/null 2>&1"

# At least one Lease renewal (every renewSeconds, 5); the observer listed the pods at
# its start.
sleep 6
check "operator still running" kill -0 "$operator_pid"
kill -TERM "$operator_pid"
wait "$operator_pid" || die "the operator exited with $? on SIGTERM"
operator_pid=""
check "the Lease released on SIGTERM" bash -c "[[ -z \$('$KUBECTL' -n '$NS' get lease '$SA' -o jsonpath='{.spec.holderIdentity}') ]]"
if grep -i forbidden "$work/operator.log" >&2; then
	die "the operator log has 'forbidden' (above)"
fi
printf '  ok  no "forbidden" in the operator log (%s lines)\n' "$(wc -l <"$work/operator.log")"

# ---------------------------------------------------------------- 4. least privilege
step "what the ServiceAccount used (audit log) against what the chart grants"
"$PY" "$CHART_TESTS/check.py" audit "$audit_log" "$USER_NAME" "$work/manifest.yaml" \
	--allow-unused "$CHART_TESTS/unused-grants.txt"
step "kubectl auth can-i: what it must not do"
cannot() { # VERB RESOURCE [ARGS]
	local out
	out="$(k auth can-i "$@" --as="$USER_NAME" 2>/dev/null || true)"
	[[ $out == no ]] || die "the ServiceAccount can $* ($out)"
	printf '  ok  cannot %s\n' "$*"
}
cannot list secrets --all-namespaces
cannot watch secrets --all-namespaces
# It makes each workflow's token Secret (create), but can change or remove none.
cannot update secrets -n "$APPS"
cannot patch secrets -n "$APPS"
cannot delete secrets -n "$APPS"
cannot delete pods -n "$APPS"
cannot create pods -n "$APPS"
cannot create pods/exec -n "$APPS"
cannot get pods/log -n "$APPS"
cannot update deployments -n "$APPS"
cannot delete videoworkflows -n "$APPS"
cannot patch videoworkflows -n "$APPS"
cannot create videoworkflows -n "$APPS"
cannot update functionprofiles -n "$APPS"
cannot get leases -n "$APPS"
cannot update leases -n kube-system
cannot list nodes
cannot create clusterrolebindings
cannot escalate clusterroles
cannot bind clusterroles
cannot impersonate serviceaccounts
cannot '*' '*' --all-namespaces
cannot '*' deployments.apps -n "$APPS"

# ---------------------------------------------------------------- 5. uninstall
step "helm uninstall"
h uninstall "$RELEASE" --namespace "$NS" --wait --timeout 60s >/dev/null
left="$(k get deploy,rs,pods,svc,sa,role,rolebinding,networkpolicy,pdb,servicemonitor,podmonitor,prometheusrule,configmap \
	-A -l app.kubernetes.io/instance="$RELEASE" -o name 2>&1)"
left+="$(k get clusterrole,clusterrolebinding -l app.kubernetes.io/instance="$RELEASE" -o name 2>&1)"
[[ -z $left ]] || die "left after helm uninstall: $left"
printf '  ok  %s\n' "nothing of the release left"
until_ok "the ServiceAccount's token stops working" 30 \
	bash -c "! '$KUBECTL' --kubeconfig '$sa_kubeconfig' get vwf -A >/dev/null 2>&1"
check "the CRDs stay (Helm never deletes crds/)" k get crd videoworkflows.vflow.io functionprofiles.vflow.io videoworkflowruns.vflow.io -o name

step "chart-test passed in $((SECONDS - start))s"
