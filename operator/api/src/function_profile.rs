//! `FunctionProfile`: a video function and what vflow has learned about it.
//!
//! Doc comments on fields are what `kubectl explain` shows, so they are written for
//! the people who write manifests.

// kube's `printcolumn(...)` repeats `type_ = ...` by design; clippy reads that as duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Duration, Quantity, schema_helpers};

/// A video function (its container image and command) and what vflow has measured
/// about it. Workflow stages refer to profiles by name; the operator sizes each
/// stage's pods from the profile's observations.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "vflow.io",
    version = "v1alpha1",
    kind = "FunctionProfile",
    namespaced,
    status = "FunctionProfileStatus",
    derive = "PartialEq",
    shortname = "fprof",
    category = "vflow",
    doc = "A video function (image, command, parameters, resources) and what vflow has measured about it.",
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".spec.image",
        priority = 1
    ),
    printcolumn(name = "CPU", type_ = "string", json_path = ".spec.resources.cpu"),
    printcolumn(
        name = "Memory",
        type_ = "string",
        json_path = ".spec.resources.memory"
    ),
    printcolumn(name = "GPU", type_ = "number", json_path = ".spec.resources.gpu"),
    printcolumn(name = "Sizing", type_ = "string", json_path = ".spec.sizing"),
    printcolumn(
        name = "Invocations",
        type_ = "integer",
        json_path = ".status.invocations"
    ),
    printcolumn(
        name = "Exec-P95",
        type_ = "number",
        json_path = ".status.execSeconds.p95"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FunctionProfileSpec {
    /// Container image that runs the function, e.g. ghcr.io/acme/vflow-scale:1.2. Its
    /// entrypoint must be vflow-runtime, which runs `command` for each invocation.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// The function's command and fixed arguments, run without a shell. For each
    /// invocation vflow appends `--input <file>... --output-dir <dir>` and one
    /// `--<name> <value>` pair per parameter.
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 1024)))]
    pub command: Vec<String>,

    /// What the function does, for people reading the profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// The parameters the function accepts. Stage params in a VideoWorkflow are checked
    /// against this list: unknown names, wrong types and out-of-range values are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub params: Vec<ParamSpec>,

    /// Resources each instance starts with, before vflow has observations.
    pub resources: ResourceRequest,

    /// Limits for automatic sizing: vflow never requests less than the minimum or more
    /// than the maximum. Unset bounds mean no limit on that side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds: Option<ResourceBounds>,

    /// How observations change the resources: Auto applies vflow's recommendation,
    /// Recommend only reports it in status, Off keeps `resources` as written.
    #[serde(default)]
    pub sizing: SizingMode,

    /// PerInvocation (default): a process per invocation. Resident: workers that load
    /// once and serve invocation after invocation (a model stays loaded while the
    /// instance is warm); see WorkerMode.
    #[serde(default)]
    pub worker: WorkerMode,

    /// How many invocations one instance runs at the same time (the target concurrency
    /// of the autoscaler, and the packing degree). Video functions usually want 1.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 1000), extend("default" = 1))]
    pub concurrency: u32,

    /// Expected time from "instance requested" to "instance ready" before any cold start
    /// has been observed, e.g. 2s for ffmpeg, 15s for a GPU model. Used to plan pre-warming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start_prior: Option<Duration>,

    /// Expected execution time of one invocation before any has been observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_time_prior: Option<Duration>,

    /// Longest one invocation may run before it is stopped and counted as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,

    /// A command run once when an instance starts, before it accepts invocations (e.g.
    /// loading a model onto the GPU). The instance is ready only after it succeeds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 1024)))]
    pub warmup_command: Vec<String>,

    /// What the function produces besides its output files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub produces: Option<Produces>,
}

fn default_concurrency() -> u32 {
    1
}

/// One parameter of a function.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParamSpec {
    /// Parameter name, as written in a stage's `params` and passed as `--<name>`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z][a-zA-Z0-9_-]*$"))]
    pub name: String,

    /// Value type: Integer, Number, String or Boolean.
    #[serde(rename = "type")]
    pub type_: ParamType,

    /// What the parameter means and its unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// Whether every stage using this function must set the parameter.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,

    /// Value used when a stage does not set the parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema_helpers::any_scalar")]
    pub default: Option<serde_json::Value>,

    /// Smallest allowed value (Integer and Number parameters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<f64>,

    /// Largest allowed value (Integer and Number parameters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<f64>,

    /// The allowed values (String parameters), e.g. [h264, hevc, vp9, av1].
    #[serde(default, rename = "enum", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 256)))]
    pub enum_values: Vec<String>,
}

/// The type of a parameter value.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ParamType {
    Integer,
    Number,
    String,
    Boolean,
}

/// CPU, memory and GPU for one instance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRequest {
    /// CPU cores, e.g. 500m or 2.
    pub cpu: Quantity,
    /// Memory, e.g. 512Mi or 2Gi. The memory limit is set equal to the request.
    pub memory: Quantity,
    /// Share of one NVIDIA GPU, e.g. 0.25 for a quarter. Above 1, whole GPUs only
    /// (2, 3, ... up to 8). The operator translates the share into the cluster's GPU
    /// sharing mode (time-slicing, MPS, MIG, HAMi, KAI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 0, "exclusiveMinimum" = true, "maximum" = 8))]
    pub gpu: Option<f64>,
    /// Disk for one invocation's inputs and outputs (the pod's /scratch), e.g. 10Gi.
    /// The pod's scratch is this times the invocations it runs at once. Unset: twice
    /// the most an invocation was seen to read and write, else 2Gi; set, it is the
    /// least vflow gives however small the observations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch: Option<Quantity>,
}

