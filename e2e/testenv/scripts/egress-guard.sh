#!/usr/bin/env bash
# The testenv's egress guard: while any testenv is up, nothing on this host may reach a
# private or link-local address (the fake pods' and Services' ranges included), which
# would leave the machine through its default route. Tests may talk to loopback, to the
# machine's DNS resolvers on port 53, and to the bridges of containers they start.
#
#   egress-guard.sh on OWNER    install the guard (once) and register OWNER (a state dir)
#   egress-guard.sh off OWNER   unregister OWNER; remove the guard when no owner is left;
#                               fails, naming each address, if anything was refused
#   egress-guard.sh report      what was refused since the guard was installed
#
# The guard is an iptables chain jumped to first from OUTPUT: such packets are logged
# (kernel log, prefix "vflow-egress[ID]:") and rejected at once (TCP reset, ICMP port
# unreachable), so the dialler fails loudly with the address instead of timing out.
# VFLOW_TESTENV_EGRESS_GUARD=off skips it (a machine without root or iptables); CI
# never sets it.
set -euo pipefail

CHAIN=VFLOW_EGRESS
GUARD_DIR="${VFLOW_EGRESS_GUARD_DIR:-/run/vflow-egress-guard}"
# Private (RFC 1918), shared (RFC 6598) and link-local ranges: never ours on this host.
RANGES=(10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 100.64.0.0/10 169.254.0.0/16)

log() { printf '[egress-guard] %s\n' "$*" >&2; }
die() {
	printf '[egress-guard] ERROR: %s\n' "$*" >&2
	exit 1
}

if [[ ${VFLOW_TESTENV_EGRESS_GUARD:-on} == off ]]; then
	exit 0
fi
command -v iptables >/dev/null ||
	die "iptables is missing (apt-get install -y iptables); VFLOW_TESTENV_EGRESS_GUARD=off runs without the guard"

owner_file() { printf '%s/owners/%s' "$GUARD_DIR" "$(printf '%s' "$1" | sha256sum | cut -c1-16)"; }

installed() { iptables -n -L "$CHAIN" >/dev/null 2>&1; }

install() {
	local id ns net
	id="$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
	iptables -A "$CHAIN" -o lo -j RETURN
	# DNS to the machine's resolvers (which may have private addresses).
	while read -r ns; do
		[[ $ns == *:* ]] && continue
		iptables -A "$CHAIN" -d "$ns" -p udp --dport 53 -j RETURN
		iptables -A "$CHAIN" -d "$ns" -p tcp --dport 53 -j RETURN
	done < <(awk '$1 == "nameserver" { print $2 }' /etc/resolv.conf)
	# Containers and kind nodes the tests start: their own network namespaces.
	iptables -A "$CHAIN" -o docker0 -j RETURN
	iptables -A "$CHAIN" -o br-+ -j RETURN
	iptables -A "$CHAIN" -o veth+ -j RETURN
	for net in "${RANGES[@]}"; do
		iptables -A "$CHAIN" -d "$net" -m limit --limit 50/second -j LOG --log-prefix "vflow-egress[$id]: "
		iptables -A "$CHAIN" -d "$net" -p tcp -j REJECT --reject-with tcp-reset
		iptables -A "$CHAIN" -d "$net" -j REJECT --reject-with icmp-port-unreachable
	done
	iptables -I OUTPUT 1 -j "$CHAIN"
	printf '%s\n' "$id" >"$GUARD_DIR/id"
	log "on: TCP/UDP from this host to ${RANGES[*]} is refused (but DNS to the resolvers and container bridges)"
}

uninstall() {
	while iptables -D OUTPUT -j "$CHAIN" 2>/dev/null; do :; done
	iptables -F "$CHAIN" 2>/dev/null || true
	iptables -X "$CHAIN" 2>/dev/null || true
	rm -f "$GUARD_DIR/id" "$GUARD_DIR/skip"
	log "off"
}

