//! Folds what a run measured into the FunctionProfiles' status, so the next plan uses
//! it: the same feedback loop as the operator's, for the local mode.

use std::collections::BTreeMap;

use vflow_api::{Distribution, FunctionProfile, FunctionProfileStatus};

use crate::graph::RunGraph;
use crate::record::{Attempt, RunRecord, UnitStatus};
use vflow_planner::branch::BranchObservation;

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

/// What a run says about its conditional stages: of the units whose condition was
/// evaluated, how many ran. A unit whose condition reads a stage that was skipped is
/// not counted: the planner's probability is that of the condition holding when it can
/// be evaluated.
pub fn branch_outcomes(graph: &RunGraph, record: &RunRecord) -> Vec<BranchObservation> {
    let mut out = Vec::new();
    for node in &graph.stages {
        let Some((_, source, _)) = &node.when else {
            continue;
        };
        let source = &graph.stages[*source].name;
        let (mut taken, mut seen) = (0, 0);
        for unit in record.units.iter().filter(|u| u.stage == node.name) {
            let source_unit = record
                .unit(source, unit.segment)
                .or_else(|| record.unit(source, None));
            let evaluated = match unit.status {
                UnitStatus::Skipped => source_unit.is_some_and(|s| s.status != UnitStatus::Skipped),
                UnitStatus::Done | UnitStatus::Failed | UnitStatus::Running => true,
                UnitStatus::Pending => false,
            };
            if evaluated {
                seen += 1;
                taken += u64::from(unit.status != UnitStatus::Skipped);
            }
        }
        if seen > 0 {
            out.push(BranchObservation {
                stage: node.name.clone(),
                taken,
                seen,
            });
        }
    }
    out
}

