//! The VideoWorkflow controller, in phases: [`dereference`] (read the caches),
//! [`validate`] (pure: rules, plan, GPU), [`desired`] with [`build`] and the
//! [`crate::autoscaler`] (pure: children and status), [`apply`] and [`status`] (writes,
//! only of what changed).

pub mod apply;
pub mod build;
pub mod dereference;
pub mod dra;
pub mod dra_fit;
pub mod network;
pub mod resize;
pub mod room;
pub mod status;
pub mod validate;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Secret, Service},
    },
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{ObjectRef, Store},
    },
};
use tracing::{info, warn};
use vflow_api::{FunctionProfile, Provisioning, StagePlan, VideoWorkflow, VideoWorkflowStatus};
use vflow_planner::branch::BranchObservation;
use vflow_planner::{WorkflowPlan, plan::StageDecision};
use vflow_runs::demand::{DemandBoard, WorkflowDemand};

use crate::{
    autoscaler::{self, PrewarmWindow, ScaleInput, ScaleReason},
    config::Settings,
    error::{Error, Result, backoff},
    metrics::Metrics,
    signals,
};
use build::StageInput;
use dereference::Children;
use validate::Invalid;

pub const CONTROLLER: &str = "videoworkflow";
/// Reconcile at least this often, as a safety net for missed watch events. Cheap: a
/// reconcile with nothing to change makes no API calls.
pub const RESYNC: Duration = Duration::from_secs(600);
/// How soon a stage waiting for replicas is looked at again.
pub const WAITING_RECHECK: Duration = Duration::from_secs(5);

/// Per-stage memory of activity for the autoscaler: (in-flight last seen, last active).
type Activity = HashMap<String, (u32, Timestamp)>;

/// Plans by workflow uid, with the key they were computed for.
type PlanCache = HashMap<String, (String, Arc<Result<WorkflowPlan, Invalid>>)>;

/// What the workflow controller shares between reconciles.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Metrics,
    pub profiles: Store<FunctionProfile>,
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub recorder: Recorder,
    /// The clock, read once per reconcile and passed to the pure parts.
    pub clock: fn() -> Timestamp,
    /// Set once the profile, Deployment and Service caches have their first list.
    pub caches_ready: AtomicBool,
    /// What the runs in this process ask of the stages.
    pub demand: Arc<DemandBoard>,
    activity: Mutex<HashMap<String, Activity>>,
    /// Workflows with pods short of room, and until when that holds unless seen again.
    room_wanted: Mutex<room::RoomWants>,
    failures: Mutex<HashMap<String, u32>>,
    plans: Mutex<PlanCache>,
    /// Branch outcomes as this process last wrote them to each workflow's status.
    branches: Mutex<HashMap<String, Vec<BranchObservation>>>,
    stage_counts: Mutex<HashMap<String, (StageCounts, FunctionRequests)>>,
    /// Workflows (by uid) whose invocation token Secret this process saw or made.
    tokens: Mutex<std::collections::HashSet<String>>,
    /// The stage NetworkPolicy's hash, by workflow uid, as this process saw or wrote it.
    policies: Mutex<HashMap<String, String>>,
    /// The GPU stages' ResourceClaimTemplates (name -> hash), by workflow uid, as this
    /// process saw or wrote them.
    claim_templates: Mutex<HashMap<String, BTreeMap<String, String>>>,
}

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Metrics,
        profiles: Store<FunctionProfile>,
        deployments: Store<Deployment>,
        services: Store<Service>,
        reporter: Reporter,
    ) -> Self {
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            profiles,
            deployments,
            services,
            clock: Timestamp::now,
            caches_ready: AtomicBool::new(false),
            demand: Arc::default(),
            activity: Mutex::default(),
            room_wanted: Mutex::default(),
            failures: Mutex::default(),
            plans: Mutex::default(),
            branches: Mutex::default(),
            stage_counts: Mutex::default(),
            tokens: Mutex::default(),
            policies: Mutex::default(),
            claim_templates: Mutex::default(),
        }
    }
}

