//! What a reconcile reads: the namespace's FunctionProfiles and the workflow's children,
//! all from the watch caches (no API calls, so a steady state costs no requests).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};
use vflow_api::{FunctionProfile, VideoWorkflow};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::build::{LABEL_WORKFLOW, child_name};

/// A workflow's children as the caches have them.
#[derive(Debug, Default, Clone)]
pub struct Children {
    /// By stage name.
    pub deployments: BTreeMap<String, Arc<Deployment>>,
    pub services: BTreeMap<String, Arc<Service>>,
    /// Children of stages the spec no longer has (named in status, owned by the workflow).
    pub stale_deployments: Vec<String>,
    pub stale_services: Vec<String>,
    /// Stages with a pod the scheduler could not place for want of room (seen in a pod
    /// list the reconcile makes only while some stage waits for replicas: not from a
    /// cache), while that may still take idle instances (`room::RECLAIM_AT_MOST`).
    pub unplaceable: BTreeSet<String>,
    /// Another workflow's stage waits for room (its pods short of it, as that
    /// workflow's reconcile saw): this one's idle instances give theirs.
    pub room_wanted_elsewhere: bool,
}

/// Every FunctionProfile in the namespace, by name.
pub fn profiles(
    store: &Store<FunctionProfile>,
    namespace: &str,
) -> BTreeMap<String, FunctionProfile> {
    store
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace))
        .map(|p| (p.name_any(), (*p).clone()))
        .collect()
}

/// The children of `wf` in the caches.
pub fn children(
    wf: &VideoWorkflow,
    deployments: &Store<Deployment>,
    services: &Store<Service>,
) -> Children {
    let ns = wf.namespace().unwrap_or_default();
    let name = wf.name_any();
    let uid = wf.uid().unwrap_or_default();
    let mut c = Children::default();
    for stage in &wf.spec.stages {
        let child = child_name(&name, &stage.name);
        if let Some(d) = deployments.get(&ObjectRef::new(&child).within(&ns)) {
            c.deployments.insert(stage.name.clone(), d);
        }
        if let Some(s) = services.get(&ObjectRef::new(&child).within(&ns)) {
            c.services.insert(stage.name.clone(), s);
        }
    }
    // Stages the status recorded that the spec no longer has: their children go.
    // (Found by name, so a reconcile never scans the whole cache.)
    let gone = wf
        .status
        .iter()
        .flat_map(|s| &s.stages)
        .filter(|p| !wf.spec.stages.iter().any(|st| st.name == p.name))
        .map(|p| child_name(&name, &p.name));
    for child in gone {
        let owned = |labels: &BTreeMap<String, String>, owners: &[OwnerReference]| {
            labels.get(LABEL_WORKFLOW) == Some(&name) && owners.iter().any(|o| o.uid == uid)
        };
        if let Some(d) = deployments.get(&ObjectRef::new(&child).within(&ns))
            && owned(d.labels(), d.owner_references())
        {
            c.stale_deployments.push(child.clone());
        }
        if let Some(s) = services.get(&ObjectRef::new(&child).within(&ns))
            && owned(s.labels(), s.owner_references())
        {
            c.stale_services.push(child);
        }
    }
    c
}
