//! Policies under test, each driving the engine with the planner's own functions.

use vflow_api::PrewarmPolicy;

use super::engine::{Command, Controller, RequestSpec, SimFunction};
use crate::{
    prewarm::{self, Margin, PathStage, Risk, StageProgress},
    provisioning::{self, FunctionLoad, ProvisioningConfig},
};

/// Pre-warming along the most likely path, re-planned when a run takes another branch.
pub struct PrewarmController {
    pub policy: PrewarmPolicy,
    pub margin: Margin,
    /// The predicted path (stage names are function names).
    pub predicted: Vec<PathStage>,
    /// Paths from each other branch's first stage to the end.
    pub alternatives: Vec<Vec<PathStage>>,
    pub function_names: Vec<String>,
    /// Per request: stages warmed for it and not used yet.
    warmed: Vec<Vec<String>>,
    /// (request, stage) -> when its warmed instance is expected ready.
    ready_at: std::collections::BTreeMap<(usize, String), f64>,
    /// Per request: which path it is on (0 predicted, k the k-th alternative).
    on_path: Vec<usize>,
    /// JIT re-schedules the rest of the path as each stage's input arrives.
    pub rolling: bool,
    /// JIT from the run's progress ([`prewarm::progress_schedule`]) instead of a
    /// margin: recomputed on every input arrival and stage start.
    pub progress: Option<Risk>,
    /// Per request (progress mode): what is known about each stage of its path.
    known: Vec<Vec<StageProgress>>,
    /// Per request (progress mode): pending (not yet issued) request times.
    planned: Vec<Vec<Option<f64>>>,
    /// Per request (progress mode): the wake-up pending, if any (older ones are stale).
    wake_at: Vec<Option<f64>>,
    pub replans: u64,
}

impl PrewarmController {
    pub fn new(
        policy: PrewarmPolicy,
        margin: Margin,
        predicted: Vec<PathStage>,
        alternatives: Vec<Vec<PathStage>>,
        functions: &[SimFunction],
    ) -> Self {
        PrewarmController {
            policy,
            margin,
            predicted,
            alternatives,
            function_names: functions.iter().map(|f| f.name.clone()).collect(),
            warmed: Vec::new(),
            ready_at: Default::default(),
            on_path: Vec::new(),
            rolling: true,
            progress: None,
            known: Vec::new(),
            planned: Vec::new(),
            wake_at: Vec::new(),
            replans: 0,
        }
    }

    /// JIT from the run's progress at the given risk.
    pub fn with_progress(mut self, risk: Risk) -> Self {
        self.progress = Some(risk);
        self
    }

    fn progress_mode(&self) -> Option<Risk> {
        self.progress
            .filter(|_| self.policy == PrewarmPolicy::JustInTime)
    }

    fn current_path(&self, request: usize) -> &[PathStage] {
        match self.on_path[request] {
            0 => &self.predicted,
            k => &self.alternatives[k - 1],
        }
    }

    fn grow(&mut self, request: usize) {
        if self.warmed.len() <= request {
            self.warmed.resize(request + 1, Vec::new());
            self.on_path.resize(request + 1, 0);
            self.known.resize(request + 1, Vec::new());
            self.planned.resize(request + 1, Vec::new());
            self.wake_at.resize(request + 1, None);
        }
    }

    /// Progress mode: a fresh path whose first stage's input arrived at `now` (served
    /// on demand unless warm).
    fn start_path(&mut self, request: usize, now: f64) {
        let path = self.current_path(request);
        let mut known = vec![StageProgress::default(); path.len()];
        if let Some(first) = known.first_mut() {
            first.input_at = Some(now);
            if !path[0].warm {
                first.requested_at = Some(now);
            }
        }
        let n = path.len();
        self.known[request] = known;
        self.planned[request] = vec![None; n];
    }

