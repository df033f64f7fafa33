//! Folds what a run measured into the FunctionProfiles' status, so the next plan uses
//! it: the same feedback loop as the operator's, for the local mode.

use std::collections::BTreeMap;

use vflow_api::{Distribution, FunctionProfile, FunctionProfileStatus};

use crate::graph::RunGraph;
use crate::record::{Attempt, RunRecord};

use vflow_contract::observations::nearest_rank;

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

/// What one instance reported at one scrape (`/observations` of `vflow-runtime serve`
/// and of its sidecar), and what it had reported at the scrape before.
pub struct InstanceScrape<'a> {
    pub previous: Option<&'a vflow_contract::observations::InstanceObservations>,
    pub current: &'a vflow_contract::observations::InstanceObservations,
    pub container: Option<&'a vflow_contract::observations::ContainerObservations>,
}

fn summary_as_distribution(s: &vflow_contract::observations::Summary) -> Distribution {
    Distribution {
        p50: s.p50,
        p95: s.p95,
        max: s.max,
    }
}

/// Merges a summary that stands for `n` new observations into a distribution of
/// `old_n`; the same count-weighted approximation as [`merge`].
fn merge_summary(
    old: Option<&Distribution>,
    old_n: u64,
    new: &Distribution,
    n: u64,
) -> Distribution {
    match old {
        Some(old) if old_n > 0 => {
            let (a, b) = (old_n as f64, n as f64);
            let mix = |x: f64, y: f64| (x * a + y * b) / (a + b);
            Distribution {
                p50: mix(old.p50, new.p50),
                p95: mix(old.p95, new.p95),
                max: old.max.max(new.max),
            }
        }
        _ => new.clone(),
    }
}

