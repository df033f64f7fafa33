//! Branch probabilities: how likely each conditional stage is to run, learned from
//! observed outcomes with the manifest's `when.probability` as a Beta prior.
//!
//! Conditions that test the same value of the same stage and can never hold together
//! (`detect.objects > 0` and `detect.objects <= 0`) are one decision with several
//! outcomes (an exclusive group), as Xanadu's XOR branches; other conditions are
//! independent yes/no decisions. A condition that reads a stage which itself may not
//! run depends on it: the planner takes such a condition as false when that stage was
//! skipped (its metadata does not exist), which is what makes paths branch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vflow_api::{
    VideoWorkflowSpec,
    condition::{CompareOp, Literal, StageCondition},
};

use crate::dag::Dag;

/// How strongly the manifest's prior counts, in observations. With 10, the prior
/// weighs as much as ten observed runs: after 90 runs it carries a tenth of the weight.
pub const DEFAULT_PRIOR_STRENGTH: f64 = 10.0;

/// Outcomes observed for one conditional stage: of `seen` evaluations, `taken` ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BranchObservation {
    pub stage: String,
    pub taken: u64,
    pub seen: u64,
}

/// Posterior mean of a Beta(prior * k, (1 - prior) * k) after `taken` of `seen`:
/// the prior until data arrive, the observed share once data dominate.
pub fn posterior_mean(prior: f64, strength: f64, taken: u64, seen: u64) -> f64 {
    let prior = prior.clamp(0.0, 1.0);
    let k = strength.max(0.0);
    let taken = taken.min(seen) as f64;
    let seen = seen as f64;
    if k + seen == 0.0 {
        return prior;
    }
    (prior * k + taken) / (k + seen)
}

/// The gate of one conditional stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    /// The manifest's `when.probability`.
    pub prior: f64,
    /// The learned probability that the condition holds, given it can be evaluated.
    pub probability: f64,
    pub observations: u64,
    /// Of the observations, how many ran.
    pub taken: u64,
    /// The stage whose metadata the condition reads.
    pub reads: Option<usize>,
}

/// One decision a run makes: which of `members` runs (at most one for an exclusive
/// group; a lone conditional stage runs or not).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub members: Vec<usize>,
    /// Probability of each member, given the decision is made.
    pub probabilities: Vec<f64>,
    /// Probability that none of the members runs.
    pub none: f64,
    /// The stage the decision reads; when it did not run, no member runs.
    pub reads: Option<usize>,
}

/// A learned branch probability, for status and reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BranchEstimate {
    pub stage: String,
    pub prior: f64,
    pub probability: f64,
    pub observations: u64,
    pub taken: u64,
}

/// Every stage's gate (None: it always runs) and the decisions they form.
#[derive(Debug, Clone, PartialEq)]
pub struct BranchModel {
    gates: Vec<Option<Gate>>,
    decisions: Vec<Decision>,
    names: Vec<String>,
}

impl BranchModel {
    /// Gates from `gates`, with exclusive groups given as lists of stage indices (each
    /// stage in at most one group). Decisions are ordered by `dag`'s topological order.
    pub fn new(dag: &Dag, gates: Vec<Option<Gate>>, groups: &[Vec<usize>]) -> BranchModel {
        let mut grouped = vec![false; dag.len()];
        let mut decisions = Vec::new();
        for group in groups {
            let members: Vec<usize> = group
                .iter()
                .copied()
                .filter(|&i| i < dag.len() && gates[i].is_some() && !grouped[i])
                .collect();
            if members.is_empty() {
                continue;
            }
            members.iter().for_each(|&i| grouped[i] = true);
            decisions.push(decision(&gates, members));
        }
        for i in 0..dag.len() {
            if gates[i].is_some() && !grouped[i] {
                decisions.push(decision(&gates, vec![i]));
            }
        }
        decisions.sort_by_key(|d| d.members.iter().map(|&i| dag.rank(i)).min());
        BranchModel {
            gates,
            decisions,
            names: (0..dag.len()).map(|i| dag.name(i).to_string()).collect(),
        }
    }

