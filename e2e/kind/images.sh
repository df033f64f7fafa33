#!/usr/bin/env bash
# Builds every image `make e2e-kind` runs, on this machine, with no container registry:
#  1. local stand-ins for the public base images that the project's Dockerfiles name,
#     tagged with the same names, so the Dockerfiles build unchanged:
#       debian:trixie-slim                    Debian trixie, minbase (debootstrap)
#       rust:1.95-slim-bookworm               Debian bookworm + gcc + this machine's Rust
#       gcr.io/distroless/cc-debian12:nonroot Debian bookworm, minbase, user 65532
#     (an image of that name that is not a stand-in, e.g. pulled from a registry, is
#     left alone; the distroless stand-in has a shell, the real one none);
#  2. the project's images from their own Dockerfiles: the operator, the function base,
#     the functions; detect as its CPU variant (detect/Dockerfile.cpu: no CUDA, no torch:
#     the CUDA base cannot be had here);
#  3. MinIO from its Go module ($MINIO_IMAGE; the MinIO webhook trigger needs MinIO).
# Prints the project images' names, one a line, for `kind load`.
set -euo pipefail
# shellcheck source=e2e/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
logs="$KIND_CACHE/logs"
mkdir -p "$logs"
ensure_docker
export DOCKER_BUILDKIT=1

# ------------------------------------------------------------ stand-ins
# standin NAME STAMP DIR [CHANGES...]: imports DIR as NAME unless NAME is already this
# stand-in (label vflow.standin = STAMP) or is not a stand-in at all.
standin() {
	local name="$1" stamp="$2" dir="$3" have change
	shift 3
	have="$(docker image inspect -f '{{index .Config.Labels "vflow.standin"}}' "$name" 2>/dev/null)" || have=absent
	if [[ $have == "$stamp" ]]; then return 0; fi
	if [[ $have != absent && -z $have ]]; then
		kind_log "$name exists and is not a stand-in: using it"
		return 0
	fi
	kind_log "stand-in $name"
	local old changes=(--change "LABEL vflow.standin=$stamp")
	for change in "$@"; do changes+=(--change "$change"); done
	old="$(docker images -q "$name")"
	tar -C "$dir" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf - . |
		docker import "${changes[@]}" - "$name" >/dev/null
	# The stand-in it replaces, unless something still uses it.
	if [[ -n $old ]]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
}

