//! The run controller's settings; every one has a `VFLOW_RUNS_*` variable, so the
//! operator needs no new flags to start it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use vflow_planner::PlannerConfig;

use crate::backend::{KubeBackendConfig, Resolver, ServiceResolver};
use crate::demand::DemandBoard;
use crate::metrics::RunMetrics;
use crate::status::Prices;
use crate::trigger::poller::PollerConfig;

#[derive(Clone)]
pub struct RunsConfig {
    /// Only this namespace (default: all).
    pub namespace: Option<String>,
    pub prices: Prices,
    /// Kept after finishing when the run does not set ttlSecondsAfterFinished.
    pub default_ttl: Duration,
    pub backend: KubeBackendConfig,
    /// Shortest time between two status writes of one run.
    pub status_interval: Duration,
    /// How often an unfinished run without an engine task (waiting for its workflow,
    /// its Secret, its bucket) is looked at again.
    pub retry_interval: Duration,
    /// S3 prefix polling; None: off.
    pub poller: Option<PollerConfig>,
    /// The MinIO notification webhook's address; None: off.
    pub webhook_addr: Option<SocketAddr>,
    pub webhook_token: Option<String>,
    pub resolver: Arc<dyn Resolver>,
    /// Where finished runs are counted (the operator's registry); None: not counted.
    pub metrics: Option<RunMetrics>,
    /// How runs are planned: the operator's own planner settings (its flags), so that a
    /// run sizes, costs and pre-warms its stages as the workflow controller plans them.
    pub planner: PlannerConfig,
    /// Where runs post their demand for the workflow controller in this process.
    pub demand: Arc<DemandBoard>,
    /// On shutdown, how long invocations in flight may take to finish (and be recorded)
    /// before the process goes; keep it under the pod's termination grace period.
    pub drain_timeout: Duration,
    /// Runs driven at once by this operator, and per workflow; the others wait for a
    /// slot (0: no cap).
    pub max_active: usize,
    pub max_active_per_workflow: usize,
}

impl Default for RunsConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            prices: Prices::default(),
            default_ttl: Duration::from_secs(24 * 3600),
            backend: KubeBackendConfig::default(),
            status_interval: Duration::from_secs(1),
            retry_interval: Duration::from_secs(15),
            poller: Some(PollerConfig::default()),
            webhook_addr: None,
            webhook_token: None,
            resolver: Arc::new(ServiceResolver),
            metrics: None,
            planner: PlannerConfig::default(),
            demand: Arc::default(),
            drain_timeout: Duration::from_secs(20),
            max_active: 200,
            max_active_per_workflow: 50,
        }
    }
}

fn seconds(name: &str, value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("{name}={value}: expected a number of seconds"))
}

fn number(name: &str, value: &str) -> Result<f64, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x >= 0.0)
        .ok_or_else(|| format!("{name}={value}: expected a non-negative number"))
}

