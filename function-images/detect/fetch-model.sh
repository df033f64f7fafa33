#!/usr/bin/env bash
# Puts detect's CPU model in function-images/detect/models/ (or $1): an SSD MobileNetV2
# trained on Open Images V4 (23 classes, Car and Vehicle among them; Apache-2.0), which
# the npm package @mediapipe/objectron ships inside its Emscripten asset bundle. Nothing
# comes from a model hub: the package is fetched through npm's registry and checked
# against its SHA-256, then the model and its label map are cut out of the bundle at the
# offsets its loader (objectron_solution_packed_assets_loader.js) lists, and checked
# too. Does nothing when both files are there with the right digests.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${1:-$here/models}"
die() { printf 'fetch-model.sh: %s\n' "$*" >&2; exit 1; }

package="@mediapipe/objectron@0.4.1675468480"
package_sha="fc3e37b326b05e8f596099c90b3e0931b05a56cd3160b9ac450b621794bac94c"
bundle="package/objectron_solution_packed_assets.data"
# name, first byte, end byte (exclusive), SHA-256
files=(
	"oidv4_labels.txt 0 184 c148336a65f673013609a923fdcbdeec0f49df935045029c3746a3828a0e80e0"
	"ssd_mobilenetv2_oidv4_fp16.tflite 184 9987912 d0a5255bf8c4f5a0bc4240741a76c41d5e939f7655078f945f50ab53a9375da6"
)

digest() { sha256sum "$1" | cut -d' ' -f1; }
complete() {
	local name start end sha
	for f in "${files[@]}"; do
		read -r name start end sha <<<"$f"
		[[ -f $dest/$name && "$(digest "$dest/$name")" == "$sha" ]] || return 1
	done
}
# Readable by all: the images copy them in as they are and run detect as uid 10001
# (mktemp makes 0600 files; a 0600 model failed every detect pod's warm-up on kind).
readable() { for f in "${files[@]}"; do chmod 0644 "$dest/${f%% *}"; done; }
if complete; then
	readable
	exit 0
fi

command -v npm >/dev/null || die "npm is not installed (apt-get install -y npm): it fetches $package"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
printf 'fetch-model.sh: fetching %s for detect'"'"'s CPU model\n' "$package" >&2
(cd "$work" && npm pack --silent "$package" >/dev/null) || die "npm pack $package failed"
tarball="$(find "$work" -maxdepth 1 -name '*.tgz' | head -n1)"
[[ -n $tarball ]] || die "npm pack $package wrote no tarball"
[[ "$(digest "$tarball")" == "$package_sha" ]] ||
	die "$package's tarball has SHA-256 $(digest "$tarball"), not $package_sha: refusing it"
tar -xzf "$tarball" -C "$work" "$bundle" || die "$package has no $bundle"
mkdir -p "$dest"
for f in "${files[@]}"; do
	read -r name start end sha <<<"$f"
	# a name of its own: two runs at once (two make targets) must not share one
	part="$(mktemp -p "$dest" ".$name.XXXXXX")"
	# (GNU dd: byte offsets)
	dd if="$work/$bundle" of="$part" iflag=skip_bytes,count_bytes skip="$start" count="$((end - start))" \
		bs=1M status=none || { rm -f "$part"; die "could not cut $name out of $bundle"; }
	[[ "$(digest "$part")" == "$sha" ]] || { rm -f "$part"; die "$name cut from $bundle has the wrong SHA-256"; }
	mv -f "$part" "$dest/$name"
done
readable
printf 'fetch-model.sh: %s ready\n' "$dest" >&2
