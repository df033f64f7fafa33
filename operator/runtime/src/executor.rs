//! One invocation: stage the inputs, run the function, publish the outputs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt, stream};
use vflow_storage::{Location, StorageError, Store, attempts};

use crate::invocation::{
    COMPLETION_RECORD, CompletionRecord, ErrorBody, InvokeFailure, InvokeRequest, InvokeResponse,
    OutputObject, Phase, render_param,
};
use crate::metrics::RuntimeMetrics;
use crate::observations::{InstanceObservations, Window};
use crate::process::{self, Exit};
use crate::scratch_space::ScratchSpace;

/// Transfers in flight at once within one invocation.
const TRANSFER_CONCURRENCY: usize = 4;
/// A metadata file larger than this is a bug in the function, not metadata.
const MAX_METADATA_BYTES: u64 = 1 << 20;

pub struct Executor {
    pub function: String,
    command: Vec<String>,
    scratch: PathBuf,
    timeout: Duration,
    memory_limit: Option<u64>,
    oom_events: Option<crate::oom_events::OomEvents>,
    /// Resident workers, when the function runs as them.
    pub resident: Option<crate::resident::Pool>,
    next: Option<String>,
    pub access: crate::access::Access,
    client: reqwest::Client,
    store: Store,
    pub instance: String,
    pub metrics: RuntimeMetrics,
    observed: Mutex<Observed>,
    next_id: AtomicU64,
    space: Arc<ScratchSpace>,
    served: AtomicBool,
    cold_start: OnceLock<f64>,
    /// Set when the drain deadline passes: running functions are killed.
    pub cancel: Arc<AtomicBool>,
    /// Functions running at once, for each run's packing degree.
    overlap: Arc<crate::overlap::Overlap>,
    pub ffmpeg_threads: Option<u32>,
}

struct Observed {
    invocations: u64,
    failures: u64,
    oom_kills: u64,
    exec_seconds: Window,
    cpu_cores: Window,
    memory_bytes: Window,
    bytes_in: u64,
    bytes_out: u64,
}

pub struct ExecutorConfig {
    pub function: String,
    pub command: Vec<String>,
    pub scratch: PathBuf,
    /// The scratch disk's size in a pod (see `scratch_space`).
    pub scratch_limit: Option<u64>,
    pub timeout: Duration,
    /// Enforced by the runtime (the local mode has no cgroup); see `process::run`.
    pub memory_limit: Option<u64>,
    /// The container's OOM kill count, where there is one (a pod).
    pub oom_events: Option<crate::oom_events::OomEvents>,
    pub worker: crate::config::WorkerMode,
    pub instance: String,
    /// The next fused stage's runtime in this pod (see `InvokeRequest::then`).
    pub next: Option<String>,
    pub access: crate::access::Access,
    /// `VFLOW_FFMPEG_THREADS` for every invocation (see `cpu_share`); None: the
    /// function gets the runtime's own, or none.
    pub ffmpeg_threads: Option<u32>,
}

fn failure(phase: Phase, message: impl Into<String>, retryable: bool) -> InvokeFailure {
    InvokeFailure::new(phase, message, retryable)
}

/// A readable local name that keeps the extension (ffmpeg guesses formats from it)
/// and the input's position.
fn staged_name(index: usize, location: &Location) -> String {
    let clean: String = location
        .file_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let clean = clean.trim_start_matches('.');
    let clean = if clean.is_empty() { "input" } else { clean };
    format!("{index:03}-{clean}")
}

/// Files under `dir`, as sorted relative paths with '/' separators.
fn list_outputs(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                let path = entry.path();
                let rel = path
                    .strip_prefix(dir)
                    .map(|r| r.to_string_lossy().replace('\\', "/"))
                    .unwrap_or_default();
                found.push((rel, path));
            }
        }
    }
    found.sort();
    Ok(found)
}

