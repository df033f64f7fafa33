//! `vflow-runtime serve` (the function container) and `vflow-runtime metrics` (the
//! sidecar).

fn main() -> std::process::ExitCode {
    vflow_runtime::cli::main_with_args(std::env::args_os())
}
