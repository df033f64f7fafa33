//! vflow's planner: pure decisions (no I/O, no clock: time is passed in, no Kubernetes
//! client), so the operator, the local mode and the simulator run the same code.
//!
//! What the operator calls:
//! - [`plan::plan_workflow`]`(&VideoWorkflow, &BTreeMap<String, FunctionProfile>,
//!   &PlannerConfig) -> Result<WorkflowPlan, PlanError>`: every stage's size,
//!   concurrency, provisioning and minimum replicas, fusion, pre-warm offset and GPU
//!   request, each with its reason; the most likely path and branch probabilities.
//!   [`plan::WorkflowPlan::to_status_stages`] and
//!   [`plan::WorkflowPlan::to_status_branches`] give the status types.
//! - [`sizing::size_stage`]`(&FunctionProfile, Option<&StageOverrides>, &SizingConfig)
//!   -> StageSize` and [`sizing::recommend`]`(&FunctionProfile, &SizingConfig) ->
//!   Recommendation` (for the FunctionProfile controller).
//! - [`gpu::translate`]`(fraction, gpu_memory_bytes, &GpuSharing) -> Result<GpuRequest,
//!   GpuError>`.
//! - [`prewarm::jit_schedule`]`(&[PathStage], t0, Margin) -> Vec<PrewarmAction>` at a
//!   run's start (with [`plan::WorkflowPlan::path_stages`]), and
//!   [`prewarm::replan`] when a branch goes the other way; or
//!   [`prewarm::progress_schedule`]`(&[PathStage], &[StageProgress], now, Risk)` on
//!   every progress event of a run (the next requests due, from its actual progress).
//! - [`provisioning::plan`]`(&[FunctionLoad], &ProvisioningConfig)` each interval.
//!
//! [`sim`] is a discrete-event simulator of a cluster that runs these decisions
//! against baselines.

pub mod branch;
pub mod dag;
pub mod estimates;
pub mod fusion;
pub mod gpu;
pub mod packing;
pub mod path;
pub mod plan;
pub mod prewarm;
pub mod prices;
pub mod provisioning;
pub mod rng;
pub mod segments;
pub mod sim;
pub mod sizing;
pub mod split;

pub use plan::{PlanError, PlannerConfig, WorkflowPlan, plan_workflow};
pub use prices::Prices;

/// Most instances of a stage that sets no `maxScale`: the one bound the workflow
/// controller scales to and the run engine dispatches and pre-warms up to.
pub const DEFAULT_MAX_INSTANCES: u32 = 1000;
