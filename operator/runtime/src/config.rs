//! Flags and environment of the two modes. Every flag has an environment variable,
//! because the operator configures pods through env.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// "250ms", "90s", "5m", "1h" or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration such as 250ms, 90s, 5m or 1h"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("{text:?}: a duration must be zero or more"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Bytes: a plain count or a Kubernetes quantity with a binary suffix ("536870912",
/// "512Mi", "2Gi"). Decimal suffixes (M, G) are refused rather than guessed at.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let expected = "expected bytes or a quantity such as 512Mi or 2Gi";
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return Err(format!("{text:?}: {expected} (suffixes: Ki, Mi, Gi)")),
    };
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("{text:?}: {expected}"))?;
    if bytes == 0 {
        return Err(format!("{text:?}: a memory limit must be above 0"));
    }
    Ok(bytes)
}

/// A command line as argv; one flag value (clap would read a bare Vec as many values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argv(pub Vec<String>);

/// A command given as a JSON array (how the operator passes FunctionProfile.command).
pub fn parse_command(text: &str) -> Result<Argv, String> {
    let argv: Vec<String> = serde_json::from_str(text)
        .map_err(|e| format!("{text:?}: expected a JSON array of strings ({e})"))?;
    if argv.is_empty() || argv[0].is_empty() {
        return Err("the command is empty".into());
    }
    Ok(Argv(argv))
}

