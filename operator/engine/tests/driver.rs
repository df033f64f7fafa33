//! The engine end to end on a fake backend and a store in a temporary directory.

mod common;
mod fake;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use vflow_api::{FunctionProfile, VideoWorkflow};
use vflow_engine::engine::{BACKOFF_SPREAD, RUN_RECORD, backoff_base};
use vflow_engine::record::{RunRecord, UnitRecord, UnitStatus};
use vflow_engine::{Engine, RunOptions, RunOutcome, RunPhase};
use vflow_storage::{Location, Store};

use fake::{Fake, oom_killed, unavailable, usage_error};
use vflow_contract::exit::Exit;
use vflow_contract::invocation::{InvokeFailure, Phase};
use vflow_engine::backend::BackendError;

const INPUT: &str = "file:///in/video.mp4";

fn profiles(workflow: &VideoWorkflow) -> BTreeMap<String, FunctionProfile> {
    workflow
        .spec
        .stages
        .iter()
        .map(|s| {
            let spec = serde_json::from_value(json!({
                "image": "x", "command": ["f"], "resources": {"cpu": "1", "memory": "1Gi"}
            }))
            .expect("profile spec");
            (s.function.clone(), FunctionProfile::new(&s.function, spec))
        })
        .collect()
}

fn engine(workflow: &VideoWorkflow, backend: &Arc<Fake>) -> Engine<Fake> {
    Engine::new(
        workflow,
        profiles(workflow),
        backend.clone(),
        Store::local_only(),
    )
    .expect("engine")
}

/// A run whose outputs (and record) go under `<dir>/store/r1/`.
fn options(dir: &tempfile::TempDir) -> RunOptions {
    RunOptions {
        run: "r1".into(),
        input: INPUT.into(),
        prefix: Location::Local(dir.path().join("store/r1/")),
        params: BTreeMap::new(),
        prewarm: Vec::new(),
        default_max_instances: 2,
        plan: None,
        fixed_prewarm: false,
    }
}

async fn run(engine: &Engine<Fake>, opts: &RunOptions) -> RunRecord {
    let (_cancel, rx) = watch::channel(false);
    let outcome: RunOutcome = engine.run(opts, rx).await;
    assert_eq!(outcome.unreadable, None);
    outcome.record
}

fn record_path(opts: &RunOptions) -> PathBuf {
    let Location::Local(dir) = &opts.prefix else {
        panic!("a local prefix")
    };
    dir.join(RUN_RECORD)
}

fn stored_record(opts: &RunOptions) -> RunRecord {
    let bytes = std::fs::read(record_path(opts)).expect("the run record");
    serde_json::from_slice(&bytes).expect("a run record")
}

fn unit<'r>(record: &'r RunRecord, stage: &str, segment: Option<u32>) -> &'r UnitRecord {
    record
        .unit(stage, segment)
        .unwrap_or_else(|| panic!("no unit {stage} {segment:?}"))
}

fn segments_called(backend: &Fake, stage: &str) -> Vec<Option<u32>> {
    let mut segments: Vec<_> = backend.calls_to(stage).iter().map(|c| c.segment).collect();
    segments.sort();
    segments
}

/// split, scale and stitch with `scale`'s retries set.
fn with_scale_retries(retries: u32) -> VideoWorkflow {
    common::workflow(json!([
        {"name": "split", "function": "segment", "fanOut": true},
        {"name": "scale", "function": "scale", "after": ["split"],
         "overrides": {"retries": retries}},
        {"name": "stitch", "function": "stitch", "after": ["scale"], "join": true},
    ]))
}

