//! Split and fusion candidates from measured resource use (the proposal; SCAD).
//!
//! A stage whose phases use resources very differently (decode saturating the CPU
//! while encode waits on memory, or a GPU phase beside a long CPU phase) holds its
//! whole request for its whole run: splitting it lets each phase be sized alone.
//! Chained stages that each use little of what they request and pass large data are
//! the opposite case: fusing them saves the transfer. The planner only reports these;
//! applying a split needs a function that exposes its phases.

use serde::{Deserialize, Serialize};

/// Measured use of one phase of a stage (e.g. decode, transform, encode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseUse {
    pub name: String,
    pub seconds: f64,
    pub cpu_cores: f64,
    pub memory_bytes: f64,
    #[serde(default)]
    pub gpu_utilization: f64,
}

/// What a stage requests and what it uses (p95), with its phases when measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageUse {
    pub stage: String,
    pub requested_cpu: f64,
    pub requested_memory_bytes: f64,
    pub used_cpu: f64,
    pub used_memory_bytes: f64,
    /// Bytes passed to the next stage per invocation.
    pub output_bytes: f64,
    #[serde(default)]
    pub phases: Vec<PhaseUse>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SplitConfig {
    /// A phase below this share of the request is "idle" on that resource.
    pub low_share: f64,
    /// A phase above this share saturates it.
    pub high_share: f64,
    /// Phases shorter than this share of the stage's time are ignored.
    pub min_phase_share: f64,
    /// Bytes passed per invocation above which a transfer is "large".
    pub large_bytes: f64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            low_share: 0.3,
            high_share: 0.8,
            min_phase_share: 0.2,
            large_bytes: 50e6,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Suggestion {
    Split {
        stage: String,
        reason: String,
    },
    Fuse {
        from: String,
        to: String,
        reason: String,
    },
}

/// Split candidates among `stages`, and fusion candidates among consecutive pairs of
/// `chain` (indices into `stages`, each the only input of the next).
pub fn candidates(
    stages: &[StageUse],
    chain_edges: &[(usize, usize)],
    cfg: &SplitConfig,
) -> Vec<Suggestion> {
    let mut out = Vec::new();
    for s in stages {
        let total: f64 = s.phases.iter().map(|p| p.seconds).sum();
        if total <= 0.0 || s.requested_cpu <= 0.0 {
            continue;
        }
        let long: Vec<&PhaseUse> = s
            .phases
            .iter()
            .filter(|p| p.seconds / total >= cfg.min_phase_share)
            .collect();
        let cpu_share = |p: &PhaseUse| p.cpu_cores / s.requested_cpu;
        let idle_cpu = long.iter().find(|p| cpu_share(p) < cfg.low_share);
        let busy = long.iter().find(|p| {
            cpu_share(p) > cfg.high_share
                || p.gpu_utilization > cfg.high_share
                || p.memory_bytes / s.requested_memory_bytes.max(1.0) > cfg.high_share
        });
        if let (Some(idle), Some(busy)) = (idle_cpu, busy)
            && idle.name != busy.name
        {
            out.push(Suggestion::Split {
                stage: s.stage.clone(),
                reason: format!(
                    "phase {} uses {:.0}% of the {:.2} requested cores for {:.0}% of the time while phase {} uses {:.0}% of the cores, {:.0}% of the memory and {:.0}% of the GPU",
                    idle.name,
                    cpu_share(idle) * 100.0,
                    s.requested_cpu,
                    idle.seconds / total * 100.0,
                    busy.name,
                    cpu_share(busy) * 100.0,
                    busy.memory_bytes / s.requested_memory_bytes.max(1.0) * 100.0,
                    busy.gpu_utilization * 100.0
                ),
            });
        }
    }
    let underused = |s: &StageUse| {
        s.requested_cpu > 0.0
            && s.used_cpu / s.requested_cpu < 0.5
            && s.used_memory_bytes / s.requested_memory_bytes.max(1.0) < 0.5
    };
    for &(u, v) in chain_edges {
        let (Some(a), Some(b)) = (stages.get(u), stages.get(v)) else {
            continue;
        };
        if underused(a) && underused(b) && a.output_bytes >= cfg.large_bytes {
            out.push(Suggestion::Fuse {
                from: a.stage.clone(),
                to: b.stage.clone(),
                reason: format!(
                    "both use under half of what they request ({:.0}% and {:.0}% of their CPU) and {} passes {:.0} MB to {} per invocation",
                    a.used_cpu / a.requested_cpu * 100.0,
                    b.used_cpu / b.requested_cpu * 100.0,
                    a.stage,
                    a.output_bytes / 1e6,
                    b.stage
                ),
            });
        }
    }
    out
}

/// A change between two neighbouring slices of a usage profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Boundary {
    /// Share of the run where it falls (0 to 1).
    pub at: f64,
    /// CPU after / before (above 1: more).
    pub cpu_factor: f64,
    pub memory_factor: f64,
}

