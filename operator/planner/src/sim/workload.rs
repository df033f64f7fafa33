//! Workload generators: chains (with a branch), SMSE-like segment requests, bursts.

use serde::{Deserialize, Serialize};

use super::engine::{RequestSpec, TaskSpec};
use crate::rng::{LogNormal, Rng};

/// Dispatch overhead between chained tasks (the O of A_k).
pub const DISPATCH_SECONDS: f64 = 0.05;

/// `runs` runs of a chain of `length` functions (0..length), `spacing` seconds apart.
pub fn chain_requests(
    length: usize,
    runs: usize,
    spacing: f64,
    exec: &[LogNormal],
    rng: &mut Rng,
) -> Vec<RequestSpec> {
    (0..runs)
        .map(|r| RequestSpec {
            arrival: spacing * r as f64,
            tasks: (0..length)
                .map(|k| TaskSpec {
                    function: k,
                    after: if k == 0 { vec![] } else { vec![k - 1] },
                    exec_seconds: exec[k].sample(rng),
                    overhead_seconds: if k == 0 { 0.0 } else { DISPATCH_SECONDS },
                })
                .collect(),
            kind: 0,
        })
        .collect()
}

/// The branch chain's functions: a prefix, then one of two branches of equal length.
#[derive(Debug, Clone, PartialEq)]
pub struct BranchShape {
    pub prefix: usize,
    pub branch: usize,
    /// Probability of the first branch.
    pub p_first: f64,
}

impl BranchShape {
    /// Function indices: prefix 0..prefix, first branch next, second branch last.
    pub fn functions(&self) -> usize {
        self.prefix + 2 * self.branch
    }
    pub fn first_branch(&self) -> Vec<usize> {
        (self.prefix..self.prefix + self.branch).collect()
    }
    pub fn second_branch(&self) -> Vec<usize> {
        (self.prefix + self.branch..self.functions()).collect()
    }
}

/// Runs of the branch chain; each takes the first branch with `p_first`. `kind` is 0
/// for the first branch and 1 for the second.
pub fn branch_requests(
    shape: &BranchShape,
    runs: usize,
    spacing: f64,
    exec: &[LogNormal],
    rng: &mut Rng,
) -> Vec<RequestSpec> {
    (0..runs)
        .map(|r| {
            let first = rng.uniform() < shape.p_first;
            let branch = if first {
                shape.first_branch()
            } else {
                shape.second_branch()
            };
            let funcs: Vec<usize> = (0..shape.prefix).chain(branch).collect();
            RequestSpec {
                arrival: spacing * r as f64,
                tasks: funcs
                    .iter()
                    .enumerate()
                    .map(|(k, &f)| TaskSpec {
                        function: f,
                        after: if k == 0 { vec![] } else { vec![k - 1] },
                        exec_seconds: exec[f].sample(rng),
                        overhead_seconds: if k == 0 { 0.0 } else { DISPATCH_SECONDS },
                    })
                    .collect(),
                kind: usize::from(!first),
            }
        })
        .collect()
}

/// SMSE-like workload parameters (ALGORITHMS.md section 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SmseWorkload {
    pub tasks: usize,
    pub functions: usize,
    /// Zipf exponent of function popularity (long tail).
    pub zipf: f64,
    /// Base period and peak period lengths; the peak runs at double rate.
    pub base_seconds: f64,
    pub peak_seconds: f64,
    /// Arrivals spread over about this long (the rate grows with `tasks`).
    pub window_seconds: f64,
    pub min_segments: usize,
    pub max_segments: usize,
    /// Popularity is reshuffled every base+peak cycle.
    pub shifting: bool,
}

impl SmseWorkload {
    pub fn new(tasks: usize) -> Self {
        SmseWorkload {
            tasks,
            functions: 12,
            zipf: 1.2,
            base_seconds: 45.0,
            peak_seconds: 15.0,
            window_seconds: 300.0,
            min_segments: 5,
            max_segments: 20,
            shifting: true,
        }
    }
}

