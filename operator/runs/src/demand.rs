//! What the runs in this process ask of their workflows' stages (invocations in flight,
//! pre-warm requests), kept in memory for the workflow controller in the same process.
//!
//! A change pokes the controller, which reconciles the workflow at once, as Knative's
//! autoscaler pokes its reconciler; nothing travels through the API server and the
//! user's VideoWorkflow is never patched. Every run of a workflow adds to one count per
//! stage, so concurrent runs do not overwrite each other's demand. The demand dies with
//! the process, as it should: the runs resume in the next leader and ask again.
//!
//! The board also carries what finished runs say about their conditional stages
//! (branch outcomes) until the workflow controller has them in the workflow's status,
//! where they persist and the next plan's branch probabilities come from.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use vflow_planner::branch::BranchObservation;

/// Have `replicas` instances of `stage` ready by `at`. Also the format of the
/// `vflow.io/prewarm` annotation, through which people and other tools can ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrewarmRequest {
    pub stage: String,
    pub replicas: u32,
    pub at: Timestamp,
}

/// What this process asks of one workflow's stages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkflowDemand {
    in_flight: BTreeMap<String, u32>,
    prewarm: BTreeMap<String, PrewarmRequest>,
}

impl WorkflowDemand {
    pub fn begin(&mut self, stage: &str) {
        *self.in_flight.entry(stage.to_string()).or_default() += 1;
    }

    pub fn end(&mut self, stage: &str) {
        if let Some(n) = self.in_flight.get_mut(stage) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.in_flight.remove(stage);
            }
        }
    }

    pub fn in_flight(&self, stage: &str) -> u32 {
        self.in_flight.get(stage).copied().unwrap_or(0)
    }

    /// Stages with invocations in flight, and how many.
    pub fn in_flight_by_stage(&self) -> impl Iterator<Item = (&str, u32)> {
        self.in_flight.iter().map(|(s, n)| (s.as_str(), *n))
    }

    /// One request per stage: a second keeps the larger count and the later time, so
    /// two runs asking for the same stage get the union of their windows' ends.
    pub fn request_prewarm(&mut self, stage: &str, replicas: u32, at: Timestamp) {
        let entry = self
            .prewarm
            .entry(stage.to_string())
            .or_insert(PrewarmRequest {
                stage: stage.to_string(),
                replicas,
                at,
            });
        entry.replicas = entry.replicas.max(replicas);
        entry.at = entry.at.max(at);
    }

    /// Drops the pre-warm request for `stage` (a branch not taken). It is one request
    /// for every run of the workflow in this process, so another run that still wants
    /// the stage asks again when its schedule says so.
    pub fn withdraw_prewarm(&mut self, stage: &str) {
        self.prewarm.remove(stage);
    }

    pub fn prewarm(&self) -> impl Iterator<Item = &PrewarmRequest> {
        self.prewarm.values()
    }

    /// Drops requests whose window has closed (`at` plus `keep`, the workflow's
    /// scale-to-zero delay), so that the board does not grow without end.
    pub fn prune(&mut self, now: Timestamp, keep: Duration) {
        let keep = SignedDuration::try_from(keep).unwrap_or(SignedDuration::MAX);
        self.prewarm
            .retain(|_, p| p.at.checked_add(keep).map(|end| end > now).unwrap_or(true));
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty() && self.prewarm.is_empty()
    }
}

/// A workflow, as (namespace, name).
pub type WorkflowKey = (String, String);

struct Entry {
    demand: WorkflowDemand,
    keep: Duration,
}

/// Every workflow's demand in this process, and the pokes that tell the workflow
/// controller which one changed.
#[derive(Default)]
pub struct DemandBoard {
    entries: Mutex<HashMap<WorkflowKey, Entry>>,
    /// Branch outcomes not yet in the workflow's status.
    branches: Mutex<HashMap<WorkflowKey, Vec<BranchObservation>>>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<WorkflowKey>>>,
}

impl DemandBoard {
    /// Changes one workflow's demand and pokes every subscriber. `keep` is the
    /// workflow's scale-to-zero delay: how long a pre-warm request outlives its time.
    pub fn update(
        &self,
        namespace: &str,
        workflow: &str,
        keep: Duration,
        change: impl FnOnce(&mut WorkflowDemand),
    ) {
        let key = (namespace.to_string(), workflow.to_string());
        {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let entry = entries.entry(key.clone()).or_insert_with(|| Entry {
                demand: WorkflowDemand::default(),
                keep,
            });
            entry.keep = keep;
            change(&mut entry.demand);
        }
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subscribers.retain(|s| s.send(key.clone()).is_ok());
    }

    /// One workflow's demand now, without the pre-warm windows that have closed.
    pub fn get(&self, namespace: &str, workflow: &str, now: Timestamp) -> WorkflowDemand {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let key = (namespace.to_string(), workflow.to_string());
        let Some(entry) = entries.get_mut(&key) else {
            return WorkflowDemand::default();
        };
        entry.demand.prune(now, entry.keep);
        let demand = entry.demand.clone();
        if demand.is_empty() {
            entries.remove(&key);
        }
        demand
    }