/// Binds the listener and, when asked, writes the port actually bound (atomically, so a
/// caller polling the file never reads half a number).
pub async fn listen(
    bind: IpAddr,
    port: u16,
    port_file: Option<&std::path::Path>,
) -> Result<(tokio::net::TcpListener, std::net::SocketAddr), String> {
    let listener = tokio::net::TcpListener::bind((bind, port))
        .await
        .map_err(|e| format!("cannot listen on {bind}:{port}: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    if let Some(path) = port_file {
        let partial = path.with_extension("partial");
        std::fs::write(&partial, address.port().to_string())
            .and_then(|()| std::fs::rename(&partial, path))
            .map_err(|e| format!("port file {}: {e}", path.display()))?;
    }
    Ok((listener, address))
}

/// How the function's processes serve invocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum WorkerMode {
    /// A process per invocation (ffmpeg functions).
    #[default]
    PerInvocation,
    /// Long-lived workers that load once and serve invocation after invocation
    /// (`resident`).
    Resident,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The function's name (metrics label and logs).
    #[arg(long, env = "VFLOW_FUNCTION", default_value = "function")]
    pub function: String,
    /// The function's command as a JSON array; or give it after `--`.
    #[arg(long = "command", env = "VFLOW_COMMAND", value_parser = parse_command)]
    pub command_json: Option<Argv>,
    /// per-invocation: a process per invocation; resident: workers that load once and
    /// serve one invocation after another (`<command> --resident`, see `resident`;
    /// starting the first one is the warm-up, and --warmup-command is not run).
    #[arg(
        long,
        env = "VFLOW_WORKER",
        value_enum,
        default_value = "per-invocation"
    )]
    pub worker: WorkerMode,
    /// Run once at start-up; /readyz answers 200 only after it succeeds.
    #[arg(long = "warmup-command", env = "VFLOW_WARMUP_COMMAND", value_parser = parse_command)]
    pub warmup: Option<Argv>,
    #[arg(long, env = "VFLOW_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// 0 picks a free port; see --port-file.
    #[arg(long, env = "VFLOW_PORT", default_value_t = vflow_contract::naming::RUNTIME_PORT)]
    pub port: u16,
    /// Write the port actually bound to this file (for callers that asked for port 0).
    #[arg(long, env = "VFLOW_PORT_FILE")]
    pub port_file: Option<PathBuf>,
    /// Invocations run at once; more get 429 with Retry-After.
    #[arg(long, env = "VFLOW_CONCURRENCY", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrency: u32,
    /// Where inputs and outputs are staged (an emptyDir in a pod).
    #[arg(long, env = "VFLOW_SCRATCH_DIR", default_value = "/tmp/vflow-scratch")]
    pub scratch_dir: PathBuf,
    /// The scratch disk's size (the pod's emptyDir sizeLimit, which the kubelet
    /// enforces by eviction): a download that would pass it is refused, naming the
    /// input, before anything is written. Bytes or e.g. 10Gi. Unset: the filesystem's
    /// free space is the limit.
    #[arg(long, env = "VFLOW_SCRATCH_LIMIT", value_parser = parse_memory)]
    pub scratch_limit: Option<u64>,
    /// The longest one invocation may run.
    #[arg(long, env = "VFLOW_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Kill the function's process tree with SIGKILL (counted as an OOM kill) when its
    /// summed resident memory, sampled, goes over this: bytes or e.g. 512Mi, 2Gi. For
    /// the local mode; in a pod the container's cgroup limit does it.
    #[arg(long, env = "VFLOW_MEMORY_LIMIT", value_parser = parse_memory)]
    pub memory_limit: Option<u64>,
    /// Where the container's cgroup counts its OOM kills: cgroup v2 `memory.events`,
    /// cgroup v1 `memory.oom_control` (both have an `oom_kill` line); several paths
    /// separated by ':', the first readable one is used. A failed invocation during
    /// which the count rose was killed for memory, also when the OOM killer took a
    /// process under the function (its ffmpeg). Set in pods; see `oom_events`.
    #[arg(long, env = "VFLOW_MEMORY_EVENTS")]
    pub memory_events: Option<String>,
    /// Where the container's cgroup is mounted: its CPU limit (`cpu.max`, or v1's
    /// `cpu/cpu.cfs_quota_us`) over --concurrency sets each function's
    /// VFLOW_FFMPEG_THREADS, unless this process's environment sets that (see
    /// `cpu_share`). Without a limit there, the CPUs this process may use.
    #[arg(long, env = "VFLOW_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// The runtime of the next stage fused into this pod (e.g. http://127.0.0.1:8081):
    /// a request with `then` hands its outputs to it through the scratch volume.
    #[arg(long, env = "VFLOW_NEXT")]
    pub next: Option<String>,
    /// This runtime is fused after the one at this URL (in the same pod), which hands
    /// it work: on SIGTERM it keeps serving until that one has stopped and says so
    /// (POST /release) or the drain timeout passes, so the chains in flight there can
    /// finish here.
    #[arg(long, env = "VFLOW_AFTER")]
    pub after: Option<String>,
    /// After SIGTERM, how long in-flight invocations may take to finish.
    #[arg(long, env = "VFLOW_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Name of this instance in responses (the pod name in a cluster).
    #[arg(long, env = "VFLOW_INSTANCE")]
    pub instance: Option<String>,
    /// Accept local paths as inputs and output prefixes (the local backend, on the
    /// user's machine). Without it only objects are, and files the runtime fused
    /// before this one hands on through the scratch directory.
    #[arg(long, env = "VFLOW_ALLOW_LOCAL_PATHS")]
    pub allow_local_paths: bool,
    /// Read and write objects of this bucket only (the operator sets the workflow's).
    #[arg(long, env = "VFLOW_BUCKET")]
    pub bucket: Option<String>,
    /// Write only under this key prefix of the bucket (the workflow's outputPrefix).
    #[arg(long, env = "VFLOW_OUTPUT_PREFIX")]
    pub output_prefix: Option<String>,
    /// A file holding the token callers must send as `Authorization: Bearer` on
    /// /invoke and /release (the operator mounts the workflow's token Secret).
    #[arg(long, env = "VFLOW_INVOKE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    #[arg(long, env = "VFLOW_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// The function's command, when not given by --command.
    #[arg(last = true)]
    pub command: Vec<String>,
}

