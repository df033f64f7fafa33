//! The benchmark report: JSON-ready results, text tables, SVG plots and REPORT.md,
//! each measured figure beside the published one.

use std::fmt::Write;

use serde::Serialize;

use super::{
    scenarios::{ChainRow, ChainsReport, PackingReport, SmseReport},
    sizing_bench::SizingReport,
    svg::{Series, line_chart},
};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchReport {
    pub seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chains: Option<ChainsReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smse: Option<SmseReport>,
    /// The SMSE workload on a cluster provisioned for the mean load (saturated at peaks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smse_saturated: Option<SmseReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packing: Option<PackingReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sizing: Option<SizingReport>,
}

/// Chains target for a JIT row label: (met, worst overhead vs the ideal single cold
/// start, worst overhead in cold starts, JIT / Speculative idle before use over
/// lengths >= 2). Met: overhead within 1.2 of the ideal at every length and idle
/// under 10% of Speculative's.
pub fn chains_verdict_for(c: &ChainsReport, jit: &str) -> (bool, f64, f64, f64) {
    let worst_ideal = c
        .rows
        .iter()
        .filter(|r| r.policy == jit)
        .map(|r| r.overhead_vs_ideal)
        .fold(0.0, f64::max);
    let worst = c
        .rows
        .iter()
        .filter(|r| r.policy == jit)
        .map(|r| r.overhead_cold_starts)
        .fold(0.0, f64::max);
    let idle = |p: &str| {
        c.rows
            .iter()
            .filter(|r| r.policy == p && r.length >= 2)
            .map(|r| r.idle_before_use_per_run)
            .sum::<f64>()
    };
    let ratio = idle(jit) / idle("Speculative").max(1e-9);
    (
        worst_ideal <= 1.2 && ratio < 0.10,
        worst_ideal,
        worst,
        ratio,
    )
}

/// [`chains_verdict_for`] the progress-aware JIT.
pub fn chains_verdict(c: &ChainsReport) -> (bool, f64, f64, f64) {
    chains_verdict_for(c, "JIT")
}

/// SMSE target: dynamic durable's makespan at least 30% below all-ephemeral's at the
/// highest load, per keep-alive.
pub fn smse_reductions(s: &SmseReport) -> Vec<(f64, usize, f64, f64)> {
    let top = s.rows.iter().map(|r| r.tasks).max().unwrap_or(0);
    let mut keep: Vec<f64> = s.rows.iter().map(|r| r.keep_alive).collect();
    keep.sort_by(f64::total_cmp);
    keep.dedup();
    keep.into_iter()
        .filter_map(|k| {
            let get = |p: &str| {
                s.rows
                    .iter()
                    .find(|r| r.tasks == top && r.keep_alive == k && r.policy == p)
                    .map(|r| r.summary.makespan)
            };
            let (e, d, st) = (
                get("all-ephemeral")?,
                get("dynamic durable")?,
                get("static all-durable")?,
            );
            Some((k, top, 1.0 - d / e, 1.0 - st / e))
        })
        .collect()
}

pub fn chains_table(c: &ChainsReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| length | policy | overhead s | in cold starts | ideal s | vs ideal | cold starts/run | idle before use s/run | idle after use s/run |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for r in c.rows.iter().chain(&c.branch_rows) {
        let _ = writeln!(
            s,
            "| {}{} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.length,
            if c.branch_rows.contains(r) {
                " (0.7/0.3 branch)"
            } else {
                ""
            },
            r.policy,
            r.mean_overhead,
            r.overhead_cold_starts,
            r.ideal_overhead,
            r.overhead_vs_ideal,
            r.cold_starts_per_run,
            r.idle_before_use_per_run,
            r.idle_after_use_per_run
        );
    }
    s
}

pub fn smse_table(sm: &SmseReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| tasks | keep-alive s | policy | makespan s | p50 s | p95 s | cold starts | idle s | cost $ | unfinished |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for r in &sm.rows {
        let m = &r.summary;
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {:.1} | {:.2} | {:.2} | {} | {:.0} | {:.4} | {} |",
            r.tasks,
            r.keep_alive,
            r.policy,
            m.makespan,
            m.p50,
            m.p95,
            m.cold_starts,
            m.idle_before_use + m.idle_after_use,
            m.cost,
            m.unfinished
        );
    }
    s
}