/// Requests of 5 to 20 segments (each a task of one function, all ready at arrival),
/// functions drawn from a Zipf popularity, arrivals Poisson alternating a base rate
/// and a double-rate peak. `exec[f]` is the time of one 2 s segment.
pub fn smse_requests(w: &SmseWorkload, exec: &[LogNormal], rng: &mut Rng) -> Vec<RequestSpec> {
    let f = w.functions.max(1);
    let mean_segments = (w.min_segments + w.max_segments) as f64 / 2.0;
    let cycle = w.base_seconds + w.peak_seconds;
    // Requests expected in the window, weighted by the peak's double rate.
    let weighted = w.window_seconds / cycle * (w.base_seconds + 2.0 * w.peak_seconds);
    let base_rate = w.tasks as f64 / mean_segments / weighted.max(1e-9);
    let weights: Vec<f64> = (1..=f).map(|k| 1.0 / (k as f64).powf(w.zipf)).collect();
    let total: f64 = weights.iter().sum();
    let mut ranking: Vec<usize> = (0..f).collect();
    let mut requests = Vec::new();
    let mut tasks = 0;
    let mut t = 0.0;
    let mut cycle_index = usize::MAX;
    while tasks < w.tasks {
        let in_cycle = t % cycle;
        let peak = in_cycle >= w.base_seconds;
        let rate = if peak { 2.0 * base_rate } else { base_rate };
        let this_cycle = (t / cycle) as usize;
        if w.shifting && this_cycle != cycle_index {
            cycle_index = this_cycle;
            // Fisher-Yates: which function is popular changes every cycle.
            for i in (1..f).rev() {
                ranking.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let gap = rng.exponential(rate);
        // Stay piecewise-exact: a gap that crosses a rate change restarts there.
        let boundary = if peak {
            (this_cycle + 1) as f64 * cycle
        } else {
            this_cycle as f64 * cycle + w.base_seconds
        };
        if t + gap > boundary {
            t = boundary;
            continue;
        }
        t += gap;
        let mut u = rng.uniform() * total;
        let rank = weights
            .iter()
            .position(|&wt| {
                u -= wt;
                u <= 0.0
            })
            .unwrap_or(f - 1);
        let function = ranking[rank];
        let span = (w.max_segments - w.min_segments + 1) as u64;
        let segments = (w.min_segments + rng.below(span) as usize).min(w.tasks - tasks);
        tasks += segments;
        requests.push(RequestSpec {
            arrival: t,
            tasks: (0..segments)
                .map(|_| TaskSpec {
                    function,
                    after: vec![],
                    exec_seconds: exec[function].sample(rng),
                    overhead_seconds: 0.0,
                })
                .collect(),
            kind: function,
        });
    }
    requests
}

/// C invocations of function 0 at time 0, each one request.
pub fn burst_requests(c: usize, exec: LogNormal, rng: &mut Rng) -> Vec<RequestSpec> {
    (0..c)
        .map(|_| RequestSpec {
            arrival: 0.0,
            tasks: vec![TaskSpec {
                function: 0,
                after: vec![],
                exec_seconds: exec.sample(rng),
                overhead_seconds: 0.0,
            }],
            kind: 0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smse_has_the_asked_tasks_and_segment_counts() {
        let w = SmseWorkload::new(400);
        let exec = vec![LogNormal::constant(1.0); w.functions];
        let r = smse_requests(&w, &exec, &mut Rng::new(5));
        assert_eq!(r.iter().map(|x| x.tasks.len()).sum::<usize>(), 400);
        assert!(
            r.iter()
                .take(r.len() - 1)
                .all(|x| (5..=20).contains(&x.tasks.len()))
        );
        assert!(r.windows(2).all(|p| p[0].arrival <= p[1].arrival));
    }

    #[test]
    fn peaks_run_at_double_rate() {
        let mut w = SmseWorkload::new(40_000);
        w.shifting = false;
        let exec = vec![LogNormal::constant(1.0); w.functions];
        let r = smse_requests(&w, &exec, &mut Rng::new(9));
        let cycle = w.base_seconds + w.peak_seconds;
        let (mut base, mut peak) = (0.0, 0.0);
        for x in &r {
            if x.arrival % cycle >= w.base_seconds {
                peak += 1.0
            } else {
                base += 1.0
            }
        }
        // Per second: peak / 15 against base / 45.
        let ratio = (peak / w.peak_seconds) / (base / w.base_seconds);
        assert!((ratio - 2.0).abs() < 0.2, "{ratio}");
    }
}
