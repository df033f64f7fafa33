//! Level 3: the operator as a process against a real control plane (e2e/testenv:
//! kube-apiserver, controller-manager, scheduler, kwok nodes). Ignored by a plain
//! `cargo test`; `make e2e-operator` starts the testenv and runs them with
//! `--ignored --test-threads=1`. Each test has its own namespace and its own operator
//! process(es) watching only that namespace; a failing test dumps the namespace.

mod common;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Namespace, Service},
        events::v1::Event,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;
use vflow_api::{FunctionProfile, VideoWorkflow};

fn state_dir() -> PathBuf {
    std::env::var_os("VFLOW_TESTENV_DIR")
        .map_or_else(|| PathBuf::from("/tmp/vflow-testenv"), PathBuf::from)
}

fn kubeconfig() -> PathBuf {
    std::env::var_os("VFLOW_E2E_KUBECONFIG")
        .map_or_else(|| state_dir().join("kubeconfig"), PathBuf::from)
}

fn kubectl() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    std::env::var_os("VFLOW_TESTENV_BIN")
        .map_or_else(
            || PathBuf::from(home).join(".cache/vflow-testenv/bin"),
            PathBuf::from,
        )
        .join("kubectl")
}

async fn client() -> Client {
    vflow_operator::install_crypto_provider();
    let kc =
        Kubeconfig::read_from(kubeconfig()).expect("testenv kubeconfig: run `make testenv-up`");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A namespace with the CRDs and the example FunctionProfiles; dumped if the test fails.
struct Env {
    client: Client,
    ns: String,
}

impl Env {
    async fn new(name: &str) -> Env {
        let client = client().await;
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in vflow_api::crds() {
            let n = crd.name_any();
            crds.patch(&n, &PatchParams::apply("e2e").force(), &Patch::Apply(&crd))
                .await
                .expect("apply CRD");
            wait_for("CRD established", Duration::from_secs(30), || {
                let crds = crds.clone();
                let n = n.clone();
                async move {
                    crds.get(&n)
                        .await
                        .ok()
                        .and_then(|c| c.status)
                        .and_then(|s| s.conditions)
                        .is_some_and(|cs| {
                            cs.iter()
                                .any(|c| c.type_ == "Established" && c.status == "True")
                        })
                }
            })
            .await;
        }
        let nanos = Timestamp::now().as_nanosecond() % 1_000_000;
        let ns = format!("e2e-{name}-{nanos}");
        let nss: Api<Namespace> = Api::all(client.clone());
        nss.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns"),
        )
        .await
        .expect("create namespace");
        let env = Env { client, ns };
        for p in common::profiles(&env.ns).into_values() {
            env.apply_profile(&p).await;
        }
        env
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn apply_profile(&self, p: &FunctionProfile) {
        let mut p = p.clone();
        p.metadata.namespace = Some(self.ns.clone());
        p.metadata.resource_version = None;
        self.api::<FunctionProfile>()
            .patch(
                &p.name_any(),
                &PatchParams::apply("e2e").force(),
                &Patch::Apply(&p),
            )
            .await
            .expect("apply profile");
    }

    async fn apply_workflow(&self, wf: &VideoWorkflow) {
        let mut wf = wf.clone();
        wf.metadata.namespace = Some(self.ns.clone());
        wf.metadata.uid = None;
        wf.metadata.generation = None;
        wf.status = None;
        self.api::<VideoWorkflow>()
            .patch(
                &wf.name_any(),
                &PatchParams::apply("e2e").force(),
                &Patch::Apply(&wf),
            )
            .await
            .expect("apply workflow");
    }

    fn example(name: &str) -> VideoWorkflow {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../manifests/examples/{name}.yaml"));
        serde_saphyr::from_str(&std::fs::read_to_string(path).expect("example")).expect("parses")
    }

    async fn condition(&self, wf: &str, type_: &str) -> Option<(String, String, String)> {
        let w = self.api::<VideoWorkflow>().get(wf).await.ok()?;
        let c = w
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)?;
        Some((c.status, c.reason, c.message))
    }

    async fn wait_ready(&self, wf: &str, timeout: Duration) {
        wait_for(&format!("{wf} Ready"), timeout, || async {
            self.condition(wf, "Ready")
                .await
                .is_some_and(|(s, _, _)| s == "True")
        })
        .await;
    }

    /// The testenv's fake nodes.
    async fn kwok_nodes(&self) -> u32 {
        use k8s_openapi::api::core::v1::Node;
        let n = Api::<Node>::all(self.client.clone())
            .list(&ListParams::default().labels("type=kwok"))
            .await
            .expect("nodes")
            .items
            .len() as u32;
        assert!(n > 0, "the testenv has no kwok nodes");
        n
    }

    /// Whether Deployment `name` has `n` ready replicas.
    async fn ready_replicas(&self, name: String, n: i32) -> bool {
        self.api::<Deployment>()
            .get(&name)
            .await
            .ok()
            .and_then(|d| d.status)
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
            == n
    }

    /// Deletes workflow `wf` and waits until its pods are gone: the room they hold on
    /// the nodes is the whole testenv's, and namespaces stay after a test.
    async fn delete_workflow_and_its_pods(&self, wf: &str) {
        use k8s_openapi::api::core::v1::Pod;
        self.api::<VideoWorkflow>()
            .delete(wf, &DeleteParams::foreground())
            .await
            .expect("delete workflow");
        let pods: Api<Pod> = self.api();
        let selector = format!("vflow.io/workflow={wf}");
        wait_for(&format!("{wf}'s pods gone"), READY_TIMEOUT, || async {
            pods.list(&ListParams::default().labels(&selector))
                .await
                .is_ok_and(|l| l.items.is_empty())
        })
        .await;
    }

    async fn deployments(&self, wf: &str) -> BTreeMap<String, Deployment> {
        self.api::<Deployment>()
            .list(&ListParams::default().labels(&format!("vflow.io/workflow={wf}")))
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|d| (d.name_any(), d))
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== namespace {} ====", self.ns);
            let _ = Command::new(kubectl())
                .args(["--kubeconfig"])
                .arg(kubeconfig())
                .args([
                    "-n",
                    &self.ns,
                    "get",
                    "videoworkflows,functionprofiles,deployments,services,pods,events",
                    "-o",
                    "wide",
                ])
                .status();
            let _ = Command::new(kubectl())
                .args(["--kubeconfig"])
                .arg(kubeconfig())
                .args(["-n", &self.ns, "get", "videoworkflows", "-o", "yaml"])
                .status();
        }
        // Namespaces are left in place: deleting them makes the namespace controller and
        // the garbage collector write while a later test counts writes. `make e2e-operator`
        // runs on a fresh testenv and stops it afterwards.
    }
}

