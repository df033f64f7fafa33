//! Walks one run through the DAG.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use vflow_api::FunctionProfile;
use vflow_api::validate::StageShape;
use vflow_contract::invocation::{COMPLETION_RECORD, CompletionRecord, InvokeRequest};
use vflow_storage::{Location, Store};

use crate::backend::{Backend, BackendError, StageTarget};
use crate::graph::{RunGraph, UnitKey};
use crate::record::{Attempt, RunPhase, RunRecord, UnitRecord, UnitStatus, unix_now};

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
    /// Stages to pre-warm and when, in seconds after the run starts.
    pub prewarm: Vec<(String, f64, u32)>,
    /// Instances per stage when the workflow does not say (maxScale).
    pub default_max_instances: u32,
}

#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub record: RunRecord,
}

/// Called with the record after every change.
pub type ProgressFn = Arc<dyn Fn(&RunRecord) + Send + Sync>;

pub const RUN_RECORD: &str = "_vflow-run.json";

/// Backoff before retry `n` (1-based): 0.5 s, 1 s, 2 s ... capped at 10 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((500u64 << attempt.saturating_sub(1).min(5)).min(10_000))
}

pub struct Engine<B: Backend> {
    pub graph: RunGraph,
    pub workflow: String,
    profiles: BTreeMap<String, FunctionProfile>,
    backend: Arc<B>,
    store: Store,
    progress: Option<ProgressFn>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Graph(#[from] crate::graph::GraphError),
    #[error("stage {stage}: no FunctionProfile {function}")]
    MissingProfile { stage: String, function: String },
}

struct Dispatch {
    key: UnitKey,
    request: InvokeRequest,
    target: StageTarget,
    retries: u32,
}

type Finished = (
    UnitKey,
    Result<Vec<Attempt>, (Vec<Attempt>, String)>,
    Option<UnitDone>,
);

struct UnitDone {
    outputs: Vec<String>,
    metadata: serde_json::Map<String, serde_json::Value>,
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
        })
    }

    /// Called after every change of the record (progress bars, logs).
    pub fn on_progress(&mut self, f: impl Fn(&RunRecord) + Send + Sync + 'static) {
        self.progress = Some(Arc::new(f));
    }

    pub fn target(&self, stage: usize, default_max: u32) -> StageTarget {
        let node = &self.graph.stages[stage];
        let profile = self.profiles.get(&node.function);
        StageTarget {
            stage: node.name.clone(),
            function: node.function.clone(),
            command: profile.map(|p| p.spec.command.clone()).unwrap_or_default(),
            warmup_command: profile
                .map(|p| p.spec.warmup_command.clone())
                .unwrap_or_default(),
            concurrency: node
                .concurrency
                .or(profile.map(|p| p.spec.concurrency))
                .unwrap_or(1)
                .max(1),
            min_instances: node.min_scale.unwrap_or(0),
            max_instances: node.max_scale.unwrap_or(default_max).max(1),
            timeout_seconds: self.graph.timeout_seconds(stage, profile).unwrap_or(600.0),
        }
    }

    async fn load(&self, opts: &RunOptions) -> RunRecord {
        let location = opts.prefix.join(RUN_RECORD);
        if let Ok(Some(bytes)) = self.store.get_bytes(&location).await
            && let Ok(record) = serde_json::from_slice::<RunRecord>(&bytes)
            && record.workflow == self.workflow
            && record.input == opts.input
        {
            return record;
        }
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

    async fn persist(&self, opts: &RunOptions, record: &RunRecord) {
        if let Some(progress) = &self.progress {
            progress(record);
        }
        match serde_json::to_vec_pretty(record) {
            Ok(bytes) => {
                if let Err(e) = self
                    .store
                    .put_bytes(&opts.prefix.join(RUN_RECORD), bytes)
                    .await
                {
                    tracing::warn!(error = %e, "could not persist the run's progress");
                }
            }
            Err(e) => tracing::error!(error = %e, "could not encode the run's progress"),
        }
    }

    fn unit_prefix(&self, opts: &RunOptions, key: UnitKey) -> Location {
        let stage = &self.graph.stages[key.stage].name;
        match key.segment {
            Some(s) => opts.prefix.join(&format!("{stage}/{s:05}/")),
            None => opts.prefix.join(&format!("{stage}/all/")),
        }
    }

    /// Units that exist now (per-segment ones once the segment count is known).
    fn all_units(&self, record: &RunRecord) -> Vec<UnitKey> {
        self.graph
            .order
            .iter()
            .flat_map(|&stage| self.graph.units_of(stage, record.segments))
            .collect()
    }

    /// The units whose outputs `key` reads from stage `upstream`.
    fn sources(&self, record: &RunRecord, key: UnitKey, upstream: usize) -> Option<Vec<UnitKey>> {
        let up = &self.graph.stages[upstream];
        Some(match (up.shape, key.segment) {
            (StageShape::Once, _) => vec![UnitKey {
                stage: upstream,
                segment: None,
            }],
            (StageShape::PerSegment(_), Some(s)) => vec![UnitKey {
                stage: upstream,
                segment: Some(s),
            }],
            (StageShape::PerSegment(_), None) => (0..record.segments?)
                .map(|s| UnitKey {
                    stage: upstream,
                    segment: Some(s),
                })
                .collect(),
        })
    }

    fn unit<'r>(&self, record: &'r RunRecord, key: UnitKey) -> Option<&'r UnitRecord> {
        record.unit(&self.graph.stages[key.stage].name, key.segment)
    }

    fn settled(&self, record: &RunRecord, key: UnitKey) -> bool {
        self.unit(record, key)
            .is_some_and(|u| matches!(u.status, UnitStatus::Done | UnitStatus::Skipped))
    }

    /// The inputs `key` reads from one upstream stage.
    fn inputs_from(&self, record: &RunRecord, key: UnitKey, upstream: usize) -> Vec<String> {
        let up = &self.graph.stages[upstream];
        let Some(sources) = self.sources(record, key, upstream) else {
            return Vec::new();
        };
        let mut inputs = Vec::new();
        for source in sources {
            let outputs = self
                .unit(record, source)
                .map(|u| u.outputs.clone())
                .unwrap_or_default();
            // A per-segment unit reads its own segment of a fan-out stage's outputs.
            if up.fan_out
                && let Some(segment) = key.segment
            {
                inputs.extend(outputs.get(segment as usize).cloned());
            } else {
                inputs.extend(outputs);
            }
        }
        inputs
    }

    fn inputs_for(&self, record: &RunRecord, key: UnitKey) -> Vec<String> {
        let node = &self.graph.stages[key.stage];
        if node.after.is_empty() {
            return vec![record.input.clone()];
        }
        node.after
            .iter()
            .flat_map(|&up| self.inputs_from(record, key, up))
            .collect()
    }

    fn ready(&self, record: &RunRecord, key: UnitKey) -> bool {
        let node = &self.graph.stages[key.stage];
        let mut needed: Vec<usize> = node.after.clone();
        if let Some((_, source, _)) = &node.when {
            needed.push(*source);
        }
        needed.iter().all(|&up| {
            self.sources(record, key, up)
                .is_some_and(|units| units.iter().all(|&u| self.settled(record, u)))
        })
    }

    /// Runs (or resumes) one run to its end, or until `cancel` turns true.
    pub async fn run(&self, opts: &RunOptions, mut cancel: watch::Receiver<bool>) -> RunOutcome {
        let mut record = self.load(opts).await;
        if record.phase == RunPhase::Succeeded {
            return RunOutcome { record };
        }
        record.sessions += 1;
        record.phase = RunPhase::Running;
        record.message = None;
        record.finished_at = None;
        // What an interrupted process left running (or failed) is tried again.
        for unit in &mut record.units {
            if matches!(unit.status, UnitStatus::Running | UnitStatus::Failed) {
                unit.status = UnitStatus::Pending;
                unit.message = None;
            }
        }
        self.persist(opts, &record).await;

        let session_start = Instant::now();
        let mut prewarms: Vec<(String, f64, u32)> = opts.prewarm.clone();
        let mut tasks: JoinSet<Finished> = JoinSet::new();
        let mut failure: Option<String> = None;
        loop {
            if *cancel.borrow() {
                tasks.abort_all();
                self.backend.shutdown().await;
                record.phase = RunPhase::Cancelled;
                record.message = Some("cancelled".into());
                break;
            }
            // Pre-warm requests that are due.
            let elapsed = session_start.elapsed().as_secs_f64();
            let (due, later): (Vec<_>, Vec<_>) =
                prewarms.into_iter().partition(|(_, at, _)| *at <= elapsed);
            prewarms = later;
            for (stage, _, replicas) in due {
                if let Some(index) = self.graph.stage_index(&stage) {
                    let target = self.target(index, opts.default_max_instances);
                    let backend = self.backend.clone();
                    tokio::spawn(async move { backend.prewarm(&target, replicas).await });
                }
            }

            if failure.is_none() {
                let dispatched = self.dispatch_ready(opts, &mut record, &mut tasks).await;
                if let Err(message) = dispatched {
                    failure = Some(message);
                }
                self.persist(opts, &record).await;
            }
            if tasks.is_empty() {
                break;
            }
            let next_prewarm = prewarms
                .iter()
                .map(|(_, at, _)| *at)
                .fold(f64::INFINITY, f64::min);
            let wait = if next_prewarm.is_finite() {
                Duration::from_secs_f64(
                    (next_prewarm - session_start.elapsed().as_secs_f64()).max(0.0),
                )
            } else {
                Duration::from_secs(3600)
            };
            tokio::select! {
                joined = tasks.join_next() => {
                    let Some(joined) = joined else { continue };
                    let Ok((key, result, done)) = joined else { continue };
                    if let Some(message) = self.finish(&mut record, key, result, done) {
                        failure.get_or_insert(message);
                        // Stop what is still running: the run has failed.
                        tasks.abort_all();
                    }
                    self.persist(opts, &record).await;
                }
                _ = cancel.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if record.phase == RunPhase::Running {
            match failure {
                Some(message) => {
                    record.phase = RunPhase::Failed;
                    record.message = Some(message);
                    for unit in &mut record.units {
                        if unit.status == UnitStatus::Running {
                            unit.status = UnitStatus::Pending;
                        }
                    }
                }
                None => {
                    let units = self.all_units(&record);
                    let unsettled = units.iter().find(|&&k| !self.settled(&record, k));
                    match unsettled {
                        Some(&k) => {
                            record.phase = RunPhase::Failed;
                            record.message = Some(format!(
                                "stage {} could not start: what it reads never became available",
                                self.graph.stages[k.stage].name
                            ));
                        }
                        None => record.phase = RunPhase::Succeeded,
                    }
                }
            }
        }
        record.finished_at = Some(unix_now());
        self.persist(opts, &record).await;
        RunOutcome { record }
    }

    /// Starts every unit whose inputs are ready; skips those whose condition is false.
    async fn dispatch_ready(
        &self,
        opts: &RunOptions,
        record: &mut RunRecord,
        tasks: &mut JoinSet<Finished>,
    ) -> Result<(), String> {
        loop {
            let mut progressed = false;
            for key in self.all_units(record) {
                let name = self.graph.stages[key.stage].name.clone();
                if record.unit(&name, key.segment).is_none() {
                    record.units.push(UnitRecord {
                        stage: name.clone(),
                        segment: key.segment,
                        status: UnitStatus::Pending,
                        outputs: Vec::new(),
                        metadata: Default::default(),
                        attempts: Vec::new(),
                        message: None,
                    });
                }
                let pending = record
                    .unit(&name, key.segment)
                    .is_some_and(|u| u.status == UnitStatus::Pending);
                if !pending || !self.ready(record, key) {
                    continue;
                }
                progressed = true;
                if let Some(skip_reason) = self.condition_false(record, key)? {
                    let passthrough = match self.graph.stages[key.stage].after.first() {
                        Some(&first) => self.inputs_from(record, key, first),
                        None => vec![record.input.clone()],
                    };
                    if let Some(unit) = record.unit_mut(&name, key.segment) {
                        unit.status = UnitStatus::Skipped;
                        unit.outputs = passthrough;
                        unit.message = Some(skip_reason);
                    }
                    self.after_settled(record, key);
                    continue;
                }
                let mut params = self.graph.stages[key.stage].params.clone();
                if let Some(overrides) = opts.params.get(&name) {
                    params.extend(overrides.clone());
                }
                let target = self.target(key.stage, opts.default_max_instances);
                let request = InvokeRequest {
                    run: record.run.clone(),
                    stage: name.clone(),
                    segment: key.segment,
                    inputs: self.inputs_for(record, key),
                    output_prefix: self.unit_prefix(opts, key).to_string(),
                    params,
                    timeout_seconds: Some(target.timeout_seconds),
                };
                if let Some(unit) = record.unit_mut(&name, key.segment) {
                    unit.status = UnitStatus::Running;
                }
                let dispatch = Dispatch {
                    key,
                    request,
                    retries: self.graph.stages[key.stage].retries,
                    target,
                };
                let backend = self.backend.clone();
                let store = self.store.clone();
                tasks.spawn(invoke_unit(backend, store, dispatch));
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    /// `Some(reason)` when the unit's `when` condition is false; an error when it
    /// cannot be evaluated (the metadata lacks the key), which fails the run.
    fn condition_false(&self, record: &RunRecord, key: UnitKey) -> Result<Option<String>, String> {
        let node = &self.graph.stages[key.stage];
        let Some((condition, source, text)) = &node.when else {
            return Ok(None);
        };
        let source_key = match self.graph.stages[*source].shape {
            StageShape::Once => UnitKey {
                stage: *source,
                segment: None,
            },
            StageShape::PerSegment(_) => UnitKey {
                stage: *source,
                segment: key.segment,
            },
        };
        let source_unit = self.unit(record, source_key);
        // A skipped stage wrote no metadata: conditions on it count as false, the same
        // rule the planner uses for branch probabilities.
        if source_unit.is_some_and(|u| u.status == UnitStatus::Skipped) {
            return Ok(Some(format!(
                "skipped: {text} reads {}, which was skipped",
                self.graph.stages[*source].name
            )));
        }
        let metadata = source_unit.map(|u| u.metadata.clone()).unwrap_or_default();
        match condition.evaluate(&metadata) {
            Ok(true) => Ok(None),
            Ok(false) => Ok(Some(format!("skipped: {text} is false"))),
            Err(e) => Err(format!(
                "stage {}{}: cannot evaluate its condition: {e}",
                node.name,
                key.segment
                    .map(|s| format!(" segment {s}"))
                    .unwrap_or_default()
            )),
        }
    }

    /// A fan-out stage that finished fixes the number of segments.
    fn after_settled(&self, record: &mut RunRecord, key: UnitKey) {
        if self.graph.stages[key.stage].fan_out && record.segments.is_none() {
            let count = self
                .unit(record, key)
                .map(|u| u.outputs.len() as u32)
                .unwrap_or(0);
            record.segments = Some(count);
        }
    }

    fn finish(
        &self,
        record: &mut RunRecord,
        key: UnitKey,
        result: Result<Vec<Attempt>, (Vec<Attempt>, String)>,
        done: Option<UnitDone>,
    ) -> Option<String> {
        let name = self.graph.stages[key.stage].name.clone();
        let unit = record.unit_mut(&name, key.segment)?;
        match result {
            Ok(attempts) => {
                unit.attempts.extend(attempts);
                if let Some(done) = done {
                    unit.outputs = done.outputs;
                    unit.metadata = done.metadata;
                }
                unit.status = UnitStatus::Done;
                self.after_settled(record, key);
                if self.graph.stages[key.stage].fan_out && record.segments == Some(0) {
                    return Some(format!("stage {name} wrote no segments"));
                }
                None
            }
            Err((attempts, message)) => {
                let tries = attempts.len();
                unit.attempts.extend(attempts);
                unit.status = UnitStatus::Failed;
                unit.message = Some(message.clone());
                let place = key
                    .segment
                    .map(|s| format!(" segment {s}"))
                    .unwrap_or_default();
                Some(format!(
                    "stage {name}{place} failed after {tries} attempt(s): {message}"
                ))
            }
        }
    }
}

fn attempt_from(invoked: &crate::backend::Invoked, submitted_at: f64) -> Attempt {
    let r = &invoked.response;
    Attempt {
        submitted_at,
        finished_at: unix_now(),
        queued_seconds: invoked.queued_seconds,
        cold_start_seconds: invoked.cold_start_seconds,
        download_seconds: r.download_seconds,
        function_seconds: r.function_seconds,
        upload_seconds: r.upload_seconds,
        cpu_seconds: r.cpu_seconds,
        peak_rss_bytes: r.peak_rss_bytes,
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        instance: r.instance.clone(),
        error: None,
        reused: false,
    }
}

/// One unit, with retries; first checks whether an earlier process already finished it.
async fn invoke_unit<B: Backend>(backend: Arc<B>, store: Store, d: Dispatch) -> Finished {
    // Idempotency: complete outputs from an interrupted run are taken, not redone.
    if let Ok(prefix) = Location::parse(&d.request.output_prefix)
        && let Ok(Some(bytes)) = store.get_bytes(&prefix.join(COMPLETION_RECORD)).await
        && let Ok(previous) = serde_json::from_slice::<CompletionRecord>(&bytes)
        && previous.request.inputs == d.request.inputs
        && previous.request.params == d.request.params
    {
        let now = unix_now();
        let attempt = Attempt {
            submitted_at: now,
            finished_at: now,
            reused: true,
            instance: previous.response.instance.clone(),
            ..Default::default()
        };
        let done = UnitDone {
            outputs: previous
                .response
                .outputs
                .iter()
                .map(|o| o.uri.clone())
                .collect(),
            metadata: previous.response.metadata.clone(),
        };
        return (d.key, Ok(vec![attempt]), Some(done));
    }
    let mut attempts = Vec::new();
    let mut tries = 0u32;
    loop {
        tries += 1;
        let submitted_at = unix_now();
        match backend.invoke(&d.target, d.request.clone()).await {
            Ok(invoked) => {
                attempts.push(attempt_from(&invoked, submitted_at));
                let done = UnitDone {
                    outputs: invoked
                        .response
                        .outputs
                        .iter()
                        .map(|o| o.uri.clone())
                        .collect(),
                    metadata: invoked.response.metadata.clone(),
                };
                return (d.key, Ok(attempts), Some(done));
            }
            Err(err) => {
                let message = match &err {
                    BackendError::Failed(f)
                        if !f.stderr_tail.is_empty() && !f.message.contains(&f.stderr_tail) =>
                    {
                        format!("{}\n{}", f.message, f.stderr_tail)
                    }
                    other => other.to_string(),
                };
                attempts.push(Attempt {
                    submitted_at,
                    finished_at: unix_now(),
                    error: Some(message.clone()),
                    ..Default::default()
                });
                if !err.retryable() || tries > d.retries {
                    return (d.key, Err((attempts, message)), None);
                }
                tracing::info!(stage = %d.request.stage, segment = ?d.request.segment, tries, error = %err, "retrying");
                tokio::time::sleep(backoff(tries)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(20), Duration::from_secs(10));
    }
}
