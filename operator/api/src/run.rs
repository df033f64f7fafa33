//! `VideoWorkflowRun`: one input through one workflow.

// kube's `printcolumn(...)` repeats `type_ = ...` by design; clippy reads that as duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema_helpers;

/// One input processed by one VideoWorkflow.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "vflow.io",
    version = "v1alpha1",
    kind = "VideoWorkflowRun",
    namespaced,
    status = "VideoWorkflowRunStatus",
    derive = "PartialEq",
    shortname = "vwr",
    category = "vflow",
    doc = "One input processed by one VideoWorkflow: progress, outputs, timings and cost.",
    printcolumn(
        name = "Workflow",
        type_ = "string",
        json_path = ".spec.workflowRef.name"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(
        name = "Duration",
        type_ = "number",
        json_path = ".status.timings.totalSeconds"
    ),
    printcolumn(
        name = "Input",
        type_ = "string",
        json_path = ".spec.input",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self == oldSelf",
    "message": "a run's spec cannot change once created; create a new VideoWorkflowRun"
}]))]
pub struct VideoWorkflowRunSpec {
    /// The workflow to run, in the same namespace.
    pub workflow_ref: WorkflowRef,

    /// The input video: s3://bucket/key, or a key in the workflow's bucket.
    #[schemars(length(min = 1, max = 1024))]
    pub input: String,

    /// Parameter values for this run only, per stage, taking precedence over the
    /// workflow's, e.g. {scale: {height: 480}}.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "schema_helpers::stage_param_map")]
    pub params: BTreeMap<String, BTreeMap<String, serde_json::Value>>,

    /// Seconds to keep the run after it finishes; then it is deleted. Unset means the
    /// operator's default (24 hours); 0 deletes it as soon as it finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,
}

/// A reference to a VideoWorkflow in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowRef {
    /// Name of the VideoWorkflow.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Where a run stands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VideoWorkflowRunStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Running, Succeeded, Failed or Cancelled.
    #[serde(default)]
    pub phase: RunPhase,
    /// Invocations done out of those known so far, e.g. 14/20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// When the first invocation started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Progress of each stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub stages: Vec<StageProgress>,
    /// Output objects of the stages with no stage after them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<RunOutput>,
    /// Where the time went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<RunTimings>,
    /// Resources used, and their price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_cost: Option<Cost>,
    /// Why the run failed, naming the stage, the segment and the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Quality measured by the run's stages that report it (the quality function): a
    /// stage of segments as one whole (a rendition), and each unit that measured a
    /// whole output. Per segment figures are in the run's record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub quality: Vec<QualityFigure>,
    /// Succeeded, Failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// What a stage measured of an encode's quality against its source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QualityFigure {
    pub stage: String,
    /// The segment measured; none for a whole output or a stage's segments as one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<u32>,
    /// Mean PSNR in dB (100 for identical frames).
    pub psnr: f64,
    /// The worst frame's PSNR in dB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psnr_min: Option<f64>,
    pub ssim: f64,
    /// None where the function's ffmpeg has no libvmaf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmaf: Option<f64>,
    /// Frames compared.
    pub frames: u64,
}

/// Where a run stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RunPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunPhase {
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunPhase::Succeeded | RunPhase::Failed | RunPhase::Cancelled
        )
    }
}

/// Progress of one stage in a run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageProgress {
    /// Stage name.
    pub name: String,
    /// Invocations finished.
    #[serde(default)]
    pub done: u32,
    /// Invocations in all (the number of segments for a fanned-out stage; 0 until known).
    #[serde(default)]
    pub total: u32,
    /// Invocations that failed after their retries.
    #[serde(default)]
    pub failed: u32,
    /// Invocations skipped because the stage's condition did not hold.
    #[serde(default)]
    pub skipped: u32,
    /// Invocations that waited for a new instance.
    #[serde(default)]
    pub cold_starts: u32,
    /// Sum of the invocations' execution times, in seconds.
    #[serde(default)]
    pub exec_seconds: f64,
    /// When the stage's first invocation started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When its last invocation finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// One output object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunOutput {
    /// The stage that wrote it.
    pub stage: String,
    /// Where it is, e.g. s3://videos/outputs/run-1/stitch/0/out.mp4.
    pub uri: String,
    /// Size in bytes.
    #[serde(default)]
    pub bytes: u64,
}

/// Where a run's time went, in seconds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunTimings {
    /// From the run's start to its end.
    pub total_seconds: f64,
    /// Execution time along the critical path.
    pub critical_path_exec_seconds: f64,
    /// Total minus critical-path execution: waiting for instances, data passing, dispatch.
    pub overhead_seconds: f64,
    /// Time spent waiting for cold instances along the critical path.
    pub cold_start_seconds: f64,
}

/// Resources a run used, and their price.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    /// CPU cores requested times seconds held.
    pub cpu_core_seconds: f64,
    /// GiB of memory requested times seconds held.
    pub memory_gib_seconds: f64,
    /// GPUs (fractions count) times seconds held.
    pub gpu_seconds: f64,
    /// The sum at the operator's configured prices.
    pub total: f64,
    /// Currency of `total`, e.g. USD.
    #[serde(default)]
    pub currency: String,
}
