//! The most likely path: which stages a run most likely goes through. Those are the
//! stages worth pre-warming.
//!
//! Every unconditional stage runs (a skipped stage passes its input through), so a
//! "path" here is the set of stages that run in one outcome of the run's decisions,
//! listed in topological order. Xanadu's greedy rule takes the most probable outcome
//! of each decision in turn; max-product takes the outcome with the highest joint
//! probability. They differ when a likely branch leads into an uncertain one.

use crate::{branch::BranchModel, dag::Dag};

/// One outcome of a run's decisions.
#[derive(Debug, Clone, PartialEq)]
pub struct LikelyPath {
    /// Stages that run, in topological order.
    pub stages: Vec<usize>,
    /// Whether each stage runs, by index.
    pub runs: Vec<bool>,
    /// Probability of this outcome.
    pub probability: f64,
}

impl LikelyPath {
    pub fn names(&self, dag: &Dag) -> Vec<String> {
        self.stages
            .iter()
            .map(|&i| dag.name(i).to_string())
            .collect()
    }
}

/// Most probable outcome of each decision, taken one decision at a time (Xanadu).
/// Ties go to running the stage: an unneeded warm instance costs less than a cold start.
pub fn greedy(dag: &Dag, model: &BranchModel) -> LikelyPath {
    let mut runs = unconditional(dag, model);
    let mut probability = 1.0;
    for d in model.decisions() {
        if d.reads.is_some_and(|r| !runs[r]) {
            continue;
        }
        let best = d
            .probabilities
            .iter()
            .enumerate()
            .fold((None, d.none), |(bi, bp), (k, &p)| {
                if p >= bp && bi.is_none() || p > bp {
                    (Some(k), p)
                } else {
                    (bi, bp)
                }
            });
        if let (Some(k), _) = best {
            runs[d.members[k]] = true;
        }
        probability *= best.1;
    }
    finish(dag, runs, probability)
}

/// Largest search (outcomes visited) before max-product settles for the best found.
const MAX_VISITS: usize = 200_000;

/// The outcome with the highest joint probability (the longest path on -log p),
/// found by depth-first search with the greedy outcome as the first bound.
pub fn max_product(dag: &Dag, model: &BranchModel) -> LikelyPath {
    let start = greedy(dag, model);
    let mut search = Search {
        model,
        best_runs: start.runs.clone(),
        best: start.probability,
        visits: 0,
    };
    let runs = unconditional(dag, model);
    search.visit(0, runs, 1.0);
    let best_runs = search.best_runs;
    finish(dag, best_runs, search.best)
}

struct Search<'a> {
    model: &'a BranchModel,
    best_runs: Vec<bool>,
    best: f64,
    visits: usize,
}

impl Search<'_> {
    fn visit(&mut self, at: usize, runs: Vec<bool>, p: f64) {
        self.visits += 1;
        // Probabilities only shrink as decisions are added: a partial outcome no more
        // likely than the best complete one cannot beat it.
        if p <= self.best && at > 0 || self.visits > MAX_VISITS {
            return;
        }
        let Some(d) = self.model.decisions().get(at) else {
            if p > self.best {
                self.best = p;
                self.best_runs = runs;
            }
            return;
        };
        if d.reads.is_some_and(|r| !runs[r]) {
            return self.visit(at + 1, runs, p);
        }
        let mut options: Vec<(Option<usize>, f64)> = d
            .members
            .iter()
            .zip(&d.probabilities)
            .map(|(&m, &q)| (Some(m), q))
            .collect();
        options.push((None, d.none));
        options.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (member, q) in options {
            if q <= 0.0 {
                continue;
            }
            let mut next = runs.clone();
            if let Some(m) = member {
                next[m] = true;
            }
            self.visit(at + 1, next, p * q);
        }
    }
}

