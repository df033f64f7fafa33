//! vflow-runtime: what runs inside a function's pod.
//!
//! `serve` is the function container's entrypoint: it takes invocations over HTTP,
//! fetches the inputs, runs the function's command without a shell, uploads the
//! outputs and answers with what the invocation used. `metrics` is the sidecar that
//! samples the function container from /proc (shared process namespace) and NVML.
//! Both expose Prometheus metrics and an `/observations` summary that the operator
//! scrapes into the FunctionProfile status.

pub mod cli;
pub mod config;
pub mod executor;
pub mod gpu;
pub mod invocation;
pub mod metrics;
pub mod observations;
pub mod proc_stats;
pub mod process;
pub mod server;
pub mod sidecar;
pub mod tail;
