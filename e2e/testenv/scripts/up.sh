#!/usr/bin/env bash
# Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
# on 127.0.0.1 with a fresh CA, fresh certificates and a fresh etcd, creates
# $VFLOW_TESTENV_NODES fake nodes and waits until they are Ready.
# Builds the binaries first when they are missing or stale (scripts/build.sh).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for tool in openssl curl base64 setsid; do
	command -v "$tool" >/dev/null || die "$tool is missing (apt-get install -y openssl curl util-linux coreutils)"
done

running=()
for c in "${COMPONENTS[@]}"; do
	if pid_of "$c" >/dev/null; then running+=("$c"); fi
done
if ((${#running[@]} == ${#COMPONENTS[@]})); then
	log "already up (state in $STATE_DIR)"
	echo "export KUBECONFIG=$KUBECONFIG_PATH"
	exit 0
fi
if ((${#running[@]} > 0)); then
	log "partly up (${running[*]} running): stopping those first"
	"$TESTENV_SRC/scripts/down.sh"
fi

"$TESTENV_SRC/scripts/build.sh"

for port in "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$KCM_PORT" "$SCHEDULER_PORT"; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		die "port $port on 127.0.0.1 is already taken (see README.md to pick other ports)"
	fi
done

# Nothing the tests start may reach an address off this machine while the testenv is up
# (the fake pods' and Services' addresses included): see egress-guard.sh.
"$TESTENV_SRC/scripts/egress-guard.sh" on "$STATE_DIR"

# Parse the pod ready delay: 1500ms, 2s, 1m, or a bare number of seconds.
if [[ $POD_READY_DELAY =~ ^([0-9]+)(ms|s|m)?$ ]]; then
	case "${BASH_REMATCH[2]}" in
	ms) ready_delay_ms=${BASH_REMATCH[1]} ;;
	m) ready_delay_ms=$((BASH_REMATCH[1] * 60000)) ;;
	*) ready_delay_ms=$((BASH_REMATCH[1] * 1000)) ;;
	esac
else
	die "VFLOW_TESTENV_POD_READY_DELAY=$POD_READY_DELAY: want e.g. 500ms, 2s, 1m"
fi

# A fresh state directory each time: certificates, etcd data, logs, PIDs.
rm -rf "$STATE_DIR"
mkdir -p "$STATE_DIR"/{pki,logs,pids,etcd,kwok}
chmod 700 "$STATE_DIR"
pki="$STATE_DIR/pki"

# ---------------------------------------------------------------- certificates
log "generating CA, certificates and service-account keys in $pki"
newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# ca NAME: a self-signed CA.
ca() {
	newkey "$pki/$1.key"
	openssl req -x509 -new -key "$pki/$1.key" -subj "/CN=vflow-testenv-$1" -days 3650 \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		-out "$pki/$1.crt"
}
ca ca
# The front-proxy CA signs the API server's client certificate for aggregated
# API servers, and lets components trust request headers coming from it.
ca front-proxy-ca

# cert NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES] [CA]
cert() {
	local name="$1" subject="$2" eku="$3" san="${4:-}" signer="${5:-ca}" ext="$pki/$1.ext"
	newkey "$pki/$name.key"
	openssl req -new -key "$pki/$name.key" -subj "$subject" -out "$pki/$name.csr"
	{
		echo "basicConstraints=critical,CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=$eku"
		if [[ -n $san ]]; then echo "subjectAltName=$san"; fi
	} >"$ext"
	openssl x509 -req -in "$pki/$name.csr" -CA "$pki/$signer.crt" -CAkey "$pki/$signer.key" \
		-set_serial "0x$(openssl rand -hex 16)" -days 3650 -extfile "$ext" \
		-out "$pki/$name.crt" 2>/dev/null
	rm -f "$pki/$name.csr" "$ext"
}

cert apiserver "/CN=kube-apiserver" serverAuth \
	"IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert admin "/O=system:masters/CN=vflow-admin" clientAuth
cert controller-manager "/CN=system:kube-controller-manager" clientAuth
cert scheduler "/CN=system:kube-scheduler" clientAuth
cert front-proxy-client "/CN=front-proxy-client" clientAuth "" front-proxy-ca
newkey "$pki/sa.key"
openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

# kubeconfig FILE USER: a kubeconfig with the certificates embedded.
kubeconfig() {
	local file="$1" user="$2"
	cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: vflow-testenv
  cluster:
    server: $API_URL
    certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$pki/$user.crt")
    client-key-data: $(base64 -w0 <"$pki/$user.key")
contexts:
- name: vflow-testenv
  context:
    cluster: vflow-testenv
    user: $user
    namespace: default
current-context: vflow-testenv
EOF
	chmod 600 "$file"
}
kubeconfig "$KUBECONFIG_PATH" admin
kubeconfig "$STATE_DIR/controller-manager.kubeconfig" controller-manager
kubeconfig "$STATE_DIR/scheduler.kubeconfig" scheduler

# Opt-in: the API server's audit log (JSON lines in logs/audit.log) under the policy in
# VFLOW_TESTENV_AUDIT_POLICY, e.g. to see which verbs a ServiceAccount uses.
audit=()
if [[ -n ${VFLOW_TESTENV_AUDIT_POLICY:-} ]]; then
	[[ -f $VFLOW_TESTENV_AUDIT_POLICY ]] || die "VFLOW_TESTENV_AUDIT_POLICY=$VFLOW_TESTENV_AUDIT_POLICY: no such file"
	audit=(--audit-policy-file="$VFLOW_TESTENV_AUDIT_POLICY" --audit-log-path="$STATE_DIR/logs/audit.log"
		--audit-log-format=json --audit-log-mode=blocking)
fi

# ---------------------------------------------------------------- processes
fail() {
	local name="$1"
	shift
	log "$name failed to start: $*"
	if [[ -f $STATE_DIR/logs/$name.log ]]; then
		log "last lines of $STATE_DIR/logs/$name.log:"
		tail -n 40 "$STATE_DIR/logs/$name.log" >&2
	fi
	"$TESTENV_SRC/scripts/down.sh" || true
	exit 1
}

# start NAME ARGS...: runs $BIN_DIR/NAME in its own session, detached from
# this shell, logging to logs/NAME.log and recording its PID in pids/NAME.pid.
start() {
	local name="$1" pid exe i
	shift
	setsid "$BIN_DIR/$name" "$@" >"$STATE_DIR/logs/$name.log" 2>&1 </dev/null &
	pid=$!
	echo "$pid" >"$STATE_DIR/pids/$name.pid"
	# Until setsid has exec'd the binary, $pid runs the shell's fork or setsid, and
	# pid_of (which checks the executable, so as never to take another process for
	# ours) would call it gone: on a busy machine CI failed with "kube-controller-manager
	# failed to start: process exited" and an empty log. Wait for the exec (or the end).
	for ((i = 0; i < 200; i++)); do
		exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || break
		[[ $exe == "$BIN_DIR/$name" ]] && break
		sleep 0.05
	done
	log "started $name (pid $pid)"
}

# await NAME TIMEOUT COMMAND...: waits for COMMAND to succeed while NAME runs.
await() {
	local name="$1" timeout="$2" deadline
	shift 2
	deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		pid_of "$name" >/dev/null || fail "$name" "process exited"
		((SECONDS < deadline)) || fail "$name" "not healthy after ${timeout}s"
		sleep 0.5
	done
}

curl_() { curl --silent --show-error --fail --max-time 5 "$@"; }

start etcd \
	--name=vflow-testenv \
	--data-dir="$STATE_DIR/etcd" \
	--listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
	--advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
	--listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
	--initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
	--initial-cluster="vflow-testenv=http://127.0.0.1:$ETCD_PEER_PORT" \
	--initial-cluster-state=new \
	--unsafe-no-fsync=true
await etcd 60 curl_ "http://127.0.0.1:$ETCD_PORT/health"

start kube-apiserver \
	--bind-address=127.0.0.1 \
	--advertise-address=127.0.0.1 \
	--endpoint-reconciler-type=none \
	--secure-port="$APISERVER_PORT" \
	--etcd-servers="http://127.0.0.1:$ETCD_PORT" \
	--tls-cert-file="$pki/apiserver.crt" \
	--tls-private-key-file="$pki/apiserver.key" \
	--client-ca-file="$pki/ca.crt" \
	--service-account-issuer=https://kubernetes.default.svc.cluster.local \
	--service-account-key-file="$pki/sa.pub" \
	--service-account-signing-key-file="$pki/sa.key" \
	--service-cluster-ip-range=10.96.0.0/16 \
	--requestheader-client-ca-file="$pki/front-proxy-ca.crt" \
	--requestheader-allowed-names=front-proxy-client \
	--requestheader-username-headers=X-Remote-User \
	--requestheader-group-headers=X-Remote-Group \
	--requestheader-extra-headers-prefix=X-Remote-Extra- \
	--proxy-client-cert-file="$pki/front-proxy-client.crt" \
	--proxy-client-key-file="$pki/front-proxy-client.key" \
	--authorization-mode=Node,RBAC \
	--allow-privileged=true \
	--profiling=false \
	"${audit[@]}"
await kube-apiserver 120 curl_ --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
	"$API_URL/readyz"

start kube-controller-manager \
	--kubeconfig="$STATE_DIR/controller-manager.kubeconfig" \
	--authentication-kubeconfig="$STATE_DIR/controller-manager.kubeconfig" \
	--authorization-kubeconfig="$STATE_DIR/controller-manager.kubeconfig" \
	--bind-address=127.0.0.1 \
	--secure-port="$KCM_PORT" \
	--cert-dir="$STATE_DIR/pki/controller-manager-serving" \
	--leader-elect=false \
	--use-service-account-credentials=true \
	--service-account-private-key-file="$pki/sa.key" \
	--root-ca-file="$pki/ca.crt" \
	--cluster-signing-cert-file="$pki/ca.crt" \
	--cluster-signing-key-file="$pki/ca.key" \
	--controllers='*' \
	--profiling=false

start kube-scheduler \
	--kubeconfig="$STATE_DIR/scheduler.kubeconfig" \
	--authentication-kubeconfig="$STATE_DIR/scheduler.kubeconfig" \
	--authorization-kubeconfig="$STATE_DIR/scheduler.kubeconfig" \
	--bind-address=127.0.0.1 \
	--secure-port="$SCHEDULER_PORT" \
	--cert-dir="$STATE_DIR/pki/scheduler-serving" \
	--leader-elect=false \
	--profiling=false

# Fake pods get loopback addresses: a dial to a pod IP (the operator's observer scrapes
# them) stays on this machine, where a test's stand-in process may listen.
sed "s/@POD_READY_DELAY_MS@/$ready_delay_ms/" "$TESTENV_SRC/kwok/stages.yaml" >"$STATE_DIR/kwok/stages.yaml"
start kwok \
	--kubeconfig="$KUBECONFIG_PATH" \
	--config="$STATE_DIR/kwok/stages.yaml" \
	--manage-all-nodes=false \
	--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
	--node-lease-duration-seconds=40 \
	--cidr=127.244.0.0/16 \
	--node-ip=127.0.0.1

await kube-controller-manager 60 curl_ -k "https://127.0.0.1:$KCM_PORT/healthz"
await kube-scheduler 60 curl_ -k "https://127.0.0.1:$SCHEDULER_PORT/healthz"

# ---------------------------------------------------------------- fake nodes
node_manifest() {
	local i
	for ((i = 0; i < NODE_COUNT; i++)); do
		cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: kwok-node-$i
    node-role.kubernetes.io/agent: ""
status:
  capacity: &resources
    cpu: "${VFLOW_TESTENV_NODE_CPU:-32}"
    memory: "${VFLOW_TESTENV_NODE_MEMORY:-256Gi}"
    pods: "${VFLOW_TESTENV_NODE_PODS:-110}"
    nvidia.com/gpu: "${VFLOW_TESTENV_NODE_GPUS:-8}"
    ephemeral-storage: 1Ti
  allocatable: *resources
EOF
	done
}
node_manifest | kubectl_ apply -f - >/dev/null || fail kwok "could not create the fake nodes"
await kwok 60 kubectl_ wait --for=condition=Ready node --selector=type=kwok --timeout=2s
# Pods need the namespace's default service account, made by the controller-manager.
await kube-controller-manager 60 kubectl_ get serviceaccount default --namespace=default

log "up: API server $API_URL, $NODE_COUNT kwok nodes, pods Ready after ${ready_delay_ms}ms; logs in $STATE_DIR/logs"
log "kubectl $KUBE_VERSION is $BIN_DIR/kubectl"
echo "export KUBECONFIG=$KUBECONFIG_PATH"
