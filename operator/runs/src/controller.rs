//! The VideoWorkflowRun controller: one engine task per unfinished run, status written
//! from the engine's record as it changes, finished runs deleted after their TTL.
//!
//! Nothing about a run's progress lives in this process: the engine's record sits in
//! the workflow's bucket under the run's prefix, so an operator that restarts (or a new
//! leader) reconciles every Running run, starts its engine again and the engine resumes
//! from the record, reusing every invocation that had completed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use vflow_api::{
    FunctionProfile, RunPhase, VideoWorkflow, VideoWorkflowRun, VideoWorkflowRunStatus,
};
use vflow_engine::record::{RunRecord, unix_now};
use vflow_engine::{Engine, RunGraph, RunOptions};
use vflow_planner::{PlannerConfig, WorkflowPlan, plan_workflow};
use vflow_storage::{Location, Store};

use crate::backend::KubeBackend;
use crate::capacity::KubeCapacity;
use crate::config::RunsConfig;
use crate::metrics::ActiveGuard;
use crate::status::{StageResources, StatusInput, status};
use crate::storage::{KubeStorage, Storage};

pub struct Ctx {
    pub client: Client,
    pub config: RunsConfig,
    /// Runs with an engine task in this process: uid -> "namespace/workflow".
    active: Mutex<HashMap<String, String>>,
    /// True once this process is going away: engines start nothing more.
    drain: watch::Sender<bool>,
    /// The per-run tasks, aborted together when the controller stops (see `fence`).
    pub tasks: crate::fence::Tasks,
}

impl Ctx {
    pub fn new(client: Client, config: RunsConfig) -> Arc<Self> {
        Arc::new(Self {
            client,
            config,
            active: Mutex::new(HashMap::new()),
            drain: watch::channel(false).0,
            tasks: crate::fence::Tasks::default(),
        })
    }

