//! The FunctionProfile controller: turns the observations in a profile's status into a
//! recommendation (the planner's `sizing::recommend`) and writes it, with the conditions
//! Observed and Applied, to status. Sizing Auto applies it to the stages (the workflow
//! controller sizes from the same observations); Recommend only reports it.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;
use vflow_api::{FunctionProfile, FunctionProfileStatus, SizingMode};
use vflow_planner::sizing::{SizingConfig, recommend};

use crate::{
    error::{Error, Result, backoff},
    metrics::Metrics,
    workflow::{build::FIELD_MANAGER, status::condition},
};

pub const CONTROLLER: &str = "functionprofile";
pub const OBSERVED: &str = "Observed";
pub const APPLIED: &str = "Applied";

pub struct ProfileContext {
    pub client: Client,
    pub sizing: SizingConfig,
    pub metrics: Metrics,
    pub clock: fn() -> Timestamp,
}

/// The status fields this controller owns, from the profile (pure).
pub fn desired_status(
    profile: &FunctionProfile,
    cfg: &SizingConfig,
    now: Timestamp,
) -> FunctionProfileStatus {
    let old = profile.status.clone().unwrap_or_default();
    let generation = profile.metadata.generation;
    let rec = recommend(profile, cfg);
    let trusted = old.invocations >= cfg.min_observations;
    let observed = condition(
        &old.conditions,
        OBSERVED,
        trusted,
        if trusted {
            "EnoughObservations"
        } else {
            "TooFewObservations"
        },
        format!(
            "{} of {} invocations observed",
            old.invocations, cfg.min_observations
        ),
        generation,
        now,
    );
    let (applied, reason, message) = match profile.spec.sizing {
        SizingMode::Auto if trusted || old.oom_kills > 0 => {
            (true, "Auto", "the recommendation sizes the stages")
        }
        SizingMode::Auto => (
            false,
            "TooFewObservations",
            "the spec's resources size the stages until enough invocations are observed",
        ),
        SizingMode::Recommend => (
            false,
            "RecommendOnly",
            "sizing Recommend: the spec's resources size the stages",
        ),
        SizingMode::Off => (
            false,
            "SizingOff",
            "sizing Off: the spec's resources size the stages",
        ),
    };
    let applied = condition(
        &old.conditions,
        APPLIED,
        applied,
        reason,
        message,
        generation,
        now,
    );
    FunctionProfileStatus {
        observed_generation: generation,
        recommendation: Some(rec),
        conditions: vec![observed, applied],
        ..old
    }
}

pub async fn reconcile(profile: Arc<FunctionProfile>, ctx: Arc<ProfileContext>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_inner(&profile, &ctx).await;
    ctx.metrics
        .duration
        .with_label_values(&[CONTROLLER])
        .observe(started.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciliations
        .with_label_values(&[CONTROLLER, outcome])
        .inc();
    result
}

#[tracing::instrument(skip_all, fields(namespace = %profile.namespace().unwrap_or_default(), name = %profile.name_any()))]
async fn reconcile_inner(profile: &FunctionProfile, ctx: &ProfileContext) -> Result<Action> {
    let want = desired_status(profile, &ctx.sizing, (ctx.clock)());
    if profile.status.as_ref() == Some(&want) {
        return Ok(Action::requeue(Duration::from_secs(3600)));
    }
    let ns = profile.namespace().unwrap_or_default();
    let api: Api<FunctionProfile> = Api::namespaced(ctx.client.clone(), &ns);
    // Only the fields this controller owns: observations are someone else's to write.
    let body = json!({
        "apiVersion": FunctionProfile::api_version(&()),
        "kind": FunctionProfile::kind(&()),
        "status": {
            "observedGeneration": want.observed_generation,
            "recommendation": want.recommendation,
            "conditions": want.conditions,
        }
    });
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    match api
        .patch_status(&profile.name_any(), &pp, &Patch::Apply(&body))
        .await
    {
        Ok(_) => Ok(Action::requeue(Duration::from_secs(3600))),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(Error::from(e)),
    }
}

pub fn error_policy(_p: Arc<FunctionProfile>, error: &Error, ctx: Arc<ProfileContext>) -> Action {
    ctx.metrics
        .errors
        .with_label_values(&[CONTROLLER, error.category()])
        .inc();
    Action::requeue(backoff(3, error.is_permanent()))
}