/// Makes the workflow's invocation token Secret unless it is there: once per workflow
/// in this process, and again whenever its pods change (a deleted Secret comes back
/// before pods that mount it start). Never replaces a token: the running pods hold it.
async fn ensure_token(
    ctx: &Context,
    wf: &VideoWorkflow,
    ns: &str,
    pods_change: bool,
) -> Result<()> {
    let uid = wf.uid().unwrap_or_default();
    let seen = ctx.tokens.lock().is_ok_and(|t| t.contains(&uid));
    if seen && !pods_change {
        return Ok(());
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let name = vflow_contract::auth::invoke_token_secret(&wf.name_any());
    if secrets.get_opt(&name).await?.is_none() {
        let token = build::new_token().map_err(|e| {
            crate::error::Error::Config(format!("no random source for the invocation token: {e}"))
        })?;
        match secrets
            .create(&Default::default(), &build::token_secret(wf, token)?)
            .await
        {
            Ok(_) => info!(secret = %name, "made the workflow's invocation token"),
            // Another reconcile made it meanwhile: keep that one.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Ok(mut t) = ctx.tokens.lock() {
        t.insert(uid);
    }
    Ok(())
}

/// Applies the workflow's stage NetworkPolicy unless this process saw it as it should
/// be: one read per workflow after a start, a write only when it differs.
async fn ensure_policy(
    ctx: &Context,
    wf: &VideoWorkflow,
    ns: &str,
    from: &network::StageIngress,
) -> Result<()> {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let want = network::network_policy(wf, from, ctx.settings.default_s3_endpoint.as_deref())?;
    let hash = apply::spec_hash_of(&want.metadata);
    let uid = wf.uid().unwrap_or_default();
    if ctx
        .policies
        .lock()
        .is_ok_and(|p| p.get(&uid) == Some(&hash))
    {
        return Ok(());
    }
    let api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), ns);
    let name = network::policy_name(&wf.name_any());
    let there = api.get_opt(&name).await?;
    if !there.is_some_and(|p| apply::is_current(&p.metadata, &want.metadata, &uid)) {
        apply::apply(&api, &want).await?;
        info!(policy = %name, "applied the workflow's stage NetworkPolicy");
    }
    if let Ok(mut p) = ctx.policies.lock() {
        p.insert(uid, hash);
    }
    Ok(())
}

/// Applies the GPU stages' ResourceClaimTemplates and deletes the workflow's others,
/// unless this process saw them as they should be: a read per workflow after a start,
/// writes only for what differs. (Nothing at all for workflows without GPU claims,
/// so clusters without the resource.k8s.io API never hear of it.)
async fn ensure_claim_templates(
    ctx: &Context,
    wf: &VideoWorkflow,
    ns: &str,
    want: &[k8s_openapi::api::resource::v1::ResourceClaimTemplate],
) -> Result<()> {
    use k8s_openapi::api::resource::v1::ResourceClaimTemplate;
    let wanted: BTreeMap<String, String> = want
        .iter()
        .map(|t| (t.name_any(), apply::spec_hash_of(&t.metadata)))
        .collect();
    let uid = wf.uid().unwrap_or_default();
    if ctx
        .claim_templates
        .lock()
        .is_ok_and(|c| c.get(&uid) == Some(&wanted))
    {
        return Ok(());
    }
    let api: Api<ResourceClaimTemplate> = Api::namespaced(ctx.client.clone(), ns);
    let selector = format!("{}={}", build::LABEL_WORKFLOW, wf.name_any());
    let there = api
        .list(&kube::api::ListParams::default().labels(&selector))
        .await?;
    for t in want {
        let current = there.items.iter().find(|e| e.name_any() == t.name_any());
        if current.is_some_and(|e| apply::is_current(&e.metadata, &t.metadata, &uid)) {
            continue;
        }
        if current.is_some() {
            // A template's spec is immutable (an apply that changes it is refused):
            // replaced. Pods made from now on get claims from the new one; running pods
            // keep theirs.
            apply::delete(&api, &t.name_any()).await?;
        }
        apply::apply(&api, t).await?;
        info!(template = %t.name_any(), "applied a GPU stage's ResourceClaimTemplate");
    }
    for stale in there
        .items
        .iter()
        .filter(|e| !wanted.contains_key(&e.name_any()))
    {
        apply::delete(&api, &stale.name_any()).await?;
    }
    if let Ok(mut c) = ctx.claim_templates.lock() {
        c.insert(uid, wanted);
    }
    Ok(())
}

/// Stages by state and their instances, for the `vflow_operator_stages` and
/// `vflow_operator_instances` gauges.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StageCounts {
    pub ready: i64,
    pub not_ready: i64,
    pub scaled_to_zero: i64,
    pub invalid: i64,
    pub desired_instances: i64,
    pub ready_instances: i64,
}

/// Per function: CPU cores, memory bytes and GPUs requested by the desired replicas, for
/// `vflow_operator_function_requests`.
pub type FunctionRequests = BTreeMap<String, [f64; 3]>;

/// A replica change, for metrics and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleChange {
    pub stage: String,
    pub from: Option<u32>,
    pub to: u32,
    pub reason: &'static str,
}

/// Everything a reconcile would make true.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// By stage: every stage that runs in pods of its own (not fused into another's).
    pub deployments: Vec<(String, Deployment)>,
    pub services: Vec<(String, Service)>,
    /// Sharing mode Dra: the GPU stages' ResourceClaimTemplates.
    pub claim_templates: Vec<k8s_openapi::api::resource::v1::ResourceClaimTemplate>,
    /// Sharing mode Dra: the GPU stages whose planned replicas are not all ready (the
    /// reconcile asks whether the scheduler can place them).
    pub gpu_waiting: Vec<dra_fit::Waiting>,
    /// Stages that want more replicas than are ready.
    pub waiting: Vec<String>,
    /// Stages now fused into another's pods whose own children are still there.
    pub fused_away_deployments: Vec<String>,
    pub fused_away_services: Vec<String>,
    pub status: VideoWorkflowStatus,
    pub requeue_at: Option<Timestamp>,
    pub scale_changes: Vec<ScaleChange>,
    /// The autoscaler's memory after this reconcile.
    pub activity: Activity,
    pub counts: StageCounts,
    pub requests: FunctionRequests,
    pub invalid: bool,
}

