//! Runs a function's command (argv, never a shell) and measures its process tree.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

use crate::proc_stats;
use crate::tail::Tail;

pub use vflow_contract::exit::Exit;
use vflow_contract::invocation::{USAGE_SLICES, UsageSlice};

/// One look at the tree: seconds since spawn, CPU seconds so far, summed RSS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TreeSample {
    pub at: f64,
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

/// The samples of a run as `slices` equal slices of `wall`: the cores used in each
/// (CPU seconds gained across the slice over its length, from the samples around its
/// edges) and the largest RSS seen in it. `final_cpu` is the CPU total at the exit.
pub fn usage_slices(
    samples: &[TreeSample],
    wall: f64,
    final_cpu: f64,
    slices: usize,
) -> Vec<UsageSlice> {
    if samples.is_empty() || wall <= 0.0 || slices == 0 {
        return Vec::new();
    }
    // A run seen only a few times cannot be cut finer than its samples.
    let slices = slices.min(samples.len()).max(1);
    let mut points: Vec<(f64, f64)> = vec![(0.0, 0.0)];
    points.extend(samples.iter().map(|s| (s.at, s.cpu_seconds)));
    points.push((
        wall,
        final_cpu.max(samples.last().map_or(0.0, |s| s.cpu_seconds)),
    ));
    // CPU seconds at time t, linear between samples; never decreasing.
    let cpu_at = |t: f64| -> f64 {
        let mut best = 0.0f64;
        for w in points.windows(2) {
            let ((t0, c0), (t1, c1)) = (w[0], w[1]);
            if t >= t0 && t <= t1 {
                let f = if t1 > t0 { (t - t0) / (t1 - t0) } else { 1.0 };
                return (c0 + f * (c1 - c0)).max(best);
            }
            best = best.max(c1);
        }
        best
    };
    let width = wall / slices as f64;
    (0..slices)
        .map(|i| {
            let (from, to) = (i as f64 * width, (i + 1) as f64 * width);
            let rss = samples
                .iter()
                .filter(|s| s.at >= from && s.at < to)
                .map(|s| s.rss_bytes)
                .max()
                // A slice between two samples holds what the one before it saw.
                .or_else(|| {
                    samples
                        .iter()
                        .rev()
                        .find(|s| s.at < from)
                        .map(|s| s.rss_bytes)
                })
                .unwrap_or(0);
            UsageSlice {
                cpu_cores: ((cpu_at(to) - cpu_at(from)) / width).max(0.0),
                rss_bytes: rss,
            }
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct Measured {
    pub exit: Exit,
    /// From spawn to the exit being seen.
    pub wall: Duration,
    pub cpu_user_sys_seconds: f64,
    /// The largest sum of resident memory seen across the tree, or the largest single
    /// process's high-water mark, whichever is larger.
    pub peak_rss_bytes: u64,
    pub stderr_tail: String,
    /// CPU and memory over the run, in up to `USAGE_SLICES` equal slices.
    pub usage: Vec<UsageSlice>,
    /// A resident worker ended in the middle of the invocation (not killed by the
    /// runtime): `exit` is the worker's, not an answer of the function's.
    pub worker_died: bool,
}

pub struct Spec<'a> {
    pub argv: &'a [String],
    pub cwd: &'a Path,
    /// Set for the function on top of the passing part of the runtime's environment
    /// (`function_env`).
    pub env: &'a [(String, String)],
    pub timeout: Duration,
    pub cancel: Arc<AtomicBool>,
    /// Bytes of resident memory the whole tree may use; see `run`.
    pub memory_limit: Option<u64>,
}

/// How often the tree's memory is sampled: often at first (short functions), then
/// less (long encodes need no 10 ms resolution).
fn sample_interval(elapsed: Duration) -> Duration {
    if elapsed < Duration::from_secs(1) {
        Duration::from_millis(10)
    } else {
        Duration::from_millis(100)
    }
}

/// A size for people: whole MiB when exact, else one decimal; bytes below 1 MiB.
fn mib(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes < MIB {
        format!("{bytes} bytes")
    } else if bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    }
}

/// Runs the function to its end, supervised on the async runtime: no thread is held
/// per running function (its exit is a pidfd becoming readable, its pipes are read by
/// tasks, its tree is sampled between timer ticks), so a thousand invocations at once
/// cost a thousand small tasks. Dropping the future kills the process group.
///
/// With `memory_limit`, the tree is SIGKILLed as soon as a sample's summed RSS is over
/// it and the exit is `Signal { signal: 9 }`, as the OOM killer of a pod's cgroup
/// would do: the local stand-in for that limit. It is a sampling guard, so a spike
/// shorter than the sample interval can escape it; summed RSS counts shared pages
/// once per process, so it errs toward killing.
pub async fn run(spec: Spec<'_>) -> std::io::Result<Measured> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("the function has no command"))?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills ffmpeg too, not only the wrapper.
        .process_group(0);
    // A clean environment: the runtime's settings and credentials stay with it.
    command
        .env_clear()
        .envs(crate::function_env::for_function(spec.env));
    let started = Instant::now();
    let mut child = command.spawn()?;
    let pid = child.id().unwrap_or_default() as i32;
    let group = GroupGuard(pid);

    let stderr = Tail::new(40);
    let stdout = Tail::new(10);
    let mut readers = Vec::new();
    if let Some(pipe) = child.stderr.take() {
        let tail = stderr.clone();
        readers.push(tokio::spawn(async move { tail.drain_async(pipe).await }));
    }
    if let Some(pipe) = child.stdout.take() {
        let tail = stdout.clone();
        readers.push(tokio::spawn(async move { tail.drain_async(pipe).await }));
    }

    // Waits without reaping, so /proc/<pid>/stat still holds the final CPU times.
    let (watched, ()) = watch_tree(
        pid,
        started,
        exit_of(pid),
        Limits {
            timeout: spec.timeout,
            cancel: &spec.cancel,
            memory_limit: spec.memory_limit,
        },
        0.0,
        true,
    )
    .await;
    let final_stat = proc_stats::sample(pid);
    let status = child.wait().await?;
    // Whatever the function left running in its group goes with it (and so the pipes
    // close for the readers).
    drop(group);
    for reader in readers {
        let _ = reader.await;
    }

    let exit = watched
        .forced
        .clone()
        .unwrap_or_else(|| exit_of_status(status));
    let cpu = final_stat
        .map(|s| s.cpu_seconds + s.children_cpu_seconds)
        .unwrap_or(0.0);
    let mut stderr_tail = stderr.text();
    if stderr_tail.is_empty() {
        stderr_tail = stdout.text();
    }
    Ok(watched.measured(exit, cpu, stderr_tail))
}

/// How a process ended, from its wait status.
pub fn exit_of_status(status: std::process::ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code { code },
        (None, Some(signal)) => Exit::Signal { signal },
        (None, None) => Exit::Code { code: -1 },
    }
}