    /// Engines start nothing more; returns once those running have let their last
    /// invocations finish (and be recorded), or after `timeout`. The runs stay Running,
    /// for the next leader to resume without running anything twice.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.drain.send_replace(true);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = self.active.lock().map(|a| a.len()).unwrap_or(0);
            if left == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    runs = left,
                    "runs still had invocations in flight when the drain time ran out"
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Kube(#[from] kube::Error),
}

/// Time left before a run that finished at `finished` is deleted.
pub fn ttl_remaining(finished: Option<Timestamp>, ttl: Duration, now: Timestamp) -> Duration {
    let Some(finished) = finished else {
        return Duration::ZERO.max(ttl);
    };
    let ttl = SignedDuration::try_from(ttl).unwrap_or(SignedDuration::MAX);
    let end = finished.checked_add(ttl).unwrap_or(Timestamp::MAX);
    let left = end.duration_since(now);
    Duration::try_from(left).unwrap_or(Duration::ZERO)
}

fn ttl_of(run: &VideoWorkflowRun, default: Duration) -> Duration {
    run.spec
        .ttl_seconds_after_finished
        .map(|s| Duration::from_secs(s.max(0) as u64))
        .unwrap_or(default)
}

pub async fn reconcile(run: Arc<VideoWorkflowRun>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if run.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = run.namespace().unwrap_or_default();
    let name = run.name_any();
    let status = run.status.clone().unwrap_or_default();
    if status.phase.is_finished() {
        let left = ttl_remaining(
            status.completion_time.map(|t| t.0),
            ttl_of(&run, ctx.config.default_ttl),
            Timestamp::now(),
        );
        if !left.is_zero() {
            return Ok(Action::requeue(left));
        }
        let api: Api<VideoWorkflowRun> = Api::namespaced(ctx.client.clone(), &ns);
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(run = %name, namespace = %ns, "deleted a finished run after its TTL")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    }
    if *ctx.drain.borrow() {
        // This process is going away: the next leader runs it.
        return Ok(Action::await_change());
    }
    let key = run.uid().unwrap_or_else(|| format!("{ns}/{name}"));
    let workflow = format!("{ns}/{}", run.spec.workflow_ref.name);
    let admitted = {
        let mut active = ctx.active.lock().unwrap_or_else(|p| p.into_inner());
        if active.contains_key(&key) {
            Ok(false)
        } else {
            admit(&active, &workflow, &ctx.config).map(|()| {
                active.insert(key.clone(), workflow.clone());
                true
            })
        }
    };
    let start = match admitted {
        Ok(start) => start,
        Err(wait) => {
            // Say why it waits, once; look again soon (a slot frees when a run ends).
            if status.message.as_deref() != Some(wait.as_str()) {
                let api: Api<VideoWorkflowRun> = Api::namespaced(ctx.client.clone(), &ns);
                let waiting = VideoWorkflowRunStatus {
                    message: Some(wait),
                    ..status.clone()
                };
                patch_status(&api, &name, &waiting).await?;
            }
            return Ok(Action::requeue(
                ctx.config.retry_interval.min(Duration::from_secs(5)),
            ));
        }
    };
    if start {
        let ctx = ctx.clone();
        ctx.clone().tasks.spawn(async move {
            drive(&ctx, &run).await;
            ctx.active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        });
    }
    // Look again now and then: an engine task that ended without finishing the run
    // (its workflow was missing, the bucket unreachable) is started again.
    Ok(Action::requeue(ctx.config.retry_interval))
}

/// Whether one more run of `workflow` may start now, or why it waits.
pub fn admit(
    active: &HashMap<String, String>,
    workflow: &str,
    config: &RunsConfig,
) -> Result<(), String> {
    if config.max_active > 0 && active.len() >= config.max_active {
        return Err(format!(
            "waiting for a slot: {} runs are running in this operator (runs.maxActive {})",
            active.len(),
            config.max_active
        ));
    }
    let mine = active.values().filter(|w| *w == workflow).count();
    if config.max_active_per_workflow > 0 && mine >= config.max_active_per_workflow {
        return Err(format!(
            "waiting for a slot: {mine} runs of this workflow are running (runs.maxActivePerWorkflow {})",
            config.max_active_per_workflow
        ));
    }
    Ok(())
}

pub fn error_policy(_run: Arc<VideoWorkflowRun>, error: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(%error, "run reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

async fn patch_status(
    api: &Api<VideoWorkflowRun>,
    name: &str,
    status: &VideoWorkflowRunStatus,
) -> Result<(), kube::Error> {
    let mut value = serde_json::to_value(status).unwrap_or_default();
    // A message from an earlier wait must not outlive it (merge patches keep absent fields).
    if status.message.is_none()
        && let Some(map) = value.as_object_mut()
    {
        map.insert("message".into(), serde_json::Value::Null);
    }
    let patch = serde_json::json!({"status": value});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// What the API server said, without the Debug dump kube's Display adds to it; the text
/// lands in a run's status.message, where a person reads it.
pub fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

/// Why an engine task did not get to run the engine.
enum Problem {
    /// Worth trying again later (the workflow or its Secret may appear, S3 may answer).
    Waiting(String),
    /// The run cannot work as written.
    Fatal(String),
    /// Another operator wrote the run's record since this one read it: it runs the
    /// run now, and this one writes nothing more.
    Fenced(String),
}

/// A run's plan: the operator's planner settings (`planner`, the same the workflow
/// controller plans with), the input's real size when known, so that pre-warm times
/// follow from how long this input takes to move.
pub fn plan_run(
    wf: &VideoWorkflow,
    profiles: &BTreeMap<String, FunctionProfile>,
    planner: &PlannerConfig,
    input_bytes: Option<u64>,
) -> Result<WorkflowPlan, vflow_planner::PlanError> {
    let mut cfg = planner.clone();
    if let Some(bytes) = input_bytes {
        cfg.input_bytes = bytes as f64;
    }
    cfg.now = Some(Timestamp::now().as_second());
    plan_workflow(wf, profiles, &cfg)
}

/// Resources per stage as the operator sizes them (the planner on the same inputs).
fn resources(
    wf: &VideoWorkflow,
    profiles: &BTreeMap<String, FunctionProfile>,
    planner: &PlannerConfig,
    input_bytes: Option<u64>,
) -> (BTreeMap<String, StageResources>, Option<WorkflowPlan>) {
    let mut out = BTreeMap::new();
    let mut planned = None;
    match plan_run(wf, profiles, planner, input_bytes) {
        Ok(plan) => {
            for d in &plan.stages {
                out.insert(
                    d.name.clone(),
                    StageResources {
                        cpu_cores: d.size.cpu_cores,
                        memory_gib: d.size.memory_bytes / (1u64 << 30) as f64,
                        gpu: d.size.gpu.unwrap_or(0.0),
                        concurrency: d.concurrency.max(1),
                    },
                );
            }
            planned = Some(plan);
        }
        Err(e) => {
            tracing::warn!(error = %e, "planning failed; costing from the profiles' requests")
        }
    }
    for stage in &wf.spec.stages {
        if out.contains_key(&stage.name) {
            continue;
        }
        if let Some(p) = profiles.get(&stage.function) {
            let r = &p.spec.resources;
            out.insert(
                stage.name.clone(),
                StageResources {
                    cpu_cores: r.cpu.value().unwrap_or(1.0),
                    memory_gib: r.memory.value().unwrap_or(1.0) / (1u64 << 30) as f64,
                    gpu: r.gpu.unwrap_or(0.0),
                    concurrency: p.spec.concurrency.max(1),
                },
            );
        }
    }
    (out, planned)
}

/// The run's input as a URI: as given, or a key in the workflow's bucket.
pub fn input_uri(input: &str, bucket: &str) -> String {
    if input.starts_with("s3://") {
        input.to_string()
    } else {
        format!("s3://{bucket}/{}", input.trim_start_matches('/'))
    }
}

/// `s3://<bucket>/<outputPrefix><run>/`: where the run's outputs and record live.
pub fn run_prefix(wf: &VideoWorkflow, run: &str) -> Location {
    Location::S3 {
        bucket: wf.spec.storage.bucket.clone(),
        key: format!("{}{run}/", wf.spec.output_prefix.trim_start_matches('/')),
    }
}

async fn drive(ctx: &Arc<Ctx>, run: &VideoWorkflowRun) {
    let ns = run.namespace().unwrap_or_default();
    let name = run.name_any();
    let api: Api<VideoWorkflowRun> = Api::namespaced(ctx.client.clone(), &ns);
    if let Err(problem) = drive_engine(ctx, run, &api).await {
        let mut status = run.status.clone().unwrap_or_default();
        match problem {
            Problem::Fenced(message) => {
                tracing::warn!(run = %name, %message, "run taken over");
                return;
            }
            Problem::Waiting(message) => {
                tracing::info!(run = %name, %message, "run waiting");
                status.message = Some(message);
            }
            Problem::Fatal(message) => {
                tracing::warn!(run = %name, %message, "run failed before it started");
                status.phase = RunPhase::Failed;
                status.message = Some(message.clone());
                let now = Timestamp::now();
                status.completion_time =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
                status.conditions =
                    vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                        type_: "Failed".into(),
                        status: "True".into(),
                        reason: "InvalidRun".into(),
                        message,
                        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                            now,
                        ),
                        observed_generation: run.metadata.generation,
                    }];
            }
        }
        if let Err(e) = patch_status(&api, &name, &status).await {
            tracing::warn!(run = %name, error = %e, "could not write the run's status");
        }
    }
}

async fn drive_engine(
    ctx: &Arc<Ctx>,
    run: &VideoWorkflowRun,
    api: &Api<VideoWorkflowRun>,
) -> Result<(), Problem> {
    let ns = run.namespace().unwrap_or_default();
    let name = run.name_any();
    let wf_name = &run.spec.workflow_ref.name;
    let workflows: Api<VideoWorkflow> = Api::namespaced(ctx.client.clone(), &ns);
    let wf = workflows
        .get_opt(wf_name)
        .await
        .map_err(|e| {
            Problem::Waiting(format!(
                "reading VideoWorkflow {ns}/{wf_name}: {}",
                kube_message(&e)
            ))
        })?
        .ok_or_else(|| Problem::Waiting(format!("VideoWorkflow {ns}/{wf_name} not found")))?;
    let profile_api: Api<FunctionProfile> = Api::namespaced(ctx.client.clone(), &ns);
    let profiles: BTreeMap<String, FunctionProfile> = profile_api
        .list(&ListParams::default())
        .await
        .map_err(|e| {
            Problem::Waiting(format!(
                "listing FunctionProfiles in {ns}: {}",
                kube_message(&e)
            ))
        })?
        .items
        .into_iter()
        .map(|p| (p.name_any(), p))
        .collect();
    let settings = KubeStorage(ctx.client.clone())
        .settings(&wf)
        .await
        .map_err(Problem::Waiting)?;
    let store = Store::with_s3(&settings);
    let input = input_uri(&run.spec.input, &wf.spec.storage.bucket);
    let input_bytes = match Location::parse(&input) {
        Ok(loc) => store.size(&loc).await.ok().flatten(),
        Err(_) => None,
    };
    let (stage_resources, plan) = resources(&wf, &profiles, &ctx.config.planner, input_bytes);
    let prewarm = plan
        .as_ref()
        .map(vflow_engine::engine::prewarm_schedule)
        .unwrap_or_default();

    let capacity = KubeCapacity::new(
        ctx.client.clone(),
        ctx.config.demand.clone(),
        &ns,
        wf_name,
        wf.spec.scale_to_zero_after.as_std(),
    );
    let backend = KubeBackend::new(
        &ns,
        wf_name,
        capacity,
        ctx.config.resolver.clone(),
        ctx.config.backend.clone(),
    );
    let mut engine = Engine::new(&wf, profiles, backend.clone(), store.clone())
        .map_err(|e| Problem::Fatal(format!("VideoWorkflow {ns}/{wf_name}: {e}")))?;
    // A workflow that runs has pods, and the operator made their token before them.
    backend.use_token(invoke_token(&ctx.client, &ns, wf_name).await?);
    engine.drain_on(ctx.drain.subscribe());
    let graph = engine.graph.clone();
    let (record_tx, record_rx) = watch::channel(None::<RunRecord>);
    engine.on_progress(move |r| {
        record_tx.send_replace(Some(r.clone()));
    });
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let writer = crate::fence::AbortOnDrop(tokio::spawn(status_writer(
        ctx.clone(),
        api.clone(),
        name.clone(),
        run.metadata.generation,
        graph.clone(),
        stage_resources.clone(),
        record_rx,
        cancel_tx,
    )));
    let prewarmed: std::collections::BTreeSet<String> =
        prewarm.iter().map(|(stage, _, _)| stage.clone()).collect();
    let opts = RunOptions {
        run: name.clone(),
        input,
        prefix: run_prefix(&wf, &name),
        params: run.spec.params.clone(),
        prewarm,
        default_max_instances: vflow_planner::DEFAULT_MAX_INSTANCES,
        fixed_prewarm: false,
        plan,
    };
    tracing::info!(run = %name, namespace = %ns, workflow = %wf_name, "running");
    let active = ActiveGuard::new(ctx.config.metrics.as_ref());
    let outcome = engine.run(&opts, cancel_rx).await;
    drop(active);
    drop(writer);
    if let Some(e) = outcome.unreadable {
        // Its progress is in that record: never start it over on top of it.
        return Err(Problem::Waiting(e));
    }
    if let Some(e) = outcome.fenced {
        // Another operator runs it now: nothing more from this one, status included.
        return Err(Problem::Fenced(e));
    }
    let mut version = outcome.version;
    let mut record = outcome.record;
    // What the invocations measured goes into the profiles, each attempt once: marked
    // in the record, which is saved again (a later session skips what is marked).
    let (learned, error) =
        crate::learn::learn_from_run(&ctx.client, &ns, &graph, &mut record).await;
    if learned > 0 {
        save_record(&store, &opts, &record, &mut version).await;
        tracing::debug!(run = %name, attempts = learned, "folded into the profiles");
    }
    if let Some(e) = error {
        tracing::warn!(run = %name, error = %e, "some invocations are not in the profiles yet");
    }
    // What the run says about its conditional stages, for the workflow's next plan
    // (once it is over: a drained run is resumed and counted then).
    if record.phase.is_finished() {
        ctx.config.demand.record_branches(
            &ns,
            wf_name,
            &vflow_engine::learn::branch_outcomes(&graph, &record),
        );
    }

    let mut sizes = BTreeMap::new();
    for o in crate::status::outputs(&graph, &record, &BTreeMap::new()) {
        if let Ok(loc) = Location::parse(&o.uri)
            && let Ok(Some(n)) = store.size(&loc).await
        {
            sizes.insert(o.uri, n);
        }
    }
    let status = status(&StatusInput {
        graph: &graph,
        record: &record,
        resources: &stage_resources,
        prices: &ctx.config.prices,
        sizes: &sizes,
        generation: run.metadata.generation,
        now: unix_now(),
    });
    match patch_status(api, &name, &status).await {
        Ok(()) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => tracing::warn!(run = %name, error = %e, "could not write the final status"),
    }
    if let Some(m) = &ctx.config.metrics
        && status.phase.is_finished()
    {
        m.finished(
            &graph,
            &record,
            status.phase,
            &prewarmed,
            status.estimated_cost.as_ref(),
        );
    }
    tracing::info!(run = %name, phase = ?status.phase, "run ended");
    Ok(())
}

async fn save_record(
    store: &Store,
    opts: &RunOptions,
    record: &RunRecord,
    version: &mut vflow_engine::engine::RecordVersion,
) {
    let at = opts.prefix.join(vflow_engine::engine::RUN_RECORD);
    if let Err(e) = vflow_engine::engine::write_record(store, &at, record, version).await {
        tracing::warn!(run = %opts.run, error = ?e, "could not save the record marked learned: its attempts may be folded again");
    }
}

/// Writes the status after each change of the record, at most every `status_interval`;
/// a run that was deleted cancels its engine.
#[allow(clippy::too_many_arguments)]
async fn status_writer(
    ctx: Arc<Ctx>,
    api: Api<VideoWorkflowRun>,
    name: String,
    generation: Option<i64>,
    graph: RunGraph,
    resources: BTreeMap<String, StageResources>,
    mut records: watch::Receiver<Option<RunRecord>>,
    cancel: watch::Sender<bool>,
) {
    while records.changed().await.is_ok() {
        let Some(record) = records.borrow_and_update().clone() else {
            continue;
        };
        // The end is written once, by the run's task, after what the run measured is in
        // the profiles: a reader who sees Succeeded finds the run learned.
        if record.phase.is_finished() {
            return;
        }
        let status = status(&StatusInput {
            graph: &graph,
            record: &record,
            resources: &resources,
            prices: &ctx.config.prices,
            sizes: &BTreeMap::new(),
            generation,
            now: unix_now(),
        });
        match patch_status(&api, &name, &status).await {
            Ok(()) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {
                tracing::info!(run = %name, "run deleted: cancelling it");
                let _ = cancel.send(true);
                return;
            }
            Err(e) => tracing::warn!(run = %name, error = %e, "could not write the run's status"),
        }
        tokio::time::sleep(ctx.config.status_interval).await;
    }
}

/// The token the workflow's function pods require, from the Secret the operator makes
/// for the workflow (`vflow_contract::auth::invoke_token_secret`).
async fn invoke_token(client: &kube::Client, ns: &str, workflow: &str) -> Result<String, Problem> {
    let name = vflow_contract::auth::invoke_token_secret(workflow);
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    let secret = api
        .get_opt(&name)
        .await
        .map_err(|e| Problem::Waiting(format!("Secret {ns}/{name}: {}", kube_message(&e))))?
        .ok_or_else(|| {
            Problem::Waiting(format!(
                "Secret {ns}/{name} (the workflow's invocation token) is not there yet: the operator makes it when it reconciles the workflow"
            ))
        })?;
    secret
        .data
        .unwrap_or_default()
        .get(vflow_contract::auth::INVOKE_TOKEN_KEY)
        .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Problem::Fatal(format!(
                "Secret {ns}/{name} has no key {}: delete it and the operator makes a new one",
                vflow_contract::auth::INVOKE_TOKEN_KEY
            ))
        })
}
