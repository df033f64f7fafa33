#!/usr/bin/env bash
# Builds the kind node image $NODE_IMAGE (e2e/kind/lib.sh) offline:
#  - the root file system: Debian (debootstrap from the Debian archive) with kind's own
#    node files (from the sigs.k8s.io/kind module), the entrypoint fix-ups and egress
#    guard of this folder;
#  - kubelet, kubeadm, kubectl and the control plane from e2e/testenv's Go module (one
#    module and build cache with the testenv); containerd 2.x, runc, crictl, the CNI
#    plugins and CoreDNS from their Go modules; pause from the Kubernetes module's C;
#  - the images kubeadm expects (as `kubeadm config images list` names them), CoreDNS
#    and the pod network (podnet.sh), imported into the node's containerd beforehand.
# Every step is cached under $KIND_CACHE with a stamp of its inputs and skipped when they
# did not change; a cold build takes about 9 minutes on 2 cores.
# Needs root, a Docker engine, Go, and apt for debootstrap, libseccomp-dev, jq and gcc.
set -euo pipefail
# shellcheck source=e2e/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
here="$KIND_SRC/node-image"
out="$KIND_CACHE/node"
logs="$KIND_CACHE/logs"
mkdir -p "$out" "$logs"
start=$SECONDS
step() { kind_log "[$((SECONDS - start))s] $*"; }
ensure_docker
step "Kubernetes $KUBE_VERSION binaries (e2e/testenv's module)"
"$REPO_ROOT/e2e/testenv/scripts/build.sh"
# The node image's own stamp: every input of every step below.
node_stamp="$(stamp_of "$KUBE_VERSION" "$KIND_VERSION" "$CONTAINERD_VERSION" "$RUNC_VERSION" \
	"$CRICTL_VERSION" "$CNI_PLUGINS_VERSION" "$COREDNS_VERSION" "$ETCD_TAG" "$PAUSE_TAG" "$DEBIAN_MIRROR" \
	"$(go version)" "$0" "$KIND_SRC/lib.sh" "$here"/*.sh "$here"/*.yaml "$TESTENV_BIN/.stamp")"
if fresh "$out/.image-stamp" "$node_stamp" && [[ -x $KIND && -x $SHIM_DIR/docker ]] &&
	docker image inspect "$NODE_IMAGE" >/dev/null 2>&1; then
	step "$NODE_IMAGE is up to date"
	exit 0
fi

step "apt: debootstrap libseccomp-dev jq gcc"
need=()
for pkg in debootstrap libseccomp-dev jq gcc libc6-dev; do
	dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]} > 0)); then
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >"$logs/apt.log" 2>&1 ||
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >"$logs/apt.log" 2>&1; } ||
		kind_die "apt-get install ${need[*]} failed (see $logs/apt.log)"
fi

# ------------------------------------------------------------ root file systems
# node: what kind's base image has (systemd, iptables, mount tools...); slim: the base
# of the kube-proxy and podnet images and of the project's stand-in base images.
suite=bookworm
node_pkgs=systemd,systemd-sysv,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,fuse-overlayfs,e2fsprogs,bash,ca-certificates,curl,jq,procps,socat,ebtables
slim_pkgs=iptables,conntrack,nftables,iproute2,ca-certificates
rootfs="$KIND_CACHE/rootfs-$suite"
rootfs_stamp="$(stamp_of "$suite" "$DEBIAN_MIRROR" "$node_pkgs" "$slim_pkgs")"
if fresh "$rootfs/.stamp" "$rootfs_stamp"; then
	step "debootstrap $suite: reusing $rootfs"
	debootstrap_pid=""
