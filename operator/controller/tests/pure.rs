//! Level 1: the pure parts. The Deployment built for a CPU stage and for a GPU stage in
//! each sharing mode, the whole desired state (validation, plan, autoscaler, status),
//! and the FunctionProfile's recommendation from observations.

mod common;

use std::collections::BTreeMap;

use k8s_openapi::{api::apps::v1::Deployment, jiff::Timestamp};
use vflow_api::{Distribution, FunctionProfileStatus, SizingMode};
use vflow_operator::{
    config::Settings,
    profile::desired_status,
    workflow::{
        self, build,
        dereference::Children,
        validate::{self, InvalidReason},
    },
};
use vflow_planner::{
    PlannerConfig,
    gpu::{GpuSharing, MigProfile},
    sizing::SizingConfig,
};
use vflow_runs::demand::WorkflowDemand;

fn now() -> Timestamp {
    "2030-01-01T00:00:00Z".parse().expect("time")
}

fn settings(sharing: GpuSharing) -> Settings {
    Settings {
        planner: PlannerConfig {
            gpu_sharing: sharing,
            ..PlannerConfig::default()
        },
        ..Settings::default()
    }
}

/// The desired Deployments of the test workflow under `sharing`, by stage.
fn built(sharing: GpuSharing, annotations: &[(&str, &str)]) -> BTreeMap<String, Deployment> {
    built_with(sharing, annotations, &WorkflowDemand::default())
}

/// The Deployments for the test workflow, with annotations and the runs' demand.
fn built_with(
    sharing: GpuSharing,
    annotations: &[(&str, &str)],
    demand: &WorkflowDemand,
) -> BTreeMap<String, Deployment> {
    let mut wf = common::workflow("wf", "ns", "");
    wf.metadata.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    let profiles = common::profiles("ns");
    let s = settings(sharing);
    let outcome = validate::check(&wf, &profiles, &s.planner);
    assert!(outcome.is_ok(), "{outcome:?}");
    let want = workflow::desired(
        &wf,
        &outcome,
        &profiles,
        &Children::default(),
        &Default::default(),
        demand,
        &s,
        now(),
    )
    .expect("builds");
    want.deployments
        .into_iter()
        .map(|(stage, d)| {
            assert_eq!(
                d.metadata.labels.as_ref().expect("labels")[build::LABEL_STAGE],
                stage
            );
            (stage, d)
        })
        .collect()
}

fn env(d: &Deployment, container: &str) -> BTreeMap<String, String> {
    let pod = d.spec.template.spec.as_ref().expect("pod");
    let c = pod
        .containers
        .iter()
        .find(|c| c.name == container)
        .expect("container");
    c.env
        .iter()
        .flatten()
        .map(|e| {
            (
                e.name.clone(),
                e.value.clone().unwrap_or_else(|| "<from>".into()),
            )
        })
        .collect()
}

