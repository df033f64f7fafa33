//! `vflow submit`, `vflow status` and `vflow logs`: the pure parts here, the commands
//! against a real API server (the ignored tests; `make test-runs` starts a private
//! e2e/testenv and sets VFLOW_RUNS_KUBECONFIG).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use vflow_api::{VideoWorkflow, VideoWorkflowRun};
use vflow_cli::status_cmd::{detail, list_table};
use vflow_cli::submit_cmd::{SubmitArgs, build_run, parse_params};

fn finished_run() -> VideoWorkflowRun {
    serde_json::from_value(json!({
        "apiVersion": "vflow.io/v1alpha1",
        "kind": "VideoWorkflowRun",
        "metadata": {"name": "r1", "namespace": "media", "creationTimestamp": "2030-01-01T00:00:00Z"},
        "spec": {"workflowRef": {"name": "thumbnails"}, "input": "s3://videos/in/a.mp4"},
        "status": {
            "phase": "Succeeded", "progress": "5/5",
            "stages": [
                {"name": "split", "done": 1, "total": 1, "coldStarts": 1, "execSeconds": 2.5},
                {"name": "scale", "done": 3, "total": 3, "execSeconds": 9.0}
            ],
            "outputs": [{"stage": "stitch", "uri": "s3://videos/outputs/r1/stitch/all/out.mp4", "bytes": 1234}],
            "timings": {"totalSeconds": 20.0, "criticalPathExecSeconds": 12.0, "overheadSeconds": 8.0, "coldStartSeconds": 3.0},
            "estimatedCost": {"cpuCoreSeconds": 30.0, "memoryGibSeconds": 15.0, "gpuSeconds": 0.0, "total": 0.0004, "currency": "USD"}
        }
    }))
    .expect("run")
}

#[test]
fn params_keep_numbers_and_booleans_and_refuse_bad_shapes() {
    let p = parse_params(&[
        "scale.height=480".into(),
        "scale.codec=h264".into(),
        "detect.gpu=true".into(),
    ])
    .expect("valid");
    assert_eq!(p["scale"]["height"], json!(480));
    assert_eq!(p["scale"]["codec"], json!("h264"));
    assert_eq!(p["detect"]["gpu"], json!(true));
    for bad in ["height=480", "scale.=1", ".h=1", "scale.height"] {
        assert!(parse_params(&[bad.to_string()]).is_err(), "{bad}");
    }
    let args = SubmitArgs {
        workflow: "thumbnails".into(),
        input: "s3://videos/a.mp4".into(),
        namespace: None,
        params: vec!["scale.height=480".into()],
        name: None,
        ttl_seconds_after_finished: Some(60),
    };
    let run = build_run(&args, "media").expect("run");
    assert_eq!(run.metadata.generate_name.as_deref(), Some("thumbnails-"));
    assert_eq!(run.spec.ttl_seconds_after_finished, Some(60));
}

#[test]
fn status_prints_a_list_and_a_stage_table() {
    let run = finished_run();
    let now: Timestamp = "2030-01-01T00:05:00Z".parse().expect("time");
    let list = list_table(std::slice::from_ref(&run), now);
    let lines: Vec<&str> = list.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("PROGRESS"));
    assert!(
        lines[1].contains("r1")
            && lines[1].contains("Succeeded")
            && lines[1].contains("5/5")
            && lines[1].contains("20.0s")
            && lines[1].ends_with("5m"),
        "{list}"
    );
    let d = detail(&run);
    assert!(d.contains("Phase:     Succeeded"), "{d}");
    assert!(d.contains("12.00s critical-path execution"), "{d}");
    assert!(
        d.lines()
            .any(|l| l.starts_with("scale") && l.contains("3/3") && l.contains("9.00s")),
        "{d}"
    );
    assert!(
        d.contains("s3://videos/outputs/r1/stitch/all/out.mp4  1234 bytes"),
        "{d}"
    );
}