#[tokio::test]
async fn fan_out_and_join_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(&dir);
    let backend = Arc::new(Fake::new().outputs("split", 3));
    let mut engine = engine(&common::split_scale_stitch(), &backend);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let phases = seen.clone();
    engine.on_progress(move |r| phases.lock().expect("phases").push(r.phase));

    let record = run(&engine, &opts).await;

    assert_eq!(record.phase, RunPhase::Succeeded, "{:?}", record.message);
    assert_eq!(record.segments, Some(3));
    let split = backend.calls_to("split");
    assert_eq!(split.len(), 1);
    assert_eq!(split[0].inputs, vec![INPUT]);
    let split_outputs = &unit(&record, "split", None).outputs;
    assert_eq!(split_outputs.len(), 3);
    assert_eq!(segments_called(&backend, "scale"), [0, 1, 2].map(Some));
    for call in backend.calls_to("scale") {
        let segment = call.segment.expect("a segment") as usize;
        assert_eq!(call.inputs, vec![split_outputs[segment].clone()]);
        assert!(
            call.output_prefix
                .ends_with(&format!("/scale/{segment:05}/")),
            "{}",
            call.output_prefix
        );
        assert_eq!(call.params.get("height"), Some(&json!(480)));
    }
    let stitch = backend.calls_to("stitch");
    assert_eq!(stitch.len(), 1);
    let scaled: Vec<String> = (0..3)
        .flat_map(|s| unit(&record, "scale", Some(s)).outputs.clone())
        .collect();
    assert_eq!(stitch[0].inputs, scaled, "every segment, in segment order");
    assert_eq!(record.executed_attempts(), 5);
    assert!(record.finished_at.is_some());
    assert_eq!(
        stored_record(&opts),
        record,
        "the final record is persisted"
    );
    let phases = seen.lock().expect("phases").clone();
    assert_eq!(phases.first(), Some(&RunPhase::Running));
    assert_eq!(phases.last(), Some(&RunPhase::Succeeded));
}

#[tokio::test(start_paused = true)]
async fn segments_go_out_largest_first_and_no_more_than_the_instances_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(&dir); // at most 2 instances a stage, one invocation each
    let backend = Arc::new(
        Fake::new()
            .sized_outputs("split", &[30, 90, 10, 60, 20])
            .slow("scale", Duration::from_secs(10)),
    );
    let engine = engine(&common::split_scale_stitch(), &backend);

    let record = run(&engine, &opts).await;

    assert_eq!(record.phase, RunPhase::Succeeded, "{:?}", record.message);
    assert_eq!(
        unit(&record, "split", None).output_bytes,
        [30, 90, 10, 60, 20]
    );
    let order: Vec<Option<u32>> = backend
        .calls_to("scale")
        .iter()
        .map(|c| c.segment)
        .collect();
    let (first, rest) = order.split_at(2);
    let mut first = first.to_vec();
    first.sort();
    assert_eq!(
        first,
        [Some(1), Some(3)],
        "the two largest start together: {order:?}"
    );
    assert_eq!(rest, [Some(0), Some(4), Some(2)], "then by size: {order:?}");
    assert_eq!(backend.most_at_once("scale"), 2);
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_are_retried_with_backoff_until_one_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(&dir);
    // Two retries: the third attempt is the last, and it succeeds.
    let backend = Arc::new(Fake::new().failing("scale", 2, unavailable()));
    let engine = engine(&with_scale_retries(2), &backend);

    let started = Instant::now();
    let record = run(&engine, &opts).await;
    let waited = started.elapsed();

    assert_eq!(record.phase, RunPhase::Succeeded, "{:?}", record.message);
    assert_eq!(backend.calls_to("scale").len(), 3);
    let attempts = &unit(&record, "scale", Some(0)).attempts;
    let errors: Vec<Option<&str>> = attempts.iter().map(|a| a.error.as_deref()).collect();
    assert_eq!(
        errors,
        vec![Some("instance went away"), Some("instance went away"), None]
    );
    assert_eq!(attempts[2].instance, "fake-0");
    // Each backoff is spread over 75-125% of its base (so a burst does not retry in
    // lockstep).
    let base = backoff_base(1) + backoff_base(2);
    let (least, most) = (
        base.mul_f64(BACKOFF_SPREAD.0),
        base.mul_f64(BACKOFF_SPREAD.1),
    );
    assert!(
        waited >= least && waited < most + Duration::from_secs(1),
        "waited {waited:?}, backoff between {least:?} and {most:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stage_that_keeps_failing_fails_the_run_when_its_retries_run_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(&dir);
    let backend = Arc::new(Fake::new().failing("scale", u32::MAX, unavailable()));
    let engine = engine(&with_scale_retries(1), &backend);

    let record = run(&engine, &opts).await;

    assert_eq!(record.phase, RunPhase::Failed);
    assert_eq!(
        record.message.as_deref(),
        Some("stage scale segment 0 failed after 2 attempt(s): instance went away")
    );
    assert_eq!(backend.calls_to("scale").len(), 2, "one try and one retry");
    assert_eq!(unit(&record, "scale", Some(0)).status, UnitStatus::Failed);
    assert_eq!(unit(&record, "scale", Some(0)).attempts.len(), 2);
    assert!(backend.calls_to("stitch").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_non_retryable_error_is_not_retried_and_the_message_names_the_stage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(&dir);
    let backend = Arc::new(Fake::new().failing("scale", u32::MAX, usage_error()));
    let engine = engine(&with_scale_retries(3), &backend);

    let started = Instant::now();
    let record = run(&engine, &opts).await;

    assert_eq!(record.phase, RunPhase::Failed);
    assert_eq!(
        record.message.as_deref(),
        Some(
            "stage scale segment 0 failed after 1 attempt(s): \
             function exited with code 2\nunknown option --height"
        )
    );
    assert_eq!(backend.calls_to("scale").len(), 1);
    assert!(
        started.elapsed() < backoff_base(1).mul_f64(BACKOFF_SPREAD.0),
        "no backoff was waited"
    );
    assert_eq!(stored_record(&opts).phase, RunPhase::Failed);
}

#[tokio::test]
async fn a_resumed_run_does_not_invoke_done_units_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(&dir);
    let workflow = common::split_scale_stitch();
    let broken = Arc::new(Fake::new().outputs("split", 2).failing(
        "stitch",
        u32::MAX,
        usage_error(),
    ));
    let first = run(&engine(&workflow, &broken), &opts).await;
    assert_eq!(first.phase, RunPhase::Failed);
    assert_eq!(broken.calls().len(), 4, "split, two scales, stitch");

    let good = Arc::new(Fake::new().outputs("split", 2));
    let second = run(&engine(&workflow, &good), &opts).await;

    assert_eq!(second.phase, RunPhase::Succeeded, "{:?}", second.message);
    assert_eq!(second.sessions, 2);
    let again: Vec<String> = good.calls().into_iter().map(|c| c.stage).collect();
    assert_eq!(again, vec!["stitch"], "only what had not succeeded runs");
    assert_eq!(unit(&second, "scale", Some(1)).attempts.len(), 1);
    // The failed attempt stays in the history, before the one that succeeded.
    let stitch = &unit(&second, "stitch", None).attempts;
    assert_eq!(stitch.len(), 2);
    assert!(stitch[0].error.is_some() && stitch[1].error.is_none());

    // A run that succeeded is not run again.
    let idle = Arc::new(Fake::new());
    let third = run(&engine(&workflow, &idle), &opts).await;
    assert!(idle.calls().is_empty());
    assert_eq!(third.sessions, 2);
}

