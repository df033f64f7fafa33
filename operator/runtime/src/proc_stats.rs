//! Reading processes from /proc. Works the same on cgroup v1 and v2 nodes, and in a
//! shared process namespace it sees the function container from the sidecar.

use std::fs;
use std::sync::OnceLock;

/// CPU and memory of one process at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    pub ppid: i32,
    /// utime + stime, seconds.
    pub cpu_seconds: f64,
    /// cutime + cstime: children that this process has waited for, seconds.
    pub children_cpu_seconds: f64,
    pub rss_bytes: u64,
    /// Ticks since boot when the process started.
    pub start_ticks: u64,
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .map(|t| t as f64)
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| u64::try_from(p).ok())
            .unwrap_or(4096)
    })
}

/// Parses /proc/<pid>/stat; the command name may hold spaces and parentheses, so the
/// fields are counted from the last ')'.
pub fn parse_stat(text: &str) -> Option<ProcSample> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let ticks = clock_ticks();
    Some(ProcSample {
        ppid: fields.get(1)?.parse().ok()?,
        cpu_seconds: (num(11)? + num(12)?) as f64 / ticks,
        children_cpu_seconds: (num(13)? + num(14)?) as f64 / ticks,
        start_ticks: num(19)?,
        rss_bytes: num(21)? * page_size(),
    })
}

pub fn sample(pid: i32) -> Option<ProcSample> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Peak resident set of one process (VmHWM), bytes.
pub fn peak_rss(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Direct children, from every thread's `children` file.
pub fn children(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return found;
    };
    for task in tasks.flatten() {
        if let Ok(text) = fs::read_to_string(task.path().join("children")) {
            found.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    found
}

/// `pid` and all its descendants alive now.
pub fn tree(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut next = 0;
    while next < all.len() {
        let kids = children(all[next]);
        all.extend(kids);
        next += 1;
    }
    all
}

/// Every process visible in /proc (the whole pod, in a shared process namespace).
pub fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Names of the variables in a process's environment (empty when unreadable).
pub fn environ_names(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter_map(|part| part.split(|b| *b == b'=').next())
                .filter(|name| !name.is_empty())
                .map(|name| String::from_utf8_lossy(name).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Seconds since this process was started by the kernel (so the cold start includes
/// exec and dynamic loading, not only `main`).
pub fn own_age_seconds() -> Option<f64> {
    let me = sample(std::process::id() as i32)?;
    let uptime: f64 = fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((uptime - me.start_ticks as f64 / clock_ticks()).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_name_with_spaces_and_parentheses() {
        let line = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0 5000 1000000 300 18446744073709551615";
        let s = parse_stat(line);
        let s = s.as_ref();
        assert_eq!(s.map(|s| s.ppid), Some(1));
        let ticks = clock_ticks();
        assert_eq!(s.map(|s| s.cpu_seconds), Some(300.0 / ticks));
        assert_eq!(s.map(|s| s.children_cpu_seconds), Some(10.0 / ticks));
        assert_eq!(s.map(|s| s.start_ticks), Some(5000));
        assert_eq!(s.map(|s| s.rss_bytes), Some(300 * page_size()));
    }

    #[test]
    fn sees_itself() {
        let me = std::process::id() as i32;
        assert!(sample(me).is_some_and(|s| s.rss_bytes > 0));
        assert!(peak_rss(me).is_some_and(|p| p > 0));
        assert!(own_age_seconds().is_some());
    }
}