/// A usage profile read as phases.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageReading {
    pub phases: Vec<PhaseUse>,
    pub boundaries: Vec<Boundary>,
    pub requested_cpu: f64,
    pub split: Option<Suggestion>,
}

/// CPU below this is "idle" whatever the factor (noise at zero is not a phase).
const CPU_FLOOR: f64 = 0.05;
/// Use that changes by this factor or more between slices starts a new phase.
pub const PHASE_FACTOR: f64 = 3.0;

fn factor(before: f64, after: f64, floor: f64) -> f64 {
    after.max(floor) / before.max(floor)
}

/// Phases of a usage profile (`cpu_cores` and `memory_bytes` per equal slice of a run
/// of `seconds`): a new phase starts where CPU or memory changes by [`PHASE_FACTOR`]
/// against the phase so far. Then the split rule of [`candidates`] against the request.
pub fn read_usage(
    profile: &vflow_api::UsageProfile,
    requested_cpu: f64,
    requested_memory_bytes: f64,
) -> UsageReading {
    let n = profile.cpu_cores.len().min(profile.memory_bytes.len());
    let mut phases: Vec<(usize, usize)> = Vec::new();
    let mut boundaries = Vec::new();
    let mut start = 0usize;
    for i in 1..n {
        let mean = |v: &[f64]| v[start..i].iter().sum::<f64>() / (i - start) as f64;
        let cpu = factor(mean(&profile.cpu_cores), profile.cpu_cores[i], CPU_FLOOR);
        let mem = factor(mean(&profile.memory_bytes), profile.memory_bytes[i], 1e6);
        let changes = |f: f64| f >= PHASE_FACTOR || f <= 1.0 / PHASE_FACTOR;
        if changes(cpu) || changes(mem) {
            phases.push((start, i));
            boundaries.push(Boundary {
                at: i as f64 / n as f64,
                cpu_factor: cpu,
                memory_factor: mem,
            });
            start = i;
        }
    }
    if n > 0 {
        phases.push((start, n));
    }
    let slice_seconds = if n > 0 {
        profile.seconds / n as f64
    } else {
        0.0
    };
    let phases: Vec<PhaseUse> = phases
        .into_iter()
        .map(|(a, b)| {
            let k = (b - a) as f64;
            PhaseUse {
                name: format!(
                    "{:.0}-{:.0}%",
                    a as f64 / n as f64 * 100.0,
                    b as f64 / n as f64 * 100.0
                ),
                seconds: k * slice_seconds,
                cpu_cores: profile.cpu_cores[a..b].iter().sum::<f64>() / k,
                memory_bytes: profile.memory_bytes[a..b]
                    .iter()
                    .cloned()
                    .fold(0.0, f64::max),
                gpu_utilization: 0.0,
            }
        })
        .collect();
    let stage = StageUse {
        stage: String::new(),
        requested_cpu,
        requested_memory_bytes,
        used_cpu: 0.0,
        used_memory_bytes: 0.0,
        output_bytes: 0.0,
        phases: phases.clone(),
    };
    let split = candidates(&[stage], &[], &SplitConfig::default())
        .into_iter()
        .next();
    UsageReading {
        phases,
        boundaries,
        requested_cpu,
        split,
    }
}

