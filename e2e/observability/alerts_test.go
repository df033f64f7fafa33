package main

// The alerts fire when they should and stay quiet when they should not: each case loads
// series (Prometheus' test language: `load 1m` then `series values...`), evaluates the
// alert's expression as it is in charts/vflow/files/alerts.yaml with Prometheus' own
// engine at one instant, and checks whether it returns anything, with which labels.
// `for:` is not evaluated here (the expression is what can be wrong).

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
)

type alertCase struct {
	name   string
	alert  string
	load   string
	at     time.Duration
	fires  bool
	labels map[string]string // labels the firing series must have (a subset)
	value  float64           // when not 0, the value it must have
}

var alertCases = []alertCase{
	{
		name:  "half the runs fail",
		alert: "VflowRunsFailing",
		load: `load 1m
			vflow_runs_finished_total{phase="Failed"} 0+1x60
			vflow_runs_finished_total{phase="Succeeded"} 0+1x60`,
		at: 45 * time.Minute, fires: true, value: 0.5,
	},
	{
		name:  "two failures are not enough",
		alert: "VflowRunsFailing",
		load: `load 1m
			vflow_runs_finished_total{phase="Failed"} 0x20 1x20 2x20
			vflow_runs_finished_total{phase="Succeeded"} 0x60`,
		at: 45 * time.Minute, fires: false,
	},
	{
		name:  "runs fine",
		alert: "VflowRunsFailing",
		load: `load 1m
			vflow_runs_finished_total{phase="Failed"} 0x60
			vflow_runs_finished_total{phase="Succeeded"} 0+1x60`,
		at: 45 * time.Minute, fires: false,
	},
	{
		name:  "one function fails often",
		alert: "VflowFunctionFailing",
		load: `load 1m
			vflow_run_invocations_total{function="scale", outcome="failed"} 0+1x60
			vflow_run_invocations_total{function="scale", outcome="succeeded"} 0+1x60
			vflow_run_invocations_total{function="segment", outcome="succeeded"} 0+1x60
			vflow_run_invocations_total{function="segment", outcome="reused"} 0+5x60`,
		at: 30 * time.Minute, fires: true, labels: map[string]string{"function": "scale"}, value: 0.5,
	},
	{
		name:  "reused outputs are not failures",
		alert: "VflowFunctionFailing",
		load: `load 1m
			vflow_run_invocations_total{function="segment", outcome="succeeded"} 0+1x60
			vflow_run_invocations_total{function="segment", outcome="reused"} 0+5x60`,
		at: 30 * time.Minute, fires: false,
	},
	{
		name:  "active runs, nothing moves, no PodMonitor",
		alert: "VflowRunsStuck",
		load: `load 1m
			vflow_runs_active 2x90
			vflow_runs_finished_total{phase="Succeeded"} 4x90`,
		at: 80 * time.Minute, fires: true, value: 2,
	},
	{
		name:  "active runs whose function pods finish invocations",
		alert: "VflowRunsStuck",
		load: `load 1m
			vflow_runs_active 2x90
			vflow_runs_finished_total{phase="Succeeded"} 4x90
			vflow_runtime_invocations_total{function="scale", outcome="succeeded"} 0+1x90`,
		at: 80 * time.Minute, fires: false,
	},
	{
		name:  "a run finished in the last hour",
		alert: "VflowRunsStuck",
		load: `load 1m
			vflow_runs_active 2x90
			vflow_runs_finished_total{phase="Succeeded"} 4x50 5x40`,
		at: 80 * time.Minute, fires: false,
	},
	{
		name:  "no runs",
		alert: "VflowRunsStuck",
		load: `load 1m
			vflow_runs_active 0x90`,
		at: 80 * time.Minute, fires: false,
	},
	{
		name:  "cold starts of four minutes",
		alert: "VflowColdStartsNearActivationTimeout",
		load: `load 1m
			vflow_run_cold_start_seconds_bucket{function="detect", le="60"} 0x30
			vflow_run_cold_start_seconds_bucket{function="detect", le="120"} 0x30
			vflow_run_cold_start_seconds_bucket{function="detect", le="300"} 0+1x30
			vflow_run_cold_start_seconds_bucket{function="detect", le="+Inf"} 0+1x30`,
		at: 20 * time.Minute, fires: true, labels: map[string]string{"function": "detect"},
	},
	{
		name:  "cold starts of a few seconds",
		alert: "VflowColdStartsNearActivationTimeout",
		load: `load 1m
			vflow_run_cold_start_seconds_bucket{function="scale", le="5"} 0+1x30
			vflow_run_cold_start_seconds_bucket{function="scale", le="300"} 0+1x30
			vflow_run_cold_start_seconds_bucket{function="scale", le="+Inf"} 0+1x30`,
		at: 20 * time.Minute, fires: false,
	},
	{
		name:  "instances wanted but not ready",
		alert: "VflowInstancesNotReady",
		load: `load 1m
			vflow_operator_instances{state="desired"} 5x30
			vflow_operator_instances{state="ready"} 3x30`,
		at: 20 * time.Minute, fires: true, value: 2,
	},
	{
		name:  "every instance ready",
		alert: "VflowInstancesNotReady",
		load: `load 1m
			vflow_operator_instances{state="desired"} 5x30
			vflow_operator_instances{state="ready"} 5x30`,
		at: 20 * time.Minute, fires: false,
	},
	{
		name:  "an OOM-killed function container",
		alert: "VflowFunctionOOMKilled",
		load: `load 1m
			kube_pod_container_status_restarts_total{namespace="v", pod="wf-scale-1", container="function"} 0x10 1x20
			kube_pod_container_status_last_terminated_reason{namespace="v", pod="wf-scale-1", container="function", reason="OOMKilled"} 1x30
			kube_pod_labels{namespace="v", pod="wf-scale-1", label_vflow_io_function="scale", label_vflow_io_workflow="wf", label_vflow_io_stage="scale-720p"} 1x30
			kube_pod_container_status_restarts_total{namespace="v", pod="web-1", container="function"} 0x10 1x20
			kube_pod_container_status_last_terminated_reason{namespace="v", pod="web-1", container="function", reason="OOMKilled"} 1x30
			kube_pod_labels{namespace="v", pod="web-1"} 1x30`,
		at: 15 * time.Minute, fires: true,
		labels: map[string]string{"pod": "wf-scale-1", "label_vflow_io_function": "scale", "label_vflow_io_stage": "scale-720p"},
	},
	{
		name:  "a restart that was not an OOM kill",
		alert: "VflowFunctionOOMKilled",
		load: `load 1m
			kube_pod_container_status_restarts_total{namespace="v", pod="wf-scale-1", container="function"} 0x10 1x20
			kube_pod_container_status_last_terminated_reason{namespace="v", pod="wf-scale-1", container="function", reason="Error"} 1x30
			kube_pod_labels{namespace="v", pod="wf-scale-1", label_vflow_io_function="scale"} 1x30`,
		at: 15 * time.Minute, fires: false,
	},
	{
		name:  "a function process OOM-killed while its runtime lived on",
		alert: "VflowInvocationOOMKilled",
		load: `load 1m
			vflow_runtime_oom_kills_total{namespace="v", pod="wf-scale-1", function="scale"} 0x10 1x20
			vflow_runtime_oom_kills_total{namespace="v", pod="wf-crop-1", function="crop"} 0x30`,
		at: 15 * time.Minute, fires: true,
		labels: map[string]string{"function": "scale", "namespace": "v"},
	},
	{
		name:  "no OOM kills",
		alert: "VflowInvocationOOMKilled",
		load: `load 1m
			vflow_runtime_oom_kills_total{namespace="v", pod="wf-crop-1", function="crop"} 0x30`,
		at: 15 * time.Minute, fires: false,
	},
	{
		name:  "no operator scraped",
		alert: "VflowOperatorDown",
		load: `load 1m
			vflow_operator_leader 1x5`,
		at: 30 * time.Minute, fires: true,
	},
	{
		name:  "an operator scraped",
		alert: "VflowOperatorDown",
		load: `load 1m
			vflow_operator_leader{instance="a"} 1x30`,
		at: 20 * time.Minute, fires: false,
	},
	{
		name:  "two replicas, no leader",
		alert: "VflowOperatorNoLeader",
		load: `load 1m
			vflow_operator_leader{instance="a"} 0x30
			vflow_operator_leader{instance="b"} 0x30`,
		at: 20 * time.Minute, fires: true,
	},
	{
		name:  "two replicas, one leader",
		alert: "VflowOperatorNoLeader",
		load: `load 1m
			vflow_operator_leader{instance="a"} 1x30
			vflow_operator_leader{instance="b"} 0x30`,
		at: 20 * time.Minute, fires: false,
	},
	{
		name:  "two leaders",
		alert: "VflowOperatorSeveralLeaders",
		load: `load 1m
			vflow_operator_leader{instance="a"} 1x30
			vflow_operator_leader{instance="b"} 1x30`,
		at: 20 * time.Minute, fires: true, value: 2,
	},
	{
		name:  "one controller fails a third of the time",
		alert: "VflowReconcileErrors",
		load: `load 1m
			vflow_operator_reconciliations_total{controller="videoworkflow", outcome="error"} 0+1x30
			vflow_operator_reconciliations_total{controller="videoworkflow", outcome="ok"} 0+2x30
			vflow_operator_reconciliations_total{controller="functionprofile", outcome="ok"} 0+2x30`,
		at: 20 * time.Minute, fires: true, labels: map[string]string{"controller": "videoworkflow"},
	},
	{
		name:  "invalid workflows are not errors",
		alert: "VflowReconcileErrors",
		load: `load 1m
			vflow_operator_reconciliations_total{controller="videoworkflow", outcome="invalid"} 0+1x30
			vflow_operator_reconciliations_total{controller="videoworkflow", outcome="ok"} 0+2x30`,
		at: 20 * time.Minute, fires: false,
	},
	{
		name:  "slow reconciles",
		alert: "VflowReconcileSlow",
		load: `load 1m
			vflow_operator_reconcile_duration_seconds_bucket{controller="videoworkflow", le="1"} 0x30
			vflow_operator_reconcile_duration_seconds_bucket{controller="videoworkflow", le="5"} 0+10x30
			vflow_operator_reconcile_duration_seconds_bucket{controller="videoworkflow", le="+Inf"} 0+10x30`,
		at: 20 * time.Minute, fires: true, labels: map[string]string{"controller": "videoworkflow"},
	},
	{
		name:  "an invalid stage",
		alert: "VflowWorkflowsInvalid",
		load: `load 1m
			vflow_operator_stages{state="invalid"} 1x30
			vflow_operator_stages{state="ready"} 4x30`,
		at: 20 * time.Minute, fires: true, value: 1,
	},
}

