//! Packing decided from what the function was seen to do: the cores one invocation
//! uses, and E(P) measured at several degrees (GPU speedups from the function's own
//! runs, the constants only until there are some).

use std::collections::BTreeMap;

use serde_json::json;
use vflow_api::{FunctionProfile, VideoWorkflow};
use vflow_planner::plan::StageDecision;
use vflow_planner::{PlannerConfig, plan_workflow};

fn workflow(function: &str) -> VideoWorkflow {
    serde_json::from_value(json!({
        "apiVersion": "vflow.io/v1alpha1", "kind": "VideoWorkflow",
        "metadata": {"name": "wf"},
        "spec": {"storage": {"bucket": "b"}, "stages": [
            {"name": "split", "function": "segment", "fanOut": true},
            {"name": "work", "function": function, "after": ["split"]}
        ]}
    }))
    .expect("workflow")
}

/// Resources kept as written (`sizing: Recommend`): right-sizing would otherwise shrink
/// the pod to one invocation's use first, leaving packing no room.
fn profile(name: &str, resources: serde_json::Value, status: serde_json::Value) -> FunctionProfile {
    serde_json::from_value(json!({
        "apiVersion": "vflow.io/v1alpha1", "kind": "FunctionProfile",
        "metadata": {"name": name},
        "spec": {"image": "x", "command": ["f"], "resources": resources, "sizing": "Recommend",
                 "execTimePrior": "10s", "coldStartPrior": "2s"},
        "status": status
    }))
    .expect("profile")
}

fn plan(work: FunctionProfile) -> (u32, String) {
    let d = decide(work, json!({}));
    let reason = d
        .reasons
        .iter()
        .find(|r| r.topic == "concurrency")
        .map(|r| r.text.clone())
        .unwrap_or_default();
    (d.concurrency, reason)
}

/// The decision for stage `work`, with its overrides.
fn decide(work: FunctionProfile, overrides: serde_json::Value) -> StageDecision {
    decide_with(work, overrides, &PlannerConfig::default())
}

fn decide_with(
    work: FunctionProfile,
    overrides: serde_json::Value,
    cfg: &PlannerConfig,
) -> StageDecision {
    let mut profiles = BTreeMap::new();
    profiles.insert(
        "segment".to_string(),
        profile("segment", json!({"cpu": "1", "memory": "512Mi"}), json!({})),
    );
    let name = work.metadata.name.clone().expect("name");
    profiles.insert(name.clone(), work);
    let mut wf = workflow(&name);
    if overrides.as_object().is_some_and(|o| !o.is_empty()) {
        wf.spec.stages[1].overrides = Some(serde_json::from_value(overrides).expect("overrides"));
    }
    let plan = plan_workflow(&wf, &profiles, cfg).expect("plans");
    plan.stages
        .into_iter()
        .find(|d| d.name == "work")
        .expect("work")
}

fn observed(cpu_p50: f64) -> serde_json::Value {
    json!({
        "invocations": 40,
        "execSeconds": {"p50": 10.0, "p95": 11.0, "max": 12.0},
        "cpuCores": {"p50": cpu_p50, "p95": cpu_p50, "max": cpu_p50},
        "memoryBytes": {"p50": 2e8, "p95": 2e8, "max": 2e8}
    })
}

#[test]
fn a_cpu_stage_that_uses_a_fraction_of_its_cores_packs_and_one_that_uses_them_all_does_not() {
    let resources = json!({"cpu": "2", "memory": "1Gi"});
    let (light, reason) = plan(profile("light", resources.clone(), observed(0.4)));
    assert!(light > 1, "0.4 of 2 cores: {light} ({reason})");
    assert!(
        reason.contains("uses 0.40 of the instance's 2.00 cores (observed p50)"),
        "{reason}"
    );
    let (busy, reason) = plan(profile("busy", resources.clone(), observed(2.0)));
    assert_eq!(busy, 1, "all of its cores: {reason}");
    // Not observed yet: its request is what it uses.
    let (fresh, reason) = plan(profile("fresh", resources, json!({})));
    assert_eq!(fresh, 1, "{reason}");
    assert!(
        reason.contains("its share of the request: not observed yet"),
        "{reason}"
    );
}