fn resources(d: &Deployment, which: &str) -> BTreeMap<String, String> {
    let pod = d.spec.template.spec.as_ref().expect("pod");
    let r = pod.containers[0].resources.as_ref().expect("resources");
    let map = if which == "limits" {
        &r.limits
    } else {
        &r.requests
    };
    map.iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

#[test]
fn cpu_stage_pod_has_the_runtime_contract_and_restricted_security() {
    let ds = built(GpuSharing::default(), &[]);
    let d = &ds["scale"];
    assert_eq!(d.metadata.name.as_deref(), Some("wf-scale"));
    let labels = d.metadata.labels.as_ref().expect("labels");
    for (k, v) in [
        ("vflow.io/workflow", "wf"),
        ("vflow.io/stage", "scale"),
        ("vflow.io/function", "scale"),
        ("app.kubernetes.io/managed-by", "vflow-operator"),
        ("app.kubernetes.io/part-of", "vflow"),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "label {k}");
    }
    let owner = &d.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("VideoWorkflow", Some(true))
    );
    assert!(
        d.metadata
            .annotations
            .as_ref()
            .expect("a")
            .contains_key(build::ANNOTATION_SPEC_HASH)
    );
    assert_eq!(d.spec.replicas, Some(0), "ephemeral and idle");

    let pod = d.spec.template.spec.as_ref().expect("pod");
    assert_eq!(pod.share_process_namespace, Some(true));
    assert_eq!(pod.automount_service_account_token, Some(false));
    let psc = pod.security_context.as_ref().expect("psc");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    let grace = pod.termination_grace_period_seconds.expect("grace");
    for c in &pod.containers {
        let sc = c.security_context.as_ref().expect("sc");
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()])
        );
    }
    let f = &pod.containers[0];
    assert_eq!(f.name, "function");
    assert_eq!(
        f.command,
        Some(vec!["/usr/local/bin/vflow-runtime".into(), "serve".into()])
    );
    assert_eq!(
        f.ports.as_ref().expect("ports")[0].name.as_deref(),
        Some("http")
    );
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(probe_path(&f.readiness_probe).as_deref(), Some("/readyz"));
    assert_eq!(probe_path(&f.liveness_probe).as_deref(), Some("/healthz"));
    let e = env(d, "function");
    assert_eq!(e["VFLOW_COMMAND"], r#"["/usr/local/bin/vflow-fn","scale"]"#);
    assert_eq!(e["VFLOW_FUNCTION"], "scale");
    assert_eq!(e["VFLOW_PORT"], "8080");
    assert_eq!(e["VFLOW_SCRATCH_DIR"], "/scratch");
    assert_eq!(e["VFLOW_INSTANCE"], "<from>");
    assert_eq!(e["VFLOW_S3_ENDPOINT"], "http://minio.storage:9000");
    assert_eq!(e["VFLOW_S3_REGION"], "eu-west-1");
    assert_eq!(e["VFLOW_S3_PATH_STYLE"], "true");
    assert_eq!(e["VFLOW_S3_CREDENTIALS_DIR"], build::S3_CREDENTIALS_DIR);
    let drain: i64 = e["VFLOW_DRAIN_TIMEOUT"]
        .trim_end_matches('s')
        .parse()
        .expect("secs");
    assert!(grace > drain, "grace {grace} must exceed the drain {drain}");
    assert!(e.contains_key("VFLOW_CONCURRENCY"));
    // Requests from the sizing decision; memory limit = request; no CPU limit.
    let req = resources(d, "requests");
    let lim = resources(d, "limits");
    assert_eq!(req["cpu"], "2");
    assert_eq!(req["memory"], "1024Mi");
    assert_eq!(lim.get("memory"), req.get("memory"));
    assert!(!lim.contains_key("cpu"));
    // Bounded disk: scratch = 2 GiB per invocation (the default) x the invocations at
    // once; /tmp 256 MiB; the first container's ephemeral-storage covers both plus
    // its own 64 MiB, the sidecar's its own; the runtime is told the scratch limit.
    let concurrency: u64 = e["VFLOW_CONCURRENCY"].parse().expect("n");
    let scratch = concurrency * 2048 * 1024 * 1024;
    let size_limit = |name: &str| {
        pod.volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .and_then(|v| v.empty_dir.as_ref())
            .and_then(|e| e.size_limit.as_ref())
            .map(|q| q.0.clone())
    };
    assert_eq!(size_limit("scratch"), Some(scratch.to_string()));
    assert_eq!(size_limit("tmp"), Some((256u64 << 20).to_string()));
    assert_eq!(e["VFLOW_SCRATCH_LIMIT"], scratch.to_string());
    let disk = (scratch + (256 << 20) + (64 << 20)).to_string();
    assert_eq!(req["ephemeral-storage"], disk);
    assert_eq!(lim["ephemeral-storage"], disk);
    for c in &pod.containers[1..] {
        let r = c.resources.as_ref().expect("resources");
        for side in [&r.requests, &r.limits] {
            let got = side.as_ref().and_then(|m| m.get("ephemeral-storage"));
            assert_eq!(got.map(|q| q.0.as_str()), Some("67108864"), "{}", c.name);
        }
    }
    // The sidecar.
    let m = &pod.containers[1];
    assert_eq!(
        m.command,
        Some(vec![
            "/usr/local/bin/vflow-runtime".into(),
            "metrics".into()
        ])
    );
    assert_eq!(env(d, "metrics")["VFLOW_METRICS_PORT"], "9091");
    assert_eq!(
        m.ports.as_ref().expect("ports")[0].name.as_deref(),
        Some("metrics")
    );
    // The Secret mounted read-only.
    let mount = f
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| v.name == "s3-credentials")
        .expect("mount");
    assert_eq!(mount.read_only, Some(true));
    let vol = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "s3-credentials")
        .expect("vol");
    assert_eq!(
        vol.secret.as_ref().and_then(|s| s.secret_name.as_deref()),
        Some("s3-creds")
    );
    // Only the two keys the runtime reads, not the whole Secret.
    let keys: Vec<&str> = vol
        .secret
        .as_ref()
        .and_then(|s| s.items.as_ref())
        .map(|items| items.iter().map(|i| i.key.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(keys, ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]);
    // The workflow's token, bucket and outputs: what a caller may make it do.
    assert_eq!(e["VFLOW_BUCKET"], "videos");
    assert_eq!(e["VFLOW_OUTPUT_PREFIX"], "outputs/");
    assert_eq!(
        e["VFLOW_INVOKE_TOKEN_FILE"],
        vflow_contract::auth::INVOKE_TOKEN_FILE
    );
    let token = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "invoke-token")
        .and_then(|v| v.secret.as_ref())
        .expect("the token volume");
    assert_eq!(token.secret_name.as_deref(), Some("wf-vflow-invoke"));
    let mounted = f
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| v.name == "invoke-token")
        .expect("token mount");
    assert!(
        vflow_contract::auth::INVOKE_TOKEN_FILE.starts_with(&mounted.mount_path)
            && mounted.read_only == Some(true)
    );
    // A CPU stage asks for no GPU.
    assert!(!req.keys().any(|k| k.contains("nvidia")));
}