impl Executor {
    pub fn new(config: ExecutorConfig, store: Store, metrics: RuntimeMetrics) -> Self {
        Self {
            function: config.function,
            command: config.command.clone(),
            scratch: config.scratch.clone(),
            timeout: config.timeout,
            memory_limit: config.memory_limit,
            oom_events: config.oom_events,
            resident: (config.worker == crate::config::WorkerMode::Resident).then(|| {
                crate::resident::Pool::new(config.command.clone(), config.scratch.clone())
            }),
            next: config.next,
            access: config.access,
            ffmpeg_threads: config.ffmpeg_threads,
            client: reqwest::Client::new(),
            store,
            instance: config.instance,
            metrics,
            observed: Mutex::new(Observed {
                invocations: 0,
                failures: 0,
                oom_kills: 0,
                exec_seconds: Window::new(1024),
                cpu_cores: Window::new(1024),
                memory_bytes: Window::new(1024),
                bytes_in: 0,
                bytes_out: 0,
            }),
            next_id: AtomicU64::new(0),
            space: ScratchSpace::new(config.scratch.clone(), config.scratch_limit),
            served: AtomicBool::new(false),
            cold_start: OnceLock::new(),
            cancel: Arc::new(AtomicBool::new(false)),
            overlap: Arc::new(crate::overlap::Overlap::new()),
        }
    }

    /// Records process start -> ready once.
    pub fn mark_ready(&self, cold_start_seconds: f64) {
        if self.cold_start.set(cold_start_seconds).is_ok() {
            self.metrics.cold_start.set(cold_start_seconds);
            self.metrics.ready.set(1);
        }
    }

    pub fn observations(&self) -> InstanceObservations {
        let observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        InstanceObservations {
            function: self.function.clone(),
            instance: self.instance.clone(),
            invocations: observed.invocations,
            failures: observed.failures,
            oom_kills: observed.oom_kills,
            cold_start_seconds: self.cold_start.get().copied(),
            exec_seconds: observed.exec_seconds.summary(),
            cpu_cores: observed.cpu_cores.summary(),
            memory_bytes: observed.memory_bytes.summary(),
            bytes_in: observed.bytes_in,
            bytes_out: observed.bytes_out,
        }
    }

    /// The outcome of this same work when an earlier attempt completed it (its
    /// completion record is there: same inputs, params and fused steps), e.g. one whose
    /// caller went away before the answer. Only under a prefix this runtime may write.
    pub async fn completed(&self, request: &InvokeRequest) -> Option<InvokeResponse> {
        let prefix = Location::parse(&request.output_prefix).ok()?;
        self.access.check_output_prefix(&prefix).ok()?;
        let bytes = self
            .store
            .get_bytes(&prefix.join(COMPLETION_RECORD))
            .await
            .ok()??;
        let previous: CompletionRecord = serde_json::from_slice(&bytes).ok()?;
        if !previous.request.same_work_as(request) {
            return None;
        }
        // Its outputs may still be in its attempt's directory (it stopped between the
        // record and the copies): finish that first, or run it again.
        let outputs = output_locations(&previous.response);
        if let Err(e) = attempts::promote(&self.store, &prefix, &previous.attempt, &outputs).await {
            tracing::warn!(error = %e, stage = %request.stage, "could not finish an earlier attempt's outputs: running it again");
            return None;
        }
        Some(previous.response)
    }

