//! Writes: server-side apply under one field manager, only when what is there differs
//! from what would be written, so a steady state makes no write calls.

use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Service},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Resource,
    api::{DeleteParams, Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};

use super::build::{ANNOTATION_SPEC_HASH, FIELD_MANAGER};
use crate::error::Result;

fn hash_of(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()?
        .get(ANNOTATION_SPEC_HASH)
        .map(String::as_str)
}

/// The spec hash an object carries (empty when none).
pub fn spec_hash_of(meta: &ObjectMeta) -> String {
    hash_of(meta).unwrap_or_default().to_string()
}

fn owned_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

/// Whether an existing child (from the cache) already is what `desired` describes.
pub fn is_current(existing: &ObjectMeta, desired: &ObjectMeta, owner_uid: &str) -> bool {
    hash_of(existing).is_some()
        && hash_of(existing) == hash_of(desired)
        && owned_by(existing, owner_uid)
}

/// Whether the Deployment in the cache matches the desired one, replicas included.
pub fn deployment_is_current(
    existing: Option<&Deployment>,
    desired: &Deployment,
    uid: &str,
) -> bool {
    existing.is_some_and(|e| {
        is_current(&e.metadata, &desired.metadata, uid) && e.spec.replicas == desired.spec.replicas
    })
}

pub fn service_is_current(existing: Option<&Service>, desired: &Service, uid: &str) -> bool {
    existing.is_some_and(|e| is_current(&e.metadata, &desired.metadata, uid))
}

/// Server-side apply of a whole child, forcing ownership of the fields we set.
pub async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(&name, &pp, &Patch::Apply(obj)).await?)
}

/// Deletes a child the workflow no longer has (a removed stage). A child already gone
/// is fine.
pub async fn delete<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
