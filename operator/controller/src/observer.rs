//! Closes the part of the feedback loop that invocation records cannot: what function
//! pods' containers measured goes into their FunctionProfile's status.
//!
//! The runs fold each invocation's own record (counts, times, cold start as waited,
//! the runtime's CPU and memory) into the profiles (`vflow_runs::learn`), so nothing
//! is lost when a pod goes before it is scraped. Every interval the operator scrapes
//! each ready function pod for the rest: the sidecar's container-level CPU, memory and
//! GPU while busy, weighted by the pod's new invocations (its runtime's
//! `/observations`), and function processes killed for memory; and it reads every
//! function pod's container state for containers OOM-killed whole (see
//! `vflow_engine::learn::fold_scrapes`). Function pods need no Kubernetes credentials
//! at all. Counters are cumulative per pod, so the operator remembers the last scrape
//! of each pod; after an operator restart the first scrape of the pods that already
//! existed only sets that baseline (a little is lost, nothing is counted twice).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use vflow_api::FunctionProfile;
use vflow_contract::observations::{ContainerObservations, InstanceObservations};
use vflow_engine::learn::{InstanceScrape, fold_scrapes, stamp};
use vflow_runs::learn::update_status;

use crate::workflow::build::{FUNCTION_CONTAINER, LABEL_FUNCTION};

/// Where a pod's port is reachable: `http://<podIP>:<port>` in a cluster; tests map
/// pods to local processes.
pub type Resolve = Arc<dyn Fn(&Pod, u16) -> Option<String> + Send + Sync>;

pub fn pod_ip(pod: &Pod, port: u16) -> Option<String> {
    let ip = pod.status.as_ref()?.pod_ip.as_ref()?;
    Some(format!("http://{ip}:{port}"))
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The function container's restart count now, and whether the restarts since `seen`
/// (None: this pod was not looked at before, so since its start) ended in an OOM kill.
/// The kernel may kill the whole container rather than the function's process (cgroup
/// v2's memory.oom.group, which the kubelet sets): then the runtime that counts OOM
/// kills dies with it, and only the container's last state tells. Several restarts
/// between two looks show only the last one's reason: they count as one.
pub fn container_oom(pod: &Pod, seen: Option<i32>) -> (i32, bool) {
    let Some(status) = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == FUNCTION_CONTAINER))
    else {
        return (seen.unwrap_or(0), false);
    };
    let oom_killed = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"));
    (
        status.restart_count,
        oom_killed && status.restart_count > seen.unwrap_or(0),
    )
}

/// A function's container OOM kills since the last look, and its pods' restart counts.
type ContainerOoms = (u64, Vec<(String, i32)>);

/// One pod's runtime and sidecar observations, under its UID.
type PodReport = (String, InstanceObservations, Option<ContainerObservations>);

pub struct Observer {
    client: Client,
    /// The watched namespace (the operator's RBAC may be a Role there); None: all.
    namespace: Option<String>,
    http: reqwest::Client,
    resolve: Resolve,
    runtime_port: u16,
    sidecar_port: u16,
    /// Last scrape per pod UID.
    last: HashMap<String, InstanceObservations>,
    /// The function container's restart count per pod UID, at the last look.
    restarts: HashMap<String, i32>,
    /// Pods that existed at the first scrape: baseline only.
    first_scrape_done: bool,
}

impl Observer {
    pub fn new(client: Client, resolve: Resolve) -> Self {
        Self {
            client,
            namespace: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            resolve,
            runtime_port: vflow_contract::naming::RUNTIME_PORT,
            sidecar_port: vflow_contract::naming::METRICS_PORT,
            last: HashMap::new(),
            restarts: HashMap::new(),
            first_scrape_done: false,
        }
    }

