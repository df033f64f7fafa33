//! Sharing mode dra: why a GPU stage's pods wait. When the scheduler cannot place one of
//! them, the cluster's ResourceSlices say how much GPU memory one device of the driver
//! can still give (its memory capacity, less what ResourceClaims' allocations hold);
//! when that is less than the stage's claim asks for, the workflow's Degraded condition
//! says so, with the largest share that fits. Read only then: a reconcile where no GPU
//! stage waits lists nothing.
//!
//! The devices counted are the driver's (`gpuSharing.driver`): the DeviceClasses' own
//! CEL selectors are not evaluated here. Counters shared between partitions of one GPU
//! (partitionable MIG devices) are not subtracted: only allocations of the device itself.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{Api, Client, api::ListParams};
use tracing::warn;
use vflow_planner::gpu::DraSharing;

use super::build::LABEL_STAGE;
use crate::error::Result;

/// The Degraded reason.
pub const REASON: &str = "GpuClaimUnsatisfiable";

/// How soon to look again at a GPU stage whose replicas are not all ready: the
/// scheduler giving up on a pod, or a device coming free, changes nothing the operator
/// watches.
pub const RECHECK: Duration = Duration::from_secs(20);

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A GPU stage under sharing mode dra whose planned replicas are not all ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub stage: String,
    /// The memory the claim asks of one device.
    pub memory_bytes: u64,
}

/// Whether the scheduler found no node for the pod.
pub fn unschedulable(pod: &Pod) -> bool {
    unschedulable_because(pod).is_some()
}

/// The scheduler's message for a pod it found no node for (e.g. "0/3 nodes are
/// available: 3 Insufficient memory."); None while the pod is placed or not looked at.
pub fn unschedulable_because(pod: &Pod) -> Option<&str> {
    let unbound = pod.spec.as_ref().is_none_or(|s| s.node_name.is_none());
    if !unbound {
        return None;
    }
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())?
        .iter()
        .find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        })
        .map(|c| c.message.as_deref().unwrap_or(""))
}

/// What the driver's devices offer one claim.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Offer {
    /// Devices of the driver, in the pools' newest generation.
    pub devices: usize,
    /// The device with the most memory: (bytes, which).
    pub largest: Option<(u64, String)>,
    /// The most memory no allocation holds on one device; None where the allocations
    /// could not be read.
    pub free: Option<(u64, String)>,
    /// A device that publishes no memory may be free: a whole GPU of unknown size could
    /// satisfy the claim, so nothing can be said.
    pub unknown: bool,
}

fn memory<'a, V>(map: Option<&'a BTreeMap<String, V>>, driver: &str, name: &str) -> Option<&'a V> {
    let map = map?;
    map.get(name)
        .or_else(|| map.get(&format!("{driver}/{name}")))
}

fn bytes(q: &Quantity) -> Option<u64> {
    let v = q.0.parse::<vflow_api::Quantity>().ok()?.value().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v as u64)
}

/// The largest memory share one device of `driver` gives (capacity `name`), in all and
/// free of the `claims`' allocations (None: they could not be read).
pub fn offer(
    slices: &[ResourceSlice],
    claims: Option<&[ResourceClaim]>,
    driver: &str,
    name: &str,
) -> Offer {
    let ours: Vec<&ResourceSlice> = slices.iter().filter(|s| s.spec.driver == driver).collect();
    // Only a pool's newest generation counts: older slices are being replaced.
    let mut newest: BTreeMap<&str, i64> = BTreeMap::new();
    for s in &ours {
        let g = newest.entry(s.spec.pool.name.as_str()).or_insert(i64::MIN);
        *g = (*g).max(s.spec.pool.generation);
    }
    // (pool, device) -> memory held by shares, or None when held whole.
    let mut held: BTreeMap<(&str, &str), Option<u64>> = BTreeMap::new();
    for claim in claims.unwrap_or_default() {
        let results = claim
            .status
            .as_ref()
            .and_then(|s| s.allocation.as_ref())
            .and_then(|a| a.devices.as_ref())
            .and_then(|d| d.results.as_ref());
        for r in results.into_iter().flatten().filter(|r| r.driver == driver) {
            let share = memory(r.consumed_capacity.as_ref(), driver, name).and_then(bytes);
            let entry = held
                .entry((r.pool.as_str(), r.device.as_str()))
                .or_insert(Some(0));
            *entry = match (*entry, share) {
                (Some(sum), Some(b)) => Some(sum.saturating_add(b)),
                _ => None,
            };
        }
    }
    let mut out = Offer::default();
    for s in ours
        .iter()
        .filter(|s| newest.get(s.spec.pool.name.as_str()) == Some(&s.spec.pool.generation))
    {
        for d in s.spec.devices.iter().flatten() {
            out.devices += 1;
            let node = d.node_name.as_ref().or(s.spec.node_name.as_ref());
            let which = match node {
                Some(n) => format!("{} on {n}", d.name),
                None => d.name.clone(),
            };
            let holding = held.get(&(s.spec.pool.name.as_str(), d.name.as_str()));
            let Some(total) =
                memory(d.capacity.as_ref(), driver, name).and_then(|c| bytes(&c.value))
            else {
                out.unknown |= claims.is_none() || holding.is_none();
                continue;
            };
            if out.largest.as_ref().is_none_or(|(b, _)| total > *b) {
                out.largest = Some((total, which.clone()));
            }
            if claims.is_some() {
                let shared = d.allow_multiple_allocations == Some(true);
                let free = match holding {
                    None => total,
                    Some(Some(sum)) if shared => total.saturating_sub(*sum),
                    Some(_) => 0,
                };
                if out.free.as_ref().is_none_or(|(b, _)| free > *b) {
                    out.free = Some((free, which));
                }
            }
        }
    }
    out
}

