//! Level 2: the reconciler against a tower-test mock API server, for the answers a real
//! server will not give on demand: 409 Conflict, 403 Forbidden, 404 Not Found, 500.
//! The verifier checks method, path and body, not exact query strings.

mod common;

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use http::{Request, Response, StatusCode};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
use kube::{
    Client,
    client::Body,
    runtime::{
        controller::Action,
        events::Reporter,
        reflector::{self, Store},
        watcher,
    },
};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};
use vflow_api::{FunctionProfile, VideoWorkflow};
use vflow_operator::{
    config::Settings,
    error::Error,
    metrics::Metrics,
    workflow::{self, Context},
};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn store<K>(objects: Vec<K>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    // The reader keeps the data; the writer may go.
    std::mem::forget(writer);
    reader
}

fn context(client: Client) -> Arc<Context> {
    let profiles: Vec<FunctionProfile> = common::profiles("ns").into_values().collect();
    let ctx = Context::new(
        client,
        Settings::default(),
        Metrics::new(),
        store(profiles),
        store::<Deployment>(vec![]),
        store::<Service>(vec![]),
        Reporter {
            controller: "vflow-operator".into(),
            instance: Some("test".into()),
        },
    );
    ctx.caches_ready.store(true, Ordering::SeqCst);
    Arc::new(ctx)
}

fn setup() -> (Arc<Context>, ApiHandle, Arc<VideoWorkflow>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "ns");
    (
        context(client),
        handle,
        Arc::new(common::workflow("wf", "ns", "")),
    )
}

fn status(code: u16, reason: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("mock {reason}"), "reason": reason, "code": code,
    });
    Response::builder()
        .status(StatusCode::from_u16(code).expect("code"))
        .body(Body::from(serde_json::to_vec(&body).expect("json")))
        .expect("response")
}

/// Waits for the next request, checks method and path, and returns its JSON body.
async fn expect(
    handle: &mut ApiHandle,
    method: &str,
    path: &str,
) -> (Value, mock::SendResponse<Response<Body>>) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("a request within 5s")
        .expect("the service is alive");
    assert_eq!(req.method().as_str(), method, "method of {}", req.uri());
    assert_eq!(req.uri().path(), path);
    let query = req.uri().query().unwrap_or_default().to_string();
    let body = req.into_body().collect_bytes().await.expect("body");
    let value: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).expect("json body")
    };
    if method == "PATCH" {
        assert!(
            query.contains("fieldManager=vflow-operator"),
            "server-side apply under our manager: {query}"
        );
        assert!(query.contains("force=true"), "{query}");
    }
    (value, send)
}

fn ok_echo(body: &Value) -> Response<Body> {
    Response::builder()
        .status(200)
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response")
}

const TOKEN_SECRET: &str = "/api/v1/namespaces/ns/secrets/wf-vflow-invoke";

/// The reconcile first looks for the workflow's invocation token Secret: there.
async fn token_is_there(handle: &mut ApiHandle) {
    let (_, send) = expect(handle, "GET", TOKEN_SECRET).await;
    send.send_response(ok_echo(&json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "wf-vflow-invoke", "namespace": "ns"},
        "data": {"token": "MDA="}
    })));
}

async fn first_deployment_fails_with(
    code: u16,
    reason: &str,
) -> (Result<Action, Error>, Arc<Context>, Arc<VideoWorkflow>) {
    let (ctx, mut handle, wf) = setup();
    let task = tokio::spawn(workflow::reconcile(wf.clone(), ctx.clone()));
    token_is_there(&mut handle).await;
    let (body, send) = expect(
        &mut handle,
        "PATCH",
        "/apis/apps/v1/namespaces/ns/deployments/wf-split",
    )
    .await;
    assert_eq!(body["kind"], "Deployment");
    assert_eq!(
        body["metadata"]["ownerReferences"][0]["kind"],
        "VideoWorkflow"
    );
    send.send_response(status(code, reason));
    let result = task.await.expect("reconcile task");
    (result, ctx, wf)
}

