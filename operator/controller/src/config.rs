//! Command line and environment: every setting has a flag and a `VFLOW_OPERATOR_*`
//! variable (the chart sets the variables).

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use clap::Parser;
use vflow_planner::{PlannerConfig, gpu::GpuSharing};

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// vflow's operator: VideoWorkflows -> stage Deployments and Services.
#[derive(Debug, Clone, Parser)]
#[command(name = "vflow-operator", version)]
pub struct Args {
    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, env = "VFLOW_OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Only watch this namespace (default: all namespaces).
    #[arg(long, env = "VFLOW_OPERATOR_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// How the cluster shares GPUs, as JSON: {"mode":"whole"},
    /// {"mode":"time-slicing","slices":4,"resource":"nvidia.com/gpu.shared"},
    /// {"mode":"mps","slices":8}, {"mode":"mig","profiles":[{"resource":"nvidia.com/mig-1g.10gb"}]},
    /// {"mode":"hami","gpuMemoryBytes":85899345920}, {"mode":"kai"}.
    #[arg(
        long,
        env = "VFLOW_OPERATOR_GPU_SHARING",
        default_value = r#"{"mode":"whole"}"#
    )]
    pub gpu_sharing: String,

    /// Elect a leader through a coordination.k8s.io Lease (off only for a single replica
    /// in tests).
    #[arg(long, env = "VFLOW_OPERATOR_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Namespace of the leader election Lease (default: the pod's namespace, else default).
    #[arg(long, env = "VFLOW_OPERATOR_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "VFLOW_OPERATOR_LEASE_NAME",
        default_value = "vflow-operator"
    )]
    pub lease_name: String,

    /// This replica's name in the Lease (default: $POD_NAME, else hostname and PID).
    #[arg(long, env = "VFLOW_OPERATOR_IDENTITY")]
    pub identity: Option<String>,

    /// Run the VideoWorkflowRun controller and the S3 / webhook triggers in this process
    /// (on the leader; settings from the `VFLOW_RUNS_*` variables, docs/runs.md).
    #[arg(long, env = "VFLOW_OPERATOR_RUN_CONTROLLER", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_controller: bool,

    /// S3 endpoint for workflows whose storage names none (default: AWS S3); the run
    /// controller reads the same variable.
    #[arg(long, env = "VFLOW_S3_ENDPOINT")]
    pub default_s3_endpoint: Option<String>,

    /// Time between scrapes of the function pods' observations (0 turns it off).
    #[arg(long, env = "VFLOW_OBSERVE_SECONDS", default_value_t = 30)]
    pub observe_seconds: u64,

    /// How long a Lease holds without renewal, in seconds.
    #[arg(long, env = "VFLOW_OPERATOR_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u32,

    /// Time between Lease renewals (and acquisition attempts), in seconds.
    #[arg(long, env = "VFLOW_OPERATOR_RENEW_SECONDS", default_value_t = 5)]
    pub renew_seconds: u32,

    /// Extra pod-template annotations for every stage, as key=value (repeatable); e.g.
    /// a service mesh opt-out, or kwok's ready delay in tests.
    #[arg(
        long = "pod-annotation",
        env = "VFLOW_OPERATOR_POD_ANNOTATIONS",
        value_delimiter = ','
    )]
    pub pod_annotations: Vec<String>,

    /// Seconds added to a stage's cold start when pre-warming, so instances are ready
    /// a little before the requested time.
    #[arg(
        long,
        env = "VFLOW_OPERATOR_PREWARM_MARGIN_SECONDS",
        default_value_t = 1.0
    )]
    pub prewarm_margin_seconds: f64,

    /// Cold start assumed for a function with neither observations nor coldStartPrior.
    #[arg(
        long,
        env = "VFLOW_OPERATOR_DEFAULT_COLD_START_SECONDS",
        default_value_t = 5.0
    )]
    pub default_cold_start_seconds: f64,

    /// Reconciliations run at once per controller.
    #[arg(long, env = "VFLOW_OPERATOR_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,

    /// The operator's own pod labels (key=value,...): set, every workflow gets a
    /// NetworkPolicy over its stage pods that lets in only pods with these labels in
    /// the operator's namespace (and `--stage-metrics-from`), and lets out only DNS and
    /// the storage endpoint's port. Unset: no such policy.
    #[arg(long, env = "VFLOW_OPERATOR_POD_SELECTOR", value_delimiter = ',')]
    pub pod_selector: Vec<String>,

    /// Who else may scrape the stage pods' metrics port: NetworkPolicy peers, as JSON
    /// (e.g. the Prometheus namespace).
    #[arg(long, env = "VFLOW_OPERATOR_STAGE_METRICS_FROM")]
    pub stage_metrics_from: Option<String>,

    /// Log as JSON lines instead of text.
    #[arg(
        long,
        env = "VFLOW_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Log filter (RUST_LOG syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info,kube=warn")]
    pub log_filter: String,
}