/// Bytes as the status shows them: whole GiB, else MiB (rounded up for what is asked,
/// down for what is offered, so the message never promises more than there is).
fn size(bytes: u64, up: bool) -> String {
    if bytes.is_multiple_of(GIB) {
        format!("{}Gi", bytes / GIB)
    } else if up {
        format!("{}Mi", bytes.div_ceil(MIB))
    } else {
        format!("{}Mi", bytes / MIB)
    }
}

/// The Degraded message for a stage whose pod cannot be scheduled, when no device can
/// give the memory its claim asks for; None when one could (the pod waits for
/// something else) or when that cannot be told.
pub fn message(stage: &str, need: u64, offer: &Offer, driver: &str) -> Option<String> {
    let ask = format!("stage {stage} asks for {} of one GPU", size(need, true));
    if offer.devices == 0 {
        return Some(format!(
            "{ask}; no ResourceSlice offers a device of driver {driver}"
        ));
    }
    if offer.unknown {
        return None;
    }
    let (total, largest) = offer.largest.as_ref()?;
    match &offer.free {
        Some((free, _)) if *free >= need => None,
        Some((free, at)) if free == total => Some(format!(
            "{ask}; the largest share any device offers is {} ({at})",
            size(*free, false)
        )),
        Some((free, at)) => Some(format!(
            "{ask}; the largest share free now is {} ({at}); the largest device holds {} ({largest})",
            size(*free, false),
            size(*total, false)
        )),
        None if *total < need => Some(format!(
            "{ask}; the largest share any device offers is {} ({largest}), its total: the allocations could not be read",
            size(*total, false)
        )),
        None => None,
    }
}

