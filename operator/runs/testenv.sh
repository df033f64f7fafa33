#!/usr/bin/env bash
# Runs a command against a private e2e/testenv on its own ports and state directory, so
# it never touches a testenv someone else has up; fails at once if those ports are taken.
#   operator/runs/testenv.sh cargo test -p vflow-operator --test runs_cluster -- --ignored --test-threads=1
set -euo pipefail
cd "$(dirname "$0")/../.."
base="${VFLOW_RUNS_PORT_BASE:-31000}"
export VFLOW_TESTENV_DIR="${VFLOW_RUNS_TESTENV_DIR:-/tmp/vflow-testenv-runs}"
export VFLOW_TESTENV_ETCD_PORT=$((base + 1)) VFLOW_TESTENV_ETCD_PEER_PORT=$((base + 2))
export VFLOW_TESTENV_APISERVER_PORT=$((base + 3)) VFLOW_TESTENV_KCM_PORT=$((base + 4))
export VFLOW_TESTENV_SCHEDULER_PORT=$((base + 5)) VFLOW_TESTENV_NODES="${VFLOW_TESTENV_NODES:-1}"
for port in $((base + 1)) $((base + 2)) $((base + 3)) $((base + 4)) $((base + 5)); do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		echo "test-runs: port $port on 127.0.0.1 is taken (another testenv, or a leftover of this one: VFLOW_TESTENV_DIR=$VFLOW_TESTENV_DIR e2e/testenv/scripts/down.sh); pick other ports with VFLOW_RUNS_PORT_BASE" >&2
		exit 1
	fi
done
e2e/testenv/scripts/up.sh >/dev/null
# down.sh fails when anything tried to leave the machine (the egress guard): so do we.
stop() {
	local rc=$?
	e2e/testenv/scripts/down.sh >&2 || rc=1
	exit "$rc"
}
trap stop EXIT
export VFLOW_RUNS_KUBECONFIG="$VFLOW_TESTENV_DIR/kubeconfig"
"$@"
