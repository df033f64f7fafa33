//! The storage layer against a real S3-compatible server (s3s-fs) on loopback, and
//! against a deliberately faulty one for the retry paths.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vflow_storage::test_server::TestS3;
use vflow_storage::{Location, S3Settings, StorageError, Store};

fn loc(uri: &str) -> Location {
    match Location::parse(uri) {
        Ok(l) => l,
        Err(e) => panic!("{uri}: {e}"),
    }
}

fn server(dir: &tempfile::TempDir) -> TestS3 {
    match TestS3::start(&dir.path().join("s3"), &["videos"]) {
        Ok(s) => s,
        Err(e) => panic!("cannot start the S3 server: {e}"),
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn small_and_multipart_round_trips_are_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = server(&dir);
    let mut settings = s3.settings();
    settings.multipart_threshold = 8 << 20;
    settings.part_size = 5 << 20;
    let store = Store::with_s3(&settings);

    for (name, len) in [
        ("small.bin", 1000usize),
        ("large.bin", 13 << 20),
        ("empty.bin", 0),
    ] {
        let src = dir.path().join(name);
        std::fs::write(&src, pattern(len)).expect("write");
        let target = loc(&format!("s3://videos/in/{name}"));
        let up = store.upload(&src, &target).await.expect("upload");
        assert_eq!(up.bytes, len as u64);
        assert_eq!(store.size(&target).await.expect("size"), Some(len as u64));
        let back = dir.path().join(format!("back-{name}"));
        let down = store.download(&target, &back).await.expect("download");
        assert_eq!(down, up, "{name}: what came back differs from what went up");
        assert_eq!(std::fs::read(&back).expect("read"), pattern(len));
    }
    let listed = store.list(&loc("s3://videos/in/")).await.expect("list");
    let names: Vec<String> = listed.iter().map(|o| o.location.to_string()).collect();
    assert_eq!(
        names,
        [
            "s3://videos/in/empty.bin",
            "s3://videos/in/large.bin",
            "s3://videos/in/small.bin"
        ]
    );
}

// Issue 17 item 3: the completion record is written only if none is there, and the
// chosen attempt's outputs are copied server-side, checksum and odd names included.
#[tokio::test]
async fn conditional_writes_and_copies_against_a_real_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = server(&dir);
    let mut settings = s3.settings();
    settings.multipart_threshold = 8 << 20;
    settings.part_size = 5 << 20;
    let store = Store::with_s3(&settings);

    let record = loc("s3://videos/out/_vflow-complete.json");
    assert!(
        store
            .put_bytes_if_absent(&record, b"first".to_vec())
            .await
            .expect("put")
    );
    assert!(
        !store
            .put_bytes_if_absent(&record, b"second".to_vec())
            .await
            .expect("put")
    );
    assert_eq!(
        store.get_bytes(&record).await.expect("get").as_deref(),
        Some(&b"first"[..])
    );

    // A single CopyObject and a part-by-part copy (13 MiB over an 8 MiB threshold).
    for (name, len) in [("a b+é.bin", 1000usize), ("large.bin", 13 << 20)] {
        let src = dir.path().join("src.bin");
        std::fs::write(&src, pattern(len)).expect("write");
        let from = loc(&format!("s3://videos/out/_vflow-attempt-1/{name}"));
        let up = store.upload(&src, &from).await.expect("upload");
        let to = loc(&format!("s3://videos/out/{name}"));
        store.copy(&from, &to).await.expect("copy");
        let back = dir.path().join("back.bin");
        let down = store.download(&to, &back).await.expect("download the copy");
        assert_eq!(down, up, "{name}: the copy differs");
        assert_eq!(std::fs::read(&back).expect("read"), pattern(len));
    }
    let missing = store
        .copy(&loc("s3://videos/nope.bin"), &loc("s3://videos/x.bin"))
        .await;
    assert!(
        matches!(missing, Err(StorageError::NotFound { .. })),
        "{missing:?}"
    );
}

