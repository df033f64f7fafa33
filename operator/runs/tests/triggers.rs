//! The S3 poller against a real S3 server (s3s-fs on loopback, `make s3-server`) and
//! the webhook with MinIO's event JSON, both creating runs in a recording sink that
//! behaves like the API server (a second create of a name is a 409).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::json;
use vflow_api::{VideoWorkflow, VideoWorkflowRun};
use vflow_runs::storage::FixedStorage;
use vflow_runs::trigger::poller::{PollOutcome, Poller, PollerConfig, cursor_key};
use vflow_runs::trigger::webhook::{WebhookState, decode_key, router};
use vflow_runs::trigger::{Created, NewObject, RunSink, create_run, run_name, same_trigger};
use vflow_storage::S3Store;
use vflow_storage::test_server::TestS3;

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<BTreeMap<String, VideoWorkflowRun>>>);

impl Sink {
    fn inputs(&self) -> Vec<String> {
        let runs = self.0.lock().expect("lock");
        let mut v: Vec<String> = runs.values().map(|r| r.spec.input.clone()).collect();
        v.sort();
        v
    }
}

impl RunSink for Sink {
    async fn create(&self, run: VideoWorkflowRun) -> Result<Created, String> {
        let name = run.metadata.name.clone().ok_or("no name")?;
        let mut runs = self.0.lock().map_err(|e| e.to_string())?;
        if let Some(there) = runs.get(&name) {
            return Ok(if same_trigger(there, &run) {
                Created::Existed
            } else {
                Created::Collision
            });
        }
        runs.insert(name, run);
        Ok(Created::New)
    }
}

fn s3_workflow(endpoint: &str) -> VideoWorkflow {
    common::workflow(
        "wf",
        "ns",
        endpoint,
        json!({"trigger": {"type": "S3", "prefix": "incoming/", "suffix": ".mp4"}, "outputPrefix": "incoming/out/"}),
    )
}

fn poller(
    s3: &TestS3,
    wf: &VideoWorkflow,
    sink: &Sink,
    run_existing: bool,
) -> Poller<Vec<VideoWorkflow>, Sink, FixedStorage> {
    Poller::new(
        vec![wf.clone()],
        sink.clone(),
        FixedStorage(s3.settings()),
        PollerConfig {
            run_existing,
            ..PollerConfig::default()
        },
    )
}

async fn put(store: &S3Store, key: &str, body: &str) {
    store
        .put_bytes("videos", key, body.as_bytes().to_vec())
        .await
        .expect("put");
}

#[tokio::test]
async fn poller_runs_each_new_object_once_across_restarts() {
    let dir = tempfile::tempdir().expect("tmp");
    let s3 = TestS3::start(dir.path(), &["videos"]).expect("s3s-fs (make s3-server)");
    let store = S3Store::new(&s3.settings());
    let wf = s3_workflow(&s3.endpoint);
    let sink = Sink::default();
    put(&store, "incoming/before.mp4", "old").await;

    // First poll: what was there is the baseline, not a run.
    let first = poller(&s3, &wf, &sink, false);
    let o = first.poll_workflow(&wf).await.expect("poll");
    assert_eq!(
        o,
        PollOutcome {
            baseline: true,
            ..Default::default()
        }
    );
    assert!(sink.inputs().is_empty());

    put(&store, "incoming/b.mp4", "b").await;
    put(&store, "incoming/a.mp4", "a").await;
    put(&store, "incoming/notes.txt", "suffix does not match").await;
    put(&store, "incoming/out/r1/join/all/joined.mp4", "an output").await;
    put(&store, "elsewhere/c.mp4", "prefix does not match").await;
    let o = first.poll_workflow(&wf).await.expect("poll");
    assert_eq!(o.created, 2, "{o:?}");
    assert_eq!(
        sink.inputs(),
        vec!["s3://videos/incoming/a.mp4", "s3://videos/incoming/b.mp4"]
    );
    assert_eq!(
        first.poll_workflow(&wf).await.expect("poll").created,
        0,
        "polled again"
    );

    // A new process: the cursor is in the bucket, so nothing runs again.
    let restarted = poller(&s3, &wf, &sink, false);
    let o = restarted.poll_workflow(&wf).await.expect("poll");
    assert_eq!(o, PollOutcome::default(), "{o:?}");
    assert!(
        store
            .get_bytes("videos", &cursor_key(&wf))
            .await
            .expect("get")
            .is_some()
    );

    // A crash after creating a run but before writing the cursor: the create is
    // refused as a duplicate (same name), still one run per object.
    put(&store, "incoming/d.mp4", "d").await;
    let cursor = store
        .get_bytes("videos", &cursor_key(&wf))
        .await
        .expect("get")
        .expect("cursor");
    assert_eq!(restarted.poll_workflow(&wf).await.expect("poll").created, 1);
    store
        .put_bytes("videos", &cursor_key(&wf), cursor)
        .await
        .expect("roll back the cursor");
    let o = poller(&s3, &wf, &sink, false)
        .poll_workflow(&wf)
        .await
        .expect("poll");
    assert_eq!((o.created, o.existed), (0, 1), "{o:?}");

    // New content under an old key is a new object.
    put(&store, "incoming/a.mp4", "a, second version").await;
    assert_eq!(restarted.poll_workflow(&wf).await.expect("poll").created, 1);
    assert_eq!(sink.0.lock().expect("lock").len(), 4, "a, b, d and a again");
}