/// When supervision kills a tree: its timeout, a cancellation, a memory limit.
pub struct Limits<'a> {
    pub timeout: Duration,
    pub cancel: &'a AtomicBool,
    pub memory_limit: Option<u64>,
}

/// What watching a tree until its work was done saw.
pub struct Watched {
    started: Instant,
    ended: Instant,
    samples: Vec<TreeSample>,
    peak_sum: u64,
    peak_single: u64,
    /// Set when the tree was killed: by a timeout, a cancellation, the memory limit.
    pub forced: Option<Exit>,
    /// The summed RSS that broke the memory limit, and the limit.
    over_limit: Option<(u64, u64)>,
}

impl Watched {
    /// The measurement of the work, given how it ended, its CPU seconds at the end and
    /// its stderr tail.
    pub fn measured(self, exit: Exit, cpu: f64, mut stderr_tail: String) -> Measured {
        if let Some((used, limit)) = self.over_limit {
            if !stderr_tail.is_empty() {
                stderr_tail.push('\n');
            }
            stderr_tail.push_str(&format!(
                "vflow-runtime: killed: the function's processes used {}, over the memory limit of {}",
                mib(used),
                mib(limit)
            ));
        }
        let wall = self.ended.duration_since(self.started);
        Measured {
            exit,
            wall,
            cpu_user_sys_seconds: cpu,
            peak_rss_bytes: self.peak_sum.max(self.peak_single),
            stderr_tail,
            usage: usage_slices(&self.samples, wall.as_secs_f64(), cpu, USAGE_SLICES),
            worker_died: false,
        }
    }
}