/// One operator process watching the test's namespace.
struct Operator {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Operator {
    fn start(env: &Env, identity: &str, extra: &[&str]) -> Operator {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("{}-{identity}.log", env.ns));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_vflow-operator"))
            .env("KUBECONFIG", kubeconfig())
            .env("RUST_LOG", "info,kube=warn")
            // As the chart runs it: its namespace and labels, so every workflow gets its
            // stage NetworkPolicy (and the steady-state tests cover it).
            .env("POD_NAMESPACE", &env.ns)
            .args(["--pod-selector", "app.kubernetes.io/name=vflow-operator"])
            .args([
                "--watch-namespace",
                &env.ns,
                "--lease-namespace",
                &env.ns,
                "--identity",
                identity,
            ])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .args(["--pod-annotation", "pod-ready.stage.kwok.x-k8s.io/delay=2s"])
            .args(extra)
            .stdout(file.try_clone().expect("fd"))
            .stderr(file)
            .spawn()
            .expect("start vflow-operator");
        Operator { child, port, log }
    }

    async fn metrics(&self) -> String {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{}/metrics", self.port)])
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// API writes (every method but GET) this process made, the Lease excluded.
    async fn writes(&self) -> u64 {
        parse_writes(&self.metrics().await)
    }

    async fn is_leader(&self) -> bool {
        self.metrics()
            .await
            .lines()
            .any(|l| l == "vflow_operator_leader 1")
    }

    async fn wait_ready(&self) {
        wait_for("operator /readyz", Duration::from_secs(30), || async {
            Command::new("curl")
                .args(["-sf", &format!("http://127.0.0.1:{}/readyz", self.port)])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .await;
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== operator log {} (tail) ====", self.log.display());
            if let Ok(text) = std::fs::read_to_string(&self.log) {
                let lines: Vec<&str> = text.lines().collect();
                for l in &lines[lines.len().saturating_sub(40)..] {
                    eprintln!("{l}");
                }
            }
        }
        self.kill();
    }
}

fn parse_writes(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("vflow_operator_api_requests_total{"))
        .filter(|l| !l.contains("method=\"GET\"") && !l.contains("resource=\"leases\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// What the operator writes of each Deployment: the spec (generation), labels, its
/// spec-hash annotation, replicas, and its server-side-apply entry (which moves with
/// every apply that changes something). Not the resourceVersion: the controller-manager
/// moves it with status updates and deployment.kubernetes.io/revision, on its own
/// schedule, also after the workflow is Ready.
fn operator_owned(m: &BTreeMap<String, Deployment>) -> Vec<(String, String)> {
    m.iter()
        .map(|(name, d)| {
            let applied = d.metadata.managed_fields.as_ref().and_then(|fs| {
                fs.iter()
                    .find(|f| f.manager.as_deref() == Some("vflow-operator"))
                    .map(|f| (f.time.clone(), f.fields_v1.clone()))
            });
            let hash = d
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("vflow.io/spec-hash"));
            let owned = format!(
                "generation {:?} labels {:?} spec-hash {hash:?} replicas {:?} applied {applied:?}",
                d.metadata.generation, d.metadata.labels, d.spec.replicas
            );
            (name.clone(), owned)
        })
        .collect()
}

fn requests(d: &Deployment) -> BTreeMap<String, String> {
    d.spec.template.spec.as_ref().expect("pod").containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.requests.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

/// apiserver_request_total for patches (server-side apply included) of the operator's
/// resources, as the API server counts them: an independent count of the operator's
/// writes (the controller-manager updates Deployments with PUT, never PATCH).
async fn apiserver_writes(client: &Client) -> u64 {
    let text = client
        .request_text(http::Request::get("/metrics").body(vec![]).expect("req"))
        .await
        .expect("apiserver /metrics");
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| {
            ["APPLY", "PATCH"]
                .iter()
                .any(|v| l.contains(&format!("verb=\"{v}\"")))
        })
        .filter(|l| {
            [
                "deployments",
                "services",
                "videoworkflows",
                "functionprofiles",
            ]
            .iter()
            .any(|r| l.contains(&format!("resource=\"{r}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
#[ignore = "needs e2e/testenv: make e2e-operator"]
async fn examples_become_deployments_and_services_with_planned_resources() {
    let env = Env::new("examples").await;
    let op = Operator::start(&env, "a", &["--leader-elect=false"]);
    let names = ["detect", "thumbnails", "transcode-ladder"];
    for n in names {
        env.apply_workflow(&Env::example(n)).await;
    }
    for n in names {
        env.wait_ready(n, READY_TIMEOUT).await;
        let wf = env.api::<VideoWorkflow>().get(n).await.expect("wf");
        let status = wf.status.expect("status");
        assert_eq!(status.observed_generation, wf.metadata.generation);
        let deployments = env.deployments(n).await;
        let services: Api<Service> = env.api();
        assert_eq!(
            deployments.len(),
            wf.spec.stages.len(),
            "{n}: one Deployment per stage"
        );
        for plan in &status.stages {
            let child = format!("{n}-{}", plan.name);
            let d = deployments
                .get(&child)
                .unwrap_or_else(|| panic!("Deployment {child}"));
            let r = requests(d);
            // The API server writes quantities in canonical form (1024Mi -> 1Gi).
            let value = |s: Option<&str>| {
                s.and_then(|s| s.parse::<vflow_api::Quantity>().ok())
                    .and_then(|q| q.value().ok())
            };
            assert_eq!(
                value(r.get("cpu").map(String::as_str)),
                value(plan.cpu.as_ref().map(|q| q.as_str())),
                "{child} cpu"
            );
            assert_eq!(
                value(r.get("memory").map(String::as_str)),
                value(plan.memory.as_ref().map(|q| q.as_str())),
                "{child} memory"
            );
            for (k, v) in &plan.gpu_resources {
                assert_eq!(r.get(k), Some(v), "{child} {k}");
            }
            assert_eq!(
                d.spec.replicas.map(|r| r as u32),
                plan.replicas,
                "{child} replicas"
            );
            let s = services.get(&child).await.expect("Service");
            assert!(
                s.owner_references()
                    .iter()
                    .any(|o| o.kind == "VideoWorkflow" && o.controller == Some(true))
            );
        }
    }
    // Each workflow's stage pods: in only from the operator (runtime and metrics
    // ports), out only to DNS and the storage endpoint's port (MinIO's 9000 here).
    let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> = env.api();
    for n in names {
        let p = policies
            .get(&format!("{n}-vflow-stages"))
            .await
            .unwrap_or_else(|e| panic!("{n}'s NetworkPolicy: {e}"));
        assert!(
            p.owner_references()
                .iter()
                .any(|o| o.kind == "VideoWorkflow")
        );
        let spec = p.spec.expect("spec");
        let selects = spec
            .pod_selector
            .and_then(|s| s.match_labels)
            .unwrap_or_default();
        assert_eq!(
            selects.get("vflow.io/workflow").map(String::as_str),
            Some(n)
        );
        let json = serde_json::to_value(&spec.ingress).expect("json");
        assert_eq!(
            json,
            serde_json::json!([{
                "from": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": env.ns}},
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "vflow-operator"}}
                }],
                "ports": [{"port": 8080, "protocol": "TCP"}, {"port": 9091, "protocol": "TCP"}]
            }])
        );
        let json = serde_json::to_value(&spec.egress).expect("json");
        assert_eq!(
            json,
            serde_json::json!([
                {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
                {"ports": [{"port": 9000, "protocol": "TCP"}]}
            ])
        );
    }
    let detect = env.deployments("detect").await;
    assert_eq!(
        requests(&detect["detect-detect"])
            .get("nvidia.com/gpu")
            .map(String::as_str),
        Some("1")
    );
    // The gauges add up what the Deployments say; the run controller is on and idle.
    let mut desired = 0;
    for n in names {
        desired += env
            .deployments(n)
            .await
            .values()
            .map(|d| d.spec.replicas.unwrap_or(0))
            .sum::<i32>();
    }
    let metrics = op.metrics().await;
    let gauge = |line: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{line} in\n{metrics}"))
    };
    assert_eq!(
        gauge("vflow_operator_instances{state=\"desired\"}"),
        f64::from(desired)
    );
    assert_eq!(gauge("vflow_runs_active"), 0.0);
    assert!(
        metrics.contains("vflow_operator_function_requests{function=\""),
        "{metrics}"
    );
}

#[tokio::test]
#[ignore = "needs e2e/testenv: make e2e-operator"]
async fn profile_change_resizes_deployments() {
    let env = Env::new("resize").await;
    let _op = Operator::start(&env, "a", &["--leader-elect=false"]);
    env.apply_workflow(&Env::example("thumbnails")).await;
    env.wait_ready("thumbnails", READY_TIMEOUT).await;
    let before = env.deployments("thumbnails").await;
    // The pod holds `degree` invocations of the profile's size (docs/planner.md:
    // packing): its cores are the profile's times the packing degree.
    let degree = |d: &Deployment| -> f64 {
        d.spec.template.spec.as_ref().expect("pod").containers[0]
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "VFLOW_CONCURRENCY")
            .and_then(|e| e.value.as_deref()?.parse().ok())
            .expect("VFLOW_CONCURRENCY")
    };
    let cores = |d: &Deployment| -> f64 {
        requests(d)["cpu"]
            .parse::<vflow_api::Quantity>()
            .ok()
            .and_then(|q| q.value().ok())
            .expect("cpu")
    };
    let thumbnail = &before["thumbnails-thumbnail"];
    assert!((cores(thumbnail) - 0.5 * degree(thumbnail)).abs() < 1e-9);
    let memory_before = requests(thumbnail)["memory"].clone();
    let mut p = common::profiles(&env.ns)["thumbnail"].clone();
    p.spec.resources.cpu = "750m".parse().expect("q");
    p.spec.resources.memory = "384Mi".parse().expect("q");
    env.apply_profile(&p).await;
    wait_for("thumbnail resized", READY_TIMEOUT, || async {
        let d = &env.deployments("thumbnails").await["thumbnails-thumbnail"];
        (cores(d) - 0.75 * degree(d)).abs() < 1e-9 && requests(d)["memory"] != memory_before
    })
    .await;
    let after = env.deployments("thumbnails").await;
    let others = |m: &BTreeMap<String, Deployment>| {
        let mut m = m.clone();
        m.remove("thumbnails-thumbnail");
        operator_owned(&m)
    };
    assert_eq!(
        others(&after),
        others(&before),
        "stages of other functions are not rewritten"
    );
}

#[tokio::test]
#[ignore = "needs e2e/testenv: make e2e-operator"]
async fn deleting_a_workflow_garbage_collects_its_children() {
    let env = Env::new("gc").await;
    let _op = Operator::start(&env, "a", &["--leader-elect=false"]);
    env.apply_workflow(&Env::example("thumbnails")).await;
    env.wait_ready("thumbnails", READY_TIMEOUT).await;
    assert_eq!(env.deployments("thumbnails").await.len(), 3);
    env.api::<VideoWorkflow>()
        .delete("thumbnails", &DeleteParams::foreground())
        .await
        .expect("delete");
    wait_for("children garbage-collected", READY_TIMEOUT, || async {
        let services: Api<Service> = env.api();
        let svcs = services
            .list(&ListParams::default().labels("vflow.io/workflow=thumbnails"))
            .await
            .expect("list");
        env.deployments("thumbnails").await.is_empty() && svcs.items.is_empty()
    })
    .await;
}

#[tokio::test]
#[ignore = "needs e2e/testenv: make e2e-operator"]
async fn invalid_workflow_gets_a_condition_and_an_event_and_nothing_else_changes() {
    let env = Env::new("invalid").await;
    let _op = Operator::start(&env, "a", &["--leader-elect=false"]);
    env.apply_workflow(&Env::example("thumbnails")).await;
    env.wait_ready("thumbnails", READY_TIMEOUT).await;
    let before = env.deployments("thumbnails").await;
    let mut wf = Env::example("thumbnails");
    wf.spec.stages[1].function = "thumbnial".into();
    env.apply_workflow(&wf).await;
    wait_for("Ready False with the field path", READY_TIMEOUT, || async {
        env.condition("thumbnails", "Ready")
            .await
            .is_some_and(|(s, r, m)| {
                s == "False" && r == "ProfileMissing" && m.contains("spec.stages[1].function")
            })
    })
    .await;
    let (status, _, message) = env
        .condition("thumbnails", "Degraded")
        .await
        .expect("Degraded");
    assert_eq!(status, "True");
    assert!(message.contains("did you mean \"thumbnail\""), "{message}");
    wait_for("a Warning Event", READY_TIMEOUT, || async {
        env.api::<Event>()
            .list(&ListParams::default())
            .await
            .is_ok_and(|l| {
                l.items.iter().any(|e| {
                    e.reason.as_deref() == Some("ProfileMissing")
                        && e.type_.as_deref() == Some("Warning")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                            == Some("thumbnails")
                })
            })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = env.deployments("thumbnails").await;
    assert_eq!(
        operator_owned(&after),
        operator_owned(&before),
        "children left as they were"
    );
}

#[tokio::test]
#[ignore = "needs e2e/testenv: make e2e-operator"]
async fn prewarm_request_makes_pods_ready_at_the_requested_time() {
    // kwok makes pods Ready 2 s after they start (the pod annotation the operator adds in
    // these tests), the thumbnail profile's coldStartPrior is 2 s, the margin 1 s: the
    // operator scales at `at - 3 s` and the pods are Ready a little before `at`.
    let env = Env::new("prewarm").await;
    let op = Operator::start(&env, "a", &["--leader-elect=false"]);
    env.apply_workflow(&Env::example("thumbnails")).await;
    env.wait_ready("thumbnails", READY_TIMEOUT).await;
    let at = Timestamp::now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(12))
        .expect("time");
    let mut wf = Env::example("thumbnails");
    wf.metadata.annotations = Some(BTreeMap::from([(
        "vflow.io/prewarm".to_string(),
        json!([{"stage": "thumbnail", "replicas": 2, "at": at.to_string()}]).to_string(),
    )]));
    env.apply_workflow(&wf).await;
    let deployments: Api<Deployment> = env.api();
    let mut scaled_at = None;
    let ready_at;
    loop {
        let d = deployments.get("thumbnails-thumbnail").await.expect("get");
        let now = Timestamp::now();
        if scaled_at.is_none() && d.spec.replicas == Some(2) {
            scaled_at = Some(now);
        }
        if d.status.as_ref().and_then(|s| s.ready_replicas) == Some(2) {
            ready_at = now;
            break;
        }
        assert!(
            now < at
                .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(10))
                .expect("t"),
            "pods not Ready 10 s after {at}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let scaled_at = scaled_at.expect("scaled");
    let early = at.duration_since(scaled_at).as_secs_f64();
    let late = ready_at.duration_since(at).as_secs_f64();
    eprintln!("pre-warm: scaled {early:.2}s before `at`, Ready {late:+.2}s relative to `at`");
    assert!(
        (2.0..=4.5).contains(&early),
        "scaled {early:.2}s before at (want cold start 2s + margin 1s)"
    );
    assert!(
        late <= 1.5,
        "pods Ready {late:.2}s after the requested time"
    );
    assert!(op.writes().await > 0);
}

#[tokio::test]
#[ignore = "needs e2e/testenv: make e2e-operator"]
async fn restarted_operator_makes_no_writes_in_a_steady_state() {
    let env = Env::new("restart").await;
    let mut first = Operator::start(&env, "a", &[]);
    let names = ["detect", "thumbnails", "transcode-ladder"];
    for n in names {
        env.apply_workflow(&Env::example(n)).await;
    }
    for n in names {
        env.wait_ready(n, READY_TIMEOUT).await;
    }
    // Let the first operator finish whatever the last status changes triggered.
    tokio::time::sleep(Duration::from_secs(3)).await;
    first.stop();
    let api_before = apiserver_writes(&env.client).await;
    let second = Operator::start(&env, "b", &[]);
    second.wait_ready().await;
    wait_for("leader", Duration::from_secs(30), || second.is_leader()).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let metrics = second.metrics().await;
    let reconciles: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("vflow_operator_reconciliations_total{controller=\"videoworkflow\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        reconciles >= 3.0,
        "it reconciled every workflow: {reconciles}"
    );
    assert_eq!(
        parse_writes(&metrics),
        0,
        "writes after restart:\n{metrics}"
    );
    let api_after = apiserver_writes(&env.client).await;
    assert_eq!(
        api_after - api_before,
        0,
        "the API server counted writes to deployments/services/vflow objects"
    );
}

#[tokio::test]
#[ignore = "needs e2e/testenv: make e2e-operator"]
async fn with_two_replicas_only_the_leader_writes() {
    let env = Env::new("leader").await;
    let lease = ["--lease-seconds", "4", "--renew-seconds", "1"];
    let mut a = Operator::start(&env, "a", &lease);
    wait_for("a leads", Duration::from_secs(30), || a.is_leader()).await;
    let b = Operator::start(&env, "b", &lease);
    b.wait_ready().await;
    env.apply_workflow(&Env::example("thumbnails")).await;
    env.wait_ready("thumbnails", READY_TIMEOUT).await;
    assert!(a.writes().await > 0, "the leader wrote the children");
    assert!(!b.is_leader().await);
    assert_eq!(b.writes().await, 0, "the follower wrote nothing");
    // The leader dies without releasing the Lease: b takes over once it expires.
    a.kill();
    wait_for("b leads", Duration::from_secs(30), || b.is_leader()).await;
    env.apply_workflow(&Env::example("detect")).await;
    env.wait_ready("detect", READY_TIMEOUT).await;
    assert!(b.writes().await > 0, "the new leader writes");
}

/// DRA as a driver would publish it, for one test: a driver of its own
/// (`gpu-<suffix>.vflow.test`, so no other test's devices count), DeviceClasses
/// `gpu-<suffix>` and `mig-<suffix>` that select its devices of kind gpu or mig, and
/// ResourceSlices on kwok-node-0. `remove` deletes them.
struct Dra {
    client: Client,
    suffix: String,
    driver: String,
    gpu_class: String,
    mig_class: String,
    slices: Vec<String>,
}

impl Dra {
    async fn new(env: &Env) -> Dra {
        use k8s_openapi::api::resource::v1::DeviceClass;
        let suffix = env.ns.rsplit('-').next().unwrap_or("x").to_string();
        let driver = format!("gpu-{suffix}.vflow.test");
        let (gpu_class, mig_class) = (format!("gpu-{suffix}"), format!("mig-{suffix}"));
        let classes: Api<DeviceClass> = Api::all(env.client.clone());
        for (name, kind) in [(&gpu_class, "gpu"), (&mig_class, "mig")] {
            let class: DeviceClass = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"selectors": [{"cel": {"expression": format!(
                    "device.driver == \"{driver}\" && device.attributes[\"{driver}\"].kind == \"{kind}\" && device.attributes[\"{driver}\"].pool == \"{suffix}\"")}}]}
            }))
            .expect("DeviceClass");
            classes
                .create(&PostParams::default(), &class)
                .await
                .expect("create DeviceClass");
        }
        Dra {
            client: env.client.clone(),
            suffix,
            driver,
            gpu_class,
            mig_class,
            slices: Vec::new(),
        }
    }

    /// A device of `kind` (gpu or mig) with `capacity`; `shared`: allocated by capacity.
    fn device(
        &self,
        name: &str,
        kind: &str,
        capacity: serde_json::Value,
        shared: bool,
    ) -> serde_json::Value {
        let mut d = json!({"name": name, "attributes": {
            "kind": {"string": kind}, "pool": {"string": self.suffix}}, "capacity": capacity});
        if shared {
            d["allowMultipleAllocations"] = json!(true);
        }
        d
    }

    /// A ResourceSlice of its own pool, `<pool>-<suffix>`, on kwok-node-0.
    async fn publish(&mut self, pool: &str, devices: Vec<serde_json::Value>) {
        use k8s_openapi::api::resource::v1::ResourceSlice;
        let name = format!("{pool}-{}", self.suffix);
        let slice: ResourceSlice = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "driver": self.driver,
                "nodeName": "kwok-node-0",
                "pool": {"name": name, "generation": 1, "resourceSliceCount": 1},
                "devices": devices
            }
        }))
        .expect("ResourceSlice");
        Api::<ResourceSlice>::all(self.client.clone())
            .create(&PostParams::default(), &slice)
            .await
            .expect("create ResourceSlice");
        self.slices.push(name);
    }

    /// An operator (ready) whose --gpu-sharing uses these classes, GPUs of
    /// `gpu_memory_bytes`.
    async fn operator(&self, env: &Env, gpu_memory_bytes: u64) -> Operator {
        let sharing = json!({"mode": "dra", "deviceClass": self.gpu_class,
            "migDeviceClass": self.mig_class, "driver": self.driver,
            "gpuMemoryBytes": gpu_memory_bytes})
        .to_string();
        let op = Operator::start(
            env,
            "a",
            &["--leader-elect=false", "--gpu-sharing", &sharing],
        );
        op.wait_ready().await;
        op
    }

    /// (claim name, subrequest, device) of the allocated claims in `env`'s namespace.
    async fn allocations(env: &Env) -> Vec<(String, String, String)> {
        use k8s_openapi::api::resource::v1::ResourceClaim;
        let mut got: Vec<(String, String, String)> = env
            .api::<ResourceClaim>()
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| {
                let name = c.name_any();
                let r = c.status?.allocation?.devices?.results?.into_iter().next()?;
                Some((name, r.request, r.device))
            })
            .collect();
        got.sort();
        got
    }

    async fn remove(self) {
        use k8s_openapi::api::resource::v1::{DeviceClass, ResourceSlice};
        let slices: Api<ResourceSlice> = Api::all(self.client.clone());
        for s in &self.slices {
            let _ = slices.delete(s, &DeleteParams::default()).await;
        }
        let classes: Api<DeviceClass> = Api::all(self.client.clone());
        for c in [&self.gpu_class, &self.mig_class] {
            let _ = classes.delete(c, &DeleteParams::default()).await;
        }
    }
}