#[tokio::test]
async fn complete_outputs_of_an_interrupted_unit_are_reused_for_the_same_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(&dir);
    let workflow = common::split_scale_stitch();
    let first = Arc::new(Fake::new());
    assert_eq!(
        run(&engine(&workflow, &first), &opts).await.phase,
        RunPhase::Succeeded
    );
    // As if the process had died after stitch wrote its completion record.
    let interrupt = |opts: &RunOptions| {
        let mut record = stored_record(opts);
        record.phase = RunPhase::Running;
        if let Some(u) = record.unit_mut("stitch", None) {
            u.status = UnitStatus::Running;
            u.attempts.clear();
        }
        let bytes = serde_json::to_vec(&record).expect("encode");
        std::fs::write(record_path(opts), bytes).expect("write the record");
    };

    // Different parameters: the earlier outputs do not count.
    interrupt(&opts);
    opts.params
        .insert("stitch".into(), BTreeMap::from([("crf".into(), json!(30))]));
    let changed = Arc::new(Fake::new());
    let record = run(&engine(&workflow, &changed), &opts).await;
    assert_eq!(record.phase, RunPhase::Succeeded);
    assert_eq!(changed.calls_to("stitch").len(), 1);

    // The same request again: taken from the completion record, nothing runs.
    interrupt(&opts);
    let same = Arc::new(Fake::new());
    let record = run(&engine(&workflow, &same), &opts).await;
    assert_eq!(record.phase, RunPhase::Succeeded);
    assert!(same.calls().is_empty(), "{:?}", same.calls());
    let stitch = unit(&record, "stitch", None);
    assert_eq!(stitch.attempts.len(), 1);
    assert!(stitch.attempts[0].reused);
    assert_eq!(
        record.executed_attempts(),
        2,
        "split and scale, from the first run"
    );
}

