//! The run engine's backend in a cluster: invocations go to the stage's Service; while a
//! stage has no ready instance they are held here (the job of Knative's activator)
//! until the operator, asked through the demand board (in this process), has scaled it up.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use vflow_contract::invocation::{ErrorBody, InvokeRequest, InvokeResponse};
use vflow_engine::backend::{Backend, BackendError, Invoked, StageTarget, StartSignal};
use vflow_engine::engine::jitter;

use crate::capacity::Capacity;

/// The base URL of a stage's instances (without `/invoke`).
pub trait Resolver: Send + Sync + 'static {
    fn url(&self, namespace: &str, workflow: &str, stage: &str) -> String;
}

/// `http://<workflow>-<stage>.<namespace>.svc:8080`: the Service the operator creates.
/// (`vflow_contract::naming::service_url`)
#[derive(Debug, Clone, Default)]
pub struct ServiceResolver;

impl Resolver for ServiceResolver {
    fn url(&self, namespace: &str, workflow: &str, stage: &str) -> String {
        vflow_contract::naming::service_url(namespace, workflow, stage)
    }
}

/// Fixed URLs per stage (tests: a local `vflow-runtime serve` stands in for the pods).
#[derive(Debug, Clone, Default)]
pub struct StaticResolver(pub BTreeMap<String, String>);

impl Resolver for StaticResolver {
    fn url(&self, _namespace: &str, _workflow: &str, stage: &str) -> String {
        self.0.get(stage).cloned().unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct KubeBackendConfig {
    /// Longest an invocation is held while its stage scales from zero.
    pub activation_timeout: Duration,
    /// How long a seen ready instance is trusted without asking again.
    pub ready_ttl: Duration,
    /// How long a refused connection is retried in place: a pod is Ready before its
    /// Service routes to it (the EndpointSlice and kube-proxy follow by a second or
    /// more), and a refused request never reached a function, so sending it again is
    /// safe. The wait counts as cold start.
    pub route_grace: Duration,
}

impl Default for KubeBackendConfig {
    fn default() -> Self {
        Self {
            activation_timeout: Duration::from_secs(300),
            ready_ttl: Duration::from_secs(5),
            route_grace: Duration::from_secs(15),
        }
    }
}

/// Decrements the in-flight count however the invocation ends (also when aborted).
struct InFlight<'a, C: Capacity> {
    capacity: &'a C,
    stage: &'a str,
}

impl<C: Capacity> Drop for InFlight<'_, C> {
    fn drop(&mut self) {
        self.capacity.end(self.stage);
    }
}

#[derive(Default)]
struct StageGate {
    /// One waiter watches the Deployment; the others wait for it here.
    waiting: tokio::sync::Mutex<()>,
    ready_at: std::sync::Mutex<Option<Instant>>,
}

pub struct KubeBackend<C: Capacity> {
    namespace: String,
    workflow: String,
    capacity: C,
    resolver: Arc<dyn Resolver>,
    config: KubeBackendConfig,
    client: reqwest::Client,
    gates: std::sync::Mutex<HashMap<String, Arc<StageGate>>>,
    cancelled: AtomicBool,
    cancel: Notify,
    /// The workflow's invocation token, sent as `Authorization: Bearer` (its function
    /// pods require it; the run controller reads it from the workflow's Secret).
    token: std::sync::OnceLock<String>,
}

impl<C: Capacity> KubeBackend<C> {
    /// Sends `token` with every invocation from now on (set once; later calls are
    /// ignored).
    pub fn use_token(&self, token: String) {
        let _ = self.token.set(token);
    }

