//! `vflow submit WORKFLOW --input s3://... [--param stage.key=value]`: creates a
//! VideoWorkflowRun in the cluster; the operator's run controller takes it from there.

use std::collections::BTreeMap;

use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use vflow_api::{VideoWorkflow, VideoWorkflowRun, VideoWorkflowRunSpec, WorkflowRef};

pub struct SubmitArgs {
    pub workflow: String,
    pub input: String,
    pub namespace: Option<String>,
    /// `stage.key=value`, repeatable.
    pub params: Vec<String>,
    /// The run's name (default: generated from the workflow's).
    pub name: Option<String>,
    pub ttl_seconds_after_finished: Option<i64>,
}

type StageParams = BTreeMap<String, BTreeMap<String, serde_json::Value>>;

/// `stage.key=value` -> {stage: {key: value}}; numbers and booleans keep their type,
/// anything else is a string.
pub fn parse_params(params: &[String]) -> Result<StageParams, String> {
    let mut out: StageParams = BTreeMap::new();
    for p in params {
        let (path, value) = p
            .split_once('=')
            .ok_or_else(|| format!("--param {p}: expected stage.key=value"))?;
        let (stage, key) = path
            .split_once('.')
            .filter(|(s, k)| !s.is_empty() && !k.is_empty())
            .ok_or_else(|| format!("--param {p}: expected stage.key=value"))?;
        let value = match serde_json::from_str::<serde_json::Value>(value) {
            Ok(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => v,
            _ => serde_json::Value::String(value.to_string()),
        };
        out.entry(stage.to_string())
            .or_default()
            .insert(key.to_string(), value);
    }
    Ok(out)
}

pub fn build_run(args: &SubmitArgs, namespace: &str) -> Result<VideoWorkflowRun, String> {
    if args.input.trim().is_empty() {
        return Err("--input: empty".into());
    }
    let (name, generate_name) = match &args.name {
        Some(n) => (Some(n.clone()), None),
        None => {
            let base: String = args.workflow.chars().take(50).collect();
            (None, Some(format!("{}-", base.trim_end_matches('-'))))
        }
    };
    Ok(VideoWorkflowRun {
        metadata: ObjectMeta {
            name,
            generate_name,
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                vflow_contract::naming::LABEL_WORKFLOW.to_string(),
                args.workflow.clone(),
            )])),
            ..Default::default()
        },
        spec: VideoWorkflowRunSpec {
            workflow_ref: WorkflowRef {
                name: args.workflow.clone(),
            },
            input: args.input.clone(),
            params: parse_params(&args.params)?,
            ttl_seconds_after_finished: args.ttl_seconds_after_finished,
        },
        status: None,
    })
}

/// Creates the run; returns `namespace/name`.
pub async fn submit(client: Client, args: &SubmitArgs) -> Result<String, String> {
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let run = build_run(args, &ns)?;
    let workflows: Api<VideoWorkflow> = Api::namespaced(client.clone(), &ns);
    let wf = workflows
        .get_opt(&args.workflow)
        .await
        .map_err(|e| format!("reading VideoWorkflow {ns}/{}: {e}", args.workflow))?
        .ok_or_else(|| {
            format!(
                "no VideoWorkflow {ns}/{} (kubectl get vwf -n {ns})",
                args.workflow
            )
        })?;
    for stage in run.spec.params.keys() {
        if !wf.spec.stages.iter().any(|s| &s.name == stage) {
            return Err(format!(
                "--param {stage}.*: VideoWorkflow {} has no stage {stage}",
                args.workflow
            ));
        }
    }
    let runs: Api<VideoWorkflowRun> = Api::namespaced(client, &ns);
    let created = runs
        .create(&PostParams::default(), &run)
        .await
        .map_err(|e| format!("creating the VideoWorkflowRun: {e}"))?;
    Ok(format!(
        "{ns}/{}",
        created.metadata.name.unwrap_or_default()
    ))
}
