//! `vflow-runtime serve`: the invocation server.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{Semaphore, watch};
use vflow_storage::{S3Settings, Store};

use crate::config::ServeArgs;
use crate::executor::{Executor, ExecutorConfig};
use crate::invocation::{ErrorBody, InvokeFailure, InvokeRequest, InvokeResponse, Phase};
use crate::metrics::RuntimeMetrics;
use crate::proc_stats;
use crate::process;

pub struct AppState {
    pub executor: Executor,
    slots: Arc<Semaphore>,
    concurrency: u32,
    ready: AtomicBool,
    draining: AtomicBool,
    /// The runtime this one is fused after has stopped (it said so on /release).
    released: tokio::sync::Notify,
    /// Invocations running now, by what they do (`InvokeRequest::work_key`): a request for the
    /// same work joins the one in flight instead of running it a second time.
    in_flight: std::sync::Mutex<HashMap<String, watch::Receiver<Option<Answer>>>>,
}

type Outcome = Result<InvokeResponse, InvokeFailure>;

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let body = ErrorBody {
        error: InvokeFailure::new(Phase::Request, message, true),
    };
    let mut response = json_response(status, &body);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// HTTP status for a failed invocation: 4xx when the request or its input is at
/// fault, 5xx when trying again may help.
fn status_for(failure: &InvokeFailure) -> StatusCode {
    match (failure.phase, failure.retryable) {
        (Phase::Request, _) => StatusCode::BAD_REQUEST,
        (Phase::Function, _) if failure.exit == Some(process::Exit::TimedOut) => {
            StatusCode::GATEWAY_TIMEOUT
        }
        (_, false) => StatusCode::UNPROCESSABLE_ENTITY,
        (_, true) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// 401 unless the request carries the workflow's token (when this runtime has one).
fn unauthorized(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if state.executor.access.authorized(given) {
        return None;
    }
    state
        .executor
        .metrics
        .rejected
        .with_label_values(&["unauthorized"])
        .inc();
    let body = ErrorBody {
        error: InvokeFailure::new(
            Phase::Request,
            "missing or wrong bearer token: only vflow's engine may call this instance",
            false,
        ),
    };
    Some(json_response(StatusCode::UNAUTHORIZED, &body))
}

async fn invoke(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = unauthorized(&state, &headers) {
        return refused;
    }
    let metrics = &state.executor.metrics;
    if state.draining.load(Ordering::SeqCst) {
        metrics.rejected.with_label_values(&["draining"]).inc();
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "this instance is shutting down",
        );
    }
    if !state.ready.load(Ordering::SeqCst) {
        metrics.rejected.with_label_values(&["warming_up"]).inc();
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "this instance is still warming up",
        );
    }
    let request: InvokeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let failure = InvokeFailure::new(
                Phase::Request,
                format!("the request is not a valid invocation: {e}"),
                false,
            );
            return json_response(StatusCode::BAD_REQUEST, &ErrorBody { error: failure });
        }
    };
    // A resumed run engine sends a unit again when its first attempt's caller went
    // away (the runtime finishes it all the same): that is the same work.
    let work = request.work_key();
    // Who does this work: a request for work already running here waits for its
    // answer, holding no slot (the running one holds one; with one slot a second would
    // be turned away, then run the work again). Taken under the lock, so of two such
    // requests at once one does the work.
    let (answer, mine) = watch::channel(None::<Answer>);
    let running = match state.in_flight.lock() {
        Ok(mut m) => match m.get(&work) {
            Some(running) => Some(running.clone()),
            None => {
                m.insert(work.clone(), mine);
                None
            }
        },
        Err(_) => None,
    };
    if let Some(mut running) = running {
        metrics.joined.inc();
        tracing::info!(run = %request.run, stage = %request.stage, segment = ?request.segment, "the same work is running here: joining it");
        let joined = running
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|a| a.clone());
        return respond(&state, joined);
    }
    // The rest in its own task: a caller that hangs up (even during the record check)
    // neither abandons a half-done invocation nor leaves the work registered.
    let task_state = state.clone();
    let task = tokio::spawn(async move {
        let registered = Registered {
            state: task_state.clone(),
            work,
        };
        let answer_now = do_work(&task_state, request).await;
        answer.send_replace(Some(answer_now.clone()));
        drop(registered);
        answer_now
    });
    match task.await {
        Ok(answer) => respond(&state, Some(answer)),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("invocation task failed: {e}"),
        )
            .into_response(),
    }
}

/// Work registered in `in_flight`; it leaves when this is dropped, however the task
/// ends (after its answer is sent: a request arriving meanwhile joins and gets it).
struct Registered {
    state: Arc<AppState>,
    work: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut m) = self.state.in_flight.lock() {
            m.remove(&self.work);
        }
    }
}

