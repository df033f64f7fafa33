//! OOM kills as the container's cgroup counts them: the `oom_kill` line of cgroup v2's
//! `memory.events`, or of cgroup v1's `memory.oom_control`. A pod's OOM killer takes the largest process of the container: a
//! function's ffmpeg rather than the function, which then fails with an exit status of
//! its own; only the cgroup's count says that the memory limit did it. The operator
//! points the runtime at the file (`VFLOW_MEMORY_EVENTS`); the local mode has no
//! cgroup of its own and enforces `--memory-limit` itself.
//!
//! The count is the container's, not one process's: a failed invocation during which
//! the count rose is taken as killed for memory. With several invocations at once in a
//! pod, one that failed for another reason while another was OOM-killed is taken as
//! one too; it is then tried once more with more memory, which costs a retry and
//! nothing else.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct OomEvents {
    path: PathBuf,
}

impl OomEvents {
    /// The counter in `path`, read once now to refuse a file that is not one.
    pub fn open(path: &Path) -> Result<Self, String> {
        let events = Self {
            path: path.to_path_buf(),
        };
        match events.kills() {
            Some(_) => Ok(events),
            None => Err(format!(
                "{}: no oom_kill count there (cgroup v2 memory.events, v1 memory.oom_control)",
                path.display()
            )),
        }
    }

    /// The first of `paths` (separated by ':') that is a counter; None, with a
    /// warning, when none is.
    pub fn first_of(paths: &str) -> Option<Self> {
        let mut why = Vec::new();
        for path in paths.split(':').filter(|p| !p.is_empty()) {
            match Self::open(Path::new(path)) {
                Ok(events) => return Some(events),
                Err(e) => why.push(e),
            }
        }
        tracing::warn!(tried = %why.join("; "), "OOM kills of processes under the function will not be seen");
        None
    }

    /// OOM kills so far; None when the file cannot be read now.
    pub fn kills(&self) -> Option<u64> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        parse_oom_kills(&text)
    }
}

fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == "oom_kill").then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oom_kill_line_is_read() {
        let text = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(text), Some(2));
        assert_eq!(parse_oom_kills("low 0\n"), None);
        assert_eq!(parse_oom_kills("oom_kill x\n"), None);
    }

    #[test]
    fn a_file_without_the_counter_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("memory.events");
        std::fs::write(&path, "low 0\n").expect("write");
        let err = OomEvents::open(&path).err().unwrap_or_default();
        assert!(err.contains("memory.events"), "{err}");
        // cgroup v1's file, and a list whose first entry is missing.
        let v1 = dir.path().join("memory.oom_control");
        std::fs::write(&v1, "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n").expect("write");
        let list = format!("{}:{}", dir.path().join("absent").display(), v1.display());
        assert_eq!(OomEvents::first_of(&list).and_then(|e| e.kills()), Some(4));
        assert!(OomEvents::first_of(&dir.path().join("absent").to_string_lossy()).is_none());
        std::fs::write(&path, "oom 1\noom_kill 1\n").expect("write");
        assert_eq!(OomEvents::open(&path).ok().and_then(|e| e.kills()), Some(1));
    }
}
