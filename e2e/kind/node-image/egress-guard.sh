#!/bin/bash
# Runs in each kind node before anything resolves a name or the kubelet starts: the
# node, and every pod it hosts, may send out of eth0 only to the kind network (the
# other nodes, and the gateway through which docker's embedded DNS answers). A pod that
# dials a ClusterIP before kube-proxy has written its rules, or any other address, is
# refused at once instead of being routed off the machine. podnet.sh adds the other
# nodes' pod ranges as they appear.
set -euo pipefail
chain=VFLOW-EGRESS
guard() { # guard IPTABLES NETWORK LOOPBACK
	local ipt="$1" net="$2" lo="$3" hook
	"$ipt" -w -N "$chain" 2>/dev/null || "$ipt" -w -F "$chain"
	"$ipt" -w -A "$chain" -d "$net" -j RETURN
	# kind DNATs the gateway's port 53 to docker's resolver on 127.0.0.11; the packet
	# still leaves "through" eth0 after that.
	"$ipt" -w -A "$chain" -d "$lo" -j RETURN
	"$ipt" -w -A "$chain" -p tcp -j REJECT --reject-with tcp-reset
	"$ipt" -w -A "$chain" -j REJECT
	for hook in OUTPUT FORWARD; do
		"$ipt" -w -C "$hook" -o eth0 -j "$chain" 2>/dev/null || "$ipt" -w -I "$hook" -o eth0 -j "$chain"
	done
}
net4="$(ip -4 -o addr show dev eth0 scope global | awk '{ print $4; exit }')"
if [[ -n $net4 ]]; then guard iptables "$net4" 127.0.0.0/8; fi
net6="$(ip -6 -o addr show dev eth0 scope global | awk '{ print $4; exit }')"
if [[ -n $net6 ]]; then guard ip6tables "$net6" ::1/128; fi
echo "vflow egress guard: out of eth0 only to ${net4:-} ${net6:-}"