    pub async fn invoke(&self, request: InvokeRequest) -> Result<InvokeResponse, InvokeFailure> {
        let started = Instant::now();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .scratch
            .join(format!("inv-{}-{id}", std::process::id()));
        let result = self.invoke_in(&request, &dir, started).await;
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, dir = %dir.display(), "could not clean the scratch directory");
        }
        let outcome = match &result {
            Ok(_) => "succeeded",
            Err(f) => match f.phase {
                Phase::Request => "bad_request",
                Phase::Download => "failed_download",
                Phase::Function if f.exit == Some(Exit::TimedOut) => "timed_out",
                Phase::Function => "failed_function",
                Phase::Upload => "failed_upload",
            },
        };
        self.metrics.invocations.with_label_values(&[outcome]).inc();
        self.metrics
            .seconds
            .with_label_values(&["total"])
            .observe(started.elapsed().as_secs_f64());
        if let Ok(mut observed) = self.observed.lock() {
            observed.invocations += 1;
            if result.is_err() {
                observed.failures += 1;
            }
        }
        result
    }

    async fn invoke_in(
        &self,
        request: &InvokeRequest,
        dir: &Path,
        started: Instant,
    ) -> Result<InvokeResponse, InvokeFailure> {
        // Check everything about the request before doing any work.
        let refuse = |message: String| failure(Phase::Request, message, false);
        let inputs = request
            .inputs
            .iter()
            .map(|uri| {
                let location = Location::parse(uri).map_err(|e| refuse(e.to_string()))?;
                self.access.check_input(&location).map_err(refuse)?;
                Ok(location)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let prefix = Location::parse(&request.output_prefix)
            .map_err(|e| refuse(format!("outputPrefix: {e}")))?;
        self.access.check_output_prefix(&prefix).map_err(refuse)?;
        let params = request
            .params
            .iter()
            .map(|(name, value)| {
                render_param(name, value).map_err(|e| failure(Phase::Request, e, false))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let timeout = match request.timeout_seconds {
            Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s).min(self.timeout),
            Some(s) => {
                return Err(failure(
                    Phase::Request,
                    format!("timeoutSeconds {s} must be above 0"),
                    false,
                ));
            }
            None => self.timeout,
        };
        if !request.then.is_empty() && self.next.is_none() {
            return Err(failure(
                Phase::Request,
                format!(
                    "the request fuses {} after {}, but this instance runs no stage after it (no --next)",
                    request.then[0].stage, request.stage
                ),
                false,
            ));
        }

        let in_dir = dir.join("in");
        let out_dir = dir.join("out");
        // Filesystem steps are batched into one blocking call each: on a busy node every
        // hand-off to the blocking pool can wait a scheduler tick.
        {
            let (in_dir, out_dir) = (in_dir.clone(), out_dir.clone());
            tokio::task::spawn_blocking(move || {
                for d in [&in_dir, &out_dir] {
                    std::fs::create_dir_all(d)
                        .map_err(|e| format!("scratch directory {}: {e}", d.display()))?;
                }
                Ok::<_, String>(())
            })
            .await
            .map_err(|e| failure(Phase::Download, e.to_string(), true))?
            .map_err(|e| failure(Phase::Download, e, true))?;
        }

        // Room on the scratch disk for the inputs, before a byte is written.
        let _admission = self.admit_inputs(&inputs).await?;

        // Inputs, in parallel; each S3 object verified against its digest.
        let download_started = Instant::now();
        // Futures built first, then run a few at a time: a closure returning borrowing
        // futures inside the stream adaptor trips the compiler's Send inference.
        let downloads: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(index, location)| {
                let local = in_dir.join(staged_name(index, location));
                let store = self.store.clone();
                let location = location.clone();
                async move {
                    match store.fetch_input(&location, &local).await {
                        Ok(bytes) => Ok((local, bytes)),
                        Err(e) => Err(InvokeFailure {
                            input: Some(location.to_string()),
                            ..storage_failure(Phase::Download, &e)
                        }),
                    }
                }
            })
            .collect();
        let staged: Vec<(PathBuf, u64)> = stream::iter(downloads)
            .buffered(TRANSFER_CONCURRENCY)
            .try_collect()
            .await?;
        let download_seconds = download_started.elapsed().as_secs_f64();
        let bytes_in: u64 = staged.iter().map(|(_, b)| *b).sum();
        self.metrics
            .seconds
            .with_label_values(&["download"])
            .observe(download_seconds);
        self.metrics
            .bytes
            .with_label_values(&["in"])
            .inc_by(bytes_in);

        // The function, as argv.
        let metadata_path = dir.join("metadata.json");
        let mut argv = self.command.clone();
        argv.push("--output-dir".into());
        argv.push(out_dir.to_string_lossy().into_owned());
        argv.push("--metadata".into());
        argv.push(metadata_path.to_string_lossy().into_owned());
        for (path, _) in &staged {
            argv.push("--input".into());
            argv.push(path.to_string_lossy().into_owned());
        }
        argv.extend(params);
        let mut env = vec![
            ("VFLOW_RUN".to_string(), request.run.clone()),
            ("VFLOW_STAGE".to_string(), request.stage.clone()),
        ];
        if let Some(segment) = request.segment {
            env.push(("VFLOW_SEGMENT".to_string(), segment.to_string()));
        }
        if let Some(threads) = self.ffmpeg_threads {
            env.push((
                crate::cpu_share::THREADS_VAR.to_string(),
                threads.to_string(),
            ));
        }
        let cancel = self.cancel.clone();
        let cwd = dir.to_path_buf();
        let memory_limit = self.memory_limit;
        let overlap = self.overlap.clone();
        let entered = overlap.enter();
        let kills_before = self.oom_events.as_ref().and_then(|e| e.kills());
        let measured = match &self.resident {
            Some(pool) => {
                let limits = process::Limits {
                    timeout,
                    cancel: &cancel,
                    memory_limit,
                };
                pool.invoke(&argv[self.command.len()..], &env, limits).await
            }
            None => process::run(process::Spec {
                argv: &argv,
                cwd: &cwd,
                env: &env,
                timeout,
                cancel,
                memory_limit,
            })
            .await
            .map_err(|e| {
                format!(
                    "could not start {}: {e}",
                    self.command.first().map(String::as_str).unwrap_or("")
                )
            }),
        };
        let concurrency = overlap.leave(entered);
        let measured = measured.map_err(|e| failure(Phase::Function, e, false))?;
        // Killed for memory: the function itself by SIGKILL, or (a pod) any process of
        // it, by the container's count, when the function failed.
        let killed_in_cgroup = !measured.exit.success()
            && kills_before.is_some_and(|before| {
                self.oom_events
                    .as_ref()
                    .and_then(|e| e.kills())
                    .is_some_and(|after| after > before)
            });
        let oom = measured.exit == (Exit::Signal { signal: 9 }) || killed_in_cgroup;
        let function_seconds = measured.wall.as_secs_f64();
        self.metrics
            .seconds
            .with_label_values(&["function"])
            .observe(function_seconds);
        self.metrics
            .cpu_seconds
            .observe(measured.cpu_user_sys_seconds);
        self.metrics
            .peak_memory
            .observe(measured.peak_rss_bytes as f64);
        if let Ok(mut observed) = self.observed.lock() {
            // Every run of the function says something about its size, failed or not.
            observed.memory_bytes.push(measured.peak_rss_bytes as f64);
            if oom {
                observed.oom_kills += 1;
                self.metrics.oom_kills.inc();
            }
            if measured.exit.success() {
                observed.exec_seconds.push(function_seconds);
                if function_seconds > 0.0 {
                    observed
                        .cpu_cores
                        .push(measured.cpu_user_sys_seconds / function_seconds);
                }
            }
        }
        if !measured.exit.success() {
            let what = match &measured.exit {
                Exit::TimedOut => format!(
                    "the function ran past its timeout of {:.0}s",
                    timeout.as_secs_f64()
                ),
                Exit::Signal { signal: 9 } => format!(
                    "the function was killed (SIGKILL: out of memory?) on input {}",
                    request.inputs.join(", ")
                ),
                other if measured.worker_died && !oom => format!(
                    "the resident worker died in the middle of the invocation ({other}); the next one starts another"
                ),
                other if killed_in_cgroup => format!(
                    "the function failed ({other}): the OOM killer took one of its processes at the container's memory limit, on input {}",
                    request.inputs.join(", ")
                ),
                other => format!("the function failed ({other})"),
            };
            let last = measured
                .stderr_tail
                .lines()
                .last()
                .unwrap_or("")
                .to_string();
            let message = if last.is_empty() {
                what
            } else {
                format!("{what}: {last}")
            };
            // A timeout or a signal from outside (the pod going) may pass; a SIGKILL
            // is the memory limit's, and the same input needs the same memory again.
            // A worker that died took the invocation with it: another worker may
            // serve it (the worker's own exit is not one the function answered).
            let lost_worker = measured.worker_died && !oom;
            let retryable = !oom
                && (lost_worker
                    || matches!(
                        measured.exit,
                        Exit::TimedOut | Exit::Signal { .. } | Exit::Cancelled
                    ));
            return Err(InvokeFailure {
                exit: (!lost_worker).then(|| measured.exit.clone()),
                stderr_tail: measured.stderr_tail.clone(),
                input: oom.then(|| request.inputs.join(", ")),
                oom_killed: oom,
                ..failure(Phase::Function, message, retryable)
            });
        }

        if !request.then.is_empty() {
            let handed = HandedOff {
                concurrency,
                bytes_in,
                download_seconds,
                function_seconds,
                measured: &measured,
            };
            return self
                .hand_off(request, &prefix, &out_dir, &metadata_path, handed, started)
                .await;
        }

        // Outputs into this attempt's own directory, then the completion record, then
        // the outputs to their names (see `vflow_storage::attempts`).
        let upload_started = Instant::now();
        let (metadata, files) = function_results(&out_dir, &metadata_path).await?;
        let attempt = attempts::new_attempt_id();
        let staged_dir = attempts::attempt_dir(&prefix, &attempt);
        let uploads: Vec<_> = files
            .into_iter()
            .map(|(rel, path)| {
                let target = prefix.join(&rel);
                let staged = staged_dir.join(&rel);
                let store = self.store.clone();
                async move {
                    // The function's output folder goes with the invocation: the
                    // file is moved into a local store rather than copied.
                    match store.upload_owned(&path, &staged).await {
                        Ok(t) => Ok((
                            OutputObject {
                                uri: target.to_string(),
                                bytes: t.bytes,
                                sha256: t.sha256,
                            },
                            staged,
                        )),
                        Err(e) => Err((target, staged, e)),
                    }
                }
            })
            .collect();
        let uploads: Vec<StagedUpload> = stream::iter(uploads)
            .buffered(TRANSFER_CONCURRENCY)
            .collect()
            .await;
        let mut outputs = Vec::new();
        let mut staged = Vec::new();
        let mut first_error = None;
        for upload in uploads {
            match upload {
                Ok((output, at)) => {
                    outputs.push(output);
                    staged.push(at);
                }
                Err((target, at, e)) => {
                    // Half an object may be there (a multipart upload is aborted, a
                    // local copy is not): this attempt's own, so it goes too.
                    staged.push(at);
                    first_error.get_or_insert((target, e));
                }
            }
        }
        if let Some((target, e)) = first_error {
            attempts::discard(&self.store, &prefix, &attempt, &staged).await;
            return Err(InvokeFailure {
                input: Some(target.to_string()),
                ..storage_failure(Phase::Upload, &e)
            });
        }
        let bytes_out: u64 = outputs.iter().map(|o| o.bytes).sum();
        let upload_seconds = upload_started.elapsed().as_secs_f64();

        let cold = !self.served.swap(true, Ordering::SeqCst);
        let response = InvokeResponse {
            outputs,
            metadata,
            bytes_in,
            bytes_out,
            wall_seconds: 0.0,
            download_seconds,
            function_seconds,
            upload_seconds,
            cpu_seconds: measured.cpu_user_sys_seconds,
            peak_rss_bytes: measured.peak_rss_bytes,
            cold,
            cold_start_seconds: if cold {
                self.cold_start.get().copied()
            } else {
                None
            },
            exit: measured.exit,
            instance: self.instance.clone(),
            usage: measured.usage.clone(),
            concurrency,
            chained: Vec::new(),
        };
        let (mut response, ours) = self
            .commit(request, response, &prefix, &attempt, &staged)
            .await?;
        // The upload step ends when the outputs are at their names (the copies
        // included); the record, written before them, has the time to the record.
        let upload_seconds = upload_started.elapsed().as_secs_f64();
        if ours {
            response.upload_seconds = upload_seconds;
        }
        self.metrics
            .seconds
            .with_label_values(&["upload"])
            .observe(upload_seconds);
        self.metrics
            .bytes
            .with_label_values(&["out"])
            .inc_by(bytes_out);
        if let Ok(mut observed) = self.observed.lock() {
            observed.bytes_in += bytes_in;
            observed.bytes_out += bytes_out;
        }
        Ok(InvokeResponse {
            wall_seconds: started.elapsed().as_secs_f64(),
            ..response
        })
    }

    /// A fused chain's first steps: the outputs stay on the scratch volume, which the
    /// next runtime of the pod shares, and it gets them as local inputs. Only the last
    /// step uploads; this one writes the completion record of the whole chain (under
    /// its own prefix) once the rest succeeded, so a resumed run reuses the chain.
    async fn hand_off(
        &self,
        request: &InvokeRequest,
        prefix: &Location,
        out_dir: &Path,
        metadata_path: &Path,
        handed: HandedOff<'_>,
        started: Instant,
    ) -> Result<InvokeResponse, InvokeFailure> {
        let next_url = self.next.clone().unwrap_or_default();
        let (metadata, files) = function_results(out_dir, metadata_path).await?;
        let bytes_out: u64 = files
            .iter()
            .filter_map(|(_, path)| std::fs::metadata(path).ok())
            .map(|m| m.len())
            .sum();
        let inputs = files
            .iter()
            .map(|(_, path)| path.to_string_lossy().into_owned())
            .collect();
        let Some(next_request) = request.next_step(inputs) else {
            return Err(failure(Phase::Request, "nothing to hand off to", false));
        };
        let next_stage = next_request.stage.clone();
        let handoff_started = Instant::now();
        let mut post = self.client.post(format!("{next_url}/invoke"));
        if let Some(token) = &self.access.token {
            // The pod's runtimes share the workflow's token.
            post = post.bearer_auth(token);
        }
        let sent = post.json(&next_request).send().await.map_err(|e| {
            failure(
                Phase::Upload,
                format!("fused stage {next_stage}: its runtime at {next_url} did not answer: {e}"),
                true,
            )
        })?;
        let status = sent.status();
        let body = sent.bytes().await.map_err(|e| {
            failure(
                Phase::Upload,
                format!("fused stage {next_stage}: reading its answer: {e}"),
                true,
            )
        })?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(ErrorBody { error }) => InvokeFailure {
                    message: format!("fused stage {next_stage}: {}", error.message),
                    ..error
                },
                Err(_) => failure(
                    Phase::Upload,
                    format!(
                        "fused stage {next_stage}: its runtime answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    ),
                    true,
                ),
            });
        }
        let mut next: InvokeResponse = serde_json::from_slice(&body).map_err(|e| {
            failure(
                Phase::Upload,
                format!(
                    "fused stage {next_stage}: an answer that is not an invocation result: {e}"
                ),
                true,
            )
        })?;
        let mut chained = vec![];
        let rest = std::mem::take(&mut next.chained);
        chained.push(next);
        chained.extend(rest);
        let cold = !self.served.swap(true, Ordering::SeqCst);
        let measured = handed.measured;
        let response = InvokeResponse {
            outputs: Vec::new(),
            metadata,
            bytes_in: handed.bytes_in,
            bytes_out,
            wall_seconds: started.elapsed().as_secs_f64(),
            download_seconds: handed.download_seconds,
            function_seconds: handed.function_seconds,
            upload_seconds: 0.0,
            cpu_seconds: measured.cpu_user_sys_seconds,
            peak_rss_bytes: measured.peak_rss_bytes,
            cold,
            cold_start_seconds: if cold {
                self.cold_start.get().copied()
            } else {
                None
            },
            exit: measured.exit.clone(),
            instance: self.instance.clone(),
            usage: measured.usage.clone(),
            concurrency: handed.concurrency,
            chained,
        };
        // The chain's outputs were committed by its last step, under its own prefix:
        // this record stages nothing of its own.
        let attempt = attempts::new_attempt_id();
        let (response, _) = self
            .commit(request, response, prefix, &attempt, &[])
            .await?;
        tracing::debug!(stage = %request.stage, next = %next_stage, seconds = handoff_started.elapsed().as_secs_f64(), "fused chain done");
        if let Ok(mut observed) = self.observed.lock() {
            observed.bytes_in += handed.bytes_in;
        }
        Ok(response)
    }

    /// Chooses an attempt: writes the completion record only if none is there. The
    /// attempt that wrote it has its staged outputs copied to their names and answers
    /// with its own response; one that finds the same work already recorded drops its
    /// own objects and answers with the recorded outcome, so the work completes once.
    /// Nothing at the outputs' names is ever removed. The answer, and whether it is
    /// this attempt's own.
    async fn commit(
        &self,
        request: &InvokeRequest,
        response: InvokeResponse,
        prefix: &Location,
        attempt: &str,
        staged: &[Location],
    ) -> Result<(InvokeResponse, bool), InvokeFailure> {
        let record = CompletionRecord {
            request: request.clone(),
            response,
            attempt: attempt.to_string(),
        };
        let record_bytes = serde_json::to_vec_pretty(&record).map_err(|e| {
            failure(
                Phase::Upload,
                format!("encoding the completion record: {e}"),
                false,
            )
        })?;
        let at = prefix.join(COMPLETION_RECORD);
        let outputs = output_locations(&record.response);
        // A record of other work (the run started over with other inputs) is stale:
        // it goes, and the write is tried again (twice at most; a third conflict is
        // two new attempts racing, and the next read settles it).
        for _ in 0..3 {
            let written = self
                .store
                .put_bytes_if_absent(&at, record_bytes.clone())
                .await;
            let won = match written {
                Ok(won) => won,
                Err(e) => {
                    attempts::discard(&self.store, prefix, attempt, staged).await;
                    return Err(storage_failure(Phase::Upload, &e));
                }
            };
            if won {
                return self
                    .promoted(prefix, attempt, &outputs)
                    .await
                    .map(|()| (record.response, true));
            }
            let existing = self.store.get_bytes(&at).await;
            let existing = match existing {
                Ok(Some(bytes)) => serde_json::from_slice::<CompletionRecord>(&bytes).ok(),
                Ok(None) => continue,
                Err(e) => {
                    attempts::discard(&self.store, prefix, attempt, staged).await;
                    return Err(storage_failure(Phase::Upload, &e));
                }
            };
            match existing {
                // Our own write, whose answer was lost and the SDK sent again.
                Some(existing) if existing.attempt == attempt => {
                    return self
                        .promoted(prefix, attempt, &outputs)
                        .await
                        .map(|()| (record.response, true));
                }
                Some(existing) if existing.request.same_work_as(request) => {
                    attempts::discard(&self.store, prefix, attempt, staged).await;
                    tracing::info!(stage = %request.stage, attempt = %existing.attempt, "another attempt completed this work first: its outcome stands");
                    let theirs = output_locations(&existing.response);
                    self.promoted(prefix, &existing.attempt, &theirs).await?;
                    return Ok((existing.response, false));
                }
                _ => {
                    if let Err(e) = self.store.delete(&at).await {
                        attempts::discard(&self.store, prefix, attempt, staged).await;
                        return Err(storage_failure(Phase::Upload, &e));
                    }
                }
            }
        }
        attempts::discard(&self.store, prefix, attempt, staged).await;
        Err(failure(
            Phase::Upload,
            format!("{at}: other attempts kept writing the completion record"),
            true,
        ))
    }

    /// The chosen attempt's objects to their names. A failure here leaves the record
    /// and the attempt's objects, and whoever reads the record next finishes it.
    async fn promoted(
        &self,
        prefix: &Location,
        attempt: &str,
        outputs: &[Location],
    ) -> Result<(), InvokeFailure> {
        attempts::promote(&self.store, prefix, attempt, outputs)
            .await
            .map_err(|e| storage_failure(Phase::Upload, &e))
    }
}

