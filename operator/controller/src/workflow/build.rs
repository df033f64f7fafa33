//! Pure builders: the Deployment and Service of one stage. No client, no clock.
//!
//! The pod (see docs/operator.md for the why of each choice):
//! - container `function`: the FunctionProfile's image running `vflow-runtime serve`
//!   on port 8080 (`http`), configured by `VFLOW_*` variables; readiness `/readyz`,
//!   liveness `/healthz`; requests from the sizing decision, memory limit = request,
//!   no CPU limit; GPU resources and env from the sharing mode's translation;
//! - containers `fused-1`, `fused-2` ... when the plan fused later stages into this
//!   one: each stage's image running its own runtime on the next port (8081 ...), fed
//!   by the one before over loopback (`VFLOW_NEXT`/`VFLOW_AFTER`) through the shared
//!   /scratch; the pod asks for the largest step's size (`chain_resources`);
//! - container `metrics`: the same image running `vflow-runtime metrics` on 9091
//!   (`metrics`), observing the function through the shared process namespace;
//! - restricted security: non-root (uid 10001, the images' `vflow` user), read-only
//!   root filesystem, emptyDirs for /scratch and /tmp, no privilege escalation, all
//!   capabilities dropped, seccomp RuntimeDefault, no service account token;
//! - bounded disk: /scratch's sizeLimit is the plan's scratch per invocation times the
//!   invocations at once (summed over a fused chain), /tmp's 256Mi, and every
//!   container requests and limits ephemeral-storage (the first one the emptyDirs), so
//!   the kubelet places the pod where the disk is and evicts it past its share; the
//!   runtime is told the scratch limit and refuses a download that would not fit;
//! - what a runtime may be made to do (docs/operations.md, security model): it requires
//!   the workflow's token (Secret `<workflow>-vflow-invoke`, mounted), reads and writes
//!   only the workflow's bucket, writes only under its outputPrefix, and reads no local
//!   file but its own scratch; only the two S3 credential keys of `secretRef` are
//!   mounted.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
            HTTPGetAction, KeyToPath, ObjectFieldSelector, PodSecurityContext, PodSpec,
            PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
            SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Toleration,
            Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity as K8sQuantity,
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kube::Resource;
use serde::Serialize;
use vflow_api::{FunctionProfile, Stage, VideoWorkflow};
use vflow_contract::auth;
use vflow_planner::plan::StageDecision;

use crate::error::{Error, Result};

pub const FIELD_MANAGER: &str = "vflow-operator";
pub const MANAGED_BY: &str = "vflow-operator";
pub use vflow_contract::naming::{
    FUNCTION_CONTAINER, LABEL_FUNCTION, LABEL_STAGE, LABEL_WORKFLOW, child_name,
};
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Hash of everything the operator sets on a child except `spec.replicas`: a child
/// whose hash and replicas match what would be written is not written again.
pub const ANNOTATION_SPEC_HASH: &str = "vflow.io/spec-hash";

pub const HTTP_PORT: i32 = vflow_contract::naming::RUNTIME_PORT as i32;
pub const METRICS_PORT: i32 = vflow_contract::naming::METRICS_PORT as i32;
pub const RUNTIME: &str = "/usr/local/bin/vflow-runtime";
pub const SCRATCH_DIR: &str = "/scratch";
pub const S3_CREDENTIALS_DIR: &str = "/var/run/secrets/vflow/s3";
/// The uid/gid of the `vflow` user in function-images/base/Dockerfile.
pub const RUN_AS: i64 = 10001;
/// Where a container sees its cgroup's OOM kill count: cgroup v2, else v1.
pub const MEMORY_EVENTS: &str =
    "/sys/fs/cgroup/memory.events:/sys/fs/cgroup/memory/memory.oom_control";
/// Used when neither the stage nor the profile sets a timeout.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 600;
/// Kubernetes waits this much longer than the runtime's drain before SIGKILL.
pub const GRACE_EXTRA_SECONDS: u64 = 15;

