//! The decisions of a run, without I/O: which units start, which are skipped, what
//! each reads, when the run has failed or is done.
//!
//! Everything here is a function of the graph, the run's plain data and the
//! [`RunRecord`]; no clock, store or backend. The driver ([`crate::engine`]) persists
//! the record, runs what [`Scheduler::next`] returns and reports back with
//! [`Scheduler::finish`], so the rules can be tested on a record alone.

use std::collections::BTreeMap;

use vflow_api::validate::StageShape;
use vflow_contract::invocation::{FusedStep, InvokeRequest};
use vflow_storage::Location;

use crate::backend::StageTarget;
use crate::graph::{RunGraph, UnitKey};
use crate::record::{Attempt, RunPhase, RunRecord, UnitRecord, UnitStatus, unix_now};

/// A unit to start: what to send, to which stage, how often to retry.
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub key: UnitKey,
    pub request: InvokeRequest,
    pub target: StageTarget,
    pub retries: u32,
}

/// What [`Scheduler::next`] decided.
#[derive(Debug, Default)]
pub struct Next {
    /// Units now marked Running; the driver must start each.
    pub start: Vec<Dispatch>,
    /// A condition could not be evaluated: the run fails. What `start` holds was
    /// decided before that and still runs.
    pub failure: Option<String>,
    /// Units now marked Skipped (their condition is false).
    pub skipped: Vec<UnitKey>,
}

/// How a unit's invocation ended, every attempt included.
#[derive(Debug, Clone)]
pub enum UnitOutcome {
    Done {
        attempts: Vec<Attempt>,
        outputs: Vec<String>,
        /// The size of each output, in `outputs`' order (empty where not known).
        output_bytes: Vec<u64>,
        metadata: serde_json::Map<String, serde_json::Value>,
        /// The stages fused after this one, in chain order (their units settle with it).
        chained: Vec<StepOutcome>,
    },
    Failed {
        attempts: Vec<Attempt>,
        message: String,
    },
}

/// How one fused stage of a chain went (the chain succeeded).
#[derive(Debug, Clone)]
pub struct StepOutcome {
    pub attempt: Attempt,
    pub outputs: Vec<String>,
    pub output_bytes: Vec<u64>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// The rules of one run.
pub struct Scheduler<'a> {
    graph: &'a RunGraph,
    /// Every output goes under here.
    prefix: &'a Location,
    /// Per-stage parameter overrides from the VideoWorkflowRun.
    params: &'a BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    /// What invokes each stage, by stage index.
    targets: Vec<StageTarget>,
    /// For a stage fused after another: the stage heading its chain, whose units
    /// carry its units (they never start on their own).
    carried_by: Vec<Option<usize>>,
}

impl<'a> Scheduler<'a> {
    /// `target(i)` says what invokes stage `i`; it is asked once per stage, here.
    pub fn new(
        graph: &'a RunGraph,
        prefix: &'a Location,
        params: &'a BTreeMap<String, BTreeMap<String, serde_json::Value>>,
        target: impl Fn(usize) -> StageTarget,
    ) -> Self {
        let mut targets: Vec<StageTarget> = (0..graph.stages.len()).map(target).collect();
        let mut carried_by = vec![None; graph.stages.len()];
        for (head, target) in targets.iter_mut().enumerate() {
            let members: Option<Vec<usize>> = target
                .fused
                .iter()
                .map(|m| graph.stage_index(&m.stage))
                .collect();
            match members {
                Some(members) if sound_chain(graph, head, &members) => {
                    for m in members {
                        carried_by[m] = Some(head);
                    }
                }
                _ => {
                    if !target.fused.is_empty() {
                        tracing::warn!(stage = %graph.stages[head].name, "the plan's fused chain does not fit the workflow; its stages run on their own");
                    }
                    target.fused.clear();
                }
            }
        }
        Self {
            graph,
            prefix,
            params,
            targets,
            carried_by,
        }
    }

    /// The stage whose units carry `stage`'s (it is fused after that one), if any.
    pub fn carried_by(&self, stage: usize) -> Option<usize> {
        self.carried_by[stage]
    }