/// One output uploaded into an attempt's directory (the output, where it was staged),
/// or why not (its name, where it was being staged, the error).
type StagedUpload = Result<(OutputObject, Location), (Location, Location, StorageError)>;

/// Where a response says its outputs are.
fn output_locations(response: &InvokeResponse) -> Vec<Location> {
    response
        .outputs
        .iter()
        .filter_map(|o| Location::parse(&o.uri).ok())
        .collect()
}

/// A successful function's metadata file and output files (sorted relative paths),
/// read off the async threads.
async fn function_results(
    out_dir: &Path,
    metadata_path: &Path,
) -> Result<
    (
        serde_json::Map<String, serde_json::Value>,
        Vec<(String, PathBuf)>,
    ),
    InvokeFailure,
> {
    let (out_dir, metadata_path) = (out_dir.to_path_buf(), metadata_path.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let metadata = read_metadata(&metadata_path)?;
        let files = list_outputs(&out_dir).map_err(|e| {
            failure(
                Phase::Upload,
                format!("reading the output directory: {e}"),
                true,
            )
        })?;
        Ok::<_, InvokeFailure>((metadata, files))
    })
    .await
    .map_err(|e| failure(Phase::Upload, e.to_string(), true))?
}

/// What the first step of a fused chain measured before it hands off.
struct HandedOff<'a> {
    concurrency: f64,
    bytes_in: u64,
    download_seconds: f64,
    function_seconds: f64,
    measured: &'a process::Measured,
}

