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
    /// Run a workflow on one input on this machine (no cluster): stage instances are
    /// local processes, storage a directory or any S3 endpoint. Prints a table of stage
    /// timings, writes a JSON report and an SVG timeline, and folds what was measured
    /// into the FunctionProfiles. Exit 0: succeeded; 1: failed; 2: bad input; 130:
    /// cancelled (Ctrl-C). An interrupted run resumes with --run-id.
    Run {
        /// The VideoWorkflow YAML.
        workflow: PathBuf,
        /// The input video: a file or s3://bucket/key.
        #[arg(long)]
        input: String,
        /// FunctionProfile YAML: directories or files.
        #[arg(long = "profiles", value_name = "DIR|FILE", required = true)]
        profiles: Vec<PathBuf>,
        /// Where outputs go: a directory (default .vflow/store) or s3://bucket/prefix
        /// (credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, endpoint from
        /// VFLOW_S3_ENDPOINT).
        #[arg(long, value_name = "DIR|s3://...")]
        store: Option<String>,
        /// Resume this run (or name a new one).
        #[arg(long)]
        run_id: Option<String>,
        /// Where report.json and timeline.svg go (default .vflow/runs/RUN).
        #[arg(long, value_name = "DIR")]
        report_dir: Option<PathBuf>,
        /// Instances per stage when the workflow does not say (default: the CPU count).
        #[arg(long)]
        max_instances: Option<u32>,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
        /// Pre-warm on the schedule made when the run starts, never re-decided as it
        /// goes and never released for a branch not taken: the baseline that
        /// `make bench-local` compares just-in-time re-planning with.
        #[arg(long)]
        no_replan: bool,
    },
    /// Profile one function on one input on this machine, end to end: wall time, CPU
    /// and memory over time, bytes in and out, and where its use changes (split
    /// points). The measurement goes into the function's learned FunctionProfile (as
    /// `vflow run` learns), so `vflow plan` and `vflow run` use it.
    Profile {
        /// The FunctionProfile's name, e.g. scale.
        function: String,
        /// The input: a file or s3://bucket/key.
        #[arg(long)]
        input: String,
        /// FunctionProfile YAML: directories or files.
        #[arg(long = "profiles", value_name = "DIR|FILE", required = true)]
        profiles: Vec<PathBuf>,
        /// A parameter of the function, name=value (repeatable), e.g. --param height=480.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Where the outputs go (default .vflow/store).
        #[arg(long, value_name = "DIR|s3://...")]
        store: Option<String>,
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
    /// Create a VideoWorkflowRun in the cluster (KUBECONFIG): WORKFLOW on one input.
    /// Prints namespace/name.
    Submit {
        /// The VideoWorkflow's name.
        workflow: String,
        /// The input: s3://bucket/key, or a key in the workflow's bucket.
        #[arg(long)]
        input: String,
        #[arg(short, long)]
        namespace: Option<String>,
        /// A parameter for this run only, as stage.key=value (repeatable).
        #[arg(long = "param", value_name = "STAGE.KEY=VALUE")]
        params: Vec<String>,
        /// The run's name (default: generated).
        #[arg(long)]
        name: Option<String>,
        /// Delete the run this many seconds after it finishes (default: the operator's).
        #[arg(long)]
        ttl: Option<i64>,
    },
    /// The runs in a namespace, or one run's stages, timings, cost and outputs.
    Status {
        run: Option<String>,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Logs of a run's stage pods (container `function`).
    Logs {
        run: String,
        #[arg(long)]
        stage: String,
        #[arg(short, long)]
        namespace: Option<String>,
        /// Only the last N lines of each pod.
        #[arg(long)]
        tail: Option<i64>,
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
    // `vflow runtime serve|metrics ...`: the local mode's stage instances are this same
    // executable, so one binary is all a machine needs.
    let mut args = std::env::args_os();
    if std::env::args_os().nth(1).is_some_and(|a| a == "runtime") {
        let rest: Vec<_> = args.by_ref().skip(2).collect();
        let argv = std::iter::once(std::ffi::OsString::from("vflow runtime")).chain(rest);
        return vflow_runtime::cli::main_with_args(argv);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            workflow,
            input,
            profiles,
            store,
            run_id,
            report_dir,
            max_instances,
            quiet,
            no_replan,
        } => {
            let args = vflow_cli::run_cmd::RunArgs {
                workflow,
                input,
                profiles,
                store,
                run_id,
                report_dir,
                max_instances,
                quiet,
                no_replan,
            };
            run_local(vflow_cli::run_cmd::run(args))
        }
        Command::Profile {
            function,
            input,
            profiles,
            params,
            store,
        } => {
            let args = vflow_cli::profile_cmd::ProfileArgs {
                function,
                input,
                profiles,
                params,
                store,
            };
            run_local(vflow_cli::profile_cmd::profile(args))
        }
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
        Command::Submit {
            workflow,
            input,
            namespace,
            params,
            name,
            ttl,
        } => {
            use vflow_cli::submit_cmd::{SubmitArgs, submit};
            let args = SubmitArgs {
                workflow,
                input,
                namespace,
                params,
                name,
                ttl_seconds_after_finished: ttl,
            };
            ExitCode::from(vflow_cli::status_cmd::with_client(|c| async move {
                submit(c, &args).await.map(|n| format!("{n}\n"))
            }))
        }
        Command::Status { run, namespace } => {
            ExitCode::from(vflow_cli::status_cmd::with_client(|c| async move {
                vflow_cli::status_cmd::status(c, run.as_deref(), namespace.as_deref()).await
            }))
        }
        Command::Logs {
            run,
            stage,
            namespace,
            tail,
        } => {
            let args = vflow_cli::logs_cmd::LogsArgs {
                run,
                stage,
                namespace,
                tail,
            };
            ExitCode::from(vflow_cli::status_cmd::with_client(|c| async move {
                vflow_cli::logs_cmd::logs(c, &args).await
            }))
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

/// Runs `vflow run` or `vflow profile` on a multi-threaded runtime: their exit code, or
/// their error's message and code.
fn run_local(
    job: impl std::future::Future<Output = Result<i32, vflow_cli::run_cmd::RunError>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vflow: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(job) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("{}", e.message);
            ExitCode::from(e.code)
        }
    }
}
