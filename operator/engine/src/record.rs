//! A run's progress, persisted after every step so a restarted process resumes it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A run's phase: the same type as the VideoWorkflowRun's status (one definition).
pub use vflow_api::RunPhase;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnitStatus {
    Pending,
    Running,
    Done,
    Skipped,
    Failed,
}

/// One attempt at one unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// Unix seconds.
    pub submitted_at: f64,
    pub finished_at: f64,
    pub queued_seconds: f64,
    /// Set when this attempt waited for an instance to start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start_seconds: Option<f64>,
    pub download_seconds: f64,
    pub function_seconds: f64,
    pub upload_seconds: f64,
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The outputs were already complete (a resumed run): nothing ran.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reused: bool,
    /// The function, or a process under it, was killed for using more memory than its
    /// instance has (a pod's OOM killer, the local runtime's guard).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
    /// Already folded into the function's profile (cluster runs fold each attempt
    /// once, whichever session ran it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub learned: bool,
    /// Functions running on the instance at once, on average over this run (0: not
    /// measured).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub concurrency: f64,
    /// The function's CPU and memory over its run (the runtime's slices).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<vflow_contract::invocation::UsageSlice>,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitRecord {
    pub stage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<u32>,
    pub status: UnitStatus,
    #[serde(default)]
    pub outputs: Vec<String>,
    /// The size of each of `outputs`, as the invocation that wrote it reported: the
    /// scheduler starts the units that read the most first. 0 or absent where not known
    /// (the run's own input passed through a skipped unit, a record from before).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_bytes: Vec<u64>,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// Unix seconds: when the unit was last handed out to run. Attempts are recorded
    /// as they end; this says a unit runs (and since when) before its first one ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub run: String,
    pub workflow: String,
    pub input: String,
    /// Every output of this run lives under here.
    pub prefix: String,
    pub phase: RunPhase,
    /// Segments the fan-out stage wrote, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<u32>,
    pub units: Vec<UnitRecord>,
    pub started_at: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How many times a process picked this run up (1 = never interrupted).
    #[serde(default)]
    pub sessions: u32,
}

impl RunRecord {
    pub fn unit(&self, stage: &str, segment: Option<u32>) -> Option<&UnitRecord> {
        self.units
            .iter()
            .find(|u| u.stage == stage && u.segment == segment)
    }

    pub fn unit_mut(&mut self, stage: &str, segment: Option<u32>) -> Option<&mut UnitRecord> {
        self.units
            .iter_mut()
            .find(|u| u.stage == stage && u.segment == segment)
    }

    /// Attempts that actually ran the function (not reused).
    pub fn executed_attempts(&self) -> usize {
        self.units
            .iter()
            .flat_map(|u| &u.attempts)
            .filter(|a| !a.reused)
            .count()
    }
}