impl UsageReading {
    /// One line with the numbers: the phases, and the split candidate or why none.
    pub fn describe(&self) -> String {
        let phases: Vec<String> = self
            .phases
            .iter()
            .map(|p| {
                format!(
                    "{} of the run ({:.1}s) at {:.2} cores, {:.0} MiB",
                    p.name,
                    p.seconds,
                    p.cpu_cores,
                    p.memory_bytes / (1024.0 * 1024.0)
                )
            })
            .collect();
        let cuts: Vec<String> = self
            .boundaries
            .iter()
            .map(|b| {
                format!(
                    "at {:.0}% CPU x{:.1}, memory x{:.1}",
                    b.at * 100.0,
                    b.cpu_factor,
                    b.memory_factor
                )
            })
            .collect();
        let verdict = match &self.split {
            Some(Suggestion::Split { reason, .. }) => format!("split candidate: {reason}"),
            _ if self.phases.len() < 2 => {
                format!("no split: one phase (no change of {PHASE_FACTOR}x or more)")
            }
            _ => format!(
                "no split: no phase idles under 30% of the {:.2} requested cores while another saturates",
                self.requested_cpu
            ),
        };
        if cuts.is_empty() {
            format!("{verdict}; {}", phases.join("; "))
        } else {
            format!(
                "{verdict}; phases {} (boundaries {})",
                phases.join("; "),
                cuts.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cpu: &[f64], memory_mib: &[f64], seconds: f64) -> vflow_api::UsageProfile {
        vflow_api::UsageProfile {
            invocations: 5,
            seconds,
            cpu_cores: cpu.to_vec(),
            memory_bytes: memory_mib.iter().map(|m| m * 1048576.0).collect(),
        }
    }

    #[test]
    fn a_usage_profile_that_waits_then_saturates_is_a_split_candidate() {
        // 30% of a 10 s run at 0.1 cores (a download, a model load), then 1.9 of 2 cores.
        let u = usage(
            &[0.1, 0.1, 0.1, 1.9, 1.9, 1.9, 1.9, 1.9, 1.9, 1.9],
            &[80.0; 10],
            10.0,
        );
        let r = read_usage(&u, 2.0, 1e9);
        assert_eq!(r.phases.len(), 2, "{r:?}");
        assert_eq!(r.phases[0].name, "0-30%");
        assert!((r.phases[0].seconds - 3.0).abs() < 1e-9);
        assert_eq!(r.boundaries.len(), 1);
        assert!((r.boundaries[0].at - 0.3).abs() < 1e-9);
        assert!((r.boundaries[0].cpu_factor - 19.0).abs() < 1e-6);
        assert!(matches!(r.split, Some(Suggestion::Split { .. })), "{r:?}");
        let text = r.describe();
        assert!(
            text.starts_with("split candidate: phase 0-30% uses 5%"),
            "{text}"
        );
        assert!(text.contains("at 30% CPU x19.0"), "{text}");
    }

    #[test]
    fn even_use_or_small_changes_are_one_phase_and_no_split() {
        let u = usage(
            &[1.0, 1.2, 0.9, 1.1, 1.0, 0.8, 1.3, 1.0, 1.0, 1.1],
            &[200.0; 10],
            4.0,
        );
        let r = read_usage(&u, 2.0, 1e9);
        assert_eq!(r.phases.len(), 1);
        assert!(r.split.is_none());
        assert!(
            r.describe().starts_with("no split: one phase"),
            "{}",
            r.describe()
        );
        // A change under 3x is no boundary.
        let u = usage(
            &[0.8, 0.8, 0.8, 1.9, 1.9, 1.9, 1.9, 1.9, 1.9, 1.9],
            &[100.0; 10],
            4.0,
        );
        let r = read_usage(&u, 2.0, 1e9);
        assert_eq!(r.phases.len(), 1, "0.8 -> 1.9 is under 3x: {r:?}");
        let u = usage(
            &[0.6; 10],
            &[
                10.0, 10.0, 10.0, 10.0, 10.0, 400.0, 400.0, 400.0, 400.0, 400.0,
            ],
            4.0,
        );
        let r = read_usage(&u, 2.0, 1e9);
        assert_eq!(r.phases.len(), 2, "memory x40: {r:?}");
        assert!(r.split.is_none(), "{r:?}");
        assert!(
            r.describe().starts_with("no split: no phase idles"),
            "{}",
            r.describe()
        );
    }

    fn phase(name: &str, seconds: f64, cpu: f64, gpu: f64) -> PhaseUse {
        PhaseUse {
            name: name.into(),
            seconds,
            cpu_cores: cpu,
            memory_bytes: 1e8,
            gpu_utilization: gpu,
        }
    }

    fn stage(name: &str, used_cpu: f64, out: f64, phases: Vec<PhaseUse>) -> StageUse {
        StageUse {
            stage: name.into(),
            requested_cpu: 4.0,
            requested_memory_bytes: 4e9,
            used_cpu,
            used_memory_bytes: 1e9,
            output_bytes: out,
            phases,
        }
    }

    #[test]
    fn gpu_phase_beside_idle_cpu_is_a_split_candidate() {
        // decode: 3.8 of 4 cores for 4 s; infer: 0.4 cores at 90% GPU for 6 s.
        let s = stage(
            "detect",
            2.0,
            0.0,
            vec![
                phase("decode", 4.0, 3.8, 0.0),
                phase("infer", 6.0, 0.4, 0.9),
            ],
        );
        let c = candidates(&[s], &[], &SplitConfig::default());
        assert_eq!(c.len(), 1);
        let Suggestion::Split { reason, .. } = &c[0] else {
            panic!("split expected")
        };
        assert!(reason.starts_with("phase infer uses 10%"), "{reason}");
    }

    #[test]
    fn even_phases_are_not() {
        let s = stage(
            "scale",
            3.0,
            0.0,
            vec![
                phase("decode", 4.0, 3.0, 0.0),
                phase("encode", 6.0, 3.5, 0.0),
            ],
        );
        assert!(candidates(&[s], &[], &SplitConfig::default()).is_empty());
    }

    #[test]
    fn underused_pair_with_large_data_is_a_fusion_candidate() {
        let a = stage("scale", 1.0, 200e6, vec![]);
        let b = stage("thumb", 0.5, 0.0, vec![]);
        let c = candidates(&[a.clone(), b.clone()], &[(0, 1)], &SplitConfig::default());
        assert!(matches!(&c[0], Suggestion::Fuse { from, .. } if from == "scale"));
        let small = StageUse {
            output_bytes: 1e6,
            ..a
        };
        assert!(candidates(&[small, b], &[(0, 1)], &SplitConfig::default()).is_empty());
    }
}
