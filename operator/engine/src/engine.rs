//! Drives one run through the DAG: the I/O around the [`Scheduler`]'s decisions.
//!
//! Loads and persists the run's record, starts the invocations the scheduler asks
//! for (each with its retries and backoff, in `invoke.rs`), sends pre-warm requests
//! when they are due and stops on cancel.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
// Tokio's clock, so tests with paused time see the pre-warm schedule move too.
use tokio::time::Instant;
use vflow_api::FunctionProfile;
use vflow_storage::{Expected, Location, Store};

use vflow_planner::WorkflowPlan;

use crate::backend::{Backend, FusedMember, StageTarget};
use crate::graph::{RunGraph, UnitKey};
use crate::invoke::invoke_unit;
use crate::prewarming::Prewarmer;
use crate::record::{RunPhase, RunRecord, unix_now};
use crate::scheduler::{Scheduler, UnitOutcome};

/// What one run needs besides the workflow.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub run: String,
    /// The run's input, as a storage URI.
    pub input: String,
    /// Every output goes under here (`<store>/<outputPrefix>/<run>/`).
    pub prefix: Location,
    /// Per-stage parameter overrides from the VideoWorkflowRun.
    pub params: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    /// Stages to pre-warm and when, in seconds after the run starts
    /// ([`prewarm_schedule`] of the plan).
    pub prewarm: Vec<(String, f64, u32)>,
    /// Instances per stage when neither the plan nor the workflow says (maxScale).
    pub default_max_instances: u32,
    /// The planner's decisions for this run (the same plan the operator acts on):
    /// each stage's concurrency, minimum and maximum instances and memory. None: from
    /// the workflow and the profiles alone.
    pub plan: Option<WorkflowPlan>,
    /// Pre-warm on the start-of-run schedule only: no re-deciding as the run goes and
    /// no release of a branch not taken (the baseline `vflow run --no-replan` measures).
    pub fixed_prewarm: bool,
}

/// The plan's pre-warm schedule as [`RunOptions::prewarm`] takes it.
pub fn prewarm_schedule(plan: &WorkflowPlan) -> Vec<(String, f64, u32)> {
    plan.prewarm
        .iter()
        .map(|a| (a.stage.clone(), a.at_seconds, a.replicas))
        .collect()
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub record: RunRecord,
    /// The run's record is there but could not be read, or is not a run record:
    /// nothing ran and nothing was written (a new record would destroy the run's
    /// progress). Trying again later may read it.
    pub unreadable: Option<String>,
    /// Someone else wrote the run's record since this engine read it (another
    /// operator resumed the run): this engine stopped there, invoking and writing
    /// nothing more.
    pub fenced: Option<String>,
    /// The version of the record this engine wrote last, for a later write of it.
    pub version: RecordVersion,
}

impl RunOutcome {
    fn new(record: RunRecord, version: RecordVersion) -> Self {
        RunOutcome {
            record,
            unreadable: None,
            fenced: None,
            version,
        }
    }
}

/// The version of the run's record an engine read or wrote last. Every write of the
/// record is conditional on it (S3's `If-Match`, `If-None-Match` for a new one), so
/// of two engines on one run (a deposed leader's and the next one's) the one that
/// did not write last learns it at its next write and stops: the store checks it,
/// atomically, not a clock or a Lease read earlier.
#[derive(Debug, Clone)]
pub struct RecordVersion {
    expected: Expected,
    /// What this engine tried to write last: a write whose answer was lost may have
    /// landed, and is then this engine's own, not someone else's.
    tried: Option<Vec<u8>>,
}

/// Why a write of the run's record did not happen.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordWriteError {
    /// Someone else wrote it since this engine's version.
    Fenced(String),
    /// The store failed (the next write tries again).
    Failed(String),
}

