//! Resident workers: a function whose profile says `worker: Resident` runs as
//! long-lived processes that serve one invocation after another, so what it loads (a
//! model) is loaded once, when the worker starts (the instance's warm-up), not on every
//! call. ffmpeg functions keep the default: a process per invocation.
//!
//! The protocol is JSON lines. The runtime starts `<command> --resident`; the worker
//! loads, then answers `{"ready": true}` (or exits, saying why on stderr). For each
//! invocation the runtime writes `{"argv": [...], "env": {...}}`: what a per-process run
//! gets after the command, and the invocation's own variables. The worker answers
//! `{"exit": N, "stderr": "..."}`: the exit status the function would have had, and
//! what it wrote to stderr meanwhile. Whatever else it prints goes to its stderr.
//!
//! An instance has at most one worker per slot (its concurrency), each serving one
//! invocation at a time, so every invocation is measured on its own worker's tree: CPU
//! from the worker's total before it, memory as sampled meanwhile (the loaded model
//! included). A timeout, a cancellation or the memory limit kills the worker's process
//! group; a worker that dies is not reused, and the next invocation starts another.
//! Batching frames across the invocations of several slots is not done.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::process::{self, Exit, GroupGuard, Limits, Measured};
use crate::tail::Tail;

/// The argument that starts a function as a resident worker.
pub const RESIDENT_FLAG: &str = "--resident";

/// One answer line is at most this long (the stderr tail it carries is short).
const MAX_ANSWER: usize = 1 << 20;

#[derive(Serialize)]
struct Request<'a> {
    argv: &'a [String],
    env: BTreeMap<&'a str, &'a str>,
}

#[derive(Deserialize)]
struct Ready {
    ready: bool,
}

#[derive(Deserialize)]
struct Answer {
    exit: i32,
    #[serde(default)]
    stderr: String,
}

struct Worker {
    child: Child,
    pid: i32,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// The worker's stderr outside the invocations' answers (start-up, a crash).
    stderr: Tail,
    _group: GroupGuard,
}

impl Worker {
    /// The next line the worker writes; None once its stdout has closed (it exited).
    async fn line(&mut self) -> Option<String> {
        match self.stdout.next_line().await {
            Ok(Some(line)) if line.len() <= MAX_ANSWER => Some(line),
            _ => None,
        }
    }
}

/// The workers of one instance.
pub struct Pool {
    command: Vec<String>,
    cwd: PathBuf,
    idle: Mutex<Vec<Worker>>,
    /// Workers started so far (a restart after a timeout or a crash counts).
    pub started: AtomicU64,
}

impl Pool {
    pub fn new(command: Vec<String>, cwd: PathBuf) -> Self {
        Self {
            command,
            cwd,
            idle: Mutex::new(Vec::new()),
            started: AtomicU64::new(0),
        }
    }