#[tokio::test]
async fn conflict_is_transient_and_backs_off_exponentially() {
    let (result, ctx, wf) = first_deployment_fails_with(409, "Conflict").await;
    let err = result.expect_err("409 fails the reconcile");
    assert_eq!(err.category(), "conflict");
    assert!(!err.is_permanent());
    assert_eq!(
        workflow::error_policy(wf.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
    assert_eq!(
        workflow::error_policy(wf.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(2))
    );
    assert_eq!(
        workflow::error_policy(wf, &err, ctx.clone()),
        Action::requeue(Duration::from_secs(4))
    );
    let text = ctx.metrics.render();
    assert!(text.contains(r#"vflow_operator_reconcile_errors_total{category="conflict",controller="videoworkflow"} 3"#), "{text}");
}

#[tokio::test]
async fn forbidden_is_permanent_and_retries_slowly() {
    let (result, ctx, wf) = first_deployment_fails_with(403, "Forbidden").await;
    let err = result.expect_err("403 fails the reconcile");
    assert_eq!(err.category(), "forbidden");
    assert!(err.is_permanent());
    assert_eq!(
        workflow::error_policy(wf, &err, ctx),
        Action::requeue(Duration::from_secs(60))
    );
}

#[tokio::test]
async fn server_error_is_transient() {
    let (result, ctx, wf) = first_deployment_fails_with(500, "InternalError").await;
    let err = result.expect_err("500 fails the reconcile");
    assert_eq!(err.category(), "server");
    assert_eq!(
        workflow::error_policy(wf, &err, ctx),
        Action::requeue(Duration::from_secs(1))
    );
}

#[tokio::test]
async fn workflow_deleted_meanwhile_is_not_an_error() {
    // Every child is applied (each answered with what was sent); then the status write
    // finds the workflow gone (404): the reconcile ends quietly.
    let (ctx, mut handle, wf) = setup();
    let task = tokio::spawn(workflow::reconcile(wf.clone(), ctx.clone()));
    // No token yet: it is made (owned by the workflow) before any pod that mounts it.
    let (_, send) = expect(&mut handle, "GET", TOKEN_SECRET).await;
    send.send_response(status(404, "NotFound"));
    let (secret, send) = expect(&mut handle, "POST", "/api/v1/namespaces/ns/secrets").await;
    assert_eq!(secret["metadata"]["name"], "wf-vflow-invoke");
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["kind"],
        "VideoWorkflow"
    );
    let token = secret["stringData"]["token"].as_str().unwrap_or_default();
    assert!(
        token.len() == 64 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "{token}"
    );
    send.send_response(ok_echo(&secret));
    for stage in ["split", "scale", "detect", "stitch"] {
        let (body, send) = expect(
            &mut handle,
            "PATCH",
            &format!("/apis/apps/v1/namespaces/ns/deployments/wf-{stage}"),
        )
        .await;
        assert_eq!(
            body["spec"]["template"]["spec"]["shareProcessNamespace"],
            true
        );
        send.send_response(ok_echo(&body));
    }
    for stage in ["split", "scale", "detect", "stitch"] {
        let (body, send) = expect(
            &mut handle,
            "PATCH",
            &format!("/api/v1/namespaces/ns/services/wf-{stage}"),
        )
        .await;
        assert_eq!(body["kind"], "Service");
        send.send_response(ok_echo(&body));
    }
    let (body, send) = expect(
        &mut handle,
        "PATCH",
        "/apis/vflow.io/v1alpha1/namespaces/ns/videoworkflows/wf/status",
    )
    .await;
    assert_eq!(body["status"]["observedGeneration"], 1);
    assert_eq!(body["status"]["stages"].as_array().map(Vec::len), Some(4));
    send.send_response(status(404, "NotFound"));
    let action = task
        .await
        .expect("task")
        .expect("a vanished workflow is not an error");
    assert!(
        matches!(action, a if a != Action::await_change()),
        "requeued for the resync"
    );
    assert!(ctx.metrics.render().contains(
        r#"vflow_operator_reconciliations_total{controller="videoworkflow",outcome="ok"} 1"#
    ));
}

#[tokio::test]
async fn invalid_workflow_writes_only_status_and_an_event() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, "ns"));
    let mut wf = common::workflow("wf", "ns", "");
    wf.spec.stages[1].function = "no-such-function".into();
    let wf = Arc::new(wf);
    let task = tokio::spawn(workflow::reconcile(wf.clone(), ctx.clone()));
    let (body, send) = expect(
        &mut handle,
        "POST",
        "/apis/events.k8s.io/v1/namespaces/ns/events",
    )
    .await;
    assert_eq!(body["reason"], "ProfileMissing");
    assert!(
        body["note"]
            .as_str()
            .unwrap_or_default()
            .contains("spec.stages[1].function"),
        "{body}"
    );
    send.send_response(ok_echo(&body));
    let (body, send) = expect(
        &mut handle,
        "PATCH",
        "/apis/vflow.io/v1alpha1/namespaces/ns/videoworkflows/wf/status",
    )
    .await;
    let conditions = body["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(conditions.iter().any(|c| c["type"] == "Ready"
        && c["status"] == "False"
        && c["reason"] == "ProfileMissing"));
    send.send_response(ok_echo(&json!({"apiVersion": "vflow.io/v1alpha1", "kind": "VideoWorkflow", "metadata": {"name": "wf"}, "spec": wf.spec})));
    let action = task.await.expect("task").expect("invalid is not an error");
    assert_eq!(
        action,
        Action::await_change(),
        "permanent: waits for a change"
    );
}
