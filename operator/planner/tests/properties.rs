//! Property tests for the DAG, path and schedule functions.

use proptest::prelude::*;
use vflow_planner::{
    branch::{BranchModel, Gate},
    dag::Dag,
    path::{greedy, max_product, outcome_probability, run_probabilities},
    prewarm::{
        Margin, PathStage, Risk, StageProgress, expected_arrivals, jit_schedule, progress_schedule,
        reschedule, speculative_schedule,
    },
};

/// A random DAG: stage i may run after any earlier stage.
fn dag_strategy() -> impl Strategy<Value = Dag> {
    (1usize..12).prop_flat_map(|n| {
        proptest::collection::vec(proptest::collection::vec(any::<bool>(), n), n).prop_map(
            move |bits| {
                let stages: Vec<(String, Vec<String>)> = (0..n)
                    .map(|i| {
                        let after = (0..i)
                            .filter(|&j| bits[i][j])
                            .map(|j| format!("s{j}"))
                            .collect();
                        (format!("s{i}"), after)
                    })
                    .collect();
                Dag::new(&stages).expect("edges go forward: a DAG")
            },
        )
    })
}

/// Gates on some non-root stages; each reads one of its ancestors; pairs of siblings
/// with the same reader may form an exclusive group.
fn model_strategy() -> impl Strategy<Value = (Dag, BranchModel)> {
    dag_strategy().prop_flat_map(|dag| {
        let n = dag.len();
        (
            Just(dag),
            proptest::collection::vec(
                (any::<bool>(), 0.0f64..=1.0, any::<prop::sample::Index>()),
                n,
            ),
            any::<bool>(),
        )
            .prop_map(|(dag, g, group)| {
                let gates: Vec<Option<Gate>> = (0..dag.len())
                    .map(|i| {
                        let anc: Vec<usize> = dag.ancestors(i).into_iter().collect();
                        (g[i].0 && !anc.is_empty()).then(|| Gate {
                            prior: g[i].1,
                            probability: g[i].1,
                            observations: 0,
                            taken: 0,
                            reads: Some(anc[g[i].2.index(anc.len())]),
                        })
                    })
                    .collect();
                // One exclusive group of two gates that read the same stage, if any.
                let mut groups = Vec::new();
                if group {
                    'outer: for a in 0..dag.len() {
                        for b in a + 1..dag.len() {
                            if let (Some(x), Some(y)) = (&gates[a], &gates[b])
                                && x.reads == y.reads
                            {
                                groups.push(vec![a, b]);
                                break 'outer;
                            }
                        }
                    }
                }
                let model = BranchModel::new(&dag, gates, &groups);
                (dag, model)
            })
    })
}

proptest! {
    #[test]
    fn topological_order_puts_parents_first(dag in dag_strategy()) {
        for v in 0..dag.len() {
            for &u in dag.parents(v) {
                prop_assert!(dag.rank(u) < dag.rank(v));
                prop_assert!(dag.is_ancestor(u, v));
            }
        }
        let mut sorted = dag.order().to_vec();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, (0..dag.len()).collect::<Vec<_>>());
    }

    #[test]
    fn earliest_starts_respect_every_edge(dag in dag_strategy(), d in proptest::collection::vec(0.0f64..10.0, 12)) {
        let starts = dag.earliest_starts(|i| d[i], |_, _| 0.1);
        for v in 0..dag.len() {
            for &u in dag.parents(v) {
                prop_assert!(starts[v] + 1e-9 >= starts[u] + d[u] + 0.1);
            }
        }
    }

    #[test]
    fn paths_are_consistent_outcomes((dag, model) in model_strategy()) {
        let g = greedy(&dag, &model);
        let m = max_product(&dag, &model);
        for p in [&g, &m] {
            // In topological order, and exactly the stages marked as running.
            prop_assert!(p.stages.windows(2).all(|w| dag.rank(w[0]) < dag.rank(w[1])));
            prop_assert_eq!(p.stages.len(), p.runs.iter().filter(|r| **r).count());
            // Every unconditional stage runs; a stage runs only if what it reads ran.
            for i in 0..dag.len() {
                match model.gate(i) {
                    None => prop_assert!(p.runs[i]),
                    Some(gate) => if let Some(r) = gate.reads {
                        prop_assert!(!p.runs[i] || p.runs[r]);
                    },
                }
            }
            prop_assert!((outcome_probability(&model, &p.runs) - p.probability).abs() < 1e-9);
        }
        // Max-product is never less likely than greedy.
        prop_assert!(m.probability + 1e-12 >= g.probability);
        let marginal = run_probabilities(&dag, &model);
        prop_assert!(marginal.iter().all(|p| (0.0..=1.0 + 1e-12).contains(p)));
    }
}

