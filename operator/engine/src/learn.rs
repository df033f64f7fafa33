//! Folds what a run measured into the FunctionProfiles' status, so the next plan uses
//! it: the same feedback loop as the operator's, for the local mode.

use std::collections::BTreeMap;

use vflow_api::{Distribution, FunctionProfile, FunctionProfileStatus};

use crate::graph::RunGraph;
use crate::record::{Attempt, RunRecord};

fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Combines an earlier summary of `old_n` observations with new samples. Percentiles
/// of a merge cannot be exact from summaries; a count-weighted mean is close when the
/// two windows behave alike and moves toward the new behaviour as it accumulates.
fn merge(old: Option<&Distribution>, old_n: u64, samples: &[f64]) -> Option<Distribution> {
    if samples.is_empty() {
        return old.cloned();
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let new = Distribution {
        p50: nearest_rank(&sorted, 0.5),
        p95: nearest_rank(&sorted, 0.95),
        max: sorted[sorted.len() - 1],
    };
    Some(match old {
        Some(old) if old_n > 0 => {
            let (a, b) = (old_n as f64, samples.len() as f64);
            let mix = |x: f64, y: f64| (x * a + y * b) / (a + b);
            Distribution {
                p50: mix(old.p50, new.p50),
                p95: mix(old.p95, new.p95),
                max: old.max.max(new.max),
            }
        }
        _ => new,
    })
}

/// Updates every profile the run used with the run's successful executions.
pub fn fold_run(
    graph: &RunGraph,
    record: &RunRecord,
    profiles: &mut BTreeMap<String, FunctionProfile>,
) {
    let mut by_function: BTreeMap<String, Vec<&Attempt>> = BTreeMap::new();
    for unit in &record.units {
        let Some(node) = graph.stages.iter().find(|s| s.name == unit.stage) else {
            continue;
        };
        by_function
            .entry(node.function.clone())
            .or_default()
            .extend(unit.attempts.iter().filter(|a| !a.reused));
    }
    for (function, attempts) in by_function {
        let Some(profile) = profiles.get_mut(&function) else {
            continue;
        };
        fold(profile, &attempts);
    }
}

pub fn fold(profile: &mut FunctionProfile, attempts: &[&Attempt]) {
    if attempts.is_empty() {
        return;
    }
    let status = profile
        .status
        .get_or_insert_with(FunctionProfileStatus::default);
    let ok: Vec<&&Attempt> = attempts.iter().filter(|a| a.error.is_none()).collect();
    let old_n = status.invocations.saturating_sub(status.failures);
    let exec: Vec<f64> = ok.iter().map(|a| a.function_seconds).collect();
    let cores: Vec<f64> = ok
        .iter()
        .filter(|a| a.function_seconds > 0.0)
        .map(|a| a.cpu_seconds / a.function_seconds)
        .collect();
    let memory: Vec<f64> = ok.iter().map(|a| a.peak_rss_bytes as f64).collect();
    let cold: Vec<f64> = attempts
        .iter()
        .filter_map(|a| a.cold_start_seconds)
        .collect();
    status.exec_seconds = merge(status.exec_seconds.as_ref(), old_n, &exec);
    status.cpu_cores = merge(status.cpu_cores.as_ref(), old_n, &cores);
    status.memory_bytes = merge(status.memory_bytes.as_ref(), old_n, &memory);
    status.cold_start_seconds = merge(
        status.cold_start_seconds.as_ref(),
        status.cold_starts,
        &cold,
    );
    let bytes_in: u64 = ok.iter().map(|a| a.bytes_in).sum();
    let bytes_out: u64 = ok.iter().map(|a| a.bytes_out).sum();
    if bytes_in > 0 {
        status.output_input_ratio = Some(bytes_out as f64 / bytes_in as f64);
    }
    status.invocations += attempts.len() as u64;
    status.failures += (attempts.len() - ok.len()) as u64;
    status.cold_starts += cold.len() as u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_weights_by_count_and_keeps_the_max() {
        let old = Distribution {
            p50: 1.0,
            p95: 2.0,
            max: 5.0,
        };
        let merged = merge(Some(&old), 3, &[3.0]);
        assert_eq!(
            merged,
            Some(Distribution {
                p50: 1.5,
                p95: 2.25,
                max: 5.0
            })
        );
        assert_eq!(merge(None, 0, &[]), None);
        let fresh = merge(None, 0, &[4.0, 1.0, 2.0, 3.0]);
        assert_eq!(
            fresh,
            Some(Distribution {
                p50: 2.0,
                p95: 4.0,
                max: 4.0
            })
        );
    }
}