#[tokio::test]
async fn a_false_condition_skips_the_unit_and_the_join_still_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(&dir);
    let backend = Arc::new(Fake::new().outputs("split", 3).metadata(|request| {
        let mut m = serde_json::Map::new();
        if request.stage == "detect" {
            // Objects only in segments 1 and 2.
            m.insert("objects".into(), json!(request.segment.unwrap_or(0)));
        }
        m
    }));
    let engine = engine(&common::conditional_blur(), &backend);

    let record = run(&engine, &opts).await;

    assert_eq!(record.phase, RunPhase::Succeeded, "{:?}", record.message);
    assert_eq!(segments_called(&backend, "detect"), [0, 1, 2].map(Some));
    assert_eq!(segments_called(&backend, "blur"), [1, 2].map(Some));
    let skipped = unit(&record, "blur", Some(0));
    assert_eq!(skipped.status, UnitStatus::Skipped);
    assert_eq!(skipped.outputs, unit(&record, "detect", Some(0)).outputs);
    let stitch = backend.calls_to("stitch");
    assert_eq!(stitch.len(), 1);
    let expected: Vec<String> = [
        &unit(&record, "detect", Some(0)).outputs,
        &unit(&record, "blur", Some(1)).outputs,
        &unit(&record, "blur", Some(2)).outputs,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect();
    assert_eq!(stitch[0].inputs, expected);
}

#[tokio::test(start_paused = true)]
async fn prewarm_requests_go_out_when_due() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(&dir);
    opts.prewarm = vec![
        ("scale".into(), 0.0, 3),
        ("stitch".into(), 5.0, 2),
        ("no-such-stage".into(), 1.0, 1),
    ];
    let backend = Arc::new(Fake::new().slow("scale", Duration::from_secs(10)));
    let engine = engine(&common::split_scale_stitch(), &backend);

    let record = run(&engine, &opts).await;

    assert_eq!(record.phase, RunPhase::Succeeded, "{:?}", record.message);
    let sent = backend.prewarms();
    let stages: Vec<(&str, u32)> = sent.iter().map(|(s, n, _)| (s.as_str(), *n)).collect();
    assert_eq!(stages, vec![("scale", 3), ("stitch", 2)]);
    assert!(sent[0].2 < Duration::from_secs(1), "{:?}", sent[0].2);
    assert!(
        sent[1].2 >= Duration::from_secs(5) && sent[1].2 < Duration::from_secs(10),
        "stitch pre-warmed at {:?}, while scale still ran",
        sent[1].2
    );
}

#[tokio::test]
async fn cancel_stops_the_run_and_the_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(&dir);
    let backend = Arc::new(Fake::new().hanging("scale"));
    let engine = Arc::new(engine(&common::split_scale_stitch(), &backend));
    let (cancel, rx) = watch::channel(false);
    let running = {
        let engine = engine.clone();
        let opts = opts.clone();
        tokio::spawn(async move { engine.run(&opts, rx).await })
    };
    backend.entered.notified().await;
    cancel.send_replace(true);
    let record = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the run stops")
        .expect("the run's task")
        .record;

    assert_eq!(record.phase, RunPhase::Cancelled);
    assert_eq!(record.message.as_deref(), Some("cancelled"));
    assert_eq!(backend.shutdowns.load(Ordering::SeqCst), 1);
    assert!(backend.calls_to("stitch").is_empty());
    assert_eq!(stored_record(&opts).phase, RunPhase::Cancelled);
}

#[tokio::test]
async fn a_fan_out_that_writes_no_segments_fails_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(&dir);
    let backend = Arc::new(Fake::new().outputs("split", 0));
    let engine = engine(&common::split_scale_stitch(), &backend);

    let record = run(&engine, &opts).await;

    assert_eq!(record.phase, RunPhase::Failed);
    assert_eq!(
        record.message.as_deref(),
        Some("stage split wrote no segments")
    );
    assert_eq!(backend.calls().len(), 1, "nothing after split runs");
}

