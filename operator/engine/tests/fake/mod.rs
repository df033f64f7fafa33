//! A scripted [`Backend`]: records every call, answers like a runtime would (outputs
//! under the request's prefix, a completion record written last), and fails the first
//! N attempts of a stage when told to.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use vflow_contract::exit::Exit;
use vflow_contract::invocation::{
    COMPLETION_RECORD, CompletionRecord, InvokeFailure, InvokeRequest, InvokeResponse,
    OutputObject, Phase,
};
use vflow_engine::backend::{Backend, BackendError, Invoked, StageTarget, StartSignal};
use vflow_storage::{Location, Store};

type Metadata = serde_json::Map<String, serde_json::Value>;

pub struct Fake {
    store: Store,
    /// Outputs a stage writes (default one); the fan-out stage's are its segments.
    outputs: BTreeMap<String, usize>,
    /// The sizes of a stage's outputs, in order (default 1 byte each).
    sizes: BTreeMap<String, Vec<u64>>,
    /// The first `n` attempts at each unit of the stage fail with the error.
    failures: BTreeMap<String, (u32, BackendError)>,
    metadata: fn(&InvokeRequest) -> Metadata,
    /// How long an invocation of the stage takes (Tokio's clock, so it can be paused).
    delays: BTreeMap<String, Duration>,
    /// Invocations of this stage never end; `entered` says when one began.
    hang: Option<String>,
    pub entered: Notify,
    calls: Mutex<Vec<InvokeRequest>>,
    /// Each call's stage and its target's memory limit, in call order.
    memory: Mutex<Vec<(String, Option<u64>)>>,
    /// Whether it can run a target with more memory (an OOM retry).
    raisable: bool,
    /// Stage, replicas and when, after the fake was made.
    prewarms: Mutex<Vec<(String, u32, Duration)>>,
    /// Stages released and when.
    releases: Mutex<Vec<(String, Duration)>>,
    pub shutdowns: AtomicU32,
    made: Instant,
    /// Per stage: invocations under way now, and the most there ever were at once.
    busy: Mutex<BTreeMap<String, (u32, u32)>>,
}