// The chaos test's unfinished run: s3s-fs renames a PUT's content into place before it
// stores the object's checksum, and a writer killed in between leaves the old checksum
// beside the new content. The SDK checked that checksum on every read, so the run's
// record stayed unreadable for good. Small objects read whole are now checked by their
// reader (a record by parsing it); downloads still ask for the checksum and verify
// their SHA-256.
#[tokio::test]
async fn a_small_object_whose_stored_checksum_is_stale_is_still_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = server(&dir);
    let store = Store::with_s3(&s3.settings());
    let record = loc("s3://videos/out/_vflow-run.json");
    store
        .put_bytes(&record, b"{\"version\": 1}".to_vec())
        .await
        .expect("put");
    // The content of a later write, without its checksum (what the kill leaves).
    std::fs::write(
        dir.path().join("s3/videos/out/_vflow-run.json"),
        b"{\"version\": 2}",
    )
    .expect("write");
    let read = store
        .get_bytes(&record)
        .await
        .expect("read despite the stale checksum");
    assert_eq!(read.as_deref(), Some(&b"{\"version\": 2}"[..]));
    let tagged = store.get_tagged(&record).await.expect("tagged read");
    assert_eq!(
        tagged.map(|(data, _)| data).as_deref(),
        Some(&b"{\"version\": 2}"[..])
    );
}

#[tokio::test]
async fn a_missing_object_is_not_found_and_leaves_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = server(&dir);
    let store = Store::with_s3(&s3.settings());
    let dest = dir.path().join("nothing");
    let err = store.download(&loc("s3://videos/no/such.mp4"), &dest).await;
    assert!(matches!(err, Err(StorageError::NotFound { .. })), "{err:?}");
    assert!(!dest.exists());
    assert_eq!(
        store.get_bytes(&loc("s3://videos/no/such.json")).await.ok(),
        Some(None)
    );
    // Deleting what is not there is fine.
    store
        .delete(&loc("s3://videos/no/such.mp4"))
        .await
        .expect("delete");
}

#[tokio::test]
async fn a_corrupted_object_fails_its_checksum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = server(&dir);
    let store = Store::with_s3(&s3.settings());
    let src = dir.path().join("clip.bin");
    std::fs::write(&src, pattern(4096)).expect("write");
    store
        .upload(&src, &loc("s3://videos/clip.bin"))
        .await
        .expect("upload");
    // Flip bytes on the server's disk, same size: only a checksum can tell.
    let stored = s3.root.join("videos/clip.bin");
    let mut bytes = std::fs::read(&stored).expect("stored object");
    bytes[100] ^= 0xff;
    std::fs::write(&stored, bytes).expect("tamper");
    let err = store
        .download(&loc("s3://videos/clip.bin"), &dir.path().join("back"))
        .await;
    match err {
        Err(StorageError::ChecksumMismatch { .. }) => {}
        Err(StorageError::S3 { message, .. }) if message.to_lowercase().contains("checksum") => {}
        other => panic!("a corrupted object was accepted: {other:?}"),
    }
}

#[tokio::test]
async fn local_paths_work_without_s3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::local_only();
    let src = dir.path().join("a.txt");
    std::fs::write(&src, b"hello").expect("write");
    let target = Location::Local(dir.path().join("out/sub/a.txt"));
    let t = store.upload(&src, &target).await.expect("copy");
    assert_eq!(t.bytes, 5);
    let listed = store
        .list(&Location::Local(dir.path().join("out")))
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    let err = store.upload(&src, &loc("s3://videos/a.txt")).await;
    assert!(matches!(err, Err(StorageError::NoS3 { .. })), "{err:?}");
}

/// A server that answers each request with the next canned response.
async fn faulty_server(responses: Vec<Vec<u8>>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        for response in responses {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = socket.write_all(&response).await;
            let _ = socket.shutdown().await;
        }
    });
    (format!("http://127.0.0.1:{port}"), seen)
}

fn http(status: &str, headers: &str, body: &str, claimed_len: usize) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Length: {claimed_len}\r\nConnection: close\r\n{headers}\r\n{body}"
    )
    .into_bytes()
}

