//! MinIO bucket notifications (`notify_webhook`): a POST per event with the S3 event JSON
//! (`{"EventName": ..., "Key": ..., "Records": [{"eventName": "s3:ObjectCreated:Put",
//! "s3": {"bucket": {"name": ...}, "object": {"key": <URL-encoded>, "eTag": ...}}}]}`).
//! Every created object under an S3-triggered workflow's prefix and suffix becomes a
//! run, named after the object so a redelivered event is a no-op. Any failure answers
//! 500, so MinIO queues the event and sends it again.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::any;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use vflow_api::VideoWorkflow;

use super::{Created, NewObject, RunSink, Workflows, create_run, matches};

#[derive(Debug, Deserialize)]
pub struct Event {
    #[serde(rename = "Records", default)]
    pub records: Vec<Record>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    #[serde(default)]
    pub event_name: String,
    pub s3: Entity,
}

#[derive(Debug, Deserialize)]
pub struct Entity {
    pub bucket: Bucket,
    pub object: Object,
}

#[derive(Debug, Deserialize)]
pub struct Bucket {
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub struct Object {
    pub key: String,
    #[serde(rename = "eTag", default)]
    pub etag: String,
}

/// S3 event keys are URL-encoded the way a query string is (`+` for a space).
pub fn decode_key(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The runs an event asks for: (workflow, object) per created object and matching
/// workflow, and the number of records that start nothing.
pub fn runs_for_event(
    event: &Event,
    workflows: &[VideoWorkflow],
) -> (Vec<(VideoWorkflow, NewObject)>, usize) {
    let mut runs = Vec::new();
    let mut ignored = 0;
    for record in &event.records {
        if !record.event_name.starts_with("s3:ObjectCreated:") {
            ignored += 1;
            continue;
        }
        let object = NewObject {
            bucket: record.s3.bucket.name.clone(),
            key: decode_key(&record.s3.object.key),
            etag: record.s3.object.etag.trim_matches('"').to_string(),
        };
        let matching: Vec<&VideoWorkflow> = workflows
            .iter()
            .filter(|wf| wf.metadata.deletion_timestamp.is_none())
            .filter(|wf| matches(wf, &object.bucket, &object.key))
            .collect();
        if matching.is_empty() {
            ignored += 1;
        }
        runs.extend(matching.into_iter().map(|wf| (wf.clone(), object.clone())));
    }
    (runs, ignored)
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Answer {
    pub created: Vec<String>,
    pub existed: Vec<String>,
    pub ignored: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

pub struct WebhookState<W, S> {
    pub workflows: W,
    pub sink: S,
    /// When set, requests must carry `Authorization: Bearer <token>` (MinIO's
    /// `auth_token`).
    pub token: Option<String>,
}

async fn handle<W: Workflows, S: RunSink>(
    State(state): State<Arc<WebhookState<W, S>>>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    if let Some(token) = &state.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !vflow_contract::auth::authorized(given, token) {
            return (
                StatusCode::UNAUTHORIZED,
                "bad or missing bearer token\n".into(),
            );
        }
    }
    // MinIO checks the target is reachable before it sends events.
    if method != axum::http::Method::POST || body.is_empty() {
        return (StatusCode::OK, String::new());
    }
    let event: Event = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not an S3 event notification: {e}\n"),
            );
        }
    };
    let (runs, ignored) = runs_for_event(&event, &state.workflows.workflows());
    let mut answer = Answer {
        ignored,
        ..Default::default()
    };
    for (wf, object) in runs {
        let namespace = wf.namespace().unwrap_or_default();
        match create_run(&state.sink, &wf, &object, "webhook").await {
            Ok((Created::New, name)) => answer.created.push(format!("{namespace}/{name}")),
            Ok((_, name)) => answer.existed.push(format!("{namespace}/{name}")),
            Err(e) => answer.errors.push(e),
        }
    }
    let status = if answer.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (
        status,
        serde_json::to_string(&answer).unwrap_or_default() + "\n",
    )
}

pub fn router<W: Workflows, S: RunSink>(state: Arc<WebhookState<W, S>>) -> Router {
    Router::new()
        .route("/", any(handle::<W, S>))
        .route("/{*path}", any(handle::<W, S>))
        .with_state(state)
}

/// Serves the webhook on `addr` until `shutdown`.
pub async fn serve<W: Workflows, S: RunSink>(
    listener: tokio::net::TcpListener,
    state: Arc<WebhookState<W, S>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
