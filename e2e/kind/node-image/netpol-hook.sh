#!/bin/bash
# The hook that sends pods' new connections to kube-network-policies (an init container
# of its DaemonSet, default-cni.yaml). The enforcer installs this hook itself as
# nftables rules with the `queue` expression, which needs CONFIG_NFT_QUEUE; kernels
# without it (this project's machines) reject the whole rule set and no policy is
# enforced. iptables' NFQUEUE target (xt_NFQUEUE) reaches the same nfqueue, so the
# same rules are written here with it: in mangle POSTROUTING (before SNAT, as the
# enforcer's own chain), established and related traffic and the node's own root
# processes (kubelet probes) pass, and every other packet to or from a pod goes to
# queue $NFQUEUE_ID, where the enforcer accepts or drops it. --queue-bypass: with the
# enforcer not listening, packets pass (its --fail-open), so an unenforced policy shows
# as one (e2e/kind/run.sh probes it) instead of a cluster without a network.
set -euo pipefail
: "${POD_CIDR:?the pod range of the cluster}" "${NFQUEUE_ID:?the --nfqueue-id of the enforcer}"
chain=VFLOW-NETPOL
ipt() { iptables -w -t mangle "$@"; }
ipt -N "$chain" 2>/dev/null || ipt -F "$chain"
ipt -A "$chain" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
ipt -A "$chain" -m owner --uid-owner 0 -j RETURN
for dir in -s -d; do
	ipt -A "$chain" "$dir" "$POD_CIDR" -j NFQUEUE --queue-num "$NFQUEUE_ID" --queue-bypass
done
ipt -C POSTROUTING -j "$chain" 2>/dev/null || ipt -A POSTROUTING -j "$chain"
echo "pods' new connections ($POD_CIDR) go to nfqueue $NFQUEUE_ID:"
ipt -S "$chain"
