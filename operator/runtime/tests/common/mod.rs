//! Starts `vflow-runtime serve` as a real process for the tests.

#![allow(dead_code)] // each test file uses part of this

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn testfn() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/testfn")
        .to_string_lossy()
        .into_owned()
}

pub struct Runtime {
    pub child: Child,
    pub url: String,
    pub log: PathBuf,
}

impl Runtime {
    /// Starts the runtime on a free port; waits for the port, not for readiness.
    pub fn start(dir: &Path, args: &[&str], env: &[(String, String)]) -> Runtime {
        let port_file = dir.join(format!("port-{}", rand_suffix()));
        let log = dir.join(format!("runtime-{}.log", rand_suffix()));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_vflow-runtime"));
        command.arg("serve").arg("--bind").arg("127.0.0.1");
        // A free port unless the test chose one.
        if !args.contains(&"--port") {
            command.arg("--port").arg("0");
        }
        command
            .arg("--port-file")
            .arg(&port_file)
            .args(args)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("VFLOW_S3_CREDENTIALS_DIR")
            // A test that wants it sets it: otherwise the runtime derives it (cpu_share).
            .env_remove("VFLOW_FFMPEG_THREADS")
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start vflow-runtime");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let Ok(port) = text.trim().parse::<u16>()
            {
                return Runtime {
                    child,
                    url: format!("http://127.0.0.1:{port}"),
                    log,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "vflow-runtime exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "vflow-runtime did not bind a port"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub async fn wait_ready(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", self.url)).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "not ready: {}", self.logs());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn terminate(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn invoke(
    client: &reqwest::Client,
    url: &str,
    body: serde_json::Value,
) -> (u16, Option<String>, serde_json::Value) {
    let response = client
        .post(format!("{url}/invoke"))
        .json(&body)
        .send()
        .await
        .expect("POST /invoke");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let json = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, retry_after, json)
}

/// An S3 endpoint in front of `upstream` that answers 500 to the requests `fail`
/// picks (method, path) and forwards the rest as they are (the signature covers the
/// Host header, which is kept). Returns the endpoint's URL.
pub async fn fault_proxy(
    upstream: &str,
    fail: impl Fn(&str, &str) -> bool + Send + Sync + 'static,
) -> String {
    use axum::body::{Body, to_bytes};
    use axum::extract::Request;
    use axum::response::Response;
    let upstream = upstream.trim_end_matches('/').to_string();
    let fail = std::sync::Arc::new(fail);
    let client = reqwest::Client::new();
    let handler = move |request: Request| {
        let upstream = upstream.clone();
        let fail = fail.clone();
        let client = client.clone();
        async move {
            let (parts, body) = request.into_parts();
            let path_and_query = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            if fail(parts.method.as_str(), parts.uri.path()) {
                return Response::builder()
                    .status(500)
                    .body(Body::from(
                        "<Error><Code>InternalError</Code><Message>injected</Message></Error>",
                    ))
                    .expect("response");
            }
            let bytes = to_bytes(body, usize::MAX).await.unwrap_or_default();
            let mut forward =
                client.request(parts.method.clone(), format!("{upstream}{path_and_query}"));
            for (name, value) in &parts.headers {
                if !matches!(
                    name.as_str(),
                    "connection" | "transfer-encoding" | "expect" | "content-length"
                ) {
                    forward = forward.header(name, value);
                }
            }
            let answer = match forward.body(bytes).send().await {
                Ok(answer) => answer,
                Err(e) => {
                    return Response::builder()
                        .status(502)
                        .body(Body::from(e.to_string()))
                        .expect("response");
                }
            };
            let mut response = Response::builder().status(answer.status().as_u16());
            for (name, value) in answer.headers() {
                if !matches!(name.as_str(), "connection" | "transfer-encoding") {
                    response = response.header(name, value);
                }
            }
            let body = answer.bytes().await.unwrap_or_default();
            response.body(Body::from(body)).expect("response")
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the fault proxy");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}
