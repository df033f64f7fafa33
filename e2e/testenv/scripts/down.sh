#!/usr/bin/env bash
# Stops every testenv process: SIGTERM to all, up to
# $VFLOW_TESTENV_STOP_TIMEOUT seconds (default 15) to exit, then SIGKILL.
# Processes are found by their PID files and, in case a PID file was lost, by
# being one of our binaries started with this state directory on its command
# line. Fails if any of them is still alive at the end. Keeps the logs; set
# VFLOW_TESTENV_CLEAN=1 to remove the state directory too.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ours: PIDs of live processes that run one of our binaries and mention
# $STATE_DIR in their arguments, plus those in the PID files.
ours() {
	local c pid exe
	for c in "${COMPONENTS[@]}"; do pid_of "$c" || true; done
	for exe in /proc/[0-9]*/exe; do
		pid="${exe#/proc/}"
		pid="${pid%/exe}"
		exe="$(readlink "$exe" 2>/dev/null)" || continue
		exe="${exe% (deleted)}"
		[[ $exe == "$BIN_DIR"/* ]] || continue
		tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$STATE_DIR/" && echo "$pid"
	done
	return 0
}

# SIGTERM to all at once (newest first), then wait for all of them.
pids=()
for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
	c="${COMPONENTS[i]}"
	if pid="$(pid_of "$c")"; then
		log "stopping $c (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		pids+=("$pid")
	fi
	rm -f "$STATE_DIR/pids/$c.pid"
done
deadline=$((SECONDS + ${VFLOW_TESTENV_STOP_TIMEOUT:-15}))
for pid in "${pids[@]}"; do
	while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
	if kill -0 "$pid" 2>/dev/null; then
		log "pid $pid did not exit on SIGTERM; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
	fi
done

# Strays whose PID file was lost.
mapfile -t strays < <(ours | sort -u)
if ((${#strays[@]} > 0)); then
	log "killing leftover testenv processes: ${strays[*]}"
	kill -KILL "${strays[@]}" 2>/dev/null || true
fi

deadline=$((SECONDS + 10))
while :; do
	mapfile -t left < <(ours | sort -u)
	((${#left[@]} == 0)) && break
	if ((SECONDS >= deadline)); then
		die "processes still alive: ${left[*]}"
	fi
	sleep 0.2
done

if [[ ${VFLOW_TESTENV_CLEAN:-} == 1 ]]; then
	rm -rf "$STATE_DIR"
	log "removed $STATE_DIR"
fi
# Fails, naming each address, when anything tried to leave the machine meanwhile.
"$TESTENV_SRC/scripts/egress-guard.sh" off "$STATE_DIR" ||
	die "traffic to addresses off this machine was refused while the testenv was up (above)"

if ((${#pids[@]} + ${#strays[@]} == 0)); then
	log "nothing was running"
else
	log "down: stopped $((${#pids[@]} + ${#strays[@]})) processes; logs kept in $STATE_DIR/logs"
fi
