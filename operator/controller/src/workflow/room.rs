//! Room for waiting stages: which of a workflow's stages have pods that the scheduler
//! could not place for want of what pods hold (CPU, memory, extended resources such as
//! whole GPUs, pod slots). Idle instances of the workflow's other stages then go before
//! their scale-to-zero delay (autoscaler `reclaim_idle`). A pod that waits for something
//! idle pods do not hold (a DRA device no node offers, a node selector) frees nothing,
//! so it reclaims nothing.

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{Api, Client, ResourceExt, api::ListParams};

use super::{
    build::{LABEL_STAGE, LABEL_WORKFLOW},
    dra_fit::unschedulable_because,
};
use crate::{autoscaler::plus, error::Result};

/// Whether the scheduler left `pod` unplaced because the nodes lack room that running
/// pods take up. Its messages read e.g. "0/3 nodes are available: 3 Insufficient
/// memory." or "... Too many pods."
pub fn short_of_room(pod: &Pod) -> bool {
    unschedulable_because(pod)
        .is_some_and(|m| m.contains("Insufficient ") || m.contains("Too many pods"))
}

/// The pods of `workflow`: one list, made by a reconcile only while a stage waits for
/// replicas (pods are not watched, so a steady state costs no request).
pub async fn workflow_pods(client: &Client, ns: &str, workflow: &str) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("{LABEL_WORKFLOW}={workflow}");
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items)
}

/// The stages among `waiting` with a pod short of room.
pub fn unplaceable(pods: &[Pod], waiting: &[String]) -> BTreeSet<String> {
    pods.iter()
        .filter(|p| short_of_room(p))
        .filter_map(|p| p.labels().get(LABEL_STAGE))
        .filter(|s| waiting.contains(s))
        .cloned()
        .collect()
}

/// How long a workflow's want of room holds without a reconcile that sees it again
/// (it looks every `WAITING_RECHECK` while it waits).
pub const WANT_HOLDS_FOR: Duration = Duration::from_secs(30);
/// How long one want may take idle instances: a pod that still does not fit after
/// that would not fit for what idle pods hold (larger than any node, say), and the
/// workflows would lose their warm instances for nothing.
pub const RECLAIM_AT_MOST: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Want {
    since: Timestamp,
    until: Timestamp,
}

/// The workflows (by key) whose pods are short of room, as their reconciles saw.
#[derive(Debug, Default)]
pub struct RoomWants {
    wants: HashMap<String, Want>,
}

/// What [`RoomWants::note`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Noted {
    /// The workflow started to want room now: the others should be reconciled.
    pub started: bool,
    /// Its want may still take idle instances (within `RECLAIM_AT_MOST`).
    pub reclaims: bool,
}

impl RoomWants {
    /// Notes whether workflow `key` has pods short of room at `now`.
    pub fn note(&mut self, key: &str, wanted: bool, now: Timestamp) -> Noted {
        self.wants.retain(|_, w| w.until > now);
        if !wanted {
            self.wants.remove(key);
            return Noted {
                started: false,
                reclaims: false,
            };
        }
        let until = plus(now, WANT_HOLDS_FOR);
        let started = !self.wants.contains_key(key);
        let want = self
            .wants
            .entry(key.to_string())
            .or_insert(Want { since: now, until });
        want.until = until;
        Noted {
            started,
            reclaims: plus(want.since, RECLAIM_AT_MOST) > now,
        }
    }

    /// Whether a workflow other than `key` wants room that idle instances may give.
    pub fn elsewhere(&self, key: &str, now: Timestamp) -> bool {
        self.wants
            .iter()
            .any(|(k, w)| k != key && w.until > now && plus(w.since, RECLAIM_AT_MOST) > now)
    }

    pub fn forget(&mut self, key: &str) {
        self.wants.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(message: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": []},
            "status": {"conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message,
            }]},
        }))
        .expect("pod")
    }

    #[test]
    fn only_a_lack_of_what_pods_hold_is_short_of_room() {
        assert!(short_of_room(&pending(
            "0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
        )));
        assert!(short_of_room(&pending(
            "0/2 nodes are available: 1 Insufficient cpu, 1 Insufficient nvidia.com/gpu."
        )));
        assert!(short_of_room(&pending(
            "0/1 nodes are available: 1 Too many pods."
        )));
        assert!(!short_of_room(&pending(
            "0/3 nodes are available: 3 cannot allocate all claims."
        )));
        assert!(!short_of_room(&pending(
            "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
        )));
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    #[test]
    fn a_want_of_room_starts_once_holds_while_seen_and_reclaims_for_a_while() {
        let mut w = RoomWants::default();
        let n = w.note("ns/a", true, t(0));
        assert_eq!((n.started, n.reclaims), (true, true));
        assert!(w.elsewhere("ns/b", t(1)) && !w.elsewhere("ns/a", t(1)));
        // Seen again: not a new start; unseen for 30 s: gone.
        assert!(!w.note("ns/a", true, t(20)).started);
        assert!(w.elsewhere("ns/b", t(49)));
        assert!(!w.elsewhere("ns/b", t(51)));
        // Still short of room after 5 minutes of trying: it takes nothing more.
        let mut w = RoomWants::default();
        for s in (0..=300).step_by(5) {
            w.note("ns/a", true, t(s));
        }
        assert!(!w.note("ns/a", true, t(301)).reclaims);
        assert!(!w.elsewhere("ns/b", t(301)));
        // Placed: the want goes at once.
        let mut w = RoomWants::default();
        w.note("ns/a", true, t(0));
        w.note("ns/a", false, t(5));
        assert!(!w.elsewhere("ns/b", t(6)));
    }
}
