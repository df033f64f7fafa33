//! The benchmarks: each policy against its baseline on the same workload (same seed,
//! same sampled execution times).

use serde::Serialize;
use vflow_api::PrewarmPolicy;

use super::{
    controllers::{PrewarmController, Provision, ProvisioningController},
    engine::{Engine, EngineConfig, NodeSpec, OnDemand, Outcome, RequestSpec, SimFunction},
    workload::{self, BranchShape, DISPATCH_SECONDS, SmseWorkload},
};
use crate::{
    fusion::Prices,
    packing::{self, Completion, Objective, PackingInput, ScalingModel, ServiceCurve},
    prewarm::{Margin, PathStage, Risk},
    provisioning::{FunctionLoad, ProvisioningConfig},
    rng::{LogNormal, Rng, quantile},
};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Summary of one simulated configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub makespan: f64,
    pub p50: f64,
    pub p95: f64,
    pub mean_overhead: f64,
    pub cold_starts: u64,
    pub idle_before_use: f64,
    pub idle_after_use: f64,
    pub cost: f64,
    pub tasks: u64,
    pub unfinished: u64,
}

impl Summary {
    pub fn of(o: &Outcome) -> Summary {
        Summary {
            makespan: o.makespan,
            p50: quantile(&o.latencies, 0.5),
            p95: quantile(&o.latencies, 0.95),
            mean_overhead: mean(&o.overheads),
            cold_starts: o.cold_starts,
            idle_before_use: o.idle_before_use,
            idle_after_use: o.idle_after_use,
            cost: o.cost,
            tasks: o.tasks,
            unfinished: o.unfinished,
        }
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn big_cluster() -> Vec<NodeSpec> {
    vec![NodeSpec {
        cpu: 1e6,
        memory_bytes: 1e15,
        gpus: 1e6,
    }]
}

fn function(name: String, cpu: f64, mem_gib: f64, cold: LogNormal, prices: &Prices) -> SimFunction {
    SimFunction {
        name,
        cpu,
        memory_bytes: mem_gib * GIB,
        gpu: 0.0,
        cold_start: cold,
        concurrency: 1,
        slowdown: vec![],
        price_per_second: prices.per_second(cpu, mem_gib * GIB, 0.0),
    }
}

// ---------------------------------------------------------------- chains

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainRow {
    /// Chain length, or the branch chain's label.
    pub length: usize,
    pub policy: String,
    pub mean_overhead: f64,
    /// Mean overhead in units of the mean cold start.
    pub overhead_cold_starts: f64,
    /// Mean overhead the same runs would have had with only their first stage's wait
    /// as a cold start (that wait plus the dispatch overheads).
    pub ideal_overhead: f64,
    /// mean_overhead / ideal_overhead.
    pub overhead_vs_ideal: f64,
    pub cold_starts_per_run: f64,
    /// Idle warm instance-seconds per run before first use (pre-warm waste).
    pub idle_before_use_per_run: f64,
    /// Idle instance-seconds per run after use (keep-alive), the same for every policy.
    pub idle_after_use_per_run: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainsReport {
    pub runs: usize,
    pub exec_p50: f64,
    pub exec_p95: f64,
    pub cold_start_p50: f64,
    pub cold_start_p95: f64,
    pub rows: Vec<ChainRow>,
    pub branch_rows: Vec<ChainRow>,
    pub branch_replans: u64,
    /// Progress-aware JIT at other accepted late probabilities (the trade-off curve):
    /// (late quantile, worst overhead vs ideal over lengths, JIT / Speculative idle
    /// over lengths 2..).
    pub frontier: Vec<(f64, f64, f64)>,
    pub late_quantile: f64,
}

pub struct ChainParams {
    pub runs: usize,
    pub max_length: usize,
    pub exec: LogNormal,
    pub cold: LogNormal,
    pub margin: Margin,
    pub risk: Risk,
    pub keep_alive: f64,
    /// Late quantiles for the trade-off curve (empty: none).
    pub frontier: Vec<f64>,
}

impl Default for ChainParams {
    fn default() -> Self {
        ChainParams {
            runs: 40,
            max_length: 8,
            // An ffmpeg step on a short clip, and its container start (coldStartPrior 2s).
            exec: LogNormal::from_p50_p95(2.0, 3.0),
            cold: LogNormal::from_p50_p95(2.0, 2.6),
            margin: Margin::default(),
            risk: Risk::default(),
            keep_alive: 60.0,
            frontier: vec![0.02, 0.05, 0.1, 0.2, 0.3],
        }
    }
}

fn path_of(names: &[String], exec: LogNormal, cold: LogNormal) -> Vec<PathStage> {
    names
        .iter()
        .enumerate()
        .map(|(k, n)| PathStage {
            stage: n.clone(),
            after: if k == 0 { vec![] } else { vec![k - 1] },
            exec_seconds: exec.median,
            exec_std_seconds: exec.std_dev(),
            overhead_seconds: DISPATCH_SECONDS,
            cold_start_seconds: cold.median,
            cold_start_std_seconds: cold.std_dev(),
            replicas: 1,
            warm: false,
        })
        .collect()
}

/// The policies compared: "JIT" is the progress-aware schedule; "JIT (margin)" the
/// earlier fixed-rule one (t0 schedule with a z-sigma margin, rolled forward at each
/// input arrival), kept as the before.
const POLICIES: [(PrewarmPolicy, &str, bool); 4] = [
    (PrewarmPolicy::None, "None", false),
    (PrewarmPolicy::Speculative, "Speculative", false),
    (PrewarmPolicy::JustInTime, "JIT (margin)", false),
    (PrewarmPolicy::JustInTime, "JIT", true),
];

fn controller(
    p: &ChainParams,
    policy: PrewarmPolicy,
    progress: Option<Risk>,
    predicted: &[PathStage],
    alternatives: Vec<Vec<PathStage>>,
    functions: &[SimFunction],
) -> PrewarmController {
    let c = PrewarmController::new(
        policy,
        p.margin,
        predicted.to_vec(),
        alternatives,
        functions,
    );
    match progress {
        Some(r) => c.with_progress(r),
        None => c,
    }
}

fn chain_row(length: usize, policy: &str, o: &Outcome, runs: usize, cold: LogNormal) -> ChainRow {
    let runs_f = runs.max(1) as f64;
    let ideal = mean(&o.ideal_overheads);
    ChainRow {
        length,
        policy: policy.to_string(),
        mean_overhead: mean(&o.overheads),
        overhead_cold_starts: mean(&o.overheads) / cold.mean(),
        ideal_overhead: ideal,
        overhead_vs_ideal: mean(&o.overheads) / ideal.max(1e-9),
        cold_starts_per_run: o.cold_starts as f64 / runs_f,
        idle_before_use_per_run: o.idle_before_use / runs_f,
        idle_after_use_per_run: o.idle_after_use / runs_f,
    }
}

/// Chains of length 1..=max and a 0.7/0.3 branch, under None / Speculative / JIT.
pub fn chains(p: &ChainParams, seed: u64) -> ChainsReport {
    let prices = Prices::default();
    let cfg = EngineConfig {
        keep_alive_seconds: Some(p.keep_alive),
        ..EngineConfig::default()
    };
    // Runs far enough apart that every instance has scaled to zero in between.
    let spacing = p.keep_alive + 10.0 * (p.max_length as f64) * p.exec.p95() + 60.0;
    let mut rows = Vec::new();
    for length in 1..=p.max_length {
        let names: Vec<String> = (0..length).map(|k| format!("s{k}")).collect();
        let functions: Vec<SimFunction> = names
            .iter()
            .map(|n| function(n.clone(), 1.0, 1.0, p.cold, &prices))
            .collect();
        let exec = vec![p.exec; length];
        let requests =
            workload::chain_requests(length, p.runs, spacing, &exec, &mut Rng::new(seed));
        let path = path_of(&names, p.exec, p.cold);
        for (policy, label, progress) in POLICIES {
            let risk = progress.then_some(p.risk);
            let c = controller(p, policy, risk, &path, vec![], &functions);
            let (o, _) = Engine::new(
                &big_cluster(),
                &functions,
                &requests,
                cfg,
                c,
                seed ^ 0xC0FFEE,
            )
            .run();
            rows.push(chain_row(length, label, &o, p.runs, p.cold));
        }
    }
    // The branch: 2 stages, then a (0.7) or b (0.3), each 3 stages long.
    let shape = BranchShape {
        prefix: 2,
        branch: 3,
        p_first: 0.7,
    };
    let names: Vec<String> = (0..shape.functions())
        .map(|f| {
            if f < shape.prefix {
                format!("s{f}")
            } else if f < shape.prefix + shape.branch {
                format!("a{}", f - shape.prefix)
            } else {
                format!("b{}", f - shape.prefix - shape.branch)
            }
        })
        .collect();
    let functions: Vec<SimFunction> = names
        .iter()
        .map(|n| function(n.clone(), 1.0, 1.0, p.cold, &prices))
        .collect();
    let exec = vec![p.exec; names.len()];
    let requests =
        workload::branch_requests(&shape, p.runs * 2, spacing, &exec, &mut Rng::new(seed));
    let predicted_names: Vec<String> = (0..shape.prefix)
        .chain(shape.first_branch())
        .map(|f| names[f].clone())
        .collect();
    let alt_names: Vec<String> = shape
        .second_branch()
        .into_iter()
        .map(|f| names[f].clone())
        .collect();
    let predicted = path_of(&predicted_names, p.exec, p.cold);
    let alternative = path_of(&alt_names, p.exec, p.cold);
    let mut branch_rows = Vec::new();
    let mut branch_replans = 0;
    let length = shape.prefix + shape.branch;
    for (policy, label, progress) in POLICIES {
        let risk = progress.then_some(p.risk);
        let c = controller(
            p,
            policy,
            risk,
            &predicted,
            vec![alternative.clone()],
            &functions,
        );
        let (o, c) = Engine::new(
            &big_cluster(),
            &functions,
            &requests,
            cfg,
            c,
            seed ^ 0xC0FFEE,
        )
        .run();
        branch_replans = branch_replans.max(c.replans);
        branch_rows.push(chain_row(length, label, &o, p.runs * 2, p.cold));
    }
    let frontier = chains_frontier(p, seed, &rows);
    ChainsReport {
        runs: p.runs,
        exec_p50: p.exec.median,
        exec_p95: p.exec.p95(),
        cold_start_p50: p.cold.median,
        cold_start_p95: p.cold.p95(),
        rows,
        branch_rows,
        branch_replans,
        frontier,
        late_quantile: p.risk.late_quantile,
    }
}

/// Progress-aware JIT at each late quantile of `p.frontier`, against the Speculative
/// rows already measured: (q, worst overhead vs ideal, idle ratio).
fn chains_frontier(p: &ChainParams, seed: u64, rows: &[ChainRow]) -> Vec<(f64, f64, f64)> {
    let prices = Prices::default();
    let cfg = EngineConfig {
        keep_alive_seconds: Some(p.keep_alive),
        ..EngineConfig::default()
    };
    let spacing = p.keep_alive + 10.0 * (p.max_length as f64) * p.exec.p95() + 60.0;
    let spec_idle: f64 = rows
        .iter()
        .filter(|r| r.policy == "Speculative" && r.length >= 2)
        .map(|r| r.idle_before_use_per_run)
        .sum();
    p.frontier
        .iter()
        .map(|&q| {
            let risk = Risk {
                late_quantile: q,
                ..p.risk
            };
            let (mut worst, mut idle) = (0.0f64, 0.0);
            for length in 1..=p.max_length {
                let names: Vec<String> = (0..length).map(|k| format!("s{k}")).collect();
                let functions: Vec<SimFunction> = names
                    .iter()
                    .map(|n| function(n.clone(), 1.0, 1.0, p.cold, &prices))
                    .collect();
                let exec = vec![p.exec; length];
                let requests =
                    workload::chain_requests(length, p.runs, spacing, &exec, &mut Rng::new(seed));
                let path = path_of(&names, p.exec, p.cold);
                let c = controller(
                    p,
                    PrewarmPolicy::JustInTime,
                    Some(risk),
                    &path,
                    vec![],
                    &functions,
                );
                let (o, _) = Engine::new(
                    &big_cluster(),
                    &functions,
                    &requests,
                    cfg,
                    c,
                    seed ^ 0xC0FFEE,
                )
                .run();
                let row = chain_row(length, "JIT", &o, p.runs, p.cold);
                worst = worst.max(row.overhead_vs_ideal);
                if length >= 2 {
                    idle += row.idle_before_use_per_run;
                }
            }
            (q, worst, idle / spec_idle.max(1e-9))
        })
        .collect()
}

// ---------------------------------------------------------------- SMSE

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SmseRow {
    pub tasks: usize,
    pub policy: String,
    pub keep_alive: f64,
    pub summary: Summary,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SmseReport {
    pub nodes: Vec<NodeSpec>,
    pub functions: Vec<FunctionLoad>,
    pub interval_seconds: f64,
    pub rows: Vec<SmseRow>,
}

pub struct SmseParams {
    pub task_counts: Vec<usize>,
    pub keep_alives: Vec<f64>,
    pub interval_seconds: f64,
    pub nodes: Vec<NodeSpec>,
}

impl Default for SmseParams {
    fn default() -> Self {
        SmseParams {
            task_counts: vec![400, 600, 800, 1000, 1200],
            keep_alives: vec![0.0, 30.0],
            interval_seconds: 30.0,
            // Sized so that the peak demand at the highest load (1200 tasks: about 6.4
            // tasks/s at the peak, ~1.1 s each, ~1.25 GiB each) fills the 16 GiB: memory,
            // as in SMSE, is what durable instances compete for.
            nodes: vec![
                NodeSpec {
                    cpu: 4.0,
                    memory_bytes: 8.0 * GIB,
                    gpus: 0.0
                };
                2
            ],
        }
    }
}

/// A fixed cluster provisioned for the *mean* load of `tasks` tasks (SMSE's setting:
/// a small fixed cluster that the peaks overrun, so a backlog forms and whatever
/// cold starts take from it lengthens the makespan). One node with the CPU and
/// memory that the warm execution of the mean arrival rate keeps busy (every
/// function equally likely, since which one is popular is reshuffled each cycle),
/// rounded up to whole cores and GiB; the peaks run at 1.6 times the mean.
pub fn mean_load_cluster(tasks: usize) -> Vec<NodeSpec> {
    let (functions, exec) = smse_functions(12);
    let w = SmseWorkload::new(tasks);
    let rate = tasks as f64 / w.window_seconds;
    let n = functions.len() as f64;
    let cpu: f64 = functions
        .iter()
        .zip(&exec)
        .map(|(f, e)| f.cpu * e.mean())
        .sum::<f64>()
        / n
        * rate;
    let mem: f64 = functions
        .iter()
        .zip(&exec)
        .map(|(f, e)| f.memory_bytes * e.mean())
        .sum::<f64>()
        / n
        * rate;
    vec![NodeSpec {
        cpu: cpu.ceil(),
        memory_bytes: (mem / GIB).ceil() * GIB,
        gpus: 0.0,
    }]
}

/// The SMSE functions: half a core, memory 0.5 to 2 GiB, cold starts 1.5 to 5 s, 0.6
/// to 1.6 s per 2 s segment.
pub fn smse_functions(n: usize) -> (Vec<SimFunction>, Vec<LogNormal>) {
    let prices = Prices::default();
    let mut functions = Vec::new();
    let mut exec = Vec::new();
    for k in 0..n {
        let mem = [0.5, 1.0, 1.5, 2.0][k % 4];
        let cold = 1.5 + 3.5 * ((k * 7) % n) as f64 / n as f64;
        let e = 0.6 + 1.0 * ((k * 5) % n) as f64 / n as f64;
        functions.push(function(
            format!("f{k}"),
            0.5,
            mem,
            LogNormal::from_p50_p95(cold, cold * 1.3),
            &prices,
        ));
        exec.push(LogNormal::from_p50_p95(e, e * 1.4));
    }
    (functions, exec)
}

pub fn smse(p: &SmseParams, seed: u64) -> SmseReport {
    let (functions, exec) = smse_functions(12);
    let loads: Vec<FunctionLoad> = functions
        .iter()
        .zip(&exec)
        .map(|(f, e)| FunctionLoad {
            name: f.name.clone(),
            rate: 0.0,
            exec_seconds: e.mean(),
            cold_start_seconds: f.cold_start.median,
            memory_bytes: f.memory_bytes,
            concurrency: 1,
            durable_now: 0,
        })
        .collect();
    let memory: f64 = p.nodes.iter().map(|n| n.memory_bytes).sum();
    let mut rows = Vec::new();
    for &tasks in &p.task_counts {
        let w = SmseWorkload::new(tasks);
        let requests = workload::smse_requests(&w, &exec, &mut Rng::new(seed ^ tasks as u64));
        for &keep_alive in &p.keep_alives {
            let ephemeral_cfg = EngineConfig {
                keep_alive_seconds: Some(keep_alive),
                per_starting_instance_seconds: 0.0,
                evict_idle: true,
            };
            let dynamic = ProvisioningConfig {
                window_seconds: p.interval_seconds,
                memory_budget_bytes: memory,
                reserve_bytes: memory * 0.25,
                keep_alive_seconds: keep_alive,
                min_reuses: 3.0,
                max_per_function: 8,
            };
            let runs: [(&str, Provision, EngineConfig); 3] = [
                ("all-ephemeral", Provision::AllEphemeral, ephemeral_cfg),
                (
                    "static all-durable",
                    Provision::StaticDurable {
                        budget_bytes: memory * 0.75,
                    },
                    ephemeral_cfg,
                ),
                (
                    "dynamic durable",
                    Provision::Dynamic(dynamic),
                    ephemeral_cfg,
                ),
            ];
            for (label, mode, cfg) in runs {
                let c = ProvisioningController::new(mode, loads.clone(), p.interval_seconds);
                let (o, _) =
                    Engine::new(&p.nodes, &functions, &requests, cfg, c, seed ^ 0x5EED).run();
                rows.push(SmseRow {
                    tasks,
                    policy: label.to_string(),
                    keep_alive,
                    summary: Summary::of(&o),
                });
            }
        }
    }
    SmseReport {
        nodes: p.nodes.clone(),
        functions: loads,
        interval_seconds: p.interval_seconds,
        rows,
    }
}

// ---------------------------------------------------------------- packing

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PackingRow {
    pub invocations: usize,
    pub chosen_degree: u32,
    pub model_time: f64,
    pub model_time_unpacked: f64,
    pub sim_time: f64,
    pub sim_time_unpacked: f64,
    pub sim_cost: f64,
    pub sim_cost_unpacked: f64,
    pub time_reduction: f64,
    pub cost_reduction: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PackingReport {
    pub per_instance_seconds: f64,
    pub cold_start_seconds: f64,
    pub exec_seconds: f64,
    pub instance_cores: f64,
    pub curve: Vec<(u32, f64)>,
    pub rows: Vec<PackingRow>,
}

pub struct PackingParams {
    pub counts: Vec<usize>,
    pub per_instance_seconds: f64,
    pub cold_start: f64,
    pub exec: LogNormal,
    pub instance_cores: f64,
    pub interference: f64,
    pub max_degree: u32,
}

impl Default for PackingParams {
    fn default() -> Self {
        PackingParams {
            counts: vec![100, 500, 1000, 2000, 5000],
            per_instance_seconds: 0.046,
            cold_start: 1.0,
            exec: LogNormal::from_p50_p95(2.0, 2.3),
            instance_cores: 2.0,
            interference: 0.05,
            max_degree: 16,
        }
    }
}

pub fn packing(p: &PackingParams, seed: u64) -> PackingReport {
    let prices = Prices::default();
    // One invocation needs one core for E1: P share the instance's cores, with a
    // measured-shaped slowdown per neighbour (caches, memory bandwidth).
    let curve = ServiceCurve::cpu_shared(p.exec.median, 1.0, |_| p.instance_cores, p.interference);
    let price = prices.per_second(p.instance_cores, 2.0 * GIB, 0.0);
    let mut rows = Vec::new();
    for &c in &p.counts {
        let input = PackingInput {
            invocations: c as u32,
            curve: curve.clone(),
            scaling: ScalingModel {
                base_seconds: p.cold_start,
                per_instance_seconds: p.per_instance_seconds,
            },
            // The paper's setting: the instance keeps its cores and 2 GiB whatever P.
            instance_price: vec![price],
            max_degree: p.max_degree,
            warm_instances: 0,
            max_instances: None,
            instance_cores: Vec::new(),
            room_cores: None,
            work: Vec::new(),
            completion: Completion::All,
        };
        let choice = packing::choose(&input, Objective::default());
        let run = |degree: u32| {
            let slowdown: Vec<f64> = (1..=degree).map(|k| curve.at(k) / curve.at(1)).collect();
            let f = SimFunction {
                name: "f".into(),
                cpu: p.instance_cores,
                memory_bytes: 2.0 * GIB,
                gpu: 0.0,
                cold_start: LogNormal::constant(p.cold_start),
                concurrency: degree,
                slowdown,
                price_per_second: price,
            };
            let functions = vec![f];
            let requests: Vec<RequestSpec> =
                workload::burst_requests(c, p.exec, &mut Rng::new(seed));
            let cfg = EngineConfig {
                keep_alive_seconds: Some(0.0),
                per_starting_instance_seconds: p.per_instance_seconds,
                evict_idle: false,
            };
            let (o, _) =
                Engine::new(&big_cluster(), &functions, &requests, cfg, OnDemand, seed).run();
            (o.makespan, o.cost)
        };
        let (t1, k1) = run(1);
        let (tp, kp) = run(choice.chosen.degree);
        rows.push(PackingRow {
            invocations: c,
            chosen_degree: choice.chosen.degree,
            model_time: choice.chosen.time_seconds,
            model_time_unpacked: choice.unpacked.time_seconds,
            sim_time: tp,
            sim_time_unpacked: t1,
            sim_cost: kp,
            sim_cost_unpacked: k1,
            time_reduction: 1.0 - tp / t1,
            cost_reduction: 1.0 - kp / k1,
        });
    }
    PackingReport {
        per_instance_seconds: p.per_instance_seconds,
        cold_start_seconds: p.cold_start,
        exec_seconds: p.exec.median,
        instance_cores: p.instance_cores,
        curve: (1..=p.max_degree).map(|k| (k, curve.at(k))).collect(),
        rows,
    }
}
