//! A workload described in a file (parsed by the caller): nodes, functions and
//! requests, run under all-ephemeral, static all-durable and dynamic durable.

use serde::Deserialize;
use vflow_api::Quantity;

use super::{
    controllers::{Provision, ProvisioningController},
    engine::{Engine, EngineConfig, NodeSpec, RequestSpec, SimFunction, TaskSpec},
    scenarios::{SmseReport, SmseRow, Summary},
};
use crate::{
    fusion::Prices,
    provisioning::{FunctionLoad, ProvisioningConfig},
    rng::{LogNormal, Rng},
};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadFile {
    pub nodes: Vec<NodeGroup>,
    pub functions: Vec<FunctionEntry>,
    pub requests: Vec<RequestEntry>,
    #[serde(default = "sixty")]
    pub keep_alive_seconds: f64,
    #[serde(default = "thirty")]
    pub interval_seconds: f64,
}

fn sixty() -> f64 {
    60.0
}
fn thirty() -> f64 {
    30.0
}
fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeGroup {
    #[serde(default = "one")]
    pub count: u32,
    pub cpu: Quantity,
    pub memory: Quantity,
    #[serde(default)]
    pub gpus: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunctionEntry {
    pub name: String,
    pub cpu: Quantity,
    pub memory: Quantity,
    #[serde(default)]
    pub gpu: f64,
    pub exec_p50: f64,
    pub exec_p95: f64,
    pub cold_start_p50: f64,
    pub cold_start_p95: f64,
    #[serde(default = "one")]
    pub concurrency: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestEntry {
    pub at: f64,
    pub function: String,
    #[serde(default = "one")]
    pub segments: u32,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkloadError {
    #[error("{0}")]
    Quantity(#[from] vflow_api::QuantityError),
    #[error("request {index} names function {name:?}, which the file does not define")]
    UnknownFunction { index: usize, name: String },
    #[error("the workload has no nodes, functions or requests")]
    Empty,
}

pub fn run_file(w: &WorkloadFile, seed: u64) -> Result<SmseReport, WorkloadError> {
    if w.nodes.is_empty() || w.functions.is_empty() || w.requests.is_empty() {
        return Err(WorkloadError::Empty);
    }
    let prices = Prices::default();
    let mut nodes = Vec::new();
    for g in &w.nodes {
        let n = NodeSpec {
            cpu: g.cpu.value()?,
            memory_bytes: g.memory.value()?,
            gpus: g.gpus,
        };
        nodes.extend(std::iter::repeat_n(n, g.count as usize));
    }
    let mut functions = Vec::new();
    let mut exec = Vec::new();
    for f in &w.functions {
        let (cpu, mem) = (f.cpu.value()?, f.memory.value()?);
        functions.push(SimFunction {
            name: f.name.clone(),
            cpu,
            memory_bytes: mem,
            gpu: f.gpu,
            cold_start: LogNormal::from_p50_p95(f.cold_start_p50, f.cold_start_p95),
            concurrency: f.concurrency.max(1),
            slowdown: vec![],
            price_per_second: prices.per_second(cpu, mem, f.gpu),
        });
        exec.push(LogNormal::from_p50_p95(f.exec_p50, f.exec_p95));
    }
    let mut rng = Rng::new(seed);
    let mut requests = Vec::new();
    for (index, r) in w.requests.iter().enumerate() {
        let f = functions
            .iter()
            .position(|x| x.name == r.function)
            .ok_or_else(|| WorkloadError::UnknownFunction {
                index,
                name: r.function.clone(),
            })?;
        requests.push(RequestSpec {
            arrival: r.at,
            tasks: (0..r.segments.max(1))
                .map(|_| TaskSpec {
                    function: f,
                    after: vec![],
                    exec_seconds: exec[f].sample(&mut rng),
                    overhead_seconds: 0.0,
                })
                .collect(),
            kind: f,
        });
    }
    requests.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    let loads: Vec<FunctionLoad> = functions
        .iter()
        .zip(&exec)
        .map(|(f, e)| FunctionLoad {
            name: f.name.clone(),
            rate: 0.0,
            exec_seconds: e.mean(),
            cold_start_seconds: f.cold_start.median,
            memory_bytes: f.memory_bytes,
            concurrency: f.concurrency,
            durable_now: 0,
        })
        .collect();
    let memory: f64 = nodes.iter().map(|n| n.memory_bytes).sum();
    let ephemeral = EngineConfig {
        keep_alive_seconds: Some(w.keep_alive_seconds),
        per_starting_instance_seconds: 0.0,
        evict_idle: true,
    };
    let dynamic = ProvisioningConfig {
        window_seconds: w.interval_seconds,
        memory_budget_bytes: memory,
        reserve_bytes: memory * 0.25,
        keep_alive_seconds: w.keep_alive_seconds,
        min_reuses: 3.0,
        max_per_function: 8,
    };
    let tasks: usize = requests.iter().map(|r| r.tasks.len()).sum();
    let runs: [(&str, Provision, EngineConfig); 3] = [
        ("all-ephemeral", Provision::AllEphemeral, ephemeral),
        (
            "static all-durable",
            Provision::StaticDurable {
                budget_bytes: memory * 0.75,
            },
            ephemeral,
        ),
        ("dynamic durable", Provision::Dynamic(dynamic), ephemeral),
    ];
    let rows = runs
        .into_iter()
        .map(|(label, mode, cfg)| {
            let c = ProvisioningController::new(mode, loads.clone(), w.interval_seconds);
            let (o, _) = Engine::new(&nodes, &functions, &requests, cfg, c, seed).run();
            SmseRow {
                tasks,
                policy: label.into(),
                keep_alive: w.keep_alive_seconds,
                summary: Summary::of(&o),
            }
        })
        .collect();
    Ok(SmseReport {
        nodes,
        functions: loads,
        interval_seconds: w.interval_seconds,
        rows,
    })
}