    /// Progress mode: issued requests become known, pending ones are replaced by the
    /// schedule from what is known now.
    fn recompute(&mut self, now: f64, request: usize, risk: Risk) -> Vec<Command> {
        let mut cmds = Vec::new();
        let path = self.current_path(request).to_vec();
        for (k, stage) in path.iter().enumerate() {
            match self.planned[request][k] {
                Some(t) if t <= now => {
                    self.known[request][k].requested_at = Some(t);
                    self.planned[request][k] = None;
                }
                Some(_) => {
                    self.planned[request][k] = None;
                    if let Some(function) = self.index(&stage.stage) {
                        cmds.push(Command::Cancel { function });
                    }
                }
                None => {}
            }
        }
        let actions = prewarm::progress_schedule(&path, &self.known[request], now, risk);
        for a in &actions {
            if let Some(k) = path.iter().position(|s| s.stage == a.stage) {
                self.planned[request][k] = Some(a.at_seconds);
            }
        }
        cmds.extend(self.commands(&actions));
        // Then decide the next ones, with what is known by then.
        if let Some(a) = actions.first()
            && self.wake_at[request] != Some(a.at_seconds)
        {
            self.wake_at[request] = Some(a.at_seconds);
            cmds.push(Command::Wake {
                at: a.at_seconds,
                token: request,
            });
        }
        cmds
    }

    fn progress_task_ready(
        &mut self,
        now: f64,
        request: usize,
        name: &str,
        risk: Risk,
    ) -> Vec<Command> {
        let mut cmds = Vec::new();
        let path = self.current_path(request).to_vec();
        let Some(k) = path.iter().position(|s| s.stage == name) else {
            // Another branch: release what was requested for this one and not used,
            // then schedule the branch taken.
            let Some(alt) = self
                .alternatives
                .iter()
                .position(|p| p.first().is_some_and(|s| s.stage == name))
            else {
                return cmds;
            };
            for (k, s) in path.iter().enumerate() {
                let p = self.known[request][k];
                let asked = p.requested_at.is_some() || self.planned[request][k].is_some();
                if asked
                    && p.input_at.is_none()
                    && let Some(function) = self.index(&s.stage)
                {
                    cmds.push(Command::Release { function });
                }
            }
            self.on_path[request] = alt + 1;
            self.replans += 1;
            self.start_path(request, now);
            cmds.extend(self.recompute(now, request, risk));
            return cmds;
        };
        let known = &mut self.known[request];
        known[k].input_at = Some(now);
        for &j in &path[k].after {
            if j < k && known[j].finished_at.is_none() {
                known[j].finished_at = Some(now - path[j].overhead_seconds);
            }
        }
        if !path[k].warm && known[k].requested_at.is_none() {
            // Served on demand from now: a pending request for it is moot.
            known[k].requested_at = Some(match self.planned[request][k] {
                Some(t) if t <= now => t,
                _ => now,
            });
            if self.planned[request][k].take().is_some_and(|t| t > now)
                && let Some(function) = self.index(name)
            {
                cmds.push(Command::Cancel { function });
            }
        }
        cmds.extend(self.recompute(now, request, risk));
        cmds
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.function_names.iter().position(|n| n == name)
    }

    fn note_ready(
        &mut self,
        request: usize,
        actions: &[prewarm::PrewarmAction],
        path: &[PathStage],
    ) {
        for a in actions {
            let cold = path
                .iter()
                .find(|s| s.stage == a.stage)
                .map_or(0.0, |s| s.cold_start_seconds);
            self.ready_at
                .insert((request, a.stage.clone()), a.at_seconds + cold);
        }
    }

