//! A run's pre-warm schedule, decided again as the run goes (Xanadu's just-in-time,
//! progress-aware): the plan's schedule is what was expected at the start; from then
//! on, under JustInTime, the requests for the most likely path are decided from the
//! run's progress (`vflow_planner::prewarm::progress_schedule`): each stage's input
//! arriving, its finish, the requests already made, and how long a running stage has
//! run, against each stage's own spread of times and an accepted risk of a late
//! instance. Every event re-decides what is not sent yet; a request falls due, is
//! sent, and the next ones are decided then. A stage of the path whose condition
//! turned out false is abandoned (its request dropped, or released if sent); a branch
//! off the path that the run takes has the stages after it scheduled from its real
//! arrival (`reschedule` over the plan's `all_stages`). Pure: times are seconds since
//! the run's session started, passed in.

use std::collections::{BTreeMap, BTreeSet};

use vflow_api::PrewarmPolicy;
use vflow_planner::WorkflowPlan;
use vflow_planner::prewarm::{
    Margin, PathStage, Risk, StageProgress, progress_schedule, reschedule,
};

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
    /// What is known of each path stage, for the progress-aware schedule.
    progress: Vec<StageProgress>,
    risk: Risk,
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
            risk: Risk::default(),
            ..Default::default()
        };
        p.progress = vec![StageProgress::default(); p.path.len()];
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

    /// Stage `stage` got its input at `now` (one of its units was started). Under
    /// just-in-time the requests not sent yet are decided again from the run's
    /// progress; for a stage off the path, the stages after it are scheduled from this
    /// arrival. Returns the stages whose request moved.
    ///
    /// A stage off the path (the run took a branch the plan did not expect) has the
    /// stages after it scheduled from the plan's `all_stages`: the taken branch is
    /// warmed just in time too.
    pub fn reached(&mut self, stage: &str, now: f64) -> Vec<String> {
        self.progress
            .resize(self.path.len(), StageProgress::default());
        // The stage itself needs nothing any more: its input is there.
        self.pending.remove(stage);
        if let Some(k) = self.path.iter().position(|s| s.stage == stage) {
            if !self.reached.insert(k) {
                return Vec::new();
            }
            let s = &self.path[k];
            let p = &mut self.progress[k];
            p.input_at = Some(now);
            // It starts when an instance takes it (`started`); until then an instance
            // is coming: asked for earlier, or now, on demand.
            if !s.warm && p.requested_at.is_none() {
                p.requested_at = Some(now);
            }
            return self.decide(now);
        }
        let Some(k) = self.all.iter().position(|s| s.stage == stage) else {
            return Vec::new();
        };
        if !self.reached_off_path.insert(stage.to_string())
            || self.policy != Some(PrewarmPolicy::JustInTime)
        {
            return Vec::new();
        }
        let Some(margin) = self.margin else {
            return Vec::new();
        };
        // It starts once an instance is there: warm already, asked for a cold start
        // ago, or a cold start from now.
        let s = &self.all[k];
        let starts_at = if s.warm {
            now
        } else {
            match self.sent.get(stage) {
                Some(&asked) => now.max(asked + s.cold_start_seconds),
                None => now + s.cold_start_seconds,
            }
        };
        let downstream = downstream_of(&self.all, k);
        let mut moved = Vec::new();
        for action in reschedule(&self.all, k, now, starts_at, margin) {
            let position = self.all.iter().position(|s| s.stage == action.stage);
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

    /// A unit of `stage` got an instance at `now`: the stage is running (and its
    /// instance ready), so what follows is decided from how long it has run.
    pub fn started(&mut self, stage: &str, now: f64) -> Vec<String> {
        self.progress
            .resize(self.path.len(), StageProgress::default());
        let Some(k) = self.path.iter().position(|s| s.stage == stage) else {
            return Vec::new();
        };
        let p = &mut self.progress[k];
        if p.started_at.is_some() {
            return Vec::new();
        }
        p.input_at.get_or_insert(now);
        p.started_at = Some(now);
        p.ready_at.get_or_insert(now);
        self.decide(now)
    }

    /// A unit of `stage` finished at `now`: the first one fixes the stage's finish (and,
    /// if its start was not known, that it ran since its input came), and the requests
    /// not sent yet are decided again.
    pub fn finished(&mut self, stage: &str, now: f64) -> Vec<String> {
        self.progress
            .resize(self.path.len(), StageProgress::default());
        let Some(k) = self.path.iter().position(|s| s.stage == stage) else {
            return Vec::new();
        };
        let p = &mut self.progress[k];
        if p.finished_at.is_some() {
            return Vec::new();
        }
        p.finished_at = Some(now);
        if p.started_at.is_none() {
            p.started_at = p.input_at.or(Some(now));
        }
        self.decide(now)
    }

    /// Under just-in-time: the requests for the path that are not sent yet, from what
    /// is known at `now` (the first due ones; the rest are decided when those are
    /// sent). The stages whose request moved.
    fn decide(&mut self, now: f64) -> Vec<String> {
        if self.policy != Some(PrewarmPolicy::JustInTime) || self.path.is_empty() {
            return Vec::new();
        }
        self.progress
            .resize(self.path.len(), StageProgress::default());
        let before: BTreeMap<String, (f64, u32)> = self.pending.clone();
        // What is not sent is decided again; off-path stages keep their requests.
        for s in &self.path {
            self.pending.remove(&s.stage);
        }
        for (k, s) in self.path.iter().enumerate() {
            // An abandoned stage passes its input through: for the stages after it, it
            // ended as soon as it was known not to run.
            if self.abandoned.contains(&s.stage) && self.progress[k].finished_at.is_none() {
                let p = &mut self.progress[k];
                let at = p.input_at.unwrap_or(now);
                p.input_at = Some(at);
                p.started_at = Some(at);
                p.finished_at = Some(now);
            }
        }
        for action in progress_schedule(&self.path, &self.progress, now, self.risk) {
            if self.sent.contains_key(&action.stage) || self.abandoned.contains(&action.stage) {
                continue;
            }
            self.pending.insert(
                action.stage.clone(),
                (action.at_seconds.max(now), action.replicas),
            );
        }
        self.path
            .iter()
            .filter(|s| before.get(&s.stage) != self.pending.get(&s.stage))
            .map(|s| s.stage.clone())
            .collect()
    }

    /// Stage `stage` will not run in this run. Its request goes; true when it had been
    /// sent already, and the instances should be released.
    pub fn abandon(&mut self, stage: &str) -> bool {
        if !self.abandoned.insert(stage.to_string()) {
            return false;
        }
        self.pending.remove(stage);
        self.sent.contains_key(stage)
    }

    /// The requests due at `now`, marked sent; under just-in-time the next ones are
    /// decided then, with what is known by then.
    pub fn due(&mut self, now: f64) -> Vec<(String, u32)> {
        let due: Vec<String> = self
            .pending
            .iter()
            // A microsecond's slack: the clock the caller reads in is nanoseconds.
            .filter(|(_, (at, _))| *at <= now + 1e-6)
            .map(|(s, _)| s.clone())
            .collect();
        let sent: Vec<(String, u32)> = due
            .into_iter()
            .filter_map(|s| {
                let (_, replicas) = self.pending.remove(&s)?;
                self.sent.insert(s.clone(), now);
                if let Some(k) = self.path.iter().position(|p| p.stage == s)
                    && let Some(p) = self.progress.get_mut(k)
                {
                    p.requested_at.get_or_insert(now);
                }
                Some((s, replicas))
            })
            .collect();
        if !sent.is_empty() {
            self.decide(now);
        }
        sent
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
        // a (4 s) -> b (4 s) -> c, each with a 1 s cold start, no spread.
        let path = vec![
            stage("a", &[], 4.0, 1.0),
            stage("b", &[0], 4.0, 1.0),
            stage("c", &[1], 4.0, 1.0),
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

    /// Within the schedule's resolution (Risk::step_seconds).
    fn near(at: Option<f64>, want: f64) -> bool {
        at.is_some_and(|t| (t - want).abs() <= 0.06)
    }

    #[test]
    fn requests_follow_the_runs_progress() {
        let mut p = prewarmer(PrewarmPolicy::JustInTime, &[("b", 4.0), ("c", 8.0)]);
        // a's input at 0, its instance asked for then: nothing is decided beyond what
        // its start will tell.
        p.reached("a", 0.0);
        assert_eq!(p.next_at(), None);
        // a starts at 1 and runs 4 s: b's input at 5, b asked for at 4.
        assert_eq!(p.started("a", 1.0), vec!["b".to_string()]);
        assert!(near(p.next_at(), 4.0), "{:?}", p.next_at());
        let due = p.due(4.0);
        assert_eq!(due, vec![("b".to_string(), 1)]);
        // a runs long: done at 10; b (ready since 5) starts at once; c's input at 14.
        p.finished("a", 10.0);
        p.reached("b", 10.0);
        p.started("b", 10.0);
        assert!(near(p.next_at(), 13.0), "{:?}", p.next_at());
        assert_eq!(p.due(12.5), vec![]);
        assert_eq!(p.due(13.05), vec![("c".to_string(), 1)]);
        // Reached again (another segment): nothing new.
        assert!(p.reached("b", 11.0).is_empty());
        assert_eq!(p.next_at(), None);
    }

    #[test]
    fn an_early_finish_asks_on_demand_and_counts_that_instance_cold_start() {
        let mut p = prewarmer(PrewarmPolicy::JustInTime, &[]);
        p.reached("a", 0.0);
        p.started("a", 1.0);
        // a ends after 1 s, before b was asked for (due at 4): b is asked for now,
        // ready at 3, ends at 7; c is asked for at 6.
        p.finished("a", 2.0);
        p.reached("b", 2.0);
        assert_eq!(p.next_at(), None, "decided once b's instance is there");
        p.started("b", 3.0);
        assert!(near(p.next_at(), 6.0), "{:?}", p.next_at());
    }

    #[test]
    fn only_just_in_time_is_replanned() {
        let mut p = prewarmer(PrewarmPolicy::Speculative, &[("c", 0.0)]);
        assert!(p.reached("b", 10.0).is_empty());
        assert!(p.started("b", 10.0).is_empty());
        assert_eq!(p.due(0.0), vec![("c".to_string(), 1)]);
    }

    #[test]
    fn an_abandoned_stage_is_dropped_or_released_and_passes_through() {
        let mut p = prewarmer(PrewarmPolicy::JustInTime, &[]);
        p.reached("a", 0.0);
        p.started("a", 1.0);
        assert_eq!(p.due(4.0).len(), 1, "b asked for");
        assert!(p.abandon("b"), "b was asked for: release it");
        assert!(!p.abandon("b"), "once");
        // c reads b's input (passed through) when a ends at 5: asked for at 4.
        p.finished("a", 4.5);
        assert!(near(p.next_at(), 4.5), "{:?}", p.next_at());
    }

    #[test]
    fn a_branch_off_the_path_that_the_run_takes_has_what_follows_it_warmed_in_time() {
        // The path: a -> b. Off it: x after a (a branch the plan thought unlikely),
        // y after x (4 s, 1 s cold start each).
        let mut p = prewarmer(PrewarmPolicy::JustInTime, &[]);
        p.path.truncate(2);
        p.all = vec![
            stage("a", &[], 4.0, 1.0),
            stage("b", &[0], 4.0, 1.0),
            stage("x", &[0], 4.0, 1.0),
            stage("y", &[2], 4.0, 1.0),
        ];
        p.reached("a", 0.0);
        p.started("a", 1.0);
        assert!(near(p.next_at(), 4.0), "b only: {:?}", p.next_at());
        // x's input arrives at 4: x starts cold at 5, ends at 9; y is asked for at 8.
        let moved = p.reached("x", 4.0);
        assert_eq!(moved, vec!["y".to_string()]);
        assert_eq!(p.due(4.1), vec![("b".to_string(), 1)]);
        assert_eq!(p.due(7.9), vec![]);
        assert_eq!(p.due(8.0), vec![("y".to_string(), 1)]);
        // Reached again (another segment): nothing new.
        assert!(p.reached("x", 5.0).is_empty());
    }
}
