//! `vflow-runtime serve` as a real process, with a real S3 server on loopback.

mod common;

use std::time::{Duration, Instant};

use common::{Runtime, fault_proxy, invoke, testfn};
use serde_json::json;
use vflow_storage::test_server::TestS3;
use vflow_storage::{Location, Store};

fn loc(uri: &str) -> Location {
    Location::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"))
}

fn command(extra: &[&str]) -> String {
    let mut argv = vec![testfn()];
    argv.extend(extra.iter().map(|s| s.to_string()));
    serde_json::to_string(&argv).expect("json")
}

struct Setup {
    dir: tempfile::TempDir,
    s3: TestS3,
    store: Store,
    client: reqwest::Client,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = TestS3::start(&dir.path().join("s3"), &["videos"])
        .unwrap_or_else(|e| panic!("cannot start the S3 server: {e}"));
    let store = Store::with_s3(&s3.settings());
    Setup {
        dir,
        s3,
        store,
        client: reqwest::Client::new(),
    }
}

impl Setup {
    fn runtime(&self, args: &[&str]) -> Runtime {
        let scratch = self.dir.path().join("scratch");
        let scratch = scratch.to_string_lossy().into_owned();
        let mut all = vec!["--scratch-dir", scratch.as_str(), "--function", "testfn"];
        all.extend_from_slice(args);
        let env = self.s3.env();
        let env: Vec<(String, String)> = env
            .into_iter()
            .chain([("VFLOW_COMMAND".to_string(), command(&[]))])
            .collect();
        Runtime::start(self.dir.path(), &all, &env)
    }

    /// A runtime that reaches S3 at `endpoint` (a fault proxy) instead.
    fn runtime_via(&self, endpoint: &str, args: &[&str]) -> Runtime {
        let scratch = self.dir.path().join("scratch");
        let scratch = scratch.to_string_lossy().into_owned();
        let mut all = vec!["--scratch-dir", scratch.as_str(), "--function", "testfn"];
        all.extend_from_slice(args);
        let env: Vec<(String, String)> = self
            .s3
            .env()
            .into_iter()
            .map(|(k, v)| {
                let v = if k == "VFLOW_S3_ENDPOINT" {
                    endpoint.to_string()
                } else {
                    v
                };
                (k, v)
            })
            .chain([("VFLOW_COMMAND".to_string(), command(&[]))])
            .collect();
        Runtime::start(self.dir.path(), &all, &env)
    }

    async fn put(&self, key: &str, bytes: &[u8]) {
        let path = self.dir.path().join("upload.tmp");
        std::fs::write(&path, bytes).expect("write");
        self.store
            .upload(&path, &loc(&format!("s3://videos/{key}")))
            .await
            .expect("upload");
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        self.store
            .list(&loc(&format!("s3://videos/{prefix}")))
            .await
            .expect("list")
            .into_iter()
            .map(|o| o.location.to_string())
            .collect()
    }
}

