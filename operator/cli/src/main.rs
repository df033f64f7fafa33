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
    /// Plan a workflow: sizes, concurrency, durable or ephemeral, fusion, pre-warm times
    /// and GPU requests, with the numbers behind each. Validates first. Exit 0: planned;
    /// 1: problems in the manifests; 2: unreadable or not YAML.
    Plan {
        /// The VideoWorkflow YAML.
        workflow: PathBuf,
        /// FunctionProfile YAML: directories or files.
        #[arg(long = "profiles", value_name = "DIR|FILE", required = true)]
        profiles: Vec<PathBuf>,
        /// Planner configuration (YAML or JSON), e.g. `gpuSharing: {mode: mps, slices: 8}`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Simulate a cluster running the planner against its baselines (deterministic for
    /// a seed): makespan, p50 and p95 latency, cold starts, idle instance-seconds, cost.
    Sim {
        #[arg(long, value_enum, default_value = "all")]
        scenario: SimScenario,
        /// A workload file (nodes, functions, requests) instead of a scenario.
        #[arg(long, value_name = "FILE")]
        workload: Option<PathBuf>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Invocations in the burst scenario.
        #[arg(long, default_value_t = 1000)]
        burst: usize,
        #[arg(long)]
        json: bool,
        /// Write an SVG plot per benchmark into DIR.
        #[arg(long, value_name = "DIR")]
        svg: Option<PathBuf>,
        /// Write results.json, the plots and REPORT.md into DIR.
        #[arg(long, value_name = "DIR")]
        report: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SimScenario {
    Chains,
    Smse,
    Packing,
    Sizing,
    Burst,
    All,
}

impl From<SimScenario> for vflow_planner::sim::Scenario {
    fn from(s: SimScenario) -> Self {
        use vflow_planner::sim::Scenario as S;
        match s {
            SimScenario::Chains => S::Chains,
            SimScenario::Smse => S::Smse,
            SimScenario::Packing => S::Packing,
            SimScenario::Sizing => S::Sizing,
            SimScenario::Burst => S::Burst,
            SimScenario::All => S::All,
        }
    }
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
        Command::Plan {
            workflow,
            profiles,
            config,
            json,
        } => {
            let out = vflow_cli::plan_cmd::run(&workflow, &profiles, config.as_deref(), json);
            finish(&out.stdout, &out.stderr, out.code)
        }
        Command::Sim {
            scenario,
            workload,
            seed,
            burst,
            json,
            svg,
            report,
        } => {
            let command = std::env::args().collect::<Vec<_>>().join(" ");
            let out = vflow_cli::sim_cmd::run(&vflow_cli::sim_cmd::Args {
                scenario: scenario.into(),
                workload: workload.as_deref(),
                seed,
                burst,
                json,
                svg: svg.as_deref(),
                report: report.as_deref(),
                command,
            });
            finish(&out.stdout, &out.stderr, out.code)
        }
    }
}

fn finish(stdout: &str, stderr: &[String], code: u8) -> ExitCode {
    for e in stderr {
        eprintln!("{e}");
    }
    print!("{stdout}");
    ExitCode::from(code)
}
