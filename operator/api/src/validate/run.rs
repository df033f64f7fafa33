//! Rules for a VideoWorkflowRun, against its workflow when that is known.

use super::{Lookup, Problems, ProfileSet, did_you_mean, params};
use crate::{VideoWorkflow, VideoWorkflowRun};

/// Every problem with a run. With its workflow (and the profiles) known, the per-stage
/// parameters are checked too.
pub fn validate_run(
    run: &VideoWorkflowRun,
    workflow: Option<&VideoWorkflow>,
    profiles: &ProfileSet,
) -> Vec<super::Problem> {
    let mut p = Problems::default();
    let spec = &run.spec;
    if spec.workflow_ref.name.trim().is_empty() {
        p.add("spec.workflowRef.name", "must name a VideoWorkflow");
    }
    check_input(&mut p, &spec.input);
    if spec.ttl_seconds_after_finished.is_some_and(|t| t < 0) {
        p.add("spec.ttlSecondsAfterFinished", "must be 0 or more");
    }
    for (stage_name, values) in &spec.params {
        let at = format!("spec.params.{stage_name}");
        let Some(wf) = workflow else {
            p.0.extend(params::check_params(&at, values, None, false));
            continue;
        };
        let Some(stage) = wf.spec.stages.iter().find(|s| &s.name == stage_name) else {
            p.add(
                &at,
                format!(
                    "workflow {:?} has no stage {stage_name:?}{}",
                    wf.metadata.name.as_deref().unwrap_or_default(),
                    did_you_mean(stage_name, wf.spec.stages.iter().map(|s| s.name.as_str()))
                ),
            );
            continue;
        };
        let specs = match profiles.lookup(&stage.function) {
            Lookup::Found(profile) => Some(profile.params.as_slice()),
            Lookup::Missing | Lookup::Unknown => None,
        };
        p.0.extend(params::check_params(&at, values, specs, false));
    }
    p.into_vec()
}

fn check_input(p: &mut Problems, input: &str) {
    if input.trim().is_empty() {
        p.add("spec.input", "must name the input video");
        return;
    }
    if let Some(rest) = input.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || key.is_empty() {
            p.add(
                "spec.input",
                format!("{input:?} must be s3://<bucket>/<key> with both parts present"),
            );
        }
    } else if input.contains("://") {
        p.add(
            "spec.input",
            format!("{input:?}: only s3:// URIs or keys in the workflow's bucket are supported"),
        );
    }
}
