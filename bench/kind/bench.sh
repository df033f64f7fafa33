#!/usr/bin/env bash
# make bench-kind: vflow's figures on real pods (bench_kind.py says which), on a kind
# cluster that e2e/kind/cluster.sh brings up as make e2e-kind does, then deletes.
# Writes bench/kind/results.json and bench/kind/REPORT.md. Settings (environment):
# E2E_KIND_CLUSTER (vflow-bench), E2E_KIND_MINIO_PORT (19000), E2E_KIND_KEEP, and
# BENCH_KIND_ARGS (extra arguments to bench_kind.py, e.g. "--repeats 5").
set -euo pipefail
export E2E_KIND_CLUSTER="${E2E_KIND_CLUSTER:-vflow-bench}" KIND_TEST_NAME=bench-kind
# shellcheck source=e2e/kind/cluster.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../e2e/kind/cluster.sh"
kind_cluster_up

step "the inputs: a 1 s 160x120 clip (warm invocations) and a 20 s 720p clip (the chain)"
ffmpeg -v error -f lavfi -i testsrc2=size=160x120:rate=30:duration=1 -c:v libx264 -pix_fmt yuv420p \
	-y "$work/tiny.mp4"
ffmpeg -v error -f lavfi -i testsrc2=size=1280x720:rate=30:duration=20 -c:v libx264 -preset veryfast \
	-pix_fmt yuv420p -y "$work/chain-input.mp4"
s3 -T "$work/tiny.mp4" "$s3_url/videos/bench/tiny.mp4" >/dev/null
s3 -T "$work/chain-input.mp4" "$s3_url/videos/bench/chain-input.mp4" >/dev/null

step "the functions' profiles (CPU requests capped, no GPU)"
cap_cpu function-images/*/profile.yaml >"$work/profiles.yaml"
"$vflow_cli" validate "$work/profiles.yaml" || die "the kind variant of the profiles is invalid"
kubectl -n "$ns" apply -f "$work/profiles.yaml"

step "measuring"
# shellcheck disable=SC2086 # BENCH_KIND_ARGS is a list of arguments
BENCH_S3_SECRET="$s3_secret" "$PYENV/bin/python" bench/kind/bench_kind.py --out bench/kind --work "$work" \
	--s3-url "$s3_url" --s3-key "$s3_key" ${BENCH_KIND_ARGS:-}
ok=1
log "bench-kind: done in $((SECONDS - start))s; bench/kind/REPORT.md"