fn key(wf: &VideoWorkflow) -> String {
    format!("{}/{}", wf.namespace().unwrap_or_default(), wf.name_any())
}

/// When a pre-warm must start for the instances to be ready at `at`.
pub fn cold_start(profile: &FunctionProfile, settings: &Settings) -> Duration {
    let observed = profile
        .status
        .as_ref()
        .filter(|s| s.invocations > 0)
        .and_then(|s| s.cold_start_seconds.as_ref())
        .and_then(|d| Duration::try_from_secs_f64(d.p95).ok());
    observed
        .or(profile.spec.cold_start_prior.map(|d| d.as_std()))
        .unwrap_or(settings.default_cold_start)
}

/// The pure middle of a reconcile: from the workflow, the outcome of validation and
/// planning, the caches, the runs' demand and the time, what the children and the
/// status should be.
#[allow(clippy::too_many_arguments)]
pub fn desired(
    wf: &VideoWorkflow,
    outcome: &Result<WorkflowPlan, Invalid>,
    profiles: &BTreeMap<String, FunctionProfile>,
    children: &Children,
    activity: &Activity,
    demand: &WorkflowDemand,
    settings: &Settings,
    now: Timestamp,
) -> Result<Desired> {
    let generation = wf.metadata.generation;
    let old = wf.status.clone().unwrap_or_default();
    let mut out = Desired::default();
    let plan = match outcome {
        Err(invalid) => {
            let message = invalid.message();
            out.invalid = true;
            out.counts.invalid = wf.spec.stages.len() as i64;
            out.status = VideoWorkflowStatus {
                observed_generation: generation,
                conditions: vec![
                    status::condition(
                        &old.conditions,
                        status::READY,
                        false,
                        invalid.reason.as_str(),
                        &message,
                        generation,
                        now,
                    ),
                    status::condition(
                        &old.conditions,
                        status::DEGRADED,
                        true,
                        invalid.reason.as_str(),
                        &message,
                        generation,
                        now,
                    ),
                ],
                // The plan and the children stay as they were.
                ..old.clone()
            };
            out.activity = activity.clone();
            return Ok(out);
        }
        Ok(plan) => plan,
    };

    let stage_names: Vec<&str> = wf.spec.stages.iter().map(|s| s.name.as_str()).collect();
    let mut signals = signals::parse(wf.metadata.annotations.as_ref(), &stage_names);
    signals.add(demand, &stage_names);
    let scale_to_zero_after = wf.spec.scale_to_zero_after.as_std();
    let mut stage_plans = plan.to_status_stages();
    let mut not_ready = Vec::new();
    for stage in &wf.spec.stages {
        let (Some(decision), Some(profile)) = (
            plan.stages.iter().find(|d| d.name == stage.name),
            profiles.get(&stage.function),
        ) else {
            continue; // validate() refused this already
        };
        if decision.fused_with.is_some() {
            // Runs in its chain head's pods: no children of its own (old ones go).
            if children.deployments.contains_key(&stage.name) {
                out.fused_away_deployments.push(stage.name.clone());
            }
            if children.services.contains_key(&stage.name) {
                out.fused_away_services.push(stage.name.clone());
            }
            continue;
        }
        let existing = children.deployments.get(&stage.name);
        let current = existing
            .and_then(|d| d.spec.replicas)
            .map(|r| r.max(0) as u32);
        let in_flight = signals.in_flight(&stage.name);
        let last = autoscaler::last_active(
            activity.get(&stage.name).copied(),
            in_flight,
            current.unwrap_or(0),
            signals.prewarm_for(&stage.name).next().is_some(),
            now,
        );
        if let Some(l) = last {
            out.activity.insert(stage.name.clone(), (in_flight, l));
        }
        let lead = cold_start(profile, settings) + settings.prewarm_margin;
        let lead = SignedDuration::try_from(lead).unwrap_or(SignedDuration::ZERO);
        let prewarm = signals
            .prewarm_for(&stage.name)
            .map(|p| PrewarmWindow {
                start: p.at.checked_sub(lead).unwrap_or(Timestamp::MIN),
                ready_by: p.at,
                replicas: p.replicas,
            })
            .collect();
        let input = ScaleInput {
            min_replicas: decision.min_replicas,
            max_replicas: decision.max_replicas,
            target_concurrency: decision.concurrency,
            durable: decision.provisioning == Provisioning::Durable,
            in_flight,
            last_active: last,
            scale_to_zero_after,
            prewarm,
            current,
            // Room idle instances hold goes to stages that wait for it, this
            // workflow's or another's.
            reclaim_idle: children.room_wanted_elsewhere
                || children.unplaceable.iter().any(|s| *s != stage.name),
        };
        let scale = autoscaler::decide(&input, now);
        if let Some(at) = scale.recheck_at {
            out.requeue_at = Some(out.requeue_at.map_or(at, |r| r.min(at)));
        }
        // Durable by choice of the planner: its rate falls with no event to say so, so
        // plan again within half a provisioning window.
        let auto = stage
            .overrides
            .as_ref()
            .and_then(|o| o.provisioning)
            .unwrap_or(wf.spec.provisioning)
            == Provisioning::Auto;
        if auto && decision.provisioning == Provisioning::Durable {
            let half = settings.planner.provisioning.window_seconds.max(2.0) / 2.0;
            let at = now
                .checked_add(SignedDuration::from_secs_f64(half))
                .unwrap_or(now);
            out.requeue_at = Some(out.requeue_at.map_or(at, |r| r.min(at)));
        }
        if current != Some(scale.replicas) {
            out.scale_changes.push(ScaleChange {
                stage: stage.name.clone(),
                from: current,
                to: scale.replicas,
                reason: scale.reason.as_str(),
            });
        }
        // The plan's size, unless it would roll the pods for a few percent or while
        // invocations are in flight (resize.rs).
        let running = existing.and_then(|d| resize::running_size(d, build::FUNCTION_CONTAINER));
        let sized;
        let planned_size = decision.size.clone();
        let resize = resize::decide(&decision.size, running, in_flight);
        let decision = match resize {
            resize::Resize::Apply => decision,
            _ => {
                sized = StageDecision {
                    size: resize::settle(&decision.size, running, resize),
                    ..decision.clone()
                };
                &sized
            }
        };
        let si = StageInput {
            workflow: wf,
            stage,
            decision,
            profile,
            pod_annotations: &settings.pod_annotations,
            default_endpoint: settings.default_s3_endpoint.as_deref(),
        };
        let fused: Vec<StageInput<'_>> = fused_chain(wf, plan, &stage.name)
            .into_iter()
            .filter_map(|(member, d)| {
                Some(StageInput {
                    workflow: wf,
                    stage: member,
                    decision: d,
                    profile: profiles.get(&member.function)?,
                    pod_annotations: &settings.pod_annotations,
                    default_endpoint: settings.default_s3_endpoint.as_deref(),
                })
            })
            .collect();
        let deployment = build::deployment(&si, &fused, scale.replicas)?;
        let service = build::service(&si)?;
        let claim = si.decision.gpu.as_ref().and_then(|g| g.claim.as_ref());
        if let Some(claim) = claim {
            out.claim_templates
                .push(dra::claim_template(wf, &stage.name, claim)?);
        }
        let uid = wf.uid().unwrap_or_default();
        let dep_current =
            apply::deployment_is_current(existing.map(|d| d.as_ref()), &deployment, &uid);
        let svc_current = apply::service_is_current(
            children.services.get(&stage.name).map(|s| s.as_ref()),
            &service,
            &uid,
        );
        let ready_replicas = existing
            .and_then(|d| d.status.as_ref())
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
            .max(0) as u32;
        let rolled_out = existing.is_some_and(|d| {
            d.status.as_ref().and_then(|s| s.observed_generation) >= d.metadata.generation
                && d.status
                    .as_ref()
                    .and_then(|s| s.updated_replicas)
                    .unwrap_or(0)
                    .max(0) as u32
                    >= scale.replicas
        });
        // A stage scaled to zero needs nothing running: it is ready once its children are
        // as planned, which this reconcile makes true (or fails before writing status).
        // Otherwise the Deployment controller must have rolled out the current spec and
        // the planned replicas must be ready.
        let ready = scale.replicas == 0
            || (dep_current && svc_current && rolled_out && ready_replicas >= scale.replicas);
        if let Some(need) = claim.and_then(|c| c.memory_bytes)
            && !ready
        {
            // Nothing watched moves when the scheduler gives up on a pod: look again.
            out.gpu_waiting.push(dra_fit::Waiting {
                stage: stage.name.clone(),
                memory_bytes: need,
            });
            let at = now
                .checked_add(SignedDuration::try_from(dra_fit::RECHECK).unwrap_or_default())
                .unwrap_or(now);
            out.requeue_at = Some(out.requeue_at.map_or(at, |r| r.min(at)));
        }
        // A stage that only keeps its replicas through its idle delay needs no room: its
        // unplaced pod (left from when it had work) must not take other stages' idle
        // ones (it did: the detect example's pending pods, after the run, took stitch's
        // pod as the run ended).
        if scale.replicas > ready_replicas && scale.reason != ScaleReason::IdleGrace {
            // Nothing watched moves when the scheduler gives up on a pod: look again
            // soon, and ask then whether the pods can be placed (see `unplaceable`).
            out.waiting.push(stage.name.clone());
            let at = autoscaler::plus(now, WAITING_RECHECK);
            out.requeue_at = Some(out.requeue_at.map_or(at, |r| r.min(at)));
        }
        if !ready {
            not_ready.push(stage.name.clone());
            out.counts.not_ready += 1;
        } else if scale.replicas == 0 {
            out.counts.scaled_to_zero += 1;
        } else {
            out.counts.ready += 1;
        }
        out.counts.desired_instances += i64::from(scale.replicas);
        out.counts.ready_instances += i64::from(ready_replicas.min(scale.replicas));
        let r = out
            .requests
            .entry(stage.function.clone())
            .or_insert([0.0; 3]);
        let n = f64::from(scale.replicas);
        r[0] += decision.size.cpu_cores * n;
        r[1] += decision.size.memory_bytes * n;
        r[2] += decision.size.gpu.unwrap_or(0.0) * n;
        if let Some(sp) = stage_plans.iter_mut().find(|p| p.name == stage.name) {
            sp.replicas = Some(scale.replicas);
            sp.ready_replicas = Some(ready_replicas);
            if resize != resize::Resize::Apply {
                // What the pods run with, and why not the plan's size.
                sp.cpu = Some(vflow_api::Quantity::from_cores(decision.size.cpu_cores));
                sp.memory = Some(vflow_api::Quantity::from_bytes(decision.size.memory_bytes));
                let why = match resize {
                    resize::Resize::Defer => "kept while invocations are in flight",
                    _ => "kept: within 10% of the running size",
                };
                let planned = format!(
                    "planned {:.3} cores, {:.0} MiB ({why})",
                    planned_size.cpu_cores,
                    planned_size.memory_bytes / (1024.0 * 1024.0)
                );
                sp.reason = Some(match sp.reason.take() {
                    Some(r) => format!("{r}. resize: {planned}"),
                    None => format!("resize: {planned}"),
                });
            }
        }
        out.deployments.push((stage.name.clone(), deployment));
        out.services.push((stage.name.clone(), service));
    }

    let (ready_reason, ready_message) = if not_ready.is_empty() {
        (
            "StagesReady",
            "every stage has its Deployment and Service and the planned replicas are ready"
                .to_string(),
        )
    } else {
        // A fixed message: naming the stages would rewrite status as each one comes up
        // (status.stages has the per-stage replicas).
        (
            "StagesNotReady",
            "waiting for the stages' Deployments and ready replicas (see status.stages)"
                .to_string(),
        )
    };
    let (degraded, degraded_reason, degraded_message) = if signals.problems.is_empty() {
        (false, "AsPlanned", String::new())
    } else {
        (true, "InvalidAnnotation", signals.problems.join("; "))
    };
    out.status = VideoWorkflowStatus {
        observed_generation: generation,
        stages: stage_plans,
        most_likely_path: plan.most_likely_path.clone(),
        branch_probabilities: plan.to_status_branches(),
        conditions: vec![
            status::condition(
                &old.conditions,
                status::READY,
                not_ready.is_empty(),
                ready_reason,
                ready_message,
                generation,
                now,
            ),
            status::condition(
                &old.conditions,
                status::DEGRADED,
                degraded,
                degraded_reason,
                degraded_message,
                generation,
                now,
            ),
        ],
    };
    Ok(out)
}

