//! The local backend with real `vflow runtime serve` processes: an invocation that
//! arrives while a pre-warm start is under way waits for that instance instead of
//! starting one of its own, and counts only the wait it was left with; a stage keeps
//! its planned minimum warm; an instance is held to its planned memory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use vflow_engine::backend::{Backend, StageTarget};
use vflow_engine::local::{LocalBackend, LocalConfig};
use vflow_runtime::invocation::InvokeRequest;

fn target(dir: &std::path::Path) -> StageTarget {
    // A function that writes one file; instances take a second to warm up, like a
    // container start.
    let script = dir.join("fn.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nwhile [ $# -gt 0 ]; do case $1 in --output-dir) out=$2; shift 2;; *) shift;; esac; done\necho ok > \"$out/done.txt\"\n",
    )
    .expect("script");
    let mut perms = std::fs::metadata(&script).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).expect("chmod");
    StageTarget {
        stage: "s".into(),
        function: "f".into(),
        command: vec![script.to_string_lossy().into_owned()],
        warmup_command: vec!["sleep".into(), "1".into()],
        resident: false,
        concurrency: 1,
        min_instances: 0,
        max_instances: 4,
        timeout_seconds: 30.0,
        memory_limit_bytes: None,
        fused: Vec::new(),
        oom_retry_memory_bytes: None,
        memory_raised: false,
    }
}

fn backend(dir: &std::path::Path) -> std::sync::Arc<LocalBackend> {
    backend_keeping(dir, Duration::from_secs(60))
}

fn backend_keeping(dir: &std::path::Path, keep_alive: Duration) -> std::sync::Arc<LocalBackend> {
    LocalBackend::new(LocalConfig {
        runtime_program: PathBuf::from(env!("CARGO_BIN_EXE_vflow")),
        runtime_args: vec!["runtime".into()],
        work_dir: dir.join("instances"),
        env: Vec::new(),
        keep_alive,
        start_timeout: Duration::from_secs(30),
    })
}

fn request(dir: &std::path::Path, name: &str) -> InvokeRequest {
    let input = dir.join("in.txt");
    std::fs::write(&input, "input").expect("input");
    InvokeRequest {
        run: "r".into(),
        stage: "s".into(),
        segment: None,
        inputs: vec![input.to_string_lossy().into_owned()],
        output_prefix: format!("{}/", dir.join("out").join(name).to_string_lossy()),
        params: BTreeMap::new(),
        timeout_seconds: None,
        then: Vec::new(),
    }
}

#[tokio::test]
async fn an_invocation_waits_for_a_prewarm_under_way_instead_of_starting_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = backend(dir.path());
    let target = target(dir.path());
    let warming = {
        let (backend, target) = (backend.clone(), target.clone());
        tokio::spawn(async move { backend.prewarm(&target, 1).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let invoked = backend
        .invoke(&target, request(dir.path(), "a"))
        .await
        .expect("invocation");
    warming.await.expect("pre-warm task");
    assert_eq!(backend.cold_starts(), 1, "one instance, the pre-warmed one");
    // It arrived 0.3 s into a 1 s warm-up: it waited for the rest of it.
    let waited = invoked.cold_start_seconds.expect("it waited for the start");
    assert!(waited > 0.0, "{waited}");
    // The next one finds the instance warm.
    let again = backend
        .invoke(&target, request(dir.path(), "b"))
        .await
        .expect("invocation");
    assert_eq!(again.cold_start_seconds, None);
    assert_eq!(backend.cold_starts(), 1);
    backend.shutdown().await;
}

#[tokio::test]
async fn time_a_pre_warmed_instance_waits_for_its_first_invocation_is_counted_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = backend(dir.path());
    let target = target(dir.path());
    // Warmed (a 1 s warm-up), then unused for 0.5 s before its invocation.
    backend.prewarm(&target, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    backend
        .invoke(&target, request(dir.path(), "a"))
        .await
        .expect("invocation");
    let idle = backend.idle_before_use_seconds();
    assert!((0.45..1.5).contains(&idle), "{idle}");
    // Later use and the shutdown add nothing: it was used.
    backend
        .invoke(&target, request(dir.path(), "b"))
        .await
        .expect("invocation");
    backend.shutdown().await;
    assert!((backend.idle_before_use_seconds() - idle).abs() < 1e-3);
}

#[tokio::test]
async fn without_a_prewarm_an_invocation_starts_its_own_instance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = backend(dir.path());
    let target = target(dir.path());
    let invoked = backend
        .invoke(&target, request(dir.path(), "a"))
        .await
        .expect("invocation");
    assert_eq!(backend.cold_starts(), 1);
    let waited = invoked.cold_start_seconds.expect("a cold start");
    assert!(waited >= 0.9, "a whole warm-up: {waited}");
    backend.shutdown().await;
}

#[tokio::test]
async fn a_stage_keeps_its_minimum_warm_while_the_others_scale_to_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = backend_keeping(dir.path(), Duration::from_millis(300));
    let mut kept = target(dir.path());
    kept.warmup_command = Vec::new();
    kept.min_instances = 1;
    let mut other = kept.clone();
    other.stage = "t".into();
    other.min_instances = 0;
    backend.prewarm(&kept, 2).await;
    backend.prewarm(&other, 1).await;
    assert_eq!(backend.instances().await.get("s"), Some(&2));
    // Well past the keep-alive (the reaper looks every 0.5 s).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let live = backend.instances().await;
    assert_eq!(live.get("s"), Some(&1), "the minimum stays: {live:?}");
    assert_eq!(
        live.get("t"),
        Some(&0),
        "no minimum: scaled to zero: {live:?}"
    );
    backend.shutdown().await;
}

