//! One test per VideoWorkflow rule: each asserts the field path and the message.

mod common;

use common::{example_profiles, workflow};
use vflow_api::validate::{ProfileSet, validate_workflow};

/// Problems as "path: message" lines, checked against the example profiles.
fn problems(spec: &str) -> Vec<String> {
    validate_workflow(&workflow(spec), &example_profiles())
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn problems_without_profiles(spec: &str) -> Vec<String> {
    validate_workflow(&workflow(spec), &ProfileSet::default())
        .iter()
        .map(ToString::to_string)
        .collect()
}

const CHAIN: &str = "
- {name: split, function: segment, fanOut: true}
- {name: scale, function: scale, after: [split], params: {height: 720}}
- {name: stitch, function: stitch, after: [scale], join: true}";

fn stages(list: &str) -> String {
    format!("stages:{}", list.replace('\n', "\n  "))
}

#[test]
fn a_sound_chain_has_no_problems() {
    assert_eq!(problems(&stages(CHAIN)), Vec::<String>::new());
}

#[test]
fn unknown_stage_in_after_suggests_the_close_name() {
    let spec = stages(&CHAIN.replace("after: [scale]", "after: [scael]"));
    assert_eq!(
        problems(&spec),
        vec!["spec.stages[2].after[0]: no stage named \"scael\" (did you mean \"scale\"?)"]
    );
}

#[test]
fn after_listing_the_same_stage_twice() {
    let spec = stages(&CHAIN.replace("after: [scale]", "after: [scale, scale]"));
    assert_eq!(
        problems(&spec),
        vec!["spec.stages[2].after[1]: \"scale\" is listed twice"]
    );
}

#[test]
fn a_stage_after_itself() {
    let spec = stages(&CHAIN.replace("after: [scale]", "after: [stitch]"));
    let got = problems(&spec);
    assert!(
        got.contains(&"spec.stages[2].after[0]: a stage cannot run after itself".to_string()),
        "{got:?}"
    );
}

#[test]
fn duplicate_stage_names() {
    let spec = stages(&format!(
        "{CHAIN}\n- {{name: scale, function: scale, after: [split], params: {{height: 480}}}}"
    ));
    let got = problems(&spec);
    assert!(
        got.contains(
            &"spec.stages[3].name: duplicate stage name \"scale\" (also spec.stages[1])"
                .to_string()
        ),
        "{got:?}"
    );
}

#[test]
fn a_cycle_is_named_stage_by_stage() {
    let spec = stages(
        "
- {name: probe, function: thumbnail}
- {name: a, function: thumbnail, after: [probe, c]}
- {name: b, function: thumbnail, after: [a]}
- {name: c, function: thumbnail, after: [b]}",
    );
    assert_eq!(
        problems(&spec),
        vec!["spec.stages[1].after: the stages form a cycle: a -> b -> c -> a"]
    );
}

#[test]
fn more_than_one_root() {
    let spec = stages(&format!("{CHAIN}\n- {{name: thumbs, function: thumbnail}}"));
    assert_eq!(
        problems(&spec),
        vec![
            "spec.stages: 2 stages have no \"after\" (split, thumbs); exactly one stage reads the run's input, the others need \"after\""
        ]
    );
}

#[test]
fn no_root_at_all() {
    let spec = stages(
        "
- {name: a, function: thumbnail, after: [b]}
- {name: b, function: thumbnail, after: [a]}",
    );
    let got = problems(&spec);
    assert!(
        got.contains(
            &"spec.stages: every stage has \"after\"; exactly one stage must have none: it reads the run's input"
                .to_string()
        ),
        "{got:?}"
    );
    assert!(
        got.iter().any(|p| p.contains("cycle: a -> b -> a")),
        "{got:?}"
    );
}

#[test]
fn a_join_with_no_fan_out_before_it() {
    let spec = stages(
        "
- {name: thumbs, function: thumbnail}
- {name: sprite, function: sprite, after: [thumbs], join: true}",
    );
    assert_eq!(
        problems(&spec),
        vec![
            "spec.stages[1].join: nothing to join: no stage before this one fans out into segments"
        ]
    );
}

#[test]
fn nested_fan_out() {
    let spec = stages(
        "
- {name: split, function: segment, fanOut: true}
- {name: again, function: segment, after: [split], fanOut: true}
- {name: stitch, function: stitch, after: [again], join: true}",
    );
    assert_eq!(
        problems(&spec),
        vec![
            "spec.stages[1].fanOut: already runs once per segment of \"split\"; fan-outs cannot be nested (join first)"
        ]
    );
}

#[test]
fn a_stage_mixing_segments_and_whole_run_inputs() {
    let spec = stages(&format!(
        "{CHAIN}\n- {{name: thumbs, function: thumbnail, after: [scale, stitch]}}"
    ));
    assert_eq!(
        problems(&spec),
        vec![
            "spec.stages[3].after: mixes whole-run inputs and segments of \"split\"; a stage runs either once per segment of one fan-out or once per run (add join: true to gather segments)"
        ]
    );
}

#[test]
fn fan_out_on_a_function_that_does_not_split() {
    let spec = stages(&CHAIN.replace(
        "function: segment, fanOut: true",
        "function: thumbnail, fanOut: true",
    ));
    assert_eq!(
        problems(&spec),
        vec![
            "spec.stages[0].fanOut: function \"thumbnail\" does not produce segments (its profile lacks produces.segments: true)"
        ]
    );
}

#[test]
fn a_splitting_function_without_fan_out() {
    let spec = stages(
        "
- {name: split, function: segment}
- {name: thumbs, function: thumbnail, after: [split]}",
    );
    assert_eq!(
        problems(&spec),
        vec![
            "spec.stages[0].fanOut: function \"segment\" splits its input into segments; set fanOut: true so the stages after it run once per segment"
        ]
    );
}

#[test]
fn when_on_the_root_stage_cannot_be_evaluated() {
    let spec =
        stages("\n- {name: thumbs, function: thumbnail, when: {condition: 'thumbs.count > 0'}}");
    assert_eq!(
        problems(&spec),
        vec![
            "spec.stages[0].when.condition: a stage with no \"after\" has no earlier stage whose metadata it could test"
        ]
    );
}

#[test]
fn when_with_a_syntax_error_gives_the_column() {
    let spec = stages(&format!(
        "{CHAIN}\n- {{name: blur, function: blur, after: [scale], when: {{condition: 'split.segments => 2'}}}}"
    ))
    .replace("after: [scale], join", "after: [blur], join");
    assert_eq!(
        problems(&spec),
        vec!["spec.stages[3].when.condition: column 16: expected one of == != > >= < <="]
    );
}

#[test]
fn when_on_a_stage_that_does_not_run_before() {
    let spec = stages(&format!(
        "{CHAIN}\n- {{name: thumbs, function: thumbnail, after: [split], when: {{condition: 'scale.objects > 0'}}}}"
    ));
    assert_eq!(
        problems(&spec),
        vec![
            "spec.stages[3].when.condition: \"scale\" does not run before \"thumbs\", so its metadata is not there to test; list it (or a stage after it) in \"after\""
        ]
    );
}

#[test]
fn when_naming_an_unknown_stage() {
    let spec = stages(&format!(
        "{CHAIN}\n- {{name: thumbs, function: thumbnail, after: [scale], when: {{condition: 'splt.segments > 2'}}}}"
    ));
    assert_eq!(
        problems(&spec),
        vec!["spec.stages[3].when.condition: no stage named \"splt\" (did you mean \"split\"?)"]
    );
}

#[test]
fn when_on_metadata_the_function_does_not_write() {
    let spec = stages(&format!(
        "{CHAIN}\n- {{name: thumbs, function: thumbnail, after: [scale], when: {{condition: 'split.segment > 2'}}}}"
    ));
    assert_eq!(
        problems(&spec),
        vec![
            "spec.stages[3].when.condition: function \"segment\" of stage \"split\" writes no metadata \"segment\" (did you mean \"segments\"?)"
        ]
    );
}

#[test]
fn when_comparing_a_number_with_a_string() {
    let spec = stages(&format!(
        "{CHAIN}\n- {{name: thumbs, function: thumbnail, after: [scale], when: {{condition: \"split.segments == 'many'\"}}}}"
    ));
    assert_eq!(
        problems(&spec),
        vec![
            "spec.stages[3].when.condition: split.segments is a whole number, but the condition compares it with a string"
        ]
    );
}

#[test]
fn when_on_a_per_segment_value_from_a_whole_run_stage() {
    let spec = stages(
        "
- {name: split, function: segment, fanOut: true}
- {name: detect, function: detect, after: [split]}
- {name: stitch, function: stitch, after: [detect], join: true, when: {condition: 'detect.objects > 0'}}",
    );
    assert_eq!(
        problems(&spec),
        vec![
            "spec.stages[2].when.condition: \"detect\" runs once per segment, \"stitch\" does not: which segment's value would decide?"
        ]
    );
}

#[test]
fn params_checked_against_the_profile() {
    let spec = stages(&CHAIN.replace(
        "params: {height: 720}",
        "params: {height: 100000, codex: h264, crf: 2.5, preset: fastest}",
    ));
    assert_eq!(
        problems(&spec),
        vec![
            "spec.stages[1].params.codex: the function has no parameter \"codex\" (did you mean \"codec\"?)",
            "spec.stages[1].params.crf: must be a whole number, not 2.5",
            "spec.stages[1].params.height: 100000 is above the maximum 4320",
            "spec.stages[1].params.preset: \"fastest\" is not one of ultrafast, superfast, veryfast, faster, fast, medium, slow, slower, veryslow (did you mean \"faster\"?)",
        ]
    );
}

#[test]
fn a_missing_required_param() {
    let spec = stages(&CHAIN.replace("params: {height: 720}", "params: {crf: 20}"));
    assert_eq!(
        problems(&spec),
        vec!["spec.stages[1].params: missing required parameter \"height\""]
    );
}

#[test]
fn a_param_of_the_wrong_type() {
    let spec = stages(&CHAIN.replace("params: {height: 720}", "params: {height: '720'}"));
    assert_eq!(
        problems(&spec),
        vec!["spec.stages[1].params.height: must be a whole number, not \"720\""]
    );
}

#[test]
fn params_must_be_scalars_even_without_a_profile() {
    let spec = stages(&CHAIN.replace("params: {height: 720}", "params: {height: [720]}"));
    assert_eq!(
        problems_without_profiles(&spec),
        vec!["spec.stages[1].params.height: must be a string, a number or a boolean"]
    );
}

#[test]
fn an_unknown_function_when_all_profiles_are_known() {
    let spec = stages(&CHAIN.replace("function: stitch", "function: stich"));
    assert_eq!(
        problems(&spec),
        vec![
            "spec.stages[2].function: no FunctionProfile named \"stich\" (did you mean \"stitch\"?)"
        ]
    );
    assert_eq!(problems_without_profiles(&spec), Vec::<String>::new());
}

#[test]
fn overrides_are_checked() {
    let spec = stages(&CHAIN.replace(
        "params: {height: 720}",
        "params: {height: 720}, overrides: {cpu: '0', gpu: 1.5, minScale: 5, maxScale: 2}",
    ));
    assert_eq!(
        problems(&spec),
        vec![
            "spec.stages[1].overrides.cpu: must be more than zero",
            "spec.stages[1].overrides.gpu: 1.5 GPUs: above 1, use whole GPUs (a share is only possible within one GPU)",
            "spec.stages[1].overrides.minScale: minScale 5 is above maxScale 2",
        ]
    );
}

#[test]
fn outputs_inside_the_trigger_prefix_would_loop() {
    let spec = format!(
        "trigger: {{type: S3, prefix: videos/}}\noutputPrefix: videos/out/\n{}",
        stages(CHAIN)
    );
    assert_eq!(
        problems(&spec),
        vec![
            "spec.outputPrefix: outputs under \"videos/out/\" are inside the trigger's prefix \"videos/\", so every output would start another run; use separate prefixes"
        ]
    );
}

// Issue 17: `outputPrefix: ../../x/` passed validation and failed mid-run.
#[test]
fn an_output_prefix_that_leaves_the_bucket_or_is_ambiguous_is_refused() {
    for (prefix, why) in [
        ("../../x/", "must not contain a '.' or '..' part"),
        ("out/./x/", "must not contain a '.' or '..' part"),
        ("/abs/", "must be relative to the bucket (no leading '/')"),
        ("out//x/", "must not contain an empty part ('//')"),
        (
            "out\\\\x/",
            "must not contain a backslash or a control character",
        ),
    ] {
        let spec = format!("outputPrefix: {prefix:?}\n{}", stages(CHAIN));
        let got = problems(&spec);
        assert_eq!(got.len(), 1, "{prefix}: {got:?}");
        assert!(
            got[0].starts_with("spec.outputPrefix: ") && got[0].ends_with(why),
            "{prefix}: {got:?}"
        );
    }
    for fine in ["", "outputs/", "a/b-c_d.e/", "out"] {
        let spec = format!("outputPrefix: {fine:?}\n{}", stages(CHAIN));
        assert_eq!(problems(&spec), Vec::<String>::new(), "{fine:?}");
    }
}

#[test]
fn prefix_on_a_manual_trigger() {
    let spec = format!("trigger: {{type: Manual, suffix: .mp4}}\n{}", stages(CHAIN));
    assert_eq!(
        problems(&spec),
        vec!["spec.trigger: prefix and suffix only apply to the S3 trigger"]
    );
}

#[test]
fn bad_bucket_and_endpoint() {
    let spec = stages(CHAIN);
    let mut wf = workflow(&spec);
    wf.spec.storage.bucket = "My_Bucket".into();
    wf.spec.storage.endpoint = Some("minio:9000".into());
    let got: Vec<String> = validate_workflow(&wf, &example_profiles())
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        vec![
            "spec.storage.bucket: \"My_Bucket\" is not a valid bucket name: 3 to 63 lowercase letters, digits, '.' and '-'",
            "spec.storage.endpoint: \"minio:9000\" is not an http:// or https:// URL",
        ]
    );
}

