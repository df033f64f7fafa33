//! A VideoWorkflowRun's status from the engine's record: pure, so it is tested without a
//! cluster.
//!
//! - progress: settled units (done or skipped) out of the units known so far;
//! - timings: the critical path runs through the unit DAG (a per-segment unit after its
//!   own segment upstream, a join after every segment) weighted by each unit's
//!   execution (download + function + upload of its successful attempt); overhead is
//!   the rest of the run's wall time; cold starts are those paid on that path;
//! - cost: each execution holds `1/concurrency` of its instance's requests for its
//!   wall time (failed attempts included), priced per resource-second.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use vflow_api::validate::StageShape;
use vflow_api::{Cost, RunOutput, RunPhase, RunTimings, StageProgress, VideoWorkflowRunStatus};
use vflow_engine::graph::{RunGraph, UnitKey};
use vflow_engine::record::{Attempt, RunRecord, UnitRecord, UnitStatus};

/// Prices per resource-second, the planner's; configurable in the operator.
pub use vflow_planner::Prices;

/// What one instance of a stage requests, and how many invocations share it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageResources {
    pub cpu_cores: f64,
    pub memory_gib: f64,
    pub gpu: f64,
    pub concurrency: u32,
}

impl Default for StageResources {
    fn default() -> Self {
        Self {
            cpu_cores: 1.0,
            memory_gib: 1.0,
            gpu: 0.0,
            concurrency: 1,
        }
    }
}

fn time(unix: f64) -> Option<Time> {
    let nanos = (unix * 1e9).round();
    if !nanos.is_finite() {
        return None;
    }
    Timestamp::from_nanosecond(nanos as i128).ok().map(Time)
}

fn exec_of(a: &Attempt) -> f64 {
    a.download_seconds + a.function_seconds + a.upload_seconds
}

/// Execution of a unit's successful attempt (0 for skipped or reused units).
fn unit_exec(u: &UnitRecord) -> f64 {
    u.attempts
        .iter()
        .filter(|a| a.error.is_none() && !a.reused)
        .map(exec_of)
        .fold(0.0, f64::max)
}

fn unit_cold(u: &UnitRecord) -> f64 {
    u.attempts.iter().filter_map(|a| a.cold_start_seconds).sum()
}

/// Seconds an attempt held its slot: its execution, or for a failed attempt its wall
/// time less waiting.
fn held_seconds(a: &Attempt) -> f64 {
    if a.reused {
        return 0.0;
    }
    if a.error.is_none() {
        return exec_of(a);
    }
    (a.finished_at - a.submitted_at - a.queued_seconds - a.cold_start_seconds.unwrap_or(0.0))
        .max(0.0)
}

/// The units `key` waited for: what it reads, and the stage its condition reads.
fn predecessors(graph: &RunGraph, record: &RunRecord, key: UnitKey) -> Vec<UnitKey> {
    let node = &graph.stages[key.stage];
    let mut ups = node.after.clone();
    if let Some((_, source, _)) = &node.when {
        ups.push(*source);
    }
    let mut out = Vec::new();
    for up in ups {
        match (graph.stages[up].shape, key.segment) {
            (StageShape::Once, _) => out.push(UnitKey {
                stage: up,
                segment: None,
            }),
            (StageShape::PerSegment(_), Some(s)) => out.push(UnitKey {
                stage: up,
                segment: Some(s),
            }),
            (StageShape::PerSegment(_), None) => {
                out.extend(graph.units_of(up, record.segments));
            }
        }
    }
    out
}

/// Execution along the critical path and the cold starts paid on it.
pub fn critical_path(graph: &RunGraph, record: &RunRecord) -> (f64, f64) {
    let mut best: BTreeMap<UnitKey, (f64, f64)> = BTreeMap::new();
    for &stage in &graph.order {
        for key in graph.units_of(stage, record.segments) {
            let Some(unit) = record.unit(&graph.stages[stage].name, key.segment) else {
                continue;
            };
            let (up_exec, up_cold) = predecessors(graph, record, key)
                .iter()
                .filter_map(|p| best.get(p))
                .copied()
                .fold((0.0, 0.0), |acc, x| if x.0 > acc.0 { x } else { acc });
            best.insert(key, (up_exec + unit_exec(unit), up_cold + unit_cold(unit)));
        }
    }
    best.values()
        .copied()
        .fold((0.0, 0.0), |acc, x| if x.0 > acc.0 { x } else { acc })
}