/// Writes the run's record on the condition that it is still at `version`, which
/// then moves to what was written.
pub async fn write_record(
    store: &Store,
    location: &Location,
    record: &RunRecord,
    version: &mut RecordVersion,
) -> Result<(), RecordWriteError> {
    let bytes = serde_json::to_vec_pretty(record)
        .map_err(|e| RecordWriteError::Failed(format!("encoding the run's record: {e}")))?;
    // What this engine tried to write before: if that landed though it looked failed,
    // the record there is this engine's own.
    let earlier = version.tried.replace(bytes.clone());
    for _ in 0..2 {
        let written = store
            .put_bytes_if(location, bytes.clone(), &version.expected)
            .await
            .map_err(|e| RecordWriteError::Failed(e.to_string()))?;
        if let Some(tag) = written.clone().filter(|t| !t.is_empty()) {
            version.expected = Expected::Tag(tag);
            return Ok(());
        }
        // Not written, or written without a tag in the answer: what is there now?
        let current = store
            .get_tagged(location)
            .await
            .map_err(|e| RecordWriteError::Failed(e.to_string()))?;
        match current {
            Some((data, tag)) if data == bytes => {
                version.expected = Expected::Tag(tag);
                return Ok(());
            }
            // An earlier write of ours that looked failed had landed: go on from it.
            Some((data, tag)) if written.is_none() && earlier.as_deref() == Some(&data[..]) => {
                version.expected = Expected::Tag(tag);
            }
            _ => {
                return Err(RecordWriteError::Fenced(format!(
                    "{location} was written by another operator since this one read it: it goes on with the run, this one stops"
                )));
            }
        }
    }
    Err(RecordWriteError::Fenced(format!(
        "{location} keeps changing under this operator: another one is running the run"
    )))
}

impl RecordVersion {
    /// For a record not read or written yet.
    pub fn absent() -> Self {
        RecordVersion {
            expected: Expected::Absent,
            tried: None,
        }
    }
}

/// Called with the record after every change.
pub type ProgressFn = Arc<dyn Fn(&RunRecord) + Send + Sync>;

pub const RUN_RECORD: &str = "_vflow-run.json";

/// Backoff before retry `n` (1-based): 0.5 s, 1 s, 2 s ... capped at 10 s, each
/// spread over 75-125%: the units of a burst that failed together (a pod going
/// away) do not all come back in the same instant.
pub fn backoff(attempt: u32) -> Duration {
    backoff_base(attempt)
        .mul_f64(BACKOFF_SPREAD.0 + (BACKOFF_SPREAD.1 - BACKOFF_SPREAD.0) * jitter())
}

/// The backoff before retry `n` before its spread.
pub fn backoff_base(attempt: u32) -> Duration {
    Duration::from_millis((500u64 << attempt.saturating_sub(1).min(5)).min(10_000))
}

/// A backoff is its base times a factor in this range.
pub const BACKOFF_SPREAD: (f64, f64) = (0.75, 1.25);

/// A number in [0, 1) that differs from call to call (the clock's nanoseconds,
/// mixed): enough to spread waits, no randomness needed.
pub fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mixed = u64::from(nanos).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    mixed as f64 / (1u64 << 53) as f64
}

pub struct Engine<B: Backend> {
    pub graph: RunGraph,
    pub workflow: String,
    profiles: BTreeMap<String, FunctionProfile>,
    backend: Arc<B>,
    store: Store,
    progress: Option<ProgressFn>,
    /// Turns true when this process is going away: start nothing more, let what runs
    /// finish and be recorded, and leave the run to be resumed.
    drain: Option<watch::Receiver<bool>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Graph(#[from] crate::graph::GraphError),
    #[error("stage {stage}: no FunctionProfile {function}")]
    MissingProfile { stage: String, function: String },
}

impl<B: Backend> Engine<B> {
    pub fn new(
        workflow: &vflow_api::VideoWorkflow,
        profiles: BTreeMap<String, FunctionProfile>,
        backend: Arc<B>,
        store: Store,
    ) -> Result<Self, EngineError> {
        let graph = RunGraph::new(&workflow.spec)?;
        for stage in &graph.stages {
            if !profiles.contains_key(&stage.function) {
                return Err(EngineError::MissingProfile {
                    stage: stage.name.clone(),
                    function: stage.function.clone(),
                });
            }
        }
        Ok(Self {
            graph,
            workflow: workflow.metadata.name.clone().unwrap_or_default(),
            profiles,
            backend,
            store,
            progress: None,
            drain: None,
        })
    }

    /// When `drain` turns true the run stops starting units, waits for those running to
    /// finish (their attempts recorded) and returns still Running, for a later session
    /// to resume: an invocation in flight when a process goes is then not run twice.
    pub fn drain_on(&mut self, drain: watch::Receiver<bool>) {
        self.drain = Some(drain);
    }

    /// Called after every change of the record (progress bars, logs).
    pub fn on_progress(&mut self, f: impl Fn(&RunRecord) + Send + Sync + 'static) {
        self.progress = Some(Arc::new(f));
    }