pub fn packing_table(p: &PackingReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| C | chosen P | model T(P) s | model T(1) s | sim time P s | sim time P=1 s | time reduction | sim cost P $ | sim cost P=1 $ | cost reduction |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for r in &p.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0}% | {:.4} | {:.4} | {:.0}% |",
            r.invocations,
            r.chosen_degree,
            r.model_time,
            r.model_time_unpacked,
            r.sim_time,
            r.sim_time_unpacked,
            r.time_reduction * 100.0,
            r.sim_cost,
            r.sim_cost_unpacked,
            r.cost_reduction * 100.0
        );
    }
    s
}

pub fn sizing_table(z: &SizingReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| strategy | CPU requested/used | memory requested/used | OOM kills | failed | cost $ | p95 latency s | mean latency s |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for r in &z.rows {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.2} | {} | {} | {:.4} | {:.2} | {:.2} |",
            r.strategy,
            r.cpu_requested_per_used,
            r.memory_requested_per_used,
            r.oom_kills,
            r.failed,
            r.cost,
            r.p95_latency,
            r.mean_latency
        );
    }
    s
}

/// (file name, SVG) for each benchmark present.
pub fn plots(r: &BenchReport) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(c) = &r.chains {
        let by = |policy: &str, f: fn(&ChainRow) -> f64| Series {
            name: policy.to_string(),
            points: c
                .rows
                .iter()
                .filter(|x| x.policy == policy)
                .map(|x| (x.length as f64, f(x)))
                .collect(),
        };
        let policies = ["None", "Speculative", "JIT (margin)", "JIT"];
        out.push((
            "chains-overhead.svg".into(),
            line_chart(
                "Chain overhead (E2E - sum of exec)",
                "chain length",
                "overhead, cold starts",
                &policies.map(|p| by(p, |x| x.overhead_cold_starts)),
                false,
            ),
        ));
        out.push((
            "chains-idle.svg".into(),
            line_chart(
                "Idle warm instance-seconds before use, per run",
                "chain length",
                "instance-seconds",
                &policies.map(|p| by(p, |x| x.idle_before_use_per_run)),
                false,
            ),
        ));
    }
    if let Some(s) = &r.smse {
        let mut keep: Vec<f64> = s.rows.iter().map(|x| x.keep_alive).collect();
        keep.sort_by(f64::total_cmp);
        keep.dedup();
        for k in keep {
            let series: Vec<Series> = ["all-ephemeral", "static all-durable", "dynamic durable"]
                .iter()
                .map(|p| Series {
                    name: p.to_string(),
                    points: s
                        .rows
                        .iter()
                        .filter(|x| x.policy == *p && x.keep_alive == k)
                        .map(|x| (x.tasks as f64, x.summary.makespan))
                        .collect(),
                })
                .collect();
            out.push((
                format!("smse-makespan-keepalive-{k:.0}s.svg"),
                line_chart(
                    &format!("SMSE-like makespan, keep-alive {k:.0} s"),
                    "tasks",
                    "makespan, s",
                    &series,
                    false,
                ),
            ));
        }
    }
    if let Some(p) = &r.packing {
        let series = vec![
            Series {
                name: "P = 1".into(),
                points: p
                    .rows
                    .iter()
                    .map(|x| (x.invocations as f64, x.sim_time_unpacked))
                    .collect(),
            },
            Series {
                name: "chosen P".into(),
                points: p
                    .rows
                    .iter()
                    .map(|x| (x.invocations as f64, x.sim_time))
                    .collect(),
            },
            Series {
                name: "model T(P)".into(),
                points: p
                    .rows
                    .iter()
                    .map(|x| (x.invocations as f64, x.model_time))
                    .collect(),
            },
        ];
        out.push((
            "packing-time.svg".into(),
            line_chart(
                "Burst completion time",
                "concurrent invocations C",
                "seconds",
                &series,
                true,
            ),
        ));
        let series = vec![
            Series {
                name: "P = 1".into(),
                points: p
                    .rows
                    .iter()
                    .map(|x| (x.invocations as f64, x.sim_cost_unpacked))
                    .collect(),
            },
            Series {
                name: "chosen P".into(),
                points: p
                    .rows
                    .iter()
                    .map(|x| (x.invocations as f64, x.sim_cost))
                    .collect(),
            },
        ];
        out.push((
            "packing-cost.svg".into(),
            line_chart("Burst cost", "concurrent invocations C", "$", &series, true),
        ));
    }
    if let Some(z) = &r.sizing {
        let series: Vec<Series> = z
            .rows
            .iter()
            .map(|x| Series {
                name: x.strategy.clone(),
                points: vec![
                    (1.0, x.cpu_requested_per_used),
                    (2.0, x.memory_requested_per_used),
                ],
            })
            .collect();
        out.push((
            "sizing-ratio.svg".into(),
            line_chart(
                "Requested / used (1 = CPU, 2 = memory)",
                "resource",
                "ratio",
                &series,
                false,
            ),
        ));
    }
    out
}

