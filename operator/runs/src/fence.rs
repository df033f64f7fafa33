//! Tasks that must not outlive the leadership that started them.
//!
//! The run controller's per-run engines are spawned tasks: dropping the controller's
//! future (the leader lost its Lease) would not stop them, and a deposed leader would
//! go on invoking functions and writing run status beside the new one. Every such task
//! is spawned through [`Tasks`], and the controller holds a [`Fence`] that aborts them
//! all when it is dropped, whatever the reason.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::task::AbortHandle;

#[derive(Clone, Default)]
pub struct Tasks(Arc<Mutex<Vec<AbortHandle>>>);

impl Tasks {
    /// Spawns `task`, to be aborted with the others.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task).abort_handle();
        let mut tasks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    pub fn abort_all(&self) {
        let tasks = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            t.abort();
        }
    }

    /// Tasks still running (tests).
    pub fn running(&self) -> usize {
        let tasks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        tasks.iter().filter(|t| !t.is_finished()).count()
    }
}

/// Aborts the tasks when dropped.
pub struct Fence(pub Tasks);

impl Drop for Fence {
    fn drop(&mut self) {
        self.0.abort_all();
    }
}

/// A task aborted when its handle is dropped (a helper of one run, such as its status
/// writer, goes with the run's task).
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn dropping_the_fence_stops_every_task() {
        let tasks = Tasks::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        for i in 0..3 {
            let tx = tx.clone();
            tasks.spawn(async move {
                loop {
                    let _ = tx.send(i);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
        drop(tx);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(tasks.running(), 3);
        drop(Fence(tasks.clone()));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(tasks.running(), 0);
        while rx.try_recv().is_ok() {}
        // The senders went with the tasks: the channel is closed, nothing sends.
        assert!(rx.recv().await.is_none());
    }
}
