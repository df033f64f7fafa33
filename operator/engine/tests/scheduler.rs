//! The scheduler's rules on a record alone: no store, no backend, no clock.

mod common;

use std::collections::BTreeMap;

use serde_json::json;
use vflow_api::VideoWorkflow;
use vflow_engine::backend::{FusedMember, StageTarget};
use vflow_engine::record::{Attempt, RunRecord, UnitRecord, UnitStatus};
use vflow_engine::scheduler::{Next, Scheduler, StepOutcome, UnitOutcome};
use vflow_engine::{RunGraph, RunPhase, UnitKey};
use vflow_storage::Location;

const INPUT: &str = "file:///in/video.mp4";

/// What a scheduler borrows: the graph and the run's plain data.
struct Run {
    graph: RunGraph,
    prefix: Location,
    params: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    /// Every stage's instances (one invocation each): room for all of a test's units
    /// unless a test is about that room.
    max_instances: u32,
}

impl Run {
    fn new(workflow: VideoWorkflow) -> Self {
        Self {
            graph: RunGraph::new(&workflow.spec).unwrap_or_else(|e| panic!("graph: {e}")),
            prefix: Location::Local("/store/r1/".into()),
            params: BTreeMap::new(),
            max_instances: 16,
        }
    }

    fn scheduler(&self) -> Scheduler<'_> {
        self.scheduler_fusing("", &[])
    }

    /// A scheduler whose plan fused `members` after `head`.
    fn scheduler_fusing(&self, head: &str, members: &[&str]) -> Scheduler<'_> {
        Scheduler::new(&self.graph, &self.prefix, &self.params, |i| StageTarget {
            fused: if self.graph.stages[i].name == head {
                members
                    .iter()
                    .map(|m| FusedMember {
                        stage: m.to_string(),
                        function: m.to_string(),
                        command: vec!["f".into()],
                        warmup_command: Vec::new(),
                        resident: false,
                        timeout_seconds: 30.0,
                        memory_limit_bytes: None,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            oom_retry_memory_bytes: None,
            memory_raised: false,
            stage: self.graph.stages[i].name.clone(),
            function: self.graph.stages[i].function.clone(),
            command: vec!["f".into()],
            warmup_command: Vec::new(),
            resident: false,
            concurrency: 1,
            min_instances: 0,
            max_instances: self.max_instances,
            timeout_seconds: 60.0,
            memory_limit_bytes: None,
        })
    }

    fn key(&self, stage: &str, segment: Option<u32>) -> UnitKey {
        let stage = self
            .graph
            .stage_index(stage)
            .unwrap_or_else(|| panic!("no stage {stage}"));
        UnitKey { stage, segment }
    }
}

fn record() -> RunRecord {
    RunRecord {
        run: "r1".into(),
        workflow: "wf".into(),
        input: INPUT.into(),
        prefix: "file:///store/r1/".into(),
        phase: RunPhase::Running,
        segments: None,
        units: Vec::new(),
        started_at: 0.0,
        finished_at: None,
        message: None,
        sessions: 1,
    }
}

fn done(outputs: &[&str], metadata: serde_json::Value) -> UnitOutcome {
    UnitOutcome::Done {
        attempts: vec![Attempt::default()],
        outputs: outputs.iter().map(|o| o.to_string()).collect(),
        output_bytes: Vec::new(),
        metadata: metadata.as_object().cloned().unwrap_or_default(),
        chained: Vec::new(),
    }
}

/// (stage, segment) of each unit `next` started, in its order.
fn started(next: &Next) -> Vec<(String, Option<u32>)> {
    next.start
        .iter()
        .map(|d| (d.request.stage.clone(), d.request.segment))
        .collect()
}

fn unit<'r>(record: &'r RunRecord, stage: &str, segment: Option<u32>) -> &'r UnitRecord {
    record
        .unit(stage, segment)
        .unwrap_or_else(|| panic!("no unit {stage} {segment:?}"))
}