fn path_strategy() -> impl Strategy<Value = Vec<PathStage>> {
    proptest::collection::vec(
        (
            0.0f64..20.0,
            0.0f64..2.0,
            0.0f64..1.0,
            0.0f64..20.0,
            any::<bool>(),
            any::<prop::sample::Index>(),
        ),
        1..10,
    )
    .prop_map(|v| {
        v.iter()
            .enumerate()
            .map(|(k, &(e, sd, o, c, warm, parent))| PathStage {
                stage: format!("s{k}"),
                after: if k == 0 {
                    vec![]
                } else {
                    vec![parent.index(k)]
                },
                exec_seconds: e,
                exec_std_seconds: sd,
                overhead_seconds: o,
                cold_start_seconds: c,
                cold_start_std_seconds: 0.0,
                replicas: 1,
                warm: warm && k > 0,
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn jit_is_never_late_nor_before_t0(path in path_strategy(), t0 in 0.0f64..1000.0, base in 0.0f64..2.0, z in 0.0f64..2.0) {
        let margin = Margin { base_seconds: base, z };
        let arrivals = expected_arrivals(&path, t0);
        let schedule = jit_schedule(&path, t0, margin);
        for a in &schedule {
            let k = path.iter().position(|s| s.stage == a.stage).expect("stage on the path");
            prop_assert!(a.at_seconds >= t0);
            // Never later than expected arrival minus cold start (unless that is before t0).
            prop_assert!(a.at_seconds <= (arrivals[k].0 - path[k].cold_start_seconds).max(t0) + 1e-9);
            prop_assert!(!path[k].warm);
        }
        // Speculative is never later than JIT.
        let spec = speculative_schedule(&path, t0);
        for (j, s) in schedule.iter().zip(&spec) {
            prop_assert!(s.at_seconds <= j.at_seconds);
        }
    }

    #[test]
    fn arrivals_are_monotone_along_the_path(path in path_strategy(), t0 in 0.0f64..1000.0) {
        let a = expected_arrivals(&path, t0);
        for (k, s) in path.iter().enumerate() {
            for &j in &s.after {
                prop_assert!(a[k].0 >= a[j].0);
                prop_assert!(a[k].1 + 1e-12 >= a[j].1);
            }
        }
    }

    #[test]
    fn with_equal_cold_starts_the_schedule_is_monotone(
        mut path in path_strategy(), t0 in 0.0f64..100.0, cold in 0.0f64..10.0,
    ) {
        for s in &mut path {
            s.cold_start_seconds = cold;
        }
        let a = expected_arrivals(&path, t0);
        let schedule = jit_schedule(&path, t0, Margin::fixed(0.5));
        let at = |name: &str| schedule.iter().find(|x| x.stage == name).map(|x| x.at_seconds);
        for s in &path {
            for &j in &s.after {
                if let (Some(parent), Some(child)) = (at(&path[j].stage), at(&s.stage)) {
                    prop_assert!(child + 1e-9 >= parent, "{parent} then {child}; arrivals {a:?}");
                }
            }
        }
    }

    #[test]
    fn shifting_t0_shifts_the_schedule(path in path_strategy(), t0 in 0.0f64..100.0, dt in 0.0f64..100.0) {
        let a = jit_schedule(&path, t0, Margin::default());
        let b = jit_schedule(&path, t0 + dt, Margin::default());
        for (x, y) in a.iter().zip(&b) {
            prop_assert!((y.at_seconds - x.at_seconds - dt).abs() < 1e-6);
        }
    }

    #[test]
    fn rescheduling_never_goes_back_in_time(path in path_strategy(), now in 0.0f64..1000.0, wait in 0.0f64..20.0, k in any::<prop::sample::Index>()) {
        let reached = k.index(path.len());
        for a in reschedule(&path, reached, now, now + wait, Margin::default()) {
            prop_assert!(a.at_seconds >= now);
            prop_assert!(a.stage != path[reached].stage);
        }
    }

    #[test]
    fn progress_schedule_is_never_in_the_past(path in path_strategy(), now in 0.0f64..1000.0, k in any::<prop::sample::Index>(), ran in 0.0f64..5.0) {
        // The run is at stage `reached`: it started `ran` seconds ago, everything
        // before it is done.
        let reached = k.index(path.len());
        let mut known = vec![StageProgress::default(); path.len()];
        for (j, p) in known.iter_mut().enumerate().take(reached) {
            p.finished_at = Some(now - ran - 0.1 * (reached - j) as f64);
        }
        known[reached].input_at = Some(now - ran);
        known[reached].started_at = Some(now - ran);
        let risk = Risk { samples: 32, ..Risk::default() };
        let due = progress_schedule(&path, &known, now, risk);
        for a in &due {
            let j = path.iter().position(|s| s.stage == a.stage).expect("stage on the path");
            prop_assert!(a.at_seconds >= now);
            prop_assert!(j > reached);
            prop_assert!(!path[j].warm);
            prop_assert_eq!(a.at_seconds, due[0].at_seconds);
        }
    }
}
