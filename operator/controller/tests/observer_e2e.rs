//! The observer against a real control plane (e2e/testenv): function pods on kwok
//! nodes, their `/observations` served by stand-in HTTP servers, and the folded
//! figures read back from the FunctionProfile's status. Ignored by a plain `cargo
//! test`; `make e2e-operator` runs it with the other level-3 tests.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::json;
use vflow_api::FunctionProfile;
use vflow_contract::observations::{ContainerObservations, InstanceObservations, Summary};
use vflow_operator::observer::Observer;

async fn client() -> Client {
    vflow_operator::install_crypto_provider();
    let path = std::env::var_os("VFLOW_E2E_KUBECONFIG").map_or_else(
        || PathBuf::from("/tmp/vflow-testenv/kubeconfig"),
        PathBuf::from,
    );
    let kc = Kubeconfig::read_from(path).expect("testenv kubeconfig: run `make testenv-up`");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
}

/// A stand-in for a pod's runtime or sidecar: serves whatever JSON it holds.
async fn serve_json(body: Arc<Mutex<serde_json::Value>>) -> String {
    let app = axum::Router::new().route(
        "/observations",
        axum::routing::get(move || {
            let body = body.clone();
            async move {
                let value = body.lock().map(|b| b.clone()).unwrap_or_default();
                ([("content-type", "application/json")], value.to_string())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

fn instance(name: &str, invocations: u64) -> serde_json::Value {
    let s = |v: f64| Summary {
        count: invocations,
        p50: v,
        p95: v * 2.0,
        max: v * 3.0,
    };
    serde_json::to_value(InstanceObservations {
        function: "testfn".into(),
        instance: name.into(),
        invocations,
        failures: 0,
        oom_kills: 0,
        cold_start_seconds: Some(0.25),
        exec_seconds: Some(s(1.5)),
        cpu_cores: Some(s(0.5)),
        memory_bytes: Some(s(1e8)),
        bytes_in: 1000 * invocations,
        bytes_out: 250 * invocations,
    })
    .expect("json")
}

/// Creates a pod on the fake node and waits until it is Ready; returns its start as the
/// API recorded it (creation to Ready, whole seconds).
async fn ready_pod(pods: &Api<Pod>, name: &str) -> f64 {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"vflow.io/function": "testfn"}},
        "spec": {
            "nodeName": "kwok-node-0",
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "function", "image": "fake"}]
        }
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = pods.get(name).await.expect("get pod");
        let ready_at = p
            .status
            .and_then(|s| s.conditions)
            .and_then(|cs| {
                cs.into_iter()
                    .find(|c| c.type_ == "Ready" && c.status == "True")
            })
            .and_then(|c| c.last_transition_time);
        if let (Some(ready), Some(created)) = (ready_at, p.metadata.creation_timestamp) {
            return ready.0.duration_since(created.0).as_secs_f64();
        }
        assert!(Instant::now() < deadline, "pod {name} never became Ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The test profile's status as the observer last wrote it.
async fn status_of(profiles: &Api<FunctionProfile>) -> vflow_api::FunctionProfileStatus {
    profiles
        .get("testfn")
        .await
        .expect("get")
        .status
        .expect("status")
}

#[tokio::test]
#[ignore = "needs e2e/testenv: make e2e-operator"]
async fn pod_observations_land_in_the_profile_status() {
    let client = client().await;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for crd in vflow_api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(
            &name,
            &PatchParams::apply("vflow-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply CRD");
    }
    let ns = format!("observer-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns");
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .expect("namespace");

    // The CRD may take a moment to serve.
    let profiles: Api<FunctionProfile> = Api::namespaced(client.clone(), &ns);
    let profile: FunctionProfile = serde_json::from_value(json!({
        "apiVersion": "vflow.io/v1alpha1", "kind": "FunctionProfile",
        "metadata": {"name": "testfn"},
        "spec": {"image": "fake", "command": ["f"], "resources": {"cpu": "1", "memory": "1Gi"}}
    }))
    .expect("profile");
    let deadline = Instant::now() + Duration::from_secs(30);
    while profiles
        .create(&PostParams::default(), &profile)
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "could not create the FunctionProfile"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let runtime_a = Arc::new(Mutex::new(instance("a", 0)));
    let runtime_b = Arc::new(Mutex::new(instance("b", 0)));
    let sidecar = Arc::new(Mutex::new(
        serde_json::to_value(ContainerObservations {
            samples: 10,
            interval_seconds: 1.0,
            busy_memory_bytes: Some(Summary {
                count: 5,
                p50: 3e8,
                p95: 4e8,
                max: 5e8,
            }),
            ..Default::default()
        })
        .expect("json"),
    ));
    let url_a = serve_json(runtime_a.clone()).await;
    let url_b = serve_json(runtime_b.clone()).await;
    let url_sidecar = serve_json(sidecar.clone()).await;
    ready_pod(&pods, "fn-a").await;

    let resolve: vflow_operator::observer::Resolve = Arc::new(move |pod: &Pod, port: u16| {
        let name = pod.metadata.name.clone().unwrap_or_default();
        match (name.as_str(), port) {
            (_, 9091) => Some(url_sidecar.clone()),
            ("fn-a", _) => Some(url_a.clone()),
            ("fn-b", _) => Some(url_b.clone()),
            _ => None,
        }
    });
    let mut observer = Observer::new(client.clone(), resolve);
    // The first pass only sets the baseline of pods that already run.
    if let Ok(mut a) = runtime_a.lock() {
        *a = instance("a", 7);
    }
    assert_eq!(observer.scrape_once().await.expect("scrape"), 0);
    if let Ok(mut a) = runtime_a.lock() {
        *a = instance("a", 10);
    }
    assert_eq!(observer.scrape_once().await.expect("scrape"), 1);
    let status = status_of(&profiles).await;
    assert_eq!(status.invocations, 3, "only what came after the baseline");
    assert_eq!(status.cold_starts, 0);
    assert_eq!(status.exec_seconds.map(|d| d.p50), Some(1.5));
    // Memory from the sidecar's container-level samples.
    assert_eq!(status.memory_bytes.map(|d| d.max), Some(5e8));

    // A pod that appears later is counted from zero, with its cold start.
    if let Ok(mut b) = runtime_b.lock() {
        *b = instance("b", 2);
    }
    let pod_start = ready_pod(&pods, "fn-b").await;
    observer.scrape_once().await.expect("scrape");
    let status = status_of(&profiles).await;
    assert_eq!(status.invocations, 5);
    assert_eq!(status.cold_starts, 1);
    // The pod's start as the API recorded it, or the runtime's own where that is longer.
    assert_eq!(
        status.cold_start_seconds.map(|d| d.p50),
        Some(pod_start.max(0.25))
    );

    // A pod that misses a scrape (its runtime gave no answer) keeps its baseline: when it
    // answers again only what it ran since is new, and it is no new instance.
    if let Ok(mut a) = runtime_a.lock() {
        *a = json!("not observations");
    }
    observer.scrape_once().await.expect("scrape");
    if let Ok(mut a) = runtime_a.lock() {
        *a = instance("a", 12);
    }
    observer.scrape_once().await.expect("scrape");
    let status = status_of(&profiles).await;
    assert_eq!(
        status.invocations, 7,
        "a's 2 new invocations, not its 12 again"
    );
    assert_eq!(status.cold_starts, 1, "a is not a new instance");

    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
}