// Issue 18: GPU stages through Dynamic Resource Allocation, placed by the real
// scheduler against ResourceSlices published here as a DRA driver would. One kwok node
// has: a MIG device with 20Gi and a decoder, one with 20Gi and no decoder, a GPU of 40Gi
// shared by capacity, and a GPU that publishes no memory (it can only go whole). Four
// replicas of a quarter-GPU stage (20Gi each, of 80Gi GPUs) must get, by the claim's
// order of preference: the MIG device with a decoder, two 20Gi shares of the shared GPU,
// then the other GPU whole; the MIG device without a decoder never.
#[tokio::test]
#[ignore = "needs e2e/testenv: make e2e-operator"]
async fn gpu_stages_get_dra_claims_that_the_scheduler_allocates_in_order_of_preference() {
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::resource::v1::ResourceClaimTemplate;
    let env = Env::new("dra").await;
    let mut dra = Dra::new(&env).await;
    let devices = vec![
        dra.device(
            "mig-decoder",
            "mig",
            json!({"memory": {"value": "20Gi"}, "decoders": {"value": "1"}}),
            false,
        ),
        dra.device(
            "mig-no-decoder",
            "mig",
            json!({"memory": {"value": "20Gi"}, "decoders": {"value": "0"}}),
            false,
        ),
        dra.device(
            "gpu-shared",
            "gpu",
            json!({"memory": {"value": "40Gi"}}),
            true,
        ),
        dra.device("gpu-plain", "gpu", json!({}), false),
    ];
    dra.publish("kwok-node-0", devices).await;
    let op = dra.operator(&env, 80u64 << 30).await;
    let wf: VideoWorkflow = serde_saphyr::from_str(&format!(
        r#"apiVersion: vflow.io/v1alpha1
kind: VideoWorkflow
metadata: {{name: gpu, namespace: {ns}}}
spec:
  storage: {{endpoint: "http://minio.vflow-system.svc:9000", bucket: videos, secretRef: {{name: vflow-s3}}}}
  stages:
    - {{name: detect, function: detect, overrides: {{gpu: 0.25, minScale: 4, maxScale: 4}}}}
"#,
        ns = env.ns
    ))
    .expect("workflow");
    env.apply_workflow(&wf).await;
    env.wait_ready("gpu", READY_TIMEOUT).await;
    // The template, and pods that reference it from both containers that use the GPU.
    let templates: Api<ResourceClaimTemplate> = env.api();
    let template = templates.get("gpu-detect-gpu").await.expect("template");
    let requests = template
        .spec
        .and_then(|s| s.spec)
        .and_then(|s| s.devices)
        .and_then(|d| d.requests)
        .unwrap_or_default();
    let order: Vec<String> = requests
        .iter()
        .flat_map(|r| r.first_available.iter().flatten().map(|s| s.name.clone()))
        .collect();
    assert_eq!(order, ["mig", "share", "whole"]);
    let deployment = env
        .deployments("gpu")
        .await
        .remove("gpu-detect")
        .expect("Deployment");
    let pod_spec = deployment.spec.template.spec.expect("pod");
    assert_eq!(
        pod_spec
            .resource_claims
            .as_ref()
            .map(|c| c[0].resource_claim_template_name.clone()),
        Some(Some("gpu-detect-gpu".to_string()))
    );
    let claiming = pod_spec
        .containers
        .iter()
        .filter(|c| {
            c.resources
                .as_ref()
                .and_then(|r| r.claims.as_ref())
                .is_some_and(|cl| cl.iter().any(|c| c.name == "gpu"))
        })
        .count();
    assert_eq!(claiming, 2, "the function's container and the sidecar");
    assert!(
        !pod_spec.containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some_and(|r| r.contains_key("nvidia.com/gpu")),
        "no extended resource besides the claim"
    );
    // The scheduler allocates each pod's claim and binds the pod.
    let allocations = || async {
        let mut got: Vec<(String, String)> = Dra::allocations(&env)
            .await
            .into_iter()
            .map(|(_, request, device)| (request, device))
            .collect();
        got.sort();
        got
    };
    wait_for("four allocated claims", Duration::from_secs(90), || async {
        allocations().await.len() == 4
    })
    .await;
    assert_eq!(
        allocations().await,
        [
            ("gpu/mig".to_string(), "mig-decoder".to_string()),
            ("gpu/share".to_string(), "gpu-shared".to_string()),
            ("gpu/share".to_string(), "gpu-shared".to_string()),
            ("gpu/whole".to_string(), "gpu-plain".to_string()),
        ]
    );
    let pods: Api<Pod> = env.api();
    wait_for(
        "four pods bound to kwok-node-0",
        Duration::from_secs(60),
        || async {
            pods.list(&ListParams::default().labels("vflow.io/workflow=gpu"))
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|p| {
                            p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                                == Some("kwok-node-0")
                        })
                        .count()
                })
                .unwrap_or(0)
                == 4
        },
    )
    .await;
    drop(op);
    dra.remove().await;
}

