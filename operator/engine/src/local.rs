//! The local backend: stage instances are `vflow-runtime serve` processes on loopback.
//!
//! A stage at zero gets a process on its first invocation, which waits for /readyz (a
//! cold start); instances idle longer than the keep-alive stop, down to the stage's
//! minimum (its warm pool); pre-warm requests start them early. Each instance takes
//! the planned concurrency and is held to the planned memory (the runtime's
//! `--memory-limit`, which kills the function as a pod's OOM killer would).
//! Processes get `VFLOW_EXIT_WITH_PARENT=1`, so none outlives `vflow run`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::{Mutex, Notify, OwnedSemaphorePermit, Semaphore};
use vflow_contract::invocation::{ErrorBody, InvokeRequest, InvokeResponse};

use crate::backend::{Backend, BackendError, Invoked, StageTarget, StartSignal};

#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The runtime: `vflow-runtime`, or `vflow` with `runtime_args = ["runtime"]`.
    pub runtime_program: PathBuf,
    pub runtime_args: Vec<String>,
    /// Scratch directories and instance logs go here.
    pub work_dir: PathBuf,
    /// Extra environment for every instance (S3 settings, VFLOW_FFMPEG_THREADS, ...).
    pub env: Vec<(String, String)>,
    pub keep_alive: Duration,
    /// How long an instance may take to become ready.
    pub start_timeout: Duration,
}

/// What starts one runtime of an instance.
struct RuntimeSpec<'a> {
    stage: &'a str,
    function: &'a str,
    command: &'a [String],
    warmup_command: &'a [String],
    resident: bool,
    timeout_seconds: f64,
    memory_limit_bytes: Option<u64>,
}

/// A runtime process that listens (it may still be warming up).
struct Started {
    child: Child,
    url: String,
    log: PathBuf,
    stage: String,
}

async fn kill_all(started: Vec<Started>) {
    for mut s in started {
        let _ = s.child.kill().await;
    }
}

struct Instance {
    id: u64,
    /// The stage's runtime, and those of the stages fused after it.
    children: Mutex<Vec<Child>>,
    url: String,
    slots: Arc<Semaphore>,
    concurrency: u32,
    last_used: std::sync::Mutex<Instant>,
    /// When it became ready, until its first invocation (then None).
    unused_since: std::sync::Mutex<Option<Instant>>,
}

impl Instance {
    /// Seconds it was ready and unused before its first invocation (or before it
    /// stopped, never used); counted once.
    fn take_idle_before_use(&self) -> f64 {
        self.unused_since
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0)
    }

    fn idle_for(&self) -> Duration {
        if self.slots.available_permits() < self.concurrency as usize {
            return Duration::ZERO;
        }
        self.last_used
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or(Duration::ZERO)
    }
}

#[derive(Default)]
struct Pool {
    instances: Mutex<Vec<Arc<Instance>>>,
    starting: AtomicU32,
    /// Pre-warm starts in progress that no invocation has claimed yet: an invocation
    /// that finds one waits for it instead of starting an instance of its own.
    unclaimed_prewarms: AtomicU32,
    /// Instances kept however long they idle (the stage's minimum).
    min_instances: AtomicU32,
    freed: Notify,
}

pub struct LocalBackend {
    config: LocalConfig,
    pools: std::sync::Mutex<HashMap<String, Arc<Pool>>>,
    client: reqwest::Client,
    next_id: AtomicU64,
    cold_starts: AtomicU64,
    /// Instance-seconds ready but unused before a first invocation (microseconds).
    idle_before_use_us: AtomicU64,
}

fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