    /// How stage `stage` is invoked: as planned when the run has a plan, else from the
    /// workflow's overrides and the profile.
    pub fn target(&self, stage: usize, opts: &RunOptions) -> StageTarget {
        let mut target = self.target_alone(stage, opts);
        let chain = self.fused_chain(stage, opts);
        if !chain.is_empty() {
            // Which runtime of a chain was killed is not known here: no retry.
            target.oom_retry_memory_bytes = None;
        }
        target.fused = chain
            .into_iter()
            .map(|m| {
                let t = self.target_alone(m, opts);
                FusedMember {
                    stage: t.stage,
                    function: t.function,
                    command: t.command,
                    warmup_command: t.warmup_command,
                    resident: t.resident,
                    timeout_seconds: t.timeout_seconds,
                    memory_limit_bytes: t.memory_limit_bytes,
                }
            })
            .collect();
        target
    }

    /// The stages the plan fused after `head`, in chain order (each reads only the one
    /// before it). Empty when `head` heads no fused group.
    pub fn fused_chain(&self, head: usize, opts: &RunOptions) -> Vec<usize> {
        let Some(plan) = &opts.plan else {
            return Vec::new();
        };
        let head_name = &self.graph.stages[head].name;
        let member = |i: usize| {
            plan.stages.iter().any(|d| {
                d.name == self.graph.stages[i].name && d.fused_with.as_ref() == Some(head_name)
            })
        };
        let mut chain = Vec::new();
        let mut last = head;
        while let Some(next) = (0..self.graph.stages.len())
            .find(|&j| member(j) && self.graph.stages[j].after == [last] && !chain.contains(&j))
        {
            chain.push(next);
            last = next;
        }
        chain
    }

    fn target_alone(&self, stage: usize, opts: &RunOptions) -> StageTarget {
        let node = &self.graph.stages[stage];
        let profile = self.profiles.get(&node.function);
        let default_max = opts.default_max_instances;
        let mut target = StageTarget {
            stage: node.name.clone(),
            function: node.function.clone(),
            command: profile.map(|p| p.spec.command.clone()).unwrap_or_default(),
            warmup_command: profile
                .map(|p| p.spec.warmup_command.clone())
                .unwrap_or_default(),
            resident: profile.is_some_and(|p| p.spec.worker == vflow_api::WorkerMode::Resident),
            concurrency: node
                .concurrency
                .or(profile.map(|p| p.spec.concurrency))
                .unwrap_or(1)
                .max(1),
            min_instances: node.min_scale.unwrap_or(0),
            max_instances: node.max_scale.unwrap_or(default_max).max(1),
            timeout_seconds: self.graph.timeout_seconds(stage, profile).unwrap_or(600.0),
            memory_limit_bytes: None,
            fused: Vec::new(),
            oom_retry_memory_bytes: None,
            memory_raised: false,
        };
        let planned = opts
            .plan
            .as_ref()
            .and_then(|p| p.stages.iter().find(|d| d.name == node.name));
        if let Some(d) = planned {
            target.concurrency = d.concurrency.max(1);
            target.min_instances = d.min_replicas;
            target.max_instances = d.max_replicas.unwrap_or(default_max).max(1);
            target.memory_limit_bytes = (d.size.memory_bytes.is_finite()
                && d.size.memory_bytes >= 1.0)
                .then_some(d.size.memory_bytes as u64);
            target.oom_retry_memory_bytes = target
                .memory_limit_bytes
                .and_then(|planned| oom_retry_memory(planned, profile));
        }
        target
    }

    /// The run's record, or a new one when there is none (or it is another
    /// workflow's or input's). Err when one is there that cannot be read.
    async fn load(&self, opts: &RunOptions) -> Result<(RunRecord, RecordVersion), String> {
        let location = opts.prefix.join(RUN_RECORD);
        let found = self
            .store
            .get_tagged(&location)
            .await
            .map_err(|e| format!("could not read the run's record {location}: {e}"))?;
        let Some((bytes, tag)) = found else {
            return Ok((self.new_record(opts), RecordVersion::absent()));
        };
        let record = serde_json::from_slice::<RunRecord>(&bytes).map_err(|e| {
            format!("{location} is not a run record ({e}): move it away to start the run over")
        })?;
        let version = RecordVersion {
            expected: Expected::Tag(tag),
            tried: None,
        };
        if record.workflow == self.workflow && record.input == opts.input {
            return Ok((record, version));
        }
        // Another workflow's or input's: replaced, on the condition it is still that.
        Ok((self.new_record(opts), version))
    }

    /// A run not started yet.
    fn new_record(&self, opts: &RunOptions) -> RunRecord {
        RunRecord {
            run: opts.run.clone(),
            workflow: self.workflow.clone(),
            input: opts.input.clone(),
            prefix: opts.prefix.to_string(),
            phase: RunPhase::Pending,
            segments: None,
            units: Vec::new(),
            started_at: unix_now(),
            finished_at: None,
            message: None,
            sessions: 0,
        }
    }

