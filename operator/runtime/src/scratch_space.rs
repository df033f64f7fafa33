//! The scratch disk's budget: a download is admitted only if it fits, so a full
//! disk fails the invocation before anything is written, naming the input.
//!
//! In a pod the scratch emptyDir's `sizeLimit` is enforced by the kubelet evicting
//! the pod, not by ENOSPC, so the filesystem's free space says nothing about it: the
//! operator passes the limit (`VFLOW_SCRATCH_LIMIT`) and the runtime counts against it
//! what is on the scratch now (every runtime of a fused pod shares it) and what its
//! own admitted downloads will still add.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Why a download was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoom {
    /// Larger than the whole scratch: no retry can help.
    NeverFits { need: u64, limit: u64 },
    /// Larger than what is free now (other invocations hold the rest).
    Full { need: u64, free: u64 },
}

impl NoRoom {
    pub fn retryable(&self) -> bool {
        matches!(self, NoRoom::Full { .. })
    }

    /// The reason, for `what` ("input s3://b/k", "inputs s3://b/k and 2 more").
    pub fn describe(&self, what: &str) -> String {
        match self {
            NoRoom::NeverFits { need, limit } => format!(
                "{what} ({}) is larger than this instance's scratch disk ({}); raise the \
                 function profile's resources.scratch",
                human(*need),
                human(*limit)
            ),
            NoRoom::Full { need, free } => format!(
                "{what} ({}) does not fit in the scratch disk now ({} free); nothing was \
                 downloaded",
                human(*need),
                human(*free)
            ),
        }
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub struct ScratchSpace {
    dir: PathBuf,
    limit: Option<u64>,
    /// Bytes admitted to downloads still running (not yet on the disk in full).
    admitted: Mutex<u64>,
}

/// Bytes admitted to one invocation's downloads; given back when dropped (by then
/// the files are on the disk and counted there).
pub struct Admission {
    space: Arc<ScratchSpace>,
    bytes: u64,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut admitted = self
            .space
            .admitted
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *admitted = admitted.saturating_sub(self.bytes);
    }
}

impl ScratchSpace {
    pub fn new(dir: PathBuf, limit: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            dir,
            limit,
            admitted: Mutex::new(0),
        })
    }

    /// Admits `need` bytes of downloads, or says why not. Blocking (it reads the disk).
    pub fn admit(self: &Arc<Self>, need: u64) -> Result<Admission, NoRoom> {
        if let Some(limit) = self.limit
            && need > limit
        {
            return Err(NoRoom::NeverFits { need, limit });
        }
        // One admission at a time, so two invocations cannot both take the last room.
        let mut admitted = self.admitted.lock().unwrap_or_else(|p| p.into_inner());
        let on_disk = bytes_under(&self.dir);
        let by_limit = self.limit.map_or(u64::MAX, |l| l.saturating_sub(on_disk));
        let free = filesystem_free(&self.dir)
            .unwrap_or(u64::MAX)
            .min(by_limit)
            .saturating_sub(*admitted);
        if need > free {
            return Err(NoRoom::Full { need, free });
        }
        *admitted += need;
        Ok(Admission {
            space: Arc::clone(self),
            bytes: need,
        })
    }
}

/// What the filesystem lets an unprivileged user write.
fn filesystem_free(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

/// Bytes of the files under `dir` (unreadable entries count as nothing).
fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => pending.push(entry.path()),
                Ok(m) => total = total.saturating_add(m.len()),
                Err(_) => {}
            }
        }
    }
    total
}

/// Removes the invocation folders (`inv-<pid>-<n>`) of runtimes that are gone: a
/// runtime killed mid-invocation (OOM, SIGKILL after the drain) leaves its inputs and
/// outputs on the pod's scratch, which outlives the container. Folders of a live
/// process (another runtime of a fused pod shares the scratch and the process
/// namespace) are left alone. Returns how many were removed.
pub fn remove_leftovers(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let me = std::process::id();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("inv-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(
                error = %e,
                dir = %entry.path().display(),
                "could not remove a dead runtime's scratch"
            ),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_within_the_limit_counting_the_disk_and_running_downloads() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("held"), vec![0u8; 4000]).expect("write");
        let space = ScratchSpace::new(dir.path().to_path_buf(), Some(10_000));
        assert_eq!(
            space.admit(20_000).err(),
            Some(NoRoom::NeverFits {
                need: 20_000,
                limit: 10_000
            })
        );
        let first = space.admit(5000).expect("fits: 4000 + 5000 <= 10000");
        // 4000 on disk + 5000 admitted: 1000 left.
        assert_eq!(
            space.admit(2000).err(),
            Some(NoRoom::Full {
                need: 2000,
                free: 1000
            })
        );
        drop(first);
        assert!(space.admit(2000).is_ok(), "given back when dropped");
        let message = NoRoom::NeverFits {
            need: 3 << 30,
            limit: 2 << 30,
        }
        .describe("input s3://b/in.mp4");
        assert!(
            message.contains("s3://b/in.mp4 (3.0 GiB)") && message.contains("(2.0 GiB)"),
            "{message}"
        );
    }

    #[test]
    fn leftovers_of_dead_runtimes_go_and_live_ones_stay() {
        let dir = tempfile::tempdir().expect("dir");
        let mine = dir.path().join(format!("inv-{}-0", std::process::id()));
        // pid_max is at most 2^22 on Linux: this pid cannot be running.
        let dead = dir.path().join("inv-4194305-3");
        let other = dir.path().join("not-an-invocation");
        for d in [&mine, &dead, &other] {
            std::fs::create_dir_all(d.join("in")).expect("mkdir");
            std::fs::write(d.join("in/x"), b"x").expect("write");
        }
        assert_eq!(remove_leftovers(dir.path()), 1);
        assert!(mine.exists() && other.exists() && !dead.exists());
    }
}