// Issue 18: a GPU stage whose claim no device can satisfy is reported in the workflow's
// status with the largest share that fits, and no longer once a device that fits
// appears. The operator is told GPUs have 128Gi, so a 0.75 share asks for 96Gi; the
// node's GPUs have 80Gi (shared by capacity) and 40Gi. Stage small (0.125: 16Gi) gets a
// share of the 80Gi GPU, which leaves 64Gi free there; stage big cannot be placed, and
// Degraded names it with 64Gi free and 80Gi at most (small, satisfiable, is not named).
// A 100Gi GPU published then takes big's claim, and Degraded goes back to False.
#[tokio::test]
#[ignore = "needs e2e/testenv: make e2e-operator"]
async fn an_unsatisfiable_gpu_claim_is_reported_with_the_largest_share_that_fits() {
    use k8s_openapi::api::core::v1::Pod;
    const GIB: u64 = 1 << 30;
    let (gpu, shared_gpu, small_gpu, large_gpu) = (128 * GIB, 80 * GIB, 40 * GIB, 100 * GIB);
    let (small_share, big_share) = (0.125, 0.75);
    let env = Env::new("dra-fit").await;
    let mut dra = Dra::new(&env).await;
    let gi = |b: u64| json!({"memory": {"value": format!("{}Gi", b / GIB)}});
    let devices = vec![
        dra.device("gpu-shared", "gpu", gi(shared_gpu), true),
        dra.device("gpu-small", "gpu", gi(small_gpu), false),
    ];
    dra.publish("kwok-node-0", devices).await;
    let op = dra.operator(&env, gpu).await;
    let wf: VideoWorkflow = serde_saphyr::from_str(&format!(
        r#"apiVersion: vflow.io/v1alpha1
kind: VideoWorkflow
metadata: {{name: fit, namespace: {ns}}}
spec:
  storage: {{endpoint: "http://minio.vflow-system.svc:9000", bucket: videos, secretRef: {{name: vflow-s3}}}}
  fusion: Disabled
  stages:
    - {{name: small, function: detect, overrides: {{gpu: {small_share}, minScale: 1, maxScale: 1}}}}
    - {{name: big, function: detect, after: [small], overrides: {{gpu: {big_share}, minScale: 1, maxScale: 1}}}}
"#,
        ns = env.ns
    ))
    .expect("workflow");
    env.apply_workflow(&wf).await;
    // small's claim takes a share of the shared GPU (so 16Gi of it are held).
    let small = || async {
        Dra::allocations(&env)
            .await
            .into_iter()
            .filter(|(claim, _, _)| claim.starts_with("fit-small-"))
            .map(|(_, request, device)| (request, device))
            .collect::<Vec<_>>()
    };
    wait_for(
        "small's claim allocated",
        Duration::from_secs(60),
        || async { !small().await.is_empty() },
    )
    .await;
    assert_eq!(
        small().await,
        [("gpu/share".to_string(), "gpu-shared".to_string())]
    );
    // Until the operator has seen that allocation it may report the GPU as all free.
    let ask = (gpu as f64 * big_share) as u64;
    let free = shared_gpu - (gpu as f64 * small_share) as u64;
    let expected = format!(
        "stage big asks for {}Gi of one GPU; the largest share free now is {}Gi \
         (gpu-shared on kwok-node-0); the largest device holds {}Gi (gpu-shared on kwok-node-0)",
        ask / GIB,
        free / GIB,
        shared_gpu / GIB
    );
    wait_for(
        &format!("Degraded GpuClaimUnsatisfiable: {expected}"),
        Duration::from_secs(90),
        || async {
            env.condition("fit", "Degraded")
                .await
                .is_some_and(|(s, r, m)| {
                    s == "True" && r == "GpuClaimUnsatisfiable" && m == expected
                })
        },
    )
    .await;
    let (ready, _, _) = env.condition("fit", "Ready").await.expect("Ready");
    assert_eq!(ready, "False");
    let pods: Api<Pod> = env.api();
    let unbound = pods
        .list(&ListParams::default().labels("vflow.io/workflow=fit"))
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none())
        .filter_map(|p| p.metadata.labels?.get("vflow.io/stage").cloned())
        .collect::<Vec<_>>();
    assert_eq!(unbound, ["big"], "only big waits for a device");
    wait_for("a Warning Event", READY_TIMEOUT, || async {
        env.api::<Event>()
            .list(&ListParams::default())
            .await
            .is_ok_and(|l| {
                l.items.iter().any(|e| {
                    e.reason.as_deref() == Some("GpuClaimUnsatisfiable")
                        && e.type_.as_deref() == Some("Warning")
                })
            })
    })
    .await;
    // A GPU that fits: big's claim gets it, its pod runs, and the report goes.
    let large = vec![dra.device("gpu-large", "gpu", gi(large_gpu), false)];
    dra.publish("kwok-node-0-large", large).await;
    env.wait_ready("fit", Duration::from_secs(90)).await;
    let big: Vec<String> = Dra::allocations(&env)
        .await
        .into_iter()
        .filter(|(claim, _, _)| claim.starts_with("fit-big-"))
        .map(|(_, _, device)| device)
        .collect();
    assert_eq!(big, ["gpu-large"]);
    let (degraded, reason, _) = env.condition("fit", "Degraded").await.expect("Degraded");
    assert_eq!((degraded.as_str(), reason.as_str()), ("False", "AsPlanned"));
    drop(op);
    dra.remove().await;
}

