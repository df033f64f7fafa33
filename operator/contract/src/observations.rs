//! Bounded summaries of what was measured, served on `/observations` for the
//! operator to fold into the FunctionProfile status.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// The most recent samples of one quantity (a window, so old behaviour ages out).
#[derive(Debug, Clone)]
pub struct Window {
    samples: VecDeque<f64>,
    capacity: usize,
}

impl Window {
    pub fn new(capacity: usize) -> Self {
        Self {
            samples: VecDeque::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
        }
    }

    pub fn push(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(value);
    }

    pub fn summary(&self) -> Option<Summary> {
        if self.samples.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = self.samples.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        Some(Summary {
            count: sorted.len() as u64,
            p50: nearest_rank(&sorted, 0.50),
            p95: nearest_rank(&sorted, 0.95),
            max: sorted[sorted.len() - 1],
        })
    }
}

/// The q-quantile (0..=1) of values sorted ascending by nearest rank: always a value
/// that was observed; 0 when there are none. The one definition vflow uses.
pub fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

/// What one runtime instance has seen since it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct InstanceObservations {
    pub function: String,
    pub instance: String,
    pub invocations: u64,
    pub failures: u64,
    /// Functions killed by SIGKILL that the runtime did not kill: the OOM killer.
    pub oom_kills: u64,
    pub cold_start_seconds: Option<f64>,
    pub exec_seconds: Option<Summary>,
    pub cpu_cores: Option<Summary>,
    pub memory_bytes: Option<Summary>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// What the sidecar has sampled from the function container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerObservations {
    pub samples: u64,
    pub interval_seconds: f64,
    /// Samples taken while the function was running (idle samples would dilute them).
    pub busy_cpu_cores: Option<Summary>,
    pub busy_memory_bytes: Option<Summary>,
    pub idle_memory_bytes: Option<Summary>,
    pub gpu_memory_bytes: Option<Summary>,
    pub gpu_utilization: Option<Summary>,
    /// Why GPU figures are absent, when they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_unavailable: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut w = Window::new(100);
        for v in 1..=20 {
            w.push(v as f64);
        }
        let s = w.summary();
        assert_eq!(
            s,
            Some(Summary {
                count: 20,
                p50: 10.0,
                p95: 19.0,
                max: 20.0
            })
        );
    }

    #[test]
    fn old_samples_age_out() {
        let mut w = Window::new(3);
        for v in [100.0, 1.0, 2.0, 3.0] {
            w.push(v);
        }
        assert_eq!(w.summary().map(|s| s.max), Some(3.0));
        assert_eq!(Window::new(3).summary(), None);
    }
}