/// CPU seconds (its own and its reaped children's) and summed RSS of the tree under
/// `pid` now, and with `high_water` the largest single process's peak (VmHWM). One
/// walk of the tree: this runs every 10 ms at first.
pub fn tree_usage(pid: i32, high_water: bool) -> (f64, u64, u64) {
    let (mut cpu, mut rss, mut hwm) = (0.0, 0, 0);
    for member in proc_stats::tree(pid) {
        if let Some(s) = proc_stats::sample(member) {
            rss += s.rss_bytes;
            cpu += s.cpu_seconds + s.children_cpu_seconds;
        }
        if high_water && let Some(peak) = proc_stats::peak_rss(member) {
            hwm = hwm.max(peak);
        }
    }
    (cpu, rss, hwm)
}

/// Samples the tree under `pid` until `done` resolves (returning its output), killing its process group (as
/// `limits` say) when it runs too long, is cancelled or uses too much memory; the
/// kill must make `done` resolve. CPU is counted from `cpu_base` (what the tree had
/// used before this work); `high_water` adds each process's own peak (VmHWM), right
/// for a tree that lives only for this work.
pub async fn watch_tree<T>(
    pid: i32,
    started: Instant,
    done: impl std::future::Future<Output = T>,
    limits: Limits<'_>,
    cpu_base: f64,
    high_water: bool,
) -> (Watched, T) {
    let mut done = std::pin::pin!(done);
    let mut peak_sum = 0u64;
    let mut peak_single = 0u64;
    let mut samples: Vec<TreeSample> = Vec::new();
    let mut forced: Option<Exit> = None;
    let mut over_limit: Option<(u64, u64)> = None;
    let (ended, output) = loop {
        let interval = sample_interval(started.elapsed());
        tokio::select! {
            output = &mut done => break (Instant::now(), output),
            () = tokio::time::sleep(interval) => {}
        }
        let (cpu, sum, hwm) = tree_usage(pid, high_water);
        peak_single = peak_single.max(hwm);
        let cpu = (cpu - cpu_base).max(0.0);
        peak_sum = peak_sum.max(sum);
        // Bounded: long runs keep every other sample once there are many.
        if samples.len() >= 4096 {
            let kept: Vec<TreeSample> = samples.iter().step_by(2).copied().collect();
            samples = kept;
        }
        samples.push(TreeSample {
            at: started.elapsed().as_secs_f64(),
            // The tree only grows in CPU time (a reaped child moves into its parent).
            cpu_seconds: samples.last().map_or(cpu, |l| l.cpu_seconds.max(cpu)),
            rss_bytes: sum,
        });
        if forced.is_none() {
            if limits.cancel.load(Ordering::Relaxed) {
                forced = Some(Exit::Cancelled);
            } else if started.elapsed() > limits.timeout {
                forced = Some(Exit::TimedOut);
            } else if let Some(limit) = limits.memory_limit.filter(|limit| sum > *limit) {
                over_limit = Some((sum, limit));
                forced = Some(Exit::Signal { signal: 9 });
            }
            if forced.is_some() {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    };
    let watched = Watched {
        started,
        ended,
        samples,
        peak_sum,
        peak_single,
        forced,
        over_limit,
    };
    (watched, output)
}

/// SIGKILLs the function's process group when dropped: at the end of `run`, and when
/// the future supervising it is dropped (nothing is left running unsupervised).
pub struct GroupGuard(pub i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.0 > 0 {
            let _ = killpg(Pid::from_raw(self.0), Signal::SIGKILL);
        }
    }
}

/// Resolves when process `pid` (our child) has exited, without reaping it: its pidfd
/// turns readable. Kernels without pidfd_open (before 5.3) wait on a blocking thread.
pub async fn exit_of(pid: i32) {
    let pidfd = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| std::io::Error::other("no pid"))
        .and_then(|pid| {
            rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK)
                .map_err(std::io::Error::from)
        });
    // `with_interest` is deprecated for descriptors that may close under it; an
    // OwnedFd is open for exactly as long as the AsyncFd that owns it.
    #[allow(deprecated)]
    let registered = pidfd
        .and_then(|fd| tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE));
    match registered {
        Ok(fd) => {
            let _ = fd.readable().await;
        }
        Err(_) => wait_blocking(pid).await,
    }
}