// A ResourceClaimTemplate's spec is immutable: when a stage's claim changes (here its
// GPU share, so the memory it asks for), the operator replaces the stage's template
// instead of failing to apply it. No devices are needed: the stage has no replicas.
#[tokio::test]
#[ignore = "needs e2e/testenv: make e2e-operator"]
async fn a_changed_gpu_claim_replaces_the_stages_template() {
    use k8s_openapi::api::resource::v1::ResourceClaimTemplate;
    const GIB: u64 = 1 << 30;
    let gpu = 80 * GIB;
    let env = Env::new("dra-change").await;
    let dra = Dra::new(&env).await;
    let op = dra.operator(&env, gpu).await;
    let workflow = |share: f64| -> VideoWorkflow {
        serde_saphyr::from_str(&format!(
            r#"apiVersion: vflow.io/v1alpha1
kind: VideoWorkflow
metadata: {{name: change, namespace: {ns}}}
spec:
  storage: {{endpoint: "http://minio.vflow-system.svc:9000", bucket: videos, secretRef: {{name: vflow-s3}}}}
  provisioning: Ephemeral
  stages:
    - {{name: detect, function: detect, overrides: {{gpu: {share}, minScale: 0}}}}
"#,
            ns = env.ns
        ))
        .expect("workflow")
    };
    let templates: Api<ResourceClaimTemplate> = env.api();
    // The memory the template's share alternative asks for.
    let asked = || async {
        let t = templates.get("change-detect-gpu").await.ok()?;
        let requests = t.spec?.spec?.devices?.requests?;
        requests
            .into_iter()
            .flat_map(|r| r.first_available.into_iter().flatten())
            .find(|s| s.name == "share")?
            .capacity?
            .requests?
            .get("memory")
            .map(|q| q.0.clone())
    };
    for share in [0.25, 0.5] {
        env.apply_workflow(&workflow(share)).await;
        let want = ((gpu as f64 * share) as u64).to_string();
        wait_for(
            &format!("the template asks for {want} bytes"),
            Duration::from_secs(30),
            || async { asked().await.as_deref() == Some(want.as_str()) },
        )
        .await;
    }
    env.wait_ready("change", READY_TIMEOUT).await;
    drop(op);
    dra.remove().await;
}