// Issue 17: an OOM-killed invocation (a decompression bomb) was retried as transient.
// The same input needs the same memory: it fails at once, naming the input, and the
// OOM is learned (the next plan raises the stage's memory).
#[tokio::test(start_paused = true)]
async fn an_attempt_killed_for_memory_fails_naming_its_input_and_is_counted_as_an_oom() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(&dir);
    let workflow = with_scale_retries(2);
    let backend = Arc::new(
        Fake::new()
            .outputs("split", 1)
            .failing("scale", 1, oom_killed()),
    );
    let engine = engine(&workflow, &backend);
    let record = run(&engine, &opts).await;
    assert_eq!(record.phase, RunPhase::Failed);
    let message = record.message.clone().unwrap_or_default();
    assert!(
        message.contains("ffmpeg was killed")
            && message.contains("(input s3://videos/in/bomb.mkv)"),
        "{message}"
    );
    assert_eq!(backend.calls_to("scale").len(), 1, "not retried");
    let flags: Vec<bool> = unit(&record, "scale", Some(0))
        .attempts
        .iter()
        .map(|a| a.oom_killed)
        .collect();
    assert_eq!(flags, [true]);
    let mut profiles = profiles(&workflow);
    vflow_engine::learn::fold_run(&engine.graph, &record, &mut profiles);
    let scale = profiles["scale"].status.clone().unwrap_or_default();
    assert_eq!(
        (scale.invocations, scale.failures, scale.oom_kills),
        (1, 1, 1)
    );
}

// Issue 17: any error reading the run's record counted as "no record", and the run
// started over, writing a new record over the old one's progress.
#[tokio::test]
async fn a_record_that_cannot_be_read_is_never_overwritten_and_nothing_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(&dir);
    let backend = Arc::new(Fake::new().outputs("split", 1));
    let engine = engine(&common::split_scale_stitch(), &backend);
    let path = record_path(&opts);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    // Not a run record (a torn write, another tool's file): kept as it is.
    std::fs::write(&path, b"{not json").expect("write");
    let (_cancel, rx) = watch::channel(false);
    let outcome = engine.run(&opts, rx).await;
    let why = outcome.unreadable.expect("refused");
    assert!(why.contains("is not a run record"), "{why}");
    assert_eq!(std::fs::read(&path).expect("kept"), b"{not json");
    // Unreadable (here a directory where the record should be): the same.
    std::fs::remove_file(&path).expect("rm");
    std::fs::create_dir(&path).expect("dir in the way");
    let (_cancel, rx) = watch::channel(false);
    let outcome = engine.run(&opts, rx).await;
    let why = outcome.unreadable.expect("refused");
    assert!(why.contains("could not read the run's record"), "{why}");
    assert!(backend.calls().is_empty(), "nothing ran");
}

// Issue 17: a function that failed on its input (exit 1) was retried twice.
#[tokio::test(start_paused = true)]
async fn a_unit_whose_function_failed_on_its_input_runs_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(&dir);
    let bad_input = BackendError::Failed(InvokeFailure {
        phase: Phase::Function,
        message: "the function failed (exit status 1)".into(),
        input: None,
        exit: Some(Exit::Code { code: 1 }),
        stderr_tail: "vflow-fn scale: error: decoding failed on input in.mkv".into(),
        retryable: false,
        oom_killed: false,
    });
    let backend = Arc::new(
        Fake::new()
            .outputs("split", 1)
            .failing("scale", u32::MAX, bad_input),
    );
    let record = run(&engine(&with_scale_retries(3), &backend), &opts).await;
    assert_eq!(record.phase, RunPhase::Failed);
    assert_eq!(backend.calls_to("scale").len(), 1);
    assert!(
        record
            .message
            .as_deref()
            .is_some_and(|m| m.contains("decoding failed on input in.mkv")),
        "{:?}",
        record.message
    );
}

