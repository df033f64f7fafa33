//! Runs started by objects arriving in a workflow's bucket: S3 prefix polling
//! ([`poller`]) and MinIO-style bucket notifications ([`webhook`]).
//!
//! Both name a run after the object (`<workflow>-<hash of namespace, workflow, bucket,
//! key, ETag>`), so creating it twice is a 409 and the same object never runs twice,
//! whichever path saw it first and however often it was delivered.

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
    let digest = h.finalize();
    let hex: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    // Run names end up in object keys and labels: keep them short.
    let base: String = workflow.chars().take(52).collect();
    format!("{}-{hex}", base.trim_end_matches('-'))
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
            annotations: Some(BTreeMap::from([(
                ANNOTATION_OBJECT.to_string(),
                format!("s3://{}/{}", object.bucket, object.key),
            )])),
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
    /// A run of that name exists: this object was seen before.
    Existed,
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
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Created::Existed),
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