    /// Forgets every invocation in flight (the run controller stopped: its runs resume
    /// in the next leader, which asks again) and pokes for each workflow that had some.
    pub fn clear_in_flight(&self) {
        let keys: Vec<WorkflowKey> = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries
                .iter_mut()
                .filter(|(_, e)| !e.demand.in_flight.is_empty())
                .map(|(k, e)| {
                    e.demand.in_flight.clear();
                    k.clone()
                })
                .collect()
        };
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            subscribers.retain(|s| s.send(key.clone()).is_ok());
        }
    }

    /// A finished run's branch outcomes, for the workflow controller to fold into the
    /// workflow's status; pokes like a change of demand.
    pub fn record_branches(&self, namespace: &str, workflow: &str, outcomes: &[BranchObservation]) {
        if outcomes.is_empty() {
            return;
        }
        let key = (namespace.to_string(), workflow.to_string());
        {
            let mut branches = self.branches.lock().unwrap_or_else(|p| p.into_inner());
            vflow_engine::learn::add_branch_outcomes(
                branches.entry(key.clone()).or_default(),
                outcomes,
            );
        }
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subscribers.retain(|s| s.send(key.clone()).is_ok());
    }

    /// The outcomes recorded and not yet settled.
    pub fn pending_branches(&self, namespace: &str, workflow: &str) -> Vec<BranchObservation> {
        let branches = self.branches.lock().unwrap_or_else(|p| p.into_inner());
        branches
            .get(&(namespace.to_string(), workflow.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// `written` (a snapshot from [`pending_branches`](Self::pending_branches)) is in
    /// the workflow's status now: it is no longer pending. What arrived since stays.
    pub fn settle_branches(&self, namespace: &str, workflow: &str, written: &[BranchObservation]) {
        let key = (namespace.to_string(), workflow.to_string());
        let mut branches = self.branches.lock().unwrap_or_else(|p| p.into_inner());
        let Some(pending) = branches.get_mut(&key) else {
            return;
        };
        for w in written {
            if let Some(p) = pending.iter_mut().find(|p| p.stage == w.stage) {
                p.taken = p.taken.saturating_sub(w.taken);
                p.seen = p.seen.saturating_sub(w.seen);
            }
        }
        pending.retain(|p| p.seen > 0);
        if pending.is_empty() {
            branches.remove(&key);
        }
    }

    /// Asks for a reconcile of one workflow, its demand unchanged (another workflow
    /// waits for room that this one's idle instances may hold).
    pub fn poke(&self, namespace: &str, workflow: &str) {
        let key = (namespace.to_string(), workflow.to_string());
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subscribers.retain(|s| s.send(key.clone()).is_ok());
    }

    /// The workflows whose demand changes from now on, one message per change.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<WorkflowKey> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid")
    }

    #[test]
    fn counts_add_up_across_runs_and_vanish_at_zero() {
        let mut d = WorkflowDemand::default();
        d.begin("scale");
        d.begin("scale");
        d.begin("split");
        d.end("split");
        d.end("nope");
        assert_eq!(d.in_flight_by_stage().collect::<Vec<_>>(), [("scale", 2)]);
        d.end("scale");
        d.end("scale");
        d.end("scale");
        assert_eq!(d.in_flight("scale"), 0);
        assert!(d.is_empty());
    }

    #[test]
    fn prewarm_merges_per_stage_and_expires() {
        let mut d = WorkflowDemand::default();
        d.request_prewarm("detect", 2, t(10));
        d.request_prewarm("detect", 1, t(20));
        let all: Vec<_> = d.prewarm().cloned().collect();
        assert_eq!(
            all,
            [PrewarmRequest {
                stage: "detect".into(),
                replicas: 2,
                at: t(20)
            }]
        );
        d.prune(t(79), Duration::from_secs(60));
        assert_eq!(d.prewarm().count(), 1);
        d.prune(t(80), Duration::from_secs(60));
        assert!(d.is_empty());
    }

    #[tokio::test]
    async fn a_change_pokes_every_subscriber_and_empty_entries_go() {
        let board = DemandBoard::default();
        let mut a = board.subscribe();
        let mut b = board.subscribe();
        board.update("ns", "wf", Duration::from_secs(60), |d| d.begin("split"));
        let key = ("ns".to_string(), "wf".to_string());
        assert_eq!(a.recv().await, Some(key.clone()));
        assert_eq!(b.recv().await, Some(key));
        assert_eq!(board.get("ns", "wf", t(0)).in_flight("split"), 1);
        assert_eq!(board.get("ns", "other", t(0)), WorkflowDemand::default());

        // A dropped subscriber is forgotten; the others still hear.
        drop(b);
        board.update("ns", "wf", Duration::from_secs(60), |d| d.end("split"));
        assert!(a.recv().await.is_some());
        assert!(board.get("ns", "wf", t(0)).is_empty());
        assert!(
            board
                .entries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty(),
            "an empty demand is not kept"
        );
        assert_eq!(board.subscribers.lock().map(|s| s.len()).unwrap_or(0), 1);
    }

    #[test]
    fn branch_outcomes_wait_on_the_board_until_settled() {
        let board = DemandBoard::default();
        let mut pokes = board.subscribe();
        let o = |taken, seen| BranchObservation {
            stage: "blur".into(),
            taken,
            seen,
        };
        board.record_branches("ns", "wf", &[o(1, 4)]);
        board.record_branches("ns", "wf", &[o(2, 2)]);
        assert!(pokes.try_recv().is_ok());
        let snapshot = board.pending_branches("ns", "wf");
        assert_eq!(snapshot, [o(3, 6)]);
        // A run finishing between the snapshot and the status write is kept.
        board.record_branches("ns", "wf", &[o(0, 1)]);
        board.settle_branches("ns", "wf", &snapshot);
        assert_eq!(board.pending_branches("ns", "wf"), [o(0, 1)]);
        board.settle_branches("ns", "wf", &[o(0, 1)]);
        assert!(board.pending_branches("ns", "wf").is_empty());
    }
}
