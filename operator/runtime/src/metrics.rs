//! Prometheus metrics of the invocation server. Labels are bounded: the function
//! name and a fixed set of outcomes and phases, never run ids.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct RuntimeMetrics {
    registry: Registry,
    pub invocations: IntCounterVec,
    pub seconds: HistogramVec,
    pub in_flight: IntGauge,
    pub rejected: IntCounterVec,
    /// Requests that joined the same work already running (a resent unit).
    pub joined: IntCounter,
    pub bytes: IntCounterVec,
    pub cpu_seconds: Histogram,
    pub peak_memory: Histogram,
    pub oom_kills: IntCounter,
    pub cold_start: Gauge,
    pub ready: IntGauge,
}

fn buckets_seconds() -> Vec<f64> {
    vec![
        0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        600.0,
    ]
}

impl RuntimeMetrics {
    pub fn new(function: &str) -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(
            Some("vflow".into()),
            Some([("function".to_string(), function.to_string())].into()),
        )?;
        let invocations = IntCounterVec::new(
            Opts::new(
                "runtime_invocations_total",
                "Invocations finished, by outcome",
            ),
            &["outcome"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new("runtime_invocation_seconds", "Time per invocation step")
                .buckets(buckets_seconds()),
            &["phase"],
        )?;
        let in_flight = IntGauge::new("runtime_in_flight", "Invocations running now")?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "runtime_rejected_total",
                "Invocations turned away, by reason",
            ),
            &["reason"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "runtime_transfer_bytes_total",
                "Bytes downloaded (in) and uploaded (out)",
            ),
            &["direction"],
        )?;
        let cpu_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "runtime_function_cpu_seconds",
                "CPU (user+sys) per invocation",
            )
            .buckets(buckets_seconds()),
        )?;
        let peak_memory = Histogram::with_opts(
            HistogramOpts::new(
                "runtime_function_peak_memory_bytes",
                "Peak resident memory per invocation",
            )
            .buckets(prometheus::exponential_buckets(
                16.0 * 1024.0 * 1024.0,
                2.0,
                10,
            )?),
        )?;
        let oom_kills = IntCounter::new(
            "runtime_oom_kills_total",
            "Functions killed by SIGKILL for memory: by the OOM killer, or by the runtime over --memory-limit",
        )?;
        let joined = IntCounter::new(
            "runtime_joined_total",
            "Requests for work already running here, answered with its outcome instead of running it again",
        )?;
        let cold_start = Gauge::new("runtime_cold_start_seconds", "Process start to ready")?;
        let ready = IntGauge::new("runtime_ready", "1 once warm-up has finished")?;
        registry.register(Box::new(invocations.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(joined.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(cpu_seconds.clone()))?;
        registry.register(Box::new(peak_memory.clone()))?;
        registry.register(Box::new(oom_kills.clone()))?;
        registry.register(Box::new(cold_start.clone()))?;
        registry.register(Box::new(ready.clone()))?;
        Ok(Self {
            registry,
            invocations,
            seconds,
            in_flight,
            rejected,
            joined,
            bytes,
            cpu_seconds,
            peak_memory,
            oom_kills,
            cold_start,
            ready,
        })
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    String::from_utf8_lossy(&buf).into_owned()
}
