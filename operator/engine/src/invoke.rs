//! One unit's invocation: reuse of complete outputs, then attempts with backoff.

use std::sync::Arc;

use vflow_contract::invocation::{COMPLETION_RECORD, CompletionRecord, InvokeResponse};
use vflow_storage::{Location, Store};

use crate::backend::{Backend, BackendError, Invoked};
use crate::engine::backoff;
use crate::graph::UnitKey;
use crate::record::{Attempt, unix_now};
use crate::scheduler::{Dispatch, UnitOutcome};

/// Runs one unit to its end: done, or failed after its retries.
pub async fn invoke_unit<B: Backend>(
    backend: Arc<B>,
    store: Store,
    d: Dispatch,
) -> (UnitKey, UnitOutcome) {
    if let Some(done) = reuse(&store, &d).await {
        return (d.key, done);
    }
    let mut attempts = Vec::new();
    let mut tries = 0u32;
    loop {
        tries += 1;
        let submitted_at = unix_now();
        match backend.invoke(&d.target, d.request.clone()).await {
            Ok(invoked) => {
                attempts.push(attempt_from(&invoked, submitted_at));
                return (d.key, done(attempts, &invoked.response));
            }
            Err(err) => {
                let message = match &err {
                    BackendError::Failed(f)
                        if !f.stderr_tail.is_empty() && !f.message.contains(&f.stderr_tail) =>
                    {
                        format!("{}\n{}", f.message, f.stderr_tail)
                    }
                    other => other.to_string(),
                };
                let oom_killed = matches!(&err, BackendError::Failed(f)
                    if f.exit == Some(vflow_contract::exit::Exit::Signal { signal: 9 }));
                attempts.push(Attempt {
                    submitted_at,
                    finished_at: unix_now(),
                    error: Some(message.clone()),
                    oom_killed,
                    ..Default::default()
                });
                if !err.retryable() || tries > d.retries {
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
    if previous.request.inputs != d.request.inputs || previous.request.params != d.request.params {
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
    Some(done(vec![attempt], &previous.response))
}

fn done(attempts: Vec<Attempt>, response: &InvokeResponse) -> UnitOutcome {
    UnitOutcome::Done {
        attempts,
        outputs: response.outputs.iter().map(|o| o.uri.clone()).collect(),
        metadata: response.metadata.clone(),
    }
}

fn attempt_from(invoked: &Invoked, submitted_at: f64) -> Attempt {
    let r = &invoked.response;
    Attempt {
        submitted_at,
        finished_at: unix_now(),
        queued_seconds: invoked.queued_seconds,
        cold_start_seconds: invoked.cold_start_seconds,
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
    }
}
