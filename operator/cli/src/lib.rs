//! The `vflow` command line: shared pieces, so tests drive them without a process.

pub mod logs_cmd;
pub mod manifests;
pub mod plan_cmd;
pub mod profile_cmd;
pub mod run_cmd;
pub mod sim_cmd;
pub mod status_cmd;
pub mod submit_cmd;
pub mod validate_cmd;
