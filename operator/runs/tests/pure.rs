//! Tests that need no server: status, timings, cost and metrics from an engine record;
//! trigger matching and names. (The annotation contract is checked in the operator's
//! tests, against its own parser.)

mod common;

use std::collections::BTreeMap;

use serde_json::json;
use std::collections::BTreeSet;
use vflow_api::RunPhase;
use vflow_engine::RunGraph;
use vflow_engine::record::{Attempt, RunRecord, UnitRecord, UnitStatus};

use prometheus::Encoder;
use vflow_runs::metrics::RunMetrics;
use vflow_runs::status::{Prices, StageResources, StatusInput, cost, status, timings};
use vflow_runs::trigger::{NewObject, matches, run_for, run_name};

const T0: f64 = 1_800_000_000.0;

fn attempt(at: f64, exec: f64, cold: Option<f64>) -> Attempt {
    Attempt {
        submitted_at: T0 + at,
        finished_at: T0 + at + cold.unwrap_or(0.0) + exec,
        cold_start_seconds: cold,
        function_seconds: exec,
        ..Default::default()
    }
}

fn unit(
    stage: &str,
    segment: Option<u32>,
    status: UnitStatus,
    attempts: Vec<Attempt>,
) -> UnitRecord {
    UnitRecord {
        stage: stage.into(),
        segment,
        status,
        outputs: vec![format!("s3://videos/outputs/r/{stage}/{segment:?}/out.bin")],
        output_bytes: Vec::new(),
        metadata: Default::default(),
        attempts,
        started_at: None,
        message: None,
    }
}

/// split (2 s, cold 3 s) -> copy x3 (1 s, 4 s with a 2 s cold start, 1 s) -> join (1 s).
fn record(finished: bool) -> RunRecord {
    let mut units = vec![
        unit(
            "split",
            None,
            UnitStatus::Done,
            vec![attempt(0.0, 2.0, Some(3.0))],
        ),
        unit(
            "copy",
            Some(0),
            UnitStatus::Done,
            vec![attempt(5.0, 1.0, None)],
        ),
        unit(
            "copy",
            Some(1),
            UnitStatus::Done,
            vec![attempt(5.0, 4.0, Some(2.0))],
        ),
        unit(
            "copy",
            Some(2),
            UnitStatus::Done,
            vec![
                Attempt {
                    error: Some("boom".into()),
                    ..attempt(5.0, 0.0, None)
                },
                attempt(6.0, 1.0, None),
            ],
        ),
    ];
    // A failed attempt held its slot for its wall time.
    units[3].attempts[0].finished_at = T0 + 5.5;
    let mut join = unit(
        "join",
        None,
        if finished {
            UnitStatus::Done
        } else {
            UnitStatus::Running
        },
        if finished {
            vec![attempt(11.0, 1.0, None)]
        } else {
            vec![]
        },
    );
    join.started_at = Some(T0 + 11.0);
    units.push(join);
    RunRecord {
        run: "r".into(),
        workflow: "wf".into(),
        input: "s3://videos/in.bin".into(),
        prefix: "s3://videos/outputs/r/".into(),
        phase: if finished {
            vflow_engine::RunPhase::Succeeded
        } else {
            vflow_engine::RunPhase::Running
        },
        segments: Some(3),
        units,
        started_at: T0,
        finished_at: finished.then_some(T0 + 13.0),
        message: None,
        sessions: 1,
    }
}

fn graph() -> RunGraph {
    let wf = common::workflow("wf", "ns", "http://s3:9000", json!({}));
    RunGraph::new(&wf.spec).expect("graph")
}

#[test]
fn timings_follow_the_critical_path() {
    let t = timings(&graph(), &record(true), 0.0);
    // split 2 + slowest copy 4 + join 1; cold starts on that path: 3 + 2.
    assert_eq!(t.total_seconds, 13.0);
    assert_eq!(t.critical_path_exec_seconds, 7.0);
    assert_eq!(t.overhead_seconds, 6.0);
    assert_eq!(t.cold_start_seconds, 5.0);
}