# log_lines: how many kernel log lines the guard has written since it was installed.
log_lines() {
	dmesg 2>/dev/null | grep -cF "vflow-egress[$(cat "$GUARD_DIR/id")]: " || true
}

# report: prints what was refused; fails when anything was.
report() {
	installed || return 0
	local refused id
	refused="$(iptables -n -v -x -L "$CHAIN" | awk '$3 == "REJECT" { n += $1 } END { print n + 0 }')"
	((refused == 0)) && return 0
	id="$(cat "$GUARD_DIR/id" 2>/dev/null || true)"
	log "ERROR: $refused packet(s) to addresses outside this machine were refused while the testenv was up:"
	if [[ -n $id ]] && dmesg >/dev/null 2>&1; then
		dmesg | grep -F "vflow-egress[$id]: " | tail -n +"$(($(cat "$GUARD_DIR/skip" 2>/dev/null || echo 0) + 1))" |
			sed -E 's/.* DST=([^ ]+).* PROTO=([A-Z]+)( SPT=[0-9]+ DPT=([0-9]+))?.*/\2 \1:\4/' |
			sort | uniq -c | sort -rn | sed 's/^/[egress-guard]   /' >&2
	else
		log "  (the kernel log is not readable here: see iptables -n -v -L $CHAIN)"
	fi
	return 1
}

# selftest: a dial to a guarded address must fail at once and be reported by address;
# then the counters and the log tag start afresh, so the report holds only real hits.
selftest() {
	local probe=10.255.255.1 port=9 start out
	start=$(date +%s%N)
	if timeout 5 bash -c "exec 3<>/dev/tcp/$probe/$port" 2>/dev/null; then
		die "selftest: a connection to $probe:$port was not refused"
	fi
	(($(date +%s%N) - start < 2000000000)) || die "selftest: the dial to $probe:$port was not refused at once"
	out="$(report 2>&1)" && die "selftest: the refused dial to $probe:$port was not counted"
	if dmesg >/dev/null 2>&1; then
		grep -qF "$probe:$port" <<<"$out" || die "selftest: the report does not name $probe:$port: $out"
	fi
	iptables -Z "$CHAIN"
	# The report skips the log lines so far (the selftest's).
	log_lines >"$GUARD_DIR/skip"
}

# Owners whose testenv is gone (killed without down.sh) no longer hold the guard; one
# registered in the last two minutes may still be starting its API server.
prune() {
	local f dir pid
	for f in "$GUARD_DIR"/owners/*; do
		[[ -f $f ]] || continue
		[[ -n "$(find "$f" -mmin +2)" ]] || continue
		dir="$(<"$f")"
		pid="$(cat "$dir/pids/kube-apiserver.pid" 2>/dev/null || true)"
		if [[ ! $pid =~ ^[0-9]+$ ]] || ! kill -0 "$pid" 2>/dev/null; then
			[[ $dir == "${1:-}" ]] || rm -f "$f"
		fi
	done
}

cmd="${1:-}"
owner="${2:-}"
mkdir -p "$GUARD_DIR/owners"
exec 9>"$GUARD_DIR/lock"
flock 9
case "$cmd" in
on)
	[[ -n $owner ]] || die "usage: $0 on OWNER"
	prune "$owner"
	if ! installed; then
		iptables -N "$CHAIN" ||
			die "could not install the guard (iptables needs root and CAP_NET_ADMIN); VFLOW_TESTENV_EGRESS_GUARD=off runs without it"
		# A guard that fails to install or its selftest is taken down again.
		trap 'uninstall' EXIT
		install
		selftest
		trap - EXIT
	fi
	printf '%s\n' "$owner" >"$(owner_file "$owner")"
	;;
off)
	[[ -n $owner ]] || die "usage: $0 off OWNER"
	rm -f "$(owner_file "$owner")"
	prune
	status=0
	report || status=1
	if [[ -z "$(ls -A "$GUARD_DIR/owners")" ]] && installed; then uninstall; fi
	exit "$status"
	;;
report) report ;;
*) die "usage: $0 on OWNER | off OWNER | report" ;;
esac