#[tokio::test]
async fn the_plan_sets_each_stages_instances_and_memory_and_the_minimum_is_warm_from_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workflow = common::split_scale_stitch();
    let mut plan = vflow_planner::plan_workflow(
        &workflow,
        &profiles(&workflow),
        &vflow_planner::PlannerConfig::default(),
    )
    .expect("plan");
    for d in &mut plan.stages {
        if d.name == "scale" {
            d.concurrency = 3;
            d.min_replicas = 2;
            d.max_replicas = Some(5);
            d.size.memory_bytes = 300.0 * 1024.0 * 1024.0;
        }
    }
    let mut opts = options(&dir);
    opts.prewarm = Vec::new();
    opts.plan = Some(plan);
    let backend = Arc::new(Fake::new().outputs("split", 2));
    let engine = engine(&workflow, &backend);
    let scale = engine.target(1, &opts);
    assert_eq!(
        (scale.concurrency, scale.min_instances, scale.max_instances),
        (3, 2, 5)
    );
    assert_eq!(scale.memory_limit_bytes, Some(300 << 20));
    // Without a plan: the profile's concurrency, no minimum, the default maximum.
    let unplanned = engine.target(1, &options(&dir));
    assert_eq!(
        (
            unplanned.min_instances,
            unplanned.max_instances,
            unplanned.memory_limit_bytes
        ),
        (0, 2, None)
    );

    let record = run(&engine, &opts).await;
    assert_eq!(record.phase, RunPhase::Succeeded, "{:?}", record.message);
    let warmed: Vec<(String, u32)> = backend
        .prewarms()
        .into_iter()
        .filter(|(_, _, at)| *at < Duration::from_millis(500))
        .map(|(stage, n, _)| (stage, n))
        .collect();
    assert!(
        warmed.contains(&("scale".to_string(), 2)),
        "the minimum is asked for at the start: {warmed:?}"
    );
}

fn planned(workflow: &VideoWorkflow) -> vflow_planner::WorkflowPlan {
    vflow_planner::plan_workflow(
        workflow,
        &profiles(workflow),
        &vflow_planner::PlannerConfig::default(),
    )
    .expect("plan")
}

#[tokio::test]
async fn a_branch_not_taken_releases_what_was_warmed_for_it_and_only_then() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workflow = common::conditional_blur();
    let mut opts = options(&dir);
    opts.plan = Some(planned(&workflow));
    // blur is warmed at the start, as a speculative schedule would.
    opts.prewarm = vec![("blur".into(), 0.0, 1)];

    // No objects anywhere: blur never runs, and its instance goes.
    let nothing = Arc::new(Fake::new().outputs("split", 2).metadata(|request| {
        let mut m = serde_json::Map::new();
        if request.stage == "detect" {
            m.insert("objects".into(), json!(0));
        }
        m
    }));
    let record = run(&engine(&workflow, &nothing), &opts).await;
    assert_eq!(record.phase, RunPhase::Succeeded, "{:?}", record.message);
    assert!(nothing.calls_to("blur").is_empty());
    let released: Vec<String> = nothing.releases().into_iter().map(|(s, _)| s).collect();
    assert_eq!(released, ["blur"]);

    // Objects in segment 1: blur runs there; nothing is released.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(&dir);
    opts.plan = Some(planned(&workflow));
    opts.prewarm = vec![("blur".into(), 0.0, 1)];
    let some = Arc::new(Fake::new().outputs("split", 2).metadata(|request| {
        let mut m = serde_json::Map::new();
        if request.stage == "detect" {
            m.insert("objects".into(), json!(request.segment.unwrap_or(0)));
        }
        m
    }));
    let record = run(&engine(&workflow, &some), &opts).await;
    assert_eq!(record.phase, RunPhase::Succeeded, "{:?}", record.message);
    assert_eq!(segments_called(&some, "blur"), [Some(1)]);
    assert!(some.releases().is_empty(), "{:?}", some.releases());
}

#[tokio::test(start_paused = true)]
async fn an_early_input_moves_the_warm_up_of_the_stages_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workflow = common::split_scale_stitch();
    let plan = planned(&workflow);
    assert_eq!(plan.prewarm_policy, vflow_api::PrewarmPolicy::JustInTime);
    let at = |stage: &str| {
        plan.prewarm
            .iter()
            .find(|a| a.stage == stage)
            .map(|a| a.at_seconds)
    };
    let expected = at("stitch").expect("stitch is on the schedule");
    let scale_at = at("scale").expect("scale is on the schedule");
    // split takes 0.5 s where the plan expected its 5 s prior: scale's input arrives
    // before anyone asked for scale, so scale starts a cold start later.
    let early = 0.5;
    assert!(early < scale_at);

    let mut opts = options(&dir);
    opts.prewarm = vflow_engine::engine::prewarm_schedule(&plan);
    opts.plan = Some(plan);
    let backend = Arc::new(
        Fake::new()
            .outputs("split", 1)
            .slow("split", Duration::from_secs_f64(early))
            .slow("scale", Duration::from_secs(30)),
    );
    let record = run(&engine(&workflow, &backend), &opts).await;
    assert_eq!(record.phase, RunPhase::Succeeded, "{:?}", record.message);
    let stitch: Vec<f64> = backend
        .prewarms()
        .into_iter()
        .filter(|(s, _, _)| s == "stitch")
        .map(|(_, _, at)| at.as_secs_f64())
        .collect();
    assert_eq!(stitch.len(), 1, "{stitch:?}");
    // Decided from the run's progress: scale started at 0.5 s (the fake's instances are
    // there at once), so stitch is asked for well before the start-of-run schedule
    // said, and not before scale could end.
    assert!(
        stitch[0] < expected - 1.0 && stitch[0] > early,
        "warmed at {:.2} s, from the real arrival, not the expected one ({expected:.2} s)",
        stitch[0]
    );
    let scale: Vec<_> = backend
        .prewarms()
        .into_iter()
        .filter(|(s, _, _)| s == "scale")
        .collect();
    assert!(scale.is_empty(), "scale's input came first: {scale:?}");
}