    /// Starts a worker and waits (up to `timeout`) until it says it has loaded; on
    /// failure, why, with its stderr.
    async fn start(&self, timeout: Duration, cancel: &AtomicBool) -> Result<Worker, String> {
        let (program, args) = self
            .command
            .split_first()
            .ok_or_else(|| "the function has no command".to_string())?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .arg(RESIDENT_FLAG)
            .current_dir(&self.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .env_clear()
            .envs(crate::function_env::for_function(&[]));
        let mut child = command
            .spawn()
            .map_err(|e| format!("could not start {program}: {e}"))?;
        self.started.fetch_add(1, Ordering::Relaxed);
        let pid = child.id().unwrap_or_default() as i32;
        let group = GroupGuard(pid);
        let stderr = Tail::new(40);
        if let Some(pipe) = child.stderr.take() {
            let tail = stderr.clone();
            tokio::spawn(async move { tail.drain_async(pipe).await });
        }
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the worker's pipes could not be opened".into());
        };
        let mut worker = Worker {
            child,
            pid,
            stdin,
            stdout: BufReader::new(stdout).lines(),
            stderr,
            _group: group,
        };
        let started = Instant::now();
        let ready = loop {
            tokio::select! {
                line = worker.line() => break line,
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    if cancel.load(Ordering::Relaxed) || started.elapsed() > timeout {
                        break None;
                    }
                }
            }
        };
        match ready.and_then(|l| serde_json::from_str::<Ready>(&l).ok()) {
            Some(Ready { ready: true }) => Ok(worker),
            _ => {
                let waited = started.elapsed();
                drop(worker._group);
                let status = worker.child.wait().await.ok();
                // Let the stderr reader take what the worker wrote before it ended.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let how = match status.map(process::exit_of_status) {
                    Some(exit) if waited <= timeout => format!("it exited ({exit})"),
                    _ => format!("it was not ready within {timeout:?}"),
                };
                Err(format!(
                    "the resident worker did not start: {how}: {}",
                    worker.stderr.text()
                ))
            }
        }
    }

    /// An idle worker, else a new one.
    async fn take(&self, timeout: Duration, cancel: &AtomicBool) -> Result<Worker, String> {
        let idle = self.idle.lock().map(|mut w| w.pop()).unwrap_or(None);
        match idle {
            Some(w) => Ok(w),
            None => self.start(timeout, cancel).await,
        }
    }

    /// Starts one worker and keeps it idle: the instance's warm-up.
    pub async fn warm_up(&self, timeout: Duration, cancel: &AtomicBool) -> Result<(), String> {
        let worker = self.start(timeout, cancel).await?;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(worker);
        }
        Ok(())
    }

    /// Runs one invocation on a worker: `args` are what follows the command in a
    /// per-process run, `env` the invocation's own variables.
    pub async fn invoke(
        &self,
        args: &[String],
        env: &[(String, String)],
        limits: Limits<'_>,
    ) -> Result<Measured, String> {
        let mut worker = self.take(limits.timeout, limits.cancel).await?;
        let request = Request {
            argv: args,
            env: env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
        };
        let mut line = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        line.push(b'\n');
        let started = Instant::now();
        let (cpu_base, _, _) = process::tree_usage(worker.pid, false);
        if let Err(e) = worker.stdin.write_all(&line).await {
            return Err(format!(
                "the resident worker did not take the invocation: {e}"
            ));
        }
        let _ = worker.stdin.flush().await;
        let pid = worker.pid;
        let (watched, answer) =
            process::watch_tree(pid, started, worker.line(), limits, cpu_base, false).await;
        let (cpu_now, _, _) = process::tree_usage(pid, false);
        let cpu = (cpu_now - cpu_base).max(0.0);
        let parsed = answer
            .as_deref()
            .map(|l| serde_json::from_str::<Answer>(l).map_err(|_| l.to_string()));
        if let (None, Some(Ok(answer))) = (&watched.forced, &parsed) {
            let exit = Exit::Code { code: answer.exit };
            let stderr = answer.stderr.clone();
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(worker);
            }
            return Ok(watched.measured(exit, cpu, stderr));
        }
        // Killed, gone, or no longer speaking the protocol: the worker goes.
        let forced = watched.forced.clone();
        let exit = match (&forced, &parsed) {
            (Some(forced), _) => forced.clone(),
            // Its stdout closed: it is exiting; how it ended is the worker's exit.
            (None, None) => {
                match tokio::time::timeout(Duration::from_secs(2), worker.child.wait()).await {
                    Ok(Ok(status)) => process::exit_of_status(status),
                    _ => Exit::Code { code: -1 },
                }
            }
            (None, Some(_)) => Exit::Code { code: -1 },
        };
        drop(worker._group);
        let _ = worker.child.wait().await;
        // Let the stderr reader take what the worker wrote before it ended.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut tail = worker.stderr.text();
        if let Some(Err(line)) = &parsed {
            let line: String = line.chars().take(200).collect();
            tail.push_str(&format!(
                "\nvflow-runtime: the worker wrote {line:?} where an answer was due (it must print to stderr); stopped"
            ));
        }
        let mut measured = watched.measured(exit, cpu, tail);
        measured.worker_died = forced.is_none();
        Ok(measured)
    }
}
