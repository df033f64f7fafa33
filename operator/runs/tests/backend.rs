//! The Kubernetes backend's activator logic with a scripted capacity and a stand-in
//! instance on loopback: invocations wait while the stage has no ready instance, all
//! of them count as in flight meanwhile, a stage that never gets one fails clearly,
//! a busy instance (429) is waited for rather than failed, and so is a ready instance
//! that the Service does not route to yet (a refused connection, within a grace).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use vflow_contract::exit::Exit;
use vflow_contract::invocation::{
    ErrorBody, InvokeFailure, InvokeRequest, InvokeResponse, OutputObject, Phase,
};
use vflow_engine::backend::{Backend, BackendError, StageTarget};
use vflow_runs::backend::{KubeBackend, KubeBackendConfig, StaticResolver};
use vflow_runs::capacity::Capacity;

/// Becomes ready `ready_after` after the first invocation asks (None: never).
struct Scripted {
    ready_after: Option<Duration>,
    first_ask: Mutex<Option<Instant>>,
    in_flight: AtomicU32,
    peak: AtomicU32,
    prewarmed: Mutex<Vec<(String, u32)>>,
}

impl Scripted {
    fn new(ready_after: Option<Duration>) -> Self {
        Self {
            ready_after,
            first_ask: Mutex::new(None),
            in_flight: AtomicU32::new(0),
            peak: AtomicU32::new(0),
            prewarmed: Mutex::new(Vec::new()),
        }
    }
    fn is_ready(&self) -> bool {
        let first = *self.first_ask.lock().expect("lock");
        match (self.ready_after, first) {
            (Some(after), Some(t)) => t.elapsed() >= after,
            _ => false,
        }
    }
}