/// The Degraded messages for the waiting stages whose pods (the workflow's, listed by
/// the caller) the scheduler cannot place for want of GPU memory. The ResourceSlices
/// and ResourceClaims are read only when a pod is unschedulable. Where the slices may
/// not be read (a namespaced Role cannot grant them), nothing is said.
pub async fn problems(
    client: &Client,
    pods: &[Pod],
    waiting: &[Waiting],
    dra: &DraSharing,
) -> Result<Vec<String>> {
    let stuck: Vec<&Waiting> = waiting
        .iter()
        .filter(|w| {
            pods.iter().any(|p| {
                p.metadata.labels.as_ref().and_then(|l| l.get(LABEL_STAGE)) == Some(&w.stage)
                    && unschedulable(p)
            })
        })
        .collect();
    if stuck.is_empty() {
        return Ok(Vec::new());
    }
    let slices = match Api::<ResourceSlice>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(l) => l.items,
        Err(kube::Error::Api(e)) if e.code == 403 => {
            warn!(error = %e.message, "cannot read ResourceSlices to say what GPU share fits");
            return Ok(Vec::new());
        }
        Err(e) => return Err(e.into()),
    };
    let claims = match Api::<ResourceClaim>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(l) => Some(l.items),
        Err(kube::Error::Api(e)) if e.code == 403 => {
            warn!(error = %e.message, "cannot read ResourceClaims: GPU shares counted in all");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let offer = offer(
        &slices,
        claims.as_deref(),
        &dra.driver,
        &dra.memory_capacity,
    );
    Ok(stuck
        .iter()
        .filter_map(|w| message(&w.stage, w.memory_bytes, &offer, &dra.driver))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DRIVER: &str = "gpu.nvidia.com";

    fn slice(pool: &str, generation: i64, devices: serde_json::Value) -> ResourceSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{pool}-{generation}")},
            "spec": {"driver": DRIVER, "nodeName": "node-a",
                "pool": {"name": pool, "generation": generation, "resourceSliceCount": 1},
                "devices": devices}
        }))
        .expect("slice")
    }

    fn claim(pool: &str, device: &str, consumed: Option<&str>) -> ResourceClaim {
        let mut result = json!({"request": "gpu/share", "driver": DRIVER, "pool": pool,
            "device": device});
        if let Some(c) = consumed {
            result["consumedCapacity"] = json!({"memory": c});
        }
        serde_json::from_value(json!({
            "metadata": {"name": "c"},
            "spec": {},
            "status": {"allocation": {"devices": {"results": [result]}}}
        }))
        .expect("claim")
    }

    fn gpus() -> Vec<ResourceSlice> {
        vec![
            slice(
                "p",
                2,
                json!([
                    {"name": "shared", "allowMultipleAllocations": true,
                     "capacity": {"memory": {"value": "80Gi"}}},
                    {"name": "small", "capacity": {"gpu.nvidia.com/memory": {"value": "40Gi"}}},
                ]),
            ),
            // An older generation of the same pool: replaced, not counted.
            slice(
                "p",
                1,
                json!([{"name": "old", "capacity": {"memory": {"value": "160Gi"}}}]),
            ),
        ]
    }

    #[test]
    fn the_largest_share_is_the_largest_device_less_what_claims_hold() {
        let slices = gpus();
        let free = offer(&slices, Some(&[]), DRIVER, "memory");
        assert_eq!(free.devices, 2);
        assert_eq!(free.largest, Some((80 * GIB, "shared on node-a".into())));
        assert_eq!(free.free, free.largest);
        // 16Gi of the shared GPU taken, and the small one whole.
        let claims = [
            claim("p", "shared", Some("16Gi")),
            claim("p", "small", None),
        ];
        let held = offer(&slices, Some(&claims), DRIVER, "memory");
        assert_eq!(held.largest, Some((80 * GIB, "shared on node-a".into())));
        assert_eq!(held.free, Some((64 * GIB, "shared on node-a".into())));
        // Another driver's devices and allocations are not ours.
        assert_eq!(
            offer(&slices, Some(&claims), "other", "memory"),
            Offer::default()
        );
        // Allocations unknown: the totals only.
        let totals = offer(&slices, None, DRIVER, "memory");
        assert_eq!((totals.largest, totals.free), (held.largest, None));
    }

    #[test]
    fn messages_say_what_was_asked_and_what_fits() {
        let slices = gpus();
        let claims = [claim("p", "shared", Some("16Gi"))];
        let held = offer(&slices, Some(&claims), DRIVER, "memory");
        assert_eq!(
            message("detect", 96 * GIB, &held, DRIVER).as_deref(),
            Some(
                "stage detect asks for 96Gi of one GPU; the largest share free now is 64Gi \
                 (shared on node-a); the largest device holds 80Gi (shared on node-a)"
            )
        );
        assert_eq!(message("detect", 64 * GIB, &held, DRIVER), None, "it fits");
        let free = offer(&slices, Some(&[]), DRIVER, "memory");
        assert_eq!(
            message("detect", 96 * GIB + 1, &free, DRIVER).as_deref(),
            Some(
                "stage detect asks for 98305Mi of one GPU; the largest share any device \
                 offers is 80Gi (shared on node-a)"
            )
        );
        let totals = offer(&slices, None, DRIVER, "memory");
        assert!(
            message("detect", 96 * GIB, &totals, DRIVER)
                .is_some_and(|m| m.contains("80Gi") && m.contains("could not be read"))
        );
        assert_eq!(message("detect", 64 * GIB, &totals, DRIVER), None);
        assert_eq!(
            message(
                "detect",
                GIB,
                &offer(&[], Some(&[]), DRIVER, "memory"),
                DRIVER
            )
            .as_deref(),
            Some(
                "stage detect asks for 1Gi of one GPU; no ResourceSlice offers a device of driver gpu.nvidia.com"
            )
        );
    }

    #[test]
    fn a_free_gpu_of_unknown_memory_could_take_the_claim() {
        let mut slices = gpus();
        slices.push(slice("q", 1, json!([{"name": "plain"}])));
        let o = offer(&slices, Some(&[]), DRIVER, "memory");
        assert!(o.unknown);
        assert_eq!(message("detect", 96 * GIB, &o, DRIVER), None);
        // Held whole: it gives nothing, and what the others give is known.
        let claims = [claim("q", "plain", None)];
        let o = offer(&slices, Some(&claims), DRIVER, "memory");
        assert!(!o.unknown);
        assert!(message("detect", 96 * GIB, &o, DRIVER).is_some());
    }

    #[test]
    fn only_pods_the_scheduler_gave_up_on_are_unschedulable() {
        let pod = |node: Option<&str>, status: &str, reason: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "p"},
                "spec": {"containers": [], "nodeName": node},
                "status": {"conditions": [{"type": "PodScheduled", "status": status,
                    "reason": reason}]}
            }))
            .expect("pod")
        };
        assert!(unschedulable(&pod(None, "False", "Unschedulable")));
        assert!(!unschedulable(&pod(None, "False", "SchedulingGated")));
        assert!(!unschedulable(&pod(Some("n"), "True", "")));
        assert!(!unschedulable(&Pod::default()));
    }
}
