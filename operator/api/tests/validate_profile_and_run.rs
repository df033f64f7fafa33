//! One test per FunctionProfile and VideoWorkflowRun rule.

mod common;

use common::{example_profiles, profile, workflow};
use vflow_api::{
    VideoWorkflowRun,
    validate::{ProfileSet, validate_profile, validate_run},
};

fn profile_problems(spec: &str) -> Vec<String> {
    validate_profile(&profile(spec))
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_sound_profile_has_no_problems() {
    let got = profile_problems(
        "resources: {cpu: 500m, memory: 256Mi, gpu: 0.25}\nbounds: {minCpu: 250m, maxCpu: 2}\nparams:\n- {name: n, type: Integer, default: 3, minimum: 1, maximum: 5}",
    );
    assert_eq!(got, Vec::<String>::new());
}

#[test]
fn zero_resources_are_refused() {
    assert_eq!(
        profile_problems("resources: {cpu: 0, memory: 0Mi}"),
        vec![
            "spec.resources.cpu: must be more than zero",
            "spec.resources.memory: must be more than zero"
        ]
    );
}

#[test]
fn gpu_fractions_above_one_must_be_whole() {
    assert_eq!(
        profile_problems("resources: {cpu: 1, memory: 1Gi, gpu: 2.5}"),
        vec![
            "spec.resources.gpu: 2.5 GPUs: above 1, use whole GPUs (a share is only possible within one GPU)"
        ]
    );
    assert_eq!(
        profile_problems("resources: {cpu: 1, memory: 1Gi, gpu: 9}"),
        vec!["spec.resources.gpu: 9 is not a GPU share: use more than 0 and at most 8"]
    );
}

#[test]
fn bounds_must_be_ordered_and_contain_the_start() {
    assert_eq!(
        profile_problems(
            "resources: {cpu: 4, memory: 64Mi}\nbounds: {minCpu: 2, maxCpu: 1, minMemory: 128Mi}"
        ),
        vec![
            "spec.bounds.minCpu: minCpu 2 is above maxCpu 1",
            "spec.resources.cpu: 4 is above bounds.maxCpu 1",
            "spec.resources.memory: 64Mi is below bounds.minMemory 128Mi",
        ]
    );
}

#[test]
fn parameter_declarations_are_checked() {
    let got = profile_problems(
        "resources: {cpu: 1, memory: 1Gi}
params:
- {name: crf, type: Integer, default: 99, minimum: 0, maximum: 51}
- {name: crf, type: Integer}
- {name: codec, type: String, minimum: 1}
- {name: fast, type: Boolean, enum: [yes]}
- {name: q, type: Number, minimum: 5, maximum: 1}",
    );
    assert_eq!(
        got,
        vec![
            "spec.params[0].default: 99 is above the maximum 51",
            "spec.params[1].name: duplicate parameter \"crf\"",
            "spec.params[2]: minimum and maximum only apply to Integer and Number parameters",
            "spec.params[3].enum: allowed values only apply to String parameters",
            "spec.params[4].minimum: minimum 5 is above maximum 1",
        ]
    );
}

#[test]
fn duplicate_metadata_keys() {
    assert_eq!(
        profile_problems(
            "resources: {cpu: 1, memory: 1Gi}\nproduces:\n  metadata:\n  - {name: objects, type: Integer}\n  - {name: objects, type: Number}"
        ),
        vec!["spec.produces.metadata[1].name: duplicate metadata key \"objects\""]
    );
}

#[test]
fn an_empty_command_is_refused() {
    let mut p = profile("resources: {cpu: 1, memory: 1Gi}");
    p.spec.command = vec![" ".into()];
    p.spec.image = String::new();
    let got: Vec<String> = validate_profile(&p)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        vec![
            "spec.image: must name a container image",
            "spec.command: must name the program to run"
        ]
    );
}

fn run(spec: &str) -> VideoWorkflowRun {
    let indented: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    let text = format!(
        "apiVersion: vflow.io/v1alpha1\nkind: VideoWorkflowRun\nmetadata:\n  name: r\nspec:\n{indented}"
    );
    serde_saphyr::from_str(&text).expect("test run parses")
}

fn ladder() -> vflow_api::VideoWorkflow {
    workflow(
        "stages:
- {name: split, function: segment, fanOut: true}
- {name: scale-480p, function: scale, after: [split], params: {height: 480}}
- {name: stitch, function: stitch, after: [scale-480p], join: true}",
    )
}

#[test]
fn run_params_name_real_stages_and_fit_their_functions() {
    let r = run(
        "workflowRef: {name: wf}\ninput: s3://videos/in.mp4\nparams:\n  scale-480: {crf: 28}\n  scale-480p: {crf: 99}",
    );
    let got: Vec<String> = validate_run(&r, Some(&ladder()), &example_profiles())
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        vec![
            "spec.params.scale-480: workflow \"wf\" has no stage \"scale-480\" (did you mean \"scale-480p\"?)",
            "spec.params.scale-480p.crf: 99 is above the maximum 63",
        ]
    );
}

#[test]
fn run_input_must_be_a_full_s3_uri_or_a_key() {
    for (input, expected) in [
        (
            "s3://videos",
            "spec.input: \"s3://videos\" must be s3://<bucket>/<key> with both parts present",
        ),
        (
            "https://x/y.mp4",
            "spec.input: \"https://x/y.mp4\": only s3:// URIs or keys in the workflow's bucket are supported",
        ),
    ] {
        let r = run(&format!("workflowRef: {{name: wf}}\ninput: {input}"));
        let got: Vec<String> = validate_run(&r, None, &ProfileSet::default())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, vec![expected.to_string()]);
    }
    let ok = run("workflowRef: {name: wf}\ninput: incoming/clip.mp4");
    assert!(validate_run(&ok, Some(&ladder()), &example_profiles()).is_empty());
}
