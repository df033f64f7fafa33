//! Runs started by objects arriving in a workflow's bucket: S3 prefix polling
//! ([`poller`]) and MinIO-style bucket notifications ([`webhook`]).
//!
//! Both name a run after the object (`<workflow>-<80 bits of a hash of namespace,
//! workflow, bucket, key, ETag>`), so creating it twice is a 409 and the same object
//! never runs twice, whichever path saw it first and however often it was delivered.
//! A 409 counts as "seen before" only if the run there is for the same object and
//! ETag; a different one (a hash collision) moves on to the object's next name.

pub mod cursor;
pub mod poller;
pub mod webhook;

use std::collections::BTreeMap;
use std::future::Future;

use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};
use sha2::{Digest, Sha256};
use vflow_api::{TriggerType, VideoWorkflow, VideoWorkflowRun, VideoWorkflowRunSpec, WorkflowRef};

pub use vflow_contract::naming::LABEL_WORKFLOW;
pub const LABEL_TRIGGER: &str = "vflow.io/trigger";
pub const ANNOTATION_OBJECT: &str = "vflow.io/trigger-object";
pub const ANNOTATION_ETAG: &str = "vflow.io/trigger-etag";
/// Names tried per object before giving up (each a different hash).
const NAME_CANDIDATES: u32 = 4;
/// Where the poller keeps its cursors in each bucket; never a trigger itself.
pub const INTERNAL_PREFIX: &str = ".vflow/";

/// A new object in a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewObject {
    pub bucket: String,
    pub key: String,
    /// Without quotes; empty when unknown.
    pub etag: String,
}

/// Whether `key` in `bucket` starts a run of `wf`: an S3 trigger on that bucket, under
/// its prefix, with its suffix, and neither an output of the workflow nor vflow's own.
pub fn matches(wf: &VideoWorkflow, bucket: &str, key: &str) -> bool {
    let spec = &wf.spec;
    if spec.trigger.type_ != TriggerType::S3 || spec.storage.bucket != bucket {
        return false;
    }
    let prefix = spec.trigger.prefix.as_deref().unwrap_or("");
    let suffix = spec.trigger.suffix.as_deref().unwrap_or("");
    let outputs = spec.output_prefix.trim_start_matches('/');
    let in_outputs = !outputs.is_empty() && key.starts_with(outputs);
    let record = key.rsplit('/').next().unwrap_or("").starts_with("_vflow-");
    key.starts_with(prefix)
        && key.ends_with(suffix)
        && !key.ends_with('/')
        && !key.starts_with(INTERNAL_PREFIX)
        && !in_outputs
        && !record
}

/// The run's name for an object: the same object gives the same name.
pub fn run_name(namespace: &str, workflow: &str, object: &NewObject) -> String {
    candidate_name(namespace, workflow, object, 0)
}