    /// Looks at the function pods of `namespace` only.
    pub fn in_namespace(mut self, namespace: Option<String>) -> Self {
        self.namespace = namespace;
        self
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, base: &str) -> Option<T> {
        let response = self
            .http
            .get(format!("{base}/observations"))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// One pass over every function pod; returns how many profiles were updated.
    pub async fn scrape_once(&mut self) -> Result<usize, kube::Error> {
        let pods: Api<Pod> = match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let pods = pods
            .list(&ListParams::default().labels(LABEL_FUNCTION))
            .await?;
        let baseline_only = !self.first_scrape_done;
        self.first_scrape_done = true;
        // (namespace, function) -> what each of its pods reported now.
        let mut by_function: BTreeMap<(String, String), Vec<PodReport>> = BTreeMap::new();
        // A pod that misses a scrape (not Ready for a moment, its runtime slow to answer)
        // keeps its last observations as long as it exists: were they dropped, its next
        // answer would count everything it ever ran once more, and as a new instance.
        let listed: std::collections::HashSet<&str> = pods
            .items
            .iter()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        self.last.retain(|uid, _| listed.contains(uid.as_str()));
        self.restarts.retain(|uid, _| listed.contains(uid.as_str()));
        // Containers OOM-killed since the last look, by (namespace, function), with each
        // pod's restart count to remember once folded. Every pod: one that was just
        // killed is not Ready.
        let mut ooms: BTreeMap<(String, String), ContainerOoms> = BTreeMap::new();
        for pod in &pods.items {
            let (Some(uid), Some(ns), Some(function)) = (
                pod.metadata.uid.clone(),
                pod.namespace(),
                pod.labels().get(LABEL_FUNCTION).cloned(),
            ) else {
                continue;
            };
            let seen = self.restarts.get(&uid).copied();
            let (restarts, killed) = container_oom(pod, seen);
            if baseline_only {
                self.restarts.insert(uid, restarts);
                continue;
            }
            let entry = ooms.entry((ns, function)).or_default();
            entry.0 += u64::from(killed);
            entry.1.push((uid, restarts));
        }
        for pod in pods.items.iter().filter(|p| ready(p)) {
            let (Some(uid), Some(ns)) = (pod.metadata.uid.clone(), pod.namespace()) else {
                continue;
            };
            let Some(function) = pod.labels().get(LABEL_FUNCTION).cloned() else {
                continue;
            };
            let Some(base) = (self.resolve)(pod, self.runtime_port) else {
                continue;
            };
            let Some(current) = self.get::<InstanceObservations>(&base).await else {
                continue;
            };
            let container = match (self.resolve)(pod, self.sidecar_port) {
                Some(sidecar) => self.get::<ContainerObservations>(&sidecar).await,
                None => None,
            };
            if baseline_only {
                self.last.insert(uid, current);
                continue;
            }
            by_function
                .entry((ns, function))
                .or_default()
                .push((uid, current, container));
        }
        let mut updated = 0;
        let mut first_error = None;
        let keys: std::collections::BTreeSet<(String, String)> =
            by_function.keys().chain(ooms.keys()).cloned().collect();
        for key in keys {
            let reports = by_function.remove(&key).unwrap_or_default();
            let (killed, restarts) = ooms.remove(&key).unwrap_or_default();
            if reports.is_empty() && killed == 0 {
                self.restarts.extend(restarts);
                continue;
            }
            let (ns, function) = key;
            match self.fold_into(&ns, &function, &reports, killed).await {
                Ok(changed) => updated += usize::from(changed),
                Err(e) => {
                    // Not folded: these pods keep their old baseline, so the next scrape
                    // counts what they ran since then, once. The other profiles go on.
                    first_error.get_or_insert(e);
                    continue;
                }
            }
            for (uid, current, _) in reports {
                self.last.insert(uid, current);
            }
            self.restarts.extend(restarts);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(updated),
        }
    }

    /// Folds one function's new observations into its profile in `ns`; whether the
    /// profile's status was written.
    async fn fold_into(
        &self,
        ns: &str,
        function: &str,
        reports: &[PodReport],
        container_ooms: u64,
    ) -> Result<bool, kube::Error> {
        let api: Api<FunctionProfile> = Api::namespaced(self.client.clone(), ns);
        let scrapes: Vec<InstanceScrape<'_>> = reports
            .iter()
            .map(|(uid, current, container)| InstanceScrape {
                previous: self.last.get(uid),
                current,
                container: container.as_ref(),
            })
            .collect();
        // Read, fold, write with the version read: the run controller folds its records
        // into the same status (vflow_runs::learn).
        update_status(&api, function, |profile| {
            let now = k8s_openapi::jiff::Timestamp::now();
            let mut changed = fold_scrapes(profile, &scrapes);
            let status = profile.status.get_or_insert_with(Default::default);
            if container_ooms > 0 {
                status.oom_kills += container_ooms;
                changed = true;
            }
            if changed {
                stamp(status, now);
            }
            changed
        })
        .await
    }

    /// Scrapes every `interval` until the process stops.
    pub async fn run(mut self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match self.scrape_once().await {
                Ok(n) if n > 0 => tracing::debug!(profiles = n, "observations folded"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "scraping observations failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodStatus;

    use super::*;

    fn restarted(restarts: i32, reason: Option<&str>) -> Pod {
        use k8s_openapi::api::core::v1::{
            ContainerState, ContainerStateTerminated, ContainerStatus,
        };
        let function = ContainerStatus {
            name: FUNCTION_CONTAINER.into(),
            restart_count: restarts,
            last_state: reason.map(|r| ContainerState {
                terminated: Some(ContainerStateTerminated {
                    reason: Some(r.into()),
                    exit_code: 137,
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        };
        let sidecar = ContainerStatus {
            name: "metrics".into(),
            restart_count: 9,
            last_state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    reason: Some("OOMKilled".into()),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        };
        Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![sidecar, function]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn a_container_killed_for_memory_counts_once_per_restart() {
        // Killed once since the pod started (first look), then seen again unchanged.
        assert_eq!(
            container_oom(&restarted(1, Some("OOMKilled")), None),
            (1, true)
        );
        assert_eq!(
            container_oom(&restarted(1, Some("OOMKilled")), Some(1)),
            (1, false)
        );
        // Killed again.
        assert_eq!(
            container_oom(&restarted(2, Some("OOMKilled")), Some(1)),
            (2, true)
        );
        // A restart for another reason; and the sidecar's OOMs are not the function's.
        assert_eq!(
            container_oom(&restarted(3, Some("Error")), Some(2)),
            (3, false)
        );
        assert_eq!(container_oom(&restarted(0, None), None), (0, false));
        assert_eq!(container_oom(&Pod::default(), Some(4)), (4, false));
    }
}
