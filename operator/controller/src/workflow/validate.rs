//! Pure checks before anything is written: the API's `validate()` rules against the
//! namespace's FunctionProfiles, the planner, and the GPU share in the configured
//! sharing mode. A workflow that fails any of them is left as it is (its children too)
//! and gets a condition with the field path and an Event.

use std::collections::BTreeMap;

use vflow_api::{
    FunctionProfile, VideoWorkflow,
    validate::{Problem, ProfileSet, validate_workflow},
};
use vflow_planner::{PlanError, PlannerConfig, WorkflowPlan, gpu, plan_workflow};

/// Why a workflow cannot be reconciled (a condition reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    InvalidSpec,
    ProfileMissing,
    GpuUnsatisfiable,
}

impl InvalidReason {
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidReason::InvalidSpec => "InvalidSpec",
            InvalidReason::ProfileMissing => "ProfileMissing",
            InvalidReason::GpuUnsatisfiable => "GpuUnsatisfiable",
        }
    }
}

/// The problems that stop a workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub reason: InvalidReason,
    pub problems: Vec<Problem>,
}

impl Invalid {
    /// One message for a condition or Event: the problems as `path: message`, joined.
    pub fn message(&self) -> String {
        let mut text = self
            .problems
            .iter()
            .take(5)
            .map(Problem::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        if self.problems.len() > 5 {
            text.push_str(&format!("; and {} more", self.problems.len() - 5));
        }
        text
    }
}

/// Checks the workflow and plans it. `profiles` are all the FunctionProfiles of the
/// workflow's namespace, by name.
pub fn check(
    wf: &VideoWorkflow,
    profiles: &BTreeMap<String, FunctionProfile>,
    cfg: &PlannerConfig,
) -> Result<WorkflowPlan, Invalid> {
    let specs = profiles
        .iter()
        .map(|(name, p)| (name.clone(), p.spec.clone()))
        .collect();
    let problems = validate_workflow(wf, &ProfileSet::complete(specs));
    if !problems.is_empty() {
        let missing = wf
            .spec
            .stages
            .iter()
            .any(|s| !profiles.contains_key(&s.function));
        return Err(Invalid {
            reason: if missing {
                InvalidReason::ProfileMissing
            } else {
                InvalidReason::InvalidSpec
            },
            problems,
        });
    }
    let plan = plan_workflow(wf, profiles, cfg).map_err(|e| match e {
        PlanError::MissingProfile { stage, function } => Invalid {
            reason: InvalidReason::ProfileMissing,
            problems: vec![Problem {
                path: stage_path(wf, &stage, "function"),
                message: format!("no FunctionProfile {function:?} in this namespace"),
            }],
        },
        PlanError::Dag(e) => Invalid {
            reason: InvalidReason::InvalidSpec,
            problems: vec![Problem {
                path: "spec.stages".into(),
                message: e.to_string(),
            }],
        },
    })?;
    // The planner turns an untranslatable share into a warning; the operator refuses it,
    // so the stage never becomes a pod stuck Pending.
    let mut gpu_problems = Vec::new();
    for d in &plan.stages {
        let Some(share) = d.size.gpu else { continue };
        if d.gpu.is_some() {
            continue;
        }
        let err = gpu::translate(share, d.size.gpu_memory_bytes, &cfg.gpu_sharing)
            .err()
            .map_or_else(|| "cannot be translated".to_string(), |e| e.to_string());
        let from_override = wf
            .spec
            .stages
            .iter()
            .find(|s| s.name == d.name)
            .and_then(|s| s.overrides.as_ref())
            .is_some_and(|o| o.gpu.is_some());
        let path = if from_override {
            stage_path(wf, &d.name, "overrides.gpu")
        } else {
            format!(
                "{} (FunctionProfile {}: spec.resources.gpu)",
                stage_path(wf, &d.name, "function"),
                d.function
            )
        };
        gpu_problems.push(Problem {
            path,
            message: format!("GPU share {share} in the cluster's sharing mode: {err}"),
        });
    }
    if !gpu_problems.is_empty() {
        return Err(Invalid {
            reason: InvalidReason::GpuUnsatisfiable,
            problems: gpu_problems,
        });
    }
    Ok(plan)
}

fn stage_path(wf: &VideoWorkflow, stage: &str, field: &str) -> String {
    let i = wf
        .spec
        .stages
        .iter()
        .position(|s| s.name == stage)
        .unwrap_or_default();
    format!("spec.stages[{i}].{field}")
}
