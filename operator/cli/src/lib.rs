//! The `vflow` command line: shared pieces, so tests drive them without a process.

pub mod manifests;
pub mod validate_cmd;