#[tokio::test]
async fn poller_can_run_what_was_there_first() {
    let dir = tempfile::tempdir().expect("tmp");
    let s3 = TestS3::start(dir.path(), &["videos"]).expect("s3s-fs (make s3-server)");
    let store = S3Store::new(&s3.settings());
    let wf = s3_workflow(&s3.endpoint);
    let sink = Sink::default();
    put(&store, "incoming/before.mp4", "old").await;
    let o = poller(&s3, &wf, &sink, true)
        .poll_workflow(&wf)
        .await
        .expect("poll");
    assert_eq!((o.created, o.baseline), (1, false));
}

/// What MinIO sends for `mc cp a.mp4 local/videos/incoming/new%20clip.mp4`
/// (RELEASE.2024 notify_webhook, one record per event).
fn minio_event(bucket: &str, key: &str, etag: &str, event: &str) -> serde_json::Value {
    json!({
        "EventName": event,
        "Key": format!("{bucket}/{key}"),
        "Records": [{
            "eventVersion": "2.0",
            "eventSource": "minio:s3",
            "awsRegion": "",
            "eventTime": "2024-05-01T10:00:00.000Z",
            "eventName": event,
            "userIdentity": {"principalId": "minioadmin"},
            "requestParameters": {"principalId": "minioadmin", "region": "", "sourceIPAddress": "10.0.0.1"},
            "responseElements": {
                "x-amz-id-2": "dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8",
                "x-amz-request-id": "17CB1E3B0E1F8A3C",
                "x-minio-deployment-id": "60a8b1c8-1d0e-4b43-a1b4-6d3c7a0b9e2f",
                "x-minio-origin-endpoint": "http://10.0.0.2:9000"
            },
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "Config",
                "bucket": {
                    "name": bucket,
                    "ownerIdentity": {"principalId": "minioadmin"},
                    "arn": format!("arn:aws:s3:::{bucket}")
                },
                "object": {
                    "key": key,
                    "size": 1048576,
                    "eTag": etag,
                    "contentType": "video/mp4",
                    "userMetadata": {"content-type": "video/mp4"},
                    "sequencer": "17CB1E3B0E3A5D76"
                }
            },
            "source": {"host": "10.0.0.1", "port": "", "userAgent": "MinIO (linux; amd64) minio-go/v7.0.70 mc/RELEASE.2024-04-29T09-56-05Z"}
        }]
    })
}

