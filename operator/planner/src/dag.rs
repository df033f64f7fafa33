//! The workflow's stages as a graph: indices, parents, children, a topological order,
//! and the weighted longest path that expected arrival times come from.

use std::collections::{BTreeMap, BTreeSet};

use vflow_api::{VideoWorkflowSpec, validate::StageShape, validate::workflow_shape};

/// Why stages do not form a DAG with one root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    #[error("stage {0:?} is listed twice")]
    Duplicate(String),
    #[error("stage {stage:?} runs after {parent:?}, which is not a stage")]
    UnknownParent { stage: String, parent: String },
    #[error("stages {0:?} form a cycle")]
    Cycle(Vec<String>),
    #[error("the workflow has no stages")]
    Empty,
    #[error(
        "the workflow's DAG is not sound (fan-out, join or cycle); run `vflow validate` for the reasons"
    )]
    Unsound,
}

/// Stages by index, with edges both ways and a topological order.
#[derive(Debug, Clone, PartialEq)]
pub struct Dag {
    names: Vec<String>,
    parents: Vec<Vec<usize>>,
    children: Vec<Vec<usize>>,
    order: Vec<usize>,
    /// Position of each stage in `order`.
    rank: Vec<usize>,
    shapes: Vec<StageShape>,
}

impl Dag {
    /// From `(name, after)` pairs. Every stage runs once per run (no fan-out).
    pub fn new(stages: &[(String, Vec<String>)]) -> Result<Dag, DagError> {
        if stages.is_empty() {
            return Err(DagError::Empty);
        }
        let mut index = BTreeMap::new();
        for (i, (name, _)) in stages.iter().enumerate() {
            if index.insert(name.as_str(), i).is_some() {
                return Err(DagError::Duplicate(name.clone()));
            }
        }
        let mut parents = vec![Vec::new(); stages.len()];
        for (i, (name, after)) in stages.iter().enumerate() {
            for parent in after {
                let j = *index
                    .get(parent.as_str())
                    .ok_or_else(|| DagError::UnknownParent {
                        stage: name.clone(),
                        parent: parent.clone(),
                    })?;
                if !parents[i].contains(&j) {
                    parents[i].push(j);
                }
            }
        }
        let names: Vec<String> = stages.iter().map(|(n, _)| n.clone()).collect();
        let order = kahn(&parents).map_err(|left| {
            DagError::Cycle(left.into_iter().map(|i| names[i].clone()).collect())
        })?;
        let shapes = vec![StageShape::Once; names.len()];
        Ok(Dag::assemble(names, parents, order, shapes))
    }

    /// From a workflow spec, with each stage's shape (once, or per segment).
    pub fn from_spec(spec: &VideoWorkflowSpec) -> Result<Dag, DagError> {
        let pairs: Vec<(String, Vec<String>)> = spec
            .stages
            .iter()
            .map(|s| (s.name.clone(), s.after.clone()))
            .collect();
        let plain = Dag::new(&pairs)?;
        let (_, shapes) = workflow_shape(spec).ok_or(DagError::Unsound)?;
        Ok(Dag { shapes, ..plain })
    }

    fn assemble(
        names: Vec<String>,
        parents: Vec<Vec<usize>>,
        order: Vec<usize>,
        shapes: Vec<StageShape>,
    ) -> Dag {
        let mut children = vec![Vec::new(); names.len()];
        for (i, ps) in parents.iter().enumerate() {
            for &j in ps {
                children[j].push(i);
            }
        }
        let mut rank = vec![0; names.len()];
        for (pos, &i) in order.iter().enumerate() {
            rank[i] = pos;
        }
        Dag {
            names,
            parents,
            children,
            order,
            rank,
            shapes,
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    pub fn parents(&self, i: usize) -> &[usize] {
        &self.parents[i]
    }

    pub fn children(&self, i: usize) -> &[usize] {
        &self.children[i]
    }

    /// Every stage after all of its parents.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Position of stage `i` in `order()`.
    pub fn rank(&self, i: usize) -> usize {
        self.rank[i]
    }

    pub fn shape(&self, i: usize) -> StageShape {
        self.shapes[i]
    }

    pub fn roots(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.parents[i].is_empty())
            .collect()
    }

    /// Stages `i` runs after, directly or not.
    pub fn ancestors(&self, i: usize) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut stack = self.parents[i].clone();
        while let Some(j) = stack.pop() {
            if seen.insert(j) {
                stack.extend(&self.parents[j]);
            }
        }
        seen
    }