else
	step "debootstrap $suite (node and slim), in the background"
	(
		rm -rf "$rootfs"
		mkdir -p "$rootfs"
		nice -n 10 debootstrap --variant=minbase --include="$slim_pkgs" "$suite" "$rootfs/slim" "$DEBIAN_MIRROR" \
			>"$logs/debootstrap-slim.log" 2>&1
		nice -n 10 debootstrap --variant=minbase --include="$node_pkgs" "$suite" "$rootfs/node" "$DEBIAN_MIRROR" \
			>"$logs/debootstrap-node.log" 2>&1
		for fs in slim node; do
			rm -rf "$rootfs/$fs"/var/cache/apt/archives/*.deb "$rootfs/$fs"/var/lib/apt/lists/* \
				"$rootfs/$fs"/usr/share/{doc,man,info,locale}/*
		done
		printf '%s\n' "$rootfs_stamp" >"$rootfs/.stamp"
	) &
	debootstrap_pid=$!
fi

# ------------------------------------------------------------ binaries
tools="$KIND_CACHE/tools"
tools_stamp="$(stamp_of "$KIND_VERSION" "$CONTAINERD_VERSION" "$RUNC_VERSION" "$CRICTL_VERSION" \
	"$CNI_PLUGINS_VERSION" "$COREDNS_VERSION" "$PAUSE_TAG" "$KUBE_VERSION" "$(go version)")"
if fresh "$tools/.stamp" "$tools_stamp"; then
	step "kind, containerd, runc, crictl, CNI plugins, CoreDNS, pause: up to date"
else
	step "kind, containerd, runc, crictl, CNI plugins, CoreDNS (go install), pause (gcc)"
	rm -rf "$tools"
	{
		CGO_ENABLED=0 go_install "$tools/bin" -ldflags="-s -w" "sigs.k8s.io/kind@$KIND_VERSION"
		CGO_ENABLED=0 go_install "$tools/bin" -tags "no_btrfs no_devmapper no_zfs no_aufs urfave_cli_no_docs" \
			-ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
			"github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
			"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
			"github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
		# runc needs cgo for seccomp; static, so the node needs no libseccomp of a version.
		CGO_ENABLED=1 go_install "$tools/bin" -tags "seccomp urfave_cli_no_docs" \
			-ldflags="-s -w -X main.version=${RUNC_VERSION#v} -extldflags -static" \
			"github.com/opencontainers/runc@$RUNC_VERSION"
		CGO_ENABLED=0 go_install "$tools/bin" \
			-ldflags="-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
			"sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
		CGO_ENABLED=0 go_install "$tools/cni" -ldflags="-s -w" \
			"github.com/containernetworking/plugins/plugins/ipam/host-local@$CNI_PLUGINS_VERSION" \
			"github.com/containernetworking/plugins/plugins/main/loopback@$CNI_PLUGINS_VERSION" \
			"github.com/containernetworking/plugins/plugins/main/ptp@$CNI_PLUGINS_VERSION" \
			"github.com/containernetworking/plugins/plugins/meta/portmap@$CNI_PLUGINS_VERSION"
		CGO_ENABLED=0 go_install "$tools/img" -ldflags="-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
		kmod="$(cd "$REPO_ROOT/e2e/testenv" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
		gcc -Os -Wall -static -DVERSION="v$PAUSE_TAG-vflow" -o "$tools/img/pause" "$kmod/build/pause/linux/pause.c"
	} >"$logs/tools.log" 2>&1 || kind_die "building the tools failed (see $logs/tools.log)"
	printf '%s\n' "$tools_stamp" >"$tools/.stamp"
fi
kind_files="$(cd /tmp && go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | jq -r .Dir)/images/base/files"
[[ -d $kind_files ]] || kind_die "no $kind_files in the kind module"

if [[ -n $debootstrap_pid ]]; then
	step "waiting for debootstrap"
	wait "$debootstrap_pid" || kind_die "debootstrap failed (see $logs/debootstrap-*.log)"
fi

# ------------------------------------------------------------ images for the node
step "images: vflow.local/debian:$suite-slim, the control plane, CoreDNS, pause, podnet, netpol"
tar -C "$rootfs/slim" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf - . |
	docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - \
		"vflow.local/debian:$suite-slim" >/dev/null
"$TESTENV_BIN/kubeadm" config images list --kubernetes-version "$KUBE_VERSION" >"$out/required-images.txt"
ctx="$out/image-context"
rm -rf "$ctx"
images=()
# image REF BINARY BASE [DOCKERFILE LINES...]: an image of one binary, as kubeadm names it.
image() {
	local ref="$1" binary="$2" base="$3" dir="$ctx/${1//[\/:]/_}"
	shift 3
	grep -qx "registry.k8s.io/$ref" "$out/required-images.txt" ||
		kind_die "kubeadm $KUBE_VERSION does not expect registry.k8s.io/$ref (see $out/required-images.txt): update lib.sh"
	mkdir -p "$dir"
	cp "$binary" "$dir/"
	{
		echo "FROM $base"
		echo "COPY $(basename "$binary") /usr/local/bin/"
		echo 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin'
		printf '%s\n' "$@"
	} >"$dir/Dockerfile"
	docker build -q -t "registry.k8s.io/$ref" "$dir" >/dev/null 2>>"$logs/docker-build.log" ||
		kind_die "docker build of registry.k8s.io/$ref failed (see $logs/docker-build.log)"
	images+=("registry.k8s.io/$ref")
}
for c in kube-apiserver kube-controller-manager kube-scheduler; do
	image "$c:$KUBE_VERSION" "$TESTENV_BIN/$c" scratch "ENTRYPOINT [\"/usr/local/bin/$c\"]"
done
image "kube-proxy:$KUBE_VERSION" "$TESTENV_BIN/kube-proxy" "vflow.local/debian:$suite-slim" \
	'ENTRYPOINT ["/usr/local/bin/kube-proxy"]'
image "etcd:$ETCD_TAG" "$TESTENV_BIN/etcd" scratch 'ENTRYPOINT ["/usr/local/bin/etcd"]'
image "coredns/coredns:$COREDNS_VERSION" "$tools/img/coredns" scratch 'ENTRYPOINT ["/usr/local/bin/coredns"]'
image "pause:$PAUSE_TAG" "$tools/img/pause" scratch 'USER 65535:65535' 'ENTRYPOINT ["/usr/local/bin/pause"]'
(($(wc -l <"$out/required-images.txt") == ${#images[@]})) ||
	kind_die "kubeadm expects $(wc -l <"$out/required-images.txt") images, this build makes ${#images[@]}: update lib.sh"
mkdir -p "$ctx/podnet"
cp "$TESTENV_BIN/kubectl" "$here/podnet.sh" "$ctx/podnet/"
printf 'FROM vflow.local/debian:%s-slim\nCOPY kubectl podnet.sh /usr/local/bin/\nENTRYPOINT ["/usr/local/bin/podnet.sh"]\n' \
	"$suite" >"$ctx/podnet/Dockerfile"
docker build -q -t vflow.local/podnet:v1 "$ctx/podnet" >/dev/null 2>>"$logs/docker-build.log" ||
	kind_die "docker build of vflow.local/podnet:v1 failed"
images+=(vflow.local/podnet:v1)
# kube-network-policies, from its Go module: NetworkPolicy enforcement (default-cni.yaml).
netpol="$KIND_CACHE/netpol/$KUBE_NETWORK_POLICIES_VERSION"
if [[ ! -x $netpol/netpol ]]; then
	step "kube-network-policies $KUBE_NETWORK_POLICIES_VERSION (go install)"
	rm -rf "$netpol"
	CGO_ENABLED=0 go_install "$netpol/bin" -ldflags="-s -w" \
		"sigs.k8s.io/kube-network-policies/cmd@$KUBE_NETWORK_POLICIES_VERSION" >"$logs/netpol.log" 2>&1 ||
		kind_die "building kube-network-policies failed (see $logs/netpol.log)"
	mv "$netpol/bin/cmd" "$netpol/netpol"
fi
mkdir -p "$ctx/netpol"
cp "$netpol/netpol" "$here/netpol-hook.sh" "$ctx/netpol/"
printf 'FROM vflow.local/debian:%s-slim\nCOPY netpol netpol-hook.sh /usr/local/bin/\nENTRYPOINT ["/usr/local/bin/netpol"]\n' \
	"$suite" >"$ctx/netpol/Dockerfile"
docker build -q -t vflow.local/netpol:v1 "$ctx/netpol" >/dev/null 2>>"$logs/docker-build.log" ||
	kind_die "docker build of vflow.local/netpol:v1 failed"
images+=(vflow.local/netpol:v1)
docker save -o "$out/node-images.tar" "${images[@]}"

# ------------------------------------------------------------ the node's root file system
step "node root file system: kind's files, the fix-ups, the binaries"
fs="$out/rootfs"
rm -rf "$fs"
cp -a "$rootfs/node" "$fs"
install -m 0755 "$kind_files"/usr/local/bin/* "$fs/usr/local/bin/"
# kind's entrypoint with our fix-ups spliced in before its state checks.
awk -v fixups="$here/entrypoint-fixups.sh" \
	'/^# validate state$/ { while ((getline line < fixups) > 0) print line; print "" } { print }' \
	"$kind_files/usr/local/bin/entrypoint" >"$fs/usr/local/bin/entrypoint"
grep -q vflow_cgroups_rw "$fs/usr/local/bin/entrypoint" ||
	kind_die "kind $KIND_VERSION's entrypoint has no '# validate state' line to splice the fix-ups before"
chmod 0755 "$fs/usr/local/bin/entrypoint"
mkdir -p "$fs"/{kind/bin,kind/manifests,LICENSES,etc/containerd,etc/default,etc/sysctl.d} \
	"$fs"/{etc/systemd/system/kubelet.service.d,opt/cni/bin,etc/cni/net.d,etc/kubernetes/manifests}
install -m 0644 "$kind_files/kind/README.txt" "$fs/kind/"
install -m 0755 "$kind_files"/kind/bin/* "$fs/kind/bin/"
install -m 0755 "$here/egress-guard.sh" "$fs/kind/bin/vflow-egress-guard.sh"
install -m 0644 "$kind_files"/LICENSES/* "$fs/LICENSES/"
install -m 0644 "$kind_files/etc/crictl.yaml" "$fs/etc/"
install -m 0644 "$kind_files/etc/containerd/config.toml" "$fs/etc/containerd/"
install -m 0644 "$kind_files/etc/default/kubelet" "$fs/etc/default/"
install -m 0644 "$kind_files"/etc/sysctl.d/* "$fs/etc/sysctl.d/"
install -m 0644 "$kind_files"/etc/systemd/system/*.service "$kind_files"/etc/systemd/system/*.slice "$fs/etc/systemd/system/"
install -m 0644 "$kind_files"/etc/systemd/system/kubelet.service.d/* "$fs/etc/systemd/system/kubelet.service.d/"
sed "s/@COREDNS_VERSION@/$COREDNS_VERSION/" "$here/default-cni.yaml" >"$fs/kind/manifests/default-cni.yaml"
# This host's kernel lets no container raise oom_score_adj above its own: containerd
# must not try (restrict_oom_score_adj).
sed -i -e "s#sandbox_image = .*#sandbox_image = \"registry.k8s.io/pause:$PAUSE_TAG\"#" \
	-e 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' "$fs/etc/containerd/config.toml"
# As kind's base image: no units that fight the container's init.
find "$fs/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
rm -f "$fs"/lib/systemd/system/multi-user.target.wants/* "$fs"/etc/systemd/system/*.wants/* \
	"$fs"/lib/systemd/system/local-fs.target.wants/* "$fs"/lib/systemd/system/sockets.target.wants/*udev* \
	"$fs"/lib/systemd/system/sockets.target.wants/*initctl* "$fs"/lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >>"$fs/etc/systemd/journald.conf"
ln -sf /usr/lib/systemd/systemd "$fs/sbin/init"
chroot "$fs" systemctl enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
chroot "$fs" systemctl mask systemd-binfmt.service >/dev/null 2>&1
install -m 0755 "$tools"/bin/{containerd,containerd-shim-runc-v2,ctr,crictl} "$fs/usr/local/bin/"
install -m 0755 "$tools/bin/runc" "$fs/usr/local/sbin/runc"
install -m 0755 "$tools"/cni/* "$fs/opt/cni/bin/"
install -m 0755 "$TESTENV_BIN"/{kubeadm,kubelet,kubectl} "$fs/usr/bin/"
"$tools/bin/ctr" oci spec |
	jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' |
	jq 'del(.process.rlimits)' >"$fs/etc/containerd/cri-base.json"
printf '%s' "$KUBE_VERSION" >"$fs/kind/version"

# ------------------------------------------------------------ pre-imported images
step "importing the images into the node's containerd (a private containerd on this host)"
ct="$out/containerd"
rm -rf "$ct"
mkdir -p "$ct"
cat >"$ct/config.toml" <<EOF
version = 3
root = "$fs/var/lib/containerd"
state = "$ct/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images"]
[grpc]
  address = "$ct/containerd.sock"
[ttrpc]
  address = "$ct/containerd.sock.ttrpc"
EOF
"$tools/bin/containerd" --config "$ct/config.toml" >"$logs/containerd-import.log" 2>&1 &
containerd_pid=$!
trap 'kill "$containerd_pid" 2>/dev/null || true' EXIT
for ((i = 0; i < 100; i++)); do
	[[ -S $ct/containerd.sock ]] && break
	sleep 0.1
done
ctr_() { "$tools/bin/ctr" --address "$ct/containerd.sock" --namespace k8s.io "$@"; }
ctr_ images import --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests \
	"$out/node-images.tar" >>"$logs/containerd-import.log" 2>&1 || kind_die "ctr import failed (see $logs/containerd-import.log)"
kill "$containerd_pid"
wait "$containerd_pid" 2>/dev/null || true
trap - EXIT
rm -rf "$ct"

# ------------------------------------------------------------ the image
step "docker import -> $NODE_IMAGE"
old="$(docker images -q "$NODE_IMAGE")"
tar -C "$fs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf - . |
	docker import --change 'ENV container=docker' \
		--change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' - "$NODE_IMAGE-rootfs" >/dev/null
# docker import cannot set STOPSIGNAL: one more layer-less step does.
mkdir -p "$out/stopsignal"
printf 'FROM %s-rootfs\nSTOPSIGNAL SIGRTMIN+3\n' "$NODE_IMAGE" >"$out/stopsignal/Dockerfile"
docker build -q -t "$NODE_IMAGE" "$out/stopsignal" >/dev/null 2>>"$logs/docker-build.log"
docker rmi "$NODE_IMAGE-rootfs" >/dev/null
if [[ -n $old && $old != "$(docker images -q "$NODE_IMAGE")" ]]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
rm -rf "$fs" "$ctx"

# kind, and the docker front it must find first on PATH.
mkdir -p "$SHIM_DIR"
install -m 0755 "$KIND_SRC/docker-front.sh" "$SHIM_DIR/docker"
install -m 0755 "$tools/bin/kind" "$SHIM_DIR/kind"
printf '%s\n' "$node_stamp" >"$out/.image-stamp"
step "built $(docker images --format '{{.Repository}}:{{.Tag}} ({{.Size}})' "$NODE_IMAGE")"