async fn serve(state: WebhookState<Vec<VideoWorkflow>, Sink>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router(Arc::new(state))).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn webhook_creates_one_run_per_new_object_and_ignores_the_rest() {
    let wf = s3_workflow("http://minio:9000");
    let sink = Sink::default();
    let url = serve(WebhookState {
        workflows: vec![
            wf,
            common::workflow("manual", "ns", "http://minio:9000", json!({})),
        ],
        sink: sink.clone(),
        token: Some("s3cret".into()),
    })
    .await;
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value, token: &str| {
        http.post(format!("{url}/minio/events"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let created = minio_event(
        "videos",
        "incoming/new+clip%282%29.mp4",
        "d41d8cd98f00b204e9800998ecf8427e",
        "s3:ObjectCreated:Put",
    );
    // A wrong token, a prefix of the right one, the right one with more after it, or
    // none at all: refused, and nothing is created.
    for bad in ["wrong", "s3cre", "s3cret2"] {
        let r = post(created.clone(), bad).await.expect("post");
        assert_eq!(r.status(), 401, "{bad}");
    }
    let r = http
        .post(format!("{url}/minio/events"))
        .json(&created)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401, "no Authorization header");
    assert!(sink.inputs().is_empty());

    let r = post(created.clone(), "s3cret").await.expect("post");
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = r.json().await.expect("json");
    assert_eq!(
        answer["created"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );
    assert_eq!(sink.inputs(), vec!["s3://videos/incoming/new clip(2).mp4"]);
    let run = sink
        .0
        .lock()
        .expect("lock")
        .values()
        .next()
        .cloned()
        .expect("run");
    assert_eq!(run.metadata.namespace.as_deref(), Some("ns"));
    assert_eq!(run.spec.workflow_ref.name, "wf");

    // MinIO redelivers (it retries until a 2xx): no second run.
    let answer: serde_json::Value = post(created, "s3cret")
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(
        answer["existed"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );
    assert_eq!(sink.0.lock().expect("lock").len(), 1);

    for ignored in [
        minio_event(
            "videos",
            "incoming/out/r/join/all/joined.mp4",
            "e",
            "s3:ObjectCreated:Put",
        ),
        minio_event("videos", "incoming/x.mp4", "e", "s3:ObjectRemoved:Delete"),
        minio_event(
            "other",
            "incoming/x.mp4",
            "e",
            "s3:ObjectCreated:CompleteMultipartUpload",
        ),
        minio_event("videos", "incoming/x.mov", "e", "s3:ObjectCreated:Put"),
    ] {
        let answer: serde_json::Value = post(ignored, "s3cret")
            .await
            .expect("post")
            .json()
            .await
            .expect("json");
        assert_eq!(answer["ignored"], 1, "{answer}");
    }
    assert_eq!(sink.0.lock().expect("lock").len(), 1);

    let r = http
        .post(&url)
        .bearer_auth("s3cret")
        .body("not json")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);
}

#[test]
fn event_keys_are_url_decoded() {
    assert_eq!(decode_key("a%2Fb+c%28d%29.mp4"), "a/b c(d).mp4");
    assert_eq!(decode_key("100%"), "100%");
    assert_eq!(decode_key("%zz%+1"), "%zz%+1".replace('+', " "));
    assert_eq!(decode_key("caf%C3%A9.mp4"), "café.mp4");
}

// Issue 17 item 7: a run name carried 40 bits, and any 409 counted as "this object ran
// already", so a collision silently dropped an object.
#[tokio::test]
async fn a_name_taken_by_another_objects_run_moves_on_to_the_next_name() {
    let sink = Sink::default();
    let wf = s3_workflow("http://127.0.0.1:9");
    let object = |key: &str, etag: &str| NewObject {
        bucket: "videos".into(),
        key: key.into(),
        etag: etag.into(),
    };
    let wanted = object("incoming/a.mp4", "e1");
    // Another object's run already holds the name this object hashes to first.
    let mut squatter =
        vflow_runs::trigger::run_for(&wf, &object("incoming/b.mp4", "e9"), "webhook");
    let first = run_name("ns", "wf", &wanted);
    squatter.metadata.name = Some(first.clone());
    assert_eq!(sink.create(squatter).await, Ok(Created::New));

    let (created, name) = create_run(&sink, &wf, &wanted, "webhook")
        .await
        .expect("created");
    assert_eq!(created, Created::New);
    assert_ne!(name, first, "the object got its next name");
    assert!(
        name.starts_with("wf-") && name.len() == 23,
        "80 bits: {name}"
    );
    // Delivered again: found under that name, not run twice.
    let again = create_run(&sink, &wf, &wanted, "webhook")
        .await
        .expect("again");
    assert_eq!(again, (Created::Existed, name));
    // The same key with new content (a new ETag) is a new run.
    let changed = create_run(&sink, &wf, &object("incoming/a.mp4", "e2"), "webhook")
        .await
        .expect("changed");
    assert_eq!(changed.0, Created::New);
    assert_eq!(
        sink.inputs(),
        [
            "s3://videos/incoming/a.mp4",
            "s3://videos/incoming/a.mp4",
            "s3://videos/incoming/b.mp4"
        ]
    );
}