/// Adds `more` to `into`, stage by stage.
pub fn add_branch_outcomes(into: &mut Vec<BranchObservation>, more: &[BranchObservation]) {
    for m in more {
        match into.iter_mut().find(|o| o.stage == m.stage) {
            Some(o) => {
                o.taken += m.taken;
                o.seen += m.seen;
            }
            None => into.push(m.clone()),
        }
    }
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

/// The invocations' usage slices into the profile's mean usage profile (slices of
/// equal shares of each run, so runs of different lengths line up), and the
/// planner's reading of it.
fn fold_usage(status: &mut FunctionProfileStatus, requested: (f64, f64), ok: &[&&Attempt]) {
    use vflow_contract::invocation::USAGE_SLICES;
    let full: Vec<&&&Attempt> = ok
        .iter()
        .filter(|a| a.usage.len() == USAGE_SLICES)
        .collect();
    if full.is_empty() {
        return;
    }
    let mut profile = status.usage_profile.take().unwrap_or_default();
    if profile.cpu_cores.len() != USAGE_SLICES || profile.memory_bytes.len() != USAGE_SLICES {
        profile = vflow_api::UsageProfile {
            cpu_cores: vec![0.0; USAGE_SLICES],
            memory_bytes: vec![0.0; USAGE_SLICES],
            ..Default::default()
        };
    }
    for a in full {
        // A running mean over the last 100 at most: recent runs count more.
        let n = (profile.invocations.min(99) + 1) as f64;
        for (i, slice) in a.usage.iter().enumerate() {
            profile.cpu_cores[i] += (slice.cpu_cores - profile.cpu_cores[i]) / n;
            profile.memory_bytes[i] += (slice.rss_bytes as f64 - profile.memory_bytes[i]) / n;
        }
        profile.seconds += (a.function_seconds - profile.seconds) / n;
        profile.invocations += 1;
    }
    status.split =
        Some(vflow_planner::split::read_usage(&profile, requested.0, requested.1).describe());
    status.usage_profile = Some(profile);
}

/// Execution times by the packing degree each run saw (E(P) measured).
fn fold_degrees(status: &mut FunctionProfileStatus, ok: &[&&Attempt]) {
    for a in ok.iter().filter(|a| a.concurrency >= 1.0) {
        let degree = a.concurrency.round().max(1.0) as u32;
        let at = match status
            .exec_by_degree
            .iter()
            .position(|d| d.degree == degree)
        {
            Some(at) => at,
            None => {
                status.exec_by_degree.push(vflow_api::DegreeTiming {
                    degree,
                    ..Default::default()
                });
                status.exec_by_degree.sort_by_key(|d| d.degree);
                status
                    .exec_by_degree
                    .iter()
                    .position(|d| d.degree == degree)
                    .unwrap_or(0)
            }
        };
        let d = &mut status.exec_by_degree[at];
        // A running mean over the last 100 at most.
        let n = (d.invocations.min(99) + 1) as f64;
        d.mean_seconds += (a.function_seconds - d.mean_seconds) / n;
        d.invocations += 1;
    }
}

pub fn fold(profile: &mut FunctionProfile, attempts: &[&Attempt]) {
    if attempts.is_empty() {
        return;
    }
    let resources = &profile.spec.resources;
    let requested = (
        resources.cpu.value().unwrap_or(0.0),
        resources.memory.value().unwrap_or(0.0),
    );
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
    // What an invocation held on its scratch disk: its inputs and its outputs.
    let scratch: Vec<f64> = ok
        .iter()
        .map(|a| (a.bytes_in + a.bytes_out) as f64)
        .collect();
    let cold: Vec<f64> = attempts
        .iter()
        .filter_map(|a| a.cold_start_seconds)
        .collect();
    status.exec_seconds = merge(status.exec_seconds.as_ref(), old_n, &exec);
    status.cpu_cores = merge(status.cpu_cores.as_ref(), old_n, &cores);
    status.memory_bytes = merge(status.memory_bytes.as_ref(), old_n, &memory);
    status.scratch_bytes = merge(status.scratch_bytes.as_ref(), old_n, &scratch);
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
    fold_usage(status, requested, &ok);
    fold_degrees(status, &ok);
    status.invocations += attempts.len() as u64;
    status.failures += (attempts.len() - ok.len()) as u64;
    status.oom_kills += attempts.iter().filter(|a| a.oom_killed).count() as u64;
    count_invocations(status, attempts.iter().map(|a| a.submitted_at));
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

/// Adds invocations submitted at `times` (unix seconds) to the status's per-bucket
/// counts, the rate that durable instances are decided from, and drops the buckets
/// older than the history counted back from the newest.
pub fn count_invocations(status: &mut FunctionProfileStatus, times: impl IntoIterator<Item = f64>) {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use vflow_api::{
        INVOCATION_BUCKET_SECONDS as WIDTH, INVOCATION_HISTORY_SECONDS, InvocationBucket,
    };
    let mut buckets: BTreeMap<i64, u64> = status
        .recent_invocations
        .iter()
        .map(|b| (b.start.0.as_second(), b.invocations))
        .collect();
    for t in times.into_iter().filter(|t| t.is_finite() && *t > 0.0) {
        *buckets
            .entry((t as i64).div_euclid(WIDTH) * WIDTH)
            .or_default() += 1;
    }
    if let Some(&newest) = buckets.keys().next_back() {
        buckets.retain(|start, _| *start > newest - INVOCATION_HISTORY_SECONDS);
    }
    status.recent_invocations = buckets
        .into_iter()
        .filter_map(|(start, invocations)| {
            Some(InvocationBucket {
                start: Time(k8s_openapi::jiff::Timestamp::from_second(start).ok()?),
                invocations,
            })
        })
        .collect();
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

/// Marks a status as written at `now`, after new observations were folded in: the
/// memory peaks decay for the time since the last write (before the new peaks count in
/// full, they were already folded at full height), and the observation window, which
/// the invocation rate is read from, ends now (and starts at the first write).
pub fn stamp(status: &mut FunctionProfileStatus, now: k8s_openapi::jiff::Timestamp) {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    if let Some(end) = status.window_end.as_ref().map(|t| t.0)
        && let Ok(elapsed) = std::time::Duration::try_from(now.duration_since(end))
    {
        decay_memory_peaks(status, elapsed);
    }
    status.window_start.get_or_insert(Time(now));
    status.window_end = Some(Time(now));
}

/// Folds what the instances' containers observed since the previous scrape into a
/// profile's status: what no invocation record can see. The counts, execution times,
/// cold starts and the runtime's per-invocation CPU and memory come from the runs'
/// records ([`fold`]), which lose nothing when a pod goes before it is scraped; counting
/// them here as well would count every invocation twice. What is folded here:
/// the sidecar's container-level busy CPU and memory (everything the function's
/// process tree used, page cache included) and GPU memory and utilisation, weighted by
/// the instance's invocations since the previous scrape. (A function process killed
/// for memory is in its invocation's record; a container killed whole is read from the
/// pod, by the observer.) Counters are cumulative per instance, so only the difference
/// counts (an instance that restarted starts again from zero).
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
        let new_ok = new_invocations.saturating_sub(new_failures);
        let Some(container) = scrape.container.filter(|_| new_ok > 0) else {
            continue;
        };
        // The weight of what the profile holds: the successful invocations so far.
        let old_ok = status.invocations.saturating_sub(status.failures);
        let fields = [
            (&container.busy_cpu_cores, &mut status.cpu_cores),
            (&container.busy_memory_bytes, &mut status.memory_bytes),
            (&container.gpu_memory_bytes, &mut status.gpu_memory_bytes),
            (&container.gpu_utilization, &mut status.gpu_utilization),
        ];
        for (seen, into) in fields {
            if let Some(seen) = seen {
                *into = Some(merge_summary(
                    into.as_ref(),
                    old_ok,
                    &summary_as_distribution(seen),
                    new_ok,
                ));
                changed = true;
            }
        }
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

    fn busy(memory_max: f64) -> ContainerObservations {
        ContainerObservations {
            busy_memory_bytes: Some(Summary {
                count: 10,
                p50: memory_max / 4.0,
                p95: memory_max / 2.0,
                max: memory_max,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn scrapes_add_the_container_view_and_never_count_invocations() {
        let mut p = profile();
        let first = seen(4, 0, 1.0);
        let container = busy(4000.0);
        assert!(fold_scrapes(
            &mut p,
            &[InstanceScrape {
                previous: None,
                current: &first,
                container: Some(&container),
            }]
        ));
        let s = p.status.clone().unwrap_or_default();
        assert_eq!(
            (s.invocations, s.failures, s.cold_starts),
            (0, 0, 0),
            "the records count invocations, not the scrapes"
        );
        assert_eq!(
            s.exec_seconds, None,
            "execution times come from the records"
        );
        assert_eq!(s.memory_bytes.map(|m| m.max), Some(4000.0));
        // The same counters again (or a scrape that repeats an earlier one): nothing new.
        assert!(!fold_scrapes(
            &mut p,
            &[InstanceScrape {
                previous: Some(&first),
                current: &first,
                container: Some(&busy(9000.0)),
            }]
        ));
        assert_eq!(
            p.status
                .clone()
                .unwrap_or_default()
                .memory_bytes
                .map(|m| m.max),
            Some(4000.0)
        );
        // Without a sidecar there is nothing the records lack.
        assert!(!fold_scrapes(
            &mut p,
            &[InstanceScrape {
                previous: Some(&first),
                current: &seen(8, 0, 1.0),
                container: None,
            }]
        ));
    }

    #[test]
    fn the_container_view_is_weighted_by_new_invocations_against_the_records() {
        let mut p = profile();
        // The records have folded 6 successful invocations with 1 kB of memory at p95.
        let status = p.status.get_or_insert_with(Default::default);
        status.invocations = 6;
        status.memory_bytes = Some(Distribution {
            p50: 500.0,
            p95: 1000.0,
            max: 1000.0,
        });
        let before = seen(1, 0, 1.0);
        let now = seen(3, 0, 1.0);
        fold_scrapes(
            &mut p,
            &[InstanceScrape {
                previous: Some(&before),
                current: &now,
                container: Some(&busy(4000.0)),
            }],
        );
        let m = p.status.unwrap_or_default().memory_bytes.expect("memory");
        assert!(
            (m.p95 - (6.0 * 1000.0 + 2.0 * 2000.0) / 8.0).abs() < 1e-9,
            "{m:?}"
        );
        assert_eq!(m.max, 4000.0);
    }

    #[test]
    fn a_restarted_instance_starts_from_zero() {
        let mut p = profile();
        p.status.get_or_insert_with(Default::default).invocations = 10;
        let before = seen(10, 0, 1.0);
        let restarted = seen(2, 0, 1.0);
        fold_scrapes(
            &mut p,
            &[InstanceScrape {
                previous: Some(&before),
                current: &restarted,
                container: Some(&busy(8000.0)),
            }],
        );
        // Its 2 invocations since the restart weigh, not 2 - 10.
        let m = p.status.unwrap_or_default().memory_bytes.expect("memory");
        assert_eq!(m.p95, 4000.0, "no earlier memory: the new samples alone");
    }

    #[test]
    fn the_oom_kills_of_function_processes_are_counted_from_the_records() {
        let mut p = profile();
        let mut scraped = seen(3, 1, 1.0);
        scraped.oom_kills = 1;
        fold_scrapes(
            &mut p,
            &[InstanceScrape {
                previous: None,
                current: &scraped,
                container: None,
            }],
        );
        assert_eq!(p.status.clone().unwrap_or_default().oom_kills, 0);
        let killed = Attempt {
            error: Some("killed by signal 9 (SIGKILL)".into()),
            oom_killed: true,
            ..Default::default()
        };
        fold(&mut p, &[&killed, &Attempt::default()]);
        let s = p.status.unwrap_or_default();
        assert_eq!((s.invocations, s.failures, s.oom_kills), (2, 1, 1));
    }

    #[test]
    fn usage_slices_fold_into_a_mean_usage_profile_and_its_split_reading() {
        use vflow_contract::invocation::UsageSlice;
        let mut p = profile();
        let run = |idle: f64| Attempt {
            function_seconds: 10.0,
            // 30% waiting (a download, a model load), then the requested core busy.
            usage: (0..10)
                .map(|i| UsageSlice {
                    cpu_cores: if i < 3 { idle } else { 0.95 },
                    rss_bytes: 100 << 20,
                })
                .collect(),
            ..Default::default()
        };
        // A failed attempt and one without slices (an old runtime) do not count.
        let failed = Attempt {
            error: Some("boom".into()),
            ..run(0.0)
        };
        fold(
            &mut p,
            &[&run(0.02), &run(0.04), &failed, &Attempt::default()],
        );
        let s = p.status.unwrap_or_default();
        let u = s.usage_profile.expect("usage profile");
        assert_eq!(u.invocations, 2);
        assert!((u.cpu_cores[0] - 0.03).abs() < 1e-9, "{u:?}");
        assert!((u.cpu_cores[9] - 0.95).abs() < 1e-9);
        assert!((u.seconds - 10.0).abs() < 1e-9);
        let split = s.split.expect("split reading");
        assert!(split.starts_with("split candidate: phase 0-30%"), "{split}");
    }

    #[test]
    fn execution_times_are_kept_by_the_packing_degree_each_run_saw() {
        let mut p = profile();
        let run = |concurrency: f64, seconds: f64| Attempt {
            concurrency,
            function_seconds: seconds,
            ..Default::default()
        };
        fold(
            &mut p,
            &[
                &run(1.0, 10.0),
                &run(1.2, 12.0),
                &run(3.8, 30.0),
                &run(4.1, 34.0),
                &run(0.0, 99.0),
            ],
        );
        let by: Vec<(u32, u64, f64)> = p
            .status
            .unwrap_or_default()
            .exec_by_degree
            .iter()
            .map(|d| (d.degree, d.invocations, d.mean_seconds))
            .collect();
        assert_eq!(by, [(1, 2, 11.0), (4, 2, 32.0)], "unmeasured runs left out");
    }

    #[test]
    fn the_scratch_an_invocation_needed_is_its_bytes_in_plus_out() {
        let mut p = profile();
        let run = |bytes_in: u64, bytes_out: u64| Attempt {
            bytes_in,
            bytes_out,
            ..Default::default()
        };
        let failed = Attempt {
            error: Some("boom".into()),
            ..run(1 << 40, 0)
        };
        fold(&mut p, &[&run(100, 50), &run(300, 100), &failed]);
        let d = p.status.unwrap_or_default().scratch_bytes.expect("scratch");
        assert_eq!(d.max, 400.0, "a failed attempt does not count: {d:?}");
    }

    #[test]
    fn invocations_are_counted_per_bucket_and_old_buckets_go() {
        let mut status = FunctionProfileStatus::default();
        let t0 = 1_800_000_000.0;
        count_invocations(&mut status, [t0 + 1.0, t0 + 9.9, t0 + 10.0, 0.0, f64::NAN]);
        let seen: Vec<(i64, u64)> = status
            .recent_invocations
            .iter()
            .map(|b| (b.start.0.as_second() - t0 as i64, b.invocations))
            .collect();
        assert_eq!(
            seen,
            [(0, 2), (10, 1)],
            "times without a clock are not counted"
        );
        // 15 minutes and more later: the old buckets are history.
        count_invocations(&mut status, [t0 + 905.0]);
        let seen: Vec<i64> = status
            .recent_invocations
            .iter()
            .map(|b| b.start.0.as_second() - t0 as i64)
            .collect();
        assert_eq!(seen, [10, 900]);
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