    pub fn new(
        namespace: &str,
        workflow: &str,
        capacity: C,
        resolver: Arc<dyn Resolver>,
        config: KubeBackendConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            namespace: namespace.to_string(),
            workflow: workflow.to_string(),
            capacity,
            resolver,
            config,
            client: reqwest::Client::new(),
            gates: std::sync::Mutex::new(HashMap::new()),
            cancelled: AtomicBool::new(false),
            cancel: Notify::new(),
            token: std::sync::OnceLock::new(),
        })
    }

    pub fn capacity(&self) -> &C {
        &self.capacity
    }

    fn gate(&self, stage: &str) -> Arc<StageGate> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.entry(stage.to_string()).or_default().clone()
    }

    fn forget_ready(&self, stage: &str) {
        let gate = self.gate(stage);
        *gate.ready_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Waits until the stage has a ready instance; `Some(seconds)` when it had none
    /// (a cold start this invocation paid for).
    async fn activate(&self, stage: &str) -> Result<Option<f64>, BackendError> {
        let gate = self.gate(stage);
        let fresh = |gate: &StageGate| {
            gate.ready_at
                .lock()
                .map(|t| t.is_some_and(|t| t.elapsed() < self.config.ready_ttl))
                .unwrap_or(false)
        };
        if fresh(&gate) {
            return Ok(None);
        }
        let started = Instant::now();
        let _turn = gate.waiting.lock().await;
        if fresh(&gate) {
            // Another invocation waited for the instance this one will use.
            let waited = started.elapsed().as_secs_f64();
            return Ok((waited > 0.05).then_some(waited));
        }
        let ready = self
            .capacity
            .ready(stage)
            .await
            .map_err(BackendError::Unavailable)?;
        let cold = if ready > 0 {
            None
        } else {
            tracing::info!(workflow = %self.workflow, stage, "holding invocations while the stage scales from zero");
            tokio::select! {
                r = self.capacity.wait_ready(stage, self.config.activation_timeout) => r.map_err(BackendError::Unavailable)?,
                _ = self.cancelled() => return Err(BackendError::Cancelled),
            }
            Some(started.elapsed().as_secs_f64())
        };
        *gate.ready_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        Ok(cold)
    }

    async fn cancelled(&self) {
        loop {
            let notified = self.cancel.notified();
            if self.cancelled.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    async fn post(
        &self,
        url: &str,
        request: &InvokeRequest,
        timeout: Duration,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut post = self.client.post(url).timeout(timeout);
        if let Some(token) = self.token.get() {
            post = post.bearer_auth(token);
        }
        post.json(request).send().await
    }
}

/// The runtime turned the invocation away before running it: 429 (every slot busy),
/// or a 503 whose body says the request phase failed and may be tried again (the
/// instance is draining or still warming up). A 503 after the function ran is not.
fn refused(status: reqwest::StatusCode, body: &[u8]) -> bool {
    use vflow_contract::invocation::Phase;
    status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || (status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            && serde_json::from_slice::<ErrorBody>(body)
                .is_ok_and(|b| b.error.phase == Phase::Request && b.error.retryable))
}

impl<C: Capacity> Backend for KubeBackend<C> {
    async fn invoke_signalled(
        &self,
        target: &StageTarget,
        request: InvokeRequest,
        mut started: StartSignal,
    ) -> Result<Invoked, BackendError> {
        if self.cancelled.load(Ordering::SeqCst) {
            return Err(BackendError::Cancelled);
        }
        let stage = target.stage.as_str();
        self.capacity.begin(stage);
        let _in_flight = InFlight {
            capacity: &self.capacity,
            stage,
        };
        let mut cold_start_seconds = self.activate(stage).await?;
        // The OOM retry goes to an instance given the raised limit, not to any.
        let base = match target.memory_limit_bytes.filter(|_| target.memory_raised) {
            Some(bytes) => tokio::select! {
                r = self.capacity.raise_memory(stage, bytes) => r.map_err(|e| BackendError::Unavailable(
                    format!("stage {stage}: raising the memory limit to {} MiB for the retry: {e}", bytes >> 20)))?,
                _ = self.cancelled() => return Err(BackendError::Cancelled),
            },
            None => self.resolver.url(&self.namespace, &self.workflow, stage),
        };
        started.fire();
        let url = format!("{base}/invoke");
        // The runtime enforces the function's timeout; this only catches a lost instance.
        let timeout = Duration::from_secs_f64(target.chain_timeout_seconds().max(1.0) + 60.0);
        let queued = Instant::now();
        let deadline = queued + self.config.activation_timeout;
        let route_deadline = queued + self.config.route_grace;
        let mut unrouted = Duration::ZERO;
        let mut pause = Duration::from_millis(50);
        let response = loop {
            let response = tokio::select! {
                r = self.post(&url, &request, timeout) => r,
                _ = self.cancelled() => return Err(BackendError::Cancelled),
            };
            let response = match response {
                Ok(r) => r,
                Err(e) if e.is_connect() && Instant::now() < route_deadline => {
                    // Not routed to the instance yet: the request never left.
                    let waited = Instant::now();
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.cancelled() => return Err(BackendError::Cancelled),
                    }
                    pause = (pause * 2).min(Duration::from_millis(500));
                    unrouted += waited.elapsed();
                    continue;
                }
                Err(e) => {
                    // The next attempt looks at the Deployment again.
                    self.forget_ready(stage);
                    return Err(BackendError::Unavailable(format!("{url}: {e}")));
                }
            };
            let status = response.status();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(1.0)
                .clamp(0.05, 10.0);
            let bytes = response
                .bytes()
                .await
                .map_err(|e| BackendError::Unavailable(format!("{url}: {e}")))?;
            // Refused before it started (every slot busy, an instance draining or
            // warming up): nothing ran, so it goes again after the wait the runtime
            // asks for (the Service may pick another instance), like a queue, and
            // spends none of the unit's retries. Jittered: held invocations refused
            // together must not come back together.
            if refused(status, &bytes) && Instant::now() < deadline {
                let wait = retry_after * (0.8 + 0.4 * jitter());
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs_f64(wait)) => {}
                    _ = self.cancelled() => return Err(BackendError::Cancelled),
                }
                continue;
            }
            break (status, bytes);
        };
        if !unrouted.is_zero() {
            let waited = unrouted.as_secs_f64() + cold_start_seconds.unwrap_or(0.0);
            cold_start_seconds = Some(waited);
        }
        let queued_seconds = (queued.elapsed() - unrouted).as_secs_f64();
        let (status, bytes) = response;
        if status.is_success() {
            let response: InvokeResponse = serde_json::from_slice(&bytes).map_err(|e| {
                BackendError::Unavailable(format!("{url}: not an invocation result: {e}"))
            })?;
            let exec = response.wall_seconds;
            return Ok(Invoked {
                response,
                queued_seconds: (queued_seconds - exec).max(0.0),
                cold_start_seconds,
            });
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(BackendError::Failed(body.error)),
            Err(_) => Err(BackendError::Unavailable(format!(
                "{url} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            ))),
        }
    }

    fn can_raise_memory(&self) -> bool {
        self.capacity.can_raise_memory()
    }

    async fn prewarm(&self, target: &StageTarget, replicas: u32) {
        self.capacity
            .prewarm(&target.stage, replicas.min(target.max_instances.max(1)));
    }

    /// The operator scales the stage down once no request holds it.
    async fn release(&self, target: &StageTarget) {
        self.capacity.release(&target.stage);
    }

    /// The operator owns the instances; a cancelled run only lets go of what it holds.
    async fn shutdown(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.cancel.notify_waiters();
    }
}
