//! A discrete-event simulator of a cluster running the planner's decisions against
//! baselines: chains with pre-warming, SMSE-like segment workloads with durable vs
//! ephemeral instances, bursts with packing, and sizing on a mixed workload.

pub mod controllers;
pub mod engine;
pub mod report;
pub mod scenarios;
pub mod sizing_bench;
pub mod svg;
pub mod workload;
pub mod workload_file;

use serde::{Deserialize, Serialize};

pub use report::BenchReport;

/// Which benchmark to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Chains,
    Smse,
    Packing,
    Sizing,
    /// One burst of C concurrent invocations (packing at one C).
    Burst,
    All,
}

/// Scale of a run: Full for the report, Quick for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Full,
    Quick,
}

/// Runs a scenario; `burst` is C for the burst scenario.
pub fn run(scenario: Scenario, seed: u64, scale: Scale, burst: usize) -> BenchReport {
    let quick = scale == Scale::Quick;
    let want = |s: Scenario| scenario == s || scenario == Scenario::All;
    let chains = want(Scenario::Chains).then(|| {
        let mut p = scenarios::ChainParams::default();
        if quick {
            p.runs = 6;
            p.max_length = 4;
        }
        scenarios::chains(&p, seed)
    });
    let smse = want(Scenario::Smse).then(|| {
        let mut p = scenarios::SmseParams::default();
        if quick {
            p.task_counts = vec![400];
            p.keep_alives = vec![0.0];
        }
        scenarios::smse(&p, seed)
    });
    // The same workload on a fixed cluster provisioned for the mean load of the
    // highest task count (the peaks overrun it): SMSE's saturated setting.
    let smse_saturated = want(Scenario::Smse).then(|| {
        let mut p = scenarios::SmseParams::default();
        if quick {
            p.task_counts = vec![400];
            p.keep_alives = vec![0.0];
        }
        p.nodes = scenarios::mean_load_cluster(p.task_counts.iter().copied().max().unwrap_or(0));
        scenarios::smse(&p, seed)
    });
    let packing = (want(Scenario::Packing) || scenario == Scenario::Burst).then(|| {
        let mut p = scenarios::PackingParams::default();
        if scenario == Scenario::Burst {
            p.counts = vec![burst.max(1)];
        } else if quick {
            p.counts = vec![100, 400];
        }
        scenarios::packing(&p, seed)
    });
    let sizing =
        want(Scenario::Sizing).then(|| sizing_bench::sizing(if quick { 40 } else { 200 }, seed));
    BenchReport {
        seed,
        chains,
        smse,
        smse_saturated,
        packing,
        sizing,
    }
}

/// The report's tables as text.
pub fn tables(r: &BenchReport) -> String {
    let mut s = String::new();
    if let Some(c) = &r.chains {
        s.push_str("Chains (overhead and idle per run)\n");
        s.push_str(&report::chains_table(c));
        s.push('\n');
    }
    if let Some(x) = &r.smse {
        s.push_str("SMSE-like workloads\n");
        s.push_str(&report::smse_table(x));
        s.push('\n');
    }
    if let Some(x) = &r.smse_saturated {
        s.push_str("SMSE-like workloads, cluster provisioned for the mean load\n");
        s.push_str(&report::smse_table(x));
        s.push('\n');
    }
    if let Some(x) = &r.packing {
        s.push_str("Packing\n");
        s.push_str(&report::packing_table(x));
        s.push('\n');
    }
    if let Some(x) = &r.sizing {
        s.push_str("Sizing\n");
        s.push_str(&report::sizing_table(x));
    }
    s
}
