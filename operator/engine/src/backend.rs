//! Where stage instances come from and how an invocation reaches one.

use std::future::Future;

use vflow_contract::invocation::{InvokeFailure, InvokeRequest, InvokeResponse};

/// What a backend needs to know about a stage to run it.
#[derive(Debug, Clone)]
pub struct StageTarget {
    pub stage: String,
    pub function: String,
    pub command: Vec<String>,
    pub warmup_command: Vec<String>,
    /// The function runs as resident workers (FunctionProfile `worker: Resident`).
    pub resident: bool,
    /// Invocations one instance runs at once.
    pub concurrency: u32,
    pub min_instances: u32,
    pub max_instances: u32,
    pub timeout_seconds: f64,
    /// The planned memory of one instance: the local backend enforces it (a pod's
    /// container limit does in a cluster).
    pub memory_limit_bytes: Option<u64>,
    /// Stages the plan fused after this one, in chain order: an instance of this
    /// stage runs each of them in a runtime of its own (a container of the pod, a
    /// process of the local instance), and invocations go through the whole chain.
    pub fused: Vec<FusedMember>,
    /// The memory an invocation killed at `memory_limit_bytes` is tried again with,
    /// once: what the planner would give the stage after that OOM kill (its raise,
    /// within the profile's `bounds.maxMemory`). None: the plan leaves no room (no
    /// planned limit, at the bound already, or a fused chain).
    pub oom_retry_memory_bytes: Option<u64>,
    /// This target is the raised one of an OOM retry: its instances are not the
    /// stage's usual ones.
    pub memory_raised: bool,
}

/// A stage run inside another stage's instance.
#[derive(Debug, Clone, PartialEq)]
pub struct FusedMember {
    pub stage: String,
    pub function: String,
    pub command: Vec<String>,
    pub warmup_command: Vec<String>,
    pub resident: bool,
    pub timeout_seconds: f64,
    pub memory_limit_bytes: Option<u64>,
}

impl StageTarget {
    /// The same stage with the memory of an OOM retry, when the plan allows one.
    pub fn raised_for_oom(&self) -> Option<StageTarget> {
        let raised = self.oom_retry_memory_bytes?;
        Some(StageTarget {
            memory_limit_bytes: Some(raised),
            oom_retry_memory_bytes: None,
            memory_raised: true,
            ..self.clone()
        })
    }

    /// The longest one invocation may take: this stage's timeout and its fused ones'.
    pub fn chain_timeout_seconds(&self) -> f64 {
        self.timeout_seconds + self.fused.iter().map(|m| m.timeout_seconds).sum::<f64>()
    }
}

/// A successful invocation and what it waited for.
#[derive(Debug, Clone)]
pub struct Invoked {
    pub response: InvokeResponse,
    /// Waiting for a free slot on a warm instance.
    pub queued_seconds: f64,
    /// Waiting for an instance this invocation had to start (a cold start).
    pub cold_start_seconds: Option<f64>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The invocation ran and failed; the runtime said why.
    #[error("{}", .0.message)]
    Failed(InvokeFailure),
    /// No instance could take it (it would not start, or it went away).
    #[error("{0}")]
    Unavailable(String),
    #[error("cancelled")]
    Cancelled,
}

impl BackendError {
    /// Worth another attempt: what the runtime marks so (a request turned away by an
    /// instance draining, a failed transfer), a function killed by a timeout or a
    /// signal from outside (its pod going), or an instance that did not answer. Not
    /// a bad request, a usage error (exit 2), a function that failed on its input
    /// (exit 1: missing, corrupt or undecodable input, per the function contract),
    /// nor one killed at its memory limit: each fails the same way again.
    pub fn retryable(&self) -> bool {
        use vflow_contract::exit::Exit;
        use vflow_contract::invocation::Phase;
        match self {
            BackendError::Failed(f) => match f.phase {
                Phase::Request | Phase::Download | Phase::Upload => f.retryable,
                // By how it ended: 1 and 2 are the contract's input and usage errors;
                // a kill for memory (or 137 from a wrapper shell) the memory limit's. A
                // timeout, SIGTERM (143: its pod going) or another crash may pass.
                Phase::Function => {
                    !f.killed_for_memory()
                        && !matches!(f.exit, Some(Exit::Code { code: 1 | 2 | 137 }))
                }
            },
            BackendError::Unavailable(_) => true,
            BackendError::Cancelled => false,
        }
    }
}