/// The stages the plan fused after `head`, in chain order, with their decisions.
fn fused_chain<'w>(
    wf: &'w VideoWorkflow,
    plan: &'w WorkflowPlan,
    head: &str,
) -> Vec<(&'w vflow_api::Stage, &'w StageDecision)> {
    let mut chain = Vec::new();
    let mut last = head;
    while let Some(next) = wf.spec.stages.iter().find(|s| {
        s.after.len() == 1
            && s.after[0] == last
            && plan
                .stages
                .iter()
                .any(|d| d.name == s.name && d.fused_with.as_deref() == Some(head))
    }) {
        let Some(d) = plan.stages.iter().find(|d| d.name == next.name) else {
            break;
        };
        chain.push((next, d));
        last = &next.name;
        if chain.len() > wf.spec.stages.len() {
            break;
        }
    }
    chain
}

/// The plan for the workflow, recomputed only when the workflow's spec or one of the
/// profiles it uses changed (planning runs a Monte Carlo estimate).
/// The branch outcomes the next plan starts from: the status's, or what this process
/// wrote last where the watch has not caught up with that write yet (more
/// observations), plus what runs reported since.
fn branch_evidence(
    wf: &VideoWorkflow,
    ctx: &Context,
    pending: &[BranchObservation],
) -> Vec<BranchObservation> {
    let mut out: Vec<BranchObservation> = wf
        .status
        .iter()
        .flat_map(|s| &s.branch_probabilities)
        .map(|b| BranchObservation {
            stage: b.stage.clone(),
            taken: b.taken.min(b.observations),
            seen: b.observations,
        })
        .collect();
    if let Ok(written) = ctx.branches.lock()
        && let Some(written) = written.get(&key(wf))
    {
        for w in written {
            match out.iter_mut().find(|o| o.stage == w.stage) {
                Some(o) if o.seen >= w.seen => {}
                Some(o) => *o = w.clone(),
                None => out.push(w.clone()),
            }
        }
    }
    vflow_engine::learn::add_branch_outcomes(&mut out, pending);
    out
}

