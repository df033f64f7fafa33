#!/bin/bash
# vflow-podnet: the pod network of the kind nodes, in place of kindnetd (which is not
# published as a Go module). Runs on every node (a hostNetwork DaemonSet) and, every
# two seconds: writes this node's CNI config (ptp + host-local over its spec.podCIDR,
# portmap) and routes each other node's pod range via that node's InternalIP, letting
# it through the node's egress guard.
set -u
conf=/etc/cni/net.d/10-vflow-podnet.conflist
config() {
	cat <<JSON
{
  "cniVersion": "1.0.0",
  "name": "vflow-podnet",
  "plugins": [
    {
      "type": "ptp",
      "ipMasq": false,
      "mtu": 1500,
      "ipam": {
        "type": "host-local",
        "dataDir": "/run/cni-ipam-state",
        "routes": [{"dst": "0.0.0.0/0"}],
        "ranges": [[{"subnet": "$1"}]]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
}
nodes='{range .items[*]}{.metadata.name} {.spec.podCIDR} {.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}'
while true; do
	if listing="$(kubectl get nodes -o jsonpath="$nodes" 2>/dev/null)"; then
		while read -r name cidr address; do
			[[ -n ${cidr:-} && -n ${address:-} ]] || continue
			if [[ $name == "$NODE_NAME" ]]; then
				want="$(config "$cidr")"
				if [[ ! -f $conf || "$(<"$conf")" != "$want" ]]; then
					printf '%s\n' "$want" >"$conf.tmp" && mv "$conf.tmp" "$conf" && echo "wrote $conf for $cidr"
				fi
				continue
			fi
			if [[ "$(ip route show "$cidr")" != "$cidr via $address dev"* ]]; then
				ip route replace "$cidr" via "$address" && echo "route $cidr via $address ($name)"
			fi
			iptables -w -C VFLOW-EGRESS -d "$cidr" -j RETURN 2>/dev/null ||
				iptables -w -I VFLOW-EGRESS -d "$cidr" -j RETURN || true
		done <<<"$listing"
	fi
	sleep 2
done