/// REPORT.md: each benchmark's measured figures beside the published ones.
pub fn markdown(r: &BenchReport, command: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Planner benchmarks\n");
    let _ = writeln!(
        s,
        "Generated by `{command}` (seed {}). Every figure below is measured in one run of the",
        r.seed
    );
    let _ = writeln!(
        s,
        "discrete-event simulator in `operator/planner/src/sim`, each policy on the same"
    );
    let _ = writeln!(
        s,
        "sampled workload as its baseline. Published figures are the papers' own, on their"
    );
    let _ = writeln!(
        s,
        "platforms; they are beside ours for scale, not as a like-for-like comparison.\n"
    );
    if let Some(c) = &r.chains {
        let (met, worst_ideal, worst, ratio) = chains_verdict(c);
        let (_, before_ideal, before_cs, before_ratio) = chains_verdict_for(c, "JIT (margin)");
        let _ = writeln!(s, "## 1. Chains and pre-warming (Xanadu)\n");
        let _ = writeln!(
            s,
            "{} runs per length; every stage: exec p50 {:.1} s / p95 {:.1} s, cold start p50 {:.1} s / p95 {:.1} s, 0.05 s dispatch per edge; runs far enough apart that everything has scaled to zero in between. Overhead = end-to-end minus the sum of the run's execution times. Ideal = the overhead the same run has with its first stage's wait as its only cold start (that wait plus the dispatch overheads, which no pre-warming removes); vs ideal = overhead / ideal. Idle = instance-seconds an instance was ready but unused before its first task, the same definition for every policy (from ready until the input arrives, or until released); keep-alive idle after use is the same for all policies and shown apart. JIT is the progress-aware schedule (`prewarm::progress_schedule`, accepted late probability {:.2}), re-decided on every input arrival and stage start: the schedule the run engine carries out (`vflow_engine::prewarming`, which also re-decides on each stage finish and request sent); JIT (margin) is the earlier rule (t0 schedule with a base + z sigma margin, z = 1, rolled forward at each input arrival), kept as the before.\n",
            c.runs, c.exec_p50, c.exec_p95, c.cold_start_p50, c.cold_start_p95, c.late_quantile
        );
        s.push_str(&chains_table(c));
        let _ = writeln!(
            s,
            "\n![overhead](chains-overhead.svg) ![idle](chains-idle.svg)\n"
        );
        let yes = |b: bool| if b { "yes" } else { "no" };
        let _ = writeln!(
            s,
            "| target | published (Xanadu) | JIT (margin), before | JIT | met |\n|---|---|---|---|---|\n| JIT overhead within 1.2 of the ideal single cold start at every length | overhead nearly flat in chain length; ~10x below OpenWhisk | worst {:.3} x ideal | worst {:.3} x ideal | {} |\n| same, read as overhead within 1.2 mean cold starts (dispatch counted as overhead) | - | worst {:.2} cold starts | worst {:.2} cold starts | {} |\n| JIT idle under 10% of Speculative's | speculative locks resources; JIT +0.9% CPU over cold | {:.1}% (lengths 2-8) | {:.1}% (lengths 2-8) | {} |\n",
            before_ideal,
            worst_ideal,
            yes(worst_ideal <= 1.2),
            before_cs,
            worst,
            yes(worst <= 1.2),
            before_ratio * 100.0,
            ratio * 100.0,
            yes(ratio < 0.1)
        );
        if !c.frontier.is_empty() {
            let _ = writeln!(
                s,
                "The trade-off, progress-aware JIT at other accepted late probabilities (same runs; the default is not chosen from this table):\n\n| late probability | worst overhead vs ideal | JIT / Speculative idle | both targets |\n|---|---|---|---|"
            );
            for &(q, w, r) in &c.frontier {
                let _ = writeln!(
                    s,
                    "| {q:.2} | {w:.3} | {:.1}% | {} |",
                    r * 100.0,
                    yes(w <= 1.2 && r < 0.1)
                );
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(
            s,
            "Branch runs that went the unpredicted way and were re-planned: {} (release of the abandoned branch's warm instances, JIT from the branch taken).\n",
            c.branch_replans
        );
        if !met {
            let _ = writeln!(
                s,
                "Why the targets are not both met: a cold start ({:.1} s) is as long as a stage's execution ({:.1} s, p95/p50 = {:.2}), so stage k+1's instance must be requested about when stage k starts, before anything about stage k's duration is known; the spread of (exec of stage k) - (cold start of stage k+1) is the irreducible uncertainty, and each instance either idles for the lead that covers it or the run waits. Deciding from the run's actual progress and the conditional (elapsed-time) distributions did not move that trade-off measurably against the fixed margin (compare the two JIT rows and the curve above at equal idle): the information that would narrow it (how far stage k is) only comes after the decision. Speculative's idle grows with the square of the length and JIT's linearly, so the 10% share is out of reach mostly at short lengths (at length 2 Speculative idles only about one stage's time).\n",
                c.cold_start_p50,
                c.exec_p50,
                c.exec_p95 / c.exec_p50
            );
        }
    }
    if let Some(sm) = &r.smse {
        let _ = writeln!(s, "## 2. Durable vs ephemeral on SMSE-like workloads\n");
        let _ = writeln!(
            s,
            "{} nodes of {:.0} cores / {:.0} GiB; 12 functions (half a core, 0.5-2 GiB, cold start 1.5-5 s, 0.6-1.6 s per 2 s segment); requests of 5-20 segments of one function drawn from a Zipf(1.2) popularity that is reshuffled every 60 s cycle; Poisson arrivals alternating a 45 s base and a 15 s peak at double rate, spread over about 300 s (so more tasks = more load). Dynamic durable re-plans every {:.0} s from the last interval's rates with a 25% memory reserve, with the planner's own choice (`provisioning::plan`, what `provisioning: Auto` runs in the operator, the previous decision's instances kept with its hysteresis). All-ephemeral instances scale to zero after the keep-alive shown (idle ones are evicted when a new instance needs the room); static all-durable pins one instance of each function at the start, in function order, as far as the memory budget less the same reserve allows, and never changes it. The cluster is sized so that the peak demand at the highest load fills its memory.\n",
            sm.nodes.len(),
            sm.nodes.first().map_or(0.0, |n| n.cpu),
            sm.nodes
                .first()
                .map_or(0.0, |n| n.memory_bytes / 1024f64.powi(3)),
            sm.interval_seconds
        );
        s.push_str(&smse_table(sm));
        let _ = writeln!(s);
        for (k, tasks, dynamic, stat) in smse_reductions(sm) {
            let _ = writeln!(s, "![makespan](smse-makespan-keepalive-{k:.0}s.svg)\n");
            let _ = writeln!(
                s,
                "| keep-alive {k:.0} s, {tasks} tasks | published (SMSE) | measured | met |\n|---|---|---|---|\n| dynamic durable makespan vs all-ephemeral | up to 30% lower | {:.1}% lower | {} |\n| static all-durable vs all-ephemeral | worse under shifting popularity | {:.1}% lower | - |\n",
                dynamic * 100.0,
                if dynamic >= 0.30 { "yes" } else { "no" },
                stat * 100.0
            );
        }
    }
    if let Some(sm) = &r.smse
        && smse_reductions(sm).iter().any(|x| x.2 < 0.30)
    {
        let _ = writeln!(
            s,
            "Why the target is missed: on this workload the makespan is set by the last arrivals (the ~300 s arrival window), not by a backlog: at keep-alive 0 every policy finishes within seconds of the last request, so avoided cold starts show in the latencies and the cold-start counts (dynamic durable roughly halves the cold starts at the highest load) but barely in the makespan. With a 30 s keep-alive, ephemeral instances already stay warm for every function busy enough to pass the three-reuse rule, so the planner keeps none durable and the two policies are the same run. SMSE's 30% needs a regime where cold starts eat the capacity a backlog needs; this simulator was not tuned to produce it.\n"
        );
    }
    if let Some(sm) = &r.smse_saturated {
        let _ = writeln!(
            s,
            "### The same workload on a saturated cluster\n\nSMSE's makespans come from a fixed cluster that the load overruns, so that a backlog forms and the capacity cold starts take lengthens it. Here one node of {:.0} cores / {:.0} GiB: what the warm execution of the mean arrival rate at the highest load keeps busy (every function equally likely, popularity being reshuffled), so the peaks (1.6x the mean) overrun it. Everything else as above.\n",
            sm.nodes.first().map_or(0.0, |n| n.cpu),
            sm.nodes
                .first()
                .map_or(0.0, |n| n.memory_bytes / 1024f64.powi(3)),
        );
        s.push_str(&smse_table(sm));
        let _ = writeln!(s);
        for (k, tasks, dynamic, stat) in smse_reductions(sm) {
            let _ = writeln!(
                s,
                "| saturated, keep-alive {k:.0} s, {tasks} tasks | published (SMSE) | measured | met |\n|---|---|---|---|\n| dynamic durable makespan vs all-ephemeral | up to 30% lower | {:.1}% lower | {} |\n| static all-durable vs all-ephemeral | worse under shifting popularity | {:.1}% lower | - |\n",
                dynamic * 100.0,
                if dynamic >= 0.30 { "yes" } else { "no" },
                stat * 100.0
            );
        }
        let _ = writeln!(
            s,
            "What the saturated runs show: the backlog does set the makespan here, but the simulated ephemeral instances do not pay a cold start per task under a backlog: an instance that finishes takes the next queued task of its function (as a FaaS worker serves its function's queue), so the popular functions stay warm while busy and the cold starts stay roughly flat while the tasks triple (see the table). Durable instances then only hold memory the backlog needs (and, pinned for a function that went out of fashion, hold it for nothing until the next re-plan); static pinning can even leave a function with no room to start at all (the unfinished requests). Static all-durable rows with unfinished requests are not comparable: their makespan covers only the requests that finished. With a 30 s keep-alive, idle kept-alive instances hold memory that queued tasks wait for (the simulator evicts idle instances for new work but not for queued work), which is why keep-alive 30 s is slower than 0 s here; letting queued work evict them was tried and made the 1200-task ephemeral run slower still, so it was left as it was. SMSE's 30% implies ephemeral containers that pay their start-up on every invocation or that are torn down between requests of a backlog; this simulator does not model that, and was not changed to.\n"
        );
    }
    if let Some(p) = &r.packing {
        let _ = writeln!(s, "## 3. Packing (ProPack)\n");
        let _ = writeln!(
            s,
            "A burst of C invocations at t = 0, each {:.1} s alone on one core; instances of {:.0} cores; scaling S(n) = {:.1} s + {:.3} s x n (each instance waits for those started before it); E(P) from the shape P invocations sharing the cores with 5% interference per neighbour: {}. P chosen by the joint objective 0.55 cost + 0.45 time on the model; the simulator then runs P = 1 and the chosen P. Cost counts each instance from request to removal.\n",
            p.exec_seconds,
            p.instance_cores,
            p.cold_start_seconds,
            p.per_instance_seconds,
            p.curve
                .iter()
                .take(8)
                .map(|(k, e)| format!("E({k}) = {e:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        s.push_str(&packing_table(p));
        let n = p.rows.len().max(1) as f64;
        let t = p.rows.iter().map(|x| x.time_reduction).sum::<f64>() / n;
        let k = p.rows.iter().map(|x| x.cost_reduction).sum::<f64>() / n;
        let _ = writeln!(s, "\n![time](packing-time.svg) ![cost](packing-cost.svg)\n");
        let _ = writeln!(
            s,
            "| figure | published (ProPack) | measured (mean over C) |\n|---|---|---|\n| service-time improvement over P = 1 | 85% | {:.0}% |\n| cost improvement over P = 1 | 66% | {:.0}% |\n",
            t * 100.0,
            k * 100.0
        );
    }
    if let Some(z) = &r.sizing {
        let _ = writeln!(s, "## 4. Sizing from observations\n");
        let _ = writeln!(
            s,
            "{} invocations of each of six functions (true CPU and memory use log-normal; two written with too little memory), the same draws for every strategy. user-max: every function at its maximum bounds; user-min: CPU at its minimum bound, memory as written; vflow: starts as written, applies p95 CPU x 1.2 and max memory x 1.2 after 20 observations, raises memory x 1.5 at once after an OOM kill. A CPU-starved invocation runs proportionally slower; an OOM kill wastes half the run and is retried (failed after three).\n",
            z.invocations_per_function
        );
        s.push_str(&sizing_table(z));
        let get = |n: &str| z.rows.iter().find(|x| x.strategy == n);
        if let (Some(v), Some(max), Some(min)) = (get("vflow"), get("user-max"), get("user-min")) {
            let _ = writeln!(
                s,
                "\n![ratio](sizing-ratio.svg)\n\n| figure | published (WiseFuse) | measured |\n|---|---|---|\n| cost below user-max | 63% | {:.0}% |\n| p95 latency below user-min | 65% | {:.0}% |\n| OOM kills (vflow / user-min / user-max) | - | {} / {} / {} |\n",
                (1.0 - v.cost / max.cost) * 100.0,
                (1.0 - v.p95_latency / min.p95_latency) * 100.0,
                v.oom_kills,
                min.oom_kills,
                max.oom_kills
            );
        }
    }
    s
}