/// The plan, made again when the workflow, a profile, the durable instances the status
/// gives (the planner keeps them with hysteresis) or the rate bucket of `now` changed.
fn plan_for(
    wf: &VideoWorkflow,
    profiles: &BTreeMap<String, FunctionProfile>,
    ctx: &Context,
    now: Timestamp,
    branches: &[BranchObservation],
) -> Arc<Result<WorkflowPlan, Invalid>> {
    let now = now.as_second();
    let mut cache_key = format!(
        "{:?}@{}",
        wf.metadata.generation,
        now.div_euclid(vflow_api::INVOCATION_BUCKET_SECONDS)
    );
    for s in &wf.spec.stages {
        let rv = profiles
            .get(&s.function)
            .and_then(|p| p.metadata.resource_version.clone())
            .unwrap_or_else(|| "absent".into());
        cache_key.push_str(&format!("|{}={rv}", s.function));
    }
    for s in wf.status.iter().flat_map(|s| &s.stages) {
        cache_key.push_str(&format!(
            "|{}:{:?}/{:?}",
            s.name, s.provisioning, s.min_replicas
        ));
    }
    for b in branches {
        cache_key.push_str(&format!("|{}:{}/{}", b.stage, b.taken, b.seen));
    }
    let uid = wf.uid().unwrap_or_default();
    if let Ok(plans) = ctx.plans.lock()
        && let Some((k, plan)) = plans.get(&uid)
        && *k == cache_key
    {
        return plan.clone();
    }
    let mut planner = ctx.settings.planner.clone();
    planner.now = Some(now);
    planner.branch_observations = branches.to_vec();
    let plan = Arc::new(validate::check(wf, profiles, &planner));
    if let Ok(mut plans) = ctx.plans.lock() {
        plans.insert(uid, (cache_key, plan.clone()));
    }
    plan
}