/// Called once when an invocation has an instance and is sent to it (the stage's
/// progress, for the progress-aware pre-warm schedule).
#[derive(Default)]
pub struct StartSignal(Option<Box<dyn FnOnce() + Send>>);

impl StartSignal {
    pub fn new(f: impl FnOnce() + Send + 'static) -> Self {
        StartSignal(Some(Box::new(f)))
    }

    pub fn fire(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

pub trait Backend: Send + Sync + 'static {
    fn invoke(
        &self,
        target: &StageTarget,
        request: InvokeRequest,
    ) -> impl Future<Output = Result<Invoked, BackendError>> + Send {
        self.invoke_signalled(target, request, StartSignal::default())
    }

    /// [`Backend::invoke`], firing `started` once the invocation has an instance.
    /// Backends that cannot tell fire it when they are called.
    fn invoke_signalled(
        &self,
        target: &StageTarget,
        request: InvokeRequest,
        started: StartSignal,
    ) -> impl Future<Output = Result<Invoked, BackendError>> + Send;

    /// Whether this backend can run a target with more memory than planned (an OOM
    /// retry): the local one starts an instance with the raised limit, the Kubernetes
    /// one resizes a pod in place.
    fn can_raise_memory(&self) -> bool {
        false
    }

    /// Have `replicas` instances of the stage ready (or starting) now.
    fn prewarm(&self, target: &StageTarget, replicas: u32) -> impl Future<Output = ()> + Send;

    /// Instances asked for ahead of `target`'s stage are not needed in this run (its
    /// condition turned out false): let them go, down to the stage's minimum.
    fn release(&self, target: &StageTarget) -> impl Future<Output = ()> + Send;

    /// Stop every instance; in-flight invocations end with an error.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;
    use vflow_contract::exit::Exit;
    use vflow_contract::invocation::{InvokeFailure, Phase};

    fn failed(phase: Phase, exit: Option<Exit>, retryable: bool) -> BackendError {
        BackendError::Failed(InvokeFailure {
            exit,
            ..InvokeFailure::new(phase, "m", retryable)
        })
    }

    #[test]
    fn retries_what_may_pass_and_never_what_will_fail_again() {
        let code = |code| Some(Exit::Code { code });
        // Turned away by a draining instance: the runtime says try again.
        assert!(failed(Phase::Request, None, true).retryable());
        assert!(
            !failed(Phase::Request, None, false).retryable(),
            "a bad request"
        );
        assert!(failed(Phase::Upload, None, true).retryable());
        assert!(
            !failed(Phase::Download, None, false).retryable(),
            "no such input"
        );
        // Input (1) and usage (2) errors, and a memory kill: the same again.
        for exit in [
            code(1),
            code(2),
            code(137),
            Some(Exit::Signal { signal: 9 }),
        ] {
            assert!(
                !failed(Phase::Function, exit.clone(), true).retryable(),
                "{exit:?}"
            );
        }
        // A timeout, its pod stopping it (SIGTERM, 143), a crash: may pass.
        for exit in [
            Some(Exit::TimedOut),
            code(143),
            Some(Exit::Signal { signal: 15 }),
            code(139),
        ] {
            assert!(
                failed(Phase::Function, exit.clone(), false).retryable(),
                "{exit:?}"
            );
        }
        assert!(BackendError::Unavailable("gone".into()).retryable());
        assert!(!BackendError::Cancelled.retryable());
    }
}