    /// Writes the record (see [`RecordVersion`]); Err when another engine has written
    /// it since: this one must stop.
    async fn persist(
        &self,
        opts: &RunOptions,
        record: &RunRecord,
        version: &mut RecordVersion,
    ) -> Result<(), String> {
        match write_record(&self.store, &opts.prefix.join(RUN_RECORD), record, version).await {
            Ok(()) => {}
            Err(RecordWriteError::Failed(e)) => {
                tracing::warn!(error = %e, "could not persist the run's progress");
            }
            Err(RecordWriteError::Fenced(e)) => {
                tracing::warn!(run = %opts.run, error = %e, "stopping: the run is someone else's now");
                return Err(e);
            }
        }
        if let Some(progress) = &self.progress {
            progress(record);
        }
        Ok(())
    }

    /// Runs (or resumes) one run to its end, or until `cancel` turns true.
    pub async fn run(&self, opts: &RunOptions, mut cancel: watch::Receiver<bool>) -> RunOutcome {
        let (mut record, mut version) = match self.load(opts).await {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::warn!(run = %opts.run, error = %e, "not running: the run's record is unreadable");
                let record = RunRecord {
                    message: Some(e.clone()),
                    ..self.new_record(opts)
                };
                return RunOutcome {
                    unreadable: Some(e),
                    ..RunOutcome::new(record, RecordVersion::absent())
                };
            }
        };
        if record.phase == RunPhase::Succeeded {
            return RunOutcome::new(record, version);
        }
        let scheduler = Scheduler::new(&self.graph, &opts.prefix, &opts.params, |i| {
            self.target(i, opts)
        });
        // Stops the run where it is: another engine wrote the record.
        let fenced = |record: RunRecord, version: RecordVersion, why: String| RunOutcome {
            fenced: Some(why),
            ..RunOutcome::new(record, version)
        };
        Scheduler::resume(&mut record);
        if let Err(why) = self.persist(opts, &record, &mut version).await {
            return fenced(record, version, why);
        }