impl RunsConfig {
    /// From `VFLOW_RUNS_*` variables through `get` (the environment in the operator).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut c = Self::default();
        let var = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        if let Some(v) = var("VFLOW_RUNS_NAMESPACE").or_else(|| var("VFLOW_OPERATOR_NAMESPACE")) {
            c.namespace = Some(v);
        }
        let prices = [
            (
                "VFLOW_RUNS_PRICE_CPU_CORE_SECOND",
                &mut c.prices.cpu_core_second,
            ),
            (
                "VFLOW_RUNS_PRICE_MEMORY_GIB_SECOND",
                &mut c.prices.memory_gib_second,
            ),
            ("VFLOW_RUNS_PRICE_GPU_SECOND", &mut c.prices.gpu_second),
        ];
        for (k, slot) in prices {
            if let Some(v) = var(k) {
                *slot = number(k, &v)?;
            }
        }
        if let Some(v) = var("VFLOW_RUNS_CURRENCY") {
            c.prices.currency = v;
        }
        if let Some(v) = var("VFLOW_RUNS_DEFAULT_TTL_SECONDS") {
            c.default_ttl = seconds("VFLOW_RUNS_DEFAULT_TTL_SECONDS", &v)?;
        }
        if let Some(v) = var("VFLOW_RUNS_ACTIVATION_TIMEOUT_SECONDS") {
            c.backend.activation_timeout = seconds("VFLOW_RUNS_ACTIVATION_TIMEOUT_SECONDS", &v)?;
        }
        if let Some(v) = var("VFLOW_RUNS_POLL_SECONDS") {
            let interval = seconds("VFLOW_RUNS_POLL_SECONDS", &v)?;
            c.poller = (!interval.is_zero()).then(|| PollerConfig {
                interval,
                ..PollerConfig::default()
            });
        }
        if let (Some(p), Some(v)) = (c.poller.as_mut(), var("VFLOW_RUNS_POLL_RUN_EXISTING")) {
            p.run_existing = matches!(v.as_str(), "true" | "1");
        }
        if let Some(v) = var("VFLOW_RUNS_WEBHOOK_ADDR") {
            c.webhook_addr = Some(
                v.parse()
                    .map_err(|e| format!("VFLOW_RUNS_WEBHOOK_ADDR={v}: {e}"))?,
            );
        }
        // Set but blank would leave the webhook open to any caller: refuse to start. A
        // token read from a file keeps its trailing newline; it is not part of it.
        if let Some(raw) = get("VFLOW_RUNS_WEBHOOK_TOKEN") {
            let token = raw.trim();
            if token.is_empty() {
                return Err(
                    "VFLOW_RUNS_WEBHOOK_TOKEN is set but blank: the webhook would \
                            accept any caller; give it a token, or unset it"
                        .into(),
                );
            }
            c.webhook_token = Some(token.to_string());
        }
        if let Some(v) = var("VFLOW_RUNS_DRAIN_SECONDS") {
            c.drain_timeout = seconds("VFLOW_RUNS_DRAIN_SECONDS", &v)?;
        }
        for (k, slot) in [
            ("VFLOW_RUNS_MAX_ACTIVE", &mut c.max_active),
            (
                "VFLOW_RUNS_MAX_ACTIVE_PER_WORKFLOW",
                &mut c.max_active_per_workflow,
            ),
        ] {
            if let Some(v) = var(k) {
                *slot = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("{k}={v}: expected a whole number (0: no cap)"))?;
            }
        }
        Ok(c)
    }

    pub fn from_env() -> Result<Self, String> {
        Self::from_vars(|k| std::env::var(k).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prices_and_switches() {
        let vars = [
            ("VFLOW_RUNS_PRICE_GPU_SECOND", "0.001"),
            ("VFLOW_RUNS_CURRENCY", "EUR"),
            ("VFLOW_RUNS_POLL_SECONDS", "0"),
            ("VFLOW_RUNS_WEBHOOK_ADDR", "127.0.0.1:9000"),
        ];
        let get = |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        let c = RunsConfig::from_vars(get).expect("valid");
        assert_eq!(c.prices.gpu_second, 0.001);
        assert_eq!(c.prices.currency, "EUR");
        assert!(c.poller.is_none(), "0 s turns polling off");
        assert_eq!(c.webhook_addr.map(|a| a.port()), Some(9000));
        let bad = |k: &str| (k == "VFLOW_RUNS_PRICE_CPU_CORE_SECOND").then(|| "-1".to_string());
        assert!(RunsConfig::from_vars(bad).is_err());
    }

    #[test]
    fn a_blank_webhook_token_is_refused_and_a_trailing_newline_is_not_part_of_one() {
        for blank in ["", "  ", "\n"] {
            let get = |k: &str| (k == "VFLOW_RUNS_WEBHOOK_TOKEN").then(|| blank.to_string());
            let Err(e) = RunsConfig::from_vars(get) else {
                panic!("a blank token ({blank:?}) was accepted");
            };
            assert!(e.contains("VFLOW_RUNS_WEBHOOK_TOKEN"), "{e}");
        }
        let get = |k: &str| (k == "VFLOW_RUNS_WEBHOOK_TOKEN").then(|| "s3cret\n".to_string());
        let c = RunsConfig::from_vars(get).expect("valid");
        assert_eq!(c.webhook_token.as_deref(), Some("s3cret"));
        assert!(
            RunsConfig::from_vars(|_| None)
                .expect("valid")
                .webhook_token
                .is_none()
        );
    }
}