#[test]
fn stage_names_must_be_dns_labels_that_fit_with_the_workflow_name() {
    let mut wf = workflow(&stages(CHAIN));
    wf.spec.stages[1].name = "Scale_720".into();
    wf.spec.stages[2].after = vec!["Scale_720".into()];
    wf.metadata.name = Some("a".repeat(40));
    wf.spec.stages[0].name = "s".repeat(25);
    wf.spec.stages[1].after = vec!["s".repeat(25)];
    let got: Vec<String> = validate_workflow(&wf, &example_profiles())
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        vec![
            format!(
                "spec.stages[0].name: \"{}-{}\" (workflow and stage name) is longer than 63 characters; it names the stage's Deployment and Service",
                "a".repeat(40),
                "s".repeat(25)
            ),
            "spec.stages[1].name: \"Scale_720\" is not a valid stage name: use at most 30 lowercase letters, digits and '-', starting with a letter".to_string(),
        ]
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let spec = stages(
        "
- {name: split, function: segment, fanOut: true}
- {name: scale, function: scale, after: [split], params: {height: 100000}}
- {name: stitch, function: stitch, after: [scael], join: true}
- {name: thumbs, function: thumbnail, when: {condition: 'detect.objects > 0'}}
- {name: sprite, function: sprite, after: [thumbs], join: true}",
    );
    let got = problems(&spec);
    for expected in [
        "spec.stages[2].after[0]: no stage named \"scael\" (did you mean \"scale\"?)",
        "spec.stages[1].params.height: 100000 is above the maximum 4320",
        "spec.stages[4].join: nothing to join: no stage before this one fans out into segments",
        "spec.stages: 2 stages have no \"after\" (split, thumbs); exactly one stage reads the run's input, the others need \"after\"",
        "spec.stages[3].when.condition: a stage with no \"after\" has no earlier stage whose metadata it could test",
    ] {
        assert!(
            got.contains(&expected.to_string()),
            "missing {expected:?} in {got:#?}"
        );
    }
    assert_eq!(got.len(), 5, "{got:#?}");
}

#[test]
fn a_stage_cannot_both_fan_out_and_join() {
    let spec = stages(&CHAIN.replace(
        "after: [scale], join: true",
        "after: [scale], join: true, fanOut: true",
    ));
    let got = problems(&spec);
    assert!(
        got.contains(&"spec.stages[2]: a stage cannot both fan out and join".to_string()),
        "{got:?}"
    );
}