pub fn timings(graph: &RunGraph, record: &RunRecord, now: f64) -> RunTimings {
    let total = (record.finished_at.unwrap_or(now) - record.started_at).max(0.0);
    let (exec, cold) = critical_path(graph, record);
    RunTimings {
        total_seconds: round3(total),
        critical_path_exec_seconds: round3(exec),
        overhead_seconds: round3((total - exec).max(0.0)),
        cold_start_seconds: round3(cold),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn cost(
    record: &RunRecord,
    resources: &BTreeMap<String, StageResources>,
    prices: &Prices,
) -> Cost {
    let (mut cpu, mut mem, mut gpu) = (0.0, 0.0, 0.0);
    for unit in &record.units {
        let r = resources.get(&unit.stage).copied().unwrap_or_default();
        let share = 1.0 / f64::from(r.concurrency.max(1));
        let held: f64 = unit.attempts.iter().map(held_seconds).sum();
        cpu += r.cpu_cores * share * held;
        mem += r.memory_gib * share * held;
        gpu += r.gpu * share * held;
    }
    let total =
        cpu * prices.cpu_core_second + mem * prices.memory_gib_second + gpu * prices.gpu_second;
    Cost {
        cpu_core_seconds: round3(cpu),
        memory_gib_seconds: round3(mem),
        gpu_seconds: round3(gpu),
        total: (total * 1e6).round() / 1e6,
        currency: prices.currency.clone(),
    }
}

pub fn stages(graph: &RunGraph, record: &RunRecord) -> Vec<StageProgress> {
    graph
        .order
        .iter()
        .map(|&i| {
            let name = &graph.stages[i].name;
            let units: Vec<&UnitRecord> =
                record.units.iter().filter(|u| &u.stage == name).collect();
            let count = |s: UnitStatus| units.iter().filter(|u| u.status == s).count() as u32;
            let attempts = || units.iter().flat_map(|u| &u.attempts).filter(|a| !a.reused);
            let settled = units
                .iter()
                .all(|u| matches!(u.status, UnitStatus::Done | UnitStatus::Skipped));
            StageProgress {
                name: name.clone(),
                done: count(UnitStatus::Done),
                total: units.len() as u32,
                failed: count(UnitStatus::Failed),
                skipped: count(UnitStatus::Skipped),
                cold_starts: attempts()
                    .filter(|a| a.cold_start_seconds.is_some())
                    .count() as u32,
                exec_seconds: round3(attempts().filter(|a| a.error.is_none()).map(exec_of).sum()),
                // A running unit has no attempt yet: its hand-out time says it runs.
                start_time: attempts()
                    .map(|a| a.submitted_at)
                    .chain(units.iter().filter_map(|u| u.started_at))
                    .reduce(f64::min)
                    .and_then(time),
                completion_time: if settled && !units.is_empty() {
                    units
                        .iter()
                        .flat_map(|u| &u.attempts)
                        .map(|a| a.finished_at)
                        .reduce(f64::max)
                        .and_then(time)
                } else {
                    None
                },
            }
        })
        .collect()
}

/// `settled/known`, e.g. `14/20`.
pub fn progress(record: &RunRecord) -> String {
    let settled = record
        .units
        .iter()
        .filter(|u| matches!(u.status, UnitStatus::Done | UnitStatus::Skipped))
        .count();
    format!("{settled}/{}", record.units.len())
}

/// What the run's sink stages (no stage after them) wrote, with sizes where known.
pub fn outputs(
    graph: &RunGraph,
    record: &RunRecord,
    sizes: &BTreeMap<String, u64>,
) -> Vec<RunOutput> {
    let sink = |name: &str| {
        graph
            .stage_index(name)
            .is_some_and(|i| !graph.stages.iter().any(|s| s.after.contains(&i)))
    };
    record
        .units
        .iter()
        .filter(|u| u.status == UnitStatus::Done && sink(&u.stage))
        .flat_map(|u| {
            u.outputs.iter().map(|o| RunOutput {
                stage: u.stage.clone(),
                uri: o.clone(),
                bytes: sizes.get(o).copied().unwrap_or(0),
            })
        })
        .collect()
}

fn condition(type_: &str, reason: &str, message: &str, at: f64) -> Option<Condition> {
    Some(Condition {
        type_: type_.into(),
        status: "True".into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: time(at)?,
        observed_generation: None,
    })
}

/// Everything in the status that comes from the record.
pub struct StatusInput<'a> {
    pub graph: &'a RunGraph,
    pub record: &'a RunRecord,
    pub resources: &'a BTreeMap<String, StageResources>,
    pub prices: &'a Prices,
    pub sizes: &'a BTreeMap<String, u64>,
    pub generation: Option<i64>,
    /// Unix seconds, for a run still going.
    pub now: f64,
}

pub fn status(input: &StatusInput) -> VideoWorkflowRunStatus {
    let record = input.record;
    let phase = record.phase;
    let finished = phase.is_finished();
    let mut conditions = Vec::new();
    if finished {
        let at = record.finished_at.unwrap_or(input.now);
        let (type_, reason) = match phase {
            RunPhase::Succeeded => ("Succeeded", "AllStagesDone"),
            RunPhase::Cancelled => ("Failed", "Cancelled"),
            _ => ("Failed", "StageFailed"),
        };
        let message = record.message.clone().unwrap_or_else(|| "done".into());
        conditions.extend(condition(type_, reason, &message, at));
    }
    VideoWorkflowRunStatus {
        observed_generation: input.generation,
        phase,
        progress: Some(progress(record)),
        start_time: time(record.started_at),
        completion_time: if finished {
            record.finished_at.and_then(time)
        } else {
            None
        },
        stages: stages(input.graph, record),
        outputs: outputs(input.graph, record, input.sizes),
        timings: Some(timings(input.graph, record, input.now)),
        estimated_cost: Some(cost(record, input.resources, input.prices)),
        message: record.message.clone(),
        quality: {
            // Each stage of segments as one, and the units that measured a whole output
            // (per segment figures would grow the status with the input's length).
            let (units, by_stage) = vflow_engine::report::quality(input.graph, record);
            by_stage
                .into_iter()
                .chain(units.into_iter().filter(|q| q.segment.is_none()))
                .take(256)
                .collect()
        },
        conditions,
    }
}
