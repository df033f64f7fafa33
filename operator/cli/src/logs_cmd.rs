//! `vflow logs RUN --stage S`: the logs of the stage's pods (the operator labels them
//! `vflow.io/workflow` and `vflow.io/stage`; the function runs in container `function`).
//! Pods serve every run of their workflow, so the lines of other runs are there too.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams};
use kube::{Api, Client, ResourceExt};
use vflow_api::{VideoWorkflow, VideoWorkflowRun};

pub struct LogsArgs {
    pub run: String,
    pub stage: String,
    pub namespace: Option<String>,
    pub tail: Option<i64>,
}

pub async fn logs(client: Client, args: &LogsArgs) -> Result<String, String> {
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let runs: Api<VideoWorkflowRun> = Api::namespaced(client.clone(), &ns);
    let run = runs
        .get_opt(&args.run)
        .await
        .map_err(|e| format!("reading VideoWorkflowRun {ns}/{}: {e}", args.run))?
        .ok_or_else(|| format!("no VideoWorkflowRun {ns}/{}", args.run))?;
    let wf = &run.spec.workflow_ref.name;
    let workflows: Api<VideoWorkflow> = Api::namespaced(client.clone(), &ns);
    if let Ok(Some(w)) = workflows.get_opt(wf).await
        && !w.spec.stages.iter().any(|s| s.name == args.stage)
    {
        let names: Vec<&str> = w.spec.stages.iter().map(|s| s.name.as_str()).collect();
        return Err(format!(
            "VideoWorkflow {wf} has no stage {} (stages: {})",
            args.stage,
            names.join(", ")
        ));
    }
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let selector = format!("vflow.io/workflow={wf},vflow.io/stage={}", args.stage);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| format!("listing pods ({selector}): {e}"))?;
    if list.items.is_empty() {
        return Err(format!(
            "no pods of stage {} of {wf} in {ns} now (an ephemeral stage scales to zero when idle)",
            args.stage
        ));
    }
    let params = LogParams {
        container: Some("function".into()),
        tail_lines: args.tail,
        ..LogParams::default()
    };
    let mut out = String::new();
    let mut errors = Vec::new();
    for pod in &list.items {
        let name = pod.name_any();
        match pods.logs(&name, &params).await {
            Ok(text) => {
                out.push_str(&format!("==> pod {name} <==\n{text}"));
                if !text.is_empty() && !text.ends_with('\n') {
                    out.push('\n');
                }
            }
            Err(e) => errors.push(format!("pod {name}: {e}")),
        }
    }
    if out.is_empty() {
        return Err(errors.join("\n"));
    }
    for e in errors {
        out.push_str(&format!("==> {e}\n"));
    }
    Ok(out)
}