func TestAlertsFireWhenTheyShould(t *testing.T) {
	path := os.Getenv("VFLOW_ALERTS")
	if path == "" {
		path = "../../charts/vflow/files/alerts.yaml"
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := parser.NewParser(parser.Options{})
	groups, errs := rulefmt.Parse(data, false, model.LegacyValidation, p, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if len(errs) > 0 {
		t.Fatalf("%s: %v", path, errs)
	}
	exprs := map[string]string{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				exprs[r.Alert] = r.Expr
			}
		}
	}
	tested := map[string]bool{}
	engine := promql.NewEngine(promql.EngineOpts{
		MaxSamples:    1_000_000,
		Timeout:       time.Minute,
		LookbackDelta: 5 * time.Minute,
		Parser:        p,
	})
	defer engine.Close()
	for _, c := range alertCases {
		t.Run(c.alert+"/"+c.name, func(t *testing.T) {
			expr, ok := exprs[c.alert]
			if !ok {
				t.Fatalf("no alert %s in %s", c.alert, path)
			}
			tested[c.alert] = true
			storage := promqltest.LoadedStorage(t, dedent(c.load))
			defer storage.Close()
			q, err := engine.NewInstantQuery(context.Background(), storage, nil, expr, time.Unix(0, 0).UTC().Add(c.at))
			if err != nil {
				t.Fatal(err)
			}
			res := q.Exec(context.Background())
			if res.Err != nil {
				t.Fatal(res.Err)
			}
			vec, err := res.Vector()
			if err != nil {
				t.Fatal(err)
			}
			if !c.fires {
				if len(vec) > 0 {
					t.Fatalf("fired, should not have: %v", vec)
				}
				return
			}
			if len(vec) == 0 {
				t.Fatalf("did not fire")
			}
			for _, s := range vec {
				for k, v := range c.labels {
					if got := s.Metric.Get(k); got != v {
						t.Errorf("label %s = %q, want %q (%v)", k, got, v, s.Metric)
					}
				}
				if c.value != 0 && (s.F < c.value-1e-9 || s.F > c.value+1e-9) {
					t.Errorf("value %v, want %v", s.F, c.value)
				}
			}
			if len(c.labels) > 0 && len(vec) != 1 {
				t.Errorf("%d series fired, want 1: %v", len(vec), vec)
			}
		})
	}
	for name := range exprs {
		if !tested[name] {
			t.Errorf("alert %s has no case in alerts_test.go", name)
		}
	}
}

func dedent(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSpace(l)
	}
	return strings.Join(lines, "\n")
}
