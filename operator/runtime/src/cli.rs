//! The command line of both modes, shared by the `vflow-runtime` binary and by
//! `vflow runtime`, which the local mode starts as its stage instances.

use std::process::ExitCode;

use crate::config::{LogFormat, MetricsArgs, ServeArgs};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vflow-runtime",
    version,
    about = "Runs a vflow function inside its pod"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
pub(crate) enum Mode {
    /// Serve invocations of the function (POST /invoke)
    Serve(Box<ServeArgs>),
    /// Sample the function container's CPU, memory and GPU (the sidecar)
    Metrics(MetricsArgs),
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Blocking threads for scratch and file work (never held by a running function).
const BLOCKING_THREADS: usize = 32;

/// Processes started by `vflow run` must not outlive it, even when it is SIGKILLed.
fn exit_with_parent() {
    if std::env::var("VFLOW_EXIT_WITH_PARENT").is_ok_and(|v| v == "1") {
        let parent = nix::unistd::getppid();
        if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).is_err()
            || parent == nix::unistd::Pid::from_raw(1)
        {
            eprintln!("vflow-runtime: the parent is gone; not starting");
            std::process::exit(1);
        }
    }
}

/// Parses `args` (the program name first) and runs the chosen mode to its end.
pub fn main_with_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    exit_with_parent();
    let cli = Cli::parse_from(args);
    let format = match &cli.mode {
        Mode::Serve(a) => a.log_format,
        Mode::Metrics(a) => a.log_format,
    };
    init_logs(format);
    // Two workers: the function does the heavy work; the runtime should stay small.
    // Functions are supervised on the async runtime (see `process::run`), so the
    // blocking pool is only for short file work and does not grow with concurrency.
    let blocking = BLOCKING_THREADS;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(blocking)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vflow-runtime: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.mode {
            Mode::Serve(args) => crate::server::serve(*args).await,
            Mode::Metrics(args) => crate::sidecar::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "vflow-runtime stopped");
            eprintln!("vflow-runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