/// Everything the builders need for one stage.
pub struct StageInput<'a> {
    pub workflow: &'a VideoWorkflow,
    pub stage: &'a Stage,
    pub decision: &'a StageDecision,
    pub profile: &'a FunctionProfile,
    /// Extra pod-template annotations from the operator's configuration.
    pub pod_annotations: &'a BTreeMap<String, String>,
    /// The operator's S3 endpoint for a workflow whose storage names none.
    pub default_endpoint: Option<&'a str>,
}

fn selector_labels(workflow: &str, stage: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_WORKFLOW.to_string(), workflow.to_string()),
        (LABEL_STAGE.to_string(), stage.to_string()),
    ])
}

/// The labels of every child and pod of a stage.
pub fn labels(workflow: &str, stage: &str, function: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(workflow, stage);
    l.insert(LABEL_FUNCTION.into(), function.into());
    l.insert("app.kubernetes.io/name".into(), "vflow-stage".into());
    l.insert(
        "app.kubernetes.io/instance".into(),
        child_name(workflow, stage),
    );
    l.insert("app.kubernetes.io/component".into(), "stage".into());
    l.insert("app.kubernetes.io/part-of".into(), "vflow".into());
    l.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    l
}

/// Where the workflow's token Secret is mounted (`auth::INVOKE_TOKEN_FILE` is in it).
const INVOKE_TOKEN_DIR: &str = "/var/run/secrets/vflow/invoke";

/// The Secret holding the token the run engine sends to the workflow's function pods
/// (and they require): `token`, 32 random bytes in hex, made once; deleting the Secret
/// makes a new one (and rolls nothing: pods read the file at start).
pub fn token_secret(wf: &VideoWorkflow, token: String) -> Result<Secret> {
    let wf_name = wf.metadata.name.clone().unwrap_or_default();
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(auth::invoke_token_secret(&wf_name)),
            namespace: wf.metadata.namespace.clone(),
            labels: Some(BTreeMap::from([
                (LABEL_WORKFLOW.to_string(), wf_name.clone()),
                (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
            ])),
            owner_references: Some(vec![owner_reference(wf)?]),
            ..ObjectMeta::default()
        },
        string_data: Some(BTreeMap::from([(
            auth::INVOKE_TOKEN_KEY.to_string(),
            token,
        )])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    })
}

/// A new token: 32 bytes from the kernel's random source, in hex.
pub fn new_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The controller owner reference to the workflow.
pub fn owner_reference(wf: &VideoWorkflow) -> Result<OwnerReference> {
    wf.controller_owner_ref(&()).ok_or(Error::MissingField {
        kind: "VideoWorkflow",
        field: "metadata.uid",
    })
}

