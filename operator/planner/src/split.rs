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

#[cfg(test)]
mod tests {
    use super::*;

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