impl Fake {
    pub fn new() -> Self {
        Self {
            store: Store::local_only(),
            outputs: BTreeMap::new(),
            sizes: BTreeMap::new(),
            failures: BTreeMap::new(),
            metadata: |_| Metadata::new(),
            delays: BTreeMap::new(),
            hang: None,
            entered: Notify::new(),
            calls: Mutex::new(Vec::new()),
            memory: Mutex::new(Vec::new()),
            raisable: false,
            prewarms: Mutex::new(Vec::new()),
            releases: Mutex::new(Vec::new()),
            shutdowns: AtomicU32::new(0),
            made: Instant::now(),
            busy: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn outputs(mut self, stage: &str, count: usize) -> Self {
        self.outputs.insert(stage.into(), count);
        self
    }

    /// The stage writes one output of each of these sizes.
    pub fn sized_outputs(mut self, stage: &str, bytes: &[u64]) -> Self {
        self.outputs.insert(stage.into(), bytes.len());
        self.sizes.insert(stage.into(), bytes.to_vec());
        self
    }

    pub fn failing(mut self, stage: &str, first: u32, error: BackendError) -> Self {
        self.failures.insert(stage.into(), (first, error));
        self
    }

    pub fn metadata(mut self, f: fn(&InvokeRequest) -> Metadata) -> Self {
        self.metadata = f;
        self
    }

    pub fn slow(mut self, stage: &str, takes: Duration) -> Self {
        self.delays.insert(stage.into(), takes);
        self
    }

    pub fn hanging(mut self, stage: &str) -> Self {
        self.hang = Some(stage.into());
        self
    }

    /// Can run targets with more memory than planned, as the local backend can.
    pub fn raisable(mut self) -> Self {
        self.raisable = true;
        self
    }

    /// The memory limit of the target of each call to `stage`, in call order.
    pub fn memory_limits(&self, stage: &str) -> Vec<Option<u64>> {
        self.memory
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(s, _)| s == stage)
                    .map(|(_, limit)| *limit)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The most invocations of `stage` that were under way at once.
    pub fn most_at_once(&self, stage: &str) -> u32 {
        self.busy
            .lock()
            .map(|b| b.get(stage).map_or(0, |&(_, most)| most))
            .unwrap_or(0)
    }

    fn busy(&self, stage: &str, delta: i32) {
        if let Ok(mut b) = self.busy.lock() {
            let (now, most) = b.entry(stage.into()).or_default();
            *now = now.saturating_add_signed(delta);
            *most = (*most).max(*now);
        }
    }

    pub fn calls(&self) -> Vec<InvokeRequest> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The requests to one stage, in the order they came.
    pub fn calls_to(&self, stage: &str) -> Vec<InvokeRequest> {
        self.calls()
            .into_iter()
            .filter(|c| c.stage == stage)
            .collect()
    }

    pub fn prewarms(&self) -> Vec<(String, u32, Duration)> {
        self.prewarms.lock().map(|p| p.clone()).unwrap_or_default()
    }

    pub fn releases(&self) -> Vec<(String, Duration)> {
        self.releases.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn attempts_so_far(&self, request: &InvokeRequest) -> u32 {
        let Ok(mut calls) = self.calls.lock() else {
            panic!("calls poisoned")
        };
        calls.push(request.clone());
        calls
            .iter()
            .filter(|c| c.stage == request.stage && c.segment == request.segment)
            .count() as u32
    }

    /// What the runtime does on success: outputs, then the completion record.
    async fn complete(&self, request: InvokeRequest) -> InvokeResponse {
        let prefix = Location::parse(&request.output_prefix)
            .unwrap_or_else(|e| panic!("output prefix {}: {e}", request.output_prefix));
        let count = self.outputs.get(&request.stage).copied().unwrap_or(1);
        let outputs = (0..count)
            .map(|i| OutputObject {
                uri: prefix.join(&format!("out-{i:03}.mp4")).to_string(),
                bytes: self
                    .sizes
                    .get(&request.stage)
                    .and_then(|sizes| sizes.get(i).copied())
                    .unwrap_or(1),
                sha256: None,
            })
            .collect();
        let response = InvokeResponse {
            outputs,
            metadata: (self.metadata)(&request),
            bytes_in: 1,
            bytes_out: 1,
            wall_seconds: 0.1,
            download_seconds: 0.0,
            function_seconds: 0.1,
            upload_seconds: 0.0,
            cpu_seconds: 0.1,
            peak_rss_bytes: 1,
            cold: false,
            cold_start_seconds: None,
            exit: Exit::Code { code: 0 },
            instance: "fake-0".into(),
            usage: Vec::new(),
            concurrency: 0.0,
            chained: Vec::new(),
        };
        let record = CompletionRecord {
            request,
            response: response.clone(),
            attempt: String::new(),
        };
        let bytes = serde_json::to_vec(&record).unwrap_or_else(|e| panic!("encode: {e}"));
        self.store
            .put_bytes(&prefix.join(COMPLETION_RECORD), bytes)
            .await
            .unwrap_or_else(|e| panic!("completion record: {e}"));
        response
    }
}

impl Backend for Fake {
    fn can_raise_memory(&self) -> bool {
        self.raisable
    }

    async fn invoke_signalled(
        &self,
        target: &StageTarget,
        request: InvokeRequest,
        mut started: StartSignal,
    ) -> Result<Invoked, BackendError> {
        if let Ok(mut m) = self.memory.lock() {
            m.push((request.stage.clone(), target.memory_limit_bytes));
        }
        // The fake's instances are always there.
        started.fire();
        let attempt = self.attempts_so_far(&request);
        if self.hang.as_deref() == Some(request.stage.as_str()) {
            self.entered.notify_one();
            std::future::pending::<()>().await;
        }
        self.busy(&request.stage, 1);
        if let Some(takes) = self.delays.get(&request.stage) {
            tokio::time::sleep(*takes).await;
        }
        self.busy(&request.stage, -1);
        if let Some((first, error)) = self.failures.get(&request.stage)
            && attempt <= *first
        {
            return Err(error.clone());
        }
        Ok(Invoked {
            response: self.complete(request).await,
            queued_seconds: 0.0,
            cold_start_seconds: None,
        })
    }

    async fn prewarm(&self, target: &StageTarget, replicas: u32) {
        if let Ok(mut p) = self.prewarms.lock() {
            p.push((target.stage.clone(), replicas, self.made.elapsed()));
        }
    }

    async fn release(&self, target: &StageTarget) {
        if let Ok(mut r) = self.releases.lock() {
            r.push((target.stage.clone(), self.made.elapsed()));
        }
    }

    async fn shutdown(&self) {
        self.shutdowns.fetch_add(1, Ordering::SeqCst);
    }
}

/// Worth another attempt: no instance took the request.
pub fn unavailable() -> BackendError {
    BackendError::Unavailable("instance went away".into())
}

/// Not worth another: a usage error (exit 2) fails the same way every time.
pub fn usage_error() -> BackendError {
    BackendError::Failed(InvokeFailure {
        phase: Phase::Function,
        message: "function exited with code 2".into(),
        input: None,
        exit: Some(Exit::Code { code: 2 }),
        stderr_tail: "unknown option --height".into(),
        retryable: false,
        oom_killed: false,
    })
}

/// A process of the function was killed for memory by a pod's OOM killer: its ffmpeg,
/// so the function itself failed (exit 1) and the runtime saw the kill in its cgroup.
pub fn oom_killed() -> BackendError {
    BackendError::Failed(InvokeFailure {
        phase: Phase::Function,
        message: "the function failed (exit status 1): ffmpeg was killed".into(),
        input: Some("s3://videos/in/bomb.mkv".into()),
        exit: Some(Exit::Code { code: 1 }),
        stderr_tail: String::new(),
        retryable: false,
        oom_killed: true,
    })
}