#[test]
fn a_packed_instance_grows_its_cores_and_memory_with_what_it_runs_at_once() {
    let mib = 1024.0 * 1024.0;
    let light = || {
        profile(
            "light",
            json!({"cpu": "2", "memory": "256Mi"}),
            observed(0.4),
        )
    };
    // As the planner packs it: P at 0.4 cores each fit the 2 cores it has; memory is
    // the runtime's base and each one's share.
    let d = decide(light(), json!({}));
    let p = f64::from(d.concurrency);
    assert!(d.concurrency > 1, "{}", d.reason_text());
    assert_eq!(d.size.cpu_cores, (0.4 * p).max(2.0), "{}", d.reason_text());
    let memory = |p: f64| (32.0 + 224.0 * p) * mib;
    assert!(
        (d.size.memory_bytes - memory(p)).abs() < 1.0,
        "{}",
        d.size.memory_bytes
    );
    // Eight at once need 3.2 cores: the pod asks for them.
    let d = decide(light(), json!({"concurrency": 8}));
    assert!((d.size.cpu_cores - 3.2).abs() < 1e-9, "{}", d.reason_text());
    assert!((d.size.memory_bytes - memory(8.0)).abs() < 1.0);
    assert!(
        d.reasons.iter().any(
            |r| r.topic == "cpu" && r.text.contains("each invocation uses 0.40 (observed p50)")
        ),
        "{}",
        d.reason_text()
    );
    // The profile's bounds cap the instance, hence P: 800 MiB hold the runtime and 3.
    let mut bounded = light();
    bounded.spec.bounds =
        Some(serde_json::from_value(json!({"maxMemory": "800Mi"})).expect("bounds"));
    let d = decide(bounded, json!({}));
    assert!(d.concurrency < f64::max(p, 4.0) as u32, "the bound binds");
    assert!(
        d.concurrency <= 3 && d.size.memory_bytes <= 800.0 * mib,
        "{}",
        d.reason_text()
    );
    // Cores pinned by the stage's overrides stay; packed invocations share them.
    let d = decide(light(), json!({"cpu": "2", "concurrency": 8}));
    assert_eq!(
        (d.concurrency, d.size.cpu_cores),
        (8, 2.0),
        "{}",
        d.reason_text()
    );
}

#[test]
fn measured_e_of_p_replaces_the_gpu_prior() {
    let resources = json!({"cpu": "1", "memory": "2Gi", "gpu": 0.25});
    // The prior (3.4x at 8 under time-slicing) packs.
    let (prior, reason) = plan(profile("gpu", resources.clone(), json!({})));
    assert!(prior > 1, "{reason}");
    assert!(reason.contains("GPU speedup prior"), "{reason}");
    // This function gains nothing from sharing: 2 at once take twice as long.
    let mut status = observed(1.0);
    status["execByDegree"] = json!([
        {"degree": 1, "invocations": 30, "meanSeconds": 10.0},
        {"degree": 2, "invocations": 10, "meanSeconds": 20.5},
        {"degree": 4, "invocations": 10, "meanSeconds": 41.0}
    ]);
    let (flat, reason) = plan(profile("gpu", resources.clone(), status.clone()));
    assert_eq!(flat, 1, "no speedup observed: {reason}");
    assert!(
        reason.contains("E(P) observed (P=1: 10.00s over 30, P=2: 20.50s over 10"),
        "{reason}"
    );
    // And one that shares well (4 at once in 12 s) packs to at least 4.
    status["execByDegree"] = json!([
        {"degree": 1, "invocations": 30, "meanSeconds": 10.0},
        {"degree": 4, "invocations": 10, "meanSeconds": 12.0}
    ]);
    let (packed, reason) = plan(profile("gpu", resources, status));
    assert!(packed >= 4, "{reason}");
}