    pub fn is_ancestor(&self, ancestor: usize, of: usize) -> bool {
        self.ancestors(of).contains(&ancestor)
    }

    /// Edges u -> v where v's only input is u and u's only consumer is v: the edges
    /// along which two stages can share one pod without holding up a sibling.
    pub fn chain_edges(&self) -> Vec<(usize, usize)> {
        self.order
            .iter()
            .flat_map(|&u| self.children[u].iter().map(move |&v| (u, v)))
            .filter(|&(u, v)| self.children[u].len() == 1 && self.parents[v].len() == 1)
            .collect()
    }

    /// Earliest start of each stage when stage i takes `duration(i)` and data from
    /// parent to child takes `edge(parent, child)`: the longest path from the roots.
    pub fn earliest_starts(
        &self,
        duration: impl Fn(usize) -> f64,
        edge: impl Fn(usize, usize) -> f64,
    ) -> Vec<f64> {
        let mut start = vec![0.0f64; self.len()];
        for &v in &self.order {
            start[v] = self.parents[v]
                .iter()
                .map(|&u| start[u] + duration(u) + edge(u, v))
                .fold(0.0, f64::max);
        }
        start
    }
}

/// Kahn's algorithm, lowest index first among ready stages so the order is stable.
/// On a cycle, returns the stages left over.
fn kahn(parents: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = parents.len();
    let mut pending: Vec<usize> = parents.iter().map(Vec::len).collect();
    let mut children = vec![Vec::new(); n];
    for (i, ps) in parents.iter().enumerate() {
        for &j in ps {
            children[j].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &c in &children[i] {
            pending[c] -= 1;
            if pending[c] == 0 {
                ready.insert(c);
            }
        }
    }
    if order.len() == n {
        Ok(order)
    } else {
        Err((0..n).filter(|i| !order.contains(i)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn dag(edges: &[(&str, &[&str])]) -> Dag {
        let pairs: Vec<(String, Vec<String>)> = edges
            .iter()
            .map(|(n, a)| (n.to_string(), a.iter().map(|s| s.to_string()).collect()))
            .collect();
        Dag::new(&pairs).expect("valid dag")
    }

    #[test]
    fn diamond_order_and_longest_path() {
        let d = dag(&[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])]);
        assert_eq!(d.order(), &[0, 1, 2, 3]);
        assert_eq!(d.roots(), vec![0]);
        // a 1 s, b 2 s, c 5 s: d starts after the slower branch, at 1 + 5 + 2 x 0.5.
        let dur = [1.0, 2.0, 5.0, 1.0];
        let starts = d.earliest_starts(|i| dur[i], |_, _| 0.5);
        assert_eq!(starts, vec![0.0, 1.5, 1.5, 7.0]);
        assert!(d.is_ancestor(0, 3));
        assert!(!d.is_ancestor(1, 2));
        // No chain edges in a diamond: a has two children, d two parents.
        assert!(d.chain_edges().is_empty());
    }

    #[test]
    fn chain_edges_of_a_chain() {
        let d = dag(&[("a", &[]), ("b", &["a"]), ("c", &["b"])]);
        assert_eq!(d.chain_edges(), vec![(0, 1), (1, 2)]);
    }

    #[test]
    fn refuses_cycles_and_unknown_parents() {
        let pairs = vec![
            ("a".to_string(), vec![]),
            ("b".to_string(), vec!["c".to_string()]),
            ("c".to_string(), vec!["b".to_string()]),
        ];
        assert_eq!(
            Dag::new(&pairs),
            Err(DagError::Cycle(vec!["b".into(), "c".into()]))
        );
        let pairs = vec![("a".to_string(), vec!["x".to_string()])];
        assert!(matches!(
            Dag::new(&pairs),
            Err(DagError::UnknownParent { .. })
        ));
        assert_eq!(Dag::new(&[]), Err(DagError::Empty));
    }
}