fn segs(stage: &str, segments: &[u32]) -> Vec<(String, Option<u32>)> {
    segments
        .iter()
        .map(|&s| (stage.to_string(), Some(s)))
        .collect()
}

#[test]
fn fan_out_fixes_the_segment_count_and_per_segment_stages_get_one_unit_each() {
    let run = Run::new(common::split_scale_stitch());
    let s = run.scheduler();
    let mut r = record();

    let first = s.next(&mut r);
    assert_eq!(started(&first), vec![("split".to_string(), None)]);
    assert_eq!(first.start[0].request.inputs, vec![INPUT]);
    assert_eq!(
        first.start[0].request.output_prefix,
        "file:///store/r1/split/all/"
    );
    assert_eq!(unit(&r, "split", None).status, UnitStatus::Running);
    assert_eq!(r.segments, None, "unknown until split is done");
    assert!(
        s.next(&mut r).start.is_empty(),
        "split is not started twice"
    );

    let split = ["s0.mp4", "s1.mp4", "s2.mp4"];
    assert_eq!(
        s.finish(&mut r, run.key("split", None), done(&split, json!({}))),
        None
    );
    assert_eq!(r.segments, Some(3));
    let scale = s.next(&mut r);
    assert_eq!(started(&scale), segs("scale", &[0, 1, 2]));
    for (i, d) in scale.start.iter().enumerate() {
        // Each segment reads its own segment of split's outputs.
        assert_eq!(d.request.inputs, vec![split[i]]);
        assert_eq!(
            d.request.output_prefix,
            format!("file:///store/r1/scale/{i:05}/")
        );
        assert_eq!(d.request.params.get("height"), Some(&json!(480)));
        assert_eq!(d.target.stage, "scale");
    }
}

/// split's outputs with their sizes, as a response reports them.
fn done_sized(outputs: &[(&str, u64)], metadata: serde_json::Value) -> UnitOutcome {
    UnitOutcome::Done {
        attempts: vec![Attempt::default()],
        outputs: outputs.iter().map(|(o, _)| o.to_string()).collect(),
        output_bytes: outputs.iter().map(|&(_, b)| b).collect(),
        metadata: metadata.as_object().cloned().unwrap_or_default(),
        chained: Vec::new(),
    }
}