fn child_meta(input: &StageInput<'_>) -> Result<ObjectMeta> {
    let wf_name = input.workflow.metadata.name.clone().unwrap_or_default();
    Ok(ObjectMeta {
        name: Some(child_name(&wf_name, &input.stage.name)),
        namespace: input.workflow.metadata.namespace.clone(),
        labels: Some(labels(&wf_name, &input.stage.name, &input.stage.function)),
        owner_references: Some(vec![owner_reference(input.workflow)?]),
        ..ObjectMeta::default()
    })
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn quantity(s: impl Into<String>) -> K8sQuantity {
    K8sQuantity(s.into())
}

/// The function's timeout: the stage's, else the profile's, else 10 minutes.
pub fn timeout_seconds(input: &StageInput<'_>) -> u64 {
    input
        .stage
        .overrides
        .as_ref()
        .and_then(|o| o.timeout)
        .or(input.profile.spec.timeout)
        .map(|d| d.as_std().as_secs().max(1))
        .unwrap_or(DEFAULT_TIMEOUT_SECONDS)
}

/// Where a runtime container sits in its pod: 0 is the stage's own; a fused chain's
/// later stages follow, each on the next port, handing work on over loopback.
#[derive(Debug, Clone, Copy)]
struct Position {
    index: usize,
    /// Runtimes in the pod.
    of: usize,
    /// The chain's concurrency (the head's plan): each invocation passes every step.
    concurrency: u32,
    /// This step's timeout and those after it: how long a chain in flight here may take.
    drain_seconds: u64,
    /// The pod's scratch disk, shared by its runtimes (`pod_scratch_bytes`).
    scratch_bytes: u64,
}

/// /tmp is for the tools' small temporary files; media goes to /scratch.
const TMP_LIMIT_BYTES: u64 = 256 * 1024 * 1024;
/// A container's own writable layer and logs.
const CONTAINER_DISK_BYTES: u64 = 64 * 1024 * 1024;

/// The pod's scratch: each step's disk per invocation times the invocations the
/// chain runs at once, summed (a fused step's inputs are the previous step's
/// outputs, both on the shared scratch).
fn pod_scratch_bytes(chain: &[&StageInput<'_>], concurrency: u32) -> u64 {
    chain
        .iter()
        .map(|s| s.decision.size.scratch_bytes(concurrency))
        .sum::<f64>()
        .ceil() as u64
}

/// Bytes as a Kubernetes quantity, exact.
fn bytes_quantity(bytes: u64) -> K8sQuantity {
    quantity(bytes.to_string())
}

/// Adds an ephemeral-storage request and limit of `bytes` (the kubelet evicts a pod
/// whose emptyDirs, layers and logs pass the sum of its containers' limits).
fn with_disk(mut r: ResourceRequirements, bytes: u64) -> ResourceRequirements {
    for side in [&mut r.requests, &mut r.limits] {
        side.get_or_insert_with(BTreeMap::new)
            .insert("ephemeral-storage".into(), bytes_quantity(bytes));
    }
    r
}

/// The invocation port of the pod's `index`-th runtime.
pub fn runtime_port(index: usize) -> i32 {
    HTTP_PORT + i32::try_from(index).unwrap_or(0)
}

/// The name of the pod's `index`-th runtime container and of its port.
pub fn runtime_container(index: usize) -> String {
    if index == 0 {
        FUNCTION_CONTAINER.into()
    } else {
        format!("fused-{index}")
    }
}

fn function_container(
    input: &StageInput<'_>,
    at: Position,
    resources: ResourceRequirements,
) -> Result<Container> {
    let spec = &input.profile.spec;
    let storage = &input.workflow.spec.storage;
    let json = |what: &'static str, v: &Vec<String>| {
        serde_json::to_string(v).map_err(|source| Error::Serialize { what, source })
    };
    let timeout = timeout_seconds(input);
    let port = runtime_port(at.index);
    let port_name = if at.index == 0 {
        "http".to_string()
    } else {
        runtime_container(at.index)
    };
    let mut vars = vec![
        env("VFLOW_FUNCTION", input.stage.function.clone()),
        env("VFLOW_COMMAND", json("command", &spec.command)?),
    ];
    if spec.worker == vflow_api::WorkerMode::Resident {
        vars.push(env("VFLOW_WORKER", "resident"));
    }
    if !spec.warmup_command.is_empty() {
        vars.push(env(
            "VFLOW_WARMUP_COMMAND",
            json("warmup command", &spec.warmup_command)?,
        ));
    }
    if at.index + 1 < at.of {
        vars.push(env(
            "VFLOW_NEXT",
            format!("http://127.0.0.1:{}", runtime_port(at.index + 1)),
        ));
    }
    if at.index > 0 {
        vars.push(env(
            "VFLOW_AFTER",
            format!("http://127.0.0.1:{}", runtime_port(at.index - 1)),
        ));
    }
    vars.extend([
        env("VFLOW_PORT", port.to_string()),
        env("VFLOW_CONCURRENCY", at.concurrency.max(1).to_string()),
        env("VFLOW_SCRATCH_DIR", SCRATCH_DIR),
        env("VFLOW_SCRATCH_LIMIT", at.scratch_bytes.to_string()),
        env("VFLOW_TIMEOUT", format!("{timeout}s")),
        env("VFLOW_DRAIN_TIMEOUT", format!("{}s", at.drain_seconds)),
        // The container's own cgroup: its OOM kills, also of a process under the
        // function.
        env("VFLOW_MEMORY_EVENTS", MEMORY_EVENTS),
        EnvVar {
            name: "VFLOW_INSTANCE".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        env("VFLOW_LOG_FORMAT", "json"),
    ]);
    // Who may call it and what it may touch: the workflow's token, bucket and outputs.
    vars.extend([
        env("VFLOW_BUCKET", storage.bucket.clone()),
        env(
            "VFLOW_OUTPUT_PREFIX",
            input.workflow.spec.output_prefix.clone(),
        ),
        env("VFLOW_INVOKE_TOKEN_FILE", auth::INVOKE_TOKEN_FILE),
    ]);
    if let Some(endpoint) = storage.endpoint.as_deref().or(input.default_endpoint) {
        vars.push(env("VFLOW_S3_ENDPOINT", endpoint.to_string()));
    }
    if let Some(region) = &storage.region {
        vars.push(env("VFLOW_S3_REGION", region.clone()));
    }
    vars.push(env("VFLOW_S3_PATH_STYLE", storage.path_style.to_string()));
    let mut mounts = vec![
        VolumeMount {
            name: "scratch".into(),
            mount_path: SCRATCH_DIR.into(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "invoke-token".into(),
            mount_path: INVOKE_TOKEN_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ];
    if storage.secret_ref.is_some() {
        vars.push(env("VFLOW_S3_CREDENTIALS_DIR", S3_CREDENTIALS_DIR));
        mounts.push(VolumeMount {
            name: "s3-credentials".into(),
            mount_path: S3_CREDENTIALS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    if let Some(g) = input.decision.gpu.as_ref() {
        vars.extend(g.env.iter().map(|(k, v)| env(k, v.clone())));
    }
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port_name.clone()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(1),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    Ok(Container {
        name: runtime_container(at.index),
        image: Some(spec.image.clone()),
        command: Some(vec![RUNTIME.into(), "serve".into()]),
        env: Some(vars),
        ports: Some(vec![ContainerPort {
            name: Some(port_name.clone()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(probe("/readyz", 1, 3)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        resources: Some(resources),
        security_context: Some(container_security()),
        volume_mounts: Some(mounts),
        ..Container::default()
    })
}

/// A stage's own resources: requests from its size, memory limit = request, no CPU
/// limit; the GPU from the sharing mode's translation.
fn own_resources(d: &StageDecision) -> ResourceRequirements {
    let mut requests = BTreeMap::from([
        ("cpu".to_string(), quantity(d.size.cpu().as_str())),
        ("memory".to_string(), quantity(d.size.memory().as_str())),
    ]);
    let mut limits = BTreeMap::from([("memory".to_string(), quantity(d.size.memory().as_str()))]);
    if let Some(g) = d.gpu.as_ref() {
        for (k, v) in &g.resources {
            requests.insert(k.clone(), quantity(v.clone()));
            limits.insert(k.clone(), quantity(v.clone()));
        }
    }
    ResourceRequirements {
        requests: Some(requests),
        limits: Some(limits),
        ..ResourceRequirements::default()
    }
}

/// What an idle runtime holds (the planner's per-instance base).
const RUNTIME_CPU: &str = "10m";
const RUNTIME_MEMORY: &str = "32Mi";

/// Resources of a fused pod's runtimes. The steps of one invocation run one after
/// another, so the pod asks for the largest step's size (on the stage's own
/// container, whose memory limit grows to match) and the later runtimes only for what
/// they hold idle; each later runtime's memory limit stays its own stage's size, so a
/// function that grows past its plan is still killed as one would be on its own pod.
fn chain_resources(decisions: &[&StageDecision]) -> Vec<ResourceRequirements> {
    if decisions.len() < 2 {
        return decisions.iter().map(|d| own_resources(d)).collect();
    }
    let cpu = decisions
        .iter()
        .map(|d| d.size.cpu_cores)
        .fold(0.0, f64::max);
    let memory = decisions
        .iter()
        .map(|d| d.size.memory_bytes)
        .fold(0.0, f64::max);
    let largest = vflow_api::Quantity::from_bytes(memory).to_string();
    let mut out = vec![ResourceRequirements {
        requests: Some(BTreeMap::from([
            (
                "cpu".to_string(),
                quantity(vflow_api::Quantity::from_cores(cpu).to_string()),
            ),
            ("memory".to_string(), quantity(largest.clone())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), quantity(largest))])),
        ..ResourceRequirements::default()
    }];
    for d in &decisions[1..] {
        out.push(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), quantity(RUNTIME_CPU)),
                ("memory".to_string(), quantity(RUNTIME_MEMORY)),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                quantity(d.size.memory().as_str()),
            )])),
            ..ResourceRequirements::default()
        });
    }
    out
}

fn sidecar_container(input: &StageInput<'_>) -> Container {
    Container {
        name: "metrics".into(),
        image: Some(input.profile.spec.image.clone()),
        command: Some(vec![RUNTIME.into(), "metrics".into()]),
        env: Some(vec![
            env("VFLOW_FUNCTION", input.stage.function.clone()),
            env("VFLOW_METRICS_PORT", METRICS_PORT.to_string()),
            env("VFLOW_LOG_FORMAT", "json"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: METRICS_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        resources: Some(with_disk(
            ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_string(), quantity("10m")),
                    ("memory".to_string(), quantity("32Mi")),
                ])),
                limits: Some(BTreeMap::from([("memory".to_string(), quantity("64Mi"))])),
                ..ResourceRequirements::default()
            },
            CONTAINER_DISK_BYTES,
        )),
        security_context: Some(container_security()),
        ..Container::default()
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn volumes(input: &StageInput<'_>, scratch_bytes: u64) -> Vec<Volume> {
    let empty = |name: &str, bytes: u64| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(bytes_quantity(bytes)),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    };
    let wf_name = input.workflow.metadata.name.clone().unwrap_or_default();
    let mut v = vec![
        empty("scratch", scratch_bytes),
        empty("tmp", TMP_LIMIT_BYTES),
        Volume {
            name: "invoke-token".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(auth::invoke_token_secret(&wf_name)),
                items: Some(vec![KeyToPath {
                    key: auth::INVOKE_TOKEN_KEY.into(),
                    path: auth::INVOKE_TOKEN_KEY.into(),
                    ..KeyToPath::default()
                }]),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    if let Some(secret) = &input.workflow.spec.storage.secret_ref {
        // Only the two keys the runtime reads: the pod runs an image the workflow's
        // author picks, and the Secret may hold more.
        let key = |k: &str| KeyToPath {
            key: k.into(),
            path: k.into(),
            ..KeyToPath::default()
        };
        v.push(Volume {
            name: "s3-credentials".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                items: Some(vec![key("AWS_ACCESS_KEY_ID"), key("AWS_SECRET_ACCESS_KEY")]),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    v
}

/// The stage's Deployment with `replicas` instances. `fused`: the stages the plan
/// fused after it, in chain order; each gets a runtime container of the pod.
pub fn deployment(
    input: &StageInput<'_>,
    fused: &[StageInput<'_>],
    replicas: u32,
) -> Result<Deployment> {
    let wf_name = input.workflow.metadata.name.clone().unwrap_or_default();
    let mut pod_labels = labels(&wf_name, &input.stage.name, &input.stage.function);
    let mut pod_annotations = input.pod_annotations.clone();
    let gpu = input.decision.gpu.as_ref();
    if let Some(g) = gpu {
        pod_annotations.extend(g.annotations.clone());
        // The mode's labels (KAI's queue) never replace vflow's own.
        for (k, v) in &g.labels {
            pod_labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let scheduler_name = gpu.and_then(|g| g.scheduler_name.clone());
    let tolerations = gpu.filter(|g| !g.resources.is_empty()).map(|g| {
        g.resources
            .keys()
            .map(|r| Toleration {
                key: Some(r.clone()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Toleration::default()
            })
            .collect()
    });
    let chain: Vec<&StageInput<'_>> = std::iter::once(input).chain(fused).collect();
    let timeouts: Vec<u64> = chain.iter().map(|s| timeout_seconds(s)).collect();
    let resources = chain_resources(&chain.iter().map(|s| s.decision).collect::<Vec<_>>());
    let scratch_bytes = pod_scratch_bytes(&chain, input.decision.concurrency);
    let mut containers = Vec::with_capacity(chain.len() + 1);
    for (index, (stage, resources)) in chain.iter().zip(resources).enumerate() {
        let at = Position {
            index,
            of: chain.len(),
            concurrency: input.decision.concurrency,
            drain_seconds: timeouts[index..].iter().sum(),
            scratch_bytes,
        };
        // The pod's emptyDirs are counted on its first container.
        let disk = if index == 0 {
            scratch_bytes + TMP_LIMIT_BYTES + CONTAINER_DISK_BYTES
        } else {
            CONTAINER_DISK_BYTES
        };
        containers.push(function_container(stage, at, with_disk(resources, disk))?);
    }
    containers.push(sidecar_container(input));
    // Sharing mode Dra: the GPU comes from a claim of the pod's own (the template is
    // the stage's), shared by the function's container and the sidecar.
    let claimed = gpu.is_some_and(|g| g.claim.is_some());
    if claimed {
        let sidecar = containers.len() - 1;
        for i in [0, sidecar] {
            if let Some(r) = containers[i].resources.as_mut() {
                r.claims = Some(vec![super::dra::container_claim()]);
            } else {
                containers[i].resources = Some(ResourceRequirements {
                    claims: Some(vec![super::dra::container_claim()]),
                    ..ResourceRequirements::default()
                });
            }
        }
    }
    let resource_claims = claimed.then(|| vec![super::dra::pod_claim(&wf_name, &input.stage.name)]);
    let grace = timeouts.iter().sum::<u64>() + GRACE_EXTRA_SECONDS;
    let mut d = Deployment {
        metadata: child_meta(input)?,
        spec: DeploymentSpec {
            replicas: None,
            selector: LabelSelector {
                match_labels: Some(selector_labels(&wf_name, &input.stage.name)),
                ..LabelSelector::default()
            },
            revision_history_limit: Some(2),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: (!pod_annotations.is_empty()).then_some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers,
                    resource_claims,
                    scheduler_name,
                    share_process_namespace: Some(true),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(grace as i64),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        fs_group: Some(RUN_AS),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    tolerations,
                    volumes: Some(volumes(input, scratch_bytes)),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    };
    let hash = spec_hash(&d)?;
    d.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANNOTATION_SPEC_HASH.into(), hash);
    d.spec.replicas = Some(i32::try_from(replicas).unwrap_or(i32::MAX));
    Ok(d)
}

/// The stage's Service: port 8080 (`http`, invocations) and 9091 (`metrics`).
pub fn service(input: &StageInput<'_>) -> Result<Service> {
    let wf_name = input.workflow.metadata.name.clone().unwrap_or_default();
    let port = |name: &str, number: i32| ServicePort {
        name: Some(name.into()),
        port: number,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    };
    let mut s = Service {
        metadata: child_meta(input)?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&wf_name, &input.stage.name)),
            ports: Some(vec![port("http", HTTP_PORT), port("metrics", METRICS_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    let hash = spec_hash(&s)?;
    s.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANNOTATION_SPEC_HASH.into(), hash);
    Ok(s)
}

/// FNV-1a (64 bit) of the object's JSON: stable across Rust releases and processes,
/// unlike `DefaultHasher`.
pub fn spec_hash<T: Serialize>(obj: &T) -> Result<String> {
    let bytes = serde_json::to_vec(obj).map_err(|source| Error::Serialize {
        what: "child object",
        source,
    })?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Ok(format!("{h:016x}"))
}