async fn wait_blocking(pid: i32) {
    let _ = tokio::task::spawn_blocking(move || {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
        while let Err(nix::errno::Errno::EINTR) = waitid(Id::Pid(Pid::from_raw(pid)), flags) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_slices_follow_the_cpu_and_memory_of_each_part_of_the_run() {
        // Idle with 10 MB for 1 s, then 2 cores and 100 MB for 1 s.
        let samples: Vec<TreeSample> = (1..20)
            .map(|i| {
                let at = i as f64 * 0.1;
                TreeSample {
                    at,
                    cpu_seconds: if at <= 1.0 { 0.0 } else { (at - 1.0) * 2.0 },
                    rss_bytes: if at <= 1.0 { 10_000_000 } else { 100_000_000 },
                }
            })
            .collect();
        let slices = usage_slices(&samples, 2.0, 2.0, 4);
        assert_eq!(slices.len(), 4);
        assert!(
            slices[0].cpu_cores < 0.01 && slices[1].cpu_cores < 0.01,
            "{slices:?}"
        );
        assert!((slices[2].cpu_cores - 2.0).abs() < 0.01, "{slices:?}");
        assert!((slices[3].cpu_cores - 2.0).abs() < 0.01, "{slices:?}");
        assert_eq!(slices[0].rss_bytes, 10_000_000);
        assert_eq!(slices[3].rss_bytes, 100_000_000);
        // Fewer samples than slices: no finer than the samples.
        assert_eq!(usage_slices(&samples[..2], 2.0, 2.0, 10).len(), 2);
        assert!(usage_slices(&[], 2.0, 2.0, 10).is_empty());
    }

    #[test]
    fn a_run_that_waits_then_computes_shows_both_phases() {
        let m = sh(
            "sleep 0.8; i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done",
            Duration::from_secs(30),
        );
        assert!(m.exit.success());
        let n = m.usage.len();
        assert!(n >= 4, "{:?}", m.usage);
        let wall = m.wall.as_secs_f64();
        let first = m.usage[0].cpu_cores;
        let last = m.usage[n - 1].cpu_cores;
        // Shares, not speeds: on a loaded machine (parallel tests, a build beside
        // them) the spinning part gets a fraction of a core, the sleeping part none.
        assert!(
            first < 0.05 && last > 0.1 && last > 4.0 * first,
            "sleeping then spinning over {wall:.2}s: {:?}",
            m.usage
        );
    }

    fn sh(script: &str, timeout: Duration) -> Measured {
        sh_limited(script, timeout, None)
    }

    fn sh_limited(script: &str, timeout: Duration, memory_limit: Option<u64>) -> Measured {
        let argv = vec!["/bin/sh".to_string(), "-c".to_string(), script.to_string()];
        let dir = std::env::temp_dir();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let result = runtime.block_on(run(Spec {
            argv: &argv,
            cwd: &dir,
            env: &[],
            timeout,
            cancel: Arc::new(AtomicBool::new(false)),
            memory_limit,
        }));
        match result {
            Ok(m) => m,
            Err(e) => panic!("could not run {script}: {e}"),
        }
    }

    #[test]
    fn reports_exit_code_and_stderr() {
        let m = sh(
            "echo first >&2; echo boom >&2; exit 3",
            Duration::from_secs(10),
        );
        assert_eq!(m.exit, Exit::Code { code: 3 });
        assert_eq!(m.stderr_tail, "first\nboom");
    }

    #[test]
    fn counts_cpu_of_waited_children() {
        // A busy child for ~0.3 s of CPU, waited for by the shell.
        let m = sh(
            "sh -c 'i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done'",
            Duration::from_secs(30),
        );
        assert!(m.exit.success());
        assert!(
            m.cpu_user_sys_seconds > 0.05,
            "cpu {}",
            m.cpu_user_sys_seconds
        );
        assert!(m.cpu_user_sys_seconds <= m.wall.as_secs_f64() * 2.0 + 0.05);
    }

    #[test]
    fn sees_the_memory_of_the_tree() {
        // python allocating 200 MiB and holding it for a moment.
        let m = sh(
            "python3 -c 'import time; b = bytearray(200 * 1024 * 1024); time.sleep(0.5)'",
            Duration::from_secs(30),
        );
        assert!(m.exit.success(), "{}", m.stderr_tail);
        assert!(m.peak_rss_bytes > 200 << 20, "peak {}", m.peak_rss_bytes);
        assert!(m.peak_rss_bytes < 400 << 20, "peak {}", m.peak_rss_bytes);
    }

    #[test]
    fn a_timeout_kills_the_whole_group() {
        let started = Instant::now();
        let m = sh("sleep 30 & sleep 30; wait", Duration::from_millis(300));
        assert_eq!(m.exit, Exit::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// python holding `mib` MiB (written, so resident) for `seconds`.
    fn hog(mib: u64, seconds: f64) -> String {
        format!(
            "python3 -c 'import time; b = bytearray({mib} * 1024 * 1024); time.sleep({seconds})'"
        )
    }

    /// 300 MiB held for 3 s: far over the 64 MiB limit of the tests below.
    fn big_hog() -> String {
        hog(300, 3.0)
    }

    #[test]
    fn the_memory_limit_kills_the_tree_like_the_oom_killer() {
        let started = Instant::now();
        let m = sh_limited(&big_hog(), Duration::from_secs(30), Some(64 << 20));
        assert_eq!(m.exit, Exit::Signal { signal: 9 }, "{}", m.stderr_tail);
        // Killed while allocating, long before its 3 s of holding end.
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", m.wall);
        assert!(
            m.stderr_tail.contains("over the memory limit of 64 MiB"),
            "{}",
            m.stderr_tail
        );
        // The peak is what was seen, over the limit, not clipped to it.
        assert!(m.peak_rss_bytes > 64 << 20, "peak {}", m.peak_rss_bytes);
        assert!(m.peak_rss_bytes < 400 << 20, "peak {}", m.peak_rss_bytes);
    }

    #[test]
    fn without_a_memory_limit_the_same_function_runs_to_its_end() {
        let m = sh(&big_hog(), Duration::from_secs(30));
        assert!(m.exit.success(), "{:?}: {}", m.exit, m.stderr_tail);
        assert!(m.wall >= Duration::from_secs(3), "{:?}", m.wall);
        assert!(m.peak_rss_bytes > 300 << 20, "peak {}", m.peak_rss_bytes);
    }

    #[test]
    fn under_a_large_memory_limit_the_same_function_runs_to_its_end() {
        let m = sh_limited(&big_hog(), Duration::from_secs(30), Some(1 << 30));
        assert!(m.exit.success(), "{:?}: {}", m.exit, m.stderr_tail);
        assert!(m.wall >= Duration::from_secs(3), "{:?}", m.wall);
        assert!(!m.stderr_tail.contains("memory limit"), "{}", m.stderr_tail);
    }

    #[test]
    fn the_memory_limit_counts_the_whole_tree() {
        // Two children of 40 MiB each (about 50 MiB with the interpreter): neither is
        // over 64 MiB alone, together they are.
        let started = Instant::now();
        let script = format!("{} & {}; wait", hog(40, 3.0), hog(40, 3.0));
        let m = sh_limited(&script, Duration::from_secs(30), Some(64 << 20));
        assert_eq!(m.exit, Exit::Signal { signal: 9 }, "{}", m.stderr_tail);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", m.wall);
        assert!(m.stderr_tail.contains("memory limit"), "{}", m.stderr_tail);
        // One of them alone is within the limit.
        let m = sh_limited(&hog(40, 0.5), Duration::from_secs(30), Some(64 << 20));
        assert!(m.exit.success(), "{:?}: {}", m.exit, m.stderr_tail);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(mib(64 << 20), "64 MiB");
        assert_eq!(mib((612 << 20) + (300 << 10)), "612.3 MiB");
        assert_eq!(mib(1000), "1000 bytes");
    }
}