impl Capacity for Scripted {
    fn begin(&self, _stage: &str) {
        self.first_ask
            .lock()
            .expect("lock")
            .get_or_insert_with(Instant::now);
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
    }
    fn end(&self, _stage: &str) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
    fn prewarm(&self, stage: &str, replicas: u32) {
        self.prewarmed
            .lock()
            .expect("lock")
            .push((stage.into(), replicas));
    }
    fn release(&self, stage: &str) {
        self.prewarmed
            .lock()
            .expect("lock")
            .retain(|(s, _)| s != stage);
    }
    async fn ready(&self, _stage: &str) -> Result<u32, String> {
        Ok(u32::from(self.is_ready()))
    }
    async fn wait_ready(&self, stage: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while !self.is_ready() {
            if Instant::now() > deadline {
                return Err(format!(
                    "stage {stage}: no ready instance within {timeout:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

fn response() -> String {
    let r = InvokeResponse {
        outputs: vec![OutputObject {
            uri: "s3://videos/o/x.bin".into(),
            bytes: 1,
            sha256: Some("00".into()),
        }],
        metadata: Default::default(),
        bytes_in: 1,
        bytes_out: 1,
        wall_seconds: 0.01,
        download_seconds: 0.0,
        function_seconds: 0.01,
        upload_seconds: 0.0,
        cpu_seconds: 0.0,
        peak_rss_bytes: 0,
        cold: false,
        cold_start_seconds: None,
        exit: Exit::Code { code: 0 },
        instance: "stand-in".into(),
        usage: Vec::new(),
        concurrency: 0.0,
        chained: Vec::new(),
    };
    serde_json::to_string(&r).expect("json")
}

/// Answers 429 to the first `busy` requests, then 200.
async fn instance(busy: u32) -> (String, Arc<AtomicU32>) {
    answering(busy, StatusCode::TOO_MANY_REQUESTS, String::new()).await
}

/// The runtime's answer for a failure in `phase` that it marks `retryable`.
fn failure_body(phase: Phase, retryable: bool) -> String {
    serde_json::to_string(&ErrorBody {
        error: InvokeFailure::new(phase, "this instance is shutting down", retryable),
    })
    .expect("json")
}

/// Answers `status` with `body` to the first `times` requests, then 200.
async fn answering(times: u32, status: StatusCode, body: String) -> (String, Arc<AtomicU32>) {
    let hits = Arc::new(AtomicU32::new(0));
    let counter = hits.clone();
    let app = Router::new().route(
        "/invoke",
        post(move || {
            let counter = counter.clone();
            let body = body.clone();
            async move {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                if n < times {
                    (status, [("retry-after", "0.1")], body).into_response()
                } else {
                    (
                        StatusCode::OK,
                        [("content-type", "application/json")],
                        response(),
                    )
                        .into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), hits)
}

fn target() -> StageTarget {
    StageTarget {
        stage: "copy".into(),
        function: "tcopy".into(),
        command: vec![],
        warmup_command: vec![],
        resident: false,
        concurrency: 1,
        min_instances: 0,
        max_instances: 3,
        timeout_seconds: 30.0,
        memory_limit_bytes: None,
        fused: Vec::new(),
        oom_retry_memory_bytes: None,
        memory_raised: false,
    }
}

fn request(segment: u32) -> InvokeRequest {
    InvokeRequest {
        run: "r".into(),
        stage: "copy".into(),
        segment: Some(segment),
        inputs: vec!["s3://videos/in.bin".into()],
        output_prefix: format!("s3://videos/o/{segment}/"),
        params: Default::default(),
        timeout_seconds: Some(30.0),
        then: Vec::new(),
    }
}

fn backend(url: &str, capacity: Scripted, activation: Duration) -> Arc<KubeBackend<Scripted>> {
    let resolver = StaticResolver([("copy".to_string(), url.to_string())].into());
    KubeBackend::new(
        "ns",
        "wf",
        capacity,
        Arc::new(resolver),
        KubeBackendConfig {
            activation_timeout: activation,
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn invocations_wait_for_the_first_instance_then_go_through() {
    let (url, hits) = instance(0).await;
    let b = backend(
        &url,
        Scripted::new(Some(Duration::from_millis(600))),
        Duration::from_secs(10),
    );
    let started = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move { b.invoke(&target(), request(i)).await })
        })
        .collect();
    let mut colds = Vec::new();
    for c in calls {
        let invoked = c.await.expect("join").expect("invoked");
        colds.push(invoked.cold_start_seconds);
    }
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "went through before ready"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        4,
        "nothing reached the instance early or twice"
    );
    assert!(
        colds.iter().all(|c| c.is_some_and(|s| s >= 0.5)),
        "every held invocation paid the cold start: {colds:?}"
    );
    assert_eq!(
        b.capacity().peak.load(Ordering::SeqCst),
        4,
        "all four were counted in flight"
    );
    assert_eq!(
        b.capacity().in_flight.load(Ordering::SeqCst),
        0,
        "and none is left"
    );

    // Warm now: no cold start.
    let warm = b.invoke(&target(), request(9)).await.expect("invoked");
    assert_eq!(warm.cold_start_seconds, None);
}

#[tokio::test]
async fn a_stage_that_never_scales_fails_with_a_clear_retryable_error() {
    let (url, hits) = instance(0).await;
    let b = backend(&url, Scripted::new(None), Duration::from_millis(300));
    let err = b
        .invoke(&target(), request(0))
        .await
        .expect_err("no instance");
    assert!(
        matches!(&err, BackendError::Unavailable(m) if m.contains("no ready instance")),
        "{err}"
    );
    assert!(err.retryable());
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    assert_eq!(b.capacity().in_flight.load(Ordering::SeqCst), 0);
}

// Issue 17: a draining pod's 503 failed the unit at once (request-phase failures were
// never retried), so a scale-down or a rolling update failed whole runs.
#[tokio::test]
async fn a_draining_instance_is_passed_by_and_a_failure_after_the_function_ran_is_not_resent() {
    let b = |url: &str| {
        backend(
            url,
            Scripted::new(Some(Duration::ZERO)),
            Duration::from_secs(10),
        )
    };
    // Refused twice (draining, then warming up): sent again, and it goes through.
    let (url, hits) = answering(
        2,
        StatusCode::SERVICE_UNAVAILABLE,
        failure_body(Phase::Request, true),
    )
    .await;
    b(&url)
        .invoke(&target(), request(0))
        .await
        .expect("invoked once an instance took it");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    // A 503 after the function ran (its upload failed) is the unit's to retry: the
    // backend does not send it again.
    let (url, hits) = answering(
        1,
        StatusCode::SERVICE_UNAVAILABLE,
        failure_body(Phase::Upload, true),
    )
    .await;
    let err = b(&url)
        .invoke(&target(), request(0))
        .await
        .expect_err("the upload failed");
    assert!(
        matches!(&err, BackendError::Failed(f) if f.phase == Phase::Upload),
        "{err}"
    );
    assert!(err.retryable());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn busy_instances_are_waited_for_and_shutdown_cancels_held_invocations() {
    let (url, hits) = instance(3).await;
    let b = backend(
        &url,
        Scripted::new(Some(Duration::ZERO)),
        Duration::from_secs(10),
    );
    let invoked = b
        .invoke(&target(), request(0))
        .await
        .expect("invoked after 429s");
    assert_eq!(hits.load(Ordering::SeqCst), 4);
    assert!(
        invoked.queued_seconds >= 0.25,
        "queued {}",
        invoked.queued_seconds
    );

    b.prewarm(&target(), 10).await;
    assert_eq!(
        *b.capacity().prewarmed.lock().expect("lock"),
        vec![("copy".to_string(), 3)],
        "capped at maxScale"
    );

    let never = backend(&url, Scripted::new(None), Duration::from_secs(30));
    let held = {
        let never = never.clone();
        tokio::spawn(async move { never.invoke(&target(), request(1)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    never.shutdown().await;
    let result = tokio::time::timeout(Duration::from_secs(2), held)
        .await
        .expect("returned")
        .expect("join");
    assert!(matches!(result, Err(BackendError::Cancelled)), "{result:?}");
}

/// A port that is free now; something listens on it only later (or never).
async fn unused_port() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr")
}

/// Serves `response()` on `addr` from `after` on.
fn serve_later(addr: std::net::SocketAddr, after: Duration) -> Arc<AtomicU32> {
    let hits = Arc::new(AtomicU32::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let app = Router::new().route(
            "/invoke",
            post(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    (
                        StatusCode::OK,
                        [("content-type", "application/json")],
                        response(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
        axum::serve(listener, app).await
    });
    hits
}

// Seen on kind: the Deployment reports a ready pod a second or more before its Service
// routes to it, and every invocation sent in that gap was refused and burnt a retry.
#[tokio::test]
async fn a_ready_instance_the_service_does_not_route_to_yet_is_waited_for() {
    let addr = unused_port().await;
    let hits = serve_later(addr, Duration::from_millis(700));
    let b = backend(
        &format!("http://{addr}"),
        Scripted::new(Some(Duration::ZERO)),
        Duration::from_secs(10),
    );
    let invoked = b
        .invoke(&target(), request(0))
        .await
        .expect("invoked once routed");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "sent once it could land");
    let cold = invoked
        .cold_start_seconds
        .expect("the wait is a cold start");
    assert!((0.5..5.0).contains(&cold), "cold start {cold}");
    assert!(
        invoked.queued_seconds < 0.5,
        "the routing wait is not queueing: {}",
        invoked.queued_seconds
    );
}

#[tokio::test]
async fn an_instance_never_routed_to_fails_retryably_after_the_grace() {
    let addr = unused_port().await;
    let resolver = StaticResolver([("copy".to_string(), format!("http://{addr}"))].into());
    let b = KubeBackend::new(
        "ns",
        "wf",
        Scripted::new(Some(Duration::ZERO)),
        Arc::new(resolver),
        KubeBackendConfig {
            activation_timeout: Duration::from_secs(10),
            route_grace: Duration::from_millis(400),
            ..Default::default()
        },
    );
    let started = Instant::now();
    let err = b
        .invoke(&target(), request(0))
        .await
        .expect_err("nothing listens");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "gave up before the grace"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "held past the grace"
    );
    assert!(
        matches!(&err, BackendError::Unavailable(m) if m.contains(&addr.to_string())),
        "{err}"
    );
    assert!(err.retryable());
}