fn fault_settings(endpoint: String) -> S3Settings {
    S3Settings::new(Some(endpoint), "key".into(), "secret".into())
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried() {
    let slow_down =
        "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
    let internal = "<Error><Code>InternalError</Code><Message>oops</Message></Error>";
    let (endpoint, seen) = faulty_server(vec![
        http(
            "503 Slow Down",
            "Content-Type: application/xml\r\n",
            slow_down,
            slow_down.len(),
        ),
        http(
            "500 Internal Server Error",
            "Content-Type: application/xml\r\n",
            internal,
            internal.len(),
        ),
        http(
            "200 OK",
            "Content-Type: application/octet-stream\r\n",
            "hello",
            5,
        ),
    ])
    .await;
    let store = Store::with_s3(&fault_settings(endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let t = store
        .download(&loc("s3://videos/a.bin"), &dir.path().join("a.bin"))
        .await
        .expect("download after retries");
    assert_eq!(t.bytes, 5);
    assert_eq!(seen.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_body_cut_short_is_fetched_again() {
    let (endpoint, seen) = faulty_server(vec![
        http("200 OK", "", "hello", 10),
        http("200 OK", "", "helloworld", 10),
    ])
    .await;
    let store = Store::with_s3(&fault_settings(endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("a.bin");
    let t = store
        .download(&loc("s3://videos/a.bin"), &dest)
        .await
        .expect("download after a short body");
    assert_eq!(t.bytes, 10);
    assert_eq!(std::fs::read(&dest).expect("read"), b"helloworld");
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn errors_that_retrying_cannot_fix_are_not_retried() {
    let denied = "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
    let (endpoint, seen) = faulty_server(vec![
        http(
            "403 Forbidden",
            "Content-Type: application/xml\r\n",
            denied,
            denied.len(),
        ),
        http("200 OK", "", "hello", 5),
    ])
    .await;
    let store = Store::with_s3(&fault_settings(endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let err = store
        .download(&loc("s3://videos/a.bin"), &dir.path().join("a.bin"))
        .await;
    match err {
        Err(StorageError::S3 {
            message,
            transient: false,
            ..
        }) => {
            assert!(message.contains("AccessDenied"), "{message}")
        }
        other => panic!("expected a permanent S3 error, got {other:?}"),
    }
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

/// A proxy to `upstream` that records every request ("METHOD path?query") and fails
/// CompleteMultipartUpload (POST ...?uploadId=) with a 500.
async fn failing_completion_proxy(
    upstream: String,
) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::body::{Body, to_bytes};
    use axum::extract::{Request, State};
    use axum::response::Response;
    type Seen = Arc<std::sync::Mutex<Vec<String>>>;
    async fn forward(State((upstream, seen)): State<(String, Seen)>, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let target = parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        seen.lock()
            .expect("lock")
            .push(format!("{} {target}", parts.method));
        let body = to_bytes(body, usize::MAX).await.unwrap_or_default();
        if parts.method == axum::http::Method::POST && target.contains("uploadId=") {
            let error = "<Error><Code>InternalError</Code><Message>injected</Message></Error>";
            return Response::builder()
                .status(500)
                .header("content-type", "application/xml")
                .body(Body::from(error))
                .expect("response");
        }
        let mut headers = parts.headers.clone();
        headers.remove("content-length");
        headers.remove("transfer-encoding");
        let answer = reqwest::Client::new()
            .request(parts.method.clone(), format!("{upstream}{target}"))
            .headers(headers)
            .body(body)
            .send()
            .await
            .expect("upstream");
        let mut response = Response::builder().status(answer.status().as_u16());
        for (name, value) in answer.headers() {
            if name != "content-length" && name != "transfer-encoding" {
                response = response.header(name.as_str(), value.as_bytes());
            }
        }
        let bytes = answer.bytes().await.unwrap_or_default();
        response.body(Body::from(bytes)).expect("response")
    }
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .fallback(forward)
        .with_state((upstream, seen.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

// Issue 17 item 3: a multipart upload whose completion failed was never aborted: its
// parts stayed on the server, invisible and paid for.
#[tokio::test]
async fn a_failed_multipart_completion_is_aborted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = server(&dir);
    let upstream = s3.settings().endpoint.clone().expect("endpoint");
    let (proxy, seen) = failing_completion_proxy(upstream).await;
    let mut settings = s3.settings();
    settings.endpoint = Some(proxy);
    settings.multipart_threshold = 8 << 20;
    settings.part_size = 5 << 20;
    let store = Store::with_s3(&settings);
    let src = dir.path().join("big.bin");
    std::fs::write(&src, pattern(11 << 20)).expect("write");
    let err = store
        .upload(&src, &loc("s3://videos/out/big.bin"))
        .await
        .expect_err("the completion fails");
    assert!(err.to_string().contains("CompleteMultipartUpload"), "{err}");
    let seen = seen.lock().expect("lock").clone();
    let parts = seen
        .iter()
        .filter(|r| r.starts_with("PUT ") && r.contains("partNumber="))
        .count();
    assert_eq!(parts, 3, "{seen:?}");
    assert!(
        seen.iter()
            .any(|r| r.starts_with("DELETE /videos/out/big.bin?") && r.contains("uploadId=")),
        "no AbortMultipartUpload after the failed completion: {seen:?}"
    );
    // Nothing is left under the key.
    let direct = Store::with_s3(&s3.settings());
    assert_eq!(
        direct
            .size(&loc("s3://videos/out/big.bin"))
            .await
            .expect("size"),
        None
    );
}