/// Limits for automatic sizing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceBounds {
    /// Never request fewer CPU cores than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cpu: Option<Quantity>,
    /// Never request more CPU cores than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu: Option<Quantity>,
    /// Never request less memory than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_memory: Option<Quantity>,
    /// Never request more memory than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<Quantity>,
}

/// How a function's processes serve invocations.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum WorkerMode {
    /// A process per invocation: right for ffmpeg, which loads nothing worth keeping.
    #[default]
    PerInvocation,
    /// Long-lived workers that load once (a model) and serve one invocation after
    /// another: the instance's warm-up starts the first, so a warm instance answers
    /// without loading anything. The function must speak the runtime's resident
    /// protocol (`<command> --resident`), as vflow-fn does.
    Resident,
}

/// How observations change a function's resources.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum SizingMode {
    /// Apply vflow's recommendation to the stage's pods.
    #[default]
    Auto,
    /// Report the recommendation in status only.
    Recommend,
    /// Keep the resources as written.
    Off,
}

/// What a function produces besides its output files.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Produces {
    /// The function splits its input into segments (one output file per segment, in
    /// order). A stage running it must set `fanOut: true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub segments: bool,

    /// Values the function writes to its metadata file (metadata.json in its output
    /// directory), which later stages' `when` conditions can test, e.g. `objects`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub metadata: Vec<MetadataField>,
}

/// One value in a function's metadata output.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetadataField {
    /// Key in metadata.json.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    )]
    pub name: String,
    /// Value type: Integer, Number, String or Boolean.
    #[serde(rename = "type")]
    pub type_: ParamType,
    /// What the value means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}

/// What vflow has measured about the function.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionProfileStatus {
    /// The spec generation these observations and the recommendation were computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Invocations observed in the current window.
    #[serde(default)]
    pub invocations: u64,
    /// Invocations that started a new instance (cold starts) in the window.
    #[serde(default)]
    pub cold_starts: u64,
    /// Invocations that failed in the window.
    #[serde(default)]
    pub failures: u64,
    /// Instances killed for running out of memory in the window.
    #[serde(default)]
    pub oom_kills: u64,
    /// Start of the observation window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<Time>,
    /// End of the observation window (the newest observation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_end: Option<Time>,
    /// Invocations per 10-second bucket (by when they were submitted) over the last
    /// 15 minutes: the invocation rate that `provisioning: Auto` decides from. Buckets
    /// without invocations are left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 90))]
    pub recent_invocations: Vec<InvocationBucket>,

    /// Execution time of one invocation, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_seconds: Option<Distribution>,
    /// Time from "instance requested" to "instance ready", in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start_seconds: Option<Distribution>,
    /// CPU cores used while running an invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<Distribution>,
    /// Peak memory of an invocation's processes, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<Distribution>,
    /// GPU memory used, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_bytes: Option<Distribution>,
    /// GPU utilisation while running, from 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_utilization: Option<Distribution>,
    /// Mean execution time by packing degree (functions running at once on the
    /// instance, rounded): E(P) measured, which packing decides from once there are
    /// observations beyond P = 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec_by_degree: Vec<DegreeTiming>,
    /// The function's CPU and memory over one run, in equal slices of its time,
    /// averaged over the invocations observed: where the use changes by a large
    /// factor is a phase boundary, a candidate to split the function at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_profile: Option<UsageProfile>,
    /// The planner's reading of `usageProfile`: a split candidate with its numbers, or
    /// why there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// Bytes an invocation read plus wrote: what it needed on the scratch disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch_bytes: Option<Distribution>,
    /// Bytes written per byte read, averaged over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_input_ratio: Option<f64>,

    /// What vflow would request for one instance, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<Recommendation>,

    /// Current state: Observed (enough observations to trust), Applied (recommendation in use).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Execution time observed at one packing degree.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DegreeTiming {
    pub degree: u32,
    pub invocations: u64,
    pub mean_seconds: f64,
}

/// Mean CPU and memory per slice of an invocation's time.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageProfile {
    /// Invocations averaged.
    pub invocations: u64,
    /// Mean execution time of those invocations, in seconds.
    pub seconds: f64,
    /// Cores used in each slice.
    pub cpu_cores: Vec<f64>,
    /// Largest resident memory in each slice, in bytes.
    pub memory_bytes: Vec<f64>,
}

/// Invocations submitted in one bucket of [`INVOCATION_BUCKET_SECONDS`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvocationBucket {
    /// Start of the bucket.
    pub start: Time,
    pub invocations: u64,
}

/// Width of an [`InvocationBucket`].
pub const INVOCATION_BUCKET_SECONDS: i64 = 10;
/// How far back [`FunctionProfileStatus::recent_invocations`] reaches.
pub const INVOCATION_HISTORY_SECONDS: i64 = 15 * 60;

/// Percentiles of an observed quantity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Distribution {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// Largest value seen.
    pub max: f64,
}

/// A sizing recommendation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Recommendation {
    /// CPU cores to request.
    pub cpu: Quantity,
    /// Memory to request (and limit).
    pub memory: Quantity,
    /// Share of one GPU to request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<f64>,
    /// Invocations per instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// How many observations the recommendation rests on.
    pub observations: u64,
    /// Why these numbers, e.g. "cpu = p95 1.4 cores x 1.2 headroom".
    #[serde(default)]
    pub reason: String,
}
