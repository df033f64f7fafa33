# vflow: common tasks. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo

# The project's one Python venv (function-images/pyenv.sh, pinned in
# function-images/requirements.txt), first on PATH for every target: the functions that
# `vflow run` and the Rust tests start (#!/usr/bin/env python3) run in it once made.
PYENV ?= $(HOME)/.cache/vflow-pyenv
export VFLOW_PYENV := $(PYENV)
export PATH := $(PYENV)/bin:$(PATH)

.PHONY: help pyenv build test lint fmt crds check-crds validate-examples ci testenv testenv-up testenv-down testenv-smoke bench-planner bench-gpu \
	s3-server test-rust test-functions validate-function-profiles bench-runtime bench-local demo \
	test-operator e2e-operator bench-operator \
	test-runs test-chaos \
	helm check-chart-crds chart-lint chart-test

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-20s %s\n", $$1, $$2}'

build: ## Build every crate
	$(CARGO) build --workspace --all-targets

test: test-rust test-functions ## Every test that needs no cluster: Rust (unit, CLI, runtime with ffmpeg and S3) and the functions

pyenv: ## Make or refresh the Python venv the tests use (~/.cache/vflow-pyenv, from function-images/requirements.txt)
	function-images/pyenv.sh >/dev/null

test-rust: s3-server pyenv ## Rust tests; the runtime's need ffmpeg, the s3s-fs server and the venv (detect)
	$(CARGO) test --workspace

test-functions: pyenv ## The video functions (pytest, real ffmpeg on generated video and the shared clips)
	function-images/run-tests.sh

# A real S3-compatible server for the tests and benchmarks (s3s-fs; 0.14.1 builds with
# Rust 1.95). Installed once into ~/.cache/vflow-s3s.
S3S_FS := $(HOME)/.cache/vflow-s3s/bin/s3s-fs
s3-server: $(S3S_FS) ## Install the s3s-fs server the tests start on loopback
$(S3S_FS):
	$(CARGO) install s3s-fs --version 0.14.1 --features binary --locked --root $(HOME)/.cache/vflow-s3s

bench-local: pyenv ## Segment-parallel transcode and a cold 4-stage chain with `vflow run` (report in bench/local)
	$(CARGO) build --release -p vflow-cli
	bench/local/bench_local.py --vflow target/release/vflow --out bench/local