/// What the reconcilers need from the configuration, parsed once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub planner: PlannerConfig,
    pub pod_annotations: BTreeMap<String, String>,
    pub prewarm_margin: Duration,
    pub default_cold_start: Duration,
    /// Endpoint for workflows whose storage names none.
    pub default_s3_endpoint: Option<String>,
    /// Who may call stage pods; None: no stage NetworkPolicy.
    pub stage_ingress: Option<crate::workflow::network::StageIngress>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            planner: PlannerConfig::default(),
            pod_annotations: BTreeMap::new(),
            prewarm_margin: Duration::from_secs(1),
            default_cold_start: Duration::from_secs(5),
            default_s3_endpoint: None,
            stage_ingress: None,
        }
    }
}

impl Args {
    /// Who may call stage pods, from --pod-selector, --stage-metrics-from and the
    /// operator's namespace.
    fn stage_ingress(&self) -> Result<Option<crate::workflow::network::StageIngress>, Error> {
        let labels: Vec<&String> = self
            .pod_selector
            .iter()
            .filter(|s| !s.trim().is_empty())
            .collect();
        if labels.is_empty() {
            return Ok(None);
        }
        let mut operator_labels = BTreeMap::new();
        for kv in labels {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                Error::Config(format!("--pod-selector {kv:?}: expected key=value"))
            })?;
            operator_labels.insert(k.trim().to_string(), v.trim().to_string());
        }
        let operator_namespace = std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| {
                Error::Config(
                    "--pod-selector needs POD_NAMESPACE (the operator's namespace, from the downward API)"
                        .into(),
                )
            })?;
        let metrics_from = match self
            .stage_metrics_from
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        {
            Some(json) => serde_json::from_str(json).map_err(|e| {
                Error::Config(format!(
                    "--stage-metrics-from: expected a JSON list of NetworkPolicy peers: {e}"
                ))
            })?,
            None => Vec::new(),
        };
        Ok(Some(crate::workflow::network::StageIngress {
            operator_namespace,
            operator_labels,
            metrics_from,
        }))
    }

    pub fn settings(&self) -> Result<Settings, Error> {
        let sharing: GpuSharing = serde_json::from_str(&self.gpu_sharing)
            .map_err(|e| Error::Config(format!("--gpu-sharing {:?}: {e}", self.gpu_sharing)))?;
        let mut pod_annotations = BTreeMap::new();
        for kv in &self.pod_annotations {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                Error::Config(format!("--pod-annotation {kv:?}: expected key=value"))
            })?;
            pod_annotations.insert(k.to_string(), v.to_string());
        }
        let secs = |s: f64, what: &str| {
            Duration::try_from_secs_f64(s)
                .map_err(|_| Error::Config(format!("{what} {s}: not a number of seconds")))
        };
        Ok(Settings {
            planner: PlannerConfig {
                gpu_sharing: sharing,
                ..PlannerConfig::default()
            },
            pod_annotations,
            prewarm_margin: secs(self.prewarm_margin_seconds, "--prewarm-margin-seconds")?,
            default_cold_start: secs(
                self.default_cold_start_seconds,
                "--default-cold-start-seconds",
            )?,
            default_s3_endpoint: self
                .default_s3_endpoint
                .clone()
                .filter(|e| !e.trim().is_empty()),
            stage_ingress: self.stage_ingress()?,
        })
    }

    pub fn identity(&self) -> String {
        self.identity
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .unwrap_or_else(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "vflow-operator".into());
                format!("{host}-{}", std::process::id())
            })
    }

    pub fn lease_namespace(&self) -> String {
        self.lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .or_else(|| self.watch_namespace.clone())
            .unwrap_or_else(|| "default".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sharing_modes_and_annotations() {
        let args = Args::parse_from([
            "vflow-operator",
            "--gpu-sharing",
            r#"{"mode":"time-slicing","slices":4}"#,
            "--pod-annotation",
            "a=b,c=d=e",
        ]);
        let s = args.settings().expect("valid");
        assert!(matches!(
            s.planner.gpu_sharing,
            GpuSharing::TimeSlicing { slices: 4, .. }
        ));
        assert_eq!(s.pod_annotations.get("c").map(String::as_str), Some("d=e"));
        let bad = Args::parse_from(["vflow-operator", "--gpu-sharing", r#"{"mode":"nope"}"#]);
        assert!(bad.settings().is_err());
    }
}