/// The decision for stage `work` when every instance runs in a room of `cores` cores
/// that holds at most `instances` instances (the local mode's machine).
fn decide_in_room(work: FunctionProfile, cores: f64, instances: u32) -> StageDecision {
    let cfg = PlannerConfig {
        room: Some(vflow_planner::plan::Room {
            cores,
            max_instances: Some(instances),
        }),
        ..PlannerConfig::default()
    };
    decide_with(work, json!({}), &cfg)
}

#[test]
fn on_a_machine_of_two_cores_an_encoder_that_uses_one_is_not_packed_two_to_an_instance() {
    // bench-local's transcode: about one core per invocation. Planned without the room,
    // an instance of P = 8 was counted with 7.6 cores of its own.
    let encode = || {
        profile(
            "encode",
            json!({"cpu": "1", "memory": "1Gi"}),
            observed(0.95),
        )
    };
    let d = decide_in_room(encode(), 2.0, 2);
    assert_eq!(d.concurrency, 1, "{}", d.reason_text());
    // An invocation that uses 0.4 of a core still packs: its instance fits the room.
    let light = profile(
        "light",
        json!({"cpu": "2", "memory": "256Mi"}),
        observed(0.4),
    );
    let d = decide_in_room(light, 2.0, 2);
    assert!(d.concurrency > 1, "{}", d.reason_text());
    assert!(d.size.cpu_cores <= 2.0 + 1e-9, "{}", d.reason_text());
}

#[test]
fn the_input_duration_gives_the_segments_their_number_and_lengths() {
    let mut profiles = BTreeMap::new();
    let mut segment = profile("segment", json!({"cpu": "1", "memory": "512Mi"}), json!({}));
    segment.spec.params = serde_json::from_value(json!([
        {"name": "seconds", "type": "Number", "default": 4},
        {"name": "cutAt", "type": "String", "default": "time"},
        {"name": "multipleOf", "type": "Integer", "default": 1}
    ]))
    .expect("params");
    profiles.insert("segment".to_string(), segment);
    profiles.insert(
        "encode".to_string(),
        profile(
            "encode",
            json!({"cpu": "1", "memory": "1Gi"}),
            observed(0.95),
        ),
    );
    let mut wf = workflow("encode");
    let room = Some(vflow_planner::plan::Room {
        cores: 2.0,
        max_instances: Some(2),
    });
    let reason = |wf: &VideoWorkflow, input_seconds: Option<f64>| {
        let cfg = PlannerConfig {
            room,
            input_seconds,
            ..PlannerConfig::default()
        };
        let d = plan_workflow(wf, &profiles, &cfg)
            .expect("plans")
            .stages
            .into_iter()
            .find(|d| d.name == "work")
            .expect("work");
        d.reasons
            .iter()
            .find(|r| r.topic == "concurrency")
            .map(|r| r.text.clone())
            .unwrap_or_default()
    };
    // Unknown duration: expectedSegments (8) alike, in whole waves.
    let r = reason(&wf, None);
    assert!(r.starts_with("8 invocations"), "{r}");
    assert!(r.contains("x 4 waves"), "{r}");
    // 60 s every 4 s (the profile's default): 15 segments, 8 rounds on 2 at once.
    let r = reason(&wf, Some(60.0));
    assert!(r.starts_with("15 invocations"), "{r}");
    assert!(
        r.contains("x 8.00 (the segments' lengths, longest first on 2 at once)"),
        "{r}"
    );
    // multipleOf 2 on the stage: 14 of 4 s and 2 of 2 s, each slot 30 s of video: 8
    // rounds of the mean segment (3.75 s), where 15 segments took 8 rounds of 4 s.
    wf.spec.stages[0].params = serde_json::from_value(json!({"multipleOf": 2})).expect("params");
    let r = reason(&wf, Some(60.0));
    assert!(r.starts_with("16 invocations"), "{r}");
    assert!(r.contains("x 8.00 (the segments' lengths"), "{r}");
    // Scene cuts are not known before the run.
    wf.spec.stages[0].params = serde_json::from_value(json!({"cutAt": "scene"})).expect("params");
    assert!(reason(&wf, Some(60.0)).starts_with("8 invocations"));
}
