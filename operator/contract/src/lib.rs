//! vflow-contract: what the operator, the run engine and the in-pod runtime agree on,
//! with no dependency beyond serde, so that the engine, the run controller and the
//! workflow controller need not build the runtime binary's crate (axum, NVML, nix) to
//! talk to it.
//!
//! - [`invocation`]: `POST /invoke`, its answer and the completion record;
//! - [`observations`]: what a runtime and its sidecar report at `/observations`;
//! - [`exit`]: how a function process ended;
//! - [`naming`]: the names, labels and ports of a stage's Deployment, Service and pods.

pub mod auth;
pub mod exit;
pub mod invocation;
pub mod naming;
pub mod observations;