    /// From a workflow's `when` conditions and the outcomes observed so far.
    pub fn from_spec(
        spec: &VideoWorkflowSpec,
        dag: &Dag,
        observed: &[BranchObservation],
        prior_strength: f64,
    ) -> BranchModel {
        let counts: BTreeMap<&str, &BranchObservation> =
            observed.iter().map(|o| (o.stage.as_str(), o)).collect();
        let mut conditions: Vec<Option<StageCondition>> = vec![None; dag.len()];
        let mut gates = vec![None; dag.len()];
        for (i, stage) in spec.stages.iter().enumerate() {
            let Some(when) = &stage.when else { continue };
            let cond = StageCondition::parse(&when.condition).ok();
            let (taken, seen) = counts
                .get(stage.name.as_str())
                .map_or((0, 0), |o| (o.taken, o.seen));
            gates[i] = Some(Gate {
                prior: when.probability,
                probability: posterior_mean(when.probability, prior_strength, taken, seen),
                observations: seen,
                taken: taken.min(seen),
                reads: cond.as_ref().and_then(|c| dag.index(&c.stage)),
            });
            conditions[i] = cond;
        }
        let groups = exclusive_groups(&conditions);
        BranchModel::new(dag, gates, &groups)
    }

    pub fn gate(&self, i: usize) -> Option<&Gate> {
        self.gates[i].as_ref()
    }

    pub fn decisions(&self) -> &[Decision] {
        &self.decisions
    }

    pub fn estimates(&self) -> Vec<BranchEstimate> {
        self.decisions
            .iter()
            .flat_map(|d| d.members.iter().zip(&d.probabilities))
            .filter_map(|(&i, &p)| {
                self.gates[i].as_ref().map(|g| BranchEstimate {
                    stage: self.names[i].clone(),
                    prior: g.prior,
                    probability: p,
                    observations: g.observations,
                    taken: g.taken,
                })
            })
            .collect()
    }
}

fn decision(gates: &[Option<Gate>], members: Vec<usize>) -> Decision {
    let mut probabilities: Vec<f64> = members
        .iter()
        .map(|&i| gates[i].as_ref().map_or(1.0, |g| g.probability))
        .collect();
    // Exclusive outcomes cannot add up to more than certainty; learned shares of a
    // group may, by a little, while the prior still weighs in.
    let sum: f64 = probabilities.iter().sum();
    if sum > 1.0 {
        probabilities.iter_mut().for_each(|p| *p /= sum);
    }
    let none = (1.0 - probabilities.iter().sum::<f64>()).max(0.0);
    let reads = members
        .iter()
        .find_map(|&i| gates[i].as_ref().and_then(|g| g.reads));
    Decision {
        members,
        probabilities,
        none,
        reads,
    }
}

/// Groups of conditions on the same `stage.key` that pairwise cannot hold together.
fn exclusive_groups(conditions: &[Option<StageCondition>]) -> Vec<Vec<usize>> {
    let mut by_value: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (i, c) in conditions.iter().enumerate() {
        if let Some(c) = c {
            by_value
                .entry((c.stage.clone(), c.key.clone()))
                .or_default()
                .push(i);
        }
    }
    let mut groups = Vec::new();
    for members in by_value.into_values() {
        // Greedy clique: keep a member when it excludes every member kept so far.
        let mut group: Vec<usize> = Vec::new();
        for i in members {
            let ci = conditions[i].as_ref();
            let excludes_all = group.iter().all(|&j| match (ci, conditions[j].as_ref()) {
                (Some(a), Some(b)) => exclusive(a, b),
                _ => false,
            });
            if excludes_all {
                group.push(i);
            }
        }
        if group.len() > 1 {
            groups.push(group);
        }
    }
    groups
}

