//! A run's pre-warm schedule, decided again as the run goes (Xanadu's just-in-time,
//! rolling): the plan's schedule is what was expected at the start; each time a stage
//! on the most likely path gets its input, the stages after it are scheduled from that
//! real arrival (`vflow_planner::prewarm::reschedule`); a stage of the path whose
//! condition turned out false is abandoned, its requests dropped and, if already sent,
//! released. Pure: times are seconds since the run's session started, passed in.

use std::collections::{BTreeMap, BTreeSet};

use vflow_api::PrewarmPolicy;
use vflow_planner::WorkflowPlan;
use vflow_planner::prewarm::{Margin, PathStage, reschedule};

#[derive(Debug, Clone, Default)]
pub struct Prewarmer {
    policy: Option<PrewarmPolicy>,
    path: Vec<PathStage>,
    /// Every stage (the plan's `all_stages`): a stage off the path that a run reaches
    /// (its branch was taken) has what follows it scheduled from here.
    all: Vec<PathStage>,
    /// Stages off the path whose input arrived.
    reached_off_path: BTreeSet<String>,
    margin: Option<Margin>,
    /// Stage -> (when, replicas), not sent yet.
    pending: BTreeMap<String, (f64, u32)>,
    /// Stages asked for so far, and when.
    sent: BTreeMap<String, f64>,
    /// Path positions whose input arrived.
    reached: BTreeSet<usize>,
    abandoned: BTreeSet<String>,
}

impl Prewarmer {
    /// From the run's schedule (`initial`: stage, seconds, replicas) and its plan, when
    /// it has one (without a plan nothing is re-planned).
    pub fn new(initial: &[(String, f64, u32)], plan: Option<&WorkflowPlan>) -> Self {
        let mut p = Prewarmer {
            policy: plan.map(|p| p.prewarm_policy),
            path: plan.map(|p| p.path_stages.clone()).unwrap_or_default(),
            all: plan.map(|p| p.all_stages.clone()).unwrap_or_default(),
            margin: plan.map(|p| p.prewarm_margin),
            ..Default::default()
        };
        for (stage, at, replicas) in initial {
            p.add(stage, *at, *replicas);
        }
        p
    }

    /// One more request; two for one stage keep the earlier time and more replicas.
    pub fn add(&mut self, stage: &str, at: f64, replicas: u32) {
        let entry = self
            .pending
            .entry(stage.to_string())
            .or_insert((at, replicas));
        entry.0 = entry.0.min(at);
        entry.1 = entry.1.max(replicas);
    }

    /// Stage `stage` got its input at `now`: under just-in-time, the path stages that
    /// wait for it are scheduled again from this arrival. Returns the stages whose
    /// request moved.
    ///
    /// A stage off the path (the run took a branch the plan did not expect) has the
    /// stages after it scheduled the same way from the plan's `all_stages`: the taken
    /// branch is warmed just in time too.
    pub fn reached(&mut self, stage: &str, now: f64) -> Vec<String> {
        // The stage itself needs nothing any more: its input is there.
        self.pending.remove(stage);
        let (list, k) = match self.path.iter().position(|s| s.stage == stage) {
            Some(k) => {
                if !self.reached.insert(k) {
                    return Vec::new();
                }
                (&self.path, k)
            }
            None => match self.all.iter().position(|s| s.stage == stage) {
                Some(k) if self.reached_off_path.insert(stage.to_string()) => (&self.all, k),
                _ => return Vec::new(),
            },
        };
        if self.policy != Some(PrewarmPolicy::JustInTime) {
            return Vec::new();
        }
        let Some(margin) = self.margin else {
            return Vec::new();
        };
        // It starts once an instance is there: warm already, asked for a cold start
        // ago, or a cold start from now.
        let s = &list[k];
        let starts_at = if s.warm {
            now
        } else {
            match self.sent.get(stage) {
                Some(&asked) => now.max(asked + s.cold_start_seconds),
                None => now + s.cold_start_seconds,
            }
        };
        let downstream = downstream_of(list, k);
        let mut moved = Vec::new();
        for action in reschedule(list, k, now, starts_at, margin) {
            let position = list.iter().position(|s| s.stage == action.stage);
            if !position.is_some_and(|j| downstream.contains(&j))
                || self.sent.contains_key(&action.stage)
                || self.abandoned.contains(&action.stage)
            {
                continue;
            }
            let new = (action.at_seconds, action.replicas);
            if self.pending.insert(action.stage.clone(), new) != Some(new) {
                moved.push(action.stage);
            }
        }
        moved
    }

    /// Stage `stage` will not run in this run. Its request goes; true when it had been
    /// sent already, and the instances should be released.
    pub fn abandon(&mut self, stage: &str) -> bool {
        self.abandoned.insert(stage.to_string());
        self.pending.remove(stage);
        self.sent.contains_key(stage)
    }

    /// The requests due at `now`, marked sent.
    pub fn due(&mut self, now: f64) -> Vec<(String, u32)> {
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(s, _)| s.clone())
            .collect();
        due.into_iter()
            .filter_map(|s| {
                let (_, replicas) = self.pending.remove(&s)?;
                self.sent.insert(s.clone(), now);
                Some((s, replicas))
            })
            .collect()
    }

    /// When the next request is due.
    pub fn next_at(&self) -> Option<f64> {
        self.pending
            .values()
            .map(|(at, _)| *at)
            .min_by(f64::total_cmp)
    }
}

