#!/usr/bin/env python3
"""Writes vflow's Grafana dashboard, charts/vflow/files/dashboards/vflow.json.

The JSON is generated so that every panel has the same shape (data source variable,
targets, legends, units) and stays reviewable: edit the panels here, run
`e2e/observability/dashboard.py`, commit both. `make check-observability` fails when
the committed JSON differs from what this prints, parses every expression with
Prometheus' parser and checks every vflow_* name against the code.

Standard library only.
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "charts/vflow/files/dashboards/vflow.json"

DS = {"type": "prometheus", "uid": "${datasource}"}
# Function pods' runtime series (scraped by the PodMonitor, which adds the pod's
# namespace and name; the runtime's own const label is `function`).
POD = 'namespace=~"$namespace", function=~"$function"'
# Operator-side series with a function label (no namespace: FunctionProfiles of one
# name in several namespaces add up).
FN = 'function=~"$function"'


def sidecar(metric):
    """A sidecar series with its pod's function. The sidecar exports no function label
    of its own: it is joined, by namespace and pod, from the runtime's const label in
    the same pod (both scraped by the PodMonitor)."""
    return (f'({metric}{{namespace=~"$namespace"}} * on (namespace, pod) group_left (function) '
            f"max by (namespace, pod, function) (vflow_runtime_ready{{{POD}}}))")


class Layout:
    """Places panels left to right in a 24-column grid, rows of equal height."""

    def __init__(self):
        self.y = 0
        self.x = 0
        self.row_h = 0
        self.next_id = 1
        self.panels = []

    def _id(self):
        i = self.next_id
        self.next_id += 1
        return i

    def row(self, title):
        if self.x:
            self.y += self.row_h
            self.x = 0
        self.panels.append(
            {
                "id": self._id(),
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1
        self.row_h = 0

    def add(self, panel, w, h):
        if self.x + w > 24:
            self.y += self.row_h
            self.x = 0
            self.row_h = 0
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)


def targets(*exprs):
    """(expr, legend) pairs -> Grafana targets, refId A, B, ..."""
    out = []
    for i, (expr, legend) in enumerate(exprs):
        out.append(
            {
                "datasource": DS,
                "refId": chr(ord("A") + i),
                "expr": expr,
                "legendFormat": legend,
                "range": True,
            }
        )
    return out


def timeseries(title, description, unit, *exprs, stack=False, bars=False):
    custom = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 20 if stack else 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets(*exprs),
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(title, description, unit, expr, legend="", thresholds=None, decimals=None):
    defaults = {"unit": unit}
    if decimals is not None:
        defaults["decimals"] = decimals
    if thresholds:
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": c, "value": v} for v, c in thresholds],
        }
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets((expr, legend)),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        },
    }


def quantiles(metric, by, selector, window, qs=(0.5, 0.95)):
    """histogram_quantile targets for each q, grouped by `by` (a list of labels)."""
    group = ", ".join(by + ["le"])
    legend_base = " ".join("{{%s}}" % b for b in by)
    out = []
    for q in qs:
        sel = f"{{{selector}}}" if selector else ""
        expr = (
            f"histogram_quantile({q}, sum by ({group}) "
            f"(rate({metric}_bucket{sel}[{window}])))"
        )
        out.append((expr, f"{legend_base} p{int(q * 100)}".strip()))
    return out


def build():
    L = Layout()

    L.row("Runs")
    L.add(stat("Active runs", "VideoWorkflowRuns whose engine runs now (vflow_runs_active).",
               "none", "sum(vflow_runs_active)"), 4, 4)
    L.add(stat("Succeeded (window)", "Share of the runs that finished in the window that succeeded.",
               "percentunit",
               'sum(increase(vflow_runs_finished_total{phase="Succeeded"}[$window])) '
               "/ sum(increase(vflow_runs_finished_total[$window]))",
               thresholds=[(None, "red"), (0.9, "orange"), (0.99, "green")], decimals=1), 4, 4)
    L.add(stat("Finished (window)", "Runs that finished in the window, any phase.", "none",
               "sum(increase(vflow_runs_finished_total[$window]))", decimals=0), 4, 4)
    L.add(stat("Estimated cost (24h)",
               "Estimated cost of the runs that finished in the last 24 hours: requested "
               "resource-seconds times the operator's prices (VFLOW_RUNS_PRICE_*).",
               "none", "sum by (currency) (increase(vflow_run_estimated_cost_total[24h]))",
               legend="{{currency}}", decimals=2), 4, 4)
    L.add(stat("Pre-warm hit ratio (window)",
               "Pre-warmed stages whose invocations found a warm instance (hit) among all "
               "pre-warmed stages that ran.",
               "percentunit",
               'sum(increase(vflow_run_prewarm_total{result="hit"}[$window])) '
               "/ sum(increase(vflow_run_prewarm_total[$window]))",
               thresholds=[(None, "orange"), (0.8, "green")], decimals=1), 4, 4)
    L.add(stat("Operator leader", "Replicas holding the leader Lease (must be 1).", "none",
               "sum(vflow_operator_leader)",
               thresholds=[(None, "red"), (1, "green"), (2, "red")]), 4, 4)
    L.add(timeseries(
        "Runs started and finished",
        "Finished runs per second by phase; started is finished plus the change in active "
        "runs. Runs are counted by the operator replica that finishes them.",
        "ops",
        ("sum(rate(vflow_runs_finished_total[$__rate_interval])) "
         "+ sum(deriv(vflow_runs_active[$__rate_interval]))", "started"),
        ("sum by (phase) (rate(vflow_runs_finished_total[$__rate_interval]))", "{{phase}}"),
    ), 8, 8)
    L.add(timeseries("Active runs", "Runs whose engine runs now.", "none",
                     ("sum(vflow_runs_active)", "active")), 8, 8)
    L.add(timeseries(
        "Run duration",
        "Start to end of the runs that succeeded (p50, p90, p99 over the window).",
        "s",
        *quantiles("vflow_run_duration_seconds", [], 'phase="Succeeded"', "$window",
                   qs=(0.5, 0.9, 0.99)),
    ), 8, 8)

    L.row("Stages and invocations")
    L.add(timeseries(
        "Invocations by function and outcome",
        "Invocation attempts of finished runs per second (succeeded, failed, reused: "
        "outputs already complete, nothing ran).",
        "ops",
        (f"sum by (function, outcome) (rate(vflow_run_invocations_total{{{FN}}}[$window]))",
         "{{function}} {{outcome}}"),
        stack=True,
    ), 12, 8)
    L.add(timeseries(
        "Invocation execution time",
        "Download + function + upload of one successful invocation, per function.",
        "s",
        *quantiles("vflow_run_invocation_exec_seconds", ["function"], FN, "$window"),
    ), 12, 8)
    L.add(timeseries(
        "Stage latency by step (function pods)",
        "p95 of each step of an invocation as the function's runtime measured it: "
        "download, function, upload, total.",
        "s",
        ("histogram_quantile(0.95, sum by (function, phase, le) "
         f"(rate(vflow_runtime_invocation_seconds_bucket{{{POD}}}[$__rate_interval])))",
         "{{function}} {{phase}}"),
    ), 12, 8)
    L.add(timeseries(
        "Invocations in flight (function pods)",
        "Invocations running now, per function; and invocations turned away "
        "(busy: every slot taken; warming_up; draining) per second.",
        "none",
        (f"sum by (function) (vflow_runtime_in_flight{{{POD}}})", "{{function}} in flight"),
        (f"sum by (function, reason) (rate(vflow_runtime_rejected_total{{{POD}}}[$__rate_interval]))",
         "{{function}} rejected {{reason}}"),
    ), 12, 8)
    L.add(timeseries(
        "Function outcomes (function pods)",
        "Invocations finished by the runtimes per second, by outcome (succeeded, "
        "failed_function, timed_out, failed_download, failed_upload, bad_request).",
        "ops",
        (f"sum by (function, outcome) (rate(vflow_runtime_invocations_total{{{POD}}}[$__rate_interval]))",
         "{{function}} {{outcome}}"),
        stack=True,
    ), 12, 8)
    L.add(timeseries(
        "S3 transfer (function pods)",
        "Bytes downloaded (in) and uploaded (out) per second.",
        "Bps",
        (f"sum by (function, direction) (rate(vflow_runtime_transfer_bytes_total{{{POD}}}[$__rate_interval]))",
         "{{function}} {{direction}}"),
    ), 12, 8)

    L.row("Cold starts, warm instances, pre-warming")
    L.add(timeseries(
        "Cold starts",
        "Invocations of finished runs that waited for an instance to start, per second.",
        "ops",
        (f"sum by (function) (rate(vflow_run_cold_starts_total{{{FN}}}[$window]))",
         "{{function}}"),
        stack=True,
    ), 8, 8)
    L.add(timeseries(
        "Cold start wait",
        "How long invocations waited for an instance (scale from zero, pod start, "
        "warm-up). At VFLOW_RUNS_ACTIVATION_TIMEOUT_SECONDS (300) they fail.",
        "s",
        *quantiles("vflow_run_cold_start_seconds", ["function"], FN, "$window"),
    ), 8, 8)
    L.add(timeseries(
        "Instance start to ready (function pods)",
        "Process start to ready (warm-up done) of the instances now running.",
        "s",
        (f"max by (function) (vflow_runtime_cold_start_seconds{{{POD}}})", "{{function}}"),
    ), 8, 8)
    L.add(timeseries(
        "Stage instances",
        "Replicas of all stages: desired by the autoscaler and ready; ready function "
        "instances per function (warm-up done).",
        "none",
        ('sum(vflow_operator_instances{state="desired"})', "desired"),
        ('sum(vflow_operator_instances{state="ready"})', "ready"),
        (f"sum by (function) (vflow_runtime_ready{{{POD}}})", "{{function}} warm"),
    ), 8, 8)
    L.add(timeseries(
        "Pre-warm hits and misses",
        "Pre-warmed stages of finished runs: hit when none of the stage's invocations "
        "waited for a cold start, miss otherwise.",
        "none",
        ("sum by (result) (increase(vflow_run_prewarm_total[$window]))", "{{result}}"),
        stack=True, bars=True,
    ), 8, 8)
    L.add(timeseries(
        "Stages by state and scale decisions",
        "Stages of all workflows by state; replica changes the autoscaler decided, per "
        "second, by direction and reason.",
        "none",
        ("sum by (state) (vflow_operator_stages)", "{{state}}"),
        ("sum by (direction, reason) (rate(vflow_operator_scale_decisions_total[$__rate_interval]))",
         "scale {{direction}} ({{reason}})"),
    ), 8, 8)

    L.row("Resources: requested and used")
    L.add(timeseries(
        "CPU: requested and used",
        "Requested: per-instance request times desired replicas, summed over the stages "
        "running the function (operator). Used: what the metrics sidecars measured.",
        "none",
        (f'sum by (function) (vflow_operator_function_requests{{resource="cpu_cores", {FN}}})',
         "{{function}} requested"),
        (f"sum by (function) {sidecar('vflow_sidecar_cpu_cores')}", "{{function}} used"),
    ), 12, 8)
    L.add(timeseries(
        "Memory: requested and used",
        "Requested (= limit) times desired replicas, and the resident memory of the "
        "function containers.",
        "bytes",
        (f'sum by (function) (vflow_operator_function_requests{{resource="memory_bytes", {FN}}})',
         "{{function}} requested"),
        (f"sum by (function) {sidecar('vflow_sidecar_memory_bytes')}", "{{function}} used"),
    ), 12, 8)
    L.add(timeseries(
        "CPU used / requested",
        "Share of the requested CPU the function containers use (below 1: over-sized; "
        "sizing Auto brings it towards the observed p95).",
        "percentunit",
        (f"sum by (function) {sidecar('vflow_sidecar_cpu_cores')} / sum by (function) "
         f'(vflow_operator_function_requests{{resource="cpu_cores", {FN}}})', "{{function}}"),
    ), 8, 8)
    L.add(timeseries(
        "Memory used / requested",
        "Share of the requested memory in use; near 1 an instance is close to its limit "
        "(OOM kill).",
        "percentunit",
        (f"sum by (function) {sidecar('vflow_sidecar_memory_bytes')} / sum by (function) "
         f'(vflow_operator_function_requests{{resource="memory_bytes", {FN}}})', "{{function}}"),
    ), 8, 8)
    L.add(timeseries(
        "Per invocation: CPU and peak memory (p95)",
        "CPU seconds (user+sys of the process tree) and peak resident memory of one "
        "invocation, as the runtime measured them.",
        "none",
        ("histogram_quantile(0.95, sum by (function, le) "
         f"(rate(vflow_runtime_function_cpu_seconds_bucket{{{POD}}}[$__rate_interval])))",
         "{{function}} CPU s"),
        ("histogram_quantile(0.95, sum by (function, le) "
         f"(rate(vflow_runtime_function_peak_memory_bytes_bucket{{{POD}}}[$__rate_interval]))) / 2^20",
         "{{function}} peak MiB"),
    ), 8, 8)

    L.row("GPU")
    L.add(timeseries(
        "GPU requested",
        "GPUs requested per function (a fraction counts as its share), times desired "
        "replicas.",
        "none",
        (f'sum by (function) (vflow_operator_function_requests{{resource="gpu", {FN}}})',
         "{{function}}"),
    ), 8, 8)
    L.add(timeseries(
        "GPU utilisation",
        "Utilisation of the GPUs visible to the function pods (NVML, per device; a shared "
        "device shows its whole use). Empty when the sidecar sees no GPU.",
        "percentunit",
        (f"avg by (function) {sidecar('vflow_sidecar_gpu_utilization_ratio')}", "{{function}}"),
    ), 8, 8)
    L.add(timeseries(
        "GPU memory",
        "GPU memory in use on the devices visible to the function pods.",
        "bytes",
        (f"sum by (function) {sidecar('vflow_sidecar_gpu_memory_bytes')}", "{{function}}"),
    ), 8, 8)

    L.row("Operator")
    L.add(timeseries(
        "Reconciliations",
        "Reconciliations per second by controller and outcome (ok, invalid, error).",
        "ops",
        ("sum by (controller, outcome) (rate(vflow_operator_reconciliations_total[$__rate_interval]))",
         "{{controller}} {{outcome}}"),
    ), 8, 8)
    L.add(timeseries(
        "Reconcile errors",
        "Failed reconciliations per second by controller and error category.",
        "ops",
        ("sum by (controller, category) (rate(vflow_operator_reconcile_errors_total[$__rate_interval]))",
         "{{controller}} {{category}}"),
    ), 8, 8)
    L.add(timeseries(
        "Reconcile duration",
        "Time one reconciliation took, per controller.",
        "s",
        *quantiles("vflow_operator_reconcile_duration_seconds", ["controller"], "",
                   "$__rate_interval", qs=(0.5, 0.99)),
    ), 8, 8)
    L.add(timeseries(
        "API requests",
        "Requests the operator sent to the API server per second, by method and resource. "
        "A steady state with no change should show no writes (PATCH, POST, PUT, DELETE) "
        "but the Lease's.",
        "reqps",
        ("sum by (method, resource) (rate(vflow_operator_api_requests_total[$__rate_interval]))",
         "{{method}} {{resource}}"),
    ), 16, 8)
    L.add(timeseries(
        "Leader",
        "1 for the replica holding the leader Lease.",
        "none",
        ("max by (instance) (vflow_operator_leader)", "{{instance}}"),
    ), 8, 8)

    return {
        "uid": "vflow-overview",
        "title": "vflow",
        "description": "vflow runs, stages, cold starts, pre-warming, resources, GPU and "
                       "the operator. Generated by e2e/observability/dashboard.py.",
        "tags": ["vflow"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "annotations": {"list": [{
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "templating": {"list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "refresh": 1,
                "regex": "",
                "options": [],
            },
            label_values_variable(
                "namespace", "Namespace",
                "label_values(vflow_runtime_ready, namespace)"),
            label_values_variable(
                "function", "Function",
                'label_values({__name__=~"vflow_runtime_ready|vflow_operator_function_requests'
                '|vflow_run_invocations_total"}, function)'),
            {
                "name": "window",
                "label": "Window",
                "type": "custom",
                "description": "Window of the run-level rates: runs and their invocations are "
                               "counted when a run finishes, so short windows are sparse.",
                "query": "5m,15m,1h,6h,24h",
                "current": {"selected": True, "text": "1h", "value": "1h"},
                "options": [
                    {"selected": v == "1h", "text": v, "value": v}
                    for v in ["5m", "15m", "1h", "6h", "24h"]
                ],
                "hide": 0,
            },
        ]},
        "panels": L.panels,
    }


def label_values_variable(name, label, query):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "sort": 1,
        "hide": 0,
        "regex": "",
    }


def render():
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    text = render()
    if sys.argv[1:] == ["--check"]:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run e2e/observability/dashboard.py "
                  "and commit the result", file=sys.stderr)
            sys.exit(1)
        sys.exit(0)
    if sys.argv[1:]:
        print("usage: dashboard.py [--check]", file=sys.stderr)
        sys.exit(2)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
