#!/usr/bin/env bash
# Runs a command against e2e/testenv: starts a fresh control plane unless one is already
# up (then uses it and leaves it up), and stops the one it started, also on failure.
#   e2e/operator/run.sh cargo test -p vflow-operator --test e2e -- --ignored --test-threads=1
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts=e2e/testenv/scripts
state="${VFLOW_TESTENV_DIR:-/tmp/vflow-testenv}"
kubectl="${VFLOW_TESTENV_BIN:-${VFLOW_TESTENV_CACHE:-$HOME/.cache/vflow-testenv}/bin}/kubectl"

started=0
if [[ -f $state/kubeconfig ]] && "$kubectl" --kubeconfig "$state/kubeconfig" get --raw /readyz >/dev/null 2>&1; then
	echo "[e2e-operator] using the testenv that is already up" >&2
else
	"$scripts/up.sh" >/dev/null
	started=1
fi
# down.sh fails when anything tried to leave the machine (the egress guard): so do we.
stop() {
	local rc=$?
	if ((started)); then "$scripts/down.sh" >&2 || rc=1; fi
	exit "$rc"
}
trap stop EXIT
export VFLOW_E2E_KUBECONFIG="$state/kubeconfig"
"$@"