/// The object's `n`-th name (0 unless names collided).
fn candidate_name(namespace: &str, workflow: &str, object: &NewObject, n: u32) -> String {
    let mut h = Sha256::new();
    for part in [
        namespace,
        workflow,
        &object.bucket,
        &object.key,
        object.etag.trim_matches('"'),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    if n > 0 {
        h.update(n.to_be_bytes());
    }
    let digest = h.finalize();
    // 80 bits: a collision among a million objects of one workflow is about 1 in 10^12.
    let hex: String = digest.iter().take(10).map(|b| format!("{b:02x}")).collect();
    // Run names end up in object keys and labels (63 characters at most).
    let base: String = workflow.chars().take(42).collect();
    format!("{}-{hex}", base.trim_end_matches('-'))
}

/// Whether two runs were started by the same object (same workflow, object and ETag).
pub fn same_trigger(a: &VideoWorkflowRun, b: &VideoWorkflowRun) -> bool {
    let identity = |r: &VideoWorkflowRun| {
        let annotation = |k: &str| {
            r.metadata
                .annotations
                .as_ref()
                .and_then(|m| m.get(k))
                .cloned()
        };
        (
            r.spec.workflow_ref.name.clone(),
            annotation(ANNOTATION_OBJECT),
            annotation(ANNOTATION_ETAG),
        )
    };
    identity(a) == identity(b)
}

/// Creates the run for an object under its first name that is free or already its
/// own. Returns what happened and the run's name.
pub async fn create_run<S: RunSink>(
    sink: &S,
    wf: &VideoWorkflow,
    object: &NewObject,
    trigger: &str,
) -> Result<(Created, String), String> {
    let namespace = wf.namespace().unwrap_or_default();
    for n in 0..NAME_CANDIDATES {
        let mut run = run_for(wf, object, trigger);
        let name = candidate_name(&namespace, &wf.name_any(), object, n);
        run.metadata.name = Some(name.clone());
        match sink.create(run).await? {
            Created::Collision => tracing::warn!(
                run = %name,
                object = %format!("s3://{}/{}", object.bucket, object.key),
                "a run of this name is for another object: trying the next name"
            ),
            created => return Ok((created, name)),
        }
    }
    Err(format!(
        "s3://{}/{}: the first {NAME_CANDIDATES} run names for it are all taken by other objects",
        object.bucket, object.key
    ))
}

/// The VideoWorkflowRun for an object.
pub fn run_for(wf: &VideoWorkflow, object: &NewObject, trigger: &str) -> VideoWorkflowRun {
    let namespace = wf.namespace().unwrap_or_default();
    let name = wf.name_any();
    VideoWorkflowRun {
        metadata: ObjectMeta {
            name: Some(run_name(&namespace, &name, object)),
            namespace: Some(namespace),
            labels: Some(BTreeMap::from([
                (LABEL_WORKFLOW.to_string(), name.clone()),
                (LABEL_TRIGGER.to_string(), trigger.to_string()),
            ])),
            annotations: Some(BTreeMap::from([
                (
                    ANNOTATION_OBJECT.to_string(),
                    format!("s3://{}/{}", object.bucket, object.key),
                ),
                (
                    ANNOTATION_ETAG.to_string(),
                    object.etag.trim_matches('"').to_string(),
                ),
            ])),
            ..Default::default()
        },
        spec: VideoWorkflowRunSpec {
            workflow_ref: WorkflowRef { name },
            input: format!("s3://{}/{}", object.bucket, object.key),
            params: BTreeMap::new(),
            ttl_seconds_after_finished: None,
        },
        status: None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    /// A run of that name exists for this object: it was seen before.
    Existed,
    /// A run of that name exists for another object (see [`same_trigger`]).
    Collision,
}

/// Where runs are created (the API server; a list in tests).
pub trait RunSink: Send + Sync + 'static {
    fn create(&self, run: VideoWorkflowRun)
    -> impl Future<Output = Result<Created, String>> + Send;
}

/// Creates runs through the API server; 409 means it exists.
#[derive(Clone)]
pub struct KubeRunSink(pub Client);

impl RunSink for KubeRunSink {
    async fn create(&self, run: VideoWorkflowRun) -> Result<Created, String> {
        let ns = run.namespace().unwrap_or_default();
        let api: Api<VideoWorkflowRun> = Api::namespaced(self.0.clone(), &ns);
        match api.create(&PostParams::default(), &run).await {
            Ok(_) => Ok(Created::New),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let there = api.get(&run.name_any()).await.map_err(|e| {
                    format!("reading VideoWorkflowRun {ns}/{}: {e}", run.name_any())
                })?;
                Ok(if same_trigger(&there, &run) {
                    Created::Existed
                } else {
                    Created::Collision
                })
            }
            Err(e) => Err(format!(
                "creating VideoWorkflowRun {ns}/{}: {e}",
                run.name_any()
            )),
        }
    }
}

/// The workflows a trigger looks at (a reflector's store; a list in tests).
pub trait Workflows: Send + Sync + 'static {
    fn workflows(&self) -> Vec<VideoWorkflow>;
}

impl Workflows for kube::runtime::reflector::Store<VideoWorkflow> {
    fn workflows(&self) -> Vec<VideoWorkflow> {
        self.state().iter().map(|w| (**w).clone()).collect()
    }
}

impl Workflows for Vec<VideoWorkflow> {
    fn workflows(&self) -> Vec<VideoWorkflow> {
        self.clone()
    }
}
