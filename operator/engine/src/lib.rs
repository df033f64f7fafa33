//! The run engine: one VideoWorkflowRun through its DAG.
//!
//! The engine decides what runs when (fan-out over the segments a split stage wrote,
//! joins once every segment is done, `when` conditions on a stage's metadata, retries
//! with backoff, timeouts, cancellation) and persists its progress after every step, so
//! a restarted process resumes a run instead of starting over. Where instances come
//! from is the [`backend::Backend`]'s business: local processes here, the operator's
//! Deployments in a cluster.
//!
//! [`scheduler`] holds the rules (pure, on the run's record); [`engine`] drives them:
//! storage, invocations, timers and cancellation.

pub mod backend;
pub mod engine;
pub mod graph;
mod invoke;
pub mod learn;
pub mod local;
pub mod prewarming;
pub mod record;
pub mod report;
pub mod scheduler;
pub mod timeline;

pub use engine::{Engine, RunOptions, RunOutcome};
pub use graph::{RunGraph, UnitKey};
pub use record::{RunPhase, RunRecord};