impl LocalBackend {
    pub fn new(config: LocalConfig) -> Arc<Self> {
        let backend = Arc::new(Self {
            config,
            pools: std::sync::Mutex::new(HashMap::new()),
            client: reqwest::Client::new(),
            next_id: AtomicU64::new(0),
            cold_starts: AtomicU64::new(0),
            idle_before_use_us: AtomicU64::new(0),
        });
        // Stop instances idle past the keep-alive (scale to zero).
        let weak = Arc::downgrade(&backend);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Some(backend) = weak.upgrade() else {
                    return;
                };
                backend.reap_idle().await;
            }
        });
        backend
    }

    /// Instances started so far (each one a cold start).
    pub fn cold_starts(&self) -> u64 {
        self.cold_starts.load(Ordering::Relaxed)
    }

    /// Instance-seconds that instances were ready but unused before their first
    /// invocation, or before they stopped unused (what pre-warming too early costs).
    pub fn idle_before_use_seconds(&self) -> f64 {
        self.idle_before_use_us.load(Ordering::Relaxed) as f64 / 1e6
    }

    fn count_idle(&self, instance: &Instance) {
        let idle = instance.take_idle_before_use();
        self.idle_before_use_us
            .fetch_add((idle * 1e6) as u64, Ordering::Relaxed);
    }

    /// Live instances per stage.
    pub async fn instances(&self) -> HashMap<String, usize> {
        let pools: Vec<(String, Arc<Pool>)> = self
            .pools
            .lock()
            .map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let mut counts = HashMap::new();
        for (stage, pool) in pools {
            counts.insert(stage, pool.instances.lock().await.len());
        }
        counts
    }

    fn pool(&self, target: &StageTarget) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.entry(pool_key(target)).or_default().clone()
    }

    /// The stage's pool, with the target's minimum remembered for the reaper.
    fn pool_for(&self, target: &StageTarget) -> Arc<Pool> {
        let pool = self.pool(target);
        pool.min_instances
            .store(target.min_instances, Ordering::SeqCst);
        pool
    }

    async fn reap_idle(&self) {
        let pools: Vec<Arc<Pool>> = self
            .pools
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default();
        for pool in pools {
            let mut instances = pool.instances.lock().await;
            // The most recently used are the ones kept for the minimum.
            instances.sort_by_key(|i| i.idle_for());
            let min = pool.min_instances.load(Ordering::SeqCst) as usize;
            let mut kept = Vec::new();
            for instance in instances.drain(..) {
                if kept.len() >= min && instance.idle_for() > self.config.keep_alive {
                    tracing::debug!(instance = instance.id, "stopping an idle instance");
                    self.count_idle(&instance);
                    stop(&instance).await;
                } else {
                    kept.push(instance);
                }
            }
            *instances = kept;
        }
    }

    /// One instance: a runtime for the stage, and for a fused chain one more per fused
    /// stage, started last to first so each knows the next one's address (`--next`);
    /// they share the instance's scratch directory, as a pod's containers share theirs.
    async fn start_instance(&self, target: &StageTarget) -> Result<Arc<Instance>, BackendError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let dir = self.config.work_dir.join(format!("{}-{id}", target.stage));
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| BackendError::Unavailable(format!("{}: {e}", dir.display())))?;
        let head = RuntimeSpec {
            stage: &target.stage,
            function: &target.function,
            command: &target.command,
            warmup_command: &target.warmup_command,
            resident: target.resident,
            timeout_seconds: target.timeout_seconds,
            memory_limit_bytes: target.memory_limit_bytes,
        };
        let members = target.fused.iter().map(|m| RuntimeSpec {
            stage: &m.stage,
            function: &m.function,
            command: &m.command,
            warmup_command: &m.warmup_command,
            resident: m.resident,
            timeout_seconds: m.timeout_seconds,
            memory_limit_bytes: m.memory_limit_bytes,
        });
        let chain: Vec<RuntimeSpec<'_>> = std::iter::once(head).chain(members).collect();
        self.cold_starts.fetch_add(1, Ordering::Relaxed);
        // Each runtime needs the next one's port, which it has as soon as it listens
        // (before its warm-up): start them last to first, then wait for all to be ready
        // together, so a chain starts in about the time of its slowest runtime.
        let deadline = Instant::now() + self.config.start_timeout;
        let mut started: Vec<Started> = Vec::new();
        let mut next: Option<String> = None;
        for (k, spec) in chain.iter().enumerate().rev() {
            let name = if k == 0 {
                format!("{}-{id}", target.stage)
            } else {
                format!("{}-{id}-fused-{k}", target.stage)
            };
            let result = self
                .spawn_runtime(
                    &dir,
                    &name,
                    spec,
                    target.concurrency,
                    next.as_deref(),
                    deadline,
                )
                .await;
            match result {
                Ok(s) => {
                    next = Some(s.url.clone());
                    started.push(s);
                }
                Err(e) => {
                    kill_all(started).await;
                    return Err(e);
                }
            }
        }
        // One after the other: they warm up at the same time, so this takes as long as
        // the slowest.
        for i in 0..started.len() {
            if let Err(e) = self.wait_ready(&mut started[i], deadline).await {
                kill_all(started).await;
                return Err(e);
            }
        }
        let children = started.into_iter().map(|s| s.child).collect();
        Ok(Arc::new(Instance {
            id,
            children: Mutex::new(children),
            url: next.unwrap_or_default(),
            slots: Arc::new(Semaphore::new(target.concurrency.max(1) as usize)),
            concurrency: target.concurrency.max(1),
            last_used: std::sync::Mutex::new(Instant::now()),
            unused_since: std::sync::Mutex::new(Some(Instant::now())),
        }))
    }

    /// Starts one `vflow-runtime serve` and waits until it listens (not until ready).
    async fn spawn_runtime(
        &self,
        dir: &std::path::Path,
        name: &str,
        spec: &RuntimeSpec<'_>,
        concurrency: u32,
        next: Option<&str>,
        deadline: Instant,
    ) -> Result<Started, BackendError> {
        let port_file = dir.join(format!("{name}.port"));
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log)
            .map_err(|e| BackendError::Unavailable(format!("{}: {e}", log.display())))?;
        let command = serde_json::to_string(spec.command).unwrap_or_default();
        let mut cmd = Command::new(&self.config.runtime_program);
        cmd.args(&self.config.runtime_args)
            .arg("serve")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--drain-timeout",
                "5s",
                // The user's own files, on the user's machine.
                "--allow-local-paths",
            ])
            .arg("--port-file")
            .arg(&port_file)
            .arg("--function")
            .arg(spec.function)
            .arg("--instance")
            .arg(name)
            .arg("--concurrency")
            .arg(concurrency.max(1).to_string())
            .arg("--timeout")
            .arg(format!("{}s", spec.timeout_seconds.max(1.0)))
            .arg("--scratch-dir")
            .arg(dir.join("scratch"))
            .env("VFLOW_COMMAND", command)
            .env("VFLOW_EXIT_WITH_PARENT", "1")
            .env("VFLOW_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true);
        if let Some(limit) = spec.memory_limit_bytes {
            cmd.arg("--memory-limit").arg(limit.to_string());
        }
        if let Some(next) = next {
            cmd.arg("--next").arg(next);
        }
        if spec.resident {
            cmd.arg("--worker").arg("resident");
        }
        if !spec.warmup_command.is_empty() {
            cmd.env(
                "VFLOW_WARMUP_COMMAND",
                serde_json::to_string(spec.warmup_command).unwrap_or_default(),
            );
        }
        for (k, v) in &self.config.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| {
            BackendError::Unavailable(format!(
                "cannot start {}: {e}",
                self.config.runtime_program.display()
            ))
        })?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(BackendError::Unavailable(format!(
                    "the {} instance exited ({status}) before it was ready: {}",
                    spec.stage,
                    log_tail(&log)
                )));
            }
            if let Ok(text) = tokio::fs::read_to_string(&port_file).await
                && let Ok(port) = text.trim().parse::<u16>()
            {
                return Ok(Started {
                    child,
                    url: format!("http://127.0.0.1:{port}"),
                    log,
                    stage: spec.stage.to_string(),
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill().await;
                return Err(BackendError::Unavailable(format!(
                    "the {} instance did not listen within {:?}: {}",
                    spec.stage,
                    self.config.start_timeout,
                    log_tail(&log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until a started runtime answers /readyz with 200.
    async fn wait_ready(&self, s: &mut Started, deadline: Instant) -> Result<(), BackendError> {
        loop {
            if let Ok(Some(status)) = s.child.try_wait() {
                return Err(BackendError::Unavailable(format!(
                    "the {} instance exited ({status}) before it was ready: {}",
                    s.stage,
                    log_tail(&s.log)
                )));
            }
            if let Ok(r) = self.client.get(format!("{}/readyz", s.url)).send().await
                && r.status() == 200
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BackendError::Unavailable(format!(
                    "the {} instance was not ready within {:?}: {}",
                    s.stage,
                    self.config.start_timeout,
                    log_tail(&s.log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A free slot on a ready instance, starting one when the stage may grow.
    async fn acquire(
        &self,
        target: &StageTarget,
    ) -> Result<(Arc<Instance>, OwnedSemaphorePermit, Option<f64>), BackendError> {
        let pool = self.pool_for(target);
        // Set once this invocation chose to wait for a pre-warm start: the wait is the
        // part of a cold start the pre-warm did not hide.
        let mut claimed: Option<Instant> = None;
        loop {
            let freed = pool.freed.notified();
            {
                let instances = pool.instances.lock().await;
                for instance in instances.iter() {
                    if let Ok(permit) = instance.slots.clone().try_acquire_owned() {
                        let waited = claimed.map(|at| at.elapsed().as_secs_f64());
                        return Ok((instance.clone(), permit, waited.filter(|w| *w > 0.001)));
                    }
                }
                let claim = claimed.is_none()
                    && pool
                        .unclaimed_prewarms
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                if claim {
                    claimed = Some(Instant::now());
                }
                let starting = pool.starting.load(Ordering::SeqCst);
                // A claimed start still under way: keep waiting for it. Once nothing is
                // starting (it failed, or another invocation took its slot), start one.
                let waiting = claimed.is_some() && starting > 0;
                let count = instances.len() as u32 + starting;
                if !waiting && count < target.max_instances.max(1) {
                    pool.starting.fetch_add(1, Ordering::SeqCst);
                    drop(instances);
                    let started = Instant::now();
                    let result = self.start_instance(target).await;
                    pool.starting.fetch_sub(1, Ordering::SeqCst);
                    let instance = result?;
                    let permit = instance
                        .slots
                        .clone()
                        .try_acquire_owned()
                        .map_err(|e| BackendError::Unavailable(e.to_string()))?;
                    pool.instances.lock().await.push(instance.clone());
                    pool.freed.notify_waiters();
                    return Ok((instance, permit, Some(started.elapsed().as_secs_f64())));
                }
            }
            // Wait for a slot or an instance to come up; look again now and then in
            // case an instance went away.
            let _ = tokio::time::timeout(Duration::from_millis(200), freed).await;
        }
    }
}

async fn stop(instance: &Instance) {
    let children: Vec<Child> = instance.children.lock().await.drain(..).collect();
    for mut c in children {
        if let Some(pid) = c.id() {
            // SIGINT: the runtime kills its running functions at once and exits.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        if tokio::time::timeout(Duration::from_secs(5), c.wait())
            .await
            .is_err()
        {
            let _ = c.kill().await;
        }
    }
}

/// Instances of a stage with the memory of an OOM retry are a pool of their own (they
/// run with another limit), e.g. `scale+oom`.
fn pool_key(target: &StageTarget) -> String {
    if target.memory_raised {
        format!("{}+oom", target.stage)
    } else {
        target.stage.clone()
    }
}

impl Backend for LocalBackend {
    /// Instances are processes started with the target's limit: a raised target gets
    /// its own.
    fn can_raise_memory(&self) -> bool {
        true
    }

    async fn invoke_signalled(
        &self,
        target: &StageTarget,
        request: InvokeRequest,
        mut started: StartSignal,
    ) -> Result<Invoked, BackendError> {
        let queued = Instant::now();
        let (instance, permit, cold) = self.acquire(target).await?;
        self.count_idle(&instance);
        started.fire();
        let queued_seconds = if cold.is_some() {
            0.0
        } else {
            queued.elapsed().as_secs_f64()
        };
        let response = self
            .client
            .post(format!("{}/invoke", instance.url))
            .json(&request)
            .send()
            .await;
        if let Ok(mut t) = instance.last_used.lock() {
            *t = Instant::now();
        }
        drop(permit);
        self.pool(target).freed.notify_waiters();
        let response = response
            .map_err(|e| BackendError::Unavailable(format!("instance {}: {e}", instance.url)))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| BackendError::Unavailable(format!("instance {}: {e}", instance.url)))?;
        if status.is_success() {
            let response: InvokeResponse = serde_json::from_slice(&bytes).map_err(|e| {
                BackendError::Unavailable(format!(
                    "a response that is not an invocation result: {e}"
                ))
            })?;
            return Ok(Invoked {
                response,
                queued_seconds,
                cold_start_seconds: cold,
            });
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(BackendError::Failed(body.error)),
            Err(_) => Err(BackendError::Unavailable(format!(
                "instance {} answered {status}: {}",
                instance.url,
                String::from_utf8_lossy(&bytes)
            ))),
        }
    }

    async fn prewarm(&self, target: &StageTarget, replicas: u32) {
        let pool = self.pool_for(target);
        let have = pool.instances.lock().await.len() as u32 + pool.starting.load(Ordering::SeqCst);
        let want = replicas.min(target.max_instances.max(1));
        for _ in have..want {
            pool.starting.fetch_add(1, Ordering::SeqCst);
            pool.unclaimed_prewarms.fetch_add(1, Ordering::SeqCst);
            let result = self.start_instance(target).await;
            // The instance joins the pool (under its lock) before the start stops
            // counting, so an invocation arriving in between sees one or the other.
            {
                let mut instances = pool.instances.lock().await;
                if let Ok(instance) = &result {
                    instances.push(instance.clone());
                }
                pool.starting.fetch_sub(1, Ordering::SeqCst);
                // Unless an invocation claimed this start already.
                let _ =
                    pool.unclaimed_prewarms
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            }
            pool.freed.notify_waiters();
            if let Err(e) = result {
                tracing::warn!(stage = %target.stage, error = %e, "pre-warm failed");
            }
        }
    }

    async fn release(&self, target: &StageTarget) {
        let pool = self.pool_for(target);
        let min = target.min_instances as usize;
        let mut instances = pool.instances.lock().await;
        instances.sort_by_key(|i| i.idle_for());
        let mut kept = Vec::new();
        for instance in instances.drain(..) {
            let idle = instance.slots.available_permits() == instance.concurrency as usize;
            if kept.len() >= min && idle {
                tracing::debug!(instance = instance.id, stage = %target.stage, "releasing an instance warmed for a branch not taken");
                self.count_idle(&instance);
                stop(&instance).await;
            } else {
                kept.push(instance);
            }
        }
        *instances = kept;
    }

    async fn shutdown(&self) {
        let pools: Vec<Arc<Pool>> = self
            .pools
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default();
        for pool in pools {
            let instances: Vec<Arc<Instance>> = pool.instances.lock().await.drain(..).collect();
            for instance in instances {
                self.count_idle(&instance);
                stop(&instance).await;
            }
        }
    }
}
