//! `vflow-runtime metrics`: samples the function container from /proc.
//!
//! Why /proc in a shared process namespace rather than the pod's cgroup: the sidecar
//! sees exactly the function's process tree, on cgroup v1 and v2 nodes alike, without
//! mounting the host's cgroup filesystem; and why the operator scrapes this endpoint
//! rather than the sidecar writing the FunctionProfile: function pods then need no
//! Kubernetes credentials at all (automountServiceAccountToken: false).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Gauge, IntCounter, IntGauge, Registry};

use crate::config::MetricsArgs;
use crate::gpu::GpuProbe;
use crate::observations::{ContainerObservations, Window};
use crate::proc_stats;

/// Finds `vflow-runtime serve` among the visible processes (not this sidecar). In a
/// fused pod several run; the stage's own is the one not fused after another
/// (without `VFLOW_AFTER`): the others' functions are theirs, learned from the run
/// records.
pub fn find_serve_process() -> Option<i32> {
    let me = std::process::id() as i32;
    let serving: Vec<i32> = proc_stats::all_pids()
        .into_iter()
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let argv = proc_stats::cmdline(*pid);
            argv.first().is_some_and(|a| a.ends_with("vflow-runtime"))
                && argv.iter().any(|a| a == "serve")
        })
        .collect();
    serving
        .iter()
        .copied()
        .find(|pid| {
            !proc_stats::environ_names(*pid)
                .iter()
                .any(|n| n == "VFLOW_AFTER")
                && !proc_stats::cmdline(*pid).iter().any(|a| a == "--after")
        })
        .or(serving.first().copied())
}

/// CPU seconds of a tree, counting children already reaped (their time moved into
/// their parent's cutime/cstime), so the total only grows.
pub fn tree_usage(root: i32) -> Option<TreeUsage> {
    let members = proc_stats::tree(root);
    let mut usage = TreeUsage {
        processes: 0,
        cpu_seconds: 0.0,
        rss_bytes: 0,
    };
    for pid in &members {
        if let Some(s) = proc_stats::sample(*pid) {
            usage.processes += 1;
            usage.cpu_seconds += s.cpu_seconds + s.children_cpu_seconds;
            usage.rss_bytes += s.rss_bytes;
        }
    }
    (usage.processes > 0).then_some(usage)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TreeUsage {
    pub processes: usize,
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

struct Windows {
    samples: u64,
    busy_cpu: Window,
    busy_memory: Window,
    idle_memory: Window,
    gpu_memory: Window,
    gpu_utilization: Window,
    gpu_unavailable: Option<String>,
}

struct Sidecar {
    registry: Registry,
    windows: Mutex<Windows>,
    interval: f64,
}

struct Gauges {
    cpu: Gauge,
    memory: IntGauge,
    processes: IntGauge,
    gpu_memory: IntGauge,
    gpu_utilization: Gauge,
    samples: IntCounter,
}

fn register(registry: &Registry) -> Result<Gauges, prometheus::Error> {
    let gauges = Gauges {
        cpu: Gauge::new(
            "sidecar_cpu_cores",
            "CPU cores the function container used over the last interval",
        )?,
        memory: IntGauge::new(
            "sidecar_memory_bytes",
            "Resident memory of the function container",
        )?,
        processes: IntGauge::new("sidecar_processes", "Processes in the function container")?,
        gpu_memory: IntGauge::new(
            "sidecar_gpu_memory_bytes",
            "GPU memory in use on the visible GPUs",
        )?,
        gpu_utilization: Gauge::new(
            "sidecar_gpu_utilization_ratio",
            "GPU utilisation of the visible GPUs, 0..1",
        )?,
        samples: IntCounter::new("sidecar_samples_total", "Samples taken")?,
    };
    registry.register(Box::new(gauges.cpu.clone()))?;
    registry.register(Box::new(gauges.memory.clone()))?;
    registry.register(Box::new(gauges.processes.clone()))?;
    registry.register(Box::new(gauges.gpu_memory.clone()))?;
    registry.register(Box::new(gauges.gpu_utilization.clone()))?;
    registry.register(Box::new(gauges.samples.clone()))?;
    Ok(gauges)
}

async fn sample_forever(sidecar: Arc<Sidecar>, gauges: Gauges, args: MetricsArgs) {
    let gpu = match GpuProbe::open() {
        Ok(probe) => Some(probe),
        Err(why) => {
            tracing::info!(reason = %why, "no GPU figures");
            if let Ok(mut w) = sidecar.windows.lock() {
                w.gpu_unavailable = Some(why);
            }
            None
        }
    };
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut previous: Option<(Instant, i32, f64)> = None;
    loop {
        ticker.tick().await;
        let Some(root) = args.pid.or_else(find_serve_process) else {
            gauges.processes.set(0);
            previous = None;
            continue;
        };
        let Some(usage) = tree_usage(root) else {
            gauges.processes.set(0);
            previous = None;
            continue;
        };
        let now = Instant::now();
        let cores = match previous {
            Some((at, pid, cpu)) if pid == root => {
                let elapsed = now.duration_since(at).as_secs_f64();
                (elapsed > 0.0).then(|| ((usage.cpu_seconds - cpu) / elapsed).max(0.0))
            }
            _ => None,
        };
        previous = Some((now, root, usage.cpu_seconds));
        // The runtime alone is idle; any child is a function running.
        let busy = usage.processes > 1;
        gauges
            .processes
            .set(i64::try_from(usage.processes).unwrap_or(i64::MAX));
        gauges
            .memory
            .set(i64::try_from(usage.rss_bytes).unwrap_or(i64::MAX));
        gauges.samples.inc();
        if let Some(cores) = cores {
            gauges.cpu.set(cores);
        }
        let gpu_sample = gpu.as_ref().map(|probe| probe.sample());
        let Ok(mut w) = sidecar.windows.lock() else {
            continue;
        };
        w.samples += 1;
        if busy {
            if let Some(cores) = cores {
                w.busy_cpu.push(cores);
            }
            w.busy_memory.push(usage.rss_bytes as f64);
        } else {
            w.idle_memory.push(usage.rss_bytes as f64);
        }
        match gpu_sample {
            Some(Ok(g)) => {
                gauges
                    .gpu_memory
                    .set(i64::try_from(g.memory_used_bytes).unwrap_or(i64::MAX));
                gauges.gpu_utilization.set(g.utilization);
                w.gpu_memory.push(g.memory_used_bytes as f64);
                w.gpu_utilization.push(g.utilization);
            }
            Some(Err(e)) => w.gpu_unavailable = Some(e),
            None => {}
        }
    }
}

async fn metrics(State(sidecar): State<Arc<Sidecar>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&sidecar.registry),
    )
        .into_response()
}