/// The answer to work this request registered: an earlier attempt's recorded outcome,
/// busy, or the invocation's own outcome.
async fn do_work(state: &AppState, request: InvokeRequest) -> Answer {
    let metrics = &state.executor.metrics;
    // An earlier attempt completed it (its caller went away before the answer): that
    // is the outcome. Checked after the running ones, which write their record before
    // they leave `in_flight`, so no attempt slips between the two.
    if let Some(response) = state.executor.completed(&request).await {
        metrics.joined.inc();
        tracing::info!(run = %request.run, stage = %request.stage, segment = ?request.segment, "the same work completed here before: its outcome");
        return Answer::Done(Box::new(Ok(response)));
    }
    let Ok(_permit) = state.slots.clone().try_acquire_owned() else {
        metrics.rejected.with_label_values(&["busy"]).inc();
        return Answer::Busy;
    };
    metrics.in_flight.inc();
    let result = state.executor.invoke(request).await;
    metrics.in_flight.dec();
    Answer::Done(Box::new(result))
}

/// How a request for some work was answered (and those who joined it are).
#[derive(Clone)]
enum Answer {
    Done(Box<Outcome>),
    /// Every slot was busy.
    Busy,
}

fn respond(state: &AppState, answer: Option<Answer>) -> Response {
    match answer {
        Some(Answer::Done(outcome)) => match *outcome {
            Ok(response) => json_response(StatusCode::OK, &response),
            Err(failure) => json_response(status_for(&failure), &ErrorBody { error: failure }),
        },
        Some(Answer::Busy) => refuse(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("all {} slots are busy", state.concurrency),
        ),
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the invocation this request joined ended without an outcome",
        )
            .into_response(),
    }
}

/// Keeps a fused runtime serving until the runtime before it in the chain has stopped
/// (it posts /release then; it may hand on the chains it is finishing until that
/// moment), at most `limit` (it may have been killed).
async fn wait_for_release(state: &AppState, limit: Duration) {
    tracing::info!("serving until the runtime this one is fused after has stopped");
    if tokio::time::timeout(limit, state.released.notified())
        .await
        .is_err()
    {
        tracing::warn!("the runtime before this one did not say it stopped; draining now");
    }
}

/// The runtime before this one in a fused chain has stopped.
async fn release(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(refused) = unauthorized(&state, &headers) {
        return refused;
    }
    // notify_one keeps the permit when nobody waits yet (SIGTERM still to come).
    state.released.notify_one();
    "ok\n".into_response()
}

/// Tells the next runtime of a fused chain that this one will hand it nothing more.
async fn release_next(next: &str, token: Option<&str>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let mut post = client.post(format!("{next}/release"));
    if let Some(token) = token {
        post = post.bearer_auth(token);
    }
    if let Err(e) = post.send().await {
        tracing::warn!(%next, error = %e, "could not tell the next fused runtime that this one stopped");
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "warming up\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.executor.metrics.render(),
    )
        .into_response()
}

async fn observations(State(state): State<Arc<AppState>>) -> Response {
    json_response(StatusCode::OK, &state.executor.observations())
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/invoke", post(invoke))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/observations", get(observations))
        .route("/release", post(release))
        .with_state(state)
}

/// SIGTERM drains (what Kubernetes sends); SIGINT cancels: running functions are
/// killed at once (what `vflow run` sends when a run is cancelled).
async fn terminate_signal() -> bool {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => false,
                _ = int.recv() => true,
            }
        }
        _ => {
            tracing::error!("cannot listen for SIGTERM; shutting down only on ctrl-c");
            let _ = tokio::signal::ctrl_c().await;
            true
        }
    }
}

/// Runs the warm-up command; the instance is ready when it succeeds.
async fn warm_up(
    state: Arc<AppState>,
    warmup: Option<Vec<String>>,
    timeout: Duration,
    // The same limit as the invocations': in a pod the container's applies to both.
    memory_limit: Option<u64>,
) -> Result<(), String> {
    if let Some(pool) = &state.executor.resident {
        // A resident function warms up by starting its first worker, which loads.
        let started = Instant::now();
        pool.warm_up(timeout, &state.executor.cancel).await?;
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            "resident worker started"
        );
    } else if let Some(argv) = warmup {
        let started = Instant::now();
        let cancel = state.executor.cancel.clone();
        let cwd = std::env::temp_dir();
        let measured = process::run(process::Spec {
            argv: &argv,
            cwd: &cwd,
            env: &[],
            timeout,
            cancel,
            memory_limit,
        })
        .await
        .map_err(|e| format!("could not start the warm-up command: {e}"))?;
        if !measured.exit.success() {
            return Err(format!(
                "the warm-up command failed ({}): {}",
                measured.exit, measured.stderr_tail
            ));
        }
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            "warm-up finished"
        );
    }
    let cold_start = proc_stats::own_age_seconds().unwrap_or(0.0);
    state.executor.mark_ready(cold_start);
    state.ready.store(true, Ordering::SeqCst);
    tracing::info!(cold_start_seconds = cold_start, "ready");
    Ok(())
}