/// One reconcile of one workflow.
pub async fn reconcile(wf: Arc<VideoWorkflow>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_inner(&wf, &ctx).await;
    let m = &ctx.metrics;
    m.duration
        .with_label_values(&[CONTROLLER])
        .observe(started.elapsed().as_secs_f64());
    let outcome = match &result {
        Ok((_, true)) => "invalid",
        Ok(_) => "ok",
        Err(_) => "error",
    };
    m.reconciliations
        .with_label_values(&[CONTROLLER, outcome])
        .inc();
    if result.is_ok()
        && let Ok(mut f) = ctx.failures.lock()
    {
        f.remove(&key(&wf));
    }
    result.map(|(action, _)| action)
}

#[tracing::instrument(skip_all, fields(namespace = %wf.namespace().unwrap_or_default(), name = %wf.name_any()))]
async fn reconcile_inner(wf: &VideoWorkflow, ctx: &Context) -> Result<(Action, bool)> {
    if wf.metadata.deletion_timestamp.is_some() {
        // Children go by owner-reference garbage collection.
        forget(ctx, wf);
        return Ok((Action::await_change(), false));
    }
    // A reconcile before the caches are filled would see no children and write them all.
    if !ctx.caches_ready.load(Ordering::SeqCst) {
        return Ok((Action::requeue(Duration::from_millis(200)), false));
    }
    let now = (ctx.clock)();
    let ns = wf.namespace().unwrap_or_default();
    let wf_key = key(wf);

    // dereference
    let profiles = dereference::profiles(&ctx.profiles, &ns);
    let mut children = dereference::children(wf, &ctx.deployments, &ctx.services);
    children.room_wanted_elsewhere = ctx
        .room_wanted
        .lock()
        .is_ok_and(|w| w.elsewhere(&wf_key, now));
    let activity = ctx
        .activity
        .lock()
        .ok()
        .and_then(|a| a.get(&wf_key).cloned())
        .unwrap_or_default();

    // validate + build (pure)
    let pending_branches = ctx.demand.pending_branches(&ns, &wf.name_any());
    let branches = branch_evidence(wf, ctx, &pending_branches);
    let outcome = plan_for(wf, &profiles, ctx, now, &branches);
    let demand = ctx.demand.get(&ns, &wf.name_any(), now);
    let want_with = |children: &Children| {
        desired(
            wf,
            &outcome,
            &profiles,
            children,
            &activity,
            &demand,
            &ctx.settings,
            now,
        )
    };
    let mut want = want_with(&children)?;
    // The workflow's pods, listed once and only while a stage waits for replicas: for
    // the room idle instances hold and for GPU claims the scheduler cannot place.
    let pods = if want.waiting.is_empty() && want.gpu_waiting.is_empty() {
        Vec::new()
    } else {
        room::workflow_pods(&ctx.client, &ns, &wf.name_any()).await?
    };
    children.unplaceable = room::unplaceable(&pods, &want.waiting);
    let noted = want_room(ctx, &wf_key, !children.unplaceable.is_empty(), now);
    if noted.started {
        info!(stages = ?children.unplaceable, "pods the scheduler cannot place for want of room: idle instances give theirs");
    }
    if !noted.reclaims {
        children.unplaceable.clear();
    }
    if !children.unplaceable.is_empty() {
        want = want_with(&children)?;
    }

    // apply: only what differs from the cache
    let uid = wf.uid().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    // The token the pods mount (and the run engine sends) first.
    let pods_change = want.deployments.iter().any(|(stage, d)| {
        !apply::deployment_is_current(children.deployments.get(stage).map(|d| d.as_ref()), d, &uid)
    });
    if !want.deployments.is_empty() {
        ensure_token(ctx, wf, &ns, pods_change).await?;
        if let Some(from) = &ctx.settings.stage_ingress {
            ensure_policy(ctx, wf, &ns, from).await?;
        }
        if !want.claim_templates.is_empty() {
            ensure_claim_templates(ctx, wf, &ns, &want.claim_templates).await?;
        }
    }
    // Children that differ from the cache, applied concurrently (one round trip, not 2N).
    let mut writes = Vec::new();
    for (stage, d) in &want.deployments {
        let existing = children.deployments.get(stage).map(|d| d.as_ref());
        if !apply::deployment_is_current(existing, d, &uid) {
            writes.push(futures::future::Either::Left(async {
                apply::apply(&deployments, d).await.map(drop)
            }));
        }
    }
    for (stage, s) in &want.services {
        let existing = children.services.get(stage).map(|s| s.as_ref());
        if !apply::service_is_current(existing, s, &uid) {
            writes.push(futures::future::Either::Right(async {
                apply::apply(&services, s).await.map(drop)
            }));
        }
    }
    futures::future::try_join_all(writes).await?;
    if !want.invalid {
        for name in &children.stale_deployments {
            apply::delete(&deployments, name).await?;
        }
        for name in &children.stale_services {
            apply::delete(&services, name).await?;
        }
        let wf_name = wf.name_any();
        for stage in &want.fused_away_deployments {
            apply::delete(&deployments, &build::child_name(&wf_name, stage)).await?;
        }
        for stage in &want.fused_away_services {
            apply::delete(&services, &build::child_name(&wf_name, stage)).await?;
        }
    }
    for c in &want.scale_changes {
        let direction = match c.from {
            Some(from) if from > c.to => "down",
            _ => "up",
        };
        ctx.metrics
            .scale_decisions
            .with_label_values(&[direction, c.reason])
            .inc();
        info!(stage = %c.stage, from = ?c.from, to = c.to, reason = c.reason, "scale");
    }
    if let Ok(mut a) = ctx.activity.lock() {
        a.insert(wf_key.clone(), want.activity.clone());
    }

    // status, and an Event when a problem appears
    let api: Api<VideoWorkflow> = Api::namespaced(ctx.client.clone(), &ns);
    let old_conditions = wf
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    if let vflow_planner::gpu::GpuSharing::Dra(dra) = &ctx.settings.planner.gpu_sharing {
        let problems = dra_fit::problems(&ctx.client, &pods, &want.gpu_waiting, dra).await?;
        status::add_degraded(
            &mut want.status,
            &old_conditions,
            dra_fit::REASON,
            &problems,
            now,
        );
    }
    if let Some((reason, message)) =
        status::degraded_changed(&old_conditions, &want.status.conditions)
    {
        warn!(%reason, %message, "workflow degraded");
        let event = Event {
            type_: EventType::Warning,
            reason,
            note: Some(message),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &wf.object_ref(&())).await {
            warn!(error = %e, "could not publish an Event");
        }
    }
    status::write(&api, wf, &want.status).await?;
    if !want.invalid {
        // The runs' branch outcomes are in the status now, which the next plan reads
        // (or, until the watch shows that write, what is remembered here).
        ctx.demand
            .settle_branches(&ns, &wf.name_any(), &pending_branches);
        if let Ok(mut written) = ctx.branches.lock() {
            written.insert(wf_key.clone(), branches);
        }
    }
    update_stage_gauge(ctx, &wf_key, want.counts, want.requests.clone());

    let action = if want.invalid {
        Action::await_change()
    } else {
        match want.requeue_at {
            Some(at) => {
                let wait = Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO);
                Action::requeue(wait.clamp(Duration::from_millis(100), RESYNC))
            }
            None => Action::requeue(RESYNC),
        }
    };
    Ok((action, want.invalid))
}