/// Whether two comparisons of one value can never both hold.
pub fn exclusive(a: &StageCondition, b: &StageCondition) -> bool {
    match (&a.value, &b.value) {
        (Literal::Number(x), Literal::Number(y)) => {
            match (interval(a.op, *x), interval(b.op, *y)) {
                (Some(i), Some(j)) => disjoint(i, j),
                // != x against == x is the only provable case with a hole.
                _ => {
                    matches!(
                        (a.op, b.op),
                        (CompareOp::Ne, CompareOp::Eq) | (CompareOp::Eq, CompareOp::Ne)
                    ) && x == y
                }
            }
        }
        (Literal::String(x), Literal::String(y)) => equality_exclusive(a.op, b.op, x == y),
        (Literal::Bool(x), Literal::Bool(y)) => {
            // For booleans, != true is == false.
            let norm = |op: CompareOp, v: bool| match op {
                CompareOp::Ne => Some(!v),
                CompareOp::Eq => Some(v),
                _ => None,
            };
            matches!((norm(a.op, *x), norm(b.op, *y)), (Some(p), Some(q)) if p != q)
        }
        _ => false,
    }
}

fn equality_exclusive(a: CompareOp, b: CompareOp, same: bool) -> bool {
    match (a, b) {
        (CompareOp::Eq, CompareOp::Eq) => !same,
        (CompareOp::Eq, CompareOp::Ne) | (CompareOp::Ne, CompareOp::Eq) => same,
        _ => false,
    }
}

/// (low, low inclusive, high, high inclusive); None for `!=`.
type Interval = (f64, bool, f64, bool);

fn interval(op: CompareOp, v: f64) -> Option<Interval> {
    let inf = f64::INFINITY;
    Some(match op {
        CompareOp::Eq => (v, true, v, true),
        CompareOp::Gt => (v, false, inf, false),
        CompareOp::Ge => (v, true, inf, false),
        CompareOp::Lt => (-inf, false, v, false),
        CompareOp::Le => (-inf, false, v, true),
        CompareOp::Ne => return None,
    })
}

fn disjoint(a: Interval, b: Interval) -> bool {
    let below = |x: Interval, y: Interval| x.2 < y.0 || (x.2 == y.0 && !(x.3 && y.1));
    below(a, b) || below(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(s: &str) -> StageCondition {
        StageCondition::parse(s).expect("condition parses")
    }

    #[test]
    fn beta_posterior_by_hand() {
        // Prior 0.3 with strength 10 is 3 of 10; after 40 of 50 runs: 43 / 60.
        assert!((posterior_mean(0.3, 10.0, 40, 50) - 43.0 / 60.0).abs() < 1e-12);
        assert_eq!(posterior_mean(0.3, 10.0, 0, 0), 0.3);
        // Without a prior, the observed share.
        assert_eq!(posterior_mean(0.3, 0.0, 7, 10), 0.7);
        // taken cannot exceed seen.
        assert_eq!(posterior_mean(0.5, 0.0, 12, 10), 1.0);
    }

    #[test]
    fn exclusive_comparisons() {
        assert!(exclusive(&cond("d.n > 0"), &cond("d.n <= 0")));
        assert!(exclusive(&cond("d.n < 0"), &cond("d.n >= 0")));
        assert!(!exclusive(&cond("d.n >= 0"), &cond("d.n <= 0")));
        assert!(exclusive(&cond("d.n == 1"), &cond("d.n == 2")));
        assert!(exclusive(&cond("d.n != 1"), &cond("d.n == 1")));
        assert!(exclusive(&cond("d.k == \"a\""), &cond("d.k == \"b\"")));
        assert!(!exclusive(&cond("d.k != \"a\""), &cond("d.k != \"b\"")));
        assert!(exclusive(&cond("d.ok == true"), &cond("d.ok != true")));
        assert!(!exclusive(&cond("d.ok == true"), &cond("d.n > 1")));
    }

    #[test]
    fn groups_only_pairwise_exclusive_conditions() {
        let cs = vec![
            None,
            Some(cond("a.n > 5")),
            Some(cond("a.n <= 5")),
            Some(cond("a.n > 3")), // overlaps the first: stays independent
            Some(cond("a.m > 3")),
        ];
        assert_eq!(exclusive_groups(&cs), vec![vec![1, 2]]);
    }
}