/// Two thumbnail stages `a` -> `b` whose pods take 160Gi each (one per kwok node of
/// 256Gi), at most `a_max` and `b_max` replicas, a 10 min scale-to-zero delay, and
/// `annotations` (what is in flight, pre-warm requests): the room tests' workflow.
fn two_big_stages(
    ns: &str,
    name: &str,
    (a_max, b_max): (u32, u32),
    annotations: &[(&str, String)],
) -> VideoWorkflow {
    let mut wf: VideoWorkflow = serde_saphyr::from_str(&format!(
        r#"apiVersion: vflow.io/v1alpha1
kind: VideoWorkflow
metadata: {{name: {name}, namespace: {ns}}}
spec:
  storage: {{endpoint: "http://minio.vflow-system.svc:9000", bucket: videos, secretRef: {{name: vflow-s3}}}}
  fusion: Disabled
  scaleToZeroAfter: 10m
  stages:
    - {{name: a, function: thumbnail, overrides: {{memory: 160Gi, cpu: 100m, concurrency: 1, maxScale: {a_max}}}}}
    - {{name: b, function: thumbnail, after: [a], overrides: {{memory: 160Gi, cpu: 100m, concurrency: 1, maxScale: {b_max}}}}}
"#
    ))
    .expect("workflow");
    wf.metadata.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    );
    wf
}

