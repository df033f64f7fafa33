//! The engine tries an invocation killed at its memory limit once more with more memory
//! (docs/runs.md). In a cluster that limit is the pod's: one ready pod of the stage is
//! resized in place (the pod `resize` subresource, GA since Kubernetes 1.35: the kubelet
//! raises the container's cgroup limit, nothing restarts), and the retry goes to that
//! pod by its address, not through the Service, which could pick a pod still at the
//! old limit. Only the limit rises: the request, so the pod's place on its node and its
//! QoS class, stay as they are. The pod keeps the raised limit until it goes; the
//! profile learns the kill and later plans size the stage's pods for it.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use vflow_api::Quantity;
use vflow_contract::naming::{FUNCTION_CONTAINER, LABEL_STAGE, LABEL_WORKFLOW, RUNTIME_PORT};

/// How often a resize in progress is looked at.
const POLL: Duration = Duration::from_millis(250);

/// The function container's memory limit as the kubelet applied it (the pod's status),
/// in bytes.
fn applied_memory_limit(pod: &Pod) -> Option<f64> {
    let status = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == FUNCTION_CONTAINER)?;
    let limit = status.resources.as_ref()?.limits.as_ref()?.get("memory")?;
    limit.0.parse::<Quantity>().ok()?.value().ok()
}

/// A pod that takes invocations now: running, ready, not going, with an address.
fn serving(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    pod.metadata.deletion_timestamp.is_none()
        && status.phase.as_deref() == Some("Running")
        && status.pod_ip.is_some()
        && status
            .conditions
            .as_ref()
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Why the kubelet will not (yet) apply the resize: the `PodResizePending` condition
/// (`Infeasible`: never on this node; `Deferred`: not now) with its message.
fn pending(pod: &Pod) -> Option<(String, String)> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodResizePending")?;
    Some((
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    ))
}

/// `http://<pod IP>:8080`, the runtime of that pod.
fn pod_url(pod: &Pod) -> Option<String> {
    let ip = pod.status.as_ref()?.pod_ip.as_deref()?;
    Some(if ip.contains(':') {
        format!("http://[{ip}]:{RUNTIME_PORT}")
    } else {
        format!("http://{ip}:{RUNTIME_PORT}")
    })
}

/// The strategic-merge patch of the `resize` subresource that sets the function
/// container's memory limit.
pub fn memory_limit_patch(bytes: u64) -> serde_json::Value {
    serde_json::json!({
        "spec": {"containers": [{
            "name": FUNCTION_CONTAINER,
            "resources": {"limits": {"memory": bytes.to_string()}},
        }]}
    })
}

/// Raises the memory limit of one serving pod of `workflow`'s `stage` to at least
/// `bytes` (a pod already there is taken as it is) and returns that pod's runtime URL
/// once the kubelet has applied it; errs, saying why, when no pod serves, the API
/// server refuses the resize, the node cannot give it, or `timeout` passes.
pub async fn raise_one_pod(
    pods: &Api<Pod>,
    workflow: &str,
    stage: &str,
    bytes: u64,
    timeout: Duration,
) -> Result<String, String> {
    let selector = format!("{LABEL_WORKFLOW}={workflow},{LABEL_STAGE}={stage}");
    let list = ListParams::default().labels(&selector);
    let mut candidates: Vec<Pod> = pods
        .list(&list)
        .await
        .map_err(|e| format!("listing pods {selector}: {e}"))?
        .items
        .into_iter()
        .filter(serving)
        .collect();
    // One already raised (an earlier retry) first, then by name: the same pod each time.
    candidates.sort_by_key(|p| {
        (
            applied_memory_limit(p).is_none_or(|l| l < bytes as f64),
            p.metadata.name.clone(),
        )
    });
    let pod = candidates
        .into_iter()
        .next()
        .ok_or_else(|| format!("no ready pod ({selector}) to raise"))?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    if applied_memory_limit(&pod).is_some_and(|l| l >= bytes as f64) {
        return pod_url(&pod).ok_or_else(|| format!("pod {name} has no address"));
    }
    pods.patch_subresource(
        "resize",
        &name,
        &PatchParams::default(),
        &Patch::Strategic(memory_limit_patch(bytes)),
    )
    .await
    .map_err(|e| format!("resizing pod {name}: {e}"))?;
    tracing::info!(pod = %name, stage, memory_bytes = bytes, "raising a pod's memory limit in place for an OOM retry");
    let started = Instant::now();
    loop {
        let seen = pods
            .list(&list.clone().fields(&format!("metadata.name={name}")))
            .await
            .map_err(|e| format!("reading pod {name}: {e}"))?
            .items
            .into_iter()
            .next()
            .ok_or_else(|| format!("pod {name} went while its memory was raised"))?;
        if applied_memory_limit(&seen).is_some_and(|l| l >= bytes as f64) {
            if !serving(&seen) {
                return Err(format!(
                    "pod {name} stopped serving while its memory was raised"
                ));
            }
            return pod_url(&seen).ok_or_else(|| format!("pod {name} has no address"));
        }
        match pending(&seen) {
            Some((reason, message)) if reason == "Infeasible" => {
                return Err(format!(
                    "the node of pod {name} cannot give it {} MiB: {message}",
                    bytes >> 20
                ));
            }
            _ if started.elapsed() >= timeout => {
                let why = pending(&seen)
                    .map(|(r, m)| format!(" ({r}: {m})"))
                    .unwrap_or_default();
                return Err(format!(
                    "pod {name}: the raised memory limit was not applied within {timeout:?}{why}"
                ));
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerStatus, PodCondition, PodStatus, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
    use std::collections::BTreeMap;

    fn pod(ready: bool, limit: Option<&str>) -> Pod {
        Pod {
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some("10.244.1.7".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                container_statuses: Some(vec![ContainerStatus {
                    name: FUNCTION_CONTAINER.into(),
                    resources: limit.map(|l| ResourceRequirements {
                        limits: Some(BTreeMap::from([(
                            "memory".to_string(),
                            K8sQuantity(l.into()),
                        )])),
                        ..ResourceRequirements::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn the_applied_limit_is_read_from_the_function_containers_status() {
        assert_eq!(
            applied_memory_limit(&pod(true, Some("450Mi"))),
            Some(450.0 * 1024.0 * 1024.0)
        );
        assert_eq!(applied_memory_limit(&pod(true, None)), None);
        assert!(serving(&pod(true, None)));
        assert!(!serving(&pod(false, None)));
        assert_eq!(
            pod_url(&pod(true, None)).as_deref(),
            Some("http://10.244.1.7:8080")
        );
    }

    #[test]
    fn the_patch_sets_only_the_function_containers_memory_limit() {
        let patch = memory_limit_patch(471_859_200);
        assert_eq!(
            patch,
            serde_json::json!({"spec": {"containers": [{"name": "function",
                "resources": {"limits": {"memory": "471859200"}}}]}})
        );
    }
}
