//! `VideoWorkflow`: a DAG of video functions, where its inputs come from and where its
//! outputs go.

// kube's `printcolumn(...)` repeats `type_ = ...` by design; clippy reads that as duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Duration, Quantity, schema_helpers};

/// Stage names become part of Deployment and Service names (`<workflow>-<stage>`).
pub const STAGE_NAME_PATTERN: &str = r"^[a-z]([-a-z0-9]*[a-z0-9])?$";
pub const MAX_STAGE_NAME: usize = 30;
/// A Service name is a DNS-1035 label of at most 63 characters.
pub const MAX_CHILD_NAME: usize = 63;

/// A video processing workflow: a DAG of stages, each running a FunctionProfile's
/// function, fed by objects arriving in a bucket or by VideoWorkflowRuns.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "vflow.io",
    version = "v1alpha1",
    kind = "VideoWorkflow",
    namespaced,
    status = "VideoWorkflowStatus",
    derive = "PartialEq",
    shortname = "vwf",
    category = "vflow",
    doc = "A DAG of video functions (split, scale, transcode, detect, stitch, ...) run as serverless stages.",
    printcolumn(name = "Trigger", type_ = "string", json_path = ".spec.trigger.type"),
    printcolumn(name = "Prewarm", type_ = "string", json_path = ".spec.prewarm"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1),
    printcolumn(name = "Path", type_ = "string", json_path = ".status.mostLikelyPath", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new("self.spec.stages.all(s, size(self.metadata.name) + 1 + size(s.name) <= 63)")
        .message("workflow name plus '-' plus stage name must fit in 63 characters (they name the stage's Deployment and Service)")
        .field_path(".spec.stages")
)]
#[serde(rename_all = "camelCase")]
pub struct VideoWorkflowSpec {
    /// What the workflow is for, for people reading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// The S3-compatible bucket that holds inputs and outputs.
    pub storage: Storage,

    /// What starts a run: objects arriving in the bucket (S3) or VideoWorkflowRuns (Manual).
    #[serde(default)]
    pub trigger: Trigger,

    /// Key prefix under which outputs are written, as
    /// `<outputPrefix><run>/<stage>/<segment>/<file>`.
    #[serde(default = "default_output_prefix")]
    #[schemars(length(max = 512), extend("default" = "outputs/"))]
    pub output_prefix: String,

    /// The stages of the DAG. Exactly one stage has no `after` (it reads the input).
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub stages: Vec<Stage>,

    /// Target end-to-end time of one run, e.g. 2m. The planner picks the cheapest
    /// configuration that meets it, or the fastest when none does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_objective: Option<Duration>,

    /// When later stages are started ahead of their input: JustInTime (so each is
    /// ready as its input arrives), Speculative (all at the start of a run) or None
    /// (on demand, paying a cold start per stage).
    #[serde(default)]
    pub prewarm: PrewarmPolicy,

    /// Whether chained stages may share one pod: Auto (the planner fuses a chain where
    /// its model shows a gain; the stages then run one after another in one pod and
    /// pass data on its local volume) or Disabled (every stage in pods of its own).
    #[serde(default)]
    pub fusion: FusionPolicy,

    /// Whether stages keep warm instances: Auto (decided per stage from the benefit of
    /// avoiding cold starts against the memory it holds), Durable (always keep the
    /// minimum warm) or Ephemeral (scale to zero when idle).
    #[serde(default)]
    pub provisioning: Provisioning,

    /// How long an idle ephemeral stage keeps its instances before scaling to zero.
    #[serde(default = "default_scale_to_zero_after")]
    #[schemars(extend("default" = "60s"))]
    pub scale_to_zero_after: Duration,
}

fn default_output_prefix() -> String {
    "outputs/".to_string()
}

fn default_scale_to_zero_after() -> Duration {
    Duration::from_secs(60)
}

/// An S3-compatible bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Endpoint URL, e.g. http://minio.storage:9000. Unset means the operator's default
    /// (its VFLOW_S3_ENDPOINT, the chart's storage.endpoint), else AWS S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512), regex(pattern = r"^https?://[^\s/?#]+(/[^\s]*)?$"))]
    pub endpoint: Option<String>,

    /// Bucket name.
    #[schemars(
        length(min = 3, max = 63),
        regex(pattern = r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
    )]
    pub bucket: String,

    /// Region, e.g. us-east-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub region: Option<String>,

    /// Address objects as <endpoint>/<bucket>/<key> (most S3-compatible servers) rather
    /// than <bucket>.<endpoint>/<key>.
    #[serde(default = "default_true")]
    #[schemars(extend("default" = true))]
    pub path_style: bool,

    /// Secret in the workflow's namespace with keys AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY. Unset means the pods' own identity (e.g. IRSA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

fn default_true() -> bool {
    true
}

/// A reference to a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What starts a run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.type == 'S3' || (!has(self.prefix) && !has(self.suffix))",
    "message": "prefix and suffix only apply to the S3 trigger"
}]))]
pub struct Trigger {
    /// Manual: runs are created as VideoWorkflowRuns (or with `vflow submit`).
    /// S3: every new object under `prefix` ending in `suffix` starts a run.
    #[serde(rename = "type", default)]
    pub type_: TriggerType,
    /// Key prefix to watch, e.g. incoming/.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub prefix: Option<String>,
    /// Key suffix to match, e.g. .mp4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub suffix: Option<String>,
}

/// What starts a run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum TriggerType {
    #[default]
    Manual,
    S3,
}

