//! Policies under test, each driving the engine with the planner's own functions.

use vflow_api::PrewarmPolicy;

use super::engine::{Command, Controller, RequestSpec, SimFunction};
use crate::{
    prewarm::{self, Margin, PathStage},
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
            replans: 0,
        }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.function_names.iter().position(|n| n == name)
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
        if self.warmed.len() <= request {
            self.warmed.resize(request + 1, Vec::new());
        }
        let actions = prewarm::schedule(self.policy, &self.predicted, now, self.margin);
        self.warmed[request] = actions.iter().map(|a| a.stage.clone()).collect();
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
        let warmed = &mut self.warmed[request];
        if let Some(k) = warmed.iter().position(|w| *w == name) {
            warmed.remove(k);
            return Vec::new();
        }
        if self.policy == PrewarmPolicy::None {
            return Vec::new();
        }
        // Not warmed for this run: did it take another branch?
        let Some(alt) = self
            .alternatives
            .iter()
            .find(|p| p.first().is_some_and(|s| s.stage == name))
        else {
            return Vec::new();
        };
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
        cmds.extend(self.commands(&plan.warm));
        let warmed = &mut self.warmed[request];
        warmed.retain(|w| !plan.release.contains(w));
        // The stage that just arrived is being served on demand now.
        warmed.extend(
            plan.warm
                .iter()
                .map(|a| a.stage.clone())
                .filter(|s| *s != name),
        );
        cmds
    }
}

/// How instances are kept, for the SMSE comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Provision {
    /// Every instance scales to zero after the keep-alive.
    AllEphemeral,
    /// Every function gets a durable instance at the start, and every instance stays.
    StaticDurable,
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
            Provision::StaticDurable => {
                if self.started {
                    return Vec::new();
                }
                self.started = true;
                (0..self.loads.len())
                    .map(|function| Command::Durable { function, count: 1 })
                    .collect()
            }
            Provision::Dynamic(cfg) => {
                if !self.started {
                    // Nothing observed yet.
                    self.started = true;
                    return Vec::new();
                }
                self.replans += 1;
                let loads: Vec<FunctionLoad> = self
                    .loads
                    .iter()
                    .zip(arrivals)
                    .map(|(l, &n)| FunctionLoad {
                        rate: n as f64 / self.interval_seconds,
                        ..l.clone()
                    })
                    .collect();
                provisioning::plan(&loads, cfg)
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
