use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// vflow: video workflows as serverless functions on Kubernetes.
#[derive(Parser)]
#[command(name = "vflow", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check manifests (FunctionProfile, VideoWorkflow, VideoWorkflowRun) and print every
    /// problem with its field path. Exit 0: valid; 1: problems; 2: unreadable or not YAML.
    Validate {
        /// YAML files, each with one or more documents.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Directories of FunctionProfile YAML to check workflows' parameters against
        /// (profiles among FILES are used too).
        #[arg(long = "profiles", value_name = "DIR")]
        profiles: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { files, profiles } => {
            let report = vflow_cli::validate_cmd::run(&files, &profiles);
            for e in &report.load_errors {
                eprintln!("{e}");
            }
            for line in &report.lines {
                println!("{line}");
            }
            ExitCode::from(report.exit_code())
        }
    }
}