// Idle instances give their room to a stage of the same workflow whose pods the
// scheduler cannot place. Stage `a` ran on every node (160Gi each, the nodes have
// 256Gi) and is idle, within its 10 min scale-to-zero delay; stage `b` now has work
// and needs 160Gi too. Without the reclaim, b's pod stays Pending for the whole delay.
#[tokio::test]
#[ignore = "needs e2e/testenv: make e2e-operator"]
async fn idle_instances_give_their_room_to_a_stage_the_scheduler_cannot_place() {
    use k8s_openapi::api::core::v1::Pod;
    let env = Env::new("room").await;
    let nodes = env.kwok_nodes().await;
    let _op = Operator::start(&env, "a", &["--leader-elect=false"]);
    let spec = |in_flight: serde_json::Value| {
        two_big_stages(
            &env.ns,
            "room",
            (nodes, 1),
            &[("vflow.io/in-flight", in_flight.to_string())],
        )
    };
    let deployments: Api<Deployment> = env.api();
    let ready = |stage: &str, n: i32| env.ready_replicas(format!("room-{stage}"), n);
    env.apply_workflow(&spec(json!({"a": nodes}))).await;
    wait_for("a on every node", READY_TIMEOUT, || {
        ready("a", nodes as i32)
    })
    .await;
    // a is done (idle, inside its delay); b has one invocation.
    env.apply_workflow(&spec(json!({"b": 1}))).await;
    let pods: Api<Pod> = env.api();
    let b_waited = Instant::now();
    wait_for("b Ready", READY_TIMEOUT, || ready("b", 1)).await;
    eprintln!(
        "b Ready {:.1}s after its work came",
        b_waited.elapsed().as_secs_f64()
    );
    let a = deployments.get("room-a").await.expect("a");
    assert_eq!(a.spec.replicas, Some(0), "a gave its room");
    let b_node = pods
        .list(&ListParams::default().labels("vflow.io/stage=b"))
        .await
        .expect("pods")
        .items
        .into_iter()
        .find_map(|p| p.spec.and_then(|s| s.node_name));
    assert!(b_node.is_some(), "b's pod is on a node");
    env.delete_workflow_and_its_pods("room").await;
}