async fn observations(State(sidecar): State<Arc<Sidecar>>) -> Response {
    let Ok(w) = sidecar.windows.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let body = ContainerObservations {
        samples: w.samples,
        interval_seconds: sidecar.interval,
        busy_cpu_cores: w.busy_cpu.summary(),
        busy_memory_bytes: w.busy_memory.summary(),
        idle_memory_bytes: w.idle_memory.summary(),
        gpu_memory_bytes: w.gpu_memory.summary(),
        gpu_utilization: w.gpu_utilization.summary(),
        gpu_unavailable: w.gpu_unavailable.clone(),
    };
    axum::Json(body).into_response()
}

pub async fn run(args: MetricsArgs) -> Result<(), String> {
    let registry = Registry::new_custom(
        Some("vflow".into()),
        Some([("function".to_string(), args.function.clone())].into()),
    )
    .map_err(|e| e.to_string())?;
    let gauges = register(&registry).map_err(|e| e.to_string())?;
    let window = args.window.max(1);
    let sidecar = Arc::new(Sidecar {
        registry,
        windows: Mutex::new(Windows {
            samples: 0,
            busy_cpu: Window::new(window),
            busy_memory: Window::new(window),
            idle_memory: Window::new(window),
            gpu_memory: Window::new(window),
            gpu_utilization: Window::new(window),
            gpu_unavailable: None,
        }),
        interval: args.interval.as_secs_f64(),
    });
    let (listener, address) =
        crate::config::listen(args.bind, args.port, args.port_file.as_deref()).await?;
    tracing::info!(%address, "metrics sidecar listening");
    tokio::spawn(sample_forever(sidecar.clone(), gauges, args));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/observations", get(observations))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(sidecar);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| format!("server: {e}"))
}
