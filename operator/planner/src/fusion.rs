//! Fusion (WiseFuse-like): which chained stages share one pod, passing data locally.
//!
//! Fusing u -> v saves the remote round trip of u's output (`d/B_put + d/B_get` plus
//! two request latencies) and one dispatch per invocation; it costs the larger of the
//! two sizes for the sum of the two times. Every subset of the candidate edges is a
//! plan (exhaustively up to 2^10 plans, else one edge at a time); each plan's run
//! latency is estimated by Monte Carlo over the profiles' execution-time distributions
//! with the same random numbers for every plan (common random numbers: the plans
//! differ by their decisions, not by their luck). The plan kept is the cheapest whose
//! p95 meets the latency objective; with no objective, the cheapest that is no slower
//! at p95 than fusing nothing; when none meets the objective, the fastest.
//!
//! How many parallel invocations share a pod (WiseFuse's bundling) is the packing
//! degree, decided by [`crate::packing`] from S(n) and E(P); the Monte Carlo here
//! takes it as given through the stages' execution times.

use serde::{Deserialize, Serialize};

use crate::rng::{LogNormal, Rng, quantile};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FusionStage {
    pub name: String,
    #[serde(skip)]
    pub exec: LogNormal,
    pub cores: f64,
    pub memory_bytes: f64,
    pub gpu: f64,
    /// Bytes one invocation writes for the next stage.
    pub output_bytes: f64,
    /// Runs once per segment (else once per run).
    pub per_segment: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TransferModel {
    pub put_bytes_per_second: f64,
    pub get_bytes_per_second: f64,
    /// Latency of one object-store request.
    pub request_seconds: f64,
    /// Local volume throughput (fused stages pass data through it).
    pub local_bytes_per_second: f64,
    /// Dispatching one invocation to a stage's instance.
    pub dispatch_seconds: f64,
}

impl Default for TransferModel {
    fn default() -> Self {
        TransferModel {
            put_bytes_per_second: 100e6,
            get_bytes_per_second: 200e6,
            request_seconds: 0.02,
            local_bytes_per_second: 1e9,
            dispatch_seconds: 0.05,
        }
    }
}

pub use crate::prices::Prices;

#[derive(Debug, Clone, PartialEq)]
pub struct FusionInput {
    pub stages: Vec<FusionStage>,
    pub parents: Vec<Vec<usize>>,
    /// A topological order of the stages.
    pub order: Vec<usize>,
    /// Edges that may be fused (chain edges of the same shape).
    pub candidates: Vec<(usize, usize)>,
    /// Segments per run.
    pub segments: u32,
    pub objective_seconds: Option<f64>,
    pub transfer: TransferModel,
    pub prices: Prices,
    pub samples: u32,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanEstimate {
    pub p95_seconds: f64,
    pub p50_seconds: f64,
    pub mean_cost: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeDecision {
    pub from: String,
    pub to: String,
    pub fused: bool,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FusionPlan {
    /// Whether each candidate edge is fused.
    pub fused: Vec<bool>,
    pub estimate: PlanEstimate,
    pub unfused: PlanEstimate,
    pub meets_objective: bool,
    pub plans_evaluated: usize,
    pub edges: Vec<EdgeDecision>,
}

impl FusionPlan {
    /// Fused edges as (from, to) stage indices.
    pub fn fused_edges(&self, input: &FusionInput) -> Vec<(usize, usize)> {
        input
            .candidates
            .iter()
            .zip(&self.fused)
            .filter(|(_, f)| **f)
            .map(|(e, _)| *e)
            .collect()
    }
}

/// Run latency and cost of one plan, by Monte Carlo.
pub fn estimate(input: &FusionInput, fused: &[bool]) -> PlanEstimate {
    let n = input.stages.len();
    // fused_in[v]: v's input comes from a parent in the same pod.
    let mut fused_in = vec![false; n];
    let mut fused_out = vec![false; n];
    for (&(u, v), &f) in input.candidates.iter().zip(fused) {
        if f {
            fused_in[v] = true;
            fused_out[u] = true;
        }
    }
    // Pod group head of each stage and the group's price per second.
    let mut head: Vec<usize> = (0..n).collect();
    for &v in &input.order {
        if fused_in[v]
            && let Some(&u) = input.parents[v].first()
        {
            head[v] = head[u];
        }
    }
    let mut group_price = vec![(0.0f64, 0.0f64, 0.0f64); n];
    for v in 0..n {
        let s = &input.stages[v];
        let g = &mut group_price[head[v]];
        *g = (g.0.max(s.cores), g.1.max(s.memory_bytes), g.2.max(s.gpu));
    }
    let price = |v: usize| {
        let (c, m, g) = group_price[head[v]];
        input.prices.per_second(c, m, g)
    };
    let t = &input.transfer;
    let remote_out =
        |v: usize| input.stages[v].output_bytes / t.put_bytes_per_second + t.request_seconds;
    let remote_in =
        |u: usize| input.stages[u].output_bytes / t.get_bytes_per_second + t.request_seconds;
    let local = |u: usize| 2.0 * input.stages[u].output_bytes / t.local_bytes_per_second;
    let segs = input.segments.max(1) as usize;
    let mut rng = Rng::new(input.seed);
    let mut latencies = Vec::with_capacity(input.samples as usize);
    let mut total_cost = 0.0;
    for _ in 0..input.samples.max(1) {
        let mut finish: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut cost = 0.0;
        for &v in &input.order {
            let s = &input.stages[v];
            let copies = if s.per_segment { segs } else { 1 };
            let mut out = Vec::with_capacity(copies);
            for k in 0..copies {
                let mut ready = 0.0f64;
                let mut in_time = 0.0f64;
                for &u in &input.parents[v] {
                    let from = &finish[u];
                    // A per-segment parent feeds segment k; a once parent feeds all; a
                    // once child of per-segment parents (a join) waits for them all.
                    let f = if s.per_segment && input.stages[u].per_segment {
                        from.get(k).copied().unwrap_or(0.0)
                    } else {
                        from.iter().copied().fold(0.0, f64::max)
                    };
                    let edge = if fused_in[v] {
                        local(u)
                    } else {
                        remote_in(u) + t.dispatch_seconds
                    };
                    ready = ready.max(f + edge);
                    in_time += if fused_in[v] { local(u) } else { remote_in(u) };
                }
                let w = s.exec.sample(&mut rng);
                let out_time = if fused_out[v] { 0.0 } else { remote_out(v) };
                out.push(ready + w + out_time);
                cost += price(v) * (in_time + w + out_time);
            }
            finish[v] = out;
        }
        latencies.push(finish.iter().flatten().copied().fold(0.0, f64::max));
        total_cost += cost;
    }
    PlanEstimate {
        p95_seconds: quantile(&latencies, 0.95),
        p50_seconds: quantile(&latencies, 0.5),
        mean_cost: total_cost / f64::from(input.samples.max(1)),
    }
}

const EXHAUSTIVE_EDGES: usize = 10;

/// The cheapest plan under the objective.
pub fn search(input: &FusionInput) -> FusionPlan {
    let k = input.candidates.len();
    let none = vec![false; k];
    let unfused = estimate(input, &none);
    let limit = input
        .objective_seconds
        .unwrap_or(unfused.p95_seconds * (1.0 + 1e-9));
    let better = |a: &PlanEstimate, b: &PlanEstimate| {
        let (fa, fb) = (a.p95_seconds <= limit, b.p95_seconds <= limit);
        match (fa, fb) {
            (true, false) => true,
            (false, true) => false,
            (true, true) => a.mean_cost < b.mean_cost * (1.0 - 1e-9),
            (false, false) => a.p95_seconds < b.p95_seconds * (1.0 - 1e-9),
        }
    };
    let mut best = (none.clone(), unfused.clone());
    let mut evaluated = 1;
    if k <= EXHAUSTIVE_EDGES {
        for mask in 1u32..(1 << k) {
            let plan: Vec<bool> = (0..k).map(|i| mask & (1 << i) != 0).collect();
            let e = estimate(input, &plan);
            evaluated += 1;
            if better(&e, &best.1) {
                best = (plan, e);
            }
        }
    } else {
        for i in 0..k {
            let mut plan = best.0.clone();
            plan[i] = true;
            let e = estimate(input, &plan);
            evaluated += 1;
            if better(&e, &best.1) {
                best = (plan, e);
            }
        }
    }
    let (fused, chosen) = best;
    let edges = input
        .candidates
        .iter()
        .enumerate()
        .map(|(i, &(u, v))| {
            let mut other = fused.clone();
            other[i] = !other[i];
            let alt = estimate(input, &other);
            let (with, without) = if fused[i] { (&chosen, &alt) } else { (&alt, &chosen) };
            let d = input.stages[u].output_bytes;
            let reason = format!(
                "{} {} -> {}: local passing of {:.1} MB instead of the object store; with it p95 {:.2}s and cost {:.6} per run, without it p95 {:.2}s and cost {:.6}{}",
                if fused[i] { "fused" } else { "not fused" },
                input.stages[u].name,
                input.stages[v].name,
                d / 1e6,
                with.p95_seconds,
                with.mean_cost,
                without.p95_seconds,
                without.mean_cost,
                if fused[i] {
                    ""
                } else if with.p95_seconds > limit {
                    " (fusing misses the latency limit)"
                } else {
                    " (fusing costs more: the smaller stage would pay for the larger pod)"
                }
            );
            EdgeDecision {
                from: input.stages[u].name.clone(),
                to: input.stages[v].name.clone(),
                fused: fused[i],
                reason,
            }
        })
        .collect();
    FusionPlan {
        meets_objective: chosen.p95_seconds <= limit,
        fused,
        estimate: chosen,
        unfused,
        plans_evaluated: evaluated,
        edges,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, exec: f64, cores: f64, mem_gib: f64, out_mb: f64) -> FusionStage {
        FusionStage {
            name: name.into(),
            exec: LogNormal::constant(exec),
            cores,
            memory_bytes: mem_gib * (1u64 << 30) as f64,
            gpu: 0.0,
            output_bytes: out_mb * 1e6,
            per_segment: false,
        }
    }

    fn chain(stages: Vec<FusionStage>) -> FusionInput {
        let n = stages.len();
        FusionInput {
            parents: (0..n)
                .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
                .collect(),
            order: (0..n).collect(),
            candidates: (1..n).map(|i| (i - 1, i)).collect(),
            stages,
            segments: 1,
            objective_seconds: None,
            transfer: TransferModel {
                put_bytes_per_second: 100e6,
                get_bytes_per_second: 100e6,
                request_seconds: 0.0,
                local_bytes_per_second: f64::INFINITY,
                dispatch_seconds: 0.0,
            },
            prices: Prices {
                cpu_core_second: 1.0,
                memory_gib_second: 0.0,
                gpu_second: 0.0,
                currency: "USD".into(),
            },
            samples: 10,
            seed: 1,
        }
    }

    #[test]
    fn latency_and_cost_by_hand() {
        // a (1 s, 1 core) writes 100 MB for b (2 s, 1 core): 1 s up, 1 s down.
        let input = chain(vec![
            stage("a", 1.0, 1.0, 1.0, 100.0),
            stage("b", 2.0, 1.0, 1.0, 0.0),
        ]);
        let unfused = estimate(&input, &[false]);
        // a: 1 + 1 (put) = 2; b: 2 + 1 (get) + 2 = 5. Cost: a 2 core-s + b 3 core-s.
        assert!((unfused.p95_seconds - 5.0).abs() < 1e-9);
        assert!((unfused.mean_cost - 5.0).abs() < 1e-9);
        let fused = estimate(&input, &[true]);
        assert!((fused.p95_seconds - 3.0).abs() < 1e-9);
        assert!((fused.mean_cost - 3.0).abs() < 1e-9);
        let plan = search(&input);
        assert_eq!(plan.fused, vec![true]);
        assert!(plan.edges[0].reason.starts_with("fused a -> b"));
    }

    #[test]
    fn unequal_sizes_with_little_data_stay_apart() {
        // a needs 8 cores for 10 s, b 1 core for 10 s, 1 MB between them: fused, b's
        // 10 s would be billed at 8 cores (160 core-s against 90.1).
        let input = chain(vec![
            stage("a", 10.0, 8.0, 1.0, 1.0),
            stage("b", 10.0, 1.0, 1.0, 0.0),
        ]);
        let plan = search(&input);
        assert_eq!(plan.fused, vec![false]);
        assert!(
            plan.edges[0].reason.contains("costs more"),
            "{}",
            plan.edges[0].reason
        );
    }

    #[test]
    fn objective_can_force_a_costlier_fusion() {
        let mut input = chain(vec![
            stage("a", 10.0, 8.0, 1.0, 500.0),
            stage("b", 10.0, 1.0, 1.0, 0.0),
        ]);
        // Unfused: 10 + 5 + 5 + 10 = 30 s; fused 20 s. 25 s objective: fuse, though dearer.
        input.objective_seconds = Some(25.0);
        let plan = search(&input);
        assert_eq!(plan.fused, vec![true]);
        assert!(plan.meets_objective);
        assert!(plan.estimate.mean_cost > plan.unfused.mean_cost);
    }

    #[test]
    fn same_seed_same_plan() {
        let mut input = chain(vec![
            stage("a", 1.0, 1.0, 1.0, 50.0),
            stage("b", 2.0, 2.0, 1.0, 50.0),
            stage("c", 1.0, 1.0, 1.0, 0.0),
        ]);
        for s in &mut input.stages {
            s.exec = LogNormal::from_p50_p95(s.exec.median, s.exec.median * 2.0);
        }
        input.samples = 500;
        assert_eq!(search(&input), search(&input));
    }
}