    /// Every unit of stage `stage` is settled as Skipped, and no more will come: the
    /// stage does not run in this run.
    pub fn never_runs(&self, record: &RunRecord, stage: usize) -> bool {
        let units = self.all_units(record);
        let of_stage: Vec<&UnitKey> = units.iter().filter(|k| k.stage == stage).collect();
        // A per-segment stage's units are known once the fan-out fixed the count.
        let known = !matches!(self.graph.stages[stage].shape, StageShape::PerSegment(_))
            || record.segments.is_some();
        known
            && !of_stage.is_empty()
            && of_stage.iter().all(|&&k| {
                self.unit(record, k)
                    .is_some_and(|u| u.status == UnitStatus::Skipped)
            })
    }

    /// A new session of the run: what an interrupted process left running (or
    /// failed) is tried again; what is Done stays done.
    pub fn resume(record: &mut RunRecord) {
        record.sessions += 1;
        record.phase = RunPhase::Running;
        record.message = None;
        record.finished_at = None;
        for unit in &mut record.units {
            if matches!(unit.status, UnitStatus::Running | UnitStatus::Failed) {
                unit.status = UnitStatus::Pending;
                unit.message = None;
            }
        }
    }

    /// Marks units whose inputs are ready Running (or Skipped when their condition is
    /// false) and returns the ones to start. Repeats until nothing changes, since a
    /// skip can make more units ready.
    ///
    /// A stage has at most as many units running as its instances hold at once
    /// ([`Self::capacity`]); the rest stay Pending, and of a stage's ready units the
    /// ones that read the most bytes start first. Longest first is the order the
    /// planner's makespan assumes (LPT, `vflow_planner::segments`), and only the
    /// engine can keep it: a backend's queue serves waiting invocations in no
    /// particular order.
    pub fn next(&self, record: &mut RunRecord) -> Next {
        let mut next = Next::default();
        loop {
            let mut progressed = false;
            let mut ready = Vec::new();
            let units = self.all_units(record);
            for &key in &units {
                let name = &self.graph.stages[key.stage].name;
                if record.unit(name, key.segment).is_none() {
                    record.units.push(UnitRecord {
                        stage: name.clone(),
                        segment: key.segment,
                        status: UnitStatus::Pending,
                        outputs: Vec::new(),
                        output_bytes: Vec::new(),
                        metadata: Default::default(),
                        attempts: Vec::new(),
                        started_at: None,
                        message: None,
                    });
                }
            }
            for key in units {
                let name = self.graph.stages[key.stage].name.clone();
                if self.carried_by[key.stage].is_some() {
                    continue;
                }
                let pending = record
                    .unit(&name, key.segment)
                    .is_some_and(|u| u.status == UnitStatus::Pending);
                if !pending || !self.ready(record, key) {
                    continue;
                }
                let skip = match self.condition_false(record, key) {
                    Ok(skip) => skip,
                    Err(message) => {
                        next.failure = Some(message);
                        return next;
                    }
                };
                if let Some(skip_reason) = skip {
                    let passthrough: Vec<(String, u64)> =
                        match self.graph.stages[key.stage].after.first() {
                            Some(&first) => self
                                .sized_inputs_from(record, key, first)
                                .into_iter()
                                .map(|(uri, bytes)| (uri.to_string(), bytes))
                                .collect(),
                            None => vec![(record.input.clone(), 0)],
                        };
                    if let Some(unit) = record.unit_mut(&name, key.segment) {
                        unit.status = UnitStatus::Skipped;
                        (unit.outputs, unit.output_bytes) = passthrough.into_iter().unzip();
                        unit.message = Some(skip_reason);
                    }
                    self.after_settled(record, key);
                    next.skipped.push(key);
                    progressed = true;
                    continue;
                }
                ready.push((key, self.input_bytes(record, key)));
            }
            ready.sort_by_key(|&(key, bytes)| (key.stage, std::cmp::Reverse(bytes), key.segment));
            let mut free = BTreeMap::new();
            for (key, _) in ready {
                let free = free.entry(key.stage).or_insert_with(|| {
                    self.capacity(key.stage)
                        .saturating_sub(self.running(record, key.stage))
                });
                if *free == 0 {
                    continue;
                }
                *free -= 1;
                progressed = true;
                next.start.push(self.dispatch(record, key));
                let now = unix_now();
                for stage in std::iter::once(key.stage).chain(self.members(key.stage)) {
                    let name = &self.graph.stages[stage].name;
                    if let Some(unit) = record.unit_mut(name, key.segment) {
                        unit.status = UnitStatus::Running;
                        unit.started_at = Some(now);
                    }
                }
            }
            if !progressed {
                return next;
            }
        }
    }

