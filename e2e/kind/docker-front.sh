#!/usr/bin/env bash
# A `docker` in front of the real one, first on PATH for kind only. On hosts whose
# capability bounding set lacks CAP_SYS_RESOURCE (these machines), `docker run
# --privileged` fails: runc cannot grant the full set. kind asks for it for every node,
# so the flag becomes what it stands for, minus that one capability: every other
# capability, all devices, unmasked /proc and /sys. The node's entrypoint then remounts
# the cgroup hierarchies read-write (node-image/entrypoint-fixups.sh). `docker exec
# --privileged` fails the same way; without the flag the process gets the container's
# own capabilities. Everything else goes to the real docker unchanged.
set -euo pipefail
real="${VFLOW_REAL_DOCKER:-/usr/bin/docker}"
case "${1:-}" in
run)
	args=()
	for arg in "$@"; do
		if [[ $arg == --privileged ]]; then
			args+=(--cap-add=ALL --cap-drop=SYS_RESOURCE --security-opt=systempaths=unconfined
				"--device-cgroup-rule=a *:* rwm")
			for dev in /dev/kmsg /dev/fuse; do
				if [[ -e $dev ]]; then args+=("--device=$dev"); fi
			done
		else
			args+=("$arg")
		fi
	done
	exec "$real" "${args[@]}"
	;;
exec)
	args=()
	for arg in "$@"; do
		if [[ $arg != --privileged ]]; then args+=("$arg"); fi
	done
	exec "$real" "${args[@]}"
	;;
esac
exec "$real" "$@"