/// One stage of the DAG.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(self.fanOut && self.join)",
    "message": "a stage cannot both fan out and join"
}, {
    "rule": "!has(self.after) || !(self.name in self.after)",
    "message": "a stage cannot run after itself"
}]))]
pub struct Stage {
    /// Stage name, a DNS label such as `scale-720p`. Names the stage's Deployment and
    /// Service together with the workflow's name.
    #[schemars(
        length(min = 1, max = 30),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Name of the FunctionProfile (in the workflow's namespace) that this stage runs.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub function: String,

    /// Parameters passed to the function, checked against the FunctionProfile's
    /// parameter list. Values are strings, numbers or booleans.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "schema_helpers::param_map")]
    pub params: BTreeMap<String, serde_json::Value>,

    /// Stages whose outputs this stage takes as input. Empty for the one root stage,
    /// which reads the run's input.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 30)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub after: Vec<String>,

    /// This stage's outputs are segments: the stages after it run once per segment,
    /// in parallel, until a stage with `join: true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schemars(extend("default" = false))]
    pub fan_out: bool,

    /// Run once, after every segment of the fan-out upstream is done, with all the
    /// segments as input in order (e.g. stitch).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schemars(extend("default" = false))]
    pub join: bool,

    /// Run this stage only when a condition on an earlier stage's metadata holds;
    /// otherwise its input passes through unchanged to the stages after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,

    /// Settings for this stage that take precedence over the FunctionProfile and the
    /// workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<StageOverrides>,
}

/// A condition on an earlier stage's metadata.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct When {
    /// `<stage>.<key> <op> <value>`, where <stage> runs before this one, <key> is in its
    /// function's metadata, <op> is one of == != > >= < <=, and <value> is a number,
    /// true/false or a quoted string. Example: `detect.objects > 0`.
    #[schemars(length(min = 1, max = 256))]
    pub condition: String,

    /// Expected share of runs (or segments) for which the condition holds, from 0 to 1,
    /// used to plan pre-warming until vflow has observed enough outcomes.
    #[serde(default = "default_probability")]
    #[schemars(range(min = 0.0, max = 1.0), extend("default" = 0.5))]
    pub probability: f64,
}

fn default_probability() -> f64 {
    0.5
}

/// Per-stage settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.minScale) || !has(self.maxScale) || self.minScale <= self.maxScale",
    "message": "minScale must not exceed maxScale"
}]))]
pub struct StageOverrides {
    /// CPU cores per instance, instead of the profile's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory per instance, instead of the profile's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Share of one GPU per instance, instead of the profile's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 0, "exclusiveMinimum" = true, "maximum" = 8))]
    pub gpu: Option<f64>,
    /// Invocations per instance, instead of the profile's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub concurrency: Option<u32>,
    /// Fewest instances kept, even when idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_scale: Option<u32>,
    /// Most instances at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_scale: Option<u32>,
    /// Durable or Ephemeral for this stage, instead of the workflow's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<Provisioning>,
    /// Longest one invocation may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// How many times a failed invocation is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: Option<u32>,
}

/// When later stages are started ahead of their input.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum PrewarmPolicy {
    /// Start each stage on the most likely path so it is ready as its input arrives.
    #[default]
    JustInTime,
    /// Start every stage on the most likely path when a run starts.
    Speculative,
    /// Start stages on demand.
    None,
}

/// Whether chained stages may share one pod.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum FusionPolicy {
    /// Fuse where the planner's model shows a gain.
    #[default]
    Auto,
    /// Never fuse. (Not "Off": YAML 1.1 parsers, kubectl's among them, read that as
    /// false.)
    Disabled,
}

/// Whether stages keep warm instances.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Provisioning {
    /// Decide per stage from observed use.
    #[default]
    Auto,
    /// Keep at least one instance warm.
    Durable,
    /// Scale to zero when idle.
    Ephemeral,
}

/// What the operator has planned and observed for the workflow.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VideoWorkflowStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The plan for each stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub stages: Vec<StagePlan>,

    /// The stages a run most likely goes through, in order; these are pre-warmed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub most_likely_path: Vec<String>,

    /// Branch probabilities learned from finished runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branch_probabilities: Vec<BranchProbability>,

    /// Ready (every stage has its Deployment and Service) and Degraded (a problem needs
    /// attention; the message says which field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The plan for one stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StagePlan {
    /// Stage name.
    pub name: String,
    /// CPU cores requested per instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory requested per instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Share of one GPU per instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<f64>,
    /// Extended resources requested for the GPU share, as the cluster's sharing mode
    /// names them, e.g. {"nvidia.com/gpu.shared": "1"}.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gpu_resources: BTreeMap<String, String>,
    /// Invocations per instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Fewest and most instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<u32>,
    /// Instances wanted now and instances ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<u32>,
    /// Durable (kept warm) or Ephemeral (scaled to zero when idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<Provisioning>,
    /// The stage whose pod this stage runs in, when the planner fused them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fused_with: Option<String>,
    /// Seconds after a run starts at which this stage is pre-warmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prewarm_after_seconds: Option<f64>,
    /// Why the planner chose this, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A learned branch probability.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BranchProbability {
    /// The conditional stage.
    pub stage: String,
    /// Share of runs (or segments) in which it ran.
    pub probability: f64,
    /// Outcomes observed (evaluations of its condition).
    pub observations: u64,
    /// Of those, how many ran: the evidence the next plan starts from.
    #[serde(default)]
    pub taken: u64,
}