/// Probability that each stage runs in a run (marginal over all outcomes).
pub fn run_probabilities(dag: &Dag, model: &BranchModel) -> Vec<f64> {
    let mut p = vec![1.0; dag.len()];
    for d in model.decisions() {
        let reached = d.reads.map_or(1.0, |r| p[r]);
        for (&m, &q) in d.members.iter().zip(&d.probabilities) {
            p[m] = reached * q;
        }
    }
    p
}

/// Probability of the outcome in which exactly the stages in `runs` run; 0 when no
/// outcome gives that set.
pub fn outcome_probability(model: &BranchModel, runs: &[bool]) -> f64 {
    let mut p = 1.0;
    for d in model.decisions() {
        let ran: Vec<usize> = (0..d.members.len())
            .filter(|&k| runs[d.members[k]])
            .collect();
        if d.reads.is_some_and(|r| !runs[r]) {
            if !ran.is_empty() {
                return 0.0;
            }
            continue;
        }
        p *= match ran.as_slice() {
            [] => d.none,
            [k] => d.probabilities[*k],
            _ => return 0.0,
        };
    }
    p
}

fn unconditional(dag: &Dag, model: &BranchModel) -> Vec<bool> {
    (0..dag.len()).map(|i| model.gate(i).is_none()).collect()
}

fn finish(dag: &Dag, runs: Vec<bool>, probability: f64) -> LikelyPath {
    let stages = dag.order().iter().copied().filter(|&i| runs[i]).collect();
    LikelyPath {
        stages,
        runs,
        probability,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::branch::Gate;

    fn gate(p: f64, reads: usize) -> Option<Gate> {
        Some(Gate {
            prior: p,
            probability: p,
            observations: 0,
            taken: 0,
            reads: Some(reads),
        })
    }

    /// root -> A (0.6) | B (0.4); C after A reads A (0.5); D after B reads B (1.0).
    fn xanadu_example() -> (Dag, BranchModel) {
        let dag = crate::dag::Dag::new(&[
            ("root".into(), vec![]),
            ("a".into(), vec!["root".into()]),
            ("b".into(), vec!["root".into()]),
            ("c".into(), vec!["a".into()]),
            ("d".into(), vec!["b".into()]),
        ])
        .expect("dag");
        let gates = vec![None, gate(0.6, 0), gate(0.4, 0), gate(0.5, 1), gate(1.0, 2)];
        let model = BranchModel::new(&dag, gates, &[vec![1, 2]]);
        (dag, model)
    }

    #[test]
    fn greedy_and_max_product_differ_by_hand() {
        let (dag, model) = xanadu_example();
        let g = greedy(&dag, &model);
        // Greedy: A (0.6), then C or not at 0.5 each (tie goes to running C): 0.3.
        assert_eq!(g.names(&dag), vec!["root", "a", "c"]);
        assert!((g.probability - 0.3).abs() < 1e-12);
        // Max-product: B then D for sure: 0.4.
        let m = max_product(&dag, &model);
        assert_eq!(m.names(&dag), vec!["root", "b", "d"]);
        assert!((m.probability - 0.4).abs() < 1e-12);
        assert!((outcome_probability(&model, &m.runs) - 0.4).abs() < 1e-12);
    }

    #[test]
    fn marginal_run_probabilities() {
        let (dag, model) = xanadu_example();
        let p = run_probabilities(&dag, &model);
        let expect = [1.0, 0.6, 0.4, 0.3, 0.4];
        for (a, b) in p.iter().zip(expect) {
            assert!((a - b).abs() < 1e-12, "{p:?}");
        }
    }

    #[test]
    fn unlikely_lone_branch_is_left_out() {
        let dag = crate::dag::Dag::new(&[
            ("a".into(), vec![]),
            ("b".into(), vec!["a".into()]),
            ("c".into(), vec!["b".into()]),
        ])
        .expect("dag");
        let model = BranchModel::new(&dag, vec![None, gate(0.3, 0), None], &[]);
        let g = greedy(&dag, &model);
        assert_eq!(g.names(&dag), vec!["a", "c"]);
        assert!((g.probability - 0.7).abs() < 1e-12);
    }
}