pub async fn serve(args: ServeArgs) -> Result<(), String> {
    let command = args.function_command()?;
    let store = match S3Settings::from_env()? {
        Some(settings) => Store::with_s3(&settings),
        None => Store::local_only(),
    };
    tokio::fs::create_dir_all(&args.scratch_dir)
        .await
        .map_err(|e| format!("scratch directory {}: {e}", args.scratch_dir.display()))?;
    let scratch_dir = args.scratch_dir.clone();
    let removed =
        tokio::task::spawn_blocking(move || crate::scratch_space::remove_leftovers(&scratch_dir))
            .await
            .unwrap_or(0);
    if removed > 0 {
        tracing::info!(removed, "removed the scratch of runtimes that are gone");
    }
    let metrics = RuntimeMetrics::new(&args.function).map_err(|e| format!("metrics: {e}"))?;
    let executor = Executor::new(
        ExecutorConfig {
            function: args.function.clone(),
            command,
            scratch: args.scratch_dir.clone(),
            scratch_limit: args.scratch_limit,
            timeout: args.timeout,
            memory_limit: args.memory_limit,
            worker: args.worker,
            oom_events: args
                .memory_events
                .as_deref()
                .and_then(crate::oom_events::OomEvents::first_of),
            instance: args.instance_name(),
            next: args.next.clone(),
            access: args.access()?,
            ffmpeg_threads: crate::cpu_share::ffmpeg_threads(&args.cgroup_root, args.concurrency),
        },
        store,
        metrics,
    );
    let state = Arc::new(AppState {
        executor,
        slots: Arc::new(Semaphore::new(args.concurrency as usize)),
        concurrency: args.concurrency,
        ready: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        released: tokio::sync::Notify::new(),
        in_flight: std::sync::Mutex::default(),
    });

    let (listener, address) =
        crate::config::listen(args.bind, args.port, args.port_file.as_deref()).await?;
    tracing::info!(%address, function = %args.function, concurrency = args.concurrency,
                   memory_limit = args.memory_limit, ffmpeg_threads = state.executor.ffmpeg_threads,
                   "listening");

    let (warm_failed_tx, warm_failed_rx) = tokio::sync::oneshot::channel::<String>();
    tokio::spawn({
        let state = state.clone();
        let warmup = args.warmup.clone().map(|a| a.0);
        let timeout = args.timeout;
        let memory_limit = args.memory_limit;
        async move {
            if let Err(e) = warm_up(state, warmup, timeout, memory_limit).await {
                let _ = warm_failed_tx.send(e);
            }
        }
    });

    let drain_state = state.clone();
    let drain_timeout = args.drain_timeout;
    let after = args.after.is_some();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    tokio::spawn(async move {
        let (outcome, cancel_now) = tokio::select! {
            cancel = terminate_signal() => (Ok(()), cancel),
            Ok(e) = warm_failed_rx => (Err(e), true),
        };
        if let (true, false, Ok(())) = (after, cancel_now, &outcome) {
            wait_for_release(&drain_state, drain_timeout).await;
        }
        drain_state.draining.store(true, Ordering::SeqCst);
        if cancel_now {
            drain_state.executor.cancel.store(true, Ordering::SeqCst);
        }
        tracing::info!(?drain_timeout, "draining: finishing in-flight invocations");
        let _ = stop_tx.send(outcome);
        // Past the deadline, running functions are killed so their requests end.
        tokio::time::sleep(drain_timeout).await;
        tracing::warn!("drain timeout passed: killing the functions still running");
        drain_state.executor.cancel.store(true, Ordering::SeqCst);
    });

    let (result_tx, mut result_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(1);
    let server = axum::serve(listener, router(state.clone())).with_graceful_shutdown(async move {
        let outcome = stop_rx.await.unwrap_or(Ok(()));
        let _ = result_tx.send(outcome).await;
    });
    server.await.map_err(|e| format!("server: {e}"))?;
    let outcome = result_rx.recv().await.unwrap_or(Ok(()));

    // Invocations whose callers hung up still hold slots: wait for them too.
    let all = args.concurrency;
    let deadline = drain_timeout + Duration::from_secs(5);
    if tokio::time::timeout(deadline, state.slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::error!("invocations still running after the drain deadline; exiting anyway");
    }
    if let Some(next) = &args.next {
        release_next(next, state.executor.access.token.as_deref()).await;
    }
    tracing::info!("stopped");
    outcome
}