#[tokio::test]
async fn an_invocation_moves_inputs_and_outputs_through_s3() {
    let s = setup();
    s.put("in/a.bin", b"first input").await;
    s.put("in/b.bin", b"second").await;
    let rt = s.runtime(&[]);
    rt.wait_ready(&s.client).await;

    let body = json!({
        "run": "r1", "stage": "copy", "segment": 4,
        "inputs": ["s3://videos/in/a.bin", "s3://videos/in/b.bin"],
        "outputPrefix": "s3://videos/out/r1/copy/00004/",
        "params": {"mode": "copy", "text": "--not-an-option"}
    });
    let (status, _, first) = invoke(&s.client, &rt.url, body.clone()).await;
    assert_eq!(status, 200, "{first}\n{}", rt.logs());
    let outputs: Vec<&str> = first["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| o["uri"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        outputs,
        [
            "s3://videos/out/r1/copy/00004/000-a.bin",
            "s3://videos/out/r1/copy/00004/001-b.bin"
        ]
    );
    assert_eq!(first["bytesIn"], 17);
    assert_eq!(first["bytesOut"], 17);
    assert_eq!(
        first["metadata"],
        json!({"inputs": 2, "bytes": 17, "text": "--not-an-option", "segment": "4"})
    );
    assert_eq!(first["cold"], true);
    assert!(first["coldStartSeconds"].as_f64().is_some_and(|c| c > 0.0));
    assert!(first["peakRssBytes"].as_u64().is_some_and(|m| m > 1 << 20));
    assert!(first["cpuSeconds"].as_f64().is_some_and(|c| c > 0.0));
    // Alone on the instance: packing degree 1.
    assert!(
        first["concurrency"]
            .as_f64()
            .is_some_and(|c| (c - 1.0).abs() < 1e-6),
        "{first}"
    );
    // Its CPU and memory over the run, sliced (a short run has a few slices).
    let usage = first["usage"].as_array().expect("usage slices");
    assert!(!usage.is_empty() && usage.len() <= 10, "{usage:?}");
    assert!(usage.iter().all(|s| s["rssBytes"].as_u64().is_some()));
    let wall = first["wallSeconds"].as_f64().unwrap_or(0.0);
    let function = first["functionSeconds"].as_f64().unwrap_or(f64::MAX);
    assert!(
        function > 0.0 && function <= wall,
        "function {function} wall {wall}"
    );

    // The completion record is written last, and says what was produced.
    let record = s
        .store
        .get_bytes(&loc("s3://videos/out/r1/copy/00004/_vflow-complete.json"))
        .await
        .expect("get")
        .expect("completion record");
    let record: serde_json::Value = serde_json::from_slice(&record).expect("json");
    assert_eq!(record["response"]["outputs"], first["outputs"]);

    // The same work again (a resent unit whose first answer was lost): the completed
    // attempt's outcome, not a second run.
    let (status, _, again) = invoke(&s.client, &rt.url, body.clone()).await;
    assert_eq!(status, 200, "{again}");
    for field in [
        "outputs",
        "metadata",
        "functionSeconds",
        "cpuSeconds",
        "instance",
    ] {
        assert_eq!(again[field], first[field], "the recorded outcome's {field}");
    }

    // Other work (another param) on the warm instance: runs, and is not cold.
    let mut other = body;
    other["params"]["text"] = json!("another");
    let (status, _, second) = invoke(&s.client, &rt.url, other).await;
    assert_eq!(status, 200);
    assert_eq!(second["cold"], false);
    assert!(second.get("coldStartSeconds").is_none());
    assert_eq!(
        second["outputs"], first["outputs"],
        "keys are deterministic"
    );

    // Observations for the operator.
    let obs = observations(&s, &rt.url).await;
    assert_eq!(obs["invocations"], 2);
    assert_eq!(obs["failures"], 0);
    assert_eq!(obs["execSeconds"]["count"], 2);
    let metrics = s
        .client
        .get(format!("{}/metrics", rt.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let succeeded = metrics.lines().find(|l| {
        l.starts_with("vflow_runtime_invocations_total{")
            && l.contains(r#"function="testfn""#)
            && l.contains(r#"outcome="succeeded""#)
    });
    assert!(succeeded.is_some_and(|l| l.ends_with(" 2")), "{metrics}");
}

#[tokio::test]
async fn nested_output_files_keep_their_relative_names() {
    let s = setup();
    let rt = s.runtime(&[]);
    rt.wait_ready(&s.client).await;
    let (status, _, body) = invoke(
        &s.client,
        &rt.url,
        json!({"run": "r", "stage": "frames", "outputPrefix": "s3://videos/out/frames", "params": {"mode": "nested"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        s.keys("out/frames/").await,
        [
            "s3://videos/out/frames/_vflow-complete.json",
            "s3://videos/out/frames/frames/frame-000.txt",
            "s3://videos/out/frames/frames/frame-001.txt",
            "s3://videos/out/frames/frames/frame-002.txt"
        ]
    );
}

#[tokio::test]
async fn a_missing_input_fails_clearly_and_the_runtime_stays_healthy() {
    let s = setup();
    let rt = s.runtime(&[]);
    rt.wait_ready(&s.client).await;
    let (status, _, body) = invoke(
        &s.client,
        &rt.url,
        json!({"run": "r", "stage": "copy", "inputs": ["s3://videos/in/missing.mp4"],
               "outputPrefix": "s3://videos/out/missing/", "params": {"mode": "copy"}}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["phase"], "download");
    assert_eq!(body["error"]["input"], "s3://videos/in/missing.mp4");
    assert_eq!(body["error"]["retryable"], false);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("input missing")
    );
    assert!(s.keys("out/missing/").await.is_empty());

    s.put("in/ok.bin", b"ok").await;
    let (status, _, body) = invoke(
        &s.client,
        &rt.url,
        json!({"run": "r", "stage": "copy", "inputs": ["s3://videos/in/ok.bin"],
               "outputPrefix": "s3://videos/out/ok/", "params": {"mode": "copy"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_failing_function_leaves_no_output_and_shows_its_stderr() {
    let s = setup();
    s.put("in/broken.mp4", b"not a video").await;
    let rt = s.runtime(&[]);
    rt.wait_ready(&s.client).await;
    let (status, _, body) = invoke(
        &s.client,
        &rt.url,
        json!({"run": "r", "stage": "scale", "inputs": ["s3://videos/in/broken.mp4"],
               "outputPrefix": "s3://videos/out/broken/", "params": {"mode": "fail"}}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let error = &body["error"];
    assert_eq!(error["phase"], "function");
    assert_eq!(error["exit"], json!({"kind": "code", "code": 1}));
    let message = error["message"].as_str().unwrap_or("");
    assert!(message.contains("exit status 1"), "{message}");
    assert!(
        message.contains("000-broken.mp4: Invalid data found"),
        "{message}"
    );
    assert!(
        error["stderrTail"]
            .as_str()
            .unwrap_or("")
            .contains("moov atom not found")
    );
    assert!(
        s.keys("out/broken/").await.is_empty(),
        "partial output left behind"
    );
    // The scratch directory is cleaned after a failure too.
    let scratch = s.dir.path().join("scratch");
    assert_eq!(
        std::fs::read_dir(&scratch).map(|d| d.count()).unwrap_or(0),
        0
    );
}

#[tokio::test]
async fn bad_requests_are_refused_before_any_work() {
    let s = setup();
    let rt = s.runtime(&[]);
    rt.wait_ready(&s.client).await;
    for (body, expect) in [
        (
            json!({"run": "r", "stage": "s", "outputPrefix": "relative/out"}),
            "outputPrefix",
        ),
        (
            json!({"run": "r", "stage": "s", "outputPrefix": "s3://videos/o/", "params": {"output-dir": "/etc"}}),
            "reserved",
        ),
        (
            json!({"run": "r", "stage": "s", "outputPrefix": "s3://videos/o/", "inputs": ["http://x/y.mp4"]}),
            "not a storage URI",
        ),
        (
            json!({"run": "r", "stage": "s", "outputPrefix": "s3://videos/o/", "params": {"mode": {"a": 1}}}),
            "string, number or boolean",
        ),
        (
            json!({"run": "r", "stage": "s", "output_prefix": "s3://videos/o/"}),
            "unknown field",
        ),
    ] {
        let (status, _, answer) = invoke(&s.client, &rt.url, body.clone()).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(expect), "{body}: {message}");
    }
}

#[tokio::test]
async fn the_concurrency_limit_answers_429_with_retry_after() {
    let s = setup();
    let rt = s.runtime(&["--concurrency", "2"]);
    rt.wait_ready(&s.client).await;
    let call = |i: usize| {
        let client = s.client.clone();
        let url = rt.url.clone();
        async move {
            invoke(
                &client,
                &url,
                json!({"run": "r", "stage": "s", "segment": i, "outputPrefix": format!("s3://videos/c/{i}/"),
                       "params": {"mode": "sleep", "seconds": 1.0}}),
            )
            .await
        }
    };
    let results = futures_util::future::join_all((0..3).map(call)).await;
    let mut statuses: Vec<u16> = results.iter().map(|(s, _, _)| *s).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 200, 429], "{results:?}");
    let rejected = results
        .iter()
        .find(|(s, _, _)| *s == 429)
        .map(|(_, r, _)| r.clone());
    assert_eq!(rejected, Some(Some("1".to_string())));
}

#[tokio::test]
async fn sigterm_drains_in_flight_invocations_then_exits() {
    let s = setup();
    let mut rt = s.runtime(&["--drain-timeout", "20s"]);
    rt.wait_ready(&s.client).await;
    let client = s.client.clone();
    let url = rt.url.clone();
    let in_flight = tokio::spawn(async move {
        invoke(
            &client,
            &url,
            json!({"run": "r", "stage": "s", "outputPrefix": "s3://videos/drain/",
                   "params": {"mode": "sleep", "seconds": 1.5}}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    rt.terminate();
    let (status, _, body) = in_flight.await.expect("join");
    assert_eq!(status, 200, "the in-flight invocation was cut off: {body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(status) = rt.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after the drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit {exit}: {}", rt.logs());
    assert_eq!(
        s.keys("drain/").await.len(),
        2,
        "output and completion record"
    );
}

#[tokio::test]
async fn readiness_waits_for_the_warm_up() {
    let s = setup();
    let warmup = command(&["--warmup"]);
    let scratch = s.dir.path().join("scratch").to_string_lossy().into_owned();
    let mut env = s.s3.env();
    env.push(("VFLOW_COMMAND".into(), command(&[])));
    env.push(("VFLOW_WARMUP_COMMAND".into(), warmup));
    env.push(("VFLOW_TESTFN_WARMUP_SECONDS".into(), "1.5".into()));
    let rt = Runtime::start(s.dir.path(), &["--scratch-dir", &scratch], &env);
    let early = s
        .client
        .get(format!("{}/readyz", rt.url))
        .send()
        .await
        .expect("readyz");
    assert_eq!(early.status(), 503);
    let health = s
        .client
        .get(format!("{}/healthz", rt.url))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200, "alive while warming up");
    let (status, retry, _) = invoke(
        &s.client,
        &rt.url,
        json!({"run": "r", "stage": "s", "outputPrefix": "s3://videos/w/", "params": {"mode": "nested"}}),
    )
    .await;
    assert_eq!((status, retry.as_deref()), (503, Some("1")));
    rt.wait_ready(&s.client).await;
    let (status, _, body) = invoke(
        &s.client,
        &rt.url,
        json!({"run": "r", "stage": "s", "outputPrefix": "s3://videos/w/", "params": {"mode": "nested"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The cold start covers the warm-up.
    assert!(
        body["coldStartSeconds"].as_f64().is_some_and(|c| c >= 1.5),
        "{body}"
    );
}

/// How the runtime exited, which it must within 10 s (else `why`).
async fn exit_within_10s(rt: &mut Runtime, why: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = rt.child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_failed_warm_up_stops_the_instance_with_the_reason() {
    let s = setup();
    let scratch = s.dir.path().join("scratch").to_string_lossy().into_owned();
    let env = vec![
        ("VFLOW_COMMAND".to_string(), command(&[])),
        ("VFLOW_WARMUP_COMMAND".to_string(), command(&["--warmup"])),
        ("VFLOW_TESTFN_WARMUP_FAIL".to_string(), "1".to_string()),
    ];
    let mut rt = Runtime::start(s.dir.path(), &["--scratch-dir", &scratch], &env);
    let exit = exit_within_10s(&mut rt, "a failed warm-up left the instance running").await;
    assert!(!exit.success());
    assert!(
        rt.logs().contains("model weights not found"),
        "{}",
        rt.logs()
    );
}

#[tokio::test]
async fn a_timeout_kills_the_function_and_answers_504() {
    let s = setup();
    let rt = s.runtime(&[]);
    rt.wait_ready(&s.client).await;
    let started = Instant::now();
    let (status, _, body) = invoke(
        &s.client,
        &rt.url,
        json!({"run": "r", "stage": "s", "outputPrefix": "s3://videos/t/", "timeoutSeconds": 0.5,
               "params": {"mode": "sleep", "seconds": 30}}),
    )
    .await;
    assert_eq!(status, 504, "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(body["error"]["exit"]["kind"], "timedOut");
    assert!(s.keys("t/").await.is_empty());
}

#[tokio::test]
async fn a_full_scratch_disk_fails_the_download_and_is_cleaned_up() {
    let s = setup();
    let scratch = s.dir.path().join("tiny-scratch");
    std::fs::create_dir_all(&scratch).expect("mkdir");
    // A 2 MiB tmpfs: needs root (CI and the dev machine run as root).
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&scratch)
        .status()
        .expect("run mount");
    assert!(
        mounted.success(),
        "mounting a 2 MiB tmpfs failed: this test needs root"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(scratch.clone());

    s.put("in/big.bin", &vec![7u8; 4 << 20]).await;
    s.put("in/small.bin", b"small").await;
    let scratch_arg = scratch.to_string_lossy().into_owned();
    let mut env = s.s3.env();
    env.push(("VFLOW_COMMAND".into(), command(&[])));
    let rt = Runtime::start(s.dir.path(), &["--scratch-dir", &scratch_arg], &env);
    rt.wait_ready(&s.client).await;
    let (status, _, body) = invoke(
        &s.client,
        &rt.url,
        json!({"run": "r", "stage": "s", "inputs": ["s3://videos/in/big.bin"],
               "outputPrefix": "s3://videos/full/", "params": {"mode": "copy"}}),
    )
    .await;
    // Refused before a byte is written (the filesystem has 2 MiB, the input is 4),
    // naming the input; another instance may have room, so it may be retried.
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["phase"], "download");
    assert_eq!(body["error"]["input"], "s3://videos/in/big.bin");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("s3://videos/in/big.bin (4.0 MiB) does not fit in the scratch disk"),
        "{body}"
    );
    assert_eq!(std::fs::read_dir(&scratch).expect("scratch").count(), 0);
    assert!(s.keys("full/").await.is_empty());
    // The space is given back: the next invocation fits.
    let (status, _, body) = invoke(
        &s.client,
        &rt.url,
        json!({"run": "r", "stage": "s", "inputs": ["s3://videos/in/small.bin"],
               "outputPrefix": "s3://videos/fits/", "params": {"mode": "copy"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

// Issue 17 item 5: in a pod the scratch emptyDir's sizeLimit is enforced by eviction,
// so the runtime is told the limit and refuses what cannot fit, before downloading.
#[tokio::test]
async fn an_input_larger_than_the_scratch_limit_is_refused_before_downloading() {
    let s = setup();
    s.put("in/big.bin", &vec![7u8; 3 << 20]).await;
    s.put("in/small.bin", b"small").await;
    // A dead runtime's leftovers (pid_max is at most 2^22: no such process).
    let leftover = s.dir.path().join("scratch/inv-4194305-0/in");
    std::fs::create_dir_all(&leftover).expect("mkdir");
    std::fs::write(leftover.join("orphan.bin"), vec![1u8; 1 << 20]).expect("write");
    let rt = s.runtime(&["--scratch-limit", "2Mi"]);
    rt.wait_ready(&s.client).await;
    assert!(
        !s.dir.path().join("scratch/inv-4194305-0").exists(),
        "the dead runtime's scratch is removed at start"
    );
    let (status, _, body) = invoke(
        &s.client,
        &rt.url,
        json!({"run": "r", "stage": "s", "inputs": ["s3://videos/in/small.bin", "s3://videos/in/big.bin"],
               "outputPrefix": "s3://videos/big/", "params": {"mode": "copy"}}),
    )
    .await;
    // No instance of this size can take it: not retryable, and the message says what to change.
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["phase"], "download");
    assert_eq!(body["error"]["retryable"], false);
    assert_eq!(body["error"]["input"], "s3://videos/in/big.bin");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("inputs s3://videos/in/big.bin and 1 more (3.0 MiB) is larger")
            && message.contains("resources.scratch"),
        "{body}"
    );
    assert_eq!(
        std::fs::read_dir(s.dir.path().join("scratch"))
            .expect("scratch")
            .count(),
        0,
        "nothing was downloaded"
    );
    let (status, _, body) = invoke(
        &s.client,
        &rt.url,
        json!({"run": "r", "stage": "s", "inputs": ["s3://videos/in/small.bin"],
               "outputPrefix": "s3://videos/small/", "params": {"mode": "copy"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

// Issue 17 item 7: the runtime had 64 blocking threads, one held by each running
// function, while its concurrency may be 1000: invocations past the 64th waited for a
// thread. Functions are now supervised without a thread each and the blocking pool is
// a fixed 32: 100 at once on an instance set to 100 all run at once.
#[tokio::test]
async fn a_hundred_invocations_on_an_instance_set_to_a_hundred_all_run_at_once() {
    let s = setup();
    let log = s.dir.path().join("overlap.log");
    let scratch = s.dir.path().join("scratch").to_string_lossy().into_owned();
    // sh, not python: a hundred processes start in milliseconds. It notes its start,
    // sleeps 4 s, notes its end ($1 is the output folder; the runtime appends argv).
    let script = r#"echo "start $(date +%s.%N)" >> "$VFLOW_TEST_OVERLAP_LOG"; sleep 4; echo "end $(date +%s.%N)" >> "$VFLOW_TEST_OVERLAP_LOG""#;
    let mut env = s.s3.env();
    env.push((
        "VFLOW_COMMAND".into(),
        serde_json::to_string(&["/bin/sh", "-c", script, "sh"]).expect("json"),
    ));
    env.push((
        "VFLOW_TEST_OVERLAP_LOG".into(),
        log.to_string_lossy().into_owned(),
    ));
    let rt = Runtime::start(
        s.dir.path(),
        &[
            "--scratch-dir",
            &scratch,
            "--function",
            "sleepy",
            "--concurrency",
            "100",
        ],
        &env,
    );
    rt.wait_ready(&s.client).await;
    let calls = (0..100).map(|i| {
        let client = s.client.clone();
        let url = rt.url.clone();
        async move {
            invoke(
                &client,
                &url,
                json!({"run": "r", "stage": "s", "segment": i, "inputs": [],
                       "outputPrefix": format!("s3://videos/overlap/{i}/"), "params": {}}),
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    for (status, _, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    let text = std::fs::read_to_string(&log).expect("log");
    let times = |what: &str| -> Vec<f64> {
        text.lines()
            .filter_map(|l| l.strip_prefix(what))
            .filter_map(|t| t.trim().parse::<f64>().ok())
            .collect()
    };
    let (starts, ends) = (times("start "), times("end "));
    assert_eq!((starts.len(), ends.len()), (100, 100), "{text}");
    let last_start = starts.iter().cloned().fold(f64::MIN, f64::max);
    let first_end = ends.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        last_start < first_end,
        "the last function started {:.2} s after the first one ended: they did not all run at once",
        last_start - first_end
    );
}

// Issue 17 item 3: a resumed run engine sends a unit again when the caller of its first
// attempt went away; the runtime finishes that attempt all the same, and both ran the
// function and wrote the same keys. The same work now joins the one running.
#[tokio::test]
async fn the_same_work_sent_again_while_it_runs_joins_it_instead_of_running_twice() {
    let s = setup();
    s.put("in/a.bin", b"a").await;
    // One slot: the resend must not need one (the first attempt holds it).
    let rt = s.runtime(&["--concurrency", "1"]);
    rt.wait_ready(&s.client).await;
    let body = json!({"run": "r", "stage": "s", "inputs": ["s3://videos/in/a.bin"],
                      "outputPrefix": "s3://videos/joined/", "params": {"mode": "sleep", "seconds": 2}});
    // The first caller hangs up after half a second (an engine that was stopped).
    let hung_up = s
        .client
        .post(format!("{}/invoke", rt.url))
        .json(&body)
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(hung_up.is_err(), "the first caller was meant to give up");
    let (status, _, answer) = invoke(&s.client, &rt.url, body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"][0]["uri"], "s3://videos/joined/slept.txt");
    let seen = observations(&s, &rt.url).await;
    assert_eq!(seen["invocations"], 1, "the function ran once: {seen}");
    let metrics = s
        .client
        .get(format!("{}/metrics", rt.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("vflow_runtime_joined_total{function=\"testfn\"} 1"),
        "{metrics}"
    );
    // Other work is not joined: a different param runs on its own (the slot is free now).
    let other = json!({"run": "r", "stage": "s", "inputs": ["s3://videos/in/a.bin"],
                       "outputPrefix": "s3://videos/joined/", "params": {"mode": "sleep", "seconds": 0.1}});
    let (status, _, answer) = invoke(&s.client, &rt.url, other).await;
    assert_eq!(status, 200, "{answer}");
}

/// The runtime's `/observations`.
async fn observations(s: &Setup, url: &str) -> serde_json::Value {
    s.client
        .get(format!("{url}/observations"))
        .send()
        .await
        .expect("observations")
        .json()
        .await
        .expect("json")
}

/// SHA-256 of an object in the test bucket, as hex.
async fn sha256_of(s: &Setup, key: &str) -> Option<String> {
    use sha2::Digest;
    let bytes = s
        .store
        .get_bytes(&loc(&format!("s3://videos/{key}")))
        .await
        .expect("get")?;
    Some(hex::encode(sha2::Sha256::digest(&bytes)))
}

// Issue 17 item 3: two attempts at one piece of work on two instances (an engine that
// restarted sent it again elsewhere). The second one's upload fails halfway: before
// attempts were kept apart it had overwritten a.bin, then removed it on failure,
// destroying what the first attempt had committed.
#[tokio::test]
async fn a_second_attempt_cannot_destroy_or_mix_into_what_the_first_committed() {
    let s = setup();
    s.put("in/a.bin", b"a").await;
    let first = s.runtime(&[]);
    let proxy = fault_proxy(&s.s3.endpoint, |method, path| {
        method == "PUT" && path.contains("/twice/") && path.ends_with("/b.bin")
    })
    .await;
    let second = s.runtime_via(&proxy, &[]);
    first.wait_ready(&s.client).await;
    second.wait_ready(&s.client).await;
    let work = |prefix: &str| {
        json!({"run": "r", "stage": "s", "inputs": ["s3://videos/in/a.bin"],
               "outputPrefix": format!("s3://videos/{prefix}/"),
               "params": {"mode": "pair", "seconds": 2}})
    };

    for (prefix, second_fails) in [("twice", true), ("again", false)] {
        // Attempt A, slow; attempt B of the same work a second later, on the other
        // instance: A commits first.
        let a = {
            let client = s.client.clone();
            let url = first.url.clone();
            let body = work(prefix);
            tokio::spawn(async move { invoke(&client, &url, body).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (b_status, _, b_answer) = invoke(&s.client, &second.url, work(prefix)).await;
        let (a_status, _, a_answer) = a.await.expect("attempt A");
        assert_eq!(a_status, 200, "{prefix}: {a_answer}");
        // What A committed is what is there, whole: B neither removed nor replaced it.
        for (i, name) in ["a.bin", "b.bin"].iter().enumerate() {
            assert_eq!(
                a_answer["outputs"][i]["uri"],
                format!("s3://videos/{prefix}/{name}")
            );
            let there = sha256_of(&s, &format!("{prefix}/{name}")).await;
            assert_eq!(
                there.as_deref(),
                a_answer["outputs"][i]["sha256"].as_str(),
                "{prefix}/{name} is attempt A's"
            );
        }
        if second_fails {
            assert_eq!(b_status, 503, "B's upload failed: {b_answer}");
            assert_eq!(b_answer["error"]["phase"], "upload", "{b_answer}");
            assert_eq!(b_answer["error"]["retryable"], true, "{b_answer}");
            // B's retry finds A's record: A's outcome, nothing run again.
            let (status, _, again) = invoke(&s.client, &second.url, work(prefix)).await;
            assert_eq!(status, 200, "{again}");
            assert_eq!(again["outputs"], a_answer["outputs"]);
        } else {
            // B finished second: the work completes once, with A's outcome.
            assert_eq!(b_status, 200, "{b_answer}");
            assert_eq!(
                b_answer["outputs"], a_answer["outputs"],
                "B answers with A's outcome"
            );
        }
        let left: Vec<String> = s
            .keys(&format!("{prefix}/"))
            .await
            .into_iter()
            .filter(|k| k.contains("_vflow-attempt-"))
            .collect();
        assert!(
            left.is_empty(),
            "attempts' own objects are removed: {left:?}"
        );
        let record = s
            .store
            .get_bytes(&loc(&format!("s3://videos/{prefix}/_vflow-complete.json")))
            .await
            .expect("get")
            .expect("the completion record");
        let record: serde_json::Value = serde_json::from_slice(&record).expect("json");
        assert_eq!(record["response"]["outputs"], a_answer["outputs"]);
    }
}

// The chosen attempt stopped after its completion record and before copying its
// outputs to their names: the next request for the work finishes that, runs nothing.
#[tokio::test]
async fn an_attempt_cut_off_after_its_record_is_finished_by_the_next_request() {
    let s = setup();
    s.put("in/a.bin", b"a").await;
    let rt = s.runtime(&[]);
    rt.wait_ready(&s.client).await;
    let work = json!({"run": "r", "stage": "s", "inputs": ["s3://videos/in/a.bin"],
                      "outputPrefix": "s3://videos/cut/", "params": {"mode": "pair", "seconds": 0}});
    let staged = "cut/_vflow-attempt-0123456789abcdef/a.bin";
    s.put(staged, b"what the attempt made").await;
    let record = json!({
        "request": work,
        "attempt": "0123456789abcdef",
        "response": {
            "outputs": [{"uri": "s3://videos/cut/a.bin", "bytes": 21, "sha256": "x"}],
            "metadata": {}, "bytesIn": 1, "bytesOut": 21, "wallSeconds": 1.0,
            "downloadSeconds": 0.0, "functionSeconds": 1.0, "uploadSeconds": 0.0,
            "cpuSeconds": 0.1, "peakRssBytes": 1, "cold": false,
            "exit": {"kind": "code", "code": 0}, "instance": "gone", "concurrency": 1
        }
    });
    s.store
        .put_bytes(
            &loc("s3://videos/cut/_vflow-complete.json"),
            serde_json::to_vec(&record).expect("json"),
        )
        .await
        .expect("put the record");
    let (status, _, answer) = invoke(&s.client, &rt.url, work).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["instance"], "gone", "the recorded outcome: {answer}");
    let there = s
        .store
        .get_bytes(&loc("s3://videos/cut/a.bin"))
        .await
        .expect("get");
    assert_eq!(there.as_deref(), Some(&b"what the attempt made"[..]));
    assert_eq!(s.keys("cut/_vflow-attempt-").await, Vec::<String>::new());
    let seen = observations(&s, &rt.url).await;
    assert_eq!(seen["invocations"], 0, "nothing ran: {seen}");
}

// Issue 17 item 6: the function ran with the runtime's whole environment, S3
// credentials included.
#[tokio::test]
async fn the_function_gets_a_clean_environment() {
    let s = setup();
    s.put("in/a.bin", b"a").await;
    let scratch = s.dir.path().join("scratch").to_string_lossy().into_owned();
    let mut env = s.s3.env();
    assert!(
        env.iter().any(|(k, _)| k == "AWS_SECRET_ACCESS_KEY"),
        "the runtime has credentials"
    );
    env.push(("VFLOW_COMMAND".into(), command(&[])));
    env.push(("VFLOW_FFMPEG_THREADS".into(), "2".into()));
    env.push(("DATABASE_PASSWORD".into(), "hunter2".into()));
    let rt = Runtime::start(
        s.dir.path(),
        &["--scratch-dir", &scratch, "--function", "testfn"],
        &env,
    );
    rt.wait_ready(&s.client).await;
    let (status, _, body) = invoke(
        &s.client,
        &rt.url,
        json!({"run": "r1", "stage": "st", "inputs": ["s3://videos/in/a.bin"],
               "outputPrefix": "s3://videos/env/", "params": {"mode": "env"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = s
        .store
        .get_bytes(&loc("s3://videos/env/env.json"))
        .await
        .expect("get")
        .expect("env.json");
    let seen: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&seen).expect("json");
    for hidden in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "VFLOW_COMMAND",
        "VFLOW_SCRATCH_DIR",
        "DATABASE_PASSWORD",
    ] {
        assert!(!seen.contains_key(hidden), "{hidden} reached the function");
    }
    assert!(!seen.keys().any(|k| k.starts_with("VFLOW_S3_")), "{seen:?}");
    assert_eq!(
        seen.get("VFLOW_FFMPEG_THREADS").map(String::as_str),
        Some("2")
    );
    assert_eq!(seen.get("VFLOW_RUN").map(String::as_str), Some("r1"));
    assert_eq!(seen.get("VFLOW_STAGE").map(String::as_str), Some("st"));
    assert!(seen.contains_key("PATH"));
}

// Issue 19 item 6: ffmpeg sized its threads by the node's CPUs, not the pod's limit.
#[tokio::test]
async fn each_function_gets_threads_from_the_cpu_limit_over_the_slots() {
    let s = setup();
    s.put("in/a.bin", b"a").await;
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    // (cpu.max, --concurrency) -> the VFLOW_FFMPEG_THREADS the function sees
    let cases = [
        ("100000 100000", 1, 1),
        ("max 100000", 1, available),
        ("max 100000", 2, (available / 2).max(1)),
        ("400000 100000", 1, available.min(4)),
    ];
    for (i, (cpu_max, slots, want)) in cases.into_iter().enumerate() {
        let cgroup = s.dir.path().join(format!("cgroup-{i}"));
        std::fs::create_dir_all(&cgroup).expect("mkdir");
        std::fs::write(cgroup.join("cpu.max"), cpu_max).expect("write cpu.max");
        let scratch = s.dir.path().join(format!("scratch-{i}"));
        let mut env = s.s3.env();
        env.push(("VFLOW_COMMAND".into(), command(&[])));
        let rt = Runtime::start(
            s.dir.path(),
            &[
                "--scratch-dir",
                &scratch.to_string_lossy(),
                "--cgroup-root",
                &cgroup.to_string_lossy(),
                "--concurrency",
                &slots.to_string(),
            ],
            &env,
        );
        rt.wait_ready(&s.client).await;
        let prefix = format!("s3://videos/threads-{i}/");
        let (status, _, body) = invoke(
            &s.client,
            &rt.url,
            json!({"run": "r1", "stage": "st", "inputs": ["s3://videos/in/a.bin"],
                   "outputPrefix": prefix, "params": {"mode": "env"}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let seen = s
            .store
            .get_bytes(&loc(&format!("{prefix}env.json")))
            .await
            .expect("get")
            .expect("env.json");
        let seen: std::collections::BTreeMap<String, String> =
            serde_json::from_slice(&seen).expect("json");
        assert_eq!(
            seen.get("VFLOW_FFMPEG_THREADS").map(String::as_str),
            Some(want.to_string().as_str()),
            "cpu.max {cpu_max:?}, {slots} slots, {available} CPUs"
        );
    }
}

// Issue 17: any caller could make a pod's runtime read the pod's files.
#[tokio::test]
async fn local_directories_work_only_for_the_local_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("clip.bin");
    std::fs::write(&input, b"local bytes").expect("write");
    let scratch = dir.path().join("scratch").to_string_lossy().into_owned();
    let env = vec![("VFLOW_COMMAND".to_string(), command(&[]))];
    let client = reqwest::Client::new();
    let out = dir.path().join("out");
    let request = json!({"run": "r", "stage": "s", "inputs": [input.to_string_lossy()],
        "outputPrefix": format!("file://{}/", out.display()), "params": {"mode": "copy"}});
    // As in a pod: refused, naming the path, and nothing is read or written.
    let pod = Runtime::start(dir.path(), &["--scratch-dir", &scratch], &env);
    pod.wait_ready(&client).await;
    let (status, _, body) = invoke(&client, &pod.url, request.clone()).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains(&*input.to_string_lossy()) && message.contains("local path"),
        "{message}"
    );
    assert!(!out.exists());
    drop(pod);
    // Started for the local backend: the user's own files.
    let local = Runtime::start(
        dir.path(),
        &["--scratch-dir", &scratch, "--allow-local-paths"],
        &env,
    );
    local.wait_ready(&client).await;
    let (status, _, body) = invoke(&client, &local.url, request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        std::fs::read(out.join("000-clip.bin")).expect("output"),
        b"local bytes"
    );
}

// Issue 17: any pod could drive a function pod, on any object its credentials reach.
#[tokio::test]
async fn a_pods_runtime_answers_its_workflows_token_on_its_workflows_objects_only() {
    let s = setup();
    s.put("in/a.mp4", b"frames").await;
    let token = s.dir.path().join("token");
    std::fs::write(&token, "t0ken\n").expect("token");
    let token_arg = token.to_string_lossy().into_owned();
    let rt = s.runtime(&[
        "--bucket",
        "videos",
        "--output-prefix",
        "outputs/wf/",
        "--token-file",
        &token_arg,
    ]);
    rt.wait_ready(&s.client).await;
    let call = |body: serde_json::Value, token: Option<&'static str>| {
        let mut post = s.client.post(format!("{}/invoke", rt.url)).json(&body);
        if let Some(t) = token {
            post = post.bearer_auth(t);
        }
        post.send()
    };
    let good = json!({"run": "r", "stage": "s", "inputs": ["s3://videos/in/a.mp4"],
        "outputPrefix": "s3://videos/outputs/wf/r/s/", "params": {"mode": "copy"}});
    for token in [None, Some("wrong"), Some("t0ke")] {
        let r = call(good.clone(), token).await.expect("post");
        assert_eq!(r.status(), 401, "{token:?}");
    }
    let r = s
        .client
        .post(format!("{}/release", rt.url))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401, "release");
    for (field, value) in [
        ("inputs", json!(["s3://other/in/a.mp4"])),
        ("inputs", json!(["/etc/passwd"])),
        ("outputPrefix", json!("s3://videos/outputs/other-wf/r/")),
        ("outputPrefix", json!("s3://other/outputs/wf/r/")),
    ] {
        let mut bad = good.clone();
        bad[field] = value.clone();
        let r = call(bad, Some("t0ken")).await.expect("post");
        let status = r.status();
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(status, 400, "{field} {value}: {body}");
    }
    assert!(s.keys("outputs/").await.is_empty(), "nothing was written");
    let r = call(good, Some("t0ken")).await.expect("post");
    assert_eq!(r.status(), 200);
    assert!(!s.keys("outputs/wf/r/s/").await.is_empty());
}

#[tokio::test]
async fn a_function_killed_by_someone_else_counts_as_an_oom_kill() {
    let s = setup();
    s.put("in/a.mp4", b"frames").await;
    let rt = s.runtime(&[]);
    rt.wait_ready(&s.client).await;
    let (status, _, body) = invoke(
        &s.client,
        &rt.url,
        json!({"run": "r", "stage": "scale", "inputs": ["s3://videos/in/a.mp4"],
               "outputPrefix": "s3://videos/out/killed/", "params": {"mode": "killed"}}),
    )
    .await;
    // Not worth another attempt: the same input needs the same memory (the OOM is
    // learned, and the next plan raises the stage's memory). The input is named.
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["retryable"], false, "{body}");
    assert_eq!(body["error"]["input"], "s3://videos/in/a.mp4", "{body}");
    assert_eq!(
        body["error"]["exit"],
        json!({"kind": "signal", "signal": 9})
    );
    let metrics = s
        .client
        .get(format!("{}/metrics", rt.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"vflow_runtime_oom_kills_total{function="testfn"} 1"#),
        "{metrics}"
    );
    let observations = observations(&s, &rt.url).await;
    assert_eq!(observations["oomKills"], 1, "{observations}");
}

// In a pod the OOM killer takes the container's largest process: a function's ffmpeg,
// and the function then fails with exit 1. Only the cgroup's count says it was memory.
#[tokio::test]
async fn a_process_under_the_function_killed_by_the_oom_killer_counts_as_an_oom_kill() {
    let s = setup();
    s.put("in/a.mp4", b"frames").await;
    let events = s.dir.path().join("memory.events");
    std::fs::write(&events, "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n").expect("events");
    let events_arg = events.to_string_lossy().into_owned();
    let rt = s.runtime(&["--memory-events", &events_arg]);
    rt.wait_ready(&s.client).await;
    let call = |prefix: &str, params: serde_json::Value| {
        json!({"run": "r", "stage": "scale", "inputs": ["s3://videos/in/a.mp4"],
               "outputPrefix": format!("s3://videos/out/{prefix}/"), "params": params})
    };
    // The child killed and the count unchanged: a crash, not memory.
    let (status, _, body) = invoke(
        &s.client,
        &rt.url,
        call("crashed", json!({"mode": "child-killed"})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].get("oomKilled").is_none(), "{body}");
    assert_eq!(body["error"]["exit"], json!({"kind": "code", "code": 1}));
    // The same, with the kernel counting an OOM kill meanwhile.
    let (status, _, body) = invoke(
        &s.client,
        &rt.url,
        call(
            "oom",
            json!({"mode": "child-killed", "events": events_arg.clone()}),
        ),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let error = &body["error"];
    assert_eq!(error["oomKilled"], true, "{body}");
    assert_eq!(error["retryable"], false, "{body}");
    assert_eq!(error["input"], "s3://videos/in/a.mp4", "{body}");
    let message = error["message"].as_str().unwrap_or("");
    assert!(
        message.contains("OOM killer") && message.contains("s3://videos/in/a.mp4"),
        "{message}"
    );
    let observations = observations(&s, &rt.url).await;
    assert_eq!(observations["oomKills"], 1, "{observations}");
    assert_eq!(observations["failures"], 2, "{observations}");
}

#[tokio::test]
async fn over_its_memory_limit_a_function_is_killed_and_counted_as_an_oom_kill() {
    let s = setup();
    let rt = s.runtime(&["--memory-limit", "64Mi"]);
    rt.wait_ready(&s.client).await;
    let started = Instant::now();
    let (status, _, body) = invoke(
        &s.client,
        &rt.url,
        json!({"run": "r", "stage": "s", "outputPrefix": "s3://videos/hog/",
               "params": {"mode": "memory", "mib": 300, "seconds": 5}}),
    )
    .await;
    // As a pod's OOM kill: SIGKILL, well before its 5 s of holding end, and not
    // worth another attempt.
    assert_eq!(status, 422, "{body}");
    assert!(started.elapsed() < Duration::from_secs(4), "{body}");
    let error = &body["error"];
    assert_eq!(error["phase"], "function");
    assert_eq!(error["retryable"], false, "{body}");
    assert_eq!(error["exit"], json!({"kind": "signal", "signal": 9}));
    let message = error["message"].as_str().unwrap_or("");
    assert!(message.contains("SIGKILL"), "{message}");
    assert!(
        message.contains("over the memory limit of 64 MiB"),
        "{message}"
    );
    assert!(s.keys("hog/").await.is_empty());
    let observations = observations(&s, &rt.url).await;
    assert_eq!(observations["oomKills"], 1, "{observations}");
    assert_eq!(observations["failures"], 1, "{observations}");

    // Within the limit the same instance serves normally.
    let (status, _, body) = invoke(
        &s.client,
        &rt.url,
        json!({"run": "r", "stage": "s", "outputPrefix": "s3://videos/small/",
               "params": {"mode": "memory", "mib": 8, "seconds": 0.1}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn the_memory_limit_applies_to_the_warm_up_too() {
    let s = setup();
    let scratch = s.dir.path().join("scratch").to_string_lossy().into_owned();
    let env = vec![
        ("VFLOW_COMMAND".to_string(), command(&[])),
        ("VFLOW_WARMUP_COMMAND".to_string(), command(&["--warmup"])),
        ("VFLOW_MEMORY_LIMIT".to_string(), "64Mi".to_string()),
        ("VFLOW_TESTFN_WARMUP_MIB".to_string(), "300".to_string()),
        ("VFLOW_TESTFN_WARMUP_SECONDS".to_string(), "5".to_string()),
    ];
    let mut rt = Runtime::start(s.dir.path(), &["--scratch-dir", &scratch], &env);
    let deadline = Instant::now() + Duration::from_secs(4);
    let exit = loop {
        if let Some(status) = rt.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "a warm-up over the memory limit was not stopped: {}",
            rt.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!exit.success());
    assert!(
        rt.logs().contains("over the memory limit of 64 MiB"),
        "{}",
        rt.logs()
    );
}

#[test]
fn a_bad_memory_limit_stops_the_runtime_naming_the_flag() {
    // By flag and by env var: the error names the flag and the value.
    for (args, env) in [
        (vec!["--memory-limit", "512M"], None),
        (vec![], Some("512M")),
        (vec!["--memory-limit", "0"], None),
    ] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_vflow-runtime"));
        command
            .arg("serve")
            .args(&args)
            .args(["--", "true"])
            .env_remove("VFLOW_MEMORY_LIMIT");
        if let Some(value) = env {
            command.env("VFLOW_MEMORY_LIMIT", value);
        }
        let output = command.output().expect("run vflow-runtime");
        assert!(!output.status.success(), "{args:?} {env:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let value = args.get(1).copied().or(env).unwrap_or("");
        assert!(
            stderr.contains("--memory-limit") && stderr.contains(&format!("{value:?}")),
            "{args:?} {env:?}: {stderr}"
        );
    }
}

/// A fused chain: the first runtime runs its function, hands the outputs to the next
/// runtime (`--next`) on the shared scratch volume, and only the last step uploads.
#[tokio::test]
async fn a_fused_chain_hands_outputs_on_locally_and_only_the_last_step_uploads() {
    let s = setup();
    s.put("in/a.bin", b"first input").await;
    s.put("in/b.bin", b"second").await;
    let tail = s.runtime(&["--instance", "tail"]);
    let head = s.runtime(&["--instance", "head", "--next", tail.url.as_str()]);
    head.wait_ready(&s.client).await;
    tail.wait_ready(&s.client).await;

    let body = json!({
        "run": "r1", "stage": "first", "segment": 4,
        "inputs": ["s3://videos/in/a.bin", "s3://videos/in/b.bin"],
        "outputPrefix": "s3://videos/out/r1/first/00004/",
        "params": {"mode": "copy"},
        "then": [{"stage": "second", "outputPrefix": "s3://videos/out/r1/second/00004/",
                  "params": {"mode": "copy", "text": "two"}, "timeoutSeconds": 30}]
    });
    let (status, _, answer) = invoke(&s.client, &head.url, body).await;
    assert_eq!(status, 200, "{answer}\n{}\n{}", head.logs(), tail.logs());
    assert_eq!(
        answer["outputs"],
        json!([]),
        "the first step uploads nothing"
    );
    assert_eq!(answer["instance"], "head");
    assert_eq!(answer["bytesOut"], 17, "what it handed on");
    let chained = answer["chained"].as_array().expect("chained");
    assert_eq!(chained.len(), 1);
    assert_eq!(chained[0]["instance"], "tail");
    assert_eq!(chained[0]["metadata"]["text"], "two");
    assert_eq!(chained[0]["bytesIn"], 17);
    let uris: Vec<&str> = chained[0]["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .filter_map(|o| o["uri"].as_str())
        .collect();
    assert_eq!(
        uris,
        [
            "s3://videos/out/r1/second/00004/000-000-a.bin",
            "s3://videos/out/r1/second/00004/001-001-b.bin"
        ]
    );
    // The store holds the last step's outputs and two completion records; the first
    // step's record is the whole chain's.
    assert_eq!(
        s.keys("out/r1/first/").await,
        ["s3://videos/out/r1/first/00004/_vflow-complete.json"]
    );
    assert_eq!(s.keys("out/r1/second/").await.len(), 3);
    let record = s
        .store
        .get_bytes(&loc("s3://videos/out/r1/first/00004/_vflow-complete.json"))
        .await
        .expect("get")
        .expect("the chain's completion record");
    let record: serde_json::Value = serde_json::from_slice(&record).expect("json");
    assert_eq!(record["request"]["then"][0]["stage"], "second");
    assert_eq!(
        record["response"]["chained"][0]["outputs"],
        chained[0]["outputs"]
    );
    // Nothing is left on the scratch volume.
    let left: Vec<_> = std::fs::read_dir(s.dir.path().join("scratch"))
        .expect("scratch")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "scratch keeps {left:?}");

    // A failing later step fails the chain, names the step and leaves no outputs.
    let failing = json!({
        "run": "r2", "stage": "first", "inputs": ["s3://videos/in/a.bin"],
        "outputPrefix": "s3://videos/out/r2/first/all/", "params": {"mode": "copy"},
        "then": [{"stage": "second", "outputPrefix": "s3://videos/out/r2/second/all/",
                  "params": {"mode": "fail"}}]
    });
    let (status, _, answer) = invoke(&s.client, &head.url, failing).await;
    assert_eq!(status, 422, "a failed function: {answer}");
    let message = answer["error"]["message"].as_str().unwrap_or("");
    assert!(message.starts_with("fused stage second: "), "{answer}");
    assert_eq!(answer["error"]["phase"], "function");
    assert!(s.keys("out/r2/").await.is_empty());
}

#[tokio::test]
async fn a_chain_sent_to_a_runtime_without_a_next_stage_is_refused() {
    let s = setup();
    s.put("in/a.bin", b"x").await;
    let rt = s.runtime(&[]);
    rt.wait_ready(&s.client).await;
    let body = json!({
        "run": "r1", "stage": "first", "inputs": ["s3://videos/in/a.bin"],
        "outputPrefix": "s3://videos/out/r1/first/all/",
        "then": [{"stage": "second", "outputPrefix": "s3://videos/out/r1/second/all/"}]
    });
    let (status, _, answer) = invoke(&s.client, &rt.url, body).await;
    assert_eq!(status, 400, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("no --next") && message.contains("second"),
        "{message}"
    );
    assert!(s.keys("out/").await.is_empty());
}

/// A pod's containers get SIGTERM together: a runtime fused after another keeps taking
/// the chains that one is finishing, and stops once that one has.
#[tokio::test]
async fn a_fused_runtime_keeps_serving_until_the_one_before_it_has_stopped() {
    let s = setup();
    s.put("in/a.bin", b"payload").await;
    // Each needs the other's address: the head gets a port chosen here.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let head_url = format!("http://127.0.0.1:{port}");
    let mut tail = s.runtime(&["--drain-timeout", "20s", "--after", head_url.as_str()]);
    tail.wait_ready(&s.client).await;
    let port = port.to_string();
    let mut head = s.runtime(&[
        "--drain-timeout",
        "20s",
        "--port",
        port.as_str(),
        "--next",
        tail.url.as_str(),
    ]);
    head.wait_ready(&s.client).await;
    assert_eq!(head.url, head_url);

    // The head is busy for 1.5 s in its own step when both get SIGTERM.
    let client = s.client.clone();
    let url = head.url.clone();
    let chain = tokio::spawn(async move {
        invoke(
            &client,
            &url,
            json!({"run": "r", "stage": "first", "inputs": ["s3://videos/in/a.bin"],
                   "outputPrefix": "s3://videos/fused-drain/first/",
                   "params": {"mode": "sleep", "seconds": 1.5},
                   "then": [{"stage": "second", "outputPrefix": "s3://videos/fused-drain/second/",
                             "params": {"mode": "copy"}}]}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    head.terminate();
    tail.terminate();
    let (status, _, body) = chain.await.expect("join");
    assert_eq!(
        status,
        200,
        "the chain in flight was cut off: {body}\n{}",
        tail.logs()
    );
    assert_eq!(s.keys("fused-drain/second/").await.len(), 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    for rt in [&mut head, &mut tail] {
        let exit = loop {
            if let Some(status) = rt.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "still running: {}", rt.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(exit.success(), "exit {exit}: {}", rt.logs());
    }
}

/// A resident runtime of testfn (its `--resident` loop), `concurrency` slots.
fn resident(s: &Setup, concurrency: &str, extra: &[&str]) -> Runtime {
    let mut args = vec!["--worker", "resident", "--concurrency", concurrency];
    args.extend_from_slice(extra);
    s.runtime(&args)
}

fn load_call(prefix: &str) -> serde_json::Value {
    json!({"run": "r", "stage": "detect", "outputPrefix": format!("s3://videos/{prefix}/"),
           "params": {"mode": "load"}})
}

// Issue 18: a warm instance holds what it loaded. testfn's "model" takes 0.3 s to load
// and says in its metadata how long this invocation spent loading it.
#[tokio::test]
async fn a_resident_function_loads_once_and_serves_every_invocation_from_that_process() {
    let s = setup();
    let per_process = s.runtime(&[]);
    let rt = resident(&s, "1", &[]);
    per_process.wait_ready(&s.client).await;
    rt.wait_ready(&s.client).await;
    let mut pids = Vec::new();
    for i in 0..3 {
        let (status, _, body) = invoke(&s.client, &rt.url, load_call(&format!("res{i}"))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["metadata"]["loadSeconds"], 0.0,
            "loaded by the warm-up: {body}"
        );
        pids.push(body["metadata"]["pid"].clone());
    }
    assert!(
        pids.windows(2).all(|w| w[0] == w[1]),
        "one worker: {pids:?}"
    );
    // The same function a process per invocation pays the load every time.
    for i in 0..2 {
        let (status, _, body) =
            invoke(&s.client, &per_process.url, load_call(&format!("pp{i}"))).await;
        assert_eq!(status, 200, "{body}");
        let load = body["metadata"]["loadSeconds"].as_f64().unwrap_or(0.0);
        assert!(load >= 0.25, "{body}");
    }
}

/// On a fresh one-slot resident runtime: `call` (which must cost its worker), then an
/// invocation that must succeed on another worker. The runtime, `call`'s status, body
/// and time, and the replacement worker's answer.
async fn fails_then_replaced(
    s: &Setup,
    call: serde_json::Value,
) -> (Runtime, u16, serde_json::Value, Duration, serde_json::Value) {
    let rt = resident(s, "1", &[]);
    rt.wait_ready(&s.client).await;
    let (_, _, first) = invoke(&s.client, &rt.url, load_call("before")).await;
    let started = Instant::now();
    let (status, _, body) = invoke(&s.client, &rt.url, call).await;
    let took = started.elapsed();
    let (ok, _, after) = invoke(&s.client, &rt.url, load_call("after")).await;
    assert_eq!(ok, 200, "{after}");
    assert_ne!(
        first["metadata"]["pid"], after["metadata"]["pid"],
        "a new worker"
    );
    (rt, status, body, took, after)
}

#[tokio::test]
async fn a_resident_worker_past_its_timeout_is_killed_and_the_next_invocation_gets_another() {
    let s = setup();
    let (rt, status, body, took, after) = fails_then_replaced(
        &s,
        json!({"run": "r", "stage": "detect", "outputPrefix": "s3://videos/slow/", "timeoutSeconds": 0.5,
               "params": {"mode": "sleep", "seconds": 30}}),
    )
    .await;
    assert_eq!(status, 504, "{body}");
    assert!(took < Duration::from_secs(5), "{body}");
    assert_eq!(body["error"]["exit"]["kind"], "timedOut");
    assert!(s.keys("slow/").await.is_empty());
    let (_, _, again) = invoke(&s.client, &rt.url, load_call("again")).await;
    assert_eq!(again["metadata"]["pid"], after["metadata"]["pid"]);
    assert_eq!(again["metadata"]["loadSeconds"], 0.0, "{again}");
}

#[tokio::test]
async fn a_resident_worker_that_dies_fails_its_invocation_retryably_and_is_replaced() {
    let s = setup();
    let (_rt, status, body, _, _) = fails_then_replaced(
        &s,
        json!({"run": "r", "stage": "detect", "outputPrefix": "s3://videos/died/",
               "params": {"mode": "die"}}),
    )
    .await;
    assert_eq!(status, 503, "may pass elsewhere: {body}");
    let error = &body["error"];
    assert_eq!(error["retryable"], true, "{body}");
    assert!(
        error.get("exit").is_none(),
        "not an answer of the function's: {body}"
    );
    let message = error["message"].as_str().unwrap_or("");
    assert!(
        message.contains("resident worker died") && message.contains("exit status 3"),
        "{message}"
    );
    assert!(s.keys("died/").await.is_empty());
}

#[tokio::test]
async fn a_resident_worker_that_breaks_the_protocol_is_stopped_and_replaced() {
    let s = setup();
    let (_rt, status, body, took, _) = fails_then_replaced(
        &s,
        json!({"run": "r", "stage": "detect", "outputPrefix": "s3://videos/garbled/",
               "params": {"mode": "garble"}}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(took < Duration::from_secs(4), "not left to run: {body}");
    let tail = body["error"]["stderrTail"].as_str().unwrap_or("");
    assert!(
        tail.contains("progress: 50%") && tail.contains("stderr"),
        "{body}"
    );
    assert!(body["error"].get("oomKilled").is_none(), "{body}");
}

// With two slots, two workers: each invocation is measured on its own worker, so two
// spinning at once each show their own CPU, not the sum.
#[tokio::test]
async fn resident_invocations_at_once_are_each_measured_on_their_own_worker() {
    let s = setup();
    let rt = resident(&s, "2", &[]);
    rt.wait_ready(&s.client).await;
    let spin = |prefix: &str, seconds: f64| {
        json!({"run": "r", "stage": "detect", "outputPrefix": format!("s3://videos/{prefix}/"),
               "params": {"mode": "spin", "seconds": seconds}})
    };
    let (a, b) = tokio::join!(
        invoke(&s.client, &rt.url, spin("spin-a", 1.5)),
        invoke(&s.client, &rt.url, spin("spin-b", 0.3)),
    );
    assert_eq!(a.0, 200, "{}", a.2);
    assert_eq!(b.0, 200, "{}", b.2);
    let cpu = |r: &serde_json::Value| r["cpuSeconds"].as_f64().unwrap_or(-1.0);
    let wall = |r: &serde_json::Value| r["functionSeconds"].as_f64().unwrap_or(-1.0);
    // Each no more CPU than its own wall time (a sum of both would exceed the short
    // one's), and the long one clearly more than the short one.
    for r in [&a.2, &b.2] {
        assert!(cpu(r) > 0.0 && cpu(r) <= wall(r) * 1.2 + 0.05, "{r}");
    }
    assert!(
        cpu(&a.2) > 2.0 * cpu(&b.2),
        "a {} vs b {}",
        cpu(&a.2),
        cpu(&b.2)
    );
    // The spin's 64 MiB block shows in each one's memory, the worker's own included.
    for r in [&a.2, &b.2] {
        let rss = r["peakRssBytes"].as_u64().unwrap_or(0);
        assert!(rss >= 64 << 20, "{r}");
    }
}

#[tokio::test]
async fn a_resident_worker_that_cannot_start_stops_the_instance_saying_why() {
    let s = setup();
    let scratch = s.dir.path().join("scratch").to_string_lossy().into_owned();
    let fails = [
        "python3",
        "-c",
        "import sys; print('no weights in /models', file=sys.stderr); sys.exit(1)",
    ];
    let env = vec![(
        "VFLOW_COMMAND".to_string(),
        serde_json::to_string(&fails).expect("json"),
    )];
    let mut rt = Runtime::start(
        s.dir.path(),
        &["--scratch-dir", &scratch, "--worker", "resident"],
        &env,
    );
    let exit = exit_within_10s(
        &mut rt,
        "a worker that could not start left the instance running",
    )
    .await;
    assert!(!exit.success());
    let logs = rt.logs();
    assert!(
        logs.contains("resident worker did not start") && logs.contains("no weights in /models"),
        "{logs}"
    );
}
