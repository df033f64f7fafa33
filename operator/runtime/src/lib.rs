//! vflow-runtime: what runs inside a function's pod.
//!
//! `serve` is the function container's entrypoint: it takes invocations over HTTP,
//! fetches the inputs, runs the function's command without a shell, uploads the
//! outputs and answers with what the invocation used. `metrics` is the sidecar that
//! samples the function container from /proc (shared process namespace) and NVML.
//! Both expose Prometheus metrics and an `/observations` summary that the operator
//! scrapes into the FunctionProfile status.

pub mod access;
pub mod cli;
pub mod config;
pub mod cpu_share;
pub mod executor;
pub mod function_env;
pub mod gpu;
pub mod metrics;
pub mod oom_events;
pub mod overlap;
pub mod proc_stats;
pub mod process;
pub mod resident;
pub mod scratch_space;
pub mod server;
pub mod sidecar;
pub mod tail;

// The wire types live in vflow-contract (the operator and the engine use them without
// this crate); here under their old paths.
pub use vflow_contract::{invocation, observations};
