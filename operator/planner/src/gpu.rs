//! A stage's GPU share, translated into what the cluster's sharing mode asks for:
//! extended resources, environment variables and pod annotations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// How the cluster shares NVIDIA GPUs (operator configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum GpuSharing {
    /// Whole GPUs only: the share is rounded up.
    Whole {
        #[serde(default = "nvidia_gpu")]
        resource: String,
    },
    /// NVIDIA device plugin time-slicing: each GPU is advertised as `slices` replicas.
    #[serde(rename_all = "camelCase")]
    TimeSlicing {
        slices: u32,
        #[serde(default = "nvidia_gpu")]
        resource: String,
        /// The plugin's failRequestsGreaterThanOne: a pod may ask for one slice only.
        #[serde(default)]
        fail_requests_greater_than_one: bool,
    },
    /// NVIDIA MPS: `slices` replicas per GPU, with compute and memory limits per client.
    #[serde(rename_all = "camelCase")]
    Mps {
        slices: u32,
        #[serde(default = "nvidia_gpu_shared")]
        resource: String,
        /// Memory of one GPU, to pin each client's share when its need is unknown.
        #[serde(default)]
        gpu_memory_bytes: Option<u64>,
    },
    /// MIG: the profiles the nodes offer.
    Mig { profiles: Vec<MigProfile> },
    /// HAMi: `nvidia.com/gpu`, `nvidia.com/gpucores` (percent) and `nvidia.com/gpumem` (MiB).
    #[serde(rename_all = "camelCase")]
    Hami {
        /// Memory of one GPU, to size gpumem from the share when the need is unknown.
        #[serde(default)]
        gpu_memory_bytes: Option<u64>,
    },
    /// KAI Scheduler (Run:ai): the share as a pod annotation.
    Kai {
        #[serde(default = "kai_annotation")]
        annotation: String,
    },
}

impl Default for GpuSharing {
    fn default() -> Self {
        GpuSharing::Whole {
            resource: nvidia_gpu(),
        }
    }
}

fn nvidia_gpu() -> String {
    "nvidia.com/gpu".into()
}
fn nvidia_gpu_shared() -> String {
    "nvidia.com/gpu.shared".into()
}
fn kai_annotation() -> String {
    "gpu-fraction".into()
}

/// One MIG profile, e.g. `nvidia.com/mig-1g.10gb` (1 of 7 compute slices, 10 GB).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigProfile {
    pub resource: String,
    /// Compute slices of this profile (the `1` of `1g`); read from the name when unset.
    #[serde(default)]
    pub compute_slices: Option<u32>,
    /// Compute slices of the whole GPU (7 on A100 and H100).
    #[serde(default = "seven")]
    pub total_slices: u32,
    /// Memory; read from the name (`10gb`) when unset.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
}

fn seven() -> u32 {
    7
}

impl MigProfile {
    pub fn new(resource: &str) -> Self {
        MigProfile {
            resource: resource.into(),
            compute_slices: None,
            total_slices: 7,
            memory_bytes: None,
        }
    }

    /// (compute slices, memory bytes) from the fields or the `<g>g.<mem>gb` name.
    fn shape(&self) -> Option<(u32, u64)> {
        let tail = self.resource.rsplit("mig-").next()?;
        let (g, mem) = tail.split_once("g.")?;
        let from_name_g = g.parse::<u32>().ok();
        let from_name_mem = mem
            .strip_suffix("gb")
            .and_then(|m| m.parse::<u64>().ok())
            .map(|gb| gb * GIB);
        Some((
            self.compute_slices.or(from_name_g)?,
            self.memory_bytes.or(from_name_mem)?,
        ))
    }
}

/// What a pod asks for to get its share.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuRequest {
    /// Extended resources: name -> integer quantity.
    pub resources: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The share actually granted (rounded to what the mode can give).
    pub granted: f64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GpuError {
    #[error("GPU share {0} is not a number between 0 (exclusive) and 8")]
    InvalidFraction(f64),
    #[error(
        "a share of {fraction} GPUs is more than one GPU; {mode} shares one GPU, so ask for whole GPUs (1, 2, ...) or use sharing mode whole"
    )]
    AboveOne { fraction: f64, mode: &'static str },
    #[error("a share of {fraction} GPUs under whole-GPU mode must be a whole number above 1")]
    NotWhole { fraction: f64 },
    #[error(
        "a share of {fraction} needs {slices} time slices of {per_gpu} but the device plugin refuses requests above one (failRequestsGreaterThanOne); ask for at most {max_share}"
    )]
    OneSliceOnly {
        fraction: f64,
        slices: u32,
        per_gpu: u32,
        max_share: f64,
    },
    #[error("no MIG profile fits a share of {fraction}{memory}: available {available}")]
    NoMigProfile {
        fraction: f64,
        memory: String,
        available: String,
    },
    #[error("GPU sharing configuration: {0}")]
    Config(String),
}

