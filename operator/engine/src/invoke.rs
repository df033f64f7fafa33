//! One unit's invocation: reuse of complete outputs, then attempts with backoff.

use std::sync::Arc;

use vflow_contract::invocation::{COMPLETION_RECORD, CompletionRecord, InvokeResponse};
use vflow_storage::{Location, Store};

use crate::backend::{Backend, BackendError, StartSignal};
use crate::engine::backoff;
use crate::graph::UnitKey;
use crate::record::{Attempt, unix_now};
use crate::scheduler::{Dispatch, StepOutcome, UnitOutcome};

/// Called with the unit when its first attempt has an instance.
pub type OnStart = Arc<dyn Fn(UnitKey) + Send + Sync>;

/// Runs one unit to its end: done, or failed after its retries.
pub async fn invoke_unit<B: Backend>(
    backend: Arc<B>,
    store: Store,
    d: Dispatch,
    on_start: Option<OnStart>,
) -> (UnitKey, UnitOutcome) {
    if let Some(done) = reuse(&store, &d).await {
        return (d.key, done);
    }
    let mut attempts = Vec::new();
    let mut tries = 0u32;
    // The target may be raised once, after an OOM kill (see `StageTarget`).
    let mut target = d.target.clone();
    let key = d.key;
    loop {
        tries += 1;
        let submitted_at = unix_now();
        let started = match (&on_start, tries) {
            (Some(f), 1) => {
                let f = f.clone();
                StartSignal::new(move || f(key))
            }
            _ => StartSignal::default(),
        };
        match backend
            .invoke_signalled(&target, d.request.clone(), started)
            .await
        {
            Ok(invoked) => {
                attempts.push(Attempt {
                    submitted_at,
                    ..attempt_from(
                        &invoked.response,
                        invoked.queued_seconds,
                        0.0,
                        invoked.cold_start_seconds,
                    )
                });
                return (d.key, done(attempts, &invoked.response, None));
            }
            Err(err) => {
                let message = match &err {
                    BackendError::Failed(f) => {
                        let mut m = f.message.clone();
                        // The input it failed on, when the runtime names one.
                        if let Some(input) = f.input.as_ref().filter(|i| !m.contains(*i)) {
                            m = format!("{m} (input {input})");
                        }
                        if !f.stderr_tail.is_empty() && !m.contains(&f.stderr_tail) {
                            m = format!("{m}\n{}", f.stderr_tail);
                        }
                        m
                    }
                    other => other.to_string(),
                };
                let oom_killed = matches!(&err, BackendError::Failed(f) if f.killed_for_memory());
                attempts.push(Attempt {
                    submitted_at,
                    finished_at: unix_now(),
                    error: Some(message.clone()),
                    oom_killed,
                    ..Default::default()
                });
                // The same input needs the same memory: an OOM kill is tried again
                // only with more, once, where the plan and the backend allow it (the
                // retry is not one of the unit's retries).
                if oom_killed
                    && !target.memory_raised
                    && backend.can_raise_memory()
                    && let Some(raised) = target.raised_for_oom()
                {
                    tracing::info!(stage = %d.request.stage, segment = ?d.request.segment,
                        memory_bytes = ?raised.memory_limit_bytes, "killed at its memory limit: trying once more with more memory");
                    target = raised;
                    continue;
                }
                if !err.retryable() || tries > d.retries + u32::from(target.memory_raised) {
                    let message = match (oom_killed, target.memory_raised) {
                        (true, true) => format!(
                            "{message} (also with {} MiB, the most the plan allows)",
                            target.memory_limit_bytes.unwrap_or(0) >> 20
                        ),
                        _ => message,
                    };
                    return (d.key, UnitOutcome::Failed { attempts, message });
                }
                tracing::info!(stage = %d.request.stage, segment = ?d.request.segment, tries, error = %err, "retrying");
                tokio::time::sleep(backoff(tries)).await;
            }
        }
    }
}

/// Idempotency: complete outputs from an interrupted run (same inputs and params) are
/// taken, not redone.
async fn reuse(store: &Store, d: &Dispatch) -> Option<UnitOutcome> {
    let prefix = Location::parse(&d.request.output_prefix).ok()?;
    let bytes = store
        .get_bytes(&prefix.join(COMPLETION_RECORD))
        .await
        .ok()??;
    let previous = serde_json::from_slice::<CompletionRecord>(&bytes).ok()?;
    if !previous.request.same_work_as(&d.request) {
        return None;
    }
    // The chosen attempt may have stopped between its record and copying its outputs
    // to their names; finished here, or the runtime finishes it when sent the work.
    let outputs: Vec<Location> = previous
        .response
        .outputs
        .iter()
        .filter_map(|o| Location::parse(&o.uri).ok())
        .collect();
    if let Err(e) =
        vflow_storage::attempts::promote(store, &prefix, &previous.attempt, &outputs).await
    {
        tracing::warn!(error = %e, stage = %d.request.stage, "a completed attempt's outputs are not all in place: sending the work again");
        return None;
    }
    let now = unix_now();
    let attempt = Attempt {
        submitted_at: now,
        finished_at: now,
        reused: true,
        oom_killed: false,
        learned: false,
        instance: previous.response.instance.clone(),
        ..Default::default()
    };
    Some(done(vec![attempt], &previous.response, Some(now)))
}

/// `reused_at`: the outcome comes from a completion record, not from this session.
fn done(attempts: Vec<Attempt>, response: &InvokeResponse, reused_at: Option<f64>) -> UnitOutcome {
    let submitted_at = attempts.last().map(|a| a.submitted_at).unwrap_or_default();
    UnitOutcome::Done {
        attempts,
        outputs: response.outputs.iter().map(|o| o.uri.clone()).collect(),
        output_bytes: response.outputs.iter().map(|o| o.bytes).collect(),
        metadata: response.metadata.clone(),
        chained: response
            .chained
            .iter()
            .map(|step| StepOutcome {
                attempt: match reused_at {
                    Some(now) => Attempt {
                        submitted_at: now,
                        finished_at: now,
                        reused: true,
                        instance: step.instance.clone(),
                        ..Default::default()
                    },
                    None => Attempt {
                        submitted_at,
                        ..attempt_from(step, 0.0, 0.0, None)
                    },
                },
                outputs: step.outputs.iter().map(|o| o.uri.clone()).collect(),
                output_bytes: step.outputs.iter().map(|o| o.bytes).collect(),
                metadata: step.metadata.clone(),
            })
            .collect(),
    }
}

/// The attempt a response describes (one step's, for a fused chain).
fn attempt_from(
    r: &InvokeResponse,
    queued_seconds: f64,
    submitted_at: f64,
    cold_start_seconds: Option<f64>,
) -> Attempt {
    Attempt {
        submitted_at,
        finished_at: unix_now(),
        queued_seconds,
        cold_start_seconds,
        download_seconds: r.download_seconds,
        function_seconds: r.function_seconds,
        upload_seconds: r.upload_seconds,
        cpu_seconds: r.cpu_seconds,
        peak_rss_bytes: r.peak_rss_bytes,
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        instance: r.instance.clone(),
        error: None,
        reused: false,
        oom_killed: false,
        learned: false,
        usage: r.usage.clone(),
        concurrency: r.concurrency,
    }
}
