//! The operator's scaling interface, written from this side: the in-flight and pre-warm
//! annotations on the VideoWorkflow that its pure autoscaler reads
//! (operator/controller/src/signals.rs; the formats are checked against its parser in
//! this crate's tests).
//!
//! Every run of a workflow in this process adds to one count per stage, so concurrent
//! runs do not overwrite each other's demand. Writes are coalesced: a burst of
//! invocations becomes one patch.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde::Serialize;
use tokio::sync::watch;
use vflow_api::VideoWorkflow;

/// `{"<stage>": <invocations in flight>}`.
pub const IN_FLIGHT: &str = "vflow.io/in-flight";
/// `[{"stage": "<stage>", "replicas": <n>, "at": "<RFC 3339>"}]`.
pub const PREWARM: &str = "vflow.io/prewarm";

/// One pre-warm request, as the operator parses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrewarmEntry {
    pub stage: String,
    pub replicas: u32,
    pub at: Timestamp,
}

/// What this process asks of one workflow's stages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkflowSignals {
    in_flight: BTreeMap<String, u32>,
    prewarm: BTreeMap<String, PrewarmEntry>,
}

impl WorkflowSignals {
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

    /// One entry per stage: a second request keeps the larger count and the later time,
    /// so two runs asking for the same stage get the union of their windows' ends.
    pub fn request_prewarm(&mut self, stage: &str, replicas: u32, at: Timestamp) {
        let entry = self
            .prewarm
            .entry(stage.to_string())
            .or_insert(PrewarmEntry {
                stage: stage.to_string(),
                replicas,
                at,
            });
        entry.replicas = entry.replicas.max(replicas);
        entry.at = entry.at.max(at);
    }

    /// Drops requests whose window has closed (`at` plus `keep`, the workflow's
    /// scale-to-zero delay), so the annotation does not grow without end.
    pub fn prune(&mut self, now: Timestamp, keep: Duration) {
        let keep = SignedDuration::try_from(keep).unwrap_or(SignedDuration::MAX);
        self.prewarm
            .retain(|_, p| p.at.checked_add(keep).map(|end| end > now).unwrap_or(true));
    }

    /// The two annotation values, in the operator's formats.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let prewarm: Vec<&PrewarmEntry> = self.prewarm.values().collect();
        BTreeMap::from([
            (
                IN_FLIGHT.to_string(),
                serde_json::to_string(&self.in_flight).unwrap_or_else(|_| "{}".into()),
            ),
            (
                PREWARM.to_string(),
                serde_json::to_string(&prewarm).unwrap_or_else(|_| "[]".into()),
            ),
        ])
    }
}

type Key = (String, String);

struct Entry {
    state: WorkflowSignals,
    changed: watch::Sender<u64>,
    keep: Duration,
}

/// Keeps one [`WorkflowSignals`] per workflow and a writer task that patches the
/// annotations after each change (at most every `min_interval`).
pub struct Signaller {
    client: Client,
    min_interval: Duration,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl Signaller {
    pub fn new(client: Client) -> Arc<Self> {
        Arc::new(Self {
            client,
            min_interval: Duration::from_millis(100),
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// Changes one workflow's signals and wakes its writer.
    pub fn update(
        self: &Arc<Self>,
        namespace: &str,
        workflow: &str,
        keep: Duration,
        change: impl FnOnce(&mut WorkflowSignals),
    ) {
        let key = (namespace.to_string(), workflow.to_string());
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.entry(key.clone()).or_insert_with(|| {
            let (tx, rx) = watch::channel(0u64);
            let this = Arc::downgrade(self);
            tokio::spawn(writer(this, key, rx));
            Entry {
                state: WorkflowSignals::default(),
                changed: tx,
                keep,
            }
        });
        entry.keep = keep;
        change(&mut entry.state);
        entry.changed.send_modify(|v| *v += 1);
    }

    fn snapshot(&self, key: &Key) -> Option<BTreeMap<String, String>> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get_mut(key)?;
        entry.state.prune(Timestamp::now(), entry.keep);
        Some(entry.state.annotations())
    }

    /// Writes zero in-flight for every workflow this process has signalled (on
    /// shutdown: the runs resume in the next process, which asks again).
    pub async fn clear_in_flight(&self) {
        let keys: Vec<Key> = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries
                .iter_mut()
                .map(|(k, e)| {
                    e.state.in_flight.clear();
                    k.clone()
                })
                .collect()
        };
        for (ns, wf) in keys {
            let api: Api<VideoWorkflow> = Api::namespaced(self.client.clone(), &ns);
            let patch = serde_json::json!({"metadata": {"annotations": {IN_FLIGHT: "{}"}}});
            if let Err(e) = api
                .patch(&wf, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::debug!(workflow = %wf, error = %e, "could not clear the in-flight annotation");
            }
        }
    }

    /// What this process currently asks of a workflow (for tests and logs).
    pub fn current(&self, namespace: &str, workflow: &str) -> WorkflowSignals {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&(namespace.to_string(), workflow.to_string()))
            .map(|e| e.state.clone())
            .unwrap_or_default()
    }
}

async fn writer(this: std::sync::Weak<Signaller>, key: Key, mut rx: watch::Receiver<u64>) {
    while rx.changed().await.is_ok() {
        let Some(signaller) = this.upgrade() else {
            return;
        };
        let Some(annotations) = signaller.snapshot(&key) else {
            return;
        };
        let api: Api<VideoWorkflow> = Api::namespaced(signaller.client.clone(), &key.0);
        let patch = serde_json::json!({"metadata": {"annotations": annotations}});
        // A failed write is retried with the newest state; the change stays marked.
        match api
            .patch(&key.1, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {
                tracing::debug!(workflow = %key.1, "workflow gone; scaling signals dropped");
            }
            Err(e) => {
                tracing::warn!(workflow = %key.1, error = %e, "could not write the scaling annotations");
                rx.mark_changed();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        let interval = signaller.min_interval;
        drop(signaller);
        tokio::time::sleep(interval).await;
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
        let mut s = WorkflowSignals::default();
        s.begin("scale");
        s.begin("scale");
        s.begin("split");
        s.end("split");
        s.end("nope");
        assert_eq!(s.annotations()[IN_FLIGHT], r#"{"scale":2}"#);
        s.end("scale");
        s.end("scale");
        s.end("scale");
        assert_eq!(s.in_flight("scale"), 0);
        assert_eq!(s.annotations()[IN_FLIGHT], "{}");
    }

    #[test]
    fn prewarm_merges_per_stage_and_expires() {
        let mut s = WorkflowSignals::default();
        s.request_prewarm("detect", 2, t(10));
        s.request_prewarm("detect", 1, t(20));
        assert_eq!(
            s.annotations()[PREWARM],
            format!(r#"[{{"stage":"detect","replicas":2,"at":"{}"}}]"#, t(20))
        );
        s.prune(t(79), Duration::from_secs(60));
        assert!(s.annotations()[PREWARM].contains("detect"));
        s.prune(t(80), Duration::from_secs(60));
        assert_eq!(s.annotations()[PREWARM], "[]");
    }
}