/// Sharing mode; then the extended resources, env and pod annotations expected.
type GpuCase = (
    GpuSharing,
    Vec<(&'static str, &'static str)>,
    Vec<(&'static str, &'static str)>,
    Vec<(&'static str, &'static str)>,
);

#[test]
fn gpu_stage_in_each_sharing_mode() {
    let cases: Vec<GpuCase> = vec![
        (
            GpuSharing::default(),
            vec![("nvidia.com/gpu", "1")],
            vec![],
            vec![],
        ),
        (
            GpuSharing::TimeSlicing {
                slices: 4,
                resource: "nvidia.com/gpu.shared".into(),
                fail_requests_greater_than_one: false,
            },
            vec![("nvidia.com/gpu.shared", "1")],
            vec![],
            vec![],
        ),
        (
            GpuSharing::Mps {
                slices: 8,
                resource: "nvidia.com/gpu.shared".into(),
                gpu_memory_bytes: Some(80 << 30),
            },
            vec![("nvidia.com/gpu.shared", "2")],
            vec![("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "25")],
            vec![],
        ),
        (
            GpuSharing::Mig {
                profiles: vec![
                    MigProfile::new("nvidia.com/mig-1g.10gb"),
                    MigProfile::new("nvidia.com/mig-3g.40gb"),
                ],
            },
            vec![("nvidia.com/mig-3g.40gb", "1")],
            vec![],
            vec![],
        ),
        (
            GpuSharing::Hami {
                gpu_memory_bytes: Some(80 << 30),
            },
            vec![("nvidia.com/gpu", "1"), ("nvidia.com/gpucores", "25")],
            vec![],
            vec![],
        ),
        (
            serde_json::from_str(r#"{"mode": "kai"}"#).expect("kai"),
            vec![],
            vec![],
            vec![("gpu-fraction", "0.25")],
        ),
    ];
    for (sharing, want_resources, want_env, want_annotations) in cases {
        let mode = format!("{sharing:?}");
        let ds = built(sharing, &[]);
        let d = &ds["detect"];
        let req = resources(d, "requests");
        let lim = resources(d, "limits");
        for (k, v) in &want_resources {
            assert_eq!(
                req.get(*k).map(String::as_str),
                Some(*v),
                "{mode}: request {k} in {req:?}"
            );
            assert_eq!(
                lim.get(*k),
                req.get(*k),
                "{mode}: extended resources limit = request"
            );
        }
        let e = env(d, "function");
        for (k, v) in &want_env {
            assert_eq!(e.get(*k).map(String::as_str), Some(*v), "{mode}: env {k}");
        }
        let ann = d
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default();
        for (k, v) in &want_annotations {
            assert_eq!(
                ann.get(*k).map(String::as_str),
                Some(*v),
                "{mode}: annotation {k}"
            );
        }
        if want_resources.is_empty() {
            assert!(
                !req.keys().any(|k| k.starts_with("nvidia.com")),
                "{mode}: no extended resource"
            );
        } else {
            let tol = d
                .spec
                .template
                .spec
                .as_ref()
                .and_then(|p| p.tolerations.clone())
                .unwrap_or_default();
            assert!(!tol.is_empty(), "{mode}: tolerates the GPU taint");
        }
        // The CPU stages are untouched by the mode.
        assert!(
            !resources(&ds["scale"], "requests")
                .keys()
                .any(|k| k.starts_with("nvidia.com"))
        );
    }
}

#[test]
fn an_unsatisfiable_gpu_share_is_a_condition_with_the_field_path() {
    let wf = common::workflow("wf", "ns", "");
    let profiles = common::profiles("ns");
    // A quarter GPU needs 2 of 7 MIG slices; the nodes only offer 1g profiles.
    let s = settings(GpuSharing::Mig {
        profiles: vec![MigProfile::new("nvidia.com/mig-1g.10gb")],
    });
    let outcome = validate::check(&wf, &profiles, &s.planner);
    let invalid = outcome.clone().expect_err("no MIG profile fits");
    assert_eq!(invalid.reason, InvalidReason::GpuUnsatisfiable);
    assert_eq!(invalid.problems[0].path, "spec.stages[2].overrides.gpu");
    let want = workflow::desired(
        &wf,
        &outcome,
        &profiles,
        &Children::default(),
        &Default::default(),
        &Default::default(),
        &s,
        now(),
    )
    .expect("desired");
    assert!(
        want.deployments.is_empty() && want.services.is_empty(),
        "nothing is built"
    );
    let ready = &want.status.conditions[0];
    assert_eq!(
        (
            ready.type_.as_str(),
            ready.status.as_str(),
            ready.reason.as_str()
        ),
        ("Ready", "False", "GpuUnsatisfiable")
    );
    assert!(
        ready.message.contains("spec.stages[2].overrides.gpu"),
        "{}",
        ready.message
    );
}

#[test]
fn a_missing_profile_names_the_stage() {
    let wf = common::workflow("wf", "ns", "");
    let mut profiles = common::profiles("ns");
    profiles.remove("detect");
    let invalid = validate::check(&wf, &profiles, &PlannerConfig::default()).expect_err("missing");
    assert_eq!(invalid.reason, InvalidReason::ProfileMissing);
    assert!(
        invalid.message().contains("spec.stages[2].function"),
        "{}",
        invalid.message()
    );
}

#[test]
fn in_flight_and_prewarm_annotations_drive_the_replicas() {
    // scale: 5 in flight at concurrency c -> ceil(5/c); detect pre-warmed for a time
    // within its cold start (detect's prior 15s + 1s margin).
    let ds = built(
        GpuSharing::default(),
        &[
            ("vflow.io/in-flight", r#"{"scale": 5}"#),
            (
                "vflow.io/prewarm",
                r#"[{"stage": "detect", "replicas": 3, "at": "2030-01-01T00:00:10Z"}, {"stage": "stitch", "replicas": 1, "at": "2030-01-01T00:01:00Z"}]"#,
            ),
        ],
    );
    let conc: u32 = env(&ds["scale"], "function")["VFLOW_CONCURRENCY"]
        .parse()
        .expect("n");
    assert_eq!(ds["scale"].spec.replicas, Some(5u32.div_ceil(conc) as i32));
    assert_eq!(
        ds["detect"].spec.replicas,
        Some(3),
        "its window opened at 10s - cold start"
    );
    assert_eq!(
        ds["stitch"].spec.replicas,
        Some(0),
        "its window opens later"
    );
    assert_eq!(ds["split"].spec.replicas, Some(0));
}

#[test]
fn the_runs_demand_drives_the_replicas_and_adds_to_the_annotations() {
    // The same asks as above, from the demand board instead of annotations.
    let mut demand = WorkflowDemand::default();
    for _ in 0..3 {
        demand.begin("scale");
    }
    let at: Timestamp = "2030-01-01T00:00:10Z".parse().expect("time");
    demand.request_prewarm("detect", 3, at);
    let ds = built_with(
        GpuSharing::default(),
        &[("vflow.io/in-flight", r#"{"scale": 2}"#)],
        &demand,
    );
    let conc: u32 = env(&ds["scale"], "function")["VFLOW_CONCURRENCY"]
        .parse()
        .expect("n");
    assert!(conc < 5, "the test needs a concurrency below 5, got {conc}");
    assert_eq!(
        ds["scale"].spec.replicas,
        Some(5u32.div_ceil(conc) as i32),
        "2 in flight by annotation + 3 by the runs"
    );
    assert_eq!(ds["detect"].spec.replicas, Some(3));
    assert_eq!(ds["split"].spec.replicas, Some(0));
    let idle = built_with(GpuSharing::default(), &[], &WorkflowDemand::default());
    assert_eq!(idle["scale"].spec.replicas, Some(0), "no demand, no pods");
}

#[test]
fn durable_workflow_keeps_its_minimum_and_status_lists_the_plan() {
    let wf = common::workflow("wf", "ns", "  provisioning: Durable");
    let profiles = common::profiles("ns");
    let s = Settings::default();
    let outcome = validate::check(&wf, &profiles, &s.planner);
    let want = workflow::desired(
        &wf,
        &outcome,
        &profiles,
        &Children::default(),
        &Default::default(),
        &Default::default(),
        &s,
        now(),
    )
    .expect("desired");
    for (_, d) in &want.deployments {
        assert_eq!(d.spec.replicas, Some(1), "{:?}", d.metadata.name);
    }
    assert_eq!(want.status.stages.len(), 4);
    let scale = workflow::stage_plan(&want.status, "scale").expect("scale");
    assert_eq!((scale.replicas, scale.ready_replicas), (Some(1), Some(0)));
    assert_eq!(want.status.observed_generation, Some(1));
    let ready = &want.status.conditions[0];
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "StagesNotReady"),
        "no children yet"
    );
}

#[test]
fn the_same_inputs_give_the_same_children_and_status() {
    // What makes a steady state write nothing: a second pass over what the first made
    // finds every child current.
    let wf = common::workflow("wf", "ns", "");
    let profiles = common::profiles("ns");
    let s = Settings::default();
    let outcome = validate::check(&wf, &profiles, &s.planner);
    let a = workflow::desired(
        &wf,
        &outcome,
        &profiles,
        &Children::default(),
        &Default::default(),
        &Default::default(),
        &s,
        now(),
    )
    .expect("a");
    let b = workflow::desired(
        &wf,
        &outcome,
        &profiles,
        &Children::default(),
        &Default::default(),
        &Default::default(),
        &s,
        now(),
    )
    .expect("b");
    assert_eq!(a.deployments, b.deployments);
    assert_eq!(a.services, b.services);
    for (_, d) in &a.deployments {
        assert!(workflow::apply::deployment_is_current(
            Some(d),
            d,
            "00000000-0000-0000-0000-000000000001"
        ));
    }
}

#[test]
fn sizing_from_observations_in_each_mode() {
    let profiles = common::profiles("ns");
    let mut p = profiles["scale"].clone();
    p.metadata.generation = Some(3);
    p.status = Some(FunctionProfileStatus {
        invocations: 50,
        cpu_cores: Some(Distribution {
            p50: 0.8,
            p95: 1.5,
            max: 1.9,
        }),
        memory_bytes: Some(Distribution {
            p50: 200e6,
            p95: 300e6,
            max: 400e6,
        }),
        ..Default::default()
    });
    let cfg = SizingConfig::default();
    let st = desired_status(&p, &cfg, now());
    let rec = st.recommendation.as_ref().expect("rec");
    assert_eq!(rec.observations, 50);
    assert!(
        (rec.cpu.value().expect("cpu") - 1.8).abs() < 0.01,
        "{:?}",
        rec.cpu
    );
    assert_eq!(st.observed_generation, Some(3));
    let cond = |t: &str| {
        st.conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("cond")
            .clone()
    };
    assert_eq!(cond("Observed").status, "True");
    assert_eq!(
        (
            cond("Applied").status.as_str(),
            cond("Applied").reason.as_str()
        ),
        ("True", "Auto")
    );

    // Recommend: reported, not applied; the stage keeps the spec's resources.
    p.spec.sizing = SizingMode::Recommend;
    let st = desired_status(&p, &cfg, now());
    assert_eq!(
        st.conditions
            .iter()
            .find(|c| c.type_ == "Applied")
            .expect("a")
            .reason,
        "RecommendOnly"
    );

    // Auto applies it to the Deployment.
    let mut profiles = profiles;
    p.spec.sizing = SizingMode::Auto;
    profiles.insert("scale".into(), p);
    let wf = common::workflow("wf", "ns", "");
    let s = Settings::default();
    let outcome = validate::check(&wf, &profiles, &s.planner);
    let want = workflow::desired(
        &wf,
        &outcome,
        &profiles,
        &Children::default(),
        &Default::default(),
        &Default::default(),
        &s,
        now(),
    )
    .expect("d");
    let scale = want
        .deployments
        .iter()
        .find(|(_, d)| d.metadata.name.as_deref() == Some("wf-scale"))
        .map(|(_, d)| d)
        .expect("scale");
    assert_eq!(resources(scale, "requests")["cpu"], "1800m");

    // Too few observations: the spec's values.
    let mut few = profiles["scale"].clone();
    few.status.as_mut().expect("s").invocations = 3;
    let st = desired_status(&few, &cfg, now());
    assert_eq!(st.conditions[0].reason, "TooFewObservations");
}

#[test]
fn a_workflow_without_an_endpoint_gets_the_operators_default_and_the_sidecar_its_function() {
    let mut wf = common::workflow("wf", "ns", "");
    wf.spec.storage.endpoint = None;
    let profiles = common::profiles("ns");
    let build = |default: Option<&str>| {
        let s = Settings {
            default_s3_endpoint: default.map(str::to_string),
            ..settings(GpuSharing::default())
        };
        let outcome = validate::check(&wf, &profiles, &s.planner);
        workflow::desired(
            &wf,
            &outcome,
            &profiles,
            &Children::default(),
            &Default::default(),
            &Default::default(),
            &s,
            now(),
        )
        .expect("builds")
        .deployments
        .into_iter()
        .map(|(_, d)| d)
        .collect::<Vec<_>>()
    };
    let with_default = build(Some("http://minio.vflow-system.svc:9000"));
    assert!(!with_default.is_empty());
    for d in &with_default {
        assert_eq!(
            env(d, "function")
                .get("VFLOW_S3_ENDPOINT")
                .map(String::as_str),
            Some("http://minio.vflow-system.svc:9000")
        );
        let function = env(d, "function")["VFLOW_FUNCTION"].clone();
        assert_eq!(env(d, "metrics").get("VFLOW_FUNCTION"), Some(&function));
    }
    for d in &build(None) {
        assert_eq!(env(d, "function").get("VFLOW_S3_ENDPOINT"), None, "AWS S3");
    }
}

// One plan: the run controller plans with the operator's own planner settings (it used
// PlannerConfig::default(), so a cluster with another GPU sharing mode got runs sized
// and costed for whole GPUs while its Deployments asked for slices).
#[test]
fn the_run_controller_plans_with_the_operators_settings() {
    use clap::Parser;
    let args = vflow_operator::config::Args::try_parse_from([
        "vflow-operator",
        "--gpu-sharing",
        r#"{"mode":"time-slicing","slices":4}"#,
    ])
    .expect("args");
    let settings = args.settings().expect("settings");
    let runs = vflow_operator::runs_config(&args, &settings, |_| None)
        .expect("runs config")
        .expect("the run controller is on by default");
    assert!(
        matches!(
            runs.planner.gpu_sharing,
            GpuSharing::TimeSlicing { slices: 4, .. }
        ),
        "{:?}",
        runs.planner.gpu_sharing
    );
    assert_eq!(
        format!("{:?}", runs.planner),
        format!("{:?}", settings.planner),
        "the same planner settings on both sides"
    );

    let off = vflow_operator::config::Args::try_parse_from([
        "vflow-operator",
        "--run-controller",
        "false",
    ])
    .expect("args");
    let off_settings = off.settings().expect("settings");
    assert!(
        vflow_operator::runs_config(&off, &off_settings, |_| None)
            .expect("config")
            .is_none()
    );
}

/// The scale stage's Deployment when the profile has observed `cpu_p95` cores, with the
/// children of an earlier reconcile and `in_flight` invocations of scale in flight.
fn scale_after_observing(cpu_p95: f64, children: &Children, in_flight: u32) -> Deployment {
    let mut profiles = common::profiles("ns");
    let p = profiles.get_mut("scale").expect("scale");
    p.spec.sizing = SizingMode::Auto;
    p.status = Some(FunctionProfileStatus {
        invocations: 50,
        cpu_cores: Some(Distribution {
            p50: cpu_p95 / 2.0,
            p95: cpu_p95,
            max: cpu_p95,
        }),
        memory_bytes: Some(Distribution {
            p50: 200e6,
            p95: 300e6,
            max: 400e6,
        }),
        ..Default::default()
    });
    let mut wf = common::workflow("wf", "ns", "");
    wf.metadata.annotations = Some(BTreeMap::from([(
        "vflow.io/in-flight".to_string(),
        format!(r#"{{"scale": {in_flight}}}"#),
    )]));
    // One invocation per pod: the pod is the observed size, not a packed multiple.
    wf.spec.stages[1].overrides =
        Some(serde_json::from_value(serde_json::json!({"concurrency": 1})).expect("overrides"));
    let s = Settings::default();
    let outcome = validate::check(&wf, &profiles, &s.planner);
    workflow::desired(
        &wf,
        &outcome,
        &profiles,
        children,
        &Default::default(),
        &Default::default(),
        &s,
        now(),
    )
    .expect("d")
    .deployments
    .into_iter()
    .map(|(_, d)| d)
    .find(|d| d.metadata.name.as_deref() == Some("wf-scale"))
    .expect("scale")
}

// Seen in review: the observer folds new observations every 30 s, and each few
// millicores of p95 rolled every pod of a busy stage.
#[test]
fn pods_are_resized_only_for_a_material_change_and_never_under_load() {
    let first = scale_after_observing(1.5, &Children::default(), 0);
    assert_eq!(resources(&first, "requests")["cpu"], "1800m");
    let running = Children {
        deployments: BTreeMap::from([("scale".to_string(), std::sync::Arc::new(first.clone()))]),
        ..Children::default()
    };
    let hash = |d: &Deployment| {
        d.metadata.annotations.as_ref().expect("a")[build::ANNOTATION_SPEC_HASH].clone()
    };

    // 1.55 cores at p95 plans 1860m: 3% more, so the running pods stay as they are.
    let drift = scale_after_observing(1.55, &running, 0);
    assert_eq!(resources(&drift, "requests")["cpu"], "1800m");
    assert_eq!(hash(&drift), hash(&first), "nothing to roll");

    // 1 core at p95 plans 1200m: material, but invocations are in flight.
    let busy = scale_after_observing(1.0, &running, 2);
    assert_eq!(resources(&busy, "requests")["cpu"], "1800m");
    assert_eq!(hash(&busy), hash(&first));

    // Idle again: applied.
    let idle = scale_after_observing(1.0, &running, 0);
    assert_eq!(resources(&idle, "requests")["cpu"], "1200m");
    assert_ne!(hash(&idle), hash(&first));
}

/// The vertical example: the plan fuses crop -> scale, and the operator builds one
/// Deployment whose pod runs both, chained over loopback; scale has no children.
#[test]
fn a_fused_chain_is_one_deployment_with_a_runtime_per_stage() {
    let mut wf: vflow_api::VideoWorkflow =
        serde_saphyr::from_str(include_str!("../../../manifests/examples/vertical.yaml"))
            .expect("example parses");
    wf.metadata.namespace = Some("ns".into());
    wf.metadata.uid = Some("00000000-0000-0000-0000-000000000002".into());
    wf.metadata.generation = Some(1);
    let profiles = common::profiles("ns");
    let s = Settings::default();
    let outcome = validate::check(&wf, &profiles, &s.planner);
    let plan = outcome.as_ref().expect("plans");
    let fused_with = |stage: &str| {
        plan.stages
            .iter()
            .find(|d| d.name == stage)
            .and_then(|d| d.fused_with.clone())
    };
    assert_eq!(
        fused_with("scale").as_deref(),
        Some("crop"),
        "the example fuses"
    );
    // An old Deployment of scale (from before the fusion) is to go.
    let mut children = Children::default();
    let mut unfused = wf.clone();
    unfused.spec.fusion = vflow_api::FusionPolicy::Disabled;
    let old = workflow::desired(
        &unfused,
        &validate::check(&unfused, &profiles, &s.planner),
        &profiles,
        &children,
        &Default::default(),
        &Default::default(),
        &s,
        now(),
    )
    .expect("unfused");
    let stages: Vec<&str> = old.deployments.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(stages, ["split", "crop", "scale", "stitch"]);
    for (stage, d) in old.deployments {
        children.deployments.insert(stage, std::sync::Arc::new(d));
    }

    let want = workflow::desired(
        &wf,
        &outcome,
        &profiles,
        &children,
        &Default::default(),
        &Default::default(),
        &s,
        now(),
    )
    .expect("desired");
    let stages: Vec<&str> = want.deployments.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        stages,
        ["split", "crop", "stitch"],
        "scale runs in crop's pods"
    );
    let services: Vec<&str> = want.services.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(services, ["split", "crop", "stitch"]);
    assert_eq!(want.fused_away_deployments, ["scale"]);

    let crop = &want.deployments[1].1;
    let pod = crop.spec.template.spec.as_ref().expect("pod");
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["function", "fused-1", "metrics"]);
    let head = env(crop, "function");
    let member = env(crop, "fused-1");
    assert_eq!(head["VFLOW_FUNCTION"], "crop");
    assert_eq!(head["VFLOW_NEXT"], "http://127.0.0.1:8081");
    assert!(!head.contains_key("VFLOW_AFTER"));
    assert_eq!(member["VFLOW_FUNCTION"], "scale");
    assert_eq!(member["VFLOW_PORT"], "8081");
    assert_eq!(member["VFLOW_AFTER"], "http://127.0.0.1:8080");
    assert!(!member.contains_key("VFLOW_NEXT"));
    assert_eq!(
        member["VFLOW_COMMAND"],
        r#"["/usr/local/bin/vflow-fn","scale"]"#
    );
    // A chain in flight at the head needs both steps' time to drain.
    let head_timeout: u64 = head["VFLOW_TIMEOUT"]
        .trim_end_matches('s')
        .parse()
        .expect("s");
    let member_timeout: u64 = member["VFLOW_TIMEOUT"]
        .trim_end_matches('s')
        .parse()
        .expect("s");
    assert_eq!(
        head["VFLOW_DRAIN_TIMEOUT"],
        format!("{}s", head_timeout + member_timeout)
    );
    assert_eq!(
        pod.termination_grace_period_seconds,
        Some((head_timeout + member_timeout + build::GRACE_EXTRA_SECONDS) as i64)
    );
    let images: Vec<&str> = pod
        .containers
        .iter()
        .filter_map(|c| c.image.as_deref())
        .collect();
    assert_eq!(
        images,
        [
            "ghcr.io/vflow/fn-crop:0.1.0",
            "ghcr.io/vflow/fn-scale:0.1.0",
            "ghcr.io/vflow/fn-crop:0.1.0"
        ]
    );
    // The pod asks for the larger step; scale's runtime only for what it holds idle,
    // with its own stage's memory as its limit.
    let member_resources = pod.containers[1].resources.as_ref().expect("resources");
    let requests = member_resources.requests.as_ref().expect("requests");
    assert_eq!(requests["cpu"].0, "10m");
    assert_eq!(requests["memory"].0, "32Mi");
    let scale_plan = plan
        .stages
        .iter()
        .find(|d| d.name == "scale")
        .expect("scale");
    assert_eq!(
        member_resources.limits.as_ref().expect("limits")["memory"].0,
        scale_plan.size.memory().as_str()
    );
    let crop_plan = plan.stages.iter().find(|d| d.name == "crop").expect("crop");
    let larger = crop_plan
        .size
        .memory_bytes
        .max(scale_plan.size.memory_bytes);
    assert_eq!(
        resources(crop, "requests")["memory"],
        vflow_api::Quantity::from_bytes(larger).as_str()
    );
    // The chain shares one scratch: both steps' disk, for the chain's invocations.
    let concurrency = f64::from(crop_plan.concurrency);
    let each = crop_plan.size.scratch_bytes_each + scale_plan.size.scratch_bytes_each;
    let scratch = (each * concurrency).ceil() as u64;
    assert_eq!(head["VFLOW_SCRATCH_LIMIT"], scratch.to_string());
    assert_eq!(member["VFLOW_SCRATCH_LIMIT"], scratch.to_string());
    // Probes reach each runtime on its own port.
    let probe_port = pod.containers[1]
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .map(|g| g.port.clone());
    assert_eq!(
        probe_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("fused-1".into()))
    );
}

// Issue 18: under KAI the pods must reach KAI's scheduler, in a queue, or nothing
// enforces the fraction.
#[test]
fn kai_mode_sends_gpu_pods_to_kais_scheduler_in_a_queue() {
    let sharing: GpuSharing =
        serde_json::from_str(r#"{"mode": "kai", "queue": "video"}"#).expect("kai");
    let ds = built(sharing, &[]);
    let pod = |name: &str| ds[name].spec.template.clone();
    let detect = pod("detect");
    assert_eq!(
        detect
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref()),
        Some("kai-scheduler")
    );
    let labels = detect.metadata.and_then(|m| m.labels).unwrap_or_default();
    assert_eq!(
        labels.get("kai.scheduler/queue").map(String::as_str),
        Some("video")
    );
    assert_eq!(
        labels.get("vflow.io/stage").map(String::as_str),
        Some("detect")
    );
    // A CPU stage stays with the default scheduler.
    let scale = pod("scale");
    assert_eq!(scale.spec.and_then(|s| s.scheduler_name), None);
}