fn kubeconfig() -> PathBuf {
    PathBuf::from(
        std::env::var("VFLOW_RUNS_KUBECONFIG")
            .expect("VFLOW_RUNS_KUBECONFIG: run through `make test-runs`"),
    )
}

async fn client() -> Client {
    vflow_storage::install_crypto_provider();
    let kc = Kubeconfig::read_from(kubeconfig()).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

fn vflow(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vflow"))
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .output()
        .expect("run vflow");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn setup(client: &Client, ns: &str) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in vflow_api::crds() {
        let n = crd.name_any();
        crds.patch(
            &n,
            &PatchParams::apply("cli-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("CRD");
        for _ in 0..300 {
            let ok = crds
                .get(&n)
                .await
                .ok()
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns"),
    )
    .await
    .expect("namespace");
    let wf: VideoWorkflow = serde_json::from_value(json!({
        "apiVersion": "vflow.io/v1alpha1", "kind": "VideoWorkflow",
        "metadata": {"name": "thumbs", "namespace": ns},
        "spec": {"storage": {"bucket": "videos"}, "stages": [{"name": "thumbnail", "function": "thumbnail", "params": {"every": 2}}]}
    }))
    .expect("workflow");
    Api::<VideoWorkflow>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &wf)
        .await
        .expect("workflow");
}

#[tokio::test]
#[ignore = "needs e2e/testenv: make test-runs"]
async fn submit_creates_a_run_that_status_prints() {
    let client = client().await;
    let ns = format!("cli-{}", std::process::id() % 100_000);
    setup(&client, &ns).await;

    let (code, out, err) = vflow(&[
        "submit",
        "thumbs",
        "--input",
        "s3://videos/in/a.mp4",
        "-n",
        &ns,
        "--param",
        "thumbnail.every=5",
        "--ttl",
        "60",
    ]);
    assert_eq!(code, 0, "{err}");
    let name = out
        .trim()
        .strip_prefix(&format!("{ns}/"))
        .expect("namespace/name")
        .to_string();
    let runs: Api<VideoWorkflowRun> = Api::namespaced(client.clone(), &ns);
    let run = runs.get(&name).await.expect("the run exists");
    assert_eq!(run.spec.workflow_ref.name, "thumbs");
    assert_eq!(run.spec.input, "s3://videos/in/a.mp4");
    assert_eq!(run.spec.params["thumbnail"]["every"], json!(5));
    assert_eq!(run.spec.ttl_seconds_after_finished, Some(60));

    // Refused before anything is created: no such workflow, no such stage.
    let (code, _, err) = vflow(&["submit", "nope", "--input", "a.mp4", "-n", &ns]);
    assert_eq!(code, 1);
    assert!(err.contains("no VideoWorkflow"), "{err}");
    let (code, _, err) = vflow(&[
        "submit",
        "thumbs",
        "--input",
        "a.mp4",
        "-n",
        &ns,
        "--param",
        "scale.height=1",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no stage scale"), "{err}");
    assert_eq!(
        runs.list(&Default::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );

    let (code, out, err) = vflow(&["status", "-n", &ns]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&name) && l.contains("thumbs") && l.contains("Pending")),
        "{out}"
    );

    // A status as the run controller writes it.
    let status = finished_run().status;
    runs.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await
    .expect("status");
    let (code, out, err) = vflow(&["status", &name, "-n", &ns]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Phase:     Succeeded")
            && out
                .lines()
                .any(|l| l.starts_with("scale") && l.contains("3/3")),
        "{out}"
    );

    // logs: the stage has no pods here (no operator running): said plainly.
    let (code, _, err) = vflow(&["logs", &name, "--stage", "thumbnail", "-n", &ns]);
    assert_eq!(code, 1);
    assert!(err.contains("no pods of stage thumbnail"), "{err}");
    let (code, _, err) = vflow(&["logs", &name, "--stage", "nope", "-n", &ns]);
    assert_eq!(code, 1);
    assert!(err.contains("has no stage nope"), "{err}");
}
