//! The simulator gives the same numbers for the same seed, and the scenarios measure
//! what they say (sanity bounds that a broken policy would cross).

use vflow_planner::sim::{self, Scale, Scenario};

#[test]
fn same_seed_same_report_different_seed_different_report() {
    let a = serde_json::to_string(&sim::run(Scenario::All, 7, Scale::Quick, 100)).expect("json");
    let b = serde_json::to_string(&sim::run(Scenario::All, 7, Scale::Quick, 100)).expect("json");
    assert_eq!(a, b);
    let c = serde_json::to_string(&sim::run(Scenario::All, 8, Scale::Quick, 100)).expect("json");
    assert_ne!(a, c);
    println!(
        "{}",
        sim::tables(&sim::run(Scenario::All, 7, Scale::Quick, 100))
    );
}

#[test]
fn chains_baselines_behave_as_their_definitions() {
    let r = sim::run(Scenario::Chains, 3, Scale::Quick, 0);
    let c = r.chains.expect("chains");
    for row in &c.rows {
        match row.policy.as_str() {
            // On demand: one cold start per stage, nothing warmed ahead.
            "None" => {
                assert!(
                    (row.cold_starts_per_run - row.length as f64).abs() < 1e-9,
                    "{row:?}"
                );
                assert_eq!(row.idle_before_use_per_run, 0.0);
            }
            // Warmed ahead: only the first stage waits for a start.
            _ => assert!((row.cold_starts_per_run - 1.0).abs() < 1e-9, "{row:?}"),
        }
    }
    let spec = |l: usize| {
        c.rows
            .iter()
            .find(|r| r.length == l && r.policy == "Speculative")
            .map(|r| r.idle_before_use_per_run)
    };
    // Speculative holds later stages longer as the chain grows.
    assert!(spec(4) > spec(2));
}