    /// Records how a unit ended. `Some(message)` when that fails the run.
    pub fn finish(
        &self,
        record: &mut RunRecord,
        key: UnitKey,
        outcome: UnitOutcome,
    ) -> Option<String> {
        let name = self.graph.stages[key.stage].name.clone();
        let unit = record.unit_mut(&name, key.segment)?;
        match outcome {
            UnitOutcome::Done {
                attempts,
                outputs,
                output_bytes,
                metadata,
                chained,
            } => {
                let members = self.members(key.stage);
                if chained.len() != members.len() {
                    unit.attempts.extend(attempts);
                    unit.status = UnitStatus::Failed;
                    let message = format!(
                        "the fused chain from {name} answered for {} of its {} stages after it",
                        chained.len(),
                        members.len()
                    );
                    unit.message = Some(message.clone());
                    return Some(message);
                }
                unit.attempts.extend(attempts);
                unit.outputs = outputs;
                unit.output_bytes = output_bytes;
                unit.metadata = metadata;
                unit.status = UnitStatus::Done;
                if !members.is_empty() {
                    unit.message = Some("fused: its outputs went to the next stage locally".into());
                }
                self.after_settled(record, key);
                let mut last = key;
                for (stage, step) in members.into_iter().zip(chained) {
                    let member = UnitKey {
                        stage,
                        segment: key.segment,
                    };
                    let name = &self.graph.stages[stage].name;
                    if let Some(unit) = record.unit_mut(name, key.segment) {
                        unit.attempts.push(step.attempt);
                        unit.outputs = step.outputs;
                        unit.output_bytes = step.output_bytes;
                        unit.metadata = step.metadata;
                        unit.status = UnitStatus::Done;
                    }
                    self.after_settled(record, member);
                    last = member;
                }
                if self.graph.stages[last.stage].fan_out && record.segments == Some(0) {
                    let name = &self.graph.stages[last.stage].name;
                    return Some(format!("stage {name} wrote no segments"));
                }
                None
            }
            UnitOutcome::Failed { attempts, message } => {
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

    /// Sets the phase of a run whose units have all stopped (nothing in flight):
    /// Failed with `failure`, Failed when a unit never became ready, else Succeeded.
    /// A run already out of Running (cancelled) keeps its phase.
    pub fn conclude(&self, record: &mut RunRecord, failure: Option<String>) {
        if record.phase != RunPhase::Running {
            return;
        }
        match failure {
            Some(message) => {
                record.phase = RunPhase::Failed;
                record.message = Some(message);
                // Aborted units did not finish: a resumed run starts them again.
                for unit in &mut record.units {
                    if unit.status == UnitStatus::Running {
                        unit.status = UnitStatus::Pending;
                    }
                }
            }
            None => {
                let units = self.all_units(record);
                match units.iter().find(|&&k| !self.settled(record, k)) {
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

    fn dispatch(&self, record: &RunRecord, key: UnitKey) -> Dispatch {
        let node = &self.graph.stages[key.stage];
        let params = self.params_of(key.stage);
        let target = self.targets[key.stage].clone();
        let then = self
            .members(key.stage)
            .into_iter()
            .zip(&target.fused)
            .map(|(stage, member)| FusedStep {
                stage: member.stage.clone(),
                output_prefix: self
                    .unit_prefix(UnitKey {
                        stage,
                        segment: key.segment,
                    })
                    .to_string(),
                params: self.params_of(stage),
                timeout_seconds: Some(member.timeout_seconds),
            })
            .collect();
        let request = InvokeRequest {
            run: record.run.clone(),
            stage: node.name.clone(),
            segment: key.segment,
            inputs: self.inputs_for(record, key),
            output_prefix: self.unit_prefix(key).to_string(),
            params,
            timeout_seconds: Some(target.timeout_seconds),
            then,
        };
        Dispatch {
            key,
            request,
            target,
            retries: node.retries,
        }
    }

    /// How many of a stage's units may run at once: the invocations its instances hold
    /// (`max_instances` x `concurrency`). More would only wait in the backend's queue.
    fn capacity(&self, stage: usize) -> usize {
        let target = &self.targets[stage];
        (target.max_instances.max(1) as usize).saturating_mul(target.concurrency.max(1) as usize)
    }

    fn running(&self, record: &RunRecord, stage: usize) -> usize {
        let name = &self.graph.stages[stage].name;
        record
            .units
            .iter()
            .filter(|u| u.stage == *name && u.status == UnitStatus::Running)
            .count()
    }

    /// The bytes `key` reads, as the invocations that wrote them reported (an input of
    /// unknown size counts 0): the measure of a unit's work that is known before it runs.
    fn input_bytes(&self, record: &RunRecord, key: UnitKey) -> u64 {
        self.graph.stages[key.stage]
            .after
            .iter()
            .flat_map(|&up| self.sized_inputs_from(record, key, up))
            .fold(0u64, |sum, (_, bytes)| sum.saturating_add(bytes))
    }

    /// The stage's params with the run's overrides.
    fn params_of(&self, stage: usize) -> BTreeMap<String, serde_json::Value> {
        let node = &self.graph.stages[stage];
        let mut params = node.params.clone();
        if let Some(overrides) = self.params.get(&node.name) {
            params.extend(overrides.clone());
        }
        params
    }

    /// The stages fused after `head`, in chain order.
    pub fn members(&self, head: usize) -> Vec<usize> {
        self.targets[head]
            .fused
            .iter()
            .filter_map(|m| self.graph.stage_index(&m.stage))
            .collect()
    }

    fn unit_prefix(&self, key: UnitKey) -> Location {
        let stage = &self.graph.stages[key.stage].name;
        match key.segment {
            Some(s) => self.prefix.join(&format!("{stage}/{s:05}/")),
            None => self.prefix.join(&format!("{stage}/all/")),
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
        self.sized_inputs_from(record, key, upstream)
            .into_iter()
            .map(|(uri, _)| uri.to_string())
            .collect()
    }

    /// The inputs `key` reads from one upstream stage, each with its size in bytes (0
    /// where the record does not know it).
    /// Borrowed: the scheduler asks this of every waiting unit on every pass.
    fn sized_inputs_from<'r>(
        &self,
        record: &'r RunRecord,
        key: UnitKey,
        upstream: usize,
    ) -> Vec<(&'r str, u64)> {
        let up = &self.graph.stages[upstream];
        let Some(sources) = self.sources(record, key, upstream) else {
            return Vec::new();
        };
        let mut inputs = Vec::new();
        for source in sources {
            let Some(unit) = self.unit(record, source) else {
                continue;
            };
            let sized = |i: usize| {
                let uri = unit.outputs.get(i)?;
                Some((uri.as_str(), unit.output_bytes.get(i).copied().unwrap_or(0)))
            };
            // A per-segment unit reads its own segment of a fan-out stage's outputs.
            if up.fan_out
                && let Some(segment) = key.segment
            {
                inputs.extend(sized(segment as usize));
            } else {
                inputs.extend((0..unit.outputs.len()).filter_map(sized));
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
}

/// A chain the runtime can carry out as one invocation: each member reads only the stage
/// before it, which feeds nothing else and fans out no segments; all have the same
/// shape and no condition (a skipped step would leave the chain half run).
fn sound_chain(graph: &RunGraph, head: usize, members: &[usize]) -> bool {
    let mut previous = head;
    for &m in members {
        let node = &graph.stages[m];
        let before = &graph.stages[previous];
        let only_child = graph
            .stages
            .iter()
            .enumerate()
            .all(|(j, s)| j == m || !s.after.contains(&previous));
        if node.after != [previous]
            || node.when.is_some()
            || before.when.is_some()
            || before.fan_out
            || node.shape != before.shape
            || !only_child
            || m == head
        {
            return false;
        }
        previous = m;
    }
    true
}