#[test]
fn a_running_run_is_timed_until_now() {
    let t = timings(&graph(), &record(false), T0 + 20.0);
    assert_eq!(t.total_seconds, 20.0);
    assert_eq!(t.critical_path_exec_seconds, 6.0, "join has not run");
}

#[test]
fn cost_is_resource_seconds_times_prices() {
    let resources = BTreeMap::from([
        (
            "split".to_string(),
            StageResources {
                cpu_cores: 2.0,
                memory_gib: 1.0,
                gpu: 0.0,
                concurrency: 1,
            },
        ),
        (
            "copy".to_string(),
            StageResources {
                cpu_cores: 1.0,
                memory_gib: 2.0,
                gpu: 0.5,
                concurrency: 2,
            },
        ),
    ]);
    let prices = Prices {
        cpu_core_second: 1.0,
        memory_gib_second: 0.1,
        gpu_second: 10.0,
        currency: "EUR".into(),
    };
    let c = cost(&record(true), &resources, &prices);
    // split: 2 s x 2 cores; copy: (1 + 4 + 0.5 failed + 1) s / 2 per invocation;
    // join: no entry -> 1 core, 1 GiB, 1 s.
    let copy_held = (1.0 + 4.0 + 0.5 + 1.0) / 2.0;
    assert!(
        (c.cpu_core_seconds - (4.0 + copy_held + 1.0)).abs() < 1e-3,
        "{c:?}"
    );
    assert!((c.memory_gib_seconds - (2.0 + 2.0 * copy_held + 1.0)).abs() < 1e-3);
    assert!((c.gpu_seconds - 0.5 * copy_held).abs() < 1e-3);
    let want = c.cpu_core_seconds + 0.1 * c.memory_gib_seconds + 10.0 * c.gpu_seconds;
    assert!((c.total - want).abs() < 1e-3);
    assert_eq!(c.currency, "EUR");
}

#[test]
fn status_has_progress_stages_outputs_and_a_condition() {
    let g = graph();
    let sizes = BTreeMap::from([("s3://videos/outputs/r/join/None/out.bin".to_string(), 42)]);
    let running = record(false);
    let s = status(&StatusInput {
        graph: &g,
        record: &running,
        resources: &BTreeMap::new(),
        prices: &Prices::default(),
        sizes: &sizes,
        generation: Some(1),
        now: T0 + 20.0,
    });
    assert_eq!(s.phase, RunPhase::Running);
    assert_eq!(s.progress.as_deref(), Some("4/5"));
    assert!(s.outputs.is_empty() && s.conditions.is_empty() && s.completion_time.is_none());
    let copy = &s.stages[1];
    assert_eq!(
        (copy.name.as_str(), copy.done, copy.total, copy.cold_starts),
        ("copy", 3, 3, 1)
    );
    assert_eq!(copy.exec_seconds, 6.0);
    assert!(copy.completion_time.is_some());
    let join = &s.stages[2];
    assert!(join.completion_time.is_none(), "join not settled");
    assert_eq!(
        join.start_time.as_ref().map(|t| t.0.as_second()),
        Some((T0 + 11.0) as i64),
        "a unit that runs, with no attempt ended yet, says when the stage started"
    );

    let done = record(true);
    let s = status(&StatusInput {
        graph: &g,
        record: &done,
        resources: &BTreeMap::new(),
        prices: &Prices::default(),
        sizes: &sizes,
        generation: Some(1),
        now: T0 + 99.0,
    });
    assert_eq!(s.phase, RunPhase::Succeeded);
    assert_eq!(s.progress.as_deref(), Some("5/5"));
    assert_eq!(s.outputs.len(), 1, "only the sink's outputs");
    assert_eq!(
        (s.outputs[0].stage.as_str(), s.outputs[0].bytes),
        ("join", 42)
    );
    assert_eq!(s.conditions[0].type_, "Succeeded");
    assert_eq!(s.timings.as_ref().map(|t| t.total_seconds), Some(13.0));
    assert!(s.estimated_cost.as_ref().is_some_and(|c| c.total > 0.0));
    let json = serde_json::to_value(&s).expect("json");
    for field in [
        "totalSeconds",
        "criticalPathExecSeconds",
        "overheadSeconds",
        "coldStartSeconds",
    ] {
        assert!(json["timings"].get(field).is_some(), "{field} in {json}");
    }
}

