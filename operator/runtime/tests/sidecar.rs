//! `vflow-runtime metrics` watching a real `serve` process through /proc.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Runtime, invoke, testfn};
use serde_json::{Value, json};

struct Sidecar(std::process::Child, String);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_sidecar(dir: &std::path::Path, pid: u32) -> Sidecar {
    let port_file = dir.join("sidecar.port");
    let child = Command::new(env!("CARGO_BIN_EXE_vflow-runtime"))
        .args([
            "metrics",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--interval",
            "100ms",
        ])
        .arg("--pid")
        .arg(pid.to_string())
        .arg("--port-file")
        .arg(&port_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the sidecar");
    // Owned at once, so a failed wait below still reaps it.
    let mut sidecar = Sidecar(child, String::new());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(port) = std::fs::read_to_string(&port_file) {
            sidecar.1 = format!("http://127.0.0.1:{}", port.trim());
            return sidecar;
        }
        assert!(Instant::now() < deadline, "the sidecar did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn the_sidecar_sees_the_function_s_cpu_and_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scratch = dir.path().join("scratch").to_string_lossy().into_owned();
    let command = serde_json::to_string(&[testfn()]).expect("json");
    let rt = Runtime::start(
        dir.path(),
        &["--scratch-dir", &scratch, "--allow-local-paths"],
        &[("VFLOW_COMMAND".into(), command)],
    );
    let client = reqwest::Client::new();
    rt.wait_ready(&client).await;
    let sidecar = start_sidecar(dir.path(), rt.child.id());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let out = format!("file://{}/out/", dir.path().display());
    let (status, _, body) = invoke(
        &client,
        &rt.url,
        json!({"run": "r", "stage": "s", "outputPrefix": out, "params": {"mode": "spin", "seconds": 1.5}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(400)).await;

    let obs: Value = client
        .get(format!("{}/observations", sidecar.1))
        .send()
        .await
        .expect("observations")
        .json()
        .await
        .expect("json");
    // One core spinning: the busy samples say so (the machine is shared: leave room).
    let cpu_p95 = obs["busyCpuCores"]["p95"].as_f64().unwrap_or(0.0);
    assert!(cpu_p95 > 0.5 && cpu_p95 < 1.5, "{obs}");
    // The 64 MiB block shows in the container's memory while busy, not while idle.
    let busy_max = obs["busyMemoryBytes"]["max"].as_f64().unwrap_or(0.0);
    let idle_max = obs["idleMemoryBytes"]["max"].as_f64().unwrap_or(f64::MAX);
    assert!(busy_max > 64.0 * 1048576.0, "{obs}");
    assert!(idle_max < busy_max, "{obs}");
    assert!(obs["samples"].as_u64().unwrap_or(0) >= 15, "{obs}");
    // No GPU here: the reason is given instead of figures.
    if obs["gpuMemoryBytes"].is_null() {
        assert!(obs["gpuUnavailable"].is_string(), "{obs}");
    }

    let metrics = client
        .get(format!("{}/metrics", sidecar.1))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "vflow_sidecar_cpu_cores",
        "vflow_sidecar_memory_bytes",
        "vflow_sidecar_samples_total",
    ] {
        // Labelled with the function, as the runtime's metrics are (default name here).
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{function=\"function\"}} "))),
            "{name} missing:\n{metrics}"
        );
    }
}