    /// Rolling JIT: re-schedules the stages after `name` from now.
    fn roll(&mut self, now: f64, request: usize, name: &str, starts_at: f64) -> Vec<Command> {
        if !(self.rolling && self.policy == PrewarmPolicy::JustInTime) {
            return Vec::new();
        }
        let path = match self.on_path[request] {
            0 => self.predicted.clone(),
            k => self.alternatives[k - 1].clone(),
        };
        let Some(reached) = path.iter().position(|s| s.stage == name) else {
            return Vec::new();
        };
        let pending = &self.warmed[request];
        let actions: Vec<prewarm::PrewarmAction> =
            prewarm::reschedule(&path, reached, now, starts_at, self.margin)
                .into_iter()
                .filter(|a| pending.contains(&a.stage))
                .collect();
        self.note_ready(request, &actions, &path);
        let mut cmds: Vec<Command> = actions
            .iter()
            .filter_map(|a| {
                Some(Command::Cancel {
                    function: self.index(&a.stage)?,
                })
            })
            .collect();
        cmds.extend(self.commands(&actions));
        cmds
    }

    fn commands(&self, actions: &[prewarm::PrewarmAction]) -> Vec<Command> {
        actions
            .iter()
            .filter_map(|a| {
                Some(Command::Warm {
                    at: a.at_seconds,
                    function: self.index(&a.stage)?,
                    replicas: a.replicas,
                })
            })
            .collect()
    }
}

impl Controller for PrewarmController {
    fn on_arrival(&mut self, now: f64, request: usize, _spec: &RequestSpec) -> Vec<Command> {
        self.grow(request);
        if let Some(risk) = self.progress_mode() {
            self.on_path[request] = 0;
            self.start_path(request, now);
            return self.recompute(now, request, risk);
        }
        let actions = prewarm::schedule(self.policy, &self.predicted, now, self.margin);
        self.warmed[request] = actions.iter().map(|a| a.stage.clone()).collect();
        let path = self.predicted.clone();
        self.note_ready(request, &actions, &path);
        self.commands(&actions)
    }

    fn on_task_ready(
        &mut self,
        now: f64,
        request: usize,
        task: usize,
        spec: &RequestSpec,
    ) -> Vec<Command> {
        let Some(name) = spec
            .tasks
            .get(task)
            .and_then(|t| self.function_names.get(t.function))
            .cloned()
        else {
            return Vec::new();
        };
        if let Some(risk) = self.progress_mode() {
            return self.progress_task_ready(now, request, &name, risk);
        }
        let warmed = &mut self.warmed[request];
        if let Some(k) = warmed.iter().position(|w| *w == name) {
            warmed.remove(k);
            // Its instance is expected ready when the warm-up said, or now if earlier.
            let starts = self
                .ready_at
                .get(&(request, name.clone()))
                .copied()
                .unwrap_or(now);
            return self.roll(now, request, &name, starts);
        }
        if self.policy == PrewarmPolicy::None {
            return Vec::new();
        }
        // Not warmed for this run: did it take another branch?
        let Some(alt_index) = self
            .alternatives
            .iter()
            .position(|p| p.first().is_some_and(|s| s.stage == name))
        else {
            let cold = self
                .predicted
                .iter()
                .chain(self.alternatives.iter().flatten())
                .find(|s| s.stage == name)
                .map_or(0.0, |s| s.cold_start_seconds);
            return self.roll(now, request, &name, now + cold);
        };
        let warmed = &mut self.warmed[request];
        let alt = &self.alternatives[alt_index];
        self.on_path[request] = alt_index + 1;
        self.replans += 1;
        let plan = prewarm::replan(self.policy, warmed, alt, now, self.margin);
        let mut cmds: Vec<Command> = plan
            .release
            .iter()
            .filter_map(|s| {
                Some(Command::Release {
                    function: self.index(s)?,
                })
            })
            .collect();
        // The stage that just arrived is being served on demand now: warming another
        // instance of it would only idle.
        let warm: Vec<prewarm::PrewarmAction> = plan
            .warm
            .iter()
            .filter(|a| a.stage != name)
            .cloned()
            .collect();
        cmds.extend(self.commands(&warm));
        let warmed = &mut self.warmed[request];
        warmed.retain(|w| !plan.release.contains(w));
        // The stage that just arrived is being served on demand now.
        warmed.extend(
            plan.warm
                .iter()
                .map(|a| a.stage.clone())
                .filter(|s| *s != name),
        );
        let alt = self.alternatives[alt_index].clone();
        self.note_ready(request, &plan.warm, &alt);
        cmds
    }

