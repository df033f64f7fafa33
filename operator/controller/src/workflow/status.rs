//! The workflow's status: the per-stage plan, conditions Ready and Degraded with
//! observedGeneration, written by server-side apply on /status only when it changed.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
};
use serde_json::json;
use vflow_api::{VideoWorkflow, VideoWorkflowStatus};

use super::build::FIELD_MANAGER;
use crate::error::Result;

pub const READY: &str = "Ready";
pub const DEGRADED: &str = "Degraded";

/// A condition, keeping the existing one's lastTransitionTime when its status is
/// unchanged (so an unchanged condition compares equal and is not written again).
pub fn condition(
    existing: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let since = existing
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message: truncate(message.into(), 1024),
        observed_generation: generation,
        last_transition_time: since,
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Adds problems found after planning (a GPU claim no device can satisfy) to the
/// Degraded condition: true with `reason`, or, where it is already true for another
/// reason, that reason with both messages.
pub fn add_degraded(
    status: &mut VideoWorkflowStatus,
    old: &[Condition],
    reason: &str,
    problems: &[String],
    now: Timestamp,
) {
    if problems.is_empty() {
        return;
    }
    let message = problems.join("; ");
    let generation = status.observed_generation;
    let new = match status.conditions.iter().find(|c| c.type_ == DEGRADED) {
        Some(c) if c.status == "True" => Condition {
            message: truncate(format!("{}; {message}", c.message), 1024),
            ..c.clone()
        },
        _ => condition(old, DEGRADED, true, reason, message, generation, now),
    };
    status.conditions.retain(|c| c.type_ != DEGRADED);
    status.conditions.push(new);
}

/// Whether the Degraded condition is newly true, or true with another message: the
/// moment to publish an Event (not on every reconcile, which would be writes).
pub fn degraded_changed(old: &[Condition], new: &[Condition]) -> Option<(String, String)> {
    let new = new
        .iter()
        .find(|c| c.type_ == DEGRADED && c.status == "True")?;
    let same = old.iter().any(|c| {
        c.type_ == DEGRADED
            && c.status == "True"
            && c.reason == new.reason
            && c.message == new.message
    });
    (!same).then(|| (new.reason.clone(), new.message.clone()))
}

/// Writes the status when it differs from the workflow's current one. Returns whether
/// it wrote; `Ok(false)` also when the workflow is gone (404).
pub async fn write(
    api: &Api<VideoWorkflow>,
    wf: &VideoWorkflow,
    status: &VideoWorkflowStatus,
) -> Result<bool> {
    if wf.status.as_ref() == Some(status) {
        return Ok(false);
    }
    let name = wf.metadata.name.clone().unwrap_or_default();
    let body = json!({
        "apiVersion": VideoWorkflow::api_version(&()),
        "kind": VideoWorkflow::kind(&()),
        "status": status,
    });
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch_status(&name, &pp, &Patch::Apply(&body)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid")
    }

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let c1 = condition(&[], READY, false, "StagesNotReady", "m", Some(1), t(0));
        let c2 = condition(
            std::slice::from_ref(&c1),
            READY,
            false,
            "StagesNotReady",
            "m2",
            Some(2),
            t(5),
        );
        assert_eq!(c2.last_transition_time, Time(t(0)));
        let c3 = condition(&[c2], READY, true, "StagesReady", "", Some(2), t(9));
        assert_eq!(c3.last_transition_time, Time(t(9)));
    }

    #[test]
    fn later_problems_make_degraded_true_or_join_its_message() {
        let ok = condition(&[], DEGRADED, false, "AsPlanned", "", Some(1), t(0));
        let mut status = VideoWorkflowStatus {
            observed_generation: Some(1),
            conditions: vec![ok.clone()],
            ..VideoWorkflowStatus::default()
        };
        let old = std::slice::from_ref(&ok);
        add_degraded(&mut status, old, "GpuClaimUnsatisfiable", &[], t(5));
        assert_eq!(status.conditions, old, "nothing to add");
        let gpu = ["stage a asks for 96Gi".to_string()];
        add_degraded(&mut status, &[ok], "GpuClaimUnsatisfiable", &gpu, t(5));
        let c = &status.conditions[0];
        assert_eq!(status.conditions.len(), 1);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            ("True", "GpuClaimUnsatisfiable", "stage a asks for 96Gi")
        );
        assert_eq!(c.last_transition_time, Time(t(5)));
        let bad = condition(&[], DEGRADED, true, "InvalidAnnotation", "x", Some(1), t(0));
        let mut status = VideoWorkflowStatus {
            conditions: vec![bad.clone()],
            ..VideoWorkflowStatus::default()
        };
        add_degraded(&mut status, &[bad], "GpuClaimUnsatisfiable", &gpu, t(5));
        let c = &status.conditions[0];
        assert_eq!(
            (c.reason.as_str(), c.message.as_str()),
            ("InvalidAnnotation", "x; stage a asks for 96Gi")
        );
    }

    #[test]
    fn events_only_on_a_new_problem() {
        let bad = condition(
            &[],
            DEGRADED,
            true,
            "ProfileMissing",
            "spec.stages[0].function: x",
            Some(1),
            t(0),
        );
        let good = condition(&[], DEGRADED, false, "AsPlanned", "", Some(1), t(0));
        assert!(degraded_changed(&[], std::slice::from_ref(&bad)).is_some());
        assert!(degraded_changed(std::slice::from_ref(&bad), std::slice::from_ref(&bad)).is_none());
        assert!(degraded_changed(&[bad], &[good]).is_none());
    }
}
