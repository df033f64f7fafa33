//! Where a stage's instances come from in a cluster: the operator's autoscaler, in this
//! process, scales the stage's Deployment from the demand board; this side posts its
//! demand there and watches the Deployment's ready replicas.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::wait::await_condition;
use kube::{Api, Client};

use crate::demand::DemandBoard;

/// How the backend asks for instances and learns they are there.
pub trait Capacity: Send + Sync + 'static {
    /// One more (or one fewer) invocation of `stage` in flight.
    fn begin(&self, stage: &str);
    fn end(&self, stage: &str);
    /// Have `replicas` instances of `stage` ready as soon as possible.
    fn prewarm(&self, stage: &str, replicas: u32);
    /// The pre-warm request for `stage` is withdrawn (a branch not taken).
    fn release(&self, stage: &str);
    /// Ready instances of `stage` now.
    fn ready(&self, stage: &str) -> impl Future<Output = Result<u32, String>> + Send;
    /// Returns once `stage` has a ready instance, or errs after `timeout`.
    fn wait_ready(
        &self,
        stage: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Whether [`Capacity::raise_memory`] can give an instance more memory.
    fn can_raise_memory(&self) -> bool {
        false
    }
    /// Gives one ready instance of `stage` a memory limit of at least `bytes` and
    /// returns its base URL, where the engine's OOM retry goes.
    fn raise_memory(
        &self,
        stage: &str,
        bytes: u64,
    ) -> impl Future<Output = Result<String, String>> + Send {
        let refused = format!("stage {stage}: these instances cannot be given {bytes} bytes");
        async move { Err(refused) }
    }
}

/// Longest the kubelet is given to apply an in-place memory raise.
const RESIZE_TIMEOUT: Duration = Duration::from_secs(60);

/// The operator's contract: demand on the board, Deployment `<workflow>-<stage>` in
/// the workflow's namespace.
pub struct KubeCapacity {
    pub demand: Arc<DemandBoard>,
    pub namespace: String,
    pub workflow: String,
    /// The workflow's scaleToZeroAfter: how long a pre-warm request is kept.
    pub keep: Duration,
    deployments: Api<Deployment>,
    pods: Api<Pod>,
}

impl KubeCapacity {
    pub fn new(
        client: Client,
        demand: Arc<DemandBoard>,
        namespace: &str,
        workflow: &str,
        keep: Duration,
    ) -> Self {
        Self {
            demand,
            namespace: namespace.to_string(),
            workflow: workflow.to_string(),
            keep,
            deployments: Api::namespaced(client.clone(), namespace),
            pods: Api::namespaced(client, namespace),
        }
    }

    /// `<workflow>-<stage>`, the operator's name for a stage's Deployment and Service.
    pub fn deployment_name(&self, stage: &str) -> String {
        vflow_contract::naming::child_name(&self.workflow, stage)
    }
}

fn ready_replicas(d: &Deployment) -> u32 {
    d.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

impl Capacity for KubeCapacity {
    fn begin(&self, stage: &str) {
        self.demand
            .update(&self.namespace, &self.workflow, self.keep, |s| {
                s.begin(stage)
            });
    }

    fn end(&self, stage: &str) {
        self.demand
            .update(&self.namespace, &self.workflow, self.keep, |s| s.end(stage));
    }

    fn prewarm(&self, stage: &str, replicas: u32) {
        let now = Timestamp::now();
        self.demand
            .update(&self.namespace, &self.workflow, self.keep, |s| {
                s.request_prewarm(stage, replicas, now)
            });
    }

    fn release(&self, stage: &str) {
        self.demand
            .update(&self.namespace, &self.workflow, self.keep, |s| {
                s.withdraw_prewarm(stage)
            });
    }

    async fn ready(&self, stage: &str) -> Result<u32, String> {
        let name = self.deployment_name(stage);
        match self.deployments.get_opt(&name).await {
            Ok(Some(d)) => Ok(ready_replicas(&d)),
            Ok(None) => Ok(0),
            Err(e) => Err(format!("Deployment {}/{name}: {e}", self.namespace)),
        }
    }

    fn can_raise_memory(&self) -> bool {
        true
    }

    async fn raise_memory(&self, stage: &str, bytes: u64) -> Result<String, String> {
        crate::oom_raise::raise_one_pod(&self.pods, &self.workflow, stage, bytes, RESIZE_TIMEOUT)
            .await
    }

    async fn wait_ready(&self, stage: &str, timeout: Duration) -> Result<(), String> {
        let name = self.deployment_name(stage);
        let cond = |d: Option<&Deployment>| d.is_some_and(|d| ready_replicas(d) > 0);
        match tokio::time::timeout(
            timeout,
            await_condition(self.deployments.clone(), &name, cond),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "watching Deployment {}/{name}: {e}",
                self.namespace
            )),
            Err(_) => {
                let (wanted, exists) = match self.deployments.get_opt(&name).await {
                    Ok(Some(d)) => (d.spec.replicas.unwrap_or(0), true),
                    _ => (0, false),
                };
                Err(if exists {
                    format!(
                        "stage {stage}: no ready instance within {timeout:?} while scaling from zero \
                         (Deployment {}/{name} wants {wanted} replica(s), none ready)",
                        self.namespace
                    )
                } else {
                    format!(
                        "stage {stage}: no ready instance within {timeout:?}: Deployment {}/{name} \
                         does not exist (is the operator running, and the VideoWorkflow Ready?)",
                        self.namespace
                    )
                })
            }
        }
    }
}