#[tokio::test]
async fn an_instance_is_held_to_its_planned_memory_and_going_over_is_an_oom_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = backend(dir.path());
    let script = dir.path().join("hog.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nexec python3 -c 'import time; b = bytearray(300 << 20); time.sleep(5)'\n",
    )
    .expect("script");
    let mut perms = std::fs::metadata(&script).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).expect("chmod");
    let mut hog = target(dir.path());
    hog.warmup_command = Vec::new();
    hog.command = vec![script.to_string_lossy().into_owned()];
    hog.memory_limit_bytes = Some(64 << 20);
    let started = std::time::Instant::now();
    let err = backend
        .invoke(&hog, request(dir.path(), "hog"))
        .await
        .expect_err("over its memory");
    let vflow_engine::backend::BackendError::Failed(failure) = &err else {
        panic!("a function failure, not {err:?}")
    };
    assert_eq!(
        failure.exit,
        Some(vflow_runtime::process::Exit::Signal { signal: 9 }),
        "{failure:?}"
    );
    assert!(
        failure.message.contains("memory limit"),
        "{}",
        failure.message
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "killed, not run to its end"
    );
    // The same function with room enough runs to its end.
    hog.memory_limit_bytes = Some(1 << 30);
    hog.stage = "roomy".into();
    let script_ok = dir.path().join("ok.sh");
    std::fs::write(
        &script_ok,
        "#!/bin/sh\nwhile [ $# -gt 0 ]; do case $1 in --output-dir) out=$2; shift 2;; *) shift;; esac; done\npython3 -c 'b = bytearray(100 << 20)'\necho ok > \"$out/done.txt\"\n",
    )
    .expect("script");
    std::fs::set_permissions(&script_ok, perms_exec()).expect("chmod");
    hog.command = vec![script_ok.to_string_lossy().into_owned()];
    backend
        .invoke(&hog, request(dir.path(), "roomy"))
        .await
        .expect("within its memory");
    backend.shutdown().await;
}

fn perms_exec() -> std::fs::Permissions {
    std::os::unix::fs::PermissionsExt::from_mode(0o755)
}

#[tokio::test]
async fn a_stage_released_lets_its_idle_instances_go_down_to_its_minimum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = backend(dir.path());
    let mut t = target(dir.path());
    t.warmup_command = Vec::new();
    backend.prewarm(&t, 3).await;
    assert_eq!(backend.instances().await.get("s"), Some(&3));
    t.min_instances = 1;
    backend.release(&t).await;
    assert_eq!(
        backend.instances().await.get("s"),
        Some(&1),
        "the minimum stays"
    );
    t.min_instances = 0;
    backend.release(&t).await;
    assert_eq!(backend.instances().await.get("s"), Some(&0));
    backend.shutdown().await;
}