    fn on_wake(&mut self, now: f64, request: usize) -> Vec<Command> {
        match self.progress_mode() {
            Some(risk) if self.wake_at.get(request) == Some(&Some(now)) => {
                self.wake_at[request] = None;
                self.recompute(now, request, risk)
            }
            _ => Vec::new(),
        }
    }

    fn on_task_start(
        &mut self,
        now: f64,
        request: usize,
        task: usize,
        spec: &RequestSpec,
    ) -> Vec<Command> {
        let Some(risk) = self.progress_mode() else {
            return Vec::new();
        };
        let Some(name) = spec
            .tasks
            .get(task)
            .and_then(|t| self.function_names.get(t.function))
            .cloned()
        else {
            return Vec::new();
        };
        let Some(k) = self
            .current_path(request)
            .iter()
            .position(|s| s.stage == name)
        else {
            return Vec::new();
        };
        let known = &mut self.known[request][k];
        known.started_at = Some(now);
        known.ready_at.get_or_insert(now);
        self.recompute(now, request, risk)
    }
}

/// How instances are kept, for the SMSE comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Provision {
    /// Every instance scales to zero after the keep-alive.
    AllEphemeral,
    /// One durable instance of each function, fixed at the start, as far as the memory
    /// budget less the reserve allows (in function order); the rest ephemeral.
    StaticDurable { budget_bytes: f64 },
    /// The planner's benefit/cost choice, re-planned every interval from the rates seen.
    Dynamic(ProvisioningConfig),
}

pub struct ProvisioningController {
    pub mode: Provision,
    pub loads: Vec<FunctionLoad>,
    pub interval_seconds: f64,
    started: bool,
    pub replans: u64,
}

impl ProvisioningController {
    pub fn new(mode: Provision, loads: Vec<FunctionLoad>, interval_seconds: f64) -> Self {
        ProvisioningController {
            mode,
            loads,
            interval_seconds,
            started: false,
            replans: 0,
        }
    }
}

impl Controller for ProvisioningController {
    fn interval(&self) -> Option<f64> {
        match self.mode {
            Provision::AllEphemeral => None,
            _ => Some(self.interval_seconds),
        }
    }

    fn on_interval(&mut self, _now: f64, arrivals: &[u64]) -> Vec<Command> {
        let mode = self.mode.clone();
        match &mode {
            Provision::AllEphemeral => Vec::new(),
            Provision::StaticDurable { budget_bytes } => {
                if self.started {
                    return Vec::new();
                }
                self.started = true;
                let mut left = *budget_bytes;
                let mut cmds = Vec::new();
                for (function, l) in self.loads.iter().enumerate() {
                    if l.memory_bytes <= left {
                        left -= l.memory_bytes;
                        cmds.push(Command::Durable { function, count: 1 });
                    }
                }
                cmds
            }
            Provision::Dynamic(cfg) => {
                if !self.started {
                    // Nothing observed yet.
                    self.started = true;
                    return Vec::new();
                }
                self.replans += 1;
                // As the operator plans: the rate over the window, and the durable
                // instances of the previous decision (its hysteresis).
                let loads: Vec<FunctionLoad> = self
                    .loads
                    .iter()
                    .zip(arrivals)
                    .map(|(l, &n)| FunctionLoad {
                        rate: n as f64 / self.interval_seconds,
                        ..l.clone()
                    })
                    .collect();
                let decided = provisioning::plan(&loads, cfg);
                for (l, d) in self.loads.iter_mut().zip(&decided) {
                    l.durable_now = d.durable;
                }
                decided
                    .iter()
                    .enumerate()
                    .map(|(function, d)| Command::Durable {
                        function,
                        count: d.durable,
                    })
                    .collect()
            }
        }
    }
}