#[test]
fn a_stage_runs_at_most_what_its_instances_hold_and_the_largest_segments_first() {
    let mut run = Run::new(common::split_scale_stitch());
    run.max_instances = 2;
    let s = run.scheduler();
    let mut r = record();
    s.next(&mut r);
    let split = [("s0", 30), ("s1", 90), ("s2", 10), ("s3", 60), ("s4", 90)];
    assert_eq!(
        s.finish(
            &mut r,
            run.key("split", None),
            done_sized(&split, json!({}))
        ),
        None
    );
    // Two instances of one slot each: the two largest (90 and 90, the earlier first).
    let first = s.next(&mut r);
    assert_eq!(started(&first), segs("scale", &[1, 4]));
    assert_eq!(first.start[0].request.inputs, vec!["s1"]);
    for seg in [0, 2, 3] {
        assert_eq!(unit(&r, "scale", Some(seg)).status, UnitStatus::Pending);
    }
    assert!(s.next(&mut r).start.is_empty(), "no room until one ends");

    // One ends: the largest of the rest (60), then 30, then 10.
    let mut order = Vec::new();
    for ended in [4, 1, 3, 0, 2] {
        let key = run.key("scale", Some(ended));
        s.finish(&mut r, key, done(&["out"], json!({})));
        order.extend(started(&s.next(&mut r)));
    }
    assert_eq!(
        order,
        segs("scale", &[3, 0, 2])
            .into_iter()
            .chain([("stitch".to_string(), None)])
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_skipped_unit_passes_its_input_sizes_on() {
    let run = Run::new(common::conditional_blur());
    let s = run.scheduler();
    let mut r = record();
    s.next(&mut r);
    s.finish(
        &mut r,
        run.key("split", None),
        done_sized(&[("s0", 7), ("s1", 9)], json!({})),
    );
    s.next(&mut r);
    for seg in 0..2 {
        s.finish(
            &mut r,
            run.key("detect", Some(seg)),
            done_sized(
                &[(&format!("d{seg}"), 100 + seg as u64)],
                json!({"objects": 0}),
            ),
        );
    }
    s.next(&mut r);
    let blur = unit(&r, "blur", Some(1));
    assert_eq!(blur.status, UnitStatus::Skipped);
    assert_eq!(blur.outputs, vec!["d1"]);
    assert_eq!(blur.output_bytes, vec![101]);
}

#[test]
fn join_waits_for_every_segment_and_reads_them_in_segment_order() {
    let run = Run::new(common::split_scale_stitch());
    let s = run.scheduler();
    let mut r = record();
    s.next(&mut r);
    s.finish(
        &mut r,
        run.key("split", None),
        done(&["a", "b", "c"], json!({})),
    );
    assert_eq!(started(&s.next(&mut r)).len(), 3);

    // Out of order, and the join waits until the last one.
    for segment in [2, 0] {
        let out = format!("scaled-{segment}");
        s.finish(
            &mut r,
            run.key("scale", Some(segment)),
            done(&[&out], json!({})),
        );
        assert!(
            s.next(&mut r).start.is_empty(),
            "stitch waits for segment 1"
        );
    }
    s.finish(
        &mut r,
        run.key("scale", Some(1)),
        done(&["scaled-1"], json!({})),
    );
    let stitch = s.next(&mut r);
    assert_eq!(started(&stitch), vec![("stitch".to_string(), None)]);
    assert_eq!(
        stitch.start[0].request.inputs,
        vec!["scaled-0", "scaled-1", "scaled-2"]
    );

    s.finish(&mut r, run.key("stitch", None), done(&["out"], json!({})));
    assert!(s.next(&mut r).start.is_empty());
    s.conclude(&mut r, None);
    assert_eq!(r.phase, RunPhase::Succeeded);
}

#[test]
fn false_condition_skips_with_passthrough_and_downstream_still_runs() {
    let run = Run::new(common::conditional_blur());
    let s = run.scheduler();
    let mut r = record();
    s.next(&mut r);
    s.finish(&mut r, run.key("split", None), done(&["a", "b"], json!({})));
    assert_eq!(started(&s.next(&mut r)), segs("detect", &[0, 1]));
    s.finish(
        &mut r,
        run.key("detect", Some(0)),
        done(&["d0"], json!({"objects": 0})),
    );
    s.finish(
        &mut r,
        run.key("detect", Some(1)),
        done(&["d1"], json!({"objects": 2})),
    );

    let blur = s.next(&mut r);
    assert_eq!(started(&blur), segs("blur", &[1]));
    let skipped = unit(&r, "blur", Some(0));
    assert_eq!(skipped.status, UnitStatus::Skipped);
    assert_eq!(
        skipped.outputs,
        vec!["d0"],
        "detect's output passes through"
    );
    assert_eq!(
        skipped.message.as_deref(),
        Some("skipped: detect.objects > 0 is false")
    );

    s.finish(&mut r, run.key("blur", Some(1)), done(&["b1"], json!({})));
    let stitch = s.next(&mut r);
    assert_eq!(started(&stitch), vec![("stitch".to_string(), None)]);
    assert_eq!(stitch.start[0].request.inputs, vec!["d0", "b1"]);
}

#[test]
fn a_condition_on_a_skipped_stage_counts_as_false() {
    let run = Run::new(common::workflow(json!([
        {"name": "probe", "function": "probe"},
        {"name": "blur", "function": "blur", "after": ["probe"],
         "when": {"condition": "probe.faces > 0"}},
        {"name": "sharpen", "function": "sharpen", "after": ["blur"],
         "when": {"condition": "blur.blurred == true"}},
    ])));
    let s = run.scheduler();
    let mut r = record();
    s.next(&mut r);
    s.finish(
        &mut r,
        run.key("probe", None),
        done(&["probed.mp4"], json!({"faces": 0})),
    );

    let next = s.next(&mut r);
    assert!(next.start.is_empty(), "{:?}", started(&next));
    assert_eq!(next.failure, None, "no metadata of blur is not an error");
    let sharpen = unit(&r, "sharpen", None);
    assert_eq!(sharpen.status, UnitStatus::Skipped);
    assert_eq!(
        sharpen.message.as_deref(),
        Some("skipped: blur.blurred == true reads blur, which was skipped")
    );
    assert_eq!(sharpen.outputs, vec!["probed.mp4"], "passed through twice");
    s.conclude(&mut r, next.failure);
    assert_eq!(r.phase, RunPhase::Succeeded);
}

#[test]
fn a_condition_that_cannot_be_evaluated_fails_the_run() {
    let run = Run::new(common::conditional_blur());
    let s = run.scheduler();
    let mut r = record();
    s.next(&mut r);
    s.finish(&mut r, run.key("split", None), done(&["a"], json!({})));
    s.next(&mut r);
    // detect wrote no `objects`.
    s.finish(
        &mut r,
        run.key("detect", Some(0)),
        done(&["d0"], json!({"faces": 1})),
    );

    let next = s.next(&mut r);
    assert!(next.start.is_empty());
    let failure = next
        .failure
        .unwrap_or_else(|| panic!("the condition cannot be evaluated"));
    assert!(
        failure.starts_with("stage blur segment 0: cannot evaluate its condition"),
        "{failure}"
    );
    assert_eq!(unit(&r, "blur", Some(0)).status, UnitStatus::Pending);
    s.conclude(&mut r, Some(failure.clone()));
    assert_eq!(r.phase, RunPhase::Failed);
    assert_eq!(r.message, Some(failure));
}

#[test]
fn resume_makes_interrupted_units_pending_and_keeps_done_ones() {
    let run = Run::new(common::split_scale_stitch());
    let s = run.scheduler();
    let mut r = record();
    s.next(&mut r);
    s.finish(
        &mut r,
        run.key("split", None),
        done(&["a", "b", "c"], json!({})),
    );
    s.next(&mut r);
    s.finish(&mut r, run.key("scale", Some(0)), done(&["x0"], json!({})));
    s.finish(
        &mut r,
        run.key("scale", Some(2)),
        UnitOutcome::Failed {
            attempts: vec![Attempt::default()],
            message: "boom".into(),
        },
    );
    // The process stopped here: scale 1 still Running, the run still Running.
    assert_eq!(unit(&r, "scale", Some(1)).status, UnitStatus::Running);

    Scheduler::resume(&mut r);
    assert_eq!(r.sessions, 2);
    assert_eq!(r.phase, RunPhase::Running);
    for segment in [1, 2] {
        let u = unit(&r, "scale", Some(segment));
        assert_eq!(u.status, UnitStatus::Pending, "segment {segment}");
        assert_eq!(u.message, None);
    }
    assert_eq!(
        unit(&r, "scale", Some(2)).attempts.len(),
        1,
        "history stays"
    );
    assert_eq!(unit(&r, "scale", Some(0)).status, UnitStatus::Done);

    let next = s.next(&mut r);
    assert_eq!(started(&next), segs("scale", &[1, 2]));
    assert_eq!(next.start[0].request.inputs, vec!["b"]);
}

#[test]
fn a_fan_out_that_wrote_no_segments_fails_the_run() {
    let run = Run::new(common::split_scale_stitch());
    let s = run.scheduler();
    let mut r = record();
    s.next(&mut r);
    let failure = s.finish(&mut r, run.key("split", None), done(&[], json!({})));
    assert_eq!(failure.as_deref(), Some("stage split wrote no segments"));
    assert_eq!(r.segments, Some(0));
    s.conclude(&mut r, failure);
    assert_eq!(r.phase, RunPhase::Failed);
    assert_eq!(r.message.as_deref(), Some("stage split wrote no segments"));
}

#[test]
fn a_failed_unit_fails_the_run_and_running_ones_start_again_later() {
    let run = Run::new(common::split_scale_stitch());
    let s = run.scheduler();
    let mut r = record();
    s.next(&mut r);
    s.finish(&mut r, run.key("split", None), done(&["a", "b"], json!({})));
    s.next(&mut r);
    let failure = s.finish(
        &mut r,
        run.key("scale", Some(1)),
        UnitOutcome::Failed {
            attempts: vec![Attempt::default(), Attempt::default()],
            message: "exit 1".into(),
        },
    );
    assert_eq!(
        failure.as_deref(),
        Some("stage scale segment 1 failed after 2 attempt(s): exit 1")
    );
    assert_eq!(unit(&r, "scale", Some(1)).status, UnitStatus::Failed);
    s.conclude(&mut r, failure);
    assert_eq!(r.phase, RunPhase::Failed);
    // Segment 0 was aborted with the run: not done, so not left as Running.
    assert_eq!(unit(&r, "scale", Some(0)).status, UnitStatus::Pending);
}

#[test]
fn a_run_with_units_that_never_became_ready_did_not_succeed() {
    let run = Run::new(common::split_scale_stitch());
    let s = run.scheduler();
    let mut r = record();
    s.next(&mut r);
    // As if split had been lost: nothing in flight, nothing settled.
    s.conclude(&mut r, None);
    assert_eq!(r.phase, RunPhase::Failed);
    assert_eq!(
        r.message.as_deref(),
        Some("stage split could not start: what it reads never became available")
    );
}

#[test]
fn run_params_override_the_stage_params() {
    let mut run = Run::new(common::split_scale_stitch());
    run.params.insert(
        "scale".into(),
        BTreeMap::from([("height".to_string(), json!(720))]),
    );
    let s = run.scheduler();
    let mut r = record();
    s.next(&mut r);
    s.finish(&mut r, run.key("split", None), done(&["a"], json!({})));
    let next = s.next(&mut r);
    assert_eq!(
        next.start[0].request.params.get("height"),
        Some(&json!(720))
    );
    assert_eq!(next.start[0].request.timeout_seconds, Some(60.0));
    assert_eq!(
        next.start[0].retries, 2,
        "the default when a stage says none"
    );
}

fn split_crop_scale_stitch() -> VideoWorkflow {
    common::workflow(json!([
        {"name": "split", "function": "segment", "fanOut": true},
        {"name": "crop", "function": "crop", "after": ["split"], "params": {"w": 320, "h": 240}},
        {"name": "scale", "function": "scale", "after": ["crop"], "params": {"height": 120}},
        {"name": "stitch", "function": "stitch", "after": ["scale"], "join": true},
    ]))
}

#[test]
fn a_fused_chain_starts_as_one_unit_and_settles_every_stage_of_it() {
    let run = Run::new(split_crop_scale_stitch());
    let s = run.scheduler_fusing("crop", &["scale"]);
    let mut r = record();
    s.next(&mut r);
    s.finish(
        &mut r,
        run.key("split", None),
        done(&["s0.mp4", "s1.mp4"], json!({})),
    );

    let next = s.next(&mut r);
    assert_eq!(
        started(&next),
        segs("crop", &[0, 1]),
        "scale never starts alone"
    );
    for (i, d) in next.start.iter().enumerate() {
        assert_eq!(d.request.inputs, vec![format!("s{i}.mp4")]);
        assert_eq!(d.request.then.len(), 1);
        let step = &d.request.then[0];
        assert_eq!(step.stage, "scale");
        assert_eq!(
            step.output_prefix,
            format!("file:///store/r1/scale/{i:05}/")
        );
        assert_eq!(step.params.get("height"), Some(&json!(120)));
        assert_eq!(step.timeout_seconds, Some(30.0));
        assert_eq!(d.target.fused.len(), 1);
    }
    for seg in [0, 1] {
        assert_eq!(unit(&r, "scale", Some(seg)).status, UnitStatus::Running);
    }
    assert!(s.next(&mut r).start.is_empty());

    for seg in 0..2u32 {
        let outcome = UnitOutcome::Done {
            attempts: vec![Attempt::default()],
            outputs: Vec::new(),
            output_bytes: Vec::new(),
            metadata: Default::default(),
            chained: vec![StepOutcome {
                attempt: Attempt {
                    instance: "pod-a".into(),
                    ..Attempt::default()
                },
                outputs: vec![format!("scaled-{seg}.mp4")],
                output_bytes: vec![1000],
                metadata: json!({"frames": 10})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            }],
        };
        assert_eq!(s.finish(&mut r, run.key("crop", Some(seg)), outcome), None);
        let scale = unit(&r, "scale", Some(seg));
        assert_eq!(scale.status, UnitStatus::Done);
        assert_eq!(scale.outputs, vec![format!("scaled-{seg}.mp4")]);
        assert_eq!(scale.attempts.len(), 1);
        assert_eq!(scale.attempts[0].instance, "pod-a");
        assert_eq!(scale.metadata.get("frames"), Some(&json!(10)));
    }
    let stitch = s.next(&mut r);
    assert_eq!(started(&stitch), vec![("stitch".to_string(), None)]);
    assert_eq!(
        stitch.start[0].request.inputs,
        ["scaled-0.mp4", "scaled-1.mp4"]
    );
    assert!(stitch.start[0].request.then.is_empty());
}

#[test]
fn a_chain_answer_missing_a_step_fails_the_unit() {
    let run = Run::new(split_crop_scale_stitch());
    let s = run.scheduler_fusing("crop", &["scale"]);
    let mut r = record();
    s.next(&mut r);
    s.finish(&mut r, run.key("split", None), done(&["s0.mp4"], json!({})));
    s.next(&mut r);
    let failure = s.finish(&mut r, run.key("crop", Some(0)), done(&[], json!({})));
    assert!(
        failure
            .as_deref()
            .is_some_and(|m| m.contains("answered for 0 of its 1")),
        "{failure:?}"
    );
    assert_eq!(unit(&r, "crop", Some(0)).status, UnitStatus::Failed);
}

#[test]
fn a_plan_that_fuses_what_one_invocation_cannot_run_is_not_followed() {
    let run = Run::new(split_crop_scale_stitch());
    // split fans out: its segments cannot flow into one invocation of crop.
    let s = run.scheduler_fusing("split", &["crop"]);
    let mut r = record();
    let first = s.next(&mut r);
    assert!(first.start[0].request.then.is_empty());
    s.finish(&mut r, run.key("split", None), done(&["s0.mp4"], json!({})));
    assert_eq!(started(&s.next(&mut r)), segs("crop", &[0]));
    // Fusing past a stage that is not the next one in the chain is refused too.
    let s = run.scheduler_fusing("crop", &["stitch"]);
    let mut r = record();
    s.next(&mut r);
    s.finish(&mut r, run.key("split", None), done(&["s0.mp4"], json!({})));
    let next = s.next(&mut r);
    assert!(next.start.iter().all(|d| d.request.then.is_empty()));
    // A conditional stage is never fused.
    let run = Run::new(common::conditional_blur());
    let s = run.scheduler_fusing("detect", &["blur"]);
    let mut r = record();
    s.next(&mut r);
    s.finish(&mut r, run.key("split", None), done(&["s0.mp4"], json!({})));
    let next = s.next(&mut r);
    assert_eq!(started(&next), segs("detect", &[0]));
    assert!(next.start[0].request.then.is_empty());
}