impl ServeArgs {
    /// Who may call, and what it may read and write (see `access`).
    pub fn access(&self) -> Result<crate::access::Access, String> {
        let token = match &self.token_file {
            Some(path) => {
                let raw = std::fs::read_to_string(path)
                    .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
                let token = raw.trim();
                if token.is_empty() {
                    return Err(format!(
                        "--token-file {}: empty; an empty token would let any caller in",
                        path.display()
                    ));
                }
                Some(token.to_string())
            }
            None => None,
        };
        Ok(crate::access::Access {
            local_paths: self.allow_local_paths,
            scratch: self.scratch_dir.clone(),
            bucket: self.bucket.clone().filter(|b| !b.is_empty()),
            output_prefix: self.output_prefix.clone().filter(|p| !p.is_empty()),
            token,
        })
    }

    pub fn function_command(&self) -> Result<Vec<String>, String> {
        match (&self.command_json, self.command.is_empty()) {
            (Some(_), false) => {
                Err("give the command either by --command or after --, not both".into())
            }
            (Some(argv), true) => Ok(argv.0.clone()),
            (None, false) => Ok(self.command.clone()),
            (None, true) => {
                Err("no function command: set VFLOW_COMMAND, --command or give it after --".into())
            }
        }
    }

    pub fn instance_name(&self) -> String {
        self.instance
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .unwrap_or_else(|| format!("pid-{}", std::process::id()))
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    #[arg(long, env = "VFLOW_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    #[arg(long, env = "VFLOW_METRICS_PORT", default_value_t = vflow_contract::naming::METRICS_PORT)]
    pub port: u16,
    /// The function's name, a label on every metric (as the runtime's).
    #[arg(long, env = "VFLOW_FUNCTION", default_value = "function")]
    pub function: String,
    #[arg(long, env = "VFLOW_PORT_FILE")]
    pub port_file: Option<PathBuf>,
    /// Time between samples.
    #[arg(long, env = "VFLOW_SAMPLE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Observe this process and its descendants; by default the `vflow-runtime serve`
    /// process found in the shared process namespace.
    #[arg(long, env = "VFLOW_TARGET_PID")]
    pub pid: Option<i32>,
    /// Samples kept per quantity (the observation window).
    #[arg(long, env = "VFLOW_WINDOW_SAMPLES", default_value_t = 3600)]
    pub window: usize,
    #[arg(long, env = "VFLOW_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn commands() {
        assert_eq!(
            parse_command(r#"["/usr/local/bin/vflow-fn", "scale"]"#),
            Ok(Argv(vec![
                "/usr/local/bin/vflow-fn".to_string(),
                "scale".to_string()
            ]))
        );
        assert!(parse_command("vflow-fn scale").is_err());
        assert!(parse_command("[]").is_err());
    }

    #[test]
    fn memory_limits() {
        assert_eq!(parse_memory("536870912"), Ok(536_870_912));
        assert_eq!(parse_memory("512Mi"), Ok(512 << 20));
        assert_eq!(parse_memory("2Gi"), Ok(2 << 30));
        assert_eq!(parse_memory("64Ki"), Ok(64 << 10));
        assert_eq!(parse_memory(" 1Gi "), Ok(1 << 30));
        for bad in [
            "",
            "0",
            "0Mi",
            "512M",
            "2G",
            "512mi",
            "1.5Gi",
            "-1",
            "+5",
            "Mi",
            "12 Mi",
            "lots",
            "99999999999999999999",
            "17179869184Gi",
        ] {
            assert!(parse_memory(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(
            parse_memory("512M").is_err_and(|e| e.contains("512M") && e.contains("Mi")),
            "the error names the value and the suffixes"
        );
    }

    /// clap's error names the flag and the value.
    #[test]
    fn a_bad_memory_limit_is_refused_naming_the_flag() {
        use clap::Parser;
        #[derive(Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        let ok = Serve::try_parse_from(["serve", "--memory-limit", "512Mi"]);
        assert_eq!(ok.ok().and_then(|s| s.args.memory_limit), Some(512 << 20));
        let none = Serve::try_parse_from(["serve"]);
        assert_eq!(none.ok().map(|s| s.args.memory_limit), Some(None));
        let err = match Serve::try_parse_from(["serve", "--memory-limit", "512MB"]) {
            Ok(_) => panic!("512MB was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("--memory-limit") && err.contains("512MB"),
            "{err}"
        );
    }
}