#[tokio::test]
async fn a_runs_branch_outcomes_count_what_ran_of_what_was_evaluated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(&dir);
    let workflow = common::workflow(json!([
        {"name": "split", "function": "segment", "fanOut": true},
        {"name": "detect", "function": "detect", "after": ["split"]},
        {"name": "blur", "function": "blur", "after": ["detect"],
         "when": {"condition": "detect.objects > 0"}},
        {"name": "mark", "function": "mark", "after": ["blur"],
         "when": {"condition": "blur.blurred > 0"}},
        {"name": "stitch", "function": "stitch", "after": ["mark"], "join": true},
    ]));
    let backend = Arc::new(Fake::new().outputs("split", 3).metadata(|request| {
        let mut m = serde_json::Map::new();
        // Objects in segments 1 and 2; blur says it blurred.
        m.insert("objects".into(), json!(request.segment.unwrap_or(0)));
        m.insert("blurred".into(), json!(1));
        m
    }));
    let engine = engine(&workflow, &backend);
    let record = run(&engine, &opts).await;
    assert_eq!(record.phase, RunPhase::Succeeded, "{:?}", record.message);
    let outcomes = vflow_engine::learn::branch_outcomes(&engine.graph, &record);
    let seen: Vec<(String, u64, u64)> = outcomes
        .into_iter()
        .map(|o| (o.stage, o.taken, o.seen))
        .collect();
    // blur: evaluated in 3 segments, ran in 2. mark: its condition reads blur, which
    // was skipped in segment 0: evaluated in 2 only, ran in both.
    assert_eq!(seen, [("blur".into(), 2, 3), ("mark".into(), 2, 2)]);
}