/// Positions of `list` that wait, directly or not, for position `k`.
fn downstream_of(list: &[PathStage], k: usize) -> BTreeSet<usize> {
    let mut out = BTreeSet::from([k]);
    for (j, s) in list.iter().enumerate().skip(k + 1) {
        if s.after.iter().any(|a| out.contains(a)) {
            out.insert(j);
        }
    }
    out.remove(&k);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, after: &[usize], exec: f64, cold: f64) -> PathStage {
        PathStage {
            stage: name.into(),
            after: after.to_vec(),
            exec_seconds: exec,
            exec_std_seconds: 0.0,
            overhead_seconds: 0.0,
            cold_start_seconds: cold,
            cold_start_std_seconds: 0.0,
            replicas: 1,
            warm: false,
        }
    }

    fn prewarmer(policy: PrewarmPolicy, initial: &[(&str, f64)]) -> Prewarmer {
        // a (4 s) -> b (4 s) -> c, each with a 1 s cold start; d beside, after nothing.
        let path = vec![
            stage("a", &[], 4.0, 1.0),
            stage("b", &[0], 4.0, 1.0),
            stage("c", &[1], 4.0, 1.0),
            stage("d", &[], 4.0, 1.0),
        ];
        let initial: Vec<(String, f64, u32)> = initial
            .iter()
            .map(|(s, at)| (s.to_string(), *at, 1))
            .collect();
        let mut p = Prewarmer::new(&initial, None);
        p.policy = Some(policy);
        p.path = path;
        p.margin = Some(Margin::fixed(0.0));
        p
    }

    #[test]
    fn a_late_arrival_moves_the_stages_after_it_and_only_those() {
        // Expected at the start: b's input at 4 (warm at 3), c's at 8 (warm at 7).
        let mut p = prewarmer(
            PrewarmPolicy::JustInTime,
            &[("b", 3.0), ("c", 7.0), ("d", 3.0)],
        );
        assert_eq!(p.due(0.0), vec![]);
        // b is asked for at 3 and ready at 4. a ran long: b's input arrives only at
        // 10, b starts at once, c's input is due at 14: c is asked for at 14 - 1.
        assert_eq!(p.due(3.0).len(), 2);
        p.reached("b", 10.0);
        assert_eq!(p.next_at(), Some(13.0));
        assert_eq!(p.due(12.9), vec![]);
        assert_eq!(p.due(13.0), vec![("c".to_string(), 1)]);
        // Reached again (another segment): nothing new.
        assert!(p.reached("b", 11.0).is_empty());
    }

    #[test]
    fn an_early_arrival_warms_sooner_and_counts_the_cold_start_of_a_stage_not_warmed() {
        let mut p = prewarmer(PrewarmPolicy::JustInTime, &[("c", 7.0), ("d", 3.0)]);
        // b's input at 1, before anyone asked for b: b starts at 2 (its cold start),
        // c's input is due at 6, c is asked for at 5.
        p.reached("b", 1.0);
        assert_eq!(p.next_at(), Some(3.0), "d does not wait for b: unchanged");
        assert_eq!(p.due(4.9), vec![("d".to_string(), 1)]);
        assert_eq!(p.due(5.0), vec![("c".to_string(), 1)]);
    }

    #[test]
    fn only_just_in_time_is_replanned() {
        let mut p = prewarmer(PrewarmPolicy::Speculative, &[("c", 0.0)]);
        assert!(p.reached("b", 10.0).is_empty());
        assert_eq!(p.due(0.0), vec![("c".to_string(), 1)]);
    }

    #[test]
    fn a_branch_off_the_path_that_the_run_takes_has_what_follows_it_warmed_in_time() {
        // The path: a -> b. Off it: x after a (a branch the plan thought unlikely),
        // y after x (4 s, 1 s cold start each).
        let mut p = prewarmer(PrewarmPolicy::JustInTime, &[("b", 3.0)]);
        p.path.truncate(2);
        p.all = vec![
            stage("a", &[], 4.0, 1.0),
            stage("b", &[0], 4.0, 1.0),
            stage("x", &[0], 4.0, 1.0),
            stage("y", &[2], 4.0, 1.0),
        ];
        // On the path, a's arrival (a starts cold at 1, ends at 5) moves b to 4 and
        // schedules nothing off the path.
        assert_eq!(p.reached("a", 0.0), vec!["b".to_string()]);
        assert_eq!(p.next_at(), Some(4.0));
        // x's input arrives at 4: x starts cold at 5, ends at 9; y is asked for at 8.
        let moved = p.reached("x", 4.0);
        assert_eq!(moved, vec!["y".to_string()]);
        assert_eq!(p.due(4.0), vec![("b".to_string(), 1)]);
        assert_eq!(p.due(7.9), vec![]);
        assert_eq!(p.due(8.0), vec![("y".to_string(), 1)]);
        // Reached again (another segment): nothing new.
        assert!(p.reached("x", 5.0).is_empty());
    }

    #[test]
    fn an_abandoned_stage_is_dropped_or_released() {
        let mut p = prewarmer(PrewarmPolicy::JustInTime, &[("b", 0.0), ("c", 7.0)]);
        assert_eq!(p.due(0.0).len(), 1);
        assert!(p.abandon("b"), "b was asked for: release it");
        assert!(!p.abandon("c"), "c was only pending");
        assert_eq!(p.next_at(), None);
        // A later arrival does not bring an abandoned stage back.
        p.reached("a", 1.0);
        assert_eq!(p.next_at(), None);
    }
}
