//! GPU stages under sharing mode Dra: a ResourceClaimTemplate per stage, whose one
//! request `gpu` lists the planner's alternatives (`firstAvailable`: a MIG device, a
//! share of a GPU's memory, a whole GPU); the stage's pods reference it, so each pod
//! gets a claim of its own, allocated by the scheduler. Owned by the workflow.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodResourceClaim, ResourceClaim as ContainerClaim};
use k8s_openapi::api::resource::v1::{
    CELDeviceSelector, CapacityRequirements, DeviceClaim, DeviceRequest, DeviceSelector,
    DeviceSubRequest, ExactDeviceRequest, ResourceClaimSpec, ResourceClaimTemplate,
    ResourceClaimTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use vflow_api::VideoWorkflow;
use vflow_planner::gpu::{DraAlternative, DraClaim};

use super::build::{
    ANNOTATION_SPEC_HASH, LABEL_MANAGED_BY, LABEL_STAGE, LABEL_WORKFLOW, MANAGED_BY,
    owner_reference, spec_hash,
};
use crate::error::Result;

/// The pod's name for the claim, and the name of its one request.
pub const CLAIM: &str = "gpu";

/// `<workflow>-<stage>-gpu`.
pub fn template_name(workflow: &str, stage: &str) -> String {
    format!("{workflow}-{stage}-gpu")
}

fn selectors(cel: &[String]) -> Option<Vec<DeviceSelector>> {
    (!cel.is_empty()).then(|| {
        cel.iter()
            .map(|expression| DeviceSelector {
                cel: Some(CELDeviceSelector {
                    expression: expression.clone(),
                }),
            })
            .collect()
    })
}

fn capacity(c: &Option<(String, u64)>) -> Option<CapacityRequirements> {
    c.as_ref().map(|(name, bytes)| CapacityRequirements {
        requests: Some(BTreeMap::from([(
            name.clone(),
            Quantity(bytes.to_string()),
        )])),
    })
}

fn subrequest(a: &DraAlternative) -> DeviceSubRequest {
    DeviceSubRequest {
        name: a.name.clone(),
        device_class_name: a.device_class.clone(),
        selectors: selectors(&a.selectors),
        capacity: capacity(&a.capacity),
        allocation_mode: Some("ExactCount".into()),
        count: Some(1),
        ..DeviceSubRequest::default()
    }
}

/// The claim's one request: whole GPUs, or the first available alternative.
pub fn request(claim: &DraClaim) -> DeviceRequest {
    if claim.alternatives.is_empty() {
        return DeviceRequest {
            name: CLAIM.into(),
            exactly: Some(ExactDeviceRequest {
                device_class_name: claim.device_class.clone(),
                allocation_mode: Some("ExactCount".into()),
                count: Some(i64::from(claim.count)),
                ..ExactDeviceRequest::default()
            }),
            first_available: None,
        };
    }
    DeviceRequest {
        name: CLAIM.into(),
        exactly: None,
        first_available: Some(claim.alternatives.iter().map(subrequest).collect()),
    }
}

/// The stage's ResourceClaimTemplate.
pub fn claim_template(
    wf: &VideoWorkflow,
    stage: &str,
    claim: &DraClaim,
) -> Result<ResourceClaimTemplate> {
    let name = wf.name_any();
    let labels = BTreeMap::from([
        (LABEL_WORKFLOW.to_string(), name.clone()),
        (LABEL_STAGE.to_string(), stage.to_string()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
    ]);
    let mut template = ResourceClaimTemplate {
        metadata: ObjectMeta {
            name: Some(template_name(&name, stage)),
            namespace: wf.namespace(),
            labels: Some(labels),
            owner_references: Some(vec![owner_reference(wf)?]),
            ..ObjectMeta::default()
        },
        spec: Some(ResourceClaimTemplateSpec {
            metadata: None,
            spec: Some(ResourceClaimSpec {
                devices: Some(DeviceClaim {
                    requests: Some(vec![request(claim)]),
                    ..DeviceClaim::default()
                }),
            }),
        }),
    };
    let hash = spec_hash(&template)?;
    template
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANNOTATION_SPEC_HASH.into(), hash);
    Ok(template)
}

/// What a pod of the stage carries: the claim, from the template.
pub fn pod_claim(workflow: &str, stage: &str) -> PodResourceClaim {
    PodResourceClaim {
        name: CLAIM.into(),
        resource_claim_template_name: Some(template_name(workflow, stage)),
        ..PodResourceClaim::default()
    }
}

/// What a container that uses the GPU carries (the function's, and the sidecar's, so
/// that NVML there sees the device).
pub fn container_claim() -> ContainerClaim {
    ContainerClaim {
        name: CLAIM.into(),
        request: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vflow_planner::gpu::{GpuSharing, translate};

    #[test]
    fn the_request_lists_the_alternatives_in_the_planners_order() {
        let sharing: GpuSharing =
            serde_json::from_str(r#"{"mode": "dra", "gpuMemoryBytes": 85899345920}"#)
                .expect("json");
        let claim = translate(0.25, None, &sharing)
            .expect("ok")
            .claim
            .expect("claim");
        let r = request(&claim);
        let subs = r.first_available.expect("alternatives");
        let names: Vec<&str> = subs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["mig", "share", "whole"]);
        assert_eq!(subs[0].device_class_name, "mig.nvidia.com");
        assert_eq!(subs[0].selectors.as_ref().map(Vec::len), Some(2));
        let share = subs[1].capacity.as_ref().and_then(|c| c.requests.clone());
        assert_eq!(
            share,
            Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity((20u64 << 30).to_string())
            )]))
        );
        assert!(subs[2].capacity.is_none());
        assert_eq!(subs[2].selectors.as_ref().map(Vec::len), Some(1));
        let whole = translate(2.0, None, &sharing)
            .expect("ok")
            .claim
            .expect("claim");
        let r = request(&whole);
        assert_eq!(r.exactly.and_then(|e| e.count), Some(2));
    }
}