#[tokio::test(start_paused = true)]
async fn a_draining_engine_lets_running_units_finish_and_leaves_the_rest_to_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(&dir);
    let workflow = common::split_scale_stitch();
    let backend = Arc::new(
        Fake::new()
            .outputs("split", 2)
            .slow("split", Duration::from_secs(10)),
    );
    let mut first = engine(&workflow, &backend);
    let (drain, drained) = watch::channel(false);
    first.drain_on(drained);
    let in_task = opts.clone();
    let going = tokio::spawn(async move {
        let (_cancel, rx) = watch::channel(false);
        first.run(&in_task, rx).await.record
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = drain.send(true);
    let record = going.await.expect("first session");
    // split, in flight when the drain began, finished and is recorded; nothing else
    // started; the run is left Running for the next session.
    assert_eq!(record.phase, RunPhase::Running);
    assert_eq!(unit(&record, "split", None).status, UnitStatus::Done);
    assert!(backend.calls_to("scale").is_empty());
    assert_eq!(stored_record(&opts).phase, RunPhase::Running);

    let record = run(&engine(&workflow, &backend), &opts).await;
    assert_eq!(record.phase, RunPhase::Succeeded, "{:?}", record.message);
    assert_eq!(backend.calls_to("split").len(), 1, "split ran once");
    assert_eq!(record.sessions, 2);
}

// Issue 17 item 2: a fencing token. Engine A (a leader about to be deposed) is slow in
// split; engine B (the next leader) resumes the same run meanwhile and writes its
// record. A learns it at its next write and stops: it invokes nothing more, and B's
// record is not overwritten.
#[tokio::test]
async fn an_engine_whose_record_another_engine_wrote_stops_invoking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(&dir);
    let workflow = common::split_scale_stitch();
    let slow = Arc::new(
        Fake::new()
            .outputs("split", 2)
            .slow("split", Duration::from_secs(2)),
    );
    let deposed = engine(&workflow, &slow);
    let in_task = opts.clone();
    let going = tokio::spawn(async move {
        let (_cancel, rx) = watch::channel(false);
        deposed.run(&in_task, rx).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let next = Arc::new(Fake::new().outputs("split", 2));
    let record = run(&engine(&workflow, &next), &opts).await;
    assert_eq!(record.phase, RunPhase::Succeeded, "{:?}", record.message);

    let outcome = going.await.expect("the deposed engine's task");
    let why = outcome.fenced.expect("the deposed engine was fenced off");
    assert!(why.contains("another operator"), "{why}");
    let stages: Vec<String> = slow.calls().into_iter().map(|c| c.stage).collect();
    assert_eq!(stages, ["split"], "nothing after the split it had sent");
    let stored = stored_record(&opts);
    assert_eq!(
        stored.phase,
        RunPhase::Succeeded,
        "the next engine's record stands"
    );
    assert_eq!(stored.sessions, 2);
}

// Issue 17 item 4: an OOM kill is tried once more with the memory the planner would
// give the stage after it (x1.5 here), where the plan and the backend allow; the retry
// is not one of the unit's retries (it has none here).
#[tokio::test(start_paused = true)]
async fn an_attempt_killed_for_memory_is_tried_once_more_with_the_raised_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workflow = with_scale_retries(0);
    let mut opts = options(&dir);
    opts.plan = Some(planned(&workflow));
    let backend = Arc::new(
        Fake::new()
            .outputs("split", 1)
            .failing("scale", 1, oom_killed())
            .raisable(),
    );
    let record = run(&engine(&workflow, &backend), &opts).await;
    assert_eq!(record.phase, RunPhase::Succeeded, "{:?}", record.message);
    let limits = backend.memory_limits("scale");
    let base = limits.first().copied().flatten().expect("a planned limit");
    assert_eq!(limits, [Some(base), Some((base as f64 * 1.5) as u64)]);
    let flags: Vec<bool> = unit(&record, "scale", Some(0))
        .attempts
        .iter()
        .map(|a| a.oom_killed)
        .collect();
    assert_eq!(flags, [true, false]);

    // A backend that cannot run more memory (a cluster's) fails it at once, as before.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(&dir);
    opts.plan = Some(planned(&workflow));
    let fixed = Arc::new(
        Fake::new()
            .outputs("split", 1)
            .failing("scale", 1, oom_killed()),
    );
    let record = run(&engine(&workflow, &fixed), &opts).await;
    assert_eq!(record.phase, RunPhase::Failed);
    assert_eq!(fixed.calls_to("scale").len(), 1);
}

// At the profile's maximum memory the plan allows no more: one attempt, and the
// message names the input.
#[tokio::test(start_paused = true)]
async fn at_its_maximum_memory_an_oom_killed_unit_is_not_tried_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workflow = with_scale_retries(0);
    let plan = planned(&workflow);
    let memory = plan
        .stages
        .iter()
        .find(|d| d.name == "scale")
        .map(|d| d.size.memory_bytes as u64)
        .expect("scale is planned");
    let mut bounded = profiles(&workflow);
    if let Some(p) = bounded.get_mut("scale") {
        p.spec.bounds =
            Some(serde_json::from_value(json!({"maxMemory": memory.to_string()})).expect("bounds"));
    }
    let mut opts = options(&dir);
    opts.plan = Some(plan);
    let backend = Arc::new(
        Fake::new()
            .outputs("split", 1)
            .failing("scale", 1, oom_killed())
            .raisable(),
    );
    let engine =
        Engine::new(&workflow, bounded, backend.clone(), Store::local_only()).expect("engine");
    let record = run(&engine, &opts).await;
    assert_eq!(record.phase, RunPhase::Failed);
    assert_eq!(backend.calls_to("scale").len(), 1, "no room to raise");
    let message = record.message.unwrap_or_default();
    assert!(
        message.contains("(input s3://videos/in/bomb.mkv)"),
        "{message}"
    );
}
