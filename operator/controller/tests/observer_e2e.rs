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

fn set(runtime: &Arc<Mutex<serde_json::Value>>, to: serde_json::Value) {
    if let Ok(mut r) = runtime.lock() {
        *r = to;
    }
}

fn instance(name: &str, invocations: u64, oom_kills: u64) -> serde_json::Value {
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
        oom_kills,
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
    let runtime_a = Arc::new(Mutex::new(instance("a", 0, 0)));
    let runtime_b = Arc::new(Mutex::new(instance("b", 0, 0)));
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
    // Scoped to another namespace (the chart's Role with operator.watchNamespace), it
    // lists no pod here: nothing is scraped, nothing is written.
    let mut elsewhere = Observer::new(client.clone(), resolve.clone())
        .in_namespace(Some("vflow-not-watched".into()));
    let mut observer = Observer::new(client.clone(), resolve);
    set(&runtime_a, instance("a", 7, 0));
    assert_eq!(elsewhere.scrape_once().await.expect("scrape elsewhere"), 0);
    set(&runtime_a, instance("a", 9, 0));
    assert_eq!(elsewhere.scrape_once().await.expect("scrape elsewhere"), 0);
    // The first pass only sets the baseline of pods that already run.
    set(&runtime_a, instance("a", 7, 0));
    assert_eq!(observer.scrape_once().await.expect("scrape"), 0);
    set(&runtime_a, instance("a", 10, 0));
    assert_eq!(observer.scrape_once().await.expect("scrape"), 1);
    let status = status_of(&profiles).await;
    assert_eq!(
        (status.invocations, status.cold_starts),
        (0, 0),
        "invocations are counted from the runs' records, never from scrapes"
    );
    assert_eq!(status.exec_seconds, None);
    // Memory from the sidecar's container-level samples; the window is stamped.
    assert_eq!(status.memory_bytes.map(|d| d.max), Some(5e8));
    assert!(status.window_start.is_some() && status.window_end.is_some());

    // The records have folded 10 invocations at 1e8 bytes (p95) since.
    let mut with_records = profiles.get_status("testfn").await.expect("get");
    if let Some(s) = with_records.status.as_mut() {
        s.invocations = 10;
        s.memory_bytes = Some(vflow_api::Distribution {
            p50: 1e8,
            p95: 1e8,
            max: 5e8,
        });
    }
    with_records.metadata.managed_fields = None;
    profiles
        .replace_status("testfn", &PostParams::default(), &with_records)
        .await
        .expect("write the records' fold");

    // A pod that misses a scrape (its runtime gave no answer) keeps its baseline: when it
    // answers again only what it ran since weighs, not all it ever ran.
    set(&runtime_a, json!("not observations"));
    assert_eq!(observer.scrape_once().await.expect("scrape"), 0);
    set(&runtime_a, instance("a", 12, 0));
    assert_eq!(observer.scrape_once().await.expect("scrape"), 1);
    let status = status_of(&profiles).await;
    assert_eq!(
        status.invocations, 10,
        "the records' count stays as written"
    );
    let p95 = status.memory_bytes.map(|d| d.p95).unwrap_or_default();
    let once = (10.0 * 1e8 + 2.0 * 4e8) / 12.0;
    assert!(
        (p95 - once).abs() < 1.0,
        "a's 2 new invocations weigh against the 10 folded ({once}), not its 12 again: {p95}"
    );

    // A function process killed for memory is in its invocation's record, not counted
    // again from the runtime's counter; a pod that appears later is counted from zero.
    set(&runtime_a, instance("a", 12, 1));
    set(&runtime_b, instance("b", 2, 0));
    ready_pod(&pods, "fn-b").await;
    observer.scrape_once().await.expect("scrape");
    observer.scrape_once().await.expect("scrape");
    let status = status_of(&profiles).await;
    assert_eq!(status.oom_kills, 0);
    assert_eq!(status.invocations, 10);
    let p95 = status.memory_bytes.map(|d| d.p95).unwrap_or_default();
    let with_b = (10.0 * once + 2.0 * 4e8) / 12.0;
    assert!(
        (p95 - with_b).abs() < 1.0,
        "b weighs its 2 invocations, once ({with_b}): {p95}"
    );

    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
}
