//! Sizing on a mixed workload: vflow's observed sizing against "user-max" (every
//! stage at its largest bound) and "user-min" (CPU at its smallest bound, memory as
//! the user wrote it), with the same invocations for all three.

use serde::Serialize;
use vflow_api::{
    Distribution, FunctionProfile, FunctionProfileSpec, FunctionProfileStatus, Quantity,
    ResourceBounds, ResourceRequest, SizingMode,
};

use crate::{
    fusion::Prices,
    rng::{LogNormal, Rng, quantile},
    sizing::{SizingConfig, size_stage},
};

const MIB: f64 = 1024.0 * 1024.0;

/// A function's true use and the user's bounds and starting size.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SizingCase {
    pub name: String,
    /// Seconds at full CPU.
    pub exec: f64,
    pub cpu_p50: f64,
    pub cpu_p95: f64,
    pub mem_p50_mib: f64,
    pub mem_p95_mib: f64,
    pub spec_cpu: f64,
    pub spec_mem_mib: f64,
    pub min_cpu: f64,
    pub max_cpu: f64,
    pub min_mem_mib: f64,
    pub max_mem_mib: f64,
}

fn case(
    name: &str,
    exec: f64,
    cpu: (f64, f64),
    mem: (f64, f64),
    spec: (f64, f64),
    cpu_b: (f64, f64),
    mem_b: (f64, f64),
) -> SizingCase {
    SizingCase {
        name: name.into(),
        exec,
        cpu_p50: cpu.0,
        cpu_p95: cpu.1,
        mem_p50_mib: mem.0,
        mem_p95_mib: mem.1,
        spec_cpu: spec.0,
        spec_mem_mib: spec.1,
        min_cpu: cpu_b.0,
        max_cpu: cpu_b.1,
        min_mem_mib: mem_b.0,
        max_mem_mib: mem_b.1,
    }
}

