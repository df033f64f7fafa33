//! Prometheus metrics of the runs this process drove, served on the operator's /metrics.
//! Labels are bounded: run phase, function (one per FunctionProfile), outcome, hit/miss;
//! never run or workflow names.
//!
//! Invocation figures are counted once, when the run finishes, from the engine's record:
//! a run resumed by a new leader is counted by the process that finishes it, with every
//! attempt the record holds (including those of earlier sessions; reused ones apart).

use std::collections::BTreeSet;

use prometheus::{
    CounterVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
};
use vflow_api::{Cost, RunPhase};
use vflow_engine::graph::RunGraph;
use vflow_engine::record::RunRecord;

#[derive(Clone)]
pub struct RunMetrics {
    pub active: IntGauge,
    pub finished: IntCounterVec,
    pub duration: HistogramVec,
    pub invocations: IntCounterVec,
    pub exec: HistogramVec,
    pub cold_starts: IntCounterVec,
    pub cold_start_seconds: HistogramVec,
    pub prewarm: IntCounterVec,
    pub cost: CounterVec,
}

fn seconds_buckets() -> Vec<f64> {
    vec![
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    ]
}

impl RunMetrics {
    /// The metrics, registered in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            active: IntGauge::new("vflow_runs_active", "Runs whose engine is running now.")?,
            finished: IntCounterVec::new(
                Opts::new(
                    "vflow_runs_finished_total",
                    "Runs finished, by phase (Succeeded, Failed, Cancelled).",
                ),
                &["phase"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "vflow_run_duration_seconds",
                    "Wall time of a run, from its start to its end, by phase.",
                )
                .buckets(seconds_buckets()),
                &["phase"],
            )?,
            invocations: IntCounterVec::new(
                Opts::new(
                    "vflow_run_invocations_total",
                    "Invocation attempts of finished runs, by function and outcome \
                     (succeeded, failed, reused: outputs already complete, nothing ran).",
                ),
                &["function", "outcome"],
            )?,
            exec: HistogramVec::new(
                HistogramOpts::new(
                    "vflow_run_invocation_exec_seconds",
                    "Execution of one invocation (download, function, upload), by function.",
                )
                .buckets(seconds_buckets()),
                &["function"],
            )?,
            cold_starts: IntCounterVec::new(
                Opts::new(
                    "vflow_run_cold_starts_total",
                    "Invocations that waited for an instance to start, by function.",
                ),
                &["function"],
            )?,
            cold_start_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "vflow_run_cold_start_seconds",
                    "How long an invocation waited for its instance to start, by function.",
                )
                .buckets(seconds_buckets()),
                &["function"],
            )?,
            prewarm: IntCounterVec::new(
                Opts::new(
                    "vflow_run_prewarm_total",
                    "Pre-warmed stages of finished runs: hit when none of the stage's \
                     invocations waited for a cold start, miss otherwise.",
                ),
                &["result"],
            )?,
            cost: CounterVec::new(
                Opts::new(
                    "vflow_run_estimated_cost_total",
                    "Estimated cost of finished runs (resource-seconds times the configured prices).",
                ),
                &["currency"],
            )?,
        };
        registry.register(Box::new(m.active.clone()))?;
        registry.register(Box::new(m.finished.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.invocations.clone()))?;
        registry.register(Box::new(m.exec.clone()))?;
        registry.register(Box::new(m.cold_starts.clone()))?;
        registry.register(Box::new(m.cold_start_seconds.clone()))?;
        registry.register(Box::new(m.prewarm.clone()))?;
        registry.register(Box::new(m.cost.clone()))?;
        Ok(m)
    }

    /// Counts a finished run: its phase and duration, every attempt, pre-warm hits and
    /// misses of the stages in `prewarmed`, its cost. Unfinished phases are ignored.
    pub fn finished(
        &self,
        graph: &RunGraph,
        record: &RunRecord,
        phase: RunPhase,
        prewarmed: &BTreeSet<String>,
        cost: Option<&Cost>,
    ) {
        let label = match phase {
            RunPhase::Succeeded => "Succeeded",
            RunPhase::Failed => "Failed",
            RunPhase::Cancelled => "Cancelled",
            _ => return,
        };
        self.finished.with_label_values(&[label]).inc();
        if let Some(end) = record.finished_at {
            self.duration
                .with_label_values(&[label])
                .observe((end - record.started_at).max(0.0));
        }
        let function_of = |stage: &str| {
            graph
                .stages
                .iter()
                .find(|s| s.name == stage)
                .map_or("unknown", |s| s.function.as_str())
        };
        let mut waited: BTreeSet<&str> = BTreeSet::new();
        let mut ran: BTreeSet<&str> = BTreeSet::new();
        for unit in &record.units {
            let function = function_of(&unit.stage);
            for a in &unit.attempts {
                let outcome = if a.reused {
                    "reused"
                } else if a.error.is_some() {
                    "failed"
                } else {
                    "succeeded"
                };
                self.invocations
                    .with_label_values(&[function, outcome])
                    .inc();
                if a.reused {
                    continue;
                }
                ran.insert(unit.stage.as_str());
                if a.error.is_none() {
                    self.exec
                        .with_label_values(&[function])
                        .observe(a.download_seconds + a.function_seconds + a.upload_seconds);
                }
                if let Some(c) = a.cold_start_seconds {
                    waited.insert(unit.stage.as_str());
                    self.cold_starts.with_label_values(&[function]).inc();
                    self.cold_start_seconds
                        .with_label_values(&[function])
                        .observe(c);
                }
            }
        }
        for stage in prewarmed.iter().filter(|s| ran.contains(s.as_str())) {
            let result = if waited.contains(stage.as_str()) {
                "miss"
            } else {
                "hit"
            };
            self.prewarm.with_label_values(&[result]).inc();
        }
        if let Some(c) = cost
            && c.total.is_finite()
            && c.total > 0.0
        {
            self.cost.with_label_values(&[&c.currency]).inc_by(c.total);
        }
    }
}

/// Decrements `vflow_runs_active` when dropped, however the engine task ends.
pub struct ActiveGuard(Option<IntGauge>);

impl ActiveGuard {
    pub fn new(metrics: Option<&RunMetrics>) -> Self {
        let g = metrics.map(|m| m.active.clone());
        if let Some(g) = &g {
            g.inc();
        }
        Self(g)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}