/// Translates a share of one GPU (and the GPU memory one instance needs, when known).
pub fn translate(
    fraction: f64,
    gpu_memory_bytes: Option<u64>,
    sharing: &GpuSharing,
) -> Result<GpuRequest, GpuError> {
    if !(fraction.is_finite() && fraction > 0.0 && fraction <= 8.0) {
        return Err(GpuError::InvalidFraction(fraction));
    }
    let mut req = GpuRequest::default();
    let whole = fraction > 1.0;
    match sharing {
        GpuSharing::Whole { resource } => {
            let n = fraction.ceil() as u32;
            if whole && fraction.fract() != 0.0 {
                return Err(GpuError::NotWhole { fraction });
            }
            req.resources.insert(resource.clone(), n.to_string());
            req.granted = f64::from(n);
            req.reason = format!("whole GPUs: {fraction} rounds up to {n}");
        }
        GpuSharing::TimeSlicing {
            slices,
            resource,
            fail_requests_greater_than_one,
        } => {
            let per_gpu = positive(*slices, "time-slicing slices")?;
            if whole {
                return Err(GpuError::AboveOne {
                    fraction,
                    mode: "time-slicing",
                });
            }
            let n = slices_for(fraction, per_gpu);
            if *fail_requests_greater_than_one && n > 1 {
                return Err(GpuError::OneSliceOnly {
                    fraction,
                    slices: n,
                    per_gpu,
                    max_share: 1.0 / f64::from(per_gpu),
                });
            }
            req.resources.insert(resource.clone(), n.to_string());
            req.granted = f64::from(n) / f64::from(per_gpu);
            req.reason = format!(
                "time-slicing: {fraction} of a GPU is {n} of {per_gpu} slices (no memory or fault isolation)"
            );
        }
        GpuSharing::Mps {
            slices,
            resource,
            gpu_memory_bytes: total,
        } => {
            let per_gpu = positive(*slices, "MPS slices")?;
            if whole {
                return Err(GpuError::AboveOne {
                    fraction,
                    mode: "MPS",
                });
            }
            let n = slices_for(fraction, per_gpu);
            let share = f64::from(n) / f64::from(per_gpu);
            req.resources.insert(resource.clone(), n.to_string());
            req.env.insert(
                "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".into(),
                ((share * 100.0).round() as u32).to_string(),
            );
            let pinned = gpu_memory_bytes.or(total.map(|t| (t as f64 * share) as u64));
            if let Some(bytes) = pinned {
                req.env.insert(
                    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".into(),
                    format!("0={}M", bytes.div_ceil(MIB)),
                );
            }
            req.granted = share;
            req.reason = format!(
                "MPS: {fraction} of a GPU is {n} of {per_gpu} slices, {:.0}% of the SMs",
                share * 100.0
            );
        }
        GpuSharing::Mig { profiles } => {
            if whole {
                return Err(GpuError::AboveOne {
                    fraction,
                    mode: "MIG",
                });
            }
            let mut shaped: Vec<(&MigProfile, u32, u64)> = Vec::new();
            for p in profiles {
                let (g, mem) = p.shape().ok_or_else(|| {
                    GpuError::Config(format!(
                        "MIG profile {:?} has no compute slices or memory (name it like nvidia.com/mig-1g.10gb or set computeSlices and memoryBytes)",
                        p.resource
                    ))
                })?;
                shaped.push((p, g, mem));
            }
            let need_mem = gpu_memory_bytes.unwrap_or(0);
            let fits = |&&(p, g, mem): &&(&MigProfile, u32, u64)| {
                f64::from(g) / f64::from(p.total_slices.max(1)) + 1e-9 >= fraction
                    && mem >= need_mem
            };
            let best = shaped
                .iter()
                .filter(fits)
                .min_by_key(|(p, g, mem)| (*g * 1000 / p.total_slices.max(1), *mem));
            let Some(&(p, g, mem)) = best else {
                let available = shaped
                    .iter()
                    .map(|(p, g, mem)| {
                        format!(
                            "{} ({}/{} of the compute, {} GiB)",
                            p.resource,
                            g,
                            p.total_slices,
                            mem / GIB
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(GpuError::NoMigProfile {
                    fraction,
                    memory: gpu_memory_bytes
                        .map(|b| format!(" and {} MiB of GPU memory", b.div_ceil(MIB)))
                        .unwrap_or_default(),
                    available: if available.is_empty() {
                        "none".into()
                    } else {
                        available
                    },
                });
            };
            req.resources.insert(p.resource.clone(), "1".into());
            req.granted = f64::from(g) / f64::from(p.total_slices.max(1));
            req.reason = format!(
                "MIG: smallest profile with at least {fraction} of the compute{} is {} ({g}/{} , {} GiB)",
                gpu_memory_bytes
                    .map(|b| format!(" and {} MiB", b.div_ceil(MIB)))
                    .unwrap_or_default(),
                p.resource,
                p.total_slices,
                mem / GIB
            );
        }
        GpuSharing::Hami {
            gpu_memory_bytes: total,
        } => {
            let gpus = fraction.ceil() as u32;
            let cores = if whole {
                100
            } else {
                ((fraction * 100.0).ceil() as u32).clamp(1, 100)
            };
            req.resources
                .insert("nvidia.com/gpu".into(), gpus.to_string());
            req.resources
                .insert("nvidia.com/gpucores".into(), cores.to_string());
            let mem = gpu_memory_bytes.or(total.map(|t| (t as f64 * fraction.min(1.0)) as u64));
            if let Some(bytes) = mem {
                req.resources
                    .insert("nvidia.com/gpumem".into(), bytes.div_ceil(MIB).to_string());
            }
            req.granted = if whole {
                f64::from(gpus)
            } else {
                f64::from(cores) / 100.0
            };
            req.reason = format!(
                "HAMi: {gpus} GPU(s) at {cores}% of the cores{}",
                mem.map(|b| format!(", {} MiB", b.div_ceil(MIB)))
                    .unwrap_or_default()
            );
        }
        GpuSharing::Kai { annotation } => {
            if whole {
                let n = fraction.ceil() as u32;
                req.resources.insert("nvidia.com/gpu".into(), n.to_string());
                req.granted = f64::from(n);
                req.reason = format!("KAI: above one GPU, {n} whole GPUs");
            } else {
                req.annotations
                    .insert(annotation.clone(), format!("{fraction}"));
                req.granted = fraction;
                req.reason = format!("KAI: annotation {annotation}={fraction}");
            }
        }
    }
    Ok(req)
}

fn positive(v: u32, what: &str) -> Result<u32, GpuError> {
    if v == 0 {
        Err(GpuError::Config(format!("{what} must be at least 1")))
    } else {
        Ok(v)
    }
}

/// Slices needed for a share: rounded up, so a stage never gets less than it asked for
/// (0.3 of 4 slices is 2). The tolerance keeps 0.25 x 4 at exactly one slice.
fn slices_for(fraction: f64, per_gpu: u32) -> u32 {
    ((fraction * f64::from(per_gpu) - 1e-9).ceil() as u32).clamp(1, per_gpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(r: &GpuRequest, k: &str) -> Option<String> {
        r.resources.get(k).cloned()
    }

    #[test]
    fn whole_rounds_up() {
        let r = translate(0.25, None, &GpuSharing::default()).expect("ok");
        assert_eq!(res(&r, "nvidia.com/gpu").as_deref(), Some("1"));
        let r = translate(2.0, None, &GpuSharing::default()).expect("ok");
        assert_eq!(res(&r, "nvidia.com/gpu").as_deref(), Some("2"));
        assert!(matches!(
            translate(1.5, None, &GpuSharing::default()),
            Err(GpuError::NotWhole { .. })
        ));
        assert!(matches!(
            translate(0.0, None, &GpuSharing::default()),
            Err(GpuError::InvalidFraction(_))
        ));
    }

    #[test]
    fn time_slicing_counts_slices() {
        let ts = GpuSharing::TimeSlicing {
            slices: 4,
            resource: "nvidia.com/gpu.shared".into(),
            fail_requests_greater_than_one: false,
        };
        // 0.3 x 4 = 1.2 slices, rounded up to 2 (half the GPU); 0.25 x 4 is exactly 1.
        let r = translate(0.3, None, &ts).expect("ok");
        assert_eq!(res(&r, "nvidia.com/gpu.shared").as_deref(), Some("2"));
        assert_eq!(r.granted, 0.5);
        let r = translate(0.25, None, &ts).expect("ok");
        assert_eq!(res(&r, "nvidia.com/gpu.shared").as_deref(), Some("1"));
        let strict = GpuSharing::TimeSlicing {
            slices: 4,
            resource: "nvidia.com/gpu".into(),
            fail_requests_greater_than_one: true,
        };
        let e = translate(0.5, None, &strict).expect_err("two slices refused");
        assert!(e.to_string().contains("at most 0.25"), "{e}");
        assert!(matches!(
            translate(2.0, None, &ts),
            Err(GpuError::AboveOne { .. })
        ));
    }

    #[test]
    fn mps_sets_limits() {
        let mps = GpuSharing::Mps {
            slices: 8,
            resource: "nvidia.com/gpu.shared".into(),
            gpu_memory_bytes: Some(80 * GIB),
        };
        let r = translate(0.25, None, &mps).expect("ok");
        assert_eq!(res(&r, "nvidia.com/gpu.shared").as_deref(), Some("2"));
        assert_eq!(r.env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "25");
        assert_eq!(r.env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "0=20480M");
        // A measured need pins the limit instead of the share of the GPU.
        let r = translate(0.25, Some(3 * GIB), &mps).expect("ok");
        assert_eq!(r.env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "0=3072M");
    }

    #[test]
    fn mig_picks_the_smallest_that_fits() {
        let mig = GpuSharing::Mig {
            profiles: [
                "nvidia.com/mig-3g.40gb",
                "nvidia.com/mig-1g.10gb",
                "nvidia.com/mig-2g.20gb",
            ]
            .map(MigProfile::new)
            .to_vec(),
        };
        let r = translate(0.1, None, &mig).expect("ok");
        assert_eq!(res(&r, "nvidia.com/mig-1g.10gb").as_deref(), Some("1"));
        // 0.25 needs 2 of 7 compute slices.
        let r = translate(0.25, None, &mig).expect("ok");
        assert_eq!(res(&r, "nvidia.com/mig-2g.20gb").as_deref(), Some("1"));
        // 0.1 of the compute but 15 GiB of memory: 2g.20gb.
        let r = translate(0.1, Some(15 * GIB), &mig).expect("ok");
        assert_eq!(res(&r, "nvidia.com/mig-2g.20gb").as_deref(), Some("1"));
    }

    #[test]
    fn mig_error_names_the_profiles() {
        let mig = GpuSharing::Mig {
            profiles: vec![MigProfile::new("nvidia.com/mig-1g.10gb")],
        };
        let e = translate(0.5, None, &mig).expect_err("1/7 is less than 0.5");
        let text = e.to_string();
        assert!(text.contains("0.5"), "{text}");
        assert!(
            text.contains("nvidia.com/mig-1g.10gb (1/7 of the compute, 10 GiB)"),
            "{text}"
        );
    }

    #[test]
    fn hami_cores_and_memory() {
        let hami = GpuSharing::Hami {
            gpu_memory_bytes: Some(24 * GIB),
        };
        let r = translate(0.25, None, &hami).expect("ok");
        assert_eq!(res(&r, "nvidia.com/gpu").as_deref(), Some("1"));
        assert_eq!(res(&r, "nvidia.com/gpucores").as_deref(), Some("25"));
        assert_eq!(res(&r, "nvidia.com/gpumem").as_deref(), Some("6144"));
        let r = translate(2.0, None, &hami).expect("ok");
        assert_eq!(res(&r, "nvidia.com/gpu").as_deref(), Some("2"));
        assert_eq!(res(&r, "nvidia.com/gpucores").as_deref(), Some("100"));
    }

    #[test]
    fn kai_annotates() {
        let kai = GpuSharing::Kai {
            annotation: "gpu-fraction".into(),
        };
        let r = translate(0.25, None, &kai).expect("ok");
        assert_eq!(r.annotations["gpu-fraction"], "0.25");
        assert!(r.resources.is_empty());
    }

    #[test]
    fn config_deserializes() {
        let s: GpuSharing = serde_json::from_value(serde_json::json!({
            "mode": "time-slicing", "slices": 4, "resource": "nvidia.com/gpu.shared"
        }))
        .expect("time-slicing");
        assert!(matches!(s, GpuSharing::TimeSlicing { slices: 4, .. }));
        let s: GpuSharing = serde_json::from_value(serde_json::json!({
            "mode": "mig", "profiles": [{"resource": "nvidia.com/mig-1g.10gb"}]
        }))
        .expect("mig");
        assert!(matches!(s, GpuSharing::Mig { .. }));
    }
}