/// Notes whether workflow `wf_key` has pods short of room. When it starts to, every
/// other workflow this process knows is reconciled at once, to give up its idle
/// instances. Returns whether the want may still take idle instances.
fn want_room(ctx: &Context, wf_key: &str, wanted: bool, now: Timestamp) -> room::Noted {
    let noted = ctx
        .room_wanted
        .lock()
        .map(|mut w| w.note(wf_key, wanted, now))
        .unwrap_or(room::Noted {
            started: false,
            reclaims: false,
        });
    if noted.started {
        let others: Vec<String> = ctx
            .activity
            .lock()
            .map(|a| a.keys().filter(|k| *k != wf_key).cloned().collect())
            .unwrap_or_default();
        for other in others {
            if let Some((ns, name)) = other.split_once('/') {
                ctx.demand.poke(ns, name);
            }
        }
    }
    noted
}

fn forget(ctx: &Context, wf: &VideoWorkflow) {
    let k = key(wf);
    if let Ok(mut a) = ctx.activity.lock() {
        a.remove(&k);
    }
    if let Ok(mut r) = ctx.room_wanted.lock() {
        r.forget(&k);
    }
    if let Ok(mut p) = ctx.plans.lock() {
        p.remove(&wf.uid().unwrap_or_default());
    }
    if let Ok(mut b) = ctx.branches.lock() {
        b.remove(&k);
    }
    if let Ok(mut t) = ctx.tokens.lock() {
        t.remove(&wf.uid().unwrap_or_default());
    }
    update_stage_gauge(ctx, &k, StageCounts::default(), FunctionRequests::new());
}