# rootfs SUITE PACKAGES: a minbase Debian root file system, cached; prints its path.
rootfs() {
	local suite="$1" pkgs="$2" dir stamp
	stamp="$(stamp_of "$suite" "$pkgs" "$DEBIAN_MIRROR")"
	dir="$KIND_CACHE/rootfs-$suite-${stamp:0:12}"
	if ! fresh "$dir/.stamp" "$stamp"; then
		rm -rf "$dir"
		kind_log "debootstrap $suite ($pkgs)"
		nice -n 10 debootstrap --variant=minbase --include="$pkgs" "$suite" "$dir" "$DEBIAN_MIRROR" \
			>"$logs/debootstrap-$suite.log" 2>&1 || kind_die "debootstrap $suite failed (see $logs/debootstrap-$suite.log)"
		rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/usr/share/{doc,man,info}/*
		printf '%s\n' "$stamp" >"$dir/.stamp"
	fi
	with_host_cas "$dir"
	printf '%s\n' "$dir"
}

# with_host_cas DIR: this machine's own CA certificates (/usr/local/share/ca-certificates)
# trusted in DIR too. Where the registries are reached through a TLS proxy with its own
# CA (these machines), cargo, pip and apt inside the image builds need it; elsewhere there
# are none and nothing changes.
host_cas="$(cat /usr/local/share/ca-certificates/*.crt 2>/dev/null | sha256sum | cut -c1-12)"
with_host_cas() {
	local dir="$1"
	[[ -f $dir/.host-cas && "$(<"$dir/.host-cas")" == "$host_cas" ]] && return 0
	mkdir -p "$dir/usr/local/share/ca-certificates"
	cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/" 2>/dev/null || true
	chroot "$dir" update-ca-certificates >/dev/null 2>&1 || kind_die "update-ca-certificates failed in $dir"
	printf '%s\n' "$host_cas" >"$dir/.host-cas"
}

path_env='PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
trixie="$(rootfs trixie ca-certificates)"
standin debian:trixie-slim "$(<"$trixie/.stamp")-$host_cas" "$trixie" "ENV $path_env"

bookworm="$(rootfs bookworm ca-certificates,libgcc-s1)"
nonroot="$KIND_CACHE/distroless-nonroot"
if ! fresh "$nonroot/.stamp" "$(<"$bookworm/.stamp")"; then
	rm -rf "$nonroot"
	cp -a "$bookworm" "$nonroot"
	chroot "$nonroot" groupadd --gid 65532 nonroot
	chroot "$nonroot" useradd --uid 65532 --gid 65532 --home-dir /home/nonroot --create-home nonroot
	cp "$bookworm/.stamp" "$nonroot/.stamp"
fi
with_host_cas "$nonroot"
standin gcr.io/distroless/cc-debian12:nonroot "$(<"$nonroot/.stamp")-$host_cas" "$nonroot" "ENV $path_env" \
	"USER 65532:65532" "WORKDIR /home/nonroot"

# The build stage: gcc (cc, aws-lc's C), this machine's Rust toolchain (no rustup: its
# installer is not reachable), cargo's home at /usr/local/cargo as in the real image.
toolchain="$(rustc --print sysroot)"
rust_version="$(rustc --version | awk '{ print $2 }')"
[[ $rust_version == 1.95.* ]] || kind_die "rustc $rust_version: the stand-in rust:1.95-slim-bookworm needs Rust 1.95"
rust_fs="$KIND_CACHE/rust-bookworm"
rust_stamp="$(stamp_of "$(rustc -vV)" "$(cargo -V)" "$(<"$(rootfs bookworm ca-certificates,gcc,libc6-dev,make,pkg-config)/.stamp")")"
if ! fresh "$rust_fs/.stamp" "$rust_stamp"; then
	rm -rf "$rust_fs"
	cp -a "$(rootfs bookworm ca-certificates,gcc,libc6-dev,make,pkg-config)" "$rust_fs"
	mkdir -p "$rust_fs/usr/local/rust" "$rust_fs/usr/local/cargo/bin"
	cp -a "$toolchain/bin" "$toolchain/lib" "$rust_fs/usr/local/rust/"
	printf '%s\n' "$rust_stamp" >"$rust_fs/.stamp"
fi
with_host_cas "$rust_fs"
standin rust:1.95-slim-bookworm "$rust_stamp-$host_cas" "$rust_fs" \
	"ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
	"ENV CARGO_HOME=/usr/local/cargo" "ENV RUST_VERSION=$rust_version"

# ------------------------------------------------------------ the project's images
cd "$REPO_ROOT"
tag=0.1.0
registry=ghcr.io/vflow
build() { # build IMAGE DOCKERFILE [ARGS...]
	local image="$1" file="$2" old new
	shift 2
	kind_log "docker build -f $file -t $image"
	old="$(docker images -q "$image")"
	docker build -q -f "$file" -t "$image" "$@" . >/dev/null 2>>"$logs/images.log" ||
		{ tail -n 40 "$logs/images.log" >&2; kind_die "docker build of $image failed (see $logs/images.log)"; }
	new="$(docker images -q "$image")"
	# The image this build replaced: left untagged, each rebuild after a change would keep
	# one more on disk. Kept while a container uses it.
	if [[ -n $old && $old != "$new" ]]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
	printf '%s\n' "$image"
}
build "$registry/vflow-operator:$tag" operator/Dockerfile
build "$registry/fn-base:$tag" function-images/base/Dockerfile
for dir in function-images/*/; do
	dir="${dir%/}"
	fn="$(basename "$dir")"
	case "$fn" in
	base | tests | vflow-fn) continue ;;
	detect)
		# its CPU model is baked in from detect/models/ (fetched through npm, checked)
		function-images/detect/fetch-model.sh || kind_die "detect's CPU model could not be fetched"
		build "$registry/fn-detect:$tag" function-images/detect/Dockerfile.cpu --build-arg "BASE=$registry/fn-base:$tag"
		;;
	*) build "$registry/fn-$fn:$tag" "$dir/Dockerfile" --build-arg "BASE=$registry/fn-base:$tag" ;;
	esac
done

# ------------------------------------------------------------ MinIO
minio_bin="$KIND_CACHE/minio/$MINIO_VERSION"
if [[ ! -x $minio_bin/minio ]]; then
	kind_log "go install github.com/minio/minio@$MINIO_VERSION (a few minutes)"
	CGO_ENABLED=0 go_install "$minio_bin" -ldflags="-s -w" "github.com/minio/minio@$MINIO_VERSION" \
		>"$logs/minio.log" 2>&1 || kind_die "building MinIO failed (see $logs/minio.log)"
fi
ctx="$KIND_CACHE/minio/context"
rm -rf "$ctx"
mkdir -p "$ctx"
cp "$minio_bin/minio" "$ctx/"
printf 'FROM debian:trixie-slim\nCOPY minio /usr/local/bin/minio\nUSER 1000:1000\nENTRYPOINT ["/usr/local/bin/minio"]\n' >"$ctx/Dockerfile"
docker build -q -t "$MINIO_IMAGE" "$ctx" >/dev/null 2>>"$logs/images.log" || kind_die "docker build of $MINIO_IMAGE failed"
printf '%s\n' "$MINIO_IMAGE"
