//! `vflow plan WORKFLOW.yaml --profiles DIR|FILE`: the planner's decisions for a
//! workflow, with the numbers behind every choice.

use std::{
    collections::BTreeMap,
    fmt::Write,
    path::{Path, PathBuf},
};

use vflow_api::{
    FunctionProfile, VideoWorkflow,
    validate::{ProfileSet, validate_profile, validate_workflow},
};
use vflow_planner::{PlannerConfig, WorkflowPlan, plan_workflow};

use crate::manifests::{Document, Object, load_file};

/// What `vflow plan` prints and how it exits.
pub struct Outcome {
    pub stdout: String,
    pub stderr: Vec<String>,
    /// 0: planned; 1: problems in the manifests; 2: a file unreadable or not YAML.
    pub code: u8,
}

fn fail(code: u8, stderr: Vec<String>) -> Outcome {
    Outcome {
        stdout: String::new(),
        stderr,
        code,
    }
}

/// Loads, validates and plans. `config` is a YAML or JSON PlannerConfig (all fields optional).
pub fn run(
    workflow_file: &Path,
    profile_paths: &[PathBuf],
    config: Option<&Path>,
    json: bool,
) -> Outcome {
    let mut load_errors = Vec::new();
    let mut docs: Vec<Document> = Vec::new();
    match load_file(workflow_file) {
        Ok(d) => docs.extend(d),
        Err(e) => load_errors.push(e.to_string()),
    }
    let mut profile_docs = Vec::new();
    for path in profile_paths {
        match crate::manifests::yaml_files(path) {
            Ok(files) => {
                for f in files {
                    match load_file(&f) {
                        Ok(d) => profile_docs.extend(d),
                        Err(e) => load_errors.push(e.to_string()),
                    }
                }
            }
            Err(e) => load_errors.push(e.to_string()),
        }
    }
    let cfg = match config.map(read_config).transpose() {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => {
            load_errors.push(e);
            PlannerConfig::default()
        }
    };
    if !load_errors.is_empty() {
        return fail(2, load_errors);
    }
    let mut problems = Vec::new();
    let mut profiles: BTreeMap<String, FunctionProfile> = BTreeMap::new();
    let mut workflows: Vec<&VideoWorkflow> = Vec::new();
    let n_own = docs.len();
    for (k, doc) in docs.iter().chain(&profile_docs).enumerate() {
        let own = k < n_own;
        // A directory of profiles may hold the workflow file itself: read it once.
        if !own && same_file(&doc.file, workflow_file) {
            continue;
        }
        let at = format!(
            "{} (document {}, {})",
            doc.file.display(),
            doc.index,
            doc.label
        );
        problems.extend(doc.problems.iter().map(|p| format!("{at}: {p}")));
        match &doc.object {
            Some(Object::Profile(p)) => {
                problems.extend(validate_profile(p).iter().map(|x| format!("{at}: {x}")));
                profiles.insert(p.metadata.name.clone().unwrap_or_default(), (**p).clone());
            }
            Some(Object::Workflow(w)) if own => workflows.push(w),
            _ => {}
        }
    }
    let [workflow] = workflows.as_slice() else {
        problems.push(format!(
            "{}: expected exactly one VideoWorkflow, found {}",
            workflow_file.display(),
            workflows.len()
        ));
        return fail(1, problems);
    };
    let set = ProfileSet::complete(
        profiles
            .iter()
            .map(|(k, v)| (k.clone(), v.spec.clone()))
            .collect(),
    );
    let wf_label = workflow.metadata.name.clone().unwrap_or_default();
    problems.extend(validate_workflow(workflow, &set).iter().map(|p| {
        format!(
            "{} (VideoWorkflow/{wf_label}): {p}",
            workflow_file.display()
        )
    }));
    if !problems.is_empty() {
        return fail(1, problems);
    }
    // What local runs and `vflow profile` measured, as `vflow run` plans from it.
    let learned = crate::run_cmd::state_dir()
        .map(|state| crate::run_cmd::learned_dir_for(profile_paths, &state))
        .map_err(|e| e.to_string())
        .and_then(|dir| {
            crate::run_cmd::apply_learned(&mut profiles, &dir).map(|names| (dir, names))
        });
    let learned_note = match learned {
        Ok((dir, names)) if !names.is_empty() => {
            format!("(observed: {} from {})\n", names.join(", "), dir.display())
        }
        Ok(_) => String::new(),
        Err(e) => return fail(2, vec![format!("learned profiles: {e}")]),
    };
    match plan_workflow(workflow, &profiles, &cfg) {
        Ok(plan) => Outcome {
            stdout: if json {
                serde_json::to_string_pretty(&plan).unwrap_or_default() + "\n"
            } else {
                learned_note + &render(&plan)
            },
            stderr: Vec::new(),
            code: 0,
        },
        Err(e) => fail(1, vec![format!("{}: {e}", workflow_file.display())]),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn read_config(path: &Path) -> Result<PlannerConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    serde_saphyr::from_str(&text)
        .map_err(|e| format!("{}: not a planner configuration: {e}", path.display()))
}

/// The plan for people: every choice with its reason.
pub fn render(plan: &WorkflowPlan) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Workflow {}", plan.workflow);
    let _ = writeln!(
        s,
        "  most likely path: {} (p = {:.2}, greedy as Xanadu)",
        plan.most_likely_path.join(" -> "),
        plan.path_probability
    );
    let _ = writeln!(
        s,
        "  max-product path: {} (p = {:.2})",
        plan.max_product_path.join(" -> "),
        plan.max_product_probability
    );
    for b in &plan.branch_probabilities {
        let _ = writeln!(
            s,
            "  branch {}: p = {:.2} (prior {:.2}, {} observations)",
            b.stage, b.probability, b.prior, b.observations
        );
    }
    let _ = writeln!(
        s,
        "  estimated run: p50 {:.1}s, p95 {:.1}s, ${:.5} per run{}",
        plan.p50_seconds,
        plan.p95_seconds,
        plan.cost_per_run,
        match plan.latency_objective_seconds {
            Some(l) => format!(
                "; latency objective {l:.0}s {}",
                if plan.meets_objective {
                    "met"
                } else {
                    "NOT met"
                }
            ),
            None => String::new(),
        }
    );
    let _ = writeln!(
        s,
        "  pre-warm ({:?}, run starting at 0s):",
        plan.prewarm_policy
    );
    if plan.prewarm.is_empty() {
        let _ = writeln!(s, "    nothing ahead of its input");
    }
    for a in &plan.prewarm {
        let _ = writeln!(
            s,
            "    {:<20} at {:>7.2}s to {} replica(s)",
            a.stage, a.at_seconds, a.replicas
        );
    }
    for st in &plan.stages {
        let _ = writeln!(
            s,
            "\nStage {} ({}): {} cores, {}, concurrency {}, {:?} min {}{}{}",
            st.name,
            st.function,
            st.size.cpu(),
            st.size.memory(),
            st.concurrency,
            st.provisioning,
            st.min_replicas,
            st.fused_with
                .as_ref()
                .map(|f| format!(", fused with {f}"))
                .unwrap_or_default(),
            st.gpu
                .as_ref()
                .map(|g| format!(
                    ", gpu {}",
                    g.resources
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ))
                .unwrap_or_default()
        );
        for r in &st.reasons {
            let _ = writeln!(s, "  {:<13} {}", format!("{}:", r.topic), r.text);
        }
    }
    if !plan.warnings.is_empty() {
        let _ = writeln!(s, "\nWarnings:");
        for w in &plan.warnings {
            let _ = writeln!(s, "  {w}");
        }
    }
    s
}
