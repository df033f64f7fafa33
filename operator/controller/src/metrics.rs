//! Prometheus metrics, all named `vflow_operator_*`, with labels of bounded
//! cardinality (controller, outcome, error category, stage state, HTTP method, resource
//! kind; never object names).

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The operator's metrics and the registry that serves them.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciliations: IntCounterVec,
    pub errors: IntCounterVec,
    pub duration: HistogramVec,
    pub stages: IntGaugeVec,
    pub instances: IntGaugeVec,
    pub function_requests: GaugeVec,
    pub scale_decisions: IntCounterVec,
    pub api_requests: IntCounterVec,
    pub leader: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciliations = IntCounterVec::new(
            Opts::new(
                "vflow_operator_reconciliations_total",
                "Reconciliations by controller and outcome (ok, invalid, error).",
            ),
            &["controller", "outcome"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "vflow_operator_reconcile_errors_total",
                "Failed reconciliations by controller and error category.",
            ),
            &["controller", "category"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "vflow_operator_reconcile_duration_seconds",
                "Time one reconciliation took.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["controller"],
        )
        .expect("valid metric");
        let stages = IntGaugeVec::new(
            Opts::new(
                "vflow_operator_stages",
                "Stages of all workflows by state (ready, not_ready, scaled_to_zero, invalid).",
            ),
            &["state"],
        )
        .expect("valid metric");
        let instances = IntGaugeVec::new(
            Opts::new(
                "vflow_operator_instances",
                "Stage instances (replicas) of all workflows: desired by the autoscaler, ready.",
            ),
            &["state"],
        )
        .expect("valid metric");
        let function_requests = GaugeVec::new(
            Opts::new(
                "vflow_operator_function_requests",
                "Resources requested for a function: per-instance request times desired \
                 replicas, summed over the stages that run it (cpu_cores, memory_bytes, gpu).",
            ),
            &["function", "resource"],
        )
        .expect("valid metric");
        let scale_decisions = IntCounterVec::new(
            Opts::new(
                "vflow_operator_scale_decisions_total",
                "Replica changes decided by the autoscaler, by direction and reason.",
            ),
            &["direction", "reason"],
        )
        .expect("valid metric");
        let api_requests = IntCounterVec::new(
            Opts::new(
                "vflow_operator_api_requests_total",
                "Requests this process sent to the API server, by HTTP method and resource.",
            ),
            &["method", "resource"],
        )
        .expect("valid metric");
        let leader = IntGauge::new(
            "vflow_operator_leader",
            "1 while this replica holds the leader election Lease.",
        )
        .expect("valid metric");
        for c in [
            Box::new(reconciliations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(stages.clone()),
            Box::new(instances.clone()),
            Box::new(function_requests.clone()),
            Box::new(scale_decisions.clone()),
            Box::new(api_requests.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Metrics {
            registry,
            reconciliations,
            errors,
            duration,
            stages,
            instances,
            function_requests,
            scale_decisions,
            api_requests,
            leader,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Counts one request to the API server (called from the client's tower layer).
    pub fn count_request(&self, method: &http::Method, path: &str) {
        self.api_requests
            .with_label_values(&[method.as_str(), resource_of(path)])
            .inc();
    }
}

/// The resource (plural) a request path names, or "other": `/api/v1/namespaces/a/pods/b`
/// -> `pods`; `/apis/apps/v1/namespaces/a/deployments` -> `deployments`. Only a fixed set
/// of names is returned, so the label stays bounded whatever a path holds.
pub fn resource_of(path: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "deployments",
        "services",
        "videoworkflows",
        "functionprofiles",
        "videoworkflowruns",
        "events",
        "leases",
        "pods",
        "namespaces",
        "secrets",
    ];
    let path = path.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rest: &[&str] = match segments.first() {
        Some(&"api") => segments.get(2..).unwrap_or_default(),
        Some(&"apis") => segments.get(3..).unwrap_or_default(),
        _ => return "other",
    };
    let rest = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail,
        _ => rest,
    };
    rest.first()
        .and_then(|r| KNOWN.iter().find(|k| *k == r))
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_from_paths() {
        assert_eq!(resource_of("/api/v1/namespaces/a/pods/b"), "pods");
        assert_eq!(
            resource_of("/apis/apps/v1/namespaces/a/deployments/x?fieldManager=y"),
            "deployments"
        );
        assert_eq!(
            resource_of("/apis/vflow.io/v1alpha1/namespaces/a/videoworkflows/w/status"),
            "videoworkflows"
        );
        assert_eq!(
            resource_of("/apis/apps/v1/deployments?watch=true"),
            "deployments"
        );
        assert_eq!(resource_of("/api/v1/namespaces/a"), "namespaces");
        assert_eq!(resource_of("/apis/x/v1/namespaces/a/unknown"), "other");
        assert_eq!(resource_of("/version"), "other");
    }

    #[test]
    fn renders_counters() {
        let m = Metrics::new();
        m.count_request(
            &http::Method::PATCH,
            "/apis/apps/v1/namespaces/a/deployments/x",
        );
        let text = m.render();
        assert!(text.contains(
            "vflow_operator_api_requests_total{method=\"PATCH\",resource=\"deployments\"} 1"
        ));
    }
}