// A stage whose work is over takes no room: `a` and `b` both had work for one pod more
// than the nodes hold (160Gi each, one per node), so one pod stayed Pending; then the
// work ended, and both keep their replicas through the 10 min delay. The stage with
// the Pending pod only waits out its delay, so the other's idle pods must stay (they
// went at once: the detect example's pods, Pending after its run on kind, took
// stitch's pod as the run ended).
#[tokio::test]
#[ignore = "needs e2e/testenv: make e2e-operator"]
async fn a_stage_whose_work_is_over_does_not_take_the_room_of_idle_ones() {
    use k8s_openapi::api::core::v1::Pod;
    let env = Env::new("room-over").await;
    let nodes = env.kwok_nodes().await;
    let _op = Operator::start(&env, "a", &["--leader-elect=false"]);
    let spec = |in_flight: serde_json::Value| {
        two_big_stages(
            &env.ns,
            "over",
            (nodes, nodes),
            &[("vflow.io/in-flight", in_flight.to_string())],
        )
    };
    let deployments: Api<Deployment> = env.api();
    let pods: Api<Pod> = env.api();
    let replicas = || async {
        let mut n = Vec::new();
        for stage in ["a", "b"] {
            let d = deployments.get(&format!("over-{stage}")).await.ok();
            n.push(d.and_then(|d| d.spec.replicas).unwrap_or(0));
        }
        n
    };
    // One pod more than the nodes hold, all of it work (load is never reclaimed).
    env.apply_workflow(&spec(json!({"a": 1, "b": nodes}))).await;
    wait_for(
        "a pod left Pending for want of room",
        READY_TIMEOUT,
        || async {
            pods.list(&ListParams::default().labels("vflow.io/workflow=over"))
                .await
                .is_ok_and(|l| {
                    let placed = l
                        .items
                        .iter()
                        .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
                        .count();
                    l.items.len() == nodes as usize + 1 && placed == nodes as usize
                })
        },
    )
    .await;
    assert_eq!(replicas().await, vec![1, nodes as i32]);
    // The work is over: both stages idle, inside their delay.
    env.apply_workflow(&spec(json!({}))).await;
    // Three of the 5 s rechecks a waiting stage would make: nothing may go.
    let until = Instant::now() + Duration::from_secs(16);
    while Instant::now() < until {
        let now = replicas().await;
        assert_eq!(
            now,
            vec![1, nodes as i32],
            "an idle stage lost its replicas to one whose work is over"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    env.delete_workflow_and_its_pods("over").await;
}

// Pre-warmed instances whose input is late give their room too: `b` was pre-warmed on
// every node for a time that has passed (its window stays open for the 10 min delay),
// then `a` gets an invocation that no node has room for. Before the pre-warm's ready
// time they would stay (autoscaler unit tests); after it, `a` must not wait for them.
#[tokio::test]
#[ignore = "needs e2e/testenv: make e2e-operator"]
async fn prewarmed_instances_past_their_ready_time_give_their_room_to_waiting_work() {
    let env = Env::new("room-prewarm").await;
    let nodes = env.kwok_nodes().await;
    let _op = Operator::start(&env, "a", &["--leader-elect=false"]);
    let at = Timestamp::now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(5))
        .expect("time");
    let spec = |in_flight: serde_json::Value| {
        let prewarm = json!([{"stage": "b", "replicas": nodes, "at": at.to_string()}]);
        two_big_stages(
            &env.ns,
            "room-prewarm",
            (1, nodes),
            &[
                ("vflow.io/prewarm", prewarm.to_string()),
                ("vflow.io/in-flight", in_flight.to_string()),
            ],
        )
    };
    let deployments: Api<Deployment> = env.api();
    let ready = |stage: &str, n: i32| env.ready_replicas(format!("room-prewarm-{stage}"), n);
    env.apply_workflow(&spec(json!({}))).await;
    wait_for("b pre-warmed on every node", READY_TIMEOUT, || {
        ready("b", nodes as i32)
    })
    .await;
    let past = at.duration_since(Timestamp::now()).as_secs_f64().max(0.0) + 1.0;
    tokio::time::sleep(Duration::from_secs_f64(past)).await;
    // The ready time has passed and no input came to b; a has one invocation.
    env.apply_workflow(&spec(json!({"a": 1}))).await;
    let a_waited = Instant::now();
    // b's fewest replicas while a waits: the window gives them up while a's pod waits
    // for room, and asks for them again once it does not (what fits comes back).
    let mut fewest = nodes as i32;
    while !ready("a", 1).await {
        assert!(
            a_waited.elapsed() < READY_TIMEOUT,
            "a not Ready: b's pre-warm kept its room (b had {fewest} replicas at the fewest)"
        );
        let b = deployments.get("room-prewarm-b").await.expect("b");
        fewest = fewest.min(b.spec.replicas.unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "a Ready {:.1}s after its work came; b went down to {fewest} of {nodes} replicas",
        a_waited.elapsed().as_secs_f64()
    );
    assert!(fewest < nodes as i32, "b gave up no room");
    env.delete_workflow_and_its_pods("room-prewarm").await;
}

// The same across workflows: `idle`'s instances (done, inside their 10 min delay) hold
// the room that `busy`'s stage waits for; busy's reconcile sees its pod short of room
// and has idle's reconciled, which lets its instances go.
#[tokio::test]
#[ignore = "needs e2e/testenv: make e2e-operator"]
async fn idle_instances_of_one_workflow_give_their_room_to_another() {
    let env = Env::new("room-across").await;
    let nodes = env.kwok_nodes().await;
    let _op = Operator::start(&env, "a", &["--leader-elect=false"]);
    let one_stage = |name: &str, max: u32, in_flight: u32| -> VideoWorkflow {
        let mut wf: VideoWorkflow = serde_saphyr::from_str(&format!(
            r#"apiVersion: vflow.io/v1alpha1
kind: VideoWorkflow
metadata: {{name: {name}, namespace: {ns}}}
spec:
  storage: {{endpoint: "http://minio.vflow-system.svc:9000", bucket: videos, secretRef: {{name: vflow-s3}}}}
  scaleToZeroAfter: 10m
  stages:
    - {{name: s, function: thumbnail, overrides: {{memory: 160Gi, cpu: 100m, concurrency: 1, maxScale: {max}}}}}
"#,
            ns = env.ns
        ))
        .expect("workflow");
        wf.metadata.annotations = Some(BTreeMap::from([(
            "vflow.io/in-flight".to_string(),
            json!({"s": in_flight}).to_string(),
        )]));
        wf
    };
    let deployments: Api<Deployment> = env.api();
    let ready = |name: &str, n: i32| env.ready_replicas(format!("{name}-s"), n);
    env.apply_workflow(&one_stage("idle", nodes, nodes)).await;
    wait_for("idle on every node", READY_TIMEOUT, || {
        ready("idle", nodes as i32)
    })
    .await;
    env.apply_workflow(&one_stage("idle", nodes, 0)).await;
    env.apply_workflow(&one_stage("busy", 1, 1)).await;
    wait_for("busy Ready", READY_TIMEOUT, || ready("busy", 1)).await;
    let idle = deployments.get("idle-s").await.expect("idle");
    assert_eq!(idle.spec.replicas, Some(0), "idle gave its room");
    env.delete_workflow_and_its_pods("busy").await;
    env.delete_workflow_and_its_pods("idle").await;
}