/// Six functions like the examples', two of them written with too little memory.
pub fn mixed_cases() -> Vec<SizingCase> {
    vec![
        case(
            "segment",
            3.0,
            (0.9, 1.3),
            (300.0, 400.0),
            (1.0, 512.0),
            (0.25, 4.0),
            (128.0, 4096.0),
        ),
        case(
            "scale-1080p",
            6.0,
            (1.6, 2.2),
            (700.0, 900.0),
            (2.0, 1024.0),
            (0.5, 8.0),
            (256.0, 8192.0),
        ),
        case(
            "thumbnail",
            1.0,
            (0.3, 0.5),
            (150.0, 200.0),
            (0.5, 256.0),
            (0.25, 4.0),
            (128.0, 4096.0),
        ),
        case(
            "detect-cpu",
            4.0,
            (0.8, 1.2),
            (1800.0, 2400.0),
            (1.0, 2048.0),
            (0.5, 4.0),
            (1024.0, 16384.0),
        ),
        case(
            "stitch",
            2.0,
            (0.2, 0.4),
            (120.0, 180.0),
            (0.5, 256.0),
            (0.25, 2.0),
            (128.0, 2048.0),
        ),
        case(
            "transcode-4k",
            20.0,
            (3.5, 5.5),
            (2500.0, 3500.0),
            (2.0, 2048.0),
            (1.0, 8.0),
            (1024.0, 8192.0),
        ),
    ]
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SizingRow {
    pub strategy: String,
    /// Sum of requested x time over sum of used x time.
    pub cpu_requested_per_used: f64,
    pub memory_requested_per_used: f64,
    pub oom_kills: u64,
    /// Invocations that failed after three OOM kills in a row.
    pub failed: u64,
    pub cost: f64,
    pub p95_latency: f64,
    pub mean_latency: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SizingReport {
    pub invocations_per_function: usize,
    pub cases: Vec<SizingCase>,
    pub rows: Vec<SizingRow>,
}

#[derive(Clone, Copy, PartialEq)]
enum Strategy {
    UserMax,
    UserMin,
    Vflow,
}

fn profile(c: &SizingCase, obs: &[(f64, f64)], ooms: u64) -> FunctionProfile {
    let q = |s: String| s.parse::<Quantity>().ok();
    let mut p = FunctionProfile::new(
        &c.name,
        FunctionProfileSpec {
            image: "sim".into(),
            command: vec!["sim".into()],
            description: None,
            params: vec![],
            resources: ResourceRequest {
                cpu: Quantity::from_cores(c.spec_cpu),
                memory: Quantity::from_bytes(c.spec_mem_mib * MIB),
                gpu: None,
                scratch: None,
            },
            bounds: Some(ResourceBounds {
                min_cpu: q(format!("{}", c.min_cpu)),
                max_cpu: q(format!("{}", c.max_cpu)),
                min_memory: q(format!("{}Mi", c.min_mem_mib)),
                max_memory: q(format!("{}Mi", c.max_mem_mib)),
            }),
            sizing: SizingMode::Auto,
            worker: Default::default(),
            concurrency: 1,
            cold_start_prior: None,
            exec_time_prior: None,
            timeout: None,
            warmup_command: vec![],
            produces: None,
        },
    );
    let dist = |v: Vec<f64>| {
        let mut v = v;
        v.sort_by(f64::total_cmp);
        Distribution {
            p50: crate::rng::quantile_sorted(&v, 0.5),
            p95: crate::rng::quantile_sorted(&v, 0.95),
            max: v.last().copied().unwrap_or(0.0),
        }
    };
    p.status = Some(FunctionProfileStatus {
        invocations: obs.len() as u64,
        oom_kills: ooms,
        cpu_cores: (!obs.is_empty()).then(|| dist(obs.iter().map(|o| o.0).collect())),
        memory_bytes: (!obs.is_empty()).then(|| dist(obs.iter().map(|o| o.1).collect())),
        ..Default::default()
    });
    p
}

/// Runs `n` invocations of each case, interleaved, under each strategy.
pub fn sizing(n: usize, seed: u64) -> SizingReport {
    let cases = mixed_cases();
    let prices = Prices::default();
    let cfg = SizingConfig::default();
    // The same true use for every strategy.
    let mut rng = Rng::new(seed);
    // rounds[k][f]: what invocation k of function f uses.
    let dists: Vec<(LogNormal, LogNormal)> = cases
        .iter()
        .map(|c| {
            (
                LogNormal::from_p50_p95(c.cpu_p50, c.cpu_p95),
                LogNormal::from_p50_p95(c.mem_p50_mib * MIB, c.mem_p95_mib * MIB),
            )
        })
        .collect();
    let rounds: Vec<Vec<(f64, f64)>> = (0..n)
        .map(|_| {
            dists
                .iter()
                .map(|(cpu, mem)| (cpu.sample(&mut rng), mem.sample(&mut rng)))
                .collect()
        })
        .collect();
    let mut rows = Vec::new();
    for (strategy, label) in [
        (Strategy::UserMax, "user-max"),
        (Strategy::UserMin, "user-min"),
        (Strategy::Vflow, "vflow"),
    ] {
        let (mut req_cpu_t, mut used_cpu_t, mut req_mem_t, mut used_mem_t) = (0.0, 0.0, 0.0, 0.0);
        let (mut ooms, mut failed, mut cost) = (0u64, 0u64, 0.0);
        let mut latencies = Vec::new();
        let mut observed: Vec<Vec<(f64, f64)>> = vec![Vec::new(); cases.len()];
        let mut window_ooms = vec![0u64; cases.len()];
        for round in &rounds {
            for (f, c) in cases.iter().enumerate() {
                let (cpu_used, mem_used) = round[f];
                let mut latency = 0.0;
                let mut attempts = 0;
                loop {
                    let (cpu, mem) = match strategy {
                        Strategy::UserMax => (c.max_cpu, c.max_mem_mib * MIB),
                        Strategy::UserMin => (c.min_cpu, c.spec_mem_mib * MIB),
                        Strategy::Vflow => {
                            let s =
                                size_stage(&profile(c, &observed[f], window_ooms[f]), None, &cfg);
                            (s.cpu_cores, s.memory_bytes)
                        }
                    };
                    // Starved of CPU, it runs slower; it never uses more than it asked
                    // for when no CPU limit is set and the node is busy.
                    let time = c.exec * (cpu_used / cpu).max(1.0);
                    let oom = mem_used > mem;
                    // An OOM kill comes at about the peak, halfway through.
                    let ran = if oom { time * 0.5 } else { time };
                    latency += ran;
                    cost += prices.per_second(cpu, mem, 0.0) * ran;
                    req_cpu_t += cpu * ran;
                    req_mem_t += mem * ran;
                    used_cpu_t += cpu_used.min(cpu) * ran;
                    used_mem_t += mem_used.min(mem) * ran;
                    attempts += 1;
                    if oom {
                        ooms += 1;
                        window_ooms[f] += 1;
                        // The sidecar saw the peak reach the limit.
                        observed[f].push((cpu_used, mem));
                        if attempts >= 3 {
                            failed += 1;
                            break;
                        }
                    } else {
                        observed[f].push((cpu_used, mem_used));
                        break;
                    }
                }
                latencies.push(latency);
            }
        }
        rows.push(SizingRow {
            strategy: label.into(),
            cpu_requested_per_used: req_cpu_t / used_cpu_t.max(1e-9),
            memory_requested_per_used: req_mem_t / used_mem_t.max(1e-9),
            oom_kills: ooms,
            failed,
            cost,
            p95_latency: quantile(&latencies, 0.95),
            mean_latency: latencies.iter().sum::<f64>() / latencies.len().max(1) as f64,
        });
    }
    SizingReport {
        invocations_per_function: n,
        cases,
        rows,
    }
}