        let session_start = Instant::now();
        let mut prewarms = Prewarmer::new(
            &opts.prewarm,
            opts.plan.as_ref().filter(|_| !opts.fixed_prewarm),
        );
        // A fused stage has no instances of its own: its chain's head has them.
        let carried: Vec<bool> = (0..self.graph.stages.len())
            .map(|i| scheduler.carried_by(i).is_some())
            .collect();
        // The warm pool: stages with a minimum have it from the start (asked for here,
        // not through the schedule, which re-decides what it has not sent).
        for (i, _) in self.graph.stages.iter().enumerate() {
            let target = self.target(i, opts);
            if target.min_instances > 0 && !carried[i] {
                let backend = self.backend.clone();
                let min = target.min_instances;
                tokio::spawn(async move { backend.prewarm(&target, min).await });
            }
        }
        let mut tasks: JoinSet<(UnitKey, UnitOutcome)> = JoinSet::new();
        // Units whose first attempt got an instance: the stage started.
        let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<UnitKey>();
        let on_start: crate::invoke::OnStart = Arc::new(move |key| {
            let _ = started_tx.send(key);
        });
        let mut failure: Option<String> = None;
        let mut drain = self.drain.clone();
        let draining = |d: &Option<watch::Receiver<bool>>| d.as_ref().is_some_and(|d| *d.borrow());
        loop {
            if *cancel.borrow() {
                tasks.abort_all();
                self.backend.shutdown().await;
                record.phase = RunPhase::Cancelled;
                record.message = Some("cancelled".into());
                break;
            }
            if draining(&drain) && tasks.is_empty() {
                // Nothing runs any more: the next session goes on from here.
                if let Err(why) = self.persist(opts, &record, &mut version).await {
                    return fenced(record, version, why);
                }
                return RunOutcome::new(record, version);
            }
            if failure.is_none() && !draining(&drain) {
                let next = scheduler.next(&mut record);
                let now = session_start.elapsed().as_secs_f64();
                // What the run just learned re-decides the pre-warm schedule: inputs
                // that arrived, and stages whose condition turned out false.
                for dispatch in &next.start {
                    prewarms.reached(&dispatch.request.stage, now);
                }
                for key in &next.skipped {
                    let stage = key.stage;
                    if !opts.fixed_prewarm
                        && scheduler.never_runs(&record, stage)
                        && prewarms.abandon(&self.graph.stages[stage].name)
                    {
                        let target = self.target(stage, opts);
                        let backend = self.backend.clone();
                        tokio::spawn(async move { backend.release(&target).await });
                    }
                }
                for dispatch in next.start {
                    tasks.spawn(invoke_unit(
                        self.backend.clone(),
                        self.store.clone(),
                        dispatch,
                        Some(on_start.clone()),
                    ));
                }
                failure = next.failure;
                if let Err(why) = self.persist(opts, &record, &mut version).await {
                    tasks.abort_all();
                    return fenced(record, version, why);
                }
            }
            // After the units that just became ready were started: a stage whose input
            // is here is not pre-warmed, it is invoked.
            self.send_due_prewarms(opts, &mut prewarms, session_start, &carried);
            if tasks.is_empty() {
                break;
            }
            let wait = until_next_prewarm(prewarms.next_at(), session_start);
            tokio::select! {
                joined = tasks.join_next() => {
                    let Some(joined) = joined else { continue };
                    let Ok((key, outcome)) = joined else { continue };
                    // What the run learned re-decides the pre-warm schedule: a finish.
                    let at = session_start.elapsed().as_secs_f64();
                    prewarms.finished(&self.graph.stages[key.stage].name, at);
                    if let UnitOutcome::Done { chained, .. } = &outcome
                        && !chained.is_empty()
                    {
                        for m in scheduler.members(key.stage) {
                            prewarms.finished(&self.graph.stages[m].name, at);
                        }
                    }
                    if let Some(message) = scheduler.finish(&mut record, key, outcome) {
                        failure.get_or_insert(message);
                        // Stop what is still running: the run has failed.
                        tasks.abort_all();
                    }
                    if let Err(why) = self.persist(opts, &record, &mut version).await {
                        tasks.abort_all();
                        return fenced(record, version, why);
                    }
                }
                Some(key) = started_rx.recv() => {
                    let at = session_start.elapsed().as_secs_f64();
                    prewarms.started(&self.graph.stages[key.stage].name, at);
                }
                _ = cancel.changed() => {}
                _ = async {
                    match drain.as_mut() {
                        // A sender gone never drains.
                        Some(d) => {
                            if d.changed().await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        scheduler.conclude(&mut record, failure);
        record.finished_at = Some(unix_now());
        if let Err(why) = self.persist(opts, &record, &mut version).await {
            return fenced(record, version, why);
        }
        RunOutcome::new(record, version)
    }

    /// Sends the pre-warm requests that are due.
    fn send_due_prewarms(
        &self,
        opts: &RunOptions,
        prewarms: &mut Prewarmer,
        session_start: Instant,
        carried: &[bool],
    ) {
        for (stage, replicas) in prewarms.due(session_start.elapsed().as_secs_f64()) {
            if let Some(index) = self.graph.stage_index(&stage)
                && !carried[index]
            {
                let target = self.target(index, opts);
                let backend = self.backend.clone();
                tokio::spawn(async move { backend.prewarm(&target, replicas).await });
            }
        }
    }
}

/// The memory an OOM-killed invocation is retried with: the planner's raise after an
/// OOM kill, within the profile's maximum; None when that is no more than `planned`.
fn oom_retry_memory(planned: u64, profile: Option<&FunctionProfile>) -> Option<u64> {
    let raise = vflow_planner::sizing::SizingConfig::default().oom_raise;
    let mut raised = planned as f64 * raise;
    if let Some(max) = profile
        .and_then(|p| p.spec.bounds.as_ref())
        .and_then(|b| b.max_memory.as_ref())
        .and_then(|q| q.value().ok())
    {
        raised = raised.min(max);
    }
    (raised.is_finite() && raised > planned as f64).then_some(raised as u64)
}

/// How long the driver may wait for a unit before a pre-warm request is due.
fn until_next_prewarm(next: Option<f64>, session_start: Instant) -> Duration {
    let idle = Duration::from_secs(3600);
    let Some(next) = next.filter(|n| n.is_finite()) else {
        return idle;
    };
    // `try_`: an absurd time in a plan must not panic the run.
    Duration::try_from_secs_f64((next - session_start.elapsed().as_secs_f64()).max(0.0))
        .unwrap_or(idle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_spread() {
        let within = |attempt: u32, base_ms: u64| {
            let ms: Vec<u64> = (0..200)
                .map(|_| backoff(attempt).as_millis() as u64)
                .collect();
            assert!(
                ms.iter()
                    .all(|m| *m >= base_ms * 3 / 4 && *m <= base_ms * 5 / 4),
                "attempt {attempt}: {ms:?}"
            );
            ms
        };
        within(1, 500);
        within(2, 1000);
        within(3, 2000);
        let capped = within(20, 10_000);
        let distinct: std::collections::BTreeSet<u64> = capped.into_iter().collect();
        assert!(distinct.len() > 1, "waits are spread, not equal");
    }
}