/// How fast an old memory peak is forgotten: it halves every 24 hours (the half-life
/// of the Kubernetes VPA's memory histogram), so one spike from a past input does not
/// hold a stage's memory up for ever, while a peak that recurs keeps coming back.
pub const MEMORY_PEAK_HALF_LIFE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Lets the memory peaks in `status` decay for `elapsed` (the time since they were last
/// written): each `max` moves halfway to its `p95` per [`MEMORY_PEAK_HALF_LIFE`], never
/// below it. Applied before folding new observations, whose own peak then counts in full.
pub fn decay_memory_peaks(status: &mut FunctionProfileStatus, elapsed: std::time::Duration) {
    let keep = 0.5f64.powf(elapsed.as_secs_f64() / MEMORY_PEAK_HALF_LIFE.as_secs_f64());
    for d in [
        status.memory_bytes.as_mut(),
        status.gpu_memory_bytes.as_mut(),
    ]
    .into_iter()
    .flatten()
    {
        if d.max > d.p95 {
            d.max = d.p95 + (d.max - d.p95) * keep;
        }
    }
}

/// Folds what instances observed since the previous scrape into a profile's status.
/// Counters are cumulative per instance, so only the difference since the previous
/// scrape is new (an instance that restarted starts again from zero). Distributions
/// come from each instance's recent window, weighted by its new invocations. CPU and
/// memory prefer the sidecar's container-level busy samples, which include everything
/// the function's process tree used.
pub fn fold_scrapes(profile: &mut FunctionProfile, scrapes: &[InstanceScrape<'_>]) -> bool {
    let status = profile
        .status
        .get_or_insert_with(FunctionProfileStatus::default);
    let mut changed = false;
    for scrape in scrapes {
        let cur = scrape.current;
        let prev = scrape
            .previous
            .filter(|p| p.invocations <= cur.invocations && p.instance == cur.instance);
        let new_invocations = cur.invocations - prev.map(|p| p.invocations).unwrap_or(0);
        let new_failures = cur
            .failures
            .saturating_sub(prev.map(|p| p.failures).unwrap_or(0));
        let new_ooms = cur
            .oom_kills
            .saturating_sub(prev.map(|p| p.oom_kills).unwrap_or(0));
        let is_new_instance = prev.is_none();
        if new_invocations == 0 && !is_new_instance {
            continue;
        }
        changed = true;
        let old_ok = status.invocations.saturating_sub(status.failures);
        let new_ok = new_invocations.saturating_sub(new_failures);
        if new_ok > 0 {
            if let Some(s) = &cur.exec_seconds {
                status.exec_seconds = Some(merge_summary(
                    status.exec_seconds.as_ref(),
                    old_ok,
                    &summary_as_distribution(s),
                    new_ok,
                ));
            }
            let cpu = scrape
                .container
                .and_then(|c| c.busy_cpu_cores.as_ref())
                .or(cur.cpu_cores.as_ref());
            if let Some(s) = cpu {
                status.cpu_cores = Some(merge_summary(
                    status.cpu_cores.as_ref(),
                    old_ok,
                    &summary_as_distribution(s),
                    new_ok,
                ));
            }
            let memory = scrape
                .container
                .and_then(|c| c.busy_memory_bytes.as_ref())
                .or(cur.memory_bytes.as_ref());
            if let Some(s) = memory {
                status.memory_bytes = Some(merge_summary(
                    status.memory_bytes.as_ref(),
                    old_ok,
                    &summary_as_distribution(s),
                    new_ok,
                ));
            }
            if let Some(container) = scrape.container {
                if let Some(s) = &container.gpu_memory_bytes {
                    status.gpu_memory_bytes = Some(merge_summary(
                        status.gpu_memory_bytes.as_ref(),
                        old_ok,
                        &summary_as_distribution(s),
                        new_ok,
                    ));
                }
                if let Some(s) = &container.gpu_utilization {
                    status.gpu_utilization = Some(merge_summary(
                        status.gpu_utilization.as_ref(),
                        old_ok,
                        &summary_as_distribution(s),
                        new_ok,
                    ));
                }
            }
        }
        if is_new_instance && let Some(cold) = cur.cold_start_seconds {
            let d = Distribution {
                p50: cold,
                p95: cold,
                max: cold,
            };
            status.cold_start_seconds = Some(merge_summary(
                status.cold_start_seconds.as_ref(),
                status.cold_starts,
                &d,
                1,
            ));
            status.cold_starts += 1;
        }
        let bytes_in = cur.bytes_in - prev.map(|p| p.bytes_in).unwrap_or(0).min(cur.bytes_in);
        let bytes_out = cur.bytes_out - prev.map(|p| p.bytes_out).unwrap_or(0).min(cur.bytes_out);
        if bytes_in > 0 {
            let ratio = bytes_out as f64 / bytes_in as f64;
            status.output_input_ratio = Some(match status.output_input_ratio {
                Some(old) if old_ok > 0 => {
                    (old * old_ok as f64 + ratio * new_ok as f64) / (old_ok + new_ok).max(1) as f64
                }
                _ => ratio,
            });
        }
        status.invocations += new_invocations;
        status.failures += new_failures;
        status.oom_kills += new_ooms;
    }
    changed
}

#[cfg(test)]
mod scrape_tests {
    use super::*;
    use vflow_contract::observations::{ContainerObservations, InstanceObservations, Summary};

    fn profile() -> FunctionProfile {
        FunctionProfile::new(
            "scale",
            serde_json::from_value(serde_json::json!({
                "image": "x", "command": ["f"], "resources": {"cpu": "1", "memory": "1Gi"}
            }))
            .unwrap_or_else(|e| panic!("spec: {e}")),
        )
    }

    fn seen(invocations: u64, failures: u64, exec_p50: f64) -> InstanceObservations {
        InstanceObservations {
            function: "scale".into(),
            instance: "scale-0".into(),
            invocations,
            failures,
            oom_kills: 0,
            cold_start_seconds: Some(0.5),
            exec_seconds: Some(Summary {
                count: invocations,
                p50: exec_p50,
                p95: exec_p50 * 2.0,
                max: exec_p50 * 3.0,
            }),
            cpu_cores: Some(Summary {
                count: invocations,
                p50: 0.9,
                p95: 1.0,
                max: 1.1,
            }),
            memory_bytes: Some(Summary {
                count: invocations,
                p50: 100.0,
                p95: 200.0,
                max: 300.0,
            }),
            bytes_in: 1000,
            bytes_out: 500,
        }
    }

    #[test]
    fn only_what_is_new_since_the_last_scrape_counts() {
        let mut p = profile();
        let first = seen(4, 0, 1.0);
        assert!(fold_scrapes(
            &mut p,
            &[InstanceScrape {
                previous: None,
                current: &first,
                container: None
            }]
        ));
        let s = p.status.clone().unwrap_or_default();
        assert_eq!((s.invocations, s.cold_starts), (4, 1));
        assert_eq!(
            s.exec_seconds,
            Some(Distribution {
                p50: 1.0,
                p95: 2.0,
                max: 3.0
            })
        );
        // The same counters again: nothing new.
        assert!(!fold_scrapes(
            &mut p,
            &[InstanceScrape {
                previous: Some(&first),
                current: &first,
                container: None
            }]
        ));
        // Four more, slower, one failed: weighted 4 old ok against 3 new ok.
        let second = seen(8, 1, 2.0);
        let container = ContainerObservations {
            busy_memory_bytes: Some(Summary {
                count: 10,
                p50: 1000.0,
                p95: 2000.0,
                max: 4000.0,
            }),
            ..Default::default()
        };
        fold_scrapes(
            &mut p,
            &[InstanceScrape {
                previous: Some(&first),
                current: &second,
                container: Some(&container),
            }],
        );
        let s = p.status.unwrap_or_default();
        assert_eq!((s.invocations, s.failures, s.cold_starts), (8, 1, 1));
        let exec = s.exec_seconds.unwrap_or(Distribution {
            p50: 0.0,
            p95: 0.0,
            max: 0.0,
        });
        assert!(
            (exec.p50 - (4.0 * 1.0 + 3.0 * 2.0) / 7.0).abs() < 1e-9,
            "{exec:?}"
        );
        assert_eq!(exec.max, 6.0);
        // Memory came from the sidecar's container-level samples.
        assert_eq!(s.memory_bytes.map(|m| m.max), Some(4000.0));
    }

    #[test]
    fn a_restarted_instance_starts_from_zero() {
        let mut p = profile();
        let before = seen(10, 0, 1.0);
        fold_scrapes(
            &mut p,
            &[InstanceScrape {
                previous: None,
                current: &before,
                container: None,
            }],
        );
        let restarted = seen(2, 0, 1.0);
        fold_scrapes(
            &mut p,
            &[InstanceScrape {
                previous: Some(&before),
                current: &restarted,
                container: None,
            }],
        );
        let s = p.status.unwrap_or_default();
        assert_eq!((s.invocations, s.cold_starts), (12, 2));
    }

    #[test]
    fn memory_peaks_decay_towards_p95_with_a_24_hour_half_life() {
        let mut status = FunctionProfileStatus {
            memory_bytes: Some(Distribution {
                p50: 100.0,
                p95: 200.0,
                max: 1000.0,
            }),
            gpu_memory_bytes: Some(Distribution {
                p50: 1.0,
                p95: 2.0,
                max: 2.0,
            }),
            ..Default::default()
        };
        decay_memory_peaks(&mut status, MEMORY_PEAK_HALF_LIFE);
        let mem = status.memory_bytes.clone().expect("memory");
        assert!(
            (mem.max - 600.0).abs() < 1e-9,
            "halfway to p95: {}",
            mem.max
        );
        assert_eq!((mem.p50, mem.p95), (100.0, 200.0), "only the peak decays");
        decay_memory_peaks(&mut status, MEMORY_PEAK_HALF_LIFE * 30);
        let mem = status.memory_bytes.clone().expect("memory");
        assert!(
            mem.max >= 200.0 && mem.max < 201.0,
            "never below p95: {}",
            mem.max
        );
        assert_eq!(status.gpu_memory_bytes.map(|d| d.max), Some(2.0));
        let mut none = FunctionProfileStatus::default();
        decay_memory_peaks(&mut none, MEMORY_PEAK_HALF_LIFE);
        assert_eq!(none.memory_bytes, None);
    }
}
