//! Room for waiting stages: which of a workflow's stages have pods that the scheduler
//! could not place for want of what pods hold (CPU, memory, extended resources such as
//! whole GPUs, pod slots). Idle instances of the workflow's other stages then go before
//! their scale-to-zero delay (autoscaler `reclaim_idle`). A pod that waits for something
//! idle pods do not hold (a DRA device no node offers, a node selector) frees nothing,
//! so it reclaims nothing.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, ResourceExt, api::ListParams};

use super::{
    build::{LABEL_STAGE, LABEL_WORKFLOW},
    dra_fit::unschedulable,
};
use crate::error::Result;

/// Whether the scheduler left `pod` unplaced because the nodes lack room that running
/// pods take up. Its messages read e.g. "0/3 nodes are available: 3 Insufficient
/// memory." or "... Too many pods."
pub fn short_of_room(pod: &Pod) -> bool {
    unschedulable(pod)
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_ == "PodScheduled"
                        && c.message.as_deref().is_some_and(|m| {
                            m.contains("Insufficient ") || m.contains("Too many pods")
                        })
                })
            })
}

/// The stages among `waiting` with a pod of `workflow` short of room (one pod list).
pub async fn unplaceable(
    client: &Client,
    ns: &str,
    workflow: &str,
    waiting: &[String],
) -> Result<BTreeSet<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("{LABEL_WORKFLOW}={workflow}");
    let pods = pods.list(&ListParams::default().labels(&selector)).await?;
    Ok(pods
        .items
        .iter()
        .filter(|p| short_of_room(p))
        .filter_map(|p| p.labels().get(LABEL_STAGE))
        .filter(|s| waiting.contains(s))
        .cloned()
        .collect())
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
}