DEMO_CLIP ?= ../shared/data/videos/bbb_0-30s_720p_vp8.webm
demo: ## The local mode on a shipped example: thumbnails and a sprite sheet of a shared clip
	@command -v ffmpeg >/dev/null || { echo "installing ffmpeg (apt)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg fonts-dejavu-core; }
	$(CARGO) run -q -p vflow-cli --bin vflow -- run manifests/examples/thumbnails.yaml --input $(DEMO_CLIP) --profiles manifests/examples/profiles.yaml

bench-gpu: ## detect on a GPU: resident vs per-process cold start and warm latency, 1-8 resident instances on one GPU, MPS where installed (bench/gpu; needs python3 with torch+CUDA and ffmpeg)
	$(CARGO) build --release -p vflow-runtime --bins
	python3 bench/gpu/bench_gpu.py --out bench/gpu

bench-runtime: s3-server ## Runtime overhead, S3 throughput and idle RSS (report in bench/runtime)
	$(CARGO) build --release -p vflow-runtime --bins
	target/release/vflow-runtime-bench --out bench/runtime

lint: ## Formatting check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

crds: ## Regenerate crds/ from the Rust types (and their copy in charts/vflow/crds/)
	$(CARGO) run -q -p vflow-api --bin crdgen -- crds/
	rm -f charts/vflow/crds/*.yaml && cp crds/*.yaml charts/vflow/crds/

check-crds: crds ## Fail when crds/ differs from what the types generate
	@git diff --exit-code -- crds/ || { echo "crds/ is stale: run 'make crds' and commit the result" >&2; exit 1; }
	@test -z "$$(git ls-files --others --exclude-standard crds/)" || { echo "crds/ has uncommitted new files: commit them" >&2; exit 1; }

validate-examples: ## vflow validate on the shipped examples and every function's profile
	$(CARGO) run -q -p vflow-cli --bin vflow -- validate manifests/examples/*.yaml
	$(CARGO) run -q -p vflow-cli --bin vflow -- validate function-images/*/profile.yaml

testenv: ## Build the control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok, kubectl) into ~/.cache/vflow-testenv
	e2e/testenv/scripts/build.sh

testenv-up: testenv ## Start the control plane on loopback; prints the KUBECONFIG to export
	e2e/testenv/scripts/up.sh

testenv-down: ## Stop every testenv process by PID
	e2e/testenv/scripts/down.sh

testenv-smoke: testenv ## Smoke test on a fresh control plane: Deployments on kwok nodes, CRDs, examples, GC
	e2e/testenv/scripts/smoke.sh

bench-planner: ## Planner benchmarks in the simulator: bench/planner/REPORT.md, results.json and SVG plots
	$(CARGO) run -q -p vflow-cli --bin vflow -- sim --scenario all --seed 42 --report bench/planner

test-operator: ## Operator tests that need no cluster: pure builders and autoscaler, tower-test mocked API
	$(CARGO) test -p vflow-operator

e2e-operator: testenv ## Operator against a real control plane (e2e/testenv; started and stopped unless already up)
	$(CARGO) build -p vflow-operator --bins --tests
	e2e/operator/run.sh $(CARGO) test -p vflow-operator --test e2e --test observer_e2e -- --ignored --test-threads=1

bench-operator: testenv ## 500 workflows x 4 stages on testenv: time to Ready, writes, RSS, CPU (bench/operator)
	$(CARGO) build --release -p vflow-operator --bins
	e2e/operator/run.sh target/release/vflow-operator-bench --out bench/operator

test-runs: s3-server testenv pyenv ## vflow-runs and the cluster CLI: pure and S3 tests, then a private testenv (own ports; fails if taken) with the operator
	$(CARGO) test -p vflow-runs
	$(CARGO) build -p vflow-runtime --bin vflow-runtime
	# The run side and the operator share a process (the demand board): the operator's
	# crate holds these tests and runs both in the test process, the chaos test included.
	operator/runs/testenv.sh bash -c '$(CARGO) test -p vflow-operator --test runs_cluster -- --ignored --test-threads=1 && $(CARGO) test -p vflow-cli --test cluster_cli -- --ignored --test-threads=1'

test-chaos: s3-server testenv ## The testenv chaos test alone (50 runs, the run controller killed every 10 s; `make test-runs` runs it too)
	$(CARGO) build -p vflow-runtime --bin vflow-runtime
	operator/runs/testenv.sh bash -c '$(CARGO) test -p vflow-operator --test runs_cluster -- --ignored --test-threads=1 fifty_runs_survive'

# The Helm chart (charts/vflow): e2e/chart/README.md. Helm is built from its Go module
# into ~/.cache/vflow-helm; the Python tools go into a venv in ~/.cache/vflow-pyenv.
helm: ## Build the pinned Helm into ~/.cache/vflow-helm/bin (skipped when up to date)
	bash -c 'source e2e/chart/lib.sh && ensure_helm'

check-chart-crds: ## Fail when charts/vflow/crds/ differs from crds/
	@diff -r crds charts/vflow/crds || { echo "charts/vflow/crds/ differs from crds/: run 'make crds' and commit" >&2; exit 1; }

chart-lint: check-chart-crds helm ## helm lint/template of every values combination, schema-validated; bad values must fail; RBAC = manifests/rbac
	e2e/chart/lint.sh

chart-test: testenv helm s3-server ## The chart on a private testenv (ports 31101-31109): install, upgrade, the operator as its ServiceAccount (audit-checked RBAC), uninstall
	$(CARGO) build -p vflow-operator --bin vflow-operator
	mkdir -p target/chart-e2e && cp target/debug/vflow-operator target/chart-e2e/
	VFLOW_OPERATOR_BIN=$(CURDIR)/target/chart-e2e/vflow-operator e2e/chart/test.sh

# Observability (charts/vflow/files: alerts and Grafana dashboard) and the kind test
# (e2e/kind): docs/observability.md, docs/getting-started.md.
.PHONY: check-observability check-e2e-kind e2e-kind kind-node-image kind-images bench-kind
check-observability: ## Alerts and dashboard: PromQL parsed by Prometheus' parser, vflow_* names and labels against the code and real /metrics, Grafana fields
	e2e/observability/check.sh

check-e2e-kind: helm ## The kind test where it cannot run: shellcheck, manifests (kubernetes-validate, vflow validate), the chart with its values, the skip without Docker
	e2e/kind/check.sh

kind-node-image: testenv ## The kind node image, built offline from Debian and Go modules (~/.cache/vflow-kind; skipped when up to date)
	e2e/kind/node-image/build.sh

kind-images: ## Every image e2e-kind runs, from the project's Dockerfiles on local stand-in bases, and MinIO from its Go module
	e2e/kind/images.sh

e2e-kind: testenv helm pyenv ## End to end on a real kind cluster (needs Docker; starts dockerd): node image, images, MinIO, the chart, runs checked with ffprobe
	e2e/kind/run.sh

bench-kind: testenv helm pyenv ## Figures on real pods (kind): pod cold start by function, warm overhead through a Service, a 4-stage chain per pre-warm policy (bench/kind)
	bench/kind/bench.sh

ci: check-crds lint test validate-examples testenv-smoke e2e-operator test-runs chart-lint chart-test check-observability check-e2e-kind e2e-kind ## What CI runs