#[test]
fn a_finished_run_is_counted_once_with_every_attempt() {
    let registry = prometheus::Registry::new();
    let m = RunMetrics::register(&registry).expect("metrics");
    let prewarmed: BTreeSet<String> = ["copy", "join", "not-in-the-run"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let cost = vflow_api::Cost {
        total: 0.25,
        currency: "USD".into(),
        ..Default::default()
    };
    // A run still running counts nothing.
    m.finished(
        &graph(),
        &record(false),
        RunPhase::Running,
        &prewarmed,
        None,
    );
    m.finished(
        &graph(),
        &record(true),
        RunPhase::Succeeded,
        &prewarmed,
        Some(&cost),
    );
    let mut buf = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("encode");
    let text = String::from_utf8(buf).expect("utf-8");
    for line in [
        r#"vflow_runs_finished_total{phase="Succeeded"} 1"#,
        r#"vflow_run_duration_seconds_sum{phase="Succeeded"} 13"#,
        r#"vflow_run_invocations_total{function="tsplit",outcome="succeeded"} 1"#,
        r#"vflow_run_invocations_total{function="tcopy",outcome="succeeded"} 3"#,
        r#"vflow_run_invocations_total{function="tcopy",outcome="failed"} 1"#,
        r#"vflow_run_invocations_total{function="tjoin",outcome="succeeded"} 1"#,
        r#"vflow_run_cold_starts_total{function="tsplit"} 1"#,
        r#"vflow_run_cold_starts_total{function="tcopy"} 1"#,
        r#"vflow_run_cold_start_seconds_sum{function="tcopy"} 2"#,
        r#"vflow_run_invocation_exec_seconds_count{function="tcopy"} 3"#,
        // copy's segment 1 waited for a cold start; join found its instance warm.
        r#"vflow_run_prewarm_total{result="miss"} 1"#,
        r#"vflow_run_prewarm_total{result="hit"} 1"#,
        r#"vflow_run_estimated_cost_total{currency="USD"} 0.25"#,
        "vflow_runs_active 0",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
    }
    assert!(!text.contains("tjoin\"} 1\nvflow_run_cold"), "{text}");
    assert!(
        !text.contains(r#"vflow_run_cold_starts_total{function="tjoin"}"#),
        "{text}"
    );
}

#[test]
fn triggers_match_prefix_and_suffix_but_never_outputs_or_internals() {
    let wf = common::workflow(
        "wf",
        "ns",
        "http://s3:9000",
        json!({"trigger": {"type": "S3", "prefix": "", "suffix": ".mp4"}, "outputPrefix": "outputs/"}),
    );
    assert!(matches(&wf, "videos", "in/a.mp4"));
    assert!(!matches(&wf, "other", "in/a.mp4"), "another bucket");
    assert!(!matches(&wf, "videos", "in/a.mov"), "suffix");
    assert!(
        !matches(&wf, "videos", "outputs/r/join/all/a.mp4"),
        "outputs never trigger"
    );
    assert!(!matches(&wf, "videos", ".vflow/triggers/ns/wf.json"));
    let manual = common::workflow("wf", "ns", "http://s3:9000", json!({}));
    assert!(!matches(&manual, "videos", "in/a.mp4"), "manual trigger");
}

#[test]
fn run_names_are_stable_per_object_and_differ_per_content() {
    let o = |key: &str, etag: &str| NewObject {
        bucket: "videos".into(),
        key: key.into(),
        etag: etag.into(),
    };
    let a = run_name("ns", "wf", &o("in/a.mp4", "e1"));
    assert_eq!(
        a,
        run_name("ns", "wf", &o("in/a.mp4", "\"e1\"")),
        "quotes ignored"
    );
    assert_ne!(a, run_name("ns", "wf", &o("in/a.mp4", "e2")));
    assert_ne!(a, run_name("ns2", "wf", &o("in/a.mp4", "e1")));
    assert!(a.starts_with("wf-") && a.len() == 23, "80 bits in hex: {a}");
    let long = "w".repeat(200);
    assert!(run_name("ns", &long, &o("k", "")).len() <= 63);
    let wf = common::workflow(
        "wf",
        "ns",
        "http://s3:9000",
        json!({"trigger": {"type": "S3"}}),
    );
    let run = run_for(&wf, &o("in/a b.mp4", "e1"), "webhook");
    assert_eq!(run.spec.input, "s3://videos/in/a b.mp4");
    assert_eq!(run.spec.workflow_ref.name, "wf");
}

// Issue 17 item 6: a workflow without a secretRef got the operator's credentials
// combined with the endpoint its own spec names.
#[test]
fn the_operators_credentials_go_only_to_the_operators_endpoint() {
    use vflow_runs::storage::with_operator_credentials;
    use vflow_storage::S3Settings;
    let operator = || {
        S3Settings::new(
            Some("http://minio.vflow-system.svc:9000".into()),
            "k".into(),
            "s".into(),
        )
    };
    let elsewhere = common::workflow("wf", "ns", "http://attacker.example:9000", json!({}));
    let err = with_operator_credentials(&elsewhere, operator()).expect_err("refused");
    assert!(
        err.contains("VideoWorkflow ns/wf: storage.endpoint http://attacker.example:9000 needs storage.secretRef")
            && err.contains("(http://minio.vflow-system.svc:9000)"),
        "{err}"
    );
    // The operator on AWS S3 (no endpoint): any endpoint in a spec is refused.
    let aws = S3Settings::new(None, "k".into(), "s".into());
    assert!(with_operator_credentials(&elsewhere, aws.clone()).is_err());
    // Its own endpoint, named or not, is fine.
    let same = common::workflow("wf", "ns", "http://minio.vflow-system.svc:9000/", json!({}));
    let ok = with_operator_credentials(&same, operator()).expect("same endpoint");
    assert_eq!(ok.access_key_id, "k");
    let mut unnamed = same.clone();
    unnamed.spec.storage.endpoint = None;
    assert_eq!(
        with_operator_credentials(&unnamed, operator())
            .expect("no endpoint")
            .endpoint
            .as_deref(),
        Some("http://minio.vflow-system.svc:9000")
    );
    assert_eq!(
        with_operator_credentials(&unnamed, aws)
            .expect("aws")
            .endpoint,
        None
    );
}

#[test]
fn a_workflow_without_an_endpoint_gets_the_operators_default() {
    use vflow_runs::storage::apply_spec;
    use vflow_storage::S3Settings;
    let creds = || S3Settings::new(None, "k".into(), "s".into());
    let named = common::workflow("wf", "ns", "http://named:9000", json!({}));
    let mut unnamed = named.clone();
    unnamed.spec.storage.endpoint = None;
    let default = Some("http://minio.vflow-system.svc:9000".to_string());
    assert_eq!(
        apply_spec(&named, creds(), default.clone())
            .endpoint
            .as_deref(),
        Some("http://named:9000"),
        "the workflow's own endpoint wins"
    );
    assert_eq!(
        apply_spec(&unnamed, creds(), default.clone()).endpoint,
        default
    );
    assert_eq!(
        apply_spec(&unnamed, creds(), None).endpoint,
        None,
        "neither: AWS S3"
    );
}

// Issue 17 item 7: nothing capped the runs driven at once.
#[test]
fn runs_wait_for_a_slot_per_operator_and_per_workflow() {
    use std::collections::HashMap;
    use vflow_runs::RunsConfig;
    use vflow_runs::controller::admit;
    let config = RunsConfig {
        max_active: 3,
        max_active_per_workflow: 2,
        ..RunsConfig::default()
    };
    let mut active: HashMap<String, String> = HashMap::new();
    assert_eq!(admit(&active, "ns/a", &config), Ok(()));
    active.insert("r1".into(), "ns/a".into());
    active.insert("r2".into(), "ns/a".into());
    let err = admit(&active, "ns/a", &config).expect_err("a is at its cap");
    assert!(
        err.contains("2 runs of this workflow") && err.contains("runs.maxActivePerWorkflow 2"),
        "{err}"
    );
    assert_eq!(
        admit(&active, "other/a", &config),
        Ok(()),
        "per workflow, by namespace too"
    );
    active.insert("r3".into(), "ns/b".into());
    let err = admit(&active, "ns/c", &config).expect_err("the operator is at its cap");
    assert!(err.contains("runs.maxActive 3"), "{err}");
    let uncapped = RunsConfig {
        max_active: 0,
        max_active_per_workflow: 0,
        ..RunsConfig::default()
    };
    assert_eq!(admit(&active, "ns/a", &uncapped), Ok(()));
    // From the environment; a bad number names the variable.
    let vars = |k: &str| match k {
        "VFLOW_RUNS_MAX_ACTIVE" => Some("10".to_string()),
        "VFLOW_RUNS_MAX_ACTIVE_PER_WORKFLOW" => Some("many".to_string()),
        _ => None,
    };
    let err = RunsConfig::from_vars(vars).err().expect("refused");
    assert!(
        err.contains("VFLOW_RUNS_MAX_ACTIVE_PER_WORKFLOW=many"),
        "{err}"
    );
}

#[test]
fn quality_goes_into_the_status_per_stage_of_segments_and_per_whole_output() {
    let g = graph();
    let mut done = record(true);
    let figure = |psnr: f64, frames: u64| {
        serde_json::from_value(json!({"psnr": psnr, "psnrMin": psnr - 2.0, "ssim": 0.98, "vmaf": null, "frames": frames}))
            .expect("metadata")
    };
    // Three segments at 40 dB, 40 dB and 30 dB (30 frames each), and the joined whole.
    for (unit, psnr) in done.units[1..4].iter_mut().zip([40.0, 40.0, 30.0]) {
        unit.metadata = figure(psnr, 30);
    }
    done.units[4].metadata = figure(35.0, 90);
    let s = status(&StatusInput {
        graph: &g,
        record: &done,
        resources: &BTreeMap::new(),
        prices: &Prices::default(),
        sizes: &BTreeMap::new(),
        generation: Some(1),
        now: T0 + 99.0,
    });
    let stages: Vec<(&str, Option<u32>, u64)> = s
        .quality
        .iter()
        .map(|q| (q.stage.as_str(), q.segment, q.frames))
        .collect();
    assert_eq!(stages, [("copy", None, 90), ("join", None, 90)]);
    // The segments as one: PSNR from the mean MSE, (1e-4 + 1e-4 + 1e-3) / 3.
    let mse: f64 = (1e-4 + 1e-4 + 1e-3) / 3.0;
    assert!((s.quality[0].psnr - -10.0 * mse.log10()).abs() < 1e-9);
    assert_eq!(s.quality[0].psnr_min, Some(28.0));
    assert_eq!(s.quality[1].psnr, 35.0);
    let json = serde_json::to_value(&s).expect("json");
    assert_eq!(json["quality"][0]["psnrMin"], json!(28.0));
}