impl Executor {
    /// Sizes the inputs and admits them to the scratch disk; a refusal names the
    /// largest input. Inputs whose size cannot be read are left to the download,
    /// which says why.
    async fn admit_inputs(
        &self,
        inputs: &[Location],
    ) -> Result<crate::scratch_space::Admission, InvokeFailure> {
        // Futures built first (owned), then run a few at a time (see the downloads).
        let lookups: Vec<_> = inputs
            .iter()
            .map(|location| {
                let store = self.store.clone();
                let location = location.clone();
                async move {
                    match store.size(&location).await {
                        Ok(size) => Ok((size.unwrap_or(0), location)),
                        Err(e) => Err(InvokeFailure {
                            input: Some(location.to_string()),
                            ..storage_failure(Phase::Download, &e)
                        }),
                    }
                }
            })
            .collect();
        let sizes: Vec<(u64, Location)> = stream::iter(lookups)
            .buffered(TRANSFER_CONCURRENCY)
            .try_collect()
            .await?;
        let need: u64 = sizes.iter().map(|(b, _)| *b).sum();
        let space = Arc::clone(&self.space);
        let admitted = tokio::task::spawn_blocking(move || space.admit(need))
            .await
            .map_err(|e| failure(Phase::Download, e.to_string(), true))?;
        admitted.map_err(|no_room| {
            let largest = sizes
                .iter()
                .max_by_key(|(b, _)| *b)
                .map(|(_, l)| l.to_string())
                .unwrap_or_default();
            let named = match sizes.len() {
                1 => format!("input {largest}"),
                n => format!("inputs {largest} and {} more", n - 1),
            };
            InvokeFailure {
                input: Some(largest),
                ..failure(
                    Phase::Download,
                    no_room.describe(&named),
                    no_room.retryable(),
                )
            }
        })
    }
}

