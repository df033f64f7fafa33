//! How many threads each function's ffmpeg should use: the container's CPU limit over
//! the invocations it runs at once.
//!
//! ffmpeg sizes its thread pools from the CPUs it can be scheduled on, which in a pod
//! are all of the node's, not the pod's CPU limit: on a 16-core node, x264 under a
//! 2-CPU limit starts about 24 frame threads and the kernel throttles the container
//! for most of each period. The runtime reads the limit from the container's cgroup
//! (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`) and hands each function
//! `VFLOW_FFMPEG_THREADS`: the limit (rounded up, at most the CPUs there are) divided
//! by the slots, at least 1. A value the runtime's own environment sets wins. The
//! operator sets no CPU limit on functions (requests only, so that they may use idle
//! CPUs), and then the CPUs there are are divided among the slots: P invocations
//! packed into one instance share its CPUs instead of each sizing for all of them.

use std::path::Path;

/// The variable the functions read (see function-images/README.md, "Threads").
pub const THREADS_VAR: &str = "VFLOW_FFMPEG_THREADS";

/// The CPU limit, in CPUs, of the cgroup mounted at `root`; None when it has none
/// (`max`, -1) or the files cannot be read (no cgroup, the local mode on a machine
/// without one).
pub fn cpu_limit(root: &Path) -> Option<f64> {
    if let Ok(text) = std::fs::read_to_string(root.join("cpu.max")) {
        return parse_cpu_max(&text);
    }
    let v1 = root.join("cpu");
    let quota = std::fs::read_to_string(v1.join("cpu.cfs_quota_us")).ok()?;
    let period = std::fs::read_to_string(v1.join("cpu.cfs_period_us")).ok()?;
    ratio(quota.trim(), period.trim())
}

/// cgroup v2 `cpu.max`: "<quota> <period>" in microseconds, quota `max` for none.
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let quota = parts.next()?;
    let period = parts.next().unwrap_or("100000");
    ratio(quota, period)
}

fn ratio(quota: &str, period: &str) -> Option<f64> {
    let quota: f64 = quota.parse().ok()?; // "max" does not parse: no limit
    let period: f64 = period.parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// At most this many: libavcodec caps its own automatic thread count at 16, past
/// which a decoder gains nothing on one stream.
pub const MAX_THREADS: u32 = 16;

/// Threads per invocation: the limit (or the CPUs available, whichever is fewer)
/// shared by `slots` invocations, at least 1, at most MAX_THREADS.
pub fn threads_per_slot(limit: Option<f64>, available: usize, slots: u32) -> u32 {
    let available = available.max(1) as f64;
    let cpus = limit.map_or(available, |l| l.ceil().min(available));
    ((cpus / f64::from(slots.max(1))).floor() as u32).clamp(1, MAX_THREADS)
}

/// What the runtime passes each function: None where the runtime's own environment
/// already sets the variable (the function gets that one).
pub fn ffmpeg_threads(cgroup_root: &Path, slots: u32) -> Option<u32> {
    if std::env::var_os(THREADS_VAR).is_some() {
        return None;
    }
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some(threads_per_slot(cpu_limit(cgroup_root), available, slots))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_v2_limits_are_read_and_max_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cpu.max"), "250000 100000\n")
            .expect("write the fake cgroup");
        assert_eq!(cpu_limit(dir.path()), Some(2.5));
        std::fs::write(dir.path().join("cpu.max"), "max 100000\n").expect("write the fake cgroup");
        assert_eq!(cpu_limit(dir.path()), None);
    }

    #[test]
    fn cgroup_v1_limits_are_read_and_minus_one_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("cpu")).expect("write the fake cgroup");
        std::fs::write(dir.path().join("cpu/cpu.cfs_quota_us"), "50000\n")
            .expect("write the fake cgroup");
        std::fs::write(dir.path().join("cpu/cpu.cfs_period_us"), "100000\n")
            .expect("write the fake cgroup");
        assert_eq!(cpu_limit(dir.path()), Some(0.5));
        std::fs::write(dir.path().join("cpu/cpu.cfs_quota_us"), "-1\n")
            .expect("write the fake cgroup");
        assert_eq!(cpu_limit(dir.path()), None);
        assert_eq!(cpu_limit(&dir.path().join("absent")), None);
    }

    #[test]
    fn the_limit_not_the_node_sizes_the_threads() {
        // 2 CPUs of a 16-core node, one slot: 2 threads, not 16.
        assert_eq!(threads_per_slot(Some(2.0), 16, 1), 2);
        // Shared by 2 slots: 1 each; a fraction rounds up to a whole CPU first.
        assert_eq!(threads_per_slot(Some(2.0), 16, 2), 1);
        assert_eq!(threads_per_slot(Some(1.5), 16, 1), 2);
        // Never 0, never more than the CPUs there are.
        assert_eq!(threads_per_slot(Some(0.5), 16, 4), 1);
        assert_eq!(threads_per_slot(Some(64.0), 8, 1), 8);
        assert_eq!(threads_per_slot(None, 8, 3), 2);
        assert_eq!(threads_per_slot(None, 128, 1), MAX_THREADS);
    }
}
