//! `vflow plan` and `vflow sim` as a user runs them: exit codes and what they print.

use std::{path::PathBuf, process::Command};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn vflow(args: &[&str]) -> (i32, String, String) {
    // Its own state: what `make demo` or other runs learned does not change the plans.
    let state = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_vflow"))
        .args(args)
        .current_dir(repo())
        .env("VFLOW_STATE_DIR", state.path())
        .output()
        .expect("vflow runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vflow-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn plans_every_example_with_a_reason_for_each_choice() {
    for wf in ["detect", "thumbnails", "transcode-ladder"] {
        let file = format!("manifests/examples/{wf}.yaml");
        let (code, out, err) = vflow(&["plan", &file, "--profiles", "manifests/examples"]);
        assert_eq!(code, 0, "{wf}: {err}");
        assert!(out.starts_with(&format!("Workflow {wf}\n")), "{out}");
        for topic in [
            "size:",
            "concurrency:",
            "provisioning:",
            "prewarm:",
            "most likely path:",
        ] {
            assert!(out.contains(topic), "{wf}: no {topic} in\n{out}");
        }
    }
}

#[test]
fn plan_json_carries_the_path_and_branch_probabilities() {
    let (code, out, err) = vflow(&[
        "plan",
        "manifests/examples/detect.yaml",
        "--profiles",
        "manifests/examples/profiles.yaml",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        plan["mostLikelyPath"],
        serde_json::json!(["split", "scale", "detect", "stitch"])
    );
    assert_eq!(plan["branchProbabilities"][0]["stage"], "blur");
    assert!(
        (plan["branchProbabilities"][0]["probability"]
            .as_f64()
            .expect("p")
            - 0.3)
            .abs()
            < 1e-9
    );
    let detect = plan["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .find(|s| s["name"] == "detect")
        .expect("detect");
    assert_eq!(detect["gpu"]["resources"]["nvidia.com/gpu"], "1");
    // Four invocations at once in a pod sized for one at 2 GiB: the pod grows.
    assert_eq!(detect["concurrency"], 4, "{detect}");
    let memory = detect["size"]["memoryBytes"].as_f64().expect("memory");
    let gib = 1024.0 * 1024.0 * 1024.0;
    assert!(memory > 7.5 * gib && memory < 8.0 * gib, "{memory}");
    assert!(
        detect["reasons"]
            .as_array()
            .expect("reasons")
            .iter()
            .any(|r| r["topic"] == "memory"),
        "{detect}"
    );
}

#[test]
fn plan_uses_the_gpu_sharing_configuration() {
    let dir = temp_dir("plan-config");
    let cfg = dir.join("planner.yaml");
    std::fs::write(
        &cfg,
        "gpuSharing: {mode: time-slicing, slices: 4, resource: nvidia.com/gpu.shared}\n",
    )
    .expect("write");
    let (code, out, err) = vflow(&[
        "plan",
        "manifests/examples/detect.yaml",
        "--profiles",
        "manifests/examples",
        "--config",
        &cfg.to_string_lossy(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("gpu nvidia.com/gpu.shared=1"), "{out}");
}

#[test]
fn plan_exit_codes() {
    // Problems in the workflow: 1, with the field path.
    let (code, _, err) = vflow(&[
        "plan",
        "operator/cli/tests/broken/dag-errors.yaml",
        "--profiles",
        "manifests/examples",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("spec.stages"), "{err}");
    // A profile missing from the set: 1, naming it.
    let dir = temp_dir("plan-missing");
    std::fs::write(dir.join("empty.yaml"), "").expect("write");
    let (code, _, err) = vflow(&[
        "plan",
        "manifests/examples/detect.yaml",
        "--profiles",
        &dir.to_string_lossy(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("segment"), "{err}");
    // Unreadable: 2.
    let (code, _, err) = vflow(&[
        "plan",
        "no/such/file.yaml",
        "--profiles",
        "manifests/examples",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn sim_is_deterministic_for_a_seed() {
    let run = |seed: &str| {
        vflow(&[
            "sim",
            "--scenario",
            "burst",
            "--burst",
            "300",
            "--seed",
            seed,
            "--json",
        ])
    };
    let (code, a, err) = run("5");
    assert_eq!(code, 0, "{err}");
    let (_, b, _) = run("5");
    assert_eq!(a, b);
    let v: serde_json::Value = serde_json::from_str(&a).expect("json");
    assert_eq!(v["packing"]["rows"][0]["invocations"], 300);
}

#[test]
fn sim_writes_plots_and_a_table() {
    let dir = temp_dir("sim-svg");
    let (code, out, err) = vflow(&[
        "sim",
        "--scenario",
        "sizing",
        "--svg",
        &dir.to_string_lossy(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("| vflow |"), "{out}");
    let svg = std::fs::read_to_string(dir.join("sizing-ratio.svg")).expect("plot written");
    assert!(svg.starts_with("<svg"));
}

#[test]
fn sim_runs_a_workload_file() {
    let dir = temp_dir("sim-workload");
    let file = dir.join("w.yaml");
    std::fs::write(
        &file,
        "nodes: [{count: 2, cpu: 4, memory: 8Gi}]\n\
         functions:\n  - {name: scale, cpu: 1, memory: 1Gi, execP50: 1, execP95: 1.5, coldStartP50: 2, coldStartP95: 3}\n\
         requests:\n  - {at: 0, function: scale, segments: 10}\n  - {at: 5, function: scale, segments: 10}\n",
    )
    .expect("write");
    let (code, out, err) = vflow(&["sim", "--workload", &file.to_string_lossy(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["rows"].as_array().map(Vec::len), Some(3));
    assert_eq!(v["rows"][0]["summary"]["tasks"], 20);
    // An unknown function: 1; an unreadable file: 2.
    std::fs::write(&file, "nodes: [{cpu: 1, memory: 1Gi}]\nfunctions: [{name: a, cpu: 1, memory: 1Gi, execP50: 1, execP95: 1, coldStartP50: 1, coldStartP95: 1}]\nrequests: [{at: 0, function: b}]\n").expect("write");
    let (code, _, err) = vflow(&["sim", "--workload", &file.to_string_lossy()]);
    assert_eq!(code, 1);
    assert!(err.contains("\"b\""), "{err}");
    let (code, _, _) = vflow(&["sim", "--workload", "no/such.yaml"]);
    assert_eq!(code, 2);
}