fn storage_failure(phase: Phase, err: &StorageError) -> InvokeFailure {
    let retryable = match err {
        StorageError::NotFound { .. } | StorageError::BadUri { .. } | StorageError::NoS3 { .. } => {
            false
        }
        StorageError::DiskFull { .. } => true,
        other => other.is_transient(),
    };
    let message = match (phase, err) {
        (Phase::Download, StorageError::DiskFull { .. }) => {
            format!("the scratch disk is full: {err}")
        }
        (Phase::Download, StorageError::NotFound { .. }) => format!("input missing: {err}"),
        _ => err.to_string(),
    };
    failure(phase, message, retryable)
}

fn read_metadata(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>, InvokeFailure> {
    let size = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => {
            return Err(failure(
                Phase::Function,
                format!("metadata file: {e}"),
                false,
            ));
        }
    };
    if size > MAX_METADATA_BYTES {
        return Err(failure(
            Phase::Function,
            format!(
                "the function's metadata file is {size} bytes; the limit is {MAX_METADATA_BYTES}"
            ),
            false,
        ));
    }
    let text = std::fs::read(path)
        .map_err(|e| failure(Phase::Function, format!("metadata file: {e}"), false))?;
    match serde_json::from_slice::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(failure(
            Phase::Function,
            "the function's metadata is not a JSON object",
            false,
        )),
        Err(e) => Err(failure(
            Phase::Function,
            format!("the function's metadata is not JSON: {e}"),
            false,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_names_keep_order_and_extension() {
        let s3 = Location::parse("s3://videos/in/My Clip (1).mp4");
        assert_eq!(
            s3.map(|l| staged_name(2, &l)).ok().as_deref(),
            Some("002-My_Clip__1_.mp4")
        );
        let hidden = Location::parse("/data/..hidden");
        assert_eq!(
            hidden.map(|l| staged_name(0, &l)).ok().as_deref(),
            Some("000-hidden")
        );
    }
}