fn update_stage_gauge(ctx: &Context, key: &str, counts: StageCounts, requests: FunctionRequests) {
    let Ok(mut all) = ctx.stage_counts.lock() else {
        return;
    };
    if counts == StageCounts::default() && requests.is_empty() {
        all.remove(key);
    } else {
        all.insert(key.to_string(), (counts, requests));
    }
    let mut sum = StageCounts::default();
    let mut by_function = FunctionRequests::new();
    for (c, r) in all.values() {
        sum.ready += c.ready;
        sum.not_ready += c.not_ready;
        sum.scaled_to_zero += c.scaled_to_zero;
        sum.invalid += c.invalid;
        sum.desired_instances += c.desired_instances;
        sum.ready_instances += c.ready_instances;
        for (function, req) in r {
            let total = by_function.entry(function.clone()).or_insert([0.0; 3]);
            for (t, x) in total.iter_mut().zip(req) {
                *t += x;
            }
        }
    }
    let i = &ctx.metrics.instances;
    i.with_label_values(&["desired"]).set(sum.desired_instances);
    i.with_label_values(&["ready"]).set(sum.ready_instances);
    // Functions no workflow runs any more drop out instead of staying at their last value.
    let f = &ctx.metrics.function_requests;
    f.reset();
    for (function, req) in &by_function {
        for (resource, value) in ["cpu_cores", "memory_bytes", "gpu"].iter().zip(req) {
            f.with_label_values(&[function.as_str(), resource])
                .set(*value);
        }
    }
    let g = &ctx.metrics.stages;
    g.with_label_values(&["ready"]).set(sum.ready);
    g.with_label_values(&["not_ready"]).set(sum.not_ready);
    g.with_label_values(&["scaled_to_zero"])
        .set(sum.scaled_to_zero);
    g.with_label_values(&["invalid"]).set(sum.invalid);
}

/// Transient errors back off exponentially per workflow; permanent ones (403, 422, a
/// serialization bug) retry slowly, since a person has to change something.
pub fn error_policy(wf: Arc<VideoWorkflow>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .errors
        .with_label_values(&[CONTROLLER, error.category()])
        .inc();
    let failures = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(key(&wf)).or_insert(0);
            *n += 1;
            *n
        })
        .unwrap_or(1);
    let wait = backoff(failures, error.is_permanent());
    warn!(namespace = %wf.namespace().unwrap_or_default(), name = %wf.name_any(),
          error = %error, category = error.category(), retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// The workflows in `store` that run function `profile` (in its namespace).
pub fn workflows_using(
    store: &Store<VideoWorkflow>,
    profile: &FunctionProfile,
) -> Vec<ObjectRef<VideoWorkflow>> {
    let ns = profile.namespace();
    let name = profile.name_any();
    store
        .state()
        .iter()
        .filter(|w| w.namespace() == ns && w.spec.stages.iter().any(|s| s.function == name))
        .map(|w| ObjectRef::from_obj(w.as_ref()))
        .collect()
}

/// StagePlan of a stage by name, for tests and the CLI.
pub fn stage_plan<'a>(status: &'a VideoWorkflowStatus, stage: &str) -> Option<&'a StagePlan> {
    status.stages.iter().find(|s| s.name == stage)
}
